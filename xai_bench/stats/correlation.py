"""Does one quantity rise with another across a handful of units (models)? Spearman's rank
correlation with a bootstrap interval and a one-sided permutation test.

The known-truth benchmark (docs/known-truth.md) asks whether a map method's share of relevance
on a planted marker tracks how far each model relies on that marker. The units are trained
models: a few to a few dozen, so the interval and the test must hold at small n.

- rho: Spearman (1904), the Pearson correlation of the ranks, ties given their average rank
  (scipy.stats.spearmanr's value).
- interval: percentile bootstrap over the PAIRS (Efron & Tibshirani 1993, ch. 13): a resample
  draws models with replacement and keeps each model's (x, y) together. A resample in which x
  or y is constant has no rho; it is skipped and counted (`skipped`), so at very small n the
  interval is conditional on the resamples that vary.
- p-value: one-sided, H1 rho > 0, under the null that the pairing is exchangeable: every
  permutation of y against x is equally likely (Pitman 1937). Exact enumeration of all n!
  permutations for n <= 8; above, 10,000 seeded random permutations with the +1 correction of
  Phipson & Smyth (2010, Stat. Appl. Genet. Mol. Biol. 9(1)): p = (1 + #{rho* >= rho}) /
  (1 + B), never 0 and valid at any B.
- stratified (`stratified_spearman_interval`): models of different kinds (a ViT and a CNN) may
  sit at different levels of y for the same x, which a pooled rank correlation reads as noise.
  Within each stratum rho as above; the statistic is their mean weighted by the stratum's
  pairs (a stratum with fewer than 3 pairs, or a constant x or y, is left out); the bootstrap
  resamples within each stratum, and the permutation null permutes within each stratum (exact
  over every combination while there are at most 8! of them, else Monte Carlo as above), so no
  pair is ever compared across strata.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from xai_bench.stats.paired import _check_level, _check_samples
from xai_bench.utils.errors import ConfigError

__all__ = ["EXACT_MAX_N", "PERMUTATIONS", "SpearmanInterval", "spearman_interval",
           "stratified_spearman_interval"]

EXACT_MAX_N = 8  # 8! = 40,320 permutations: enumerated in well under a second
PERMUTATIONS = 10_000
_TOLERANCE = 1e-12  # a permuted rho equal to the observed one (up to rounding) counts as >=
_CHUNK = 5_000_000  # float64 cells per block of permutations or resamples


@dataclass(frozen=True)
class SpearmanInterval:
    """Spearman's rho between x and y over the n complete pairs, its bootstrap interval and the
    one-sided permutation p-value for rho > 0; NaN everywhere with `reason` when undefined."""

    rho: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    level: float
    samples: int  # bootstrap resamples drawn
    skipped: int  # resamples without a rho (x or y constant in the resample)
    exact: bool  # p from every permutation (n <= EXACT_MAX_N), else Monte Carlo
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return self.reason is None

    @property
    def above_zero(self) -> bool:
        """The whole interval lies above 0 (the correlation is positive at this level)."""
        return self.defined and math.isfinite(self.ci_low) and self.ci_low > 0


def _centred_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis, centred and scaled to unit norm (NaN when constant):
    the Pearson correlation of two such rows is their dot product."""
    ranks = stats.rankdata(values, axis=-1)
    ranks = ranks - ranks.mean(axis=-1, keepdims=True)
    norm = np.sqrt((ranks**2).sum(axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, ranks / np.where(norm > 0, norm, 1.0), np.nan)


def _resampled_rhos(x: np.ndarray, y: np.ndarray, samples: int,
                    rng: np.random.Generator) -> np.ndarray:
    """rho of `samples` resamples of the pairs (NaN where x or y comes out constant)."""
    n = x.size
    rhos = []
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, samples, step):
        idx = rng.integers(n, size=(min(step, samples - start), n))
        rhos.append((_centred_ranks(x[idx]) * _centred_ranks(y[idx])).sum(axis=-1))
    return np.concatenate(rhos) if rhos else np.empty(0)


def _percentile(values: np.ndarray, level: float) -> tuple[float, float, int]:
    """(low, high, skipped): the percentile interval of the finite values."""
    kept = values[np.isfinite(values)]
    skipped = int(values.size - kept.size)
    if kept.size == 0:
        return math.nan, math.nan, skipped
    low, high = np.quantile(np.clip(kept, -1.0, 1.0), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high), skipped


def _bootstrap(x: np.ndarray, y: np.ndarray, level: float, samples: int,
               rng: np.random.Generator) -> tuple[float, float, int]:
    """(low, high, skipped): the percentile interval of rho over resampled pairs."""
    return _percentile(_resampled_rhos(x, y, samples, rng), level)


def _permuted_rhos(rx: np.ndarray, ry: np.ndarray, count: int,
                   rng: np.random.Generator) -> np.ndarray:
    """rho of `count` random permutations of ry against rx (centred unit-norm ranks)."""
    n = rx.size
    out = []
    step = max(1, _CHUNK // n)
    for start in range(0, count, step):
        rows = min(step, count - start)
        perms = rng.permuted(np.broadcast_to(np.arange(n), (rows, n)), axis=1)
        out.append(ry[perms] @ rx)
    return np.concatenate(out) if out else np.empty(0)


def _permutation_p(rx: np.ndarray, ry: np.ndarray, rho: float,
                   rng: np.random.Generator) -> tuple[float, bool]:
    """One-sided p of rho > 0 from the centred ranks rx, ry (unit norm): exact for small n."""
    n = rx.size
    threshold = rho - _TOLERANCE
    if n <= EXACT_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
        null = ry[perms] @ rx
        return float(np.mean(null >= threshold)), True
    hits = int(np.sum(_permuted_rhos(rx, ry, PERMUTATIONS, rng) >= threshold))
    return (1.0 + hits) / (1.0 + PERMUTATIONS), False


def _pairs(x: np.ndarray, y: np.ndarray, *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """x, y (and `more` arrays alongside) as flat arrays, kept where x and y are finite."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    extra = [np.asarray(m).ravel() for m in more]
    if x.size != y.size or any(m.size != x.size for m in extra):
        raise ConfigError(f"spearman_interval needs paired values; got {x.size} x and "
                          f"{y.size} y" + "".join(f", {m.size} strata" for m in extra))
    keep = np.isfinite(x) & np.isfinite(y)
    return (x[keep], y[keep], *(m[keep] for m in extra))


def spearman_interval(x: np.ndarray, y: np.ndarray, level: float = 0.95, samples: int = 2000,
                      seed: int = 0) -> SpearmanInterval:
    """Spearman's rho of the pairs (x[i], y[i]) where both are finite, the percentile bootstrap
    interval over the pairs at `level` (`samples` resamples; 0 = no interval) and the one-sided
    permutation p-value for rho > 0 (module docstring). Fewer than 3 pairs, or a constant x or
    y: NaN with the reason. `seed` fixes the resamples and the Monte Carlo permutations (two
    independent streams, so changing `samples` leaves p unchanged)."""
    _check_level(level)
    _check_samples(samples)
    x, y = _pairs(x, y)
    n = int(x.size)
    nan = math.nan

    def undefined(reason: str) -> SpearmanInterval:
        return SpearmanInterval(nan, nan, nan, nan, n, level, 0, 0, False, reason)

    if n < 3:
        return undefined(f"a rank correlation needs at least 3 pairs (got {n})")
    rx, ry = _centred_ranks(x), _centred_ranks(y)
    if not (np.isfinite(rx).all() and np.isfinite(ry).all()):
        which = "x" if not np.isfinite(rx).all() else "y"
        return undefined(f"{which} is the same for every pair: no ranking to correlate")
    rho = float(np.clip(rx @ ry, -1.0, 1.0))
    boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    low, high, skipped = _bootstrap(x, y, level, int(samples), boot_rng)
    p, exact = _permutation_p(rx, ry, rho, perm_rng)
    return SpearmanInterval(rho, low, high, p, n, level, int(samples), skipped, exact)


def stratified_spearman_interval(x: np.ndarray, y: np.ndarray, strata: np.ndarray,
                                 level: float = 0.95, samples: int = 2000,
                                 seed: int = 0) -> SpearmanInterval:
    """Spearman's rho within each stratum, averaged weighted by the stratum's pairs, with a
    bootstrap within strata and a permutation test within strata (module docstring). A single
    usable stratum gives exactly its spearman_interval; none (each with < 3 pairs, or constant),
    the spearman_interval of all the pairs pooled. `n` counts the pairs of the strata used;
    `skipped`, the resamples in which no stratum had a rho."""
    _check_level(level)
    _check_samples(samples)
    x, y, strata = _pairs(x, y, strata)
    groups = []
    for label in dict.fromkeys(strata.tolist()):
        member = strata == label
        xs, ys = x[member], y[member]
        if xs.size >= 3 and np.ptp(xs) > 0 and np.ptp(ys) > 0:
            groups.append((xs, ys))
    if len(groups) <= 1:  # one stratum: its own rho; none usable: the pooled pairs' (or why not)
        pairs = groups[0] if groups else (x, y)
        return spearman_interval(*pairs, level=level, samples=samples, seed=seed)
    weights = np.array([g[0].size for g in groups], dtype=np.float64)
    weights /= weights.sum()
    ranks = [(_centred_ranks(xs), _centred_ranks(ys)) for xs, ys in groups]
    rho = float(np.clip(sum(w * (rx @ ry) for w, (rx, ry) in zip(weights, ranks, strict=True)),
                        -1.0, 1.0))
    boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    # resamples: a stratum without a rho in a resample leaves the others' weights to carry it
    boot = np.stack([_resampled_rhos(xs, ys, int(samples), boot_rng) for xs, ys in groups])
    present = np.isfinite(boot)
    weight = np.where(present, weights[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        combined = (np.where(present, boot, 0.0) * weight).sum(axis=0) / weight.sum(axis=0)
    low, high, skipped = _percentile(combined, level)
    p, exact = _stratified_permutation_p(weights, ranks, rho, perm_rng)
    n = int(sum(g[0].size for g in groups))
    return SpearmanInterval(rho, low, high, p, n, level, int(samples), skipped, exact)


def _stratified_permutation_p(weights: np.ndarray, ranks: list[tuple[np.ndarray, np.ndarray]],
                              rho: float, rng: np.random.Generator) -> tuple[float, bool]:
    """One-sided p of the weighted within-strata rho: exact over every combination of the
    strata's permutations when there are at most EXACT_MAX_N! of them, else Monte Carlo."""
    sizes = [rx.size for rx, _ in ranks]
    if math.prod(math.factorial(n) for n in sizes) <= math.factorial(EXACT_MAX_N):
        null = np.zeros(1)
        for w, (rx, ry) in zip(weights, ranks, strict=True):
            perms = np.array(list(itertools.permutations(range(rx.size))), dtype=np.intp)
            null = (null[:, None] + w * (ry[perms] @ rx)[None, :]).ravel()
        return float(np.mean(null >= rho - _TOLERANCE)), True
    null = sum(w * _permuted_rhos(rx, ry, PERMUTATIONS, rng)
               for w, (rx, ry) in zip(weights, ranks, strict=True))
    return (1.0 + float(np.sum(null >= rho - _TOLERANCE))) / (1.0 + PERMUTATIONS), False
