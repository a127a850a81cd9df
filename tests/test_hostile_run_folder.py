"""A run folder is untrusted input: its config.yaml may build only allowlisted targets.

The hostile run folder of issue 12: `dataset.transforms.eval: {_target_: torch.load, f: evil.pth,
weights_only: false}` made `python -m xai_bench.evaluate ckpt=<run>` unpickle evil.pth, whose
payload created a file. Also covered: a target smuggled through `${run:group}` into the W&B
logger, `${oc.create:...}` interpolations (which turn a plain string into a new target when Hydra
builds the node), and an evaluation run's group reaching the report's logger config.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CONF_DIR, run_cli
from omegaconf import OmegaConf, open_dict

from xai_bench.tracking.records import EvaluationSummary
from xai_bench.tracking.trusted_config import (
    TRUSTED_TARGETS,
    UntrustedConfigError,
    check_run_config,
    is_trusted_target,
    trusted_container,
    untrusted_entries,
)

REFUSAL = "untrusted input"


class _TouchOnUnpickle:
    """A pickle payload: unpickling it creates `marker` (what an attacker's code would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return Path.touch, (self.marker,)


def _evil_pickle(folder: Path) -> tuple[Path, Path]:
    """(evil.pth, the marker file its payload would create)."""
    marker = folder / "PAYLOAD_RAN"
    evil = folder / "evil.pth"
    evil.write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    return evil, marker


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def genuine_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished training run folder as xai_bench writes it (resolved config.yaml, a checkpoint
    of the depth-2 test ViT), made in-process without training: only its structure matters."""
    import hydra
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    run = tmp_path_factory.mktemp("genuine") / "run"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["debug=tiny", "logger=none", f"paths.output_dir={run}",
                                          "dataset.num_test=16"])
    GlobalHydra.instance().clear()
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    net = hydra.utils.instantiate(cfg.model)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}},
               run / "checkpoints" / "best.ckpt")
    return run


def _hostile_copy(genuine: Path, folder: Path, edit) -> Path:
    """A copy of the genuine run whose config.yaml `edit` changed (a plain dict, as YAML)."""
    run = folder / "hostile_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(
        (genuine / "checkpoints" / "best.ckpt").read_bytes())
    cfg = yaml.safe_load((genuine / "config.yaml").read_text())
    edit(cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def _refused_cleanly(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and REFUSAL in line, proc.stderr[-2000:]
    for needle in needles:
        assert needle in line, line
    return line


# --- the reproduction, through the command line -----------------------------------------

def test_evaluate_refuses_a_torch_load_transform_and_runs_no_payload(genuine_run: Path,
                                                                     tmp_path: Path) -> None:
    evil, marker = _evil_pickle(tmp_path)

    def edit(cfg: dict[str, Any]) -> None:
        cfg["dataset"]["transforms"]["eval"] = {"_target_": "torch.load", "f": str(evil),
                                                "weights_only": False}

    run = _hostile_copy(genuine_run, tmp_path, edit)
    before = _snapshot(run)
    proc = run_cli(["xai_bench.evaluate", f"ckpt={run}", f"hydra.run.dir={tmp_path / 'eval'}",
                    "logger=none"], cwd=tmp_path, timeout=300)
    _refused_cleanly(proc, "dataset.transforms.eval", "'torch.load'", str(run / "config.yaml"))
    assert not marker.exists(), "the pickle payload ran"
    assert _snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", ["group_target", "name_interpolation", "model_kwarg_target"])
def test_evaluate_refuses_other_smuggled_targets(genuine_run: Path, tmp_path: Path,
                                                 case: str) -> None:
    """A target in a key the W&B logger reads (`${run:group}`), an escaped `${oc.create:...}`
    (a literal string in the file, an interpolation once Hydra builds the node), a target nested
    in the model's keyword arguments."""
    evil, marker = _evil_pickle(tmp_path)
    target = {"_target_": "torch.load", "f": str(evil), "weights_only": False}
    create = '\\${oc.create:"{_target_: torch.load, f: ' + str(evil) + ', weights_only: false}"}'
    edits = {
        "group_target": lambda cfg: cfg.__setitem__("group", target),
        "name_interpolation": lambda cfg: cfg["dataset"].__setitem__("name", create),
        "model_kwarg_target": lambda cfg: cfg["model"].__setitem__("block_args", {"x": [target]}),
    }
    needles = {"group_target": ["group has _target_: 'torch.load'"],
               "name_interpolation": ["dataset.name has the interpolation"],
               "model_kwarg_target": ["model.block_args.x[0] has _target_: 'torch.load'"]}
    run = _hostile_copy(genuine_run, tmp_path, edits[case])
    before = _snapshot(run)
    proc = run_cli(["xai_bench.evaluate", f"ckpt={run}", f"hydra.run.dir={tmp_path / 'eval'}",
                    "logger=wandb"], cwd=tmp_path, timeout=300)
    _refused_cleanly(proc, *needles[case])
    assert not marker.exists(), "the pickle payload ran"
    assert _snapshot(run) == before


@pytest.mark.slow
def test_the_genuine_run_folder_still_evaluates(genuine_run: Path, tmp_path: Path) -> None:
    """The control: the same folder without the hostile entry is evaluated as before."""
    out = tmp_path / "eval"
    proc = run_cli(["xai_bench.evaluate", f"ckpt={genuine_run}", f"hydra.run.dir={out}",
                    "logger=none", "max_images=2", "metric=[study]", "baselines=[]", "overlays=0"],
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert EvaluationSummary.read(out).images == 2


@pytest.mark.slow
def test_report_refuses_an_interpolated_group_from_an_evaluation_run(tmp_path: Path) -> None:
    """The report copies the runs' common W&B group into its logger config: a `${oc.create:...}`
    group there was built by Hydra (the payload ran) before this check."""
    evil, marker = _evil_pickle(tmp_path)
    run = tmp_path / "sweep" / "0_attention"
    run.mkdir(parents=True)
    group = '${oc.create:"{_target_: torch.load, f: ' + str(evil) + ', weights_only: false}"}'
    (run / "config.yaml").write_text(yaml.safe_dump({
        "task_name": "evaluate", "method": {"name": "attention"}, "dataset": {"name": "synthetic"},
        "init": {"name": "random"}, "model": {"arch": "vit_test"},
        "logger": {"wandb": {"group": group}},
    }))
    stats = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 4}
    (run / "metrics.json").write_text(json.dumps({
        "method": "attention", "baselines": [], "counts": {"images": 4},
        "methods": {"attention": {"metrics": {"pointing_game": stats}}},
    }))
    before = _snapshot(tmp_path / "sweep")
    proc = run_cli(["xai_bench.report", f"sweep={tmp_path / 'sweep'}",
                    f"out={tmp_path / 'report'}"], cwd=tmp_path, timeout=300)
    _refused_cleanly(proc, "logger.wandb.group has the interpolation", str(run / "config.yaml"))
    assert not marker.exists(), "the pickle payload ran"
    assert _snapshot(tmp_path / "sweep") == before


# --- the builders of evaluate check what they build, whoever calls them -------------------------

def test_evaluate_builders_refuse_untrusted_sections(tmp_path: Path) -> None:
    from xai_bench.modules.trained_run import build_datamodule, load_network

    evil, marker = _evil_pickle(tmp_path)
    bad = {"_target_": "torch.load", "f": str(evil), "weights_only": False}
    run_cfg = OmegaConf.create({
        "dataset": {"_target_": "xai_bench.data.SyntheticDataModule", "transforms": {"eval": bad}},
        "model": {"_target_": "xai_bench.models.build_model", "arch": "vit_tiny_patch16_224",
                  "extra": [bad]},
    })
    with pytest.raises(UntrustedConfigError,
                       match=r"dataset\.transforms\.eval has _target_: 'torch\.load'"):
        build_datamodule(OmegaConf.create({"data": {}}), run_cfg)
    with pytest.raises(UntrustedConfigError,
                       match=r"model\.extra\[0\] has _target_: 'torch\.load'"):
        load_network(run_cfg.model, tmp_path / "unused.ckpt", state={})
    assert not marker.exists()


# --- the walker -----------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "albumentations.Compose", "albumentations.OneOf", "albumentations.Resize",
    "albumentations.pytorch.ToTensorV2", "albumentations.augmentations.geometric.resize.Resize",
    "albumentations.Lambda", "xai_bench.data.ImageTableDataModule", "xai_bench.models.build_model",
])
def test_allowed_targets(target: str) -> None:
    assert is_trusted_target(target)


@pytest.mark.parametrize("target", [
    "os.system", "torch.load", "builtins.eval", "subprocess.run", "pickle.loads",
    "albumentations.core.serialization.load", "albumentations.from_dict", "albumentations.load",
    "albumentations.core", "albumentations.core.transforms_interface",
    "albumentations.NoSuchTransform", "albumentations..Compose", "albumentations",
    "albumentations.cv2.imread", "albumentations.Compose.__init__",
    "xai_bench.utils.instantiate.instantiate_loggers", "xai_bench.data.datamodule.os.system",
    "pytorch_lightning.Trainer", "", None, 3, {"_target_": "albumentations.Compose"},
])
def test_refused_targets(target: Any) -> None:
    assert not is_trusted_target(target)


def test_checking_a_name_imports_nothing_outside_the_allowed_packages(tmp_path: Path,
                                                                      monkeypatch) -> None:
    package = tmp_path / "evilpkg_xai_test"
    package.mkdir()
    (package / "__init__.py").write_text(f"open({str(tmp_path / 'IMPORTED')!r}, 'w').close()\n"
                                         "def run(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("evilpkg_xai_test.run", "albumentations.evilpkg_xai_test.run",
                 "xai_bench.evilpkg_xai_test"):
        assert not is_trusted_target(name)
    assert not (tmp_path / "IMPORTED").exists() and "evilpkg_xai_test" not in sys.modules


def test_walker_finds_targets_in_lists_nesting_partial_and_args() -> None:
    config = {
        "transforms": {"eval": {"_target_": "albumentations.Compose", "transforms": [
            {"_target_": "albumentations.Resize", "height": 8, "width": 8},
            {"_target_": "albumentations.OneOf",
             "transforms": [{"_target_": "os.system", "_partial_": True}]},
            {"_target_": "albumentations.Lambda",
             "image": {"_target_": "builtins.exec", "_args_": ["x"]}},
        ]}},
        "args": {"_target_": "albumentations.Compose",
                 "_args_": [[{"_target_": "subprocess.run"}]]},
        "odd": {"_target_": {"_target_": "os.system"}},
        "fine": [{"_target_": "albumentations.pytorch.ToTensorV2"}, "plain", 1, None],
    }
    found = dict(untrusted_entries(config, "dataset"))
    assert found == {
        "dataset.transforms.eval.transforms[1].transforms[0]": "_target_: 'os.system'",
        "dataset.transforms.eval.transforms[2].image": "_target_: 'builtins.exec'",
        "dataset.args._args_[0][0]": "_target_: 'subprocess.run'",
        "dataset.odd": "_target_: {'_target_': 'os.system'}",
        "dataset.odd._target_": "_target_: 'os.system'",
    }
    with pytest.raises(UntrustedConfigError) as err:
        trusted_container(OmegaConf.create(config), "dataset", "run/config.yaml")
    message = str(err.value)
    assert message.startswith("run/config.yaml: dataset.transforms.eval.transforms[1]"
                              ".transforms[0] has _target_: 'os.system'")
    assert "(and 2 more)" in message and "\n" not in message


def test_walker_reads_interpolations_without_resolving_them() -> None:
    calls: list[str] = []
    OmegaConf.register_new_resolver("xai_test_side_effect", lambda: calls.append("ran") or "x",
                                    replace=True)
    cfg = OmegaConf.create({
        "dataset": {"_target_": "xai_bench.data.SyntheticDataModule",
                    "name": "${xai_test_side_effect:}"},
        "model": "${oc.create:'{_target_: os.system}'}",
        "group": "${xai_test_side_effect:}",
        "trainer": {"_target_": "pytorch_lightning.Trainer"},  # not built by evaluation: allowed
    })
    with pytest.raises(UntrustedConfigError) as err:
        check_run_config(cfg, "run/config.yaml")
    assert "dataset.name has the interpolation" in str(err.value)
    assert ("model has the interpolation" in str(err.value)
            and "group has the interpolation" in str(err.value))
    assert "trainer" not in str(err.value)
    assert calls == []


def test_trusted_container_returns_what_it_checked() -> None:
    node = OmegaConf.create({"_target_": "albumentations.Compose",
                             "transforms": [{"_target_": "albumentations.HorizontalFlip"}]})
    assert trusted_container(node, "eval") == OmegaConf.to_container(node)
    assert trusted_container(None, "group") is None and trusted_container("abc", "group") == "abc"


# --- a genuine run never trips the checks, and the allowlist follows conf/ ----------------------

def _targets_in_conf() -> tuple[set[str], set[str]]:
    """(targets of the data and model sections of conf/, every target of conf/)."""
    built: set[str] = set()
    every: set[str] = set()

    def walk(node: Any, into: set[str]) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                into.add(node["_target_"])
            for value in node.values():
                walk(value, into)
        elif isinstance(node, list):
            for value in node:
                walk(value, into)

    for path in CONF_DIR.rglob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        walk(data, every)
        if path.parent.name == "model":  # the model group's files are the section itself
            walk(data, built)
        elif isinstance(data, dict):
            for section in ("dataset", "model"):
                walk(data.get(section), built)
    return built, every


def test_allowlist_is_exactly_the_data_and_model_builders_of_conf() -> None:
    built, every = _targets_in_conf()
    assert {t for t in built if t.startswith("xai_bench.")} == set(TRUSTED_TARGETS), (
        "update TRUSTED_TARGETS with the xai_bench builders of conf/'s data and model sections")
    for target in every:
        if target.startswith("albumentations."):
            assert is_trusted_target(target), target
    for target in ("xai_bench.explain.build_method", "xai_bench.modules.build_optimizer",
                   "pytorch_lightning.Trainer"):
        # used by conf/, never built from a run
        assert target in every and not is_trusted_target(target)


DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
# ??? in the config
USER_VALUES = {"folder": ["dataset.num_classes=2", "dataset.class_names=[a,b]"]}
EXPERIMENTS = ["atcon_pascal_voc", "atcon_synthetic", "synthetic_shortcut", "faithfulness_train"]


@pytest.mark.parametrize("overrides", [[f"dataset={d}", *USER_VALUES.get(d, [])] for d in DATASETS]
                         + [[f"experiment={e}"] for e in EXPERIMENTS]
                         + [["debug=standin", "dataset=kvasir"]])
def test_every_genuine_training_config_passes(compose_cfg, tmp_path: Path,
                                              overrides: list[str]) -> None:
    cfg = compose_cfg(*overrides, f"paths.output_dir={tmp_path}")
    with open_dict(cfg):
        del cfg["hydra"]
    # as config.yaml
    written = OmegaConf.create(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    check_run_config(written, "config.yaml")
    for section in ("dataset", "model"):
        trusted_container(written[section], section)


def test_listing_a_sweep_never_resolves_a_run_folder_interpolation(tmp_path: Path) -> None:
    """study_eval lists a sweep's runs: a planted `${...}` in task_name must not be resolved."""
    from xai_bench.tracking.sweeps import training_runs

    calls: list[str] = []
    OmegaConf.register_new_resolver("xai_test.spy", lambda: calls.append("resolved") or "train",
                                    replace=True)
    for name, task in (("0_genuine", "train"), ("1_planted", "${xai_test.spy:}"),
                       ("2_broken", "[unclosed")):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
        (run / "config.yaml").write_text(f"task_name: '{task}'\n" if "$" in task else
                                         f"task_name: {task}\n")
    assert training_runs(tmp_path) == [tmp_path / "0_genuine"]
    assert calls == []
