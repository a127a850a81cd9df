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

Cost: one forward of the images without a graph (the base resolves the target from it; the
hooks keep the activations of the nonlinearities and the max pools' indices), one forward of the
references with the graph, one backward (B rows). The multipliers are computed in the reference
forward's hooks, and the backward runs through the references' graph: the affine layers'
backward does not depend on the point it was recorded at, and every nonlinearity's is replaced.
A max pool runs once per forward (with its indices; the cross-max index follows from both sides'
indices and values). Several references per image (DeepLiftSHAP, `deeplift_sum`) reuse the one
forward of the images. Running images and references as one 2B batch (captum) costs a 2B
backward and an extra forward for the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.explain.base import Passes, register_method
from xai_bench.explain.gradients import (
    PixelMethod,
    _selected,
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


def max_pool_with_indices(module: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """`module`'s max pool of z and the flat (per channel) input index of every output."""
    dims = z.dim() - 2
    if isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        pool = getattr(F, f"adaptive_max_pool{dims}d")
        return pool(z, module.output_size, return_indices=True)
    pool = getattr(F, f"max_pool{dims}d")
    return pool(z, module.kernel_size, module.stride, module.padding, module.dilation,
                ceil_mode=module.ceil_mode, return_indices=True)


def cross_max_index(y: torch.Tensor, idx: torch.Tensor, y0: torch.Tensor,
                    idx0: torch.Tensor) -> torch.Tensor:
    """The index the max pool of max(z, z0) picks, from both sides' maxima and indices: where
    y > y0 only z reaches the window's maximum, where y < y0 only z0, on a tie the first of the
    two (torch's pools keep the first maximum of a window, and flat indices grow in its scan
    order)."""
    return torch.where(y > y0, idx, torch.where(y < y0, idx0, torch.minimum(idx, idx0)))


class InPlaceError(RuntimeError):
    """The model changed an activation the rule keeps, in place (deeplift_sum retries with
    copies of the activations; an input changed in place stays an error)."""


@dataclass
class _Side:
    """The images' side of one call of a hooked module (activations kept without a graph), which
    the references' forward turns into DeepLIFT multipliers (Shrikumar et al. 2017)."""

    module: nn.Module
    z: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None  # a max pool's argmax indices
    versions: tuple[int, int]

    def multipliers(self, z0: torch.Tensor, y0: torch.Tensor, idx0: torch.Tensor | None,
                    images: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The multipliers against the reference activations (module docstring), and for a max
        pool the flat cross-max index (n, C, outputs) they go to. The n references are m
        blocks, block j holding one reference of each of the `images` (sample-major): the
        images' side broadcasts over the blocks, never copied."""
        z, y, idx = self.z[images], self.y[images], self.index
        if (self.z._version, self.y._version) != self.versions:
            raise InPlaceError(f"deeplift: the input or output of {type(self.module).__name__} "
                               "was changed in place during the forward; its multipliers would "
                               "be wrong")
        if z.shape[1:] != z0.shape[1:] or z0.shape[0] % max(1, z.shape[0]):
            raise ConfigError("deeplift: images and baselines must have the same shape; got "
                              f"{tuple(z.shape)} and {tuple(z0.shape)} inside the model.")
        blocks = (z0.shape[0] // z.shape[0], z.shape[0])
        z0b, y0b = z0.view(*blocks, *z0.shape[1:]), y0.view(*blocks, *y0.shape[1:])
        index = None
        if idx is not None and idx0 is not None:
            idx0b = idx0.view(*blocks, *idx0.shape[1:])
            index = cross_max_index(y, idx[images], y0b, idx0b).flatten(3)
            z_flat = z.flatten(2).expand(blocks[0], *z.flatten(2).shape)
            dz = (z_flat.gather(3, index) - z0b.flatten(3).gather(3, index)).view_as(y0b)
        else:
            dz = torch.sub(z, z0b)
        mult = torch.sub(y, y0b).div_(dz)  # inf / nan where dz = 0: replaced below
        dz = dz.abs_()
        if index is not None:  # the max's gradient where nothing moved
            mult.masked_fill_(dz < RESCALE_EPS, 1.0)
        # on the CPU, where a reduction is cheaper than the select and waits for nothing, a
        # layer without a difference below the threshold skips it
        elif dz.device.type != "cpu" or (dz.numel() and bool(dz.amin() < RESCALE_EPS)):
            slope = y.sign() if isinstance(self.module, nn.ReLU) else derivative(self.module, z, y)
            torch.where(dz < RESCALE_EPS, slope, mult, out=mult)  # ReLU: f' = [z > 0] = sign(y)
        return mult.view(y0.shape), None if index is None else index.flatten(0, 1)


class _Rescaled(torch.autograd.Function):
    """Identity on a hooked module's reference output y0; the backward skips the module's own and
    sends the DeepLIFT multiplier (Shrikumar et al. 2017) to its input z0 (through the max
    pool's cross-max index: overlapping windows add up)."""

    @staticmethod
    def forward(ctx: Any, y0: torch.Tensor, z0: torch.Tensor, mult: torch.Tensor,
                index: torch.Tensor | None, copy: bool) -> torch.Tensor:
        ctx.mult, ctx.index, ctx.shape = mult, index, tuple(z0.shape)
        return y0.clone() if copy else y0.view_as(y0)  # a view: no copy of the activations

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scaled = grad * ctx.mult
        if ctx.index is None:
            return None, scaled, None, None, None
        shape = ctx.shape
        out = scaled.new_zeros(shape[0], shape[1], math.prod(shape[2:]))
        out.scatter_add_(2, ctx.index, scaled.flatten(2))
        return None, out.view(shape), None, None, None


class RescaleHooks:
    """The Rescale rule (Shrikumar et al. 2017) on every elementwise nonlinearity (a forward
    hook) and max pool (its forward replaced by one that also returns the indices) of `model`:
    in phase "images" they keep the activations; in phase "reference" (the same modules called
    in the same order, once per chunk of references) they compute the multipliers and route the
    backward through them. `copy`: the reference outputs are copies, not views (a model that
    changes an activation in place)."""

    def __init__(self, model: nn.Module, copy: bool = False) -> None:
        self.phase, self.copy = "images", copy
        self.images = slice(None)
        self.sides: dict[nn.Module, list[_Side]] = {}
        self.seen: dict[nn.Module, int] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, ELEMENTWISE)]
        # each max pool and the forward it had as an attribute of its own (None: its class's)
        self.pools = {m: m.__dict__.get("forward") for m in model.modules()
                      if isinstance(m, MAX_POOLS)}
        for pool in self.pools:
            pool.forward = lambda z, pool=pool: self._pool(pool, z)

    def start_reference(self, images: slice) -> None:
        """The next forward runs references of `images` (blocks of one reference each)."""
        if self.phase == "reference":
            self.check_complete()
        self.phase, self.images, self.seen = "reference", images, {}

    def check_complete(self) -> None:
        skipped = sorted({type(m).__name__ for m, sides in self.sides.items()
                          if self.seen.get(m, 0) < len(sides)})
        if skipped:
            raise RuntimeError(f"deeplift: the reference skipped {skipped}")

    def _pool(self, module: nn.Module, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the backward is the rule's
            y, idx = max_pool_with_indices(module, z)
        return self._record(module, z, y, idx)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        return self._record(module, args[0], out, None)

    def _record(self, module: nn.Module, z: torch.Tensor, y: torch.Tensor,
                idx: torch.Tensor | None) -> torch.Tensor:
        if self.phase == "images":
            side = _Side(module, z.detach(), y.detach(), idx, (z._version, y._version))
            self.sides.setdefault(module, []).append(side)
            return y.clone() if self.copy else y
        k = self.seen.get(module, 0)
        self.seen[module] = k + 1
        sides = self.sides.get(module, [])
        if k >= len(sides):
            raise RuntimeError(f"deeplift: the reference ran {type(module).__name__} more often "
                               "than the images did (data-dependent control flow)")
        mult, index = sides[k].multipliers(z.detach(), y.detach(), idx, self.images)
        return _Rescaled.apply(y, z, mult, index, self.copy)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for pool, forward in self.pools.items():
            if forward is None:
                del pool.forward  # the class's forward again
            else:
                pool.forward = forward


def unsupported_modules(model: nn.Module) -> list[str]:
    """Leaf module types DeepLIFT has no rule for (their gradient would break the sum)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    bad = {type(m).__name__ for m in leaves if not isinstance(m, ELEMENTWISE + MAX_POOLS + AFFINE)}
    bad |= {f"{type(m).__name__}(return_indices=True)" for m in leaves
            if isinstance(m, MAX_POOLS) and getattr(m, "return_indices", False)}
    return sorted(bad)


def deeplift_sum(model: nn.Module, images: torch.Tensor,
                 references: Callable[[], Iterable[tuple[slice, torch.Tensor]]],
                 target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) the sum of the Rescale-rule DeepLIFT attributions of the `target` logits
    over the chunks of references that `references()` yields: (images, refs), refs = m blocks,
    block j one reference of each of images[images] in order (sample-major). One forward of the
    images, then per chunk one forward and one backward of its references (module docstring).

    Reads `target` after the images' forward (the base class fills it in from that forward)."""
    x = images.detach()
    try:
        return _deeplift_sum(model, x, references, target, copy=False)
    except RuntimeError as err:  # an activation changed in place: copies, not views, of them
        if not isinstance(err, InPlaceError) and "is being modified inplace" not in str(err):
            raise
        return _deeplift_sum(model, x, references, target, copy=True)


def _deeplift_sum(model: nn.Module, x: torch.Tensor,
                  references: Callable[[], Iterable[tuple[slice, torch.Tensor]]],
                  target: torch.Tensor, copy: bool) -> torch.Tensor:
    total = torch.zeros_like(x)
    with frozen_params(model), not_inplace(model):
        hooks = RescaleHooks(model, copy)
        try:
            with torch.no_grad():
                model(x)
            for rows, refs in references():
                hooks.start_reference(rows)
                x0 = refs.detach().to(x.dtype).contiguous().requires_grad_(True)
                logits = model(x0)
                hooks.check_complete()
                xs, tgt = x[rows], target.to(logits.device)[rows]
                blocks = (x0.shape[0] // max(1, xs.shape[0]), *xs.shape)
                (grad,) = torch.autograd.grad(_selected(logits, tgt.repeat(blocks[0])), x0)
                attr = (xs - x0.detach().view(blocks)) * grad.view(blocks)
                total[rows] += attr.sum(0) if blocks[0] > 1 else attr[0]
        finally:
            hooks.remove()
    return total


def deeplift_attr(model: nn.Module, images: torch.Tensor, baselines: torch.Tensor | float,
                  target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) Rescale-rule DeepLIFT attributions of the `target` logits against
    `baselines` (a number or a tensor broadcastable to the images: one reference per image).

    Reads `target` after the images' forward (the base class fills it in from that forward)."""
    x0 = torch.as_tensor(baselines, dtype=images.dtype, device=images.device).expand_as(images)
    return deeplift_sum(model, images, lambda: [(slice(None), x0)], target)


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
        return Passes(forwards=2, backwards=1)  # images (no graph) + references (graph); 1 B

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        check_deeplift_model(model, "deeplift", "integrated_gradients (or chefer / attnlrp)",
                             "integrated_gradients")
        return deeplift_attr(model, images, self.baseline, target)
