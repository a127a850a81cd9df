"""LRP for CNNs (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance propagation: an
overview") with the composites of Kohlbrenner et al. 2020, written as a modified gradient.

The relevance of a tensor t is R(t) = t * g_t, where g is what the backward carries, starting
with 1 at the target logit (so R(logit) = the logit). Anything whose gradient already splits
relevance in proportion to the contributions needs no rule: ReLU (passes relevance), max pooling
(winner takes all), flatten / identity / dropout, and the residual sums and concatenations
(z = a + b: R(a) = a / z R(z), what zennit's Sum canonizer adds for ResNets). A forward hook on
every conv / linear / average pool replaces its output's backward by its rule; z is the layer's
output, R = z * g the relevance reaching it, S(.) = . + s sign(.) (sign(0) = +1) the stabiliser:

  epsilon  (eps)            g_x = W^T (g z / S(z))                  (Bach et al. 2015)
  norm     (avg pools)      the epsilon rule with the stabiliser s
  zplus    (conv)           g_x = [x > 0] W+^T h + [x < 0] W-^T h,  h = R / S(W+ x+ + W- x- + b+)
  gamma    (conv)           weights W + gamma W+ for positive, W + gamma W- for negative
                            contributions, split by the sign of z (Montavon et al. 2019; zennit's
                            generalised form for negative inputs)
  flat     (first layer)    R_x = 1^T (R / S(1^T 1)): every input of a unit gets an equal share
  box      (first conv)     R_x = x W^T h - l W+^T h - u W-^T h,  h = R / S(W x - W+ l - W- u)
                            (z^B rule, Montavon et al. 2017; l, u: the lowest / highest pixels)

Composites: `epsilon` (every conv / linear / avg pool), `epsilon_plus_flat` (first conv or
linear: flat; convs: zplus; dense layers: epsilon; pools: norm), `epsilon_gamma_box` (first
conv: box; convs: gamma; dense: epsilon; pools: norm). The first-layer rules return the input
relevance itself; otherwise the map is x * g_x.

Canonization: a BatchNorm right after a conv / linear (its input is that layer's output) is
merged into it, W' = W s, b' = (b - mean) s + beta with s = weight / sqrt(var + eps) (zennit's
MergeBatchNorm), so the rule sees the layer the network computes. A BatchNorm after anything
else (a concatenation, timm's fused BatchNormAct) keeps its gradient: LRP-0 on its affine map.
Sigmoid / Hardsigmoid modules (torch's or timm's) are taken to be gates (SE, CBAM): the gate gets
no relevance, the gated signal all of it (the "signal-take-all" rule, Arras et al. 2017); zennit
would pass relevance through them as activations.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import activations
from torch import nn

from xai_bench.explain.base import Passes, register_method
from xai_bench.explain.deeplift import require_cnn
from xai_bench.explain.gradients import PixelMethod, frozen_params, not_inplace
from xai_bench.explain.lrp_rules import stabilise
from xai_bench.utils.errors import ConfigError

COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_gamma_box")
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYERS = (*CONVS, nn.Linear)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
             nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
GATES = (nn.Sigmoid, nn.Hardsigmoid, activations.Sigmoid, activations.HardSigmoid)  # SE / CBAM
GRADIENT_IS_RULE = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout,
                    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d,
                    nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# the pixel box [0, 1] of ImageNet-normalised images (every dataset here), per channel
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BOX_LOW = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
BOX_HIGH = tuple((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
NEEDS_INPUT = ("zplus", "gamma", "flat", "box")  # rules that recompute the layer on its input


@dataclass(frozen=True)
class Settings:
    """The rules' constants (Montavon et al. 2019's epsilon, gamma and z^B box)."""

    epsilon: float
    stabilizer: float
    gamma: float
    low: torch.Tensor | float
    high: torch.Tensor | float


@dataclass
class _Layer:
    """One call of a conv / linear / avg pool: its rule, its input (when the rule needs it) and
    the BatchNorm merged into it (canonization, as zennit's; Anders et al. 2021)."""

    module: nn.Module
    rule: str
    first: bool = False
    x: torch.Tensor | None = None
    bn: nn.Module | None = None
    merged: bool = False  # its rule moved to the BatchNorm that follows
    output: Any = None  # weakref to the tensor the hook returned


def _params(layer: _Layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weight and bias, with its BatchNorm merged in."""
    weight, bias, bn = layer.module.weight, layer.module.bias, layer.bn
    if bn is None:
        return weight, bias
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), shift


# per conv / linear module: (its BatchNorm, the model state its merged / clamped weights were
# made from, those weights), made again when a parameter or BatchNorm statistic changes
_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# per first layer: the flat rule's count of inputs per output, by input shape, dtype and device
_FLAT_COUNTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(layer: _Layer) -> tuple[Any, ...]:
    """What the layer's merged weights are made of (as the metrics' randomised-model cache sees
    a model): each tensor (a weak reference: a new tensor at a reused address is not the old
    one), its storage and the version counter every in-place write bumps (an optimiser step,
    load_state_dict, nn.init; not writes through `.data`, which torch does not count).
    Inference-mode tensors, which keep no counter, cannot take part in a backward anyway."""
    bn = layer.bn
    tensors = [layer.module.weight, layer.module.bias]
    if bn is not None:
        tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return (bn.eps if bn is not None else None,
            *((None, 0, 0) if t is None else (weakref.ref(t), t.data_ptr(), t._version)
              for t in tensors))


def _same_state(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, weakref.ref) and isinstance(b, weakref.ref):
            return a() is not None and a() is b()
        return a == b
    return len(old) == len(new) and all(same(a, b) for a, b in zip(old, new, strict=True))


def _weight(layer: _Layer, name: str) -> torch.Tensor | None:
    """The layer's merged weight or bias ("w", "b"), or their positive / negative parts ("w+",
    "b+", "w-", "b-"), computed once per model state (the rules need them in every backward)."""
    state = _state(layer)
    entry = _WEIGHTS.get(layer.module)
    if entry is None or entry[0] is not layer.bn or not _same_state(entry[1], state):
        entry = (layer.bn, state, {})
        _WEIGHTS[layer.module] = entry
    parts: dict[str, torch.Tensor | None] = entry[2]

    def get(key: str) -> torch.Tensor | None:
        if key not in parts:
            if key in ("w", "b"):
                parts["w"], parts["b"] = _params(layer)
            else:
                base = get(key[0])
                parts[key] = (None if base is None else
                              base.clamp(min=0) if key[1] == "+" else base.clamp(max=0))
        return parts[key]
    return get(name)


def _affine(module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def _transposed(module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                grad: torch.Tensor) -> torch.Tensor:
    """W^T grad: the layer's vector-Jacobian product with the given weight, at input x (torch's
    convolution backward, given the real input: an expanded placeholder, as
    torch.nn.grad.conv2d_input passes, takes a slower path on the CPU)."""
    if isinstance(module, nn.Linear):
        return grad @ weight
    dims = weight.dim() - 2
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, module.stride, module.padding, module.dilation, False,
        [0] * dims, module.groups, [True, False, False])[0]


def _flat_count(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(1, C_out, ...) how many inputs feed each output of the layer (the same for every
    image), once per input shape."""
    counts = _FLAT_COUNTS.setdefault(module, {})
    key = (tuple(x.shape[1:]), tuple(weight.shape), x.dtype, x.device)
    if key not in counts:
        counts[key] = _affine(module, torch.ones_like(x[:1]), torch.ones_like(weight), None)
    return counts[key]


def _split_sign(x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None,
                relevance_out: bool) -> torch.Tensor:
    """x+ pos + x- neg (input relevance), or a backward g_x with x * g_x equal to it (neg None:
    no negative inputs, and g_x = pos serves: where x = 0 it meets x's own zero gradient)."""
    if relevance_out:
        out = x.clamp(min=0) * pos
        return out if neg is None else out + x.clamp(max=0) * neg
    if neg is None:
        return pos
    return torch.where(x > 0, pos, 0.0) + torch.where(x < 0, neg, 0.0)


def propagate(layer: _Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor,
              s: Settings) -> torch.Tensor:
    """The rules that recompute the layer (module docstring): the input relevance for a first
    layer, otherwise g_x with x * g_x = the input relevance. `relevance` may be overwritten."""
    mod, rule = layer.module, layer.rule

    def back(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return _transposed(mod, x, w, h)

    if rule == "flat":
        ones = torch.ones_like(_weight(layer, "w"))
        count = _flat_count(mod, x, ones)
        return back(ones, relevance / stabilise(count, s.stabilizer))
    weight, bias = _weight(layer, "w"), _weight(layer, "b")
    pos_w, pos_b = _weight(layer, "w+"), _weight(layer, "b+")
    if rule == "box":
        neg_w, neg_b = _weight(layer, "w-"), _weight(layer, "b-")
        low = torch.as_tensor(s.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(s.high, dtype=x.dtype, device=x.device).expand_as(x)
        denom = (_affine(mod, x, weight, bias) - _affine(mod, low, pos_w, pos_b)
                 - _affine(mod, high, neg_w, neg_b))
        h = relevance / stabilise(denom, s.stabilizer)
        return x * back(weight, h) - low * back(pos_w, h) - high * back(neg_w, h)
    signed = bool(x.amin() < 0)  # after a ReLU there are no negative inputs: less work
    pos_x = x.clamp(min=0) if signed else x
    # the positive part of the layer's output, W+ x+ + b+ (the z+ denominator)
    plus = _affine(mod, pos_x, pos_w, pos_b)
    if rule == "zplus" and not signed:  # plus >= 0: S(plus) = plus + s, in place
        h = relevance.div_(plus.add_(s.stabilizer))
        return _split_sign(x, back(pos_w, h), None, layer.first)
    if signed:
        neg_x = x.clamp(max=0)
        neg_w, neg_b = _weight(layer, "w-"), _weight(layer, "b-")
        assert neg_w is not None
    if rule == "zplus":
        h = relevance / stabilise(plus + _affine(mod, neg_x, neg_w, None), s.stabilizer)
        return _split_sign(x, back(pos_w, h), back(neg_w, h), layer.first)
    # gamma: A = W + gamma W+ weighs positive contributions, C = W + gamma W- negative ones
    if signed:
        up_w, down_w = weight + s.gamma * pos_w, weight + s.gamma * neg_w
        up_b = None if bias is None else bias + s.gamma * pos_b
        down_b = None if bias is None else bias + s.gamma * neg_b
        d_pos = _affine(mod, pos_x, up_w, up_b) + _affine(mod, neg_x, down_w, None)
        d_neg = _affine(mod, pos_x, down_w, down_b) + _affine(mod, neg_x, up_w, None)
    else:  # x >= 0: A x + b_A = z + gamma plus, C x + b_C = z + gamma (z - plus)
        d_pos, d_neg = z + s.gamma * plus, z + s.gamma * (z - plus)
    h_pos = torch.where(z > 0, relevance / stabilise(d_pos, s.stabilizer), 0.0)
    h_neg = torch.where(z < 0, relevance / stabilise(d_neg, s.stabilizer), 0.0)
    if not signed:  # A^T h_pos + C^T h_neg with C = A - gamma W: two transposed layers, not four
        pos = back(weight, h_pos + (1 + s.gamma) * h_neg) + s.gamma * back(pos_w, h_pos - h_neg)
        return _split_sign(x, pos, None, layer.first)
    pos = back(up_w, h_pos) + back(down_w, h_neg)
    neg = back(down_w, h_pos) + back(up_w, h_neg)
    return _split_sign(x, pos, neg, layer.first)


class _Relevance(torch.autograd.Function):
    """Identity on a layer's output z; the backward applies the layer's LRP rule (Montavon et al.
    2019): a rescaled gradient for the epsilon / norm rules (the layer's own backward follows),
    the recomputed rule sent straight to the layer's input x otherwise."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, x: torch.Tensor, layer: _Layer,
                settings: Settings) -> torch.Tensor:
        ctx.layer, ctx.settings = layer, settings
        ctx.save_for_backward(z, x if layer.x is not None else None)
        ctx.set_materialize_grads(False)  # no gradient stays None: nothing to run below
        return z.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        layer, settings = ctx.layer, ctx.settings
        if grad is None:  # a rule above sent the relevance past this layer (merged BatchNorm)
            return None, None, None, None
        z, x = ctx.saved_tensors
        if layer.merged:  # the BatchNorm's epsilon rule ran; its backward passes here
            return grad, None, None, None
        if x is None:  # epsilon / norm; epsilon 0 is LRP-0, the plain gradient
            eps = settings.epsilon if layer.rule == "epsilon" else settings.stabilizer
            return (grad * (z / stabilise(z, eps)) if eps > 0 else grad), None, None, None
        return None, propagate(layer, x, z, z * grad, settings), None, None


class LRPHooks:
    """The forward hooks that give every layer of `model` its rule for one explanation, by the
    composite's layer map (Kohlbrenner et al. 2020)."""

    def __init__(self, model: nn.Module, composite: str, settings: Settings,
                 canonize: bool = True) -> None:
        self.composite, self.settings = composite, settings
        self.first_taken = False  # a first-layer rule was given: the input gets relevance
        self.relevance_at_input = False
        self.handles = []
        for module in model.modules():
            if type(module) in LAYERS or isinstance(module, AVG_POOLS):
                self.handles.append(module.register_forward_hook(self._layer))
            elif canonize and type(module) in NORMS:
                self.handles.append(module.register_forward_hook(self._norm))
            elif isinstance(module, GATES):
                self.handles.append(module.register_forward_hook(lambda _m, _a, o: o.detach()))

    def _rule(self, module: nn.Module) -> tuple[str, bool]:
        if isinstance(module, AVG_POOLS):
            return ("epsilon" if self.composite == "epsilon" else "norm"), False
        dense = isinstance(module, nn.Linear)
        if self.composite == "epsilon":
            return "epsilon", False
        first_kind = self.composite == "epsilon_plus_flat" or not dense
        if first_kind and not self.first_taken:
            self.first_taken = self.relevance_at_input = True
            return ("flat" if self.composite == "epsilon_plus_flat" else "box"), True
        if dense:
            return "epsilon", False
        return ("zplus" if self.composite == "epsilon_plus_flat" else "gamma"), False

    def _wrap(self, z: torch.Tensor, x: torch.Tensor, layer: _Layer) -> torch.Tensor:
        out = _Relevance.apply(z, x, layer, self.settings)
        layer.output = weakref.ref(out)
        return out

    def _layer(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
        rule, first = self._rule(module)
        x = args[0]
        needs_x = rule in NEEDS_INPUT or first
        return self._wrap(out, x, _Layer(module, rule, first, x if needs_x else None))

    def _norm(self, bn: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
        fn = getattr(args[0].grad_fn, "_forward_cls", None)
        layer = getattr(args[0].grad_fn, "layer", None) if fn is _Relevance else None
        if (layer is None or layer.output() is not args[0] or isinstance(layer.module, AVG_POOLS)
                or layer.bn is not None or bn.running_mean is None):
            return None  # not right after a conv / linear: its gradient (LRP-0)
        layer.merged = True
        merged = replace(layer, bn=bn, merged=False, output=None)
        return self._wrap(out, layer.x if layer.x is not None else args[0], merged)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def unsupported_modules(model: nn.Module, composite: str) -> list[str]:
    """Leaf modules without an LRP rule here (and convs whose padding the recomputing rules
    cannot transpose)."""
    bad = set()
    for module in model.modules():
        if list(module.children()):
            continue
        if type(module) in CONVS and composite != "epsilon" and (
                module.padding_mode != "zeros" or isinstance(module.padding, str)):
            bad.add(f"{type(module).__name__}(padding={module.padding!r}, "
                    f"padding_mode={module.padding_mode!r})")
        elif not (type(module) in LAYERS or type(module) in NORMS
                  or isinstance(module, AVG_POOLS + GATES + GRADIENT_IS_RULE)):
            bad.add(type(module).__name__)
    return sorted(bad)


def _box_bound(value: float | list[float] | None, default: tuple[float, ...],
               name: str) -> torch.Tensor | float:
    """A float, or one value per channel as a (1, C, 1, 1) tensor."""
    if value is None:
        value = list(default)
    if isinstance(value, (int, float)):
        return float(value)
    values = [float(v) for v in value]
    if not values:
        raise ConfigError(f"lrp {name} must be a number or one number per channel; got {value!r}.")
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)


@register_method("lrp")
class LRP(PixelMethod):
    """Layer-wise relevance propagation for CNNs (Bach et al. 2015; Montavon et al. 2019) with
    the composites of Kohlbrenner et al. 2020 and BatchNorm canonization (module docstring).
    One forward, one backward. Transformers: method=chefer or method=attnlrp."""

    target_in_forward = True
    family: ClassVar[str] = "lrp"
    models: ClassVar[tuple[str, ...]] = ("cnn",)

    def __init__(self, *args: Any, composite: str = "epsilon", epsilon: float = 1e-9,
                 gamma: float = 0.25, stabilizer: float = 1e-6,
                 low: float | list[float] | None = None, high: float | list[float] | None = None,
                 canonize: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if composite not in COMPOSITES:
            raise ConfigError(f"lrp composite must be one of {COMPOSITES}; got {composite!r}.")
        if epsilon < 0 or stabilizer <= 0 or gamma < 0:
            raise ConfigError("lrp needs epsilon >= 0, stabilizer > 0 and gamma >= 0; got "
                              f"epsilon={epsilon}, stabilizer={stabilizer}, gamma={gamma}.")
        low_t, high_t = _box_bound(low, BOX_LOW, "low"), _box_bound(high, BOX_HIGH, "high")
        if bool(torch.as_tensor(low_t >= high_t).any()):
            raise ConfigError(f"lrp needs low < high (the pixel box); got {low} and {high}.")
        self.composite, self.canonize = composite, bool(canonize)
        self.settings = Settings(float(epsilon), float(stabilizer), float(gamma), low_t, high_t)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        return Passes(forwards=1, backwards=1)

    def attribute(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        require_cnn(model, "lrp", "chefer or attnlrp")
        unsupported = unsupported_modules(model, self.composite)
        if unsupported:
            raise ConfigError(f"method=lrp has no rule for the modules {unsupported} of "
                              f"{type(model).__name__}; use deeplift or integrated_gradients.")
        channels = images.shape[1]
        for bound in (self.settings.low, self.settings.high):
            if isinstance(bound, torch.Tensor) and bound.numel() not in (1, channels):
                raise ConfigError(f"lrp low / high have {bound.numel()} values for images with "
                                  f"{channels} channels.")
        x = images.detach().requires_grad_(True)
        with frozen_params(model), not_inplace(model):
            hooks = LRPHooks(model, self.composite, self.settings, self.canonize)
            try:
                logits = model(x)
                selected = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
                (grad,) = torch.autograd.grad(selected, x)
            finally:
                hooks.remove()
        return grad if hooks.relevance_at_input else x.detach() * grad
