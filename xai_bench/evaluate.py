"""Explain a trained classifier and score the maps:
`python -m xai_bench.evaluate ckpt=... method=chefer`, or several methods in one job:
`python -m xai_bench.evaluate ckpt=... method=[attention,chefer,gradcam]`.

Thin entry point: Hydra composes conf/evaluate.yaml; the model and the data are rebuilt from the
training run's config.yaml, the weights come from the checkpoint (read with weights_only=True),
and an ExplanationEvaluator runs under a Lightning Trainer (one or many devices). The run folder
gets config.yaml, metrics.json, per_image.csv, overlays/ and the W&B offline run, for every
method of the job.

Several methods: Hydra reads a list for a config group (`method=[a,b]`) as one node merged from
all of them (b's settings over a's), so the list is the `methods` group (conf/methods/: each
option puts conf/method/<name>.yaml under methods.<name>); `method=[...]` on the command line
is rewritten to it (`method_list_alias`). With `skip_inapplicable=true`, a selected method that
does not explain the checkpoint's model kind (ViT or CNN) is left out and recorded in
metrics.json's skipped_methods, so one method list serves a sweep over both kinds.

Known truth (docs/known-truth.md): on the synthetic dataset trained with a planted marker,
`split=decorrelated` sets lesion and marker against each other; metrics.json then also holds the
model's reliance on the marker (`known_truth`), and metric=known_truth scores the maps against
both regions.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from xai_bench.explain import build_method
from xai_bench.explain.vit_geometry import is_vit
from xai_bench.metrics.base import HOW_TO_MARKER
from xai_bench.models import load_checkpoint_safely
from xai_bench.modules.evaluator import ExplanationEvaluator, check_precision
from xai_bench.modules.trained_run import RUN_SECTIONS, build_datamodule, load_network
from xai_bench.report import flat_scalars, per_image_rows, summarise, write_per_image_csv
from xai_bench.tracking import resolve_checkpoint, resolved_config, write_config
from xai_bench.tracking.dashboard import EVAL_PER_IMAGE, EVAL_SCORES, overlay_key
from xai_bench.tracking.lineage import declare_evaluation_inputs, log_evaluation_outputs
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


def _listed(methods: Any) -> list[str]:
    """The names under `methods` that are whole method configs (an experiment's settings for a
    method that the command line left out, e.g. `methods.chefer.target: 1`, are not)."""
    if not isinstance(methods, DictConfig):
        return []
    return [str(key) for key in methods
            if isinstance(methods[key], DictConfig) and "_target_" in methods[key]]


def method_names(*, _root_: DictConfig) -> list[str]:
    """${xai.eval_methods:}: the methods the job explains (run tags)."""
    return _listed(_root_.get("methods")) or [str(_root_.method.name)]


def method_label(*, _root_: DictConfig) -> str:
    """${xai.eval_label:}: the run name's suffix, `chefer` or `attention+chefer+gradcam`."""
    return "+".join(method_names(_root_=_root_))


register_resolvers()  # before Hydra composes conf/ (${xai.*}, ${run:*})
OmegaConf.register_new_resolver("xai.eval_methods", method_names, replace=True)
OmegaConf.register_new_resolver("xai.eval_label", method_label, replace=True)


def _command_line() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def selected_methods(cfg: DictConfig) -> dict[str, DictConfig]:
    """name -> config of the methods this job explains: `methods` when given, else `method`.
    With `methods`, the `method` node is removed (config.yaml then records what ran) and so are
    settings for methods not selected."""
    node = cfg.get("methods")
    names = _listed(node)
    if not names:
        if node:
            raise ConfigError(f"methods has settings for {', '.join(map(str, node))} but selects "
                              "no method: pass methods=[...] (conf/method/ options).")
        return {str(cfg.method.name): cfg.method}
    clash = [o for o in _command_line() if re.match(r"[+~]*method[.=]", o)]
    if clash:
        raise ConfigError(f"{clash[0]} and methods=[...] both given: put each method in "
                          "methods=[...] and its settings under methods.<name>.<key>.")
    with open_dict(cfg):
        for key in [str(k) for k in node if str(k) not in names]:
            log.info("methods.%s: settings for a method not in methods=[...], ignored", key)
            del node[key]
        cfg.pop("method", None)
    return {name: node[name] for name in names}


def _methods(cfg: DictConfig, selected: dict[str, DictConfig]) -> dict[str, Any]:
    """The selected methods, then the baselines with their default settings
    (conf/method/<name>.yaml defaults), so a baseline scores the same in every run and as
    method=<name> itself."""
    methods = {name: hydra.utils.instantiate(node) for name, node in selected.items()}
    for name in cfg.get("baselines") or []:
        methods.setdefault(str(name), build_method(str(name)))
    return methods


def model_kind(net: Any) -> str:
    """The kind of model an explanation method declares it explains (ExplainMethod.models)."""
    return "vit" if is_vit(net) else "cnn"


def inapplicable_methods(methods: Mapping[str, Any], names: Iterable[str],
                         kind: str) -> dict[str, str]:
    """name -> why, for each of `names` whose method does not explain `kind` models (its
    `models`); a method that declares no kinds is taken to explain every model."""
    out = {}
    for name in names:
        kinds = tuple(getattr(methods[name], "models", None) or (kind,))
        if kind not in kinds:
            out[name] = f"explains {'/'.join(kinds)} models only; the checkpoint is a {kind}"
    return out


def check_marker_metrics(metrics: Mapping[str, Any], datamodule: Any) -> None:
    """Refuse, before any job starts, metrics that score the planted marker (`needs`
    marker_mask) on a dataset that plants none (only the synthetic dataset with
    dataset.shortcut.enabled=true does: its `marker`)."""
    needing = [key for key, factory in metrics.items() if factory(key=key).requires_marker]
    if needing and not getattr(datamodule, "marker", False):
        raise ConfigError(f"the known-truth metrics ({', '.join(needing)}) need the planted "
                          f"marker, and this dataset has none: {HOW_TO_MARKER}.")


def _table_cell(value: Any) -> Any:
    return None if value == "" else value  # W&B tables type-check columns: a gap is None


def _log_table(logger: Any, key: str, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    logger.log_table(key=key, columns=columns,
                     data=[[_table_cell(row.get(c)) for c in columns] for row in rows])


def _score_rows(summary: EvaluationSummary) -> list[dict[str, Any]]:
    """The run's table: one row per method and baseline, every metric column's value."""
    return [{"method": name, "baseline": name in summary.baselines,
             **{column: stats.get("value") for column, stats in scores.metrics.items()}}
            for name, scores in summary.methods.items()]


def _log_to_loggers(loggers: list, summary: EvaluationSummary, rows: list[dict[str, Any]],
                    overlay_dir: Path) -> None:
    scalars = flat_scalars(summary.to_dict())
    for logger in loggers:
        logger.log_metrics(scalars)
        if hasattr(logger, "log_table") and rows:
            _log_table(logger, EVAL_PER_IMAGE, rows)
            for method in summary.methods:  # and each method's (or baseline's) rows alone
                own = [row for row in rows if row.get("method") == method]
                if own:
                    _log_table(logger, f"{EVAL_PER_IMAGE}/{method}", own)
            _log_table(logger, EVAL_SCORES, _score_rows(summary))
        if hasattr(logger, "log_image"):
            for method_dir in sorted(p for p in overlay_dir.glob("*") if p.is_dir()):
                images = sorted(method_dir.glob("*.png"))
                if images:
                    logger.log_image(key=overlay_key(method_dir.name),
                                     images=[str(p) for p in images],
                                     caption=[p.stem for p in images])


def _print_summary(summary: EvaluationSummary) -> None:
    lines = [f"accuracy {summary.accuracy:.3f} on {summary.images} images"]
    truth = summary.known_truth
    if summary.reliance is not None:
        reliance, agree = truth["reliance"], truth.get("agree_accuracy", {})
        lines.append(
            f"reliance on the marker {reliance['value']:.3f} "
            f"[{reliance['ci_low']:.3f}, {reliance['ci_high']:.3f}] on "
            f"{truth.get('counts', {}).get('conflict', reliance.get('n'))} conflict images "
            f"(0 = the lesion only, 1 = the marker only); accuracy where the cues agree "
            f"{agree.get('value', float('nan')):.3f}")
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
    selected = selected_methods(cfg)
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    # half weights: refused before any file
    check_precision(str(cfg.trainer.get("precision", "32-true")))

    datamodule = build_datamodule(cfg, run_cfg)
    # read once, safely
    net = load_network(run_cfg.model, checkpoint, load_checkpoint_safely(checkpoint))
    methods = _methods(cfg, selected)
    skipped = (inapplicable_methods(methods, selected, model_kind(net))
               if cfg.get("skip_inapplicable", False) else {})
    for name, why in skipped.items():
        log.info("skip_inapplicable: %s left out (%s)", name, why)
        del methods[name]
    if not methods:
        raise ConfigError(f"nothing to evaluate: every selected method was left out "
                          f"({'; '.join(f'{n} {w}' for n, w in skipped.items())}) and "
                          "baselines=[] names no baseline.")
    ran = [name for name in selected if name not in skipped]
    metrics = {str(key): hydra.utils.instantiate(node)
               for key, node in (cfg.get("metric") or {}).items()}
    check_marker_metrics(metrics, datamodule)
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
        declare_evaluation_inputs(loggers, cfg, checkpoint)  # W&B lineage: dataset, checkpoint
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
    summary.method = ran[0] if len(ran) == 1 else None
    summary.evaluated_methods = ran
    summary.baselines = [m for m in methods if m not in selected]
    summary.world_size = trainer.world_size
    summary.skipped_methods = skipped
    all_nan, partial = drop_failed_methods(summary, ran)
    if trainer.is_global_zero:
        rows = per_image_rows(module.results, image_name)
        write_per_image_csv(rows, output_dir / "per_image.csv")
        if partial or not all_nan:
            summary.write(output_dir)
            _log_to_loggers(loggers, summary, rows, output_dir / "overlays")
            log_evaluation_outputs(loggers, output_dir)  # W&B lineage: eval-<run id>
            _print_summary(summary)
        log.info("Run folder: %s", output_dir)
    if all_nan:  # every rank holds the same gathered summary: all stop here
        written = (f"metrics.json holds the other methods ({', '.join(summary.methods)})"
                   if partial else "no metrics.json was written")
        raise XaiBenchError(
            f"every map of {', '.join(all_nan)} is NaN ({summary.images} images), so its scores "
            f"are meaningless: {written} (per_image.csv in {output_dir} has the rows, "
            "nan_map=1). A diverged training run has NaN weights (check the training run's "
            "metrics.json and train.log); otherwise check the method's settings (method.*)."
        )
    return summary.to_dict()


def drop_failed_methods(summary: EvaluationSummary, selected: list[str]) -> tuple[list[str], bool]:
    """(the methods whose every map is NaN, whether the summary is still worth writing). A
    baseline's NaN maps, or every method's, mean NaN weights: nothing is written. Some of
    several methods: they leave the summary for `failed_methods` (the report skips them and
    says why), the others are written."""
    all_nan = nan_map_methods(summary)
    partial = bool(all_nan) and set(all_nan) < set(selected)
    for name in all_nan if partial else []:
        del summary.methods[name]
        summary.failed_methods[name] = f"every map is NaN ({summary.images} images)"
    return all_nan, partial


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


def _list_names(value: str) -> set[str]:
    return {name for name in (n.strip(" '\"") for n in re.split(r"[\[\],]", value)) if name}


def method_list_alias(argv: list[str]) -> list[str]:
    """`method=[a,b]` -> `methods=[a,b]`, and then `method.a.key=v` -> `methods.a.key=v` (see
    the module docstring); `method=a` and `method.key=v` stay the single method's."""
    listed: set[str] = set()
    for arg in argv[1:]:
        if arg.startswith("method=["):
            listed |= _list_names(arg[len("method="):])
    out = argv[:1]
    for arg in argv[1:]:
        parts = arg.split("=", 1)[0].split(".")
        if arg.startswith("method=[") or (len(parts) > 2 and parts[0] == "method"
                                          and parts[1] in listed):
            arg = "methods" + arg[len("method"):]
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    silence_library_noise()
    run_entry(evaluate, cfg)


def main() -> None:
    sys.argv = method_list_alias(sys.argv)
    _hydra_main()


if __name__ == "__main__":
    main()
