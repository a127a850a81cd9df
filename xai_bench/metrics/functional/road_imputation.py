"""Noisy linear imputation (Rong et al. 2022, ROAD): removed pixels are replaced by the solution
of a sparse linear system that makes each one the weighted mean of its 8 neighbours, plus a
little Gaussian noise.

Why an imputation and not a constant fill: a constant patch carries its own shape, so a model
can read WHICH pixels were removed from the hole's outline (class information leaks through the
mask); the imputed values continue the image's smooth background instead.

The system (per image; all channels share it): for every removed pixel i,

    sum_{j in N(i)} w_ij (v_j - v_i) = 0,   w = 1/6 for the 4 edge neighbours, 1/12 for the 4
    diagonal ones, N(i) the neighbours inside the image (out-of-frame weights are dropped),

where v_j is the kept value x_j for a kept neighbour and an unknown for a removed one. Each
removed component borders a kept pixel as long as one pixel is kept, so the system is
non-singular for any removal of fewer than all pixels. The noise is added after the solve:
v_i + noise * z_i with z ~ N(0, 1) per channel and pixel, drawn by `seeded_normal`.

Cost: a sparse direct solve (scipy SuperLU) on the CPU with one unknown per removed pixel; the
images of a batch are solved together as one block-diagonal system (one factorisation call per
perturbation step, all channels as right-hand sides). At 224 px with 90 % removed that is
~45 000 unknowns per image, a fraction of a second each on one core: ROAD is CPU-bound there,
not model-bound. This file is the same system as quantus 0.6's `noisy_linear_imputation`
(adapted from the authors' road_evaluation code), vectorised (no per-pixel Python).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve
from torch import Tensor

__all__ = ["NEIGHBOUR_WEIGHTS", "noisy_linear_imputation"]

# (row offset, column offset, weight): the 8-neighbourhood of ROAD's imputer
NEIGHBOUR_WEIGHTS = (
    (1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12),
    (0, -1, 1 / 6), (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6),
)


def noisy_linear_imputation(images: Tensor, removed: Tensor, noise: Tensor | None = None) -> Tensor:
    """Replace the removed pixels of every image by the imputation above.

    Args:
        images: (B, C, H, W) inputs (any device; solved in float64 on the CPU).
        removed: (B, H, W) bool, True = the pixel (all channels) is imputed; every image must
            keep at least one pixel if it removes any.
        noise: (B, C, H, W) noise already scaled (noise std x N(0, 1) draws), added to the
            imputed pixels only; None = no noise.

    Returns:
        (B, C, H, W) on the device and dtype of `images`: kept pixels unchanged.
    """
    if images.dim() != 4 or removed.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"expected images (B, C, H, W) and removed (B, H, W); "
                         f"got {tuple(images.shape)} and {tuple(removed.shape)}.")
    batch, channels, height, width = images.shape
    n_pix = height * width
    mask = removed.detach().cpu().numpy().reshape(batch * n_pix).astype(bool)
    n_vars = int(mask.sum())
    if n_vars == 0:
        return images.clone()
    per_image = mask.reshape(batch, n_pix).sum(1)
    if (per_image == n_pix).any():
        raise ValueError("noisy linear imputation needs at least one kept pixel per image.")
    # pixel-major values: row b * HW + p holds the C channels of pixel p of image b
    values = images.detach().cpu().double().numpy().reshape(batch, channels, n_pix)
    values = values.transpose(0, 2, 1).reshape(batch * n_pix, channels)
    flat = np.flatnonzero(mask)  # global pixel index of each unknown, image-major
    var_of = np.full(batch * n_pix, -1, dtype=np.int64)
    var_of[flat] = np.arange(n_vars)
    image_of, pixel = np.divmod(flat, n_pix)
    row, col = np.divmod(pixel, width)
    diagonal = np.ones(n_vars)
    rhs = np.zeros((n_vars, channels))
    a_rows, a_cols, a_vals = [], [], []
    for d_row, d_col, weight in NEIGHBOUR_WEIGHTS:
        r2, c2 = row + d_row, col + d_col
        inside = (r2 >= 0) & (r2 < height) & (c2 >= 0) & (c2 < width)
        diagonal[~inside] -= weight  # out-of-frame neighbours drop out of the mean
        var = np.flatnonzero(inside)
        neighbour = image_of[var] * n_pix + r2[var] * width + c2[var]
        unknown = mask[neighbour]
        a_rows.append(var[unknown])
        a_cols.append(var_of[neighbour[unknown]])
        a_vals.append(np.full(int(unknown.sum()), weight))
        rhs[var[~unknown]] -= weight * values[neighbour[~unknown]]  # unique rows per offset
    a_rows.append(np.arange(n_vars))
    a_cols.append(np.arange(n_vars))
    a_vals.append(-diagonal)
    system = sp.csc_matrix((np.concatenate(a_vals), (np.concatenate(a_rows),
                                                     np.concatenate(a_cols))),
                           shape=(n_vars, n_vars))
    solution = np.asarray(spsolve(system, rhs)).reshape(n_vars, channels)
    if noise is not None:
        scaled = noise.detach().cpu().double().numpy().reshape(batch, channels, n_pix)
        solution = solution + scaled.transpose(0, 2, 1).reshape(batch * n_pix, channels)[flat]
    values[flat] = solution
    out = values.reshape(batch, n_pix, channels).transpose(0, 2, 1).reshape(images.shape)
    return torch.from_numpy(np.ascontiguousarray(out)).to(images.device, images.dtype)
