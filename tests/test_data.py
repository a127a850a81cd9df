"""xai_bench.data: the synthetic generator, the datasets, the transforms and the datamodules."""

from __future__ import annotations

import csv
from pathlib import Path

import albumentations as A
import hydra
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from omegaconf import OmegaConf
from PIL import Image

from xai_bench.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTableDataModule,
    ImageTableDataset,
    SyntheticDataModule,
    SyntheticDataset,
    default_eval_transform,
    default_train_transform,
    generate_synthetic,
    imagenet_normalize,
    masks_to_boxes,
    read_label_table,
    split_seed,
)
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError, XaiBenchError

SHORTCUT = {"enabled": True, "strength": 0.9, "size": 4, "position": "corner"}
KEYS = {"image", "label", "mask", "has_mask", "box", "index"}


@pytest.fixture(scope="module")
def big() -> object:
    """2000 small samples with the shortcut planted, shared by the statistical tests."""
    return generate_synthetic(2000, 32, seed=7, shortcut=SHORTCUT)


# --------------------------------------------------------------------------- generator


def test_generate_shapes_and_dtypes() -> None:
    s = generate_synthetic(12, 48, seed=0)
    assert s.images.shape == (12, 48, 48, 3) and s.images.dtype == np.uint8
    assert s.labels.shape == (12,) and s.labels.dtype == np.int64
    assert s.masks.shape == (12, 48, 48) and s.masks.dtype == np.uint8
    assert s.boxes.shape == (12, 4) and s.boxes.dtype == np.int64
    assert s.shortcut_masks.shape == (12, 48, 48) and s.shortcut_masks.dtype == np.uint8
    assert set(np.unique(s.masks)) <= {0, 1}
    assert not s.shortcut_masks.any() and not s.markers.any()  # disabled by default
    assert len(s) == 12 and s.img_size == 48


def test_deterministic_per_seed() -> None:
    a, b = generate_synthetic(8, 32, seed=3), generate_synthetic(8, 32, seed=3)
    c = generate_synthetic(8, 32, seed=4)
    for field in ("images", "labels", "masks", "boxes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, c.images)


def test_sample_i_does_not_depend_on_n() -> None:
    small = generate_synthetic(10, 64, seed=11, shortcut=SHORTCUT)
    large = generate_synthetic(50, 64, seed=11, shortcut=SHORTCUT)
    for field in ("images", "labels", "masks", "boxes", "shortcut_masks", "markers"):
        np.testing.assert_array_equal(getattr(small, field), getattr(large, field)[:10],
                                      err_msg=field)


def test_label_balance(big) -> None:
    assert abs(big.labels.mean() - 0.5) < 0.04
    skewed = generate_synthetic(1000, 16, seed=7, positive_fraction=0.2)
    assert abs(skewed.labels.mean() - 0.2) < 0.04


def test_masks_empty_iff_class_0_and_boxes_are_tight(big) -> None:
    nonempty = big.masks.reshape(len(big), -1).any(axis=1)
    np.testing.assert_array_equal(nonempty, big.labels == 1)
    assert (big.boxes[big.labels == 0] == -1).all()
    for i in np.flatnonzero(big.labels == 1)[:200]:
        x0, y0, x1, y1 = big.boxes[i]
        inside = np.zeros_like(big.masks[i])
        inside[y0:y1, x0:x1] = 1
        assert not (big.masks[i] & (1 - inside)).any()  # encloses every mask pixel
        m = big.masks[i]
        # tight: every edge row/column of the box touches the mask
        assert m[y0].any() and m[y1 - 1].any() and m[:, x0].any() and m[:, x1 - 1].any()


def test_lesion_size_and_contrast() -> None:
    s = generate_synthetic(200, 64, seed=5)
    pos = s.labels == 1
    area = s.masks[pos].reshape(pos.sum(), -1).mean(axis=1)
    # ellipse radii 12-22% of the image, perturbed boundary, sometimes clipped by the border
    assert 0.02 < area.min() and area.max() < 0.25
    # the lesion is darker and redder than the tissue around it
    img = s.images[pos].astype(float)
    m = s.masks[pos].astype(bool)
    green_in, green_out = img[..., 1][m].mean(), img[..., 1][~m].mean()
    assert green_in < 0.75 * green_out


def test_masks_to_boxes_by_hand() -> None:
    masks = np.zeros((3, 5, 6), dtype=np.uint8)
    masks[0, 1:3, 2:5] = 1
    masks[2, 4, 0] = 1
    np.testing.assert_array_equal(masks_to_boxes(masks),
                                  [[2, 1, 5, 3], [-1, -1, -1, -1], [0, 4, 1, 5]])


def test_shortcut_correlates_with_labels_at_strength(big) -> None:
    has = big.shortcut_masks.reshape(len(big), -1).any(axis=1)
    np.testing.assert_array_equal(has, big.markers)
    p1, p0 = has[big.labels == 1].mean(), has[big.labels == 0].mean()
    assert abs(p1 - 0.9) < 0.03 and abs(p0 - 0.1) < 0.03
    # a fixed top-left square of `size` px, bright in the image
    rows, cols = np.nonzero(big.shortcut_masks[has].any(axis=0))
    assert rows.max() - rows.min() + 1 == 4 and cols.max() - cols.min() + 1 == 4
    assert rows.max() < 8 and cols.max() < 8
    assert (big.images[has][big.shortcut_masks[has].astype(bool)] >= 240).all()


def test_shortcut_changes_only_marker_pixels() -> None:
    plain = generate_synthetic(40, 32, seed=9)
    marked = generate_synthetic(40, 32, seed=9, shortcut=SHORTCUT)
    np.testing.assert_array_equal(plain.labels, marked.labels)
    np.testing.assert_array_equal(plain.masks, marked.masks)
    outside = ~marked.shortcut_masks.astype(bool)
    np.testing.assert_array_equal(plain.images[outside], marked.images[outside])


@pytest.mark.parametrize(
    "shortcut",
    [
        {"enabled": True, "strength": 1.5},
        {"enabled": True, "size": 0},
        {"enabled": True, "position": "centre"},
        {"enabled": True, "strenght": 0.9},
    ],
)
def test_bad_shortcut_config(shortcut: dict) -> None:
    with pytest.raises(ConfigError):
        generate_synthetic(2, 32, seed=0, shortcut=shortcut)


def test_224_px_works() -> None:
    s = generate_synthetic(2, 224, seed=1, positive_fraction=1.0)
    assert s.images.shape == (2, 224, 224, 3) and s.masks.any(axis=(1, 2)).all()


# --------------------------------------------------------------------------- transforms


def _flip_pipeline() -> A.Compose:
    return A.Compose([A.HorizontalFlip(p=1.0), imagenet_normalize(), ToTensorV2()])


def test_flip_keeps_mask_and_box_aligned() -> None:
    s = generate_synthetic(20, 32, seed=2, positive_fraction=1.0, shortcut=SHORTCUT)
    ds = SyntheticDataset(s, _flip_pipeline())
    for i in range(4):
        item = ds[i]
        np.testing.assert_array_equal(item["mask"].numpy(), s.masks[i][:, ::-1])
        np.testing.assert_array_equal(item["marker_mask"].numpy(), s.shortcut_masks[i][:, ::-1])
        x0, y0, x1, y1 = s.boxes[i]
        assert item["box"].tolist() == [32 - x1, y0, 32 - x0, y1]
        expected = (s.images[i][:, ::-1] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        np.testing.assert_allclose(item["image"].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_default_transforms() -> None:
    s = generate_synthetic(4, 32, seed=2)
    train, evaluation = default_train_transform(32), default_eval_transform(32)
    assert isinstance(train, A.Compose) and isinstance(evaluation, A.Compose)
    out = train(image=s.images[0], mask=s.masks[0])
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (32, 32)
    a = evaluation(image=s.images[0], mask=s.masks[0])["image"]
    b = evaluation(image=s.images[0], mask=s.masks[0])["image"]
    assert torch.equal(a, b)
    # the eval resize is a no-op at img_size: exact ImageNet normalisation of the pixels
    expected = (s.images[0] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(a.numpy(), expected.transpose(2, 0, 1), atol=1e-5)


# --------------------------------------------------------------------------- synthetic datamodule


def _check_batch(batch: dict, size: int) -> None:
    if "marker_mask" in batch:  # the synthetic set's samples also carry the marker's pixels
        n = batch["label"].shape[0]
        assert batch["marker_mask"].dtype == torch.uint8
        assert batch["marker_mask"].shape == (n, size, size)
    assert set(batch) - {"marker_mask"} == KEYS
    n = batch["label"].shape[0]
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (n, 3, size, size)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (n,)
    assert batch["mask"].dtype == torch.uint8 and batch["mask"].shape == (n, size, size)
    assert batch["has_mask"].dtype == torch.bool and batch["has_mask"].shape == (n,)
    assert batch["box"].dtype == torch.int64 and batch["box"].shape == (n, 4)
    assert batch["index"].dtype == torch.int64 and batch["index"].shape == (n,)
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    empty = batch["mask"].flatten(1).sum(1) == 0
    assert (batch["box"][empty] == -1).all() and (batch["box"][~empty] >= 0).all()


def _small_synthetic(**kwargs) -> SyntheticDataModule:
    args = {"img_size": 32, "num_train": 40, "num_val": 20, "num_test": 30, "batch_size": 8,
            "shuffle_seed": 0}
    return SyntheticDataModule(**{**args, **kwargs})


def test_synthetic_datamodule_batches() -> None:
    dm = _small_synthetic()
    assert (dm.name, dm.num_classes, dm.img_size, dm.class_names) == (
        "synthetic", 2, 32, ("normal", "lesion"))
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        _check_batch(next(iter(loader)), 32)
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 30
    # validation is not shuffled; training is, reproducibly for a given seed
    assert next(iter(dm.val_dataloader()))["index"].tolist() == list(range(8))
    first = next(iter(dm.train_dataloader()))["index"].tolist()
    assert first != list(range(8))
    assert next(iter(_small_synthetic().train_dataloader()))["index"].tolist() == first


def test_synthetic_datamodule_splits_are_distinct_and_cached() -> None:
    dm = _small_synthetic()
    dm.setup("fit")
    train = dm.samples["train"]
    dm.setup("fit")
    dm.setup()
    assert dm.samples["train"] is train  # repeated setup reuses the generated data
    assert len({split_seed(1234, s) for s in ("train", "val", "test")}) == 3
    assert not np.array_equal(dm.samples["train"].images[:20], dm.samples["val"].images[:20])
    np.testing.assert_array_equal(dm.train_labels(), train.labels)
    # the data depend on data_seed only: growing a split keeps its first samples
    bigger = _small_synthetic(num_train=60)
    np.testing.assert_array_equal(bigger.generate("train").images[:40], train.images)


def test_synthetic_roi_dataloader() -> None:
    dm = _small_synthetic()
    batches = list(dm.roi_dataloader())
    labels = torch.cat([b["label"] for b in batches])
    index = torch.cat([b["index"] for b in batches])
    assert (labels == 1).all() and torch.cat([b["has_mask"] for b in batches]).all()
    expected = np.flatnonzero(dm.samples["test"].labels == 1)
    assert index.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 3},
        {"img_size": 8},
        {"num_train": 0},
        {"batch_size": 0},
        {"class_names": ("a",)},
        {"positive_fraction": 1.5},
        {"shortcut": {"enabled": True, "size": 40}},
        {"transforms": {"test": None}},
    ],
)
def test_synthetic_datamodule_bad_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        _small_synthetic(**kwargs)


def test_synthetic_datamodule_from_hydra_config() -> None:
    """The shape the lead's configs take: Hydra builds the Compose objects inside the mapping."""
    node = OmegaConf.create(
        {
            "_target_": "xai_bench.data.SyntheticDataModule",
            "img_size": 32,
            "num_train": 16,
            "num_val": 8,
            "num_test": 8,
            "batch_size": 4,
            "class_names": ["normal", "lesion"],
            "shortcut": {"enabled": True, "strength": 0.9, "size": 3, "position": "corner"},
            "transforms": {
                "train": {
                    "_target_": "albumentations.Compose",
                    "transforms": [
                        {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
                        {"_target_": "albumentations.Normalize", "mean": list(IMAGENET_MEAN),
                         "std": list(IMAGENET_STD)},
                        {"_target_": "albumentations.pytorch.ToTensorV2"},
                    ],
                },
                "eval": None,
            },
        }
    )
    dm = hydra.utils.instantiate(node)
    assert isinstance(dm.train_transform, A.Compose) and isinstance(dm.eval_transform, A.Compose)
    assert dm.class_names == ("normal", "lesion")
    dm.setup("fit")
    _check_batch(next(iter(dm.train_dataloader())), 32)
    assert dm.samples["train"].markers.any()


class _SameImage(torch.utils.data.Dataset):
    """One image, randomly augmented on every access: shows whether workers share a stream."""

    def __init__(self) -> None:
        self.image = generate_synthetic(1, 32, seed=0).images[0]
        self.transform = A.Compose([A.ColorJitter(p=1.0), ToTensorV2()])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(image=self.image)["image"]


def test_workers_get_distinct_augmentation_streams() -> None:
    dm = _small_synthetic(num_workers=2, batch_size=4)
    loader = dm._loader(_SameImage(), shuffle=True)
    assert loader.persistent_workers
    first, second = list(loader)  # one batch from each worker
    assert not torch.equal(first, second)


# --------------------------------------------------------------------------- image-table datasets


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_table(root: Path, rows: list[dict],
                 columns: tuple[str, ...] = ("image", "label", "split", "group")) -> None:
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def canonical(tmp_path: Path) -> Path:
    """A tiny prepared dataset: 6 images (RGB, grayscale, 16-bit), splits, one test mask."""
    root = tmp_path / "tiny"
    rng = np.random.default_rng(0)
    rows = []
    for i, (label, split) in enumerate([(0, "train"), (1, "train"), (0, "val"), (1, "val"),
                                        (0, "test"), (1, "test")]):
        rel = f"images/{'sub/' if i == 3 else ''}img_{i}.png"
        if i == 2:
            _png(root / rel, rng.integers(0, 255, (40, 40), dtype=np.uint8))  # grayscale
        elif i == 4:
            Image.fromarray(rng.integers(0, 4096, (40, 40), dtype=np.uint16)).save(
                _mkdir(root / rel))  # 16 bit
        else:
            _png(root / rel, rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        rows.append({"image": rel, "label": label, "split": split, "group": f"patient{i // 2}"})
    _write_table(root, rows)
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[10:20, 5:25] = 255
    _png(root / "masks" / "img_5.png", mask)
    return root


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _table_module(root: Path, **kwargs) -> ImageTableDataModule:
    args = {"name": "tiny", "root": root, "num_classes": 2, "img_size": 32, "batch_size": 4,
            "num_workers": 0, "pin_memory": False, "shuffle_seed": 0}
    return ImageTableDataModule(**{**args, **kwargs})


def test_image_table_dataset_reads_canonical_layout(canonical: Path) -> None:
    test = ImageTableDataset(canonical, "test", default_eval_transform(32), class_names=("a", "b"))
    assert len(test) == 2 and test.labels.tolist() == [0, 1]
    assert test.has_mask.tolist() == [False, True] and test.groups == ["patient2", "patient2"]
    item = test[1]
    assert set(item) == KEYS and item["image"].shape == (3, 32, 32)
    assert item["label"].item() == 1 and item["has_mask"].item() and item["index"].item() == 1
    # the 40 px mask [10:20, 5:25] resized with the image to 32 px
    assert item["box"].tolist() == [4, 8, 20, 16]
    assert item["mask"].sum().item() == 16 * 8
    assert not test[0]["has_mask"].item() and test[0]["box"].tolist() == [-1, -1, -1, -1]
    gray_16bit = test[0]["image"]
    # min-max scaled, not clipped
    assert torch.isfinite(gray_16bit).all() and gray_16bit.std() > 0.1
    val = ImageTableDataset(canonical, "val", default_eval_transform(32))
    assert val.labels.tolist() == [0, 1] and val.image_path(1).parent.name == "sub"


def test_image_table_datamodule(canonical: Path) -> None:
    dm = _table_module(canonical, class_names=["normal", "abnormal"])
    dm.check()
    assert dm.train_labels().tolist() == [0, 1]
    dm.setup("fit")
    _check_batch(next(iter(dm.train_dataloader())), 32)
    _check_batch(next(iter(dm.val_dataloader())), 32)
    dm.setup("test")
    assert [b["label"].tolist() for b in dm.test_dataloader()] == [[0, 1]]
    roi = list(dm.roi_dataloader())
    assert len(roi) == 1 and roi[0]["index"].tolist() == [1] and roi[0]["has_mask"].all()
    assert (dm.name, dm.num_classes, dm.img_size, dm.class_names) == (
        "tiny", 2, 32, ("normal", "abnormal"))


def test_mirrored_mask_path_wins_and_mask_scale(canonical: Path) -> None:
    mask = np.zeros((20, 20), dtype=np.uint8)  # half scale, same frame
    mask[0:5, 0:5] = 1
    _png(canonical / "masks" / "images" / "sub" / "img_3.png", mask)
    val = ImageTableDataset(canonical, "val", A.Compose([ToTensorV2()]))
    assert val.has_mask.tolist() == [False, True]
    assert val[1]["box"].tolist() == [0, 0, 10, 10]
    _png(canonical / "masks" / "images" / "sub" / "img_3.png", np.ones((20, 30), dtype=np.uint8))
    with pytest.raises(XaiBenchError, match="img_3.png"):
        val[1]


def test_missing_root_names_the_folder(tmp_path: Path) -> None:
    dm = _table_module(tmp_path / "nowhere" / "kvasir", name="kvasir",
                       prepare_hint="Download Kvasir v2.")
    with pytest.raises(DatasetNotFoundError) as err:
        dm.check()
    message = str(err.value)
    assert str((tmp_path / "nowhere" / "kvasir").absolute()) in message
    assert message.startswith("Dataset 'kvasir' not found: ")
    assert ("Download Kvasir v2. Then point paths.data_dir at the folder that contains "
            "'kvasir/'") in message
    assert message.endswith("python -m xai_bench.train dataset=kvasir paths.data_dir=/data")
    with pytest.raises(DatasetNotFoundError):
        dm.setup("fit")
    (tmp_path / "nowhere" / "kvasir").mkdir(parents=True)  # folder without labels.csv
    with pytest.raises(DatasetNotFoundError, match="has no labels.csv"):
        dm.check()


def test_corrupt_image_names_the_file(canonical: Path) -> None:
    bad = canonical / "images" / "img_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = ImageTableDataset(canonical, "train", default_eval_transform(32))
    ds[0]
    with pytest.raises(XaiBenchError, match="img_1.png"):
        ds[1]


def test_bad_label_column_is_a_clear_error(canonical: Path) -> None:
    rows = [{"img": "images/img_0.png", "label": 0, "split": "train"}]
    _write_table(canonical, rows, columns=("img", "label", "split"))
    with pytest.raises(DatasetNotFoundError, match=r"lacks column\(s\) \['image'\]"):
        read_label_table(canonical)
    with pytest.raises(DatasetNotFoundError, match="lacks column"):
        _table_module(canonical).check()


@pytest.mark.parametrize(
    ("row", "error", "pattern"),
    [
        ({"label": 2}, ConfigError, r"labels \[2\].*num_classes=2"),
        ({"label": "x"}, DatasetNotFoundError, "labels must be integers"),
        ({"split": "valid"}, DatasetNotFoundError, r"split must be one of.*'valid' \(1 rows\)"),
        ({"image": "images/missing.png"}, DatasetNotFoundError,
         r"1 of 2 image files do not exist.*missing.png"),
    ],
)
def test_table_validation(canonical: Path, row: dict, error: type, pattern: str) -> None:
    good = {"image": "images/img_0.png", "label": 0, "split": "train"}
    _write_table(canonical, [good, {**good, **row}])
    with pytest.raises(error, match=pattern):
        read_label_table(canonical, num_classes=2)


def test_empty_split_is_reported(canonical: Path) -> None:
    _write_table(canonical, [{"image": "images/img_0.png", "label": 0, "split": "train"}])
    dm = _table_module(canonical)
    with pytest.raises(DatasetNotFoundError, match="no rows with split=val"):
        dm.setup("fit")


def test_ambiguous_mask_stem_is_refused(canonical: Path) -> None:
    _png(canonical / "images" / "other" / "img_5.png", np.zeros((40, 40, 3), dtype=np.uint8))
    _write_table(
        canonical,
        [
            {"image": "images/img_5.png", "label": 1, "split": "test"},
            {"image": "images/other/img_5.png", "label": 0, "split": "test"},
        ],
    )
    with pytest.raises(DatasetNotFoundError, match="same file stem"):
        read_label_table(canonical)


def test_standin_keeps_the_dataset_name_and_differs_per_dataset() -> None:
    from xai_bench.data import standin_datamodule

    kvasir = standin_datamodule("kvasir", img_size=32, num_train=8, num_val=4, num_test=4,
                                root="/nowhere", prepare_hint="unused", mask_size="resize")
    mura = standin_datamodule("mura", img_size=32, num_train=8, num_val=4, num_test=4)
    assert kvasir.name == "kvasir" and mura.name == "mura"
    kvasir.setup("test")
    mura.setup("test")
    a, b = next(iter(kvasir.test_dataloader())), next(iter(mura.test_dataloader()))
    assert a["image"].shape == (4, 3, 32, 32)
    assert not torch.equal(a["image"], b["image"])  # each stand-in has its own data seed
    again = standin_datamodule("kvasir", img_size=32, num_train=8, num_val=4, num_test=4)
    again.setup("test")
    assert torch.equal(next(iter(again.test_dataloader()))["image"], a["image"])
