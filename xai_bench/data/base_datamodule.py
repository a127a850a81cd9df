"""The loader plumbing every datamodule shares: seeded shuffling, worker and rank seeding, DDP
shards, the low-data split, the unlabeled pool and the evaluation loaders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from xai_bench.data.label_table import SPLITS
from xai_bench.data.low_data import LabelledSubset, check_low_data, low_data_rows
from xai_bench.data.seeds import mixed_seed, seed_worker
from xai_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resolve_transforms
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError

__all__ = ["ClassificationDataModule", "check_positive"]

_STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: SPLITS,
}


def check_positive(**values: Any) -> None:
    """Sizes and counts must be positive integers: fail at construction, naming the key."""
    for key, value in values.items():
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"dataset.{key} must be a positive integer; got {value!r}.")


class ClassificationDataModule(pl.LightningDataModule):
    """Loader plumbing shared by the datamodules: seeded shuffling, worker seeding, ROI loader."""

    def __init__(
        self,
        name: str,
        num_classes: int,
        img_size: int,
        class_names: Sequence[str] | None,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        transforms: Mapping[str, Any] | None,
        shuffle_seed: int | None,
        low_data: Mapping[str, Any] | None = None,
        pair_unlabeled: bool = False,
    ) -> None:
        super().__init__()
        check_positive(num_classes=num_classes, img_size=img_size, batch_size=batch_size)
        self.low_data = check_low_data(low_data)
        if not isinstance(num_workers, int | np.integer) or num_workers < 0:
            raise ConfigError(f"dataset.num_workers must be an integer >= 0; got {num_workers!r}.")
        names = tuple(str(c) for c in class_names) if class_names is not None else None
        if names is None:
            names = tuple(f"class_{i}" for i in range(num_classes))
        if len(names) != num_classes:
            raise ConfigError(
                f"dataset.class_names has {len(names)} names {list(names)} "
                f"but num_classes={num_classes}."
            )
        self.name = str(name)
        self.num_classes = int(num_classes)
        self.img_size = int(img_size)
        self.class_names = names
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.shuffle_seed = shuffle_seed
        self.train_transform, self.eval_transform = resolve_transforms(transforms, self.img_size)
        self.datasets: dict[str, Dataset] = {}
        # the low-data regime's unlabeled pool (built with the training split), and whether
        # training batches pair labelled with unlabeled images: the one setting an objective that
        # trains on unlabeled images (ATCON) asks for, set by ClassifierModule.setup
        self.unlabeled: Dataset | None = None
        self.pair_unlabeled = bool(pair_unlabeled)

    # subclasses build self.datasets[split]
    def _build(self, split: str) -> Dataset:
        raise NotImplementedError

    def check(self) -> None:
        """Cheap validation before anything expensive is built; raises a user-facing error."""

    def setup(self, stage: str | None = None) -> None:
        self.check()
        for split in _STAGE_SPLITS.get(stage, SPLITS):
            if split not in self.datasets:
                dataset = self._build(split)
                if split == "train" and self.low_data is not None:
                    labelled, unlabeled = low_data_rows(np.asarray(dataset.labels), **self.low_data)  # type: ignore[attr-defined]
                    self.unlabeled = Subset(dataset, unlabeled.tolist())
                    dataset = LabelledSubset(dataset, labelled.tolist())
                self.datasets[split] = dataset

    def unlabeled_dataloader(self) -> DataLoader:
        """The training images left out by the low-data regime (`low_data`), labels hidden from
        nothing: consumers (ATCON's unsupervised steps) must not read them."""
        self._dataset("train")
        if self.unlabeled is None:
            raise ConfigError("there is no unlabeled pool: set dataset.low_data.per_class "
                              "or dataset.low_data.fraction.")
        return self._loader(self.unlabeled, shuffle=True)

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            stage = {"train": "fit", "val": "validate", "test": "test"}.get(split)
            if stage is None:  # an extra evaluation split (eval_splits): built on its own
                self.check()
                self.datasets[split] = self._build(split)
            else:
                self.setup(stage)
        return self.datasets[split]

    def split_dataset(self, split: str) -> Dataset:
        """The whole dataset of `split` (train, val, test or one of `eval_splits`), built on
        first use: for code that reads a split outside a trainer's (possibly sharded) loader."""
        if split not in ("train", "val", "test", *self.eval_splits):
            raise ConfigError(f"dataset {self.name} has no split {split!r}.")
        return self._dataset("test" if split == "roi" else split)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The splits an evaluation may explain (a generated dataset may add its own)."""
        return ("roi", "test", "val")

    def _distributed_shard(self) -> tuple[int, int] | None:
        """(world size, rank) while a distributed trainer drives this module (and leaves the
        samplers to it: use_distributed_sampler, Lightning's default), else None."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        kwargs = trainer.distributed_sampler_kwargs
        connector = getattr(trainer, "_accelerator_connector", None)
        if not getattr(connector, "use_distributed_sampler", True):
            return None
        if not kwargs or int(kwargs.get("num_replicas", 1)) < 2:
            return None
        return int(kwargs["num_replicas"]), int(kwargs["rank"])

    def _loader(self, dataset: Dataset, shuffle: bool, seed_offset: int = 0) -> DataLoader:
        """A loader over `dataset`. Shuffled loaders draw their order from `shuffle_seed` (else
        torch's seed) plus `seed_offset`, so two loaders over one dataset differ.

        Under DDP the loader gets its own DistributedSampler, which Lightning keeps (it replaces
        only samplers that are not distributed, and would seed every replacement with the same
        global seed: the labelled and unlabeled orders would coincide). Every rank draws the
        same permutation from (seed, epoch) and keeps its own share, disjoint from the others'
        (a few images are repeated to even the shares, as Lightning does); the unlabeled
        loader's seed is mixed, not seed + 1, because the sampler uses seed + epoch. Augmentation
        streams differ per rank. Unshuffled (val/test) loaders keep their order; the classifier
        drops the images a padded share repeats when it scores a split."""
        shard = self._distributed_shard()
        world, rank = shard if shard is not None else (1, 0)
        base = self.shuffle_seed if self.shuffle_seed is not None else torch.initial_seed()
        seed = int(base) + seed_offset
        sampler: DistributedSampler | None = None
        if shard is not None:
            order_seed = seed if seed_offset == 0 else mixed_seed(int(base), seed_offset)
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                         seed=order_seed, drop_last=False)
        generator = None
        if shuffle:
            # rank 0 (and a single process) keeps the seed; other ranks get their own streams
            aug_seed = seed if rank == 0 else mixed_seed(seed, rank)
            generator = torch.Generator().manual_seed(aug_seed)
            transform = getattr(dataset, "transform", None)
            if self.num_workers == 0 and hasattr(transform, "set_random_seed"):
                transform.set_random_seed(aug_seed % 2**32)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
            drop_last=False,
        )

    @property
    def train_dataset(self) -> Dataset:
        return self._dataset("train")

    @property
    def val_dataset(self) -> Dataset:
        return self._dataset("val")

    @property
    def test_dataset(self) -> Dataset:
        return self._dataset("test")

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        """Shuffled by a generator seeded from `shuffle_seed`, else from torch's seed. With
        `pair_unlabeled` (objectives that train on unlabeled images: ATCON) paired with them
        ({"labelled", "unlabeled"}, cycled to the longer), in an order of their
        own (under DDP too: see `_loader`)."""
        labelled = self._loader(self.train_dataset, shuffle=True)
        if not self.pair_unlabeled:
            return labelled
        return {"labelled": labelled,
                "unlabeled": self._loader(self.unlabeled_dataset(), shuffle=True, seed_offset=1)}

    def unlabeled_dataset(self) -> Dataset:
        """The low-data regime's unlabeled pool; without one (or an empty one: fraction 1.0), the
        training images themselves (an unsupervised objective never reads their labels)."""
        self._dataset("train")
        pool = self.unlabeled
        return pool if pool is not None and len(pool) > 0 else self.train_dataset  # type: ignore

    def train_sizes(self) -> tuple[int, int]:
        """(labelled, unlabeled) training images: ATCON's alternating share needs both."""
        return len(self.train_dataset), len(self.unlabeled_dataset())  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def roi_dataloader(self) -> DataLoader:
        """Test images that have a ROI mask, in test order; "index" is the test-split row."""
        return self.eval_dataloader("roi")

    def eval_dataloader(self, split: str = "roi", max_images: int | None = None) -> DataLoader:
        """Unshuffled loader over the images an evaluation explains: roi (test images with a
        ROI mask), test or val; the first `max_images` of them when given. Batches carry
        "index", the image's row in its split (roi: in the test split)."""
        if split not in self.eval_splits:
            raise ConfigError(f"evaluation split must be one of {', '.join(self.eval_splits)} "
                              f"for dataset {self.name}; got {split!r}.")
        dataset = self._dataset("test" if split == "roi" else split)
        rows = np.arange(len(dataset))  # type: ignore[arg-type]
        if split == "roi":
            rows = np.flatnonzero(dataset.has_mask)  # type: ignore[attr-defined]
            if rows.size == 0:
                raise DatasetNotFoundError(
                    f"Dataset '{self.name}': no test image has a ROI mask "
                    "(masks/<image stem>.png), so "
                    "localisation cannot be evaluated; use split=test for the other metrics."
                )
        if max_images is not None:
            if int(max_images) < 1:
                raise ConfigError(
                    f"max_images must be a positive integer or null; got {max_images!r}.")
            rows = rows[: int(max_images)]
        subset = dataset if rows.size == len(dataset) else Subset(dataset, rows.tolist())  # type: ignore[arg-type]
        return self._loader(subset, shuffle=False)

    def image_name(self, split: str, index: int) -> str:
        """A human-readable name of image `index` of `split` (roi = test) for tables."""
        dataset = self._dataset("test" if split == "roi" else split)
        if hasattr(dataset, "image_path"):
            return str(Path(dataset.image_path(index)).relative_to(dataset.root))  # type: ignore[attr-defined]
        return f"{'test' if split == 'roi' else split}/{index:05d}"

    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the eval transform's Normalize, in [0, 1] units: metrics that edit
        pixels in image space (HAAS) and overlays undo it. ImageNet statistics if none."""
        transform = self.eval_transform
        for step in getattr(transform, "transforms", []) or []:
            if type(step).__name__ == "Normalize":
                mean, std = np.broadcast_to(step.mean, 3), np.broadcast_to(step.std, 3)
                scale = float(getattr(step, "max_pixel_value", 255.0) or 255.0) / 255.0
                return tuple(float(v) * scale for v in mean), tuple(float(v) * scale for v in std)
        return IMAGENET_MEAN, IMAGENET_STD

    def train_labels(self) -> np.ndarray:
        """Labels of the training images used (after `low_data`), for class weights; cheap
        before `setup` (no image is read)."""
        labels = self._all_train_labels()
        if self.low_data is None:
            return labels
        return labels[low_data_rows(labels, **self.low_data)[0]]

    def _all_train_labels(self) -> np.ndarray:
        return np.asarray(self.train_dataset.labels)  # type: ignore[attr-defined]
