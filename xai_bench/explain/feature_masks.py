"""Feature masks for surrogate-model explanations (LIME, KernelSHAP): which pixels switch on
and off together.

A feature mask is a (B, H, W) long tensor of feature indices 0..M_i - 1 per image, with the
count M_i of each image beside it. Two kinds:

  patches      a regular grid of `patch_size` pixel squares; on a ViT by default its own token
               grid (one feature per patch token), elsewhere 16 px squares (ViT-B/16's grid)
  superpixels  scikit-image SLIC (Achanta et al., 2012) per image, on the image min-max
               rescaled to [0, 1] (SLIC's colour distance assumes that range; the model's
               normalised pixels are not in it); labels renumbered 0..M_i - 1

SLIC runs on the CPU one image at a time (scikit-image has no batched version); it costs far
less than the hundreds of model forwards that use its mask.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from xai_bench.explain.vit_geometry import is_vit
from xai_bench.utils.errors import ConfigError

FEATURE_KINDS = ("patches", "superpixels")
CNN_PATCH = 16  # pixels, when a CNN is explained over patches without a patch_size


def patch_size_for(model: nn.Module, patch_size: int | None) -> tuple[int, int]:
    """The patch side in pixels: the setting, else the ViT's own patch, else `CNN_PATCH`."""
    if patch_size is not None:
        return int(patch_size), int(patch_size)
    if is_vit(model):
        size = model.patch_embed.patch_size
        ph, pw = (size, size) if isinstance(size, int) else size
        return int(ph), int(pw)
    return CNN_PATCH, CNN_PATCH


def patch_mask(batch: int, height: int, width: int, patch: tuple[int, int],
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) patch indices in row-major order (a last row / column of partial patches when
    the side is not a multiple of the patch) and the (B,) counts."""
    ph, pw = patch
    gh, gw = math.ceil(height / ph), math.ceil(width / pw)
    rows = torch.arange(height, device=device) // ph
    cols = torch.arange(width, device=device) // pw
    mask = (rows[:, None] * gw + cols[None, :]).expand(batch, height, width).contiguous()
    return mask, torch.full((batch,), gh * gw, dtype=torch.long, device=device)


def superpixel_mask(images: torch.Tensor, n_segments: int, compactness: float,
                    sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) SLIC superpixel indices 0..M_i - 1 and the (B,) counts M_i."""
    from skimage.segmentation import slic

    arr = images.detach().to("cpu", torch.float64).numpy()
    masks, counts = [], []
    for img in arr:  # SLIC is CPU-only and unbatched
        lo, hi = img.min(), img.max()
        scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        if scaled.shape[0] == 1:
            labels = slic(scaled[0], n_segments=n_segments, compactness=compactness,
                          sigma=sigma, start_label=0, channel_axis=None)
        else:
            labels = slic(np.moveaxis(scaled, 0, -1), n_segments=n_segments,
                          compactness=compactness, sigma=sigma, start_label=0,
                          channel_axis=-1, convert2lab=scaled.shape[0] == 3)
        _, dense = np.unique(labels, return_inverse=True)
        masks.append(dense.reshape(labels.shape))
        counts.append(int(dense.max()) + 1)
    mask = torch.from_numpy(np.stack(masks)).long().to(images.device)
    return mask, torch.tensor(counts, dtype=torch.long, device=images.device)


def feature_mask(model: nn.Module, images: torch.Tensor, features: str,
                 patch_size: int | None = None, n_segments: int = 50,
                 compactness: float = 10.0, sigma: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, H, W) mask and (B,) feature counts for `features` (patches | superpixels)."""
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    if features == "patches":
        return patch_mask(batch, height, width, patch_size_for(model, patch_size), images.device)
    if features == "superpixels":
        return superpixel_mask(images, n_segments, compactness, sigma)
    raise ConfigError(f"features must be one of {FEATURE_KINDS}; got {features!r}.")


def check_feature_settings(features: str, patch_size: int | None, n_segments: int,
                           compactness: float, sigma: float) -> None:
    """Refuse settings that cannot make a mask, with one line each."""
    if features not in FEATURE_KINDS:
        raise ConfigError(f"features must be one of {FEATURE_KINDS}; got {features!r}.")
    if patch_size is not None and int(patch_size) < 1:
        raise ConfigError(f"patch_size must be >= 1 pixel or null; got {patch_size}.")
    if int(n_segments) < 1:
        raise ConfigError(f"n_segments (SLIC) must be >= 1; got {n_segments}.")
    if not float(compactness) > 0:
        raise ConfigError(f"compactness (SLIC) must be > 0; got {compactness}.")
    if float(sigma) < 0:
        raise ConfigError(f"slic_sigma must be >= 0; got {sigma}.")
