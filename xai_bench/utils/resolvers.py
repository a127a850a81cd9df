"""OmegaConf resolvers the configs use; registered when an entry point imports this module.

  ${xai.concat:${a},${b}}   concatenate lists, dropping repeats (W&B tags: fixed + user's)
  ${run:KEY}                a value of the training run being evaluated: read from the
                            config.yaml of the run that `ckpt` (or `run_config`) points to
  ${run:KEY,DEFAULT}        the same, DEFAULT when the training run has no such key
  ${xai.sweep_group:NAME}   W&B group: shared by all jobs of a -m sweep, NAME for a single run
  ${xai.train_runs:DIR}     the training runs of a sweep folder, as a sweep value 'a','b',...
  ${xai.slurm_gpus:ACC,N}   GPUs per SLURM node: N, or 0 when the trainer runs on the CPU
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from xai_bench.utils.errors import ConfigError

NO_CHECKPOINT = "no-ckpt"


def _concat(*lists: Any) -> list[Any]:
    out: list[Any] = []
    for items in lists:
        values = list(items) if isinstance(items, list | tuple | ListConfig) else [items]
        out.extend(v for v in values if v not in out and v is not None)
    return out


@functools.lru_cache(maxsize=8)
def _training_config(ckpt: str, run_config: str | None) -> DictConfig:
    from xai_bench.tracking.run_folder import find_run_config, load_run_config, resolve_checkpoint
    from xai_bench.tracking.trusted_config import check_run_config

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
            "evaluation needs a trained model: pass ckpt=<run folder>/checkpoints/best.ckpt (or the run folder)."
        )
    run_config = root.get("run_config")
    return _training_config(str(Path(str(ckpt)).expanduser().resolve()), str(run_config) if run_config else None)


_REQUIRED = object()


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
    from xai_bench.tracking.trusted_config import trusted_container

    # the value lands in this config, where the loggers (and anything else) may build it
    return trusted_container(value, key, f"the training run's config.yaml (ckpt={_root_.ckpt})")


def _slurm_gpus(accelerator: str, devices: Any) -> int:
    if str(accelerator) == "cpu":
        return 0
    if not isinstance(devices, int):
        raise ConfigError(
            f"trainer.devices={devices!r}: on SLURM give a number of devices per node (it sets the "
            "launcher's tasks_per_node and gpus_per_node)."
        )
    return devices


def _sweep_group(fallback: str) -> str:
    from xai_bench.tracking.sweeps import sweep_group

    return sweep_group(fallback)


def _train_runs(sweep_dir: str) -> str:
    from xai_bench.tracking.sweeps import sweep_values

    return sweep_values(sweep_dir)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("xai.concat", _concat, replace=True)
    OmegaConf.register_new_resolver("run", _run_value, replace=True)
    OmegaConf.register_new_resolver("xai.slurm_gpus", _slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("xai.sweep_group", _sweep_group, replace=True)
    OmegaConf.register_new_resolver("xai.train_runs", _train_runs, replace=True)


register_resolvers()
