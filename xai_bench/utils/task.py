"""How an entry point runs its task (xai_bench.tracking.task.task_wrapper writes the run folder).

A user-fixable error reaches the terminal as one message with exit status 2, not a traceback:
an XaiBenchError, a full disk (which file, the folder, the free space) and W&B's own errors
(no API key, no network: how to stay offline). `finish_wandb` ends a job's W&B run, so the next
job of a sweep starts a new one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from xai_bench.utils.disk import DiskFullError, disk_full_cause, disk_full_message
from xai_bench.utils.errors import ConfigError, XaiBenchError

log = logging.getLogger(__name__)
# numpy's seed range, which Lightning's seed_everything enforces
SEED_RANGE = (0, 2**32 - 1)


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


def check_seed(cfg: DictConfig) -> None:
    """`seed` must be an integer in numpy's range (or null): refused before anything is built."""
    if "seed" not in cfg:
        return
    seed = cfg.get("seed")
    if seed is None:
        return
    if (isinstance(seed, bool) or not isinstance(seed, int)
            or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise ConfigError(f"seed={seed} is not an integer from {SEED_RANGE[0]} to "
                          f"{SEED_RANGE[1]}: pass e.g. seed=42.")


def _chain(err: BaseException) -> list[BaseException]:
    seen: set[int] = set()
    chain = []
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def user_error(err: BaseException) -> XaiBenchError | None:
    """The user-fixable error behind `err`, if any: an XaiBenchError (Hydra's instantiate wraps
    errors of a _target_), a full disk, or a W&B error, as an XaiBenchError with one line."""
    from xai_bench.utils.instantiate import wandb_error_message

    chain = _chain(err)
    for current in chain:
        if isinstance(current, XaiBenchError):
            return current
    full = disk_full_cause(err)
    if full is not None:
        return DiskFullError(disk_full_message(full.filename))
    for current in chain:
        message = wandb_error_message(current)
        if message is not None:
            return XaiBenchError(message)
        if isinstance(current, MissingMandatoryValue | InterpolationToMissingValueError):
            return ConfigError(missing_value_message(current))
    return None


def missing_value_message(err: Exception) -> str:
    """A `???` left in the config (e.g. dataset.num_classes of dataset=folder): name the key."""
    text = str(err).splitlines()[0] if str(err) else ""
    key = text.rsplit(":", 1)[-1].strip() if "Missing mandatory value" in text else ""
    key = key or str(getattr(err, "full_key", "") or "a setting")
    return f"{key} must be set (the config leaves it as ???): add {key}=<value> to the command."


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
