"""Batched axiomatic metrics: Non-Sensitivity, Input Invariance and Completeness.

Definitions (images x (B, C, H, W), maps A (B, H, W) of the target class y (B,), p = softmax
probability of y, f = logit of y):

- Non-Sensitivity (Nguyen & Martinez 2020): the pixels are cut into groups of
  `features_in_step` consecutive pixels (row-major; 1 = every pixel, quantus' setting); group g
  is removed (every channel of its pixels set to the fill) on its own, from the original image.
  The model ignores g when |p(x_g) - p(x)| < eps; the map ignores it when |A| < eps on all its
  pixels. Score = the number of groups where exactly one of the two holds (a zero attribution
  on a feature the model uses, or an attribution on one it ignores). Lower is better.
- Input Invariance (Kindermans et al. 2017): x' = x + m (a constant shift) explained on a copy of
  the model whose first affine layer (Conv2d / Linear) absorbs the shift in its bias,
  b' = b - W m, so that f'(x') = f(x) everywhere in the network. W m is computed per output
  position: with zero padding it is smaller at the borders, where a single bias per channel
  (quantus) would not cancel it. The map should not change: 1 if
  |A - A'| <= atol + rtol |A'| at every pixel (numpy's isclose), else 0. Higher is better.
- Completeness (Sundararajan et al. 2017): the attributions should add up to the change of the
  output from a baseline x0 to x: sum(A) = f(x) - f(x0). Scored on the method's raw signed map
  (before ReLU, upsampling and normalisation). 1 if |sum(A) - d| <= atol + rtol |d|, else 0;
  the gap |sum(A) - d| is reported too.

Fills / baselines (per image, over all channels and pixels, as quantus' `perturb_baseline`):
black = min x, white = max x, mean = mean x, zero = 0.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from xai_bench.metrics.functional.perturbed import step_scores, target_prob
from xai_bench.utils.errors import ConfigError

__all__ = [
    "FILLS",
    "OUTPUTS",
    "completeness",
    "fill_value",
    "first_affine_layer",
    "isclose_all",
    "non_sensitivity",
    "shift_absorbing_model",
]

FILLS = ("black", "white", "mean", "zero")
OUTPUTS = ("logit", "probability")


def fill_value(images: Tensor, fill: str) -> Tensor:
    """(B, 1, 1, 1) per-image fill: black (min), white (max), mean or zero.

    Args:
        images: (B, C, H, W) inputs.
        fill: One of FILLS.

    Returns:
        (B, 1, 1, 1) values in the images' dtype.
    """
    if fill not in FILLS:
        raise ConfigError(f"fill must be one of {FILLS}; got {fill!r}.")
    flat = images.detach().flatten(1)
    if fill == "black":
        value = flat.amin(dim=1)
    elif fill == "white":
        value = flat.amax(dim=1)
    elif fill == "mean":
        value = flat.mean(dim=1)
    else:
        value = flat.new_zeros(flat.shape[0])
    return value.view(-1, 1, 1, 1)


def _output(logits: Tensor, target: Tensor, output: str) -> Tensor:
    values = torch.softmax(logits.float(), dim=-1) if output == "probability" else logits.float()
    return values.gather(1, target.view(-1, 1)).squeeze(1)


def non_sensitivity(model: nn.Module, images: Tensor, maps: Tensor, target: Tensor,
                    eps: float = 1e-5, features_in_step: int = 1, fill: str = "black",
                    batch_size: int | None = None) -> Tensor:
    """(B,) number of pixel groups where the map and the model disagree about mattering.

    The clean images and one copy per group without it are scored by
    `functional.perturbed.step_scores` (group-major, `batch_size` images per forward, each
    copy built by one slice assignment when its forward needs it).

    Args:
        model: The classifier (run under no_grad, in its current mode).
        images: (B, C, H, W) inputs.
        maps: (B, H, W) maps (compared as |A| < eps).
        target: (B,) explained classes.
        eps: Threshold for a zero attribution and for an unchanged probability.
        features_in_step: Consecutive pixels (row-major) removed together.
        fill: What removed pixels become (FILLS).
        batch_size: Perturbed images per forward (None: B; on a CPU small forwards are
            fastest per image, on a GPU larger ones).

    Returns:
        (B,) float32 counts in [0, ceil(H W / features_in_step)]; NaN for a NaN map.
    """
    if int(features_in_step) < 1:
        raise ConfigError(f"features_in_step must be >= 1; got {features_in_step}.")
    if batch_size is not None and int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1 or null; got {batch_size}.")
    batch, channels, height, width = images.shape
    step = int(features_in_step)
    groups = math.ceil(height * width / step)
    clean = images.detach()
    fills = fill_value(clean, fill).view(-1, 1, 1)

    def without_group(index: int, lo: int, hi: int) -> Tensor:
        """Images lo:hi with every channel of group index - 1 set to the fill."""
        x = clean[lo:hi].clone(memory_format=torch.contiguous_format)
        first = (index - 1) * step
        x.view(hi - lo, channels, height * width)[:, :, first:first + step] = fills[lo:hi]
        return x

    probs = step_scores(model, [batch] * (groups + 1), without_group, target, batch_size,
                        target_prob, clean=clean)  # (B, 1 + groups): column 0 the clean images
    insensitive = (probs[:, 1:] - probs[:, :1]).abs() < eps  # (B, groups)
    flat_maps = maps.detach().abs().flatten(1)
    padded = torch.full((batch, groups * step), -math.inf, device=maps.device,
                        dtype=flat_maps.dtype)
    padded[:, : height * width] = flat_maps
    zero_attribution = padded.view(batch, groups, step).amax(dim=2) < eps
    score = (insensitive ^ zero_attribution.to(insensitive.device)).sum(dim=1).float()
    return score.masked_fill(torch.isnan(flat_maps).any(dim=1).to(score.device), float("nan"))


def first_affine_layer(model: nn.Module) -> nn.Module:
    """The first nn.Conv2d or nn.Linear in the model's module order: the layer that takes the
    images (a ViT's patch embedding, a CNN's first convolution).

    Raises:
        ConfigError: The model has neither.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            return module
    raise ConfigError(f"input_invariance needs a model whose first layer is a Conv2d or Linear; "
                      f"{type(model).__name__} has none.")


def _linear_part(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer without its bias: W x (padding included)."""
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, layer.weight, None)
    return nn.functional.linear(x, layer.weight)


def shift_absorbing_model(model: nn.Module, shift: float) -> nn.Module:
    """A copy of the model for inputs shifted by `shift`: its first affine layer subtracts
    W m (m = the shift on every input element) from its output, i.e. its bias becomes
    b - W m per output position, so copy(x + m) = model(x).

    Args:
        model: The trained model (deep-copied, never modified).
        shift: The constant m added to every input element.

    Returns:
        The shifted copy (a forward hook on its first Conv2d / Linear).
    """
    shifted = copy.deepcopy(model)
    layer = first_affine_layer(shifted)
    cache: dict[tuple, Tensor] = {}

    def absorb(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x = args[0]
        key = (tuple(x.shape[1:]), x.device, x.dtype)
        if key not in cache:
            with torch.no_grad():
                cache[key] = _linear_part(module, torch.full_like(x[:1], float(shift)))
        return out - cache[key]

    layer.register_forward_hook(absorb)
    return shifted


def isclose_all(a: Tensor, b: Tensor, rtol: float, atol: float) -> Tensor:
    """(B,) 1.0 where every element of a[i] is close to b[i] (numpy's isclose: |a - b| <= atol +
    rtol |b|), else 0.0; NaN where either holds a NaN."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    close = ((a - b).abs() <= atol + rtol * b.abs()).all(dim=1).float()
    nan = torch.isnan(a).any(dim=1) | torch.isnan(b).any(dim=1)
    return close.masked_fill(nan, float("nan"))


def completeness(model: nn.Module, images: Tensor, attributions: Tensor, target: Tensor,
                 baseline: str = "zero", output: str = "logit") -> tuple[Tensor, Tensor]:
    """Sum of the attributions and the output change they should add up to.

    Args:
        model: The classifier (one no-grad forward of the images and the baselines).
        images: (B, C, H, W) inputs.
        attributions: (B, ...) raw signed attributions (summed over everything but B).
        target: (B,) explained classes.
        baseline: The reference input x0 (FILLS: black, white, mean or zero, per image).
        output: "logit" (what the methods explain) or "probability" (softmax).

    Returns:
        ((B,) float64 sum of the attributions, (B,) float64 f(x) - f(x0)).
    """
    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {OUTPUTS}; got {output!r}.")
    reference = fill_value(images, baseline).expand_as(images)
    with torch.no_grad():
        values = _output(model(torch.cat([images, reference])), target.repeat(2), output)
    batch = images.shape[0]
    delta = values[:batch].double() - values[batch:].double()
    total = attributions.flatten(1).double().sum(dim=1).to(delta.device)
    return total, delta

