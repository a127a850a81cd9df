"""PASCAL VOC 2012 (ATCON's sanity set): 20-class multi-label classification with object boxes.

Official download `VOCtrainval_11-May-2012.tar` extracts to:

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/Annotations/<id>.xml      <object><name>, <difficult>, <bndbox> xmin ymin
                                                xmax ymax (1-based, inclusive pixel corners)
    VOCdevkit/VOC2012/ImageSets/Main/train.txt, val.txt   image ids, one per line

`--raw` is VOCdevkit/VOC2012 (or VOCdevkit). The test annotations are not public, so the
official val list becomes our test split; val is a seeded 10% of the official train list.
Labels: every class with at least one object (difficult ones included, as the classification
challenge's "difficult" are still present). ROI: the union of all object boxes (masks/), and
every box with its class in boxes.csv (x0, y0, x1, y1 exclusive, stored-image pixels) for the
weakly supervised localisation IoU of the predicted class.
"""

from __future__ import annotations

import argparse
import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from xai_bench.data.prepare.common import (
    Preparer,
    PrepareReport,
    Record,
    config_from_args,
    prepare_dataset,
    require_dir,
)
from xai_bench.utils.errors import DatasetNotFoundError

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
SOURCE = "PASCAL VOC 2012 trainval (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)"
DEFAULT_RESIZE = None  # ATCON resized at load time; boxes.csv stays in the original pixels
HINT = ("Download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ "
        "and pass the extracted VOCdevkit/VOC2012 folder as --raw.")


def _voc_root(raw: Path) -> Path:
    raw = require_dir(raw, "PASCAL VOC folder", HINT)
    for candidate in (raw, raw / "VOC2012", raw / "VOCdevkit" / "VOC2012"):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetNotFoundError(
        f"{raw.resolve()} has no Annotations/ and JPEGImages/ (VOC2012 layout). {HINT}")


def parse_annotation(path: Path) -> list[tuple[int, tuple[float, float, float, float]]]:
    """[(class index, (x0, y0, x1, y1))] with 0-based, end-exclusive pixel boxes."""
    root = ET.parse(path).getroot()
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASS_NAMES:
            raise DatasetNotFoundError(
                f"{path}: unknown class {name!r}; expected one of the 20 VOC classes.")
        box = obj.find("bndbox")
        if box is None:
            continue
        x0, y0, x1, y1 = (float(box.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((CLASS_NAMES.index(name), (x0 - 1, y0 - 1, x1, y1)))
    return objects


def records(raw: Path, val_fraction: float = 0.1,
            seed: int = 42) -> tuple[list[Record], dict[str, list]]:
    root = _voc_root(raw)
    lists = root / "ImageSets" / "Main"
    out: list[Record] = []
    boxes: dict[str, list] = {}
    rng = np.random.default_rng(seed)
    for official, path in (("train", lists / "train.txt"), ("val", lists / "val.txt")):
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} is missing (the official image lists). {HINT}")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        held_out = (set(rng.permutation(ids)[: int(round(val_fraction * len(ids)))])
                    if official == "train" else set())
        for image_id in ids:
            objects = parse_annotation(root / "Annotations" / f"{image_id}.xml")
            split = "test" if official == "val" else ("val" if image_id in held_out else "train")
            out.append(Record(source=root / "JPEGImages" / f"{image_id}.jpg",
                              label=sorted({c for c, _ in objects}), name=image_id, split=split,
                              boxes=[b for _, b in objects]))
            boxes[image_id] = objects
    return out, boxes


def write_boxes(out: Path, boxes: dict[str, list]) -> Path:
    path = Path(out) / "boxes.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "class", "x0", "y0", "x1", "y1"])
        for image_id in sorted(boxes):
            for cls, (x0, y0, x1, y1) in boxes[image_id]:
                writer.writerow([f"images/{image_id}.png", CLASS_NAMES[cls], x0, y0, x1, y1])
    return path


def prepare(args: argparse.Namespace) -> PrepareReport:
    cfg = config_from_args(args)
    recs, boxes = records(
        args.raw, val_fraction=cfg.fractions[1] / max(cfg.fractions[0] + cfg.fractions[1], 1e-9),
        seed=cfg.seed)
    report = prepare_dataset(recs, cfg, CLASS_NAMES, SOURCE)
    if cfg.resize is None:
        write_boxes(cfg.out, boxes)
    return report


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE)
