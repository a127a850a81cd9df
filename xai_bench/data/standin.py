"""Synthetic stand-ins for real datasets: the study's pipeline end to end without the data.

`debug=standin` swaps each dataset's data module for the procedural synthetic one while the
dataset keeps its name, so grid rows, sweeps, W&B groups, evaluation and the report's
dataset x init table all behave as in the real study. The numbers mean nothing about the real
datasets; the stand-ins only differ from each other through their data seed.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from xai_bench.data.datamodule import SyntheticDataModule

log = logging.getLogger(__name__)


def standin_data_seed(name: str) -> int:
    """A fixed seed per dataset name (stable across processes, unlike hash())."""
    return zlib.crc32(name.encode()) % 100_000


def standin_datamodule(
    name: str,
    num_classes: int = 2,
    img_size: int = 32,
    class_names: Sequence[str] = ("normal", "lesion"),
    batch_size: int = 16,
    num_workers: int = 0,
    pin_memory: bool = False,
    num_train: int = 256,
    num_val: int = 64,
    num_test: int = 64,
    transforms: Mapping[str, Any] | None = None,
    low_data: Mapping[str, Any] | None = None,
    **dataset_specific: Any,
) -> SyntheticDataModule:
    """The synthetic data module under `name`; the real dataset's own keys (root, ...) are
    unused."""
    if dataset_specific:
        log.debug("stand-in for %s ignores %s", name, sorted(dataset_specific))
    return SyntheticDataModule(
        name=name,
        num_classes=num_classes,
        img_size=img_size,
        class_names=class_names,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        data_seed=standin_data_seed(name),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        transforms=transforms,
        low_data=low_data,
    )
