"""Overlay figures: the image, the map, and the map blended over the image with the ROI outline.

Drawn with matplotlib's Agg backend (no display needed, safe in DDP workers and on clusters).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["denormalize", "save_overlay"]


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(C, H, W) normalised tensor -> (H, W, 3) float image in [0, 1] for display."""
    img = image.detach().float().cpu()
    img = img * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    heatmap: torch.Tensor,
    mask: torch.Tensor | None = None,
    title: str = "",
    alpha: float = 0.5,
) -> Path:
    """Three panels (image | map | blend with the ROI outline in white) as one PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = heatmap.detach().float().cpu().numpy()
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9), dpi=100)
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(values, cmap="jet", vmin=0.0,
                   vmax=max(1.0, float(np.nanmax(values)) if values.size else 1.0))
    axes[1].set_title("map", fontsize=8)
    axes[2].imshow(image)
    axes[2].imshow(values, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    if mask is not None:
        roi = (mask.detach().cpu().numpy() > 0).astype(float)
        if roi.any():
            axes[2].contour(roi, levels=[0.5], colors="white", linewidths=1.2)
    axes[2].set_title("map over image, ROI outlined", fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    # DDP ranks may both draw an image the sampler padded with: write, then rename atomically
    partial = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(partial)
    plt.close(fig)
    os.replace(partial, path)
    return path
