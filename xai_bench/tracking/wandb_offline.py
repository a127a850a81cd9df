"""Read a W&B offline run back (its `run-<id>.wandb` transaction log) without a W&B server.

Tests and reports use it to check what a run really logged. The file is a LevelDB-style log of
protobuf `Record`s (W&B's own format; the SDK no longer ships a Python reader): a 7-byte file
header, then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type) and
records split FULL or FIRST/MIDDLE.../LAST across blocks.

It also finds the W&B runs a run folder holds (`<run>/wandb/offline-run-<time>-<id>/`, or
`run-<time>-<id>` online): a requeued attempt continues the run id found there, and an evaluation
names the checkpoint artifact of its training run after it (xai_bench.tracking.lineage).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    ident, _magic, _version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:  # block tail too short for a header: zero padding
            pos += room
            continue
        _crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero-filled tail of a block or of a run cut short
            pos += room
            continue
        start = pos + _CHUNK_HEADER.size
        chunk, pos = data[start : start + length], start + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


@dataclass
class OfflineArtifact:
    """An artifact record: logged by the run (its output), or declared as used (its input:
    W&B's "use after commit", a use that `wandb sync` records once the version exists)."""

    name: str
    type: str
    digest: str
    aliases: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    user_created: bool = False
    use_after_commit: bool = False
    # path, digest, size, and ref (a reference) or local_path (a file uploaded on sync)
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_input(self) -> bool:
        return self.use_after_commit

    @property
    def is_output(self) -> bool:
        return not self.user_created


@dataclass
class OfflineRun:
    """What an offline run holds: identity, config, history rows, summary and artifacts."""

    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[OfflineArtifact] = field(default_factory=list)
    # wandb.init's resume setting was on: `wandb sync` appends this file to a run of that id
    resume: bool = False
    start_time: float = 0.0

    def metric(self, key: str) -> list[Any]:
        """Every logged value of `key`, in order."""
        return [row[key] for row in self.history if key in row]

    def inputs(self, kind: str | None = None) -> list[OfflineArtifact]:
        """The artifacts the run declared as used (of type `kind`)."""
        return [a for a in self.artifacts if a.is_input and kind in (None, a.type)]

    def outputs(self, kind: str | None = None) -> list[OfflineArtifact]:
        """The artifacts the run logged (of type `kind`)."""
        return [a for a in self.artifacts if a.is_output and kind in (None, a.type)]


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _update_config(config: dict[str, Any], items: Any) -> None:
    for item in items:
        value = json.loads(item.value_json)
        # W&B stores each config entry as {"value": ..., "desc": ...}
        config[_key(item)] = (value["value"] if isinstance(value, dict) and "value" in value
                              else value)


def _artifact(record: Any) -> OfflineArtifact:
    entries = [{"path": e.path, "digest": e.digest, "size": e.size, "ref": e.ref or None,
                "local_path": e.local_path or None} for e in record.manifest.contents]
    return OfflineArtifact(
        name=record.name, type=record.type, digest=record.digest, aliases=list(record.aliases),
        metadata=json.loads(record.metadata) if record.metadata else {},
        user_created=record.user_created, use_after_commit=record.use_after_commit,
        entries=entries,
    )


def transaction_log(run_dir: str | Path) -> Path:
    """The `run-<id>.wandb` file of a W&B run folder."""
    logs = sorted(Path(run_dir).glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    return logs[0]


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse `<run_dir>/run-*.wandb` (run_dir = a `wandb/offline-run-*` folder)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun()
    for raw in _records(transaction_log(run_dir)):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.job_type = (r.run_id, r.display_name,
                                                             r.run_group, r.job_type)
            run.tags = list(r.tags)
            run.resume = bool(r.resume)
            run.start_time = r.start_time.seconds + r.start_time.nanos / 1e9
            _update_config(run.config, r.config.update)
        elif kind == "artifact":
            run.artifacts.append(_artifact(record.artifact))
        elif kind == "config":
            _update_config(run.config, record.config.update)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
    return run


def offline_run_dirs(root: str | Path) -> list[Path]:
    """All offline run folders below `root` (a run folder or a sweep folder)."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir())


# <run>/wandb/offline-run-20261202_080256-<id> (offline) or run-<time>-<id> (online)
_RUN_DIR = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9_.-]+)$")


def wandb_run_dirs(run_folder: str | Path) -> list[Path]:
    """The W&B runs of one run folder (<run>/wandb/), oldest first."""
    root = Path(run_folder) / "wandb"
    if not root.is_dir():
        return []
    found = [(m.group(1), p) for p in root.iterdir()
             if p.is_dir() and (m := _RUN_DIR.match(p.name)) and any(p.glob("run-*.wandb"))]
    return [p for _, p in sorted(found, key=lambda item: (item[0], item[1].stat().st_mtime))]


def wandb_run_id(run_folder: str | Path) -> str | None:
    """The id of the newest W&B run of a run folder (None when it has none)."""
    runs = wandb_run_dirs(run_folder)
    if not runs:
        return None
    match = _RUN_DIR.match(runs[-1].name)
    return match.group(2) if match else None
