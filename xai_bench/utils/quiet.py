"""Keep a run's console for what a user reads: the config tree, progress bars, our summaries.

Third-party libraries print a few lines on every run that say nothing about it and that nobody
can act on. Each is filtered here at its source, by its exact text, so that every other line
(real warnings included) still shows:

- Lightning's advertising tips ("try installing litlogger / litmodels"), logged through its
  rank-zero logger;
- Lightning's device report when there is nothing to report ("GPU available: False, used: False",
  "TPU available: False, ..."); a line that names an available GPU stays, and so does Lightning's
  "GPU available but not used" warning;
- torch's FutureWarning about `LeafSpec`, raised inside Lightning's own pytree helper
  (pytorch_lightning/utilities/_pytree.py), not in our code;
- W&B's "The anonymous setting has no effect" warning: Lightning's WandbLogger always hands
  wandb.init `anonymous=None`; the logger stops passing that retired setting (see
  `drop_retired_wandb_settings`), which changes nothing else in the run.

`silence_library_noise()` is called once at the start of each entry point (train, evaluate,
report); calling it again (a Hydra multirun calls main once per job) adds nothing.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

# where Lightning's rank_zero_info lands: lightning_utilities' logger, which lightning_fabric and
# then pytorch_lightning replace with their own when imported
LIGHTNING_LOGGERS = (
    "lightning_utilities.core.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
)

# whole log messages that carry no information about the run
LIGHTNING_NOISE = (
    re.compile(r"^💡 Tip: .*\[lit(logger|models)\]\(https://pypi\.org/project/lit\w+/\)"),
    re.compile(r"^GPU available: False, used: False$"),
    re.compile(r"^TPU available: False, using: 0 TPU cores$"),
)

# torch.utils._pytree.LeafSpec's deprecation; Lightning's _tree_flatten builds LeafSpec() itself
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class DropLibraryNoise(logging.Filter):
    """Drops a log record whose message is one of `LIGHTNING_NOISE`; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in LIGHTNING_NOISE)


def silence_library_noise() -> None:
    """Install the filters (idempotent): a log filter on Lightning's rank-zero loggers and a
    warnings filter for the LeafSpec deprecation."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLibraryNoise) for f in logger.filters):
            logger.addFilter(DropLibraryNoise())
    # filterwarnings replaces an identical filter instead of stacking a second one
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning)


def drop_retired_wandb_settings(logger: Any) -> Any:
    """Returns `logger` with W&B's retired `anonymous` setting no longer passed to wandb.init.

    Lightning's WandbLogger passes `anonymous=None` when the user did not ask for anonymous
    logging, and W&B warns on any value it is given; not passing it is what W&B asks for and
    leaves the run unchanged. An explicit `anonymous=true` is left alone (W&B's warning is then
    about the user's own setting). Any other logger is returned as it is.
    """
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None:
        del init["anonymous"]
    return logger
