"""Explain a trained classifier and score the maps:
`python -m xai_bench.evaluate ckpt=... method=chefer`.

Thin entry point: Hydra composes conf/evaluate.yaml; the model and the data are rebuilt from the
training run's config.yaml, the weights come from the checkpoint (read with weights_only=True),
and an ExplanationEvaluator runs under a Lightning Trainer (one or many devices). The run folder
gets config.yaml, metrics.json, per_image.csv, overlays/ and the W&B offline run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict

from xai_bench.explain import build_method
from xai_bench.models import load_checkpoint_safely
from xai_bench.modules.evaluator import ExplanationEvaluator, check_precision
from xai_bench.modules.trained_run import RUN_SECTIONS, build_datamodule, load_network
from xai_bench.report import flat_scalars, per_image_rows, summarise, write_per_image_csv
from xai_bench.tracking import resolve_checkpoint, resolved_config, write_config
from xai_bench.tracking.records import EvaluationSummary
from xai_bench.tracking.resolvers import register_resolvers, training_config
from xai_bench.tracking.run_folder import run_of
from xai_bench.tracking.task import task_wrapper
from xai_bench.utils.errors import ConfigError, XaiBenchError
from xai_bench.utils.instantiate import (
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_node,
    start_loggers,
)
from xai_bench.utils.quiet import silence_library_noise
from xai_bench.utils.rich_config import print_config_tree
from xai_bench.utils.task import run_entry

log = logging.getLogger(__name__)
register_resolvers()  # before Hydra composes conf/ (${xai.*}, ${run:*})

def _methods(cfg: DictConfig) -> dict[str, Any]:
    """The configured method, then the baselines with their default settings
    (conf/method/<name>.yaml defaults), so a baseline scores the same in every run and as
    method=<name> itself."""
    methods = {str(cfg.method.name): hydra.utils.instantiate(cfg.method)}
    for name in cfg.get("baselines") or []:
        methods.setdefault(str(name), build_method(str(name)))
    return methods


def _table_cell(value: Any) -> Any:
    return None if value == "" else value  # W&B tables type-check columns: a gap is None


def _log_to_loggers(loggers: list, summary: EvaluationSummary, rows: list[dict[str, Any]],
                    overlay_dir: Path) -> None:
    scalars = flat_scalars(summary.to_dict())
    for logger in loggers:
        logger.log_metrics(scalars)
        if hasattr(logger, "log_table") and rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            logger.log_table(key="eval/per_image", columns=columns,
                             data=[[_table_cell(row.get(c)) for c in columns] for row in rows])
        if hasattr(logger, "log_image"):
            for method_dir in sorted(p for p in overlay_dir.glob("*") if p.is_dir()):
                images = sorted(method_dir.glob("*.png"))
                if images:
                    logger.log_image(key=f"eval/overlays/{method_dir.name}",
                                     images=[str(p) for p in images],
                                     caption=[p.stem for p in images])


def _print_summary(summary: EvaluationSummary) -> None:
    lines = [f"accuracy {summary.accuracy:.3f} on {summary.images} images"]
    for method, entry in summary.methods.items():
        scores = ", ".join(
            f"{name} {stats['value']:.3f}" for name, stats in entry.metrics.items()
            if stats["value"] == stats["value"] and "/" not in name
        )
        lines.append(f"{method:>16}: {scores}")
    log.info("evaluation:\n%s", "\n".join(lines))


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Explain the split with the method and the baselines, score, write the run folder."""
    run_cfg = training_config(cfg)  # clear errors for a missing ckpt / config before anything else
    checkpoint = resolve_checkpoint(cfg.ckpt)
    # the training run's sections as real nodes (loggers interpolate into them)
    with open_dict(cfg):
        for section in RUN_SECTIONS:
            cfg[section] = run_cfg[section]
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    # half weights: refused before any file
    check_precision(str(cfg.trainer.get("precision", "32-true")))

    datamodule = build_datamodule(cfg, run_cfg)
    # read once, safely
    net = load_network(run_cfg.model, checkpoint, load_checkpoint_safely(checkpoint))
    methods = _methods(cfg)
    metrics = {str(key): hydra.utils.instantiate(node)
               for key, node in (cfg.get("metric") or {}).items()}
    loader = datamodule.eval_dataloader(cfg.split, cfg.get("max_images"))
    ids = list(getattr(loader.dataset, "indices", range(len(loader.dataset))))
    output_dir = Path(cfg.paths.output_dir)
    mean, std = datamodule.input_normalization()

    def image_name(index: int) -> str:
        return datamodule.image_name(cfg.split, index)

    module = ExplanationEvaluator(
        net, methods, metrics, num_classes=int(run_cfg.dataset.num_classes), mean=mean, std=std,
        overlay_ids=ids[: int(cfg.get("overlays") or 0)], overlay_dir=output_dir / "overlays",
        image_names=image_name, multilabel=bool(run_cfg.dataset.get("multilabel", False)),
        allow_tf32=bool(cfg.get("allow_tf32", False)),
    )
    if (cfg.split != "roi" and module.requires_mask
            and not any(getattr(loader.dataset, "has_mask", [True]))):
        raise ConfigError(f"the localisation metrics need ROI masks, and split={cfg.split} has "
                          "none: use split=roi.")
    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    trainer: pl.Trainer = instantiate_node(cfg.trainer, "trainer", logger=loggers or False,
                                           callbacks=callbacks)
    config = resolved_config(cfg)
    if trainer.is_global_zero:
        start_loggers(loggers)  # a W&B failure (no API key) stops here, before any file is written
        write_config(config, output_dir)
    for logger in loggers:
        logger.log_hyperparams(config)

    trainer.test(module, dataloaders=loader, verbose=False)

    boot = cfg.bootstrap
    summary = EvaluationSummary.from_dict(
        summarise(module.results, {m: module.metric_objects(m) for m in methods},
                  int(run_cfg.dataset.num_classes), int(boot.samples), float(boot.level),
                  int(boot.seed))
    )
    summary.checkpoint = str(checkpoint.resolve())
    summary.training_run = str(run_of(checkpoint.resolve()))
    summary.split = cfg.split
    summary.method = str(cfg.method.name)
    summary.baselines = [m for m in methods if m != cfg.method.name]
    summary.world_size = trainer.world_size
    all_nan = nan_map_methods(summary)
    if trainer.is_global_zero:
        rows = per_image_rows(module.results, image_name)
        write_per_image_csv(rows, output_dir / "per_image.csv")
        if not all_nan:
            summary.write(output_dir)
            _log_to_loggers(loggers, summary, rows, output_dir / "overlays")
            _print_summary(summary)
        log.info("Run folder: %s", output_dir)
    if all_nan:  # every rank holds the same gathered summary: all stop here
        raise XaiBenchError(
            f"every map of {', '.join(all_nan)} is NaN ({summary.images} images), so its scores "
            f"are meaningless: no metrics.json was written (per_image.csv in {output_dir} has the "
            "rows, nan_map=1). A diverged training run has NaN weights (check the training run's "
            "metrics.json and train.log); otherwise check the method's settings (method.*)."
        )
    return summary.to_dict()


def nan_map_methods(summary: EvaluationSummary) -> list[str]:
    """The methods whose every map is NaN (warning for those with some NaN maps)."""
    images = summary.images or 0
    failed = []
    for method, entry in summary.methods.items():
        nan_maps = entry.nan_maps
        if images and nan_maps == images:
            failed.append(method)
        elif nan_maps:
            log.warning("%d of %d maps of %s are NaN: its scores leave those images out",
                        nan_maps, images, method)
    return failed


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    silence_library_noise()
    run_entry(evaluate, cfg)


if __name__ == "__main__":
    main()
