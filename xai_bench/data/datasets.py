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
also hold per-class object boxes (the weakly supervised localisation IoU, README: Training objectives: ATCON):

    <root>/boxes.csv         columns: image (as in labels.csv), class (index or class name),
                             x0, y0, x1, y1 (x1, y1 exclusive) in the stored image's pixels

and then every sample also carries

    class_masks  uint8 (C, H, W): 1 inside the union of class c's boxes, in the transformed frame
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch.utils.data import Dataset

from xai_bench.data.containment import paths_outside
from xai_bench.data.images import read_rgb
from xai_bench.data.synthetic import SyntheticSamples, masks_to_boxes
from xai_bench.data.transforms import imagenet_normalize
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError, XaiBenchError

__all__ = [
    "SPLITS",
    "ImageTableDataset",
    "LabelTable",
    "SyntheticDataset",
    "check_mask_sizes",
    "read_class_boxes",
    "read_label_table",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = ("image", "label", "split")
_MAX_LISTED = 5

Transform = Callable[..., dict[str, Any]]


@functools.cache
def _normalize_only() -> A.Compose:
    """The fallback pipeline: no resize, so any image size passes through unchanged."""
    return A.Compose([imagenet_normalize(), ToTensorV2()])


def _as_mask_tensor(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(np.asarray(mask)) if isinstance(mask, np.ndarray) else mask
    return (mask > 0).to(torch.uint8)


def _apply_transform(
    transform: Transform | None, image: np.ndarray, mask: np.ndarray, extra: Sequence[np.ndarray] = ()
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Run image, mask and `extra` masks through ONE transform call, so random crops and flips
    agree; -> (float (3, H, W), uint8 mask (H, W[, C]), [uint8 (H, W)] per extra mask)."""
    if transform is None:
        transform = _normalize_only()
    out = transform(image=image, mask=mask, masks=list(extra)) if len(extra) else transform(image=image, mask=mask)
    img = out["image"]
    if isinstance(img, np.ndarray):  # the pipeline did not end with ToTensorV2
        img = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1) if img.ndim == 3 else img[None]))
    if img.dtype == torch.uint8:  # no Normalize in the pipeline: at least give the model floats
        img = img.float().div_(255.0)
    extra_t = [_as_mask_tensor(m) for m in out["masks"]] if len(extra) else []
    return img.float(), _as_mask_tensor(out["mask"]), extra_t


def _sample(
    image: torch.Tensor, mask: torch.Tensor, label: int | torch.Tensor, has_mask: bool, index: int
) -> dict[str, torch.Tensor]:
    box = masks_to_boxes(mask.numpy()[None])[0]
    return {
        "image": image,
        "label": label if isinstance(label, torch.Tensor) else torch.tensor(label, dtype=torch.int64),
        "mask": mask,
        "has_mask": torch.tensor(has_mask, dtype=torch.bool),
        "box": torch.from_numpy(box),
        "index": torch.tensor(index, dtype=torch.int64),
    }


class SyntheticDataset(Dataset):
    """Wraps generated samples; boxes are recomputed after the transform so flips stay correct.

    With `return_shortcut_mask`, samples also carry "shortcut_mask" (uint8 (H, W)), the planted
    marker's pixels transformed like the lesion mask, for checking whether a map finds it.
    """

    def __init__(
        self,
        samples: SyntheticSamples,
        transform: Transform | None = None,
        return_shortcut_mask: bool = False,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.return_shortcut_mask = return_shortcut_mask
        self.has_mask = samples.masks.reshape(len(samples), -1).any(axis=1)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return self.samples.labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples
        mask = s.masks[index]
        if self.return_shortcut_mask:
            mask = np.stack([mask, s.shortcut_masks[index]], axis=-1)
        image, mask, _ = _apply_transform(self.transform, s.images[index], mask)
        extra = {}
        if self.return_shortcut_mask:
            mask, extra["shortcut_mask"] = mask[..., 0].contiguous(), mask[..., 1].contiguous()
        sample = _sample(image, mask, int(s.labels[index]), bool(self.has_mask[index]), index)
        return {**sample, **extra}


@dataclass(frozen=True)
class LabelTable:
    """A validated labels.csv: one entry per row, paths absolute."""

    root: Path
    images: tuple[Path, ...]
    labels: np.ndarray  # int64 (N,); multi-label: uint8 multi-hot (N, C)
    splits: tuple[str, ...]
    groups: tuple[str, ...] | None
    masks: tuple[Path | None, ...]
    rois: tuple[Path | None, ...] = ()

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)


def _listing(items: Sequence[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(repr(i) for i in items[:_MAX_LISTED])
    return shown + (f", ... ({total} in all)" if total > _MAX_LISTED else "")


def _outside_message(what: str, where: Path, root: Path, items: Sequence[str], total: int) -> str:
    """`items`: the offending entries, already quoted; the first few are shown."""
    shown = ", ".join(items[:_MAX_LISTED]) + (", ..." if len(items) > _MAX_LISTED else "")
    return (
        f"{where}: {len(items)} of {total} {what} lead outside the dataset folder "
        f"{os.path.realpath(root)}: {shown}. Paths must stay inside the dataset folder (no "
        "absolute paths, no '..' or symlinks leading out): copy those files into it "
        "(`python -m xai_bench.prepare folder` does) and fix the entries."
    )


def _mask_index(root: Path, image_rel: Sequence[str], folder: str = "masks") -> list[Path | None]:
    """Find each image's mask once, from one walk of `folder` (no per-image stat calls)."""
    mask_dir = root / folder
    if not mask_dir.is_dir():
        return [None] * len(image_rel)
    present: set[str] = set()
    for dirpath, _, files in os.walk(mask_dir):
        rel_dir = Path(dirpath).relative_to(mask_dir)
        present.update((rel_dir / f).as_posix() for f in files)
    stems = Counter(Path(rel).stem for rel in image_rel)
    found: list[Path | None] = []
    ambiguous: list[str] = []
    for rel in image_rel:
        mirrored = Path(rel).with_suffix(".png").as_posix()
        inner = mirrored.removeprefix("images/")
        by_stem = Path(rel).stem + ".png"
        if mirrored in present:
            found.append(mask_dir / mirrored)
        elif inner in present:
            found.append(mask_dir / inner)
        elif by_stem in present:
            if stems[Path(rel).stem] > 1:
                ambiguous.append(by_stem)
            found.append(mask_dir / by_stem)
        else:
            found.append(None)
    if ambiguous:
        raise DatasetNotFoundError(
            f"{mask_dir}: masks {_listing(sorted(set(ambiguous)))} match several images with the same file "
            f"stem. Store such masks under {folder}/ mirroring the image paths "
            f"({folder}/<image path with .png suffix>)."
        )
    present_masks = [p for p in found if p is not None]
    outside = paths_outside(root, present_masks)
    if outside:
        names = [repr(present_masks[i].relative_to(root).as_posix()) for i in outside]
        raise DatasetNotFoundError(_outside_message(f"{folder}/ files", mask_dir, root, names, len(present_masks)))
    return found


def _parse_labels(rows: list[dict[str, str]], csv_path: Path, num_classes: int | None, multilabel: bool) -> np.ndarray:
    bad: list[str] = []
    parsed: list[list[int]] = []
    for i, row in enumerate(rows):
        text = row["label"]
        try:
            values = [int(v) for v in text.split(";") if v.strip() != ""] if multilabel else [int(text)]
        except ValueError:
            values = []
        if not values and not (multilabel and text == ""):
            bad.append(f"line {i + 2}: {text!r}")
        parsed.append(values)
    if bad:
        kind = '";"-separated class indices' if multilabel else "integers"
        raise DatasetNotFoundError(f"{csv_path}: labels must be {kind}; {_listing(bad)}.")
    flat = np.array([v for values in parsed for v in values], dtype=np.int64)
    upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
    wrong = flat[(flat < 0) | (flat >= upper)]
    if wrong.size:
        first = next(i for i, values in enumerate(parsed) if any(v < 0 or v >= upper for v in values))
        allowed = f"0..{num_classes - 1} (num_classes={num_classes})" if num_classes is not None else ">= 0"
        raise ConfigError(
            f"{csv_path}: {int(wrong.size)} labels {sorted(set(wrong.tolist()))} lie outside {allowed}; "
            f"first at line {first + 2}."
        )
    if not multilabel:
        return np.array([values[0] for values in parsed], dtype=np.int64)
    if num_classes is None:
        raise ConfigError("a multi-label dataset needs num_classes.")
    hot = np.zeros((len(parsed), num_classes), dtype=np.uint8)
    for i, values in enumerate(parsed):
        hot[i, values] = 1
    return hot


def read_label_table(root: str | Path, num_classes: int | None = None, multilabel: bool = False) -> LabelTable:
    """Read and validate `root/labels.csv` once, reporting every problem of a kind in one error."""
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"{os.path.abspath(csv_path)} does not exist.")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetNotFoundError(
                f"{csv_path} lacks column(s) {missing}; found {columns}. The canonical layout needs "
                "columns image (path relative to the folder), label (int), split (train|val|test), "
                "optionally group."
            )
        reader.fieldnames = columns
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise DatasetNotFoundError(f"{csv_path} has no rows.")

    labels = _parse_labels(rows, csv_path, num_classes, multilabel)

    splits = tuple(row["split"] for row in rows)
    bad_splits = Counter(s for s in splits if s not in SPLITS)
    if bad_splits:
        raise DatasetNotFoundError(
            f"{csv_path}: split must be one of {list(SPLITS)}; found "
            + ", ".join(f"{s!r} ({n} rows)" for s, n in bad_splits.most_common(_MAX_LISTED))
            + "."
        )

    rel = [row["image"] for row in rows]
    empty = [i + 2 for i, r in enumerate(rel) if not r]
    if empty:
        raise DatasetNotFoundError(f"{csv_path}: empty image path on lines {_listing([str(i) for i in empty])}.")
    images = tuple(root / r for r in rel)
    outside = paths_outside(root, images)
    if outside:
        rows_out = [f"line {i + 2} {rel[i]!r}" for i in outside]
        raise DatasetNotFoundError(_outside_message("image paths", csv_path, root, rows_out, len(rows)))
    missing_files = [r for r, p in zip(rel, images, strict=True) if not p.is_file()]
    if missing_files:
        raise DatasetNotFoundError(
            f"{csv_path}: {len(missing_files)} of {len(rows)} image files do not exist under {root}: "
            f"{_listing(missing_files)}."
        )
    groups = tuple(row.get("group", "") for row in rows) if "group" in columns else None
    return LabelTable(
        root=root,
        images=images,
        labels=labels,
        splits=splits,
        groups=groups,
        masks=tuple(_mask_index(root, rel)),
        rois=tuple(_mask_index(root, rel, "rois")),
    )


def _read_image(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)
    except Exception as err:  # PIL raises OSError, SyntaxError, zlib.error, ... for bad files
        raise XaiBenchError(
            f"cannot read image {path}: {type(err).__name__}: {err}. Re-export it or drop its row from labels.csv."
        ) from err


MASK_SIZE_POLICIES = ("resize", "reject")


def _read_mask(path: Path, height: int, width: int, policy: str = "resize") -> np.ndarray:
    """uint8 {0, 1} (height, width). A mask of another size: `resize` scales it with nearest
    neighbours when it has the image's aspect ratio (rejects it otherwise); `reject` refuses it."""
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGB")
            arr = np.asarray(image)
    except Exception as err:
        raise XaiBenchError(f"cannot read mask {path}: {type(err).__name__}: {err}.") from err
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):  # LA / RGBA: the alpha channel is not the ROI
            arr = arr[..., :-1]
        arr = arr.any(axis=2)
    mask = (arr > 0).astype(np.uint8)
    h, w = mask.shape
    if (h, w) != (height, width):
        if not _mask_fits((w, h), (width, height), policy):
            raise XaiBenchError(
                f"mask {path} is {w}x{h} but its image is {width}x{height}: {_MASK_SIZE_FIX[policy]}"
            )
        mask = np.array(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return mask


_MASK_SIZE_FIX = {
    "reject": "dataset.mask_size=reject refuses masks of another size; re-export them at their image's size, "
              "or set dataset.mask_size=resize to scale masks with nearest neighbours.",
    "resize": "masks must be in the image's frame (the same size, or the same aspect ratio, which "
              "dataset.mask_size=resize scales); re-export them in that frame.",
}


def _mask_fits(mask_size: tuple[int, int], size: tuple[int, int], policy: str) -> bool:
    """Whether a (w, h) mask can be used for a (w, h) frame under `policy` (see _read_mask)."""
    (w, h), (width, height) = mask_size, size
    if (w, h) == (width, height):
        return True
    return policy == "resize" and abs(h / w - height / width) <= 0.01


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header: PIL reads no pixels until asked."""
    with Image.open(path) as image:
        return image.size


def check_mask_sizes(table: LabelTable, policy: str, eval_transform: Transform | None) -> None:
    """Every ROI mask a run will read, checked against its frame from file headers only, so a
    wrong size fails before training instead of in the test loop: masks/ against the stored
    image, rois/ (val/test images) against the network input that `eval_transform` makes of it.
    Same rule as when the masks are read (`policy`: resize | reject); one error lists them all."""
    if policy not in MASK_SIZE_POLICIES:
        raise ConfigError(f"dataset.mask_size must be one of {list(MASK_SIZE_POLICIES)}; got {policy!r}.")
    use_rois = any(table.rois)  # as ImageTableDataset: val/test images use rois/ when there are any
    input_frames: dict[tuple[int, int], tuple[int, int]] = {}

    def input_frame(size: tuple[int, int]) -> tuple[int, int]:
        if size not in input_frames:
            width, height = size
            image, _, _ = _apply_transform(eval_transform, np.zeros((height, width, 3), np.uint8),
                                           np.zeros((height, width), np.uint8))
            input_frames[size] = (int(image.shape[-1]), int(image.shape[-2]))
        return input_frames[size]

    wrong: list[str] = []
    unreadable: list[str] = []
    roi_frames = False
    for row, image_path in enumerate(table.images):
        roi = table.rois[row] if use_rois and table.splits[row] != "train" else None
        mask = table.masks[row] if roi is None else None
        if mask is None and roi is None:
            continue
        try:
            image_size = _header_size(image_path)
        except Exception as err:  # PIL raises OSError, SyntaxError, ... for bad files
            unreadable.append(f"{image_path.relative_to(table.root).as_posix()} ({type(err).__name__})")
            continue
        path, frame, what = (mask, image_size, "image") if roi is None else (roi, input_frame(image_size), "input frame")
        try:
            size = _header_size(path)
        except Exception as err:
            unreadable.append(f"{path.relative_to(table.root).as_posix()} ({type(err).__name__})")
            continue
        if not _mask_fits(size, frame, policy):
            roi_frames = roi_frames or roi is not None
            wrong.append(f"{path.relative_to(table.root).as_posix()} {size[0]}x{size[1]} "
                         f"({what} {frame[0]}x{frame[1]})")
    problems = []
    if wrong:
        frames = " (rois/ masks are in the network-input frame, after the eval transform)" if roi_frames else ""
        problems.append(f"{len(wrong)} ROI masks do not fit their image: {_listing(wrong)}; "
                        f"{_MASK_SIZE_FIX[policy].rstrip('.')}{frames}")
    if unreadable:
        problems.append(f"{len(unreadable)} files cannot be read: {_listing(unreadable)}; re-export them or "
                        "drop their rows / masks")
    if problems:
        raise XaiBenchError(f"{table.root}: " + "; ".join(problems) + ".")


BOX_COLUMNS: tuple[str, ...] = ("image", "class", "x0", "y0", "x1", "y1")
ClassBox = tuple[int, float, float, float, float]  # class, x0, y0, x1, y1 (exclusive), stored pixels


def _box_class_names(root: Path, class_names: Sequence[str] | None) -> tuple[str, ...]:
    """Names the class column may use: the config's, else prepare.json's (the prepare scripts
    write names, e.g. PASCAL VOC's "person", and a datamodule built without class_names only has
    placeholders class_0, class_1, ...)."""
    generic = class_names is not None and list(class_names) == [f"class_{i}" for i in range(len(class_names))]
    if class_names is not None and not generic:  # the datamodule's placeholders name nothing
        return tuple(class_names)
    try:
        return tuple(json.loads((root / "prepare.json").read_text()).get("class_names") or ())
    except (OSError, ValueError, AttributeError):
        return ()


def _box_class(text: str, names: Sequence[str], num_classes: int) -> int:
    index = int(text) if text.lstrip("-").isdigit() else (names.index(text) if text in names else None)
    if index is None or not 0 <= index < num_classes:
        known = f" or one of the class names {_listing(list(names))}" if names else ""
        raise ValueError(f"class {text!r} is not a class index in 0..{num_classes - 1}{known}")
    return index


def _box_corners(row: Mapping[str, str]) -> tuple[float, float, float, float]:
    texts = [row[k] for k in BOX_COLUMNS[2:]]
    try:
        x0, y0, x1, y1 = (float(t) for t in texts)
    except ValueError:
        raise ValueError(f"coordinates {texts} are not all numbers") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x1 > x0 and y1 > y0):
        raise ValueError(f"box x0={texts[0]}, y0={texts[1]}, x1={texts[2]}, y1={texts[3]} is empty or not "
                         "finite (x1 > x0 and y1 > y0 are needed: x1, y1 are exclusive)")
    return x0, y0, x1, y1


def read_class_boxes(
    path: str | Path, image_rel: Sequence[str], num_classes: int, class_names: Sequence[str] = ()
) -> dict[int, list[ClassBox]]:
    """boxes.csv as {row of labels.csv: [(class, x0, y0, x1, y1)]}. Validated when read, so a bad
    row fails the run at construction with its file and line, not inside a loader worker."""
    path = Path(path)
    rows_of = {PurePosixPath(rel).as_posix(): i for i, rel in enumerate(image_rel)}
    boxes: dict[int, list[ClassBox]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in BOX_COLUMNS if c not in columns]
        if missing:
            raise XaiBenchError(
                f"{path} lacks column(s) {missing}; found {columns}. boxes.csv needs columns image (as in "
                "labels.csv), class (index or name), x0, y0, x1, y1 (x1, y1 exclusive, stored-image pixels)."
            )
        reader.fieldnames = columns
        for raw in reader:
            row = {k: (v or "").strip() for k, v in raw.items() if k is not None}
            try:
                image = PurePosixPath(row["image"]).as_posix() if row["image"] else ""
                if image not in rows_of:
                    raise ValueError(f"image {row['image']!r} is not in labels.csv")
                box = (_box_class(row["class"], class_names, num_classes), *_box_corners(row))
            except ValueError as err:
                raise XaiBenchError(f"{path} line {reader.line_num}: {err}.") from None
            boxes.setdefault(rows_of[image], []).append(box)
    return boxes


def _class_mask(boxes: Sequence[ClassBox], height: int, width: int) -> np.ndarray:
    """uint8 (H, W) union of the boxes: the prepare scripts' rule for box ROIs (pixels floor(x0)
    .. ceil(x1) - 1), clipped to the image, so a box and its ROI mask cover the same pixels."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for _, x0, y0, x1, y1 in boxes:
        c0, r0, c1, r1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
        mask[max(r0, 0): min(r1, height), max(c0, 0): min(c1, width)] = 1
    return mask


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
            raise ConfigError(f"dataset.mask_size must be one of {list(MASK_SIZE_POLICIES)}; got {mask_size!r}.")
        self.mask_size = mask_size
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.class_names = tuple(class_names) if class_names is not None else None
        num_classes = len(self.class_names) if self.class_names is not None else None
        self.table = table if table is not None else read_label_table(self.root, num_classes, multilabel)
        self.rows = self.table.rows(split)
        # input-frame ROIs describe the evaluation frame: training crops would misplace them
        self.use_rois = split != "train" and any(self.table.rois)
        if not self.table.multilabel and num_classes is not None and self.table.labels.size and self.table.labels.max() >= num_classes:
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
        names = _box_class_names(self.table.root, self.class_names)
        return read_class_boxes(path, rel, int(self.table.labels.shape[1]), names)

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def labels(self) -> np.ndarray:
        return self.table.labels[self.rows]

    @property
    def has_mask(self) -> np.ndarray:
        rois = self.table.rois if self.use_rois else (None,) * len(self.table.masks)
        return np.array([self.table.masks[r] is not None or rois[r] is not None for r in self.rows], dtype=bool)

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
            _read_mask(mask_path, h, w, self.mask_size)
            if mask_path is not None and roi_path is None
            else np.zeros((h, w), dtype=np.uint8)
        )
        boxes = self.class_boxes.get(row, []) if self.class_boxes is not None else []
        present = sorted({box[0] for box in boxes})
        extra = [_class_mask([b for b in boxes if b[0] == cls], h, w) for cls in present]
        image_t, mask_t, class_t = _apply_transform(self.transform, image, mask, extra)
        out_h, out_w = image_t.shape[-2:]
        if roi_path is not None:
            mask_t = torch.from_numpy(_read_mask(roi_path, out_h, out_w, self.mask_size))
        label = self.table.labels[row]
        label_t = torch.from_numpy(label.astype(np.float32)) if self.table.multilabel else int(label)
        sample = _sample(image_t, mask_t, label_t, mask_path is not None or roi_path is not None, index)
        if self.class_boxes is not None:
            class_masks = torch.zeros((self.table.labels.shape[1], out_h, out_w), dtype=torch.uint8)
            for cls, class_mask in zip(present, class_t, strict=True):
                class_masks[cls] = class_mask
            sample["class_masks"] = class_masks
        return sample
