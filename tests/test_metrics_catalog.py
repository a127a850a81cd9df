"""Every registered metric keeps the catalogue's promises, checked on a tiny ViT, not assumed:

- it declares what it needs beyond the maps (`needs`: mask, class_masks, model, method), and a
  metric that does not declare the model never runs it, one that does not declare the method
  never calls it, one that declares a mask refuses a batch without one;
- it declares its cost in model passes per image (`cost(h, w)`), and the forwards, backwards
  and explanation calls counted during one update are exactly that;
- each of its columns says which direction is better (a class that declares nothing fails);
- it is in the docs' catalogue table and in a `conf/metric/` config;
- two DDP processes (gloo, CPU) give the same per-image values as one process.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO_ROOT
from torch import nn

from xai_bench.explain import build_method
from xai_bench.metrics import METRICS, EvalBatch, ImageMetric, build_metric
from xai_bench.metrics.base import NEEDS, Cost
from xai_bench.utils.errors import ConfigError

SIZE, CLASSES, BATCH = 32, 3, 4

# cheaper settings than the defaults, for these tests only (the defaults are sized for 224 px
# studies); the cost declarations must hold for any setting
SETTINGS: dict[str, dict[str, Any]] = {
    "aopc": {"region": [8, 16], "only_correct": False},
    "max_sensitivity": {"radius": [0.1, 0.2], "samples": [2, 3], "only_correct": False},
    "deletion_insertion": {"steps": 4},
    "smooth_mprt": {"samples": 2},
    "non_sensitivity": {"features_in_step": 32},
    "faithfulness_correlation": {"runs": 4, "subset_size": 16},
    "continuity": {"steps": 4},
    "sensitivity_n": {"runs": 3, "fractions": [0.1, 0.5]},
    "avg_sensitivity": {"samples": 3},
    "monotonicity_correlation": {"features_in_step": 128, "samples": 2},
    "local_lipschitz_estimate": {"samples": 3},
    "relative_input_stability": {"samples": 3},
    "relative_output_stability": {"samples": 3},
    "relative_representation_stability": {"samples": 3},
    "irof": {"n_segments": 12},
    "road": {"percentages": [20, 60]},
    "infidelity": {"samples": 3},
    "faithfulness_estimate": {"features_in_step": 64},
}


class Counter:
    """Counts the images a network sees forward and backward, outside the explanation method
    (hooks on the network itself: methods find their layers on it as usual)."""

    def __init__(self, net: nn.Module) -> None:
        self.inside_method = False
        self.forwards = self.backwards = 0
        net.register_forward_hook(self._forward)

    def _forward(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if self.inside_method:
            return
        rows = args[0].shape[0]
        self.forwards += rows
        if out.requires_grad:

            def count(grad: torch.Tensor) -> None:
                self.backwards += rows

            out.register_hook(count)


class CountingMethod:
    """Wraps an explanation method; counts the images it explains."""

    def __init__(self, method: Any, counter: Counter) -> None:
        self.method, self.counter, self.calls = method, counter, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.method, name)

    def __call__(self, model: nn.Module, images: torch.Tensor, **kwargs: Any) -> Any:
        self.calls += images.shape[0]
        self.counter.inside_method = True
        try:
            return self.method(model, images, **kwargs)
        finally:
            self.counter.inside_method = False


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=8, depth=2,
                             num_classes=CLASSES).eval()


def _data(n: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, SIZE, SIZE)
    for i in range(n):
        top, left = torch.randint(0, SIZE // 2, (2,), generator=gen).tolist()
        masks[i, top:top + SIZE // 3, left:left + SIZE // 3] = 1
    class_masks = torch.zeros(n, CLASSES, SIZE, SIZE)
    class_masks[:, 0] = masks
    # a planted marker (the synthetic dataset's) in the corner of every other image
    marker_masks = torch.zeros(n, SIZE, SIZE)
    marker_masks[::2, 1:4, 1:4] = 1
    return {"images": torch.randn(n, 3, SIZE, SIZE, generator=gen),
            "ids": torch.arange(n) * 7,
            "masks": masks, "class_masks": class_masks, "marker_masks": marker_masks}


def _batch(model: nn.Module, method: Any, data: dict[str, torch.Tensor],
           with_masks: bool = True) -> EvalBatch:
    with torch.no_grad():
        logits = model(data["images"])
    explanation = method(model, data["images"], target=logits.argmax(1), ids=data["ids"])
    # labels = the predictions: every image counts as correct, and a metric that explains the
    # label (max_sensitivity's target=label) reuses the map, as its declared cost assumes
    return EvalBatch(
        images=data["images"], labels=logits.argmax(1), ids=data["ids"], maps=explanation.maps,
        target=explanation.target, logits=logits, model=model, method=method,
        masks=data["masks"] if with_masks else None,
        has_mask=torch.ones(len(data["ids"]), dtype=torch.bool) if with_masks else None,
        class_masks=data["class_masks"] if with_masks else None,
        marker_masks=data["marker_masks"] if with_masks else None,
    )


def _metric(name: str) -> ImageMetric:
    return build_metric(name, **SETTINGS.get(name, {}))


NAMES = sorted(METRICS)


def test_the_catalogue_is_not_empty() -> None:
    assert len(NAMES) >= 10  # guards the parametrisations below against an empty registry


@pytest.mark.parametrize("name", NAMES)
def test_declared_needs_and_cost_are_what_the_metric_does(name: str) -> None:
    model = _net()
    counter = Counter(model)
    method = CountingMethod(build_method("gradcam"), counter)
    batch = _batch(model, method, _data())
    counter.forwards = counter.backwards = method.calls = 0
    metric = _metric(name)
    assert set(metric.needs) <= set(NEEDS), metric.needs
    metric.update(batch)
    counted = Cost(forwards=counter.forwards / BATCH, backwards=counter.backwards / BATCH,
                   explanations=method.calls / BATCH)
    declared = metric.spent(metric.compute()) or metric.cost(model, SIZE, SIZE)
    assert counted == declared, (name, counted, declared)
    if "model" not in metric.needs:
        assert counted.forwards == counted.backwards == 0, name
    if "method" not in metric.needs:
        assert counted.explanations == 0, name


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if {"mask", "class_masks", "marker_mask"} & METRICS[n].needs])
def test_a_metric_that_needs_masks_refuses_a_batch_without(name: str) -> None:
    model = _net()
    batch = _batch(model, build_method("gradcam"), _data(), with_masks=False)
    with pytest.raises(ConfigError, match="mask|boxes"):
        _metric(name).update(batch)


@pytest.mark.parametrize("name", NAMES)
def test_every_column_says_which_direction_is_better(name: str) -> None:
    cls = METRICS[name]
    declares = any("higher_is_better" in vars(k) or "column_higher_is_better" in vars(k)
                   for k in cls.__mro__ if k is not ImageMetric and issubclass(k, ImageMetric))
    assert declares, f"{cls.__name__} declares neither higher_is_better nor column_higher_is_better"
    model = _net()
    metric = _metric(name)
    metric.update(_batch(model, build_method("gradcam"), _data()))
    table = metric.compute()
    columns = metric.aggregate({k: v[None] for k, v in table.items() if k != "id"})
    for column in columns:
        assert metric.column_higher_is_better(column) in (True, False, None), column


def _catalogue_names() -> set[str]:
    """The registry names in the catalogue table of docs/metrics.md (first column)."""
    text = (REPO_ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    section = text.split("## Catalogue", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M))


def test_every_metric_is_in_the_docs_catalogue_and_a_config() -> None:
    assert _catalogue_names() == set(NAMES)
    configured = set()
    for path in (REPO_ROOT / "conf" / "metric").glob("*.yaml"):
        configured |= set(re.findall(r"^\s+name: (\w+)\s*$", path.read_text(), flags=re.M))
    assert set(NAMES) - configured == set()


# --------------------------------------------------------------------------------------------
# DDP: two processes, the images interleaved as DistributedSampler spreads them (the last
# batch padded with a repeat), give the one-process per-image table


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tables(rank: int, world: int, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    model = _net()
    method = build_method("gradcam")
    data = _data(n=7, seed=1)
    order = list(range(7)) + [0]  # padded to a multiple of the world size, as the sampler does
    rows = torch.tensor(order[rank::world])
    shard = {k: v[rows] for k, v in data.items()}
    tables = {}
    for name in names:
        metric = _metric(name)
        for start in range(0, len(rows), 2):  # two images per batch
            part = {k: v[start:start + 2] for k, v in shard.items()}
            metric.update(_batch(model, method, part))
        tables[name] = metric.compute()
    return tables


def _worker(rank: int, world: int, port: int, names: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tables = _tables(rank, world, names)
        if rank == 0:
            torch.save(tables, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_one_process_table(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, _free_port(), NAMES, str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    single = _tables(0, 1, NAMES)
    for name in NAMES:
        assert ddp[name].keys() == single[name].keys(), name
        assert torch.equal(ddp[name]["id"], single[name]["id"]), name
        for column, values in single[name].items():
            torch.testing.assert_close(ddp[name][column], values, equal_nan=True, rtol=1e-5,
                                       atol=1e-6, msg=f"{name} {column}")


# metrics that need what `metric=all`'s datasets lack: boxes.csv, the synthetic planted marker
NOT_IN_ALL = {"wsl_iou", "marker_share"}


def test_metric_all_builds_every_metric_but_the_box_one() -> None:
    """`metric=all` composes every family config: each registered metric (wsl_iou and
    marker_share aside: they need boxes.csv, a planted marker) is built by at least one
    entry."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["metric=all"])
    names = {entry["name"] for entry in cfg.metric.values() if entry and "name" in entry}
    assert names == set(NAMES) - NOT_IN_ALL


@pytest.mark.slow
def test_evaluate_metric_all_from_the_command_line(finished_run: Path, tmp_path: Path) -> None:
    """`python -m xai_bench.evaluate metric=all` on a tiny trained run: every metric of the
    catalogue (NOT_IN_ALL aside) has its columns in metrics.json, with a better direction where
    its class declares one, for the method and the baselines."""
    from conftest import run_cli

    from xai_bench.tracking.records import EvaluationSummary

    out = tmp_path / "eval"
    proc = run_cli(["xai_bench.evaluate", f"ckpt={finished_run}", "method=gradcam", "metric=all",
                    "max_images=8", "overlays=0", "logger=none", "print_config=false",
                    f"hydra.run.dir={out}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = EvaluationSummary.read(out)
    assert set(summary.methods) == {"gradcam", "random", "centre", "uniform"}
    columns = summary.methods["gradcam"].metrics
    keys = set(NAMES) - NOT_IN_ALL
    for name in keys:
        key = "mprt" if name == "parameter_randomisation" else name
        assert any(c == key or c.startswith((f"{key}@", f"{key}/")) for c in columns), name
    assert columns["pointing_game"]["higher_is_better"] is True
    assert columns["sparseness"]["n"] == 8

    # every column reaches the report's tables, marked the way its metric declares
    from xai_bench.report.study import scan_sweep, study_table
    from xai_bench.report.writers import footnotes, write_markdown

    runs = scan_sweep(tmp_path).runs
    table = study_table(runs, metrics=sorted(columns))
    assert table.metrics == sorted(columns) and table.rows == [("synthetic", "random")]
    assert [c for c, stats in columns.items() if not stats["n"]] == []  # NaN for every image
    for column, stats in columns.items():
        cell = table.cell(table.rows[0], "gradcam", column)
        assert cell is not None and cell.n == stats["n"], column
        assert table.direction(column) is stats["higher_is_better"], column
        if stats["higher_is_better"] is None:
            assert not cell.best and cell.beats_random is None, column
        elif cell.value is not None:
            assert cell.best, column  # the only method of the row
    text = write_markdown(table, [], tmp_path / "report.md").read_text()
    assert text.count("\n## ") == len(columns) + 1  # a table per column, then the notes
    assert table.lower_is_better("complexity") and not table.lower_is_better("sparseness")
    assert "(lower is better)" in footnotes(table)[0]
