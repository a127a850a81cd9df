"""A full disk, said in one line: which file, which folder, how much room is left.

Used by the atomic writes of xai_bench.tracking.run_folder and by the entry points' error
handling (xai_bench.utils.task.user_error), which is why it lives below both.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from xai_bench.utils.errors import XaiBenchError

__all__ = [
    "NO_SPACE_ERRNOS",
    "DiskFullError",
    "disk_full_cause",
    "disk_full_message",
    "free_space",
    "is_disk_full",
]

# errnos of a full disk or an exhausted quota
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(XaiBenchError):
    """No space left (or the quota is exhausted) while writing a run file; the previous version
    of the file, if any, is intact."""


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop always returns


def free_space(folder: str | os.PathLike[str]) -> str:
    """'<free> free of <total>' on the filesystem of `folder` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "free space unknown"
    return f"{_human_size(usage.free)} free of {_human_size(usage.total)}"


_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.\d+\.[0-9a-f]{8}\.tmp$")


def disk_full_message(path: str | os.PathLike[str] | None) -> str:
    """One line: which file, which folder, how much room is left, and what to do."""
    file = Path(path if path is not None else ".").absolute()
    temp = _TEMP_NAME.match(file.name)
    if temp:  # atomic_open's temporary file: name the file being written
        file = file.with_name(temp.group("target"))
    where = (
        f"{file.name} in {file.parent}" if path is not None else f"a file (working folder {file})"
    )
    return (
        f"disk full while writing {where} ({free_space(file if path is None else file.parent)}): "
        "free space there (or point paths.log_dir / hydra.run.dir to a disk with room) and run the "
        "same command again; the files written before are intact."
    )


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS


def disk_full_cause(err: BaseException) -> OSError | None:
    """The full-disk OSError in the chain of `err` (torch.save, for one, re-raises a failed write
    as a RuntimeError whose context is the OSError), else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if is_disk_full(current):
            assert isinstance(current, OSError)
            return current
        current = current.__cause__ or current.__context__
    return None
