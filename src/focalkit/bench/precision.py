"""Per-element relative error of binary cross-entropy in float32, against float64.

    python benchmarks/bce_precision.py [--json PATH]

For each logit ``x`` of a grid over [-50, 50] and each target ``y`` in {0, 1} and a few soft
values, every implementation below computes BCE(x, y) from the float32 inputs; the reference
is the same quantity in float64 from the same (exactly representable) inputs. The table
gives, per implementation and target, the largest relative error over the grid and the ``x``
where it occurs:

* ``torch F.binary_cross_entropy_with_logits``: PyTorch's own (the baseline), which forms
  ``(1 - y) x + max(-x, 0) + log(exp(-max) + exp(-x - max))`` and cancels;
* ``focalkit bce_with_logits``: :func:`focalkit.functional.focal.bce_with_logits`;
* ``sigmoid_focal_loss (gamma 0, <backend>)``: the focal loss without focusing or alpha;
* ``ghm_c_loss (bins 1, <backend>)``: GHM-C with one bin, where every weight is 1.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import focalkit as fk
from focalkit.demo.records import atomic_write_json
from focalkit.functional.focal import bce_with_logits

__all__ = ["TARGETS", "grid", "main", "measure", "reference", "summary"]

TARGETS = (0.0, 1.0, 0.25, 0.9)


def grid(points: int = 2001) -> torch.Tensor:
    """float32 logits in [-50, 50]: a uniform grid plus the small values near 0."""
    x = torch.linspace(-50.0, 50.0, points, dtype=torch.float32)
    tiny = torch.tensor([-1e-3, -1e-6, 0.0, 1e-6, 1e-3], dtype=torch.float32)
    return torch.cat([x, tiny]).unique()


def reference(x: torch.Tensor, y: float) -> torch.Tensor:
    """BCE in float64 of the float32 inputs (``x`` exact in float64)."""
    xd = x.double()
    yd = torch.full_like(xd, float(torch.tensor(y, dtype=torch.float32)))
    return -(yd * F.logsigmoid(xd) + (1 - yd) * F.logsigmoid(-xd))


def implementations() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    impls: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "torch F.binary_cross_entropy_with_logits": lambda x, y: F.binary_cross_entropy_with_logits(
            x, y, reduction="none"
        ),
        "focalkit bce_with_logits": bce_with_logits,
    }
    for backend in ("torch", "chunked"):
        impls[f"sigmoid_focal_loss (gamma 0, {backend})"] = functools.partial(
            fk.sigmoid_focal_loss, alpha=None, gamma=0.0, reduction="none", backend=backend
        )
        impls[f"ghm_c_loss (bins 1, {backend})"] = functools.partial(
            fk.ghm_c_loss, bins=1, reduction="none", backend=backend
        )
    return impls


def measure(points: int = 2001) -> dict:
    x = grid(points)
    rows = {}
    for name, fn in implementations().items():
        row = {}
        for y in TARGETS:
            got = fn(x, torch.full_like(x, y)).double()
            ref = reference(x, y)
            rel = ((got - ref).abs() / ref.abs().clamp(min=1e-300)).nan_to_num(nan=float("inf"))
            worst = int(rel.argmax())
            row[str(y)] = {"max_rel_error": float(rel[worst]), "at_x": float(x[worst])}
        rows[name] = row
    return {"benchmark": "bce_precision", "points": int(x.numel()), "results": rows}


def summary(doc: dict) -> str:
    head = f"{'implementation':44s}" + "".join(f"  y = {y:<18}" for y in TARGETS)
    lines = [
        f"BCE(x, y) in float32 vs float64, {doc['points']} logits in [-50, 50]: "
        "largest relative error (at x)",
        head,
    ]
    for name, row in doc["results"].items():
        cells = "".join(
            f"  {row[str(y)]['max_rel_error']:8.1e} ({row[str(y)]['at_x']:6.1f})  " for y in TARGETS
        )
        lines.append(f"{name:44s}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2001)
    parser.add_argument("--json", type=Path, default=None, help="write results here (atomically)")
    args = parser.parse_args(argv)
    doc = measure(args.points)
    print(summary(doc))
    if args.json:
        atomic_write_json(args.json, doc)
    return 0
