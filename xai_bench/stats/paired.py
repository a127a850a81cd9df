"""Is method A better than method B on the same images, or is the difference noise?

A paired comparison works on the per-image differences d = a - b (the image is the paired unit,
so image difficulty cancels). It reports the mean difference with a paired bootstrap interval,
a two-sided test and an effect size:

- continuous metrics: Wilcoxon's signed-rank test (Wilcoxon 1945) as scipy computes it with
  zero_method="wilcox" (zero differences dropped) and method="auto": the exact null distribution
  when at most 50 pairs and no zero or tied difference, otherwise the tie-corrected normal
  approximation without continuity correction (exhaustive sign flips when n <= 13). Effect
  size: the matched-pairs rank-biserial correlation (Kerby 2014, Comprehensive Psychology 3).
- binary metrics (every value 0 or 1, e.g. the pointing game): McNemar's test on the
  discordant pairs, which is the sign test; the exact conditional (binomial) p-value is
  conservative at the discordant counts of a study (false-positive rate 0.02-0.03 at alpha
  0.05 in tests/test_stats_calibration.py), so the mid-p version is used (Fagerland, Lydersen
  & Laake 2013, BMC Med Res Methodol 13:91): exact p - P(X = observed). Effect size
  (n10 - n01) / (n10 + n01), the rank-biserial correlation of +-1 differences.
- interval: percentile bootstrap of mean(d) over images (Efron & Tibshirani 1993), expanded
  for small samples (Hesterberg 2015, The American Statistician 69(4)): the quantiles are taken
  at alpha' = 2 Phi(-sqrt(n / (n - 1)) t_{1 - alpha/2, n - 1}). The plain percentile interval
  uses the plug-in sd and normal quantiles: on normal differences it excludes 0 under the null
  about 5.8% of the time at 50 images and 9.6% at 10; the expanded one about 5%.
- several seeds on the same images: see paired_test_seeds and hierarchical_bootstrap.

Holm's step-down correction (Holm 1979, Scand J Statist 6) adjusts a family of such p-values.
The row functions (compare_rows, bootstrap_rows) work on many comparisons at once; the
calibration tests simulate thousands of comparisons through them.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from xai_bench.utils.errors import ConfigError

__all__ = [
    "PairedTest",
    "bootstrap_rows",
    "compare_rows",
    "hierarchical_bootstrap",
    "holm",
    "is_binary",
    "paired_test",
    "paired_test_seeds",
    "rank_biserial",
    "seed_averages",
]

_CHUNK = 20_000_000  # float64 cells per bootstrap block (about 160 MB at most)


@dataclass(frozen=True)
class PairedTest:
    """One paired comparison of method a against method b on one metric."""

    test: str  # "wilcoxon" or "sign" (binary metrics)
    n: int  # pairs used (finite in both arrays; for seeds: images)
    mean_a: float
    mean_b: float
    mean_diff: float  # mean(a - b)
    ci_low: float  # paired bootstrap interval of mean(a - b)
    ci_high: float
    statistic: float  # Wilcoxon: min(T+, T-) as scipy reports it; sign: n10 (images a > b)
    p_value: float  # two-sided, uncorrected (1.0 when every difference is 0, or n == 0)
    effect_size: float  # matched-pairs rank-biserial correlation in [-1, 1] (> 0: a larger)
    n_seeds: int = 1


def is_binary(*arrays: np.ndarray) -> bool:
    """Every finite value is 0 or 1 (and there is at least one): a hit / miss metric."""
    values = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in arrays])
    values = values[np.isfinite(values)]
    return bool(values.size) and bool(np.all((values == 0) | (values == 1)))


def _rank_biserial_rows(d: np.ndarray) -> np.ndarray:
    """(T+ - T-) / (T+ + T-) per row, ranks of |d| over the nonzero differences (0 if none)."""
    zeros = (d == 0).sum(axis=-1, keepdims=True)
    # zeros take the lowest ranks of |d|; removing them shifts every other rank down by their count
    ranks = stats.rankdata(np.abs(d), axis=-1) - zeros
    t_plus = np.where(d > 0, ranks, 0.0).sum(axis=-1)
    t_minus = np.where(d < 0, ranks, 0.0).sum(axis=-1)
    total = t_plus + t_minus
    return np.where(total > 0, (t_plus - t_minus) / np.where(total > 0, total, 1.0), 0.0)


def rank_biserial(diffs: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (Kerby 2014): the share of
    the rank sum favouring a minus the share favouring b; NaN differences are dropped."""
    d = np.asarray(diffs, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    return float(_rank_biserial_rows(d[None, :])[0]) if d.size else 0.0


def _sign_flip_test(d: np.ndarray) -> tuple[float, float]:
    """(min(T+, T-), two-sided p) of Wilcoxon's test over all 2^m equally likely sign flips of
    the m nonzero differences: exact under zeros and ties. scipy's method="auto" computes the
    same by permutation_test, one Python call per flip (a second per comparison)."""
    v = d[d != 0]
    ranks = stats.rankdata(np.abs(v))
    flips = (np.arange(2 ** v.size)[:, None] >> np.arange(v.size)) & 1
    null = flips @ ranks
    observed = float(ranks[v > 0].sum())
    tol = 1e-9 * max(1.0, observed)
    p = 2.0 * min(np.mean(null <= observed + tol), np.mean(null >= observed - tol))
    return min(observed, float(ranks.sum()) - observed), min(float(p), 1.0)


def _wilcoxon_rows(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wilcoxon's test per row as scipy.stats.wilcoxon(row) gives it (zero_method="wilcox",
    method="auto"). scipy decides exact vs approximate once per call from the zeros and ties of
    ALL rows, so rows with a zero or a tie get a call of their own; for those, at n <= 13,
    scipy's permutation test is replaced by the same exhaustive sign flips. Rows with no
    nonzero difference: statistic 0, p 1."""
    stat = np.zeros(d.shape[0])
    p = np.ones(d.shape[0])
    nonzero = (d != 0).sum(axis=-1)
    s = np.sort(np.abs(d), axis=-1)
    tied = ((np.diff(s, axis=-1) == 0) & (s[:, 1:] > 0)).any(axis=-1)
    plain = ~tied & (nonzero == d.shape[1])
    flipped = ~plain & (nonzero > 0) & (d.shape[1] <= 13)
    for row in np.flatnonzero(flipped):
        stat[row], p[row] = _sign_flip_test(d[row])
    for rows in (plain & (nonzero > 0), ~plain & (nonzero > 0) & ~flipped):
        if rows.any():
            res = stats.wilcoxon(d[rows], axis=-1, zero_method="wilcox", method="auto")
            stat[rows] = res.statistic
            p[rows] = np.clip(res.pvalue, 0.0, 1.0)
    return stat, p


def _sign_rows(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided mid-p sign test per row (McNemar's test for 0/1 pairs): statistic n10 (rows with
    d > 0), p = 2 P(X <= k - 1) + P(X = k), X ~ Bin(n10 + n01, 1/2), k = min(n10, n01)."""
    pos = (d > 0).sum(axis=-1)
    neg = (d < 0).sum(axis=-1)
    discordant = pos + neg
    k = np.minimum(pos, neg)
    p = 2.0 * stats.binom.cdf(k - 1, discordant, 0.5) + stats.binom.pmf(k, discordant, 0.5)
    p = np.where((discordant > 0) & (pos != neg), np.minimum(p, 1.0), 1.0)  # exactly 1 if tied
    effect = np.where(discordant > 0, (pos - neg) / np.maximum(discordant, 1), 0.0)
    return pos.astype(np.float64), p, effect


def compare_rows(d: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(statistic, p, effect size) for every row of finite differences d (R, n): the sign test
    when binary, else Wilcoxon with the rank-biserial correlation."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or not np.all(np.isfinite(d)):
        raise ConfigError("compare_rows needs a 2-D array of finite differences (rows, images)")
    if d.shape[1] == 0:
        zeros = np.zeros(d.shape[0])
        return zeros, np.ones(d.shape[0]), zeros.copy()
    if binary:
        return _sign_rows(d)
    stat, p = _wilcoxon_rows(d)
    return stat, p, _rank_biserial_rows(d)


def _expanded_quantiles(level: float, n: int) -> tuple[float, float]:
    """Hesterberg's (2015) expanded percentile levels for a mean of n values."""
    if n < 2:
        return (1.0 - level) / 2.0, (1.0 + level) / 2.0
    z = math.sqrt(n / (n - 1)) * stats.t.ppf((1.0 + level) / 2.0, n - 1)
    tail = float(stats.norm.sf(z))
    return tail, 1.0 - tail


def _counts(rng: np.random.Generator, samples: int, n: int) -> np.ndarray:
    """(samples, n) times each of n units is drawn in each resample (with replacement)."""
    idx = rng.integers(n, size=(samples, n))
    flat = (idx + n * np.arange(samples)[:, None]).ravel()
    return np.bincount(flat, minlength=samples * n).reshape(samples, n).astype(np.float64)


def _resampled_means(d: np.ndarray, images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Bootstrap means (R, samples) of d (R, S, n) for image counts (samples, n) and seed counts
    (samples, S): each image's mean over the drawn seeds where it is finite, then the mean over
    the drawn images that have one (the mean of all drawn differences when nothing is missing)."""
    rows, n_seeds, n = d.shape
    finite = np.isfinite(d)
    if finite.all():
        per_seed = d @ images.T  # (R, S, samples): sum over drawn images, per seed
        return np.einsum("rsb,bs->rb", per_seed, seeds) / (n * n_seeds)
    out = np.empty((rows, images.shape[0]))
    filled = np.where(finite, d, 0.0)
    step = max(1, _CHUNK // (images.shape[0] * n))
    for start in range(0, rows, step):
        part = slice(start, start + step)
        total = seeds @ filled[part]  # (r, samples, n): drawn seeds' sum per image
        count = seeds @ finite[part].astype(np.float64)
        has = count > 0
        image_mean = np.where(has, total / np.where(has, count, 1.0), 0.0)
        weight = images * has  # drawn images with at least one finite drawn seed
        with np.errstate(invalid="ignore", divide="ignore"):
            out[part] = (weight * image_mean).sum(axis=-1) / weight.sum(axis=-1)
    return out


def bootstrap_rows(d: np.ndarray, *, level: float = 0.95, samples: int = 1000,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap interval (low, high) of the mean difference for each row of d (R, S, n):
    S seeds aligned by image (NaN where missing; every image finite in at least one seed).

    Each resample draws the images with replacement ONCE and the seeds with replacement, and
    takes the drawn images in every drawn seed (seeds, then images; a crossed or "pigeonhole"
    bootstrap, Owen 2007, Ann. Appl. Stat. 1(2)). The images are shared by the seeds, and an
    image that favours a method tends to do so in every seed: drawing images anew within each
    seed would treat them as independent and give intervals far too narrow (tests/
    test_stats_calibration.py: 0.11 false positives at alpha 0.05). The price: the per-seed
    noise is counted twice, so the interval is conservative (0.025 there). With one seed this
    is the plain paired bootstrap over images. Images are drawn before seeds from
    numpy.random.default_rng(seed), so one seed reproduces paired_test's interval exactly."""
    d = np.asarray(d, dtype=np.float64)
    _check_level(level)
    _check_samples(samples)
    if d.ndim != 3:
        raise ConfigError(f"bootstrap_rows needs a (rows, seeds, images) array; got {d.shape}")
    rows, n_seeds, n = d.shape
    nan = np.full(rows, np.nan)
    if n < 2 or n_seeds == 0 or samples == 0:
        return nan, nan.copy()
    rng = np.random.default_rng(seed)
    images = _counts(rng, samples, n)
    seeds = _counts(rng, samples, n_seeds)
    means = _resampled_means(d, images, seeds)
    q = _expanded_quantiles(level, n)
    if np.isfinite(means).all():
        low, high = np.quantile(means, q, axis=-1)
    else:  # a resample whose drawn seeds miss every drawn image's scores has no mean
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(means, q, axis=-1)
    return low, high


def _check_level(level: float) -> None:
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ConfigError(f"the interval level must lie in (0, 1); got {level!r}")


def _check_samples(samples: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
        raise ConfigError(f"bootstrap samples must be an integer >= 0; got {samples!r}")


def _seed_matrix(per_seed: Sequence[np.ndarray], name: str) -> np.ndarray:
    """(S, n) float array from S 1-D arrays aligned by image."""
    if isinstance(per_seed, np.ndarray) and per_seed.ndim == 2:
        per_seed = list(per_seed)
    arrays = [np.asarray(x, dtype=np.float64) for x in per_seed]
    if not arrays:
        raise ConfigError(f"{name}: at least one seed is needed")
    if any(x.ndim != 1 for x in arrays):
        raise ConfigError(f"{name}: each seed's scores must be a 1-D array (one per image)")
    lengths = sorted({x.size for x in arrays})
    if len(lengths) > 1:
        raise ConfigError(f"{name}: the seeds' arrays must be aligned by image (same length); "
                          f"got lengths {lengths}")
    return np.stack(arrays)


def hierarchical_bootstrap(diffs_per_seed: Sequence[np.ndarray], *, level: float = 0.95,
                           samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the mean paired difference over seeds and images: the per-seed
    difference arrays must be aligned by image (NaN where missing); images with no finite
    difference in any seed are dropped. See bootstrap_rows for the resampling scheme."""
    d = _seed_matrix(diffs_per_seed, "hierarchical_bootstrap")
    d = d[:, np.isfinite(d).any(axis=0)]
    low, high = bootstrap_rows(d[None], level=level, samples=samples, seed=seed)
    return float(low[0]), float(high[0])


def seed_averages(d: np.ndarray, a: np.ndarray, b: np.ndarray, both: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the mean over the seeds where both entries are scored of d = a - b, a and b
    ((seeds, images) arrays; `both` marks the scored pairs): the image is the paired unit."""
    if d.shape[0] == 1:
        return d[0], a[0], b[0]
    count = both.sum(axis=0)
    return tuple(np.where(both, x, 0.0).sum(axis=0) / count for x in (d, a, b))  # type: ignore


def paired_test_seeds(a_per_seed: Sequence[np.ndarray], b_per_seed: Sequence[np.ndarray], *,
                      binary: bool | None = None, level: float = 0.95, samples: int = 1000,
                      seed: int = 0) -> PairedTest:
    """Paired comparison over several seeds that score the same images (arrays aligned by image,
    NaN where missing).

    Combination: the image is the paired unit shared by all seeds, so each image's difference is
    averaged over the seeds where both scores are finite, and the test runs once on those
    averaged differences (Wilcoxon; for binary metrics the sign test on the sign of the averaged
    difference, with the sign-based effect size). This tests the methods on these trained
    models: a method effect that changes from seed to seed is not part of the test's null
    variation (with 3 seeds there is too little to estimate it), but it widens the interval,
    the hierarchical bootstrap over seeds and images (bootstrap_rows). n counts the images,
    n_seeds the seeds; mean_a and mean_b average each image over the same seeds. With one seed
    this is exactly paired_test."""
    a = _seed_matrix(a_per_seed, "paired_test_seeds: a")
    b = _seed_matrix(b_per_seed, "paired_test_seeds: b")
    if a.shape != b.shape:
        raise ConfigError(f"paired_test_seeds: a and b must hold the same seeds and images; got "
                          f"{a.shape[0]} x {a.shape[1]} and {b.shape[0]} x {b.shape[1]}")
    _check_level(level)
    _check_samples(samples)
    both = np.isfinite(a) & np.isfinite(b)
    keep = both.any(axis=0)
    a, b, both = a[:, keep], b[:, keep], both[:, keep]
    if binary is None:
        binary = is_binary(a, b)
    d = np.where(both, a - b, np.nan)
    n_seeds, n = d.shape
    if n == 0:
        nan = math.nan
        return PairedTest("sign" if binary else "wilcoxon", 0, nan, nan, nan, nan, nan, 0.0, 1.0,
                          0.0, n_seeds)
    image_d, image_a, image_b = seed_averages(d, a, b, both)
    stat, p, effect = compare_rows(image_d[None, :], bool(binary))
    low, high = bootstrap_rows(d[None], level=level, samples=samples, seed=seed)
    return PairedTest(
        test="sign" if binary else "wilcoxon", n=int(n), mean_a=float(image_a.mean()),
        mean_b=float(image_b.mean()), mean_diff=float(image_d.mean()), ci_low=float(low[0]),
        ci_high=float(high[0]), statistic=float(stat[0]), p_value=float(p[0]),
        effect_size=float(effect[0]), n_seeds=int(n_seeds))


def paired_test(a: np.ndarray, b: np.ndarray, *, binary: bool | None = None,
                level: float = 0.95, samples: int = 1000, seed: int = 0) -> PairedTest:
    """Paired comparison of methods a and b on one metric: 1-D per-image scores aligned by
    image; pairs where either score is NaN are dropped. binary=None detects a 0/1 metric
    (is_binary) and then uses the sign test; the module docstring says which test and why."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1:
        raise ConfigError(f"paired_test needs 1-D per-image scores; got shapes {a.shape} and "
                          f"{b.shape}")
    if a.size != b.size:
        raise ConfigError(f"paired_test needs the same images for both methods; got {a.size} "
                          f"and {b.size} scores")
    return paired_test_seeds([a], [b], binary=binary, level=level, samples=samples, seed=seed)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values, in the input's order: the j-th smallest of m
    p-values is multiplied by m - j + 1, made monotone and capped at 1. Rejecting where the
    adjusted p < alpha keeps the family-wise error rate <= alpha under any dependence. NaN
    entries (no test) pass through and do not count in the family size m."""
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.isfinite(p)
    if np.any(p[finite] < 0) or np.any(p[finite] > 1) or np.any(np.isinf(p)):
        raise ConfigError("holm: p-values must lie in [0, 1] (NaN for a missing test)")
    out = np.full(p.shape, np.nan)
    values = p[finite]
    m = values.size
    if m:
        order = np.argsort(values, kind="stable")
        scaled = values[order] * (m - np.arange(m))
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
        out[finite] = adjusted
    return out
