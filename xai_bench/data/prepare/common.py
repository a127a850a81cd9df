"""Shared machinery of `python -m xai_bench.prepare`: official download -> the canonical layout.

Every dataset module (`xai_bench.data.prepare.<name>`) only knows its publisher's layout: it turns
the raw folder into `Record`s (image file, label, group, publisher split, ROI boxes or mask) and
hands them to `prepare_dataset`, which does the rest the same way for every dataset:

    <out>/images/<name>.png     RGB, resized as the study did (`resize`)
    <out>/masks/<name>.png      ROI in the stored image's frame (from boxes or mask files)
    <out>/rois/<stem>.png       ROI already in the network-input frame (the study's evaluation
                                masks, attached with --rois; used as-is for val/test images)
    <out>/labels.csv            image, label, split, group   (multi-label: label = "3;7")
    <out>/prepare.json          source, options, class names, counts, skipped files, report

Splits: the publisher's split when it has one, otherwise seeded, stratified by label and
grouped (patient, lesion, slide): no group is ever in two splits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xai_bench.data.containment import paths_outside
from xai_bench.data.images import read_rgb, to_uint8_rgb
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError, XaiBenchError

__all__ = [
    "PrepareConfig",
    "PrepareReport",
    "Preparer",
    "Record",
    "add_common_args",
    "assign_splits",
    "attach_rois",
    "config_from_args",
    "config_with_publisher_test",
    "prepare_dataset",
    "read_rgb",
    "require_dir",
    "roi_files",
    "rois_folder",
    "split_sizes",
    "to_uint8_rgb",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels, x1/y1 exclusive
Reader = Callable[[Path], np.ndarray]


@dataclass
class Record:
    """One image of the raw download, as its prepare script understood it."""

    source: Path  # the raw image file
    label: int | list[int]  # class index; a list of indices for multi-label datasets
    name: str  # output path under images/ without suffix, e.g. "esophagitis/0a1b"
    group: str | None = None  # patient / lesion / slide: never split across train/val/test
    split: str | None = None  # the publisher's split (train|val|test), else assigned
    boxes: list[Box] = field(default_factory=list)  # ROI boxes in source pixels
    mask: Path | None = None  # an ROI mask file in the source image's frame
    reader: Reader | None = None  # how to read `source` (default: PIL -> RGB uint8)


@dataclass
class PrepareConfig:
    out: Path
    # None (keep) | "WxH" (e.g. "256x256") | "shortN" (shortest side N, aspect kept)
    resize: str | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    on_corrupt: str = "error"  # error | skip
    overwrite: bool = False
    rois: Path | None = None  # folder of input-frame ROI masks (one PNG per image stem) to attach


@dataclass
class PrepareReport:
    out: Path
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    skipped: list[str]  # corrupt / unreadable source files (on_corrupt=skip)
    masks: int  # images with a masks/ file
    rois: dict[str, Any]  # attach_rois' report

    def summary(self) -> str:
        lines = [f"prepared {self.out}"]
        for split, per_class in self.counts.items():
            lines.append(f"  {split:>5}: {sum(per_class.values())} images "
                         f"({', '.join(f'{k} {v}' for k, v in per_class.items())})")
        lines.append(f"  ROI masks: {self.masks}; skipped unreadable files: {len(self.skipped)}")
        if self.rois:
            lines.append(f"  evaluation ROIs: {self.rois.get('attached', 0)} attached, "
                         f"{len(self.rois.get('without_image', []))} without an image, "
                         f"{self.rois.get('test_images_without_roi', 0)} test images without one")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- reading inputs
def require_dir(path: Path, what: str, hint: str) -> Path:
    """The raw folder, or one error saying what is missing and where it comes from."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} not found: {path.resolve()} is not a folder. {hint}")
    return path


# ----------------------------------------------------------------------------- splits
def assign_splits(records: list[Record], fractions: Sequence[float], seed: int) -> list[Record]:
    """Give every record without a publisher split one of train/val/test.

    Groups (or single images when a record has no group) are the unit: each group goes to one
    split, chosen so that every label's groups are divided by `fractions` (stratified by the
    group's majority label), with a seeded shuffle. Records that have a split keep it.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ConfigError("split fractions must be three non-negative numbers summing to 1; "
                          f"got {list(fractions)}.")
    todo = [r for r in records if r.split is None]
    groups: dict[str, list[Record]] = defaultdict(list)
    for index, record in enumerate(todo):
        groups[record.group if record.group is not None else f"__image{index}"].append(record)
    by_label: dict[Any, list[str]] = defaultdict(list)
    for key, members in groups.items():
        labels = [tuple(m.label) if isinstance(m.label, list) else m.label for m in members]
        by_label[Counter(labels).most_common(1)[0][0]].append(key)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label, key=str):
        keys = sorted(by_label[label])
        rng.shuffle(keys)
        n_train, n_val, _ = split_sizes(len(keys), fractions)
        for position, key in enumerate(keys):
            split = ("train" if position < n_train
                     else ("val" if position < n_train + n_val else "test"))
            for member in groups[key]:
                member.split = split
    check_group_leakage(records)
    return records


def split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of n * fractions; every split with a positive fraction gets
    at least one item when n allows (tiny classes still reach val and test)."""
    sizes = [int(np.floor(f * n)) for f in fractions]
    order = sorted(range(3), key=lambda i: fractions[i] * n - sizes[i], reverse=True)
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    wanted = [i for i in range(3) if fractions[i] > 0]
    if n >= len(wanted):
        for i in wanted:
            if sizes[i] == 0:
                donor = max(range(3), key=lambda k: sizes[k])
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes


def check_group_leakage(records: Sequence[Record]) -> None:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.group is not None and record.split is not None:
            splits_of[record.group].add(record.split)
    leaking = sorted(g for g, s in splits_of.items() if len(s) > 1)
    if leaking:
        raise XaiBenchError(
            f"groups {leaking[:5]} appear in more than one split ({len(leaking)} in all).")


# ----------------------------------------------------------------------------- writing
def _parse_resize(resize: str | None) -> Callable[[int, int], tuple[int, int]] | None:
    if not resize:
        return None
    text = str(resize).lower()
    if text.startswith("short"):
        side = int(text[5:])

        def short(w: int, h: int) -> tuple[int, int]:
            scale = side / min(w, h)
            return max(1, round(w * scale)), max(1, round(h * scale))

        return short
    if "x" in text:
        width, height = (int(v) for v in text.split("x"))
        return lambda w, h: (width, height)
    raise ConfigError("resize must be null, 'WxH' (e.g. 256x256) or 'shortN' (e.g. short256); "
                      f"got {resize!r}.")


def _box_mask(boxes: Sequence[Box], width: int, height: int, sx: float, sy: float) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        c0, r0 = int(np.floor(x0 * sx)), int(np.floor(y0 * sy))
        c1, r1 = int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy))
        mask[max(r0, 0) : min(r1, height), max(c0, 0) : min(c1, width)] = 1
    return mask


def _label_text(label: int | list[int]) -> str:
    return (";".join(str(int(v)) for v in sorted(set(label))) if isinstance(label, list)
            else str(int(label)))


def prepare_dataset(
    records: list[Record],
    cfg: PrepareConfig,
    class_names: Sequence[str],
    source: str,
) -> PrepareReport:
    """Write the canonical layout from `records` (see the module docstring)."""
    out = Path(cfg.out)
    if cfg.on_corrupt not in ("error", "skip"):
        raise ConfigError(f"on_corrupt must be error or skip; got {cfg.on_corrupt!r}.")
    if not records:
        raise DatasetNotFoundError(
            f"no images found for {source}: check the raw folder's layout (docs/datasets/).")
    if (out / "labels.csv").exists() and not cfg.overwrite:
        raise XaiBenchError(
            f"{out} already holds a prepared dataset; pass --overwrite to replace it.")
    names = Counter(r.name for r in records)
    clashes = [n for n, c in names.items() if c > 1]
    if clashes:
        raise XaiBenchError(f"output names {clashes[:5]} are used by several source images; "
                            "the prepare script must make them unique.")
    resize = _parse_resize(cfg.resize)
    if cfg.rois:
        roi_files(cfg.rois)  # a missing or escaping ROI folder fails before anything is written
    assign_splits(records, cfg.fractions, cfg.seed)
    for sub in ("images", "masks", "rois"):
        if cfg.overwrite and (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "images").mkdir(parents=True, exist_ok=True)

    rows, skipped, n_masks = [], [], 0
    for record in sorted(records, key=lambda r: r.name):
        try:
            image = (record.reader or read_rgb)(record.source)
        except Exception as err:  # noqa: BLE001 - PIL / pydicom raise many types for bad files
            if cfg.on_corrupt == "skip":
                skipped.append(f"{record.source}: {type(err).__name__}: {err}")
                continue
            raise XaiBenchError(
                f"cannot read {record.source}: {type(err).__name__}: {err}. "
                "Re-download it, or pass --on-corrupt skip to leave unreadable files out "
                "(they are listed in prepare.json)."
            ) from err
        height, width = image.shape[:2]
        new_w, new_h = resize(width, height) if resize else (width, height)
        pil = Image.fromarray(image)
        if (new_w, new_h) != (width, height):
            pil = pil.resize((new_w, new_h), Image.BICUBIC)
        target = out / "images" / f"{record.name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        pil.save(target)
        mask = None
        if record.boxes:
            mask = _box_mask(record.boxes, new_w, new_h, new_w / width, new_h / height)
        elif record.mask is not None:
            with Image.open(record.mask) as m:
                src = np.asarray(m.convert("L")) > 0
            if src.shape != (height, width):
                raise XaiBenchError(f"mask {record.mask} is {src.shape[1]}x{src.shape[0]} "
                                    f"but its image is {width}x{height}.")
            mask = np.array(
                Image.fromarray(src.astype(np.uint8)).resize((new_w, new_h), Image.NEAREST))
        if mask is not None:
            mask_path = out / "masks" / f"{record.name}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask * 255).save(mask_path)
            n_masks += 1
        rows.append({"image": f"images/{record.name}.png", "label": _label_text(record.label),
                     "split": record.split, "group": record.group or ""})
    if not rows:
        raise XaiBenchError(f"every image of {source} was unreadable ({len(skipped)} skipped).")

    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        handle.write("image,label,split,group\n")
        for row in rows:
            handle.write(",".join(_csv_cell(row[k]) for k in ("image", "label", "split", "group"))
                         + "\n")

    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        per_class: Counter[str] = Counter()
        for row in rows:
            if row["split"] == split:
                for index in row["label"].split(";"):
                    per_class[class_names[int(index)]] += 1
        counts[split] = {name: per_class.get(name, 0) for name in class_names}
    rois = attach_rois(out, cfg.rois) if cfg.rois else {}
    if rois:  # evaluation images the ROI set does not cover: reported, left out of localisation
        covered = {p.relative_to(out / "rois").with_suffix("").as_posix()
                   for p in (out / "rois").rglob("*.png")}
        rois["test_images_without_roi"] = sum(
            1 for row in rows
            if row["split"] == "test" and row["image"][len("images/"):-len(".png")] not in covered)
    report = PrepareReport(out=out, counts=counts, skipped=skipped, masks=n_masks, rois=rois)
    (out / "prepare.json").write_text(json.dumps({
        "source": source, "class_names": list(class_names), "resize": cfg.resize, "seed": cfg.seed,
        "fractions": list(cfg.fractions), "counts": counts, "masks": n_masks, "skipped": skipped,
        "rois": rois,
    }, indent=2) + "\n")
    return report


def _csv_cell(value: str) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def roi_files(rois_dir: Path) -> list[Path]:
    """The ROI masks of a --rois folder (its *.png), refused when the folder is missing or a file
    is a symlink leading out of it (that would copy another file into the prepared dataset)."""
    rois_dir = Path(rois_dir)
    if not rois_dir.is_dir():
        raise DatasetNotFoundError(
            f"ROI folder {rois_dir.resolve()} does not exist: "
            f"pass a folder of input-frame ROI masks (one PNG per image stem), --rois {STUDY_ROIS} "
            "for the reference study's (cp_child, duke, kvasir, mura) or --rois none."
        )
    masks = sorted(rois_dir.glob("*.png"))
    outside = paths_outside(rois_dir, masks)
    if outside:
        shown = (", ".join(repr(masks[i].name) for i in outside[:5])
                 + (", ..." if len(outside) > 5 else ""))
        raise ConfigError(
            f"{rois_dir}: {len(outside)} ROI files are symlinks leading outside the folder "
            f"{os.path.realpath(rois_dir)}: {shown}. "
            "Copy the masks into the folder instead of linking them."
        )
    return masks


def attach_rois(out: Path, rois_dir: Path) -> dict[str, Any]:
    """Copy input-frame ROI masks (one PNG per image stem, e.g. the study's,
    xai_bench.data.study_rois) to <out>/rois/, matching them to the prepared images by file stem.
    Masks without an image and evaluation images without a mask are reported, not fatal."""
    rois_dir = Path(rois_dir)
    masks = roi_files(rois_dir)
    stems: dict[str, str] = {}
    for path in (Path(out) / "images").rglob("*.png"):
        stems.setdefault(path.stem,
                         path.relative_to(Path(out) / "images").with_suffix("").as_posix())
    target = Path(out) / "rois"
    target.mkdir(parents=True, exist_ok=True)
    attached, without_image = 0, []
    for mask in masks:
        if mask.stem not in stems:
            without_image.append(mask.name)
            continue
        destination = target / f"{stems[mask.stem]}.png"
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mask, destination)
        attached += 1
    if without_image:
        log.warning("%d ROI masks have no prepared image (e.g. %s)", len(without_image),
                    without_image[:3])
    return {"source": str(rois_dir), "attached": attached, "without_image": without_image}


# ----------------------------------------------------------------------------- command line
@dataclass(frozen=True)
class Preparer:
    """One dataset's part of `python -m xai_bench.prepare`: its sub-command's options and the
    function that prepares it, so that the entry point holds no per-dataset code.

    `doc`'s first line is the sub-command's description; `study_rois`: the reference study
    published ROI masks for the dataset, attached by default (`--rois study`)."""

    prepare: Callable[[argparse.Namespace], PrepareReport]
    doc: str | None
    default_resize: str | None
    study_rois: bool = False
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


STUDY_ROIS = "study"


def rois_folder(value: str | Path | None, study_dataset: str | None = None) -> Path | None:
    """--rois: `study` -> the reference study's masks shipped with xai_bench (for `study_dataset`),
    `none` -> no ROIs, anything else -> a folder of the user's (./study for a folder so named)."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    if str(value) == STUDY_ROIS:
        from xai_bench.data import study_rois

        if study_dataset is None:
            raise ConfigError(
                f"--rois {STUDY_ROIS}: the reference study published ROI masks for "
                f"{', '.join(study_rois.DATASETS)} only; "
                "pass a folder of your own masks or leave --rois out."
            )
        return study_rois.path(study_dataset)
    return Path(value).expanduser()


def add_common_args(parser: argparse.ArgumentParser, default_resize: str | None,
                    study_rois: str | None = None) -> None:
    parser.add_argument("--raw", type=Path, required=True, help="the extracted official download")
    parser.add_argument("--out", type=Path, required=True,
                        help="the prepared folder, e.g. data/<name>")
    parser.add_argument("--resize", default=default_resize,
                        help="WxH | shortN | none (default: the study's)")
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                        metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--on-corrupt", choices=("error", "skip"), default="error")
    if study_rois:
        rois_help = (f"input-frame ROI masks to attach: '{STUDY_ROIS}' "
                     f"(default: the reference study's 50 {study_rois} masks, shipped with "
                     "xai_bench), a folder of your own, or 'none'")
    else:
        rois_help = ("a folder of input-frame ROI masks to attach (one PNG per image stem); "
                     "default none")
    parser.add_argument("--rois", default=STUDY_ROIS if study_rois else None, help=rois_help)
    parser.set_defaults(study_rois_dataset=study_rois)
    parser.add_argument("--overwrite", action="store_true")


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    resize = None if str(args.resize).lower() in ("none", "null", "") else args.resize
    return PrepareConfig(out=args.out, resize=resize, fractions=tuple(args.fractions),
                         seed=args.seed, on_corrupt=args.on_corrupt, overwrite=args.overwrite,
                         rois=rois_folder(args.rois, getattr(args, "study_rois_dataset", None)))


def config_with_publisher_test(args: argparse.Namespace, test_source: str) -> PrepareConfig:
    """For datasets whose publisher fixes the test set: validation is `--val-fraction` of the
    training images, and `--fractions` (which would also carve a test split) is refused."""
    if tuple(args.fractions) != (0.8, 0.1, 0.1):
        raise ConfigError(f"the test split is {test_source}: --fractions does not apply; "
                          "use --val-fraction to size the validation split taken from the "
                          "training images.")
    if not 0.0 < args.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1); got {args.val_fraction}.")
    cfg = config_from_args(args)
    cfg.fractions = (1.0 - args.val_fraction, args.val_fraction, 0.0)
    return cfg
