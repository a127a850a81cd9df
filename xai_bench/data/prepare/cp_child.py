"""CP-CHILD colonoscopy of children (Wang et al. 2020, BMC Med. Imaging): normal (0) vs polyp (1).

Official download `CP-CHILD.zip` (figshare,
https://figshare.com/articles/dataset/CP-CHILD_zip/12554042, the link the reference study's
reproducibility_tutorial.md gives) holds two subsets, each with the publisher's Train/Test split
and one folder per class, images 256x256 JPEG:

    CP-CHILD/CP-CHILD-A/Train/Polyp/*.jpg       CP-CHILD/CP-CHILD-A/Train/Non-Polyp/*.jpg
    CP-CHILD/CP-CHILD-A/Test/Polyp/*.jpg        CP-CHILD/CP-CHILD-A/Test/Non-Polyp/*.jpg
    CP-CHILD/CP-CHILD-B/...                     (same four folders)

Layout source: three independent public loaders agree on these names (torchvision ImageFolder over
CP-CHILD-A|B/Train|Test with Polyp and Non-Polyp folders, ColonINST's reorganisation script);
ColonINST counts 1,100 + 7,000 (polyp + non-polyp) train and 300 + 1,100 test images over both
subsets. Not verified here: the exact file names (the study's 50 ROI masks are named "1 (N).png",
so polyp images are presumably "1 (N).jpg" and the same stem may exist in both subsets; see
`--subsets`).

Split: the publisher's Test folders are the test split; validation is a seeded, stratified
`--val-fraction` of the Train folders (no patient ids are published, so per image). The study
used the 256x256 images as published (no preprocessing) and a Resize 224 test transform.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
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

log = logging.getLogger(__name__)

CLASS_NAMES = ("normal", "polyp")
# publisher folder -> class index
CLASS_FOLDERS = {"Non-Polyp": 0, "Polyp": 1}
# Train is divided into train/val by prepare_dataset
SPLIT_FOLDERS = {"Train": None, "Test": "test"}
SUBSETS = ("A", "B")
SOURCE = ("CP-CHILD (https://figshare.com/articles/dataset/CP-CHILD_zip/12554042), "
          "CP-CHILD-A/B Train/Test Polyp/Non-Polyp")
DEFAULT_RESIZE = None  # published at 256x256, used as-is by the study
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
HINT = ("Download CP-CHILD.zip from https://figshare.com/articles/dataset/CP-CHILD_zip/12554042, "
        "extract it and pass the CP-CHILD/ folder (the one holding CP-CHILD-A/ and CP-CHILD-B/) "
        "as --raw.")


def _root(raw: Path) -> Path:
    """The folder holding CP-CHILD-A/B: --raw itself or its CP-CHILD/ child (zip extracted in
    place)."""
    raw = require_dir(raw, "CP-CHILD folder", HINT)
    if not any((raw / f"CP-CHILD-{s}").is_dir() for s in SUBSETS) and (raw / "CP-CHILD").is_dir():
        return raw / "CP-CHILD"
    return raw


def records(raw: Path, subsets: tuple[str, ...] = SUBSETS) -> list[Record]:
    root = _root(raw)
    out: list[Record] = []
    for subset in subsets:
        if subset not in SUBSETS:
            raise ConfigError(f"CP-CHILD subsets are {list(SUBSETS)}; got {subset!r}.")
        folder = require_dir(root / f"CP-CHILD-{subset}",
                             f"CP-CHILD subset folder 'CP-CHILD-{subset}'", HINT)
        for split_folder, split in SPLIT_FOLDERS.items():
            for class_folder, label in CLASS_FOLDERS.items():
                images = require_dir(folder / split_folder / class_folder,
                                     f"CP-CHILD folder '{split_folder}/{class_folder}'",
                                     f"Expected {folder}/{split_folder}/{class_folder}/ "
                                     f"with the class's images. {HINT}")
                for path in sorted(images.iterdir()):
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        name = (f"cp-child-{subset.lower()}/{split_folder.lower()}/"
                                f"{CLASS_NAMES[label]}/{path.stem}")
                        out.append(Record(source=path, label=label, name=name, split=split))
    return out


def warn_ambiguous_rois(recs: list[Record], rois: Path | None) -> int:
    """ROI masks are matched by file stem: say how many match images of several subsets/splits."""
    if rois is None or not Path(rois).is_dir():
        return 0
    stems = Counter(r.source.stem for r in recs)
    ambiguous = sorted(m.stem for m in Path(rois).glob("*.png") if stems.get(m.stem, 0) > 1)
    if ambiguous:
        log.warning("%d ROI masks (e.g. %s) match images of more than one CP-CHILD subset/split; "
                    "each is attached to one of them. "
                    "Pass --subsets A (or B) to prepare the subset the masks belong to.",
                    len(ambiguous), ambiguous[:3])
    return len(ambiguous)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only cp_child has (the common ones: add_common_args)."""
    parser.add_argument("--subsets", nargs="+", choices=SUBSETS, default=list(SUBSETS),
                        help="which of CP-CHILD-A / CP-CHILD-B to include (default: both)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="stratified share of the publisher's Train images "
                             "that becomes the validation split")


def prepare(args: argparse.Namespace) -> PrepareReport:
    cfg = config_with_publisher_test(args, "the publisher's Test folders")
    recs = records(args.raw, tuple(args.subsets))
    warn_ambiguous_rois(recs, cfg.rois)
    return prepare_dataset(recs, cfg, CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, study_rois=True,  # --rois study by default
                    add_arguments=add_arguments)
