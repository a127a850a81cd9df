"""Default albumentations pipelines: used when a dataset config gives no transforms.

Albumentations transforms the image and its ROI mask together, so a flip or crop keeps the
mask aligned with the pixels the model sees. Every pipeline ends in ImageNet normalisation
(the study normalised every dataset with ImageNet statistics) and ToTensorV2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from xai_bench.utils.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "default_eval_transform",
    "default_train_transform",
    "imagenet_normalize",
    "resolve_transforms",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def imagenet_normalize() -> A.Normalize:
    """uint8 [0, 255] -> (x / 255 - mean) / std with ImageNet statistics."""
    return A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)


def default_train_transform(img_size: int) -> A.Compose:
    """Resize, flips, light affine and colour jitter: label-preserving for ROI-style images.

    Borders are reflected, not black, so the augmentation adds no new artificial edge a model
    could latch onto. The resize is a no-op when the image already has `img_size`.
    """
    return A.Compose(
        [
            A.Resize(img_size, img_size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-15, 15),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.5),
            imagenet_normalize(),
            ToTensorV2(),
        ]
    )


def default_eval_transform(img_size: int) -> A.Compose:
    """Deterministic: resize (no-op at `img_size`), normalise, to tensor."""
    return A.Compose([A.Resize(img_size, img_size), imagenet_normalize(), ToTensorV2()])


def _as_transform(value: Any, key: str) -> Any:
    if isinstance(value, Mapping) and "_target_" in value:
        # a config node that was not instantiated (e.g. _recursive_=False): build it here
        import hydra

        value = hydra.utils.instantiate(value)
    if not callable(value):
        raise ConfigError(
            f"transforms.{key} must be an albumentations Compose (or null for the default); "
            f"got {type(value).__name__}."
        )
    return value


def resolve_transforms(transforms: Mapping[str, Any] | None, img_size: int) -> tuple[Any, Any]:
    """(train, eval) transforms from a {train, eval} mapping; a missing or null entry -> default."""
    if transforms is None:
        transforms = {}
    if not isinstance(transforms, Mapping):
        raise ConfigError("transforms must be a mapping with keys train/eval; "
                          f"got {type(transforms).__name__}.")
    unknown = sorted(str(k) for k in transforms if k not in ("train", "eval"))
    if unknown:
        raise ConfigError(f"transforms has unknown keys {unknown}; expected 'train' and/or 'eval'.")
    train, evaluation = transforms.get("train"), transforms.get("eval")
    return (
        default_train_transform(img_size) if train is None else _as_transform(train, "train"),
        default_eval_transform(img_size) if evaluation is None
        else _as_transform(evaluation, "eval"),
    )
