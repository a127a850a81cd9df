"""xai_bench's own training checkpoints: every weight of a trained network, head included.

Evaluation and `init_from` load a network this project trained; unlike pretrained weights
nothing stays fresh, so the checkpoint must fit the model exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xai_bench.models.weight_loading import first_keys
from xai_bench.utils.checkpoints import load_checkpoint_safely
from xai_bench.utils.errors import XaiBenchError

__all__ = [
    "TRAINED_STATE_PREFIXES",
    "load_init_from",
    "load_trained_network",
    "state_dict_mismatch",
]

log = logging.getLogger(__name__)

# how ClassifierModule names its network in a Lightning checkpoint (torch.compile adds _orig_mod)
TRAINED_STATE_PREFIXES = ("net._orig_mod.", "net.")


def state_dict_mismatch(
    own: Mapping[str, torch.Tensor], found: Mapping[str, Any], *, check_keys: bool = True
) -> str | None:
    """What keeps `found` (a checkpoint's state dict) from loading into a model whose state dict
    is `own`, as one line (shape mismatches first: they say "another architecture"); None when
    it fits. torch.compile's `_orig_mod.` is ignored on both sides."""

    def plain(key: str) -> str:
        return key.replace("_orig_mod.", "")

    own_shapes = {plain(k): tuple(v.shape) for k, v in own.items()}
    found_shapes = {
        plain(k): tuple(v.shape) for k, v in found.items() if isinstance(v, torch.Tensor)
    }
    mismatched = [
        f"{k} (checkpoint {found_shapes[k]}, model {shape})"
        for k, shape in own_shapes.items()
        if k in found_shapes and found_shapes[k] != shape
    ]
    problems = (
        [f"{len(mismatched)} tensor(s) of another shape: {first_keys(mismatched, 3)}"]
        if mismatched else []
    )
    if check_keys:
        missing = [k for k in own_shapes if k not in found_shapes]
        unexpected = [k for k in found_shapes if k not in own_shapes]
        if missing:
            problems.append(f"{len(missing)} missing: {first_keys(missing, 3)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {first_keys(unexpected, 3)}")
    return "; ".join(problems) or None


def load_trained_network(
    net: nn.Module,
    checkpoint: str | os.PathLike[str],
    state: Mapping[str, Any] | None = None,
    *,
    config: str = "its run config",
    fix: str = "evaluate a checkpoint with the config of the run that trained it (its run folder's "
    "config.yaml, or run_config=...)",
) -> nn.Module:
    """Load every weight of a network trained by xai_bench (head included) strictly, from its
    Lightning checkpoint (read safely) or a plain state dict. `state`: the checkpoint already read.

    A checkpoint of another architecture (same keys, other shapes) is refused in one line that
    names the first differing tensors; `config` says where the model came from and `fix` what to do.
    """
    state = load_checkpoint_safely(checkpoint) if state is None else state
    state = state.get("state_dict", state)
    weights = {}
    for key, value in state.items():
        for prefix in TRAINED_STATE_PREFIXES:
            if key.startswith(prefix):
                weights[key[len(prefix):]] = value
                break
    if not weights:
        weights = dict(state)  # a plain state dict of the network
    problem = state_dict_mismatch(net.state_dict(), weights)
    if problem:
        raise XaiBenchError(
            f"checkpoint {checkpoint} does not match the model of {config} ({problem}): {fix}."
        )
    net.load_state_dict(weights, strict=True)
    return net


def load_init_from(net: nn.Module, init_from: str | os.PathLike[str]) -> nn.Module:
    """`init_from=<run folder or checkpoint>`: every weight of a network this task trained before
    (head included), for ATCON's unsupervised fine-tuning of a supervised model. Unlike
    `ckpt_path`, the optimizer and the epoch counters start fresh."""
    from xai_bench.tracking import resolve_checkpoint  # a run folder -> its checkpoint

    load_trained_network(
        net, resolve_checkpoint(init_from), config="this run's model config",
        fix="init_from needs a run trained with the same model settings (model.*)",
    )
    log.info("network weights (head included) from %s", init_from)
    return net
