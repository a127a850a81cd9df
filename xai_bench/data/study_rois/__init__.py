"""The reference study's 200 evaluation ROI masks (50 per study dataset), shipped as package data.

They are what makes the study's localisation evaluation reproducible from an installed
xai_bench: the prepare scripts of cp_child, duke, kvasir and mura attach them by default
(`--rois study`). Provenance and licence: README.md and LICENSE in this folder.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

from xai_bench.utils.errors import ConfigError

__all__ = ["DATASETS", "masks", "path"]

DATASETS: tuple[str, ...] = ("cp_child", "duke", "kvasir", "mura")
_extracted: dict[str, Path] = {}


def path(dataset: str) -> Path:
    """The folder of `dataset`'s study ROI masks (one 224x224 PNG per evaluation image stem)."""
    if dataset not in DATASETS:
        raise ConfigError(
            f"the reference study published ROI masks for {', '.join(DATASETS)} only, "
            f"not {dataset!r}: "
            "pass a folder of your own masks (--rois <folder>) or none (--rois none)."
        )
    folder = resources.files(__name__) / dataset
    if isinstance(folder, Path):  # an ordinary installation (or a source checkout)
        return folder
    if dataset not in _extracted:  # a zipped installation: the masks need real files
        target = Path(tempfile.mkdtemp(prefix=f"xai_bench_study_rois_{dataset}_"))
        for entry in folder.iterdir():
            if entry.name.endswith(".png"):
                with entry.open("rb") as src, open(target / entry.name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        _extracted[dataset] = target
    return _extracted[dataset]


def masks(dataset: str) -> list[Path]:
    """The mask files of `dataset`, sorted by name."""
    return sorted(path(dataset).glob("*.png"))
