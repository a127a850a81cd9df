"""Pixel-level attribution methods: gradients, Integrated Gradients, Guided Backprop (DeepLIFT:
explain.deeplift; LRP for CNNs: explain.lrp_cnn; the baselines: explain.baselines).

Every method first computes channel-resolved attributions (B, C, H, W) (`attribute`, compared
against captum in the tests) and then reduces the channels to a (B, H, W) raw map at input
resolution, so the shared post-processing only normalises (upsampling is a no-op).

Channel reduction (settings `abs`, `channel_reduction` in max | sum | mean):
  saliency          |grad| then max over channels (Simonyan et al.; captum's visualisation rule)
  guided_backprop   |gb| summed over channels (the ATCON definition, docs/atcon.md)
  input_x_gradient, integrated_gradients, deeplift, lrp
                    signed sum over channels: keeps completeness (the map sums to the
                    attribution total) and ranks positive evidence highest after min-max.

Saliency, Input x Gradient, IG and Guided Backprop are written by hand (one batched pass; IG
in bounded chunks).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.explain.base import (
    ExplainMethod,
    Passes,
    Target,
    model_state,
    register_method,
    resolve_target,
)
from xai_bench.explain.vit_geometry import is_vit
from xai_bench.utils.errors import ConfigError

CHANNEL_REDUCTIONS = ("max", "sum", "mean")
IG_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid",
              "gausslegendre")


# ----------------------------------------------------------------------------------------------
# shared helpers


def reduce_channels(attr: torch.Tensor, reduction: str = "sum",
                    take_abs: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): the per-pixel score a map shows."""
    if reduction not in CHANNEL_REDUCTIONS:
        raise ConfigError(
            f"channel_reduction must be one of {CHANNEL_REDUCTIONS}; got {reduction!r}.")
    values = attr.abs() if take_abs else attr
    if reduction == "max":
        return values.max(dim=1).values
    return values.sum(dim=1) if reduction == "sum" else values.mean(dim=1)


@contextmanager
def frozen_params(model: nn.Module) -> Iterator[nn.Module]:
    """Input-gradient methods need no weight gradients: switching them off saves memory and
    time; requires_grad (and the train/eval mode) are restored afterwards."""
    with model_state(model, eval_mode=False):
        for param in model.parameters():
            param.requires_grad_(False)
        yield model


@contextmanager
def not_inplace(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set `inplace=False` on activation modules (timm ResNets use inplace ReLU,
    which captum's module hooks cannot handle); restored afterwards."""
    changed = [m for m in model.modules()
               if isinstance(getattr(m, "inplace", None), bool) and m.inplace]
    for module in changed:
        module.inplace = False
    try:
        yield model
    finally:
        for module in changed:
            module.inplace = True


def _selected(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of each row's target logit: its gradient is every image's own d logit_t / d x."""
    return logits.gather(1, target.view(-1, 1).to(logits.device)).sum()


def input_gradient(model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                   create_graph: bool = False) -> torch.Tensor:
    """d logit_target / d input for every image of the batch, one forward + one backward."""
    x = images if (create_graph and images.requires_grad) else images.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_selected(model(x), target), x, create_graph=create_graph)
    return grad


# ----------------------------------------------------------------------------------------------
# Integrated Gradients


def ig_parameters(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """(step sizes, alphas) with captum's definitions.

    riemann_*: n equal steps 1/n at alphas left / right / middle of each interval;
    riemann_trapezoid: alphas linspace(0, 1, n), steps 1/n with both end steps halved (captum's
    definition: the weights sum to (n-1)/n, not to 1); gausslegendre: Gauss-Legendre nodes and
    weights mapped from [-1, 1] to [0, 1]. Alphas are computed in float64 (captum rounds its
    linspace through float32: differences ~1e-8).
    """
    if method not in IG_METHODS:
        raise ConfigError(
            f"integrated_gradients method must be one of {IG_METHODS}; got {method!r}.")
    if method == "gausslegendre":
        if n_steps < 1:
            raise ConfigError("integrated_gradients needs n_steps >= 1.")
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return (0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist()
    if n_steps < 2:
        raise ConfigError(f"integrated_gradients method={method} needs n_steps >= 2.")
    steps = [1.0 / n_steps] * n_steps
    n = n_steps
    if method == "riemann_trapezoid":
        steps[0] /= 2
        steps[-1] /= 2
        alphas = np.linspace(0.0, 1.0, n)
    elif method == "riemann_left":
        alphas = np.linspace(0.0, 1.0 - 1.0 / n, n)
    elif method == "riemann_middle":
        alphas = np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n)
    else:
        alphas = np.linspace(1.0 / n, 1.0, n)
    return steps, alphas.tolist()


def integrated_gradients_attr(model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                              baselines: torch.Tensor | float = 0.0, n_steps: int = 50,
                              method: str = "gausslegendre",
                              internal_batch_size: int | None = None) -> torch.Tensor:
    """(B, C, H, W) IG = (x - x0) * sum_k w_k grad f_t(x0 + a_k (x - x0)).

    The B * n_steps interpolation images are processed `internal_batch_size` at a time (any
    mix of steps and images) and their weighted gradients are added into one (B, C, H, W)
    accumulator, so peak memory is ~internal_batch_size images whatever n_steps is (captum
    keeps every step of a chunk and cannot go below one step for all images).
    """
    steps, alphas = ig_parameters(method, n_steps)
    batch = images.shape[0]
    x = images.detach()
    base = torch.as_tensor(baselines, dtype=x.dtype, device=x.device).expand_as(x)
    delta = x - base
    step_t = torch.tensor(steps, dtype=x.dtype, device=x.device)
    alpha_t = torch.tensor(alphas, dtype=x.dtype, device=x.device)
    target = target.to(x.device)
    total = n_steps * batch
    chunk = total if internal_batch_size is None else int(internal_batch_size)
    if chunk < 1:
        raise ConfigError(f"internal_batch_size must be >= 1; got {internal_batch_size}.")
    acc = torch.zeros_like(x)
    view = (-1,) + (1,) * (x.dim() - 1)
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(start + chunk, total), device=x.device)
        k, i = idx // batch, idx % batch  # step-major, as captum expands its inputs
        points = (base[i] + alpha_t[k].view(view) * delta[i]).requires_grad_(True)
        (grad,) = torch.autograd.grad(_selected(model(points), target[i]), points)
        acc.index_add_(0, i, grad * step_t[k].view(view))
        del points, grad
    return acc * delta


# ----------------------------------------------------------------------------------------------
# Guided Backprop


class _GuidedReLU(torch.autograd.Function):
    """Identity on a ReLU's output whose backward keeps only positive gradients; the ReLU's own
    backward then applies its mask: grad_in = 1[x > 0] * max(grad_out, 0) (Springenberg et al.).
    Written with differentiable ops so it supports create_graph (ATCON)."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def gelu_derivative(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """d gelu / dx, exact (erf) or for the tanh approximation."""
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        t = torch.tanh(c * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


class _GuidedGELU(torch.autograd.Function):
    """GELU whose backward is the guided rule grad_in = max(grad_out, 0) * max(gelu'(x), 0).

    It is ReLU's guided rule written for a smooth unit: negative incoming gradients are cut
    (the "guided" part) and so is the negative-slope region x < ~-0.75 (the "backprop" mask);
    for ReLU the same formula gives 1[x > 0] * max(grad_out, 0).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, approximate: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return F.gelu(x, approximate=approximate)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * gelu_derivative(x, ctx.approximate).clamp(min=0), None


@contextmanager
def guided_hooks(model: nn.Module, gelu_rule: bool = True) -> Iterator[int]:
    """Install the guided rules on every nn.ReLU (and nn.GELU when `gelu_rule`) module by forward
    hooks that swap the output for an identical one with the guided backward; yields how many
    modules were hooked. Functional activations (F.relu, F.gelu) are not affected."""
    handles = []

    def relu_hook(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU.apply(out)

    def gelu_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> torch.Tensor:
        return _GuidedGELU.apply(inp[0], getattr(m, "approximate", "none"))

    for module in model.modules():
        if isinstance(module, nn.ReLU):
            handles.append(module.register_forward_hook(relu_hook))
        elif gelu_rule and isinstance(module, nn.GELU):
            handles.append(module.register_forward_hook(gelu_hook))
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def guided_backprop_attr(model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                         gelu_rule: bool = True, create_graph: bool = False) -> torch.Tensor:
    """(B, C, H, W) guided gradients of the target logits."""
    with guided_hooks(model, gelu_rule) as hooked:
        if not hooked or (is_vit(model) and not gelu_rule):
            warnings.warn(
                f"guided_backprop found no {'nn.ReLU' if not gelu_rule else 'nn.ReLU/nn.GELU'} "
                f"modules in {type(model).__name__}"
                + (" (a ViT's GELUs are left alone with gelu_rule=False)" if is_vit(model) else "")
                + ": the result equals the plain input gradient.",
                stacklevel=3,
            )
        return input_gradient(model, images, target, create_graph=create_graph)


def guided_backprop_differentiable(model: nn.Module, images: torch.Tensor, target: Target,
                                   abs: bool = True, channel_reduction: str = "sum",
                                   gelu_rule: bool = True) -> torch.Tensor:
    """(B, H, W) guided backprop that keeps the autograd graph (ATCON step 3: sum |gb| over
    channels, differentiable w.r.t. the weights). One forward; leaves the model's mode alone."""
    x = images if images.requires_grad else images.detach().requires_grad_(True)
    with guided_hooks(model, gelu_rule):
        logits = model(x)
        tgt = resolve_target(target, logits.detach())
        (grad,) = torch.autograd.grad(_selected(logits, tgt), x, create_graph=True)
    return reduce_channels(grad, channel_reduction, abs)


# ----------------------------------------------------------------------------------------------
# method classes


class PixelMethod(ExplainMethod):
    """Shared settings of the input-resolution methods: `abs` and `channel_reduction`."""

    family = "gradient"
    default_abs: ClassVar[bool] = False
    default_reduction: ClassVar[str] = "sum"

    def __init__(self, target: Target = "predicted", upsample: str | None = None,
                 normalize: str = "minmax", relu: bool | None = None, eps: float = 1e-7,
                 abs: bool | None = None, channel_reduction: str | None = None) -> None:
        super().__init__(target=target, upsample=upsample, normalize=normalize, relu=relu, eps=eps)
        self.abs = self.default_abs if abs is None else bool(abs)
        self.channel_reduction = channel_reduction or self.default_reduction
        if self.channel_reduction not in CHANNEL_REDUCTIONS:
            raise ConfigError(f"channel_reduction must be one of {CHANNEL_REDUCTIONS}; "
                              f"got {self.channel_reduction!r}.")

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) channel-resolved attributions."""
        raise NotImplementedError

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        return reduce_channels(self.attribute(model, images, target), self.channel_reduction,
                               self.abs)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """One forward (with `target_in_forward` it resolves the target too) and one backward."""
        return Passes(forwards=1, backwards=1)


@register_method("saliency")
class Saliency(PixelMethod):
    """|d logit_t / d x|, max over channels (default)."""

    target_in_forward = True

    default_abs = True
    default_reduction = "max"

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        with frozen_params(model):
            return input_gradient(model, images, target)


@register_method("input_x_gradient")
class InputXGradient(PixelMethod):
    """x * d logit_t / d x."""

    target_in_forward = True

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        with frozen_params(model):
            return images.detach() * input_gradient(model, images, target)


@register_method("integrated_gradients")
class IntegratedGradients(PixelMethod):
    """IG from a constant baseline (0 by default); captum's `method` and `n_steps` definitions.

    internal_batch_size (default 16 interpolation images per pass) bounds peak memory; on CPU
    16 is as fast as captum's single pass (larger batches gain little); raise it on a GPU."""

    def __init__(self, *args: Any, n_steps: int = 50, method: str = "gausslegendre",
                 internal_batch_size: int | None = 16, baseline: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ig_parameters(method, n_steps)  # validates early
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ConfigError(
                f"internal_batch_size must be >= 1 or null; got {internal_batch_size}.")
        self.n_steps, self.method = n_steps, method
        self.internal_batch_size, self.baseline = internal_batch_size, float(baseline)

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        with frozen_params(model):
            return integrated_gradients_attr(model, images, target, self.baseline, self.n_steps,
                                             self.method, self.internal_batch_size)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """A no-grad forward for the target, then a forward and a backward per step (however
        `internal_batch_size` chunks them)."""
        return Passes(forwards=1 + self.n_steps, backwards=self.n_steps)


@register_method("guided_backprop")
class GuidedBackprop(PixelMethod):
    """Guided backprop: ReLU rule on nn.ReLU modules; on ViTs the GELU rule (`gelu_rule`),
    without which it is the plain gradient (a warning says so)."""

    target_in_forward = True

    default_abs = True

    def __init__(self, *args: Any, gelu_rule: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gelu_rule = gelu_rule

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        with frozen_params(model):
            return guided_backprop_attr(model, images, target, gelu_rule=self.gelu_rule)
