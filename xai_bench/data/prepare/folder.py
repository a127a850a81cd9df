"""Your own images -> the canonical layout: class folders or a CSV, optional ROI masks or boxes.

Two input forms (`--raw` is always the image root):

    class folders   <raw>/<class>/**/*.png|jpg|jpeg|bmp|tif|tiff   class names = sorted folder names
                    (or --classes: those folders only, in the order that fixes the indices);
                    nested sub-folders are kept in the output names
    CSV             --csv table.csv with columns path,label[,split][,group]
                    path: relative to --raw (or absolute, below --raw); label: a class name or
                    a class index; split: train|val|test (empty = assigned); group:
                    patient/lesion/slide id, never split across train/val/test. Every path must
                    stay inside --raw (no '..' or symlinks leading out): a row pointing
                    elsewhere is refused, nothing is copied

ROIs (optional): `--masks DIR` holds one mask per image, `DIR/<image path relative to --raw, any
image suffix>` or `DIR/<image stem>.<suffix>` (any pixel > 0 = inside, same size as the image);
`--boxes FILE.csv` with columns path_or_stem,x0,y0,x1,y1 (the first column may have any name;
pixels of the source image, x1/y1 exclusive; several rows per image = several boxes). An image with
both a box and a mask uses the boxes. Images without a split get seeded, label-stratified and
grouped splits (`--fractions`).
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from xai_bench.data.containment import paths_outside
from xai_bench.data.prepare.common import (
    Preparer,
    PrepareReport,
    Record,
    config_from_args,
    prepare_dataset,
    require_dir,
)
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError

SOURCE = "user images (xai_bench.data.prepare.folder)"
DEFAULT_RESIZE = None  # keep the user's pixels; the config's transforms resize to img_size
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test", "": None}
_MAX_LISTED = 5


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _name(path: Path, raw: Path) -> str:
    """Output name: the path under --raw without suffix (unique), else the stem."""
    try:
        return path.resolve().relative_to(raw.resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.stem


# ----------------------------------------------------------------------------- inputs
def folder_records(raw: Path,
                   classes: Sequence[str] | None = None) -> tuple[list[Record], list[str]]:
    raw = require_dir(raw, "image folder",
                      "Pass the folder that holds one sub-folder per class as --raw "
                      "(or a CSV of path,label with --csv).")
    found = sorted(p.name for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(classes) if classes else found
    if not names:
        raise DatasetNotFoundError(
            f"{raw.resolve()} has no class sub-folders: expected <raw>/<class>/<images>.")
    out: list[Record] = []
    for label, cls in enumerate(names):
        folder = require_dir(raw / cls, f"class folder '{cls}'",
                             f"Expected {raw}/{cls}/ with the class's images "
                             f"(class folders found: {found}).")
        out.extend(Record(source=p, label=label, name=_name(p, raw)) for p in _images_under(folder))
    return out, names


def csv_records(raw: Path, table: Path,
                classes: Sequence[str] | None = None) -> tuple[list[Record], list[str]]:
    raw = require_dir(raw, "image folder",
                      "Pass the folder the CSV's paths are relative to as --raw.")
    table = Path(table)
    if not table.is_file():
        raise DatasetNotFoundError(f"label table not found: {table.resolve()} is not a file.")
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DatasetNotFoundError(f"{table} lacks column(s) {missing}; found {columns}. "
                                       "Expected path,label[,split][,group].")
        reader.fieldnames = columns
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise DatasetNotFoundError(f"{table} has no rows.")

    labels = [row["label"] for row in rows]
    numeric = all(v.lstrip("-").isdigit() for v in labels)
    if classes:
        names = list(classes)
    elif numeric:
        names = [str(i) for i in range(max(int(v) for v in labels) + 1)]
    else:
        names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}

    outside = paths_outside(raw, [raw / row["path"] for row in rows])
    if outside:  # refused before any file is looked at or copied
        shown = ", ".join(f"line {i + 2} {rows[i]['path']!r}" for i in outside[:_MAX_LISTED])
        raise ConfigError(
            f"{table}: {len(outside)} of {len(rows)} paths lead outside --raw "
            f"{os.path.realpath(raw)}: {shown}{', ...' if len(outside) > _MAX_LISTED else ''}. "
            "Paths must be relative to --raw and stay inside it (no '..' or symlinks leading out, "
            "absolute paths only below --raw): move those images under --raw and fix the rows."
        )
    out: list[Record] = []
    bad_labels, bad_splits, missing_files = [], [], []
    for line, row in enumerate(rows, start=2):
        value = row["label"]
        if value in index:
            label = index[value]
        elif value.lstrip("-").isdigit() and 0 <= int(value) < len(names):
            label = int(value)
        else:
            bad_labels.append(f"line {line}: {value!r}")
            continue
        split_text = row.get("split", "").lower()
        if split_text not in SPLIT_ALIASES:
            bad_splits.append(f"line {line}: {row.get('split')!r}")
            continue
        path = raw / row["path"]  # an absolute path stays as it is (and lies below --raw)
        if not path.is_file():
            missing_files.append(row["path"])
            continue
        out.append(Record(source=path, label=label, name=_name(path, raw),
                          split=SPLIT_ALIASES[split_text], group=row.get("group") or None))
    if bad_labels:
        raise ConfigError(f"{table}: labels must be one of the classes {names} "
                          f"or an index 0..{len(names) - 1}; {_listing(bad_labels)}.")
    if bad_splits:
        raise ConfigError(
            f"{table}: split must be train, val, test or empty; {_listing(bad_splits)}.")
    if missing_files:
        raise DatasetNotFoundError(f"{table}: {len(missing_files)} image files do not exist "
                                   f"under {raw.resolve()}: {_listing(missing_files)}.")
    return out, names


# ----------------------------------------------------------------------------- ROIs
def attach_masks(recs: list[Record], raw: Path, masks: Path) -> int:
    """Set Record.mask from DIR/<relative path>.<suffix> or DIR/<stem>.<suffix>; -> masks found."""
    masks = require_dir(masks, "mask folder",
                        "Pass the folder with one mask image per image as --masks.")
    files = [p for p in masks.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    outside = paths_outside(masks, files)
    if outside:
        shown = ", ".join(repr(files[i].relative_to(masks).as_posix())
                          for i in outside[:_MAX_LISTED])
        raise ConfigError(
            f"{masks}: {len(outside)} mask files are symlinks leading outside the mask folder "
            f"{os.path.realpath(masks)}: {shown}{', ...' if len(outside) > _MAX_LISTED else ''}. "
            "Copy the masks into the folder instead of linking them."
        )
    by_rel = {p.relative_to(masks).with_suffix("").as_posix(): p for p in files}
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        by_stem[p.stem].append(p)
    stems = defaultdict(int)
    for record in recs:
        stems[record.source.stem] += 1
    ambiguous, found = [], 0
    for record in recs:
        mask = by_rel.get(_name(record.source, raw))
        if mask is None and record.source.stem in by_stem:
            if stems[record.source.stem] > 1 or len(by_stem[record.source.stem]) > 1:
                ambiguous.append(record.source.stem)
                continue
            mask = by_stem[record.source.stem][0]
        if mask is not None:
            record.mask = mask
            found += 1
    if ambiguous:
        raise ConfigError(f"masks {_listing(sorted(set(ambiguous)))} match several images "
                          f"(or several masks match one stem) in {masks}: "
                          "mirror the image paths under the mask folder instead.")
    return found


def attach_boxes(recs: list[Record], raw: Path, boxes: Path) -> int:
    """Set Record.boxes from a CSV keyed by image path (relative to --raw) or stem; -> images with
    boxes."""
    boxes = Path(boxes)
    if not boxes.is_file():
        raise DatasetNotFoundError(f"box table not found: {boxes.resolve()} is not a file.")
    with open(boxes, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [c.strip() for c in next(reader, [])]
        missing = [c for c in ("x0", "y0", "x1", "y1") if c not in header]
        if not header or missing:
            raise DatasetNotFoundError(f"{boxes} lacks column(s) {missing or ['path_or_stem']}; "
                                       f"found {header}. Expected path_or_stem,x0,y0,x1,y1.")
        cols = [header.index(c) for c in ("x0", "y0", "x1", "y1")]
        table: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
        bad = []
        for line, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            try:
                x0, y0, x1, y1 = (float(row[c]) for c in cols)
            except (ValueError, IndexError):
                bad.append(f"line {line}: {row}")
                continue
            if x1 <= x0 or y1 <= y0:
                bad.append(f"line {line}: empty box {row}")
                continue
            table[row[0].strip()].append((x0, y0, x1, y1))
    if bad:
        raise ConfigError(f"{boxes}: boxes need numbers with x1 > x0 and y1 > y0; {_listing(bad)}.")

    def key_forms(record: Record) -> list[str]:
        rel = _name(record.source, raw)
        return [rel + record.source.suffix, rel, record.source.name, record.source.stem]

    stems = defaultdict(int)
    for record in recs:
        stems[record.source.stem] += 1
    used, ambiguous, n = set(), [], 0
    for record in recs:
        for key in key_forms(record):
            if key in table:
                if (key in (record.source.name, record.source.stem)
                        and stems[record.source.stem] > 1):
                    ambiguous.append(key)
                    break
                record.boxes = list(table[key])
                used.add(key)
                n += 1
                break
    if ambiguous:
        raise ConfigError(f"{boxes}: keys {_listing(sorted(set(ambiguous)))} match several "
                          "images; use the path relative to --raw instead of the stem.")
    unknown = sorted(set(table) - used)
    if unknown:
        raise DatasetNotFoundError(
            f"{boxes}: {len(unknown)} keys match no image: {_listing(unknown)}.")
    return n


def records(raw: Path, csv_path: Path | None = None, classes: Sequence[str] | None = None,
            masks: Path | None = None, boxes: Path | None = None) -> tuple[list[Record], list[str]]:
    """-> (records, class names in index order)."""
    recs, names = csv_records(raw, csv_path, classes) if csv_path else folder_records(raw, classes)
    if masks is not None:
        attach_masks(recs, Path(raw), masks)
    if boxes is not None:
        attach_boxes(recs, Path(raw), boxes)
    return recs, names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only folder has (the common ones: add_common_args)."""
    parser.add_argument("--csv", type=Path, default=None,
                        help="label table: path,label[,split][,group]")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="class names in index order (default: sorted)")
    parser.add_argument("--masks", type=Path, default=None,
                        help="folder of ROI masks, one per image")
    parser.add_argument("--boxes", type=Path, default=None,
                        help="CSV path_or_stem,x0,y0,x1,y1 of ROI boxes")


def prepare(args: argparse.Namespace) -> PrepareReport:
    recs, names = records(args.raw, args.csv, args.classes, args.masks, args.boxes)
    report = prepare_dataset(recs, config_from_args(args), names, SOURCE)
    print("class names (index order), for conf/dataset/folder.yaml: "
          f"num_classes={len(names)} class_names={names}")
    return report


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, add_arguments=add_arguments)
