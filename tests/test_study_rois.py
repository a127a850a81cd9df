"""The reference study's 200 evaluation ROI masks ship with xai_bench and are attached by default.

Before (issue 12, finding 14): the dataset cards passed `--rois` a folder that exists only beside
the development checkout; an installed xai_bench had 10 of the 200 masks (in tests/data), so the
study's localisation evaluation could not be reproduced from the docs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR, REPO_ROOT
from PIL import Image

from xai_bench import prepare as prepare_cli
from xai_bench.data import study_rois
from xai_bench.data.prepare import common, cp_child, duke, kvasir, mura
from xai_bench.utils.errors import ConfigError

STUDY_MODULES = {"cp_child": cp_child, "duke": duke, "kvasir": kvasir, "mura": mura}
KVASIR_STEM = "048a155b-7de4-4235-9c7e-e90010093276"  # one of the study's kvasir masks


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fifty_masks_per_study_dataset_in_the_input_frame() -> None:
    for dataset in study_rois.DATASETS:
        files = study_rois.masks(dataset)
        assert len(files) == 50, dataset
        assert study_rois.path(dataset).is_dir()
        for file in files:
            with Image.open(file) as image:
                assert image.size == (224, 224), file
    assert sum(" " in f.name for f in study_rois.masks("cp_child")) == 50  # "1 (10).png"
    empty = [f.stem for f in study_rois.masks("mura")
             if not (np.asarray(Image.open(f).convert("L")) > 0).any()]
    assert empty == ["patient11213_study1_positive_image2", "patient11261_study1_positive_image1"]


def test_the_test_copies_are_the_shipped_files_and_provenance_is_stated() -> None:
    for copy in (DATA_DIR / "rois").glob("*/*.png"):
        assert _sha(copy) == _sha(study_rois.path(copy.parent.name) / copy.name), copy
    folder_ = Path(study_rois.__file__).parent
    readme, licence = (folder_ / "README.md").read_text(), (folder_ / "LICENSE").read_text()
    assert "ugent-korea/attention_maps" in readme and "MIT" in readme
    assert licence.startswith("MIT License") and "UGent Korea" in licence


def test_unknown_dataset_says_which_exist() -> None:
    with pytest.raises(ConfigError, match="cp_child, duke, kvasir, mura only"):
        study_rois.path("ham10000")


@pytest.mark.parametrize("dataset", sorted(STUDY_MODULES))
def test_the_four_study_prepare_scripts_attach_the_study_rois_by_default(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = STUDY_MODULES[dataset]
    seen: dict[str, common.PrepareConfig] = {}
    monkeypatch.setattr(module, "records", lambda *args, **kwargs: [])
    monkeypatch.setattr(module, "prepare_dataset",
                        lambda recs, cfg, *rest: seen.setdefault("cfg", cfg))
    prepare_cli.run([dataset, "--raw", str(tmp_path), "--out", str(tmp_path / "out")])
    assert seen.pop("cfg").rois == study_rois.path(dataset)
    prepare_cli.run([dataset, "--raw", str(tmp_path), "--out", str(tmp_path / "out"), "--rois",
                     "none"])
    assert seen.pop("cfg").rois is None
    prepare_cli.run([dataset, "--raw", str(tmp_path), "--out", str(tmp_path / "out"), "--rois",
                     str(tmp_path)])
    assert seen.pop("cfg").rois == tmp_path


def _kvasir_raw(root: Path) -> Path:
    raw = root / "kvasir-dataset-v2"
    rng = np.random.default_rng(0)
    for cls in ("esophagitis", "normal-z-line"):
        for i in range(4):
            path = raw / cls / f"{cls[:3]}{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(
        raw / "esophagitis" / f"{KVASIR_STEM}.jpg")
    return raw


def test_kvasir_prepare_without_rois_argument_attaches_the_study_mask(tmp_path: Path) -> None:
    out = tmp_path / "data" / "kvasir"
    report = prepare_cli.run(["kvasir", "--raw", str(_kvasir_raw(tmp_path)), "--out", str(out),
                              "--resize", "none"])
    assert report.rois["attached"] == 1 and len(report.rois["without_image"]) == 49
    attached = out / "rois" / "esophagitis" / f"{KVASIR_STEM}.png"
    assert _sha(attached) == _sha(study_rois.path("kvasir") / f"{KVASIR_STEM}.png")
    assert json.loads((out / "prepare.json").read_text())["rois"]["attached"] == 1


def test_rois_study_for_a_dataset_without_study_masks_is_refused(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw" / "a"
    raw.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(raw / "x.png")
    out = tmp_path / "out"
    assert prepare_cli.main(["folder", "--raw", str(tmp_path / "raw"), "--out", str(out),
                             "--rois", "study"]) == 2
    assert "cp_child, duke, kvasir, mura only" in capsys.readouterr().out
    assert not out.exists()


def test_nothing_in_the_project_refers_to_the_development_folder() -> None:
    needles = ("../" + "shared", "seed" + "_rois", "/work/" + "shared")
    roots = [REPO_ROOT / d for d in ("xai_bench", "conf", "scripts", "tests", "docs")]
    files = [p for r in roots if r.is_dir() for p in r.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    files += [REPO_ROOT / n for n in ("README.md", "Makefile", "pyproject.toml")
              if (REPO_ROOT / n).is_file()]
    hits = []
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in needles if n in text]
    assert hits == []


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xai_bench as a user installs it: a wheel built from this checkout, unpacked (no
    repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO_ROOT / "xai_bench", source / "xai_bench",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("xai_bench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp / "site")
    return tmp / "site"


def test_an_installed_package_outside_the_repository_finds_all_200_masks(installed: Path,
                                                                         tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import xai_bench
        from xai_bench.data import study_rois
        from xai_bench.prepare import run
        assert Path(xai_bench.__file__).resolve().is_relative_to(Path({str(installed)!r}).resolve()), xai_bench.__file__
        counts = {{d: len(study_rois.masks(d)) for d in study_rois.DATASETS}}
        raw = Path("raw/esophagitis"); raw.mkdir(parents=True)
        (Path("raw/normal-z-line")).mkdir()
        src = study_rois.path("kvasir") / "{KVASIR_STEM}.png"  # any image named after a study mask
        for name in ("{KVASIR_STEM}.jpg", "a.jpg", "b.jpg"):
            (raw / name).write_bytes(src.read_bytes())
        for name in ("c.jpg", "d.jpg", "e.jpg"):
            (Path("raw/normal-z-line") / name).write_bytes(src.read_bytes())
        report = run(["kvasir", "--raw", "raw", "--out", "out", "--resize", "none"])
        print(json.dumps({{"counts": counts, "spaces": str(study_rois.masks("cp_child")[0].name),
                          "attached": report.rois["attached"]}}))
    """)  # noqa: E501 (the script's assert line)
    env = {"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["counts"] == {"cp_child": 50, "duke": 50, "kvasir": 50, "mura": 50}
    assert " " in found["spaces"] and found["attached"] == 1
    with zipfile.ZipFile(next((installed.parent / "dist").glob("*.whl"))) as archive:
        names = [n for n in archive.namelist() if n.startswith("xai_bench/data/study_rois/")]
    assert len([n for n in names if n.endswith(".png")]) == 200
    assert ({"xai_bench/data/study_rois/README.md", "xai_bench/data/study_rois/LICENSE"}
            <= set(names))
