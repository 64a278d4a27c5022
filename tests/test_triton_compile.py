"""Every Triton kernel compiled ahead of time for the H100 (``sm_90``) to a cubin, without a GPU.

The interpreter tests (``test_triton_*.py``) run the kernels' Python on CPU and miss what only
a real build hits: a plain module global read in a ``@triton.jit`` body, a method that an
argument specialised to a constexpr lacks, dtype and lowering errors, ptxas errors, register
spills. Here ``triton.compile`` builds each kernel for ``GPUTarget("cuda", 90, 32)`` (ptxas
runs) with the specialisation a CUDA launch would give it:

* **In a child Python.** Triton decorates its own ``triton.language`` helpers once, at import,
  for the interpreter or for the compiler, and the interpreter tests import it with
  ``TRITON_INTERPRET=1``; so this module never imports triton: one child per (xdist) worker,
  started without ``TRITON_INTERPRET``, records and compiles (``python <this file> --serve``,
  one JSON request and reply per line).
* **The launches are the wrappers'.** The child calls the public losses on small CPU tensors
  (``TRITON_INTERPRET=1`` set around the call only, for the dispatch rule) with each kernel's
  ``run`` replaced by a recorder: arguments and launch options (``enable_fp_fusion``,
  ``num_warps``) are exactly what the wrappers pass; nothing executes.
* **The specialisation is Triton's.** The recorded arguments go through Triton's own binder
  (``create_function_from_signature``, ``JITFunction._pack_args``) for the CUDA backend:
  pointer dtypes, i32 / i64 by value, ints equal to 1 as constexprs, divisibility by 16. Two
  fix-ups the CPU cannot give: ``EXACT_EXP`` (``x.is_cuda`` in the GHM wrappers) is True, and
  "huge" cases add 2**31 to the sizes that can exceed it (:data:`HUGE`), making them i64.
* **The cases are pairwise, not the full product** (thousands of launches): per loss family
  every pair of values of two options (dtype, target form, alpha, gamma, reduction, grad,
  shape / layout, huge) is in some case, and the options with many values (softmax ``C`` ->
  ``BLOCK``, GHM ``bins`` -> ``NB`` / ``ATOMIC``, DFL ``bins`` -> ``BLOCK_C`` / ``BLOCK_R``)
  take each value once. So every constexpr
  value is compiled at least once; ``test_cases_cover_every_constexpr_value`` checks the
  recorded values against :data:`CONSTEXPRS` (every value a wrapper can produce). The two
  open-ended constexprs, ``NUM_CLASSES`` (sigmoid, GHM-C: the class count ``C`` where the
  kernel divides by it, else 1) and ``ROW_LEN`` (GHM-R: the row length ``K`` where the kernel
  divides by it, else 1), take the cases' values (``C`` 1, 7 and 8, ``K`` 1, 4 and 7: no
  division, a multiply-high, a shift), and each launch's is checked against the one its case
  implies (:data:`OPEN_CONSTEXPRS`).
* **Asserted:** the cubin exists and ptxas ``-v`` reports no spill stores or loads (its log,
  printed under ``TRITON_DUMP_PTXAS_LOG=1``; without a GPU the ``CompiledKernel`` has no
  ``n_spills``); the PTX of the :data:`NO_DIV64` kernels has no 64-bit ``div`` / ``rem`` (an
  emulated division per element, which a runtime ``C`` or ``K`` costs). Each case compiles
  into its own empty ``TRITON_CACHE_DIR``.

The binder calls are Triton internals (those of 3.6, the GPU machines' version, and of 3.9,
CI's, both work): without them, or without triton's bundled ptxas, the module is skipped.
Under triton 3.6 one GHM-R case (bf16, elementwise weights, 200 bins) spills 4 bytes; 3.9
spills nothing, and CI asserts that.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import itertools
import json
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

import focalkit as fk


def _bundled_ptxas() -> bool:
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return False
    bin_dir = Path(spec.origin).parent / "backends" / "nvidia" / "bin"
    return any((bin_dir / name).is_file() for name in ("ptxas", "ptxas-blackwell"))


pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not _bundled_ptxas(), reason="needs triton and its bundled ptxas"),
]

TARGET = ("cuda", 90, 32)  # GPUTarget: H100
BIG = 2**31  # added to the HUGE sizes (keeps their divisibility by 16)

# sizes that can exceed 2**31 (a "huge" case adds BIG to them unless they are 1)
HUGE = {
    "_sigmoid_focal_kernel": ("n",),
    "_softmax_focal_kernel": ("stride_row", "stride_col"),  # (1, C, D, H, W): D H W
    "_ghm_c_hist_kernel": ("n",),
    "_ghm_c_loss_kernel": ("n",),
    "_ghm_r_hist_kernel": ("n",),
    "_ghm_r_loss_kernel": ("n",),
    "_box_kernel": ("n",),
    "_atan_kernel": ("n",),
    "_scale_kernel": ("n",),
    "_dfl_kernel": ("rows", "stride_row"),
}
MODULES = (
    "triton_sigmoid_focal",
    "triton_softmax_focal",
    "triton_ghm",
    "triton_box",
    "triton_scale",
    "triton_dfl",
)

# every value of every constexpr that the wrappers can pass (on a CUDA device); CLASS_COUNT,
# ROW_LENGTH: the cases' class counts / row lengths where the kernel divides by them, else 1
# (see OPEN_CONSTEXPRS)
CLASS_COUNT = "C"
ROW_LENGTH = "K"
_B = (False, True)
_NB = tuple(2**k for k in range(5, 12))  # max(32, next_power_of_2(bins + 1)) <= HIST_MAX_BINS
CONSTEXPRS = {
    "_sigmoid_focal_kernel": {
        "NUM_CLASSES": CLASS_COUNT,
        "INDEX": _B,
        "HAS_SCORES": _B,
        "HAS_VALID": _B,
        "ALPHA_MODE": (0, 1, 2),
        "MODULATION": (0, 1, 2, 3),  # focal, QFL, VFL, VFL without iou weighting
        "GAMMA_ZERO": _B,
        "REDUCE": _B,
        "NEED_GRAD": _B,
        "BLOCK": (1024,),
    },
    "_softmax_focal_kernel": {
        "HAS_WEIGHT": _B,
        "ALPHA_MODE": (0, 1, 2),
        "GAMMA_ZERO": _B,
        "NEED_GRAD": _B,
        "BLOCK": tuple(2**k for k in range(13)),  # min(4096, next_power_of_2(C))
    },
    "_ghm_c_hist_kernel": {
        "NUM_CLASSES": CLASS_COUNT,
        "INDEX": _B,
        "HAS_KEEP": _B,
        "EXACT_EXP": (True,),
        "NB": _NB,
        "ATOMIC": _B,
        "BLOCK": (1024,),
    },
    "_ghm_c_loss_kernel": {
        "NUM_CLASSES": CLASS_COUNT,
        "INDEX": _B,
        "HAS_KEEP": _B,
        "EXACT_EXP": (True,),
        "REDUCE": _B,
        "NEED_GRAD": _B,
        "BLOCK": (1024,),
    },
    "_ghm_r_hist_kernel": {
        "ROW_LEN": ROW_LENGTH,
        "W_MODE": (0, 1, 2),
        "NB": _NB,
        "ATOMIC": _B,
        "BLOCK": (1024,),
    },
    "_ghm_r_loss_kernel": {
        "ROW_LEN": ROW_LENGTH,
        "W_MODE": (0, 1, 2),
        "NEED_GRAD": _B,
        "BLOCK": (1024,),
    },
    "_box_kernel": {
        "KIND": tuple(range(11)),
        "INNER": _B,
        "FOCALER": _B,
        "POWER": _B,
        "CLAMP": _B,
        "WRITE_IOU": _B,
        "NEED_GRAD": _B,
        "BLOCK": (256,),
    },
    "_atan_kernel": {"BLOCK": (1024,)},
    "_scale_kernel": {"BLOCK": (1024,)},
    "_dfl_kernel": {
        "HAS_WEIGHT": _B,
        "NEED_GRAD": _B,
        "BLOCK_R": (2, 4, 8, 16, 32, 64),  # max(2, min(64, 1024 // BLOCK_C))
        "BLOCK_C": tuple(2**k for k in range(1, 11)),  # min(1024, next_power_of_2(bins))
    },
}
# kernels whose PTX must not divide in 64 bits (C is the constexpr NUM_CLASSES, K ROW_LEN)
NO_DIV64 = (
    "_sigmoid_focal_kernel",
    "_dfl_kernel",
    "_ghm_c_hist_kernel",
    "_ghm_c_loss_kernel",
    "_ghm_r_hist_kernel",
    "_ghm_r_loss_kernel",
)


# --------------------------------------------------------------------------------------------
# pairwise cases
# --------------------------------------------------------------------------------------------


def _pairwise(options: dict[str, tuple], each: dict[str, tuple] | None = None) -> list[dict]:
    """Rows (option -> value) in which every pair of values of two ``options`` appears
    (greedy, deterministic); each value of an ``each`` option appears in at least one row."""
    names = list(options)

    def pair(a, i, b, j):
        return ((a, i), (b, j)) if names.index(a) < names.index(b) else ((b, j), (a, i))

    todo = {
        pair(a, i, b, j)
        for a, b in itertools.combinations(names, 2)
        for i in range(len(options[a]))
        for j in range(len(options[b]))
    }
    rows = []
    while todo:
        (a, i), (b, j) = min(todo)
        row = {a: i, b: j}
        for name in names:
            if name not in row:
                gain = [
                    sum(pair(m, row[m], name, k) in todo for m in row)
                    for k in range(len(options[name]))
                ]
                row[name] = gain.index(max(gain))
        todo -= {pair(x, row[x], y, row[y]) for x, y in itertools.combinations(names, 2)}
        rows.append(row)
    rows = [{name: options[name][row[name]] for name in names} for row in rows]
    for name, values in (each or {}).items():
        rows += [dict(rows[k % len(rows)]) for k in range(len(values) - len(rows))]
        for k, row in enumerate(rows):
            row[name] = values[k % len(values)]
    return rows


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the IoU family's calls: each KIND, CLAMP (gated CIoU, mmdetection's SIoU) and WRITE_IOU
# (Wise-IoU v3 over its own base and over SIoU); ALPHA: the bases that take ``power``
_BOX_LOSSES = {
    "iou": fk.iou_loss,
    "iou_log": functools.partial(fk.iou_loss, mode="log"),
    "giou": fk.giou_loss,
    "diou": fk.diou_loss,
    "ciou": fk.ciou_loss,
    "ciou_gated": functools.partial(fk.ciou_loss, aspect_gate=True),
    "eiou": fk.eiou_loss,
    "focal_eiou": fk.focal_eiou_loss,
    "siou": fk.siou_loss,
    "siou_mmdet": functools.partial(fk.siou_loss, paper_sign=False, clamp=True),
    "mpdiou": fk.mpdiou_loss,
    "shape": functools.partial(fk.shape_iou_loss, scale=0.5),
    "wiou": functools.partial(fk.wiou_loss, iou_mean=0.5),
    "wiou_siou": functools.partial(fk.wiou_loss, base="siou", iou_mean=0.5),
}
_ALPHA = {"iou", "giou", "diou", "ciou", "ciou_gated"}
BINS = (1, 10, 40, 100, 200, 500, 1000, 2000, 4000)  # NB 32 ... 2048, then ATOMIC

CASES = {
    "sigmoid": _pairwise(
        {
            "dtype": tuple(DTYPES),
            "targets": ("soft", "soft_same", "int64", "int32", "bool", "index"),
            "alpha": ("no_alpha", "alpha", "alpha_c"),
            "gamma": ("g0", "g2"),
            "reduction": ("none", "sum"),
            "grad": ("grad", "no_grad"),
            "shape": ("13x7", "16x8", "11x1", "1x1", "huge"),
        }
    ),
    "softmax": _pairwise(
        {
            "dtype": tuple(DTYPES),
            "labels": ("int64", "int32"),
            "weight": ("no_weight", "weight"),
            "alpha": ("no_alpha", "alpha", "alpha_c"),
            "gamma": ("g0", "g2"),
            "grad": ("grad", "no_grad"),
            "layout": ("contiguous", "channels", "strided"),
            "size": ("small", "huge"),
        },
        each={"C": (1, 2, 3, 5, 9, 17, 33, 65, 129, 257, 513, 1025, 2049, 5000)},
    ),
    "ghm_c": _pairwise(
        {
            "dtype": tuple(DTYPES),
            "targets": ("soft", "soft_same", "int64", "bool", "index"),
            "valid": ("no_valid", "valid"),
            "reduction": ("none", "sum"),
            "grad": ("grad", "no_grad"),
            "shape": ("13x7", "16x8", "11x1", "1x1", "huge"),
        },
        each={"bins": BINS},
    ),
    "ghm_r": _pairwise(
        {
            "dtype": tuple(DTYPES),
            "target": ("same", "fp32"),
            "weight": ("no_weight", "elem", "elem_same", "row"),
            "grad": ("grad", "no_grad"),
            "shape": ("13x4", "16x4", "13x1", "1x1", "huge"),
        },
        each={"bins": BINS},
    ),
    "box": _pairwise(
        {
            "kind": tuple(_BOX_LOSSES),
            "modifiers": ("none", "inner", "all"),  # all: inner, focaler and power (Alpha)
            "dtype": tuple(DTYPES),
            "target": ("same", "fp32"),
            "grad": ("grad", "no_grad"),
            "layout": ("contiguous", "view", "columns"),
            "size": ("small", "huge"),
        }
    ),
    "qfl": _pairwise(
        {
            "dtype": tuple(DTYPES),
            "targets": ("soft", "soft_same", "int64", "index"),
            "beta": ("b0", "b2"),
            "reduction": ("none", "sum"),
            "grad": ("grad", "no_grad"),
            "shape": ("13x7", "16x8", "11x1", "huge"),
        }
    ),
    "vfl": _pairwise(
        {
            "dtype": tuple(DTYPES),
            "targets": ("soft", "soft_same", "bool", "index"),
            "gamma": ("g0", "g2"),
            "iou_weighted": ("iou", "plain"),
            "reduction": ("none", "sum"),
            "grad": ("grad", "no_grad"),
            "shape": ("13x7", "16x8", "11x1", "huge"),
        }
    ),
    "dfl": _pairwise(
        {
            "dtype": tuple(DTYPES),
            "target": ("same", "fp32"),
            "weight": ("no_weight", "weight"),
            "grad": ("grad", "no_grad"),
            "layout": ("contiguous", "strided"),
            "size": ("small", "huge"),
        },
        each={"bins": (2, 3, 5, 9, 17, 33, 65, 129, 257, 513, 1025, 3000)},
    ),
    "poly1": _pairwise(
        {
            "dtype": tuple(DTYPES),
            "weight": ("no_weight", "weight"),
            "grad": ("grad", "no_grad"),
            "size": ("small", "huge"),
        }
    ),
    "atan": _pairwise({"dtype": ("fp32", "bf16"), "size": ("small", "huge")}),
    "scale": _pairwise({"dtype": ("fp32", "bf16"), "size": ("small", "huge")}),
}


def _case_id(family: str, case: dict) -> str:
    return "-".join([family, *(str(v) for v in case.values())])


# --------------------------------------------------------------------------------------------
# the public calls of each family (small CPU inputs; only the launches matter)
# --------------------------------------------------------------------------------------------


def _shape(case: dict) -> tuple[int, int]:
    rows, cols = (13, 7) if case["shape"] == "huge" else case["shape"].split("x")
    return int(rows), int(cols)


def _num_classes(case: dict) -> int:
    """The ``NUM_CLASSES`` a sigmoid or GHM-C case must launch with: its class count where
    the kernel divides by it (class-index targets, per-class alpha), else 1."""
    divides = case["targets"] == "index" or case.get("alpha") == "alpha_c"
    return _shape(case)[1] if divides else 1


def _row_len(case: dict) -> int:
    """The ``ROW_LEN`` a GHM-R case must launch with: its row length where the kernel divides
    by it (a per-row weight against rows of more than one element), else 1."""
    rows = case["weight"] == "row" and _shape(case)[1] > 1
    return _shape(case)[1] if rows else 1


# the open-ended constexprs: their marker in CONSTEXPRS, the value a case must launch with
OPEN_CONSTEXPRS = {"NUM_CLASSES": (CLASS_COUNT, _num_classes), "ROW_LEN": (ROW_LENGTH, _row_len)}


def _logits(case: dict, shape) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(DTYPES[case["dtype"]])
    return x.requires_grad_(case["grad"] == "grad")


def _dense_targets(kind: str, shape, dtype: torch.dtype) -> torch.Tensor:
    """``soft`` / ``soft_same`` (the logits' dtype), integer 0/1/-100 or bool dense targets,
    or the class indices (``index``, ``C`` = background) of ``shape``."""
    gen = torch.Generator().manual_seed(1)
    if kind.startswith("soft"):
        return torch.rand(shape, generator=gen).to(dtype if kind == "soft_same" else torch.float32)
    if kind == "bool":
        return torch.rand(shape, generator=gen) > 0.5
    if kind == "index":
        return torch.randint(0, shape[-1] + 1, shape[:-1], generator=gen)
    t = torch.randint(-1, 2, shape, generator=gen)  # -1: ignored
    return t.where(t >= 0, -100).to(getattr(torch, kind))


def _sigmoid(case: dict) -> None:
    shape = _shape(case)
    alpha = {"no_alpha": None, "alpha": 0.25, "alpha_c": torch.rand(shape[-1])}[case["alpha"]]
    fk.sigmoid_focal_loss(
        _logits(case, shape),
        _dense_targets(case["targets"], shape, DTYPES[case["dtype"]]),
        alpha=alpha,
        gamma=0.0 if case["gamma"] == "g0" else 2.0,
        reduction=case["reduction"],
        backend="triton",
    )


def _softmax(case: dict) -> None:
    num_classes = case["C"]
    if case["layout"] == "channels":  # (1, C, 3, 5): a (15, C) view with strides (1, 15)
        logits = _logits(case, (1, num_classes, 3, 5))
        labels = torch.randint(0, num_classes, (1, 3, 5))
    else:
        wide = case["layout"] == "strided"
        logits = _logits(case, (6, 2 * num_classes if wide else num_classes))
        if wide:  # every other column: strides (2 C, 2)
            logits = logits.detach()[:, ::2].requires_grad_(case["grad"] == "grad")
        labels = torch.randint(0, num_classes, (6,))
    weight = None if case["weight"] == "no_weight" else torch.rand(num_classes)
    alpha = {"no_alpha": None, "alpha": 0.25, "alpha_c": torch.rand(num_classes)}[case["alpha"]]
    fk.softmax_focal_loss(
        logits,
        labels.to(getattr(torch, case["labels"])),
        weight=weight,
        alpha=alpha,
        gamma=0.0 if case["gamma"] == "g0" else 2.0,
        backend="triton",
    )


def _ghm_c(case: dict) -> None:
    shape = _shape(case)
    fk.ghm_c_loss(
        _logits(case, shape),
        _dense_targets(case["targets"], shape, DTYPES[case["dtype"]]),
        bins=case["bins"],
        valid=None if case["valid"] == "no_valid" else torch.rand(shape[:-1]).unsqueeze(-1) > 0.2,
        reduction=case["reduction"],
        backend="triton",
    )


def _ghm_r(case: dict) -> None:
    shape = _shape(case)
    pred = _logits(case, shape)
    target = torch.randn(shape).to(pred.dtype if case["target"] == "same" else torch.float32)
    weight = {
        "no_weight": None,
        "elem": torch.rand(shape),
        "elem_same": torch.rand(shape).to(pred.dtype),
        "row": torch.rand(shape[0], 1),  # read once per row (W_MODE 2) unless shape[-1] == 1
    }[case["weight"]]
    fk.ghm_r_loss(pred, target, bins=case["bins"], weight=weight, backend="triton")


def _boxes(n: int, layout: str, dtype: torch.dtype) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=torch.Generator().manual_seed(n))
    boxes = torch.cat([xy, xy + 0.5], dim=1).to(dtype)
    if layout == "view":  # boxes[:, :4] of (n, 5): strides (5, 1)
        return torch.cat([boxes, boxes[:, :1]], dim=1)[:, :4]
    if layout == "columns":  # stored (4, n): strides (1, n)
        return boxes.t().contiguous().t()
    return boxes


def _box(case: dict) -> None:
    dtype = DTYPES[case["dtype"]]
    pred = _boxes(9, case["layout"], dtype).requires_grad_(case["grad"] == "grad")
    target = _boxes(9, "contiguous", dtype if case["target"] == "same" else torch.float32)
    kind, extra = case["kind"], {}
    if case["modifiers"] != "none":
        extra["inner_ratio"] = 0.7
    if case["modifiers"] == "all":
        extra["focaler"] = (0.1, 0.9)
        if kind in _ALPHA:
            extra["power"] = 3.0
    if kind == "mpdiou":  # one image size, or one per box (a strided read)
        extra["image_size"] = (12.0, 16.0) if case["layout"] == "contiguous" else torch.rand(9, 2)
    _BOX_LOSSES[kind](pred, target, backend="triton", **extra)


def _iou_targets(case: dict, shape) -> tuple:
    """QFL / VFL targets: dense (as :func:`_dense_target`) or (labels, scores)."""
    targets = _dense_targets(case["targets"], shape, DTYPES[case["dtype"]])
    if case["targets"] != "index":
        return (targets,)
    return targets, torch.rand(shape[:-1], generator=torch.Generator().manual_seed(2))


def _qfl(case: dict) -> None:
    shape = _shape(case)
    fk.quality_focal_loss(
        _logits(case, shape),
        *_iou_targets(case, shape),
        beta=0.0 if case["beta"] == "b0" else 2.0,
        reduction=case["reduction"],
        backend="triton",
    )


def _vfl(case: dict) -> None:
    shape = _shape(case)
    targets = _iou_targets(case, shape)
    if targets[0].dtype == torch.bool:
        targets = (targets[0].float(),)
    fk.varifocal_loss(
        _logits(case, shape),
        *targets,
        gamma=0.0 if case["gamma"] == "g0" else 2.0,
        iou_weighted=case["iou_weighted"] == "iou",
        reduction=case["reduction"],
        backend="triton",
    )


def _dfl(case: dict) -> None:
    bins = case["bins"]
    wide = case["layout"] == "strided"
    pred = _logits(case, (6, 4, 2 * bins if wide else bins))
    if wide:  # every other column: strides (8 bins, 2)
        pred = pred.detach()[..., ::2].requires_grad_(case["grad"] == "grad")
    dtype = DTYPES[case["dtype"]] if case["target"] == "same" else torch.float32
    target = (torch.rand(6, 4) * (bins - 1)).to(dtype)
    weight = None if case["weight"] == "no_weight" else torch.rand(6, 1)
    fk.distribution_focal_loss(pred, target, weight=weight, backend="triton")


def _poly1(case: dict) -> None:
    logits = _logits(case, (6, 5))
    weight = None if case["weight"] == "no_weight" else torch.rand(5)
    fk.poly1_cross_entropy(logits, torch.randint(0, 5, (6,)), weight=weight, backend="triton")


def _atan(case: dict) -> None:
    from focalkit.kernels.triton_box import triton_atan  # the child only

    triton_atan(torch.randn(37).to(DTYPES[case["dtype"]]))


def _scale(case: dict) -> None:
    from focalkit.kernels.triton_scale import scale_unless_one  # the child only

    scale_unless_one(torch.randn(37).to(DTYPES[case["dtype"]]), torch.tensor(0.5))


CALLS = {
    "sigmoid": _sigmoid,
    "softmax": _softmax,
    "ghm_c": _ghm_c,
    "ghm_r": _ghm_r,
    "box": _box,
    "qfl": _qfl,
    "vfl": _vfl,
    "dfl": _dfl,
    "poly1": _poly1,
    "atan": _atan,
    "scale": _scale,
}


# --------------------------------------------------------------------------------------------
# the child: record the launches, specialise them as Triton does, compile
# --------------------------------------------------------------------------------------------

_LAUNCHES: list[tuple[str, object, tuple, dict]] = []  # (kernel name, JITFunction, args, kwargs)


def _install_recorders() -> list[str]:
    """Import the kernel modules (the interpreter off: JITFunctions) and make each launch of
    a HUGE kernel append to _LAUNCHES instead of running; returns the modules' ``*_kernel``
    JITFunctions."""
    from triton.runtime.jit import JITFunction

    kernels = []
    for module in MODULES:
        mod = importlib.import_module(f"focalkit.kernels.{module}")
        kernels += [
            k for k, v in vars(mod).items() if isinstance(v, JITFunction) and k.endswith("_kernel")
        ]
        for name in HUGE.keys() & vars(mod).keys():
            kernel = getattr(mod, name)

            def run(*args, grid, warmup, _name=name, _kernel=kernel, **kwargs):
                _LAUNCHES.append((_name, _kernel, args, kwargs))

            kernel.run = run
    return kernels


def _record(family: str, case: dict) -> list[tuple]:
    """The launches that ``case``'s public call makes (none of them runs)."""
    _LAUNCHES.clear()
    os.environ["TRITON_INTERPRET"] = "1"  # dispatch rule "device": CPU tensors -> triton
    try:
        CALLS[family](case)
    finally:
        del os.environ["TRITON_INTERPRET"]
    assert _LAUNCHES, f"{_case_id(family, case)} launched no kernel"
    return list(_LAUNCHES)


def _specialise(launch: tuple, huge: bool):
    """The ASTSource and options ``JITFunction.run`` would compile ``launch`` with on a CUDA
    device (``huge``: the HUGE sizes plus 2**31)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    name, kernel, args, kwargs = launch
    args, kwargs = list(args), dict(kwargs)
    if "EXACT_EXP" in kwargs:
        kwargs["EXACT_EXP"] = True  # x.is_cuda
    if huge:
        params = [p.name for p in kernel.params]
        for size in HUGE[name]:
            k = params.index(size)
            args[k] = args[k] + BIG if args[k] != 1 else 1
    # as JITFunction.run
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    if hasattr(knobs.compilation, "fpsan_homomorphic_casts"):  # triton >= 3.7
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    backend = make_backend(GPUTarget(*TARGET))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    return ASTSource(kernel, signature, constexprs, attrs), options


PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTX_DIV64 = re.compile(r"\b(?:div|rem)\.[su]64\b")


def _compile_case(family: str, case: dict, cache_dir: str) -> list[dict]:
    """Compile each launch of ``case`` into the empty ``cache_dir``: per launch its kernel,
    signature, error (or None), cubin size, whether the PTX has its entry, registers, spills
    and its number of 64-bit div / rem instructions."""
    import triton
    from triton.backends.compiler import GPUTarget

    os.environ["TRITON_CACHE_DIR"] = cache_dir
    huge = "huge" in case.values()
    results = []
    for launch in _record(family, case):
        result = {"kernel": launch[0], "error": None}
        try:
            src, options = _specialise(launch, huge)
            result["signature"] = src.signature
            log = io.StringIO()
            with contextlib.redirect_stdout(log):  # ptxas -v (TRITON_DUMP_PTXAS_LOG)
                compiled = triton.compile(src, target=GPUTarget(*TARGET), options=options.__dict__)
        except Exception as exc:  # reported by the test, with the other launches' results
            result["error"] = "".join(traceback.format_exception(exc))
            results.append(result)
            continue
        regs = PTXAS_REGS.search(log.getvalue())
        result.update(
            cubin=len(compiled.asm["cubin"]),
            entry=f".entry {launch[0]}(" in compiled.asm["ptx"],
            regs=None if regs is None else int(regs.group(1)),
            div64=len(PTX_DIV64.findall(compiled.asm["ptx"])),
            spills=[[int(s), int(ld)] for s, ld in PTXAS_SPILLS.findall(log.getvalue())],
        )
        results.append(result)
    return results


def _cover() -> dict:
    """Per kernel over every case: the constexpr values, the types of its first pointer and
    its last HUGE size, the launch options every launch passes and, per open-ended constexpr
    it is passed, the pairs (the value the case implies, the value passed)."""
    seen: dict[str, dict] = {}
    for family, cases in CASES.items():
        for case in cases:
            for launch in _record(family, case):
                name, kernel = launch[0], launch[1]
                src, _ = _specialise(launch, "huge" in case.values())
                entry = seen.setdefault(
                    name, {"constexprs": {}, "types": set(), "options": None, "open": {}}
                )
                for param, (_, implied) in OPEN_CONSTEXPRS.items():
                    if param in launch[3]:
                        pairs = entry["open"].setdefault(param, set())
                        pairs.add((implied(case), launch[3][param]))
                for (k,), value in src.constants.items():
                    if kernel.params[k].is_constexpr:
                        entry["constexprs"].setdefault(kernel.params[k].name, set()).add(value)
                entry["types"] |= {
                    src.signature[kernel.params[0].name],
                    src.signature[HUGE[name][-1]],
                }
                options = set(launch[3]) - {p.name for p in kernel.params}
                entry["options"] = (
                    options if entry["options"] is None else entry["options"] & options
                )
    return {
        name: {
            "constexprs": {k: sorted(v) for k, v in entry["constexprs"].items()},
            "types": sorted(entry["types"]),
            "options": sorted(entry["options"]),
            "open": {k: sorted(v) for k, v in entry["open"].items()},
        }
        for name, entry in seen.items()
    }


def _serve() -> None:
    """The child: one JSON request per line of stdin, one JSON reply per line on the original
    stdout (fd 1 then points to stderr, so nothing else can interleave)."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401

        get_ptxas(TARGET[1])
        if not hasattr(JITFunction, "_pack_args"):
            raise ImportError("triton.runtime.jit.JITFunction has no _pack_args")
        kernels = _install_recorders()
    except (ImportError, RuntimeError) as exc:
        print(json.dumps({"skip": f"{type(exc).__name__}: {exc}"}), file=replies)
        return
    print(json.dumps({"kernels": kernels}), file=replies)
    ops = {"compile": _compile_case, "cover": _cover}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"result": ops[request["op"]](**request["args"])}
        except Exception:  # the test fails with it; the child serves the next request
            reply = {"error": traceback.format_exc()}
        print(json.dumps(reply), file=replies)


# --------------------------------------------------------------------------------------------
# the tests (this process never imports triton)
# --------------------------------------------------------------------------------------------


class _Child:
    """``python <this file> --serve`` without TRITON_INTERPRET; its stderr goes to a file."""

    def __init__(self, log: Path):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_DUMP_PTXAS_LOG"] = "1"
        src = str(Path(fk.__file__).parents[1])  # where this process imports focalkit from
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        self.log = log
        self.stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the compiler child exited; its stderr:\n{self.log.read_text()[-4000:]}")
        return json.loads(line)

    def request(self, op: str, **args):
        print(json.dumps({"op": op, "args": args}), file=self.proc.stdin, flush=True)
        reply = self._read()
        assert "error" not in reply, reply["error"]
        return reply["result"]

    @functools.cached_property
    def coverage(self) -> dict:
        return self.request("cover")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture(scope="session")
def child(tmp_path_factory):
    proc = _Child(tmp_path_factory.mktemp("triton-aot") / "child-stderr.log")
    if "skip" in proc.hello:
        proc.close()
        pytest.skip(f"needs triton's nvidia backend and its ptxas: {proc.hello['skip']}")
    yield proc
    proc.close()


@pytest.mark.parametrize(
    ("family", "case"),
    [(f, c) for f, cases in CASES.items() for c in cases],
    ids=[_case_id(f, c) for f, cases in CASES.items() for c in cases],
)
def test_compiles_for_sm90_without_spills(family, case, child, tmp_path):
    """Each launch of the case compiles (cold cache) to an sm_90 cubin and spills nothing."""
    results = child.request("compile", family=family, case=case, cache_dir=str(tmp_path))
    for r in results:
        what = f"{r['kernel']} {r.get('signature')}"
        assert r["error"] is None, f"{what} does not compile:\n{r['error']}"
        assert r["cubin"] > 0 and r["entry"], what
        assert r["spills"] and r["regs"], f"{what}: no ptxas -v report"
        assert all(s == [0, 0] for s in r["spills"]), f"{what} spills: {r['spills']}"
        if r["kernel"] in NO_DIV64:
            assert r["div64"] == 0, f"{what}: {r['div64']} 64-bit div / rem in its PTX"


def test_every_kernel_is_listed(child):
    """HUGE and CONSTEXPRS name every ``*_kernel`` of the kernel modules (MODULES)."""
    assert sorted(child.hello["kernels"]) == sorted(HUGE) == sorted(CONSTEXPRS)


def test_cases_cover_every_constexpr_value(child):
    """The cases reach every constexpr value of CONSTEXPRS (and nothing else), each kernel
    with i32 and i64 sizes and float32 and bfloat16 inputs; each launch's NUM_CLASSES and
    ROW_LEN is its case's, and their values include 1, a power of two and a value that is
    not one."""
    coverage = child.coverage
    assert set(coverage) == set(CONSTEXPRS)
    for name, expected in CONSTEXPRS.items():
        opened = coverage[name]["open"]
        assert set(opened) == {
            param for param, (marker, _) in OPEN_CONSTEXPRS.items() if expected.get(param) == marker
        }, name
        expected = dict(expected)
        for param, pairs in opened.items():
            what = f"{name} {param} (expected, passed): {pairs}"
            assert all(want == got for want, got in pairs), what
            values = sorted({got for _, got in pairs})
            assert 1 in values, what
            assert any(v > 1 and v & (v - 1) == 0 for v in values), what
            assert any(v & (v - 1) for v in values), what
            expected[param] = values
        expected = {k: list(v) for k, v in expected.items()}
        assert coverage[name]["constexprs"] == expected, name
        assert {"i32", "i64", "*fp32", "*bf16"} <= set(coverage[name]["types"]), name


def test_launches_say_enable_fp_fusion(child):
    """Every launch passes ``enable_fp_fusion`` (Triton 3.9 warns where the default applies,
    and 3.10 changes the default)."""
    for name, entry in child.coverage.items():
        assert "enable_fp_fusion" in entry["options"], name


def test_pairwise_covers_every_pair():
    """_pairwise's rows contain every pair of values of two options."""
    options = {"a": (0, 1, 2), "b": (0, 1), "c": (0, 1, 2, 3), "d": (0, 1)}
    rows = _pairwise(options, each={"e": tuple(range(20))})
    for a, b in itertools.combinations(options, 2):
        pairs = {(r[a], r[b]) for r in rows}
        assert pairs == set(itertools.product(options[a], options[b])), (a, b)
    assert {r["e"] for r in rows} == set(range(20))


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
