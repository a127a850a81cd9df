"""The one interface every interpretability method follows.

`method(model, images, target)` returns an `Explanation`: maps at input resolution (B, H, W),
the raw map at token / feature resolution (B, h, w) before upsampling and normalisation, and the
class each map explains. Methods are plain batched torch code on the model's device; they never
change the model (train/eval mode, fused-attention flags and requires_grad are restored) and
never change its predictions.

Precision: maps are computed in the model's precision (float32, or float64 in tests), never in
a mixed-precision context's bf16 / fp16: inside `torch.autocast` (Lightning's `*-mixed`
precision) autocast is switched off for the call and the images are cast to the weights' dtype.
Attention rows, rollout products, LRP ratios and SVD signs are not trustworthy in 8 mantissa
bits (maps of one method differed by up to 0.3 on a 0-1 scale). Half-precision weights
(`16-true`, `bf16-true`) are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.utils.errors import ConfigError

Target = str | int | torch.Tensor | None
UPSAMPLE_MODES = ("nearest", "bilinear")
NORMALIZE_MODES = ("minmax", "none")
# what a method is, for the catalogue (docs/methods.md) and the benchmark's floors
FAMILIES = ("attention", "cam", "gradient", "sampling", "perturbation", "lrp", "baseline")
MODEL_KINDS = ("vit", "cnn")


@dataclass(frozen=True)
class Passes:
    """Model passes one explanation spends per image, the forward that resolves the target
    included: forwards and backwards (a backward to the input or to a layer, weights frozen).
    A pass over k perturbed copies of an image counts k. Declared by each method, counted
    with hooks by tests/test_explain_catalog.py, and the floor `scripts/bench_explain.py`
    measures a method against."""

    forwards: float = 0
    backwards: float = 0


@dataclass
class Explanation:
    """What a method returns: the maps a metric scores, the raw map behind them, the classes."""

    maps: torch.Tensor  # (B, H, W) float, input resolution, post-processed
    raw: torch.Tensor  # (B, h, w) float, token / feature resolution, before post-processing
    target: torch.Tensor  # (B,) long: the class each map explains
    logits: torch.Tensor | None = None  # (B, C) the model's logits on the inputs, when computed


def resolve_target(target: Target, logits: torch.Tensor | None,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """predicted | label | a fixed class index | a (B,) tensor -> (B,) long on the logits' device.

    The reference study always explained class 1 (target=1); `predicted` is the usual default.
    """
    if logits is None:
        raise ValueError("resolve_target needs the model's logits")
    batch, num_classes = logits.shape
    if target is None or target == "predicted":
        return logits.argmax(dim=-1)
    if isinstance(target, str) and target == "label":
        if labels is None:
            raise ConfigError("target=label needs the batch labels; "
                              "pass labels=... or use target=predicted.")
        return labels.to(logits.device).long().view(batch)
    if isinstance(target, torch.Tensor):
        out = target.to(logits.device).long().view(-1)
        if out.numel() == 1:
            out = out.expand(batch)
    elif isinstance(target, int) and not isinstance(target, bool):
        out = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        raise ConfigError(f"target must be 'predicted', 'label' or a class index; got {target!r}.")
    if out.shape[0] != batch or (out < 0).any() or (out >= num_classes).any():
        raise ConfigError(
            f"target {target!r} is not a valid class index for {num_classes} classes.")
    return out


def upsample(raw: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(B, h, w) -> (B, H, W). nearest = each token becomes a block of pixels (the study's
    attention maps); bilinear uses align_corners=False (cv2.resize's pixel-centre convention)."""
    if mode not in UPSAMPLE_MODES:
        raise ConfigError(f"upsample must be one of {UPSAMPLE_MODES}; got {mode!r}.")
    if tuple(raw.shape[-2:]) == tuple(size):
        return raw
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(raw.unsqueeze(1).float(), size=size, mode=mode, **kwargs).squeeze(1)


def normalize(maps: torch.Tensor, mode: str = "minmax", eps: float = 1e-7) -> torch.Tensor:
    """Per-map min-max to [0, 1] (a constant map becomes all zeros), or unchanged."""
    if mode not in NORMALIZE_MODES:
        raise ConfigError(f"normalize must be one of {NORMALIZE_MODES}; got {mode!r}.")
    if mode == "none":
        return maps
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (maps.dim() - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (maps.dim() - 1)))
    return (maps - lo) / (hi - lo + eps)


HALF_DTYPES = (torch.float16, torch.bfloat16)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Leave a caller's autocast (Lightning's *-mixed precision) for the enclosed code; nothing
    to do on devices without autocast."""
    available = getattr(torch.amp, "is_autocast_available",
                        lambda _: device_type in ("cpu", "cuda"))
    if not available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's weights, in which maps are computed (float32 without
    weights); half-precision weights are refused."""
    for param in model.parameters():
        if param.is_floating_point():
            if param.dtype in HALF_DTYPES:
                raise ConfigError(
                    f"the model's weights are {param.dtype}: explanations need float32 weights; "
                    "evaluate with trainer.precision=32-true (or load the model in float32)."
                )
            return param.dtype
    return torch.float32


class model_state:  # noqa: N801 - used as a context manager, reads like a function
    """Put `model` in eval mode for explaining and restore everything afterwards.

    Restores: train/eval mode, timm fused-attention flags (changed by attention capture) and
    requires_grad of the parameters (gradient methods may need them off).
    """

    def __init__(self, model: nn.Module, eval_mode: bool = True) -> None:
        self.model, self.eval_mode = model, eval_mode

    def __enter__(self) -> nn.Module:
        self.training = self.model.training
        self.fused = {m: m.fused_attn for m in self.model.modules() if hasattr(m, "fused_attn")}
        self.grads = {p: p.requires_grad for p in self.model.parameters()}
        if self.eval_mode:
            self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.training)
        for module, flag in self.fused.items():
            module.fused_attn = flag
        for param, flag in self.grads.items():
            param.requires_grad_(flag)


class ExplainMethod:
    """Base class: subclasses implement `explain_raw`; post-processing is shared.

    Settings common to all methods:
      target     predicted | label | class index (the study: 1)
      upsample   nearest | bilinear (defaults per method follow the study, docs/methods.md)
      normalize  minmax | none
      relu       clamp negative evidence to zero before normalising (CAM methods)
    """

    name: ClassVar[str] = ""
    # one of FAMILIES, and the model kinds (MODEL_KINDS) the method explains
    family: ClassVar[str] = ""
    models: ClassVar[tuple[str, ...]] = MODEL_KINDS
    default_upsample: ClassVar[str] = "bilinear"
    default_relu: ClassVar[bool] = False
    needs_grad: ClassVar[bool] = True
    # True when explain_raw's first model forward runs on the unmodified images and the target
    # is read only after it: the base class then resolves the target from that forward's logits
    target_in_forward: ClassVar[bool] = False

    def __init__(self, target: Target = "predicted", upsample: str | None = None,
                 normalize: str = "minmax", relu: bool | None = None, eps: float = 1e-7) -> None:
        self.target = target
        self.upsample_mode = upsample or self.default_upsample
        self.normalize_mode = normalize
        self.relu = self.default_relu if relu is None else relu
        self.eps = eps
        self.current_ids: torch.Tensor | None = None
        if self.upsample_mode not in UPSAMPLE_MODES:
            raise ConfigError(
                f"upsample must be one of {UPSAMPLE_MODES}; got {self.upsample_mode!r}.")
        if normalize not in NORMALIZE_MODES:
            raise ConfigError(f"normalize must be one of {NORMALIZE_MODES}; got {normalize!r}.")

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor | None) -> torch.Tensor:
        """(B, h, w) raw maps for the `target` classes. With `target_in_forward` (and for
        class-agnostic methods) the target's values are filled in by the first model forward."""
        raise NotImplementedError

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """The model passes one map costs per image (see `Passes`), for these settings, this
        model and images of height x width."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its passes")

    def postprocess(self, raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        maps = raw.clamp(min=0) if self.relu else raw
        return normalize(upsample(maps, size, self.upsample_mode), self.normalize_mode, self.eps)

    def _explain_target_from_own_forward(
        self, model: nn.Module, images: torch.Tensor, spec: Target, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One model pass instead of two: a hook on the method's first forward (on `images`)
        resolves the target from its logits, in place, before the method reads it. A
        class-agnostic method that runs no forward at all (random) gets one afterwards."""
        tgt = torch.full((images.shape[0],), -1, dtype=torch.long, device=images.device)
        outputs: list[torch.Tensor] = []

        def fill(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            if not outputs:
                outputs.append(out.detach())
                tgt.copy_(resolve_target(spec, outputs[0], labels))

        handle = model.register_forward_hook(fill)
        try:
            with torch.set_grad_enabled(self.needs_grad and torch.is_grad_enabled()):
                raw = self.explain_raw(model, images, tgt)
            if not outputs:
                if self.needs_grad:
                    raise RuntimeError(
                        f"{type(self).__name__}.target_in_forward is set but it ran no forward")
                with torch.no_grad():
                    model(images)
        finally:
            handle.remove()
        return raw, outputs[0], tgt

    def __call__(self, model: nn.Module, images: torch.Tensor, target: Target = None,
                 labels: torch.Tensor | None = None,
                 ids: torch.Tensor | None = None) -> Explanation:
        """`ids` (B,) identify the images (dataset indices) for methods that draw random numbers:
        seeded per image, their maps do not depend on batching or DDP rank."""
        spec = self.target if target is None else target
        dtype = compute_dtype(model)
        if images.is_floating_point() and images.dtype != dtype:
            images = images.to(dtype)
        self.current_ids = ids
        try:
            # full precision even inside a caller's autocast (module docstring)
            with autocast_off(images.device.type):
                return self._explain(model, images, spec, labels)
        finally:
            self.current_ids = None

    def _explain(self, model: nn.Module, images: torch.Tensor, spec: Target,
                 labels: torch.Tensor | None) -> Explanation:
        with model_state(model):
            if self.target_in_forward or not self.needs_grad:
                raw, logits, tgt = self._explain_target_from_own_forward(model, images, spec,
                                                                         labels)
            else:
                # the target must be known before the method's first forward: a no-grad pass first
                with torch.no_grad():
                    logits = model(images)
                tgt = resolve_target(spec, logits, labels)
                raw = self.explain_raw(model, images, tgt)
        maps = self.postprocess(raw.detach().float(), tuple(images.shape[-2:]))
        return Explanation(maps=maps, raw=raw.detach(), target=tgt, logits=logits)


METHODS: dict[str, type[ExplainMethod]] = {}


def register_method(name: str) -> Callable[[type[ExplainMethod]], type[ExplainMethod]]:
    """Class decorator: file the method under `name`, so `build_method(name)` and
    `method=<name>` configs find it (registration happens when its module is imported).

    Args:
        name: The method's name; registering a name twice is an error.

    Returns:
        The decorator, which returns the class unchanged (with `name` set).
    """

    def deco(cls: type[ExplainMethod]) -> type[ExplainMethod]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def build_method(name: str, **kwargs: Any) -> ExplainMethod:
    """The registry lookup behind `method=<name>` configs: every `conf/method/*.yaml` names this
    function as its `_target_`, so a config file and a registered class are all a method needs.

    Args:
        name: A registered method (`METHODS`), e.g. "attention", "chefer", "gradcam".
        **kwargs: The method's settings: the common `target` (predicted | label | a class
            index), `upsample` (nearest | bilinear), `normalize` (minmax | none), `relu`,
            `eps`, and the method's own (e.g. `layer`, `n_steps`).

    Returns:
        The method, called as `method(model, images, target=None, labels=None, ids=None)`.

    Raises:
        ConfigError: `name` is not registered (the message lists the known names).
    """
    if name not in METHODS:
        raise ConfigError(f"method={name!r} is unknown; available: {', '.join(sorted(METHODS))}.")
    return METHODS[name](**kwargs)
