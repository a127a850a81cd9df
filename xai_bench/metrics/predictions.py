"""Per-image bookkeeping kept beside the metrics: the classifier's predictions (accuracy is
reported next to every localisation table) and facts about each map (which class it explains,
whether it was constant or NaN), so degenerate maps are counted, never silently scored."""

from __future__ import annotations

from typing import Any

import torch

from xai_bench.metrics.base import EvalBatch, ImageMetric


class PredictionTable(ImageMetric):
    """label, pred, prob (of pred), correct, has_mask, empty_mask per image."""

    def __init__(self, key: str = "classification", num_classes: int = 2, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.num_classes = int(num_classes)
        self._add_columns(["label", "pred", "prob", "correct", "has_mask", "empty_mask"])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        probs = batch.logits.float().softmax(dim=-1)
        prob, pred = probs.max(dim=-1)
        labels = batch.labels.to(pred.device)
        count = labels.shape[0]
        has_mask = batch.has_mask if batch.has_mask is not None else torch.zeros(count, dtype=torch.bool)
        has_mask = has_mask.to(pred.device).bool()
        empty = torch.zeros(count, dtype=torch.bool, device=pred.device)
        if batch.masks is not None:
            empty = has_mask & ~(batch.masks.to(pred.device) > 0).flatten(1).any(dim=1)
        return {"label": labels, "pred": pred, "prob": prob, "correct": pred == labels,
                "has_mask": has_mask, "empty_mask": empty}

    def aggregate(self, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels, correct = columns["label"].long(), columns["correct"].double()
        recalls = []
        for cls in range(self.num_classes):
            members = (labels == cls).double()
            recalls.append((correct * members).sum(-1) / members.sum(-1))
        recall = torch.stack(recalls, dim=-1)
        return {"accuracy": correct.mean(-1), "balanced_accuracy": recall.nanmean(dim=-1)}


class MapStats(ImageMetric):
    """target (the explained class), constant_map, nan_map per image and method."""

    def __init__(self, key: str = "maps", **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self._add_columns(["target", "constant_map", "nan_map"])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        flat = batch.maps.flatten(1)
        nan = torch.isnan(flat).any(dim=1)
        constant = ~nan & (flat.amax(dim=1) == flat.amin(dim=1))
        return {"target": batch.target, "constant_map": constant, "nan_map": nan}

    def aggregate(self, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"constant_maps": columns["constant_map"].sum(-1), "nan_maps": columns["nan_map"].sum(-1)}
