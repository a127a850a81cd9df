"""Which method ranks first across the study grid, and is that more than noise?

The Friedman test with the Iman-Davenport correction and the Nemenyi post-hoc test over blocks
(the grid's (dataset, init) rows), as recommended by Demsar (2006), "Statistical comparisons of
classifiers over multiple data sets", JMLR 7:1-30 (section 3.2.2). Ranks, not raw scores, enter:
metrics live on different scales across datasets, and ranks make rows comparable.

- Friedman (1937, 1940): methods ranked within each block (1 = best, ties share the mean rank);
  the statistic is tie-corrected as in scipy.stats.friedmanchisquare, which reduces to Demsar's
  eq. (`friedman_from_avg_ranks`) when no block has ties.
- Iman & Davenport (1980): F_F = (N - 1) chi2 / (N (k - 1) - chi2), less conservative than chi2.
- Nemenyi (1963): two methods differ when their average ranks differ by at least
  CD = q_alpha sqrt(k (k + 1) / (6 N)), q_alpha the studentized range quantile / sqrt(2)
  (Demsar's Table 5a); the pairwise p-values come from the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats

from xai_bench.utils.errors import ConfigError

__all__ = [
    "FriedmanStats",
    "RankTest",
    "critical_difference",
    "friedman_from_avg_ranks",
    "friedman_nemenyi",
    "nemenyi_p_values",
    "nemenyi_q",
]


@dataclass(frozen=True)
class RankTest:
    """Friedman + Nemenyi over the blocks of one metric; methods in the caller's order."""

    methods: list[str]
    avg_ranks: np.ndarray      # rank 1 = best, ties averaged
    n_blocks: int              # blocks that entered (those with a NaN are dropped)
    chi2: float
    p_value: float             # Friedman
    iman_davenport: float
    p_iman_davenport: float
    cd: float                  # Nemenyi critical difference at `alpha`
    alpha: float
    nemenyi_p: np.ndarray      # (k, k) pairwise p-values, diagonal 1


class FriedmanStats(NamedTuple):
    chi2: float
    p_value: float
    iman_davenport: float
    p_iman_davenport: float


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"The significance level alpha must lie in (0, 1), got {alpha}.")
    return alpha


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Demsar's q_alpha for k methods: the studentized range quantile (infinite degrees of
    freedom) divided by sqrt(2), so that CD is in units of average rank."""
    if k < 2:
        raise ConfigError(f"The Nemenyi test compares at least 2 methods, got {k}.")
    alpha = _check_alpha(alpha)
    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / np.sqrt(2.0))


def _rank_se(k: int, n_blocks: int) -> float:
    """Standard error of a difference of two average ranks under the null hypothesis."""
    return float(np.sqrt(k * (k + 1) / (6.0 * n_blocks)))


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi's CD: average ranks closer than this are not significantly different."""
    if n_blocks < 1:
        raise ConfigError(f"The critical difference needs at least 1 block, got {n_blocks}.")
    return nemenyi_q(k, alpha) * _rank_se(k, n_blocks)


def _iman_davenport(chi2: float, k: int, n_blocks: int) -> tuple[float, float]:
    """F_F and its p-value from F(k - 1, (k - 1)(N - 1)); infinite F (p 0) when every block
    ranks the methods identically (chi2 reaches its maximum N (k - 1))."""
    room = n_blocks * (k - 1) - chi2
    if room <= 1e-12 * n_blocks * (k - 1):
        return float("inf"), 0.0
    f_stat = (n_blocks - 1) * chi2 / room
    return float(f_stat), float(stats.f.sf(f_stat, k - 1, (k - 1) * (n_blocks - 1)))


def friedman_from_avg_ranks(avg_ranks: np.ndarray, n_blocks: int) -> FriedmanStats:
    """Demsar's eq. for chi2_F (no tie correction) and Iman-Davenport's F_F from the average
    ranks alone, so that a published table (which prints only average ranks) can be checked."""
    ranks = np.asarray(avg_ranks, dtype=float)
    k = ranks.size
    if k < 2 or n_blocks < 2:
        raise ConfigError(f"The Friedman test needs at least 2 methods and 2 blocks, got {k} "
                          f"and {n_blocks}.")
    chi2 = 12.0 * n_blocks / (k * (k + 1)) * (float(np.sum(ranks**2)) - k * (k + 1) ** 2 / 4.0)
    chi2 = max(chi2, 0.0)  # rounded published ranks can push an all-equal case just below 0
    f_stat, p_f = _iman_davenport(chi2, k, n_blocks)
    return FriedmanStats(chi2, float(stats.chi2.sf(chi2, k - 1)), f_stat, p_f)


def _friedman_tie_corrected(ranks: np.ndarray) -> float:
    """chi2 of Friedman's test with the usual tie correction (Conover 1999, Practical
    Nonparametric Statistics; the value of scipy.stats.friedmanchisquare): a block of ties adds
    nothing to either term, so a constant block leaves chi2 unchanged. 0 when every block is
    constant."""
    n_blocks, k = ranks.shape
    centred = ranks.sum(axis=0) - n_blocks * (k + 1) / 2.0
    spread = float(np.sum(ranks**2)) - n_blocks * k * (k + 1) ** 2 / 4.0
    if spread <= 1e-12 * n_blocks * k * (k + 1) ** 2:
        return 0.0
    return float((k - 1) * np.sum(centred**2) / spread)


def nemenyi_p_values(avg_ranks: np.ndarray, n_blocks: int) -> np.ndarray:
    """(k, k) two-sided Nemenyi p-values: |R_i - R_j| / SE, times sqrt(2), against the
    studentized range with k means and infinite degrees of freedom; diagonal 1. A pair has
    p < alpha exactly when its rank difference exceeds critical_difference(k, N, alpha)."""
    ranks = np.asarray(avg_ranks, dtype=float)
    k = ranks.size
    p = np.ones((k, k))
    if k < 2:
        return p
    upper = np.triu_indices(k, 1)
    q = np.abs(ranks[upper[0]] - ranks[upper[1]]) / _rank_se(k, n_blocks) * np.sqrt(2.0)
    p[upper] = np.clip(stats.studentized_range.sf(q, k, np.inf), 0.0, 1.0)
    p[(upper[1], upper[0])] = p[upper]
    return p


def friedman_nemenyi(
    scores: np.ndarray,
    methods: list[str],
    *,
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> RankTest:
    """Friedman, Iman-Davenport and Nemenyi for `scores` (n_blocks, k): one row per block, one
    column per method (in `methods`' order). A block with a NaN is dropped, since the test
    needs every method on every block; a block where all methods tie is kept (it adds nothing
    to chi2 but counts in N, as in Demsar's example, whose mushroom row is all ties)."""
    alpha = _check_alpha(alpha)
    values = np.asarray(scores, dtype=float)
    names = [str(m) for m in methods]
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ConfigError(f"Friedman test: scores must be (blocks, methods) with one column per "
                          f"method ({len(names)}), got shape {values.shape}.")
    if len(set(names)) != len(names):
        raise ConfigError(f"Friedman test: method names must be distinct, got {names}.")
    complete = values[~np.isnan(values).any(axis=1)]
    n_blocks, k = complete.shape
    if n_blocks < 2 or k < 2:
        dropped = values.shape[0] - n_blocks
        raise ConfigError(f"The Friedman test needs at least 2 grid rows with a score for every "
                          f"method and at least 2 methods; got {n_blocks} rows ({dropped} "
                          f"dropped for a missing score) and {k} methods.")
    ranks = stats.rankdata(-complete if higher_is_better else complete, axis=1)
    avg = ranks.mean(axis=0)
    chi2 = _friedman_tie_corrected(ranks)
    f_stat, p_f = _iman_davenport(chi2, k, n_blocks)
    return RankTest(
        methods=names,
        avg_ranks=avg,
        n_blocks=n_blocks,
        chi2=chi2,
        p_value=float(stats.chi2.sf(chi2, k - 1)),
        iman_davenport=f_stat,
        p_iman_davenport=p_f,
        cd=critical_difference(k, n_blocks, alpha),
        alpha=alpha,
        nemenyi_p=nemenyi_p_values(avg, n_blocks),
    )
