"""Known-truth metrics: the synthetic dataset plants a marker whose role in the label is known
(docs/known-truth.md), so a map can be judged on whether it shows what the model relies on.

- `marker_share` (a map metric): how the map's positive relevance per pixel splits between
  the marker and the lesion on images that have both (0.5 = equally bright).
- `ModelReliance` (kept once per evaluation, like PredictionTable, not per method): what the
  model itself relies on, measured from its predictions on the images where lesion and marker
  disagree. A faithful map method's marker share tracks this reliance across models (Adebayo
  et al. 2022, "Post hoc explanations may be ineffective for detecting unknown spurious
  correlation"; Kim et al. 2021, "Sanity simulations for saliency methods").

The lesion's region is the batch's ROI mask (`masks`, `has_mask`), the marker's the batch's
`marker_masks`; the two never overlap (the marker hides the lesion beneath it).
"""

from __future__ import annotations

from typing import Any

import torch

from xai_bench.metrics.base import HOW_TO_MARKER, EvalBatch, ImageMetric, register_metric
from xai_bench.utils.errors import ConfigError

__all__ = ["RELIANCE_COLUMNS", "MarkerShare", "ModelReliance", "cue_presence", "reliance_columns"]

# the per-image columns of ModelReliance that per_image.csv shows (`pred` is already there)
RELIANCE_COLUMNS = ("lesion", "marker", "follows_marker")


def reliance_columns(pred: torch.Tensor, lesion: torch.Tensor,
                     marker: torch.Tensor) -> dict[str, torch.Tensor]:
    """ModelReliance's per-image columns from predicted classes and the cues' presence (bool,
    (N,)): `follows_marker` is 1 where the prediction follows the marker on a conflict image,
    0 where it follows the lesion, NaN where the cues agree."""
    follows = ((pred == 1) == marker).float()
    return {"lesion": lesion, "marker": marker, "pred": pred,
            "follows_marker": follows.masked_fill(lesion == marker, float("nan"))}


def cue_presence(batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(lesion, marker): bool (B,) per image, on the maps' device; None without marker masks.
    The lesion is `has_mask` where the batch has it (the image has a lesion), else a
    non-empty ROI mask."""
    if batch.marker_masks is None:
        return None
    device = batch.maps.device
    marker = (batch.marker_masks.to(device) > 0).flatten(1).any(dim=1)
    if batch.has_mask is not None:
        lesion = batch.has_mask.to(device).bool()
    elif batch.masks is not None:
        lesion = (batch.masks.to(device) > 0).flatten(1).any(dim=1)
    else:
        return None
    return lesion, marker


@register_metric("marker_share")
class MarkerShare(ImageMetric):
    """How the map's positive relevance (the map clipped at 0) splits between marker and lesion,
    per pixel: d_m / (d_m + d_l), with d the mean relevance over the region's pixels. 0.5 = the
    map is as bright on the marker as on the lesion (a uniform map, and a random one on
    average); 1 = only the marker lights up, 0 = only the lesion. Defined on images with both a
    lesion and a marker; NaN elsewhere, for a NaN map, and when neither region holds any
    positive relevance.

    Per pixel, not as a share of mass: the lesion is about 10 times the marker's area, so a
    share of mass would call a map that lights the marker up brightly "mostly on the lesion"
    (lesion_mass and marker_mass keep the mass view). Descriptive (no better direction): a
    faithful map has a high share on a model that relies on the marker and a low one on a
    model that reads the lesion.
    """

    needs = frozenset({"mask", "marker_mask"})
    higher_is_better = None

    def __init__(self, key: str = "marker_share", **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self._add_columns([key])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        if batch.masks is None or batch.marker_masks is None:
            what = "lesion (ROI) masks" if batch.masks is None else "marker masks"
            raise ConfigError(f"metric {self.key} needs the lesion and the planted marker's "
                              f"masks, and the batch has no {what}: {HOW_TO_MARKER}.")
        maps = batch.maps.float()
        device = maps.device
        lesion_px = (batch.masks.to(device) > 0).flatten(1).double()
        marker_px = (batch.marker_masks.to(device) > 0).flatten(1).double()
        positive = maps.clamp(min=0).flatten(1).double()
        tiny = torch.finfo(torch.float64).tiny
        on_marker = (positive * marker_px).sum(dim=1) / marker_px.sum(dim=1).clamp_min(1)
        on_lesion = (positive * lesion_px).sum(dim=1) / lesion_px.sum(dim=1).clamp_min(1)
        total = on_marker + on_lesion
        share = on_marker / total.clamp_min(tiny)
        defined = ((lesion_px.sum(dim=1) > 0) & (marker_px.sum(dim=1) > 0) & (total > 0)
                   & ~torch.isnan(maps).flatten(1).any(dim=1))
        if batch.has_mask is not None:
            defined &= batch.has_mask.to(device).bool()
        return {self.key: share.float().masked_fill(~defined, float("nan"))}


class ModelReliance(ImageMetric):
    """What the model relies on, from its predictions: per image `lesion` and `marker` (1/0,
    the cue is present), `pred` (the predicted class) and `follows_marker` (on a conflict
    image, exactly one cue present: 1 if the prediction follows the marker, i.e. class 1
    ("finding") iff the marker is present, else 0; NaN where the cues agree).

    Every column is NaN for a batch without marker masks, and for a task that is not binary
    single-label (class 1 = "finding" has no meaning there). A dataset that plants no marker
    gives every image an empty marker mask: its lesion images look like conflicts, which is why
    the evaluation's summary (xai_bench.report.tables) reports reliance only when some image
    has a marker. Not a map metric: the evaluation keeps one, updated with the predictions
    (xai_bench.modules.evaluator).
    """

    higher_is_better = None

    def __init__(self, key: str = "known_truth", **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self._add_columns([*RELIANCE_COLUMNS[:2], "pred", RELIANCE_COLUMNS[2]])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        logits = batch.logits
        count = logits.shape[0]
        cues = cue_presence(batch)
        binary = logits.ndim == 2 and logits.shape[-1] == 2 and batch.labels.ndim == 1
        if cues is None or not binary:
            nan = torch.full((count,), float("nan"), device=logits.device)
            return {column: nan for column in self.columns}
        lesion, marker = (c.to(logits.device) for c in cues)
        return reliance_columns(logits.argmax(dim=-1), lesion, marker)

    def aggregate(self, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """reliance: the fraction of conflict images whose prediction follows the marker (0 =
        the model reads the lesion only, 1 = the marker only); agree_accuracy: the accuracy on
        the images where the cues agree (the label then is either cue); conflict_images: their
        count. Reduces the last dimension (bootstrap resamples: (R, N))."""
        lesion, marker = columns["lesion"].double(), columns["marker"].double()
        known = ~(torch.isnan(lesion) | torch.isnan(marker))
        agree = (known & (lesion == marker)).double()
        conflict = (known & (lesion != marker)).double()
        correct = (columns["pred"].double() == lesion).double()
        return {
            "reliance": columns["follows_marker"].double().nanmean(dim=-1),
            "agree_accuracy": (correct * agree).sum(dim=-1) / agree.sum(dim=-1),
            "conflict_images": conflict.sum(dim=-1),
        }
