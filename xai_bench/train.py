"""Train a classifier: `python -m xai_bench.train dataset=kvasir init=dino`.

Thin entry point: Hydra composes the config (conf/train.yaml), `train` builds the parts from it
and fills the run folder (see xai_bench.tracking.run_folder for the contract).

An attempt validates everything it can before it writes a file (config values, the optimizer
and schedule it will build, the checkpoint it continues from against the model, that the run
folder holds this run, W&B): a refused rerun into a finished run folder changes nothing there.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from xai_bench.models import load_checkpoint_safely
from xai_bench.models.weights import state_dict_mismatch
from xai_bench.modules import BestEpochTracker
from xai_bench.modules.callbacks import AtomicCheckpointIO, NonFiniteLossError
from xai_bench.modules.preflight import check_inputs
from xai_bench.modules.reliance import measure_reliance
from xai_bench.tracking import resolved_config
from xai_bench.tracking.cluster import (
    RESUMABLE_KEYS,
    ResumePoint,
    find_resume_point,
    next_attempt,
    record_attempt,
    resume_mode,
    slurm_job,
)
from xai_bench.tracking.lineage import declare_training_inputs
from xai_bench.tracking.records import TrainingRecord, clear_error
from xai_bench.tracking.resolvers import register_resolvers
from xai_bench.tracking.run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    archive_earlier_attempt,
    saved_checkpoints,
    start_attempt,
)
from xai_bench.tracking.search import optimized_value
from xai_bench.tracking.task import task_wrapper
from xai_bench.utils.errors import ConfigError, XaiBenchError
from xai_bench.utils.instantiate import (
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_node,
    start_loggers,
    unexpected_keyword,
    unknown_setting,
)
from xai_bench.utils.quiet import silence_library_noise
from xai_bench.utils.rich_config import print_config_tree
from xai_bench.utils.task import run_entry

log = logging.getLogger(__name__)
register_resolvers()  # before Hydra composes conf/ (${xai.*}, ${run:*})


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path or None


def _best_epoch(trainer: pl.Trainer) -> int | None:
    for callback in trainer.callbacks:
        if isinstance(callback, BestEpochTracker):
            return callback.best_epoch
    return None


def _trainer_plugins(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Checkpoint saves that never leave a truncated file (AtomicCheckpointIO); under SLURM the
    launcher (submitit) requeues interrupted jobs, so Lightning must not too. A config that sets
    trainer.plugins itself keeps exactly its own."""
    if trainer_cfg.get("plugins"):
        log.info("trainer.plugins is set: checkpoint saves use its plugins, not AtomicCheckpointIO")
        return {}
    plugins: list[Any] = [AtomicCheckpointIO()]
    if slurm_job() is not None:
        from lightning_fabric.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    return {"plugins": plugins}


def _resume_point(cfg: DictConfig, output_dir: Path) -> ResumePoint:
    """What this attempt continues from: the run folder's own checkpoint when `resume` allows
    (a requeued job, even one first started from ckpt_path), else `ckpt_path`, else nothing."""
    point = find_resume_point(output_dir, cfg.get("resume"))
    explicit = cfg.get("ckpt_path")
    if explicit and not Path(str(explicit)).expanduser().is_file():
        raise XaiBenchError(f"ckpt_path={explicit}: no such file. Pass a checkpoint of a "
                            "training run (<run>/checkpoints/last.ckpt), or leave ckpt_path unset.")
    if point.checkpoint is not None:
        if explicit:
            log.info("continuing this run folder's own %s (ckpt_path=%s was where it started)",
                     point.checkpoint, explicit)
        return point
    if not explicit:
        return point
    path = Path(str(explicit)).expanduser()
    state = load_checkpoint_safely(path)  # refuses pickled objects before Lightning sees it
    missing = [key for key in RESUMABLE_KEYS if key not in state]
    if missing:
        raise XaiBenchError(
            f"ckpt_path={explicit} is not a full training checkpoint (no {', '.join(missing)}), so "
            f"training cannot continue from it: to start from its weights, "
            f"use init_from={explicit}."
        )
    return ResumePoint(checkpoint=path, state=state, skipped=point.skipped)


def _check_resume_fits(module: pl.LightningModule, point: ResumePoint, output_dir: Path) -> None:
    """The checkpoint to continue from must fit the model this config builds: Lightning's own
    strict load would fail only after the config was written (a size-mismatch traceback)."""
    assert point.state is not None
    problem = state_dict_mismatch(
        module.state_dict(), point.state.get("state_dict", {}),
        check_keys=getattr(module, "strict_loading", True)
    )
    if problem is None:
        return
    own = point.checkpoint is not None and point.checkpoint.parent == output_dir / CHECKPOINT_DIR
    if own:
        fix = (
            f"this run folder holds a run with other model settings: continue it with the settings "
            f"in its {CONFIG_FILE}, or train into a new folder (hydra.run.dir=...)"
        )
    else:
        fix = "pass a checkpoint of this model (or the model settings it was trained with)"
    raise XaiBenchError(
        f"{point.checkpoint} does not fit the model this config builds ({problem}): {fix}.")


def _check_run_folder(cfg: DictConfig, output_dir: Path, point: ResumePoint) -> bool:
    """A run folder holds one training run: a fit that would not continue from the checkpoints
    already there is refused (its files would mix with theirs). Returns True when this attempt
    starts over in the folder (resume=fresh, nothing readable to continue from)."""
    if not cfg.get("train"):
        return False
    existing = saved_checkpoints(output_dir)
    if not existing or (point.checkpoint is not None and point.checkpoint in existing):
        return False
    mode = resume_mode(cfg.get("resume"))
    if mode == "fresh" and point.checkpoint is None:
        return True
    why = f"ckpt_path={cfg.ckpt_path}" if point.checkpoint is not None else "resume=false"
    names = ", ".join(p.name for p in existing[:4])
    raise XaiBenchError(
        f"{output_dir} already holds checkpoints of an earlier run ({names}) and this attempt "
        f"would not continue from them ({why}): train into a new folder (hydra.run.dir=...), or "
        "continue this run with resume=true."
    )


def _check_optimization(module: pl.LightningModule, cfg: DictConfig) -> None:
    """Build the optimizer and the schedule once, in memory, as configure_optimizers will: a bad
    value (optimizer.lr=-1) or a mistyped key (+optimizer.lrr=1) fails now, not inside fit."""
    optimizer_factory = getattr(module, "optimizer_factory", None)
    if optimizer_factory is None:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        optimizer = optimizer_factory(params=params)
    except TypeError as err:
        name = unexpected_keyword(err)
        if name is None:
            raise
        raise unknown_setting("optimizer", name, cfg.optimizer.get("_target_")) from err
    scheduler_factory = getattr(module, "scheduler_factory", None)
    if scheduler_factory is None:
        return
    max_epochs = cfg.trainer.get("max_epochs")
    if scheduler_factory.interval == "epoch" and (max_epochs is None or int(max_epochs) < 1):
        raise ConfigError(
            "the cosine schedule needs a finite trainer.max_epochs (T_max = max epochs).")
    scheduler_factory(optimizer=optimizer, total=max(int(max_epochs or 1), 1))


# the nodes conf/module/ interpolates from top-level groups: a mistyped key is theirs
_MODULE_PARTS = {"net": "model", "optimizer": "optimizer", "scheduler": "scheduler",
                 "objective": "objective"}
_FULL_KEY = re.compile(r"full_key: module\.(\w+)")


def _build_module(cfg: DictConfig, datamodule: Any) -> pl.LightningModule:
    """conf/module/ with its network, optimizer, schedule and objective; "balanced" class
    weights come from the data module's training labels. A mistyped key (`+model.foo=1`) is
    reported under the group the user typed it in."""
    try:
        return hydra.utils.instantiate(cfg.module, train_labels=datamodule.train_labels)
    except Exception as err:
        name = unexpected_keyword(err)
        if name is None:
            raise
        part = _FULL_KEY.search(str(err))  # Hydra names the node that failed
        section = _MODULE_PARTS.get(part.group(1), "module") if part else "module"
        raise unknown_setting(section, name, cfg[section].get("_target_")) from err


def _start_run(cfg: DictConfig, trainer: pl.Trainer, loggers: list, point: ResumePoint,
               fresh_start: bool) -> None:
    """Validated: start this attempt in the run folder (rank 0), its loggers and their config."""
    config = resolved_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    resumed_at = point.summary()
    if trainer.is_global_zero:
        start_loggers(loggers)  # a W&B failure (no API key) stops here, before any file is written
        attempt = next_attempt(output_dir)
        archive_earlier_attempt(output_dir, attempt - 1, move_results=fresh_start)
        start_attempt(output_dir, config, attempt)
        skipped = {"skipped_checkpoints": point.skipped} if point.skipped else {}
        entry = record_attempt(output_dir, resumed_at, attempt, **skipped)
        slurm = f" (SLURM job {entry['slurm']['job_id']})" if entry["slurm"] else ""
        log.info("run folder: %s, attempt %d%s", output_dir, attempt, slurm)
        if resumed_at:
            log.info("resuming from %s (epoch %s done)", point.checkpoint, resumed_at["epoch"])
        declare_training_inputs(loggers, cfg.dataset, output_dir)  # W&B lineage: the dataset
    study_row = cfg.get("study_row")
    if study_row and study_row.optimizer != cfg.optimizer.name:
        log.warning(
            "the study trained %s x %s with %s; this run uses optimizer=%s",
            cfg.dataset.name, cfg.init.name, study_row.optimizer, cfg.optimizer.name,
        )
    for logger in loggers:
        logger.log_hyperparams(config)


def _run_summary(cfg: DictConfig, trainer: pl.Trainer,
                 resumed_at: dict[str, Any] | None) -> dict[str, Any]:
    """The training half of metrics.json: best epoch and checkpoint, length, where it resumed."""
    study_row = cfg.get("study_row")
    return {
        "best_epoch": _best_epoch(trainer),
        "best_checkpoint": _best_checkpoint(trainer),
        "epochs_trained": trainer.current_epoch,
        "world_size": trainer.world_size,
        "study_saved_epoch": study_row.saved_epoch if study_row else None,
        "resumed_from": resumed_at,
        "slurm_job": slurm_job(),
    }


def _test_best(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any,
               best: str | None) -> dict[str, Any]:
    """Validation and test metrics of the best checkpoint (the module as it is without one)."""
    kwargs = {"datamodule": datamodule, "ckpt_path": best, "weights_only": True, "verbose": False}
    val = trainer.validate(module, **kwargs)
    test = trainer.test(module, **kwargs)
    return {
        "val": {k.removeprefix("val/"): v for k, v in val[0].items()} if val else {},
        "test": {k.removeprefix("test/"): v for k, v in test[0].items()} if test else {},
    }


def _finish_run(metrics: dict[str, Any], output_dir: Path, loggers: list) -> None:
    """metrics.json written, an interrupted attempt's error cleared, one summary line."""
    TrainingRecord.from_dict(metrics).write(output_dir)
    clear_error(output_dir)  # an interrupted attempt's, now resolved
    if metrics["best_epoch"] is not None:
        for logger in loggers:
            logger.log_metrics({"best_epoch": metrics["best_epoch"]})
    reliance = metrics.get("known_truth")
    if reliance:
        for logger in loggers:
            logger.log_metrics({f"known_truth/{name}": stats["value"]
                                for name, stats in reliance.items() if name != "counts"})
    parts = [f"{split} acc {metrics[split]['acc']:.3f}"
             for split in ("val", "test") if metrics.get(split, {}).get("acc") is not None]
    if reliance:
        parts.append(f"reliance on the marker {reliance['reliance']['value']:.3f}")
    summary_line = ", ".join(parts)
    log.info("done (best epoch %s%s). Run folder: %s", metrics["best_epoch"],
             f"; {summary_line}" if summary_line else "", output_dir)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint on validation and test; returns metrics.json."""
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    # Cheap checks first: missing data, weights or init_from fail, all in one message, before
    # anything is built.
    datamodule = check_inputs(cfg)
    output_dir = Path(cfg.paths.output_dir)
    point = _resume_point(cfg, output_dir)
    module = _build_module(cfg, datamodule)
    _check_optimization(module, cfg)
    if point.checkpoint is not None:
        _check_resume_fits(module, point, output_dir)
    fresh_start = _check_run_folder(cfg, output_dir, point)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate_node(cfg.trainer, "trainer", callbacks=callbacks,
                                           logger=loggers or False, **_trainer_plugins(cfg.trainer))

    # Validated: from here on this attempt writes into the run folder.
    _start_run(cfg, trainer, loggers, point, fresh_start)
    resumed_at, ckpt_path = point.summary(), point.checkpoint
    point.state = None  # the checkpoint's tensors: Lightning reads the file again

    if cfg.get("train"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None,
                    weights_only=True)

    metrics = _run_summary(cfg, trainer, resumed_at)
    if cfg.get("test"):
        metrics.update(_test_best(trainer, module, datamodule, metrics["best_checkpoint"]))
        # the best checkpoint's weights are loaded by the test: its reliance on the marker
        if trainer.is_global_zero and (reliance := measure_reliance(module, datamodule)):
            metrics["known_truth"] = reliance
    if trainer.is_global_zero:
        _finish_run(metrics, output_dir, loggers)
    return metrics


def _trial(cfg: DictConfig) -> dict[str, Any] | None:
    """A search's trial: hyperparameters that make the loss diverge or fill the GPU end this
    trial with the worst score (its error.txt says why), not the search."""
    try:
        return train(cfg)
    except (NonFiniteLossError, torch.cuda.OutOfMemoryError) as err:
        log.error("trial failed, the search goes on: %s", str(err).splitlines()[0])
        return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the value of `optimized_metric` (set by hparams_search=...) to the sweeper."""
    silence_library_noise()
    metric = cfg.get("optimized_metric")
    return optimized_value(run_entry(_trial if metric else train, cfg), metric)


if __name__ == "__main__":
    main()
