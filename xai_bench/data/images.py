"""Image files -> uint8 RGB arrays, shared by the dataset reader and the prepare scripts.

numpy + PIL only (no torch), so the prepare scripts stay quick to start. 16-bit and float
images (MRI, X-ray exports, DICOM pixel data) are min-max scaled per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["pil_to_rgb", "read_rgb", "to_uint8_rgb"]


def to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """Min-max scale an (H, W), (H, W, 1) or (H, W, C) array to uint8 (H, W, 3)."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    lo, hi = float(arr.min()), float(arr.max())
    scaled = ((arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)) + 0.5
    out = scaled.astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out[..., :3]


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3), a writable copy (ToTensorV2 shares the array's memory)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return to_uint8_rgb(np.asarray(image, dtype=np.float32))
    return np.array(image.convert("RGB"))


def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) from any file PIL reads."""
    with Image.open(path) as image:
        image.load()
        return pil_to_rgb(image)
