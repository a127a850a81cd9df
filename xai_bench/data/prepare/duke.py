"""Duke-Breast-Cancer-MRI (TCIA, Saha et al. 2018): tumour slice (1) vs no tumour (0), DICOM -> PNG.

Official download (TCIA, https://doi.org/10.7937/TCIA.e3sv-re93): the DICOM series are fetched with
the NBIA Data Retriever ("classic" directory names), the annotation boxes are a separate file:

    <manifest-...>/Duke-Breast-Cancer-MRI/Breast_MRI_001/<study dir>/<series dir>/1-001.dcm ...
        study dir e.g.  01-01-1990-NA-BREASTROUTINE DYNAMICS-51487
        series dir e.g. 3.000000-ax dyn pre-93877   (SeriesNumber-SeriesDescription-uid)
    Annotation_Boxes.xlsx   one row per patient; columns Patient ID (Breast_MRI_001), Start Row,
                            End Row, Start Column, End Column, Start Slice, End Slice

Sources: the study's reproducibility tutorial (ugent-korea/attention_maps) defers to the
dataset authors' tutorial (sites.duke.edu/mazurowski, "breast-mri-cancer-detect-tutorial"),
whose extraction code: uses the fat-saturated pre-contrast series ("pre" in the path), 1-based
slice numbers, positives = slices inside the box, negatives = slices at least 5 slices outside,
PNG names `<DICOM file stem>-<patient number>.png` (e.g. 1-084-149.png: the stems of the study's
evaluation ROIs, so the study's masks, attached by default (--rois study), find them); pixels
scaled to uint8.
The column order of Annotation_Boxes (rows, columns, slices) is confirmed by public loaders.

Choices made here (documented in docs/datasets/duke.md):
- series: chosen per patient from the DICOM SeriesDescription; `--series pre` (default, the
  tutorial's) matches "pre" (e.g. "ax dyn pre"; a dynamic series with no phase marker when no
  description says "pre"), `--series post1` the first post-contrast phase ("1st pass",
  "Ph1/ax 3d dyn", "1ax dyn"); `--series-regex` overrides both.
- slice number of a file: InstanceNumber - min(InstanceNumber in the series) + 1 (the file-name
  number when the header is unreadable). Box rows/columns/slices are read as 1-based and
  inclusive (the tutorial: "indices start at 1"; it used an exclusive End Slice, an off-by-one
  this script does not copy). UNVERIFIED against the dataset page, which was not reachable.
- balance: the study reduced the positives to the number of negatives; the larger class is
  subsampled at random (seeded by --seed) over all patients, before the patient-grouped split.
- pixels: RescaleSlope/Intercept applied, min-max scaled to uint8 (the tutorial divided by the
  maximum: the same for the usual zero minimum), MONOCHROME1 inverted; stored 256x256.
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from xai_bench.data.prepare.common import (
    Preparer,
    PrepareReport,
    Record,
    config_from_args,
    prepare_dataset,
    require_dir,
    to_uint8_rgb,
)
from xai_bench.utils.errors import ConfigError, DatasetNotFoundError, XaiBenchError

log = logging.getLogger(__name__)

CLASS_NAMES = ("no_tumour", "tumour")
SOURCE = ("Duke-Breast-Cancer-MRI (https://doi.org/10.7937/TCIA.e3sv-re93): "
          "DICOM series + Annotation_Boxes")
DEFAULT_RESIZE = "256x256"
COLLECTION = "Duke-Breast-Cancer-MRI"
ANNOTATION_FILES = ("Annotation_Boxes.csv", "Annotation_Boxes.xlsx")
COLUMNS = ("Patient ID", "Start Row", "End Row", "Start Column", "End Column", "Start Slice",
           "End Slice")
DOWNLOAD_HINT = (
    "Download Duke-Breast-Cancer-MRI from https://doi.org/10.7937/TCIA.e3sv-re93 "
    "with the NBIA Data Retriever (classic folder names) and Annotation_Boxes.xlsx "
    "from the same page, and pass the folder that holds Duke-Breast-Cancer-MRI/ as --raw."
)
_PHASE = r"(1st|2nd|3rd|4th|ph\s*\d|\b\d\s*/?\s*ax)"
SERIES_PATTERNS = {
    # the tutorial's fat-saturated pre-contrast series ("ax dyn pre", "ax 3d dyn pre", ...)
    "pre": r"\bpre",
    # the first post-contrast phase ("ax dyn 1st pass", "Ph1/ax 3d dyn", "1ax dyn", ...)
    "post1": r"1st|ph\s*1\b|\b1\s*/?\s*ax",
}
_PATIENT = re.compile(r"Breast_MRI_(\d+)$", re.IGNORECASE)


# ----------------------------------------------------------------------------- annotations
def _norm(text: str) -> str:
    return " ".join(str(text).replace("\ufeff", "").split()).lower()


def read_xlsx_rows(path: Path) -> list[list[str]]:
    """The first worksheet of an .xlsx as rows of cell text (stdlib only: openpyxl is optional)."""
    ns = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    rel_ns = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
    with zipfile.ZipFile(path) as book:
        names = set(book.namelist())
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            for item in ElementTree.fromstring(book.read("xl/sharedStrings.xml")).iter(f"{ns}si"):
                shared.append("".join(t.text or "" for t in item.iter(f"{ns}t")))
        sheet = "xl/worksheets/sheet1.xml"
        if "xl/workbook.xml" in names and "xl/_rels/workbook.xml.rels" in names:
            first = ElementTree.fromstring(book.read("xl/workbook.xml")).find(
                f"{ns}sheets/{ns}sheet")
            rels = ElementTree.fromstring(book.read("xl/_rels/workbook.xml.rels"))
            if first is not None:
                rid = first.get(f"{rel_ns}id")
                for rel in rels:
                    if rel.get("Id") == rid:
                        target = rel.get("Target", "").lstrip("/")
                        sheet = target if target.startswith("xl/") else f"xl/{target}"
        rows: list[list[str]] = []
        for row in ElementTree.fromstring(book.read(sheet)).iter(f"{ns}row"):
            cells: dict[int, str] = {}
            for position, cell in enumerate(row.findall(f"{ns}c")):
                ref = re.match(r"([A-Z]+)", cell.get("r") or "")
                column = position
                if ref:
                    column = 0
                    for char in ref.group(1):
                        column = column * 26 + ord(char) - 64
                    column -= 1
                kind, value = cell.get("t"), cell.find(f"{ns}v")
                if kind == "s" and value is not None:
                    text = shared[int(value.text or 0)]
                elif kind == "inlineStr":
                    text = "".join(t.text or "" for t in cell.iter(f"{ns}t"))
                else:
                    text = value.text if value is not None and value.text is not None else ""
                cells[column] = text
            rows.append([cells.get(i, "") for i in range(max(cells) + 1)] if cells else [])
    return rows


def _to_int(value: str, what: str, path: Path) -> int:
    try:
        return int(round(float(value)))
    except (TypeError, ValueError) as err:
        raise XaiBenchError(f"{path}: {what} is {value!r}, not a number.") from err


def read_annotations(path: Path) -> dict[str, tuple[int, int, int, int, int, int]]:
    """Patient ID -> (start row, end row, start column, end column, start slice, end slice)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"Duke annotation boxes not found: {path.resolve()}. {DOWNLOAD_HINT}")
    try:
        if path.suffix.lower() == ".xlsx":
            rows = read_xlsx_rows(path)
        else:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                rows = [list(r) for r in csv.reader(handle)]
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, UnicodeDecodeError) as err:
        raise XaiBenchError(
            f"cannot read {path} ({type(err).__name__}: {err}). "
            "Open it in a spreadsheet program and save it as CSV "
            "(Annotation_Boxes.csv, same columns), then pass it with --annotations."
        ) from err
    wanted = [_norm(c) for c in COLUMNS]
    headers = [[_norm(c) for c in row] for row in rows[:10]]
    first = next((i for i, header in enumerate(headers) if all(w in header for w in wanted)), None)
    if first is None:
        raise XaiBenchError(f"{path} has no header row with the columns {list(COLUMNS)}.")
    columns = [headers[first].index(w) for w in wanted]
    boxes: dict[str, tuple[int, int, int, int, int, int]] = {}
    for row in rows[first + 1 :]:
        if len(row) <= max(columns) or not str(row[columns[0]]).strip():
            continue
        patient = str(row[columns[0]]).strip()
        values = [_to_int(row[c], f"{COLUMNS[k + 1]} of {patient}", path)
                  for k, c in enumerate(columns[1:])]
        boxes[patient] = tuple(values)  # type: ignore[assignment]
    if not boxes:
        raise XaiBenchError(f"{path} lists no patients.")
    return boxes


def find_annotations(raw: Path, collection: Path) -> Path:
    for folder in (raw, collection, raw.parent, collection.parent):
        for name in ANNOTATION_FILES:
            if (folder / name).is_file():
                return folder / name
    raise DatasetNotFoundError(
        "Annotation_Boxes.xlsx (or its CSV export Annotation_Boxes.csv) not found in "
        f"{raw.resolve()} or next to it. {DOWNLOAD_HINT} Or pass the file with --annotations."
    )


# ----------------------------------------------------------------------------- DICOM
def _header(path: Path, tags: Sequence[str]):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(tags))
    except Exception:  # noqa: BLE001 - a corrupt file: its pixels fail later, under --on-corrupt
        return None


def _file_number(path: Path) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else 0


def read_dicom(path: Path) -> np.ndarray:
    """uint8 RGB of one slice: rescale slope/intercept, min-max, MONOCHROME1 inverted."""
    import pydicom

    ds = pydicom.dcmread(path)
    arr = np.asarray(ds.pixel_array, dtype=np.float32)
    if arr.ndim != 2:
        raise XaiBenchError(f"{path} holds a {arr.ndim}-D pixel array; expected one 2-D slice.")
    slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    arr = (arr * float(slope if slope not in (None, "") else 1)
           + float(intercept if intercept not in (None, "") else 0))
    rgb = to_uint8_rgb(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        rgb = 255 - rgb
    return rgb


def _series_dirs(patient_dir: Path) -> list[Path]:
    """Folders under the patient that hold .dcm files (study/series, or series directly)."""
    return sorted({p.parent for p in patient_dir.rglob("*.dcm")})


def _description(series_dir: Path) -> str:
    for path in sorted(series_dir.glob("*.dcm"))[:5]:
        ds = _header(path, ["SeriesDescription"])
        if ds is not None and ds.get("SeriesDescription") is not None:
            return str(ds.SeriesDescription)
    return ""


def select_series(series: dict[Path, str], mode: str, regex: str | None) -> list[Path]:
    """The series whose SeriesDescription matches the chosen phase."""
    pattern = re.compile(regex if regex else SERIES_PATTERNS[mode], re.IGNORECASE)
    hits = [d for d, desc in series.items() if pattern.search(desc)]
    if not hits and not regex and mode == "pre":
        # "ax dyn" + "ax dyn 1st pass" ...: the unmarked one
        hits = [d for d, desc in series.items()
                if "dyn" in desc.lower() and not re.search(_PHASE, desc, re.IGNORECASE)]
    return sorted(hits)


def _parse_patients(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(text))
    if not match or int(match.group(1)) > int(match.group(2)):
        raise ConfigError(f"--patients must be a range FIRST-LAST such as 1-900; got {text!r}.")
    return int(match.group(1)), int(match.group(2))


# ----------------------------------------------------------------------------- records
def records(
    raw: Path,
    annotations: Path | None = None,
    series: str = "pre",
    series_regex: str | None = None,
    patients: str = "1-900",
    negative_margin: int = 5,
    balance: bool = True,
    seed: int = 42,
) -> list[Record]:
    raw = require_dir(raw, "Duke-Breast-Cancer-MRI download", DOWNLOAD_HINT)
    collection = raw / COLLECTION if (raw / COLLECTION).is_dir() else raw
    patient_dirs = sorted(p for p in collection.iterdir() if p.is_dir() and _PATIENT.match(p.name))
    if not patient_dirs:
        raise DatasetNotFoundError(
            f"no Breast_MRI_<nnn>/ patient folders in {collection.resolve()} "
            f"(expected {COLLECTION}/Breast_MRI_001/<study>/<series>/1-001.dcm). {DOWNLOAD_HINT}"
        )
    if series not in SERIES_PATTERNS:
        raise ConfigError(f"--series must be one of {sorted(SERIES_PATTERNS)}; got {series!r}.")
    if negative_margin < 1:
        raise ConfigError(f"--negative-margin must be at least 1 slice; got {negative_margin}.")
    boxes = read_annotations(Path(annotations) if annotations
                             else find_annotations(raw, collection))
    first, last = _parse_patients(patients)

    positives: list[Record] = []
    negatives: list[Record] = []
    no_series: list[str] = []
    for patient_dir in patient_dirs:
        number = int(_PATIENT.match(patient_dir.name).group(1))  # type: ignore[union-attr]
        if not first <= number <= last:
            continue
        box = boxes.get(patient_dir.name)
        if box is None:
            log.warning("%s has no row in the annotation boxes file: left out", patient_dir.name)
            continue
        chosen = select_series({d: _description(d) for d in _series_dirs(patient_dir)}, series,
                               series_regex)
        if not chosen:
            no_series.append(patient_dir.name)
            continue
        if len(chosen) > 1:
            log.warning("%s: %d series match --series %s (%s); using the first",
                        patient_dir.name, len(chosen), series, [c.name for c in chosen])
        files = sorted(chosen[0].glob("*.dcm"))
        instance = {}
        for path in files:
            ds = _header(path, ["InstanceNumber"])
            value = ds.get("InstanceNumber") if ds is not None else None
            instance[path] = int(value) if value not in (None, "") else _file_number(path)
        offset = min(instance.values()) - 1 if instance else 0
        row0, row1, col0, col1, slice0, slice1 = box
        for path in files:
            index = instance[path] - offset  # 1-based slice number, as in the annotation file
            if slice0 <= index <= slice1:
                label = 1
            elif index <= slice0 - negative_margin or index >= slice1 + negative_margin:
                label = 0
            else:
                continue  # too close to the tumour to call negative (the tutorial's margin)
            record = Record(
                source=path, label=label, name=f"{CLASS_NAMES[label]}/{path.stem}-{number}",
                group=patient_dir.name, reader=read_dicom,
                boxes=[(col0 - 1, row0 - 1, col1, row1)] if label else [],
            )
            (positives if label else negatives).append(record)
    if no_series:
        log.warning("%d patients have no series matching --series %s (e.g. %s): left out",
                    len(no_series), series_regex or series, no_series[:5])
    if balance and positives and negatives:
        positives, negatives = _balance(positives, negatives, seed)
    return sorted(positives + negatives, key=lambda r: r.name)


def _balance(positives: list[Record], negatives: list[Record],
             seed: int) -> tuple[list[Record], list[Record]]:
    """Subsample the larger class (the study: the positives) to the size of the smaller, seeded."""
    rng = np.random.default_rng(seed)
    n = min(len(positives), len(negatives))

    def pick(items: list[Record]) -> list[Record]:
        if len(items) == n:
            return items
        keep = np.sort(rng.choice(len(items), size=n, replace=False))
        return [items[i] for i in keep]

    return (pick(sorted(positives, key=lambda r: r.name)),
            pick(sorted(negatives, key=lambda r: r.name)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only duke has (the common ones: add_common_args)."""
    parser.add_argument("--annotations", type=Path, default=None,
                        help="Annotation_Boxes.xlsx or its CSV export "
                             "(default: looked up in and next to --raw)")
    parser.add_argument("--series", choices=sorted(SERIES_PATTERNS), default="pre",
                        help="DCE phase, matched on SeriesDescription "
                             "(default: pre, the tutorial's pre-contrast)")
    parser.add_argument("--series-regex", default=None,
                        help="a regular expression on SeriesDescription (overrides --series)")
    parser.add_argument("--patients", default="1-900",
                        help="patient number range (default: 1-900, the study's)")
    parser.add_argument("--negative-margin", type=int, default=5,
                        help="negatives lie at least this many slices outside the box "
                             "(default: 5, the tutorial's)")
    parser.add_argument("--no-balance", dest="balance", action="store_false",
                        help="keep every slice "
                             "(default: subsample the larger class to the smaller, seeded)")


def prepare(args: argparse.Namespace) -> PrepareReport:
    recs = records(args.raw, args.annotations, args.series, args.series_regex, args.patients,
                   args.negative_margin, args.balance, args.seed)
    return prepare_dataset(recs, config_from_args(args), CLASS_NAMES, SOURCE)


PREPARER = Preparer(prepare, __doc__, DEFAULT_RESIZE, study_rois=True,  # --rois study by default
                    add_arguments=add_arguments)
