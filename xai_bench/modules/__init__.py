"""Lightning modules and their training helpers."""

from xai_bench.modules.callbacks import BestEpochTracker
from xai_bench.modules.classifier import ClassifierModule, classification_metrics
from xai_bench.modules.optim import CosineSchedule, build_cosine_schedule, build_optimizer

__all__ = [
    "BestEpochTracker",
    "ClassifierModule",
    "CosineSchedule",
    "build_cosine_schedule",
    "build_optimizer",
    "classification_metrics",
]
