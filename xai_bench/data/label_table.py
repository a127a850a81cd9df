"""labels.csv of a dataset in the canonical layout (see xai_bench.data.datasets), validated once.

Every problem of a kind is reported in one error (all bad labels, all missing files), and every
path must stay inside the dataset folder: a table is untrusted input.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xai_bench.data.containment import paths_outside
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError

__all__ = ["REQUIRED_COLUMNS", "SPLITS", "LabelTable", "listing", "read_label_table"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = ("image", "label", "split")
_MAX_LISTED = 5


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



def read_csv_rows(path: Path, required: Sequence[str], error: type[Exception],
                  layout: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV, headers and values stripped; a missing required column is
    one `error` naming the file, the columns found and the layout expected."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise error(f"{path} lacks column(s) {missing}; found {columns}. {layout}")
        reader.fieldnames = columns
        return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None})
                for row in reader]

def listing(items: Sequence[str], total: int | None = None) -> str:
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
            f"{mask_dir}: masks {listing(sorted(set(ambiguous)))} match several images "
            f"with the same file stem. Store such masks under {folder}/ mirroring the image paths "
            f"({folder}/<image path with .png suffix>)."
        )
    present_masks = [p for p in found if p is not None]
    outside = paths_outside(root, present_masks)
    if outside:
        names = [repr(present_masks[i].relative_to(root).as_posix()) for i in outside]
        raise DatasetNotFoundError(
            _outside_message(f"{folder}/ files", mask_dir, root, names, len(present_masks)))
    return found


def _parse_labels(rows: list[dict[str, str]], csv_path: Path, num_classes: int | None,
                  multilabel: bool) -> np.ndarray:
    bad: list[str] = []
    parsed: list[list[int]] = []
    for i, row in enumerate(rows):
        text = row["label"]
        try:
            values = ([int(v) for v in text.split(";") if v.strip() != ""] if multilabel
                      else [int(text)])
        except ValueError:
            values = []
        if not values and not (multilabel and text == ""):
            bad.append(f"line {i + 2}: {text!r}")
        parsed.append(values)
    if bad:
        kind = '";"-separated class indices' if multilabel else "integers"
        raise DatasetNotFoundError(f"{csv_path}: labels must be {kind}; {listing(bad)}.")
    flat = np.array([v for values in parsed for v in values], dtype=np.int64)
    upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
    wrong = flat[(flat < 0) | (flat >= upper)]
    if wrong.size:
        first = next(i for i, values in enumerate(parsed)
                     if any(v < 0 or v >= upper for v in values))
        allowed = (f"0..{num_classes - 1} (num_classes={num_classes})" if num_classes is not None
                   else ">= 0")
        raise ConfigError(
            f"{csv_path}: {int(wrong.size)} labels {sorted(set(wrong.tolist()))} "
            f"lie outside {allowed}; "
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


def read_label_table(root: str | Path, num_classes: int | None = None,
                     multilabel: bool = False) -> LabelTable:
    """Read and validate `root/labels.csv` once, reporting every problem of a kind in one error."""
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"{os.path.abspath(csv_path)} does not exist.")
    layout = ("The canonical layout needs columns image (path relative to the folder), label "
              "(int), split (train|val|test), optionally group.")
    rows = [row for _, row in read_csv_rows(csv_path, REQUIRED_COLUMNS, DatasetNotFoundError,
                                            layout)]
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
        raise DatasetNotFoundError(
            f"{csv_path}: empty image path on lines {listing([str(i) for i in empty])}.")
    images = tuple(root / r for r in rel)
    outside = paths_outside(root, images)
    if outside:
        rows_out = [f"line {i + 2} {rel[i]!r}" for i in outside]
        raise DatasetNotFoundError(
            _outside_message("image paths", csv_path, root, rows_out, len(rows)))
    missing_files = [r for r, p in zip(rel, images, strict=True) if not p.is_file()]
    if missing_files:
        raise DatasetNotFoundError(
            f"{csv_path}: {len(missing_files)} of {len(rows)} image files "
            f"do not exist under {root}: "
            f"{listing(missing_files)}."
        )
    has_groups = bool(rows) and "group" in rows[0]  # every row has the header's keys
    groups = tuple(row.get("group", "") for row in rows) if has_groups else None
    return LabelTable(
        root=root,
        images=images,
        labels=labels,
        splits=splits,
        groups=groups,
        masks=tuple(_mask_index(root, rel)),
        rois=tuple(_mask_index(root, rel, "rois")),
    )
