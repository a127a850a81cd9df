"""Checks of a run's inputs before anything expensive is built, every problem in one message.

`dataset=kvasir init=dino` on a fresh machine lacks both the prepared data and the DINO weights
file: reporting only the first would cost the user a second attempt (on a cluster, a second
queue wait) to learn about the other. Each check here is cheap (a table, file headers, a
weights file lookup, a checkpoint path) and runs before the model is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from xai_bench.models.weight_sources import MODEL_BUILDER, check_weights
from xai_bench.tracking.run_folder import resolve_checkpoint
from xai_bench.utils.errors import XaiBenchError
from xai_bench.utils.task import user_error

__all__ = ["MODEL_BUILDER", "check_inputs", "check_weights"]


def _check_init_from(cfg: DictConfig) -> None:
    if cfg.get("init_from"):
        resolve_checkpoint(cfg.init_from)


def check_inputs(cfg: DictConfig) -> Any:
    """Build the data module and check it (`check()`), the model's weights file and `init_from`;
    -> the data module. One problem is raised as it is; several as one XaiBenchError that lists
    them all. Errors that are not the user's to fix propagate unchanged."""
    problems: list[XaiBenchError] = []
    datamodule = None

    def collect(step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception as err:
            cause = user_error(err)  # Hydra wraps a _target_'s errors
            if cause is None:
                raise
            problems.append(cause)
            return None

    def data() -> Any:
        module = hydra.utils.instantiate(cfg.dataset)
        if hasattr(module, "check"):
            module.check()
        return module

    datamodule = collect(data)
    collect(lambda: check_weights(cfg.get("model")))
    collect(lambda: _check_init_from(cfg))
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listed = " ".join(f"({i}) {str(p).strip()}" for i, p in enumerate(problems, start=1))
        raise XaiBenchError(f"{len(problems)} inputs of this run are missing or invalid, "
                            f"fix them all: {listed}")
    return datamodule
