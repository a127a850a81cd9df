"""Kvasir v2 (Pogorelov et al. 2017): the study's two classes, normal-z-line (0) vs esophagitis (1).

Official download `kvasir-dataset-v2.zip` extracts to one folder per class:

    kvasir-dataset-v2/esophagitis/<uuid>.jpg
    kvasir-dataset-v2/normal-z-line/<uuid>.jpg
    kvasir-dataset-v2/<6 other classes>/...     (not used)

No patient ids are published, so the split is per image (stratified, seeded). The study stored
images with the shortest side 256 (aspect kept) and evaluated a CenterCrop 224.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xai_bench.data.prepare.common import (
    Preparer,
    PrepareReport,
    Record,
    config_from_args,
    prepare_dataset,
    require_dir,
)

CLASS_NAMES = ("normal-z-line", "esophagitis")
SOURCE = "Kvasir v2 (https://datasets.simula.no/kvasir/), folders esophagitis/ and normal-z-line/"
DEFAULT_RESIZE = "short256"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def records(raw: Path) -> list[Record]:
    raw = require_dir(raw, "Kvasir v2 folder",
                      "Download kvasir-dataset-v2.zip from https://datasets.simula.no/kvasir/ "
                      "and pass the extracted kvasir-dataset-v2/ folder as --raw.")
    out: list[Record] = []
    for label, cls in enumerate(CLASS_NAMES):
        folder = raw / cls
        require_dir(folder, f"Kvasir class folder '{cls}'",
                    f"Expected {raw}/{cls}/ with the class's images.")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                out.append(Record(source=path, label=label, name=f"{cls}/{path.stem}"))
    return out


def prepare(args: argparse.Namespace) -> PrepareReport:
    return prepare_dataset(records(args.raw), config_from_args(args), CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, study_rois=True)  # --rois study by default
