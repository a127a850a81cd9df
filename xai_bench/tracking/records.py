"""Typed records of a run folder: what each JSON file holds, read and written in one place.

- TrainingRecord: <run>/metrics.json of a training run
- EvaluationSummary: <run>/metrics.json of an evaluation run (per method: MethodScores)
- MetaEvaluationRecord: <run>/meta_evaluation.json of a meta-evaluation run
- Attempt: one line of <run>/jobs.jsonl
- error.txt: `write_error`, `read_error`, `clear_error`

Every record is written through run_folder's atomic writes; `read` raises RecordError (missing
file, torn or not-JSON text, wrong shape) with the file's path, and readers that must go on
(the report scanning a sweep) catch it. `run_of(checkpoint)` (run_folder) is the one place
that knows a checkpoint lives at <run>/checkpoints/<name>.ckpt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from xai_bench.tracking.run_folder import (
    CONFIG_FILE,
    ERROR_FILE,
    JOBS_FILE,
    META_EVALUATION_FILE,
    METRICS_FILE,
    atomic_write_text,
    run_of,
    write_error,
    write_metrics,
)
from xai_bench.utils.errors import XaiBenchError

__all__ = [
    "Attempt",
    "EvaluationSummary",
    "MetaEvaluationRecord",
    "MethodScores",
    "MissingRecordError",
    "RecordError",
    "TrainingRecord",
    "clear_error",
    "read_error",
    "read_plain_config",
    "run_of",
    "write_error",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RecordError(XaiBenchError):
    """A run file is missing, torn (cut short by a crash) or not the record it should be."""


class MissingRecordError(RecordError):
    """The run file does not exist (a failed, cancelled or running job)."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingRecordError(f"{path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as err:
        raise RecordError(f"{path} is not complete JSON (cut short by a crash?): {err}.") from err
    except OSError as err:
        raise RecordError(f"{path} cannot be read: {err.strerror or err}.") from err
    if not isinstance(data, dict):
        raise RecordError(f"{path} holds a JSON {type(data).__name__}, not an object.")
    return data


def _split(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the dataclass's known fields, every other key) of a JSON object."""
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {
        k: v for k, v in data.items() if k not in names
    }


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


# --------------------------------------------------------------------------------------------
# config.yaml, untrusted


def read_plain_config(folder: str | Path) -> dict[str, Any] | None:
    """<run>/config.yaml as plain YAML values: {} when there is none, None when it is unreadable
    or not a mapping. Plain YAML on purpose: a run folder is untrusted, and OmegaConf would
    resolve an interpolation planted in it (task_name: ${...}) while we merely list runs."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return values if isinstance(values, dict) else None


# --------------------------------------------------------------------------------------------
# error.txt


def read_error(folder: str | Path) -> str | None:
    """The text of <run>/error.txt (why the latest attempt failed), None when there is none."""
    path = Path(folder) / ERROR_FILE
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def clear_error(folder: str | Path) -> None:
    """Remove <run>/error.txt: an earlier attempt's failure that this attempt resolved."""
    (Path(folder) / ERROR_FILE).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# metrics.json of a training run


@dataclass
class TrainingRecord:
    """<run>/metrics.json of a training run: written once the run succeeded (best.ckpt's
    validation and test metrics, present only when the run tested)."""

    best_epoch: int | None = None
    best_checkpoint: str | None = None
    epochs_trained: int | None = None
    world_size: int | None = None
    study_saved_epoch: int | None = None
    resumed_from: dict[str, Any] | None = None
    slurm_job: dict[str, str] | None = None
    val: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    # the best checkpoint's reliance on the synthetic marker (docs/known-truth.md): a run whose
    # dataset has a decorrelated split
    known_truth: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for split in ("val", "test", "known_truth"):  # written only by a run that tested
            if data[split] is None:
                del data[split]
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRecord:
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)

    @property
    def test_accuracy(self) -> float | None:
        return self.test.get("acc") if isinstance(self.test, Mapping) else None

    def write(self, folder: str | Path) -> Path:
        return write_metrics(self.to_dict(), folder)

    @classmethod
    def read(cls, folder: str | Path) -> TrainingRecord:
        return cls.from_dict(_read_json(Path(folder) / METRICS_FILE))


# --------------------------------------------------------------------------------------------
# metrics.json of an evaluation run


@dataclass
class MethodScores:
    """One method's (or baseline's) scores: metric column -> {value, ci_low, ci_high, n,
    higher_is_better}, and its map counts (constant_maps, nan_maps, targets)."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)

    def value(self, column: str) -> float | None:
        return self.metrics.get(column, {}).get("value")

    def higher_is_better(self, column: str) -> bool | None:
        """What the metric declared for this column; None when it did not (summaries written
        before metrics declared it, or a column with no better direction)."""
        return self.metrics.get(column, {}).get("higher_is_better")

    @property
    def nan_maps(self) -> int:
        return int(self.counts.get("nan_maps", 0) or 0)


@dataclass
class EvaluationSummary:
    """<run>/metrics.json of an evaluation run: classification scores and counts of the images,
    the bootstrap settings, per method its MethodScores, and what was evaluated.

    `evaluated_methods`: the methods the job explained (one, or several with methods=[...]);
    `method` names the one of a single-method job (null with several); `methods` also holds
    the baselines. `failed_methods`: name -> why a method has no scores (every map NaN), when
    the job's other methods do (files written before several methods per job have neither:
    their `method` is the one). `known_truth`: the model's reliance on the synthetic dataset's
    planted marker (reliance, agree_accuracy, conflict_images with their intervals, and
    counts), present only when the images set lesion against marker (docs/known-truth.md)."""

    classification: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, MethodScores] = field(default_factory=dict)
    checkpoint: str | None = None
    training_run: str | None = None
    split: str | None = None
    method: str | None = None
    evaluated_methods: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    failed_methods: dict[str, str] = field(default_factory=dict)
    # name -> why a selected method was not run (skip_inapplicable: it does not explain the model)
    skipped_methods: dict[str, str] = field(default_factory=dict)
    world_size: int | None = None
    known_truth: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> int | None:
        value = self.counts.get("images")
        return None if value is None else int(value)

    @property
    def accuracy(self) -> float | None:
        return self.classification.get("accuracy", {}).get("value")

    @property
    def reliance(self) -> float | None:
        """The model's reliance on the planted marker (None without known truth)."""
        return self.known_truth.get("reliance", {}).get("value")

    def scores(self, method: str) -> MethodScores | None:
        return self.methods.get(method)

    def to_dict(self) -> dict[str, Any]:
        data = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("extra", "methods")
        }
        data["methods"] = {name: asdict(scores) for name, scores in self.methods.items()}
        if not data["known_truth"]:  # an ordinary evaluation's file stays as it was
            del data["known_truth"]
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationSummary:
        known, extra = _split(cls, data)
        methods = {
            str(name): MethodScores(_dict(entry.get("metrics")), _dict(entry.get("counts")))
            for name, entry in _dict(known.pop("methods", None)).items()
            if isinstance(entry, Mapping)
        }
        for key in ("classification", "counts", "bootstrap", "known_truth"):
            known[key] = _dict(known.get(key))
        for key in ("baselines", "evaluated_methods"):
            known[key] = [str(b) for b in known.get(key) or []]
        for key in ("failed_methods", "skipped_methods"):
            known[key] = {str(k): str(v) for k, v in _dict(known.get(key)).items()}
        return cls(**known, methods=methods, extra=extra)

    def write(self, folder: str | Path) -> Path:
        return write_metrics(self.to_dict(), folder)

    @classmethod
    def read(cls, folder: str | Path) -> EvaluationSummary:
        return cls.from_dict(_read_json(Path(folder) / METRICS_FILE))


# --------------------------------------------------------------------------------------------
# meta_evaluation.json of a meta-evaluation run


@dataclass
class MetaEvaluationRecord:
    """<run>/meta_evaluation.json: which metric columns passed the meta-evaluation on one
    model. `rows` holds one entry per (metric column, perturbation space) with the four
    consistency scores, MC, NR / AR (pass | fail | n/a) and the column's verdict."""

    checkpoint: str | None = None
    training_run: str | None = None
    methods: list[str] = field(default_factory=list)
    images: int | None = None
    draws: int | None = None
    spaces: list[str] = field(default_factory=list)
    seconds: float | None = None
    trusted: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def verdicts(self) -> dict[str, str]:
        """column -> pass | fail | n/a, in the rows' order."""
        return {str(r.get("column")): str(r.get("verdict") or "n/a") for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetaEvaluationRecord:
        known, extra = _split(cls, data)
        for key in ("methods", "spaces", "trusted"):
            known[key] = [str(v) for v in known.get(key) or []]
        known["rows"] = [dict(r) for r in known.get("rows") or [] if isinstance(r, Mapping)]
        return cls(**known, extra=extra)

    def write(self, folder: str | Path) -> Path:
        return atomic_write_text(Path(folder) / META_EVALUATION_FILE,
                                 json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, folder: str | Path) -> MetaEvaluationRecord:
        return cls.from_dict(_read_json(Path(folder) / META_EVALUATION_FILE))


# --------------------------------------------------------------------------------------------
# jobs.jsonl: one line per attempt


@dataclass
class Attempt:
    """One start of a training run in its folder (a line of <run>/jobs.jsonl): number, time,
    host, SLURM job, the checkpoint and epoch it resumed from, and facts such as the
    checkpoints it skipped (`extra`)."""

    attempt: int | None = None
    started_at: str | None = None
    host: str | None = None
    pid: int | None = None
    slurm: dict[str, str] | None = None
    resumed_from: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)

    @classmethod
    def read(cls, folder: str | Path) -> list[Attempt]:
        """Every attempt of <run>/jobs.jsonl ([] without one). A line that is not JSON (cut
        short by a crash in an older version, which appended in place) is skipped with a
        warning, never fatal."""
        path = Path(folder) / JOBS_FILE
        if not path.is_file():
            return []
        attempts: list[Attempt] = []
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                log.warning(
                    "%s line %d is not a complete record (cut short?): skipped", path, number
                )
                continue
            if isinstance(entry, dict):
                attempts.append(cls.from_dict(entry))
        return attempts

    def write(self, folder: str | Path) -> Path:
        """Add this attempt to <run>/jobs.jsonl. The file is rewritten whole through a temporary
        file (it is small): a crash or a full disk leaves the previous version, never a torn
        line."""
        lines = [json.dumps(a.to_dict(), sort_keys=True) for a in [*Attempt.read(folder), self]]
        return atomic_write_text(Path(folder) / JOBS_FILE, "\n".join(lines) + "\n")
