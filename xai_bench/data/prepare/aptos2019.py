"""APTOS 2019 Blindness Detection: diabetic retinopathy binarised, no DR (0) vs DR
(1, diagnosis > 0).

Official download (Kaggle competition aptos2019-blindness-detection, `kaggle competitions
download -c aptos2019-blindness-detection`) extracts to:

    train.csv                   id_code,diagnosis   (0 no DR, 1 mild, 2 moderate, 3 severe,
                                                     4 proliferative)
    train_images/<id_code>.png
    test.csv, test_images/      (no labels: not used)
    sample_submission.csv       (not used)

Layout source: the competition's data page (file and column names as listed there and in the
competition file summaries of public benchmarks). The survey study binarised the grade
(diagnosis > 0 -> 1). No patient ids are published, and the Kaggle test set has no labels, so
train.csv is split 80/10/10, stratified by the binary label, seeded (--seed, default 42). Images
are stored resized to 224x224 (the survey's direct resize; --resize short256 keeps the aspect for
its shortest-side + crop policy). No ROI.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from xai_bench.data.prepare.common import (
    Preparer,
    PrepareReport,
    Record,
    config_from_args,
    prepare_dataset,
    require_dir,
)
from xai_bench.utils.errors import DatasetNotFoundError

CLASS_NAMES = ("no_dr", "dr")
SOURCE = ("APTOS 2019 Blindness Detection "
          "(https://www.kaggle.com/competitions/aptos2019-blindness-detection), "
          "train.csv + train_images/")
DEFAULT_RESIZE = "224x224"
GRADES = range(5)
DOWNLOAD = ("Download the competition data "
            "(kaggle competitions download -c aptos2019-blindness-detection), "
            "extract it and pass the folder holding train.csv and train_images/ as --raw.")


def records(raw: Path) -> list[Record]:
    raw = require_dir(raw, "APTOS 2019 folder", DOWNLOAD)
    table = raw / "train.csv"
    if not table.is_file():
        raise DatasetNotFoundError(
            f"APTOS 2019 labels not found: {table.resolve()} does not exist. {DOWNLOAD}")
    images = require_dir(raw / "train_images", "APTOS 2019 image folder 'train_images'", DOWNLOAD)
    with open(table, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"id_code", "diagnosis"} <= set(rows[0]):
        raise DatasetNotFoundError(f"{table} must have columns id_code,diagnosis. {DOWNLOAD}")
    out: list[Record] = []
    bad, missing = [], []
    for line, row in enumerate(rows, start=2):
        code, grade = row["id_code"].strip(), row["diagnosis"].strip()
        if not grade.isdigit() or int(grade) not in GRADES:
            bad.append(f"line {line}: {grade!r}")
            continue
        path = images / f"{code}.png"
        if not path.is_file():
            missing.append(code)
            continue
        label = int(int(grade) > 0)
        out.append(Record(source=path, label=label, name=f"{CLASS_NAMES[label]}/{code}"))
    if bad:
        raise DatasetNotFoundError(
            f"{table}: diagnosis must be an integer 0-4; {bad[:5]} ({len(bad)} rows).")
    if missing:
        raise DatasetNotFoundError(f"{len(missing)} images listed in train.csv are not in "
                                   f"{images.resolve()} (e.g. {missing[:3]}). {DOWNLOAD}")
    return out


def prepare(args: argparse.Namespace) -> PrepareReport:
    return prepare_dataset(records(args.raw), config_from_args(args), CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE)
