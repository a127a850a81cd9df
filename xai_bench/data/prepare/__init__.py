"""Official downloads -> the canonical layout, one module per dataset (docs/datasets/).

Each module (`xai_bench.data.prepare.<name>`) knows its publisher's layout: `records(raw)`,
`CLASS_NAMES`, and a `PREPARER` (its extra options and its prepare function). `DATASETS` is the
registry `python -m xai_bench.prepare <name>` offers: a new dataset is a module plus its name here.
"""

from __future__ import annotations

from importlib import import_module

from xai_bench.data.prepare.common import (
    PrepareConfig,
    Preparer,
    PrepareReport,
    Record,
    add_common_args,
    assign_splits,
    attach_rois,
    config_from_args,
    prepare_dataset,
    read_rgb,
    require_dir,
    split_sizes,
    to_uint8_rgb,
)

DATASETS = (
    "aptos2019",
    "breakhis",
    "covid19_radiography",
    "cp_child",
    "crc",
    "duke",
    "folder",
    "ham10000",
    "isic2020",
    "kvasir",
    "mura",
    "pascal_voc",
)


def preparer(name: str) -> Preparer:
    """The `Preparer` of dataset `name` (one of DATASETS), its module imported on demand."""
    if name not in DATASETS:
        raise KeyError(f"no prepare module for {name!r}; known: {', '.join(DATASETS)}")
    return import_module(f"{__name__}.{name}").PREPARER


__all__ = [
    "DATASETS",
    "PrepareConfig",
    "PrepareReport",
    "Preparer",
    "Record",
    "add_common_args",
    "assign_splits",
    "attach_rois",
    "config_from_args",
    "prepare_dataset",
    "preparer",
    "read_rgb",
    "require_dir",
    "split_sizes",
    "to_uint8_rgb",
]
