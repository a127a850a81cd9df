"""OmegaConf resolvers the configs use; registered when an entry point imports this module.

  ${xai.concat:${a},${b}}   concatenate lists, dropping repeats (W&B tags: fixed + user's)
  ${run:KEY}                a value of the training run being evaluated: read from the
                            config.yaml of the run that `ckpt` (or `run_config`) points to
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

    checkpoint = resolve_checkpoint(ckpt)
    return load_run_config(find_run_config(checkpoint, run_config))


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


def _run_value(key: str, _root_: DictConfig) -> Any:
    try:
        cfg = training_config(_root_)
    except Exception:
        if key == "run_name":  # Hydra names the run folder before the task can explain the problem
            return NO_CHECKPOINT
        raise
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None:
        raise ConfigError(f"the training run's config.yaml has no '{key}'.")
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("xai.concat", _concat, replace=True)
    OmegaConf.register_new_resolver("run", _run_value, replace=True)


register_resolvers()
