"""Run folders, config snapshots and experiment-tracker glue."""

from xai_bench.tracking.records import (
    Attempt,
    EvaluationSummary,
    MethodScores,
    RecordError,
    TrainingRecord,
)
from xai_bench.tracking.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    find_run_config,
    load_run_config,
    resolve_checkpoint,
    resolved_config,
    run_metadata,
    run_of,
    write_config,
    write_metrics,
)

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "Attempt",
    "EvaluationSummary",
    "MethodScores",
    "RecordError",
    "TrainingRecord",
    "find_run_config",
    "load_run_config",
    "resolve_checkpoint",
    "resolved_config",
    "run_metadata",
    "run_of",
    "write_config",
    "write_metrics",
]
