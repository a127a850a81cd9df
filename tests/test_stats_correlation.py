"""Spearman's rho with its bootstrap interval and permutation p (xai_bench.stats.correlation):
rho against scipy (ties too), the exact p against a hand enumeration, the Monte Carlo p near the
exact one, the interval against a brute-force loop, NaN handling, too few or constant values,
and the calibration of the test under independence."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from xai_bench.stats import spearman_interval, stratified_spearman_interval
from xai_bench.stats.correlation import EXACT_MAX_N
from xai_bench.utils.errors import ConfigError


@pytest.mark.parametrize("case", ["continuous", "ties", "negative", "large"])
def test_rho_is_scipys_spearman(case: str) -> None:
    rng = np.random.default_rng(3)
    if case == "continuous":
        x = rng.normal(size=7)
        y = x + rng.normal(size=7)
    elif case == "ties":  # average ranks for ties, in both variables
        x = np.array([0.0, 0.2, 0.5, 0.8, 1.0, 1.0])
        y = np.array([0.05, 0.05, 0.3, 0.3, 0.9, 0.7])
    elif case == "negative":
        x = np.arange(10.0)
        y = -x + rng.normal(scale=3, size=10)
    else:
        x = rng.normal(size=40)
        y = 0.3 * x + rng.normal(size=40)
    result = spearman_interval(x, y, samples=200)
    assert result.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert result.n == x.size and result.defined


def _hand_p(x: np.ndarray, y: np.ndarray) -> float:
    """Every permutation of y against x, rho by scipy: the share at least the observed rho."""
    observed = stats.spearmanr(x, y).statistic
    null = [stats.spearmanr(x, y[list(p)]).statistic for p in itertools.permutations(range(x.size))]
    return float(np.mean(np.array(null) >= observed - 1e-12))


def _null_rhos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rho of every permutation of y against x, as np.corrcoef of scipy's average ranks."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    perms = np.array(list(itertools.permutations(range(x.size))))
    shuffled = ry[perms] - ry.mean()
    centred = rx - rx.mean()
    return shuffled @ centred / (np.linalg.norm(centred) * np.linalg.norm(shuffled, axis=1))


@pytest.mark.parametrize("y", [
    [0.1, 0.3, 0.2, 0.6, 0.5],            # no ties
    [0.05, 0.05, 0.3, 0.3, 0.9, 0.7],     # ties in y
    [0.4, 0.1, 0.3, 0.2, 0.6, 0.5, 0.0],  # a weak trend
])
def test_exact_p_is_the_enumeration(y: list[float]) -> None:
    y_arr = np.array(y)
    x = np.array([0.0, 0.2, 0.5, 0.8, 1.0, 1.0, 0.9][:y_arr.size])
    result = spearman_interval(x, y_arr, samples=0)
    assert result.exact
    assert result.p_value == pytest.approx(_hand_p(x, y_arr), abs=1e-12)


def test_perfect_order_has_the_smallest_exact_p() -> None:
    """n = 5, no ties: only the identity permutation reaches rho 1, p = 1 / 5!."""
    result = spearman_interval(np.arange(5.0), np.arange(5.0) * 2, samples=0)
    assert result.rho == pytest.approx(1.0)
    assert result.p_value == pytest.approx(1 / 120)


def test_monte_carlo_p_is_near_the_exact_p_and_never_zero() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=9)
    y = 0.5 * x + rng.normal(size=9)
    assert x.size > EXACT_MAX_N
    mc = spearman_interval(x, y, samples=0, seed=1)
    assert not mc.exact
    exact = float(np.mean(_null_rhos(x, y) >= stats.spearmanr(x, y).statistic - 1e-12))
    assert mc.p_value == pytest.approx(exact, abs=0.015)  # 3 sd of 10,000 draws
    strong = spearman_interval(np.arange(30.0), np.arange(30.0), samples=0)
    assert strong.p_value == pytest.approx(1 / 10_001)  # the +1 correction
    assert spearman_interval(x, y, samples=0, seed=1).p_value == mc.p_value  # seeded


def test_interval_is_a_percentile_bootstrap_over_pairs() -> None:
    """Against a plain loop over resamples drawn from the same stream: same draws, same
    skipped resamples, same interval."""
    x = np.array([0.0, 0.2, 0.5, 0.8, 1.0, 1.0])
    y = np.array([0.05, 0.1, 0.35, 0.6, 0.8, 0.9])
    result = spearman_interval(x, y, level=0.9, samples=500, seed=7)
    boot = np.random.default_rng(np.random.SeedSequence(7).spawn(2)[0])
    idx = boot.integers(x.size, size=(500, x.size))
    rhos = []
    for row in idx:
        if np.ptp(x[row]) == 0 or np.ptp(y[row]) == 0:
            continue
        rhos.append(stats.spearmanr(x[row], y[row]).statistic)
    assert result.skipped == 500 - len(rhos) > 0
    low, high = np.quantile(rhos, [0.05, 0.95])
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high), abs=1e-9)
    assert result.ci_low <= result.rho <= result.ci_high
    assert result.above_zero


def test_nan_pairs_are_dropped() -> None:
    x = np.array([0.0, np.nan, 0.5, 0.8, 1.0, 0.3])
    y = np.array([0.1, 0.4, np.nan, 0.7, 0.9, 0.2])
    result = spearman_interval(x, y, samples=100)
    keep = np.isfinite(x) & np.isfinite(y)
    assert result.n == 4
    assert result.rho == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic)


@pytest.mark.parametrize(("x", "y", "reason"), [
    ([0.1, 0.5], [0.2, 0.4], "at least 3 pairs (got 2)"),
    ([0.1, 0.5, np.nan, 0.3], [0.2, np.nan, 0.1, 0.4], "at least 3 pairs (got 2)"),
    ([0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], "x is the same for every pair"),
    ([0.1, 0.2, 0.3, 0.4], [0.05, 0.05, 0.05, 0.05], "y is the same for every pair"),
])
def test_undefined_is_nan_with_a_reason(x: list[float], y: list[float], reason: str) -> None:
    result = spearman_interval(np.array(x), np.array(y))
    assert not result.defined and reason in str(result.reason)
    assert all(math.isnan(v) for v in (result.rho, result.ci_low, result.ci_high, result.p_value))
    assert not result.above_zero


def test_invalid_input_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="paired values"):
        spearman_interval(np.arange(3.0), np.arange(4.0))
    with pytest.raises(ConfigError, match="level"):
        spearman_interval(np.arange(3.0), np.arange(3.0), level=1.5)
    with pytest.raises(ConfigError, match="samples"):
        spearman_interval(np.arange(3.0), np.arange(3.0), samples=-1)


@pytest.mark.parametrize("n", [7, 12])
def test_permutation_test_holds_its_level_under_independence(n: int) -> None:
    """Independent x and y: the one-sided test at 0.05 rejects at its size: 5% by Monte Carlo
    (n = 12); exactly (n = 7) the largest attainable p below 0.05 (the null is discrete:
    0.044). 800 data sets: 3 sd of the rate is about 0.023."""
    size = 0.05
    if n <= EXACT_MAX_N:
        null = np.sort(_null_rhos(np.arange(float(n)), np.arange(float(n))))
        attainable = 1.0 - np.searchsorted(null, np.unique(null) - 1e-12) / null.size
        size = float(attainable[attainable < 0.05].max())
    rng = np.random.default_rng(11 + n)
    rejected = [spearman_interval(rng.normal(size=n), rng.normal(size=n), samples=0,
                                  seed=i).p_value < 0.05 for i in range(800)]
    assert float(np.mean(rejected)) == pytest.approx(size, abs=3 * math.sqrt(size * 0.95 / 800))


# --- stratified: within model kinds ---------------------------------------------------------


def test_stratified_ignores_an_offset_between_strata() -> None:
    """Two kinds whose y sits at different levels: pooled, the offset reads as noise; within
    each kind the order is perfect, so the stratified rho is 1 (weighted mean of 1 and 1)."""
    x = np.array([0.0, 0.3, 0.6, 1.0, 0.0, 0.3, 0.6, 1.0])
    y = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])  # the second kind 0.5 higher
    strata = np.array(["vit"] * 4 + ["cnn"] * 4)
    pooled = spearman_interval(x, y, samples=200)
    result = stratified_spearman_interval(x, y, strata, samples=200)
    assert pooled.rho < 0.5
    assert result.rho == pytest.approx(1.0) and result.n == 8 and result.above_zero
    # exact: 4! x 4! = 576 combinations, one of which reaches rho = 1
    assert result.exact and result.p_value == pytest.approx(1 / 576)


def test_stratified_rho_weights_the_strata_by_their_pairs_and_p_is_enumerated() -> None:
    rng = np.random.default_rng(5)
    xa, ya, xb, yb = rng.normal(size=5), rng.normal(size=5), rng.normal(size=3), rng.normal(size=3)
    rho_a = stats.spearmanr(xa, ya).statistic
    rho_b = stats.spearmanr(xb, yb).statistic
    result = stratified_spearman_interval(np.r_[xa, xb], np.r_[ya, yb],
                                          np.array([0] * 5 + [1] * 3), samples=100)
    assert result.rho == pytest.approx((5 * rho_a + 3 * rho_b) / 8, abs=1e-12)
    # every combination of a permutation within a and one within b
    null = [(5 * stats.spearmanr(xa, ya[list(pa)]).statistic
             + 3 * stats.spearmanr(xb, yb[list(pb)]).statistic) / 8
            for pa in itertools.permutations(range(5)) for pb in itertools.permutations(range(3))]
    assert result.exact
    assert result.p_value == pytest.approx(np.mean(np.array(null) >= result.rho - 1e-12))


def test_stratified_falls_back_to_one_stratum_or_the_pooled_pairs() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=7), rng.normal(size=7)
    strata = np.array(["a"] * 5 + ["b"] * 2)  # b: too few for a rho of its own
    alone = stratified_spearman_interval(x, y, strata, samples=100)
    assert alone == spearman_interval(x[:5], y[:5], samples=100)
    tiny = stratified_spearman_interval(x[:4], y[:4], np.array(["a", "a", "b", "b"]),
                                        samples=100)
    assert tiny == spearman_interval(x[:4], y[:4], samples=100)  # none usable: pooled


def test_stratified_monte_carlo_p_is_calibrated() -> None:
    """Above 8! combinations of within-strata permutations (here 6! x 6! = 518,400) the p is
    Monte Carlo: under independence it rejects at most about 5% (120 draws: <= 12% allows for
    their binomial spread)."""
    rng = np.random.default_rng(7)
    strata = np.array([0] * 6 + [1] * 6)
    rejections = []
    for _ in range(120):
        x, y = rng.normal(size=12), rng.normal(size=12)
        result = stratified_spearman_interval(x, y, strata, samples=0)
        assert not result.exact
        rejections.append(result.p_value < 0.05)
    assert 0.0 <= np.mean(rejections) <= 0.12
