"""One sample dict from an image, its ROI mask and label, through one transform call.

Every dataset builds its samples here, so all of them carry the same keys (see
xai_bench.data.datasets) and image, mask and extra masks always get the same random crop or flip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from xai_bench.data.synthetic import masks_to_boxes
from xai_bench.data.transforms import imagenet_normalize

__all__ = ["Transform", "apply_transform", "make_sample"]

Transform = Callable[..., dict[str, Any]]


@functools.cache
def _normalize_only() -> A.Compose:
    """The fallback pipeline: no resize, so any image size passes through unchanged."""
    return A.Compose([imagenet_normalize(), ToTensorV2()])


def _as_mask_tensor(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(np.asarray(mask)) if isinstance(mask, np.ndarray) else mask
    return (mask > 0).to(torch.uint8)


def apply_transform(
    transform: Transform | None, image: np.ndarray, mask: np.ndarray,
    extra: Sequence[np.ndarray] = (),
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Run image, mask and `extra` masks through ONE transform call, so random crops and flips
    agree; -> (float (3, H, W), uint8 mask (H, W[, C]), [uint8 (H, W)] per extra mask)."""
    if transform is None:
        transform = _normalize_only()
    out = (transform(image=image, mask=mask, masks=list(extra)) if len(extra)
           else transform(image=image, mask=mask))
    img = out["image"]
    if isinstance(img, np.ndarray):  # the pipeline did not end with ToTensorV2
        img = torch.from_numpy(
            np.ascontiguousarray(img.transpose(2, 0, 1) if img.ndim == 3 else img[None]))
    if img.dtype == torch.uint8:  # no Normalize in the pipeline: at least give the model floats
        img = img.float().div_(255.0)
    extra_t = [_as_mask_tensor(m) for m in out["masks"]] if len(extra) else []
    return img.float(), _as_mask_tensor(out["mask"]), extra_t


def make_sample(
    image: torch.Tensor, mask: torch.Tensor, label: int | torch.Tensor, has_mask: bool, index: int
) -> dict[str, torch.Tensor]:
    """The sample dict every dataset yields; the box is taken from the transformed mask."""
    box = masks_to_boxes(mask.numpy()[None])[0]
    return {
        "image": image,
        "label": (label if isinstance(label, torch.Tensor)
                  else torch.tensor(label, dtype=torch.int64)),
        "mask": mask,
        "has_mask": torch.tensor(has_mask, dtype=torch.bool),
        "box": torch.from_numpy(box),
        "index": torch.tensor(index, dtype=torch.int64),
    }
