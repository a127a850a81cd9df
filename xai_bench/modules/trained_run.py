"""What an evaluation-side job rebuilds from a training run: the network with the checkpoint's
weights and the data module, both from the run's config.yaml. Shared by `evaluate` and
`meta_evaluate`; the config comes from a run folder, so only allowlisted targets are built
(xai_bench.tracking.trusted_config) and the weights are read with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from torch import nn

from xai_bench.models.weights import load_trained_network
from xai_bench.tracking.trusted_config import trusted_container
from xai_bench.utils.errors import ConfigError

__all__ = ["RUN_SECTIONS", "build_datamodule", "load_network"]

# sections of an evaluation-side config that are copies of the training run's config
RUN_SECTIONS = ("dataset", "init", "model")


def load_network(model_cfg: DictConfig, checkpoint: Path,
                 state: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the trained network from its config (no pretrained weights: the checkpoint
    overwrites every parameter) and load the checkpoint's weights strictly.

    Args:
        model_cfg: The training run's `model` section.
        checkpoint: The checkpoint file (for messages, and read here when `state` is None).
        state: The checkpoint already read safely, or None.
    """
    cfg = trusted_container(model_cfg, "model")
    assert isinstance(cfg, dict)
    cfg["init"] = {"name": "random", "pretrained": False}
    net = hydra.utils.instantiate(cfg)
    return load_trained_network(net, checkpoint, state)


def build_datamodule(cfg: DictConfig, run_cfg: DictConfig) -> pl.LightningDataModule:
    """The training run's data module with the user's `data.*` overrides (`cfg.data`; a key the
    run's dataset config lacks is an error), checked before any job starts."""
    dataset_cfg = trusted_container(run_cfg.dataset, "dataset")
    assert isinstance(dataset_cfg, dict)
    for key, value in (cfg.get("data") or {}).items():
        if value is not None:
            if key not in dataset_cfg:
                raise ConfigError(f"data.{key}: the training run's dataset config has no '{key}'.")
            dataset_cfg[key] = value
    datamodule = hydra.utils.instantiate(dataset_cfg)
    if hasattr(datamodule, "check"):
        datamodule.check()
    return datamodule
