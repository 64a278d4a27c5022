"""Forward+backward time and peak memory of ``focalkit.sigmoid_focal_loss`` against the plain
eager formula of SPEC.md section 1 (torchvision's ``sigmoid_focal_loss``, written out here).

    python benchmarks/bench_focal_cpu.py [--numel 4000000] [--classes 80] [--repeat 7] [--json PATH]

Prints one row per variant and the ratios eager / focalkit (higher is better for focalkit).
No torch.compile is involved: both sides run eagerly from the first call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import focalkit as fk
from _harness import (
    environment,
    fix_mmap_threshold,
    fmt_bytes,
    interleaved_times,
    peak_bytes,
    peak_bytes_in_child,
    write_json_atomic,
)
from focalkit.cli.baselines import eager_focal


def make_inputs(numel: int, classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rows = numel // classes
    logits = torch.randn(rows, classes, generator=gen) * 3
    labels = torch.randint(0, classes + 1, (rows,), generator=gen)  # classes = background
    labels[torch.rand(rows, generator=gen) < 0.9] = classes  # ~10% positive rows, like anchors
    dense = torch.zeros(rows, classes)
    pos = labels < classes
    dense[pos.nonzero().squeeze(1), labels[pos]] = 1.0
    return logits, dense, labels


def fwd_bwd(loss_fn, logits, targets):
    x = logits.detach().requires_grad_(True)

    def step():
        x.grad = None
        loss = loss_fn(x, targets)
        loss.backward()
        return loss

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4_000_000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write results here (atomically)")
    parser.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args(argv)

    device = torch.device("cpu")
    if args.peak_of is not None:
        fix_mmap_threshold()
    logits, dense, labels = make_inputs(args.numel, args.classes)
    variants = {
        "eager formula (dense targets)": (eager_focal, dense),
        "focalkit (dense targets)": (fk.sigmoid_focal_loss, dense),
        "focalkit (class-index targets)": (fk.sigmoid_focal_loss, labels),
    }
    steps = {name: fwd_bwd(fn, logits, targets) for name, (fn, targets) in variants.items()}
    if args.peak_of is not None:
        print(json.dumps(peak_bytes(steps[args.peak_of], device)))
        return 0
    times = interleaved_times(steps, device, repeat=args.repeat, warmup=2)
    rows = {}
    for name in variants:
        child_args = ["--numel", str(args.numel), "--classes", str(args.classes), "--peak-of", name]
        peak = peak_bytes_in_child(__file__, child_args)
        rows[name] = {
            "seconds": statistics.median(times[name]),
            "min_seconds": min(times[name]),
            "peak_bytes": peak,
        }

    base = rows["eager formula (dense targets)"]
    print(
        f"sigmoid focal loss, forward+backward, {logits.numel():,} logits "
        f"({logits.shape[0]} x {logits.shape[1]}), float32, {torch.get_num_threads()} threads"
    )
    print(
        f"{'variant':34s} {'median':>10s} {'fastest':>10s} {'peak mem':>13s} "
        f"{'speed-up':>9s} {'(fastest)':>10s} {'mem ratio':>10s}"
    )
    for name, row in rows.items():
        row["speedup_vs_eager"] = base["seconds"] / row["seconds"]
        # conservative: each side's fastest call, i.e. eager with its allocator fully warm
        row["speedup_vs_eager_fastest"] = base["min_seconds"] / row["min_seconds"]
        row["memory_vs_eager"] = (
            row["peak_bytes"] / base["peak_bytes"]
            if row["peak_bytes"] and base["peak_bytes"]
            else None
        )
        mem_ratio = "n/a" if row["memory_vs_eager"] is None else f"{row['memory_vs_eager']:.2f}"
        print(
            f"{name:34s} {row['seconds'] * 1e3:8.1f}ms {row['min_seconds'] * 1e3:8.1f}ms "
            f"{fmt_bytes(row['peak_bytes'])} {row['speedup_vs_eager']:8.2f}x "
            f"{row['speedup_vs_eager_fastest']:9.2f}x {mem_ratio:>10s}"
        )
    if args.json:
        write_json_atomic(
            args.json,
            {
                "benchmark": "sigmoid_focal_cpu",
                "numel": logits.numel(),
                "shape": list(logits.shape),
                "environment": environment(device),
                "results": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
