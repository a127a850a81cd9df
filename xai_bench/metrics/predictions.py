"""Per-image bookkeeping kept beside the metrics: the classifier's predictions (accuracy is
reported next to every localisation table) and facts about each map (which class it explains,
whether it was constant or NaN), so degenerate maps are counted, never silently scored.

Multi-label datasets (sigmoid outputs) keep each image's label set and predicted set (sigmoid
>= 0.5) packed as bits into a few integer columns: per-class columns would multiply the memory
of the bootstrap, which resamples every column, by the number of classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from xai_bench.metrics.base import EvalBatch, ImageMetric

__all__ = ["BITS_PER_WORD", "MapStats", "PredictionTable", "class_set_texts", "pack_classes",
           "unpack_class"]

# the per-image states are float32, which holds every integer below 2**24 exactly
BITS_PER_WORD = 24


def pack_classes(multi_hot: torch.Tensor) -> list[torch.Tensor]:
    """(B, K) {0, 1} -> ceil(K / 24) int64 (B,) words; bit c % 24 of word c // 24 = class c."""
    hot = (multi_hot > 0).long()
    words = []
    for start in range(0, hot.shape[1], BITS_PER_WORD):
        chunk = hot[:, start: start + BITS_PER_WORD]
        weights = 2 ** torch.arange(chunk.shape[1], device=hot.device, dtype=torch.int64)
        words.append((chunk * weights).sum(dim=1))
    return words


def unpack_class(columns: Mapping[str, torch.Tensor], prefix: str, cls: int) -> torch.Tensor:
    """bool (..., N): class `cls` is in each image's set stored under `<prefix>@<word>`."""
    word = columns[f"{prefix}@{cls // BITS_PER_WORD}"].long()
    return torch.bitwise_and(torch.bitwise_right_shift(word, cls % BITS_PER_WORD), 1).bool()


def class_set_texts(columns: Mapping[str, torch.Tensor], prefix: str) -> list[str] | None:
    """Each image's set as the labels.csv text ("3;7"; "" = empty); None for single-label tables."""
    words = sorted((k for k in columns if k.startswith(f"{prefix}@")),
                   key=lambda k: int(k.split("@")[1]))
    if not words:
        return None
    texts = []
    for values in zip(*(columns[k].long().tolist() for k in words), strict=True):
        classes = [w * BITS_PER_WORD + b for w, v in enumerate(values)
                   for b in range(BITS_PER_WORD) if v >> b & 1]
        texts.append(";".join(map(str, classes)))
    return texts


def _f1(is_label: torch.Tensor, is_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One class's F1 over the last (image) dimension: 2 TP / (2 TP + FP + FN), 0 when the class
    has none of the three (torchmetrics' zero_division); -> (F1, TP + FP + FN)."""
    tp = (is_label & is_pred).double().sum(-1)
    errors = (is_label ^ is_pred).double().sum(-1)  # FP + FN
    denom = 2 * tp + errors
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom)), tp + errors


class PredictionTable(ImageMetric):
    """label, pred, prob (of pred), correct, has_mask, empty_mask per image.

    Multi-label (`multilabel`): label and pred are NaN; the label set and the predicted set
    (sigmoid >= `threshold`) are bit words `label_set@w`, `pred_set@w`; prob is the top sigmoid
    probability; correct means the predicted set equals the label set (exact match).
    """

    higher_is_better = True  # accuracy, balanced accuracy, F1

    def __init__(self, key: str = "classification", num_classes: int = 2, multilabel: bool = False,
                 threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)
        self.threshold = float(threshold)
        words = math.ceil(self.num_classes / BITS_PER_WORD) if self.multilabel else 0
        sets = [f"{prefix}@{w}" for prefix in ("label_set", "pred_set") for w in range(words)]
        self._add_columns(["label", "pred", "prob", "correct", "has_mask", "empty_mask", *sets])

    def _mask_columns(self, batch: EvalBatch, device: torch.device) -> dict[str, torch.Tensor]:
        count = batch.logits.shape[0]
        has_mask = (batch.has_mask if batch.has_mask is not None
                    else torch.zeros(count, dtype=torch.bool))
        has_mask = has_mask.to(device).bool()
        empty = torch.zeros(count, dtype=torch.bool, device=device)
        if batch.masks is not None:
            empty = has_mask & ~(batch.masks.to(device) > 0).flatten(1).any(dim=1)
        return {"has_mask": has_mask, "empty_mask": empty}

    def _multilabel_columns(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        probs = batch.logits.float().sigmoid()
        labels, preds = batch.labels.to(probs.device) > 0, probs >= self.threshold
        nan = torch.full((probs.shape[0],), math.nan, device=probs.device)
        out = {"label": nan, "pred": nan, "prob": probs.amax(dim=-1),
               "correct": (labels == preds).all(dim=-1)}
        for prefix, hot in (("label_set", labels), ("pred_set", preds)):
            out.update({f"{prefix}@{w}": word for w, word in enumerate(pack_classes(hot))})
        return out

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        if self.multilabel:
            columns = self._multilabel_columns(batch)
        else:
            prob, pred = batch.logits.float().softmax(dim=-1).max(dim=-1)
            labels = batch.labels.to(pred.device)
            columns = {"label": labels, "pred": pred, "prob": prob, "correct": pred == labels}
        return {**columns, **self._mask_columns(batch, batch.logits.device)}

    def aggregate(self, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Single-label: accuracy, balanced accuracy, macro F1; multi-label (bit-word columns
        present): exact-match accuracy and macro F1 (torchmetrics' definitions)."""
        if "label_set@0" in columns:
            return self._multilabel_aggregate(columns)
        labels, correct = columns["label"].long(), columns["correct"].double()
        preds = columns["pred"].long()
        recalls, f1s, present = [], [], []
        for cls in range(self.num_classes):
            members = (labels == cls).double()
            recalls.append((correct * members).sum(-1) / members.sum(-1))
            f1, seen = _f1(labels == cls, preds == cls)
            f1s.append(f1)
            # MulticlassF1Score: a class never seen gets weight 0
            present.append((seen > 0).double())
        recall, f1, weight = (torch.stack(v, dim=-1) for v in (recalls, f1s, present))
        f1_macro = (f1 * weight).sum(-1) / weight.sum(-1).clamp_min(1)
        return {"accuracy": correct.mean(-1), "balanced_accuracy": recall.nanmean(dim=-1),
                "f1_macro": f1_macro}

    def _multilabel_aggregate(self, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Macro F1 over ALL classes, an absent one scoring 0
        (MultilabelF1Score(average="macro"))."""
        f1s = [_f1(unpack_class(columns, "label_set", cls),
                   unpack_class(columns, "pred_set", cls))[0]
               for cls in range(self.num_classes)]
        return {"accuracy": columns["correct"].double().mean(-1),
                "f1_macro": torch.stack(f1s, dim=-1).mean(-1)}


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
        return {"constant_maps": columns["constant_map"].sum(-1),
                "nan_maps": columns["nan_map"].sum(-1)}
