"""What a run folder records about the cluster job(s) that ran it, and how a requeued job resumes.

A SLURM job that is preempted or reaches its time limit is requeued by the submitit launcher and
runs again in the same run folder (same sweep folder, same job number). `jobs.jsonl` gets one
line per attempt, and training resumes from `checkpoints/last.ckpt` (written at every epoch end),
so an interruption loses at most the epoch in progress.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

JOBS_FILE = "jobs.jsonl"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"

# SLURM variables worth keeping with a run (the job, its array slot, its attempt, its node)
_SLURM_KEYS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "partition": "SLURM_JOB_PARTITION",
    "nodelist": "SLURM_JOB_NODELIST",
    "ntasks": "SLURM_NTASKS",
}


def slurm_job() -> dict[str, str] | None:
    """The SLURM job this process runs in, or None outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {key: os.environ[var] for key, var in _SLURM_KEYS.items() if var in os.environ}


def record_attempt(output_dir: str | Path, resumed_from: dict[str, Any] | None) -> dict[str, Any]:
    """Append this attempt (time, host, SLURM job, checkpoint and epoch resumed from) to <run>/jobs.jsonl."""
    entry: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm": slurm_job(),
        "resumed_from": resumed_from,
    }
    path = Path(output_dir) / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry


def read_attempts(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / JOBS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resume_checkpoint(output_dir: str | Path, resume: bool | str | None) -> Path | None:
    """<run>/checkpoints/last.ckpt when `resume` is on and this run folder already trained."""
    if resume in (False, None, "false", "never"):
        return None
    path = Path(output_dir) / LAST_CHECKPOINT
    return path if path.is_file() else None
