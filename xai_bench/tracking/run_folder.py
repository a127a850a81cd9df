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
from xai_bench.utils.errors import XaiBenchError
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
    """Tensors and numpy scalars -> JSON numbers, recursively; NaN/inf -> null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(metrics: dict[str, Any], output_dir: str | Path) -> Path:
    path = Path(output_dir) / METRICS_FILE
    path.write_text(json.dumps(_plain(metrics), indent=2, sort_keys=True) + "\n")
    return path


CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")


def resolve_checkpoint(ckpt: str | Path) -> Path:
    """A checkpoint file, or a run folder (-> its checkpoints/best.ckpt, else last.ckpt)."""
    path = Path(ckpt).expanduser()
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise XaiBenchError(f"no checkpoint in {path.resolve()}/checkpoints/ (looked for {', '.join(CHECKPOINT_NAMES)}).")
    if not path.is_file():
        raise XaiBenchError(
            f"checkpoint not found: {path.resolve()}. Pass ckpt=<run folder>/checkpoints/best.ckpt "
            "(or the run folder itself) of a finished training run."
        )
    return path


def find_run_config(checkpoint: Path, run_config: str | Path | None = None) -> Path:
    """The training run's config.yaml: given explicitly, else <run>/config.yaml for a
    checkpoint at <run>/checkpoints/<name>.ckpt (or next to the checkpoint)."""
    if run_config:
        path = Path(run_config).expanduser()
        if not path.is_file():
            raise XaiBenchError(f"run_config={run_config} does not exist.")
        return path
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    raise XaiBenchError(
        f"no {CONFIG_FILE} found for {checkpoint} (looked in {checkpoint.parent.parent} and {checkpoint.parent}). "
        "Evaluation rebuilds the model and data from the training run's config: pass "
        "run_config=<path to the training run's config.yaml>."
    )


def load_run_config(path: str | Path) -> DictConfig:
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "model" not in cfg or "dataset" not in cfg:
        raise XaiBenchError(f"{path} is not a training run's config.yaml (it has no model/dataset sections).")
    return cfg
