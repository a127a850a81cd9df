"""An evaluation sweep as the reference study's table.

`scan_sweep` finds the evaluation run folders below a folder (a `-m` sweep or any folder of
runs) and says which it skipped; `study_table` aggregates them: rows dataset x init, one column
per method and metric, the trivial baselines beside the methods (docs/metrics.md; a method that does
not beat a random map localises nothing), optionally the published numbers beside ours.

The steps live in their own modules: `eval_runs` (finding and reading the run folders),
`study_grid` (the study's datasets, inits, methods and order), `study_table` (aggregating,
the published numbers) and `sweep_facts` (what a report is made of); this module gathers the
names the report's writers and callers import.
"""

from __future__ import annotations

from xai_bench.report.eval_runs import (
    EvalRun,
    SkippedRun,
    SweepScan,
    collect_eval_runs,
    read_eval_run,
    scan_sweep,
)
from xai_bench.report.study_grid import (
    BASELINES,
    DEFAULT_METRICS,
    STUDY_DATASETS,
    STUDY_INITS,
    STUDY_METHODS,
    lower_is_better,
    study_order,
)
from xai_bench.report.study_table import (
    COMPARE_CHOICES,
    IOU_MODES,
    PUBLISHED_METHODS,
    Cell,
    StudyTable,
    combine,
    load_published,
    study_table,
)
from xai_bench.report.sweep_facts import common_group, sweep_facts

__all__ = [
    "BASELINES",
    "COMPARE_CHOICES",
    "DEFAULT_METRICS",
    "IOU_MODES",
    "PUBLISHED_METHODS",
    "STUDY_DATASETS",
    "STUDY_INITS",
    "STUDY_METHODS",
    "Cell",
    "EvalRun",
    "SkippedRun",
    "StudyTable",
    "SweepScan",
    "collect_eval_runs",
    "combine",
    "common_group",
    "load_published",
    "lower_is_better",
    "read_eval_run",
    "scan_sweep",
    "study_order",
    "study_table",
    "sweep_facts",
]
