"""Localisation metrics: does the map point at the annotated ROI? (docs/metrics.md)

Images without a ROI annotation score NaN (left out of every mean and counted). Images whose
annotation is an EMPTY mask count as misses (score 0), as in the reference study; set
`empty_mask: skip` to leave them out instead (`auc` always does: its ROC curve is undefined
without ROI pixels). Maps with NaNs score NaN.

`mask: marker` scores the same metrics against the synthetic dataset's planted marker instead
of the ROI (docs/known-truth.md): an image without a marker scores NaN, whatever `empty_mask`
says, since a missing marker is no annotation of it.

`wsl_iou` (ATCON, docs/atcon.md) judges the map against the boxes of the class it explains
(a multi-label dataset's boxes.csv, the batch's "class_masks"), not against the ROI mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from xai_bench.metrics.base import (
    HOW_TO_MARKER,
    EvalBatch,
    ImageMetric,
    check_choice,
    register_metric,
)
from xai_bench.metrics.functional import localisation as F_loc
from xai_bench.metrics.functional import localisation_ranking as F_rank
from xai_bench.utils.errors import ConfigError

EMPTY_MASK = ("miss", "skip")
# what a mask metric scores against: the ROI annotation, or the planted marker
MASKS = ("roi", "marker")


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false; got {value!r}.")
    return value


class _MaskMetric(ImageMetric):
    """Scores each map against a mask: the ROI (`mask: roi`) or the planted marker
    (`mask: marker`, module docstring); `needs` says which, per instance."""

    needs = frozenset({"mask"})
    higher_is_better = True  # more of the map on the ROI

    def __init__(self, key: str, empty_mask: str = "miss", mask: str = "roi",
                 **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.empty_mask = check_choice(empty_mask, EMPTY_MASK, f"{key}.empty_mask")
        self.mask = check_choice(mask, MASKS, f"{key}.mask")
        if self.mask == "marker":
            self.needs = frozenset({"marker_mask"})

    def mask_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _masks(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(bool (B, H, W) masks, bool (B,) images whose score is undefined)."""
        device = batch.maps.device
        if self.mask == "marker":
            if batch.marker_masks is None:
                raise ConfigError(f"metric {self.key} (mask: marker) needs the planted marker's "
                                  f"masks, and the batch has none: {HOW_TO_MARKER}.")
            masks = batch.marker_masks.to(device) > 0
            return masks, ~masks.flatten(1).any(dim=1)
        if batch.masks is None:
            raise ConfigError(f"metric {self.key} needs ROI masks; "
                              "evaluate on split=roi or a dataset with masks/.")
        masks = batch.masks.to(device) > 0
        undefined = torch.zeros(masks.shape[0], dtype=torch.bool, device=device)
        if batch.has_mask is not None:
            undefined |= ~batch.has_mask.to(device).bool()
        if self.empty_mask == "skip":
            undefined |= ~masks.flatten(1).any(dim=1)
        return masks, undefined

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        masks, undefined = self._masks(batch)
        scores = self.mask_scores(batch.maps.float(), masks)
        return {k: v.float().masked_fill(undefined, float("nan")) for k, v in scores.items()}


@register_metric("pointing_game")
class PointingGame(_MaskMetric):
    """Hit if a pixel tied at the map's maximum lies in the ROI (within `tolerance` px, a
    strict disc, when > 0). `constant` decides what a constant map scores: ties (the study's
    literal rule: hit on any non-empty mask) | miss | nan; constant maps are counted either way."""

    def __init__(self, key: str = "pointing_game", tolerance: float = 0.0, constant: str = "ties",
                 empty_mask: str = "miss", **kwargs: Any) -> None:
        super().__init__(key, empty_mask, **kwargs)
        self.tolerance = float(tolerance)
        self.constant = check_choice(constant, ("ties", "miss", "nan"), f"{key}.constant")
        self._add_columns([key])

    def mask_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: F_loc.pointing_game(maps, masks, tolerance=self.tolerance,
                                              constant=self.constant)}


@register_metric("iou")
class IoUAtQ(_MaskMetric):
    """IoU of the top q% of the map with the ROI, one column per q (`<key>@<q>`).
    region=box: the study's rule, ONE rectangle enclosing every kept pixel; pixel: the kept set."""

    def __init__(self, key: str = "iou", q: Sequence[float] | float = (5, 10, 20, 40),
                 region: str = "box", empty_mask: str = "miss", **kwargs: Any) -> None:
        super().__init__(key, empty_mask, **kwargs)
        self.qs = [float(v) for v in (q if isinstance(q, Sequence) else [q])]
        if not self.qs:
            raise ConfigError(f"{key}.q needs at least one percentage.")
        self.region = check_choice(region, ("box", "pixel"), f"{key}.region")
        self._add_columns([f"{key}@{v:g}" for v in self.qs])

    def mask_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{self.key}@{v:g}": F_loc.iou_at_q(maps, masks, q=v, region=self.region)
                for v in self.qs}


@register_metric("relevance_mass")
class RelevanceMass(_MaskMetric):
    """Share of the map's total relevance inside the ROI (energy-based pointing game)."""

    def __init__(self, key: str = "relevance_mass", empty_mask: str = "miss",
                 **kwargs: Any) -> None:
        super().__init__(key, empty_mask, **kwargs)
        self._add_columns([key])

    def mask_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: F_loc.relevance_mass(maps, masks)}


@register_metric("relevance_rank")
class RelevanceRank(_MaskMetric):
    """Share of the top-|ROI| pixels of the map that lie in the ROI (ties shared evenly)."""

    def __init__(self, key: str = "relevance_rank", empty_mask: str = "miss",
                 **kwargs: Any) -> None:
        super().__init__(key, empty_mask, **kwargs)
        self._add_columns([key])

    def mask_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: F_loc.relevance_rank(maps, masks)}


@register_metric("wsl_iou")
class WslIoU(ImageMetric):
    """ATCON's weakly supervised localisation IoU: the map binarised at `threshold` vs the union
    of the explained class's boxes; 0 when that class has no box in the image, NaN for an
    image without boxes (see functional.localisation.wsl_iou)."""

    higher_is_better = True
    needs = frozenset({"class_masks"})

    def __init__(self, key: str = "wsl_iou", threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.threshold = float(threshold)
        self._add_columns([key])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        if batch.class_masks is None:
            raise ConfigError(
                f"metric {self.key} needs per-class boxes, and the dataset has no boxes.csv "
                "(a multi-label dataset's <root>/boxes.csv, e.g. from "
                "`python -m xai_bench.prepare pascal_voc` "
                "without --resize)."
            )
        return {self.key: F_loc.wsl_iou(batch.maps.float(), batch.class_masks, batch.target,
                                        self.threshold)}


@register_metric("top_k_intersection")
class TopKIntersection(_MaskMetric):
    """Share of the map's `k` highest pixels inside the ROI (Theiner et al. 2021,
    "Interpretable semantic photo geolocalization"); `concept_influence` divides by the ROI's
    area fraction (1 = chance). Ties at the cut share the remaining slots evenly."""

    def __init__(self, key: str = "top_k_intersection", k: int = 1000,
                 concept_influence: bool = False, abs: bool = False, empty_mask: str = "miss",
                 **kwargs: Any) -> None:
        super().__init__(key, empty_mask, **kwargs)
        self.k = F_rank.check_k(k)
        self.concept_influence = _flag(concept_influence, f"{key}.concept_influence")
        self.abs = _flag(abs, f"{key}.abs")
        self._add_columns([key])

    def mask_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: F_rank.top_k_intersection(
            maps, masks, k=self.k, concept_influence=self.concept_influence, abs=self.abs)}


@register_metric("auc")
class AUC(_MaskMetric):
    """ROC AUC of the map's values as a detector of ROI pixels (Fawcett 2006, "An introduction
    to ROC analysis"): 0.5 = chance, 1 = every ROI pixel above every other pixel. Empty (and
    full) masks are undefined: NaN, counted, whatever `empty_mask` elsewhere says."""

    def __init__(self, key: str = "auc", abs: bool = False, **kwargs: Any) -> None:
        super().__init__(key, "skip", **kwargs)
        self.abs = _flag(abs, f"{key}.abs")
        self._add_columns([key])

    def mask_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: F_rank.auc(maps, masks, abs=self.abs)}


@register_metric("attribution_localisation")
class AttributionLocalisation(_MaskMetric):
    """Share of the map's relevance inside the ROI (Kohlbrenner et al. 2020, "Towards best
    practice in explaining neural network decisions with LRP"); `weighted` multiplies it by
    H W / |ROI| (1 = a uniform map, so small ROIs are not penalised)."""

    def __init__(self, key: str = "attribution_localisation", weighted: bool = False,
                 abs: bool = True, positive_only: bool = False, empty_mask: str = "miss",
                 **kwargs: Any) -> None:
        super().__init__(key, empty_mask, **kwargs)
        self.weighted = _flag(weighted, f"{key}.weighted")
        self.abs = _flag(abs, f"{key}.abs")
        self.positive_only = _flag(positive_only, f"{key}.positive_only")
        self._add_columns([key])

    def mask_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: F_rank.attribution_localisation(
            maps, masks, weighted=self.weighted, abs=self.abs, positive_only=self.positive_only)}
