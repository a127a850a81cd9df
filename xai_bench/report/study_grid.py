"""The reference study's grid: its datasets, initialisations, methods, baselines and metrics, in
the order its table lists them, and which way each metric is better."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "BASELINES",
    "DEFAULT_METRICS",
    "STUDY_DATASETS",
    "STUDY_INITS",
    "STUDY_METHODS",
    "lower_is_better",
    "study_order",
]

STUDY_DATASETS = ("cp_child", "duke", "kvasir", "mura")
STUDY_INITS = ("random", "sup", "dino", "mae", "mae_pretrain")
STUDY_METHODS = ("gradcam_study", "gradcam", "hirescam", "attention", "rollout", "chefer",
                 "chefer_generic")
BASELINES = ("random", "centre", "uniform")
DEFAULT_METRICS = ("pointing_game", "iou@5", "iou@10", "iou@20", "iou@40")


def study_order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """The study's order first (`preferred`), then the others alphabetically."""
    present = set(names)
    return [n for n in preferred if n in present] + sorted(present - set(preferred))


def lower_is_better(metric: str) -> bool:
    """A guess from the metric's name, for summaries written before metrics declared
    `higher_is_better` (StudyTable.lower_is_better reads the declaration first): smaller is
    the better map for max-sensitivity, LeRF AOPC and deletion; higher for the rest."""
    return metric.startswith(("max_sensitivity", "aopc_lerf")) or metric.endswith("/deletion")
