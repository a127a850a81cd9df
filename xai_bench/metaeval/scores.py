"""MetaQuantus' consistency scores (Hedström et al., 2023), from tables of per-image scores.

Notation (the paper's): L explanation methods, N images, K perturbation draws.

  Q      (L, N)     the metric's score of each method's map of each image, unperturbed
  Q_hat  (K, L, N)  the same under the k-th perturbation draw
  keep   (K, N)     the images a draw is judged on: noise resilience (NR) keeps the images
                    whose prediction the perturbation left unchanged, adversarial reactivity
                    (AR) those whose prediction it changed (MetaQuantus' `indices`)

  IAC (intra-consistency): per method and draw, the p-value p_lk of a two-sided Wilcoxon
      signed-rank test (zero_method "zsplit") between the method's unperturbed and perturbed
      scores over the kept images. IAC_NR = mean p_lk (the scores did not move: p high);
      IAC_AR = mean (1 - p_lk) (they moved: p low).
  IEC (inter-consistency): per draw, over the kept images and the methods,
      NR: the share of methods whose rank among the L methods is unchanged
          (chance for a random metric: 1/L);
      AR: the share of (method, image) scores that got strictly worse, in the metric's own
          direction (chance: 1/2);
      averaged over the draws.
  MC (meta-consistency) = mean of IAC_NR, IEC_NR, IAC_AR, IEC_AR: 1 is an ideal metric.

Pairs with a NaN score (a metric's "undefined for this image") are left out; a draw that keeps
no image contributes nothing (NaN when no draw keeps any). Ranks break ties by method order (a
stable sort), so tied scores that stay tied keep their ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import wilcoxon

from xai_bench.utils.errors import ConfigError

__all__ = ["CRITERIA", "MetaScores", "Thresholds", "iac", "iec_ar", "iec_nr", "meta_scores",
           "verdict", "wilcoxon_p"]

CRITERIA = ("IAC_NR", "IEC_NR", "IAC_AR", "IEC_AR")


def wilcoxon_p(q: np.ndarray, q_hat: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired scores, zero differences split between
    the signs ("zsplit", as MetaQuantus): identical scores give p = 1, and so does a single
    pair (its exact two-sided p). NaN pairs are dropped; NaN without pairs.

    Args:
        q: (n,) unperturbed scores.
        q_hat: (n,) perturbed scores of the same images.

    Returns:
        The p-value, or NaN when no finite pair is left.
    """
    q, q_hat = np.asarray(q, dtype=np.float64), np.asarray(q_hat, dtype=np.float64)
    finite = np.isfinite(q) & np.isfinite(q_hat)
    if not finite.any():
        return float("nan")
    if finite.sum() == 1:
        return 1.0
    return float(wilcoxon(q[finite], q_hat[finite], zero_method="zsplit",
                          alternative="two-sided").pvalue)


def _check(q: np.ndarray, q_hat: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    q, q_hat = np.asarray(q, dtype=np.float64), np.asarray(q_hat, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    if q.ndim != 2 or q_hat.shape[1:] != q.shape or keep.shape != (q_hat.shape[0], q.shape[1]):
        raise ValueError(f"Q (L, N), Q_hat (K, L, N) and keep (K, N) expected; got {q.shape}, "
                         f"{q_hat.shape}, {keep.shape}")
    return q, q_hat, keep


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def iac(q: np.ndarray, q_hat: np.ndarray, keep: np.ndarray, reactive: bool) -> float:
    """Intra-consistency: the mean over methods and draws of the Wilcoxon p-value (NR) or of
    1 - p (AR, `reactive`).

    Args:
        q: (L, N) unperturbed scores.
        q_hat: (K, L, N) perturbed scores.
        keep: (K, N) the images each draw is judged on.
        reactive: False for noise resilience, True for adversarial reactivity.

    Returns:
        IAC in [0, 1] (NaN when no draw keeps an image).
    """
    q, q_hat, keep = _check(q, q_hat, keep)
    values = []
    for k in range(q_hat.shape[0]):
        if not keep[k].any():
            continue
        for method in range(q.shape[0]):
            p = wilcoxon_p(q[method, keep[k]], q_hat[k, method, keep[k]])
            values.append(1.0 - p if reactive else p)
    return _nanmean(values)


def _finite_columns(q: np.ndarray, q_hat_k: np.ndarray, keep_k: np.ndarray) -> np.ndarray:
    """The images kept by the draw whose every score (all methods, both sides) is finite."""
    return keep_k & np.isfinite(q).all(axis=0) & np.isfinite(q_hat_k).all(axis=0)


def iec_nr(q: np.ndarray, q_hat: np.ndarray, keep: np.ndarray) -> float:
    """Inter-consistency under minor perturbations: the share of methods whose rank among the
    methods, per image, is unchanged; averaged over the draws.

    Args:
        q: (L, N) unperturbed scores.
        q_hat: (K, L, N) perturbed scores.
        keep: (K, N) the images each draw is judged on.

    Returns:
        IEC_NR in [0, 1] (NaN when no draw keeps an image).
    """
    q, q_hat, keep = _check(q, q_hat, keep)
    values = []
    for k in range(q_hat.shape[0]):
        images = _finite_columns(q, q_hat[k], keep[k])
        if not images.any():
            continue
        order = np.argsort(q[:, images], axis=0, kind="stable")
        order_hat = np.argsort(q_hat[k][:, images], axis=0, kind="stable")
        values.append(float((order == order_hat).mean()))
    return _nanmean(values)


def iec_ar(q: np.ndarray, q_hat: np.ndarray, keep: np.ndarray,
           higher_is_better: bool | None) -> float:
    """Inter-consistency under disruptive perturbations: the share of (method, image) scores
    that got strictly worse; averaged over the draws.

    Args:
        q: (L, N) unperturbed scores.
        q_hat: (K, L, N) perturbed scores.
        keep: (K, N) the images each draw is judged on.
        higher_is_better: the metric's direction; None (no better direction) gives NaN.

    Returns:
        IEC_AR in [0, 1] (NaN when undefined).
    """
    q, q_hat, keep = _check(q, q_hat, keep)
    if higher_is_better is None:
        return float("nan")
    values = []
    for k in range(q_hat.shape[0]):
        images = _finite_columns(q, q_hat[k], keep[k])
        if not images.any():
            continue
        before, after = q[:, images], q_hat[k][:, images]
        worse = after < before if higher_is_better else after > before
        values.append(float(worse.mean()))
    return _nanmean(values)


@dataclass(frozen=True)
class Thresholds:
    """Pass marks of xai_bench (the paper ranks metrics by MC and sets none): NR passes when
    IAC_NR > iac_nr and IEC_NR > iec_nr, AR when IAC_AR > iac_ar and IEC_AR > iec_ar."""

    iac_nr: float = 0.05
    iec_nr: float = 0.5
    iac_ar: float = 0.5
    iec_ar: float = 0.5

    def __post_init__(self) -> None:
        for name in ("iac_nr", "iec_nr", "iac_ar", "iec_ar"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0.0 <= float(value) < 1.0):
                raise ConfigError(f"meta.pass.{name} must be a number in [0, 1); got {value!r}.")


@dataclass
class MetaScores:
    """The four consistency scores of one metric column in one perturbation space."""

    IAC_NR: float
    IEC_NR: float
    IAC_AR: float
    IEC_AR: float
    images_nr: float  # images judged per NR draw (mean over draws)
    images_ar: float

    @property
    def mc(self) -> float:
        """Meta-consistency: the mean of the four scores (NaN ones left out)."""
        return _nanmean([self.IAC_NR, self.IEC_NR, self.IAC_AR, self.IEC_AR])


def meta_scores(q: np.ndarray, q_nr: np.ndarray, keep_nr: np.ndarray, q_ar: np.ndarray,
                keep_ar: np.ndarray, higher_is_better: bool | None) -> MetaScores:
    """The four scores of one metric column in one space (model or input perturbations).

    Args:
        q: (L, N) unperturbed scores.
        q_nr: (K, L, N) scores under the minor perturbations; keep_nr (K, N) their images.
        q_ar: (K, L, N) scores under the disruptive perturbations; keep_ar (K, N) their images.
        higher_is_better: the column's direction (None: IEC_AR is NaN).

    Returns:
        The scores and how many images each kind of draw judged on average.
    """
    return MetaScores(
        IAC_NR=iac(q, q_nr, keep_nr, reactive=False),
        IEC_NR=iec_nr(q, q_nr, keep_nr),
        IAC_AR=iac(q, q_ar, keep_ar, reactive=True),
        IEC_AR=iec_ar(q, q_ar, keep_ar, higher_is_better),
        images_nr=float(np.asarray(keep_nr, dtype=bool).sum(axis=1).mean()),
        images_ar=float(np.asarray(keep_ar, dtype=bool).sum(axis=1).mean()),
    )


def _judge(values: list[tuple[float, float]]) -> str:
    """pass | fail over (score, mark) pairs; NaN scores are not judged; n/a if none is."""
    judged = [(v, mark) for v, mark in values if np.isfinite(v)]
    if not judged:
        return "n/a"
    return "pass" if all(v > mark for v, mark in judged) else "fail"


def verdict(scores: MetaScores, thresholds: Thresholds) -> tuple[str, str]:
    """(NR, AR) verdicts of one column in one space: pass | fail | n/a (nothing to judge, e.g.
    no draw changed a prediction)."""
    nr = _judge([(scores.IAC_NR, thresholds.iac_nr), (scores.IEC_NR, thresholds.iec_nr)])
    ar = _judge([(scores.IAC_AR, thresholds.iac_ar), (scores.IEC_AR, thresholds.iec_ar)])
    return nr, ar
