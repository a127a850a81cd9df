"""Prepare scripts of CP-CHILD, COVID-19 Radiography, CRC and user folders, on tiny fixtures
written in each publisher's official layout (folder names, file names, split folders)."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from xai_bench import prepare as prepare_cli
from xai_bench.data import ImageTableDataModule
from xai_bench.data.prepare import PrepareConfig, cp_child, crc, folder, prepare_dataset
from xai_bench.data.prepare import covid19_radiography as covid
from xai_bench.tracking.records import TrainingRecord
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError, XaiBenchError

SIZE = (24, 20)  # width, height of every fixture image


def _image(path: Path, seed: int, size: tuple[int, int] = SIZE, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"not an image at all")
    return path


def _labels(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "labels.csv").open(encoding="utf-8")))


def _module(root: Path, class_names, name: str = "tiny") -> ImageTableDataModule:
    return ImageTableDataModule(name=name, root=root, num_classes=len(class_names), img_size=32,
                                class_names=class_names, batch_size=8, num_workers=0,
                                pin_memory=False, shuffle_seed=0)


# ----------------------------------------------------------------------------- official layouts
def make_cp_child(root: Path, n_train: int = 10, n_test: int = 3) -> Path:
    """CP-CHILD/CP-CHILD-{A,B}/{Train,Test}/{Polyp,Non-Polyp}/<n (k)>.jpg,
    256x256 JPEG in reality."""
    base = root / "CP-CHILD"
    seed = 0
    for subset, offset in (("A", 0), ("B", 100)):
        for split, n in (("Train", n_train), ("Test", n_test)):
            for cls, prefix in (("Polyp", 1), ("Non-Polyp", 2)):
                for k in range(n):
                    number = offset + k + (0 if split == "Train" else 50)
                    seed += 1
                    _image(base / f"CP-CHILD-{subset}" / split / cls / f"{prefix} ({number}).jpg",
                           seed)
    return base


def make_covid(root: Path, per_class: int = 10, nested: bool = True, v4: bool = True) -> Path:
    """Kaggle archive.zip: COVID-19_Radiography_Dataset/<class>/{images,masks}/<class>-<i>.png
    + workbooks."""
    base = root / "COVID-19_Radiography_Dataset"
    if nested:  # some Kaggle downloads nest the folder twice
        base = base / "COVID-19_Radiography_Dataset"
    for c, cls in enumerate(covid.CLASS_NAMES):
        for i in range(1, per_class + 1):
            sub = base / cls / "images" if v4 else base / cls
            _image(sub / f"{cls}-{i}.png", 1000 * c + i, mode="L")
            if v4:
                _image(base / cls / "masks" / f"{cls}-{i}.png", 7, mode="L")
        (base / f"{cls}.metadata.xlsx").write_bytes(
            b"PK placeholder (FILE NAME, FORMAT, SIZE, URL)")
    (base / "README.md.txt").write_text("COVID-19 Radiography Database\n")
    return root / "COVID-19_Radiography_Dataset"


def make_crc(root: Path, n_train: int = 10, n_test: int = 2) -> Path:
    """Zenodo 1214456: NCT-CRC-HE-100K/<class>/<class>-XXXXXXXX.tif and
    CRC-VAL-HE-7K/<class>/<class>-TCGA-XXXXXXXX.tif."""
    seed = 0
    for cls in crc.CLASS_NAMES:
        for k in range(n_train):
            seed += 1
            _image(root / "NCT-CRC-HE-100K" / cls / f"{cls}-{'AB'[k % 2]}{k:07d}.tif", seed)
        for k in range(n_test):
            seed += 1
            _image(root / "CRC-VAL-HE-7K" / cls / f"{cls}-TCGA-{k:08d}.tif", seed)
    return root


def make_class_folders(root: Path, per_class: int = 12) -> Path:
    """<raw>/<class>/[<patient>/]<image>.png|jpg for two classes."""
    for c, cls in enumerate(("malignant", "benign")):
        for k in range(per_class):
            sub = root / cls / f"p{k % 3}" if k % 2 else root / cls
            _image(sub / f"{cls[0]}{k}.{'png' if k % 3 else 'jpg'}", 100 * c + k)
    return root


def make_csv_dataset(root: Path, patients: int = 12, per_patient: int = 2) -> tuple[Path, Path]:
    """images/<patient>_<k>.png + table.csv (path,label,group), labels given as class names."""
    rows = []
    for p in range(patients):
        label = "lesion" if p % 2 else "normal"
        for k in range(per_patient):
            rel = f"images/pt{p:02d}_{k}.png"
            _image(root / rel, 10 * p + k)
            rows.append({"path": rel, "label": label, "group": f"pt{p:02d}"})
    table = root / "table.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return root, table


# ----------------------------------------------------------------------------- CP-CHILD
def test_cp_child_publisher_split_labels_and_rois(tmp_path: Path) -> None:
    make_cp_child(tmp_path / "raw")
    rois = tmp_path / "roi_masks"
    roi = np.zeros((224, 224, 3), np.uint8)
    roi[40:120, 60:200] = 255
    rois.mkdir()
    Image.fromarray(roi).save(rois / "1 (50).png")  # a CP-CHILD-A Test polyp image
    out = tmp_path / "cp_child"
    report = prepare_cli.run(["cp_child", "--raw", str(tmp_path / "raw"), "--out", str(out),
                              "--rois", str(rois)])  # parent of CP-CHILD/
    rows = _labels(out)
    assert len(rows) == 2 * (2 * 10 + 2 * 3)
    for row in rows:
        assert row["label"] == ("1" if "/polyp/" in row["image"] else "0")
        expected = {"test"} if "/test/" in row["image"] else {"train", "val"}
        assert row["split"] in expected
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    # the validation share is stratified over the publisher's Train folders (40 images, 10%)
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 4 and {r["label"] for r in val} == {"0", "1"}
    info = json.loads((out / "prepare.json").read_text())
    assert info["fractions"] == pytest.approx([0.9, 0.1, 0.0]) and info["resize"] is None
    assert info["counts"]["test"] == {"normal": 6, "polyp": 6}
    assert sum(info["counts"]["train"].values()) == 36 and report.masks == 0
    assert info["rois"]["attached"] == 1
    assert (out / "rois" / "cp-child-a" / "test" / "polyp" / "1 (50).png").is_file()
    # kept as published
    assert Image.open(out / "images" / "cp-child-a/test/polyp/1 (50).png").size == SIZE
    batch = next(iter(_module(out, cp_child.CLASS_NAMES).test_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32) and set(batch["label"].tolist()) <= {0, 1}


def test_cp_child_subsets_options_and_errors(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    raw = make_cp_child(tmp_path / "raw", n_train=2, n_test=1)
    only_a = cp_child.records(raw, ("A",))
    assert len(only_a) == 2 * 2 + 2 * 1 and all(r.name.startswith("cp-child-a/") for r in only_a)
    both = cp_child.records(raw)
    assert sum(r.split == "test" for r in both) == 4 and sum(r.split is None for r in both) == 8
    rois = tmp_path / "rois"
    rois.mkdir()
    Image.new("RGB", (224, 224)).save(rois / "1 (0).png")
    (raw / "CP-CHILD-B" / "Train" / "Polyp" / "1 (100).jpg").rename(
        raw / "CP-CHILD-B" / "Train" / "Polyp" / "1 (0).jpg")
    with caplog.at_level(logging.WARNING):
        assert cp_child.warn_ambiguous_rois(cp_child.records(raw), rois) == 1
    assert "--subsets A" in caplog.text
    with pytest.raises(ConfigError, match="--val-fraction"):
        prepare_cli.run(["cp_child", "--raw", str(raw), "--out", str(tmp_path / "o"),
                         "--fractions", "0.7", "0.2", "0.1"])
    with pytest.raises(DatasetNotFoundError, match="figshare"):
        cp_child.records(tmp_path / "nowhere")
    (raw / "CP-CHILD-B" / "Test" / "Non-Polyp").rename(raw / "CP-CHILD-B" / "Test" / "NonPolyp")
    with pytest.raises(DatasetNotFoundError, match=r"Test/Non-Polyp"):
        cp_child.records(raw)
    assert len(cp_child.records(raw, ("A",))) == 6  # the intact subset alone still works


# ----------------------------------------------------------------------------- COVID-19 Radiography
def test_covid_sorted_80_10_10_per_class_and_no_lung_mask_rois(tmp_path: Path) -> None:
    make_covid(tmp_path / "raw", per_class=10, nested=True)
    out = tmp_path / "covid"
    report = prepare_cli.run(["covid19_radiography", "--raw", str(tmp_path / "raw"), "--out",
                              str(out)])
    rows = _labels(out)
    assert len(rows) == 40
    # Python string order of the file names, as the companion's sorted(os.listdir(...)):
    # COVID-1, COVID-10, COVID-2, ... -> first int(0.8 n) train, up to int(0.9 n) val, rest test
    split_of = {r["image"]: r["split"] for r in rows}
    for c, cls in enumerate(covid.CLASS_NAMES):
        assert split_of[f"images/{cls}/{cls}-10.png"] == "train"
        assert split_of[f"images/{cls}/{cls}-8.png"] == "val"
        assert split_of[f"images/{cls}/{cls}-9.png"] == "test"
        assert {r["label"] for r in rows if r["image"].startswith(f"images/{cls}/")} == {str(c)}
    assert report.counts["train"] == dict.fromkeys(covid.CLASS_NAMES, 8)
    assert report.counts["val"] == report.counts["test"] == dict.fromkeys(covid.CLASS_NAMES, 1)
    # lung masks are not ROIs of the finding
    assert report.masks == 0 and not (out / "masks").exists()
    info = json.loads((out / "prepare.json").read_text())
    assert info["class_names"] == list(covid.CLASS_NAMES) and info["resize"] is None
    dm = _module(out, covid.CLASS_NAMES)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32) and not batch["has_mask"].any()
    assert set(dm.train_labels().tolist()) == {0, 1, 2, 3}


def test_covid_older_layout_and_missing_class(tmp_path: Path) -> None:
    # <= v3: images in the class folder
    raw = make_covid(tmp_path / "raw", per_class=6, nested=False, v4=False)
    recs = covid.records(raw)
    assert len(recs) == 24 and [r.split for r in recs[:6]] == ["train"] * 4 + ["val", "test"]
    (raw / "Viral Pneumonia").rename(raw / "Viral_Pneumonia")
    with pytest.raises(DatasetNotFoundError, match=r"'Viral Pneumonia'.*kaggle\.com"):
        covid.records(raw)
    with pytest.raises(DatasetNotFoundError, match="COVID-19 Radiography Database folder"):
        covid.records(tmp_path / "missing")


# ----------------------------------------------------------------------------- CRC
def test_crc_test_is_crc_val_he_7k_and_val_comes_from_100k(tmp_path: Path) -> None:
    raw = make_crc(tmp_path / "raw")
    out = tmp_path / "crc"
    report = prepare_cli.run(["crc", "--raw", str(raw), "--out", str(out)])
    rows = _labels(out)
    assert len(rows) == 9 * 12
    for row in rows:
        assert (row["split"] == "test") == row["image"].startswith("images/CRC-VAL-HE-7K/")
        cls = row["image"].split("/")[2]
        assert row["label"] == str(crc.CLASS_NAMES.index(cls))
    assert report.counts["test"] == dict.fromkeys(crc.CLASS_NAMES, 2)
    assert report.counts["val"] == dict.fromkeys(crc.CLASS_NAMES, 1)  # seeded 10% of each class
    assert (json.loads((out / "prepare.json").read_text())["fractions"]
            == pytest.approx([0.9, 0.1, 0.0]))
    val_labels = [int(v) for batch in _module(out, crc.CLASS_NAMES).val_dataloader()
                  for v in batch["label"]]
    assert sorted(val_labels) == list(range(9))
    # the companion's rule: per class sorted by name, the last 20% is validation
    recs = crc.records(raw, val_rule="sorted", val_fraction=0.2)
    adi = [r for r in recs if r.name.startswith("NCT-CRC-HE-100K/ADI/")]
    assert [r.split for r in adi] == ["train"] * 8 + ["val"] * 2
    assert adi[-1].source.name == "ADI-B0000009.tif"


def test_crc_missing_folders_and_options(tmp_path: Path) -> None:
    raw = make_crc(tmp_path / "raw", n_train=2, n_test=1)
    with pytest.raises(DatasetNotFoundError, match="CRC-VAL-HE-7K.*zenodo"):
        crc.records(raw, test_folder="CRC-VAL-HE-7K-missing")
    (raw / "NCT-CRC-HE-100K" / "TUM").rename(raw / "NCT-CRC-HE-100K" / "tumour")
    with pytest.raises(DatasetNotFoundError, match="NCT-CRC-HE-100K/TUM"):
        crc.records(raw)
    with pytest.raises(ConfigError, match="--val-fraction"):
        prepare_cli.run(["crc", "--raw", str(raw), "--out", str(tmp_path / "o"), "--fractions",
                         "0.6", "0.2", "0.2"])


# ----------------------------------------------------------------------------- corrupt files
def _raw_with_corrupt(kind: str, tmp_path: Path) -> tuple[list[str], Path, tuple[str, ...]]:
    if kind == "cp_child":
        raw = make_cp_child(tmp_path / "raw", n_train=3, n_test=1)
        bad = _corrupt(raw / "CP-CHILD-A" / "Train" / "Polyp" / "1 (1).jpg")
        return ["--raw", str(raw)], bad, cp_child.CLASS_NAMES
    if kind == "covid19_radiography":
        raw = make_covid(tmp_path / "raw", per_class=3, nested=False)
        bad = _corrupt(raw / "Normal" / "images" / "Normal-2.png")
        return ["--raw", str(raw)], bad, covid.CLASS_NAMES
    if kind == "crc":
        raw = make_crc(tmp_path / "raw", n_train=2, n_test=1)
        bad = _corrupt(raw / "CRC-VAL-HE-7K" / "MUC" / "MUC-TCGA-00000000.tif")
        return ["--raw", str(raw)], bad, crc.CLASS_NAMES
    raw = make_class_folders(tmp_path / "raw", per_class=4)
    bad = _corrupt(raw / "benign" / "b0.jpg")
    return ["--raw", str(raw)], bad, ("benign", "malignant")


@pytest.mark.parametrize("kind", ["cp_child", "covid19_radiography", "crc", "folder"])
def test_corrupt_image_is_named_or_skipped(kind: str, tmp_path: Path) -> None:
    args, bad, _ = _raw_with_corrupt(kind, tmp_path)
    with pytest.raises(XaiBenchError, match=re.escape(bad.name)):
        prepare_cli.run([kind, *args, "--out", str(tmp_path / "strict")])
    report = prepare_cli.run([kind, *args, "--out", str(tmp_path / "lenient"), "--on-corrupt",
                              "skip"])
    assert len(report.skipped) == 1 and str(bad) in report.skipped[0]
    info = json.loads((tmp_path / "lenient" / "prepare.json").read_text())
    assert info["skipped"] == report.skipped
    assert not any(bad.stem in r["image"] for r in _labels(tmp_path / "lenient"))


# ----------------------------------------------------------------------------- user folders
def test_folder_class_folders_sorted_names_and_explicit_order(tmp_path: Path) -> None:
    raw = make_class_folders(tmp_path / "raw")
    recs, names = folder.records(raw)
    assert names == ["benign", "malignant"] and len(recs) == 24
    assert {r.label for r in recs if r.name.startswith("malignant/")} == {1}
    assert any(r.name == "malignant/p1/m1" for r in recs)  # nested folders are kept in the name
    recs, names = folder.records(raw, classes=["malignant", "benign"])
    assert (names == ["malignant", "benign"]
            and {r.label for r in recs if r.name.startswith("malignant/")} == {0})
    out = tmp_path / "out"
    report = prepare_cli.run(["folder", "--raw", str(raw), "--out", str(out)])
    assert report.counts["test"] == report.counts["val"] == {"benign": 1, "malignant": 1}
    assert {r["split"] for r in _labels(out)} == {"train", "val", "test"}
    with pytest.raises(DatasetNotFoundError, match="class folder 'tumour'"):
        folder.records(raw, classes=["benign", "tumour"])
    with pytest.raises(DatasetNotFoundError, match="image folder not found"):
        folder.records(tmp_path / "nowhere")


def test_folder_csv_grouped_split_masks_and_boxes(tmp_path: Path) -> None:
    raw, table = make_csv_dataset(tmp_path / "raw")
    masks = tmp_path / "masks"
    for p in (1, 3):  # masks by stem, in the source frame
        m = np.zeros((SIZE[1], SIZE[0]), np.uint8)
        m[5:15, 2:10] = 255
        masks.mkdir(exist_ok=True)
        Image.fromarray(m).save(masks / f"pt{p:02d}_0.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path_or_stem,x0,y0,x1,y1\nimages/pt05_1.png,4,2,12,10\n"
                     "pt07_0,0,0,6,5\npt07_0,18,15,24,20\n")
    out = tmp_path / "out"
    report = prepare_cli.run(["folder", "--raw", str(raw), "--csv", str(table), "--out", str(out),
                              "--masks", str(masks), "--boxes", str(boxes), "--resize", "48x40"])
    rows = _labels(out)
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        splits_of.setdefault(row["group"], set()).add(row["split"])
        # sorted names: lesion 0, normal 1
        assert row["label"] == ("0" if int(row["group"][2:]) % 2 else "1")
    assert all(len(s) == 1 for s in splits_of.values())  # no patient in two splits
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert report.masks == 4
    box = np.asarray(Image.open(out / "masks" / "images" / "pt05_1.png")) > 0
    # (4,2,12,10) x 2
    assert box.shape == (40, 48) and box.sum() == 16 * 16 and box[4:20, 8:24].all()
    two = np.asarray(Image.open(out / "masks" / "images" / "pt07_0.png")) > 0
    assert two[:10, :12].all() and two[30:, 36:].all() and two.sum() == 2 * 120
    mask = np.asarray(Image.open(out / "masks" / "images" / "pt01_0.png")) > 0
    assert mask[10:30, 4:20].all() and mask.sum() == 20 * 16
    batch = next(iter(_module(out, ["lesion", "normal"]).train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    dm = _module(out, ["lesion", "normal"])
    dm.setup()
    with_mask = [dm.datasets[s] for s in ("train", "val", "test")]
    assert sum(int(d.has_mask.sum()) for d in with_mask) == 4
    item = next(d[i] for d in with_mask for i in range(len(d)) if d.has_mask[i])
    assert item["mask"].any() and item["mask"].shape == (32, 32)


def test_folder_csv_labels_splits_and_bad_input(tmp_path: Path) -> None:
    raw = make_class_folders(tmp_path / "raw", per_class=3)
    table = tmp_path / "t.csv"
    table.write_text("path,label,split\nbenign/b0.jpg,1,test\nbenign/p1/b1.png,1,\n"
                     "malignant/m0.jpg,0,train\n")
    recs, names = folder.records(raw, table)
    assert names == ["0", "1"] and [r.label for r in recs] == [1, 1, 0]
    assert [r.split for r in recs] == ["test", None, "train"] and recs[1].name == "benign/p1/b1"
    recs, names = folder.records(raw, table, classes=["malignant", "benign"])
    assert names == ["malignant", "benign"] and [r.label for r in recs] == [1, 1, 0]
    table.write_text("path,label,split\nbenign/b0.jpg,cat,\nbenign/b0.jpg,benign,holdout\n")
    with pytest.raises(ConfigError, match="line 2: 'cat'"):
        folder.records(raw, table, classes=["malignant", "benign"])
    table.write_text("path,label\nbenign/missing.png,benign\n")
    with pytest.raises(DatasetNotFoundError, match="missing.png"):
        folder.records(raw, table)
    table.write_text("file,class\nbenign/b0.jpg,benign\n")
    with pytest.raises(DatasetNotFoundError, match=r"lacks column\(s\) \['path', 'label'\]"):
        folder.records(raw, table)
    boxes = tmp_path / "b.csv"
    boxes.write_text("image,x0,y0,x1,y1\nnot_an_image,0,0,4,4\n")
    with pytest.raises(DatasetNotFoundError, match="match no image: 'not_an_image'"):
        folder.records(raw, boxes=boxes)
    boxes.write_text("image,x0,y0,x1,y1\nb0,5,5,2,8\n")
    with pytest.raises(ConfigError, match="x1 > x0"):
        folder.records(raw, boxes=boxes)


# ----------------------------------------------------------------------------- Hydra configs
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four datasets prepared under one data_dir, as `paths.data_dir` expects."""
    tmp = tmp_path_factory.mktemp("prepared")
    data = tmp / "data"
    cfg = lambda name: PrepareConfig(out=data / name)  # noqa: E731
    prepare_dataset(cp_child.records(make_cp_child(tmp / "cp", n_train=4, n_test=2)),
                    PrepareConfig(out=data / "cp_child", fractions=(0.75, 0.25, 0.0)),
                    cp_child.CLASS_NAMES, "t")
    prepare_dataset(covid.records(make_covid(tmp / "cv", per_class=10)), cfg("covid19_radiography"),
                    covid.CLASS_NAMES, "t")
    prepare_dataset(crc.records(make_crc(tmp / "crc", n_train=2, n_test=1), val_rule="sorted",
                                val_fraction=0.5), cfg("crc"), crc.CLASS_NAMES, "t")
    recs, names = folder.records(make_class_folders(tmp / "fo", per_class=6))
    prepare_dataset(recs, cfg("folder"), names, "t")
    return data


@pytest.mark.parametrize("name,classes", [("cp_child", 2), ("covid19_radiography", 4), ("crc", 9),
                                          ("folder", 2)])
def test_dataset_config_reads_the_prepared_folder(compose_cfg, prepared: Path, name: str,
                                                  classes: int) -> None:
    extra = (["dataset.num_classes=2", "dataset.class_names=[benign,malignant]"]
             if name == "folder" else [])
    cfg = compose_cfg(f"dataset={name}", f"paths.data_dir={prepared}", "debug=tiny", *extra)
    assert cfg.dataset.num_classes == classes and len(cfg.dataset.class_names) == classes
    assert f"python -m xai_bench.prepare {name} --raw" in cfg.dataset.prepare_hint
    assert f"--out {prepared}/{name}" in cfg.dataset.prepare_hint
    if name in ("covid19_radiography", "crc"):
        # debug=tiny's model wins over the companion's resnet34
        assert cfg.model.arch == "vit_tiny_patch16_224"
    dm = hydra.utils.instantiate(cfg.dataset)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert int(batch["label"].max()) < classes


def test_missing_prepared_dataset_names_the_prepare_command(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("dataset=covid19_radiography", f"paths.data_dir={tmp_path}")
    dm = hydra.utils.instantiate(cfg.dataset)
    hint = r"python -m xai_bench\.prepare covid19_radiography --raw"
    with pytest.raises(DatasetNotFoundError, match=hint):
        dm.setup("fit")


# ----------------------------------------------------------------------------- as a user types it
@pytest.mark.slow
@pytest.mark.parametrize("name", ["cp_child", "covid19_radiography", "crc", "folder"])
def test_prepare_then_train_from_the_command_line(name: str, tmp_path: Path) -> None:
    raw = {"cp_child": lambda: make_cp_child(tmp_path / "download", n_train=8, n_test=4),
           "covid19_radiography": lambda: make_covid(tmp_path / "download", per_class=10),
           "crc": lambda: make_crc(tmp_path / "download", n_train=10, n_test=2),
           "folder": lambda: make_class_folders(tmp_path / "download", per_class=12)}[name]()
    proc = subprocess.run([sys.executable, "-m", "xai_bench.prepare", name, "--raw", str(raw),
                           "--out", str(tmp_path / "data" / name)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "prepared" in proc.stdout
    extra = (["dataset.num_classes=2", "dataset.class_names=[benign,malignant]"]
             if name == "folder" else [])
    run = tmp_path / f"run_{name}"
    proc = run_cli(["xai_bench.train", f"dataset={name}", f"paths.data_dir={tmp_path / 'data'}",
                    "debug=tiny", "logger=none", "dataset.num_workers=0", "trainer.max_epochs=1",
                    f"hydra.run.dir={run}", *extra], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert 0.0 <= TrainingRecord.read(run).test["acc"] <= 1.0
