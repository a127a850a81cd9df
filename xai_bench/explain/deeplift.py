"""DeepLIFT (Shrikumar, Greenside & Kundaje, ICML 2017), Rescale rule, as a modified gradient.

DeepLIFT explains f_t(x) - f_t(x0) against a reference x0 with multipliers m = dDelta / dDelta:
affine layers (conv, linear, batch norm in eval mode, average pooling, flatten, residual sums)
keep their gradient, which is exact for differences; each nonlinearity's backward is replaced by
a difference quotient, and the attributions (x - x0) * m sum to f_t(x) - f_t(x0) exactly
(summation-to-delta) on any network built from those pieces.

  elementwise y = f(z) (ReLU, ...)   m = (f(z) - f(z0)) / (z - z0), f'(z) where |z - z0| < 1e-10
  max pooling                        each window: the input p holding max(y, y0) (the argmax of
                                     max(z, z0) over the window) gets m = (y - y0) / (z_p - z0_p),
                                     the other inputs 0; overlapping windows add up

Why that max-pool rule: it is the Rescale rule on the one input that carries the window's larger
maximum. If y >= y0, p is x's argmax and z_p - z0_p >= y - y0 >= 0; if y < y0, p is the
reference's argmax and z_p - z0_p <= y - y0 < 0. Either way the multiplier lies in [0, 1] (a max
is monotone in each input, and so is the rule) and the window's output change is attributed in
full to an input that moved at least as far, so summation-to-delta holds whatever sits next to
the pool. It is the cross-max rule captum 0.9.0 writes, computed as a gather / scatter-add:
captum's result loses the sum where a ReLU and a max pool are adjacent (either order; a pool
alone is exact, so the hooks of adjacent modules, not the formula) and where windows overlap
(its max_unpool overwrites instead of adding: ResNet stems), 2-50 % of f(x) - f(x0) on small nets.
The max's plain gradient (x's argmax gets 1) misses the sum when x and x0 peak at different inputs.

Cost: one forward of the images (with the graph, the base resolves the target from it), one
forward of the references without a graph, one backward (B rows): the multipliers are computed
in the reference forward's hooks from the activations saved by the first. Running images and
references as one 2B batch (captum) costs a 2B backward and an extra forward for the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.explain.base import Passes, register_method
from xai_bench.explain.gradients import (
    PixelMethod,
    frozen_params,
    gelu_derivative,
    not_inplace,
)
from xai_bench.explain.vit_geometry import is_vit
from xai_bench.utils.errors import ConfigError

RESCALE_EPS = 1e-10  # |z - z0| below this takes the gradient (captum's threshold)
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# leaves whose gradient is already the DeepLIFT multiplier (affine maps, in eval mode)
AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
          nn.BatchNorm3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Identity, nn.Flatten, nn.Unflatten,
          nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def derivative(module: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f'(z) of an ELEMENTWISE module, from its input z and output y = f(z)."""
    if isinstance(module, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(module, nn.LeakyReLU):
        return torch.where(z > 0, 1.0, module.negative_slope).to(z.dtype)
    if isinstance(module, nn.ELU):
        return torch.where(z > 0, 1.0, y + module.alpha).to(z.dtype)
    if isinstance(module, nn.Sigmoid):
        return y * (1 - y)
    if isinstance(module, nn.Tanh):
        return 1 - y * y
    if isinstance(module, nn.SiLU):
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    return gelu_derivative(z, getattr(module, "approximate", "none"))


def max_pool_indices(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The flat (per channel) input index of every output of `module`'s max pool over z."""
    dims = z.dim() - 2
    if isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        pool = getattr(F, f"adaptive_max_pool{dims}d")
        return pool(z, module.output_size, return_indices=True)[1]
    pool = getattr(F, f"max_pool{dims}d")
    return pool(z, module.kernel_size, module.stride, module.padding, module.dilation,
                ceil_mode=module.ceil_mode, return_indices=True)[1]


@dataclass
class _Call:
    """One call of a hooked module: the image side's activations until the reference forward
    turns them into DeepLIFT multipliers (Shrikumar et al. 2017) and, for a max pool, the
    selected inputs."""

    module: nn.Module
    z: torch.Tensor | None
    y: torch.Tensor | None
    version: int
    mult: torch.Tensor | None = None
    index: torch.Tensor | None = None
    shape: tuple[int, ...] = field(default=())

    def finish(self, z0: torch.Tensor, y0: torch.Tensor) -> None:
        """The multipliers from both sides' activations (module docstring)."""
        z, y = self.z, self.y
        assert z is not None and y is not None
        if z._version != self.version:
            raise RuntimeError(f"deeplift: the input of {type(self.module).__name__} was changed "
                               "in place during the forward; its multipliers would be wrong")
        if z.shape != z0.shape:
            raise ConfigError("deeplift: images and baselines must have the same shape; got "
                              f"{tuple(z.shape)} and {tuple(z0.shape)} inside the model.")
        dz, dy = z - z0, y - y0
        if isinstance(self.module, MAX_POOLS):
            self.shape = tuple(z.shape)
            self.index = max_pool_indices(self.module, torch.maximum(z, z0)).flatten(2)
            dz = dz.flatten(2).gather(2, self.index).view_as(dy)
            slope = torch.ones_like(dy)  # the max's gradient where nothing moved
        else:
            slope = derivative(self.module, z, y)
        small = dz.abs() < RESCALE_EPS
        self.mult = torch.where(small, slope, dy / torch.where(small, 1.0, dz).to(dz.dtype))
        self.z = self.y = None


class _Rescaled(torch.autograd.Function):
    """Identity on a hooked module's output y; the backward skips the module's own and sends
    the DeepLIFT multiplier (Shrikumar et al. 2017) to its input z."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, z: torch.Tensor, call: _Call) -> torch.Tensor:
        ctx.call = call
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        call: _Call = ctx.call
        if call.mult is None:
            raise RuntimeError("deeplift: backward before the reference forward")
        scaled = grad * call.mult
        if call.index is None:
            return None, scaled, None
        out = scaled.new_zeros(call.shape[0], call.shape[1], math.prod(call.shape[2:]))
        out.scatter_add_(2, call.index, scaled.flatten(2))
        return None, out.view(call.shape), None


class RescaleHooks:
    """The Rescale rule (Shrikumar et al. 2017) as forward hooks on every elementwise
    nonlinearity and max pool of `model`: in phase "input" they save the activations and route
    the backward through the multipliers; in phase "reference" (the same modules called in the
    same order) they compute the multipliers."""

    def __init__(self, model: nn.Module) -> None:
        self.phase = "input"
        self.calls: dict[nn.Module, list[_Call]] = {}
        self.seen: dict[nn.Module, int] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, ELEMENTWISE + MAX_POOLS)]

    def _hook(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        z = args[0]
        if self.phase == "input":
            call = _Call(module, z.detach(), out.detach(), z._version)
            self.calls.setdefault(module, []).append(call)
            return _Rescaled.apply(out, z, call)
        k = self.seen.get(module, 0)
        self.seen[module] = k + 1
        calls = self.calls.get(module, [])
        if k >= len(calls):
            raise RuntimeError(f"deeplift: the reference ran {type(module).__name__} more often "
                               "than the images did (data-dependent control flow)")
        calls[k].finish(z, out)
        return None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def unsupported_modules(model: nn.Module) -> list[str]:
    """Leaf module types DeepLIFT has no rule for (their gradient would break the sum)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    return sorted({type(m).__name__ for m in leaves
                   if not isinstance(m, ELEMENTWISE + MAX_POOLS + AFFINE)})


def deeplift_attr(model: nn.Module, images: torch.Tensor, baselines: torch.Tensor | float,
                  target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) Rescale-rule DeepLIFT attributions of the `target` logits against
    `baselines` (a number or a tensor broadcastable to the images: one reference per image).

    Reads `target` after the first forward (the base class fills it in from that forward)."""
    x = images.detach().requires_grad_(True)
    x0 = torch.as_tensor(baselines, dtype=x.dtype, device=x.device).expand_as(x).detach()
    with frozen_params(model), not_inplace(model):
        hooks = RescaleHooks(model)
        try:
            logits = model(x)
            hooks.phase = "reference"
            with torch.no_grad():
                model(x0)
            missing = [type(c.module).__name__ for calls in hooks.calls.values()
                       for c in calls if c.mult is None]
            if missing:
                raise RuntimeError(f"deeplift: the reference skipped {sorted(set(missing))}")
            selected = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            (grad,) = torch.autograd.grad(selected, x)
        finally:
            hooks.remove()
    return (x.detach() - x0) * grad


def require_cnn(model: nn.Module, method: str, alternative: str) -> None:
    """A ConfigError for transformers: the rule sets here are for CNNs."""
    if is_vit(model):
        raise ConfigError(f"method={method} is for CNNs; {type(model).__name__} is a transformer: "
                          f"use method={alternative}.")


def check_deeplift_model(model: nn.Module, method: str, vit_alternative: str,
                         alternative: str) -> None:
    """ConfigErrors before any pass: a transformer (-> `vit_alternative`), or leaf modules
    DeepLIFT has no rule for (-> `alternative`)."""
    require_cnn(model, method, vit_alternative)
    unsupported = unsupported_modules(model)
    if unsupported:
        raise ConfigError(f"method={method} has no DeepLIFT rule for the modules {unsupported} "
                          f"of {type(model).__name__}; use {alternative} for this model.")


@register_method("deeplift")
class DeepLift(PixelMethod):
    """DeepLIFT, Rescale rule (Shrikumar et al. 2017), from a constant `baseline` (0: the
    dataset mean of normalised images), with a max-pool rule that keeps summation-to-delta
    (module docstring). CNNs built from affine layers, elementwise activations and max pools."""

    target_in_forward = True
    family: ClassVar[str] = "gradient"
    models: ClassVar[tuple[str, ...]] = ("cnn",)

    def __init__(self, *args: Any, baseline: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline = float(baseline)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        return Passes(forwards=2, backwards=1)  # images (graph) + references (no graph); 1 B

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        check_deeplift_model(model, "deeplift", "integrated_gradients (or chefer / attnlrp)",
                             "integrated_gradients")
        return deeplift_attr(model, images, self.baseline, target)
