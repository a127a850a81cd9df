"""Evaluation metrics: localisation, faithfulness, sanity and known truth, as per-image torchmetrics
Metrics.

`functional/` holds the batched score functions; the Metric classes here keep per-image rows
keyed by image id (exact under DDP) and are built by name from `conf/metric/` configs.
Importing this package registers every metric.
"""

from xai_bench.metrics import axiomatic as _axiomatic  # noqa: F401  (registration)
from xai_bench.metrics import complexity as _complexity  # noqa: F401  (registration)
from xai_bench.metrics import faithfulness, localisation, sanity  # noqa: F401  (registration)
from xai_bench.metrics import faithfulness_correlation as _faith_corr  # noqa: F401  (registration)
from xai_bench.metrics import faithfulness_curves as _faith_curves  # noqa: F401  (registration)
from xai_bench.metrics import randomisation as _randomisation  # noqa: F401  (registration)
from xai_bench.metrics import robustness as _robustness  # noqa: F401  (registration)
from xai_bench.metrics.aggregate import bootstrap_summary, nanmean_aggregate
from xai_bench.metrics.base import METRICS, EvalBatch, ImageMetric, build_metric, register_metric
from xai_bench.metrics.known_truth import ModelReliance  # registers marker_share too
from xai_bench.metrics.predictions import MapStats, PredictionTable

__all__ = [
    "METRICS",
    "EvalBatch",
    "ImageMetric",
    "MapStats",
    "ModelReliance",
    "PredictionTable",
    "bootstrap_summary",
    "build_metric",
    "nanmean_aggregate",
    "register_metric",
]
