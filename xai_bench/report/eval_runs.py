"""The evaluation runs of a sweep: every run folder below a folder, read through tracking's
records, and the folders skipped with the reason (a failed, cancelled or unfinished job).

A folder of a job that explained several methods (methods=[...]) yields one EvalRun per
method, each with the job's baselines, as separate single-method jobs' folders would: the
tables, galleries and paired tests read them alike."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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

__all__ = ["EvalRun", "SkippedRun", "SweepScan", "collect_eval_runs", "read_eval_run",
           "read_eval_runs", "scan_sweep"]

# folders that never hold evaluation runs (besides hidden ones: .hydra, .submitit)
_PRUNE = {"wandb"}


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
    # the known-truth benchmark (docs/known-truth.md): the split explained, metrics.json's
    # known_truth block (the model's reliance on the planted marker; None for an ordinary
    # evaluation), the training condition (dataset.shortcut.rule / strength) and training seed
    split: str | None = None
    known_truth: dict[str, Any] | None = None
    shortcut_rule: str | None = None
    shortcut_strength: float | None = None
    train_seed: int | None = None

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
    # meta-evaluation run folders (python -m xai_bench.meta_evaluate): the report's trust section
    meta: list[Path] = field(default_factory=list)


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


def _training_metrics(cfg: dict[str, Any],
                      summary: EvaluationSummary) -> tuple[float | None, int | None]:
    """Test accuracy and best epoch of the training run evaluated, when its folder is reachable."""
    for folder in _training_run_candidates(cfg, summary):
        try:
            train = TrainingRecord.read(folder)
        except RecordError:
            continue
        return train.test_accuracy, train.best_epoch
    return None, None


def _training_seed(cfg: dict[str, Any], summary: EvaluationSummary) -> int | None:
    """The seed of the training run evaluated (an evaluation's own `seed` draws its baselines),
    when its config.yaml is reachable."""
    for folder in _training_run_candidates(cfg, summary):
        train_cfg = read_plain_config(folder)
        if train_cfg is not None:
            seed = train_cfg.get("seed")
            return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None
    return None


def _known_truth(summary: EvaluationSummary) -> dict[str, Any] | None:
    """metrics.json's known_truth block (a field of the record, or an extra key of files written
    before it was one); None when absent."""
    block = getattr(summary, "known_truth", None) or summary.extra.get("known_truth")
    return dict(block) if isinstance(block, dict) and block else None


def _shortcut(cfg: dict[str, Any]) -> tuple[str | None, float | None]:
    """(rule, strength) of the planted marker (dataset.shortcut, the training run's); None when
    the config has no such section. Without `rule` (older configs) the label decided: both."""
    node = _get(cfg, "dataset.shortcut")
    if not isinstance(node, dict):
        return None, None
    strength = node.get("strength")
    try:
        value = float(strength) if strength is not None else None
    except (TypeError, ValueError):
        value = None
    return str(node.get("rule") or "both"), value


def _wandb_group(cfg: dict[str, Any], run_dir: Path) -> str | None:
    """The run's W&B group. The report puts it into its own config (its W&B logger's group),
    where a string holding `${...}` would be evaluated (`${oc.create:...}` builds a `_target_`):
    a run folder is untrusted input, so such a value is refused."""
    from xai_bench.tracking.trusted_config import trusted_container

    group = trusted_container(_get(cfg, "logger.wandb.group"), "logger.wandb.group",
                              run_dir / CONFIG_FILE)
    return None if group is None or isinstance(group, dict | list) else str(group)


def _failure(run_dir: Path) -> str:
    error = read_error(run_dir)
    if error is not None:
        lines = [line for line in error.splitlines() if line.strip()]
        return f"failed: {lines[-1].strip()}" if lines else "failed"
    return "no metrics.json (the job failed, was cancelled or is still running)"


def read_eval_runs(run_dir: Path, cfg: dict[str, Any]) -> list[EvalRun | SkippedRun]:
    """One EvalRun per method explained in a folder whose config.yaml says task_name: evaluate
    (a SkippedRun, with the reason, for a method without scores or for the whole folder)."""
    try:
        summary = EvaluationSummary.read(run_dir)
    except MissingRecordError:
        return [SkippedRun(run_dir, _failure(run_dir))]
    except RecordError:
        return [SkippedRun(run_dir, "unreadable metrics.json")]
    methods = (list(summary.evaluated_methods)
               or [str(_get(cfg, "method.name") or summary.method or "")])
    accuracy, best_epoch = _training_metrics(cfg, summary)
    known_truth = _known_truth(summary)
    rule, strength = _shortcut(cfg) if known_truth is not None else (None, None)
    train_seed = _training_seed(cfg, summary) if known_truth is not None else None
    baselines = {b: summary.methods[b].metrics for b in summary.baselines
                 if b in summary.methods and b not in methods}
    found: list[EvalRun | SkippedRun] = []
    for method in methods:
        scores = summary.scores(method)
        if scores is None:
            failed = summary.failed_methods.get(method)
            found.append(SkippedRun(run_dir, f"{method}: {failed}" if failed else
                                    f"metrics.json has no scores for its method {method!r}"))
            continue
        found.append(EvalRun(
            run_dir=run_dir,
            dataset=str(_get(cfg, "dataset.name", "?")),
            init=str(_get(cfg, "init.name", "?")),
            method=method,
            arch=str(_get(cfg, "model.arch", "?")),
            metrics=scores.metrics,
            baselines=dict(baselines),
            accuracy=accuracy,
            best_epoch=best_epoch,
            group=_wandb_group(cfg, run_dir),
            seed=cfg.get("seed"),
            run_name=str(cfg.get("run_name") or run_dir.name),
            checkpoint=str(summary.checkpoint or cfg.get("ckpt") or run_dir),
            images=summary.images,
            bootstrap=summary.bootstrap,
            split=summary.split,
            known_truth=known_truth,
            shortcut_rule=rule,
            shortcut_strength=strength,
            train_seed=train_seed,
        ))
    return found


def read_eval_run(run_dir: Path, cfg: dict[str, Any]) -> EvalRun | SkippedRun:
    """The first record of read_eval_runs (the only one of a single-method folder)."""
    return read_eval_runs(run_dir, cfg)[0]


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
        if task in ("evaluate", "report", "meta_evaluate"):
            subdirs[:] = []  # overlays, W&B files, a report's assets: no further runs below
        if task == "meta_evaluate":
            scan.meta.append(folder)
        elif cfg is None or (task and task not in ("evaluate", "report")):
            scan.other.append(SkippedRun(
                folder, f"task_name: {task}" if cfg is not None else "unreadable config.yaml"))
        elif task == "evaluate":
            for result in read_eval_runs(folder, cfg):
                if isinstance(result, EvalRun):
                    scan.runs.append(result)
                else:
                    scan.incomplete.append(result)
    return scan


def collect_eval_runs(root: str | Path) -> list[EvalRun]:
    """The complete evaluation runs below `root` (see scan_sweep for what was skipped)."""
    return scan_sweep(root).runs
