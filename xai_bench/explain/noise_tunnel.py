"""Noise tunnel: SmoothGrad, SmoothGrad-squared and VarGrad around any pixel-attribution method.

A gradient map is noisy because the model's gradient fluctuates sharply between nearby inputs;
averaging the attributions of n copies of the image with Gaussian noise added shows what is
stable (Smilkov et al. 2017). With a_k the base method's (B, C, H, W) attributions of copy k:

  smoothgrad     mean_k a_k
  smoothgrad_sq  mean_k a_k^2
  vargrad        mean_k a_k^2 - (mean_k a_k)^2      (Adebayo et al. 2018)

captum's NoiseTunnel definitions; the channel reduction (`abs`, `channel_reduction`) is the base
method's and applies afterwards (SmoothGrad over saliency averages signed gradients, then takes
|.| and the channel max, as Smilkov et al. visualise it).

Noise: sigma = `stdev` x (max - min) of each image (`stdev_mode: range`, the paper's "noise
level", 10-20% recommended), or sigma = `stdev` itself (`absolute`, captum's `stdevs`). Copy k
of an image gets seeded_normal noise keyed by (seed, image id, k): the same whatever the batch.
The B x n noisy copies are processed `batch_size` at a time (any mix of images and samples).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from xai_bench.explain.base import METHODS, ExplainMethod, Passes, Target, register_method
from xai_bench.explain.gradients import CHANNEL_REDUCTIONS, PixelMethod, reduce_channels
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
STDEV_MODES = ("range", "absolute")
NOISE_STREAM = 0  # streams 0 .. n-1: the noise of copy k (shap.py uses other stream tags)


def image_ids(ids: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """The ids keying each image's draws: the caller's dataset ids, else batch positions."""
    if ids is None:
        return torch.arange(batch, device=device)
    ids = ids.view(-1)
    if ids.numel() != batch:
        raise ConfigError(f"ids has {ids.numel()} entries for a batch of {batch} images.")
    return ids


def noise_sigma(images: torch.Tensor, stdev: float, mode: str) -> torch.Tensor:
    """(B,) noise standard deviation per image: a fraction of its value range, or absolute."""
    if mode == "absolute":
        return torch.full((images.shape[0],), float(stdev), dtype=images.dtype,
                          device=images.device)
    flat = images.detach().flatten(1)
    return float(stdev) * (flat.max(dim=1).values - flat.min(dim=1).values)


def check_sampling(samples: int, stdev: float, stdev_mode: str, batch_size: int) -> None:
    """ConfigError for settings a sampling method cannot run with."""
    if int(samples) < 1:
        raise ConfigError(f"samples must be >= 1; got {samples}.")
    if not float(stdev) >= 0:
        raise ConfigError(f"stdev must be >= 0; got {stdev}.")
    if stdev_mode not in STDEV_MODES:
        raise ConfigError(f"stdev_mode must be one of {STDEV_MODES}; got {stdev_mode!r}.")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1 (perturbed images per pass); "
                          f"got {batch_size}.")


def sample_chunks(samples: int, batch: int, chunk: int,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(sample k, image i) index pairs of the samples x batch copies, `chunk` at a time,
    sample-major (all images of copy 0 first)."""
    total = samples * batch
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(start + chunk, total), device=device)
        yield idx // batch, idx % batch


def per_sample_draws(ks: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor,
                     draw: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Stack draw(ids of the rows, k) for a sample-major chunk: each (image, k) pair gets the
    draw keyed by its own id and k, whichever chunk or batch it lands in."""
    parts = []
    for k in torch.unique_consecutive(ks).tolist():
        sel = ks == k
        parts.append(draw(ids[rows[sel]], int(k)))
    return torch.cat(parts, dim=0)


class NoiseTunnel(ExplainMethod):
    """Noise tunnel around a registered pixel-attribution method (`base`): SmoothGrad (Smilkov
    et al. 2017), SmoothGrad-squared and VarGrad (Adebayo et al. 2018), captum's definitions.

    Settings: base (saliency | input_x_gradient | integrated_gradients | guided_backprop |
    deeplift | lrp, any method with channel-resolved attributions), base_settings (a dict for
    the base, e.g. {n_steps: 16}), samples (n), stdev, stdev_mode (range | absolute),
    batch_size (noisy copies per base call), seed; abs / channel_reduction default to the
    base's.
    """

    family: ClassVar[str] = "sampling"
    nt_type: ClassVar[str] = "smoothgrad"

    def __init__(self, target: Target = "predicted", upsample: str | None = None,
                 normalize: str = "minmax", relu: bool | None = None, eps: float = 1e-7,
                 base: str = "saliency", base_settings: dict[str, Any] | None = None,
                 samples: int = 50, stdev: float = 0.15, stdev_mode: str = "range",
                 batch_size: int = 32, seed: int = 0, abs: bool | None = None,
                 channel_reduction: str | None = None) -> None:
        super().__init__(target=target, upsample=upsample, normalize=normalize, relu=relu, eps=eps)
        check_sampling(samples, stdev, stdev_mode, batch_size)
        cls = METHODS.get(base)
        if cls is None or not issubclass(cls, PixelMethod) or cls.family == "sampling":
            usable = sorted(n for n, c in METHODS.items()
                            if issubclass(c, PixelMethod) and c.family != "sampling")
            raise ConfigError(f"{self.name} base={base!r} is not a pixel-attribution method; "
                              f"use one of {usable}.")
        self.base: PixelMethod = cls(**dict(base_settings or {}))
        self.models = cls.models  # the base decides which models can be explained
        self.samples, self.stdev, self.stdev_mode = int(samples), float(stdev), stdev_mode
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.abs = self.base.abs if abs is None else bool(abs)
        self.channel_reduction = channel_reduction or self.base.channel_reduction
        if self.channel_reduction not in CHANNEL_REDUCTIONS:
            raise ConfigError(f"channel_reduction must be one of {CHANNEL_REDUCTIONS}; "
                              f"got {self.channel_reduction!r}.")

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """n x the base's attribution (its own target-resolving forward excluded: the target is
        resolved once, by this method's clean forward) + that forward."""
        base = self.base.passes(model, height, width)
        own_target_forward = 0 if self.base.target_in_forward else 1
        return Passes(forwards=1 + self.samples * (base.forwards - own_target_forward),
                      backwards=self.samples * base.backwards)

    def moments(self, model: nn.Module, images: torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean_k a_k, mean_k a_k^2), each (B, C, H, W)."""
        x = images.detach()
        batch = x.shape[0]
        ids = image_ids(self.current_ids, batch, x.device)
        sigma = noise_sigma(x, self.stdev, self.stdev_mode)
        view = (-1,) + (1,) * (x.dim() - 1)
        target = target.to(x.device)
        total, total_sq = torch.zeros_like(x), torch.zeros_like(x)
        for ks, rows in sample_chunks(self.samples, batch, self.batch_size, x.device):
            noise = per_sample_draws(ks, rows, ids, lambda sel, k: seeded_normal(
                sel, tuple(x.shape[1:]), seed=self.seed, stream=NOISE_STREAM + k,
                device=x.device))
            noisy = x[rows] + sigma[rows].view(view) * noise.to(x.dtype)
            attr = self.base.attribute(model, noisy, target[rows]).detach()
            total.index_add_(0, rows, attr)
            total_sq.index_add_(0, rows, attr * attr)
        return total / self.samples, total_sq / self.samples

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) smoothed attributions (compared against captum NoiseTunnel)."""
        mean, mean_sq = self.moments(model, images, target)
        if self.nt_type == "smoothgrad":
            return mean
        if self.nt_type == "smoothgrad_sq":
            return mean_sq
        return mean_sq - mean * mean

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        return reduce_channels(self.attribute(model, images, target), self.channel_reduction,
                               self.abs)


@register_method("smoothgrad")
class SmoothGrad(NoiseTunnel):
    """SmoothGrad (Smilkov et al. 2017): the mean attribution over noisy copies."""

    nt_type = "smoothgrad"


@register_method("smoothgrad_sq")
class SmoothGradSquared(NoiseTunnel):
    """SmoothGrad-squared (Hooker et al. 2019): the mean squared attribution over noisy
    copies."""

    nt_type = "smoothgrad_sq"


@register_method("vargrad")
class VarGrad(NoiseTunnel):
    """VarGrad (Adebayo et al. 2018): the variance of the attributions over noisy copies."""

    nt_type = "vargrad"
