"""SIIM-ISIC 2020 melanoma: benign (0) vs malignant (1, column target), split grouped by patient_id.

Two official layouts are read (the same 33,126 training images):

    Kaggle competition siim-isic-melanoma-classification:
        train.csv        image_name,patient_id,sex,age_approx,anatom_site_general_challenge,
                         diagnosis,benign_malignant,target
        jpeg/train/<image_name>.jpg
        train/<image_name>.dcm          (DICOM, read only when the JPEG is absent)
        test.csv, jpeg/test/, test/, tfrecords/, sample_submission.csv   (not used)
    ISIC archive (https://challenge2020.isic-archive.com/, isic-challenge-data/2020/):
        ISIC_2020_Training_GroundTruth_v2.csv   the columns above plus lesion_id
        ISIC_2020_Training_GroundTruth.csv      (v1, same columns as Kaggle's train.csv)
        train/<image_name>.jpg                  (ISIC_2020_Training_JPEG.zip extracts to train/)
        ISIC_2020_Training_Duplicates.csv       image_name_1,image_name_2
                                                (used with --drop-duplicates)

Layout sources: the competition's data page (columns, jpeg/ and DICOM folders), the competition
file summaries of public benchmarks, and public download scripts of the ISIC archive files.
The labels table is the first found of train.csv, ..._GroundTruth_v2.csv, ..._GroundTruth.csv.
The Kaggle test set has no labels, so the training images are split 80/10/10, stratified by
target, grouped by patient_id (the survey split by patient). `--drop-duplicates` leaves out
image_name_2 of each pair the ISIC archive lists as duplicates (not done by the survey).
The survey trained with class weights 'balanced' (conf/dataset/isic2020.yaml sets them). Images
are stored resized to 224x224 (the survey's direct resize). No ROI.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from xai_bench.data.prepare.common import (
    Preparer,
    PrepareReport,
    Reader,
    Record,
    config_from_args,
    prepare_dataset,
    require_dir,
    to_uint8_rgb,
)
from xai_bench.utils.errors import DatasetNotFoundError

CLASS_NAMES = ("benign", "malignant")
SOURCE = ("SIIM-ISIC 2020 (https://www.kaggle.com/competitions/siim-isic-melanoma-classification, "
          "https://challenge2020.isic-archive.com/)")
DEFAULT_RESIZE = "224x224"
LABEL_TABLES = ("train.csv", "ISIC_2020_Training_GroundTruth_v2.csv",
                "ISIC_2020_Training_GroundTruth.csv")
JPEG_FOLDERS = ("jpeg/train", "train", "ISIC_2020_Training_JPEG/train", "ISIC_2020_Training_JPEG")
DUPLICATES = "ISIC_2020_Training_Duplicates.csv"
DOWNLOAD = ("Download the Kaggle competition data "
            "(kaggle competitions download -c siim-isic-melanoma-classification: "
            "train.csv + jpeg/train/) or the ISIC archive's ISIC_2020_Training_JPEG.zip "
            "+ ISIC_2020_Training_GroundTruth_v2.csv (https://challenge2020.isic-archive.com/), "
            "extract them into one folder and pass it as --raw.")


def read_dicom(path: Path) -> np.ndarray:
    """uint8 RGB from an ISIC DICOM (JPEG-compressed YBR is converted to RGB by pydicom)."""
    from pydicom.pixels import pixel_array  # pydicom >= 3

    arr = pixel_array(path)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    return to_uint8_rgb(arr)


def _image(raw: Path, name: str) -> tuple[Path, Reader | None] | None:
    for folder in JPEG_FOLDERS:
        path = raw / folder / f"{name}.jpg"
        if path.is_file():
            return path, None
    dicom = raw / "train" / f"{name}.dcm"
    return (dicom, read_dicom) if dicom.is_file() else None


def records(raw: Path, drop_duplicates: bool = False) -> list[Record]:
    raw = require_dir(raw, "ISIC 2020 folder", DOWNLOAD)
    table = next((raw / name for name in LABEL_TABLES if (raw / name).is_file()), None)
    if table is None:
        raise DatasetNotFoundError(f"ISIC 2020 labels not found: none of {list(LABEL_TABLES)} "
                                   f"is in {raw.resolve()}. {DOWNLOAD}")
    with open(table, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"image_name", "patient_id", "target"}
    if not rows or not needed <= set(rows[0]):
        raise DatasetNotFoundError(f"{table} must have columns {sorted(needed)}. {DOWNLOAD}")
    skip: set[str] = set()
    if drop_duplicates:
        if not (raw / DUPLICATES).is_file():
            raise DatasetNotFoundError(f"--drop-duplicates needs {raw.resolve() / DUPLICATES} "
                                       "(ISIC archive, 2020 challenge data).")
        with open(raw / DUPLICATES, newline="", encoding="utf-8-sig") as handle:
            skip = {row["image_name_2"].strip() for row in csv.DictReader(handle)}
    out: list[Record] = []
    bad, missing = [], []
    for line, row in enumerate(rows, start=2):
        name, target = row["image_name"].strip(), row["target"].strip()
        if name in skip:
            continue
        if target not in ("0", "1"):
            bad.append(f"line {line}: {target!r}")
            continue
        found = _image(raw, name)
        if found is None:
            missing.append(name)
            continue
        label = int(target)
        out.append(Record(source=found[0], label=label, name=f"{CLASS_NAMES[label]}/{name}",
                          group=row["patient_id"].strip() or None, reader=found[1]))
    if bad:
        raise DatasetNotFoundError(f"{table}: target must be 0 or 1; {bad[:5]} ({len(bad)} rows).")
    if missing:
        raise DatasetNotFoundError(f"{len(missing)} images listed in {table.name} are in none of "
                                   f"{[str(raw / f) for f in JPEG_FOLDERS]} "
                                   f"(e.g. {missing[:3]}). {DOWNLOAD}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only isic2020 has (the common ones: add_common_args)."""
    parser.add_argument("--drop-duplicates", action="store_true",
                        help=f"leave out image_name_2 of each pair in {DUPLICATES}")


def prepare(args: argparse.Namespace) -> PrepareReport:
    return prepare_dataset(records(args.raw, args.drop_duplicates), config_from_args(args),
                           CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, add_arguments=add_arguments)
