"""What a report is made of (the sweep, its runs, datasets, models, bootstrap settings), in
the header lines every writer prints."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from xai_bench.report.eval_runs import EvalRun, SweepScan
from xai_bench.report.study_grid import STUDY_DATASETS, STUDY_INITS, study_order
from xai_bench.report.study_table import StudyTable

__all__ = ["common_group", "sweep_facts"]


def common_group(runs: Sequence[EvalRun]) -> str | None:
    """The W&B group all runs share, None when they differ or have none."""
    groups = {r.group for r in runs}
    return groups.pop() if len(groups) == 1 else None


def _span(values: Iterable[Any]) -> str:
    present = sorted({v for v in values if v is not None})
    if not present:
        return "unknown"
    return str(present[0]) if len(present) == 1 else f"{present[0]} to {present[-1]}"


def _bootstrap_text(runs: Sequence[EvalRun]) -> str:
    settings = sorted({(float(r.bootstrap.get("level", math.nan)), r.bootstrap.get("samples"))
                       for r in runs if r.bootstrap}, key=str)
    if not settings:
        return "unknown"
    return "; ".join(f"{level:.0%} percentile intervals over images, {samples} resamples"
                     for level, samples in settings)


def sweep_facts(scan: SweepScan, table: StudyTable) -> list[tuple[str, str]]:
    """(label, text) lines saying what the report is made of; every writer prints them."""
    runs = scan.runs
    facts = [
        ("sweep", str(scan.root.resolve())),
        ("evaluation runs", f"{len(runs)} complete, {len(scan.incomplete)} incomplete (skipped)"),
        ("other folders skipped", str(len(scan.other))),
        ("datasets", ", ".join(study_order({r.dataset for r in runs}, STUDY_DATASETS))),
        ("initialisations", ", ".join(study_order({r.init for r in runs}, STUDY_INITS))),
        ("methods", ", ".join(table.methods) or "none"),
        ("baselines", ", ".join(table.baselines) or "none"),
        ("models", ", ".join(sorted({r.arch for r in runs}))),
        ("images per evaluation", _span(r.images for r in runs)),
        ("bootstrap", _bootstrap_text(runs)),
        ("W&B group", common_group(runs) or "none common"),
    ]
    if table.compare == "study":
        facts.append(("published numbers", "the reference study's table (seed_results.csv); "
                      f"its IoU compared with {table.compare_iou}"))
    return facts
