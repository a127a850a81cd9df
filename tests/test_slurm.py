"""Sweeps on a real SLURM cluster (hydra/launcher=slurm): jobs, run folders, W&B groups, requeue.

Needs a running SLURM (`sudo bash scripts/slurm_local_cluster.sh start`; .ci/run starts one).
Skipped with the reason where none runs, except in CI, where a missing cluster is a failure.
Every wait is bounded: without accounting, a job killed outright can leave submitit waiting.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from xai_bench.tracking.cluster import read_attempts
from xai_bench.tracking.records import TrainingRecord
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run

pytestmark = pytest.mark.slow

LAUNCH_TIMEOUT_S = 420


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return ("SLURM is not installed (sudo bash scripts/slurm_local_cluster.sh start "
                "installs and starts it)")
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or not probe.stdout.strip():
        return (f"no SLURM cluster answers ({probe.stderr.strip()[:200]}); "
                "start one: sudo bash scripts/slurm_local_cluster.sh start")
    if not any(state.startswith(("idle", "mixed", "alloc")) for state in probe.stdout.split()):
        return f"the SLURM node is not usable (state {probe.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the SLURM tests: {problem}")
    pytest.skip(problem)


def _sweep_args(log_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "xai_bench.train", "-m", "debug=tiny", "print_config=false",
        "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=10", f"paths.log_dir={log_dir}", *overrides,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def _run_folders(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.glob("train/multiruns/*/*/*")
                  if p.is_dir() and not p.name.startswith("."))


def _job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                         timeout=30).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    return "UNKNOWN"


def _final_state(job_id: str, timeout: float = 90) -> str:
    """The job's state once it left RUNNING/COMPLETING (the launcher returns as soon as the
    job's result file exists, while the job still tears down)."""
    deadline = time.monotonic() + timeout
    state = _job_state(job_id)
    while state in ("RUNNING", "COMPLETING", "PENDING") and time.monotonic() < deadline:
        time.sleep(1)
        state = _job_state(job_id)
    return state


def _cancel(job_ids: list[str]) -> None:
    for job_id in job_ids:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


def test_sweep_runs_each_job_through_slurm(slurm, tmp_path: Path) -> None:
    proc = subprocess.run(
        _sweep_args(tmp_path, "seed=1,2"), cwd=REPO_ROOT, env=_env(), capture_output=True,
        text=True, timeout=LAUNCH_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = _run_folders(tmp_path)
    assert [p.name.split("_", 1)[0] for p in runs] == ["0", "1"], runs

    job_ids, groups = [], set()
    for run in runs:
        attempts = read_attempts(run)
        assert len(attempts) == 1 and attempts[0]["slurm"], attempts
        job = attempts[0]["slurm"]
        job_ids.append(job["job_id"])
        metrics = TrainingRecord.read(run)
        assert metrics.slurm_job["job_id"] == job["job_id"]
        assert metrics.epochs_trained == 2 and metrics.resumed_from is None
        assert ((run / "checkpoints" / "best.ckpt").is_file()
                and (run / "checkpoints" / "last.ckpt").is_file())
        # SLURM itself knows the job, and it ran to completion
        assert _final_state(job["job_id"]) == "COMPLETED"
        (wandb_dir,) = offline_run_dirs(run)
        wandb_run = read_offline_run(wandb_dir)
        assert wandb_run.job_type == "train"
        groups.add(wandb_run.group)
    assert len(set(job_ids)) == 2
    # both jobs: one array, one W&B group named after the sweep folder
    (sweep_dir,) = {run.parent for run in runs}
    assert groups == {f"train-{sweep_dir.parent.name}_{sweep_dir.name}"}
    assert len({read_attempts(run)[0]["slurm"]["array_job_id"] for run in runs}) == 1
    assert (sweep_dir / ".submitit").is_dir()


def test_ddp_job_gets_one_slurm_task_per_device(slurm, tmp_path: Path) -> None:
    # launcher: tasks_per_node = trainer.devices; Lightning's SLURM environment joins the tasks
    proc = subprocess.run(
        _sweep_args(tmp_path, "seed=5", "trainer=ddp", "trainer.accelerator=cpu",
                    "trainer.devices=2"),
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = _run_folders(tmp_path)
    (attempt,) = read_attempts(run)  # rank 0 alone writes the run folder
    assert attempt["slurm"]["ntasks"] == "2"
    metrics = TrainingRecord.read(run)
    assert metrics.world_size == 2
    assert len(offline_run_dirs(run)) == 1
    assert _final_state(attempt["slurm"]["job_id"]) == "COMPLETED"


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(
                f"the launcher exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_interrupted_job_is_requeued_and_resumes_from_its_checkpoint(slurm, tmp_path: Path) -> None:
    max_epochs = 5
    log = (tmp_path / "launcher.log").open("w")
    proc = subprocess.Popen(
        _sweep_args(tmp_path, "seed=3", f"trainer.max_epochs={max_epochs}",
                    "trainer.limit_train_batches=40"),
        cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    job_ids: list[str] = []
    try:
        last = _wait_for(
            lambda: next(iter(tmp_path.glob("train/multiruns/*/*/0_*/checkpoints/last.ckpt")),
                         None),
            240, "the first epoch's last.ckpt", proc)
        run = last.parent.parent
        job_id = read_attempts(run)[0]["slurm"]["job_id"]
        job_ids.append(job_id)
        # what SLURM sends before the time limit (or on preemption): submitit checkpoints the
        # call and requeues the job, which runs again in the same run folder
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        _wait_for(lambda: len(read_attempts(run)) == 2, 240, "the requeued attempt", proc)
        assert proc.wait(timeout=LAUNCH_TIMEOUT_S) == 0, (
            (tmp_path / "launcher.log").read_text()[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            _cancel(job_ids)
        log.close()

    first, second = read_attempts(run)
    assert first["resumed_from"] is None
    assert second["slurm"]["job_id"] == job_id and second["slurm"]["restart_count"] == "1"
    resumed = second["resumed_from"]
    assert resumed["checkpoint"].endswith("checkpoints/last.ckpt")
    # it continued: at least one finished epoch was kept, not retrained
    assert resumed["global_step"] >= 40 and resumed["epoch"] is not None
    metrics = TrainingRecord.read(run)
    assert metrics.epochs_trained == max_epochs
    assert metrics.resumed_from["global_step"] == resumed["global_step"]
    assert not (run / "error.txt").exists()
    assert "resuming from" in (run / "train.log").read_text()
    assert _final_state(job_id) == "COMPLETED"
