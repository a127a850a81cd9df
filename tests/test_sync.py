"""`python -m xai_bench.sync sweep=<folder>`: every offline run below the folder uploaded once, in
lineage order, a requeued job's attempts in one call, already synced runs skipped, a failing run
reported while the others go on, and a dry run that only lists. `wandb` is a fake command on PATH
that records its arguments (and marks the files synced, as `wandb sync` does): no network."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import fails_cleanly, run_cli
from omegaconf import DictConfig, OmegaConf

from xai_bench.sync import hydra_argv, sync
from xai_bench.tracking.sync import find_runs, sync_args
from xai_bench.tracking.wandb_offline import offline_run_dirs
from xai_bench.utils.errors import ConfigError

# job folder -> (job type, name, run id); the train job was requeued: two attempts, one run id
JOBS = {"0_train": ("train", "syn-random-s1", "trainaaa"),
        "eval/0_gradcam": ("eval", "syn-random-s1-gradcam", "evalbbbb"),
        "eval/report": ("report", "report", "reportcc"),
        "1_train": ("train", "syn-random-s2", "traindd1")}

FAKE_WANDB = """#!{python}
import json, os, sys
from pathlib import Path
with open(os.environ["FAKE_WANDB_CALLS"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
failing = os.environ.get("FAKE_WANDB_FAIL", "")
for arg in sys.argv[2:]:
    if failing and failing in arg:
        print("wandb: ERROR failed to upload " + arg, file=sys.stderr)
        sys.exit(1)
    for log in Path(arg).glob("run-*.wandb"):
        Path(str(log) + ".synced").touch()
"""


def _offline_run(folder: Path, job_type: str, name: str, run_id: str) -> Path:
    import wandb

    run = wandb.init(project="p", dir=str(folder), mode="offline", id=run_id, name=name,
                     job_type=job_type, resume="allow")
    run.log({"x": 1})
    run.finish()
    wandb.teardown()  # the service writes the file: complete only once it stopped
    return next(p for p in offline_run_dirs(folder) if p.name.endswith(run_id)
                and "20000101" not in p.name)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder of offline runs written by W&B itself (kept read-only; tests copy it)."""
    root = tmp_path_factory.mktemp("sweep") / "sweep"
    for job, (job_type, name, run_id) in JOBS.items():
        folder = root / job
        first = _offline_run(folder, job_type, name, run_id)
        if job == "0_train":  # the requeued attempt: a second folder of the same run id
            first.rename(first.with_name(f"offline-run-20000101_000000-{run_id}"))
            _offline_run(folder, job_type, name, run_id)
    return root


@pytest.fixture
def sweep(template: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(template, tmp_path / "sweep", symlinks=True))


@pytest.fixture
def fake_wandb(tmp_path: Path) -> dict[str, str]:
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "wandb"
    script.write_text(FAKE_WANDB.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_WANDB_CALLS": str(tmp_path / "calls.jsonl")}


def _calls(env: dict[str, str]) -> list[list[str]]:
    path = Path(env["FAKE_WANDB_CALLS"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _sync(sweep: Path, env: dict[str, str], *args: str):
    return run_cli(["xai_bench.sync", f"sweep={sweep}", "check_server=false", *args],
                   cwd=sweep.parent, env=env, timeout=120)


def _run_ids(call: list[str]) -> list[str]:
    return [Path(arg).name.rsplit("-", 1)[-1] for arg in call if "offline-run-" in arg]


# --------------------------------------------------------------------------------------------
# fast


def test_runs_found_grouped_and_ordered_for_the_lineage(sweep: Path) -> None:
    runs = find_runs(sweep)
    assert [r.run_id for r in runs] == ["trainaaa", "traindd1", "evalbbbb", "reportcc"]
    requeued = runs[0]  # its two attempts, the first first
    assert len(requeued.pending) == 2 and "20000101_000000" in requeued.pending[0].name
    assert requeued.job_type == "train" and requeued.name == "syn-random-s1"
    assert sync_args(["wandb"], requeued, project="q") == [
        "wandb", "sync", "--project", "q", *map(str, requeued.pending)]


def test_dry_run_flag_is_a_hydra_override() -> None:
    assert hydra_argv(["sync", "sweep=x", "--dry-run"]) == ["sync", "sweep=x", "dry_run=true"]


# --------------------------------------------------------------------------------------------
# the command


@pytest.mark.slow
def test_dry_run_lists_and_uploads_nothing(sweep: Path, fake_wandb: dict[str, str]) -> None:
    proc = _sync(sweep, fake_wandb, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("would sync")]
    assert [line.split("(")[1].split(")")[0] for line in lines] == [
        "trainaaa", "traindd1", "evalbbbb", "reportcc"]
    assert "wandb sync" in lines[0] and lines[0].count("offline-run-") == 2
    assert "Dry run, nothing uploaded: 4 would sync." in proc.stdout
    assert _calls(fake_wandb) == []
    assert not list(sweep.rglob("*.wandb.synced"))


@pytest.mark.slow
def test_sync_uploads_each_run_once_in_order_then_skips(sweep: Path,
                                                        fake_wandb: dict[str, str]) -> None:
    proc = _sync(sweep, fake_wandb)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = _calls(fake_wandb)
    assert [_run_ids(call) for call in calls] == [
        ["trainaaa", "trainaaa"], ["traindd1"], ["evalbbbb"], ["reportcc"]]
    assert all(call[0] == "sync" for call in calls)
    assert "20000101_000000" in calls[0][1]  # the first attempt first
    assert "synced     train  syn-random-s1 (trainaaa): 2 folder(s)" in proc.stdout
    assert "4 synced." in proc.stdout
    assert len(list(sweep.rglob("*.wandb.synced"))) == 5

    again = _sync(sweep, fake_wandb)
    assert again.returncode == 0 and len(_calls(fake_wandb)) == 4  # nothing called again
    assert "4 skipped." in again.stdout


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_still_upload(
        sweep: Path, fake_wandb: dict[str, str]) -> None:
    env = {**fake_wandb, "FAKE_WANDB_FAIL": "evalbbbb"}
    proc = _sync(sweep, env)
    line = fails_cleanly(proc, "1 of 4 runs were not uploaded")
    assert "run the same command again" in line
    assert ("failed     eval   syn-random-s1-gradcam (evalbbbb): wandb sync exited 1 "
            "(wandb: ERROR failed to upload") in proc.stdout
    assert [_run_ids(c)[0] for c in _calls(env)] == ["trainaaa", "traindd1", "evalbbbb",
                                                     "reportcc"]
    retry = _sync(sweep, fake_wandb)  # fixed: only the failed run is uploaded
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert [_run_ids(c) for c in _calls(fake_wandb)][-1] == ["evalbbbb"]
    assert "1 synced, 3 skipped." in retry.stdout


@pytest.mark.slow
def test_missing_artifact_files_are_listed(sweep: Path, fake_wandb: dict[str, str]) -> None:
    import wandb

    folder = sweep / "2_train"
    data = folder / "model.ckpt"
    folder.mkdir()
    data.write_text("weights")
    run = wandb.init(project="p", dir=str(folder), mode="offline", job_type="train", name="m")
    artifact = wandb.Artifact("model-x", type="model")
    artifact.add_file(str(data), name="model.ckpt", policy="immutable")
    run.log_artifact(artifact)
    run.finish()
    wandb.teardown()
    data.unlink()
    proc = _sync(sweep, fake_wandb, "dry_run=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"1 artifact file(s) missing, not uploaded: model-x/model.ckpt ({data})" in proc.stdout


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    def cfg(**values: object) -> DictConfig:
        return OmegaConf.create({"sweep": str(tmp_path), "dry_run": False, "check_server": False,
                                 "wandb_command": "wandb", **values})

    with pytest.raises(ConfigError, match="no sweep given"):
        sync(cfg(sweep="???"))
    with pytest.raises(ConfigError, match="is not a folder"):
        sync(cfg(sweep=str(tmp_path / "nowhere")))
    assert sync(cfg()) == [] and "No W&B offline runs below" in capsys.readouterr().out
    _offline_run(tmp_path / "x", "train", "n", "lonely01")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="'no-such-wandb' was not found"):
        sync(cfg(wandb_command="no-such-wandb"))
    # a dry run needs no wandb command: it lists what it would call
    assert [o.status for o in sync(cfg(wandb_command="no-such-wandb", dry_run=True))] == [
        "would sync"]


@pytest.mark.slow
def test_cli_usage_error_is_one_line(tmp_path: Path) -> None:
    fails_cleanly(run_cli(["xai_bench.sync"], cwd=tmp_path), "no sweep given", "sweep=<")
