"""Evaluation runs aggregated into the study's table: rows dataset x init, one column per method
and metric, the trivial baselines beside the methods, optionally the published numbers."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from xai_bench.report.eval_runs import EvalRun
from xai_bench.report.study_grid import (
    BASELINES,
    DEFAULT_METRICS,
    STUDY_DATASETS,
    STUDY_INITS,
    STUDY_METHODS,
    lower_is_better,
    study_order,
)
from xai_bench.utils.errors import ConfigError

__all__ = [
    "COMPARE_CHOICES",
    "IOU_MODES",
    "PUBLISHED_METHODS",
    "Cell",
    "StudyTable",
    "combine",
    "load_published",
    "mark_beats_random_by_test",
    "set_seed_intervals",
    "study_table",
]

# published method -> our methods, first present wins (the study's Grad-CAM is gradcam_study)
PUBLISHED_METHODS = {"gradcam": ("gradcam_study", "gradcam"), "attention": ("attention",),
                     "chefer": ("chefer",)}
COMPARE_CHOICES = ("study",)
IOU_MODES = ("mean", "max")


@dataclass
class Cell:
    """One method's (or baseline's) score on one row: a single run keeps its bootstrap interval
    over images; several runs (seeds, checkpoints) give their mean and sd across runs, with a
    hierarchical bootstrap interval (seeds, then images) where their per-image records allow it
    (set_seed_intervals), else the range across runs."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    n_runs: int = 1
    runs_min: float | None = None
    runs_max: float | None = None
    sd: float | None = None  # across runs (ddof 1), when n_runs > 1
    # what [ci_low, ci_high] is: "images" (one run's bootstrap over images), "hierarchical"
    # (several runs: seeds, then images), "range" (several runs without matching per-image
    # records: no interval, runs_min / runs_max shown instead)
    interval_rule: str | None = None
    best: bool = False
    beats_random: bool | None = None
    # what decided beats_random: "test" (the Holm-corrected paired test against random on the
    # same images, xai_bench.report.significance) or "point" (the point estimates)
    beats_random_rule: str | None = None
    published: float | None = None

    @property
    def delta(self) -> float | None:
        """Ours minus the published value."""
        if self.value is None or self.published is None:
            return None
        return self.value - self.published


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def combine(stats: Sequence[dict[str, Any]]) -> Cell | None:
    """One cell from the runs' {value, ci_low, ci_high, n} entries (None when none has a value)."""
    valued = [s for s in stats if _number(s.get("value")) is not None]
    if not valued:
        return Cell(value=None, n_runs=0) if stats else None
    values = [float(s["value"]) for s in valued]
    ns = [int(s["n"]) for s in valued if s.get("n") is not None]
    if len(valued) == 1:
        s = valued[0]
        low, high = _number(s.get("ci_low")), _number(s.get("ci_high"))
        return Cell(values[0], low, high, ns[0] if ns else None, 1, values[0], values[0],
                    interval_rule="images" if low is not None and high is not None else None)
    # the smallest n: the number of images every averaged run has
    return Cell(sum(values) / len(values), None, None, min(ns) if ns else None, len(values),
                min(values), max(values), sd=statistics.stdev(values), interval_rule="range")


@dataclass
class StudyTable:
    """Rows (dataset, init) x entries (methods, then baselines) x metrics, in the study's order."""

    rows: list[tuple[str, str]]
    methods: list[str]
    baselines: list[str]
    metrics: list[str]
    cells: dict[tuple[str, str, str, str], Cell]
    accuracy: dict[tuple[str, str], float | None] = field(default_factory=dict)
    compare: str | None = None
    compare_iou: str | None = None
    notes: list[str] = field(default_factory=list)
    # metric -> what the metrics.json files declare (metrics' `higher_is_better`; None = the
    # column has no better direction, e.g. a count or a signed gap)
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)
    # the level of the paired tests behind the cells whose beats_random_rule is "test"
    alpha: float | None = None

    def direction(self, metric: str) -> bool | None:
        """True when a larger value is the better map, False when a smaller one, None when the
        metric declares neither: as the evaluation summaries declare it, else guessed from the
        name (summaries written before metrics declared it)."""
        if metric in self.higher_is_better:
            return self.higher_is_better[metric]
        return not lower_is_better(metric)

    def lower_is_better(self, metric: str) -> bool:
        return self.direction(metric) is False

    @property
    def entries(self) -> list[str]:
        return [*self.methods, *self.baselines]

    def kind(self, entry: str) -> str:
        return "baseline" if entry in self.baselines else "method"

    def cell(self, row: tuple[str, str], entry: str, metric: str) -> Cell | None:
        return self.cells.get((*row, entry, metric))

    @property
    def averaged(self) -> bool:
        """Whether any cell is the mean of several runs."""
        return any(c.n_runs > 1 for c in self.cells.values())


def _sources(run: EvalRun) -> list[tuple[str, dict[str, dict[str, Any]], bool]]:
    """(entry, its metrics, shared by the runs of one checkpoint) for a run's method and
    baselines."""
    own = [(run.method, run.metrics, run.method in BASELINES)]
    return own + [(name, metrics, True) for name, metrics in run.baselines.items()]


def _group_stats(runs: Sequence[EvalRun],
                 metric: str) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(dataset, init, entry) -> the metric's stats, one per run (methods) or per checkpoint
    (baselines: every run of one checkpoint computes the same ones; the first run's are taken)."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    seen: set[tuple[str, str, str, str]] = set()
    for run in runs:
        for name, metrics, shared in _sources(run):
            if metric not in metrics:
                continue
            if shared:
                key = (run.dataset, run.init, name, run.checkpoint)
                if key in seen:
                    continue
                seen.add(key)
            grouped.setdefault((run.dataset, run.init, name), []).append(metrics[metric])
    return grouped


def _declared_directions(runs: Sequence[EvalRun]) -> dict[str, bool | None]:
    """metric -> higher_is_better as the runs' summaries declare it (the first true / false
    declaration; None when they declare it only as null: no better direction)."""
    declared: dict[str, bool | None] = {}
    for run in runs:
        for _name, metrics, _shared in _sources(run):
            for metric, stats in metrics.items():
                if not isinstance(stats, dict) or "higher_is_better" not in stats:
                    continue
                value = stats["higher_is_better"]
                if isinstance(value, bool) and declared.get(metric) is None:
                    declared[metric] = value
                elif value is None:
                    declared.setdefault(metric, None)
    return declared


def _entries(runs: Sequence[EvalRun]) -> tuple[list[str], list[str]]:
    baselines = ({b for r in runs for b in r.baselines}
                 | {r.method for r in runs if r.method in BASELINES})
    methods = {r.method for r in runs} - baselines
    return study_order(methods, STUDY_METHODS), study_order(baselines, BASELINES)


def _row_accuracy(runs: Sequence[EvalRun]) -> dict[tuple[str, str], float | None]:
    """Mean test accuracy of the distinct training runs of each row (None when unreachable)."""
    per_row: dict[tuple[str, str], dict[str, float]] = {}
    for run in runs:
        per_row.setdefault((run.dataset, run.init), {})
        if run.accuracy is not None:
            per_row[(run.dataset, run.init)][run.checkpoint] = float(run.accuracy)
    return {row: (sum(acc.values()) / len(acc) if acc else None) for row, acc in per_row.items()}


def _mark(table: StudyTable, metric: str) -> None:
    """Best method per row (ties all marked) and whether each method's point estimate beats the
    random baseline's (mark_beats_random_by_test replaces it where per-image records allow a
    paired test); neither for a metric without a better direction."""
    direction = table.direction(metric)
    if direction is None:
        return
    sign = 1.0 if direction else -1.0
    for row in table.rows:
        cells = [c for m in table.methods
                 if (c := table.cell(row, m, metric)) is not None and c.value is not None]
        if cells:
            top = max(sign * c.value for c in cells)  # type: ignore[operator]
            for c in cells:
                c.best = sign * c.value == top  # type: ignore[operator]
        random = table.cell(row, "random", metric)
        if random is None or random.value is None:
            continue
        for c in cells:
            c.beats_random = sign * c.value > sign * random.value  # type: ignore[operator]
            c.beats_random_rule = "point"


def mark_beats_random_by_test(table: StudyTable,
                              decided: Mapping[tuple[str, str, str, str], bool],
                              alpha: float) -> None:
    """Replace the point estimate's verdict by the corrected paired test's: (dataset, init,
    method, metric) -> whether the method is significantly above random in the better
    direction. Noise would flip a point estimate; the test says whether the gap is real."""
    for key, beats in decided.items():
        cell = table.cells.get(key)
        if cell is None or cell.value is None or table.direction(key[3]) is None:
            continue
        cell.beats_random = bool(beats)
        cell.beats_random_rule = "test"
    table.alpha = alpha


def set_seed_intervals(table: StudyTable,
                       intervals: Mapping[tuple[str, str, str, str], tuple[float, float]]) -> None:
    """(dataset, init, entry, metric) -> the hierarchical bootstrap interval of a cell averaged
    over several runs, computed from their per-image records (xai_bench.report.significance):
    it replaces the range across runs, which says nothing about the images' noise."""
    for key, (low, high) in intervals.items():
        cell = table.cells.get(key)
        if cell is None or cell.n_runs < 2 or cell.value is None:
            continue
        cell.ci_low, cell.ci_high, cell.interval_rule = float(low), float(high), "hierarchical"


def study_table(
    runs: Sequence[EvalRun],
    metrics: Sequence[str] = DEFAULT_METRICS,
    compare: str | None = None,
    compare_iou: str = "mean",
) -> StudyTable:
    """Aggregate evaluation runs into the study's table (see the module docstring)."""
    if compare is not None and compare not in COMPARE_CHOICES:
        raise ConfigError(f"compare={compare}: unknown; use compare=study "
                          "(the reference study's published table) or compare=null.")
    methods, baselines = _entries(runs)
    rows = sorted({(r.dataset, r.init) for r in runs}, key=_row_key(runs))
    table = StudyTable(rows=rows, methods=methods, baselines=baselines, metrics=[], cells={},
                       accuracy=_row_accuracy(runs), compare=compare,
                       higher_is_better=_declared_directions(runs))
    for metric in metrics:
        grouped = _group_stats(runs, metric)
        if not grouped:
            table.notes.append(f"{metric}: no run has this metric, left out.")
            continue
        table.metrics.append(metric)
        for (dataset, init, entry), stats in grouped.items():
            cell = combine(stats)
            if cell is not None:
                table.cells[(dataset, init, entry, metric)] = cell
    if not table.metrics:
        available = sorted({m for r in runs for m in r.metrics})
        raise ConfigError(f"metrics={list(metrics)}: none is in the evaluation runs; "
                          f"they have {', '.join(available)}.")
    if compare == "study":
        _add_published(table, compare_iou)
    for metric in table.metrics:
        _mark(table, metric)
    return table


def _row_key(runs: Sequence[EvalRun]) -> Any:
    datasets = study_order({r.dataset for r in runs}, STUDY_DATASETS)
    inits = study_order({r.init for r in runs}, STUDY_INITS)
    return lambda row: (datasets.index(row[0]), inits.index(row[1]))


# ---------------------------------------------------------------------------------------------
# the published numbers


def load_published() -> dict[tuple[str, str, str], dict[str, float]]:
    """The reference study's table (package data seed_results.csv):
    (dataset, init, published method) -> {"pointing_game": v, "iou": v}."""
    text = resources.files("xai_bench.report").joinpath("data", "seed_results.csv").read_text()
    published: dict[tuple[str, str, str], dict[str, float]] = {}
    for row in csv.DictReader(text.splitlines()):
        for method in PUBLISHED_METHODS:
            published[(row["dataset"], row["init"], method)] = {
                "pointing_game": float(row[f"pointing_game_{method}"]),
                "iou": float(row[f"iou_{method}"])}
    return published


def _iou_metric(table: StudyTable, mode: str) -> str:
    """Our metric the published IoU is compared with. The paper does not say at which q% its IoU
    is: mean over q (default), max over q, or one named q (`iou@10`); derived ones are added."""
    if mode not in IOU_MODES:
        if mode not in table.metrics:
            raise ConfigError(
                f"compare_iou={mode}: not a reported metric ({', '.join(table.metrics)}); "
                "use compare_iou=mean, compare_iou=max or one of the reported iou@q metrics."
            )
        return mode
    sources = [m for m in table.metrics if m.startswith("iou@") and m[4:].isdigit()]
    if not sources:
        raise ConfigError(f"compare_iou={mode} needs iou@q metrics in `metrics`; "
                          f"got {', '.join(table.metrics)}.")
    derived = f"iou@{mode}"
    reduce = (lambda xs: sum(xs) / len(xs)) if mode == "mean" else max
    for row in table.rows:
        for entry in table.entries:
            cells = [table.cell(row, entry, m) for m in sources]
            values = [c.value for c in cells if c is not None and c.value is not None]
            if len(values) == len(sources):
                n_runs = max(c.n_runs for c in cells if c is not None)
                table.cells[(*row, entry, derived)] = Cell(
                    reduce(values), n=cells[0].n if cells[0] else None, n_runs=n_runs)
    table.metrics.append(derived)
    table.notes.append(
        f"{derived}: the {mode} of {', '.join(sources)} per cell; the published IoU does not say "
        f"at which q% it was measured (compare_iou=mean | max | iou@q)."
    )
    return derived


def _add_published(table: StudyTable, compare_iou: str) -> None:
    """Put the published value beside our cell of the method it corresponds to."""
    table.compare_iou = compare_iou
    targets = {"iou": _iou_metric(table, compare_iou)}
    if "pointing_game" in table.metrics:
        targets["pointing_game"] = "pointing_game"
    published = load_published()
    for row in table.rows:
        for theirs, candidates in PUBLISHED_METHODS.items():
            values = published.get((*row, theirs))
            ours = next((m for m in candidates
                         if any(table.cell(row, m, t) for t in targets.values())), None)
            if values is None or ours is None:
                continue
            for column, metric in targets.items():
                cell = table.cell(row, ours, metric)
                if cell is not None:
                    cell.published = values[column]
