"""The one timing and peak-memory harness of every focalkit benchmark.

Time: :func:`interleaved_times` / :func:`interleaved_medians` time each function in
alternating blocks (A A A, B B B, A A A ...), each block after ``warmup`` untimed calls,
CUDA synchronised around every call; the result is the median of the timed calls.
``rounds=1`` is the plain "all of A, then all of B" method.

Peak memory (:func:`peak_bytes`): on CUDA ``torch.cuda.max_memory_allocated`` above the
allocation at the start of one call; on CPU the process's resident high-water mark
(``VmHWM``), reset through ``/proc/self/clear_refs`` before the call and read after it, minus
the resident size at the start, so it counts every allocation the call makes (torch's CPU
allocator returns large blocks to the OS on free). :func:`peak_in_child` runs such a
measurement in a fresh process with glibc's mmap threshold lowered
(:func:`fix_mmap_threshold`), so that timings in the parent stay unaffected and freed blocks
go back to the OS.

:func:`environment` is the machine and software record stored with every result.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "environment",
    "fix_mmap_threshold",
    "fmt_bytes",
    "fwd_bwd_step",
    "interleaved_medians",
    "interleaved_times",
    "peak_bytes",
    "peak_in_child",
]

STATUS = Path("/proc/self/status")


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved_times(fns, device, *, repeat: int, warmup: int = 1, rounds: int = 3):
    """Seconds of every timed call of each function, timed in alternating blocks
    (A A A, B B B, A A A ...); each block starts with ``warmup`` untimed calls."""
    sync = _sync(device)
    rounds = max(1, min(rounds, repeat))
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
    return times


def interleaved_medians(fns, device, *, repeat: int, warmup: int = 1, rounds: int = 3):
    """Median seconds of each function, timed as :func:`interleaved_times`."""
    times = interleaved_times(fns, device, repeat=repeat, warmup=warmup, rounds=rounds)
    return {name: statistics.median(ts) for name, ts in times.items()}


def fwd_bwd_step(loss_fn: Callable[..., torch.Tensor], leaf: torch.Tensor, *args):
    """A call of ``loss_fn(x, *args).backward()`` from a fresh gradient, ``x`` a leaf that
    shares ``leaf``'s storage; returns the loss."""
    x = leaf.detach().requires_grad_(True)

    def step():
        x.grad = None
        loss = loss_fn(x, *args)
        loss.backward()
        return loss

    return step


def fix_mmap_threshold() -> None:
    """Lower glibc's mmap threshold to 64 KiB, so large freed blocks go back to the OS at once
    (the resident high-water mark then counts every call's allocations)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _status_kib(name: str) -> int:
    match = re.search(rf"{name}:\s+(\d+)", STATUS.read_text())
    return int(match.group(1)) if match else 0


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes one call of ``fn`` allocates above what is allocated before it (after one
    untimed call); ``None`` where the CPU high-water mark cannot be reset."""
    fn()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    if not STATUS.exists():
        return None
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    start = _status_kib("VmRSS")
    fn()
    return max(0, (_status_kib("VmHWM") - start) * 1024)


def peak_in_child(target: str, **spec: Any) -> Any:
    """``target(**spec)`` (``"package.module:function"``, returning something JSON can hold,
    typically from :func:`peak_bytes`) run in a fresh Python process after
    :func:`fix_mmap_threshold`; returns what it returned. Raises
    :class:`subprocess.CalledProcessError` if the child fails."""
    import focalkit

    env = dict(os.environ)
    src = str(Path(focalkit.__file__).resolve().parents[1])  # the same focalkit as here
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = (
        subprocess.run(
            [sys.executable, "-m", "focalkit.bench", "--peak-child", target, json.dumps(spec)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        .stdout.strip()
        .splitlines()
    )
    return json.loads(out[-1]) if out else None


def peak_child_main(target: str, spec_text: str) -> int:
    """The child side of :func:`peak_in_child` (``python -m focalkit.bench --peak-child``)."""
    fix_mmap_threshold()
    module_name, _, function = target.partition(":")
    fn = getattr(importlib.import_module(module_name), function)
    print(json.dumps(fn(**json.loads(spec_text))))
    return 0


def environment(device: torch.device) -> dict:
    """Versions, machine, thread count and device a result was measured with."""
    import importlib.metadata as md

    import focalkit

    info = {
        "focalkit": focalkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
    }
    for dist in ("triton", "torchvision", "kornia", "monai"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    return info


def fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:8.1f} MiB"
