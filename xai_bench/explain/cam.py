"""Grad-CAM and HiResCAM, batched, on CNN feature maps and ViT token grids.

One implementation with a mode (one forward, one backward of the summed target logits):
  gradcam   cam = sum_c mean_hw(dy/dA_c) * A_c          (Selvaraju et al.)
  hirescam  cam = sum_c dy/dA_c * A_c   (element-wise)  (Draelos & Carin; faithful when the
            layer is followed by Flatten -> Linear, the Grad-CAM vs HiResCAM faithfulness
            study; equal to Grad-CAM times h*w when the layer is followed by global average
            pooling and a linear head)
The rest of the CAM family (explain/cam_family.py) adds its modes to `WEIGHTINGS` below:
Grad-CAM++, XGrad-CAM, LayerCAM, EigenGrad-CAM (gradients) and EigenCAM (activations only).

Layer: a dotted module path, or the default: `blocks[-1].norm1` for ViTs (the study's choice;
its (B, N, C) tokens become (B, C, gh, gw) after dropping the prefix tokens) and
`model.feature_layer` for CNNs.

pytorch-grad-cam (the study's tool) post-processes ReLU -> per-image min-max (eps 1e-7) ->
cv2 bilinear resize -> min-max; our shared chain is relu -> upsample -> min-max. Setting
`order="gradcam_lib"` reproduces the library's chain; `eigen_smooth` and `aug_smooth` follow
the library's definitions (see `eigen_projection` and `CAM.__call__`). `gradcam_study` is the
study's configuration (docs/methods.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from xai_bench.explain.base import (
    ExplainMethod,
    Explanation,
    Passes,
    Target,
    model_state,
    normalize,
    register_method,
    resolve_target,
    upsample,
)
from xai_bench.explain.gradients import frozen_params
from xai_bench.explain.vit_geometry import explicit_attention, is_vit, tokens_to_grid
from xai_bench.utils.errors import ConfigError

EIGEN_SIGNS = ("align", "svd", "library", "max_abs")
ORDERS = ("standard", "gradcam_lib")
AUG_FACTORS = (0.9, 1.0, 1.1)  # the library's default ttach Multiply factors


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """The module whose output is explained: a dotted path, a module, or the default."""
    if isinstance(layer, nn.Module):
        return layer
    if layer is None or layer == "":
        if is_vit(model):
            return model.blocks[-1].norm1
        found = getattr(model, "feature_layer", None)
        if found is None:
            raise ConfigError(
                f"{type(model).__name__} has no feature_layer: "
                "set layer=<dotted module path> for CAM methods."
            )
        return found
    try:
        return model.get_submodule(str(layer))
    except AttributeError as err:
        raise ConfigError(
            f"layer={layer!r} is not a module path of {type(model).__name__}: {err}") from err


def _as_map(t: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Layer output -> (B, C, h, w): conv maps as they are, ViT tokens without the prefix tokens."""
    if t.dim() == 4:
        return t
    if t.dim() == 3 and is_vit(model):
        return tokens_to_grid(t, model).permute(0, 3, 1, 2)
    raise ConfigError(
        f"the CAM layer gives a {tuple(t.shape)} output; "
        "need a (B, C, h, w) map or ViT (B, N, C) tokens."
    )


def layer_output(model: nn.Module, images: torch.Tensor, layer: str | nn.Module | None = None,
                 create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer's raw output: a (B, C, h, w) map or ViT (B, N, C) tokens, the logits) from one
    forward; the layer must run exactly once."""
    module = resolve_layer(model, layer)
    store: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        store.append(out[0] if isinstance(out, tuple) else out)

    handle = module.register_forward_hook(hook)
    try:
        with explicit_attention(model) if create_graph else contextlib.nullcontext():
            logits = model(images)
    finally:
        handle.remove()
    if len(store) != 1:
        raise ConfigError(f"the CAM layer ran {len(store)} times in one forward; "
                          "choose a layer used once.")
    return store[0], logits


def layer_activations_and_grads(model: nn.Module, images: torch.Tensor, target: Target,
                                layer: str | nn.Module | None = None, create_graph: bool = False
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(activations, d sum_b logit_{b,t_b} / d activations) as (B, C, h, w), the logits and the
    resolved target, from one forward and one backward. With `create_graph` both stay connected
    to the graph (second-order gradients)."""
    act, logits = layer_output(model, images, layer, create_graph)
    if not act.requires_grad:
        raise ConfigError("the CAM layer's output does not depend on anything that requires grad.")
    tgt = resolve_target(target, logits.detach())
    score = logits.gather(1, tgt.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(score, act, create_graph=create_graph)
    return _as_map(act, model), _as_map(grad, model), logits, tgt


def eigen_projection(weighted: torch.Tensor, sign: str = "align") -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): projection of the centred (h*w, C) weighted activations on
    their first right singular vector (pytorch-grad-cam's eigen_smooth).

    An SVD fixes a singular vector only up to sign, so the map may come out inverted:
      align    orient it to correlate positively with the plain CAM (sum over channels);
               deterministic and meaningful (our default)
      svd      whatever torch.linalg.svd returns (on CPU the same LAPACK routine the library
               calls, usually the same sign; other devices may differ)
      library  exactly the library's computation: numpy SVD (full matrices) on the CPU
      max_abs  Seg-Eigen-CAM rule: flip where |min| > |max|
    """
    if sign not in EIGEN_SIGNS:
        raise ConfigError(f"eigen_sign must be one of {EIGEN_SIGNS}; got {sign!r}.")
    batch, _, height, width = weighted.shape
    x = weighted.flatten(2).transpose(1, 2)  # (B, h*w, C)
    if x.dtype in (torch.float16, torch.bfloat16):  # neither numpy nor the SVD take half floats
        x = x.float()
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    x = x - x.mean(dim=1, keepdim=True)
    if sign == "library":
        _, _, vt = np.linalg.svd(x.detach().cpu().numpy(), full_matrices=True)
        first = torch.from_numpy(np.ascontiguousarray(vt[:, 0, :])).to(x.device, x.dtype)
    else:
        first = torch.linalg.svd(x, full_matrices=False).Vh[:, 0, :]
    proj = (x @ first.unsqueeze(-1)).squeeze(-1)  # (B, h*w)
    if sign == "align":
        ref = weighted.sum(dim=1).flatten(1)
        flip = ((proj.detach() * (ref.detach() - ref.detach().mean(1, keepdim=True))).sum(1) < 0)
        proj = torch.where(flip.unsqueeze(1), -proj, proj)
    elif sign == "max_abs":
        flip = proj.detach().min(1).values.abs() > proj.detach().max(1).values.abs()
        proj = torch.where(flip.unsqueeze(1), -proj, proj)
    return proj.view(batch, height, width)


def _gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return grads.mean(dim=(2, 3), keepdim=True) * acts


def _hirescam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return grads * acts


# mode -> (activations, gradients) -> weighted activations (B, C, h, w), summed over channels
# (or eigen-projected) into the map; explain/cam_family.py registers the family's other modes
Weighting = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
WEIGHTINGS: dict[str, Weighting] = {"gradcam": _gradcam, "hirescam": _hirescam}
EIGEN_ONLY: set[str] = set()  # modes whose map is always the eigen projection (EigenCAM)


def cam_from(acts: torch.Tensor, grads: torch.Tensor | None, mode: str = "gradcam",
             eigen_smooth: bool = False, eigen_sign: str = "align") -> torch.Tensor:
    """(B, C, h, w) activations and gradients -> (B, h, w) map of a `WEIGHTINGS` mode."""
    if mode not in WEIGHTINGS:
        raise ConfigError(f"CAM mode must be one of {tuple(WEIGHTINGS)}; got {mode!r}.")
    weighted = WEIGHTINGS[mode](acts, grads)
    if eigen_smooth or mode in EIGEN_ONLY:
        return eigen_projection(weighted, eigen_sign)
    return weighted.sum(dim=1)


def gradcam_with_graph(model: nn.Module, images: torch.Tensor, target: Target = "predicted",
                       layer: str | nn.Module | None = None, mode: str = "gradcam",
                       eigen_smooth: bool = False, eigen_sign: str = "align"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, h, w) raw CAM, (B,) resolved target), the CAM still connected to the graph
    (create_graph=True) so that a loss on it trains the weights through d(CAM)/d(weights).

    The one differentiable CAM of xai_bench: `gradcam_differentiable`, `CAM(differentiable=True)`
    and ATCON's consistency loss all call it. The target comes from the same forward as the map
    (no second pass that would see other dropout or update BatchNorm statistics again)."""
    acts, grads, _, tgt = layer_activations_and_grads(model, images, target, layer,
                                                      create_graph=True)
    return cam_from(acts, grads, mode, eigen_smooth, eigen_sign), tgt


def gradcam_differentiable(model: nn.Module, images: torch.Tensor, target: Target = "predicted",
                           layer: str | nn.Module | None = None, relu: bool = False,
                           mode: str = "gradcam") -> torch.Tensor:
    """(B, h, w) Grad-CAM (or HiResCAM) still connected to the graph (create_graph=True), at
    feature resolution, no min-max (see `gradcam_with_graph`). The model's mode is left as the
    caller set it."""
    cam, _ = gradcam_with_graph(model, images, target, layer, mode)
    return cam.clamp(min=0) if relu else cam


class CAM(ExplainMethod):
    """Shared CAM method (see the module docstring for the settings): one forward, and one
    backward where the mode uses gradients; the CAM family's subclasses set `mode`."""

    target_in_forward = True
    family = "cam"

    mode: ClassVar[str] = "gradcam"
    uses_gradients: ClassVar[bool] = True  # False: activations only (no backward)
    default_relu = True
    default_upsample = "bilinear"
    default_eigen_smooth: ClassVar[bool] = False
    default_aug_smooth: ClassVar[bool] = False
    default_eigen_sign: ClassVar[str] = "align"
    default_order: ClassVar[str] = "standard"

    def __init__(self, target: Target = "predicted", upsample: str | None = None,
                 normalize: str = "minmax", relu: bool | None = None, eps: float = 1e-7,
                 layer: str | None = None,
                 eigen_smooth: bool | None = None, aug_smooth: bool | None = None,
                 eigen_sign: str | None = None, order: str | None = None,
                 differentiable: bool = False) -> None:
        super().__init__(target=target, upsample=upsample, normalize=normalize, relu=relu, eps=eps)
        self.layer = layer
        self.eigen_smooth = (self.default_eigen_smooth if eigen_smooth is None
                             else bool(eigen_smooth))
        self.aug_smooth = self.default_aug_smooth if aug_smooth is None else bool(aug_smooth)
        self.eigen_sign = eigen_sign or self.default_eigen_sign
        self.order = order or self.default_order
        self.differentiable = bool(differentiable)
        if self.eigen_sign not in EIGEN_SIGNS:
            raise ConfigError(f"eigen_sign must be one of {EIGEN_SIGNS}; got {self.eigen_sign!r}.")
        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {ORDERS}; got {self.order!r}.")
        if self.differentiable and self.eigen_smooth and self.eigen_sign == "library":
            raise ConfigError("eigen_sign=library runs numpy and cannot be differentiable; "
                              "use svd or align.")
        if self.differentiable and not self.uses_gradients:
            raise ConfigError(f"{self.name or type(self).__name__} uses no gradients: "
                              "differentiable=true is for the gradient-weighted CAMs.")

    def core_passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """Passes of one raw map of one image, no augmentation: one forward (it resolves the
        target too) and, where the mode uses gradients, one backward to the layer."""
        return Passes(forwards=1, backwards=1 if self.uses_gradients else 0)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """The core passes; with aug_smooth a no-grad forward for the target, then the core
        passes for each of the 6 views."""
        core = self.core_passes(model, height, width)
        if self.aug_smooth:
            views = 2 * len(AUG_FACTORS)
            return Passes(forwards=1 + views * core.forwards, backwards=views * core.backwards)
        return core

    # -- raw maps ---------------------------------------------------------------------------

    def _cams(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.differentiable:
            cam, _ = gradcam_with_graph(model, images, target, self.layer, self.mode,
                                        self.eigen_smooth, self.eigen_sign)
            return cam
        if not self.uses_gradients:
            with torch.no_grad():
                out, _ = layer_output(model, images, self.layer)
            return cam_from(_as_map(out, model), None, self.mode, self.eigen_smooth,
                            self.eigen_sign)
        with frozen_params(model):
            x = images.detach().requires_grad_(True)
            acts, grads, _, _ = layer_activations_and_grads(model, x, target, self.layer)
            return cam_from(acts.detach(), grads.detach(), self.mode, self.eigen_smooth,
                            self.eigen_sign)

    def augmented_raw(self, model: nn.Module, images: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
        """(A, B, h, w) raw maps of the 6 test-time augmentations (no flip / horizontal flip x
        brightness 0.9, 1.0, 1.1, the library's ttach default), flips undone; all in one batch."""
        views = [(flip, factor) for flip in (False, True) for factor in AUG_FACTORS]
        batch = torch.cat([(images.flip(-1) if flip else images) * factor
                           for flip, factor in views])
        cams = self._cams(model, batch, target.repeat(len(views)))
        cams = cams.view(len(views), images.shape[0], *cams.shape[1:])
        return torch.stack([cam.flip(-1) if flip else cam
                            for (flip, _), cam in zip(views, cams, strict=True)])

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        """(B, h, w) CAM; with aug_smooth the mean of the augmented raw maps (the post-processed
        `maps` average the augmentations after post-processing, as the library does)."""
        if self.aug_smooth:
            return self.augmented_raw(model, images, target).mean(dim=0)
        return self._cams(model, images, target)

    # -- post-processing --------------------------------------------------------------------

    def postprocess(self, raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.order == "standard":
            return super().postprocess(raw, size)
        maps = raw.clamp(min=0) if self.relu else raw
        # the library: min-max before resizing
        maps = normalize(maps, self.normalize_mode, self.eps)
        return normalize(upsample(maps, size, self.upsample_mode), self.normalize_mode, self.eps)

    def _explain(self, model: nn.Module, images: torch.Tensor, spec: Target,
                 labels: torch.Tensor | None) -> Explanation:
        """With aug_smooth, each augmentation's map is post-processed and the maps averaged (the
        library's aug_smooth); with order=standard the average is min-max normalised again. The
        target is resolved once, on the original images."""
        if not self.aug_smooth:
            return super()._explain(model, images, spec, labels)
        with model_state(model):
            with torch.no_grad():
                logits = model(images)
            tgt = resolve_target(spec, logits, labels)
            per_view = self.augmented_raw(model, images, tgt)
        size = tuple(images.shape[-2:])
        maps = torch.stack([self.postprocess(r.detach().float(), size)
                            for r in per_view]).mean(dim=0)
        if self.order == "standard":
            maps = normalize(maps, self.normalize_mode, self.eps)
        return Explanation(maps=maps, raw=per_view.mean(dim=0).detach(), target=tgt, logits=logits)


@register_method("gradcam")
class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of the gradients."""

    mode = "gradcam"


@register_method("hirescam")
class HiResCAM(CAM):
    """HiResCAM (Draelos & Carin 2020): element-wise gradient x activation, summed over
    channels."""

    mode = "hirescam"


@register_method("gradcam_study")
class GradCAMStudy(GradCAM):
    """The study's Grad-CAM (docs/methods.md): pytorch-grad-cam's chain with eigen_smooth and
    aug_smooth on blocks[-1].norm1, target class 1, the library's SVD sign."""

    default_eigen_smooth = True
    default_aug_smooth = True
    default_eigen_sign = "library"
    default_order = "gradcam_lib"

    def __init__(self, target: Target = 1, **kwargs: Any) -> None:
        super().__init__(target=target, **kwargs)
