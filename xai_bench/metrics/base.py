"""Evaluation metrics as torchmetrics `Metric`s that keep one score per image.

Why per image: the study's tables need bootstrap intervals and a per-image CSV, and a DDP run
must give the same aggregates as one process. Each metric therefore stores (image id, scores)
with `dist_reduce_fx="cat"`; `compute()` gathers every rank's rows, drops the duplicates a
DistributedSampler pads with, and sorts by id, so the per-image table, and everything
aggregated from it, does not depend on how images were spread over ranks or batches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from xai_bench.explain.base import ExplainMethod
from xai_bench.metrics.aggregate import nanmean_aggregate
from xai_bench.utils.errors import ConfigError

__all__ = ["HOW_TO_MARKER", "METRICS", "NEEDS", "Cost", "EvalBatch", "ImageMetric", "build_metric",
           "check_choice", "register_metric"]

# what a metric may need beyond the maps, images, labels and logits of a batch: the ROI mask,
# per-class boxes, the model (it runs it again), the explanation method (it explains again),
# the planted marker of the synthetic dataset (docs/known-truth.md)
NEEDS = ("mask", "class_masks", "model", "method", "marker_mask")
# where the planted marker comes from: the fix every "needs marker_mask" error names
HOW_TO_MARKER = ("evaluate the synthetic dataset trained with dataset.shortcut.enabled=true on "
                 "split=decorrelated")


@dataclass(frozen=True)
class Cost:
    """Model passes a metric spends per image, beyond the evaluation's own forward and map:
    forwards and backwards of the model, and calls of the explanation method (each costing
    the method's own passes). Declared by each metric, counted by tests/test_metrics_catalog.py,
    printed by `scripts/bench_metrics.py` beside the measured time."""

    forwards: float = 0
    backwards: float = 0
    explanations: float = 0


@dataclass
class EvalBatch:
    """Everything a metric may need about one batch explained by one method."""

    images: torch.Tensor  # (B, C, H, W) as the model takes them
    labels: torch.Tensor  # (B,); multi-label: multi-hot (B, K)
    ids: torch.Tensor  # (B,) dataset index of each image: the key of the per-image table
    maps: torch.Tensor  # (B, H, W) the method's maps, post-processed
    target: torch.Tensor  # (B,) the class each map explains
    logits: torch.Tensor  # (B, K) the model's logits on the images
    model: nn.Module
    method: ExplainMethod
    masks: torch.Tensor | None = None  # (B, H, W) ROI, nonzero = inside
    has_mask: torch.Tensor | None = None  # (B,) bool: the image has a ROI annotation
    class_masks: torch.Tensor | None = None  # (B, K, H, W) per-class boxes (boxes.csv) or None
    # (B, H, W) the synthetic dataset's planted marker, nonzero = marker pixel (all zero on an
    # image without one); None for a dataset that plants none
    marker_masks: torch.Tensor | None = None
    mean: Sequence[float] = (0.485, 0.456, 0.406)  # input normalisation (for HAAS)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)

    @property
    def correct(self) -> torch.Tensor:
        """(B,) the top class is right; multi-label: it is one of the image's labels (the class
        a predicted-target map explains is then present)."""
        labels = self.labels.to(self.logits.device)
        if labels.ndim == 2:
            return labels.gather(1, self.predicted[:, None]).squeeze(1) > 0
        return self.predicted == labels

    def explain(self, images: torch.Tensor, target: torch.Tensor,
                ids: torch.Tensor | None = None) -> torch.Tensor:
        """Re-run the method on other inputs (perturbed images, a randomised model, ...)."""
        return self.method(self.model, images, target=target,
                           ids=self.ids if ids is None else ids).maps


def check_choice(value: Any, choices: Sequence[Any], what: str) -> Any:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(map(str, choices))}; got {value!r}.")
    return value


class ImageMetric(Metric):
    """Base class: `score(batch)` returns {column: (B,) tensor}; NaN = undefined for an image.

    Subclasses set `columns` in __init__ (before calling `_add_columns`) and may override
    `aggregate` (default: NaN-aware mean of every column). Each declares what it `needs`
    (a subset of NEEDS: the evaluation refuses a dataset without masks, or without a planted
    marker, before it starts; an instance may change its class's `needs`) and what it costs
    (`cost`: model passes per image). Like torchmetrics, a metric declares `higher_is_better`
    (None: no better direction); one whose aggregated columns differ (deletion vs insertion)
    overrides `column_higher_is_better`. The evaluation summary records it per column, and the
    report marks the best method with it.
    """

    full_state_update: ClassVar[bool] = False
    needs: frozenset[str] = frozenset()
    higher_is_better: bool | None = None

    def __init__(self, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key
        self.columns: tuple[str, ...] = ()
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def _add_columns(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        for index, _ in enumerate(self.columns):
            self.add_state(f"col{index}", default=[], dist_reduce_fx="cat")

    @property
    def requires_mask(self) -> bool:
        return "mask" in self.needs

    @property
    def requires_marker(self) -> bool:
        return "marker_mask" in self.needs

    def cost(self, model: nn.Module, height: int, width: int) -> Cost:
        """Model passes per image on `model` at this input size (map-only metrics: none). A
        metric that explains a class other than the map's (max_sensitivity's target=label)
        declares the case where they coincide and documents the extra explanation."""
        return Cost()

    def spent(self, table: dict[str, torch.Tensor]) -> Cost | None:
        """What the images of `table` (this metric's `compute()`) really cost per image, for a
        metric whose cost depends on the image (IROF: one forward per superpixel found); None
        when `cost` is exact."""
        return None

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:
        # torchmetrics runs update under no_grad; metrics that re-explain need gradients
        with torch.enable_grad():
            scores = self.score(batch)
        missing = set(self.columns) - set(scores)
        if missing:
            raise RuntimeError(f"{type(self).__name__}.score did not return {sorted(missing)}")
        self.ids.append(batch.ids.detach().to(self.device, torch.int64).view(-1))
        for index, column in enumerate(self.columns):
            getattr(self, f"col{index}").append(
                scores[column].detach().to(self.device, torch.float32).view(-1))

    def _gathered_rows(self, *states: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The gathered rows, sorted by id, the duplicates a DistributedSampler pads with dropped
        (the first kept): the same whatever the ranks and batches they came from.

        Args:
            *states: Names of list states ("cat") holding one row per image, as `ids` does.

        Returns:
            (ids (N,) int64, one tensor per state in that order); zero rows before an update.
        """
        if isinstance(self.ids, list) and not self.ids:  # a list before a DDP sync, a tensor after
            return torch.zeros(0, dtype=torch.int64), [torch.zeros(0) for _ in states]
        ids = dim_zero_cat(self.ids).long()
        order = torch.argsort(ids, stable=True)
        ids = ids[order]
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]
        return ids[keep], [dim_zero_cat(getattr(self, name))[order][keep] for name in states]

    def _wrap_compute(self, compute: Callable) -> Callable:
        """torchmetrics squeezes a one-element compute() result to a 0-d tensor: a per-image
        table of one image (max_images=1) gets its columns back as (1,)."""
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def per_image(*args: Any, **kwargs: Any) -> Any:
            table = wrapped(*args, **kwargs)
            if not isinstance(table, dict):
                return table
            return {k: v.reshape(1) if isinstance(v, torch.Tensor) and v.ndim == 0 else v
                    for k, v in table.items()}

        return per_image

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-image table {"id": (N,), column: (N,)}: gathered, de-duplicated, sorted by id."""
        ids, values = self._gathered_rows(*(f"col{i}" for i in range(len(self.columns))))
        return {"id": ids, **{c: v.float() for c, v in zip(self.columns, values, strict=True)}}

    def aggregate(self, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return nanmean_aggregate(columns)

    def column_higher_is_better(self, column: str) -> bool | None:
        """Whether a larger value of the aggregated `column` is the better map."""
        return self.higher_is_better


METRICS: dict[str, type[ImageMetric]] = {}


def register_metric(name: str) -> Callable[[type[ImageMetric]], type[ImageMetric]]:
    """Class decorator: file the metric under `name` for `build_metric` and `conf/metric/`
    configs (registration happens when its module is imported).

    Args:
        name: The metric's name; registering a name twice is an error.

    Returns:
        The decorator, which returns the class unchanged.
    """

    def deco(cls: type[ImageMetric]) -> type[ImageMetric]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = cls
        return cls

    return deco


def build_metric(name: str, key: str | None = None, **kwargs: Any) -> ImageMetric:
    """The registry lookup behind `metric=<group>` configs: each entry of a `conf/metric/*.yaml`
    is a `_partial_` call of this function, completed with its key once per evaluated method.

    Args:
        name: A registered metric (`METRICS`), e.g. "pointing_game", "iou", "aopc".
        key: The name of the output columns (default: `name`); metrics with several columns
            derive theirs from it, e.g. `iou@5`.
        **kwargs: The metric's settings (e.g. `q`, `region`, `empty_mask` for "iou").

    Returns:
        A fresh metric: `update(EvalBatch)` per batch, `compute()` the per-image table.

    Raises:
        ConfigError: `name` is not registered (the message lists the known names).
    """
    if name not in METRICS:
        raise ConfigError(f"metric {name!r} is unknown; available: {', '.join(sorted(METRICS))}.")
    return METRICS[name](key=key or name, **kwargs)
