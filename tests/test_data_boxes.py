"""Per-class boxes of multi-label datasets (boxes.csv -> "class_masks", docs/atcon.md):
rasterised in the stored frame, transformed with the image, collated, and malformed files named
by line."""

from __future__ import annotations

import csv
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image

from xai_bench.data import ImageTableDataModule, ImageTableDataset, read_label_table
from xai_bench.utils.errors import XaiBenchError

WIDTH, HEIGHT = 40, 20  # stored images: not square, so x and y scaling are told apart
CLASS_NAMES = ("cat", "dog", "person")
# image -> (labels, split); the boxes of the test images are what the tests check
ROWS = {
    "images/t0.png": ("0;2", "test"),
    "images/t1.png": ("1", "test"),  # no boxes at all
    "images/t2.png": ("0;1", "test"),
    "images/tr0.png": ("2", "train"),
    "images/v0.png": ("1", "val"),
}
BOXES = [
    ("images/t0.png", "0", 4, 2, 12, 10),
    ("images/t0.png", "2", 20, 0, 40, 20),
    ("images/t0.png", "person", 0, 16, 8, 20),  # a class name works too; union with the box above
    ("images/t2.png", "0", 0, 0, 40, 20),
    ("images/t2.png", "1", 10, 4, 30, 16),
    ("images/tr0.png", "2", 0, 0, 20, 20),
    ("images/v0.png", "1", 0, 0, 8, 8),
]
BOX_HEADER = ("image", "class", "x0", "y0", "x1", "y1")


def write_boxes(root: Path, rows: list[tuple], header: tuple[str, ...] = BOX_HEADER) -> Path:
    path = root / "boxes.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_multilabel_dataset(root: Path, boxes: bool = True) -> Path:
    """A 3-class multi-label dataset in the canonical layout (5 images, 40 x 20 px), boxes.csv."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "split"])
        for rel, (label, split) in ROWS.items():
            Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3),
                                         dtype=np.uint8)).save(root / rel)
            writer.writerow([rel, label, split])
    if boxes:
        write_boxes(root, BOXES)
    return root


@pytest.fixture
def multilabel(tmp_path: Path) -> Path:
    return write_multilabel_dataset(tmp_path / "voc_like")


def _dataset(root: Path, transform: A.Compose | None, split: str = "test",
             **kwargs) -> ImageTableDataset:
    return ImageTableDataset(root, split, transform, class_names=CLASS_NAMES, multilabel=True,
                             **kwargs)


def _expected(boxes: list[tuple[int, int, int, int]], height: int = HEIGHT,
              width: int = WIDTH) -> torch.Tensor:
    mask = torch.zeros((height, width), dtype=torch.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


def test_class_masks_in_the_stored_frame_without_a_resize(multilabel: Path) -> None:
    test = _dataset(multilabel, A.Compose([ToTensorV2()]))
    item = test[0]
    assert (item["class_masks"].shape == (3, HEIGHT, WIDTH)
            and item["class_masks"].dtype == torch.uint8)
    assert torch.equal(item["class_masks"][0], _expected([(4, 2, 12, 10)]))
    assert not item["class_masks"][1].any()  # labelled "0;2": no box of class 1
    assert torch.equal(item["class_masks"][2], _expected([(20, 0, 40, 20), (0, 16, 8, 20)]))
    assert item["label"].tolist() == [1.0, 0.0, 1.0]
    assert not test[1]["class_masks"].any()  # an image without boxes: all zero, same shape


@pytest.mark.parametrize("scale", [2, 0.5])
def test_resize_scales_the_boxes_with_the_image(multilabel: Path, scale: float) -> None:
    height, width = int(HEIGHT * scale), int(WIDTH * scale)
    test = _dataset(multilabel, A.Compose([A.Resize(height, width), A.Normalize(), ToTensorV2()]))
    item = test[0]
    assert (item["image"].shape == (3, height, width)
            and item["class_masks"].shape == (3, height, width))

    def scaled(*boxes: tuple[int, int, int, int]) -> torch.Tensor:
        return _expected([tuple(int(v * scale) for v in box) for box in boxes], height, width)

    assert torch.equal(item["class_masks"][0], scaled((4, 2, 12, 10)))
    assert torch.equal(item["class_masks"][2], scaled((20, 0, 40, 20), (0, 16, 8, 20)))
    assert torch.equal(test[2]["class_masks"][1], scaled((10, 4, 30, 16)))


def test_horizontal_flip_mirrors_boxes_image_and_mask_together(multilabel: Path) -> None:
    plain = _dataset(multilabel, A.Compose([ToTensorV2()]))[0]
    flipped = _dataset(multilabel, A.Compose([A.HorizontalFlip(p=1.0), ToTensorV2()]))[0]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["class_masks"], plain["class_masks"].flip(-1))
    assert torch.equal(flipped["class_masks"][0], _expected([(WIDTH - 12, 2, WIDTH - 4, 10)]))


def test_fractional_boxes_cover_every_touched_pixel_and_are_clipped(tmp_path: Path) -> None:
    root = write_multilabel_dataset(tmp_path / "ds", boxes=False)
    write_boxes(root, [("images/t0.png", "0", 3.5, 1.2, 7.5, 2.1),
                       ("images/t0.png", "2", 30, 10, 60, 50)])
    masks = _dataset(root, A.Compose([ToTensorV2()]))[0]["class_masks"]
    # floor(x0) .. ceil(x1), as prepare's ROI masks
    assert torch.equal(masks[0], _expected([(3, 1, 8, 3)]))
    assert torch.equal(masks[2], _expected([(30, 10, WIDTH, HEIGHT)]))


def test_datamodule_batches_carry_class_masks(multilabel: Path) -> None:
    dm = ImageTableDataModule(name="voc_like", root=multilabel, num_classes=3, img_size=16,
                              class_names=CLASS_NAMES, multilabel=True, batch_size=4,
                              num_workers=0, pin_memory=False)
    dm.check()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["class_masks"].shape == (3, 3, 16, 16) and batch["label"].shape == (3, 3)
    assert batch["class_masks"][0, 0].any() and not batch["class_masks"][1].any()
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["class_masks"].shape == (1, 3, 16, 16)


def test_class_names_fall_back_to_prepare_json(multilabel: Path) -> None:
    (multilabel / "prepare.json").write_text('{"class_names": ["cat", "dog", "person"]}')
    table = read_label_table(multilabel, num_classes=3, multilabel=True)
    item = ImageTableDataset(multilabel, "test", A.Compose([ToTensorV2()]), table=table)[0]
    assert item["class_masks"][2].sum() == 20 * 20 + 8 * 4


def test_no_class_masks_without_boxes_csv_or_when_single_label(tmp_path: Path) -> None:
    root = write_multilabel_dataset(tmp_path / "ml", boxes=False)
    assert "class_masks" not in _dataset(root, None)[0]
    single = tmp_path / "single"
    (single / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(single / "images" / "a.png")
    (single / "labels.csv").write_text("image,label,split\nimages/a.png,1,test\n")
    write_boxes(single, [("images/a.png", "0", 0, 0, 4, 4)])
    assert "class_masks" not in ImageTableDataset(single, "test", None)[0]


@pytest.mark.parametrize(
    ("rows", "header", "match"),
    [
        ([], ("image", "class", "x0", "y0", "x1"), r"lacks column\(s\) \['y1'\]"),
        ([("images/t0.png", "0", 0, 0, 4, 4), ("images/nope.png", "0", 0, 0, 4, 4)], BOX_HEADER,
         r"line 3: image 'images/nope.png' is not in labels.csv"),
        ([("images/t0.png", "3", 0, 0, 4, 4)], BOX_HEADER,
         r"line 2: class '3' is not a class index in 0..2"),
        ([("images/t0.png", "-1", 0, 0, 4, 4)], BOX_HEADER, r"line 2: class '-1'"),
        ([("images/t0.png", "horse", 0, 0, 4, 4)], BOX_HEADER,
         r"class 'horse' .* class names 'cat', 'dog'"),
        ([("images/t0.png", "0", 5, 0, 5, 4)], BOX_HEADER,
         r"line 2: box x0=5, y0=0, x1=5, y1=4 is empty"),
        ([("images/t0.png", "0", 0, 6, 4, 2)], BOX_HEADER, r"line 2: box .* is empty"),
        ([("images/t0.png", "0", "a", 0, 4, 4)], BOX_HEADER,
         r"line 2: coordinates \['a', '0', '4', '4'\]"),
    ],
)
def test_malformed_boxes_csv_names_the_file_and_line(multilabel: Path, rows: list, header: tuple,
                                                     match: str) -> None:
    path = write_boxes(multilabel, rows, header)
    with pytest.raises(XaiBenchError, match=match) as info:
        _dataset(multilabel, None)
    assert str(path) in str(info.value)
