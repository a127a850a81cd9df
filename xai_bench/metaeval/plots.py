"""One PNG per metric: its four consistency scores per perturbation space beside the pass marks,
and the methods' mean scores under each condition (do they stay put under minor perturbations,
move under disruptive ones?). Drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xai_bench.metaeval.run import MetaRow, MetaSettings, ScoreTable  # noqa: E402
from xai_bench.metaeval.scores import CRITERIA  # noqa: E402

__all__ = ["plot_metric"]

_MARKS = ("iac_nr", "iec_nr", "iac_ar", "iec_ar")


def _condition_means(table: ScoreTable, column: str) -> tuple[list[str], np.ndarray]:
    """Condition labels and (conditions, L) mean scores over images (and draws)."""
    labels: list[str] = []
    means: list[np.ndarray] = []
    for name in dict.fromkeys(c.name for c in table.scores):
        stack = np.stack([table.scores[c][column] for c in table.scores if c.name == name])
        with np.errstate(all="ignore"):
            finite = np.isfinite(stack)
            total = np.where(finite, stack, 0.0).sum(axis=(0, 2))
            means.append(total / np.maximum(finite.sum(axis=(0, 2)), 1))
        labels.append(name)
    return labels, np.stack(means)


def plot_metric(metric: str, rows: Sequence[MetaRow], table: ScoreTable,
                settings: MetaSettings, path: Path) -> Path:
    """Draw `metric`'s figure: one line of two panels per column of the metric.

    Args:
        metric: The metric key (conf/metric entry).
        rows: The judged rows of the meta-evaluation (those of `metric` are drawn).
        table: The per-image scores behind them.
        settings: For the pass marks.
        path: Where the PNG goes.

    Returns:
        The PNG's path.
    """
    own = [row for row in rows if row.metric == metric]
    columns = list(dict.fromkeys(row.column for row in own))
    fig, axes = plt.subplots(len(columns), 2, figsize=(11, 3.4 * len(columns)), squeeze=False)
    marks = [getattr(settings.thresholds, m) for m in _MARKS]
    for line, column in enumerate(columns):
        left, right = axes[line]
        spaces = [row for row in own if row.column == column]
        width = 0.8 / max(len(spaces), 1)
        x = np.arange(len(CRITERIA))
        for offset, row in enumerate(spaces):
            values = [getattr(row.scores, c) for c in CRITERIA]
            left.bar(x + (offset - (len(spaces) - 1) / 2) * width,
                     np.nan_to_num(values, nan=0.0), width,
                     label=f"{row.space}: NR {row.nr}, AR {row.ar}, MC {row.scores.mc:.2f}")
        for index, mark in enumerate(marks):
            left.hlines(mark, index - 0.45, index + 0.45, colors="black", linestyles="dashed")
        left.set_xticks(x, CRITERIA)
        left.set_ylim(0, 1.4)
        left.set_yticks(np.linspace(0, 1, 6))
        left.set_title(f"{column}: {spaces[0].verdict} (dashed: pass marks)", fontsize=10)
        left.legend(fontsize=8, loc="upper center")
        labels, means = _condition_means(table, column)
        positions = np.arange(len(labels))
        for index, method in enumerate(table.methods):
            right.plot(positions, means[:, index], marker="o", label=method)
        right.set_xticks(positions, labels, rotation=20)
        direction = {True: "higher is better", False: "lower is better", None: "no direction"}
        right.set_title(f"mean {column} per method ({direction[table.higher_is_better[column]]})",
                        fontsize=10)
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
