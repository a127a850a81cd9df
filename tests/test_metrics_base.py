"""Per-image metric plumbing: de-duplication by image id, aggregates and bootstrap intervals."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from xai_bench.metrics.aggregate import bootstrap_summary, nanmean_aggregate
from xai_bench.metrics.base import EvalBatch, ImageMetric, build_metric
from xai_bench.metrics.predictions import MapStats, PredictionTable
from xai_bench.utils.errors import ConfigError


class _Echo(ImageMetric):
    """Scores each image with its own id: makes the bookkeeping visible."""

    def __init__(self, key: str = "echo") -> None:
        super().__init__(key)
        self._add_columns(["value"])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        return {"value": batch.ids.float() * 10}


def _batch(ids: list[int], logits: torch.Tensor | None = None, labels: list[int] | None = None,
           maps: torch.Tensor | None = None) -> EvalBatch:
    n = len(ids)
    logits = logits if logits is not None else torch.zeros(n, 2)
    return EvalBatch(images=torch.zeros(n, 3, 4, 4), labels=torch.tensor(labels or [0] * n),
                     ids=torch.tensor(ids), maps=maps if maps is not None else torch.rand(n, 4, 4),
                     target=torch.zeros(n, dtype=torch.long), logits=logits,
                     model=torch.nn.Identity(), method=None)  # type: ignore[arg-type]


def test_rows_are_deduplicated_and_sorted_by_id() -> None:
    """A DistributedSampler pads the last batches with repeats: each image must count once."""
    metric = _Echo()
    metric.update(_batch([5, 1, 3]))
    metric.update(_batch([0, 5, 1]))  # padding repeats 5 and 1
    out = metric.compute()
    assert out["id"].tolist() == [0, 1, 3, 5]
    assert out["value"].tolist() == [0.0, 10.0, 30.0, 50.0]


def test_empty_metric_computes_to_empty_table() -> None:
    out = _Echo().compute()
    assert out["id"].numel() == 0 and out["value"].numel() == 0


def test_bootstrap_summary_point_interval_and_nan_handling() -> None:
    values = torch.tensor([0.0, 1.0] * 50 + [float("nan")] * 10)
    summary = bootstrap_summary({"hit": values}, samples=500, seed=1)["hit"]
    assert summary["value"] == pytest.approx(0.5)
    assert summary["n"] == 100
    assert 0.38 < summary["ci_low"] < 0.5 < summary["ci_high"] < 0.62
    assert bootstrap_summary({"hit": values}, samples=500, seed=1)["hit"] == summary  # seeded
    single = bootstrap_summary({"hit": torch.tensor([1.0])})["hit"]
    assert single["value"] == 1.0 and math.isnan(single["ci_low"])
    assert nanmean_aggregate(
        {"x": torch.tensor([[1.0, float("nan")], [2.0, 4.0]])})["x"].tolist() == [1.0, 3.0]


def test_prediction_table_balanced_accuracy_matches_sklearn() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (40,), generator=gen)
    logits = torch.randn(40, 3, generator=gen)
    table = PredictionTable(num_classes=3)
    table.update(_batch(list(range(40)), logits=logits, labels=labels.tolist()))
    columns = {k: v for k, v in table.compute().items() if k != "id"}
    agg = table.aggregate(columns)
    pred = logits.argmax(1)
    assert agg["accuracy"].item() == pytest.approx((pred == labels).float().mean().item())
    assert agg["balanced_accuracy"].item() == pytest.approx(balanced_accuracy_score(labels, pred))


def test_map_stats_count_constant_and_nan_maps() -> None:
    maps = torch.rand(3, 4, 4)
    maps[1] = 0.0
    maps[2, 0, 0] = float("nan")
    stats = MapStats()
    stats.update(_batch([0, 1, 2], maps=maps))
    out = stats.compute()
    assert (out["constant_map"].tolist() == [0.0, 1.0, 0.0]
            and out["nan_map"].tolist() == [0.0, 0.0, 1.0])


def test_unknown_metric_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="available"):
        build_metric("accuracy_at_k")
