"""Sweeps as folders: naming a sweep's W&B group, and finding the training runs a sweep left.

`python -m xai_bench.evaluate -m experiment=study_eval train_sweep=DIR` evaluates every
checkpoint of a training sweep: the sweeper's `ckpt` axis is the list found here.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from xai_bench.tracking.records import read_plain_config
from xai_bench.tracking.run_folder import CHECKPOINT_DIR, CONFIG_FILE, run_of
from xai_bench.utils.errors import ConfigError

BEST_CHECKPOINT = Path(CHECKPOINT_DIR) / "best.ckpt"


def sweep_group(fallback: str) -> str:
    """The W&B group of this job: shared by every job of a `-m` sweep, `fallback` for a single run.

    The name is the experiment (or task) and the sweep folder's timestamp, so two sweeps of the
    same experiment stay apart and a requeued SLURM job lands in the same group again.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # composed outside a Hydra app (tests, notebooks)
        return fallback
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return fallback
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    name = OmegaConf.select(hydra_cfg, "runtime.choices.experiment") or hydra_cfg.job.name
    stamp = "_".join(sweep_dir.parts[-2:]) if len(sweep_dir.parts) >= 2 else sweep_dir.name
    return f"{name}-{stamp}"


def _is_training_run(folder: Path) -> bool:
    if not (folder / BEST_CHECKPOINT).is_file():
        return False
    # plain YAML: OmegaConf would resolve an interpolation planted in task_name
    values = read_plain_config(folder)
    return values is not None and values.get("task_name") == "train"


def _job_number(folder: Path) -> tuple[int, str]:
    head = folder.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, folder.name)


def training_runs(sweep_dir: str | Path) -> list[Path]:
    """Training run folders with a best checkpoint below `sweep_dir`, in job-number order."""
    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"train_sweep={sweep_dir} is not a folder: pass the folder of a training sweep "
            "(outputs/train/multiruns/<date>/<time>, "
            "printed by `python -m xai_bench.train -m ...`)."
        )
    found = {run_of(p) for p in root.rglob(str(BEST_CHECKPOINT))}
    runs = sorted((run for run in found if _is_training_run(run)), key=_job_number)
    if not runs:
        raise ConfigError(
            f"no finished training run (a folder with {CONFIG_FILE} and {BEST_CHECKPOINT}) "
            f"below {root.resolve()}: pass train_sweep=<the folder of a "
            "`python -m xai_bench.train -m` sweep> whose jobs finished."
        )
    return runs


def _quote(path: Path) -> str:
    text = str(path.resolve())
    if "'" in text:
        raise ConfigError(
            f"cannot sweep over {text}: the path holds a single quote; rename the folder.")
    return f"'{text}'"


def sweep_values(sweep_dir: str | Path) -> str:
    """The training runs of a sweep as a Hydra sweep value: 'run1','run2',..."""
    return ",".join(_quote(p) for p in training_runs(sweep_dir))
