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

import math
from collections.abc import Sequence

import numpy as np

from xai_bench.report.eval_runs import EvalRun
from xai_bench.report.known_truth_models import (
    FAITHFUL,
    FLAG_SHARE,
    GROUPS,
    MIN_MODELS,
    NEEDS_MODELS,
    NOT_JUDGED,
    PARTLY,
    PLAUSIBLE,
    RULE_ORDER,
    SHARE,
    TABLE_METRICS,
    VERDICT_ORDER,
    Estimate,
    Flag,
    KnownTruth,
    KnownTruthEntry,
    KnownTruthModel,
    collect_models,
    has_known_truth,
    model_kind,
)
from xai_bench.report.significance_writers import format_p
from xai_bench.stats.correlation import (
    SpearmanInterval,
    spearman_interval,
    stratified_spearman_interval,
)
from xai_bench.stats.paired import compare_rows, holm
from xai_bench.utils.errors import ConfigError

__all__ = ["FAITHFUL", "FLAG_SHARE", "GROUPS", "NOT_JUDGED", "PARTLY", "PLAUSIBLE", "SHARE",
           "TABLE_METRICS", "Estimate", "Flag", "KnownTruth", "KnownTruthEntry",
           "KnownTruthModel", "analyse_known_truth", "collect_models", "has_known_truth",
           "model_kind", "models_sentence", "summary_sentences"]

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
                           f"corrected p {format_p(entry.flag.p_holm)})")
    if rho is None or not rho.defined:
        why = rho.reason if rho is not None else "no model"
        return NOT_JUDGED, f"flags the marker-only models, but no correlation: {why}"
    if rho.above_zero and rho.p_value < alpha:
        return FAITHFUL, ("its marker share rises with the reliance (rho interval above 0, "
                          "permutation p < alpha) and it flags the marker-only models")
    return PARTLY, ("flags the marker-only models, but its marker share does not track the "
                    "reliance across models with confidence (rho interval reaches 0 or "
                    f"permutation p {format_p(rho.p_value)})")


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
    rules = {rule: sum(m.rule == rule for m in kt.models) for rule in RULE_ORDER}
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
