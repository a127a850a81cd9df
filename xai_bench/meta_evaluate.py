"""Which metrics can be trusted on this model? The meta-evaluation of Hedström et al. (2023):
`python -m xai_bench.meta_evaluate ckpt=<run> metric=[meta_evaluation] method=[gradcam,random]`.

Thin entry point, like xai_bench.evaluate (whose model and data loading it reuses): Hydra
composes conf/meta_evaluate.yaml, the model and the data are rebuilt from the training run's
config.yaml and checkpoint, xai_bench.metaeval scores every method's maps under the clean and
the perturbed conditions and judges each metric. The run folder gets config.yaml,
meta_evaluation.csv (the verdicts), meta_evaluation.json, scores.csv (every per-image score),
plots/<metric>.png and the W&B offline run. One process (no Lightning Trainer): the work is
small enough, and the perturbed models are built once per draw.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from xai_bench.explain.base import ExplainMethod
from xai_bench.metaeval.plots import plot_metric
from xai_bench.metaeval.run import (
    MetaRow,
    MetaSettings,
    ScoreTable,
    collect_scores,
    judge,
    write_rows_csv,
    write_scores_csv,
)
from xai_bench.metaeval.scores import CRITERIA, Thresholds
from xai_bench.models import load_checkpoint_safely
from xai_bench.modules.evaluator import tf32_disabled
from xai_bench.modules.trained_run import RUN_SECTIONS, build_datamodule, load_network
from xai_bench.tracking import resolve_checkpoint, resolved_config, write_config
from xai_bench.tracking.records import MetaEvaluationRecord
from xai_bench.tracking.resolvers import register_resolvers, training_config
from xai_bench.tracking.run_folder import META_EVALUATION_CSV, run_of
from xai_bench.tracking.task import task_wrapper
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.instantiate import instantiate_loggers, start_loggers
from xai_bench.utils.quiet import silence_library_noise
from xai_bench.utils.rich_config import print_config_tree
from xai_bench.utils.task import run_entry

log = logging.getLogger(__name__)
register_resolvers()  # before Hydra composes conf/ (${xai.*}, ${run:*})



def settings_of(meta: DictConfig) -> MetaSettings:
    """The `meta:` section as MetaSettings (clear errors for a bad value)."""
    container = OmegaConf.to_container(meta, resolve=True)
    assert isinstance(container, dict)
    marks = container.pop("pass", None) or {}
    unknown = set(marks) - {"iac_nr", "iec_nr", "iac_ar", "iec_ar"}
    if unknown:
        raise ConfigError(f"meta.pass.{sorted(unknown)[0]} is not a pass mark: use iac_nr, "
                          "iec_nr, iac_ar or iec_ar.")
    try:
        return MetaSettings(**container, thresholds=Thresholds(**marks))
    except TypeError as err:
        raise ConfigError(f"meta: {err}") from err


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError as err:
        raise ConfigError(f"device={name} is not a torch device (auto | cpu | cuda).") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}, but torch sees no CUDA device: use device=cpu.")
    return device


def build_methods(names: list[str]) -> dict[str, ExplainMethod]:
    """Each method as `method=<name>` builds it in an evaluation: from conf/method/<name>.yaml
    (e.g. gradcam_study's study settings), keyed by the option name."""
    from hydra import compose

    if not names:
        raise ConfigError("methods=[...] needs at least one method (conf/method/ options).")
    if not GlobalHydra.instance().is_initialized():
        raise RuntimeError("build_methods runs inside the Hydra app (it reads conf/method/)")
    methods = {}
    for name in dict.fromkeys(str(n) for n in names):
        try:
            node = compose(config_name=f"method/{name}").method
        except Exception as err:  # Hydra's MissingConfigException
            raise ConfigError(f"method {name!r} is not a conf/method/ option "
                              "(e.g. attention, chefer, gradcam, random).") from err
        methods[name] = hydra.utils.instantiate(node)
    return methods


def _batches(loader: Any, device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for batch in loader]


def _print_table(rows: list[MetaRow]) -> None:
    head = f"{'metric column':<28}{'space':<7}" + "".join(f"{c:>8}" for c in CRITERIA)
    lines = [head + f"{'MC':>7}  {'NR':<5}{'AR':<5}verdict"]
    for row in rows:
        values = "".join(f"{getattr(row.scores, c):>8.3f}" for c in CRITERIA)
        lines.append(f"{row.column:<28}{row.space:<7}{values}{row.scores.mc:>7.3f}  "
                     f"{row.nr:<5}{row.ar:<5}{row.verdict}")
    trusted = sorted({r.column for r in rows if r.verdict == "pass"})
    lines.append("trusted on this model: " + (", ".join(trusted) or "none"))
    log.info("meta-evaluation (which metrics can be trusted on this model):\n%s",
             "\n".join(lines))


def _log_to_loggers(loggers: list, rows: list[MetaRow], plots: dict[str, Path]) -> None:
    scalars = {f"meta/{row.column}/{row.space}/{c}": getattr(row.scores, c)
               for row in rows for c in (*CRITERIA, "mc")}
    scalars = {k: float(v) for k, v in scalars.items() if v == v}  # NaN: not logged
    dicts = [row.as_dict() for row in rows]
    for logger in loggers:
        logger.log_metrics(scalars)
        if hasattr(logger, "log_table") and dicts:
            columns = list(dicts[0])
            logger.log_table(key="meta/table", columns=columns,
                             data=[[None if (isinstance(v, float) and v != v) else v
                                    for v in d.values()] for d in dicts])
        if hasattr(logger, "log_image"):
            for key, path in plots.items():
                logger.log_image(key=f"meta/plots/{key}", images=[str(path)], caption=[key])


def _summary(rows: list[MetaRow], table: ScoreTable, settings: MetaSettings,
             checkpoint: Path, seconds: float) -> MetaEvaluationRecord:
    def plain(value: Any) -> Any:
        return None if isinstance(value, float) and value != value else value

    return MetaEvaluationRecord(
        checkpoint=str(checkpoint.resolve()),
        training_run=str(run_of(checkpoint.resolve())),
        methods=table.methods,
        images=int(len(table.ids)),
        draws=settings.draws,
        spaces=list(settings.spaces),
        seconds=round(seconds, 1),
        trusted=sorted({r.column for r in rows if r.verdict == "pass"}),
        rows=[{k: plain(v) for k, v in row.as_dict().items()} for row in rows],
    )


@task_wrapper
def meta_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the methods' maps under the clean and perturbed conditions, judge every metric,
    write the run folder."""
    started = time.perf_counter()
    run_cfg = training_config(cfg)  # clear errors for a missing ckpt / config before anything else
    checkpoint = resolve_checkpoint(cfg.ckpt)
    with open_dict(cfg):
        for section in RUN_SECTIONS:
            cfg[section] = run_cfg[section]
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    settings = settings_of(cfg.meta)
    device = _device(str(cfg.get("device", "auto")))
    methods = build_methods(list(cfg.get("methods") or []))
    factories = {str(key): hydra.utils.instantiate(node)
                 for key, node in (cfg.get("metric") or {}).items()}
    if not factories:
        raise ConfigError("metric=[...] names no metric to meta-evaluate (e.g. "
                          "metric=[meta_evaluation]).")
    datamodule = build_datamodule(cfg, run_cfg)
    net = load_network(run_cfg.model, checkpoint, load_checkpoint_safely(checkpoint))
    net = net.to(device).eval().requires_grad_(False)
    loader = datamodule.eval_dataloader(cfg.split, cfg.get("max_images"))
    needs_mask = any(factory(key=key).requires_mask for key, factory in factories.items())
    if (cfg.split != "roi" and needs_mask
            and not any(getattr(loader.dataset, "has_mask", [True]))):
        raise ConfigError(f"the localisation metrics need ROI masks, and split={cfg.split} has "
                          "none: use split=roi.")
    output_dir = Path(cfg.paths.output_dir)
    loggers = instantiate_loggers(cfg.get("logger"))
    start_loggers(loggers)  # a W&B failure (no API key) stops here, before any file is written
    config = resolved_config(cfg)
    write_config(config, output_dir)
    for logger in loggers:
        logger.log_hyperparams(config)

    mean, std = datamodule.input_normalization()
    with tf32_disabled(bool(cfg.get("allow_tf32", False))):
        table = collect_scores(net, methods, factories, _batches(loader, device), settings,
                               mean=mean, std=std)
    write_scores_csv(table, output_dir / "scores.csv")  # first: the raw scores survive anything
    rows = judge(table, settings)
    write_rows_csv(rows, output_dir / META_EVALUATION_CSV)
    plots = {key: plot_metric(key, rows, table, settings, output_dir / "plots" / f"{key}.png")
             for key in dict.fromkeys(row.metric for row in rows)}
    summary = _summary(rows, table, settings, checkpoint, time.perf_counter() - started)
    summary.write(output_dir)
    _log_to_loggers(loggers, rows, plots)
    _print_table(rows)
    log.info("Run folder: %s (%.0f s)", output_dir, summary.seconds)
    return summary.to_dict()


@hydra.main(version_base="1.3", config_path="../conf", config_name="meta_evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    silence_library_noise()
    run_entry(meta_evaluate, cfg)


def method_alias(argv: list[str]) -> list[str]:
    """`method=[a,b]` (an evaluation's spelling) -> `methods=[a,b]`: `method` is a config group
    of conf/, so Hydra would read `method=[a,b]` as a choice of that group."""
    return [f"methods={arg[len('method='):]}" if arg.startswith("method=") else arg
            for arg in argv]


def unknown_methods(argv: list[str]) -> list[str]:
    """The names in `methods=[...]` that are not conf/method/ options (Hydra would refuse them
    with a traceback-like message of its `methods` group; this says it in one line)."""
    group = Path(__file__).resolve().parents[1] / "conf" / "methods"
    known = {p.stem for p in group.glob("*.yaml")}
    names = [n.strip() for arg in argv if arg.startswith("methods=")
             for n in arg[len("methods="):].strip("[]").split(",") if n.strip()]
    return [n for n in names if known and n not in known]


def main() -> None:
    sys.argv = method_alias(sys.argv)
    unknown = unknown_methods(sys.argv[1:])
    if unknown:
        print(f"\nerror: method {unknown[0]!r} is not a conf/method/ option "
              "(e.g. attention, chefer, gradcam, random).", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
