"""NCT-CRC-HE-100K + CRC-VAL-HE-7K (Kather et al. 2018/2019): 9 colorectal tissue classes,
H&E patches.

Official download: Zenodo record 1214456 (https://zenodo.org/record/1214456), three zips that each
extract to one folder with one sub-folder per class of 224x224 .tif patches (0.5 um/px):

    NCT-CRC-HE-100K/ADI/ADI-AAAFLCLY.tif ...        100,000 patches, 86 slides (Macenko-normalised)
    NCT-CRC-HE-100K-NONORM/<class>/*.tif            the same without colour normalisation (optional)
    CRC-VAL-HE-7K/ADI/ADI-TCGA-AAICEQFN.tif ...     7,180 patches, 50 other patients
    classes: ADI BACK DEB LYM MUC MUS NORM STR TUM

Layout source: the Zenodo record and kaiko-ai eva's CRC page (same tree), and the companion
study's loader (github.com/vggls/medical_xai, experiments/crc_resnet34/crc.py: ImageFolder order =
the class list above, CRC-VAL-HE-7K as the test set). `--raw` is the folder that holds both
extracted folders (names overridable with --train-folder / --test-folder, e.g. the NONORM one).

Split: CRC-VAL-HE-7K is the test split. Validation comes from NCT-CRC-HE-100K: `--val-rule seeded`
(default) takes a seeded, class-stratified `--val-fraction` (10%); `--val-rule sorted` reproduces
the companion exactly (per class, files sorted by name, the last share is validation; it used
--val-fraction 0.2). No slide or patient ids are published for NCT-CRC-HE-100K, so validation
patches may come from training slides (the test set is patient-disjoint). Patches are stored as
published (224x224).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xai_bench.data.prepare.common import (
    Preparer,
    PrepareReport,
    Record,
    config_with_publisher_test,
    prepare_dataset,
    require_dir,
)
from xai_bench.utils.errors import ConfigError

CLASS_NAMES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
SOURCE = "NCT-CRC-HE-100K (train/val) + CRC-VAL-HE-7K (test), https://zenodo.org/record/1214456"
DEFAULT_RESIZE = None  # 224x224 as published
TRAIN_FOLDER = "NCT-CRC-HE-100K"
TEST_FOLDER = "CRC-VAL-HE-7K"
IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg"}
HINT = ("Download NCT-CRC-HE-100K.zip and CRC-VAL-HE-7K.zip from "
        "https://zenodo.org/record/1214456, extract both into one folder "
        "and pass that folder as --raw.")
VAL_RULES = ("seeded", "sorted")


def _class_files(folder: Path, cls: str) -> list[Path]:
    images = require_dir(folder / cls, f"CRC class folder '{folder.name}/{cls}'",
                         f"Expected {folder}/{cls}/ with the class's .tif patches. {HINT}")
    return sorted((p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.name)


def records(raw: Path, train_folder: str = TRAIN_FOLDER, test_folder: str = TEST_FOLDER,
            val_rule: str = "seeded", val_fraction: float = 0.1) -> list[Record]:
    """Test records get split "test"; training records get "train"/"val" (sorted rule) or None
    (seeded rule: prepare_dataset draws the validation share)."""
    if val_rule not in VAL_RULES:
        raise ConfigError(f"val_rule must be one of {list(VAL_RULES)}; got {val_rule!r}.")
    raw = require_dir(raw, "CRC folder", HINT)
    train_dir = require_dir(raw / train_folder, f"CRC training folder '{train_folder}'", HINT)
    test_dir = require_dir(raw / test_folder, f"CRC test folder '{test_folder}'", HINT)
    out: list[Record] = []
    for label, cls in enumerate(CLASS_NAMES):
        files = _class_files(train_dir, cls)
        n_train = int(len(files) * (1.0 - val_fraction))
        for position, path in enumerate(files):
            split = None if val_rule == "seeded" else ("train" if position < n_train else "val")
            out.append(Record(source=path, label=label, name=f"{train_folder}/{cls}/{path.stem}",
                              split=split))
        for path in _class_files(test_dir, cls):
            out.append(Record(source=path, label=label, name=f"{test_folder}/{cls}/{path.stem}",
                              split="test"))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only crc has (the common ones: add_common_args)."""
    parser.add_argument("--train-folder", default=TRAIN_FOLDER,
                        help="under --raw (e.g. NCT-CRC-HE-100K-NONORM)")
    parser.add_argument("--test-folder", default=TEST_FOLDER, help="under --raw")
    parser.add_argument("--val-rule", choices=VAL_RULES, default="seeded",
                        help="seeded: stratified random share (default); "
                             "sorted: the companion's last share per class")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of NCT-CRC-HE-100K used for validation "
                             "(the companion's sorted rule used 0.2)")


def prepare(args: argparse.Namespace) -> PrepareReport:
    cfg = config_with_publisher_test(args, "CRC-VAL-HE-7K")
    recs = records(args.raw, args.train_folder, args.test_folder, args.val_rule, args.val_fraction)
    return prepare_dataset(recs, cfg, CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, add_arguments=add_arguments)
