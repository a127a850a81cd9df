"""`make demo` = `python -m xai_bench.train` with defaults: it must actually learn the task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run

pytestmark = pytest.mark.slow


def test_default_run_reaches_the_accuracy_goal(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run_cli(["xai_bench.train", f"hydra.run.dir={out}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["acc"] >= 0.90
    assert metrics["test"]["acc"] >= 0.90
    run = read_offline_run(offline_run_dirs(out)[0])
    assert len(run.metric("val/acc")) >= 8  # one per epoch, plus the final validation
    assert max(run.metric("val/acc")) >= 0.90
    assert run.metric("train/loss_epoch")[-1] < run.metric("train/loss_epoch")[0]
