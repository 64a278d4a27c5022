"""Loss computation of torchvision's RetinaNet and FCOS: the model's own against the model
patched by :func:`focalkit.integrations.torchvision.set_losses`, per training step.

    python benchmarks/bench_detection_losses.py [--models retinanet fcos] [--batch 2]
        [--size 800 1088] [--classes 91] [--boxes 7] [--repeat 15] [--rounds 5]
        [--device cpu] [--json PATH]

What is timed is one training step's loss work: ``model.compute_loss(targets, head_outputs,
anchors)`` (matching, targets, the losses) and its backward into the head outputs. The
backbone and the heads are not run: the head outputs are leaf tensors of the shapes the heads
produce for ``--batch`` images of ``--size`` (RetinaNet: 9 anchors per position over P3-P7,
about 120,000 anchors per 800 x 1088 image; FCOS: one per position), with ``--classes``
classes (COCO: 91) and ``--boxes`` random ground-truth boxes per image (COCO averages 7).
Both sides compute focal loss (alpha 0.25, gamma 2) and the model's own box loss (RetinaNet:
L1, FCOS: GIoU, plus centre-ness), and the rows record their relative difference.

Time: the median and the fastest of ``--repeat`` steps, the two variants timed in ``--rounds``
alternating blocks, each after a warm-up step (:func:`.harness.interleaved_times`): on a
shared machine, load only adds time, so the fastest steps are the less disturbed comparison. Peak memory: the step's allocations above what
was allocated before it (:func:`.harness.peak_bytes`; on CPU in a fresh process, as every
focalkit benchmark). ``--json`` writes the rows and the environment atomically. Needs
torchvision.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from focalkit.demo.records import atomic_write_json

from .harness import environment, interleaved_times, peak_bytes, peak_in_child

__all__ = ["build", "main", "measure", "step_peak", "summary"]

VARIANTS = ("torchvision", "focalkit")
FPN_STRIDES = (8, 16, 32, 64, 128)  # P3-P7, as both models' ResNet-FPN backbones


class _NoBackbone(torch.nn.Module):
    """The models need a backbone with ``out_channels``; the benchmark never runs it."""

    out_channels = 32  # FCOS heads use GroupNorm(32); the heads never run either

    def forward(self, x: torch.Tensor) -> dict:
        raise RuntimeError("the benchmark feeds head outputs directly")


def build(
    kind: str,
    batch: int,
    size: Sequence[int],
    classes: int,
    boxes: int,
    variant: str,
    device: str,
    seed: int = 0,
) -> tuple[Any, Any]:
    """The model (``variant``: its own losses or focalkit's) and a closure running one step."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    from focalkit.integrations import torchvision as fk_tv

    dev = torch.device(device)
    torch.manual_seed(seed)
    if kind == "retinanet":
        model: Any = RetinaNet(_NoBackbone(), classes)
    elif kind == "fcos":
        sizes = tuple((8 * 2**i,) for i in range(5))
        model = FCOS(_NoBackbone(), classes, anchor_generator=AnchorGenerator(sizes, ((1.0,),) * 5))
    else:
        raise ValueError(f"model: expected 'retinanet' or 'fcos', got {kind!r}")
    model.to(dev).train()
    if variant == "focalkit":
        model = copy.deepcopy(model)
        fk_tv.set_losses(model)
    h, w = size
    images = ImageList(torch.zeros(batch, 3, h, w, device=dev), [(h, w)] * batch)
    feats = [torch.zeros(batch, 1, -(-h // s), -(-w // s), device=dev) for s in FPN_STRIDES]
    anchors = model.anchor_generator(images, feats)
    levels = [f.shape[2] * f.shape[3] for f in feats]
    per_position = anchors[0].shape[0] // sum(levels)
    a = anchors[0].shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    cls = (torch.randn(batch, a, classes, generator=g) - 4.6).to(dev)
    reg = (torch.randn(batch, a, 4, generator=g) * 0.1).to(dev)
    ctr = torch.randn(batch, a, 1, generator=g).to(dev)
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = 16 + torch.rand(boxes, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1).to(dev),
                "labels": torch.randint(0, classes, (boxes,), generator=g).to(dev),
            }
        )
    leaves = {"cls_logits": cls, "bbox_regression": reg}
    if kind == "fcos":
        leaves["bbox_ctrness"] = ctr

    def step() -> dict[str, torch.Tensor]:
        outputs = {k: v.detach().requires_grad_(True) for k, v in leaves.items()}
        if kind == "fcos":
            losses = model.compute_loss(
                targets, outputs, anchors, [n * per_position for n in levels]
            )
        else:
            losses = model.compute_loss(targets, outputs, anchors)
        sum(losses.values()).backward()
        return {k: v.detach() for k, v in losses.items()}

    return model, step


def step_peak(kind: str, variant: str, device: str, **spec: Any) -> int | None:
    """Peak bytes of one step (run by :func:`.harness.peak_in_child` on CPU)."""
    _, step = build(kind, variant=variant, device=device, **spec)
    return peak_bytes(step, torch.device(device))


def measure(
    models: Sequence[str] = ("retinanet", "fcos"),
    batch: int = 2,
    size: Sequence[int] = (800, 1088),
    classes: int = 91,
    boxes: int = 7,
    repeat: int = 15,
    device: str = "cpu",
    rounds: int = 5,
) -> dict:
    """The results document (``benchmarks/results/detection_losses_cpu.json``)."""
    dev = torch.device(device)
    spec: dict[str, Any] = {"batch": batch, "size": list(size), "classes": classes, "boxes": boxes}
    rows = []
    for kind in models:
        steps, anchors = {}, 0
        for variant in VARIANTS:
            model, steps[variant] = build(kind, variant=variant, device=device, **spec)
        ref, ours = steps["torchvision"](), steps["focalkit"]()
        rel = max(float((ours[k] - ref[k]).abs() / ref[k].abs().clamp(min=1e-30)) for k in ref)
        anchors = int(model.anchor_generator.num_anchors_per_location()[0])
        times = interleaved_times(steps, dev, repeat=repeat, warmup=1, rounds=rounds)
        seconds = {name: statistics.median(ts) for name, ts in times.items()}
        fastest = {name: min(ts) for name, ts in times.items()}
        peaks = {}
        for variant in VARIANTS:
            args: dict[str, Any] = {"kind": kind, "variant": variant, "device": device, **spec}
            if dev.type == "cpu":
                peaks[variant] = peak_in_child("focalkit.bench.detection_losses:step_peak", **args)
            else:
                peaks[variant] = step_peak(**args)
        h, w = size
        positions = sum(-(-h // s) * -(-w // s) for s in FPN_STRIDES)
        rows.append(
            {
                "model": kind,
                "anchors_per_image": positions * anchors,
                "torchvision_ms": seconds["torchvision"] * 1e3,
                "focalkit_ms": seconds["focalkit"] * 1e3,
                "speedup": seconds["torchvision"] / seconds["focalkit"],
                "torchvision_min_ms": fastest["torchvision"] * 1e3,
                "focalkit_min_ms": fastest["focalkit"] * 1e3,
                "speedup_fastest": fastest["torchvision"] / fastest["focalkit"],
                "torchvision_peak_bytes": peaks["torchvision"],
                "focalkit_peak_bytes": peaks["focalkit"],
                "memory_ratio": (
                    None
                    if not peaks["torchvision"] or peaks["focalkit"] is None
                    else peaks["focalkit"] / peaks["torchvision"]
                ),
                "max_rel_diff": rel,
            }
        )
    return {
        "benchmark": "detection_losses",
        "environment": environment(dev),
        **spec,
        "repeat": repeat,
        "rounds": rounds,
        "rows": rows,
    }


def summary(doc: dict) -> str:
    """The table the script prints."""
    env = doc["environment"]
    h, w = doc["size"]
    lines = [
        f"# {doc['batch']} images of {h} x {w}, {doc['classes']} classes, {doc['boxes']} boxes "
        f"per image; torch {env['torch']}, torchvision {env['torchvision']}, {env['threads']} "
        f"threads, {env['device_name']}; median of {doc['repeat']}",
        f"{'model':<11}{'anchors':>9}{'torchvision ms':>16}{'focalkit ms':>13}{'speed-up':>10}"
        f"{'fastest':>9}{'tv MiB':>9}{'fk MiB':>9}{'rel diff':>10}",
    ]
    for r in doc["rows"]:
        tv = r["torchvision_peak_bytes"]
        fk = r["focalkit_peak_bytes"]
        lines.append(
            f"{r['model']:<11}{r['anchors_per_image']:>9}{r['torchvision_ms']:>16.1f}"
            f"{r['focalkit_ms']:>13.1f}{r['speedup']:>9.2f}x{r['speedup_fastest']:>8.2f}x"
            f"{'n/a' if tv is None else f'{tv / 2**20:.1f}':>9}"
            f"{'n/a' if fk is None else f'{fk / 2**20:.1f}':>9}{r['max_rel_diff']:>10.1e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``benchmarks/bench_detection_losses.py``: measure, print, write ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["retinanet", "fcos"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1088], metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=91)
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    for kind in args.models:
        if kind not in ("retinanet", "fcos"):
            parser.error(f"--models: expected retinanet and/or fcos, got {kind!r}")
    from focalkit.integrations._table import require_stack

    require_stack("torchvision", "torchvision", "benchmarks/bench_detection_losses.py")
    doc = measure(
        args.models,
        args.batch,
        args.size,
        args.classes,
        args.boxes,
        args.repeat,
        args.device,
        args.rounds,
    )
    print(summary(doc))
    if args.json is not None:
        atomic_write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0
