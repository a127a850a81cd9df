"""Prepare scripts of Duke-Breast-Cancer-MRI and MURA v1.1, on tiny downloads in the official
layouts."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import hydra
import numpy as np
import pytest
from conftest import DATA_DIR, run_cli
from PIL import Image

from xai_bench import prepare as prepare_cli
from xai_bench.data.prepare import duke, mura
from xai_bench.tracking.records import TrainingRecord
from xai_bench.utils.errors import DatasetNotFoundError, XaiBenchError

# ----------------------------------------------------------------------------- Duke fixture
N_SLICES = 16  # pre-contrast slices per patient; the box covers slices 6..11
BOX = {"Start Row": 4, "End Row": 9, "Start Column": 2, "End Column": 7, "Start Slice": 6,
       "End Slice": 11}


def _write_dicom(path: Path, patient: str, description: str, series_number: int, instance: int,
                 pixels: np.ndarray, slope: float | None = None) -> None:
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID = patient
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, float(instance)]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, -100
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def make_duke(root: Path, n_patients: int = 12, annotations: str = "csv",
              numbers: list[int] | None = None, n_slices: int = N_SLICES,
              slices: tuple[int, int] | None = None) -> Path:
    """<root>/manifest-1/Duke-Breast-Cancer-MRI/Breast_MRI_<nnn>/<study>/<series>/1-<k>.dcm
    + boxes file.

    Every patient has the pre-contrast series (16 slices) and a 3-slice first post-contrast
    series, whose file names clash with the pre series' (choosing it would change the counts).
    Patient 901 lies outside the study's 1-900."""
    rng = np.random.default_rng(0)
    raw = root / "manifest-1"
    rows = []
    for number in numbers or [*range(1, n_patients + 1), 901]:
        patient = f"Breast_MRI_{number:03d}"
        study = (raw / duke.COLLECTION / patient
                 / f"01-01-1990-NA-BREASTROUTINE DYNAMICS-{51000 + number}")
        for k in range(1, n_slices + 1):
            _write_dicom(study / f"3.000000-ax dyn pre-{93000 + number}" / f"1-{k:03d}.dcm",
                         patient, "ax dyn pre", 3, k, rng.integers(0, 1000, (16, 16)),
                         slope=2.0 if number == 2 else None)
        for k in range(1, 4):
            _write_dicom(study / f"4.000000-ax dyn 1st pass-{94000 + number}" / f"1-{k:03d}.dcm",
                         patient, "ax dyn 1st pass", 4, k, rng.integers(0, 1000, (16, 16)))
        box = {**BOX, **(dict(zip(("Start Slice", "End Slice"), slices, strict=True))
                         if slices else {})}
        rows.append([patient, *box.values()])
    header = list(duke.COLUMNS)
    if annotations == "csv":
        with open(raw / "Annotation_Boxes.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([header, *rows])
    else:
        write_xlsx(raw / "Annotation_Boxes.xlsx", [header, *rows])
    return raw


def write_xlsx(path: Path, rows: list[list]) -> None:
    """A minimal .xlsx as spreadsheet programs write it: shared strings, numeric cells."""
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    strings: list[str] = []
    sheet_rows = []
    for r, row in enumerate(rows, 1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{chr(65 + c)}{r}"
            if isinstance(value, str):
                strings.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{value}</v></c>')
        sheet_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns='
                      '"http://schemas.openxmlformats.org/package/2006/content-types"/>')
        book.writestr("xl/workbook.xml", f'<?xml version="1.0"?><workbook {ns} {rel}><sheets>'
                      '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>')
        book.writestr("xl/_rels/workbook.xml.rels", '<?xml version="1.0"?><Relationships xmlns='
                      '"http://schemas.openxmlformats.org/package/2006/relationships">'
                      '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/'
                      'officeDocument/2006/relationships/worksheet" '
                      'Target="worksheets/sheet1.xml"/></Relationships>')
        book.writestr("xl/sharedStrings.xml", f'<?xml version="1.0"?><sst {ns}>'
                      + "".join(f"<si><t>{s}</t></si>" for s in strings) + "</sst>")
        book.writestr("xl/worksheets/sheet1.xml", f'<?xml version="1.0"?><worksheet {ns}>'
                      f'<sheetData>{"".join(sheet_rows)}</sheetData></worksheet>')


# ----------------------------------------------------------------------------- MURA fixture
def _png(path: Path, rng: np.random.Generator, size: tuple[int, int] = (24, 20),
         mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def make_mura(root: Path) -> Path:
    """<root>/MURA-v1.1/{train,valid}/XR_<PART>/patient<id>/study<k>_<label>/image<n>.png
    + the four CSVs."""
    rng = np.random.default_rng(1)
    raw = root / "MURA-v1.1"
    studies = {"train": [], "valid": []}
    for number in range(1, 17):  # 16 train patients, alternating labels, 1-2 images per study
        label = "positive" if number % 2 else "negative"
        studies["train"].append(("XR_WRIST", f"patient{number:05d}", f"study1_{label}",
                                 1 + number % 2))
    # same patient, another part
    studies["train"].append(("XR_HAND", "patient00003", "study1_negative", 1))
    studies["valid"] += [("XR_WRIST", "patient11185", "study1_negative", 2),
                         ("XR_WRIST", "patient11188", "study1_positive", 3),
                         ("XR_HUMERUS", "patient11186", "study1_negative", 1),
                         ("XR_ELBOW", "patient11190", "study1_positive", 2)]
    for split, items in studies.items():
        images, labelled = [], []
        for part, patient, study, n_images in items:
            folder = f"MURA-v1.1/{split}/{part}/{patient}/{study}/"
            labelled.append([folder, 1 if study.endswith("positive") else 0])
            for n in range(1, n_images + 1):
                images.append([f"{folder}image{n}.png"])
                _png(root / images[-1][0], rng, mode="RGB" if n == 2 else "L")
        with open(raw / f"{split}_image_paths.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(images)
        with open(raw / f"{split}_labeled_studies.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(labelled)
    return raw


# ----------------------------------------------------------------------------- helpers
def _labels(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "labels.csv").open()))


def _check_splits(rows: list[dict[str, str]]) -> None:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits_of[row["group"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values()), "a group is in two splits"
    per_split = {s: {r["label"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert per_split == {"train": {"0", "1"}, "val": {"0", "1"}, "test": {"0", "1"}}


def _one_batch(compose_cfg, name: str, data_dir: Path) -> dict:
    cfg = compose_cfg(f"dataset={name}", f"paths.data_dir={data_dir}", "debug=tiny")
    datamodule = hydra.utils.instantiate(cfg.dataset)
    datamodule.check()
    datamodule.setup("fit")
    return next(iter(datamodule.test_dataloader()))


@pytest.fixture(scope="module")
def duke_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_duke(tmp_path_factory.mktemp("duke"))


@pytest.fixture(scope="module")
def duke_out(duke_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("duke_data") / "duke"
    prepare_cli.run(["duke", "--raw", str(duke_raw), "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def mura_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mura(tmp_path_factory.mktemp("mura"))


@pytest.fixture(scope="module")
def mura_out(mura_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mura_data") / "mura"
    prepare_cli.run(["mura", "--raw", str(mura_raw), "--out", str(out), "--rois",
                     str(DATA_DIR / "rois" / "mura")])
    return out


# ----------------------------------------------------------------------------- Duke
def test_duke_labels_balance_and_splits(duke_out: Path) -> None:
    rows = _labels(duke_out)
    # per patient: slices 6..11 tumour (6), slices 1 and 16 at least 5 slices outside (2);
    # 12 patients -> 72 positives subsampled to the 24 negatives; patient 901 is outside 1-900
    assert Counter(r["label"] for r in rows) == {"0": 24, "1": 24}
    assert "Breast_MRI_901" not in {r["group"] for r in rows}
    negatives = {Path(r["image"]).stem for r in rows if r["label"] == "0"}
    assert negatives == {f"1-{k:03d}-{p}" for p in range(1, 13) for k in (1, N_SLICES)}
    for row in rows:  # the study's names (<DICOM stem>-<patient number>) and class folders
        stem = Path(row["image"]).stem
        assert (re.fullmatch(r"1-\d{3}-\d+", stem)
                and row["image"].startswith(f"images/{duke.CLASS_NAMES[int(row['label'])]}/"))
        if row["label"] == "1":
            assert 6 <= int(stem.split("-")[1]) <= 11
    _check_splits(rows)
    report = json.loads((duke_out / "prepare.json").read_text())
    assert sum(sum(c.values()) for c in report["counts"].values()) == 48
    assert (report["masks"] == 24 and report["resize"] == "256x256"
            and report["class_names"] == ["no_tumour", "tumour"])


def test_duke_box_becomes_the_mask_of_positive_slices(duke_out: Path) -> None:
    rows = _labels(duke_out)
    positive = next(r for r in rows if r["label"] == "1")
    with Image.open(duke_out / positive["image"]) as image:
        assert image.size == (256, 256) and image.mode == "RGB"
    mask = np.asarray(Image.open(duke_out / "masks"
                                 / Path(positive["image"]).relative_to("images"))) > 0
    expected = np.zeros((256, 256), bool)
    # rows 4..9, columns 2..7 (1-based, inclusive) of a 16x16 slice, scaled by 16
    expected[3 * 16 : 9 * 16, 1 * 16 : 7 * 16] = True
    assert np.array_equal(mask, expected)
    negative = next(r for r in rows if r["label"] == "0")
    assert not (duke_out / "masks" / Path(negative["image"]).relative_to("images")).exists()


def test_duke_names_match_the_study_evaluation_rois(tmp_path: Path) -> None:
    # tests/data/rois/duke holds 1-040-819.png: slice 40 of Breast_MRI_819's pre-contrast series
    raw = make_duke(tmp_path, numbers=[819], n_slices=45, slices=(38, 42))
    report = prepare_cli.run(["duke", "--raw", str(raw), "--out", str(tmp_path / "out"),
                              "--no-balance", "--rois", str(DATA_DIR / "rois" / "duke")])
    assert report.rois["attached"] == 1 and "1-040-819.png" not in report.rois["without_image"]
    assert (tmp_path / "out" / "rois" / "tumour" / "1-040-819.png").is_file()


def test_duke_rescale_and_reader(duke_raw: Path) -> None:
    path = next((duke_raw / duke.COLLECTION / "Breast_MRI_002").rglob("*pre*/1-003.dcm"))
    image = duke.read_dicom(path)
    assert (image.shape == (16, 16, 3) and image.dtype == np.uint8
            and image.min() == 0 and image.max() == 255)


def test_duke_xlsx_matches_the_csv_export(tmp_path: Path, duke_raw: Path) -> None:
    rows = [list(duke.COLUMNS), ["Breast_MRI_001", 234, 271, 308, 341, 89, 112],
            ["Breast_MRI_002", 251, 294, 108, 136, 59, 72.0]]
    write_xlsx(tmp_path / "Annotation_Boxes.xlsx", rows)
    with open(tmp_path / "Annotation_Boxes.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    from_xlsx = duke.read_annotations(tmp_path / "Annotation_Boxes.xlsx")
    assert from_xlsx == duke.read_annotations(tmp_path / "Annotation_Boxes.csv")
    assert from_xlsx["Breast_MRI_001"] == (234, 271, 308, 341, 89, 112)
    # the whole pipeline reads the official .xlsx too
    raw = make_duke(tmp_path / "x", n_patients=2, annotations="xlsx")
    recs = duke.records(raw, balance=False)
    assert {r.group for r in recs} == {"Breast_MRI_001", "Breast_MRI_002"}


def test_duke_series_choice_from_series_description() -> None:
    series = {Path(d): d for d in ("ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax t1")}
    assert duke.select_series(series, "pre", None) == [Path("ax dyn pre")]
    assert duke.select_series(series, "post1", None) == [Path("ax dyn 1st pass")]
    unmarked = {Path(d): d for d in ("ax dyn", "Ph1/ax dyn", "Ph2/ax dyn", "ax t1 tse")}
    assert duke.select_series(unmarked, "pre", None) == [Path("ax dyn")]
    assert duke.select_series(unmarked, "post1", None) == [Path("Ph1/ax dyn")]
    assert duke.select_series(unmarked, "pre", r"t1 tse") == [Path("ax t1 tse")]
    assert duke.select_series({Path("1ax dyn"): "1ax dyn"}, "post1", None) == [Path("1ax dyn")]


def test_duke_post1_option_reads_the_other_series(duke_raw: Path) -> None:
    recs = duke.records(duke_raw, series="post1", negative_margin=1, balance=False)
    assert {r.source.parent.name.split("-")[1] for r in recs} == {"ax dyn 1st pass"}


def test_duke_missing_download_and_annotations(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="NBIA Data Retriever"):
        duke.records(tmp_path / "nowhere")
    empty = tmp_path / "manifest-2" / duke.COLLECTION
    empty.mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="Breast_MRI_<nnn>"):
        duke.records(tmp_path / "manifest-2")
    (empty / "Breast_MRI_001").mkdir()
    with pytest.raises(DatasetNotFoundError, match="Annotation_Boxes.xlsx"):
        duke.records(tmp_path / "manifest-2")
    (tmp_path / "manifest-2" / "Annotation_Boxes.xlsx").write_text("not a zip")
    with pytest.raises(XaiBenchError, match="save it as CSV"):
        duke.records(tmp_path / "manifest-2")


def test_duke_corrupt_slice_skipped_or_named(tmp_path: Path) -> None:
    raw = make_duke(tmp_path / "raw", n_patients=2)
    bad = next((raw / duke.COLLECTION / "Breast_MRI_002").rglob("*pre*/1-001.dcm"))
    bad.write_bytes(b"not a DICOM file")
    with pytest.raises(XaiBenchError, match=re.escape(str(bad))):
        prepare_cli.run(["duke", "--raw", str(raw), "--out", str(tmp_path / "a"), "--no-balance"])
    report = prepare_cli.run(["duke", "--raw", str(raw), "--out", str(tmp_path / "b"),
                              "--no-balance", "--on-corrupt", "skip"])
    assert len(report.skipped) == 1 and str(bad) in report.skipped[0]
    assert sum(sum(c.values()) for c in report.counts.values()) == 2 * 8 - 1


def test_duke_datamodule_batch(duke_out: Path, compose_cfg) -> None:
    batch = _one_batch(compose_cfg, "duke", duke_out.parent)
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert set(batch["label"].tolist()) <= {0, 1}
    for label, has_mask, mask in zip(batch["label"], batch["has_mask"], batch["mask"], strict=True):
        assert bool(has_mask) == bool(label) and bool(mask.any()) == bool(label)


# ----------------------------------------------------------------------------- MURA
def test_mura_labels_splits_and_names(mura_out: Path) -> None:
    rows = _labels(mura_out)
    assert len(rows) == 16 + 8 + 1 + 8  # train images (1-2 per study) + the XR_HAND study + valid
    for row in rows:
        stem = Path(row["image"]).stem
        match = re.fullmatch(r"patient(\d+)_study\d+_(positive|negative)_image\d+", stem)
        assert match and row["label"] == ("1" if match.group(2) == "positive" else "0")
        assert row["group"] == f"patient{match.group(1)}"
        assert (row["split"] == "test") == (int(match.group(1)) >= 11185)  # the official valid set
    assert {r["image"] for r in rows} >= {"images/XR_WRIST/patient00003_study1_positive_image2.png",
                                          "images/XR_HAND/patient00003_study1_negative_image1.png"}
    _check_splits(rows)
    report = json.loads((mura_out / "prepare.json").read_text())
    assert report["counts"]["test"] == {"normal": 3, "abnormal": 5} and report["masks"] == 0


def test_mura_resize_shortest_side_and_rois(mura_out: Path) -> None:
    with Image.open(mura_out / "images/XR_WRIST/patient11185_study1_negative_image1.png") as image:
        assert image.size == (307, 256) and image.mode == "RGB"  # 24x20 -> shortest side 256
    report = json.loads((mura_out / "prepare.json").read_text())
    n_rois = len(list((DATA_DIR / "rois" / "mura").glob("*.png")))
    assert report["rois"]["attached"] == 1 and len(report["rois"]["without_image"]) == n_rois - 1
    assert (mura_out / "rois/XR_WRIST/patient11188_study1_positive_image3.png").is_file()


def test_mura_labels_come_from_the_labeled_studies_csv(mura_raw: Path, tmp_path: Path) -> None:
    recs = mura.records(mura_raw)
    assert {r.split for r in recs} == {"train", "val", "test"}
    relabelled = tmp_path / "MURA-v1.1"
    (relabelled / "train").mkdir(parents=True)
    (relabelled / "valid").mkdir()
    _png(relabelled / "train/XR_HAND/patient00001/study1_negative/image1.png",
         np.random.default_rng(0))
    _png(relabelled / "train/XR_HAND/patient00002/study1_positive/image1.png",
         np.random.default_rng(0))
    (relabelled / "train_labeled_studies.csv").write_text(
        "MURA-v1.1/train/XR_HAND/patient00001/study1_negative/,0\n")
    with pytest.raises(XaiBenchError, match="not listed in train_labeled_studies.csv"):
        mura.records(relabelled)
    # the CSV's label wins over the folder suffix; without the CSV the suffix is the label
    (relabelled / "train_labeled_studies.csv").write_text(
        "MURA-v1.1/train/XR_HAND/patient00001/study1_negative/,1\n"
        "MURA-v1.1/train/XR_HAND/patient00002/study1_positive/,1\n")
    assert {r.name: r.label for r in mura.records(relabelled)} == {
        "XR_HAND/patient00001_study1_negative_image1": 1,
        "XR_HAND/patient00002_study1_positive_image1": 1}
    (relabelled / "train_labeled_studies.csv").unlink()
    assert sorted(r.label for r in mura.records(relabelled)) == [0, 1]


def test_mura_missing_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="aimi.stanford.edu"):
        mura.records(tmp_path / "MURA-v1.1")
    (tmp_path / "MURA-v1.1" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="valid/"):
        mura.records(tmp_path / "MURA-v1.1")


def test_mura_corrupt_image_skipped_or_named(tmp_path: Path) -> None:
    raw = make_mura(tmp_path)
    bad = raw / "train/XR_WRIST/patient00004/study1_negative/image1.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(XaiBenchError, match=re.escape(str(bad))):
        prepare_cli.run(["mura", "--raw", str(raw), "--out", str(tmp_path / "a")])
    report = prepare_cli.run(["mura", "--raw", str(raw), "--out", str(tmp_path / "b"),
                              "--on-corrupt", "skip"])
    assert len(report.skipped) == 1 and str(bad) in report.skipped[0]
    assert sum(sum(c.values()) for c in report.counts.values()) == 33 - 1


def test_mura_datamodule_batch(mura_out: Path, compose_cfg) -> None:
    batch = _one_batch(compose_cfg, "mura", mura_out.parent)
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert set(batch["label"].tolist()) <= {0, 1} and len(batch["label"]) == 8


# ----------------------------------------------------------------------- the CLI, as a user runs it
@pytest.mark.slow
@pytest.mark.parametrize("name", ["duke", "mura"])
def test_prepare_and_train_cli(name: str, tmp_path: Path) -> None:
    raw = make_duke(tmp_path / "raw") if name == "duke" else make_mura(tmp_path / "raw")
    prepare = subprocess.run(
        [sys.executable, "-m", "xai_bench.prepare", name, "--raw", str(raw), "--out",
         str(tmp_path / "data" / name)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert "prepared" in prepare.stdout
    run_dir = tmp_path / f"run_{name}"
    proc = run_cli(["xai_bench.train", f"dataset={name}", f"paths.data_dir={tmp_path / 'data'}",
                    "debug=tiny", "logger=none", "dataset.num_workers=0", "trainer.max_epochs=1",
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    metrics = TrainingRecord.read(run_dir)
    assert 0.0 <= metrics.test["acc"] <= 1.0
