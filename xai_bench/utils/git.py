"""The code revision a run was made with, saved beside its config."""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_revision(path: Path = PACKAGE_DIR) -> dict[str, object]:
    """Commit, branch and dirty flag of the checkout holding `path` (the installed package).

    Outside a git checkout (a wheel install) the commit is "unknown" rather than an error: the
    package version is still recorded.
    """
    commit = _git("rev-parse", "HEAD", cwd=path)
    if commit is None:
        return {"commit": "unknown", "branch": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=path)
    return {
        "commit": commit,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD", cwd=path),
        "dirty": bool(status),
    }
