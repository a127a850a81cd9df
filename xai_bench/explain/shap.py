"""Expected-gradient attributions: GradientSHAP and DeepLiftSHAP, against a distribution of
baselines (references) instead of IG's single one.

GradientSHAP (Lundberg & Lee 2017; captum's GradientShap, the "expected gradients" of Erion et
al.): for sample k of an image x, draw a baseline b_k from the image's baselines, an
interpolation point alpha_k ~ U[0, 1) and Gaussian noise e_k; with x_k = x + e_k,
  a = mean_k (x_k - b_k) * grad f_t(b_k + alpha_k (x_k - b_k)).
DeepLiftSHAP (Lundberg & Lee 2017; captum's DeepLiftShap): the DeepLIFT attributions of x
against each of its baselines, averaged (CNNs: the `deeplift` method's rules, through
explain.deeplift.deeplift_sum: one forward of the images, then the image-baseline pairs batched,
`batch_size` reference images per forward and backward).

Baselines (`baselines` setting), per image, so maps never depend on the batch:
  zero     the constant 0 (the dataset mean of normalised images); one baseline
  uniform  `n_baselines` images of uniform noise in [min, max] of the image
  blur     the image blurred by a Gaussian of `blur_sigma` pixels (replicate padding); one
The noise sigma is `stdev` x the image's value range (`stdev_mode: range`) or `stdev` itself
(`absolute`, captum's `stdevs`; 0 by default, as captum). Every draw is seeded by (seed, image
id, stream): the noise of sample k, alpha_k, the baseline index of sample k, uniform baseline j.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.explain.base import Passes, register_method
from xai_bench.explain.deeplift import check_deeplift_model, deeplift_sum
from xai_bench.explain.gradients import PixelMethod, _selected, frozen_params
from xai_bench.explain.noise_tunnel import (
    check_sampling,
    image_ids,
    noise_sigma,
    per_sample_draws,
    sample_chunks,
)
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal, seeded_uniform

BASELINES = ("zero", "uniform", "blur")
# stream tags (draw kind << 32 | index): noise of sample k, alpha and baseline index of every
# sample, uniform baseline j
NOISE, ALPHA, PICK, UNIFORM = (tag << 32 for tag in (1, 2, 3, 4))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius ceil(3 sigma), replicate padding), per channel."""
    radius = max(1, math.ceil(3 * sigma))
    pos = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (pos / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def make_baselines(images: torch.Tensor, kind: str, n_baselines: int, blur_sigma: float,
                   ids: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, n, C, H, W) the baselines of every image (n = 1 for zero and blur)."""
    x = images.detach()
    if kind == "zero":
        return torch.zeros_like(x).unsqueeze(1)
    if kind == "blur":
        return gaussian_blur(x, blur_sigma).unsqueeze(1)
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = flat.max(dim=1).values.view(-1, 1, 1, 1) - lo
    return torch.stack([lo + span * seeded_uniform(ids, tuple(x.shape[1:]), seed=seed,
                                                   stream=UNIFORM + j, device=x.device).to(x.dtype)
                        for j in range(n_baselines)], dim=1)


class BaselineDistribution(PixelMethod):
    """Shared settings: baselines (zero | uniform | blur), n_baselines, blur_sigma, batch_size
    (perturbed images per pass), seed."""

    family: ClassVar[str] = "sampling"

    def __init__(self, *args: Any, baselines: str = "uniform", n_baselines: int = 8,
                 blur_sigma: float = 8.0, batch_size: int = 32, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if baselines not in BASELINES:
            raise ConfigError(f"{self.name} baselines must be one of {BASELINES}; "
                              f"got {baselines!r}.")
        if int(n_baselines) < 1:
            raise ConfigError(f"n_baselines must be >= 1; got {n_baselines}.")
        if not float(blur_sigma) > 0:
            raise ConfigError(f"blur_sigma must be > 0 (pixels); got {blur_sigma}.")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1 (perturbed images per pass); "
                              f"got {batch_size}.")
        self.baselines, self.blur_sigma = baselines, float(blur_sigma)
        self.n_baselines = int(n_baselines) if baselines == "uniform" else 1
        self.batch_size, self.seed = int(batch_size), int(seed)

    def baseline_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, n_baselines, C, H, W), keyed by the images' ids."""
        ids = image_ids(self.current_ids, images.shape[0], images.device)
        return make_baselines(images, self.baselines, self.n_baselines, self.blur_sigma, ids,
                              self.seed)


@register_method("gradient_shap")
class GradientShap(BaselineDistribution):
    """GradientSHAP (Lundberg & Lee 2017), captum's GradientShap: expected input-minus-baseline
    x gradient at random points between a random baseline and the (noisy) image.

    Settings: samples, stdev, stdev_mode (range | absolute) besides the baselines'."""

    def __init__(self, *args: Any, samples: int = 20, stdev: float = 0.0,
                 stdev_mode: str = "range", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_sampling(samples, stdev, stdev_mode, self.batch_size)
        self.samples, self.stdev, self.stdev_mode = int(samples), float(stdev), stdev_mode

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        return Passes(forwards=1 + self.samples, backwards=self.samples)

    def draws(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alphas (B, n), baseline indices (B, n) long) of every sample of every image."""
        ids = image_ids(self.current_ids, images.shape[0], images.device)
        shape = (self.samples,)
        alphas = seeded_uniform(ids, shape, seed=self.seed, stream=ALPHA, device=images.device)
        picks = seeded_uniform(ids, shape, seed=self.seed, stream=PICK, device=images.device)
        index = (picks * self.n_baselines).long().clamp(max=self.n_baselines - 1)
        return alphas.to(images.dtype), index

    def noise(self, images: torch.Tensor, ks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), C, H, W) unit Gaussian noise of the (sample, image) pairs, or zeros."""
        if self.stdev == 0:
            return torch.zeros_like(images[rows])
        ids = image_ids(self.current_ids, images.shape[0], images.device)
        return per_sample_draws(ks, rows, ids, lambda sel, k: seeded_normal(
            sel, tuple(images.shape[1:]), seed=self.seed, stream=NOISE + k,
            device=images.device)).to(images.dtype)

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        x = images.detach()
        bases = self.baseline_images(x)
        alphas, index = self.draws(x)
        sigma = noise_sigma(x, self.stdev, self.stdev_mode)
        view = (-1,) + (1,) * (x.dim() - 1)
        target = target.to(x.device)
        total = torch.zeros_like(x)
        with frozen_params(model):
            for ks, rows in sample_chunks(self.samples, x.shape[0], self.batch_size, x.device):
                noisy = x[rows] + sigma[rows].view(view) * self.noise(x, ks, rows)
                base = bases[rows, index[rows, ks]]
                alpha = alphas[rows, ks].view(view)
                points = (alpha * noisy + (1 - alpha) * base).requires_grad_(True)
                (grad,) = torch.autograd.grad(_selected(model(points), target[rows]), points)
                total.index_add_(0, rows, (noisy - base) * grad)
        return total / self.samples


@register_method("deeplift_shap")
class DeepLiftShap(BaselineDistribution):
    """DeepLiftSHAP (Lundberg & Lee 2017), captum's DeepLiftShap: the mean of the DeepLIFT
    attributions (the `deeplift` method's Rescale rules) of the image against each of its
    baselines; CNNs only. No random draws beyond the baselines themselves (uniform)."""

    models: ClassVar[tuple[str, ...]] = ("cnn",)
    target_in_forward = True  # the images' forward (no graph) comes first and gives the target

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """One forward of the images (it resolves the target too), then per baseline one forward
        of the reference (with the graph) and one backward (explain.deeplift)."""
        return Passes(forwards=1 + self.n_baselines, backwards=self.n_baselines)

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        check_deeplift_model(model, "deeplift_shap", "gradient_shap", "gradient_shap")
        x = images.detach()
        bases = self.baseline_images(x)
        return deeplift_sum(model, x, lambda: self.chunks(bases), target) / self.n_baselines

    def chunks(self, bases: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """At most `batch_size` references per pass, in blocks of whole baselines (baseline k of
        every image) or, when one baseline of every image is too many, of image ranges."""
        batch, n = bases.shape[:2]
        if self.batch_size >= batch:
            per = self.batch_size // batch
            for k in range(0, n, per):
                yield slice(0, batch), bases[:, k:k + per].transpose(0, 1).flatten(0, 1)
            return
        for k in range(n):
            for i in range(0, batch, self.batch_size):
                yield slice(i, i + self.batch_size), bases[i:i + self.batch_size, k]
