"""The wrapper every entry point runs its task in: what a multirun needs of a run folder.

The W&B run of a job is always finished (otherwise the next job of the sweep logs into it), and
a failure is written to <run>/error.txt before it propagates. A refused rerun leaves a finished
run as it was: when the folder holds metrics.json and the failing attempt did not change its
config.yaml, no error.txt is written there (the message is on the terminal and in the log).
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from xai_bench.tracking.run_folder import CONFIG_FILE, METRICS_FILE, write_error
from xai_bench.utils.task import check_seed, finish_wandb

__all__ = ["task_wrapper"]

R = TypeVar("R")
log = logging.getLogger(__name__)


def _config_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def task_wrapper(task: Callable[[DictConfig], R]) -> Callable[[DictConfig], R]:
    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> R:
        exit_code = 0
        output_dir = cfg.get("paths", {}).get("output_dir") if isinstance(cfg, DictConfig) else None
        folder = Path(output_dir) if output_dir else None
        config_before = _config_stamp(folder / CONFIG_FILE) if folder else None
        try:
            check_seed(cfg)
            return task(cfg)
        except BaseException as err:
            exit_code = 1
            if folder is not None:
                untouched = (
                    config_before is not None
                    and _config_stamp(folder / CONFIG_FILE) == config_before
                )
                if untouched and (folder / METRICS_FILE).is_file():
                    log.info("the finished run in %s was left as it was", folder)
                else:
                    write_error(folder, "".join(traceback.format_exception(err)))
            raise
        finally:
            finish_wandb(exit_code)

    return wrapped
