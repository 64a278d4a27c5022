"""Forward+backward time of focalkit's YOLO-era IoU losses against the plain eager formula and
against the copy-paste ``bbox_iou`` of the YOLO forks.

    python benchmarks/bench_iou_family.py [--repeat 9] [--boxes 100000] [--device cpu]
                                          [--threads N] [--json PATH]

For each loss (SIoU, Wise-IoU v3, MPDIoU, Shape-IoU, Alpha-CIoU, Inner-CIoU, Focaler-CIoU,
Inner-SIoU) at ``--boxes`` pairs of ``(x1, y1, x2, y2)`` float32 boxes, three
implementations of the same loss, mean over boxes, forward and backward:

* ``plain``: the textbook formula with autograd (:func:`.baselines.plain_iou_family_loss`);
* ``bbox_iou``: the one ``bbox_iou`` function YOLOv5/v8 forks copy, a flag per loss, with
  their ``BboxLoss`` on top (:func:`.baselines.yolo_iou_loss`); Wise-IoU there updates its
  running mean with ``.item()`` every call (:class:`.baselines.WIoUScale`);
* ``focalkit``: the focalkit call with ``backend="auto"`` (the plain torch formula on a CPU;
  on a CUDA device the fused Triton kernel where triton is installed, recorded per row);
  Wise-IoU through ``fk.WIoULoss`` (the running mean updated on the device, no sync).

Each time is the median of ``--repeat`` calls, the three implementations interleaved call by
call, each call after one warm-up call (:func:`.harness.interleaved_medians` with
``rounds=repeat``: on a shared machine a burst of load costs all three alike); ratios are
``baseline / focalkit`` (higher is better for focalkit). ``rel_diff_*`` compare the loss
values of one call (Wise-IoU: one update from the same state; the forks place eps
differently, hence differences of order 1e-7). ``--json`` writes the rows and the environment
atomically. Both sides run eagerly, no compile. ``--threads`` sets torch's intra-op threads
(recorded in the environment); the committed CPU results use 1, whose timings a shared
machine disturbs least.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

import focalkit as fk
from focalkit.demo.records import atomic_write_json
from focalkit.kernels.dispatch import recorded_choices

from .baselines import WIoUScale, plain_iou_family_loss, yolo_iou_loss
from .harness import environment, fwd_bwd_step, interleaved_medians

__all__ = ["FOCALKIT", "KINDS", "main", "measure", "rows", "summary"]

IMAGE = (640.0, 640.0)  # MPDIoU's (H, W), the forks' default input size
MEAN = 0.7  # Wise-IoU's running mean at the start of the timed calls (all three sides)
MOMENTUM = 1 - 0.5 ** (1 / 7000)  # the forks' WIoU_Scale momentum, used by all three


def _wiou(kind: str) -> Callable:
    crit = fk.WIoULoss(version=3, momentum=MOMENTUM)
    crit.iou_mean.fill_(MEAN)
    return crit


FOCALKIT: dict[str, Callable] = {
    "siou": fk.siou_loss,
    "wiou_v3": _wiou,  # a factory: the Module with its state
    "mpdiou": lambda p, t: fk.mpdiou_loss(p, t, image_size=IMAGE),
    "shape_iou": fk.shape_iou_loss,
    "alpha_ciou": lambda p, t: fk.ciou_loss(p, t, power=3.0),
    "inner_ciou": lambda p, t: fk.ciou_loss(p, t, inner_ratio=0.7),
    "focaler_ciou": lambda p, t: fk.ciou_loss(p, t, focaler=(0.0, 0.95)),
    "inner_siou": lambda p, t: fk.siou_loss(p, t, inner_ratio=0.7),
}
KINDS = tuple(FOCALKIT)


def _implementations(kind: str) -> dict[str, Callable]:
    """The three implementations of ``kind``, each ``(pred, target) -> loss`` (fresh state
    for Wise-IoU)."""
    if kind == "wiou_v3":
        scale = WIoUScale(monotonous=False, momentum=MOMENTUM)
        scale.iou_mean = MEAN
        running = [MEAN, MOMENTUM]  # the plain formula's running mean (a tensor once updated)
        return {
            "plain": lambda p, t: plain_iou_family_loss(kind, p, t, mean=running),
            "bbox_iou": lambda p, t: yolo_iou_loss(kind, p, t, scale=scale),
            "focalkit": _wiou(kind),
        }
    return {
        "plain": lambda p, t: plain_iou_family_loss(kind, p, t, image_size=IMAGE),
        "bbox_iou": lambda p, t: yolo_iou_loss(kind, p, t, image_size=IMAGE),
        "focalkit": FOCALKIT[kind],
    }


def _boxes(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(n, 2, generator=gen) * 600
    wh = torch.rand(n, 2, generator=gen) * 100 + 4
    target = torch.cat([xy, xy + wh], -1)
    pred = target + torch.randn(n, 4, generator=gen) * 8
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 1)
    return pred.to(device), target.to(device)


def rows(n: int, device: torch.device, repeat: int) -> list[dict]:
    pred, target = _boxes(n, device)
    for kind in KINDS:  # one untimed pass over everything first (allocator, thread pool)
        for fn in _implementations(kind).values():
            fwd_bwd_step(lambda x, f=fn: f(x, target), pred)()
    out = []
    for kind in KINDS:
        check = {name: fn(pred, target).item() for name, fn in _implementations(kind).items()}
        impls = _implementations(kind)  # fresh Wise-IoU states for the timed calls
        with recorded_choices() as choices:
            impls["focalkit"](pred, target)
        steps = {
            name: fwd_bwd_step(lambda x, f=fn: f(x, target), pred) for name, fn in impls.items()
        }
        # one timed call per block (A B C A B C ...): on a shared machine a burst of load
        # then costs every implementation alike instead of a whole block of one of them
        seconds = interleaved_medians(steps, device, repeat=repeat, warmup=1, rounds=repeat)
        ours = check["focalkit"]
        out.append(
            {
                "name": kind,
                "size": n,
                "plain_ms": seconds["plain"] * 1e3,
                "bbox_iou_ms": seconds["bbox_iou"] * 1e3,
                "focalkit_ms": seconds["focalkit"] * 1e3,
                "focalkit_backend": choices[0].backend if choices else "torch",
                "ratio_vs_plain": seconds["plain"] / seconds["focalkit"],
                "ratio_vs_bbox_iou": seconds["bbox_iou"] / seconds["focalkit"],
                "rel_diff_plain": abs(check["plain"] - ours) / max(abs(ours), 1e-12),
                "rel_diff_bbox_iou": abs(check["bbox_iou"] - ours) / max(abs(ours), 1e-12),
            }
        )
    return out


def measure(
    boxes: int = 100_000, repeat: int = 9, device: str = "cpu", threads: int | None = None
) -> dict:
    """The results document (``benchmarks/results/iou_family_cpu.json``)."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    return {
        "benchmark": "iou_family",
        "environment": environment(dev),
        "repeat": repeat,
        "rows": rows(boxes, dev, repeat),
    }


def summary(doc: dict) -> str:
    """The table the script prints."""
    env = doc["environment"]
    header = (
        f"{'loss':<14}{'boxes':>9}{'plain ms':>10}{'bbox_iou ms':>13}{'focalkit ms':>13}"
        f"{'backend':>9}{'vs plain':>10}{'vs bbox_iou':>13}"
    )
    lines = [
        f"# torch {env['torch']}, {env['threads']} threads, {env['device_name']}, "
        f"forward+backward, median of {doc['repeat']}",
        header,
        "-" * len(header),
    ]
    for r in doc["rows"]:
        lines.append(
            f"{r['name']:<14}{r['size']:>9}{r['plain_ms']:>10.2f}{r['bbox_iou_ms']:>13.2f}"
            f"{r['focalkit_ms']:>13.2f}{r['focalkit_backend']:>9}{r['ratio_vs_plain']:>9.2f}x"
            f"{r['ratio_vs_bbox_iou']:>12.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``benchmarks/bench_iou_family.py``: measure, print, and write ``--json`` atomically."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--boxes", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    doc = measure(args.boxes, args.repeat, args.device, args.threads)
    print(summary(doc))
    if args.json is not None:
        atomic_write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0
