"""Torch datasets that yield one dict per image, ROI mask included.

Every dataset returns the same keys, so training, evaluation and the localisation metrics
never special-case a dataset:

    image     float32 (3, H, W), normalised by the transform
    label     int64 ()
    mask      uint8 (H, W), 1 = inside the ROI, all zero when the image has none
    has_mask  bool ()
    box       int64 (4,) x0, y0, x1, y1 (exclusive) of the transformed mask; -1 when empty
    index     int64 (), the row of the sample in its split

The canonical prepared layout of a real dataset (what `ImageTableDataset` reads):

    <root>/labels.csv        columns: image (path relative to root), label (int),
                             split (train|val|test), group (optional, e.g. patient id)
    <root>/masks/<stem>.png  optional ROI mask of image <stem> in the stored image's frame,
                             any nonzero pixel = inside; masks/<image path with .png suffix>
                             (mirroring the image's sub-folders, with or without the leading
                             images/) is looked up first, for datasets whose stems repeat.
    <root>/rois/<stem>.png   optional ROI mask already in the network-input frame (after the
                             eval transform), e.g. the study's evaluation masks: used as-is for
                             val/test images (ignored for training images), and preferred to
                             masks/ there. Same lookup rules as masks/.

Multi-label datasets write the label column as ";"-separated class indices ("3;7") and set
`multilabel: true`; their samples carry a float multi-hot label (C,). A multi-label dataset may
also hold per-class object boxes (the weakly supervised localisation IoU, docs/atcon.md):

    <root>/boxes.csv         columns: image (as in labels.csv), class (index or class name),
                             x0, y0, x1, y1 (x1, y1 exclusive) in the stored image's pixels

and then every sample also carries

    class_masks  uint8 (C, H, W): 1 inside the union of class c's boxes, in the transformed frame
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from xai_bench.data.class_boxes import ClassBox, box_class_names, box_union_mask, read_class_boxes
from xai_bench.data.images import read_rgb
from xai_bench.data.label_table import SPLITS, LabelTable, read_label_table
from xai_bench.data.roi_masks import MASK_SIZE_POLICIES, check_mask_sizes, read_mask
from xai_bench.data.samples import Transform, apply_transform, make_sample
from xai_bench.data.synthetic import SyntheticSamples
from xai_bench.utils.errors import ConfigError, XaiBenchError

__all__ = [
    "SPLITS",
    "ImageTableDataset",
    "LabelTable",
    "SyntheticDataset",
    "check_mask_sizes",
    "read_class_boxes",
    "read_label_table",
]


class SyntheticDataset(Dataset):
    """Wraps generated samples; boxes are recomputed after the transform so flips stay correct.

    Samples also carry "marker_mask" (uint8 (H, W)), the planted marker's pixels (all zero
    without one) transformed like the lesion mask: the known-truth metrics score a map on it
    (docs/known-truth.md).
    """

    def __init__(self, samples: SyntheticSamples, transform: Transform | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.has_mask = samples.masks.reshape(len(samples), -1).any(axis=1)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return self.samples.labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples
        mask = np.stack([s.masks[index], s.shortcut_masks[index]], axis=-1)
        image, mask, _ = apply_transform(self.transform, s.images[index], mask)
        sample = make_sample(image, mask[..., 0].contiguous(), int(s.labels[index]),
                             bool(self.has_mask[index]), index)
        return {**sample, "marker_mask": mask[..., 1].contiguous()}


def _read_image(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)
    except Exception as err:  # PIL raises OSError, SyntaxError, zlib.error, ... for bad files
        raise XaiBenchError(
            f"cannot read image {path}: {type(err).__name__}: {err}. "
            "Re-export it or drop its row from labels.csv."
        ) from err


class ImageTableDataset(Dataset):
    """One split of a dataset in the canonical prepared layout (see the module docstring).

    The table is validated at construction (pass `table` to share one read between splits);
    image files are read lazily, and an unreadable one raises XaiBenchError naming it. A
    multi-label dataset with <root>/boxes.csv gives every sample "class_masks" (C, H, W).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None = None,
        class_names: Sequence[str] | None = None,
        *,
        table: LabelTable | None = None,
        mask_size: str = "resize",
        multilabel: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {list(SPLITS)}; got {split!r}.")
        if mask_size not in MASK_SIZE_POLICIES:
            raise ConfigError(f"dataset.mask_size must be one of {list(MASK_SIZE_POLICIES)}; "
                              f"got {mask_size!r}.")
        self.mask_size = mask_size
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.class_names = tuple(class_names) if class_names is not None else None
        num_classes = len(self.class_names) if self.class_names is not None else None
        self.table = (table if table is not None
                      else read_label_table(self.root, num_classes, multilabel))
        self.rows = self.table.rows(split)
        # input-frame ROIs describe the evaluation frame: training crops would misplace them
        self.use_rois = split != "train" and any(self.table.rois)
        if (not self.table.multilabel and num_classes is not None and self.table.labels.size
                and self.table.labels.max() >= num_classes):
            raise ConfigError(
                f"{self.root / 'labels.csv'} has label {int(self.table.labels.max())} but only "
                f"{num_classes} class names are given: {list(self.class_names or ())}."
            )
        self.class_boxes = self._read_class_boxes()

    def _read_class_boxes(self) -> dict[int, list[ClassBox]] | None:
        """Found by the dataset itself (no datamodule option): None without boxes.csv or when
        single-label, so every sample of a dataset has the same keys."""
        path = self.table.root / "boxes.csv"
        if not self.table.multilabel or not path.is_file():
            return None
        rel = [p.relative_to(self.table.root).as_posix() for p in self.table.images]
        names = box_class_names(self.table.root, self.class_names)
        return read_class_boxes(path, rel, int(self.table.labels.shape[1]), names)

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def labels(self) -> np.ndarray:
        return self.table.labels[self.rows]

    @property
    def has_mask(self) -> np.ndarray:
        rois = self.table.rois if self.use_rois else (None,) * len(self.table.masks)
        return np.array([self.table.masks[r] is not None or rois[r] is not None for r in self.rows],
                        dtype=bool)

    @property
    def groups(self) -> list[str] | None:
        return None if self.table.groups is None else [self.table.groups[r] for r in self.rows]

    def image_path(self, index: int) -> Path:
        return self.table.images[self.rows[index]]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[index])
        image = _read_image(self.table.images[row])
        mask_path = self.table.masks[row]
        roi_path = self.table.rois[row] if self.use_rois else None
        h, w = image.shape[:2]
        mask = (
            read_mask(mask_path, h, w, self.mask_size)
            if mask_path is not None and roi_path is None
            else np.zeros((h, w), dtype=np.uint8)
        )
        boxes = self.class_boxes.get(row, []) if self.class_boxes is not None else []
        present = sorted({box[0] for box in boxes})
        extra = [box_union_mask([b for b in boxes if b[0] == cls], h, w) for cls in present]
        image_t, mask_t, class_t = apply_transform(self.transform, image, mask, extra)
        out_h, out_w = image_t.shape[-2:]
        if roi_path is not None:
            mask_t = torch.from_numpy(read_mask(roi_path, out_h, out_w, self.mask_size))
        label = self.table.labels[row]
        label_t = (torch.from_numpy(label.astype(np.float32)) if self.table.multilabel
                   else int(label))
        sample = make_sample(image_t, mask_t, label_t,
                             mask_path is not None or roi_path is not None, index)
        if self.class_boxes is not None:
            class_masks = torch.zeros((self.table.labels.shape[1], out_h, out_w), dtype=torch.uint8)
            for cls, class_mask in zip(present, class_t, strict=True):
                class_masks[cls] = class_mask
            sample["class_masks"] = class_masks
        return sample
