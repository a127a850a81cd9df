"""Shared fixtures: composed configs, a clean environment for W&B, the repository root."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from xai_bench.tracking.resolvers import register_resolvers

# the entry points register conf/'s resolvers when imported; tests compose configs without them
register_resolvers()

# `make test` runs one pytest-xdist worker per core: each worker's torch, and the CLI runs it
# starts (they inherit the variable), get their share of the cores; two workers of two threads
# each on two cores slow torch down several-fold
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1)))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach a network service from a test: W&B offline, hub offline."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")


@pytest.fixture
def compose_cfg() -> Iterator:
    """compose_cfg(*overrides) -> the composed train config (hydra node included, unresolved)."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(args: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None):
    """Run `python -m <args>` as a user would, in `cwd`, and return the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout
    )


# a tiny finished training run (seconds on a CPU) that CLI tests rerun, resume or evaluate
TINY_RUN = ["debug=tiny", "dataset.num_train=64", "dataset.num_val=32", "dataset.num_test=32",
            "logger=none", "print_config=false"]


def fails_cleanly(proc, *needles: str) -> str:
    """Assert a CLI run failed as a user-fixable error: exit 2, no traceback, one `error:` line
    holding every needle; returns that line."""
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run, kept as a read-only template; `run_copy` restores it at the path it
    was trained in (checkpoints record their folder: Lightning versions files of a moved run)."""
    base = tmp_path_factory.mktemp("finished")
    out = base / "run"
    proc = run_cli(["xai_bench.train", *TINY_RUN, f"hydra.run.dir={out}"], cwd=base, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    template = base / "template"
    out.rename(template)
    return template


@pytest.fixture
def run_copy(finished_run: Path) -> Iterator[Path]:
    """A fresh copy of `finished_run` at its training path, removed afterwards."""
    import shutil

    out = finished_run.parent / "run"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(finished_run, out)
    yield out
    shutil.rmtree(out, ignore_errors=True)
