"""From per-image scores to the numbers in a table: point estimates with bootstrap intervals.

An aggregate is a function of per-image columns that reduces the LAST dimension, so the same
function gives the point estimate (columns of shape (N,)) and every bootstrap resample at once
(columns of shape (R, N)). Most metrics are a NaN-aware mean; HAAS is a ratio of sums and
balanced accuracy a mean of per-class recalls, which is why the aggregate is per metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

Columns = Mapping[str, torch.Tensor]
Aggregate = Callable[[Columns], dict[str, torch.Tensor]]

__all__ = ["Aggregate", "bootstrap_summary", "nanmean_aggregate"]


def nanmean_aggregate(columns: Columns) -> dict[str, torch.Tensor]:
    """Mean of each column over images, NaN scores (undefined for that image) left out."""
    return {name: values.double().nanmean(dim=-1) for name, values in columns.items()}


def bootstrap_summary(
    columns: Columns,
    aggregate: Aggregate = nanmean_aggregate,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{name: {value, ci_low, ci_high, n}}: percentile bootstrap over images (resampled with
    replacement, seeded, so reruns and DDP runs print the same interval). `n` counts the
    images with a defined (non-NaN) score of that column when the column exists per image."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap level must lie in (0, 1); got {level}")
    columns = {k: v.detach().cpu().double() for k, v in columns.items()}
    n_images = next(iter(columns.values())).shape[-1] if columns else 0
    point = aggregate(columns)
    intervals: dict[str, tuple[float, float]] = {}
    if n_images > 1 and samples > 0:
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randint(n_images, (int(samples), n_images), generator=gen)
        resampled = aggregate({k: v[idx] for k, v in columns.items()})
        alpha = (1.0 - level) / 2.0
        for name, values in resampled.items():
            finite = values[torch.isfinite(values)]
            if finite.numel():
                lo, hi = torch.quantile(
                    finite, torch.tensor([alpha, 1.0 - alpha], dtype=finite.dtype)).tolist()
                intervals[name] = (lo, hi)
    out: dict[str, dict[str, Any]] = {}
    for name, value in point.items():
        value = float(value)
        lo, hi = intervals.get(name, (float("nan"), float("nan")))
        n = int(torch.isfinite(columns[name]).sum()) if name in columns else n_images
        out[name] = {"value": value, "ci_low": lo, "ci_high": hi, "n": n}
    return out
