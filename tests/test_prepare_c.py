"""Prepare scripts of the companion studies' datasets: HAM10000, BreaKHis, APTOS 2019, ISIC 2020.

Each fixture writes a tiny raw download in the publisher's own layout (folder names, CSV columns,
file naming, DICOM), then the prepare code must produce the canonical layout that
ImageTableDataModule reads: labels as the studies mapped them, grouped splits, ROI masks.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import pytest
import yaml
from conftest import CONF_DIR, run_cli
from PIL import Image

from xai_bench.data.prepare import (
    PrepareConfig,
    aptos2019,
    breakhis,
    ham10000,
    isic2020,
    prepare_dataset,
)
from xai_bench.tracking.records import TrainingRecord
from xai_bench.utils.errors import DatasetNotFoundError, XaiBenchError

MODULES = {"ham10000": ham10000, "breakhis": breakhis, "aptos2019": aptos2019, "isic2020": isic2020}


def _image(path: Path, width: int, height: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[object]],
               delimiter: str = ",") -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


# ----------------------------------------------------------------------------- raw fixtures
HAM_HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
HAM_MASKED = {"ISIC_0024300", "ISIC_0024301"}  # images given a segmentation mask (rectangle)
HAM_BOX = (8, 6, 20, 15)  # x0, y0, x1, y1 of the mask rectangle in the 32x24 source


def build_ham10000(root: Path, tab: bool = False, flat: bool = False) -> Path:
    """Dataverse layout: metadata + images in two part folders (or flat) + optional masks.

    3 lesions per diagnosis (one per split after grouping), the first lesion of each with 2 images.
    """
    raw = root / "dataverse_files"
    rows, index = [], 24300
    for dx in ham10000.CLASS_NAMES:
        for lesion in range(3):
            for _ in range(2 if lesion == 0 else 1):
                image_id = f"ISIC_{index:07d}"
                folder = raw if flat else raw / ham10000.IMAGE_FOLDERS[index % 2]
                _image(folder / f"{image_id}.jpg", 32, 24, index)
                rows.append([f"HAM_{dx}{lesion:05d}", image_id, dx, "histo", 50, "male", "back",
                             "vidir_modern"])
                index += 1
    masks = raw / ham10000.MASK_FOLDER
    masks.mkdir(parents=True)
    for image_id in HAM_MASKED:
        mask = np.zeros((24, 32), dtype=np.uint8)
        x0, y0, x1, y1 = HAM_BOX
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(mask).save(masks / f"{image_id}_segmentation.png")
    if tab:  # Dataverse's ingested export: tab-separated, quoted strings
        with open(raw / "HAM10000_metadata.tab", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONNUMERIC)
            writer.writerow(HAM_HEADER)
            writer.writerows(rows)
    else:
        _write_csv(raw / "HAM10000_metadata.csv", HAM_HEADER, rows)
    return raw


# slide folder, tumour type folder, class: the file names follow the slide id
BREAKHIS_SLIDES = [
    ("benign", "adenosis", "SOB_B_A_14-22549AB"),
    ("benign", "fibroadenoma", "SOB_B_F_14-21998CD"),
    ("benign", "tubular_adenoma", "SOB_B_TA_14-3411F"),
    ("benign", "adenosis", "SOB_B_A_14-22549CD"),
    ("malignant", "ductal_carcinoma", "SOB_M_DC_14-2523"),
    ("malignant", "ductal_carcinoma", "SOB_M_DC_14-13412"),
    ("malignant", "lobular_carcinoma", "SOB_M_LC_14-13412"),  # the same slide id under another type
    ("malignant", "mucinous_carcinoma", "SOB_M_MC_14-10147"),
]


def build_breakhis(root: Path) -> Path:
    raw = root / "BreaKHis_v1"
    breast = raw / "histology_slides" / "breast"
    seed = 0
    for cls, tumour, slide in BREAKHIS_SLIDES:
        prefix, rest = slide.rsplit("_", 1)  # SOB_B_A, 14-22549AB
        for magnification in ("40X", "200X"):
            for seq in (1, 2):
                name = f"{prefix}-{rest}-{magnification[:-1]}-{seq:03d}.png"
                _image(breast / cls / "SOB" / tumour / slide / magnification / name, 35, 23, seed)
                seed += 1
    (breast / "benign" / "SOB" / "adenosis" / "SOB_B_A_14-22549AB" / "40X"
     / "Thumbs.db").write_bytes(b"x")
    return raw


APTOS_GRADES = [0] * 10 + [1, 2, 3, 4, 2, 1, 2, 4, 3, 2]


def build_aptos2019(root: Path) -> Path:
    raw = root / "aptos2019-blindness-detection"
    rows = []
    for index, grade in enumerate(APTOS_GRADES):
        code = f"{index:04x}cfc8afb6"
        _image(raw / "train_images" / f"{code}.png", 30, 24, index)
        rows.append([code, grade])
    _write_csv(raw / "train.csv", ["id_code", "diagnosis"], rows)
    _image(raw / "test_images" / "b460ca9fa26f.png", 30, 24, 99)
    _write_csv(raw / "test.csv", ["id_code"], [["b460ca9fa26f"]])
    return raw


# patient -> targets of its images: benign-only patients, one mixed (majority benign), malignant
ISIC_PATIENTS = {
    "IP_7279968": [0, 0], "IP_3075186": [0, 0, 0], "IP_2842074": [0, 0], "IP_9802602": [0, 0],
    "IP_0000001": [0, 0, 1], "IP_0000002": [1], "IP_0000003": [1], "IP_0000004": [1, 1],
}
ISIC_DICOM_ONLY = "ISIC_0000005"  # fifth image: only its DICOM in the Kaggle layout


def _write_dicom(path: Path, pixels: np.ndarray, patient: str) -> None:
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = patient
    ds.set_pixel_data(pixels, photometric_interpretation="RGB", bits_stored=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def build_isic2020(root: Path, layout: str = "kaggle") -> Path:
    """layout 'kaggle' (train.csv, jpeg/train/*.jpg, train/*.dcm) or 'isic' (archive:
    train/*.jpg, v2 CSV)."""
    raw = root / ("siim-isic-melanoma-classification" if layout == "kaggle" else "isic2020")
    header = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
              "diagnosis", "benign_malignant", "target"]
    if layout == "isic":
        header.insert(2, "lesion_id")
    rows, index = [], 0
    for patient, targets in ISIC_PATIENTS.items():
        for target in targets:
            name = f"ISIC_{index:07d}"
            row = [name, patient, "male", 45.0, "torso", "melanoma" if target else "unknown",
                   "malignant" if target else "benign", target]
            if layout == "isic":
                row.insert(2, f"IL_{index:07d}")
            rows.append(row)
            pixels = np.random.default_rng(index).integers(0, 256, (24, 32, 3), dtype=np.uint8)
            if layout == "kaggle":
                if name != ISIC_DICOM_ONLY:
                    _image(raw / "jpeg" / "train" / f"{name}.jpg", 32, 24, index)
                _write_dicom(raw / "train" / f"{name}.dcm", pixels, patient)
            else:
                _image(raw / "train" / f"{name}.jpg", 32, 24, index)
            index += 1
    table = "train.csv" if layout == "kaggle" else "ISIC_2020_Training_GroundTruth_v2.csv"
    _write_csv(raw / table, header, rows)
    if layout == "isic":
        _write_csv(raw / isic2020.DUPLICATES, ["image_name_1", "image_name_2"],
                   [["ISIC_0000000", "ISIC_0000001"]])
    return raw


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "ham10000": build_ham10000, "breakhis": build_breakhis, "aptos2019": build_aptos2019,
    "isic2020": build_isic2020,
}
DATASETS = list(BUILDERS)


# ----------------------------------------------------------------------------- helpers
def _prepare(name: str, raw: Path, out: Path, **options: object):
    cfg = PrepareConfig(out=out, resize=MODULES[name].DEFAULT_RESIZE,
                        **options)  # type: ignore[arg-type]
    return prepare_dataset(MODULES[name].records(raw), cfg, MODULES[name].CLASS_NAMES,
                           MODULES[name].SOURCE)


def _labels(out: Path) -> list[dict[str, str]]:
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _check_splits(rows: list[dict[str, str]], num_classes: int) -> None:
    """All three splits hold every class; no group is in two splits."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["group"]:
            splits_of[row["group"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values()), {g: s for g, s in splits_of.items()
                                                          if len(s) > 1}
    for split in ("train", "val", "test"):
        assert ({int(r["label"]) for r in rows if r["split"] == split}
                == set(range(num_classes))), split


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every dataset's fixture, prepared once with the study's defaults."""
    out = {}
    for name, build in BUILDERS.items():
        tmp = tmp_path_factory.mktemp(name)
        _prepare(name, build(tmp / "raw"), tmp / "data" / name)
        out[name] = tmp / "data"
    return out


# ----------------------------------------------------------------------------- all datasets
@pytest.mark.parametrize("name", DATASETS)
def test_prepared_layout_splits_and_counts(prepared: dict[str, Path], name: str) -> None:
    out = prepared[name] / name
    rows = _labels(out)
    module = MODULES[name]
    _check_splits(rows, len(module.CLASS_NAMES))
    for row in rows:
        with Image.open(out / row["image"]) as image:
            assert image.size == (224, 224)  # the companion studies' direct resize
        assert row["image"].startswith(f"images/{module.CLASS_NAMES[int(row['label'])]}/")
    report = json.loads((out / "prepare.json").read_text())
    assert report["class_names"] == list(module.CLASS_NAMES) and report["resize"] == "224x224"
    for split in ("train", "val", "test"):
        for index, cls in enumerate(module.CLASS_NAMES):
            assert report["counts"][split][cls] == sum(
                r["split"] == split and r["label"] == str(index) for r in rows)
    assert report["skipped"] == []


@pytest.mark.parametrize("name", DATASETS)
def test_config_builds_a_datamodule_that_reads_batches(prepared: dict[str, Path], name: str,
                                                       compose_cfg) -> None:
    cfg = compose_cfg(f"dataset={name}", f"paths.data_dir={prepared[name]}", "dataset.img_size=32",
                      "dataset.num_workers=0", "dataset.pin_memory=false", "dataset.batch_size=64")
    assert cfg.model.arch == "resnet50" and cfg.optimizer.name == "adam"
    assert f"python -m xai_bench.prepare {name} --raw" in cfg.dataset.prepare_hint
    assert cfg.dataset.prepare_hint.endswith(f"--out {prepared[name]}/{name}")
    dm = hydra.utils.instantiate(cfg.dataset)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert set(batch["label"].tolist()) == set(range(len(MODULES[name].CLASS_NAMES)))
    if name == "ham10000":  # the segmentation masks are ROIs; the other datasets have none
        assert (dm.table is not None
                and sum(m is not None for m in dm.table.masks) == len(HAM_MASKED))
    else:
        assert not batch["has_mask"].any()


@pytest.mark.parametrize("name", DATASETS)
def test_missing_raw_folder_names_it_and_the_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError, match="not found") as err:
        MODULES[name].records(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "Download" in str(err.value)


@pytest.mark.parametrize("name", DATASETS)
def test_corrupt_image_is_skipped_and_listed_or_named(tmp_path: Path, name: str) -> None:
    raw = BUILDERS[name](tmp_path / "raw")
    victim = sorted(r.source for r in MODULES[name].records(raw))[3]
    victim.write_bytes(b"not an image")
    with pytest.raises(XaiBenchError, match="cannot read") as err:
        _prepare(name, raw, tmp_path / "err")
    assert str(victim) in str(err.value)
    report = _prepare(name, raw, tmp_path / "out", on_corrupt="skip")
    assert len(report.skipped) == 1 and str(victim) in report.skipped[0]
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["skipped"] == report.skipped
    assert victim.stem not in (tmp_path / "out" / "labels.csv").read_text()


# ----------------------------------------------------------------------------- HAM10000
def test_ham10000_labels_lesion_groups_and_masks(prepared: dict[str, Path]) -> None:
    out = prepared["ham10000"] / "ham10000"
    rows = _labels(out)
    assert len(rows) == 28
    for row in rows:
        dx = Path(row["image"]).parent.name
        assert int(row["label"]) == ham10000.CLASS_NAMES.index(dx)
        assert row["group"].startswith(f"HAM_{dx}")
    # the two images of a lesion share its split
    assert len({r["split"] for r in rows if r["group"] == "HAM_mel00000"}) == 1
    masks = sorted((out / "masks").rglob("*.png"))
    assert {m.stem for m in masks} == HAM_MASKED
    mask = np.asarray(Image.open(masks[0])) > 0
    assert mask.shape == (224, 224)
    x0, y0, x1, y1 = HAM_BOX  # 32x24 -> 224x224: x * 7, y * 28/3
    rows_in, cols_in = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert abs(cols_in[0] - x0 * 7) <= 4 and abs(cols_in[-1] + 1 - x1 * 7) <= 4
    assert abs(rows_in[0] - y0 * 224 / 24) <= 5 and abs(rows_in[-1] + 1 - y1 * 224 / 24) <= 5
    assert json.loads((out / "prepare.json").read_text())["masks"] == len(HAM_MASKED)


def test_ham10000_reads_the_dataverse_tab_export_with_flat_images(tmp_path: Path) -> None:
    raw = build_ham10000(tmp_path, tab=True, flat=True)
    records = ham10000.records(raw)
    assert len(records) == 28 and all(r.source.parent == raw for r in records)
    assert {r.name.split("/")[0] for r in records} == set(ham10000.CLASS_NAMES)
    assert sum(r.mask is not None for r in records) == len(HAM_MASKED)
    assert not any(r.mask for r in ham10000.records(raw, use_masks=False))


def test_ham10000_missing_images_are_one_error(tmp_path: Path) -> None:
    raw = build_ham10000(tmp_path)
    for path in (raw / "HAM10000_images_part_2").glob("*.jpg"):
        path.unlink()
    with pytest.raises(DatasetNotFoundError, match="HAM10000_images_part_2.zip"):
        ham10000.records(raw)
    (raw / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match="HAM10000_metadata"):
        ham10000.records(raw)


# ----------------------------------------------------------------------------- BreaKHis
def test_breakhis_labels_and_slide_groups(prepared: dict[str, Path], tmp_path: Path) -> None:
    rows = _labels(prepared["breakhis"] / "breakhis")
    assert len(rows) == len(BREAKHIS_SLIDES) * 4  # both magnifications; Thumbs.db ignored
    for row in rows:
        stem = Path(row["image"]).stem
        assert row["label"] == ("0" if stem.startswith("SOB_B_") else "1")
        # 14-22549AB from SOB_B_A-14-22549AB-40-001
        assert row["group"] == "-".join(stem.split("-")[1:3])
    # the ductal and lobular images of slide 14-13412 are one group, so one split
    assert len({r["split"] for r in rows if r["group"] == "14-13412"}) == 1
    assert len({r["group"] for r in rows}) == 7
    by_number = {r.group for r in breakhis.records(build_breakhis(tmp_path), group_by="number")}
    assert "14-22549" in by_number and len(by_number) == 6


def test_breakhis_accepts_the_folder_above_and_rejects_a_mislabelled_file(tmp_path: Path) -> None:
    raw = build_breakhis(tmp_path)
    assert (len(breakhis.records(tmp_path))
            == len(breakhis.records(raw / "histology_slides" / "breast")) == 32)
    wrong = raw / ("histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/"
                   "SOB_M_A-14-22549AB-40-009.png")
    _image(wrong, 35, 23, 0)
    with pytest.raises(DatasetNotFoundError, match="under benign"):
        breakhis.records(raw)
    wrong.unlink()
    with pytest.raises(DatasetNotFoundError, match="histology_slides/breast"):
        breakhis.records(tmp_path / "BreaKHis_v1" / "histology_slides" / "breast" / "benign"
                         / "SOB")


# ----------------------------------------------------------------------------- APTOS 2019
def test_aptos2019_binarises_the_grade(prepared: dict[str, Path]) -> None:
    rows = _labels(prepared["aptos2019"] / "aptos2019")
    assert len(rows) == len(APTOS_GRADES)  # the unlabeled test images are not used
    for row in rows:
        index = int(Path(row["image"]).stem[:4], 16)
        assert row["label"] == str(int(APTOS_GRADES[index] > 0))
        assert row["group"] == ""
    assert sorted(r["split"] for r in rows).count("train") == 16  # 80/10/10 per class


def test_aptos2019_layout_errors(tmp_path: Path) -> None:
    raw = build_aptos2019(tmp_path)
    _write_csv(raw / "train.csv", ["id_code", "diagnosis"], [["0000cfc8afb6", 7]])
    with pytest.raises(DatasetNotFoundError, match="integer 0-4"):
        aptos2019.records(raw)
    _write_csv(raw / "train.csv", ["id_code", "diagnosis"], [["ffffffffffff", 1]])
    with pytest.raises(DatasetNotFoundError, match="ffffffffffff"):
        aptos2019.records(raw)
    (raw / "train.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match="train.csv"):
        aptos2019.records(raw)


# ----------------------------------------------------------------------------- ISIC 2020
def test_isic2020_kaggle_layout_patient_groups_and_dicom(prepared: dict[str, Path],
                                                        tmp_path: Path) -> None:
    rows = _labels(prepared["isic2020"] / "isic2020")
    targets = [t for ts in ISIC_PATIENTS.values() for t in ts]
    assert len(rows) == len(targets)
    assert sorted(int(r["label"]) for r in rows) == sorted(targets)
    assert {r["group"] for r in rows} == set(ISIC_PATIENTS)
    records = {r.name.split("/")[1]: r for r in isic2020.records(build_isic2020(tmp_path))}
    dicom = records[ISIC_DICOM_ONLY]
    assert dicom.source.suffix == ".dcm" and dicom.reader is not None
    expected = np.random.default_rng(int(ISIC_DICOM_ONLY[5:])).integers(0, 256, (24, 32, 3),
                                                                        dtype=np.uint8)
    np.testing.assert_array_equal(dicom.reader(dicom.source), expected)
    assert records["ISIC_0000000"].source.parent.as_posix().endswith("jpeg/train")


def test_isic2020_archive_layout_and_duplicates(tmp_path: Path) -> None:
    raw = build_isic2020(tmp_path, layout="isic")
    records = isic2020.records(raw)
    assert len(records) == 16 and all(r.source.parent == raw / "train" for r in records)
    kept = {r.name.split("/")[1] for r in isic2020.records(raw, drop_duplicates=True)}
    assert "ISIC_0000001" not in kept and "ISIC_0000000" in kept and len(kept) == 15
    (raw / "train" / "ISIC_0000003.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="ISIC_0000003"):
        isic2020.records(raw)


def test_isic2020_config_asks_for_balanced_class_weights() -> None:
    node = yaml.safe_load((CONF_DIR / "dataset" / "isic2020.yaml").read_text())
    assert node["module"]["class_weights"] == "balanced"
    for name in ("ham10000", "breakhis", "aptos2019"):  # the survey weighted ISIC (and MIMIC) only
        assert "module" not in yaml.safe_load((CONF_DIR / "dataset" / f"{name}.yaml").read_text())


# ----------------------------------------------------------------------------- as a user
@pytest.mark.slow
@pytest.mark.parametrize("name", DATASETS)
def test_prepare_then_train_from_the_command_line(tmp_path: Path, name: str) -> None:
    raw = BUILDERS[name](tmp_path / "raw")
    data = tmp_path / "data"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "xai_bench.prepare", name, "--raw", str(raw),
                           "--out", str(data / name)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prepared" in done.stdout and (data / name / "labels.csv").is_file()
    run_dir = tmp_path / f"run_{name}"
    proc = run_cli(["xai_bench.train", f"dataset={name}", f"paths.data_dir={data}", "debug=tiny",
                    "logger=none", "dataset.num_workers=0", "trainer.max_epochs=1",
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert 0.0 <= TrainingRecord.read(run_dir).test["acc"] <= 1.0
