"""The configs' OmegaConf resolvers, registered by the entry points (`register_resolvers()`).

  ${run:KEY}                a value of the training run being evaluated: read from the
                            config.yaml of the run that `ckpt` (or `run_config`) points to
  ${run:KEY,DEFAULT}        the same, DEFAULT when the training run has no such key
  ${xai.sweep_group:NAME}   W&B group: shared by all jobs of a -m sweep, NAME for a single run
  ${xai.train_runs:DIR}     the training runs of a sweep folder, as a sweep value 'a','b',...
  ${xai.concat:${a},${b}}   concatenate lists, dropping repeats (xai_bench.utils.resolvers)
  ${xai.slurm_gpus:ACC,N}   GPUs per SLURM node (xai_bench.utils.resolvers)

`${run:...}` reads the training run's config.yaml while a config resolves: it is read once per
(ckpt, run_config) through a small cache, and checked as untrusted input before any of it is
used (xai_bench.tracking.trusted_config).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from xai_bench.tracking.run_folder import find_run_config, load_run_config, resolve_checkpoint
from xai_bench.tracking.sweeps import sweep_group, sweep_values
from xai_bench.tracking.trusted_config import check_run_config, trusted_container
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.resolvers import concat, shortcut_label, slurm_gpus

__all__ = ["NO_CHECKPOINT", "register_resolvers", "training_config"]

NO_CHECKPOINT = "no-ckpt"
_REQUIRED = object()


@functools.lru_cache(maxsize=8)
def _training_config(ckpt: str, run_config: str | None) -> DictConfig:
    checkpoint = resolve_checkpoint(ckpt)
    path = find_run_config(checkpoint, run_config)
    cfg = load_run_config(path)
    check_run_config(cfg, path)  # untrusted input: refused before any of it is resolved or built
    return cfg


def training_config(root: DictConfig) -> DictConfig:
    """The config.yaml of the training run that `root.ckpt` belongs to (cached)."""
    try:
        ckpt = root.ckpt
    except MissingMandatoryValue:
        ckpt = None
    if not ckpt:
        raise ConfigError(
            "evaluation needs a trained model: pass ckpt=<run folder>/checkpoints/best.ckpt "
            "(or the run folder)."
        )
    run_config = root.get("run_config")
    return _training_config(
        str(Path(str(ckpt)).expanduser().resolve()), str(run_config) if run_config else None
    )


def _run_value(key: str, default: Any = _REQUIRED, *, _root_: DictConfig) -> Any:
    try:
        cfg = training_config(_root_)
    except Exception:
        if key == "run_name":  # Hydra names the run folder before the task can explain the problem
            return NO_CHECKPOINT
        raise
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None:
        if default is not _REQUIRED:
            return default
        raise ConfigError(f"the training run's config.yaml has no '{key}'.")
    # the value lands in this config, where the loggers (and anything else) may build it
    return trusted_container(value, key, f"the training run's config.yaml (ckpt={_root_.ckpt})")


def register_resolvers() -> None:
    """Register every resolver conf/ uses; call it before Hydra composes a config (the entry
    points do at import, tests in conftest). Registering again replaces them (idempotent)."""
    OmegaConf.register_new_resolver("xai.concat", concat, replace=True)
    OmegaConf.register_new_resolver("run", _run_value, replace=True)
    OmegaConf.register_new_resolver("xai.slurm_gpus", slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("xai.shortcut_label", shortcut_label, replace=True)
    OmegaConf.register_new_resolver("xai.sweep_group", sweep_group, replace=True)
    OmegaConf.register_new_resolver("xai.train_runs", sweep_values, replace=True)
