"""The study's W&B workspace (`python -m xai_bench.dashboard group=<group>`): every panel shows a
key that real offline runs of train / evaluate / report logged, so the dashboard cannot drift
from the logging; the online path saves a wandb_workspaces Workspace (its save patched: no
network)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wandb_workspaces.workspaces as ws
import yaml
from conftest import CONF_DIR, fails_cleanly, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import xai_bench.tracking.dashboard as dash
from xai_bench.tracking.dashboard import (
    SPEC_FILE,
    DashboardSpec,
    GroupFacts,
    build_spec,
    resolve_entity,
    save_workspace,
    scan_group,
    to_workspace,
)
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run
from xai_bench.utils.errors import ConfigError

# a single training run is grouped <dataset>-<init>; its evaluation and the report join it
GROUP = "synthetic-random"
TRAIN = ["debug=tiny", "dataset.num_train=64", "dataset.num_val=32", "dataset.num_test=32",
         "print_config=false"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's pipeline, tiny, W&B offline: train, evaluate (a method and the baselines,
    overlays), report."""
    root = tmp_path_factory.mktemp("study")
    steps = [
        ["xai_bench.train", *TRAIN, f"hydra.run.dir={root / 'train'}"],
        ["xai_bench.evaluate", f"ckpt={root / 'train'}", "method=gradcam", "max_images=8",
         "overlays=2", "print_config=false", f"hydra.run.dir={root / 'evaluate' / 'gradcam'}"],
        ["xai_bench.report", f"sweep={root / 'evaluate'}", "print_config=false"],
    ]
    for args in steps:
        proc = run_cli(args, cwd=root, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root


def _flat(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")


def _logged(root: Path) -> tuple[set[str], set[str]]:
    """(every key the offline runs below root logged, every config key they hold)."""
    keys: set[str] = set()
    config: set[str] = set()
    for folder in offline_run_dirs(root):
        run = read_offline_run(folder)
        found = {k for row in run.history for k in row} | set(run.summary)
        # a table or an image list is one typed value: its parts are <key>/_type, ...
        keys |= found | {k.removesuffix("/_type") for k in found if k.endswith("/_type")}
        config |= set(_flat(run.config))
    return keys, config


def _panels(spec: DashboardSpec, section: str) -> dict[str, list[str]]:
    (found,) = [s for s in spec.sections if s.name.startswith(section)]
    return {p.title: p.keys for p in found.panels}


@pytest.mark.slow
def test_every_panel_shows_a_key_the_runs_logged(study: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    proc = run_cli(["xai_bench.dashboard", f"group={GROUP}", f"runs={study}",
                    "print_config=false"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    path = study / "dashboard" / GROUP / SPEC_FILE
    assert str(path) in proc.stdout and "not saved" in proc.stdout
    spec = DashboardSpec.from_dict(json.loads(path.read_text()))
    logged, config = _logged(study)
    assert not spec.keys() - logged, sorted(spec.keys() - logged)
    assert set(spec.group_by) | set(spec.columns) <= config
    # ... and the dashboard shows what the study is about
    assert spec.group == GROUP and spec.project == "xai_bench"
    training = _panels(spec, "Training curves")
    assert training["loss"] == ["train/loss_epoch", "val/loss"]
    assert {"val/auroc", "learning rate"} <= set(training)
    assert _panels(spec, "Training results")["test/acc"] == ["test/acc"]
    evaluation = _panels(spec, "Evaluation: methods")
    assert evaluation["pointing_game"] == [f"eval/{m}/pointing_game"
                                           for m in ("gradcam", "random", "centre", "uniform")]
    assert "eval/accuracy" in evaluation["classification"]
    assert _panels(spec, "Evaluation: tables") == {
        "scores per method and baseline": ["eval/scores"], "per-image scores": ["eval/per_image"]}
    assert _panels(spec, "Overlays")["gradcam"] == ["eval/overlays/gradcam"]
    report = _panels(spec, "Report")
    assert {"table", "pointing_game", "iou@40", "significance", "plots"} <= set(report)
    # a key renamed on one side only is caught
    monkeypatch.setattr(dash, "EVAL_PER_IMAGE", "eval/per_image_table")
    drifted = build_spec(scan_group(study, GROUP), project="xai_bench")
    assert drifted.keys() - logged == {"eval/per_image_table"}


def _compose(*overrides: str) -> Any:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("dashboard", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.slow
def test_online_saves_the_workspace(study: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import xai_bench.dashboard as entry

    saved: list[Any] = []
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(entry, "check_wandb_reachable", lambda: None)
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)
    cfg = _compose(f"group={GROUP}", f"runs={study}", f"paths.output_dir={tmp_path}",
                   "logger.wandb.entity=team", "print_config=false")
    result = entry.dashboard(cfg)
    assert result == {"spec": str(tmp_path / SPEC_FILE), "entity": "team",
                      "project": "xai_bench"}
    spec = DashboardSpec.from_dict(json.loads((tmp_path / SPEC_FILE).read_text()))
    (workspace,) = saved
    assert (workspace.entity, workspace.project, workspace.name) == (
        "team", "xai_bench", f"xai_bench {GROUP}")
    assert [s.name for s in workspace.sections] == [s.name for s in spec.sections]
    runset = workspace.runset_settings
    assert runset.filters == f"Metric(\"Group\") == '{GROUP}'"
    assert [g.name for g in runset.groupby] == ["dataset.name", "init.name"]
    assert "config:model.value.arch" in runset.pinned_columns
    # the view W&B receives (wandb_workspaces' own model, built offline) plots every key
    view = workspace._to_model().model_dump_json(by_alias=True)
    assert all(json.dumps(key) in view for key in spec.keys()), spec.keys()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["group"] == GROUP


def _spec() -> DashboardSpec:
    facts = GroupFacts(group="g", rows=[("synthetic", "random")], val=["loss", "acc"],
                       methods=["gradcam"], baselines=["random"],
                       scores={"pointing_game": ["gradcam", "random"]},
                       runs={"train": 1, "evaluate": 1})
    return build_spec(facts, project="p", group_by=["dataset.name"])


def test_update_replaces_the_saved_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    old = ws.Workspace(entity="team", project="p", name="old")
    saved: list[Any] = []
    monkeypatch.setattr(ws.Workspace, "from_url", classmethod(lambda cls, url: old))
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)
    spec = _spec()
    save_workspace(spec, "team", "p", url="https://wandb.ai/team/p?nw=abc")
    assert saved == [old] and old.name == "xai_bench g"
    assert [s.name for s in old.sections] == [s.name for s in spec.sections]
    with pytest.raises(ConfigError, match="not of other/p"):
        save_workspace(spec, "other", "p", url="https://wandb.ai/team/p?nw=abc")
    assert len(saved) == 1


def test_workspace_panels_follow_the_spec() -> None:
    spec = _spec()
    workspace = to_workspace(spec, "team", "p")
    panels = {type(p).__name__ for s in workspace.sections for p in s.panels}
    assert panels == {"LinePlot", "BarPlot", "WeavePanelSummaryTable"}
    (bar,) = [p for s in workspace.sections for p in s.panels
              if getattr(p, "title", None) == "pointing_game"]
    assert bar.metrics == ["eval/gradcam/pointing_game", "eval/random/pointing_game"]
    assert "a bar per dataset.name" in workspace.sections[-2].name


def test_entity_from_config_then_w_and_b_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    class Api:
        settings: dict[str, Any] = {"entity": None}
        default_entity: str | None = "me"

    monkeypatch.setattr(wandb, "Api", Api)
    assert resolve_entity("team") == "team"
    assert resolve_entity(None) == "me"
    Api.settings = {"entity": "lab"}
    assert resolve_entity(None) == "lab"
    Api.settings, Api.default_entity = {"entity": None}, None
    with pytest.raises(ConfigError, match="logger.wandb.entity"):
        resolve_entity(None)


def _run_folder(folder: Path, task: str, group: str | None, **values: Any) -> None:
    folder.mkdir(parents=True)
    config: dict[str, Any] = {"task_name": task, **values}
    if group is not None:
        config["logger"] = {"wandb": {"group": group, "project": "p"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def test_scan_takes_only_the_group_and_w_and_b_runs(tmp_path: Path) -> None:
    row = {"dataset": {"name": "synthetic"}, "init": {"name": "random"}}
    _run_folder(tmp_path / "a", "train", "g", **row)
    _run_folder(tmp_path / "b", "train", "other", dataset={"name": "x"}, init={"name": "y"})
    _run_folder(tmp_path / "c", "train", None, dataset={"name": "x"}, init={"name": "z"})
    _run_folder(tmp_path / "a" / "wandb" / "d", "train", "g", dataset={"name": "w"})
    _run_folder(tmp_path / "e", "meta_evaluate", "g")
    facts = scan_group(tmp_path, "g")
    assert facts.rows == [("synthetic", "random")] and facts.runs == {"train": 1}
    assert facts.val == [] and facts.destinations == {(None, "p")}  # unfinished: no metrics.json
    with pytest.raises(ConfigError, match="no training, evaluation or report run of the W&B "
                                          "group nope"):
        scan_group(tmp_path, "nope")


@pytest.mark.slow
def test_missing_group_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli(["xai_bench.dashboard", f"runs={tmp_path}"], cwd=tmp_path, timeout=300)
    fails_cleanly(proc, "no group given", "group=")
    assert not (tmp_path / "dashboard").exists()
