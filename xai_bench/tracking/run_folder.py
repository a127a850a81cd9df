"""The run-folder contract that evaluation and reports build on, and the one way to write it.

<run>/config.yaml          resolved config + `meta` (git revision, package version, start time) of
                           the latest attempt that ran in this folder (see attempts/ for
                           earlier ones)
<run>/checkpoints/         best.ckpt (lowest validation loss) and last.ckpt
<run>/metrics.json         final validation and test metrics of best.ckpt, best_epoch; written only
                           when the run succeeded (a failed run has error.txt instead)
<run>/jobs.jsonl           one line per attempt that started (xai_bench.tracking.cluster)
<run>/attempts/            what each attempt n ran with: config.<n>.yaml (its resolved config) and
                           Hydra's record of its launch (hydra-config.<n>.yaml, hydra.<n>.yaml,
                           overrides.<n>.yaml); with resume=fresh, the earlier attempt's
                           checkpoints.<n>/ and metrics.<n>.json
<run>/error.txt            why the latest attempt failed (not written when a refused rerun left a
                           finished run untouched: that message is on the terminal only)
<run>/wandb/               the W&B offline run(s), one per attempt

Rules that keep a run folder trustworthy:
- An attempt is validated completely (config values, the checkpoint it resumes from against the
  model it builds, W&B) before it writes anything; a refused rerun changes no file.
- Hydra itself rewrites <run>/.hydra/ at every launch, before any of our code runs, even one
  that is then refused: .hydra/ is the record of the latest launch, attempts/ keeps each attempt's.
- Every file is written to a temporary file in the same folder, flushed to disk and renamed over
  the target (`atomic_write_text`, `atomic_open`): a crash or a full disk leaves the previous
  version or none, never a truncated one. A full disk raises DiskFullError: which file, the folder
  and the free space, in one line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

import xai_bench
from xai_bench.utils.disk import (  # noqa: F401 - part of the run-folder API
    NO_SPACE_ERRNOS,
    DiskFullError,
    disk_full_cause,
    disk_full_message,
    free_space,
    is_disk_full,
)
from xai_bench.utils.errors import XaiBenchError
from xai_bench.utils.git import git_revision

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
META_EVALUATION_FILE = "meta_evaluation.json"
META_EVALUATION_CSV = "meta_evaluation.csv"
ERROR_FILE = "error.txt"
JOBS_FILE = "jobs.jsonl"
ATTEMPTS_DIR = "attempts"
CHECKPOINT_DIR = "checkpoints"
HYDRA_DIR = ".hydra"
# .hydra/<name> -> attempts/<stem>.<n>.yaml
HYDRA_RECORD = {"config.yaml": "hydra-config", "hydra.yaml": "hydra", "overrides.yaml": "overrides"}


# --------------------------------------------------------------------------------------------
# Writing files


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); folders cannot be opened on Windows."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, fsync: bool = True, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open `path` for writing through a temporary file in the same folder, renamed over `path`
    only when the block ends without an error (os.replace is atomic within a filesystem).

    On any error the temporary file is removed and `path` keeps its previous content; a full
    disk becomes DiskFullError. `fsync` flushes file and folder to disk before returning, so a
    power cut cannot leave an empty file behind a completed rename.
    """
    if "w" not in mode or "+" in mode:
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a hidden name no glob of the run folder matches (*.ckpt, *.json); "x": never clobber
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    text = "b" not in mode
    try:
        with open(
            temp,
            mode.replace("w", "x"),
            encoding="utf-8" if text else None,
            newline=newline if text else None,
        ) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            temp.unlink()
        if disk_full_cause(err) is not None:
            raise DiskFullError(disk_full_message(target)) from err
        raise
    if fsync:
        _fsync_folder(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Write `text` (UTF-8) to `path` atomically (see atomic_open)."""
    with atomic_open(path, "w", fsync=fsync) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to `path` atomically (see atomic_open)."""
    with atomic_open(path, "wb", fsync=fsync) as handle:
        handle.write(data)
    return Path(path)


# --------------------------------------------------------------------------------------------
# The run's files


def run_metadata() -> dict[str, Any]:
    return {
        "git": git_revision(),
        "xai_bench_version": xai_bench.__version__,
        "python": platform.python_version(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config with every interpolation resolved, plus run metadata under `meta`."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(container, dict)
    container["meta"] = run_metadata()
    return container


def config_text(container: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(container))


def write_config(container: dict[str, Any], output_dir: str | Path) -> Path:
    """<run>/config.yaml, atomically (evaluation and report folders; training uses
    start_attempt)."""
    return atomic_write_text(Path(output_dir) / CONFIG_FILE, config_text(container))


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> JSON numbers, recursively; NaN/inf -> null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(metrics: dict[str, Any], output_dir: str | Path) -> Path:
    text = json.dumps(_plain(metrics), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(Path(output_dir) / METRICS_FILE, text)


def write_error(output_dir: str | Path, text: str) -> Path | None:
    """<run>/error.txt, atomically; never raises (the original error matters more), so a full
    disk leaves the previous error.txt (or none) instead of an empty file."""
    try:
        return atomic_write_text(Path(output_dir) / ERROR_FILE, text)
    except Exception:  # noqa: BLE001 - never hide the original error
        return None


# --------------------------------------------------------------------------------------------
# Attempts: every start of a training run in this folder


def attempts_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / ATTEMPTS_DIR


def _archive_copy(source: Path, target: Path) -> None:
    """Copy `source` to `target` unless `target` exists (an archive is written once)."""
    if source.is_file() and not target.exists():
        atomic_write_bytes(target, source.read_bytes())


def archive_earlier_attempt(output_dir: str | Path, attempt: int, *,
                            move_results: bool = False) -> None:
    """Keep what attempt `attempt` (the one before this) left at the top of the run folder.

    Its config.yaml is copied to attempts/config.<attempt>.yaml when not archived yet (folders
    written before attempts/ existed). With `move_results` (resume=fresh: this attempt starts
    over), its checkpoints/ and metrics.json move to attempts/checkpoints.<attempt>/ and
    attempts/metrics.<attempt>.json: renames on the same disk, nothing is deleted.
    """
    root = Path(output_dir)
    archive = attempts_dir(root)
    _archive_copy(root / CONFIG_FILE, archive / f"config.{attempt}.yaml")
    if not move_results:
        return
    archive.mkdir(parents=True, exist_ok=True)
    for source, name in ((root / CHECKPOINT_DIR, f"checkpoints.{attempt}"),
                         (root / METRICS_FILE, f"metrics.{attempt}.json")):
        if source.exists():
            target = archive / name
            suffix = 1
            while target.exists():
                suffix += 1
                target = archive / f"{name}-{suffix}"
            os.replace(source, target)


def start_attempt(output_dir: str | Path, container: dict[str, Any], attempt: int) -> Path:
    """Write attempt `attempt`'s config: attempts/config.<n>.yaml, Hydra's record of this launch
    (attempts/hydra-config.<n>.yaml, hydra.<n>.yaml, overrides.<n>.yaml) and <run>/config.yaml.
    Called by rank zero once the attempt is fully validated, and only then."""
    root = Path(output_dir)
    archive = attempts_dir(root)
    text = config_text(container)
    atomic_write_text(archive / f"config.{attempt}.yaml", text)
    for name, stem in HYDRA_RECORD.items():
        _archive_copy(root / HYDRA_DIR / name, archive / f"{stem}.{attempt}.yaml")
    return atomic_write_text(root / CONFIG_FILE, text)


def saved_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's checkpoints/*.ckpt, newest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.ckpt") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


# --------------------------------------------------------------------------------------------
# Reading a run folder


CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")


def run_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint at <run>/checkpoints/<name>.ckpt (also for a path that
    does not exist here, e.g. one recorded on another machine)."""
    return Path(checkpoint).parent.parent


def resolve_checkpoint(ckpt: str | Path) -> Path:
    """A checkpoint file, or a run folder (-> its checkpoints/best.ckpt, else last.ckpt)."""
    path = Path(ckpt).expanduser()
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            candidate = path / CHECKPOINT_DIR / name
            if candidate.is_file():
                return candidate
        raise XaiBenchError(f"no checkpoint in {path.resolve()}/checkpoints/ "
                            f"(looked for {', '.join(CHECKPOINT_NAMES)}).")
    if not path.is_file():
        raise XaiBenchError(
            f"checkpoint not found: {path.resolve()}. Pass ckpt=<run folder>/checkpoints/best.ckpt "
            "(or the run folder itself) of a finished training run."
        )
    return path


def find_run_config(checkpoint: Path, run_config: str | Path | None = None) -> Path:
    """The training run's config.yaml: given explicitly, else <run>/config.yaml for a
    checkpoint at <run>/checkpoints/<name>.ckpt (or next to the checkpoint)."""
    if run_config:
        path = Path(run_config).expanduser()
        if not path.is_file():
            raise XaiBenchError(f"run_config={run_config} does not exist.")
        return path
    for folder in (run_of(checkpoint), checkpoint.parent):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    raise XaiBenchError(
        f"no {CONFIG_FILE} found for {checkpoint} "
        f"(looked in {run_of(checkpoint)} and {checkpoint.parent}). "
        "Evaluation rebuilds the model and data from the training run's config: pass "
        "run_config=<path to the training run's config.yaml>."
    )


def load_run_config(path: str | Path) -> DictConfig:
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "model" not in cfg or "dataset" not in cfg:
        raise XaiBenchError(
            f"{path} is not a training run's config.yaml (it has no model/dataset sections).")
    return cfg
