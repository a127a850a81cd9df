"""The prepare machinery (splits, corrupt files, ROIs), Kvasir and PASCAL VOC from their official
layouts, the low-data regime and multi-label loading."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, run_cli
from PIL import Image

from xai_bench import prepare as prepare_cli
from xai_bench.data import ImageTableDataModule
from xai_bench.data.datamodule import low_data_rows
from xai_bench.data.prepare import (
    PrepareConfig,
    Record,
    assign_splits,
    kvasir,
    pascal_voc,
    prepare_dataset,
    split_sizes,
)
from xai_bench.tracking.records import TrainingRecord
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError, XaiBenchError

KVASIR_ROI = DATA_DIR / "rois" / "kvasir" / "048a155b-7de4-4235-9c7e-e90010093276.png"


def _image(path: Path, size: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _kvasir_raw(root: Path, per_class: int = 10) -> Path:
    raw = root / "kvasir-dataset-v2"
    for cls in ("esophagitis", "normal-z-line", "polyps"):  # polyps: a class the study did not use
        for i in range(per_class):
            _image(raw / cls / f"{cls[:3]}{i:03d}-uuid.jpg", seed=i)
    # the study's ROI mask's stem must match one image: name one image after it
    _image(raw / "esophagitis" / f"{KVASIR_ROI.stem}.jpg", size=(300, 256), seed=99)
    return raw


# ----------------------------------------------------------------------------- machinery
def test_split_sizes_keep_every_split_populated() -> None:
    assert split_sizes(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_sizes(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert sum(split_sizes(17, (0.7, 0.15, 0.15))) == 17


def test_grouped_split_never_leaks_a_group_and_is_seeded(tmp_path: Path) -> None:
    recs = [Record(source=tmp_path, label=i % 2, name=f"x{i}", group=f"patient{i // 3}")
            for i in range(60)]
    assign_splits(recs, (0.6, 0.2, 0.2), seed=1)
    splits_of: dict[str, set[str]] = {}
    for r in recs:
        splits_of.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert {r.split for r in recs} == {"train", "val", "test"}
    again = [Record(source=tmp_path, label=i % 2, name=f"x{i}", group=f"patient{i // 3}")
             for i in range(60)]
    assert ([r.split for r in assign_splits(again, (0.6, 0.2, 0.2), seed=1)]
            == [r.split for r in recs])


def test_corrupt_image_is_named_or_skipped_and_listed(tmp_path: Path) -> None:
    good = [Record(source=_image(tmp_path / f"g{i}.png", seed=i), label=i % 2, name=f"g{i}")
            for i in range(6)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    recs = [*good, Record(source=bad, label=0, name="broken")]
    with pytest.raises(XaiBenchError, match="broken.png"):
        prepare_dataset(recs, PrepareConfig(out=tmp_path / "a"), ("n", "p"), "test")
    report = prepare_dataset(recs, PrepareConfig(out=tmp_path / "b", on_corrupt="skip"), ("n", "p"),
                             "test")
    assert len(report.skipped) == 1 and "broken.png" in report.skipped[0]
    assert "broken.png" in json.loads((tmp_path / "b" / "prepare.json").read_text())["skipped"][0]
    with pytest.raises(XaiBenchError, match="--overwrite"):
        prepare_dataset(good, PrepareConfig(out=tmp_path / "b"), ("n", "p"), "test")


def test_boxes_become_masks_in_the_resized_frame(tmp_path: Path) -> None:
    src = _image(tmp_path / "a.png", size=(100, 50))
    rec = Record(source=src, label=1, name="a", split="test", boxes=[(10, 5, 30, 25)])
    prepare_dataset([rec], PrepareConfig(out=tmp_path / "out", resize="50x25"), ("n", "p"), "test")
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png")) > 0
    assert mask.shape == (25, 50)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (2, 13, 5, 15)


# ----------------------------------------------------------------------------- kvasir
def test_kvasir_labels_splits_and_study_rois(tmp_path: Path) -> None:
    raw = _kvasir_raw(tmp_path)
    out = tmp_path / "data" / "kvasir"
    report = prepare_cli.run(["kvasir", "--raw", str(raw), "--out", str(out), "--rois",
                              str(KVASIR_ROI.parent)])
    assert sum(report.counts["train"].values()) + sum(report.counts["val"].values()) + sum(
        report.counts["test"].values()) == 21  # polyps left out
    assert report.rois["attached"] == 1 and len(report.rois["without_image"]) >= 1
    assert (report.rois["test_images_without_roi"] >= 1
            and "test images without one" in report.summary())
    table = (out / "labels.csv").read_text().splitlines()
    assert table[0] == "image,label,split,group"
    assert any(line.startswith("images/esophagitis/") and ",1," in line for line in table)
    stored = Image.open(out / "images" / "esophagitis" / f"{KVASIR_ROI.stem}.png")
    assert min(stored.size) == 256  # shortest side 256, aspect kept
    assert (out / "rois" / "esophagitis" / f"{KVASIR_ROI.stem}.png").is_file()


def test_kvasir_missing_folder_names_the_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="datasets.simula.no"):
        kvasir.records(tmp_path / "nowhere")
    (tmp_path / "raw" / "esophagitis").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="normal-z-line"):
        kvasir.records(tmp_path / "raw")


def test_input_frame_rois_are_used_exactly_after_the_eval_transform(tmp_path: Path) -> None:
    """A study ROI (224 frame) on an image stored 256 px short side, CenterCrop 224 at test."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    raw = _kvasir_raw(tmp_path, per_class=3)
    out = tmp_path / "kv"
    prepare_cli.run(["kvasir", "--raw", str(raw), "--out", str(out), "--rois",
                     str(KVASIR_ROI.parent), "--fractions", "0", "0", "1"])
    eval_tf = A.Compose([A.SmallestMaxSize(max_size=256), A.CenterCrop(224, 224), A.Normalize(),
                         ToTensorV2()])
    dm = ImageTableDataModule(name="kvasir", root=out, num_classes=2, img_size=224, num_workers=0,
                              transforms={"train": eval_tf, "eval": eval_tf}, batch_size=4)
    test = dm.test_dataset
    index = [i for i in range(len(test)) if test.image_path(i).stem == KVASIR_ROI.stem][0]
    sample = test[index]
    expected = np.asarray(Image.open(KVASIR_ROI).convert("L")) > 0
    assert torch.equal(sample["mask"].bool(), torch.from_numpy(expected))
    assert int(test.has_mask.sum()) == 1


# ----------------------------------------------------------------------------- pascal voc
def _voc_raw(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    ids = {"train": [f"2008_{i:06d}" for i in range(12)],
           "val": [f"2009_{i:06d}" for i in range(4)]}
    for split, names in ids.items():
        (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for i, image_id in enumerate(names):
            _image(voc / "JPEGImages" / f"{image_id}.jpg", size=(50, 40), seed=i)
            objects = [("person", (1, 1, 10, 20)), ("dog" if i % 2 else "cat", (21, 11, 40, 30))]
            xml = "<annotation>" + "".join(
                f"<object><name>{n}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
                "</bndbox></object>" for n, b in objects) + "</annotation>"
            (voc / "Annotations").mkdir(parents=True, exist_ok=True)
            (voc / "Annotations" / f"{image_id}.xml").write_text(xml)
    return voc


def test_pascal_voc_multilabel_boxes_and_official_splits(tmp_path: Path) -> None:
    voc = _voc_raw(tmp_path)
    out = tmp_path / "pascal_voc"
    prepare_cli.run(["pascal_voc", "--raw", str(voc.parent), "--out", str(out)])
    lines = (out / "labels.csv").read_text().splitlines()[1:]
    by_id = {line.split(",")[0]: line.split(",") for line in lines}
    person, dog, cat = (pascal_voc.CLASS_NAMES.index(n) for n in ("person", "dog", "cat"))
    assert by_id["images/2008_000001.png"][1] == f"{dog};{person}"
    assert {v[2] for k, v in by_id.items() if "2009_" in k} == {"test"}
    assert {v[2] for k, v in by_id.items() if "2008_" in k} == {"train", "val"}
    boxes = (out / "boxes.csv").read_text().splitlines()
    # 1-based inclusive -> 0-based exclusive
    assert boxes[1] == "images/2008_000000.png,person,0.0,0.0,10.0,20.0"
    dm = ImageTableDataModule(name="pascal_voc", root=out, num_classes=20, img_size=32,
                              multilabel=True, num_workers=0, batch_size=4)
    batch = next(iter(dm.test_dataloader()))
    assert batch["label"].shape == (4, 20) and batch["label"].dtype == torch.float32
    assert batch["label"][:, person].eq(1).all() and batch["has_mask"].all()
    assert dm.train_labels().shape[1] == 20


# ----------------------------------------------------------------------------- low-data regime
def test_low_data_rows_per_class_and_fraction() -> None:
    labels = np.array([0] * 50 + [1] * 30)
    chosen, pool = low_data_rows(labels, per_class=5, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [5, 5] and pool.size == 70
    assert np.intersect1d(chosen, pool).size == 0
    chosen, _ = low_data_rows(labels, fraction=0.1, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [5, 3]  # stratified
    assert low_data_rows(labels, fraction=0.1, seed=0)[0].tolist() == chosen.tolist()  # seeded
    with pytest.raises(ConfigError, match="per_class"):
        low_data_rows(labels, per_class=40)


def test_low_data_regime_in_the_datamodule_with_unlabeled_pool() -> None:
    from xai_bench.data import SyntheticDataModule

    dm = SyntheticDataModule(num_train=60, num_val=8, num_test=8, img_size=32,
                             low_data={"per_class": 4})
    assert len(dm.train_dataset) == 8 and np.bincount(dm.train_labels()).tolist() == [4, 4]
    assert len(dm.unlabeled_dataloader().dataset) == 52
    with pytest.raises(ConfigError, match="OR"):
        SyntheticDataModule(low_data={"per_class": 4, "fraction": 0.5})


def test_mask_of_another_size_is_resized_or_rejected(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(4):
        _image(root / "images" / f"i{i}.png", size=(40, 40), seed=i)
    (root / "masks").mkdir()
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(root / "masks" / "i0.png")
    (root / "labels.csv").write_text("image,label,split\n" + "".join(
        f"images/i{i}.png,{i % 2},{s}\n" for i, s in enumerate(["test", "test", "train", "val"])))
    ok = ImageTableDataModule(name="t", root=root, num_classes=2, img_size=40, num_workers=0,
                              batch_size=2)
    assert ok.test_dataset[0]["mask"].shape == (40, 40) and ok.test_dataset[0]["mask"].all()
    strict = ImageTableDataModule(name="t", root=root, num_classes=2, img_size=40, num_workers=0,
                                  batch_size=2, mask_size="reject")
    with pytest.raises(XaiBenchError, match="mask_size=reject"):
        strict.test_dataset[0]


# ----------------------------------------------------------------------------- as a user would
@pytest.mark.slow
@pytest.mark.parametrize("name", ["kvasir", "pascal_voc"])
def test_prepare_cli_then_train_a_tiny_model(tmp_path: Path, name: str) -> None:
    raw = _kvasir_raw(tmp_path) if name == "kvasir" else _voc_raw(tmp_path).parent
    proc = subprocess.run([sys.executable, "-m", "xai_bench.prepare", name, "--raw", str(raw),
                           "--out", str(tmp_path / "data" / name)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "prepared" in proc.stdout
    run = tmp_path / "run"
    proc = run_cli(["xai_bench.train", f"dataset={name}", f"paths.data_dir={tmp_path / 'data'}",
                    "debug=tiny", "logger=none", "dataset.num_workers=0", "trainer.max_epochs=1",
                    f"hydra.run.dir={run}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = TrainingRecord.read(run)
    assert "acc" in metrics.test and "f1_macro" in metrics.test
    shutil.rmtree(run)
