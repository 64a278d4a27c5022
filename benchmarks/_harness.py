"""Timing and peak-memory measurement shared by the benchmark scripts.

Time: median wall time of ``repeat`` calls after ``warmup`` calls (CUDA: synchronised).
Peak memory on CPU: the process's resident high-water mark (``VmHWM``) is reset through
``/proc/self/clear_refs`` before the call and read after it, minus the resident size at the
start, so it counts every allocation the call makes (torch's CPU allocator returns large
blocks to the OS on free). On CUDA: ``torch.cuda.max_memory_allocated`` above the start.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def fix_mmap_threshold() -> None:
    """Make glibc serve every block >= 64 KiB with mmap and give it back on free, so that the
    resident high-water mark measures peak memory (by default the threshold grows after the
    first large free and later blocks stay in the heap, invisible to VmHWM)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass





def _status_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+)", _STATUS.read_text())
    return int(match.group(1)) if match else 0


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra memory at the peak of one ``fn()`` call (None where it cannot be measured).

    On CPU call :func:`fix_mmap_threshold` first, in a process of its own (see
    :func:`peak_bytes_in_child`): it changes the allocator, so timings there are not comparable.
    """
    fn()  # lazy initialisation outside the measurement
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    if not _STATUS.exists():
        return None
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    start = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - start) * 1024


def peak_bytes_in_child(script: str, args: list[str]) -> int | None:
    """Run ``python script *args`` (which prints one JSON number: the peak bytes) and return it."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, script, *args], check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()
    value = json.loads(out[-1]) if out else None
    return None if value is None else int(value)


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    repeat: int,
    warmup: int = 1,
    rounds: int = 3,
) -> dict[str, float]:
    """Median seconds of each function, timed in alternating blocks (A A A, B B B, A A A, ...)
    so that background load affects every variant alike. Each block starts with ``warmup``
    untimed calls, so one variant's allocations and cache state do not tax the next."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    per_block = max(1, -(-repeat // rounds))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            sync()
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def median_seconds(fn: Callable[[], object], device: torch.device, *, repeat: int, warmup: int = 1) -> float:
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


def environment(device: torch.device) -> dict:
    import focalkit

    info = {
        "focalkit": focalkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Write JSON to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:8.1f} MiB"
