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
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from xai_bench.stats.paired import _check_level, _check_samples
from xai_bench.utils.errors import ConfigError

__all__ = ["EXACT_MAX_N", "PERMUTATIONS", "SpearmanInterval", "spearman_interval"]

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


def _bootstrap(x: np.ndarray, y: np.ndarray, level: float, samples: int,
               rng: np.random.Generator) -> tuple[float, float, int]:
    """(low, high, skipped): the percentile interval of rho over resampled pairs."""
    n = x.size
    rhos = []
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, samples, step):
        idx = rng.integers(n, size=(min(step, samples - start), n))
        rhos.append((_centred_ranks(x[idx]) * _centred_ranks(y[idx])).sum(axis=-1))
    values = np.concatenate(rhos) if rhos else np.empty(0)
    kept = values[np.isfinite(values)]
    skipped = int(values.size - kept.size)
    if kept.size == 0:
        return math.nan, math.nan, skipped
    low, high = np.quantile(np.clip(kept, -1.0, 1.0), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high), skipped


def _permutation_p(rx: np.ndarray, ry: np.ndarray, rho: float,
                   rng: np.random.Generator) -> tuple[float, bool]:
    """One-sided p of rho > 0 from the centred ranks rx, ry (unit norm): exact for small n."""
    n = rx.size
    threshold = rho - _TOLERANCE
    if n <= EXACT_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
        null = ry[perms] @ rx
        return float(np.mean(null >= threshold)), True
    hits = 0
    step = max(1, _CHUNK // n)
    for start in range(0, PERMUTATIONS, step):
        rows = min(step, PERMUTATIONS - start)
        perms = rng.permuted(np.broadcast_to(np.arange(n), (rows, n)), axis=1)
        hits += int(np.sum(ry[perms] @ rx >= threshold))
    return (1.0 + hits) / (1.0 + PERMUTATIONS), False


def spearman_interval(x: np.ndarray, y: np.ndarray, level: float = 0.95, samples: int = 2000,
                      seed: int = 0) -> SpearmanInterval:
    """Spearman's rho of the pairs (x[i], y[i]) where both are finite, the percentile bootstrap
    interval over the pairs at `level` (`samples` resamples; 0 = no interval) and the one-sided
    permutation p-value for rho > 0 (module docstring). Fewer than 3 pairs, or a constant x or
    y: NaN with the reason. `seed` fixes the resamples and the Monte Carlo permutations (two
    independent streams, so changing `samples` leaves p unchanged)."""
    _check_level(level)
    _check_samples(samples)
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ConfigError(f"spearman_interval needs paired values; got {x.size} x and "
                          f"{y.size} y")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
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
