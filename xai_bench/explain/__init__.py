"""Interpretability maps: one interface (`method(model, images, target) -> Explanation`) and a
registry that `method=<name>` configs build from. Importing this package registers every method.
"""

# imported for their registration
from xai_bench.explain import (  # noqa: F401
    attention,
    attnlrp,
    baselines,
    cam,
    cam_family,
    cam_perturbation,
    chefer,
    deeplift,
    fullgrad,
    gradients,
    lrp_cnn,
    noise_tunnel,
    occlusion,
    perturbation,
    shap,
)
from xai_bench.explain.base import (
    FAMILIES,
    METHODS,
    MODEL_KINDS,
    ExplainMethod,
    Explanation,
    Passes,
    build_method,
    normalize,
    register_method,
    resolve_target,
    upsample,
)
from xai_bench.explain.cam import gradcam_differentiable
from xai_bench.explain.gradients import guided_backprop_differentiable

__all__ = [
    "FAMILIES",
    "METHODS",
    "MODEL_KINDS",
    "ExplainMethod",
    "Explanation",
    "Passes",
    "build_method",
    "gradcam_differentiable",
    "guided_backprop_differentiable",
    "normalize",
    "register_method",
    "resolve_target",
    "upsample",
]
