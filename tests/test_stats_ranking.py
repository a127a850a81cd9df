"""Rankings across the grid: Friedman / Iman-Davenport / Nemenyi against Demsar (2006, JMLR
7:1-30)'s worked example and tables, scipy and scikit-posthocs; Kendall tau agreement between
metrics; the critical-difference diagram (groups, PNG, TikZ)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import scikit_posthocs
from scipy import stats

from xai_bench.report.cd_diagram import cd_diagram_png, cd_diagram_tikz, cd_groups
from xai_bench.stats.agreement import block_tau, ranking_agreement
from xai_bench.stats.ranking import (
    critical_difference,
    friedman_from_avg_ranks,
    friedman_nemenyi,
    nemenyi_p_values,
    nemenyi_q,
)
from xai_bench.utils.errors import ConfigError

# Demsar 2006, Table 6: AUC of four C4.5 variants on 14 UCI data sets, with the ranks the paper
# prints in parentheses. At the printed 3 decimals, voting's C4.5+cf and C4.5+m+cf tie (0.975);
# the paper ranks them 2 and 3 (from unrounded AUCs: the text lists ties only in iris, lung
# cancer, mushroom and primary tumor), so the tie is broken here in the printed direction.
C45 = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]
TABLE6_AUC = np.array([
    [0.763, 0.768, 0.771, 0.798],   # adult (sample)
    [0.599, 0.591, 0.590, 0.569],   # breast cancer
    [0.954, 0.971, 0.968, 0.967],   # breast cancer wisconsin
    [0.628, 0.661, 0.654, 0.657],   # cmc
    [0.882, 0.888, 0.886, 0.898],   # ionosphere
    [0.936, 0.931, 0.916, 0.931],   # iris
    [0.661, 0.668, 0.609, 0.685],   # liver disorders
    [0.583, 0.583, 0.563, 0.625],   # lung cancer
    [0.775, 0.838, 0.866, 0.875],   # lymphography
    [1.000, 1.000, 1.000, 1.000],   # mushroom
    [0.940, 0.962, 0.965, 0.962],   # primary tumor
    [0.619, 0.666, 0.614, 0.669],   # rheum
    [0.972, 0.981, 0.9751, 0.9749],  # voting (0.975, 0.975 printed; ranked 2, 3)
    [0.957, 0.978, 0.946, 0.970],   # wine
])
TABLE6_RANKS = np.array([
    [4, 3, 2, 1], [1, 2, 3, 4], [4, 1, 2, 3], [4, 1, 3, 2], [4, 2, 3, 1],
    [1, 2.5, 4, 2.5], [3, 2, 4, 1], [2.5, 2.5, 4, 1], [4, 3, 2, 1], [2.5, 2.5, 2.5, 2.5],
    [4, 2.5, 1, 2.5], [3, 2, 4, 1], [4, 1, 2, 3], [3, 1, 4, 2],
])
PUBLISHED_AVG_RANKS = [3.143, 2.000, 2.893, 1.964]
# Demsar 2006, Table 5(a): q_alpha of the two-tailed Nemenyi test for k = 2..10
TABLE5A = {
    0.05: [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164],
    0.10: [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920],
}


# ---------------------------------------------------------------------------------------------
# Friedman / Iman-Davenport / Nemenyi


@pytest.mark.parametrize("alpha", sorted(TABLE5A))
def test_q_alpha_reproduces_demsar_table_5a(alpha: float) -> None:
    ours = [nemenyi_q(k, alpha) for k in range(2, 11)]
    # the table mixes rounding and truncation (2.343 for 2.3437, 2.949 for 2.9483)
    assert ours == pytest.approx(TABLE5A[alpha], abs=1e-3)


def test_published_statistics_from_the_published_average_ranks() -> None:
    """Section 3.2.2: chi2_F = 9.28, F_F = 3.69, CD = 1.25 (alpha 0.05) and 1.12 (alpha 0.10)."""
    res = friedman_from_avg_ranks(np.array(PUBLISHED_AVG_RANKS), 14)
    assert round(res.chi2, 2) == 9.28
    assert round(res.iman_davenport, 2) == 3.69
    # "The critical value of F(3, 39) for alpha = 0.05 is 2.85, so we reject": same dof here
    assert round(float(stats.f.ppf(0.95, 3, 39)), 2) == 2.85
    assert res.p_iman_davenport < 0.05
    assert round(critical_difference(4, 14, 0.05), 2) == 1.25
    assert round(critical_difference(4, 14, 0.10), 2) == 1.12
    assert round(nemenyi_q(4, 0.05), 3) == 2.569 and round(nemenyi_q(4, 0.10), 3) == 2.291


def test_demsar_table_6_from_the_auc_values() -> None:
    np.testing.assert_array_equal(stats.rankdata(-TABLE6_AUC, axis=1), TABLE6_RANKS)
    res = friedman_nemenyi(TABLE6_AUC, C45, alpha=0.05)
    assert res.n_blocks == 14 and res.methods == C45
    np.testing.assert_allclose(res.avg_ranks, PUBLISHED_AVG_RANKS, atol=5e-4)
    # Demsar's eq. (no tie correction) on the data's ranks gives the published 9.28 / 3.69;
    # friedman_nemenyi's chi2 is the tie-corrected one, scipy's value (mushroom, iris, ... tie)
    untied = friedman_from_avg_ranks(res.avg_ranks, res.n_blocks)
    assert round(untied.chi2, 2) == 9.28 and round(untied.iman_davenport, 2) == 3.69
    scipy_res = stats.friedmanchisquare(*TABLE6_AUC.T)
    assert res.chi2 == pytest.approx(scipy_res.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(scipy_res.pvalue, rel=1e-9)
    assert res.chi2 > untied.chi2
    assert round(res.cd, 2) == 1.25
    # "even the difference between the best and the worst ... is smaller than [CD]"
    assert (res.nemenyi_p >= 0.05).all()
    assert cd_groups(res.avg_ranks, res.cd) == [(0, 3)]


def test_demsar_table_6_at_alpha_010_finds_the_two_groups() -> None:
    """'the performance of pure C4.5 is significantly worse than that of C4.5+m and C4.5+m+cf.
    We cannot tell which group C4.5+cf belongs to.'"""
    res = friedman_nemenyi(TABLE6_AUC, C45, alpha=0.10)
    assert round(res.cd, 2) == 1.12
    significant = {(C45[i], C45[j]) for i in range(4) for j in range(i + 1, 4)
                   if res.nemenyi_p[i, j] < 0.10}
    assert significant == {("C4.5", "C4.5+m"), ("C4.5", "C4.5+m+cf")}
    # sorted: C4.5+m+cf, C4.5+m, C4.5+cf, C4.5 -> bars {m+cf, m, cf} and {cf, C4.5} (Fig. 1a)
    assert cd_groups(res.avg_ranks, res.cd) == [(0, 2), (2, 3)]


@pytest.mark.parametrize("k", [3, 4, 6])
def test_chi2_and_p_equal_scipy_friedmanchisquare(k: int) -> None:
    rng = np.random.default_rng(k)
    for scores in (rng.normal(size=(12, k)), rng.integers(0, 3, size=(9, k)).astype(float)):
        res = friedman_nemenyi(scores, [f"m{i}" for i in range(k)])
        ref = stats.friedmanchisquare(*scores.T)
        assert res.chi2 == pytest.approx(ref.statistic, rel=1e-10)
        assert res.p_value == pytest.approx(ref.pvalue, rel=1e-8)


def test_nemenyi_p_values_equal_scikit_posthocs() -> None:
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(10, 5)) + np.array([0.0, 0.2, 0.8, 1.2, 1.3])
    # scikit-posthocs takes blocks as rows and methods as columns (like us) and ranks
    # ascending; the p-values depend only on |R_i - R_j|, so either direction matches
    ref = scikit_posthocs.posthoc_nemenyi_friedman(scores).to_numpy()
    assert ref.shape == (5, 5)
    for higher in (True, False):
        res = friedman_nemenyi(scores, list("abcde"), higher_is_better=higher)
        np.testing.assert_allclose(res.nemenyi_p, ref, rtol=1e-9, atol=1e-12)
    assert (ref < 0.05).any() and (ref > 0.5).any()  # the case separates some pairs, not all


def test_a_pair_is_significant_exactly_when_its_ranks_differ_by_more_than_cd() -> None:
    rng = np.random.default_rng(11)
    scores = rng.normal(size=(20, 6)) + np.linspace(0.0, 1.5, 6)
    res = friedman_nemenyi(scores, [str(i) for i in range(6)], alpha=0.05)
    diff = np.abs(res.avg_ranks[:, None] - res.avg_ranks[None, :])
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_array_equal((res.nemenyi_p < 0.05)[off], (diff > res.cd)[off])
    assert (res.nemenyi_p < 0.05).any() and not (res.nemenyi_p < 0.05)[off].all()
    np.testing.assert_array_equal(np.diag(res.nemenyi_p), 1.0)
    np.testing.assert_array_equal(res.nemenyi_p, res.nemenyi_p.T)


def test_direction_rank_one_is_best() -> None:
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.6, 0.2], [0.7, 0.4, 0.3]])
    best_high = friedman_nemenyi(scores, ["a", "b", "c"])
    best_low = friedman_nemenyi(scores, ["a", "b", "c"], higher_is_better=False)
    np.testing.assert_array_equal(best_high.avg_ranks, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(best_low.avg_ranks, [3.0, 2.0, 1.0])
    # every block agrees: chi2 is N (k - 1), the Iman-Davenport F is infinite
    assert best_high.chi2 == pytest.approx(6.0)
    assert best_high.iman_davenport == np.inf and best_high.p_iman_davenport == 0.0


def test_two_methods_reduce_to_the_sign_test_statistic() -> None:
    # 8 blocks won by x, 2 by y, 3 tied: chi2 = (8 - 2)^2 / (8 + 2) with the tie correction
    scores = np.array([[1.0, 0.0]] * 8 + [[0.0, 1.0]] * 2 + [[1.0, 1.0]] * 3)
    res = friedman_nemenyi(scores, ["x", "y"])
    assert res.chi2 == pytest.approx(3.6) and res.n_blocks == 13
    assert res.nemenyi_p.shape == (2, 2)


def test_blocks_with_nan_are_dropped_constant_blocks_kept() -> None:
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(8, 4))
    base = friedman_nemenyi(scores, list("abcd"))
    with_nan = np.vstack([scores, [[0.1, np.nan, 0.3, 0.2]]])
    dropped = friedman_nemenyi(with_nan, list("abcd"))
    assert dropped.n_blocks == 8 and dropped.chi2 == pytest.approx(base.chi2)
    with_tie = np.vstack([scores, [[0.5, 0.5, 0.5, 0.5]]])
    kept = friedman_nemenyi(with_tie, list("abcd"))
    assert kept.n_blocks == 9
    assert kept.chi2 == pytest.approx(base.chi2)  # a block of ties adds nothing to chi2 ...
    assert kept.cd < base.cd  # ... but counts in N
    flat = friedman_nemenyi(np.ones((4, 3)), list("abc"))
    assert flat.chi2 == 0.0 and flat.p_value == 1.0 and flat.p_iman_davenport == 1.0
    assert (flat.nemenyi_p == 1.0).all()


def test_nemenyi_p_values_from_average_ranks_alone() -> None:
    p = nemenyi_p_values(np.array(PUBLISHED_AVG_RANKS), 14)
    assert p[0, 3] < 0.10 < p[0, 2]  # C4.5 vs C4.5+m+cf; C4.5 vs C4.5+cf


@pytest.mark.parametrize(
    "scores, methods, message",
    [
        (np.ones((1, 3)), list("abc"), "at least 2 grid rows"),
        (np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]]), list("abc"), "1 dropped"),
        (np.ones((4, 1)), ["a"], "at least 2 methods"),
        (np.ones((4, 3)), list("ab"), "one column per method"),
        (np.ones(4), list("abcd"), "one column per method"),
        (np.ones((4, 2)), ["a", "a"], "distinct"),
    ],
)
def test_unusable_input_is_a_config_error(scores: np.ndarray, methods: list[str],
                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        friedman_nemenyi(scores, methods)


def test_alpha_outside_the_unit_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        friedman_nemenyi(np.ones((3, 3)), list("abc"), alpha=1.5)


# ---------------------------------------------------------------------------------------------
# Kendall tau agreement between metrics


def test_agreement_identical_reversed_and_direction() -> None:
    rng = np.random.default_rng(2)
    s = rng.normal(size=(6, 5))
    metrics, tau, n = ranking_agreement(
        {"aopc": s, "same": s * 3 + 1, "reversed": -s, "loss": s},
        {"aopc": True, "same": True, "reversed": True, "loss": False})
    assert metrics == ["aopc", "same", "reversed", "loss"]
    assert tau[0, 1] == pytest.approx(1.0)
    assert tau[0, 2] == pytest.approx(-1.0) and tau[0, 3] == pytest.approx(-1.0)
    assert tau[2, 3] == pytest.approx(1.0)  # both favour small raw scores
    np.testing.assert_array_equal(np.diag(tau), 1.0)
    np.testing.assert_array_equal(tau, tau.T)
    assert (n == 6).all()


def test_agreement_hand_case() -> None:
    # block 0: one swapped pair of 4 -> (5 - 1) / 6; block 1: identical -> 1;
    # block 2: the first metric ties two methods -> tau-b = 5 / sqrt(5 * 6);
    # block 3: the second metric ranks nothing (all tied) -> left out
    a = np.array([[1, 2, 3, 4], [4, 3, 2, 1], [1, 1, 2, 3], [1, 2, 3, 4]], dtype=float)
    b = np.array([[1, 3, 2, 4], [4, 3, 2, 1], [1, 2, 3, 4], [7, 7, 7, 7]], dtype=float)
    expected = np.mean([4 / 6, 1.0, 5 / np.sqrt(30)])
    _, tau, n = ranking_agreement({"a": a, "b": b}, {"a": True, "b": True})
    assert tau[0, 1] == pytest.approx(expected)
    assert block_tau(a[2], b[2]) == pytest.approx(stats.kendalltau(a[2], b[2]).statistic)
    assert n[0, 1] == 3 and n[0, 0] == 4 and n[1, 1] == 3


def test_agreement_missing_methods_and_undefined() -> None:
    a = np.array([[1.0, 2.0, np.nan, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    _, tau, n = ranking_agreement({"a": a, "b": b}, {"a": True, "b": True})
    assert tau[0, 1] == pytest.approx(1.0) and n[0, 1] == 1  # the NaN method left out
    _, tau, n = ranking_agreement({"a": a[1:], "b": b[1:]}, {"a": True, "b": True})
    assert np.isnan(tau[0, 1]) and np.isnan(tau[0, 0]) and n[0, 1] == 0
    assert tau[1, 1] == 1.0


def test_agreement_rejects_mismatched_input() -> None:
    with pytest.raises(ConfigError, match="one shape"):
        ranking_agreement({"a": np.ones((3, 4)), "b": np.ones((3, 5))}, {"a": True, "b": True})
    with pytest.raises(ConfigError, match="direction"):
        ranking_agreement({"a": np.ones((3, 4))}, {})


# ---------------------------------------------------------------------------------------------
# The critical-difference diagram


@pytest.mark.parametrize(
    "ranks, cd, groups",
    [
        (PUBLISHED_AVG_RANKS, 1.25, [(0, 3)]),
        (PUBLISHED_AVG_RANKS, 1.12, [(0, 2), (2, 3)]),
        (PUBLISHED_AVG_RANKS, 0.2, [(0, 1)]),
        ([1.0, 2.0, 3.0], 0.5, []),
        ([1.0, 2.0], 1.0, []),  # a difference equal to CD is significant: no bar
        ([2.0, 2.0, 2.0], 0.1, [(0, 2)]),
        ([1.0, 1.5, 2.0, 2.5], 0.8, [(0, 1), (1, 2), (2, 3)]),
        ([4.0, 1.0, 1.2, 3.9], 0.5, [(0, 1), (2, 3)]),
    ],
)
def test_cd_groups_hand_cases(ranks: list[float], cd: float,
                              groups: list[tuple[int, int]]) -> None:
    assert cd_groups(np.array(ranks), cd) == groups


def _result(n_methods: int, names: list[str] | None = None):
    rng = np.random.default_rng(n_methods)
    scores = rng.normal(size=(16, n_methods)) + np.linspace(0.0, 2.0, n_methods)
    return friedman_nemenyi(scores, names or [f"m{i}" for i in range(n_methods)])


@pytest.mark.parametrize("n_methods", [2, 4, 12])
def test_cd_diagram_png_is_a_sane_png(tmp_path: Path, n_methods: int) -> None:
    names = [f"method_{i}_name" for i in range(n_methods)]
    path = cd_diagram_png(_result(n_methods, names), tmp_path / "cd" / "aopc.png", "aopc")
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 300 <= width <= 2000 and 100 <= height <= 1500
    assert [p.name for p in path.parent.iterdir()] == ["aopc.png"]  # no temporary left behind


def test_cd_diagram_png_of_the_paper_example(tmp_path: Path) -> None:
    res = friedman_nemenyi(TABLE6_AUC, C45, alpha=0.10)
    path = cd_diagram_png(res, tmp_path / "demsar.png", "Demsar 2006, Table 6")
    assert path.stat().st_size > 2000


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_cd_diagram_tikz() -> None:
    names = ["grad_cam", "attention", "chefer_lrp", "random_100%", "x&y", "a_b_c"]
    res = _result(len(names), names)
    tikz = cd_diagram_tikz(res, "pointing_game")
    lines = tikz.strip().splitlines()
    assert lines[0].startswith(r"\begin{tikzpicture}") and lines[-1] == r"\end{tikzpicture}"
    assert _balanced(tikz)
    assert r"\usetikzlibrary" not in tikz and r"\usepackage" not in tikz
    assert re.search(r"(?<!\\)[_%&]", tikz) is None  # every special character escaped
    assert r"pointing\_game: Friedman p" in tikz
    for name in ["grad\\_cam", "attention", "chefer\\_lrp", "random\\_100\\%", "x\\&y",
                 "a\\_b\\_c"]:
        nodes = [line for line in lines if "node" in line and f"{{{name} (" in line]
        assert len(nodes) == 1, name
    method_nodes = [line for line in lines if re.search(r"\{[^{}]* \(\d+\.\d\d\)\};$", line)]
    assert len(method_nodes) == len(names)
    bars = [line for line in lines if "line width=2pt" in line]
    assert len(bars) == len(cd_groups(res.avg_ranks, res.cd))


def test_cd_diagram_tikz_clips_a_cd_wider_than_the_axis() -> None:
    res = friedman_nemenyi(np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]]), list("abc"))
    assert 1.0 + res.cd > 3
    assert "wider than the axis" in cd_diagram_tikz(res, "t")


def test_cd_diagram_tikz_puts_less_than_in_math_mode() -> None:
    """LaTeX's text mode prints < and > as inverted marks (OT1 encoding): the title's
    "p < 0.001" and a name with < or > are written $<$ / $>$."""
    rng = np.random.default_rng(0)
    scores = np.array([4.0, 3.0, 2.0, 1.0]) + rng.normal(0, 0.1, (30, 4))
    res = friedman_nemenyi(scores, ["a<b", "c>d", "e", "f"])
    assert res.p_value < 0.001
    tikz = cd_diagram_tikz(res, "iou > 0")
    assert r"iou $>$ 0: Friedman p $<$ 0.001" in tikz
    assert r"{a$<$b (" in tikz and r"{c$>$d (" in tikz
    assert re.search(r"(?<!\$)[<>]|[<>](?!\$)", tikz) is None
    assert _balanced(tikz)
