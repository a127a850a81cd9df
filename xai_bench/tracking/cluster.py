"""What a run folder records about the cluster job(s) that ran it, and how a requeued job resumes.

A SLURM job that is preempted or reaches its time limit is requeued by the submitit launcher and
runs again in the same run folder (same sweep folder, same job number). `jobs.jsonl` gets one
line per attempt that started, and training resumes from `checkpoints/last.ckpt` (written at
every epoch end), so an interruption loses at most the epoch in progress. The attempt logs to the
W&B run of its run folder (xai_bench.tracking.lineage.run_id_for: the id found in <run>/wandb/,
resume "allow"), so online it continues the first attempt's run; offline each attempt writes its
own offline-run-<time>-<id> folder, which `wandb sync` appends to that run.

`resume` (train.yaml) decides what an attempt continues from:
- true (default): checkpoints/last.ckpt; when it is unreadable (a truncated file from a crash or
  a full disk), the newest readable checkpoint of checkpoints/ instead, with a warning. When
  none is readable the attempt stops with a message naming the files.
- fresh: the same, but when no checkpoint is readable it starts over in the folder; the
  unreadable files move to attempts/checkpoints.<n>/ (nothing is deleted). Requeue-safe: once
  the new attempt saved a checkpoint, a requeued job continues from it.
- false: never continue; refused in a folder that already holds checkpoints (two runs would mix).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xai_bench.tracking.records import Attempt
from xai_bench.tracking.run_folder import CHECKPOINT_DIR, attempts_dir, saved_checkpoints
from xai_bench.utils.errors import ConfigError, XaiBenchError

LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / "last.ckpt"
# the keys Lightning needs to continue a fit (a weights-only file cannot)
RESUMABLE_KEYS = ("state_dict", "loops", "optimizer_states")
RESUME_MODES = {True: "auto", "true": "auto", "auto": "auto", "fresh": "fresh",
                False: "never", None: "never", "false": "never", "never": "never"}

log = logging.getLogger(__name__)

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


def read_attempts(output_dir: str | Path) -> list[dict[str, Any]]:
    """The attempts of <run>/jobs.jsonl as dicts (see records.Attempt.read: a torn line is
    skipped with a warning, never fatal)."""
    return [attempt.to_dict() for attempt in Attempt.read(output_dir)]


def next_attempt(output_dir: str | Path) -> int:
    """The number the next attempt gets (1 for the first): one more than jobs.jsonl's attempts
    and than any attempts/config.<n>.yaml, so an archived attempt is never overwritten."""
    numbers = [len(read_attempts(output_dir))]
    numbers += [int(e["attempt"]) for e in read_attempts(output_dir)
                if isinstance(e.get("attempt"), int)]
    archive = attempts_dir(output_dir)
    if archive.is_dir():
        numbers += [int(p.suffixes[0][1:]) for p in archive.glob("config.*.yaml")
                    if p.suffixes[0][1:].isdigit()]
    return max(numbers) + 1


def record_attempt(
    output_dir: str | Path, resumed_from: dict[str, Any] | None, attempt: int | None = None,
    **extra: Any
) -> dict[str, Any]:
    """Add this attempt (number, time, host, SLURM job, checkpoint and epoch resumed from, and
    `extra` facts such as skipped checkpoints) to <run>/jobs.jsonl.

    The file is rewritten whole through a temporary file (it is small): a crash or a full disk
    leaves the previous version, never a torn line.
    """
    earlier = Attempt.read(output_dir)
    entry = Attempt(
        attempt=attempt if attempt is not None else len(earlier) + 1,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        pid=os.getpid(),
        slurm=slurm_job(),
        resumed_from=resumed_from,
        extra=dict(extra),
    )
    entry.write(output_dir)
    return entry.to_dict()


def resume_mode(resume: Any) -> str:
    """resume=true|fresh|false -> "auto" | "fresh" | "never"."""
    key = resume.lower() if isinstance(resume, str) else resume
    if key not in RESUME_MODES:
        raise ConfigError(
            f"resume={resume!r} is not one of true, fresh, false (see conf/train.yaml).")
    return RESUME_MODES[key]


def checkpoint_problem(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the checkpoint read safely, None) or (None, why it cannot be resumed from, one line)."""
    from xai_bench.utils.checkpoints import load_checkpoint_safely  # torch, only when reading

    try:
        size = path.stat().st_size
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    if size == 0:
        return None, "is empty (0 bytes)"
    try:
        state = load_checkpoint_safely(path)
    except XaiBenchError as err:
        detail = str(err).split(": ", 1)[-1].split(". ")[0].strip() or type(err).__name__
        return None, f"is unreadable ({size} bytes; {detail})"
    missing = [key for key in RESUMABLE_KEYS if key not in state]
    if missing:
        return None, f"is not a full training checkpoint (no {', '.join(missing)})"
    return state, None


@dataclass
class ResumePoint:
    """What an attempt continues from: the checkpoint (read), and the ones passed over."""

    checkpoint: Path | None = None
    state: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why

    def summary(self) -> dict[str, Any] | None:
        """The jobs.jsonl / metrics.json record of the resume (None for a fresh start)."""
        if self.checkpoint is None or self.state is None:
            return None
        return {"checkpoint": str(self.checkpoint), "epoch": self.state.get("epoch"),
                "global_step": self.state.get("global_step")}


def find_resume_point(output_dir: str | Path, resume: Any) -> ResumePoint:
    """The checkpoint of this run folder to continue from (see the module docstring).

    Only reads files: moving unreadable ones aside is start_attempt's job, after validation.
    """
    mode = resume_mode(resume)
    point = ResumePoint()
    if mode == "never":
        return point
    root = Path(output_dir)
    last = root / LAST_CHECKPOINT
    candidates = (([last] if last.is_file() else [])
                  + [p for p in saved_checkpoints(root) if p != last])
    for candidate in candidates:
        state, problem = checkpoint_problem(candidate)
        if problem is None:
            point.checkpoint, point.state = candidate, state
            break
        point.skipped[candidate.name] = problem
    if point.skipped:
        skipped = "; ".join(f"checkpoints/{name} {why}" for name, why in point.skipped.items())
        if point.checkpoint is not None:
            log.warning("%s: skipped, resuming from %s instead", skipped, point.checkpoint)
        elif mode == "auto":
            raise XaiBenchError(
                f"cannot resume the run in {root}: {skipped}, and no other checkpoint there is "
                "readable. Start it over in this folder with resume=fresh (the unreadable files "
                "are kept under attempts/), or train into a new folder (hydra.run.dir=...)."
            )
        else:
            log.warning("%s: no readable checkpoint, starting over (resume=fresh)", skipped)
    return point


def resume_checkpoint(output_dir: str | Path, resume: Any) -> Path | None:
    """The checkpoint of this run folder to continue from, or None (see find_resume_point)."""
    return find_resume_point(output_dir, resume).checkpoint
