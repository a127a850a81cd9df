"""The gradient- and activation-weighted CAM family beside Grad-CAM / HiResCAM (explain/cam.py).

Each method is a channel weighting of the layer's activations A (B, C, h, w) and the gradients
g = d logit_t / dA from the same one forward and one backward as Grad-CAM (EigenCAM: one forward,
no backward), summed over channels or projected on the first principal component:
  gradcam_plusplus  w_c = sum_hw relu(g) * alpha,  alpha = g^2 / (2 g^2 + sum_hw(A_c) g^3 + 1e-6)
                    (0 where g = 0)                          (Chattopadhay et al. 2018, eq. 19)
  xgradcam          w_c = sum_hw g * A_c / (sum_hw A_c + 1e-7)  (Fu et al. 2020)
  layercam          cam = sum_c relu(g) * A_c  (element-wise)   (Jiang et al. 2021)
  eigengradcam      first principal component of g * A (always eigen-projected)
  eigencam          first principal component of A: class-agnostic (Muhammad & Yeasin 2020)
The epsilons are pytorch-grad-cam's, so `order="gradcam_lib"` with `eigen_sign="library"`
reproduces its maps. Layers, ViT tokens (prefix tokens dropped), eigen projection and aug_smooth
are cam.py's. Score-CAM and Ablation-CAM: explain/cam_perturbation.py; FullGrad: fullgrad.py.
"""

from __future__ import annotations

from typing import Any

import torch

from xai_bench.explain.base import register_method
from xai_bench.explain.cam import CAM, EIGEN_ONLY, WEIGHTINGS
from xai_bench.utils.errors import ConfigError

PLUSPLUS_EPS = 1e-6  # pytorch-grad-cam's, in alpha's denominator
XGRAD_EPS = 1e-7  # pytorch-grad-cam's, in XGrad-CAM's activation sum


def _spatial_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=(2, 3), keepdim=True)


def gradcam_plusplus_weighting(acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
    """Grad-CAM++ channel weights (the exponential-score closed form of the second and third
    derivatives: powers of the first) times the activations."""
    assert grads is not None
    g2 = grads.pow(2)
    g3 = g2 * grads
    alpha = g2 / (2 * g2 + _spatial_sum(acts) * g3 + PLUSPLUS_EPS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return _spatial_sum(grads.clamp(min=0) * alpha) * acts


def xgradcam_weighting(acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
    """XGrad-CAM: gradients averaged with the activations' own spatial distribution as weights
    (the weights that make the map satisfy sensitivity and conservation axioms)."""
    assert grads is not None
    return _spatial_sum(grads * acts / (_spatial_sum(acts) + XGRAD_EPS)) * acts


def layercam_weighting(acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
    """LayerCAM: each location weighted by its own positive gradient (fine maps from shallow
    layers, where channel-mean weights blur)."""
    assert grads is not None
    return grads.clamp(min=0) * acts


def eigengradcam_weighting(acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
    assert grads is not None
    return grads * acts


def eigencam_weighting(acts: torch.Tensor, _grads: torch.Tensor | None) -> torch.Tensor:
    return acts


WEIGHTINGS.update(gradcam_plusplus=gradcam_plusplus_weighting, xgradcam=xgradcam_weighting,
                  layercam=layercam_weighting, eigengradcam=eigengradcam_weighting,
                  eigencam=eigencam_weighting)
EIGEN_ONLY.update({"eigencam", "eigengradcam"})


@register_method("gradcam_plusplus")
class GradCAMPlusPlus(CAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): positive gradients weighted per location by
    alpha, so several instances of a class all count."""

    mode = "gradcam_plusplus"


@register_method("xgradcam")
class XGradCAM(CAM):
    """XGrad-CAM (Fu et al. 2020): activation-normalised gradient weights."""

    mode = "xgradcam"


@register_method("layercam")
class LayerCAM(CAM):
    """LayerCAM (Jiang et al. 2021): element-wise positive gradient x activation."""

    mode = "layercam"


class EigenModeCAM(CAM):
    """A CAM whose map is always the first principal component of its weighted activations:
    `eigen_smooth` is the method itself, and false is refused."""

    default_eigen_smooth = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.eigen_smooth:
            raise ConfigError(f"{self.name} is an eigen projection: eigen_smooth cannot be false.")


@register_method("eigengradcam")
class EigenGradCAM(EigenModeCAM):
    """EigenGrad-CAM (pytorch-grad-cam's class-discriminative variant of EigenCAM, Muhammad &
    Yeasin 2020): first principal component of gradient x activation."""

    mode = "eigengradcam"


@register_method("eigencam")
class EigenCAM(EigenModeCAM):
    """EigenCAM (Muhammad & Yeasin 2020): first principal component of the activations; no
    gradients, so class-agnostic (the target is reported, not used). One forward."""

    mode = "eigencam"
    uses_gradients = False
    needs_grad = False
