"""Paired comparisons (xai_bench.stats.paired) against scipy, statsmodels and hand computations:
the Wilcoxon statistic and p (exact, sign-flip and normal paths), the sign test's exact and
mid-p values, the rank-biserial effect size, NaN pairs, the bootstrap intervals against a
brute-force resampling loop, seeds, Holm's correction and invalid input."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from xai_bench.stats.paired import (
    PairedTest,
    bootstrap_rows,
    compare_rows,
    hierarchical_bootstrap,
    holm,
    is_binary,
    paired_test,
    paired_test_seeds,
    rank_biserial,
)
from xai_bench.utils.errors import ConfigError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------- Wilcoxon


def test_wilcoxon_hand_case() -> None:
    """d = 1, 2, 3, -4, 5: T+ = 11, T- = 4; 7 of the 32 sign patterns give T- <= 4 (the empty
    set, {1}, {2}, {3}, {4}, {1, 2}, {1, 3}), so the exact two-sided p is 2 * 7 / 32."""
    res = paired_test(np.array([1.0, 2, 3, -4, 5]), np.zeros(5))
    assert res.test == "wilcoxon"
    assert res.statistic == 4.0
    assert res.p_value == pytest.approx(14 / 32, abs=1e-15)
    assert res.effect_size == pytest.approx((11 - 4) / 15)


@pytest.mark.parametrize(
    "case",
    ["exact", "large_normal", "ties_and_zeros_normal", "ties_small_flips", "zeros_small_flips"],
)
def test_wilcoxon_reproduces_scipy(case: str) -> None:
    rng = _rng(1)
    if case == "exact":  # n <= 50, no ties: the exact null distribution
        a, b = rng.normal(size=30), rng.normal(size=30) + 0.4
    elif case == "large_normal":  # n > 50: the normal approximation
        a, b = rng.normal(size=80) + 0.3, rng.normal(size=80)
    elif case == "ties_and_zeros_normal":  # tie-corrected normal approximation
        a, b = rng.integers(0, 4, 40) / 4, rng.integers(0, 4, 40) / 4
    elif case == "ties_small_flips":  # n <= 13 with ties: exhaustive sign flips
        a, b = np.array([1.0, 2, 2, 3, 5, 1, 4, 4]), np.array([0.0, 1, 0, 1, 2, 2, 1, 1])
    else:
        a, b = np.array([1.0, 2, 3, 3, 5, 1, 7]), np.array([1.0, 1, 0, 1, 2, 1, 1])
    res = paired_test(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = stats.wilcoxon(a, b)
    assert res.statistic == pytest.approx(float(ref.statistic), abs=1e-12)
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-12)
    assert res.n == a.size
    assert res.mean_diff == pytest.approx(float(np.mean(a - b)))


def test_rows_are_tested_as_scipy_tests_each_row_alone() -> None:
    """A batch mixing rows without ties, with ties and with zeros (scipy decides exact vs normal
    once per call) gives every row the p-value of its own call."""
    rng = _rng(2)
    rows = [rng.normal(size=20), rng.integers(-2, 3, 20) / 2.0, rng.normal(size=20),
            np.r_[0.0, rng.normal(size=19)], np.zeros(20)]
    d = np.stack(rows)
    stat, p, effect = compare_rows(d, binary=False)
    for i, row in enumerate(rows):
        if not np.any(row):
            assert (stat[i], p[i], effect[i]) == (0.0, 1.0, 0.0)
            continue
        ref = stats.wilcoxon(row)
        assert p[i] == pytest.approx(float(ref.pvalue), rel=1e-12)
        assert stat[i] == float(ref.statistic)
        assert effect[i] == pytest.approx(rank_biserial(row))


def test_every_difference_zero_gives_p_one_without_warning() -> None:
    x = np.array([0.2, 0.5, 0.7, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = paired_test(x, x.copy())
        sign = paired_test(np.array([1.0, 0, 1]), np.array([1.0, 0, 1]))
    assert (res.p_value, res.effect_size, res.mean_diff) == (1.0, 0.0, 0.0)
    assert (sign.test, sign.p_value, sign.effect_size) == ("sign", 1.0, 0.0)


# ---------------------------------------------------------------------------- sign test


def _hits(n10: int, n01: int, n11: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * n10 + [0] * n01 + [1] * n11 + [0] * n00, dtype=float)
    b = np.array([0] * n10 + [1] * n01 + [1] * n11 + [0] * n00, dtype=float)
    return a, b


def test_sign_test_mid_p_by_hand_and_exact_p_from_scipy() -> None:
    """8 discordant pairs for a, 2 for b: X ~ Bin(10, 1/2), P(X <= 2) = 56 / 1024, exact two-sided
    p = 112 / 1024 (scipy's binomtest), P(X = 2) = 45 / 1024, mid-p = 67 / 1024."""
    a, b = _hits(8, 2, 15, 5)
    res = paired_test(a, b)
    assert res.test == "sign"
    assert stats.binomtest(8, 10, 0.5).pvalue == pytest.approx(112 / 1024, rel=1e-12)
    assert res.p_value == pytest.approx(67 / 1024, rel=1e-12)
    assert res.p_value == pytest.approx(
        stats.binomtest(8, 10, 0.5).pvalue - stats.binom.pmf(2, 10, 0.5), rel=1e-12)
    assert res.statistic == 8.0
    assert res.effect_size == pytest.approx(0.6)
    assert res.mean_diff == pytest.approx(6 / 30)


@pytest.mark.parametrize("n10,n01", [(0, 7), (3, 3), (12, 4), (30, 18), (1, 0)])
def test_sign_test_is_binomtest_minus_the_observed_point_mass(n10: int, n01: int) -> None:
    a, b = _hits(n10, n01, 4, 6)
    res = paired_test(a, b)
    k, total = min(n10, n01), n10 + n01
    exact = stats.binomtest(n10, total, 0.5).pvalue
    expected = 1.0 if n10 == n01 else exact - stats.binom.pmf(k, total, 0.5)
    assert res.p_value == pytest.approx(expected, rel=1e-12)
    assert res.p_value <= exact


def test_binary_detection_and_override() -> None:
    assert is_binary(np.array([0.0, 1.0, np.nan]), np.array([1.0, 1.0]))
    assert not is_binary(np.array([0.0, 0.5]))
    assert not is_binary(np.array([np.nan]))
    a, b = _hits(6, 1, 3, 3)
    assert paired_test(a, b, binary=False).test == "wilcoxon"
    assert paired_test(a + 0.5, b, binary=True).test == "sign"


# ---------------------------------------------------------------------------- effect size


def test_rank_biserial_hand_cases() -> None:
    assert rank_biserial(np.array([0.1, 2.0, 3.0])) == 1.0
    assert rank_biserial(np.array([-0.1, -2.0])) == -1.0
    assert rank_biserial(np.array([1.0, -1.0, 2.0, -2.0])) == 0.0
    assert rank_biserial(np.zeros(4)) == 0.0
    # zeros dropped; |d| = 3, 1, 2, 4, 5 have ranks 3, 1, 2, 4, 5: T+ = 3 + 2 + 5, T- = 1 + 4
    assert rank_biserial(np.array([3.0, -1.0, 2.0, 0.0, -4.0, 5.0, np.nan])) == pytest.approx(1 / 3)
    # tie: |d| = 1, 1, 2, 3 rank 1.5, 1.5, 3, 4: T+ = 1.5 + 1.5 + 4 = 7, T- = 3 -> (7 - 3) / 10
    assert rank_biserial(np.array([1.0, 1.0, -2.0, 3.0])) == pytest.approx(0.4)


def test_effect_size_matches_the_wilcoxon_rank_sums() -> None:
    """r = (T+ - T-) / (T+ + T-) with T+ from scipy's one-sided statistic."""
    d = _rng(3).normal(size=25) + 0.3
    t_plus = stats.wilcoxon(d, alternative="greater").statistic
    total = 25 * 26 / 2
    assert rank_biserial(d) == pytest.approx((2 * t_plus - total) / total)


# ---------------------------------------------------------------------------- NaN, n == 0


def test_nan_pairs_are_dropped() -> None:
    rng = _rng(4)
    a, b = rng.normal(size=40), rng.normal(size=40)
    a_nan, b_nan = a.copy(), b.copy()
    a_nan[[3, 17]] = np.nan
    b_nan[[17, 30]] = np.nan
    keep = np.ones(40, bool)
    keep[[3, 17, 30]] = False
    assert paired_test(a_nan, b_nan) == paired_test(a[keep], b[keep])
    assert paired_test(a_nan, b_nan).n == 37


def test_no_pair_left() -> None:
    res = paired_test(np.array([np.nan, 1.0]), np.array([2.0, np.nan]))
    assert (res.n, res.p_value, res.statistic, res.effect_size) == (0, 1.0, 0.0, 0.0)
    assert math.isnan(res.mean_diff) and math.isnan(res.ci_low) and math.isnan(res.ci_high)


# ---------------------------------------------------------------------------- bootstrap


def _reference_interval(d: np.ndarray, level: float, samples: int, seed: int,
                        n_seeds_drawn: int = 1) -> tuple[float, float]:
    """Brute force: loop over resamples; images first, then seeds, from one generator; per drawn
    image the mean over its finite drawn seeds, then the mean over drawn images that have one;
    Hesterberg's expanded percentile levels."""
    d = np.atleast_2d(d)
    n_seeds, n = d.shape
    rng = np.random.default_rng(seed)
    images = rng.integers(n, size=(samples, n))
    seeds = rng.integers(n_seeds, size=(samples, n_seeds))
    means = []
    for img, sd in zip(images, seeds, strict=True):
        per_image = [d[sd, i][np.isfinite(d[sd, i])] for i in img]
        values = [v.mean() for v in per_image if v.size]
        means.append(np.mean(values) if values else np.nan)
    z = math.sqrt(n / (n - 1)) * stats.t.ppf((1 + level) / 2, n - 1)
    tail = stats.norm.sf(z)
    low, high = np.nanquantile(means, [tail, 1 - tail])
    return float(low), float(high)


def test_paired_bootstrap_matches_a_resampling_loop() -> None:
    rng = _rng(5)
    a, b = rng.normal(size=30), rng.normal(size=30)
    res = paired_test(a, b, samples=300, seed=7, level=0.9)
    low, high = _reference_interval(a - b, 0.9, 300, 7)
    assert (res.ci_low, res.ci_high) == pytest.approx((low, high), rel=1e-12)
    assert res.ci_low < res.mean_diff < res.ci_high


def test_hierarchical_bootstrap_matches_a_resampling_loop_with_missing_scores() -> None:
    rng = _rng(6)
    d = rng.normal(size=(3, 20)) + np.array([[0.3], [0.0], [-0.2]])
    d[0, 4] = d[2, 4] = d[1, 9] = np.nan
    got = hierarchical_bootstrap(list(d), samples=200, seed=3)
    assert got == pytest.approx(_reference_interval(d, 0.95, 200, 3), rel=1e-12)
    clean = rng.normal(size=(3, 20))
    assert hierarchical_bootstrap(list(clean), samples=200, seed=3) == pytest.approx(
        _reference_interval(clean, 0.95, 200, 3), rel=1e-12)


def test_interval_is_seeded_and_shrinks_with_n() -> None:
    rng = _rng(8)
    small, large = rng.normal(size=25) + 0.2, rng.normal(size=400) + 0.2
    zeros_s, zeros_l = np.zeros(25), np.zeros(400)
    first = paired_test(small, zeros_s, seed=11)
    assert first == paired_test(small, zeros_s, seed=11)
    assert (first.ci_low, first.ci_high) != (paired_test(small, zeros_s, seed=12).ci_low,
                                             paired_test(small, zeros_s, seed=12).ci_high)
    wide = first.ci_high - first.ci_low
    narrow = paired_test(large, zeros_l, seed=11)
    assert narrow.ci_low < narrow.mean_diff < narrow.ci_high
    ratio = (narrow.ci_high - narrow.ci_low) / wide
    assert 0.15 < ratio < 0.4  # 1 / sqrt(16) = 0.25, up to the two samples' spread


def test_interval_width_is_about_the_t_interval() -> None:
    """Expanded percentile: for 20 normal differences the interval is close to mean +- t s/sqrt(n)
    (the plain percentile interval is narrower by sqrt((n - 1) / n) * z / t: 9% here)."""
    d = _rng(9).normal(size=20)
    res = paired_test(d, np.zeros(20), samples=20000)
    half = stats.t.ppf(0.975, 19) * d.std(ddof=1) / math.sqrt(20)
    assert (res.ci_high - res.ci_low) / 2 == pytest.approx(half, rel=0.04)


def test_degenerate_intervals_are_nan() -> None:
    one = paired_test(np.array([1.0]), np.array([0.0]))
    none = paired_test(np.array([1.0, 2.0]), np.array([0.0, 1.0]), samples=0)
    assert math.isnan(one.ci_low) and math.isnan(none.ci_high)
    assert none.mean_diff == 1.0


# ---------------------------------------------------------------------------- seeds


def test_one_seed_is_exactly_paired_test() -> None:
    rng = _rng(10)
    a, b = rng.normal(size=35), rng.normal(size=35)
    a[2] = np.nan
    single = paired_test(a, b, samples=500, seed=4)
    seeds = paired_test_seeds([a], [b], samples=500, seed=4)
    assert seeds == single and seeds.n_seeds == 1
    keep = np.isfinite(a)
    assert hierarchical_bootstrap([(a - b)[keep]], samples=500, seed=4) == (single.ci_low,
                                                                            single.ci_high)
    hits_a, hits_b = _hits(9, 3, 10, 8)
    assert paired_test_seeds([hits_a], [hits_b]) == paired_test(hits_a, hits_b)


def test_identical_seeds_give_the_one_seed_interval_and_disagreeing_seeds_widen_it() -> None:
    """Images are drawn before seeds: copies of one seed resample exactly as the single seed.
    Seeds that disagree (offsets -0.4, 0, +0.4) add their spread to the interval."""
    d = _rng(11).normal(size=50)
    single = hierarchical_bootstrap([d], seed=2)
    assert hierarchical_bootstrap([d, d, d], seed=2) == pytest.approx(single, rel=1e-12)
    spread = hierarchical_bootstrap([d - 0.4, d, d + 0.4], seed=2)
    assert spread[1] - spread[0] > 1.3 * (single[1] - single[0])
    assert spread[0] < d.mean() < spread[1]


def test_seed_combination_averages_each_image_over_its_finite_seeds() -> None:
    rng = _rng(12)
    a = rng.normal(size=(3, 30)) + 0.5
    b = rng.normal(size=(3, 30))
    a[1, 5] = np.nan
    b[:, 7] = np.nan  # image 7 has no finite pair in any seed: dropped
    res = paired_test_seeds(list(a), list(b), samples=200)
    both = np.isfinite(a) & np.isfinite(b)
    per_image = np.nanmean(np.where(both, a - b, np.nan)[:, both.any(0)], axis=0)
    ref = stats.wilcoxon(per_image)
    assert (res.n, res.n_seeds, res.test) == (29, 3, "wilcoxon")
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-12)
    assert res.mean_diff == pytest.approx(per_image.mean())
    assert res.mean_a - res.mean_b == pytest.approx(res.mean_diff)
    assert res.effect_size == pytest.approx(rank_biserial(per_image))
    assert (res.ci_low, res.ci_high) == pytest.approx(hierarchical_bootstrap(
        list(np.where(both, a - b, np.nan)), samples=200), rel=1e-12)


def test_binary_seeds_use_the_sign_of_the_averaged_difference() -> None:
    a = np.array([[1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 1]], dtype=float)
    b = np.array([[0, 1, 1, 1, 0, 0], [0, 1, 0, 1, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=float)
    res = paired_test_seeds(list(a), list(b))
    mean_d = (a - b).mean(axis=0)  # 2/3, -1/3, -2/3, -1/3, 1/3, 1
    assert res.test == "sign" and res.statistic == 3.0
    assert res.effect_size == 0.0  # 3 images favour a, 3 favour b
    assert res.p_value == 1.0
    assert res.mean_diff == pytest.approx(mean_d.mean())


# ---------------------------------------------------------------------------- Holm


def test_holm_hand_case() -> None:
    """0.01 * 3 = 0.03, 0.03 * 2 = 0.06, max(0.06, 0.04 * 1) = 0.06."""
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]
    assert holm([]).shape == (0,)


def test_holm_matches_statsmodels() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = _rng(13)
    for m in (1, 2, 5, 12, 40):  # multipletests takes about 0.1 s a call: few calls
        for _ in range(3):
            p = rng.random(m) ** 3
            if m > 3:
                p[1] = p[2]  # a tie
            expected = multitest.multipletests(p, method="holm")[1]
            got = holm(p)
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
            order = np.argsort(p)
            assert np.all(np.diff(got[order]) >= 0) and np.all(got <= 1) and np.all(got >= p)


def test_holm_passes_nan_through_and_leaves_it_out_of_the_family() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.array([0.02, np.nan, 0.01, 0.3, np.nan])
    got = holm(p)
    assert np.isnan(got[[1, 4]]).all()
    expected = multitest.multipletests(p[[0, 2, 3]], method="holm")[1]
    np.testing.assert_allclose(got[[0, 2, 3]], expected, rtol=1e-12)


# ---------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    "call",
    [
        lambda: paired_test(np.zeros(3), np.zeros(4)),
        lambda: paired_test(np.zeros((2, 3)), np.zeros((2, 3))),
        lambda: paired_test(np.zeros(3), np.zeros(3), level=0.0),
        lambda: paired_test(np.zeros(3), np.zeros(3), level=1.0),
        lambda: paired_test(np.zeros(3), np.zeros(3), level=95),
        lambda: paired_test(np.zeros(3), np.zeros(3), samples=-1),
        lambda: paired_test(np.zeros(3), np.zeros(3), samples=10.5),
        lambda: paired_test_seeds([], []),
        lambda: paired_test_seeds([np.zeros(3)], [np.zeros(3), np.zeros(3)]),
        lambda: paired_test_seeds([np.zeros(3), np.zeros(4)], [np.zeros(3), np.zeros(4)]),
        lambda: hierarchical_bootstrap([np.zeros(3), np.zeros(2)]),
        lambda: hierarchical_bootstrap([np.zeros(3)], level=1.5),
        lambda: bootstrap_rows(np.zeros((2, 3))),
        lambda: compare_rows(np.array([[np.nan, 1.0]]), binary=False),
        lambda: holm([0.2, 1.5]),
        lambda: holm([-0.1]),
    ],
)
def test_invalid_input_is_a_config_error(call) -> None:
    with pytest.raises(ConfigError):
        call()


def test_result_is_a_frozen_record() -> None:
    res = paired_test(np.arange(5.0), np.zeros(5))
    assert isinstance(res, PairedTest)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.n = 3  # type: ignore[misc]
