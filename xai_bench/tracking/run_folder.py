"""The run-folder contract that evaluation and reports build on.

<run>/config.yaml         resolved config + `meta` (git revision, package version, start time)
<run>/checkpoints/        best.ckpt (lowest validation loss) and last.ckpt
<run>/metrics.json        final validation and test metrics of best.ckpt, best_epoch
<run>/wandb/              the W&B offline run
"""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import xai_bench
from xai_bench.utils.git import git_revision

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


def run_metadata() -> dict[str, Any]:
    return {
        "git": git_revision(),
        "xai_bench_version": xai_bench.__version__,
        "python": platform.python_version(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config with every interpolation resolved, plus run metadata under `meta`."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(container, dict)
    container["meta"] = run_metadata()
    return container


def write_config(container: dict[str, Any], output_dir: str | Path) -> Path:
    path = Path(output_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(container)))
    return path


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> JSON numbers; NaN/inf -> null (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(metrics: dict[str, Any], output_dir: str | Path) -> Path:
    path = Path(output_dir) / METRICS_FILE
    plain = {k: ({kk: _plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else _plain(v)) for k, v in metrics.items()}
    path.write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")
    return path
