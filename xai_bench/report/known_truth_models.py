"""The known-truth section's records: the models (one per checkpoint) read from the evaluation
runs, each method's and baseline's marker share on each, and the per-entry results that
xai_bench.report.known_truth computes from them (docs/known-truth.md)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xai_bench.report.eval_runs import EvalRun
from xai_bench.report.significance import _read_per_image
from xai_bench.stats.correlation import SpearmanInterval
from xai_bench.tracking.run_folder import run_of

__all__ = ["FAITHFUL", "FLAG_SHARE", "GROUPS", "GROUP_TITLES", "MIN_MODELS", "NEEDS_MODELS",
           "NOT_JUDGED", "PARTLY", "PLAUSIBLE", "RULE_ORDER", "SHARE", "TABLE_METRICS",
           "VERDICT_ORDER",
           "Estimate", "Flag", "KnownTruth", "KnownTruthEntry", "KnownTruthModel",
           "collect_models", "has_known_truth", "model_kind"]

SHARE = "marker_share"
# a map singles the marker out on an image when its marker share exceeds this: the marker at
# least twice as bright per pixel as the lesion (a share just above 0.5 is no visible flag)
FLAG_SHARE = 2 / 3
# the report's tables for a known-truth sweep when `metrics` names none of its columns
# (conf/metric/known_truth.yaml)
TABLE_METRICS = ("lesion_pointing_game", "marker_pointing_game", "lesion_mass", "marker_mass")
GROUPS = ("vit", "cnn", "all")
GROUP_TITLES = {"vit": "ViT", "cnn": "CNN", "all": "all"}
FAITHFUL = "faithful"
PLAUSIBLE = "plausible, not faithful"
PARTLY = "partly faithful"
NOT_JUDGED = "not judged"
VERDICT_ORDER = (FAITHFUL, PARTLY, NOT_JUDGED, PLAUSIBLE)  # the ranking's order
MIN_MODELS = 3
NEEDS_MODELS = f"the correlation with reliance needs at least {MIN_MODELS} models"
# architectures read as transformers (timm names); every other one is a CNN
_TRANSFORMERS = ("vit", "deit", "beit", "cait", "swin", "eva", "xcit", "pit_", "levit")


def model_kind(arch: str) -> str:
    """vit | cnn from a timm architecture name (the report reads folders, not models)."""
    name = arch.lower()
    return "vit" if "vit" in name or name.startswith(_TRANSFORMERS) else "cnn"


def has_known_truth(runs: Sequence[EvalRun]) -> bool:
    return any(run.known_truth is not None for run in runs)


@dataclass(frozen=True)
class Estimate:
    """A value with its interval and count, as metrics.json writes them (NaN when missing)."""

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int | None = None

    @classmethod
    def read(cls, node: Any) -> Estimate:
        if not isinstance(node, Mapping):
            return cls(math.nan)

        def number(key: str) -> float:
            try:
                value = node.get(key)
                return math.nan if value is None else float(value)
            except (TypeError, ValueError):
                return math.nan

        n = node.get("n")
        return cls(number("value"), number("ci_low"), number("ci_high"),
                   int(n) if isinstance(n, int | float) and math.isfinite(n) else None)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)


@dataclass
class KnownTruthModel:
    """One trained model (checkpoint) evaluated on the decorrelated split."""

    checkpoint: str
    dataset: str
    init: str
    arch: str
    rule: str | None
    strength: float | None
    seed: int | None
    reliance: Estimate
    agree_accuracy: Estimate
    conflict: int | None
    agree: int | None
    run: str  # the training run's folder name
    label: str = ""
    # entry (method or baseline) -> its mean marker_share on this model (metrics.json)
    shares: dict[str, Estimate] = field(default_factory=dict)
    # entry -> image id -> marker_share (per_image.csv; images with both cues)
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return model_kind(self.arch)

    @property
    def condition(self) -> str:
        """The training rule, with its strength where it matters (rule both)."""
        if self.rule == "both" and self.strength is not None:
            return f"both ({self.strength:g})"
        return self.rule or "?"


@dataclass(frozen=True)
class Flag:
    """Does the entry's map single the marker out (marker share above `threshold`: 2/3 = at
    least twice as bright per pixel as the lesion), on the models trained to read only the
    marker? `fraction`: of the (model, image) pairs with both cues, those above it; the test:
    per image the share of those models where it is, one-sided mid-p sign test of its majority
    (images the unit, as the significance section pairs seeds)."""

    fraction: float
    images: int
    models: int
    above: int  # images where most marker-only models' maps single the marker out
    below: int  # images where most do not (ties dropped)
    p_value: float
    p_holm: float = math.nan
    flagged: bool = False
    threshold: float = FLAG_SHARE


@dataclass
class KnownTruthEntry:
    """One method or baseline across the models: correlations, flag, contrast, verdict."""

    name: str
    kind: str  # method | baseline
    correlations: dict[str, SpearmanInterval]  # vit / cnn / all (kinds it was evaluated on)
    flag: Flag | None
    contrast: float | None  # mean marker_share: marker-only minus lesion-only models
    verdict: str = NOT_JUDGED
    reason: str = ""
    rank: int | None = None

    @property
    def pooled(self) -> SpearmanInterval | None:
        return self.correlations.get("all")

    @property
    def models(self) -> int:
        return self.pooled.n if self.pooled is not None else 0


@dataclass
class KnownTruth:
    """The section: the models, the methods in ranking order, then the baselines."""

    models: list[KnownTruthModel]
    entries: list[KnownTruthEntry]
    alpha: float
    level: float
    samples: int
    notes: list[str] = field(default_factory=list)
    message: str | None = None  # why there is no correlation (too few models)
    figure: Path | None = None  # written by known_truth_writers.write_known_truth_figure
    flag_share: float = FLAG_SHARE  # the marker share above which a map singles the marker out

    @property
    def methods(self) -> list[KnownTruthEntry]:
        return [e for e in self.entries if e.kind == "method"]

    @property
    def baselines(self) -> list[KnownTruthEntry]:
        return [e for e in self.entries if e.kind == "baseline"]

    def entry(self, name: str) -> KnownTruthEntry | None:
        return next((e for e in self.entries if e.name == name), None)


# ---------------------------------------------------------------------------------------------
# the models


def _count(node: Any, key: str) -> int | None:
    value = node.get(key) if isinstance(node, Mapping) else None
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _per_image(run: EvalRun) -> dict[str, dict[str, float]]:
    """entry -> image id -> marker_share from the run's per_image.csv ({} when unreadable)."""
    path = run.run_dir / "per_image.csv"
    if not path.is_file():
        return {}
    try:
        data = _read_per_image(path, [SHARE])
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return {}
    return {entry: metrics[SHARE] for entry, metrics in data.items() if SHARE in metrics}


def _labels(models: list[KnownTruthModel]) -> None:
    """A short readable name per model: arch, condition, seed (numbered when not unique)."""
    names = [f"{m.arch} {m.condition}" + (f" s{m.seed}" if m.seed is not None else "")
             for m in models]
    for model, name in zip(models, names, strict=True):
        model.label = name if names.count(name) == 1 else f"{name} [{model.run}]"


def collect_models(runs: Sequence[EvalRun]) -> tuple[list[KnownTruthModel], list[str]]:
    """The known-truth models (one per checkpoint) with every entry's marker share on each;
    notes on what was missing."""
    models: dict[str, KnownTruthModel] = {}
    missing_share: dict[str, set[str]] = {}  # entry -> the checkpoints without its share
    for run in sorted(runs, key=lambda r: str(r.run_dir)):
        block = run.known_truth
        if block is None:
            continue
        model = models.get(run.checkpoint)
        if model is None:
            model = models[run.checkpoint] = KnownTruthModel(
                checkpoint=run.checkpoint, dataset=run.dataset, init=run.init, arch=run.arch,
                rule=run.shortcut_rule, strength=run.shortcut_strength, seed=run.train_seed,
                reliance=Estimate.read(block.get("reliance")),
                agree_accuracy=Estimate.read(block.get("agree_accuracy")),
                conflict=_count(block.get("counts"), "conflict"),
                agree=_count(block.get("counts"), "agree"),
                run=run_of(run.checkpoint).name if run.checkpoint else run.run_dir.name)
        per_image = _per_image(run)
        for entry, metrics in [(run.method, run.metrics), *run.baselines.items()]:
            if entry in model.shares:
                continue
            share = Estimate.read(metrics.get(SHARE))
            images = per_image.get(entry, {})
            if not share.finite and images:  # no aggregate: the per-image mean
                values = np.array(list(images.values()), dtype=float)
                finite = values[np.isfinite(values)]
                share = Estimate(float(finite.mean()), n=int(finite.size)) if finite.size \
                    else share
            if not share.finite:
                missing_share.setdefault(entry, set()).add(run.checkpoint)
                continue
            model.shares[entry] = share
            if images:
                model.per_image[entry] = images
    ordered = sorted(models.values(), key=lambda m: (
        m.kind, m.arch, RULE_ORDER.get(m.rule or "", 3), m.strength or 0.0,
        m.seed if m.seed is not None else -1, m.checkpoint))
    _labels(ordered)
    notes = []
    if missing_share:
        notes.append(f"No {SHARE} (an evaluation without metric=[known_truth]): " + ", ".join(
            f"{entry} on {len(missing_share[entry])} of {len(models)} models"
            for entry in sorted(missing_share)) + "; left out there.")
    return ordered, notes


RULE_ORDER = {"lesion": 0, "both": 1, "marker": 2}
