"""The wrapper every entry point runs its task in.

It guarantees what a multirun needs: the W&B run of a job is always finished (otherwise the next
job of the sweep logs into it), a failure is written to the run folder before it propagates, and
a user-fixable XaiBenchError reaches the terminal as one message, not a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

from xai_bench.utils.errors import XaiBenchError

R = TypeVar("R")
log = logging.getLogger(__name__)


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the active W&B run, if any, so the next job of a sweep starts a new one.

    Never raises: when SLURM requeues a job it kills W&B's service process first, and an error
    here would replace the requeue's SystemExit and mark the job as failed for the launcher.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001 - the job's own outcome matters more
            log.warning("could not finish the W&B run cleanly: %s", err)


def task_wrapper(task: Callable[[DictConfig], R]) -> Callable[[DictConfig], R]:
    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> R:
        exit_code = 0
        try:
            return task(cfg)
        except BaseException as err:
            exit_code = 1
            output_dir = cfg.get("paths", {}).get("output_dir") if isinstance(cfg, DictConfig) else None
            if output_dir:
                try:
                    Path(output_dir).mkdir(parents=True, exist_ok=True)
                    (Path(output_dir) / "error.txt").write_text("".join(traceback.format_exception(err)))
                except Exception:  # noqa: BLE001 - never hide the original error
                    pass
            raise
        finally:
            finish_wandb(exit_code)

    return wrapped


def user_error(err: BaseException) -> XaiBenchError | None:
    """The XaiBenchError behind `err`, if any: Hydra's instantiate wraps errors of a _target_."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, XaiBenchError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_entry(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task from a Hydra main; a user-fixable error exits with its message and status 2."""
    try:
        return task(cfg)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"\nerror: {cause}", file=sys.stderr)
        sys.exit(2)
