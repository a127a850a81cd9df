"""Datasets for xai_bench: the procedural synthetic set and real datasets in the canonical layout.

Every dataset yields dict samples {image, label, mask, has_mask, box, index} (see
xai_bench.data.datasets), so the training and evaluation code never special-cases a dataset.
"""

from xai_bench.data.datamodule import ImageTableDataModule, SyntheticDataModule, split_seed
from xai_bench.data.datasets import (
    SPLITS,
    ImageTableDataset,
    LabelTable,
    SyntheticDataset,
    read_label_table,
)
from xai_bench.data.synthetic import (
    SyntheticSamples,
    generate_synthetic,
    masks_to_boxes,
    parse_shortcut,
)
from xai_bench.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_eval_transform,
    default_train_transform,
    imagenet_normalize,
    resolve_transforms,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "ImageTableDataModule",
    "ImageTableDataset",
    "LabelTable",
    "SyntheticDataModule",
    "SyntheticDataset",
    "SyntheticSamples",
    "default_eval_transform",
    "default_train_transform",
    "generate_synthetic",
    "imagenet_normalize",
    "masks_to_boxes",
    "parse_shortcut",
    "read_label_table",
    "resolve_transforms",
    "split_seed",
]
