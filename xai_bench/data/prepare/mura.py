"""MURA v1.1 (Rajpurkar et al. 2017): musculoskeletal radiographs, normal (0) vs abnormal (1).

Official download `MURA-v1.1.zip` (Stanford AIMI, https://aimi.stanford.edu/datasets/mura-msk-xrays,
after registration) extracts to:

    MURA-v1.1/train/XR_<BODYPART>/patient<5 digits>/study<k>_<positive|negative>/image<n>.png
    MURA-v1.1/valid/...                      (same layout; patients 11185 and up)
    MURA-v1.1/train_image_paths.csv          no header:
        MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png
    MURA-v1.1/valid_image_paths.csv
    MURA-v1.1/train_labeled_studies.csv      no header:
        MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/,1
    MURA-v1.1/valid_labeled_studies.csv

(Layout from the MURA paper / competition page and the CSV lines quoted by public loaders.)
Labels are per study (every image of a study gets the study's label): the *_labeled_studies.csv
files when present, else the study folder's suffix (positive = abnormal). The test set of the
competition is hidden, so the official valid set is our test split, and val is a seeded,
label-stratified split of the train patients (--val-fraction, default 0.1); group = patient.
Images are stored with the shortest side 256 (aspect kept), as the study did; its test
transform is CenterCrop 224. Output names keep the stems of the study's evaluation ROIs
(`XR_WRIST/patient11188_study1_positive_image3.png`), so the study's masks attach (--rois study,
the default).
MURA publishes no boxes: the only ROIs are those evaluation masks.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from xai_bench.data.prepare.common import (
    Preparer,
    PrepareReport,
    Record,
    assign_splits,
    config_from_args,
    prepare_dataset,
    require_dir,
)
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError, XaiBenchError

CLASS_NAMES = ("normal", "abnormal")
SOURCE = ("MURA v1.1 (https://aimi.stanford.edu/datasets/mura-msk-xrays): "
          "train/ and valid/ (valid = test)")
DEFAULT_RESIZE = "short256"
PUBLISHER_SPLITS = {"train": None, "valid": "test"}  # train -> train/val below; valid -> test
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DOWNLOAD_HINT = (
    "Download MURA-v1.1.zip from https://aimi.stanford.edu/datasets/mura-msk-xrays "
    "(free registration) and pass the extracted MURA-v1.1/ folder "
    "(with train/, valid/ and the *_image_paths.csv files) as --raw."
)
_STUDY = re.compile(r"^study(\d+)_(positive|negative)$")
_PATIENT = re.compile(r"^patient(\d+)$")
_IMAGE = re.compile(r"^image(\d+)$")


def _relative(path_text: str, raw: Path) -> Path | None:
    """A CSV path (MURA-v1.1/train/...) -> the file under `raw`; None when it is not a MURA path."""
    parts = Path(path_text.strip().rstrip("/")).parts
    for index, part in enumerate(parts):
        if part in PUBLISHER_SPLITS:
            return raw.joinpath(*parts[index:])
    return None


def _read_labels(raw: Path, split: str) -> dict[Path, int] | None:
    path = raw / f"{split}_labeled_studies.csv"
    if not path.is_file():
        return None
    labels: dict[Path, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for line, row in enumerate(csv.reader(handle), 1):
            if not row or not row[0].strip():
                continue
            study = _relative(row[0], raw)
            if study is None or len(row) < 2 or row[1].strip() not in ("0", "1"):
                raise XaiBenchError(f"{path}:{line}: expected "
                                    f"'MURA-v1.1/{split}/XR_.../study1_positive/,1'; got {row}.")
            labels[study] = int(row[1])
    return labels


def _image_paths(raw: Path, split: str) -> list[Path]:
    """The publisher's image list when present (a listed but missing file fails under --on-corrupt),
    else the PNGs found in the folders."""
    listing = raw / f"{split}_image_paths.csv"
    if listing.is_file():
        paths = []
        with open(listing, newline="", encoding="utf-8-sig") as handle:
            for line, row in enumerate(csv.reader(handle), 1):
                if row and row[0].strip():
                    path = _relative(row[0], raw)
                    if path is None:
                        raise XaiBenchError(
                            f"{listing}:{line}: {row[0]!r} is not a MURA-v1.1/{split}/... path.")
                    paths.append(path)
        return paths
    return sorted(p for p in (raw / split).rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def records(raw: Path, val_fraction: float = 0.1, seed: int = 42) -> list[Record]:
    raw = require_dir(raw, "MURA-v1.1 folder", DOWNLOAD_HINT)
    # the folder the zip was extracted in
    if not (raw / "train").is_dir() and (raw / "MURA-v1.1").is_dir():
        raw = raw / "MURA-v1.1"
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must lie strictly between 0 and 1; got {val_fraction}.")
    missing = [s for s in PUBLISHER_SPLITS if not (raw / s).is_dir()]
    if missing:
        raise DatasetNotFoundError(
            f"MURA split folder(s) {', '.join(f'{s}/' for s in missing)} not found in "
            f"{raw.resolve()}. {DOWNLOAD_HINT}"
        )
    out: dict[str, list[Record]] = {}
    for split, target in PUBLISHER_SPLITS.items():
        labels = _read_labels(raw, split)
        out[split] = []
        for path in _image_paths(raw, split):
            rel = path.relative_to(raw / split).parts
            if len(rel) != 4 or not (_PATIENT.match(rel[1]) and _STUDY.match(rel[2])):
                raise XaiBenchError(
                    f"{path} is not in the MURA layout "
                    f"{split}/XR_<PART>/patient<id>/study<k>_<positive|negative>/image<n>.png.")
            part, patient, study = rel[0], rel[1], rel[2]
            label = 1 if _STUDY.match(study).group(2) == "positive" else 0  # type: ignore[union-attr]
            if labels is not None:
                if path.parent not in labels:
                    raise XaiBenchError(
                        f"{path.parent} is not listed in {split}_labeled_studies.csv.")
                label = labels[path.parent]
            out[split].append(Record(
                source=path, label=label, name=f"{part}/{patient}_{study}_{Path(rel[3]).stem}",
                group=patient, split=target,
            ))
    if not out["train"]:
        raise DatasetNotFoundError(f"no images in {raw / 'train'}. {DOWNLOAD_HINT}")
    # val = a grouped, label-stratified share of the train patients (the valid set is the test set)
    assign_splits(out["train"], (1.0 - val_fraction, val_fraction, 0.0), seed)
    return out["train"] + out["valid"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only mura has (the common ones: add_common_args)."""
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the train patients held out as val "
                             "(the official valid set is the test split; --fractions is not used)")


def prepare(args: argparse.Namespace) -> PrepareReport:
    return prepare_dataset(records(args.raw, args.val_fraction, args.seed), config_from_args(args),
                           CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, study_rois=True,  # --rois study by default
                    add_arguments=add_arguments)
