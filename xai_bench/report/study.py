"""An evaluation sweep as the reference study's table.

`scan_sweep` finds the evaluation run folders below a folder (a `-m` sweep or any folder of
runs) and says which it skipped; `study_table` aggregates them: rows dataset x init, one column
per method and metric, the trivial baselines beside the methods (README: Evaluation metrics; a method that does
not beat a random map localises nothing), optionally the published numbers beside ours.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from xai_bench.tracking.records import (
    EvaluationSummary,
    MissingRecordError,
    RecordError,
    TrainingRecord,
    read_error,
    read_plain_config,
)
from xai_bench.tracking.run_folder import CONFIG_FILE, run_of
from xai_bench.utils.errors import ConfigError

__all__ = [
    "BASELINES",
    "DEFAULT_METRICS",
    "Cell",
    "EvalRun",
    "SkippedRun",
    "StudyTable",
    "SweepScan",
    "collect_eval_runs",
    "common_group",
    "load_published",
    "lower_is_better",
    "scan_sweep",
    "study_order",
    "study_table",
    "sweep_facts",
]

STUDY_DATASETS = ("cp_child", "duke", "kvasir", "mura")
STUDY_INITS = ("random", "sup", "dino", "mae", "mae_pretrain")
STUDY_METHODS = ("gradcam_study", "gradcam", "hirescam", "attention", "rollout", "chefer", "chefer_generic")
BASELINES = ("random", "centre", "uniform")
DEFAULT_METRICS = ("pointing_game", "iou@5", "iou@10", "iou@20", "iou@40")
# folders that never hold evaluation runs (besides hidden ones: .hydra, .submitit)
_PRUNE = {"wandb"}

# published method -> our methods, first present wins (the study's Grad-CAM is gradcam_study)
PUBLISHED_METHODS = {"gradcam": ("gradcam_study", "gradcam"), "attention": ("attention",), "chefer": ("chefer",)}
COMPARE_CHOICES = ("study",)
IOU_MODES = ("mean", "max")


def study_order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """The study's order first (`preferred`), then the others alphabetically."""
    present = set(names)
    return [n for n in preferred if n in present] + sorted(present - set(preferred))


def lower_is_better(metric: str) -> bool:
    """A guess from the metric's name, for summaries written before metrics declared
    `higher_is_better` (StudyTable.lower_is_better reads the declaration first): smaller is
    the better map for max-sensitivity, LeRF AOPC and deletion; higher for the rest."""
    return metric.startswith(("max_sensitivity", "aopc_lerf")) or metric.endswith("/deletion")


# ---------------------------------------------------------------------------------------------
# collecting run folders


@dataclass
class EvalRun:
    """What one evaluation run folder says: its model, method, scores and its baselines' scores."""

    run_dir: Path
    dataset: str
    init: str
    method: str
    arch: str
    metrics: dict[str, dict[str, Any]]
    baselines: dict[str, dict[str, dict[str, Any]]]
    accuracy: float | None = None
    best_epoch: int | None = None
    group: str | None = None
    seed: int | None = None
    run_name: str = ""
    # the trained model evaluated: baselines are shared by the runs of one checkpoint
    checkpoint: str = ""
    images: int | None = None
    bootstrap: dict[str, Any] = field(default_factory=dict)

    def overlays(self, method: str) -> list[Path]:
        """The overlay PNGs this run drew for `method` (itself or a baseline), in id order."""
        return sorted((self.run_dir / "overlays" / method).glob("*.png"))


@dataclass
class SkippedRun:
    run_dir: Path
    reason: str


@dataclass
class SweepScan:
    """The evaluation runs found below `root`, and the folders left out (and why)."""

    root: Path
    runs: list[EvalRun]
    incomplete: list[SkippedRun]
    other: list[SkippedRun]


def _get(data: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _training_run_candidates(cfg: dict[str, Any], summary: EvaluationSummary) -> list[Path]:
    candidates = []
    if summary.training_run:
        candidates.append(Path(summary.training_run))
    if summary.checkpoint:
        candidates.append(run_of(summary.checkpoint))
    ckpt = cfg.get("ckpt")
    if ckpt:
        path = Path(str(ckpt)).expanduser()
        candidates.append(run_of(path) if path.suffix == ".ckpt" else path)
    return candidates


def _training_metrics(cfg: dict[str, Any], summary: EvaluationSummary) -> tuple[float | None, int | None]:
    """Test accuracy and best epoch of the training run evaluated, when its folder is reachable."""
    for folder in _training_run_candidates(cfg, summary):
        try:
            train = TrainingRecord.read(folder)
        except RecordError:
            continue
        return train.test_accuracy, train.best_epoch
    return None, None


def _wandb_group(cfg: dict[str, Any], run_dir: Path) -> str | None:
    """The run's W&B group. The report puts it into its own config (its W&B logger's group),
    where a string holding `${...}` would be evaluated (`${oc.create:...}` builds a `_target_`):
    a run folder is untrusted input, so such a value is refused."""
    from xai_bench.tracking.trusted_config import trusted_container

    group = trusted_container(_get(cfg, "logger.wandb.group"), "logger.wandb.group", run_dir / CONFIG_FILE)
    return None if group is None or isinstance(group, dict | list) else str(group)


def _failure(run_dir: Path) -> str:
    error = read_error(run_dir)
    if error is not None:
        lines = [line for line in error.splitlines() if line.strip()]
        return f"failed: {lines[-1].strip()}" if lines else "failed"
    return "no metrics.json (the job failed, was cancelled or is still running)"


def read_eval_run(run_dir: Path, cfg: dict[str, Any]) -> EvalRun | SkippedRun:
    """An EvalRun from a folder whose config.yaml says task_name: evaluate, else why not."""
    try:
        summary = EvaluationSummary.read(run_dir)
    except MissingRecordError:
        return SkippedRun(run_dir, _failure(run_dir))
    except RecordError:
        return SkippedRun(run_dir, "unreadable metrics.json")
    method = str(_get(cfg, "method.name") or summary.method or "")
    scores = summary.scores(method)
    if scores is None:
        return SkippedRun(run_dir, f"metrics.json has no scores for its method {method!r}")
    accuracy, best_epoch = _training_metrics(cfg, summary)
    return EvalRun(
        run_dir=run_dir,
        dataset=str(_get(cfg, "dataset.name", "?")),
        init=str(_get(cfg, "init.name", "?")),
        method=method,
        arch=str(_get(cfg, "model.arch", "?")),
        metrics=scores.metrics,
        baselines={b: summary.methods[b].metrics for b in summary.baselines if b in summary.methods and b != method},
        accuracy=accuracy,
        best_epoch=best_epoch,
        group=_wandb_group(cfg, run_dir),
        seed=cfg.get("seed"),
        run_name=str(cfg.get("run_name") or run_dir.name),
        checkpoint=str(summary.checkpoint or cfg.get("ckpt") or run_dir),
        images=summary.images,
        bootstrap=summary.bootstrap,
    )


def _walk(root: Path, exclude: Sequence[Path]) -> Iterable[tuple[Path, list[str]]]:
    excluded = {p.resolve() for p in exclude}
    for dirpath, dirnames, _files in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in _PRUNE and (here / d).resolve() not in excluded
        )
        yield here, dirnames


def scan_sweep(root: str | Path, exclude: Sequence[Path] = ()) -> SweepScan:
    """Every evaluation run folder below `root` (recursively), and the folders skipped.

    A folder counts when its config.yaml says task_name: evaluate; one without a usable
    metrics.json is a failed or unfinished job: reported as incomplete, never fatal."""
    root = Path(root).expanduser()
    scan = SweepScan(root=root, runs=[], incomplete=[], other=[])
    for folder, subdirs in _walk(root, exclude):
        cfg = read_plain_config(folder)
        task = cfg.get("task_name") if cfg is not None else None
        if task in ("evaluate", "report"):
            subdirs[:] = []  # overlays, W&B files, a report's assets: no further runs below
        if cfg is None or (task and task not in ("evaluate", "report")):
            scan.other.append(SkippedRun(folder, f"task_name: {task}" if cfg is not None else "unreadable config.yaml"))
        elif task == "evaluate":
            result = read_eval_run(folder, cfg)
            if isinstance(result, EvalRun):
                scan.runs.append(result)
            else:
                scan.incomplete.append(result)
    return scan


def collect_eval_runs(root: str | Path) -> list[EvalRun]:
    """The complete evaluation runs below `root` (see scan_sweep for what was skipped)."""
    return scan_sweep(root).runs


# ---------------------------------------------------------------------------------------------
# aggregating


@dataclass
class Cell:
    """One method's (or baseline's) score on one row: a single run keeps its bootstrap interval;
    several runs (seeds, checkpoints) give their mean, with the range across runs instead."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    n_runs: int = 1
    runs_min: float | None = None
    runs_max: float | None = None
    best: bool = False
    beats_random: bool | None = None
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
        return Cell(values[0], _number(s.get("ci_low")), _number(s.get("ci_high")), ns[0] if ns else None,
                    1, values[0], values[0])
    # the smallest n: the number of images every averaged run has
    return Cell(sum(values) / len(values), None, None, min(ns) if ns else None, len(values), min(values), max(values))


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
    # metric -> what the metrics.json files declare (metrics' `higher_is_better`)
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    def lower_is_better(self, metric: str) -> bool:
        """Whether a smaller value is the better map: as the evaluation summaries declare it,
        else guessed from the name (summaries written before metrics declared it)."""
        declared = self.higher_is_better.get(metric)
        return lower_is_better(metric) if declared is None else not declared

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
    """(entry, its metrics, shared by the runs of one checkpoint) for a run's method and baselines."""
    own = [(run.method, run.metrics, run.method in BASELINES)]
    return own + [(name, metrics, True) for name, metrics in run.baselines.items()]


def _group_stats(runs: Sequence[EvalRun], metric: str) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
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


def _declared_directions(runs: Sequence[EvalRun]) -> dict[str, bool]:
    """metric -> higher_is_better as the runs' summaries declare it (the first declaration)."""
    declared: dict[str, bool] = {}
    for run in runs:
        for _name, metrics, _shared in _sources(run):
            for metric, stats in metrics.items():
                value = stats.get("higher_is_better") if isinstance(stats, dict) else None
                if isinstance(value, bool):
                    declared.setdefault(metric, value)
    return declared


def _entries(runs: Sequence[EvalRun]) -> tuple[list[str], list[str]]:
    baselines = {b for r in runs for b in r.baselines} | {r.method for r in runs if r.method in BASELINES}
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
    """Best method per row (ties all marked) and whether each method beats the random baseline."""
    sign = -1.0 if table.lower_is_better(metric) else 1.0
    for row in table.rows:
        cells = [c for m in table.methods if (c := table.cell(row, m, metric)) is not None and c.value is not None]
        if cells:
            top = max(sign * c.value for c in cells)  # type: ignore[operator]
            for c in cells:
                c.best = sign * c.value == top  # type: ignore[operator]
        random = table.cell(row, "random", metric)
        if random is None or random.value is None:
            continue
        for c in cells:
            c.beats_random = sign * c.value > sign * random.value  # type: ignore[operator]


def study_table(
    runs: Sequence[EvalRun],
    metrics: Sequence[str] = DEFAULT_METRICS,
    compare: str | None = None,
    compare_iou: str = "mean",
) -> StudyTable:
    """Aggregate evaluation runs into the study's table (see the module docstring)."""
    if compare is not None and compare not in COMPARE_CHOICES:
        raise ConfigError(f"compare={compare}: unknown; use compare=study (the reference study's published table) or compare=null.")
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
        raise ConfigError(f"metrics={list(metrics)}: none is in the evaluation runs; they have {', '.join(available)}.")
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
                "pointing_game": float(row[f"pointing_game_{method}"]), "iou": float(row[f"iou_{method}"])}
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
        raise ConfigError(f"compare_iou={mode} needs iou@q metrics in `metrics`; got {', '.join(table.metrics)}.")
    derived = f"iou@{mode}"
    reduce = (lambda xs: sum(xs) / len(xs)) if mode == "mean" else max
    for row in table.rows:
        for entry in table.entries:
            cells = [table.cell(row, entry, m) for m in sources]
            values = [c.value for c in cells if c is not None and c.value is not None]
            if len(values) == len(sources):
                n_runs = max(c.n_runs for c in cells if c is not None)
                table.cells[(*row, entry, derived)] = Cell(reduce(values), n=cells[0].n if cells[0] else None, n_runs=n_runs)
    table.metrics.append(derived)
    table.notes.append(
        f"{derived}: the {mode} of {', '.join(sources)} per cell; the published IoU does not say at "
        f"which q% it was measured (compare_iou=mean | max | iou@q)."
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
            ours = next((m for m in candidates if any(table.cell(row, m, t) for t in targets.values())), None)
            if values is None or ours is None:
                continue
            for column, metric in targets.items():
                cell = table.cell(row, ours, metric)
                if cell is not None:
                    cell.published = values[column]


# ---------------------------------------------------------------------------------------------
# what the sweep was (report headers)


def common_group(runs: Sequence[EvalRun]) -> str | None:
    """The W&B group all runs share, None when they differ or have none."""
    groups = {r.group for r in runs}
    return groups.pop() if len(groups) == 1 else None


def _span(values: Iterable[Any]) -> str:
    present = sorted({v for v in values if v is not None})
    if not present:
        return "unknown"
    return str(present[0]) if len(present) == 1 else f"{present[0]} to {present[-1]}"


def _bootstrap_text(runs: Sequence[EvalRun]) -> str:
    settings = sorted({(float(r.bootstrap.get("level", math.nan)), r.bootstrap.get("samples")) for r in runs if r.bootstrap},
                      key=str)
    if not settings:
        return "unknown"
    return "; ".join(f"{level:.0%} percentile intervals over images, {samples} resamples" for level, samples in settings)


def sweep_facts(scan: SweepScan, table: StudyTable) -> list[tuple[str, str]]:
    """(label, text) lines saying what the report is made of; every writer prints them."""
    runs = scan.runs
    facts = [
        ("sweep", str(scan.root.resolve())),
        ("evaluation runs", f"{len(runs)} complete, {len(scan.incomplete)} incomplete (skipped)"),
        ("other folders skipped", str(len(scan.other))),
        ("datasets", ", ".join(study_order({r.dataset for r in runs}, STUDY_DATASETS))),
        ("initialisations", ", ".join(study_order({r.init for r in runs}, STUDY_INITS))),
        ("methods", ", ".join(table.methods) or "none"),
        ("baselines", ", ".join(table.baselines) or "none"),
        ("models", ", ".join(sorted({r.arch for r in runs}))),
        ("images per evaluation", _span(r.images for r in runs)),
        ("bootstrap", _bootstrap_text(runs)),
        ("W&B group", common_group(runs) or "none common"),
    ]
    if table.compare == "study":
        facts.append(("published numbers", f"the reference study's table (seed_results.csv); its IoU compared with {table.compare_iou}"))
    return facts
