"""Timing helpers shared by the benchmark scripts (run as `python scripts/bench_<x>.py`)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock time measures the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, repeats: int,
           warmup: bool = True) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` runs, after one warm-up run. A full
    garbage collection before each run: otherwise the first run that allocates many Python
    objects pays the collection debt of everything before it (the script's imports)."""
    if warmup:
        fn()
    times = []
    for _ in range(max(1, repeats)):
        gc.collect()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
