"""FullGrad for CNNs: the input-gradient term plus every layer's bias-gradient map, one backward.

  map = psi(|x * dy/dx|) + sum_l psi(|b_l * dy/dz_l|)        (Srinivas & Fleuret 2019)
where z_l is the output of a bias layer l (nn.Conv2d with a bias, nn.BatchNorm2d with its
eval-mode effective bias beta - mean * gamma / sqrt(var + eps)), and psi min-max scales each
(image, channel) map (eps 1e-7), resizes it bilinearly to the input and sums over channels.
Resizing is linear, so the channels, and the layers of one resolution, are summed before one
resize per resolution (the same map, without a (B, C, H, W) tensor per layer); each layer's
term is formed in the backward as soon as its gradient exists. All gradients come from one
torch.autograd.grad call.

pytorch-grad-cam 1.5.7's definition (the oracle), which differs from the paper's code:
- layers are found by exact type (Conv2d, BatchNorm2d): subclasses such as timm's
  BatchNormAct2d or Conv2dSame are skipped, and so are Linear biases (the paper's code skips
  non-spatial biases too); we select the same layers;
- psi scales per (image, channel); the authors' code scales each layer's whole (C, h, w) at
  once. The gradient of z_l is taken before any in-place activation that follows (a tensor
  hook, as the library's).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.explain.base import ExplainMethod, Passes, register_method
from xai_bench.explain.gradients import frozen_params
from xai_bench.explain.vit_geometry import is_vit
from xai_bench.utils.errors import ConfigError

BIAS_LAYER_TYPES = (nn.Conv2d, nn.BatchNorm2d)
SCALE_EPS = 1e-7  # pytorch-grad-cam's, in the per-channel min-max


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose bias-gradients FullGrad sums (exact types, as the library)."""
    return [m for m in model.modules()
            if type(m) in BIAS_LAYER_TYPES and getattr(m, "bias", None) is not None]


def effective_bias(layer: nn.Module) -> torch.Tensor:
    """(C,) the constant the layer adds per channel: a conv's bias; BatchNorm's in eval mode."""
    if isinstance(layer, nn.BatchNorm2d) and layer.running_mean is not None:
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return layer.bias - layer.running_mean * scale
    return layer.bias


def channel_scaled(maps: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, h, w) nonnegative maps m (times a (C,) nonnegative `scale`) -> (B, h, w): min-max
    each (image, channel) map and sum them.

    Written as one weighted channel sum (a batched matrix-vector product),
    sum_c (m_c - lo_c) w_c = sum_c w_c m_c - sum_c w_c lo_c with w_c = 1 / (hi_c - lo_c + eps),
    so no shifted or scaled copy of the maps is made: hi_c - lo_c is the max of m_c - lo_c
    (subtracting is monotone), and a scale s_c >= 0 scales lo_c and hi_c (s_c m_c is too)."""
    flat = maps.flatten(2)
    lo, hi = flat.amin(dim=2), flat.amax(dim=2)  # (B, C); torch.aminmax is slower on the CPU
    if scale is not None:
        lo, hi = lo * scale, hi * scale
    weight = 1 / (hi - lo + SCALE_EPS)
    offset = (weight * lo).sum(dim=1)
    if scale is not None:
        weight = weight * scale
    summed = torch.bmm(weight[:, None, :], flat).view(maps.shape[0], *maps.shape[2:])
    return summed - offset[:, None, None]


def resized_sum(parts: dict[tuple[int, int], torch.Tensor],
                size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W): the (B, h, w) maps of every resolution resized bilinearly and summed; resizing
    is linear, so the maps of one resolution are summed before their one resize."""
    total = None
    for hw, part in parts.items():
        if hw != tuple(size):
            part = F.interpolate(part[:, None], size=size, mode="bilinear",
                                 align_corners=False)[:, 0]
        total = part if total is None else total + part
    assert total is not None
    return total


def _add(parts: dict[tuple[int, int], torch.Tensor], part: torch.Tensor) -> None:
    key = (part.shape[-2], part.shape[-1])
    parts[key] = part if key not in parts else parts[key] + part


@register_method("fullgrad")
class FullGrad(ExplainMethod):
    """FullGrad (Srinivas & Fleuret 2019): complete gradient decomposition, input-gradient x
    input plus bias-gradients of every conv / BatchNorm layer, on CNNs. One forward (which
    resolves the target) and one backward."""

    family = "cam"
    models = ("cnn",)
    target_in_forward = True
    default_upsample = "bilinear"

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        return Passes(forwards=1, backwards=1)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor | None) -> torch.Tensor:
        """(B, H, W) FullGrad map at input resolution, before the shared min-max."""
        if is_vit(model):
            raise ConfigError("fullgrad explains CNNs (conv / BatchNorm bias-gradients); "
                              "on a ViT use a CAM method, chefer or an input-gradient method.")
        assert target is not None
        # the channel-scaled bias-gradient maps, summed per resolution; each layer's is made in
        # the backward, as soon as its gradient exists (which is then freed)
        parts: dict[tuple[int, int], torch.Tensor] = {}

        def on_grad(grad: torch.Tensor, bias: torch.Tensor) -> None:
            _add(parts, channel_scaled(grad.detach().abs(), bias))

        def hook(layer: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            bias = effective_bias(layer).detach().abs()
            if out.requires_grad:
                out.register_hook(lambda g, b=bias: on_grad(g, b))

        handles = [layer.register_forward_hook(hook) for layer in bias_layers(model)]
        try:
            with frozen_params(model):
                x = images.detach().requires_grad_(True)
                logits = model(x)
                score = logits.gather(1, target.view(-1, 1)).sum()
                (input_grad,) = torch.autograd.grad(score, x)
        finally:
            for handle in handles:
                handle.remove()
        _add(parts, channel_scaled((input_grad * images).abs()))
        return resized_sum(parts, (images.shape[-2], images.shape[-1]))
