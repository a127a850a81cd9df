"""LRP rules written as modified gradients (Achtibat et al., ICML 2024, the "efficient" form).

In the Gradient x Input framework the relevance of a tensor t is R(t) = t * dS/dt, where the
backward pass starts at the target logit S with gradient 1 (so R(S) = S, the logit). An LRP rule
for an operation y = f(x) then becomes a rule for its backward: whatever passes g_y back must
give R(x) = x * g_x. Where the rule is the operation's own first-order Taylor split (linear
layers with epsilon -> 0, the residual adds, the centring in LayerNorm, the attention scale,
LayerScale, and the softmax: Achtibat et al. Prop. 3.1 is exactly x * J^T (R / s)) the plain
gradient already implements it, and nothing is patched. The rules that differ from the gradient
are the autograd Functions below; `patched_forwards` installs them on module instances for the
duration of one explanation, so one forward and one backward give the relevance at any tensor.

  epsilon rule (linear layers)   R_x = x * W^T (R_z / (z + eps sign z)): g_z *= z / (z + eps sign z)
  identity rule (GELU, ...)      R_x = R_y:           g_x = g_y * f(x) / x
    after an epsilon layer       both in one ratio:   g_z = g_y * f(z) / (z + eps sign z)
  identity rule (LayerNorm std)  the std is a constant: g_x = rstd * (g w - mean(g w))
  uniform rule (a matmul)        each operand gets half: g *= 1/2 on each operand's path
  conservative (CP-LRP)          the attention probabilities are constant: q and k detached
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function


def stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) = +1 (zennit's convention): never zero for eps > 0."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


class _OutputRule(Function):
    """Identity in the forward; scales the gradient at a layer's output z by z / (z + eps sign z)
    (the epsilon rule) and by a per-feature factor (the uniform rule)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, eps: float,
                scale: torch.Tensor | None) -> torch.Tensor:
        ctx.eps = eps
        ctx.save_for_backward(z if eps > 0 else None, scale)
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        z, scale = ctx.saved_tensors
        return rule_grad(grad, z, ctx.eps, scale), None, None


class _EpsilonLinear(Function):
    """A linear layer whose backward is the epsilon rule, with the uniform rule's per-output
    scale folded into the weight it multiplies by: one autograd node, no weight gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                eps: float, back_weight: torch.Tensor) -> torch.Tensor:
        z = F.linear(x, weight, bias)
        ctx.eps = eps
        ctx.save_for_backward(z if eps > 0 else None, back_weight)
        return z

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None,
                                                          None]:
        z, back_weight = ctx.saved_tensors
        return rule_grad(grad, z, ctx.eps, None) @ back_weight, None, None, None, None


def rule_grad(grad: torch.Tensor, z: torch.Tensor | None, eps: float,
              scale: torch.Tensor | None) -> torch.Tensor:
    """grad * z / (z + eps sign z) (written |z| / (|z| + eps): no sign needed) * scale.

    Four elementwise passes, in place on this function's own temporaries (never on `grad`:
    autograd may hand the same tensor to a residual branch): the rule runs on every linear
    layer's output, so each pass is a few percent of the whole backward."""
    if z is not None:
        factor = z.abs()
        grad = factor.div_(factor + eps).mul_(grad)
        return grad if scale is None else grad.mul_(scale)
    return grad if scale is None else grad * scale


def output_rule(z: torch.Tensor, eps: float, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The epsilon rule (eps > 0) and / or a gradient scale on a layer's output z; z itself when
    neither applies (eps = 0 is LRP-0: the plain gradient)."""
    if eps <= 0 and scale is None:
        return z
    return _OutputRule.apply(z, float(eps), scale)


def epsilon_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float, scale: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) with the epsilon rule (and a per-output gradient scale) in its
    backward; the plain F.linear (LRP-0) when eps = 0 and there is no scale."""
    if eps <= 0 and scale is None:
        return F.linear(x, weight, bias)
    back_weight = weight if scale is None else weight * scale.view(-1, 1)
    return _EpsilonLinear.apply(x, weight, bias, float(eps), back_weight)


class _IdentityRule(Function):
    """y = f(x) elementwise; relevance passes unchanged: g_x = g_y * f(x) / x. With eps > 0
    the epsilon rule of the linear layer that produced x is folded in: g_x = g_y * f(x) /
    (x + eps sign x), one ratio instead of f(x) / x times x / (x + eps sign x)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
                at_zero: float, eps: float) -> torch.Tensor:
        y = fn(x)
        if ctx.needs_input_grad[0]:
            if eps > 0:  # |x| + eps with x's sign (the stabiliser; never zero)
                ratio = y / x.abs().add_(eps).copysign_(x)
            else:  # 0 / 0 at x = 0 becomes the ratio's limit (f'(0): 1/2 for every GELU)
                ratio = torch.nan_to_num_(y / x, nan=at_zero)
            ctx.save_for_backward(ratio)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None, None, None


def identity_rule(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
                  at_zero: float = 0.5, eps: float = 0.0) -> torch.Tensor:
    """f(x) with the identity rule in the backward (elementwise nonlinearities); eps > 0 also
    applies the epsilon rule of the linear layer whose output x is."""
    return _IdentityRule.apply(x, fn, at_zero, float(eps))


class _LayerNormIdentity(Function):
    """LayerNorm over the last dimension with its standard deviation held constant: the
    backward is the centring's (a linear map) scaled by 1/std and the affine weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        out, _mean, rstd = torch.native_layer_norm(x, x.shape[-1:], weight, bias, eps)
        ctx.save_for_backward(weight, rstd)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        weight, rstd = ctx.saved_tensors
        grad = grad - grad.mean(dim=-1, keepdim=True) if weight is None else grad * weight
        if weight is not None:
            grad.sub_(grad.mean(dim=-1, keepdim=True))
        return grad.mul_(rstd), None, None, None


def layer_norm_identity(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """`norm(x)` (same kernel, same values) with the identity rule on the normalisation."""
    if len(norm.normalized_shape) != 1:
        raise ValueError("layer_norm_identity normalises over the last dimension only")
    return _LayerNormIdentity.apply(x, norm.weight, norm.bias, float(norm.eps))


def linear_epsilon(module: nn.Linear, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for `module` (nn.Linear) with the epsilon rule."""
    return lambda x: epsilon_linear(x, module.weight, module.bias, eps)


def conv_epsilon(module: nn.Conv2d, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for `module` (nn.Conv2d, e.g. a ViT's patch embedding) with the epsilon rule."""
    original = module.forward
    return lambda x: output_rule(original(x), eps)


def activation_identity(module: nn.Module,
                        eps: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for an elementwise activation module with the identity rule; eps > 0 also
    carries the epsilon rule of the linear layer feeding it (an MLP's fc1, then left
    unpatched): both rules scale the gradient at the same tensor, and one ratio is two
    elementwise passes fewer over it."""
    original = module.forward
    return lambda x: identity_rule(x, original, eps=eps)


def norm_identity(module: nn.LayerNorm) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for a LayerNorm module with the identity rule on its std."""
    return lambda x: layer_norm_identity(x, module)


@contextmanager
def patched_forwards(patches: dict[nn.Module, Callable[..., Any]]) -> Iterator[None]:
    """Give each module instance its rule-carrying forward while the block runs; afterwards the
    instance attribute is removed again (or an instance forward it had is put back). Instances,
    not classes, are patched: other models (and other threads' models) are untouched."""
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for module, forward in patches.items():
            saved.append((module, module.__dict__.get("forward")))
            module.forward = forward
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
