"""BreaKHis v1 (Spanhol et al. 2016): benign (0) vs malignant (1), all magnifications,
slide-level split.

Official download BreaKHis_v1.tar.gz
(https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/)
extracts to:

    BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<tumour type>/<slide
        folder>/<40X|100X|200X|400X>/<file>.png
    e.g. .../benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/SOB_B_A-14-22549AB-40-001.png

File names are <procedure>_<B|M>_<type>-<year>-<slide>-<magnification>-<seq>.png (the slide folder
writes "_" before the year, the files "-"). Tumour types: adenosis, fibroadenoma,
phyllodes_tumor, tubular_adenoma (benign); ductal_carcinoma, lobular_carcinoma,
mucinous_carcinoma, papillary_carcinoma (malignant). Layout source: the publisher's page and the
file names quoted by public loaders (e.g. kaiko-ai/eva's dataset notes).

Group (never split across train/val/test): the slide id from the file name, <year>-<slide>
(e.g. 14-22549AB), as the companion study split at slide level over all magnifications. One id
can appear under two tumour types (e.g. 14-13412 under ductal and lobular carcinoma): it stays
one group. `--group-by number` groups by the numeric id alone (14-22549AB, 14-22549CD and
14-22549G become one group), for whoever reads those lettered ids as one patient (not stated
by the publisher). --raw may be the BreaKHis_v1 folder or any folder above `breast/`.
Images are stored resized to 224x224 (the companion study's direct resize); no ROI.
"""

from __future__ import annotations

import argparse
import re
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

CLASS_NAMES = ("benign", "malignant")
SOURCE = "BreaKHis v1 (https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/)"
DEFAULT_RESIZE = "224x224"
MAGNIFICATIONS = ("40X", "100X", "200X", "400X")
# SOB_B_A-14-22549AB-40-001: procedure, class letter, type, year, slide, magnification, sequence
FILE_NAME = re.compile(r"^(?P<proc>[A-Z]+)_(?P<cls>[BM])_(?P<type>[A-Z]+)-(?P<year>\d+)"
                       r"-(?P<slide>[0-9A-Za-z]+)-(?P<mag>\d+)-(?P<seq>\d+)$")
FOLDER_NAME = re.compile(r"^[A-Z]+_[BM]_[A-Z]+_(?P<year>\d+)-(?P<slide>[0-9A-Za-z]+)$")
DOWNLOAD = ("Download BreaKHis_v1.tar.gz from "
            "https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/"
            ", extract it and pass the BreaKHis_v1/ folder as --raw.")


def breast_folder(raw: Path) -> Path:
    """<raw>/histology_slides/breast, <raw>/breast or <raw> itself (whichever holds benign/ and
    malignant/)."""
    for candidate in (raw / "histology_slides" / "breast",
                      raw / "BreaKHis_v1" / "histology_slides" / "breast", raw / "breast", raw):
        if (candidate / "benign").is_dir() or (candidate / "malignant").is_dir():
            return candidate
    raise DatasetNotFoundError(f"BreaKHis layout not found under {raw.resolve()}: "
                               "expected histology_slides/breast/benign/ "
                               f"and .../malignant/. {DOWNLOAD}")


def slide_id(path: Path, group_by: str = "slide") -> str:
    """The slide id (year-slide, e.g. 14-22549AB) from the file name, else from the slide folder."""
    match = FILE_NAME.match(path.stem) or FOLDER_NAME.match(path.parent.parent.name)
    if match is None:
        raise DatasetNotFoundError(f"cannot read the slide id of {path}: neither the file name "
                                   "nor its slide folder follow BreaKHis' "
                                   "SOB_<B|M>_<type>-<year>-<slide>-<mag>-<seq>.png naming.")
    slide = match["slide"]
    if group_by == "number":
        slide = re.sub(r"[A-Za-z]+$", "", slide)
    return f"{match['year']}-{slide}"


def records(raw: Path, group_by: str = "slide") -> list[Record]:
    raw = require_dir(raw, "BreaKHis folder", DOWNLOAD)
    breast = breast_folder(raw)
    out: list[Record] = []
    for label, cls in enumerate(CLASS_NAMES):
        folder = require_dir(breast / cls, f"BreaKHis class folder '{cls}'",
                             f"Expected {breast}/{cls}/SOB/<tumour type>/... {DOWNLOAD}")
        for path in sorted(folder.rglob("*.png")):
            if path.parent.name.upper() not in MAGNIFICATIONS:
                continue
            match = FILE_NAME.match(path.stem)
            if match is not None and match["cls"] != cls[0].upper():
                raise DatasetNotFoundError(
                    f"{path} is under {cls}/ but its name says class {match['cls']}.")
            out.append(Record(source=path, label=label, name=f"{cls}/{path.stem}",
                              group=slide_id(path, group_by)))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only breakhis has (the common ones: add_common_args)."""
    parser.add_argument("--group-by", choices=("slide", "number"), default="slide",
                        help="split unit: the slide id (14-22549AB, default) "
                             "or its number alone (14-22549)")


def prepare(args: argparse.Namespace) -> PrepareReport:
    return prepare_dataset(records(args.raw, args.group_by), config_from_args(args), CLASS_NAMES,
                           SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, add_arguments=add_arguments)
