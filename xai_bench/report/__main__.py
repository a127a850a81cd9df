"""Aggregate an evaluation sweep: `python -m xai_bench.report sweep=DIR [compare=study]`.

Thin entry point: Hydra composes conf/report.yaml; the evaluation runs below `sweep` become the
reference study's table (xai_bench.report.study), written as report.csv/.md/.tex
(xai_bench.report.writers) and index.html with plots and overlay galleries
(xai_bench.report.html) in `out` (default <sweep>/report), and logged to W&B (job_type report).
The significance section (xai_bench.report.significance) tests the runs' per-image records and
decides the table's dagger; the known-truth section (xai_bench.report.known_truth) appears when
the runs measured a model's reliance on a planted marker (docs/known-truth.md).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from xai_bench.report.html import copy_galleries, write_html, write_plots
from xai_bench.report.known_truth import (
    FLAG_SHARE,
    TABLE_METRICS,
    KnownTruth,
    analyse_known_truth,
    has_known_truth,
)
from xai_bench.report.known_truth_writers import write_known_truth_figure
from xai_bench.report.significance import Significance, analyse, apply_dagger, settings_from
from xai_bench.report.significance_writers import write_cd_figures
from xai_bench.report.study import (
    StudyTable,
    SweepScan,
    common_group,
    scan_sweep,
    study_table,
    sweep_facts,
)
from xai_bench.report.trust import TrustedModel, read_trust, write_trust_csv
from xai_bench.report.writers import (
    log_to_loggers,
    metric_title,
    write_csv,
    write_markdown,
    write_tex,
)
from xai_bench.tracking import resolved_config, write_config
from xai_bench.tracking.lineage import declare_report_inputs
from xai_bench.tracking.resolvers import register_resolvers
from xai_bench.tracking.task import task_wrapper
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.instantiate import instantiate_loggers
from xai_bench.utils.quiet import silence_library_noise
from xai_bench.utils.rich_config import print_config_tree
from xai_bench.utils.task import run_entry

log = logging.getLogger(__name__)

USAGE = ("pass sweep=<the folder of an evaluation sweep "
         "(outputs/evaluate/multiruns/<date>/<time>)> or any folder holding evaluation run "
         "folders (config.yaml with task_name: evaluate, metrics.json)")


def _report_dir(*, _root_: DictConfig) -> str:
    """hydra.run.dir: `out`, or a scratch folder when the sweep folder is not given or does not
    exist (Hydra creates the run folder before the task can say what is wrong, and must not
    create the sweep folder)."""
    if OmegaConf.is_missing(_root_, "sweep") or not Path(str(_root_.sweep)).expanduser().is_dir():
        return str(Path(tempfile.gettempdir()) / "xai_bench-report-no-sweep")
    return str(_root_.out)


register_resolvers()  # before Hydra composes conf/ (${xai.*})
OmegaConf.register_new_resolver("xai.report_dir", _report_dir, replace=True)


def scan_or_fail(sweep: str, out: Path) -> SweepScan:
    """The sweep's evaluation runs; a clear error when there is nothing to report."""
    root = Path(sweep).expanduser()
    if not root.is_dir():
        raise ConfigError(f"sweep={sweep} is not a folder: {USAGE}.")
    scan = scan_sweep(root, exclude=[out])
    if not scan.runs:
        found = f" ({len(scan.incomplete)} incomplete, none finished)" if scan.incomplete else ""
        raise ConfigError(f"no evaluation runs in sweep={sweep}{found}: {USAGE}.")
    for skipped in scan.incomplete:
        log.warning("incomplete evaluation run left out: %s (%s)", skipped.run_dir, skipped.reason)
    if scan.other:
        log.info("%d folder(s) of other tasks skipped (training runs, ...)", len(scan.other))
    return scan


def trust_or_warn(scan: SweepScan, extra: Any) -> list[TrustedModel]:
    """The meta-evaluation runs in the sweep and in the folders of `meta_evaluations`."""
    folders = list(scan.meta)
    for root in [extra] if isinstance(extra, str) else list(extra or []):
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            raise ConfigError(f"meta_evaluations: {root} is not a folder (a meta-evaluation run "
                              "folder or a folder holding some).")
        found = scan_sweep(path).meta
        if not found:
            raise ConfigError(f"meta_evaluations: no meta-evaluation run below {root} "
                              "(python -m xai_bench.meta_evaluate writes one).")
        folders += found
    models, skipped = read_trust(folders)
    for run in skipped:
        log.warning("meta-evaluation left out: %s (%s)", run.run_dir, run.reason)
    return models


def significance_or_none(cfg: DictConfig, scan: SweepScan, table: StudyTable,
                         out: Path) -> Significance | None:
    """The paired tests, rankings and agreement (`significance.enabled`), the dagger they decide,
    the CD diagrams under <out>/assets/significance/."""
    node = cfg.get("significance")
    settings = settings_from(OmegaConf.to_container(node) if OmegaConf.is_config(node) else node)
    if not settings.enabled:
        return None
    significance = analyse(scan.runs, table, settings)
    tested = apply_dagger(table, significance, scan.runs)
    write_cd_figures(significance, out, metric_title)
    log.info("significance: %d paired tests, dagger decided by the test in %d cells",
             len(significance.comparisons), tested)
    return significance


def table_metrics(cfg: DictConfig, scan: SweepScan) -> list[str]:
    """`metrics`; for a known-truth sweep that scores none of them (its evaluations score the
    maps against the lesion and the marker: lesion_pointing_game, ...), those columns."""
    metrics = [cfg.metrics] if isinstance(cfg.metrics, str) else list(cfg.metrics)
    present = {metric for run in scan.runs for metric in run.metrics}
    if has_known_truth(scan.runs) and not present & set(metrics):
        fallback = [metric for metric in TABLE_METRICS if metric in present]
        if fallback:
            log.info("metrics=%s: none in these known-truth evaluations; the tables show %s",
                     metrics, fallback)
            return fallback
    return metrics


def known_truth_or_none(cfg: DictConfig, scan: SweepScan, out: Path) -> KnownTruth | None:
    """The known-truth section when a run measured its model's reliance on the marker (its
    alpha, interval level and seed are the significance section's), its figure under
    <out>/assets/known_truth/."""
    node = cfg.get("significance")
    settings = settings_from(OmegaConf.to_container(node) if OmegaConf.is_config(node) else node)
    flag_share = float((cfg.get("known_truth") or {}).get("flag_share", FLAG_SHARE))
    known = analyse_known_truth(scan.runs, alpha=settings.alpha, level=settings.level,
                                seed=settings.seed, flag_share=flag_share)
    if known is None:
        return None
    write_known_truth_figure(known, out)
    log.info("known truth: %d models, %d methods%s", len(known.models), len(known.methods),
             f" ({known.message})" if known.message else "")
    return known


@task_wrapper
def report(cfg: DictConfig) -> dict[str, Any]:
    """Collect, aggregate, write the files and the page, log to W&B; returns the written paths."""
    if OmegaConf.is_missing(cfg, "sweep"):
        raise ConfigError(f"no sweep given: {USAGE}.")
    out = Path(cfg.paths.output_dir).resolve()
    scan = scan_or_fail(str(cfg.sweep), out)
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    table = study_table(scan.runs, metrics=table_metrics(cfg, scan), compare=cfg.get("compare"),
                        compare_iou=str(cfg.get("compare_iou", "mean")))
    facts = sweep_facts(scan, table)
    trust = trust_or_warn(scan, cfg.get("meta_evaluations"))
    digits = int(cfg.get("digits", 2))
    sig = significance_or_none(cfg, scan, table, out)
    known = known_truth_or_none(cfg, scan, out)
    files = {
        "csv": write_csv(table, out / "report.csv", sig, known),
        "md": write_markdown(table, facts, out / "report.md", scan.incomplete, digits, trust,
                             sig, known),
        "tex": write_tex(table, facts, out / "report.tex", scan.incomplete, digits, trust, sig,
                         known),
    }
    trust_csv = write_trust_csv(trust, out / "trust.csv")
    if trust_csv is not None:
        files["trust"] = trust_csv
    plots = write_plots(table, out)
    galleries = copy_galleries(scan.runs, table, out, int(cfg.get("galleries") or 0))
    files["html"] = write_html(table, facts, out, plots, galleries, scan.incomplete, digits,
                               trust, sig, known)
    if known is not None and known.figure is not None:
        files["known_truth"] = known.figure

    with open_dict(cfg):  # the W&B group: the evaluation runs' own, unless one was given
        cfg.group = cfg.get("group") or common_group(scan.runs)
    config = resolved_config(cfg)
    write_config(config, out)
    loggers = instantiate_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(config)
    log_to_loggers(loggers, table, plots, trust, sig, known)
    declare_report_inputs(loggers, [run.run_dir for run in scan.runs])  # W&B lineage
    log.info("%d evaluation runs, %d incomplete, %d meta-evaluations; report folder: %s",
             len(scan.runs), len(scan.incomplete), len(trust), out)
    print(f"Open the report: {files['html']}")
    return {name: str(path) for name, path in files.items()}


@hydra.main(version_base="1.3", config_path="../../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    silence_library_noise()
    run_entry(report, cfg)


if __name__ == "__main__":
    main()
