"""Forward+backward time and peak memory of ``focalkit.sigmoid_focal_loss`` against the plain
eager formula of SPEC.md section 1 (torchvision's ``sigmoid_focal_loss``, written out in
:mod:`.baselines`).

    python benchmarks/bench_focal_cpu.py [--numel 4000000] [--classes 80] [--repeat 7] [--json PATH]

Prints one row per variant and the ratios eager / focalkit (higher is better for focalkit).
No torch.compile is involved: both sides run eagerly from the first call. Times are
interleaved (:func:`.harness.interleaved_times`, two warm-up calls per block); each variant's
peak memory is measured in its own child process (:func:`.harness.peak_in_child`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

import focalkit as fk
from focalkit.demo.records import atomic_write_json

from .baselines import eager_focal
from .harness import (
    environment,
    fix_mmap_threshold,
    fmt_bytes,
    fwd_bwd_step,
    interleaved_times,
    peak_bytes,
    peak_in_child,
)

__all__ = ["BASE", "main", "make_inputs", "measure", "summary"]

BASE = "eager formula (dense targets)"


def make_inputs(numel: int, classes: int, seed: int = 0):
    """Logits ``(numel // classes, classes)`` and the dense and class-index targets of ~10%
    positive rows (like anchors)."""
    gen = torch.Generator().manual_seed(seed)
    rows = numel // classes
    logits = torch.randn(rows, classes, generator=gen) * 3
    labels = torch.randint(0, classes + 1, (rows,), generator=gen)  # classes = background
    labels[torch.rand(rows, generator=gen) < 0.9] = classes  # ~10% positive rows, like anchors
    dense = torch.zeros(rows, classes)
    pos = labels < classes
    dense[pos.nonzero().squeeze(1), labels[pos]] = 1.0
    return logits, dense, labels


def _image_shape(numel: int) -> tuple[int, int, int, int]:
    """``(B, 1, H, W)`` with ``B * H * W == numel`` (B = 16 where it divides, H the largest
    divisor of the rest up to its square root): a batch of binary segmentation maps."""
    batch = 16 if numel % 16 == 0 else 1
    rest = numel // batch
    height = max(h for h in range(1, int(rest**0.5) + 1) if rest % h == 0)
    return batch, 1, height, rest // height


def _steps(numel: int, classes: int):
    logits, dense, labels = make_inputs(numel, classes)
    # the same elements as (N,), (N, 1) and (B, 1, H, W): the chunked path cuts dense
    # targets by elements whatever the shape, so every row should cost the same per element
    image = _image_shape(logits.numel())
    shaped = {
        "focalkit dense (N,)": (-1,),
        "focalkit dense (N, 1)": (-1, 1),
        "focalkit dense (B, 1, H, W)": image,
    }
    variants: dict[str, tuple[Callable[..., torch.Tensor], torch.Tensor, torch.Tensor]] = {
        BASE: (eager_focal, logits, dense),
        "focalkit (dense targets)": (fk.sigmoid_focal_loss, logits, dense),
        "focalkit (class-index targets)": (fk.sigmoid_focal_loss, logits, labels),
    }
    for name, shape in shaped.items():
        variants[name] = (fk.sigmoid_focal_loss, logits.reshape(shape), dense.reshape(shape))
    steps = {name: fwd_bwd_step(fn, x, targets) for name, (fn, x, targets) in variants.items()}
    return logits, steps


def variant_peak(numel: int, classes: int, variant: str) -> int | None:
    """Peak bytes of one forward+backward call of ``variant``, in this process."""
    _, steps = _steps(numel, classes)
    return peak_bytes(steps[variant], torch.device("cpu"))


def measure(numel: int = 4_000_000, classes: int = 80, repeat: int = 7) -> dict:
    """The results document (``benchmarks/results/focal_cpu.json``)."""
    device = torch.device("cpu")
    logits, steps = _steps(numel, classes)
    times = interleaved_times(steps, device, repeat=repeat, warmup=2)
    rows = {}
    for name in steps:
        peak = peak_in_child(
            "focalkit.bench.focal_cpu:variant_peak", numel=numel, classes=classes, variant=name
        )
        rows[name] = {
            "seconds": statistics.median(times[name]),
            "min_seconds": min(times[name]),
            "peak_bytes": None if peak is None else int(peak),
        }
    base = rows[BASE]
    for row in rows.values():
        row["speedup_vs_eager"] = base["seconds"] / row["seconds"]
        # conservative: each side's fastest call, i.e. eager with its allocator fully warm
        row["speedup_vs_eager_fastest"] = base["min_seconds"] / row["min_seconds"]
        row["memory_vs_eager"] = (
            row["peak_bytes"] / base["peak_bytes"]
            if row["peak_bytes"] and base["peak_bytes"]
            else None
        )
    return {
        "benchmark": "sigmoid_focal_cpu",
        "numel": logits.numel(),
        "shape": list(logits.shape),
        "environment": environment(device),
        "results": rows,
    }


def summary(doc: dict) -> str:
    """The table the script prints."""
    rows, (n_rows, n_cols) = doc["results"], doc["shape"]
    lines = [
        f"sigmoid focal loss, forward+backward, {doc['numel']:,} logits "
        f"({n_rows} x {n_cols}), float32, {doc['environment']['threads']} threads",
        f"{'variant':34s} {'median':>10s} {'fastest':>10s} {'peak mem':>13s} "
        f"{'speed-up':>9s} {'(fastest)':>10s} {'mem ratio':>10s}",
    ]
    for name, row in rows.items():
        mem_ratio = "n/a" if row["memory_vs_eager"] is None else f"{row['memory_vs_eager']:.2f}"
        lines.append(
            f"{name:34s} {row['seconds'] * 1e3:8.1f}ms {row['min_seconds'] * 1e3:8.1f}ms "
            f"{fmt_bytes(row['peak_bytes'])} {row['speedup_vs_eager']:8.2f}x "
            f"{row['speedup_vs_eager_fastest']:9.2f}x {mem_ratio:>10s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``benchmarks/bench_focal_cpu.py``: measure, print, and write ``--json`` atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4_000_000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write results here (atomically)")
    parser.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)  # one variant's peak
    args = parser.parse_args(argv)
    if args.peak_of is not None:
        fix_mmap_threshold()
        print(json.dumps(variant_peak(args.numel, args.classes, args.peak_of)))
        return 0
    doc = measure(args.numel, args.classes, args.repeat)
    print(summary(doc))
    if args.json:
        atomic_write_json(args.json, doc)
    return 0
