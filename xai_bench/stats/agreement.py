"""Do two metrics agree on which method is better? Kendall's tau between their rankings.

Kendall (1938), "A new measure of rank correlation", Biometrika 30:81-93; with ties the tau-b
form of Kendall (1945), "The treatment of ties in ranking problems", Biometrika 33:239-251
(scipy.stats.kendalltau's default). Per block (a (dataset, init) grid row), the methods' scores
under metric A are compared with their scores under metric B, each turned so that larger is
better; the matrix holds the mean tau over the blocks where it is defined. Pooling all blocks
into one ranking instead would mix datasets whose scores live on different scales.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from xai_bench.utils.errors import ConfigError

__all__ = ["block_tau", "ranking_agreement"]


def block_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b between two score vectors over the same methods; methods missing (NaN)
    in either are left out. NaN when fewer than 2 methods remain or either vector is constant
    (a ranking with every method tied says nothing about order)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return float("nan")
    a, b = a[keep], b[keep]
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(stats.kendalltau(a, b).statistic)


def _oriented(scores: dict[str, np.ndarray], higher_is_better: dict[str, bool]
              ) -> dict[str, np.ndarray]:
    """Each metric's (n_blocks, k) scores, negated where lower is better."""
    shapes = {name: np.shape(values) for name, values in scores.items()}
    if len(set(shapes.values())) > 1 or any(len(s) != 2 for s in shapes.values()):
        raise ConfigError(f"Metric agreement: every metric needs (blocks, methods) scores of one "
                          f"shape, got {shapes}.")
    missing = [name for name in scores if name not in higher_is_better]
    if missing:
        raise ConfigError(f"Metric agreement: no direction (higher_is_better) for {missing}.")
    return {name: np.asarray(values, dtype=float) * (1.0 if higher_is_better[name] else -1.0)
            for name, values in scores.items()}


def ranking_agreement(
    scores: dict[str, np.ndarray],
    higher_is_better: dict[str, bool],
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(metrics, tau, n): tau[i, j] is the mean over blocks of Kendall's tau-b between the
    method rankings of metrics i and j (+1 same order, -1 reversed), n[i, j] the number of
    blocks where tau was defined; NaN where none was. The diagonal is 1 wherever the metric
    ranks the methods in at least one block (n[i, i] counts those blocks)."""
    oriented = _oriented(scores, higher_is_better)
    metrics = list(oriented)
    m = len(metrics)
    tau = np.full((m, m), np.nan)
    count = np.zeros((m, m), dtype=int)
    for i in range(m):
        for j in range(i, m):
            a, b = oriented[metrics[i]], oriented[metrics[j]]
            per_block = np.array([block_tau(a[r], b[r]) for r in range(a.shape[0])])
            defined = per_block[np.isfinite(per_block)]
            count[i, j] = count[j, i] = defined.size
            if defined.size:
                tau[i, j] = tau[j, i] = 1.0 if i == j else float(defined.mean())
    return metrics, tau, count
