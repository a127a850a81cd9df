"""Read a W&B offline run back (its `run-<id>.wandb` transaction log) without a W&B server.

Tests and reports use it to check what a run really logged. The file is a LevelDB-style log of
protobuf `Record`s (W&B's own format; the SDK no longer ships a Python reader): a 7-byte file
header, then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type) and
records split FULL or FIRST/MIDDLE.../LAST across blocks.
"""

from __future__ import annotations

import json
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
class OfflineRun:
    """What an offline run holds: identity, config, history rows and summary."""

    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def metric(self, key: str) -> list[Any]:
        """Every logged value of `key`, in order."""
        return [row[key] for row in self.history if key in row]


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _update_config(config: dict[str, Any], items: Any) -> None:
    for item in items:
        value = json.loads(item.value_json)
        # W&B stores each config entry as {"value": ..., "desc": ...}
        config[_key(item)] = (value["value"] if isinstance(value, dict) and "value" in value
                              else value)


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse `<run_dir>/run-*.wandb` (run_dir = a `wandb/offline-run-*` folder)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    run = OfflineRun()
    for raw in _records(logs[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.job_type = (r.run_id, r.display_name,
                                                             r.run_group, r.job_type)
            run.tags = list(r.tags)
            _update_config(run.config, r.config.update)
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
