"""Weights files: a flat name -> tensor dict from whatever container a release wraps it in.

Files are read safely (xai_bench.utils.checkpoints); containers ({"model": ...}, {"state_dict":
...}) are unwrapped and the prefixes DataParallel, DINO or Lightning add to every key stripped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from xai_bench.utils.checkpoints import SAFETENSORS_SUFFIX, load_checkpoint_safely
from xai_bench.utils.errors import ConfigError, WeightsNotFoundError, XaiBenchError

__all__ = [
    "SAFETENSORS_SUFFIX",
    "TORCH_SUFFIXES",
    "WRAPPER_KEYS",
    "WRAPPER_PREFIXES",
    "load_state_dict_file",
    "strip_wrapper_prefixes",
    "under_prefix",
]

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

# Containers that release files and training scripts wrap a state dict in, in lookup order.
WRAPPER_KEYS = ("model", "state_dict", "teacher", "module")
# Prefixes added by DataParallel / DINO / Lightning-style wrappers around the backbone.
WRAPPER_PREFIXES = ("module.", "backbone.", "model.")


def under_prefix(key: str, prefixes: Iterable[str]) -> bool:
    """Whether `key` is one of the modules `prefixes` or lies inside one ("head" holds "head.w")."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _unwrap(obj: Mapping[str, Any], file: Path) -> dict[str, torch.Tensor]:
    """Descend into {"model": ...}-style containers until a flat dict of tensors is reached."""
    current: Mapping[str, Any] = obj
    while not all(isinstance(v, torch.Tensor) for v in current.values()):
        inner = next(
            (current[k] for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None
        )
        if inner is None:
            break
        current = inner
    tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise XaiBenchError(
            f"{file.resolve()} holds no state dict: "
            f"top-level keys are {sorted(map(str, obj))[:8]}; "
            f"expected tensors, possibly under one of {list(WRAPPER_KEYS)}."
        )
    dropped = sorted(set(current) - set(tensors))
    if dropped:
        log.debug("ignoring non-tensor entries of %s: %s", file, dropped)
    return tensors


def strip_wrapper_prefixes(
    state_dict: Mapping[str, torch.Tensor], ignore: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Remove "module."/"backbone."/"model." while every key (outside `ignore` prefixes) has it.

    `ignore` lets a DINO teacher ({"backbone.*", "head.*"}) lose its prefix: its projection head
    is dropped later with the classifier anyway.
    """
    ignore = tuple(ignore)
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            relevant = [k for k in sd if not under_prefix(k, ignore)]
            if relevant and all(k.startswith(prefix) for k in relevant):
                sd = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}
                changed = True
    return sd


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .safetensors / .pth / .pt / .bin / .ckpt file, read safely.

    Containers ("model", "state_dict", "teacher", "module") are unwrapped and wrapper prefixes
    carried by every key are stripped.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsNotFoundError(f"weights file not found: {file.resolve()}")
    if file.suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise ConfigError(
            f"{file.resolve()}: unknown weights format {file.suffix!r}; "
            f"use one of {SAFETENSORS_SUFFIX}, {', '.join(TORCH_SUFFIXES)}."
        )
    obj = load_checkpoint_safely(file)
    return strip_wrapper_prefixes(_unwrap(obj, file))
