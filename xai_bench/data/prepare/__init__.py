"""Prepare scripts' shared machinery: official downloads -> the canonical layout (README: Datasets).

One module per dataset (`xai_bench.data.prepare.<name>`) knows its publisher's layout and
exposes `records(raw) -> list[Record]`, `CLASS_NAMES` and `main(argv)`; the thin
`scripts/prepare_<name>.py` calls that main.
"""

from xai_bench.data.prepare.common import (
    PrepareConfig,
    PrepareReport,
    Record,
    add_common_args,
    assign_splits,
    attach_rois,
    config_from_args,
    prepare_dataset,
    prepare_parser,
    read_rgb,
    require_dir,
    run_prepare,
    split_sizes,
    to_uint8_rgb,
)

__all__ = [
    "PrepareConfig",
    "PrepareReport",
    "Record",
    "add_common_args",
    "assign_splits",
    "attach_rois",
    "config_from_args",
    "prepare_dataset",
    "prepare_parser",
    "read_rgb",
    "require_dir",
    "run_prepare",
    "split_sizes",
    "to_uint8_rgb",
]
