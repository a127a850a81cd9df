"""ATCON's attention-consistency loss (docs/atcon.md), differentiable to second order.

Two attribution methods should agree: Grad-CAM of x, and Grad-CAM of x masked by where Guided
Backprop says the evidence is. Both CAMs are built with create_graph=True, so the loss trains the
weights through d(CAM)/d(weights), not only through the activations:

  t    = argmax model(x)                              (no label used)
  cam  = GradCAM(x, t)        feature resolution, no ReLU, no min-max
  gb   = minmax(sum_c |GuidedBackprop(x, t)|)         (differentiable too)
  T    = sigmoid(w * (gb - (mean(gb) + std(gb) / 2)))  per image; w = mask intensity
  cam' = GradCAM(T * x, t)
  loss = -Pearson(sigmoid(z(cam)), sigmoid(z(cam')))  z = per-image standardisation, batch mean

gb is min-max normalised per image before the threshold (`gb_normalise: minmax`): raw guided
gradients are ~1e-3, so sigmoid(w * (gb - thr)) would be ~0.5 everywhere at the study's w = 8
(a uniform half-dimming, after which both CAMs agree trivially). `none` keeps the raw values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.explain.cam import gradcam_with_graph
from xai_bench.explain.gradients import guided_backprop_differentiable
from xai_bench.explain.vit_geometry import explicit_attention
from xai_bench.utils.errors import ConfigError

SIMILARITIES = ("pearson", "ssim")
GB_NORMALISATIONS = ("minmax", "none")
RESOLUTIONS = ("feature", "input")
_EPS = 1e-8


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-image z-score over everything but the batch dimension."""
    flat = x.flatten(1)
    z = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + _EPS)
    return z.view_as(x)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson correlation of each pair of images."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + _EPS)


def global_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) single-window SSIM of each pair: feature-resolution maps are too small for the usual
    11x11 Gaussian window."""
    a, b = a.flatten(1), b.flatten(1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = a.mean(1), b.mean(1)
    var_a, var_b = a.var(1, unbiased=False), b.var(1, unbiased=False)
    cov = ((a - mu_a[:, None]) * (b - mu_b[:, None])).mean(1)
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2))
            / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1], differentiable."""
    flat = x.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low + _EPS)).view_as(x)


def soft_mask(gb: torch.Tensor, intensity: float) -> torch.Tensor:
    """(B, H, W) soft mask of the pixels whose guided-backprop evidence exceeds mean + std / 2."""
    flat = gb.flatten(1)
    threshold = (flat.mean(1) + flat.std(1) / 2).view(-1, *([1] * (gb.dim() - 1)))
    return torch.sigmoid(intensity * (gb - threshold))


@dataclass
class ConsistencyResult:
    loss: torch.Tensor  # scalar, to minimise
    similarity: torch.Tensor  # (B,) per image (Pearson or SSIM)
    target: torch.Tensor  # (B,) the explained class (argmax)
    mask: torch.Tensor  # (B, H, W) the soft mask T


def check_consistency_options(similarity: str, resolution: str, mask_intensity: float,
                              gb_normalise: str = "minmax") -> None:
    if similarity not in SIMILARITIES:
        raise ConfigError(
            f"objective.similarity must be one of {SIMILARITIES}; got {similarity!r}.")
    if resolution not in RESOLUTIONS:
        raise ConfigError(f"objective.resolution must be one of {RESOLUTIONS}; got {resolution!r}.")
    if gb_normalise not in GB_NORMALISATIONS:
        raise ConfigError(f"objective.gb_normalise must be one of {GB_NORMALISATIONS}; "
                          f"got {gb_normalise!r}.")
    if not float(mask_intensity) > 0:
        raise ConfigError(f"objective.mask_intensity must be > 0 (the study: 8; later 40 or 100); "
                          f"got {mask_intensity}.")


def consistency_loss(
    model: nn.Module,
    images: torch.Tensor,
    mask_intensity: float = 8.0,
    similarity: str = "pearson",
    resolution: str = "feature",
    layer: str | nn.Module | None = None,
    gelu_rule: bool = True,
    gb_normalise: str = "minmax",
) -> ConsistencyResult:
    """ATCON's loss on a batch (labels unused). `resolution`: compare the CAMs at the feature grid
    (the study) or after bilinear upsampling to the input size; `similarity`: pearson (loss =
    -Pearson, the study) or ssim (loss = 1 - SSIM). `layer`: the CAM layer (default: the last conv
    stage of a CNN, blocks[-1].norm1 tokens of a ViT)."""
    check_consistency_options(similarity, resolution, mask_intensity, gb_normalise)
    with explicit_attention(model):
        cam, target = gradcam_with_graph(model, images, "predicted", layer)
        gb = guided_backprop_differentiable(model, images, target, abs=True, gelu_rule=gelu_rule)
        if gb_normalise == "minmax":
            gb = minmax(gb)
        mask = soft_mask(gb, float(mask_intensity))
        cam_m, _ = gradcam_with_graph(model, mask.unsqueeze(1) * images, target, layer)
    if resolution == "input":
        size = images.shape[-2:]
        cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear",
                            align_corners=False).squeeze(1)
        cam_m = F.interpolate(cam_m.unsqueeze(1), size=size, mode="bilinear",
                              align_corners=False).squeeze(1)
    a, b = torch.sigmoid(standardise(cam)), torch.sigmoid(standardise(cam_m))
    if similarity == "pearson":
        sim = pearson(a, b)
        loss = -sim.mean()
    else:
        sim = global_ssim(a, b)
        loss = (1 - sim).mean()
    return ConsistencyResult(loss=loss, similarity=sim.detach(), target=target, mask=mask.detach())
