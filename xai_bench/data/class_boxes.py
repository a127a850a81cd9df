"""Per-class object boxes of a multi-label dataset (<root>/boxes.csv) and their masks.

They feed the weakly supervised localisation IoU (docs/atcon.md); the
file layout is in xai_bench.data.datasets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from xai_bench.data.label_table import listing, read_csv_rows
from xai_bench.utils.errors import XaiBenchError

__all__ = ["BOX_COLUMNS", "ClassBox", "box_class_names", "box_union_mask", "read_class_boxes"]

BOX_COLUMNS: tuple[str, ...] = ("image", "class", "x0", "y0", "x1", "y1")
# class, x0, y0, x1, y1 (exclusive), stored pixels
ClassBox = tuple[int, float, float, float, float]


def box_class_names(root: Path, class_names: Sequence[str] | None) -> tuple[str, ...]:
    """Names the class column may use: the config's, else prepare.json's (the prepare scripts
    write names, e.g. PASCAL VOC's "person", and a datamodule built without class_names only has
    placeholders class_0, class_1, ...)."""
    generic = class_names is not None and list(class_names) == [
        f"class_{i}" for i in range(len(class_names))
    ]
    if class_names is not None and not generic:  # the datamodule's placeholders name nothing
        return tuple(class_names)
    try:
        return tuple(json.loads((root / "prepare.json").read_text()).get("class_names") or ())
    except (OSError, ValueError, AttributeError):
        return ()


def _box_class(text: str, names: Sequence[str], num_classes: int) -> int:
    index = (int(text) if text.lstrip("-").isdigit()
             else (names.index(text) if text in names else None))
    if index is None or not 0 <= index < num_classes:
        known = f" or one of the class names {listing(list(names))}" if names else ""
        raise ValueError(f"class {text!r} is not a class index in 0..{num_classes - 1}{known}")
    return index


def _box_corners(row: Mapping[str, str]) -> tuple[float, float, float, float]:
    texts = [row[k] for k in BOX_COLUMNS[2:]]
    try:
        x0, y0, x1, y1 = (float(t) for t in texts)
    except ValueError:
        raise ValueError(f"coordinates {texts} are not all numbers") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x1 > x0 and y1 > y0):
        raise ValueError(f"box x0={texts[0]}, y0={texts[1]}, x1={texts[2]}, y1={texts[3]} "
                         "is empty or not finite "
                         "(x1 > x0 and y1 > y0 are needed: x1, y1 are exclusive)")
    return x0, y0, x1, y1


def read_class_boxes(
    path: str | Path, image_rel: Sequence[str], num_classes: int, class_names: Sequence[str] = ()
) -> dict[int, list[ClassBox]]:
    """boxes.csv as {row of labels.csv: [(class, x0, y0, x1, y1)]}. Validated when read, so a bad
    row fails the run at construction with its file and line, not inside a loader worker."""
    path = Path(path)
    rows_of = {PurePosixPath(rel).as_posix(): i for i, rel in enumerate(image_rel)}
    boxes: dict[int, list[ClassBox]] = {}
    layout = ("boxes.csv needs columns image (as in labels.csv), class (index or name), "
              "x0, y0, x1, y1 (x1, y1 exclusive, stored-image pixels).")
    for line, row in read_csv_rows(path, BOX_COLUMNS, XaiBenchError, layout):
        try:
            image = PurePosixPath(row["image"]).as_posix() if row["image"] else ""
            if image not in rows_of:
                raise ValueError(f"image {row['image']!r} is not in labels.csv")
            box = (_box_class(row["class"], class_names, num_classes), *_box_corners(row))
        except ValueError as err:
            raise XaiBenchError(f"{path} line {line}: {err}.") from None
        boxes.setdefault(rows_of[image], []).append(box)
    return boxes


def box_union_mask(boxes: Sequence[ClassBox], height: int, width: int) -> np.ndarray:
    """uint8 (H, W) union of the boxes: the prepare scripts' rule for box ROIs (pixels floor(x0)
    .. ceil(x1) - 1), clipped to the image, so a box and its ROI mask cover the same pixels."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for _, x0, y0, x1, y1 in boxes:
        c0, r0, c1, r1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
        mask[max(r0, 0): min(r1, height), max(c0, 0): min(c1, width)] = 1
    return mask
