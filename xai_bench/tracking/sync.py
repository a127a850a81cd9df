"""Upload the W&B offline runs below a folder with `wandb sync` (`python -m xai_bench.sync`).

A study run on an offline cluster leaves one offline run per job and attempt,
<run>/wandb/offline-run-<time>-<id>/run-<id>.wandb. `wandb sync` marks a file it uploaded with
run-<id>.wandb.synced beside it: those are skipped (include_synced uploads them again).

Order matters for the lineage (xai_bench.tracking.lineage): a run's use of an artifact lands on
the version its producer logged only if the producer was uploaded first (synced before it, the
use would create that version itself, with no producing run). So training runs go first, then
evaluation runs, then report runs, then any other. The folders of one run id (the attempts of a
requeued job, see xai_bench.tracking.cluster) go to one `wandb sync` call, oldest first, which
uploads them one after the other into that one run.

One run failing (a non-zero exit, or a file left without its .synced mark) is reported and the
others go on. Files an artifact would upload that are gone (W&B stages table files in its data
folder, WANDB_DATA_DIR, in the user's home) are listed before uploading.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xai_bench.tracking.wandb_offline import (
    offline_run_dirs,
    read_offline_run,
    transaction_log,
)
from xai_bench.utils.errors import ConfigError

# lineage order of job types (conf: job_type = train | eval | report); others come last
STAGES = {"train": 0, "eval": 1, "report": 2}
SYNCED_SUFFIX = ".synced"


@dataclass
class RunToSync:
    """One W&B run id below the folder: its offline folders, oldest first."""

    run_id: str
    name: str = ""
    job_type: str = ""
    pending: list[Path] = field(default_factory=list)  # not yet marked synced
    synced: list[Path] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)  # artifact files that are gone
    problem: str = ""  # a transaction log that cannot be read

    @property
    def label(self) -> str:
        kind = self.job_type or "run"
        return f"{kind:<6} {self.name or '?'} ({self.run_id})"


@dataclass
class SyncOutcome:
    run: RunToSync
    status: str  # synced | skipped | failed | would sync
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:<10} {self.run.label}" + (f": {self.detail}" if self.detail else "")


def is_synced(run_dir: Path) -> bool:
    """Whether `wandb sync` marked the folder's transaction log as uploaded."""
    log = transaction_log(run_dir)
    return log.with_name(log.name + SYNCED_SUFFIX).is_file()


def find_runs(root: Path, include_synced: bool = False) -> list[RunToSync]:
    """The offline runs below `root`, one entry per run id, in upload order."""
    runs: dict[str, RunToSync] = {}
    starts: dict[Path, float] = {}
    for folder in offline_run_dirs(Path(root).expanduser().resolve()):
        if not any(folder.glob("run-*.wandb")):
            continue
        run_id = folder.name.rsplit("-", 1)[-1]
        entry = runs.setdefault(run_id, RunToSync(run_id=run_id))
        try:
            record = read_offline_run(folder)
        except Exception as err:  # noqa: BLE001 - reported per run; the others still sync
            entry.problem = f"{folder} cannot be read ({type(err).__name__}: {err})"
            starts[folder] = 0.0
        else:
            entry.name, entry.job_type = record.name or entry.name, record.job_type
            starts[folder] = record.start_time
            entry.missing_files += [
                f"{art.name}/{item['path']} ({item['local_path']})" for art in record.artifacts
                for item in art.entries
                if item["local_path"] and not Path(item["local_path"]).is_file()
            ]
        synced = is_synced(folder) and not include_synced
        (entry.synced if synced else entry.pending).append(folder)
    for entry in runs.values():
        entry.pending.sort(key=lambda p: (starts.get(p, 0.0), p.name))
    return sorted(runs.values(), key=lambda r: (STAGES.get(r.job_type, len(STAGES)),
                                                 r.pending[0].name if r.pending else "", r.run_id))


def wandb_command(name: str) -> list[str]:
    """The `wandb` command: `name` on PATH, else beside this Python (an unactivated venv)."""
    found = shutil.which(name)
    if found is None and os.sep not in name:
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None
    if found is None:
        raise ConfigError(f"the W&B command {name!r} was not found: install wandb in this "
                          "environment (pip install wandb), or pass wandb_command=<path>.")
    return [found]


def sync_args(command: Sequence[str], run: RunToSync, project: str | None = None,
              entity: str | None = None) -> list[str]:
    """The `wandb sync` call for one run: its pending folders, oldest first."""
    args = [*command, "sync"]
    if project:
        args += ["--project", project]
    if entity:
        args += ["--entity", entity]
    if any(is_synced(p) for p in run.pending):  # include_synced: upload marked ones again
        args.append("--include-synced")
    return args + [str(p) for p in run.pending]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def sync_runs(
    runs: Sequence[RunToSync], command: Sequence[str], *, dry_run: bool = False,
    project: str | None = None, entity: str | None = None,
    runner: Callable[..., Any] = subprocess.run,
) -> list[SyncOutcome]:
    """Upload each run with pending folders (or say what would be done); one outcome per run."""
    outcomes = []
    for run in runs:
        missing = (f"; {len(run.missing_files)} artifact file(s) missing, not uploaded: "
                   + ", ".join(run.missing_files[:3])) if run.missing_files else ""
        if run.problem:
            outcomes.append(SyncOutcome(run, "failed", run.problem))
            continue
        if not run.pending:
            outcomes.append(SyncOutcome(run, "skipped", "already synced"))
            continue
        args = sync_args(command, run, project, entity)
        if dry_run:
            shown = " ".join([Path(args[0]).name, *args[1:]])
            outcomes.append(SyncOutcome(run, "would sync", shown + missing))
            continue
        marked_before = {p for p in run.pending if is_synced(p)}
        proc = runner(args, capture_output=True, text=True, check=False)
        unmarked = [p for p in run.pending if p not in marked_before and not is_synced(p)]
        if proc.returncode != 0 or unmarked:
            why = (f"wandb sync exited {proc.returncode}" if proc.returncode
                   else f"{len(unmarked)} folder(s) not marked synced")
            said = _last_line(proc.stderr or "") or _last_line(proc.stdout or "")
            outcomes.append(SyncOutcome(run, "failed", why + (f" ({said})" if said else "")))
            continue
        folders = f"{len(run.pending)} folder(s)" if len(run.pending) > 1 else "1 folder"
        outcomes.append(SyncOutcome(run, "synced", folders + missing))
    return outcomes


def summary_line(outcomes: Sequence[SyncOutcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    order = ("synced", "would sync", "skipped", "failed")
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
