"""Seeds of the data pipeline: per split, per loader, per rank and per worker.

Every stream is derived from the configured seeds, so a run's images, orders and augmentations
are reproducible, and no two splits, loaders, ranks or workers share one.
"""

from __future__ import annotations

import random

import numpy as np
from torch.utils.data import Subset, get_worker_info

from xai_bench.data.label_table import SPLITS

__all__ = ["EXTRA_SPLITS", "mixed_seed", "seed_worker", "split_seed"]


def mixed_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from non-negative integers (loaders' and ranks' own streams)."""
    return int(np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1)[0])


# the generated datasets' extra evaluation splits (the synthetic set's decorrelated split)
EXTRA_SPLITS: tuple[str, ...] = ("decorrelated",)


def split_seed(data_seed: int, split: str) -> int:
    """A distinct, well-mixed generator seed per split, so no two splits share images."""
    index = (*SPLITS, *EXTRA_SPLITS).index(split)
    state = np.random.SeedSequence([int(data_seed), index]).generate_state(1)
    return int(state[0])


def seed_worker(worker_id: int) -> None:
    """Give every worker its own augmentation stream.

    Albumentations keeps its own generator inside each Compose; forked workers would otherwise
    all copy one state and apply identical augmentations. `info.seed` comes from the loader's
    seeded generator, so the streams are reproducible and change every epoch.
    """
    info = get_worker_info()
    if info is None:
        return
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)
    dataset = info.dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)
