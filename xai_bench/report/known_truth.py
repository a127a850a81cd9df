"""The report's known-truth section: does a map method show what the model actually relies on?

The synthetic dataset plants a bright marker; models trained under rules that make the label
follow the lesion, the marker or both (dataset.shortcut.rule / strength) are evaluated on a
decorrelated split where the two cues disagree, so each model has a measured reliance on the
marker (metrics.json's known_truth block: the fraction of conflict images whose prediction
follows the marker). A faithful method's share of relevance on the marker (marker_share)
tracks that reliance across models; a method whose relevance stays on the lesion whatever the
model does is plausible but unfaithful (Adebayo et al., ICLR 2022, "Post hoc explanations may be
ineffective for detecting unknown spurious correlation"; Kim et al. 2021, "Sanity simulations
for saliency methods"). Per method and baseline: Spearman's rho between its per-model mean
marker_share and the reliance (xai_bench.stats.correlation) for ViT, CNN and all models; whether
it flags the marker-only models (marker_share > flag_share, 2/3 by default: the marker at least
twice as bright per pixel as the lesion, on most images, a one-sided sign test,
Holm-corrected); the contrast between marker-only and lesion-only models; a verdict and the
ranking. docs/known-truth.md explains each; known_truth_writers writes it.
"""

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
from xai_bench.stats.correlation import (
    SpearmanInterval,
    spearman_interval,
    stratified_spearman_interval,
)
from xai_bench.stats.paired import compare_rows, holm
from xai_bench.tracking.run_folder import run_of
from xai_bench.utils.errors import ConfigError

__all__ = ["FAITHFUL", "GROUPS", "NOT_JUDGED", "PARTLY", "PLAUSIBLE", "SHARE", "TABLE_METRICS",
           "Estimate", "Flag", "KnownTruth", "KnownTruthEntry", "KnownTruthModel",
           "analyse_known_truth", "collect_models", "has_known_truth", "model_kind",
           "models_sentence", "summary_sentences"]

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
        m.kind, m.arch, _RULE_ORDER.get(m.rule or "", 3), m.strength or 0.0,
        m.seed if m.seed is not None else -1, m.checkpoint))
    _labels(ordered)
    notes = []
    if missing_share:
        notes.append(f"No {SHARE} (an evaluation without metric=[known_truth]): " + ", ".join(
            f"{entry} on {len(missing_share[entry])} of {len(models)} models"
            for entry in sorted(missing_share)) + "; left out there.")
    return ordered, notes


_RULE_ORDER = {"lesion": 0, "both": 1, "marker": 2}


# ---------------------------------------------------------------------------------------------
# per entry


def _correlations(models: Sequence[KnownTruthModel], entry: str, level: float, samples: int,
                  seed: int) -> dict[str, SpearmanInterval]:
    """rho of the entry's mean marker share with the reliance, per model kind it was evaluated
    on, and over all of them: within each kind, then averaged (stratified by kind: a ViT's and
    a CNN's maps may sit at different levels, which a pooled ranking would read as noise)."""
    scored = [m for m in models if entry in m.shares and m.reliance.finite]
    out = {}
    for group in GROUPS:
        chosen = scored if group == "all" else [m for m in scored if m.kind == group]
        if group != "all" and not chosen:
            continue
        x = np.array([m.reliance.value for m in chosen])
        y = np.array([m.shares[entry].value for m in chosen])
        out[group] = (stratified_spearman_interval(x, y, np.array([m.kind for m in chosen]),
                                                   level=level, samples=samples, seed=seed)
                      if group == "all" else
                      spearman_interval(x, y, level=level, samples=samples, seed=seed))
    return out


def _one_sided_sign(d: np.ndarray) -> float:
    """One-sided mid-p sign test that d > 0 more often than d < 0, from the two-sided mid-p of
    xai_bench.stats.paired (the significance section's sign test): half of it when the
    positives lead, one minus half otherwise; 1 without a nonzero difference."""
    if not np.any(d != 0):
        return 1.0
    _stat, p, _effect = compare_rows(d[None, :], True)
    two_sided = float(p[0])
    return two_sided / 2 if (d > 0).sum() > (d < 0).sum() else 1.0 - two_sided / 2


def _flag(models: Sequence[KnownTruthModel], entry: str, flag_share: float) -> Flag | None:
    """The flag test on the marker-only models with per-image records of the entry."""
    chosen = [m for m in models if m.rule == "marker" and entry in m.per_image]
    by_image: dict[str, list[float]] = {}
    for model in chosen:
        for image, share in model.per_image[entry].items():
            if math.isfinite(share):
                by_image.setdefault(image, []).append(share)
    if not by_image:
        return None
    pairs = np.concatenate([np.array(v) for v in by_image.values()])
    # per image: the share of models whose map singles the marker out (a tie counts half)
    votes = np.array([np.mean(np.where(np.array(v) > flag_share, 1.0,
                                       np.where(np.array(v) < flag_share, 0.0, 0.5)))
                      for v in by_image.values()])
    d = votes - 0.5
    return Flag(fraction=float(np.mean(pairs > flag_share)), images=len(by_image),
                models=len(chosen), above=int((d > 0).sum()), below=int((d < 0).sum()),
                p_value=_one_sided_sign(d), threshold=flag_share)


def _contrast(models: Sequence[KnownTruthModel], entry: str) -> float | None:
    means = {}
    for rule in ("marker", "lesion"):
        values = [m.shares[entry].value for m in models if m.rule == rule and entry in m.shares]
        if not values:
            return None
        means[rule] = float(np.mean(values))
    return means["marker"] - means["lesion"]


def _verdict(entry: KnownTruthEntry, alpha: float) -> tuple[str, str]:
    """(verdict, why): faithful = rho's interval above 0 and flags the marker-only models;
    plausible, not faithful = does not flag them; partly faithful otherwise. "Above 0" also asks
    the permutation test (p < alpha): with a handful of models the bootstrap has few distinct
    resamples (3 models in perfect order: every resample that varies gives rho 1, the interval
    [1, 1]), the exact permutation p does not pretend (1/6 there)."""
    rho = entry.pooled
    if entry.flag is None:
        return NOT_JUDGED, "no model trained with rule=marker has per-image marker shares"
    if not entry.flag.flagged:
        return PLAUSIBLE, ("on the marker-only models its map does not single the marker out "
                           f"(marker share > {entry.flag.threshold:.2g} on "
                           f"{entry.flag.fraction:.0%} of images, "
                           f"corrected p {_p(entry.flag.p_holm)})")
    if rho is None or not rho.defined:
        why = rho.reason if rho is not None else "no model"
        return NOT_JUDGED, f"flags the marker-only models, but no correlation: {why}"
    if rho.above_zero and rho.p_value < alpha:
        return FAITHFUL, ("its marker share rises with the reliance (rho interval above 0, "
                          "permutation p < alpha) and it flags the marker-only models")
    return PARTLY, ("flags the marker-only models, but its marker share does not track the "
                    "reliance across models with confidence (rho interval reaches 0 or "
                    f"permutation p {_p(rho.p_value)})")


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "\u2013"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _rank_key(entry: KnownTruthEntry) -> tuple[int, float, float, str]:
    """Faithful first, then partly faithful, not judged, plausible; within a verdict by the
    pooled rho, then the contrast (a method that tracks the reliance without ever singling the
    marker out does not outrank one that does both)."""
    rho = entry.pooled.rho if entry.pooled is not None else math.nan
    contrast = entry.contrast if entry.contrast is not None else math.nan
    return (VERDICT_ORDER.index(entry.verdict) if entry.verdict in VERDICT_ORDER
            else len(VERDICT_ORDER),
            -rho if math.isfinite(rho) else math.inf,
            -contrast if math.isfinite(contrast) else math.inf, entry.name)


def _model_notes(models: Sequence[KnownTruthModel]) -> list[str]:
    """Models whose behaviour undercuts the benchmark: at chance, or not what the rule asked."""
    notes = []
    chance = [m.label for m in models if m.agree_accuracy.finite
              and (m.agree_accuracy.ci_low <= 0.5 if math.isfinite(m.agree_accuracy.ci_low)
                   else m.agree_accuracy.value <= 0.6)]
    if chance:
        notes.append("At chance on the images where lesion and marker agree (agree accuracy "
                     f"not above 0.5): {', '.join(chance)}; their reliance says nothing.")
    unlearnt = [m.label for m in models if m.rule == "marker" and m.reliance.finite
                and m.reliance.value <= 0.5]
    if unlearnt:
        notes.append("Trained with rule=marker but not reading the marker (reliance <= 0.5): "
                     f"{', '.join(unlearnt)}; the flag is tested on them all the same.")
    return notes


def analyse_known_truth(runs: Sequence[EvalRun], *, alpha: float = 0.05, level: float = 0.95,
                        samples: int = 2000, seed: int = 0,
                        flag_share: float = FLAG_SHARE) -> KnownTruth | None:
    """The section from the runs with a known_truth block; None when there is none."""
    if not 0.5 <= flag_share < 1.0:
        raise ConfigError(f"known_truth.flag_share must lie in [0.5, 1) (the marker share above "
                          f"which a map singles the marker out); got {flag_share}.")
    if not has_known_truth(runs):
        return None
    models, notes = collect_models(runs)
    kt_runs = [r for r in runs if r.known_truth is not None]
    methods = list(dict.fromkeys(r.method for r in kt_runs))
    baselines = [b for b in dict.fromkeys(b for r in kt_runs for b in r.baselines)
                 if b not in methods]
    entries = [KnownTruthEntry(name, kind, _correlations(models, name, level, samples, seed),
                               _flag(models, name, flag_share), _contrast(models, name))
               for kind, names in (("method", methods), ("baseline", baselines))
               for name in names]
    tested = [e for e in entries if e.flag is not None]
    corrected = holm([e.flag.p_value for e in tested])  # type: ignore[union-attr]
    for entry, p in zip(tested, corrected, strict=True):
        flag = entry.flag
        assert flag is not None
        entry.flag = Flag(flag.fraction, flag.images, flag.models, flag.above, flag.below,
                          flag.p_value, float(p), flag.fraction > 0.5 and float(p) < alpha,
                          flag.threshold)
    for entry in entries:
        entry.verdict, entry.reason = _verdict(entry, alpha)
    ranked = sorted((e for e in entries if e.kind == "method"), key=_rank_key)
    for rank, entry in enumerate(ranked, 1):
        entry.rank = rank
    message = None
    if len(models) < MIN_MODELS:
        message = f"{NEEDS_MODELS} (found {len(models)})"
    datasets = sorted({m.dataset for m in models})
    if len(datasets) > 1:
        notes.append(f"Models of {len(datasets)} datasets ({', '.join(datasets)}) are pooled.")
    notes += _model_notes(models)
    return KnownTruth(models, ranked + [e for e in entries if e.kind == "baseline"], alpha,
                      level, samples, notes, message, flag_share=flag_share)


# ---------------------------------------------------------------------------------------------
# what the section says


def _names(entries: Sequence[KnownTruthEntry], with_rho: bool = False) -> str:
    parts = []
    for e in entries:
        rho = e.pooled
        detail = (f" (rho {rho.rho:+.2f} [{rho.ci_low:+.2f}, {rho.ci_high:+.2f}])"
                  if with_rho and rho is not None and rho.defined and math.isfinite(rho.ci_low)
                  else "")
        parts.append(e.name + detail)
    return ", ".join(parts)


def models_sentence(kt: KnownTruth) -> str:
    """How many models of which kind and rule, and the spread of their reliance."""
    counts = {kind: sum(m.kind == kind for m in kt.models) for kind in ("vit", "cnn")}
    rules = {rule: sum(m.rule == rule for m in kt.models) for rule in _RULE_ORDER}
    reliance = [m.reliance.value for m in kt.models if m.reliance.finite]
    spread = (f"; reliance on the marker from {min(reliance):.2f} to {max(reliance):.2f}"
              if reliance else "")
    return (f"{len(kt.models)} models ({counts['vit']} ViT, {counts['cnn']} CNN; trained with "
            f"rule lesion {rules['lesion']}, both {rules['both']}, marker {rules['marker']})"
            f"{spread}.")


def summary_sentences(kt: KnownTruth) -> list[str]:
    """Plain language: which methods track the model's reliance, which stay on the lesion, and
    whether the baselines behave (a sanity check of the benchmark itself)."""
    out = [models_sentence(kt)]
    if kt.message:
        out.append(f"No correlation: {kt.message}; the flag and the contrast are shown alone.")
    by_verdict = {v: [e for e in kt.methods if e.verdict == v]
                  for v in (FAITHFUL, PARTLY, PLAUSIBLE, NOT_JUDGED)}
    if by_verdict[FAITHFUL]:
        out.append("Track what the model relies on (faithful: marker share rises with the "
                   "reliance and flags the marker-only models): "
                   f"{_names(by_verdict[FAITHFUL], True)}.")
    else:
        out.append("No method is faithful here: none both tracks the reliance and flags the "
                   "marker-only models.")
    if by_verdict[PLAUSIBLE]:
        out.append("Do not single the marker out even where the model reads only the marker "
                   "(plausible, not faithful: they would hide a shortcut): "
                   + _names(by_verdict[PLAUSIBLE]) + ".")
    if by_verdict[PARTLY]:
        out.append("Partly faithful (flag the marker-only models, but do not track the "
                   f"reliance with confidence): {_names(by_verdict[PARTLY], True)}.")
    if by_verdict[NOT_JUDGED]:
        out.append("Not judged: " + "; ".join(f"{e.name} ({e.reason})"
                                              for e in by_verdict[NOT_JUDGED]) + ".")
    bad = [e for e in kt.baselines if e.verdict in (FAITHFUL, PARTLY)]
    if bad:
        out.append("Sanity check FAILED: the baseline(s) " + ", ".join(
            f"{e.name} ({e.verdict})" for e in bad) + " come out (partly) faithful without "
            "looking at the model, so the benchmark does not separate methods from trivial maps "
            "here (is the marker large against the lesion?); read the verdicts with care.")
    elif kt.baselines:
        out.append("Sanity check passed: no baseline (" + ", ".join(e.name for e in kt.baselines)
                   + ") comes out (partly) faithful.")
    return out
