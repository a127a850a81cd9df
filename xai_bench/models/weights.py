"""Pretrained weights: find the file (or the hub), read it safely, and load it into a model.

Weights files come from strangers (release pages, model hubs, colleagues). A pickle can run
arbitrary code when loaded, so every file goes through `torch.load(weights_only=True)` or
safetensors, and anything else is refused with one message saying how to convert it.
Loading is strict about the backbone: a file that silently fails to fill half the model would
make a whole grid of experiments meaningless, so missing or unexpected keys are errors.

This module gathers the public names of the steps, each in its own module:
`weight_sources` (the init config and where its weights come from), `weight_files` (reading a
file into a flat state dict), `weight_loading` (into a model, strictly) and `trained_network`
(xai_bench's own training checkpoints); the safe reader is `xai_bench.utils.checkpoints`.
"""

from __future__ import annotations

from xai_bench.models.trained_network import (
    TRAINED_STATE_PREFIXES,
    load_init_from,
    load_trained_network,
    state_dict_mismatch,
)
from xai_bench.models.weight_files import (
    SAFETENSORS_SUFFIX,
    TORCH_SUFFIXES,
    WRAPPER_KEYS,
    WRAPPER_PREFIXES,
    load_state_dict_file,
    strip_wrapper_prefixes,
)
from xai_bench.models.weight_loading import (
    HARMLESS_EXTRA_PREFIXES,
    TOLERATED_MISSING_SUFFIXES,
    classifier_prefixes,
    load_weights_into,
    rename_prefixes,
    resample_pos_embed,
)
from xai_bench.models.weight_sources import (
    HUB_SOURCE_TEMPLATE,
    STUDY_ARCH,
    WEIGHT_SOURCES,
    InitSpec,
    WeightsSource,
    expected_file_names,
    hub_endpoint,
    hub_offline_reason,
    resolve_weights,
    source_hint,
)
from xai_bench.utils.checkpoints import load_checkpoint_safely

__all__ = [
    "HARMLESS_EXTRA_PREFIXES",
    "HUB_SOURCE_TEMPLATE",
    "SAFETENSORS_SUFFIX",
    "STUDY_ARCH",
    "TOLERATED_MISSING_SUFFIXES",
    "TORCH_SUFFIXES",
    "TRAINED_STATE_PREFIXES",
    "WEIGHT_SOURCES",
    "WRAPPER_KEYS",
    "WRAPPER_PREFIXES",
    "InitSpec",
    "WeightsSource",
    "classifier_prefixes",
    "expected_file_names",
    "hub_endpoint",
    "hub_offline_reason",
    "load_checkpoint_safely",
    "load_init_from",
    "load_state_dict_file",
    "load_trained_network",
    "load_weights_into",
    "rename_prefixes",
    "resample_pos_embed",
    "resolve_weights",
    "source_hint",
    "state_dict_mismatch",
    "strip_wrapper_prefixes",
]
