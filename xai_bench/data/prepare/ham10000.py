"""HAM10000 (Tschandl et al. 2018): 7 dermatoscopic diagnoses, split grouped by lesion_id.

Official download: Harvard Dataverse doi:10.7910/DVN/DBW86T (also the ISIC archive; the Kaggle
mirror kmader/skin-cancer-mnist-ham10000 has the same names). Extracted:

    HAM10000_metadata.csv        lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]
                                 (Dataverse serves it as HAM10000_metadata.tab, tab-separated,
                                 or as the original CSV with ?format=original: both are read)
    HAM10000_images_part_1/<image_id>.jpg     (HAM10000_images_part_1.zip, 5000 JPEGs)
    HAM10000_images_part_2/<image_id>.jpg     (HAM10000_images_part_2.zip, 5015 JPEGs)
    HAM10000_segmentations_lesion_tschandl/<image_id>_segmentation.png   (optional ROI masks,
                                 HAM10000_segmentations_lesion_tschandl.zip, same size as the image)

Layout sources: the Dataverse dataset description (file names, the lesion_id column), the Kaggle
mirror's folder names, and public loaders of the segmentation zip. Uncertain: whether a Dataverse
zip extracts into a folder or flat, so images are looked up in the part folders first, then
anywhere under --raw (the Kaggle mirror's lower-case duplicate folders are harmless: first found
wins). The ISIC 2018 Task 3 test images on the same Dataverse page are not used: the companion
study split HAM10000 itself, grouped by lesion_id (no lesion in two splits).

Labels: dx in alphabetical order, akiec 0, bcc 1, bkl 2, df 3, mel 4, nv 5, vasc 6. Images are
stored resized to 224x224 (the companion study's direct resize); the segmentation masks become
masks/ (ROI) when their folder is present.
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

CLASS_NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
SOURCE = ("HAM10000 (https://doi.org/10.7910/DVN/DBW86T), "
          "HAM10000_metadata + HAM10000_images_part_1/2")
DEFAULT_RESIZE = "224x224"
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata")
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
MASK_FOLDER = "HAM10000_segmentations_lesion_tschandl"
DOWNLOAD = ("Download HAM10000_metadata, HAM10000_images_part_1.zip and HAM10000_images_part_2.zip "
            "(optionally HAM10000_segmentations_lesion_tschandl.zip) from "
            "https://doi.org/10.7910/DVN/DBW86T, extract them into one folder "
            "and pass it as --raw.")


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV or of Dataverse's tab-separated .tab export (delimiter from the header)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = handle.readline()
        handle.seek(0)
        reader = csv.DictReader(handle, delimiter="\t" if "\t" in header else ",")
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _metadata(raw: Path) -> Path:
    for name in METADATA_NAMES:
        if (raw / name).is_file():
            return raw / name
    raise DatasetNotFoundError(f"HAM10000 metadata not found: none of {list(METADATA_NAMES)} "
                               f"is in {raw.resolve()}. {DOWNLOAD}")


def _image_index(raw: Path) -> dict[str, Path]:
    """image_id -> JPEG: the official part folders first, then any other JPEG under raw."""
    index: dict[str, Path] = {}
    for folder in IMAGE_FOLDERS:
        if (raw / folder).is_dir():
            for path in sorted((raw / folder).glob("*.jpg")):
                index.setdefault(path.stem, path)
    for path in sorted(raw.rglob("*.jpg")):
        index.setdefault(path.stem, path)
    return index


def _mask_index(raw: Path) -> dict[str, Path]:
    folder = raw / MASK_FOLDER
    if not folder.is_dir():
        return {}
    suffix = "_segmentation"
    return {p.stem[: -len(suffix)]: p for p in sorted(folder.rglob(f"*{suffix}.png"))}


def records(raw: Path, use_masks: bool = True) -> list[Record]:
    raw = require_dir(raw, "HAM10000 folder", DOWNLOAD)
    table = _metadata(raw)
    rows = read_table(table)
    missing_columns = [c for c in ("lesion_id", "image_id", "dx") if rows and c not in rows[0]]
    if not rows or missing_columns:
        raise DatasetNotFoundError(f"{table} lacks rows or columns {missing_columns}; "
                                   f"expected lesion_id,image_id,dx,... {DOWNLOAD}")
    images = _image_index(raw)
    masks = _mask_index(raw) if use_masks else {}
    label_of = {name: index for index, name in enumerate(CLASS_NAMES)}
    unknown = sorted({row["dx"] for row in rows} - set(label_of))
    if unknown:
        raise DatasetNotFoundError(
            f"{table}: unknown dx values {unknown}; HAM10000 has {list(CLASS_NAMES)}.")
    missing = [row["image_id"] for row in rows if row["image_id"] not in images]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(rows)} HAM10000 images listed in {table.name} "
            f"are not under {raw.resolve()} (e.g. {missing[:3]}); "
            f"extract both HAM10000_images_part_1.zip and HAM10000_images_part_2.zip. {DOWNLOAD}"
        )
    return [
        Record(source=images[row["image_id"]], label=label_of[row["dx"]],
               name=f"{row['dx']}/{row['image_id']}", group=row["lesion_id"] or None,
               mask=masks.get(row["image_id"]))
        for row in rows
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only ham10000 has (the common ones: add_common_args)."""
    parser.add_argument("--no-masks", action="store_true",
                        help=f"ignore {MASK_FOLDER}/ even when present")


def prepare(args: argparse.Namespace) -> PrepareReport:
    return prepare_dataset(records(args.raw, use_masks=not args.no_masks), config_from_args(args),
                           CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, add_arguments=add_arguments)
