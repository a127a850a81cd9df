"""Keeping a dataset's file references inside its folder.

A labels.csv, a mask folder or a prepare script's CSV may come from someone else: a row
`../../../../etc/passwd`, an absolute path, or a symlink pointing out of the folder must not make
xai_bench read (or copy into a prepared dataset) files that lie beside the dataset. Paths are
resolved the way opening them would resolve them ('..' after symlinks), then must lie inside the
resolved folder. A folder that is itself a symlink (data/kvasir -> /mnt/big/kvasir) is fine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["is_within", "paths_outside"]


def is_within(real: str, folder_real: str) -> bool:
    """`real` (a resolved path) is `folder_real` (resolved) or lies below it."""
    return real == folder_real or real.startswith(folder_real.rstrip(os.sep) + os.sep)


def paths_outside(folder: str | Path, paths: Sequence[str | Path]) -> list[int]:
    """Indices of `paths` that lead outside `folder` once resolved: absolute paths elsewhere,
    `..` climbing out, symlinks pointing out. Each parent folder is resolved once, so a large
    table costs about one lstat per file."""
    folder_real = os.path.realpath(folder)
    parents: dict[str, str] = {}
    outside: list[int] = []
    for index, path in enumerate(paths):
        text = os.fspath(path)
        parent, name = os.path.split(text)
        if name in ("", ".", "..") or os.path.islink(text):
            real = os.path.realpath(text)
        else:
            if parent not in parents:
                parents[parent] = os.path.realpath(parent or ".")
            real = os.path.join(parents[parent], name)
        if not is_within(real, folder_real):
            outside.append(index)
    return outside
