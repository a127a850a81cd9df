"""The code base stays ruff-clean (the rules are in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def test_ruff_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "xai_bench", "tests", "scripts"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_repository_cites_no_document_users_do_not_have() -> None:
    """Code, configs, docs and tests cite papers or the docs, never the developers' brief."""
    import re

    pattern = re.compile("SP" + r"EC \d|\.\./shar" + "ed")  # split: this file must not match itself
    offenders = []
    for folder in ("xai_bench", "conf", "tests", "scripts"):
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".yaml", ".md", ".sh", ".txt"}:
                text = path.read_text(encoding="utf-8", errors="replace")
                offenders += [f"{path.relative_to(REPO_ROOT)}:{n}" for n, line in
                              enumerate(text.splitlines(), 1) if pattern.search(line)]
    for name in ("README.md", "Makefile", "pyproject.toml"):
        text = (REPO_ROOT / name).read_text(encoding="utf-8")
        offenders += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1)
                      if pattern.search(line)]
    assert not offenders, offenders
