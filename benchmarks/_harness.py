"""Timing and peak-memory measurement shared by the benchmark scripts.

Time: median wall time of ``repeat`` calls after ``warmup`` calls (CUDA: synchronised).
Peak memory on CPU: the process's resident high-water mark (``VmHWM``) is reset through
``/proc/self/clear_refs`` before the call and read after it, minus the resident size at the
start, so it counts every allocation the call makes (torch's CPU allocator returns large
blocks to the OS on free). On CUDA: ``torch.cuda.max_memory_allocated`` above the start.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from focalkit.cli.bench_suite import (  # the package holds the one copy `focalkit bench` uses
    environment,
    fix_mmap_threshold,
    interleaved_medians,
    interleaved_times,
    peak_bytes,
)
from focalkit.demo.records import atomic_write_json

__all__ = [
    "environment",
    "fix_mmap_threshold",
    "fmt_bytes",
    "interleaved_medians",
    "interleaved_times",
    "median_seconds",
    "peak_bytes",
    "peak_bytes_in_child",
    "write_json_atomic",
]


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Write JSON to a temporary file beside ``path``, fsync, then rename over it."""
    atomic_write_json(Path(path), payload)


def peak_bytes_in_child(script: str, args: list[str]) -> int | None:
    """Run ``python script *args`` (which prints one JSON number: the peak bytes) and return it."""
    import subprocess
    import sys

    out = (
        subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()
    )
    value = json.loads(out[-1]) if out else None
    return None if value is None else int(value)


def median_seconds(
    fn: Callable[[], object], device: torch.device, *, repeat: int, warmup: int = 1
) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:8.1f} MiB"
