"""Models: timm ViTs/CNNs with the studies' initialisations, heads and attention blocks."""

from xai_bench.models.attention import CBAM, SqueezeExcite, attention_modules, make_attention
from xai_bench.models.factory import build_model
from xai_bench.models.heads import FlattenHeadClassifier, find_feature_layer
from xai_bench.models.weights import (
    WEIGHT_SOURCES,
    InitSpec,
    load_checkpoint_safely,
    load_state_dict_file,
    load_weights_into,
    resolve_weights,
)

__all__ = [
    "CBAM",
    "WEIGHT_SOURCES",
    "FlattenHeadClassifier",
    "InitSpec",
    "SqueezeExcite",
    "attention_modules",
    "build_model",
    "find_feature_layer",
    "load_checkpoint_safely",
    "load_state_dict_file",
    "load_weights_into",
    "make_attention",
    "resolve_weights",
]
