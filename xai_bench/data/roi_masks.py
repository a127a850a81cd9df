"""ROI mask files: read in their image's frame, and all checked against it before a run starts.

A mask of another size is scaled (same aspect ratio, `dataset.mask_size=resize`) or refused
(`reject`); `check_mask_sizes` applies the same rule to every mask from file headers only, so
a wrong size fails before training instead of in the test loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from xai_bench.data.label_table import LabelTable, listing
from xai_bench.data.samples import Transform, apply_transform
from xai_bench.utils.errors import ConfigError, XaiBenchError

__all__ = ["MASK_SIZE_POLICIES", "check_mask_sizes", "read_mask"]

MASK_SIZE_POLICIES = ("resize", "reject")


def read_mask(path: Path, height: int, width: int, policy: str = "resize") -> np.ndarray:
    """uint8 {0, 1} (height, width). A mask of another size: `resize` scales it with nearest
    neighbours when it has the image's aspect ratio (rejects it otherwise); `reject` refuses it."""
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGB")
            arr = np.asarray(image)
    except Exception as err:
        raise XaiBenchError(f"cannot read mask {path}: {type(err).__name__}: {err}.") from err
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):  # LA / RGBA: the alpha channel is not the ROI
            arr = arr[..., :-1]
        arr = arr.any(axis=2)
    mask = (arr > 0).astype(np.uint8)
    h, w = mask.shape
    if (h, w) != (height, width):
        if not _mask_fits((w, h), (width, height), policy):
            raise XaiBenchError(
                f"mask {path} is {w}x{h} but its image is {width}x{height}: "
                f"{_MASK_SIZE_FIX[policy]}"
            )
        mask = np.array(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return mask


_MASK_SIZE_FIX = {
    "reject": "dataset.mask_size=reject refuses masks of another size; "
              "re-export them at their image's size, "
              "or set dataset.mask_size=resize to scale masks with nearest neighbours.",
    "resize": "masks must be in the image's frame (the same size, or the same aspect ratio, which "
              "dataset.mask_size=resize scales); re-export them in that frame.",
}


def _mask_fits(mask_size: tuple[int, int], size: tuple[int, int], policy: str) -> bool:
    """Whether a (w, h) mask can be used for a (w, h) frame under `policy` (see read_mask)."""
    (w, h), (width, height) = mask_size, size
    if (w, h) == (width, height):
        return True
    return policy == "resize" and abs(h / w - height / width) <= 0.01


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header: PIL reads no pixels until asked."""
    with Image.open(path) as image:
        return image.size


def check_mask_sizes(table: LabelTable, policy: str, eval_transform: Transform | None) -> None:
    """Every ROI mask a run will read, checked against its frame from file headers only, so a
    wrong size fails before training instead of in the test loop: masks/ against the stored
    image, rois/ (val/test images) against the network input that `eval_transform` makes of it.
    Same rule as when the masks are read (`policy`: resize | reject); one error lists them all."""
    if policy not in MASK_SIZE_POLICIES:
        raise ConfigError(
            f"dataset.mask_size must be one of {list(MASK_SIZE_POLICIES)}; got {policy!r}.")
    use_rois = any(table.rois)  # as ImageTableDataset: val/test images use rois/ when there are any
    input_frames: dict[tuple[int, int], tuple[int, int]] = {}

    def input_frame(size: tuple[int, int]) -> tuple[int, int]:
        if size not in input_frames:
            width, height = size
            image, _, _ = apply_transform(eval_transform, np.zeros((height, width, 3), np.uint8),
                                           np.zeros((height, width), np.uint8))
            input_frames[size] = (int(image.shape[-1]), int(image.shape[-2]))
        return input_frames[size]

    wrong: list[str] = []
    unreadable: list[str] = []
    roi_frames = False
    for row, image_path in enumerate(table.images):
        roi = table.rois[row] if use_rois and table.splits[row] != "train" else None
        mask = table.masks[row] if roi is None else None
        if mask is None and roi is None:
            continue
        try:
            image_size = _header_size(image_path)
        except Exception as err:  # PIL raises OSError, SyntaxError, ... for bad files
            unreadable.append(
                f"{image_path.relative_to(table.root).as_posix()} ({type(err).__name__})")
            continue
        path, frame, what = ((mask, image_size, "image") if roi is None
                             else (roi, input_frame(image_size), "input frame"))
        try:
            size = _header_size(path)
        except Exception as err:
            unreadable.append(f"{path.relative_to(table.root).as_posix()} ({type(err).__name__})")
            continue
        if not _mask_fits(size, frame, policy):
            roi_frames = roi_frames or roi is not None
            wrong.append(f"{path.relative_to(table.root).as_posix()} {size[0]}x{size[1]} "
                         f"({what} {frame[0]}x{frame[1]})")
    problems = []
    if wrong:
        frames = (" (rois/ masks are in the network-input frame, after the eval transform)"
                  if roi_frames else "")
        problems.append(f"{len(wrong)} ROI masks do not fit their image: {listing(wrong)}; "
                        f"{_MASK_SIZE_FIX[policy].rstrip('.')}{frames}")
    if unreadable:
        problems.append(f"{len(unreadable)} files cannot be read: {listing(unreadable)}; "
                        "re-export them or drop their rows / masks")
    if problems:
        raise XaiBenchError(f"{table.root}: " + "; ".join(problems) + ".")
