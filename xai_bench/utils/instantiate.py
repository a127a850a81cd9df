"""Builds the Lightning callbacks and loggers of a config: named groups of `_target_` nodes."""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

from xai_bench.utils.errors import ConfigError


def _instantiate_group(cfg: DictConfig | None, kind: str) -> list:
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{kind} config must be a mapping of name -> {{_target_: ...}}.")
    objects = []
    for name, node in cfg.items():
        if node is None:  # disabled from the command line or a debug config: callbacks.x=null
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"{kind}.{name} has no _target_; set it or disable it with {kind}.{name}=null.")
        objects.append(hydra.utils.instantiate(node))
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[pl.Callback]:
    return _instantiate_group(cfg, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return _instantiate_group(cfg, "logger")
