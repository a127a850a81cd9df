"""A run folder never loses data (issue 12, findings 3 and 4).

3. A rerun into a finished run folder is validated completely before it writes anything (it
   used to rewrite config.yaml first: a different model.embed_dim, or optimizer.lr=-1, left a
   finished run whose config no longer matched its checkpoint), and every attempt's config is
   kept under attempts/.
4. Every file is written through a temporary file in the same folder and renamed: a full disk
   (simulated: writes raise OSError(ENOSPC) partway, in-process or through a sitecustomize in a
   subprocess) leaves the previous file intact and gives one line (file, folder, free space).
   Checkpoints too (Lightning's save went through the system temp folder and a cross-filesystem
   copy, which left last.ckpt truncated). A truncated last.ckpt no longer blocks the automatic
   resume: the newest readable checkpoint is used, or the run stops with a message, or starts
   over when the user says so (resume=fresh).
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_RUN, run_cli
from conftest import fails_cleanly as _fails_cleanly

from xai_bench.modules.callbacks import AtomicCheckpointIO
from xai_bench.report.tables import write_per_image_csv
from xai_bench.tracking.cluster import find_resume_point, read_attempts, record_attempt
from xai_bench.tracking.records import TrainingRecord, read_plain_config
from xai_bench.tracking.run_folder import (
    DiskFullError,
    atomic_write_bytes,
    atomic_write_text,
    write_config,
    write_error,
    write_metrics,
)
from xai_bench.utils.errors import XaiBenchError

TINY = TINY_RUN

# A full disk, simulated without filling one: files whose name matches XAI_FAULT_GLOB, opened for
# writing, raise OSError(ENOSPC) after XAI_FAULT_BYTES bytes, from the (XAI_FAULT_SKIP + 1)-th
# such file on; from then on every file opened for writing below XAI_FAULT_DIR fails the same
# way (the disk stays full). The same code patches open() in-process (the `full_disk` fixture)
# and, written to sitecustomize.py on PYTHONPATH, in a subprocess.
FAULT_INJECTOR = textwrap.dedent('''
    import builtins
    import errno
    import fnmatch
    import io
    import os

    _real_open = builtins.open
    _state = {"matches": 0, "full": False}


    class _FullDiskFile:
        def __init__(self, handle, budget, name):
            self._handle, self._budget, self._name = handle, budget, name

        def write(self, data):
            if len(data) > self._budget:
                self._handle.write(data[: self._budget])
                self._handle.flush()
                self._budget = 0
                _state["full"] = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)
            self._budget -= len(data)
            return self._handle.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()
            return False

        def __iter__(self):
            return iter(self._handle)

        def __getattr__(self, name):
            return getattr(self._handle, name)


    def _faulty_open(file, mode="r", *args, **kwargs):
        handle = _real_open(file, mode, *args, **kwargs)
        if not isinstance(file, (str, bytes, os.PathLike)) or not any(c in mode for c in "wxa"):
            return handle
        path = os.path.abspath(os.fsdecode(file))
        folder = os.environ.get("XAI_FAULT_DIR", "")
        if _state["full"] and folder and path.startswith(folder):
            return _FullDiskFile(handle, 0, path)
        if fnmatch.fnmatch(os.path.basename(path), os.environ.get("XAI_FAULT_GLOB", "")):
            _state["matches"] += 1
            if _state["matches"] > int(os.environ.get("XAI_FAULT_SKIP", "0")):
                return _FullDiskFile(handle, int(os.environ.get("XAI_FAULT_BYTES", "0")), path)
        return handle


    def install():
        builtins.open = _faulty_open
        io.open = _faulty_open


    if os.environ.get("XAI_FAULT_GLOB"):
        install()
''')


def _fault_module() -> dict:
    namespace: dict = {}
    exec(compile(FAULT_INJECTOR, "fault_injector", "exec"), namespace)
    return namespace


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch):
    """full_disk(folder, glob, skip=0, nbytes=10): writes fail from the next matching file on."""

    def _install(folder: Path, glob: str, skip: int = 0, nbytes: int = 10) -> None:
        monkeypatch.setenv("XAI_FAULT_DIR", str(folder))
        monkeypatch.setenv("XAI_FAULT_GLOB", glob)
        monkeypatch.setenv("XAI_FAULT_SKIP", str(skip))
        monkeypatch.setenv("XAI_FAULT_BYTES", str(nbytes))
        namespace = _fault_module()
        monkeypatch.setattr(builtins, "open", namespace["_faulty_open"])
        import io

        monkeypatch.setattr(io, "open", namespace["_faulty_open"])

    return _install


def _digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file below `folder` -> its sha256 (skipping `skip` top-level names)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] not in skip
    }


# Hydra itself appends to <task>.log and rewrites .hydra/ at every launch, before xai_bench runs.
HYDRA_OWN = ("train.log", ".hydra")




# --------------------------------------------------------------------------------------------
# 4. atomic writes, in-process


def test_atomic_write_keeps_the_old_file_on_a_full_disk(tmp_path: Path, full_disk) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old: 1\n")
    full_disk(tmp_path, ".config.yaml.*", nbytes=3)
    with pytest.raises(DiskFullError) as err:
        atomic_write_text(target, "new: 2\n" * 100)
    message = str(err.value)
    assert "\n" not in message
    assert (f"config.yaml in {tmp_path}" in message and "free of" in message
            and "free space" in message)
    assert target.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temporary file left


@pytest.mark.parametrize("writer",
                         ["config", "metrics", "per_image", "jobs", "error", "checkpoint"])
def test_every_run_file_survives_a_full_disk(tmp_path: Path, full_disk, writer: str) -> None:
    """The run files of issue 12 (config.yaml, metrics.json, per_image.csv, jobs.jsonl,
    error.txt, checkpoints): the previous version stays whole when the disk fills mid-write."""
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    writers = {
        "config": (tmp_path / "config.yaml", lambda: write_config({"a": "x" * 20000}, tmp_path)),
        "metrics": (tmp_path / "metrics.json",
                    lambda: write_metrics({"acc": [0.5] * 2000}, tmp_path)),
        "per_image": (tmp_path / "per_image.csv",
                      lambda: write_per_image_csv([{"id": i, "v": 0.5} for i in range(2000)],
                                                  tmp_path / "per_image.csv")),
        "jobs": (tmp_path / "jobs.jsonl",
                 lambda: record_attempt(tmp_path, {"checkpoint": "x" * 20000})),
        "error": (tmp_path / "error.txt", lambda: write_error(tmp_path, "Traceback\n" * 2000)),
        "checkpoint": (ckpt, lambda: AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(20000)},
                                                                          ckpt)),
    }
    path, write = writers[writer]
    write()  # the previous version, written normally
    before = path.read_bytes()
    assert before
    full_disk(tmp_path, f".{path.name}.*", nbytes=5000)
    if writer == "error":
        assert write() is None  # never raises: the task's own error matters more
    else:
        with pytest.raises(DiskFullError,
                           match=f"disk full while writing {path.name} in {path.parent}"):
            write()
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_atomic_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """A temporary file from mkstemp is private (0600): renamed, it would hide a run's files from
    the lab's group on a shared cluster. Files are created with the umask like plain writes."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_bytes(tmp_path / "atomic.txt", b"x")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_jobs_file_tolerates_a_torn_line(tmp_path: Path) -> None:
    """jobs.jsonl appended in place by older versions may end in a half line after a crash."""
    (tmp_path / "jobs.jsonl").write_text('{"attempt": 1, "host": "a"}\n{"attempt": 2, "ho')
    assert [e["attempt"] for e in read_attempts(tmp_path)] == [1]
    entry = record_attempt(tmp_path, None)
    assert entry["attempt"] == 2
    assert [e["attempt"] for e in read_attempts(tmp_path)] == [1, 2]
    assert (tmp_path / "jobs.jsonl").read_text().count("\n") == 2  # rewritten whole, torn line gone


def test_attempt_numbers_never_overwrite_an_archived_config(tmp_path: Path) -> None:
    """jobs.jsonl and attempts/ disagree (a torn jobs.jsonl, a hand-deleted line): the next
    attempt takes a number above both, so no attempts/config.<n>.yaml is replaced."""
    from xai_bench.tracking.cluster import next_attempt
    from xai_bench.tracking.run_folder import start_attempt

    record_attempt(tmp_path, None)
    (tmp_path / "attempts").mkdir()
    (tmp_path / "attempts" / "config.3.yaml").write_text("kept: true\n")
    attempt = next_attempt(tmp_path)
    assert attempt == 4
    start_attempt(tmp_path, {"new": True}, attempt)
    assert (tmp_path / "attempts" / "config.3.yaml").read_text() == "kept: true\n"
    assert read_plain_config(tmp_path) == {"new": True}
    assert ((tmp_path / "attempts" / "config.4.yaml").read_bytes()
            == (tmp_path / "config.yaml").read_bytes())


# --------------------------------------------------------------------------------------------
# 4. resume from an unreadable checkpoint, in-process


def _checkpoint(path: Path, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(1000)}, "loops": {}, "optimizer_states": [],
                "epoch": epoch, "global_step": 10 * epoch}, path)


def test_resume_skips_a_truncated_last_checkpoint(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "checkpoints" / "best.ckpt", 1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    _checkpoint(last, 2)
    last.write_bytes(last.read_bytes()[:1500])  # what a full disk left (issue 12)
    point = find_resume_point(tmp_path, True)
    assert point.checkpoint == tmp_path / "checkpoints" / "best.ckpt"
    assert point.summary() == {"checkpoint": str(point.checkpoint), "epoch": 1, "global_step": 10}
    assert "last.ckpt" in point.skipped and "unreadable" in point.skipped["last.ckpt"]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_no_readable_checkpoint_stops_with_a_message(tmp_path: Path, damage: str) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    _checkpoint(last, 2)
    last.write_bytes(last.read_bytes()[:1500] if damage == "truncated" else b"")
    with pytest.raises(XaiBenchError) as err:
        find_resume_point(tmp_path, True)
    message = str(err.value)
    assert "\n" not in message
    assert ("checkpoints/last.ckpt" in message and "resume=fresh" in message
            and "hydra.run.dir" in message)
    assert find_resume_point(tmp_path, "fresh").checkpoint is None  # the user said so: start over
    assert find_resume_point(tmp_path, False).checkpoint is None


# --------------------------------------------------------------------------------------------
# CLI: a finished run folder (conftest.py's finished_run / run_copy), rerun


def _rerun(run: Path, *overrides: str, env: dict[str, str] | None = None, timeout: float = 600):
    return run_cli(["xai_bench.train", *TINY, f"hydra.run.dir={run}", *overrides], cwd=run.parent,
                   timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("model.embed_dim=48",
         ("checkpoints/last.ckpt does not fit the model", "net.cls_token", "hydra.run.dir=")),
        ("optimizer.lr=-1", ("optimizer.lr must be > 0",)),
        ("resume=false",
         ("already holds checkpoints", "best.ckpt", "hydra.run.dir=", "resume=true")),
    ],
)
def test_refused_rerun_changes_nothing_in_a_finished_run(run_copy: Path, override: str,
                                                         needles: tuple[str, ...]) -> None:
    before = _digest(run_copy, skip=HYDRA_OWN)
    _fails_cleanly(_rerun(run_copy, override), *needles)
    # config.yaml, checkpoints, metrics, jobs, attempts/
    assert _digest(run_copy, skip=HYDRA_OWN) == before
    assert not (run_copy / "error.txt").exists()  # the finished run is not marked failed
    # Hydra rewrote .hydra/ for the refused launch; the finished attempt's record is in attempts/
    assert override in (run_copy / ".hydra" / "overrides.yaml").read_text()
    assert override not in (run_copy / "attempts" / "overrides.1.yaml").read_text()
    # the finished run still matches its checkpoint
    from xai_bench.models.weights import load_trained_network
    from xai_bench.utils.instantiate import instantiate_node

    model = read_plain_config(run_copy)["model"]
    model["init"] = {"name": "random", "pretrained": False}
    load_trained_network(instantiate_node(model, "model"), run_copy / "checkpoints" / "best.ckpt")


@pytest.mark.slow
def test_each_attempt_keeps_its_config(run_copy: Path) -> None:
    first = (run_copy / "config.yaml").read_bytes()
    assert (run_copy / "attempts" / "config.1.yaml").read_bytes() == first
    proc = _rerun(run_copy, "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-5000:]
    attempts = run_copy / "attempts"
    assert (attempts / "config.1.yaml").read_bytes() == first
    assert yaml.safe_load((attempts / "config.1.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert yaml.safe_load((attempts / "config.2.yaml").read_text())["trainer"]["max_epochs"] == 3
    assert (run_copy / "config.yaml").read_bytes() == (attempts / "config.2.yaml").read_bytes()
    assert "trainer.max_epochs=3" in (attempts / "overrides.2.yaml").read_text()
    jobs = read_attempts(run_copy)
    assert [j["attempt"] for j in jobs] == [1, 2]
    assert jobs[1]["resumed_from"]["checkpoint"].endswith("checkpoints/last.ckpt")
    assert TrainingRecord.read(run_copy).epochs_trained == 3


@pytest.mark.slow
def test_folder_from_before_attempts_keeps_its_config(run_copy: Path) -> None:
    """A run folder written before attempts/ existed: its config.yaml becomes attempt 1's."""
    shutil.rmtree(run_copy / "attempts")
    first = (run_copy / "config.yaml").read_bytes()
    proc = _rerun(run_copy, "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (run_copy / "attempts" / "config.1.yaml").read_bytes() == first
    assert read_plain_config(run_copy)["trainer"]["max_epochs"] == 3


# --------------------------------------------------------------------------------------------
# CLI: a full disk during training, an unreadable last.ckpt


@pytest.mark.slow
def test_full_disk_while_saving_a_checkpoint(tmp_path: Path) -> None:
    """The disk fills while epoch 2's last.ckpt is written: one line (file, folder, free space),
    exit 2, epoch 1's last.ckpt intact, no truncated or temporary file, and the documented
    automatic resume continues from it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAULT_INJECTOR)
    run = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(site),
                                          os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "XAI_FAULT_DIR": str(run), "XAI_FAULT_GLOB": "*last.ckpt*", "XAI_FAULT_SKIP": "1",
           "XAI_FAULT_BYTES": "100000"}
    proc = run_cli(["xai_bench.train", *TINY, f"hydra.run.dir={run}"], cwd=tmp_path, timeout=600,
                   env=env)
    line = _fails_cleanly(proc, "disk full while writing last.ckpt in", str(run / "checkpoints"),
                          "free of")
    assert "run the same command again" in line
    checkpoints = run / "checkpoints"
    # no temporary file
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0  # epoch 1's, whole
    assert not (run / "metrics.json").exists()
    error = run / "error.txt"
    assert not error.exists() or error.stat().st_size > 0  # was 0 bytes (issue 12)

    proc = run_cli(["xai_bench.train", *TINY, f"hydra.run.dir={run}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = TrainingRecord.read(run)
    assert (metrics.resumed_from["checkpoint"].endswith("last.ckpt")
            and metrics.resumed_from["epoch"] == 0)
    assert metrics.epochs_trained == 2 and not error.exists()


@pytest.mark.slow
def test_truncated_last_checkpoint_falls_back_to_best(run_copy: Path) -> None:
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size * 2 // 5])  # 172 of 429 KB (issue 12)
    proc = _rerun(run_copy, "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "checkpoints/last.ckpt is unreadable" in proc.stdout + proc.stderr
    jobs = read_attempts(run_copy)
    assert jobs[-1]["resumed_from"]["checkpoint"].endswith("checkpoints/best.ckpt")
    assert "last.ckpt" in jobs[-1]["skipped_checkpoints"]
    # saved anew, whole
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_no_readable_checkpoint_stops_then_starts_over_when_asked(run_copy: Path) -> None:
    checkpoints = run_copy / "checkpoints"
    for ckpt in checkpoints.iterdir():
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    damaged = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    before = _digest(run_copy, skip=HYDRA_OWN)
    _fails_cleanly(_rerun(run_copy), "checkpoints/last.ckpt is unreadable", "resume=fresh",
                   "hydra.run.dir=")
    assert _digest(run_copy, skip=HYDRA_OWN) == before

    proc = _rerun(run_copy, "resume=fresh")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    kept = run_copy / "attempts" / "checkpoints.1"
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == damaged  # moved aside, not deleted
    assert (run_copy / "attempts" / "metrics.1.json").is_file()
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu",
                      weights_only=True)["epoch"] == 1
    assert TrainingRecord.read(run_copy).resumed_from is None

