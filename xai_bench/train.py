"""Train a classifier: `python -m xai_bench.train dataset=kvasir init=dino`.

Thin entry point: Hydra composes the config (conf/train.yaml), `train` builds the parts from it
and fills the run folder (see xai_bench.tracking.run_folder for the contract).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from xai_bench.models import load_checkpoint_safely
from xai_bench.models.weights import load_trained_network
from xai_bench.modules import BestEpochTracker
from xai_bench.tracking import resolve_checkpoint, resolved_config, write_config, write_metrics
from xai_bench.tracking.cluster import record_attempt, resume_checkpoint, slurm_job
from xai_bench.utils.class_weights import resolve_class_weights
from xai_bench.utils.instantiate import instantiate_callbacks, instantiate_loggers
from xai_bench.utils.rich_config import print_config_tree
from xai_bench.utils.task import run_entry, task_wrapper

log = logging.getLogger(__name__)


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path or None


def _best_epoch(trainer: pl.Trainer) -> int | None:
    for callback in trainer.callbacks:
        if isinstance(callback, BestEpochTracker):
            return callback.best_epoch
    return None


def _cluster_plugins(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Under SLURM the launcher (submitit) requeues interrupted jobs: Lightning must not too."""
    if slurm_job() is None or trainer_cfg.get("plugins"):
        return {}
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint on validation and test; returns metrics.json."""
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    # Cheap checks first: a missing dataset or weights file fails before anything is built.
    datamodule = hydra.utils.instantiate(cfg.dataset)
    if hasattr(datamodule, "check"):
        datamodule.check()
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = cfg.get("ckpt_path") or resume_checkpoint(output_dir, cfg.get("resume"))
    resumed_at: dict[str, Any] | None = None
    if ckpt_path:
        state = load_checkpoint_safely(ckpt_path)  # refuses pickled objects before Lightning sees it
        resumed_at = {"checkpoint": str(ckpt_path), "epoch": state.get("epoch"), "global_step": state.get("global_step")}
        del state
    net = hydra.utils.instantiate(cfg.model)
    if cfg.get("init_from"):  # a trained network of this task, head included (ATCON unsupervised)
        load_trained_network(net, resolve_checkpoint(cfg.init_from))
        log.info("network weights (head included) from %s", cfg.init_from)

    class_weights = resolve_class_weights(cfg.module.get("class_weights"), datamodule, cfg.dataset.num_classes)
    module = hydra.utils.instantiate(
        cfg.module,
        net=net,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        class_weights=class_weights,
    )
    if module.uses_unlabeled:  # e.g. ATCON: training batches become labelled + unlabeled pairs
        datamodule.pair_with_unlabeled()
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **_cluster_plugins(cfg.trainer)
    )

    config = resolved_config(cfg)
    if trainer.is_global_zero:
        write_config(config, output_dir)
        attempt = record_attempt(output_dir, resumed_at)
        log.info("run folder: %s%s", output_dir, f" (SLURM job {attempt['slurm']['job_id']})" if attempt["slurm"] else "")
        if resumed_at:
            log.info("resuming from %s (epoch %s done)", ckpt_path, resumed_at["epoch"])
    study_row = cfg.get("study_row")
    if study_row and study_row.optimizer != cfg.optimizer.name:
        log.warning(
            "the study trained %s x %s with %s; this run uses optimizer=%s",
            cfg.dataset.name, cfg.init.name, study_row.optimizer, cfg.optimizer.name,
        )
    for logger in loggers:
        logger.log_hyperparams(config)

    if cfg.get("train"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)

    best = _best_checkpoint(trainer)
    metrics: dict[str, Any] = {
        "best_epoch": _best_epoch(trainer),
        "best_checkpoint": best,
        "epochs_trained": trainer.current_epoch,
        "world_size": trainer.world_size,
        "study_saved_epoch": study_row.saved_epoch if study_row else None,
        "resumed_from": resumed_at,
        "slurm_job": slurm_job(),
    }
    if cfg.get("test"):
        ckpt = best if best else None
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)
        test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)
        metrics["val"] = {k.removeprefix("val/"): v for k, v in val[0].items()} if val else {}
        metrics["test"] = {k.removeprefix("test/"): v for k, v in test[0].items()} if test else {}
    if trainer.is_global_zero:
        write_metrics(metrics, output_dir)
        (output_dir / "error.txt").unlink(missing_ok=True)  # an interrupted attempt's, now resolved
        if metrics["best_epoch"] is not None:
            for logger in loggers:
                logger.log_metrics({"best_epoch": metrics["best_epoch"]})
        summary_line = ", ".join(
            f"{split} acc {metrics[split]['acc']:.3f}" for split in ("val", "test") if metrics.get(split, {}).get("acc") is not None
        )
        log.info("done (best epoch %s%s). Run folder: %s", metrics["best_epoch"], f"; {summary_line}" if summary_line else "", output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_entry(train, cfg)


if __name__ == "__main__":
    main()
