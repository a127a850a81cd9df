"""Datasets for xai_bench: the procedural synthetic set and real datasets in the canonical layout.

Every dataset yields dict samples {image, label, mask, has_mask, box, index} (see
xai_bench.data.datasets), so the training and evaluation code never special-cases a dataset.
Names are imported lazily: the prepare scripts (xai_bench.data.prepare) need neither torch
nor Lightning, and start in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageTableDataModule": "datamodule",
    "SyntheticDataModule": "datamodule",
    "split_seed": "seeds",
    "standin_datamodule": "standin",
    "SPLITS": "label_table",
    "ImageTableDataset": "datasets",
    "LabelTable": "label_table",
    "SyntheticDataset": "datasets",
    "read_label_table": "label_table",
    "SyntheticSamples": "synthetic",
    "generate_synthetic": "synthetic",
    "masks_to_boxes": "synthetic",
    "parse_shortcut": "synthetic",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "default_eval_transform": "transforms",
    "default_train_transform": "transforms",
    "imagenet_normalize": "transforms",
    "resolve_transforms": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
