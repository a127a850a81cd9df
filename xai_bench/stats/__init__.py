"""Statistics for the report: paired tests between methods on the same images, rankings across
the study grid, agreement between metrics, rank correlation across models (numpy / scipy only;
docs/statistics.md, docs/known-truth.md)."""

from xai_bench.stats.agreement import block_tau, ranking_agreement
from xai_bench.stats.correlation import (
    SpearmanInterval,
    spearman_interval,
    stratified_spearman_interval,
)
from xai_bench.stats.paired import (
    PairedTest,
    hierarchical_bootstrap,
    holm,
    is_binary,
    paired_test,
    paired_test_seeds,
    rank_biserial,
)
from xai_bench.stats.ranking import (
    FriedmanStats,
    RankTest,
    critical_difference,
    friedman_from_avg_ranks,
    friedman_nemenyi,
    nemenyi_p_values,
    nemenyi_q,
)

__all__ = [
    "FriedmanStats",
    "PairedTest",
    "RankTest",
    "SpearmanInterval",
    "block_tau",
    "critical_difference",
    "friedman_from_avg_ranks",
    "friedman_nemenyi",
    "hierarchical_bootstrap",
    "holm",
    "is_binary",
    "nemenyi_p_values",
    "nemenyi_q",
    "paired_test",
    "paired_test_seeds",
    "rank_biserial",
    "ranking_agreement",
    "spearman_interval",
    "stratified_spearman_interval",
]
