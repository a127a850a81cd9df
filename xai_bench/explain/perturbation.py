"""Perturbation methods: RISE, LIME and KernelSHAP, batched on the model's device.

Each spends one clean forward (it resolves the target) and then scores perturbed copies of
the images, `batch_size` copies per forward, any mix of images and samples in a forward. The
score is the target's logit (`output: logit`) or softmax probability (`output: probability`).
Random draws come from xai_bench.utils.seeded_noise, keyed by (seed, image id): an image's map
is the same whichever batch or rank it is explained in. Without ids, image i of the batch is
id i.

RISE's masks are drawn per image id too (not one mask set shared by all images): each map's
Monte Carlo error is then independent of the other images', so a dataset-level score is not
biased by one unlucky mask set that every map would share.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from xai_bench.explain.base import ExplainMethod, Passes, register_method
from xai_bench.explain.feature_masks import check_feature_settings, feature_mask, patch_size_for
from xai_bench.explain.surrogate import (
    lime_samples,
    lime_weights,
    shap_samples,
    shap_weights,
    solve_dtype,
    weighted_linear_fit,
)
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_uniform

OUTPUTS = ("logit", "probability")
RISE_STREAM, LIME_STREAM, SHAP_STREAM = 11, 12, 13  # separate draws for the three methods


class PerturbationMethod(ExplainMethod):
    """Shared settings and the chunked forward of perturbed images (no gradients)."""

    family: ClassVar[str] = "perturbation"
    needs_grad = False
    target_in_forward = True
    default_upsample = "nearest"
    default_output: ClassVar[str] = "logit"

    def __init__(self, *args: Any, batch_size: int = 64, seed: int = 0,
                 output: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.output = output or self.default_output
        if self.batch_size < 1:
            raise ConfigError(f"{self.name} batch_size (perturbed images per forward) must be "
                              f">= 1; got {batch_size}.")
        if self.output not in OUTPUTS:
            raise ConfigError(f"{self.name} output must be one of {OUTPUTS}; got {output!r}.")

    def image_ids(self, images: torch.Tensor) -> torch.Tensor:
        if self.current_ids is not None:
            return self.current_ids.view(-1).long().cpu()
        return torch.arange(images.shape[0])

    def chunks(self, batch: int, copies: int,
               device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(image indices i, copy numbers k) of each forward's `batch_size` perturbed images,
        copy-major: a chunk mixes images, so small batches still fill a forward."""
        for start in range(0, batch * copies, self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, batch * copies), device=device)
            yield idx % batch, idx // batch

    def score(self, model: nn.Module, perturbed: torch.Tensor,
              target: torch.Tensor) -> torch.Tensor:
        """(n,) the target's logit or probability on n perturbed images."""
        logits = model(perturbed)
        if self.output == "probability":
            logits = logits.softmax(dim=-1)
        return logits.gather(1, target.view(-1, 1)).view(-1)


# ----------------------------------------------------------------------------------------------
# RISE


def reflect_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """numpy.pad's 'reflect' (mirror without repeating the edge), for any index."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    r = index % period
    return torch.where(r >= size, period - r, r)


def rise_interpolation(length: int, grid: int, cell: int) -> torch.Tensor:
    """(cell, length, grid): for each shift d in [0, cell), the weights that map a grid row
    (column) to the `length` pixels of the mask, d pixels into the upsampled canvas. The
    canvas is the grid stretched bilinearly over (grid + 1) * cell pixels (pixel-centre
    coordinates, numpy 'reflect' edges), as the paper's code does with skimage's resize
    (order=1, mode='reflect', no anti-aliasing). The weights of a pixel sum to 1."""
    pix = torch.arange(cell, dtype=torch.float64)[:, None] + torch.arange(length)[None, :]
    src = (pix + 0.5) * grid / ((grid + 1) * cell) - 0.5
    lo = src.floor()
    frac = src - lo
    weights = torch.zeros(cell, length, grid, dtype=torch.float64)
    for offset, part in ((0, 1 - frac), (1, frac)):
        cols = reflect_index((lo + offset).long(), grid)
        weights.scatter_add_(2, cols.unsqueeze(-1), part.unsqueeze(-1))
    return weights


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, rows: torch.Tensor,
               cols: torch.Tensor) -> torch.Tensor:
    """(n, H, W) masks from (n, s, s) binary grids and (n, 2) integer shifts:
    rows[dy] @ grid @ cols[dx]^T, the cropped window of the upsampled grid."""
    return rows[shifts[:, 0]] @ grids @ cols[shifts[:, 1]].transpose(1, 2)


@register_method("rise")
class RISE(PerturbationMethod):
    """RISE (Petsiuk, Das & Saenko, 2018): map = sum_i f_t(x * M_i) M_i / (N p) over N random
    masks M_i: an s x s grid of cells on with probability p, stretched bilinearly over
    (s + 1) * ceil(H / s) pixels and cropped at a random shift below ceil(H / s). The paper
    scores the class probability (`output: probability`)."""

    default_upsample = "bilinear"
    default_output = "probability"

    def __init__(self, *args: Any, n_masks: int = 4000, grid_size: int = 7,
                 p: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_masks, self.grid_size, self.p = int(n_masks), int(grid_size), float(p)
        if self.n_masks < 1:
            raise ConfigError(f"rise n_masks must be >= 1; got {n_masks}.")
        if self.grid_size < 1:
            raise ConfigError(f"rise grid_size must be >= 1 cell; got {grid_size}.")
        if not 0 < self.p <= 1:
            raise ConfigError(f"rise p (the probability a cell is kept) must be in (0, 1]; "
                              f"got {p}.")

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """The clean forward and one forward per mask."""
        return Passes(forwards=self.n_masks + 1)

    def draws(self, ids: torch.Tensor, height: int, width: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, s, s) binary grids and (B, N, 2) shifts, seeded per image id."""
        s = self.grid_size
        cell = (-(-height // s), -(-width // s))
        u = seeded_uniform(ids, (self.n_masks, s * s + 2), seed=self.seed, stream=RISE_STREAM,
                           device=device)
        grids = (u[..., : s * s] < self.p).view(ids.numel(), self.n_masks, s, s)
        shifts = torch.stack([(u[..., s * s + a] * cell[a]).long().clamp(max=cell[a] - 1)
                              for a in (0, 1)], dim=-1)
        return grids, shifts

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        s, dtype, device = self.grid_size, images.dtype, images.device
        grids, shifts = self.draws(self.image_ids(images), height, width, device)
        grids = grids.to(dtype)
        rows = rise_interpolation(height, s, -(-height // s)).to(device, dtype)
        cols = rise_interpolation(width, s, -(-width // s)).to(device, dtype)
        saliency = torch.zeros(batch, height, width, dtype=solve_dtype(device), device=device)
        model(images)  # the clean forward: it resolves the target in place (base class hook)
        for i, k in self.chunks(batch, self.n_masks, device):
            masks = rise_masks(grids[i, k], shifts[i, k], rows, cols)
            scores = self.score(model, images[i] * masks.unsqueeze(1), target[i])
            saliency.index_add_(0, i, (scores.view(-1, 1, 1) * masks).to(saliency.dtype))
        return (saliency / (self.n_masks * self.p)).to(dtype)


# ----------------------------------------------------------------------------------------------
# LIME and KernelSHAP


class SurrogateMethod(PerturbationMethod):
    """A weighted linear surrogate fitted to the scores of images with features switched off
    (set to `baseline`); the map shows each feature's coefficient."""

    def __init__(self, *args: Any, samples: int = 1000, features: str = "patches",
                 patch_size: int | None = None, n_segments: int = 50,
                 compactness: float = 10.0, slic_sigma: float = 1.0, baseline: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.samples, self.features = int(samples), features
        self.patch_size = None if patch_size is None else int(patch_size)
        self.n_segments, self.compactness = int(n_segments), float(compactness)
        self.slic_sigma, self.baseline = float(slic_sigma), float(baseline)
        check_feature_settings(features, patch_size, n_segments, compactness, slic_sigma)
        if self.samples < 2:
            raise ConfigError(f"{self.name} samples must be >= 2; got {samples}.")

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """The clean forward and one forward per sample."""
        return Passes(forwards=self.samples + 1)

    def feature_mask(self, model: nn.Module,
                     images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) feature indices and (B,) feature counts."""
        return feature_mask(model, images, self.features, self.patch_size, self.n_segments,
                            self.compactness, self.slic_sigma)

    def sample(self, ids: torch.Tensor, counts: torch.Tensor,
               device: torch.device) -> torch.Tensor:
        """(B, S, M) binary samples: which features stay on."""
        raise NotImplementedError

    def weights(self, z: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S) regression weight of each sample."""
        raise NotImplementedError

    def fit(self, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return weighted_linear_fit(z, y, w)[0]

    def coefficients(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                     mask: torch.Tensor, counts: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M) surrogate coefficients for `mask`, and the (B, S, M) samples behind them."""
        z = self.sample(self.image_ids(images), counts, images.device)
        flat = mask.flatten(1)
        zx = z.to(images.dtype)

        y = torch.empty(z.shape[:2], dtype=solve_dtype(images.device), device=images.device)
        model(images)  # the clean forward: it resolves the target in place (base class hook)
        for i, k in self.chunks(images.shape[0], self.samples, images.device):
            keep = zx[i, k].gather(1, flat[i]).view(i.numel(), 1, *images.shape[-2:])
            perturbed = images[i] * keep + self.baseline * (1 - keep)
            y[i, k] = self.score(model, perturbed, target[i]).to(y.dtype)
        return self.fit(z, y, self.weights(z, images, mask)), z

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        mask, counts = self.feature_mask(model, images)
        coef = self.coefficients(model, images, target, mask, counts)[0].to(images.dtype)
        if self.features == "patches":
            ph, pw = patch_size_for(model, self.patch_size)
            if height % ph == 0 and width % pw == 0:  # one value per patch: the feature grid
                return coef.view(batch, height // ph, width // pw)
        return coef.gather(1, mask.flatten(1)).view(batch, height, width)


@register_method("lime")
class LIME(SurrogateMethod):
    """LIME (Ribeiro, Singh & Guestrin, 2016) over patches or superpixels: features on with
    probability 1/2, samples weighted by exp(-d^2 / (2 kernel_width^2)) with d the cosine
    distance between the image and the perturbed image (captum's default kernel), and a
    weighted least-squares fit with intercept (`alpha` > 0: ridge). Not captum's default
    Lasso(alpha=0.01): an L1 penalty on logits zeroes features by the logits' scale, which
    differs between models, and LIME's own package fits ridge."""

    def __init__(self, *args: Any, kernel_width: float = 1.0, alpha: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kernel_width, self.alpha = float(kernel_width), float(alpha)
        if not self.kernel_width > 0:
            raise ConfigError(f"lime kernel_width must be > 0; got {kernel_width}.")
        if self.alpha < 0:
            raise ConfigError(f"lime alpha (ridge penalty) must be >= 0; got {alpha}.")

    def sample(self, ids: torch.Tensor, counts: torch.Tensor,
               device: torch.device) -> torch.Tensor:
        return lime_samples(ids, counts, self.samples, self.seed, LIME_STREAM, device)

    def weights(self, z: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return lime_weights(z, images, mask, self.baseline, self.kernel_width)

    def fit(self, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return weighted_linear_fit(z, y, w, self.alpha)[0]


@register_method("kernel_shap")
class KernelSHAP(SurrogateMethod):
    """KernelSHAP (Lundberg & Lee, 2017) over patches or superpixels: coalitions sampled from
    the Shapley kernel (the full and empty coalitions first, weighted 1e6), unweighted
    otherwise, and a least-squares fit with intercept: the coefficients estimate the
    features' Shapley values, summing to about f(x) - f(baseline)."""

    def sample(self, ids: torch.Tensor, counts: torch.Tensor,
               device: torch.device) -> torch.Tensor:
        return shap_samples(ids, counts, self.samples, self.seed, SHAP_STREAM, device)

    def weights(self, z: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return shap_weights(z.shape[1], z.shape[0], z.device)
