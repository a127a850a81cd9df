"""COVID-19 Radiography Database (Chowdhury et al. 2020, Rahman et al. 2021): 4 chest X-ray classes.

Official download: Kaggle `tawsifurrahman/covid19-radiography-database` (archive.zip). Since the
2021 update (v4+) it extracts to one folder per class, each with images/ and lung masks/, plus one
metadata workbook per class (columns FILE NAME, FORMAT, SIZE, URL):

    COVID-19_Radiography_Dataset/COVID/images/COVID-1.png ...            (3,616)
    COVID-19_Radiography_Dataset/Lung_Opacity/images/Lung_Opacity-1.png  (6,012)
    COVID-19_Radiography_Dataset/Normal/images/Normal-1.png              (10,192)
    COVID-19_Radiography_Dataset/Viral Pneumonia/images/Viral Pneumonia-1.png (1,345)
    COVID-19_Radiography_Dataset/<class>/masks/<same name>.png           (lung masks, 256x256)
    COVID-19_Radiography_Dataset/<class>.metadata.xlsx, README.md.txt

Images are 299x299 PNG. Layout source: the Kaggle dataset description and the companion study's
own loader (github.com/vggls/medical_xai, example_xrays/xrays.py), which also fixes the class
indices (torchvision ImageFolder order: COVID 0, Lung_Opacity 1, Normal 2, Viral Pneumonia 3) and
the split: per class, files sorted by name (Python string order), the first int(0.8 n) train, up
to int(0.9 n) validation, the rest test. Older releases (<= v3) kept the images directly in the
class folder; that layout is read too. The metadata workbooks are not needed (the folder is the
label) and are not read. The lung masks outline the lungs, not the finding: they are NOT used as
ROIs. No patient ids are published, so the split cannot be grouped by patient.
The companion resized to 224x224 in its transforms: the images are stored as published.
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

CLASS_NAMES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
SOURCE = ("COVID-19 Radiography Database "
          "(https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database), "
          "<class>/images/, per class sorted by name 80/10/10")
# 299x299 as published; the test transform resizes to 224 as the companion did
DEFAULT_RESIZE = None
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
TOP_FOLDER = "COVID-19_Radiography_Dataset"
HINT = ("Download archive.zip from "
        "https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database, "
        f"extract it and pass the {TOP_FOLDER}/ folder "
        "(the one holding COVID/, Lung_Opacity/, Normal/ and 'Viral Pneumonia/') as --raw.")


def _root(raw: Path) -> Path:
    """--raw itself, or the COVID-19_Radiography_Dataset/ folder inside it (Kaggle zips nest it,
    sometimes twice)."""
    raw = require_dir(raw, "COVID-19 Radiography Database folder", HINT)
    while not (raw / CLASS_NAMES[0]).is_dir() and (raw / TOP_FOLDER).is_dir():
        raw = raw / TOP_FOLDER
    return raw


def sorted_split(n: int, fractions: tuple[float, float, float]) -> list[str]:
    """The companion's rule for n files sorted by name: position i (1-based) <= int(n f_train) ->
    train, <= int(n (f_train + f_val)) -> val, else test."""
    train_end = int(n * fractions[0])
    val_end = int(n * (fractions[0] + fractions[1]))
    return ["train" if i <= train_end else ("val" if i <= val_end else "test")
            for i in range(1, n + 1)]


def records(raw: Path, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[Record]:
    root = _root(raw)
    out: list[Record] = []
    for label, cls in enumerate(CLASS_NAMES):
        folder = require_dir(root / cls, f"COVID-19 Radiography class folder '{cls}'",
                             f"Expected {root}/{cls}/images/ with the class's PNG files. {HINT}")
        if (folder / "images").is_dir():  # v4+ layout; <= v3 kept the images in the class folder
            folder = folder / "images"
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: p.name)
        for path, split in zip(files, sorted_split(len(files), fractions), strict=True):
            out.append(Record(source=path, label=label, name=f"{cls}/{path.stem}", split=split))
    return out


def prepare(args: argparse.Namespace) -> PrepareReport:
    cfg = config_from_args(args)
    return prepare_dataset(records(args.raw, cfg.fractions), cfg, CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE)
