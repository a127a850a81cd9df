"""Several methods in one evaluation job (`methods=[...]`, or `method=[...]` on the command line):
each method keeps its conf/method/ settings and its overrides, each batch is loaded once, the
baselines are scored once, a method scores as it would alone, and the report reads one folder of
several methods as it read one folder per method. The study's evaluation sweeps checkpoints only.
"""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, run_cli
from omegaconf import OmegaConf
from tiny_models import tiny_cnn, tiny_vit

from xai_bench import evaluate as entry
from xai_bench.data.datamodule import SyntheticDataModule
from xai_bench.explain import build_method
from xai_bench.metrics import build_metric
from xai_bench.modules.evaluator import ExplanationEvaluator
from xai_bench.report.html import copy_galleries
from xai_bench.report.significance import Settings, collect_replicates
from xai_bench.report.study import scan_sweep, study_table, sweep_facts
from xai_bench.tracking.records import EvaluationSummary
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run
from xai_bench.utils.errors import ConfigError

METHOD_CONFIGS = sorted(p.stem for p in (REPO_ROOT / "conf" / "method").glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# the command line and the configs


def test_a_method_list_on_the_command_line_is_the_methods_group() -> None:
    argv = ["evaluate.py", "ckpt=r", "method=[attention, chefer,'gradcam']",
            "method.chefer.start_layer=2", "method.gradcam.layer=blocks.0.norm1", "split=test"]
    assert entry.method_list_alias(argv) == [
        "evaluate.py", "ckpt=r", "methods=[attention, chefer,'gradcam']",
        "methods.chefer.start_layer=2", "methods.gradcam.layer=blocks.0.norm1", "split=test"]
    single = ["evaluate.py", "method=chefer", "method.start_layer=2", "-m", "method=a,b"]
    assert entry.method_list_alias(single) == single
    # a key that is not one of the listed methods stays where it was (Hydra then says why)
    assert entry.method_list_alias(["x", "method=[a]", "method.b.k=1"])[-1] == "method.b.k=1"


def test_every_method_option_is_a_methods_option_with_the_same_settings(compose_cfg) -> None:
    assert sorted(p.stem for p in (REPO_ROOT / "conf" / "methods").glob("*.yaml")) == \
        METHOD_CONFIGS, "conf/methods/ needs one wrapper per conf/method/ option"
    cfg = compose_cfg(f"methods=[{','.join(METHOD_CONFIGS)}]", "ckpt=x.ckpt",
                      config_name="evaluate")
    assert list(cfg.methods) == METHOD_CONFIGS
    for name in METHOD_CONFIGS:
        own = OmegaConf.load(REPO_ROOT / "conf" / "method" / f"{name}.yaml")
        assert OmegaConf.to_container(cfg.methods[name]) == OmegaConf.to_container(own), name


def test_each_method_keeps_its_settings_and_overrides(compose_cfg) -> None:
    cfg = compose_cfg("methods=[attention,chefer,gradcam]", "methods.chefer.start_layer=2",
                      "ckpt=x.ckpt", config_name="evaluate")
    assert list(cfg.methods) == ["attention", "chefer", "gradcam"]
    assert cfg.methods.chefer.start_layer == 2 and "layer" not in cfg.methods.chefer
    assert cfg.methods.attention.layer == -1 and cfg.methods.attention.upsample == "nearest"
    assert cfg.methods.gradcam.order == "standard"
    # an override of a method that is not selected is refused by Hydra, as for any key
    with pytest.raises(Exception, match="methods.rollout"):
        compose_cfg("methods=[chefer]", "methods.rollout.head_fusion=max", "ckpt=x.ckpt",
                    config_name="evaluate")
    # why the list is not the `method` group itself: Hydra merges a group's list into one
    # node, attention's settings under chefer's name
    merged = compose_cfg("method=[attention,chefer]", "ckpt=x.ckpt", config_name="evaluate")
    assert merged.method.name == "chefer" and merged.method.head_reduction == "mean"


def test_selected_methods(compose_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_cfg("method=gradcam", "ckpt=x.ckpt", config_name="evaluate")
    assert list(entry.selected_methods(cfg)) == ["gradcam"] and "method" in cfg

    cfg = compose_cfg("experiment=study_eval", "train_sweep=x", "methods=[chefer,gradcam]",
                      "ckpt=x.ckpt", config_name="evaluate")
    assert "attention" in cfg.methods  # study_eval's setting for a method left out
    selected = entry.selected_methods(cfg)
    assert list(selected) == ["chefer", "gradcam"] and selected["chefer"].target == 1
    # config.yaml records what ran: no unused `method`, no settings of methods not run
    assert "method" not in cfg and list(cfg.methods) == ["chefer", "gradcam"]

    cfg = compose_cfg("methods=[chefer]", "ckpt=x.ckpt", config_name="evaluate")
    monkeypatch.setattr(entry, "_command_line", lambda: ["methods=[chefer]", "method=gradcam"])
    with pytest.raises(ConfigError, match="method=gradcam and methods=.* both given"):
        entry.selected_methods(cfg)
    monkeypatch.undo()
    cfg = compose_cfg("+methods.chefer.target=1", "ckpt=x.ckpt", config_name="evaluate")
    with pytest.raises(ConfigError, match="selects no method"):
        entry.selected_methods(cfg)


def test_run_name_and_tags_name_every_method(compose_cfg) -> None:
    several = compose_cfg("methods=[attention,chefer]", "ckpt=x.ckpt", config_name="evaluate")
    assert entry.method_label(_root_=several) == "attention+chefer"
    assert entry.method_names(_root_=several) == ["attention", "chefer"]
    one = compose_cfg("method=gradcam", "ckpt=x.ckpt", config_name="evaluate")
    assert entry.method_label(_root_=one) == "gradcam"
    assert OmegaConf.to_container(compose_cfg("ckpt=x.ckpt", config_name="evaluate"))[
        "run_name"] == "${run:run_name}-${xai.eval_label:}"


def _fake_training_run(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("task_name: train\n")
    (folder / "checkpoints" / "best.ckpt").write_bytes(b"")
    return folder


@pytest.mark.parametrize(("experiment", "methods"), [
    ("study_eval", ["gradcam_study", "attention", "chefer"]),
    ("faithfulness_eval", ["gradcam", "hirescam"]),
])
def test_study_evaluations_sweep_checkpoints_only(compose_cfg, tmp_path: Path, experiment: str,
                                                  methods: list[str]) -> None:
    for name in ("0_kvasir-dino-sgd-s42", "1_mura-mae-sgd-s42"):
        _fake_training_run(tmp_path / name)
    cfg = compose_cfg(f"experiment={experiment}", f"train_sweep={tmp_path}", "ckpt=x.ckpt",
                      config_name="evaluate")
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    assert list(params) == ["ckpt"] and params["ckpt"].count(",") == 1  # 2 jobs, not 2 x 3
    assert entry.method_names(_root_=cfg) == methods
    if experiment == "study_eval":
        assert all(cfg.methods[m].target == 1 for m in methods)


# ---------------------------------------------------------------------------------------------
# the evaluator: one pass over the data, each method as it would score alone


class _Counting(torch.utils.data.Dataset):
    """The split, counting the images read."""

    def __init__(self, dataset: Any) -> None:
        self.dataset, self.reads = dataset, 0
        self.indices = getattr(dataset, "indices", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        return self.dataset[index]


class _CountingMethod:
    """A method that counts its calls (the baselines: once per batch, whatever the methods)."""

    def __init__(self, name: str) -> None:
        self.method, self.calls = build_method(name), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.method, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.method(*args, **kwargs)


METRICS = {
    "pointing_game": partial(build_metric, "pointing_game"),
    "iou": partial(build_metric, "iou", q=[10]),
    "aopc": partial(build_metric, "aopc", region=[8], steps=2, fill="zero", only_correct=False),
}
# every method that explains the tiny ViT (rise: seconds, and a forward-only sampler)
VIT_METHODS = ["attention", "attnlrp", "chefer", "chefer_generic", "cp_lrp", "eigencam",
               "eigengradcam", "gradcam", "gradcam_plusplus", "gradcam_study", "gradient_shap",
               "guided_backprop", "hirescam", "input_x_gradient", "integrated_gradients",
               "kernel_shap", "layercam", "lime", "occlusion", "rollout", "saliency",
               "scorecam", "smoothgrad", "vargrad", "xgradcam", "ablationcam"]
# the CNN-only ones, with the CAMs on the tiny CNN's last convolution
CNN_METHODS = ["deeplift", "deeplift_shap", "fullgrad", "lrp", "guided_backprop", "gradcam",
               "saliency", "integrated_gradients"]


def _build(name: str, cnn: bool) -> Any:
    node = OmegaConf.load(REPO_ROOT / "conf" / "method" / f"{name}.yaml")
    if cnn and "layer" in node:
        node.layer = "c2"
    return hydra.utils.instantiate(node)


def _evaluate(net: torch.nn.Module, methods: dict[str, Any], loader: Any) -> dict[str, Any]:
    """The evaluator's own steps without a Trainer (one process: nothing to gather)."""
    module = ExplanationEvaluator(net, methods, METRICS, num_classes=2)
    module.on_test_start()
    try:
        for index, batch in enumerate(loader):
            module.test_step(batch, index)
        module.on_test_epoch_end()
    finally:
        module.on_test_end()
    return module.results


def _assert_same(ours: dict[str, torch.Tensor], alone: dict[str, torch.Tensor], what: str) -> None:
    assert ours.keys() == alone.keys(), what
    for key in ours:
        torch.testing.assert_close(ours[key], alone[key], rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, k=key: f"{what} {k}: {m}")


@pytest.mark.parametrize("cnn", [False, True], ids=["vit", "cnn"])
def test_several_methods_score_as_each_alone_in_one_pass(cnn: bool) -> None:
    torch.manual_seed(0)
    net = (tiny_cnn() if cnn else tiny_vit()).float()
    data = SyntheticDataModule(img_size=32, num_train=8, num_val=8, num_test=5, batch_size=2)
    data.setup("test")
    loader = data.eval_dataloader("test")
    counted = _Counting(loader.dataset)
    loader = torch.utils.data.DataLoader(counted, batch_size=2)
    names = CNN_METHODS if cnn else VIT_METHODS
    baselines = {name: _CountingMethod(name) for name in ("random", "centre", "uniform")}
    together = _evaluate(net, {**{n: _build(n, cnn) for n in names}, **baselines}, loader)
    assert counted.reads == 5  # each image read once, for every method
    assert [b.calls for b in baselines.values()] == [3, 3, 3]  # each baseline once per batch
    assert list(together["methods"]) == [*names, *baselines]
    for name in names:
        alone = _evaluate(net, {name: _build(name, cnn)}, loader)["methods"][name]
        ours = together["methods"][name]
        _assert_same(ours["maps"], alone["maps"], f"{name} maps")
        for key in METRICS:
            _assert_same(ours["metrics"][key], alone["metrics"][key], f"{name} {key}")


# ---------------------------------------------------------------------------------------------
# the report: one folder of several methods reads as one folder per method

SEVERAL = ("gradcam_study", "attention", "chefer")
BASELINES = ("random", "centre", "uniform")
SCORED = ("pointing_game", "iou@10")
IMAGES = 30


def _stats(values: np.ndarray) -> dict[str, Any]:
    value = float(np.mean(values))
    return {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "n": IMAGES,
            "higher_is_better": True}


def _write_job(folder: Path, train: Path, row: tuple[str, str], methods: tuple[str, ...],
               scores: dict[str, dict[str, np.ndarray]]) -> None:
    """An evaluation run folder as evaluate writes it, for one method or several."""
    folder.mkdir(parents=True)
    single = len(methods) == 1
    chosen = ({"method": {"name": methods[0]}} if single
              else {"methods": {m: {"name": m} for m in methods}})
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "task_name": "evaluate", "dataset": {"name": row[0]}, "init": {"name": row[1]},
        **chosen, "model": {"arch": "vit"}, "ckpt": str(train), "seed": 42,
        "logger": {"wandb": {"group": "g"}}}))
    entries = (*methods, *BASELINES)
    (folder / "metrics.json").write_text(json.dumps({
        "method": methods[0] if single else None, "evaluated_methods": list(methods),
        "baselines": list(BASELINES), "counts": {"images": IMAGES},
        "methods": {e: {"metrics": {m: _stats(scores[e][m]) for m in SCORED}, "counts": {}}
                    for e in entries},
        "bootstrap": {"samples": 100, "level": 0.95, "seed": 0},
        "checkpoint": str(train / "checkpoints" / "best.ckpt"), "training_run": str(train)}))
    with (folder / "per_image.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "label", "pred", "method", *SCORED])
        for e in entries:
            writer.writerows([i, f"img{i}.png", 1, 1, e, *(scores[e][m][i] for m in SCORED)]
                             for i in range(IMAGES))
    for e in entries:
        (folder / "overlays" / e).mkdir(parents=True)
        (folder / "overlays" / e / "000003.png").write_bytes(e.encode())


def _sweeps(root: Path) -> tuple[Path, Path]:
    """The same scores as one job per method and as one job per checkpoint."""
    rng = np.random.default_rng(0)
    for row in (("kvasir", "random"), ("mura", "dino")):
        for seed in (1, 2):
            train = root / "train" / f"{row[0]}-{row[1]}-s{seed}"
            train.mkdir(parents=True)
            (train / "config.yaml").write_text(yaml.safe_dump({"task_name": "train",
                                                               "seed": seed}))
            scores = {e: {"pointing_game": (rng.random(IMAGES) < 0.6).astype(float),
                          "iou@10": np.round(rng.uniform(0, 1, IMAGES), 6)}
                      for e in (*SEVERAL, *BASELINES)}
            for number, method in enumerate(SEVERAL):
                _write_job(root / "per_method" / f"{row}{seed}_{number}", train, row, (method,),
                           scores)
            _write_job(root / "per_checkpoint" / f"{row}{seed}", train, row, SEVERAL, scores)
    return root / "per_method", root / "per_checkpoint"


def _report(sweep: Path, out: Path) -> dict[str, Any]:
    scan = scan_sweep(sweep)
    table = study_table(scan.runs, metrics=SCORED)
    replicates, notes = collect_replicates(scan.runs, SCORED)
    galleries = copy_galleries(scan.runs, table, out, per_gallery=4)
    facts = dict(sweep_facts(scan, table))
    del facts["sweep"]
    return {
        "records": sorted((r.dataset, r.init, r.method, r.checkpoint, json.dumps(r.metrics),
                           json.dumps(r.baselines, sort_keys=True)) for r in scan.runs),
        "cells": table.cells, "methods": table.methods, "baselines": table.baselines,
        "replicates": {row: [(r.checkpoint, r.seed, r.values) for r in reps]
                       for row, reps in replicates.items()},
        "notes": notes, "facts": facts, "incomplete": scan.incomplete,
        "galleries": galleries, "overlays": sorted(
            (str(p.relative_to(out)), p.read_bytes()) for p in out.rglob("*.png")),
    }


def test_the_report_reads_a_folder_of_several_methods_as_one_folder_per_method(
        tmp_path: Path) -> None:
    per_method, per_checkpoint = _sweeps(tmp_path)
    assert len(list(per_checkpoint.iterdir())) * 3 == len(list(per_method.iterdir())) == 12
    before = _report(per_method, tmp_path / "out_a")
    after = _report(per_checkpoint, tmp_path / "out_b")
    assert len(after["records"]) == 12 and after["methods"] == list(SEVERAL)
    assert after["replicates"] and not after["incomplete"]
    assert after == before
    # the paired tests see the same per-image records
    from xai_bench.report.significance import analyse

    scan_a, scan_b = scan_sweep(per_method), scan_sweep(per_checkpoint)
    settings = Settings(samples=50)
    tests_a = analyse(scan_a.runs, study_table(scan_a.runs, metrics=SCORED), settings)
    tests_b = analyse(scan_b.runs, study_table(scan_b.runs, metrics=SCORED), settings)
    assert tests_a.comparisons and tests_a.comparisons == tests_b.comparisons


def test_a_method_without_scores_is_skipped_with_its_reason(tmp_path: Path) -> None:
    _per_method, per_checkpoint = _sweeps(tmp_path)
    folder = sorted(per_checkpoint.iterdir())[0]
    summary = EvaluationSummary.read(folder)
    del summary.methods["chefer"]
    summary.failed_methods["chefer"] = "every map is NaN (30 images)"
    summary.write(folder)
    scan = scan_sweep(per_checkpoint)
    assert len(scan.runs) == 11
    assert [(s.run_dir, s.reason) for s in scan.incomplete] == [
        (folder, "chefer: every map is NaN (30 images)")]


def test_nan_maps_of_one_of_several_methods_keep_the_others() -> None:
    def summary(nan: dict[str, int]) -> EvaluationSummary:
        return EvaluationSummary.from_dict({
            "counts": {"images": 4}, "baselines": ["random"],
            "methods": {m: {"metrics": {}, "counts": {"nan_maps": nan.get(m, 0)}}
                        for m in ("attention", "chefer", "random")}})

    selected = ["attention", "chefer"]
    partial_nan = summary({"chefer": 4})
    assert entry.drop_failed_methods(partial_nan, selected) == (["chefer"], True)
    assert list(partial_nan.methods) == ["attention", "random"]
    assert partial_nan.failed_methods == {"chefer": "every map is NaN (4 images)"}
    # every method, or a baseline (NaN weights): nothing is kept, as with one method
    for nan in ({"attention": 4, "chefer": 4}, {"random": 4}):
        whole = summary(nan)
        assert entry.drop_failed_methods(whole, selected)[1] is False
        assert len(whole.methods) == 3 and not whole.failed_methods
    one = summary({"chefer": 4})
    assert entry.drop_failed_methods(one, ["chefer"]) == (["chefer"], False)


# ---------------------------------------------------------------------------------------------
# end to end: one job of three methods against the three jobs it replaces


def _rows(folder: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["method"], r["id"]): r for r in csv.DictReader((folder / "per_image.csv").open())}


@pytest.mark.slow
def test_one_job_of_three_methods_equals_three_jobs(run_copy: Path, tmp_path: Path) -> None:
    common = [f"ckpt={run_copy}", "metric=[study]", "max_images=6", "data.batch_size=4",
              "overlays=2", "print_config=false"]
    several = tmp_path / "several" / "job"
    proc = run_cli(["xai_bench.evaluate", *common, "method=[attention,chefer,gradcam]",
                    "method.chefer.start_layer=1", f"hydra.run.dir={several}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    alone = tmp_path / "alone"
    proc = run_cli(["xai_bench.evaluate", "-m", *common, "method=attention,gradcam",
                    "logger=none", f"hydra.sweep.dir={alone}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    proc = run_cli(["xai_bench.evaluate", *common, "method=chefer", "method.start_layer=1",
                    "logger=none", f"hydra.run.dir={alone / 'chefer'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    summary = EvaluationSummary.read(several)
    assert summary.evaluated_methods == ["attention", "chefer", "gradcam"]
    assert summary.method is None and summary.baselines == list(BASELINES)
    assert set(summary.methods) == {"attention", "chefer", "gradcam", *BASELINES}
    config = yaml.safe_load((several / "config.yaml").read_text())
    assert "method" not in config and list(config["methods"]) == ["attention", "chefer",
                                                                   "gradcam"]
    assert config["methods"]["chefer"]["start_layer"] == 1
    assert config["run_name"].endswith("-attention+chefer+gradcam")
    for entry_name in summary.methods:
        assert len(list((several / "overlays" / entry_name).glob("*.png"))) == 2

    rows = _rows(several)
    assert len(rows) == 6 * 6
    singles = [f for f in alone.iterdir() if (f / "metrics.json").is_file()]
    assert len(singles) == 3
    for folder in singles:
        single = EvaluationSummary.read(folder)
        name = single.method
        assert single.evaluated_methods == [name]
        for entry_name in (name, *BASELINES):
            assert single.methods[entry_name] == summary.methods[entry_name], entry_name
        for key, row in _rows(folder).items():
            assert rows[key] == row, key

    # one W&B run for the job: every method's scores, tags, and a table per method
    (run_dir,) = offline_run_dirs(several)
    run = read_offline_run(run_dir)
    assert {"attention", "chefer", "gradcam"} <= set(run.tags)
    for name in ("attention", "chefer", "gradcam"):
        assert run.metric(f"eval/{name}/pointing_game")[-1] == pytest.approx(
            summary.methods[name].value("pointing_game"))
    # a table is a summary entry (flattened here as <key>/<field>)
    for key, rows_logged in (("eval/per_image", 6 * 6), ("eval/per_image/chefer", 6),
                             ("eval/per_image/random", 6), ("eval/scores", 6)):
        assert run.summary.get(f"{key}/_type") == "table-file", key
        assert run.summary[f"{key}/nrows"] == rows_logged, key

    # the report: the same records from the one folder as from the three
    scan_one, scan_three = scan_sweep(tmp_path / "several"), scan_sweep(alone)
    assert sorted((r.method, json.dumps(r.metrics), json.dumps(r.baselines, sort_keys=True))
                  for r in scan_one.runs) == sorted(
        (r.method, json.dumps(r.metrics), json.dumps(r.baselines, sort_keys=True))
        for r in scan_three.runs)
