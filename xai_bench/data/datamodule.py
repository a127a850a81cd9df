"""LightningDataModules: the built-in synthetic set and any dataset in the canonical layout.

Both give the same dict batches (see xai_bench.data.datasets), expose `name`, `num_classes`,
`class_names`, `img_size`, and add `roi_dataloader()` (test images with a ROI mask, for the
localisation metrics) and `train_labels()` (for class weights before training starts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from xai_bench.data.base_datamodule import ClassificationDataModule, check_positive
from xai_bench.data.datasets import ImageTableDataset, SyntheticDataset
from xai_bench.data.label_table import LabelTable, read_label_table
from xai_bench.data.low_data import low_data_rows
from xai_bench.data.roi_masks import check_mask_sizes
from xai_bench.data.seeds import split_seed
from xai_bench.data.synthetic import SyntheticSamples, generate_synthetic, parse_shortcut
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError

# low_data_rows: re-exported, callers import it from here
__all__ = ["ImageTableDataModule", "SyntheticDataModule", "low_data_rows", "split_seed"]

class SyntheticDataModule(ClassificationDataModule):
    """The procedural lesion dataset (xai_bench.data.synthetic), generated in `setup`.

    The data depend only on `data_seed` (never the training seed), so a seed sweep trains on
    the same images. Generated splits are cached on the module. With a marker planted
    (`shortcut`), the evaluation may also explain the `decorrelated` split (`num_decorrelated`
    images).
    """

    def __init__(
        self,
        name: str = "synthetic",
        num_classes: int = 2,
        img_size: int = 64,
        class_names: Sequence[str] = ("normal", "lesion"),
        num_train: int = 2000,
        num_val: int = 500,
        num_test: int = 500,
        num_decorrelated: int = 400,
        data_seed: int = 1234,
        positive_fraction: float = 0.5,
        shortcut: Mapping[str, Any] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        transforms: Mapping[str, Any] | None = None,
        shuffle_seed: int | None = None,
        low_data: Mapping[str, Any] | None = None,
        pair_unlabeled: bool = False,
    ) -> None:
        if num_classes != 2:
            raise ConfigError("the synthetic dataset is binary (normal vs lesion): "
                              f"num_classes must be 2, got {num_classes}.")
        check_positive(num_train=num_train, num_val=num_val, num_test=num_test,
                       num_decorrelated=num_decorrelated)
        if isinstance(img_size, int) and img_size < 16:
            raise ConfigError(
                f"dataset.img_size must be >= 16 px for the synthetic dataset; got {img_size}.")
        if not isinstance(data_seed, int | np.integer) or data_seed < 0:
            raise ConfigError(f"dataset.data_seed must be an integer >= 0; got {data_seed!r}.")
        if not 0.0 <= float(positive_fraction) <= 1.0:
            raise ConfigError(
                f"dataset.positive_fraction must lie in [0, 1]; got {positive_fraction}.")
        super().__init__(
            name, num_classes, img_size, class_names, batch_size, num_workers, pin_memory,
            transforms, shuffle_seed, low_data, pair_unlabeled,
        )
        # fail at construction, not in setup
        self.marker = parse_shortcut(shortcut, self.img_size) is not None
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test),
                      "decorrelated": int(num_decorrelated)}
        self.data_seed = int(data_seed)
        self.positive_fraction = float(positive_fraction)
        self.shortcut = dict(shortcut) if shortcut is not None else None
        self.samples: dict[str, SyntheticSamples] = {}

    def generate(self, split: str) -> SyntheticSamples:
        """The split's samples (generated once, then cached)."""
        if split not in self.samples:
            self.samples[split] = generate_synthetic(
                self.sizes[split],
                self.img_size,
                split_seed(self.data_seed, split),
                positive_fraction=self.positive_fraction,
                shortcut=self.shortcut,
                decorrelated=split == "decorrelated",
            )
        return self.samples[split]

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """With a planted marker, also `decorrelated`: lesion and marker set against each other
        in a balanced 2 x 2 design (docs/known-truth.md)."""
        return (*super().eval_splits, *(("decorrelated",) if self.marker else ()))

    def _build(self, split: str) -> Dataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        return SyntheticDataset(self.generate(split), transform)

    def _all_train_labels(self) -> np.ndarray:
        return self.generate("train").labels


class ImageTableDataModule(ClassificationDataModule):
    """A real dataset prepared in the canonical layout: <root>/labels.csv (+ masks/)."""

    def __init__(
        self,
        name: str,
        root: str | os.PathLike[str],
        num_classes: int,
        img_size: int,
        class_names: Sequence[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = True,
        transforms: Mapping[str, Any] | None = None,
        prepare_hint: str = "",
        shuffle_seed: int | None = None,
        low_data: Mapping[str, Any] | None = None,
        multilabel: bool = False,
        mask_size: str = "resize",
        pair_unlabeled: bool = False,
    ) -> None:
        super().__init__(
            name, num_classes, img_size, class_names, batch_size, num_workers, pin_memory,
            transforms, shuffle_seed, low_data, pair_unlabeled,
        )
        self.multilabel = bool(multilabel)
        self.mask_size = mask_size
        self.root = Path(root)
        self.prepare_hint = str(prepare_hint or "").strip()
        self.table: LabelTable | None = None

    def not_found_message(self) -> str:
        hint = f" {self.prepare_hint}" if self.prepare_hint else ""
        return (
            f"Dataset '{self.name}' not found: {os.path.abspath(self.root)} does not exist "
            f"(or has no labels.csv).{hint} "
            f"Then point paths.data_dir at the folder that contains '{self.name}/', "
            f"e.g. python -m xai_bench.train dataset={self.name} paths.data_dir=/data"
        )

    def check(self) -> None:
        """Fail fast, before a model is built: the folder, the whole table (read once: paths
        inside the folder, labels, splits, files present) and every ROI mask's size against
        its frame (file headers only), so nothing of this kind surfaces after training."""
        if self.table is not None:
            return
        if not (self.root / "labels.csv").is_file():
            raise DatasetNotFoundError(self.not_found_message())
        table = read_label_table(self.root, self.num_classes, self.multilabel)
        check_mask_sizes(table, self.mask_size, self.eval_transform)
        self.table = table  # only a table that passed every check is kept (check() returns early)

    def _build(self, split: str) -> Dataset:
        assert self.table is not None
        if self.table.rows(split).size == 0:
            raise DatasetNotFoundError(
                f"Dataset '{self.name}': {self.root / 'labels.csv'} has no rows with split={split}."
            )
        transform = self.train_transform if split == "train" else self.eval_transform
        return ImageTableDataset(self.root, split, transform, self.class_names, table=self.table,
                                 mask_size=self.mask_size, multilabel=self.multilabel)

    def _all_train_labels(self) -> np.ndarray:
        self.check()
        assert self.table is not None
        return self.table.labels[self.table.rows("train")]
