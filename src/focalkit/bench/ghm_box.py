"""Forward+backward time of focalkit's GHM and box losses against their plain formulations.

    python benchmarks/bench_ghm_box.py [--repeat 5] [--ghm-sizes 1000000 10000000]
                                       [--boxes 100000] [--json PATH]

* GHM-C (bins=30) and GHM-R (bins=10): focalkit against the per-bin Python loop with
  ``.item()`` of the authors' code / mmdetection (:func:`.baselines.loop_ghm_c`,
  :func:`.baselines.loop_ghm_r`), on dense (N, 80) logits with ~2% positives.
* Box losses at ``--boxes`` pairs: focalkit against the plain eager formula
  (:func:`.baselines.plain_box_loss`: autograd on the textbook expression, as torchvision /
  the papers' code write it).

Each time is the median of ``--repeat`` calls after one warm-up call, the baseline's calls
before focalkit's (:func:`.harness.interleaved_medians` with one round); the table's ratio is
baseline / focalkit (higher is better for focalkit). ``--json`` writes the rows and the
environment atomically (temporary file, then rename). Both sides run eagerly, no compile.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

import focalkit as fk
from focalkit.demo.records import atomic_write_json

from .baselines import loop_ghm_c, loop_ghm_r, plain_box_loss
from .harness import environment, fwd_bwd_step, interleaved_medians

__all__ = ["FOCALKIT_BOX", "box_rows", "ghm_rows", "main", "measure", "summary"]

FOCALKIT_BOX = {
    "iou": fk.iou_loss,
    "giou": fk.giou_loss,
    "diou": fk.diou_loss,
    "ciou": fk.ciou_loss,
    "eiou": fk.eiou_loss,
    "focal_eiou": fk.focal_eiou_loss,
}


def time_pair(name, size, baseline, ours, device, repeat):
    check_base, check_ours = baseline(), ours()
    rel = abs(check_base.item() - check_ours.item()) / max(abs(check_base.item()), 1e-12)
    seconds = interleaved_medians(
        {"baseline": baseline, "focalkit": ours}, device, repeat=repeat, warmup=1, rounds=1
    )
    return {
        "name": name,
        "size": size,
        "baseline_ms": seconds["baseline"] * 1e3,
        "focalkit_ms": seconds["focalkit"] * 1e3,
        "ratio": seconds["baseline"] / seconds["focalkit"],
        "rel_diff": rel,
    }


def ghm_rows(sizes, device, repeat):
    rows = []
    for numel in sizes:
        gen = torch.Generator().manual_seed(0)
        logits = (torch.randn(numel // 80, 80, generator=gen) * 3).to(device)
        targets = (torch.rand(numel // 80, 80, generator=gen) < 0.02).float().to(device)
        label_weight = torch.ones_like(targets)
        base = fwd_bwd_step(
            lambda x, t, w: loop_ghm_c(x, t, w, bins=30), logits, targets, label_weight
        )
        ours = fwd_bwd_step(lambda x, t: fk.ghm_c_loss(x, t, bins=30), logits, targets)
        rows.append(time_pair("ghm_c bins=30", numel, base, ours, device, repeat))
    numel = min(sizes)
    gen = torch.Generator().manual_seed(1)
    pred = (torch.randn(numel // 4, 4, generator=gen) * 0.2).to(device)
    target = torch.zeros_like(pred)
    weight = (torch.rand(numel // 4, 1, generator=gen) < 0.5).float().expand(-1, 4).to(device)
    base = fwd_bwd_step(lambda x: loop_ghm_r(x, target, weight, bins=10), pred)
    ours = fwd_bwd_step(lambda x: fk.ghm_r_loss(x, target, bins=10, weight=weight), pred)
    rows.append(time_pair("ghm_r bins=10", numel, base, ours, device, repeat))
    return rows


def box_rows(n, device, repeat):
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 50 + 1
    target = torch.cat([xy, xy + wh], -1).to(device)
    pred = (target + torch.randn(n, 4, generator=gen).to(device) * 5).detach()
    rows = []
    for kind, fn in FOCALKIT_BOX.items():
        base = fwd_bwd_step(lambda x, k=kind: plain_box_loss(k, x, target), pred)
        ours = fwd_bwd_step(lambda x, f=fn: f(x, target), pred)
        rows.append(time_pair(f"{kind}_loss", n, base, ours, device, repeat))
    return rows


def measure(
    ghm_sizes: Sequence[int] = (1_000_000, 10_000_000),
    boxes: int = 100_000,
    repeat: int = 5,
    device: str = "cpu",
) -> dict:
    """The results document (``benchmarks/results/ghm_box_cpu.json``)."""
    dev = torch.device(device)
    rows = ghm_rows(list(ghm_sizes), dev, repeat) + box_rows(boxes, dev, repeat)
    return {"benchmark": "ghm_box", "environment": environment(dev), "rows": rows}


def summary(doc: dict, repeat: int) -> str:
    """The table the script prints."""
    env = doc["environment"]
    header = f"{'loss':<16}{'size':>10}{'baseline ms':>14}{'focalkit ms':>14}{'ratio':>8}{'rel diff':>10}"
    lines = [
        f"# torch {env['torch']}, {env['threads']} threads, {env['device_name']}, forward+backward, "
        f"median of {repeat}",
        header,
        "-" * len(header),
    ]
    for r in doc["rows"]:
        lines.append(
            f"{r['name']:<16}{r['size']:>10}{r['baseline_ms']:>14.2f}{r['focalkit_ms']:>14.2f}"
            f"{r['ratio']:>7.1f}x{r['rel_diff']:>10.1e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``benchmarks/bench_ghm_box.py``: measure, print, and write ``--json`` atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ghm-sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--boxes", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    doc = measure(args.ghm_sizes, args.boxes, args.repeat, args.device)
    print(summary(doc, args.repeat))
    if args.json is not None:
        atomic_write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0
