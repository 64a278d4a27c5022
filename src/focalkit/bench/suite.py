"""The benchmark suite behind ``focalkit bench`` (and ``benchmarks/bench_suite.py``).

For every size and dtype, on one device and in one process, it times (median of ``repeat``
calls, variants interleaved block by block, CUDA synchronised) three modes:

* ``forward``: the loss of inputs that do not require grad (no graph is recorded);
* ``backward``: ``torch.autograd.grad(loss, logits, retain_graph=True)`` of a recorded loss;
* ``fwd+bwd``: loss and ``loss.backward()`` from fresh leaves.

Implementations (``op`` family, baseline of the family in brackets):

The focalkit rows that run PyTorch ops use :func:`focalkit.bench.torch_ops_backend` (the
chunked CPU path on a CPU, the plain torch formula elsewhere) and are labelled with it
("focalkit (chunked)"); "(triton)" rows are added where ``"auto"`` picks triton.

* ``sigmoid`` [eager torchvision formula]: focalkit (chunked / torch), focalkit (triton) where
  "auto" picks triton, the eager torchvision formula,
  ``torch.compile`` of it, ``torchvision.ops`` / ``kornia`` / ``monai`` where importable; dense
  float targets of the logits' dtype, alpha 0.25, gamma 2, mean.
* ``softmax`` [eager cross_entropy focal]: ``focalkit.softmax_focal_loss`` (gamma 2, no alpha;
  the torch-ops backend, and triton where "auto" picks it) against the
  ``F.cross_entropy``-based formula, int64 class targets, one per row.
* ``ghm_c`` [per-bin loop]: ``focalkit.ghm_c_loss(bins=30)`` (the torch-ops backend, and
  triton where "auto" picks it) against mmdetection's per-bin loop.
* ``qfl`` [mmdet quality_focal_loss]: ``focalkit.quality_focal_loss`` on the class-index form
  (labels with ~10% positive rows, C = background, and their IoU scores), sum over classes /
  rows, against mmdetection's ``quality_focal_loss``.
* ``vfl`` [ultralytics VarifocalLoss]: ``focalkit.varifocal_loss`` on the dense IoU-aware
  targets (the same positives and scores), sum / rows, against Ultralytics' ``VarifocalLoss``
  (one batch of ``rows`` queries) and mmdetection's ``varifocal_loss``.
* ``dfl`` [ultralytics DFLoss]: ``focalkit.distribution_focal_loss`` on ``(numel // 17)``
  rows of 17 bins (mmdetection's GFL ``reg_max = 16``; sides of whole boxes), targets in
  ``[0, 15.99)``, mean over the sides, against Ultralytics' ``DFLoss(reg_max=17)`` and
  mmdetection's ``distribution_focal_loss``.
* ``asl`` [timm AsymmetricLossMultiLabel]: ``focalkit.asymmetric_loss`` (the torch-ops
  backend; ASL has no Triton kernel) on the dense 0/1 targets, sum / rows, against timm's
  ASL (batchmean).
* ``poly1`` [eager poly1 cross_entropy]: ``focalkit.poly1_cross_entropy`` (epsilon 1; the
  torch-ops backend, and triton where "auto" picks it) against the PolyLoss pseudocode.
* ``copy``: ``dst.copy_(src)`` of the logits, the bandwidth ceiling (same in every mode).

Minimal bytes (``n`` logits of ``s`` bytes each, ``r`` rows; dense targets have the logits'
dtype, class targets are int64): see :data:`MIN_BYTES_FORMULAS`. Achieved bandwidth is
``min_bytes / seconds``; ``pct_of_copy`` divides it by the copy row's bandwidth at the same
size, dtype and mode. ``ratio_vs_eager`` is ``baseline seconds / seconds`` for the family's
baseline (the copy row against the eager sigmoid formula); ``ratio_vs_compile`` the same against
``torch.compile`` of the eager formula (sigmoid family and copy only). ``max_abs_diff``: for
``forward`` rows ``|loss - focalkit loss|``, for ``backward`` / ``fwd+bwd`` rows the largest
``|grad - focalkit grad|`` (the focalkit torch-ops row of the same family; None for copy).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the start of one call; on CPU
the resident high-water mark of one call, measured in a child process with glibc's mmap
threshold lowered (so timings stay in this process, unaffected); not measured for compiled
rows on CPU (it would recompile in the child). Both come from :mod:`.harness`, as do the
timings.

The results document is written atomically after each size x dtype (:func:`run_to_file`), so
an interrupted run keeps its finished cases and ``resume=True`` measures only the others.
"""

from __future__ import annotations

import gc
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from focalkit.demo.records import atomic_write_json, read_record

from . import torch_ops_backend
from .harness import (
    environment,
    fwd_bwd_step,
    interleaved_medians,
    peak_bytes,
    peak_in_child,
)

__all__ = [
    "MIN_BYTES_FORMULAS",
    "MODES",
    "PRESETS",
    "ResumeError",
    "SuiteOptions",
    "case_key",
    "default_json_path",
    "format_table",
    "load_resumable",
    "min_bytes",
    "run_suite",
    "run_to_file",
    "suite_options",
]

MODES = ("forward", "backward", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRESETS: dict[str, dict] = {
    "cpu-small": {"sizes": [(1_000_000, 80), (4_000_000, 80)], "dtypes": ["fp32"]},
    "gpu": {
        "sizes": [
            (1_000_000, 80),
            (10_000_000, 80),
            (128_000_000, 80),  # RetinaNet: batch 16 x 100k anchors x 80 classes
            (12_030_000, 1203),  # LVIS-like, 10k anchors
            (120_300_000, 1203),  # LVIS-like, 100k anchors
        ],
        "dtypes": ["fp32", "bf16"],
    },
}
MIN_BYTES_FORMULAS = {
    "sigmoid": {
        "forward": "n*s (logits) + n*s (dense targets)",
        "backward": "n*s + n*s (read logits, targets) + n*s (write grad)",
        "fwd+bwd": "n*s + n*s (read logits, targets) + n*s (write grad)",
    },
    "ghm_c": {
        "forward": "n*s (logits) + n*s (dense targets)",
        "backward": "n*s + n*s (read logits, targets) + n*s (write grad)",
        "fwd+bwd": "n*s + n*s (read logits, targets) + n*s (write grad)",
    },
    "softmax": {
        "forward": "n*s (logits) + 8*r (int64 targets)",
        "backward": "n*s + 8*r (read logits, targets) + n*s (write grad)",
        "fwd+bwd": "n*s + 8*r (read logits, targets) + n*s (write grad)",
    },
    "qfl": {
        "forward": "n*s (logits) + 8*r (int64 labels) + r*s (scores)",
        "backward": "n*s + 8*r + r*s (read logits, labels, scores) + n*s (write grad)",
        "fwd+bwd": "n*s + 8*r + r*s (read logits, labels, scores) + n*s (write grad)",
    },
    "vfl": {
        "forward": "n*s (logits) + n*s (dense targets)",
        "backward": "n*s + n*s (read logits, targets) + n*s (write grad)",
        "fwd+bwd": "n*s + n*s (read logits, targets) + n*s (write grad)",
    },
    "dfl": {
        "forward": "m*s (pred, m = 17 b) + b*s (targets, b rows)",
        "backward": "m*s + b*s (read pred, targets) + m*s (write grad)",
        "fwd+bwd": "m*s + b*s (read pred, targets) + m*s (write grad)",
    },
    "asl": {
        "forward": "n*s (logits) + n*s (dense targets)",
        "backward": "n*s + n*s (read logits, targets) + n*s (write grad)",
        "fwd+bwd": "n*s + n*s (read logits, targets) + n*s (write grad)",
    },
    "poly1": {
        "forward": "n*s (logits) + 8*r (int64 targets)",
        "backward": "n*s + 8*r (read logits, targets) + n*s (write grad)",
        "fwd+bwd": "n*s + 8*r (read logits, targets) + n*s (write grad)",
    },
    "copy": {mode: "n*s (read) + n*s (write)" for mode in MODES},
}
BASELINE = {
    "sigmoid": "eager torchvision formula",
    "softmax": "eager cross_entropy focal",
    "ghm_c": "per-bin loop ghm_c",
    "qfl": "mmdet quality_focal_loss",
    "vfl": "ultralytics VarifocalLoss",
    "dfl": "ultralytics DFLoss",
    "asl": "timm AsymmetricLossMultiLabel",
    "poly1": "eager poly1 cross_entropy",
    "copy": "eager torchvision formula",
}
COMPILED = "torch.compile(eager)"
FAMILY_LABEL = {
    "sigmoid": "focalkit",
    "softmax": "focalkit softmax",
    "ghm_c": "focalkit ghm_c",
    "qfl": "focalkit qfl",
    "vfl": "focalkit vfl",
    "dfl": "focalkit dfl",
    "asl": "focalkit asl",
    "poly1": "focalkit poly1",
}
# the dispatch table's name of each family with a Triton row where "auto" picks the kernel
TRITON_LOSS = {
    "sigmoid": "sigmoid_focal_loss",
    "softmax": "softmax_focal_loss",
    "ghm_c": "ghm_c_loss",
    "qfl": "quality_focal_loss",
    "vfl": "varifocal_loss",
    "dfl": "distribution_focal_loss",
    "poly1": "poly1_cross_entropy",
}
DFL_BINS = 17  # GFL's reg_max = 16 (mmdetection): 17 logits a side


def family_backend(op: str, device_type: str) -> str:
    """The backend of family ``op``'s focalkit torch-ops row (:func:`torch_ops_backend`)."""
    return torch_ops_backend(device_type)


def reference_row(op: str, device_type: str) -> str:
    """The focalkit torch-ops row of family ``op``, against which max_abs_diff is taken."""
    return f"{FAMILY_LABEL[op]} ({family_backend(op, device_type)})"


def min_bytes(op: str, mode: str, numel: int, rows: int, itemsize: int) -> int:
    """Minimal bytes moved by one call (see :data:`MIN_BYTES_FORMULAS`; for ``dfl``, ``numel``
    and ``rows`` are its own input's)."""
    n, s = numel, itemsize
    if op == "copy":
        return 2 * n * s
    if op in ("softmax", "poly1"):
        reads = n * s + 8 * rows
    elif op == "qfl":
        reads = n * s + 8 * rows + rows * s
    elif op == "dfl":
        reads = n * s + rows * s
    else:
        reads = 2 * n * s
    return reads if mode == "forward" else reads + n * s


@dataclass
class SuiteOptions:
    device: str = "cpu"
    preset: str = "cpu-small"
    sizes: list[tuple[int, int]] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    repeat: int = 5
    compile: bool = True
    memory: bool = True
    command: str = ""


# ----------------------------------------------------------------------------------------------
# inputs and implementations
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    numel: int
    classes: int
    dtype_name: str
    logits: torch.Tensor
    dense: torch.Tensor  # one-hot of the positive rows' classes (background rows all 0)
    labels: torch.Tensor  # (rows,) int64 classes in [0, C): the softmax targets
    valid: torch.Tensor
    det_labels: torch.Tensor  # (rows,) int64, C = background (~90% of the rows)
    scores: torch.Tensor  # (rows,) the positives' IoU in (0, 1), logits' dtype
    quality: torch.Tensor  # dense IoU-aware targets: ``dense`` with the scores as ones
    dfl_pred: torch.Tensor  # (b, 17) DFL logits, b = 4 * (numel // 68) box sides
    dfl_target: torch.Tensor  # (b,) distances in [0, 15.99), logits' dtype
    # a copy for Ultralytics' DFLoss, which clamps its target in place (its values stay,
    # but the version bump would break the other rows' saved tensors)
    dfl_target_clamped: torch.Tensor

    @property
    def rows(self) -> int:
        return self.logits.shape[0]


def make_case(numel: int, classes: int, dtype_name: str, device: torch.device) -> Case:
    gen = torch.Generator().manual_seed(0)
    rows = numel // classes
    dtype = DTYPES[dtype_name]
    logits = torch.randn(rows, classes, generator=gen) * 3
    labels = torch.randint(0, classes + 1, (rows,), generator=gen)  # classes = background
    labels[torch.rand(rows, generator=gen) < 0.9] = classes  # ~10% positive rows
    dense = torch.zeros(rows, classes)
    pos = labels < classes
    dense[pos.nonzero().squeeze(1), labels[pos]] = 1.0
    soft_labels = torch.randint(0, classes, (rows,), generator=gen)
    scores = torch.rand(rows, generator=gen) * 0.9 + 0.05
    sides = max(4, numel // (4 * DFL_BINS) * 4)
    dfl_pred = torch.randn(sides, DFL_BINS, generator=gen) * 3
    dfl_target = torch.rand(sides, generator=gen) * (DFL_BINS - 1 - 0.01)
    return Case(
        numel=rows * classes,
        classes=classes,
        dtype_name=dtype_name,
        logits=logits.to(device=device, dtype=dtype),
        dense=dense.to(device=device, dtype=dtype),
        labels=soft_labels.to(device),
        valid=torch.ones(rows, classes, device=device, dtype=dtype),
        det_labels=labels.to(device),
        scores=scores.to(device=device, dtype=dtype),
        quality=(dense * scores[:, None]).to(device=device, dtype=dtype),
        dfl_pred=dfl_pred.to(device=device, dtype=dtype),
        dfl_target=dfl_target.to(device=device, dtype=dtype),
        dfl_target_clamped=dfl_target.to(device=device, dtype=dtype).clone(),
    )


def _logits_of(case: Case) -> torch.Tensor:
    return case.logits


@dataclass
class Impl:
    name: str
    op: str
    loss: Callable[[torch.Tensor, Case], torch.Tensor] | None  # None: the copy row
    input: Callable[[Case], torch.Tensor] = _logits_of  # the tensor the loss differentiates


def implementations(
    case: Case, *, compile_ok: bool, skipped: dict[str, str], with_compile: bool = True
) -> list[Impl]:
    """The implementations that can run on ``case``; the others go to ``skipped`` (name -> why)."""
    import focalkit as fk
    from focalkit._optional import optional_import
    from focalkit.kernels.dispatch import resolve_backend

    from .baselines import eager_focal, eager_softmax_focal, loop_ghm_c

    device_type = case.logits.device.type
    backend = torch_ops_backend(device_type)
    impls = [
        Impl(
            reference_row("sigmoid", device_type),
            "sigmoid",
            lambda x, c: fk.sigmoid_focal_loss(x, c.dense, backend=backend),
        ),
    ]
    choice = resolve_backend("sigmoid_focal_loss", "auto", case.logits)
    triton = choice.backend == "triton"
    if triton:
        impls.append(
            Impl(
                "focalkit (triton)",
                "sigmoid",
                lambda x, c: fk.sigmoid_focal_loss(x, c.dense, backend="triton"),
            )
        )
    else:
        why = f"auto backend resolves to {choice.backend} on this device"
        for name in ("focalkit (triton)", "focalkit softmax (triton)", "focalkit ghm_c (triton)"):
            skipped.setdefault(name, why)
    impls.append(Impl(BASELINE["sigmoid"], "sigmoid", lambda x, c: eager_focal(x, c.dense)))
    if with_compile:
        if compile_ok:
            compiled = torch.compile(eager_focal, dynamic=False)
            impls.append(Impl(COMPILED, "sigmoid", lambda x, c: compiled(x, c.dense)))
        else:
            skipped.setdefault(COMPILED, "disabled with --no-compile")
    # comparison libraries: one that is missing or fails to import is skipped, with the reason
    tv_ops, why = optional_import("torchvision.ops")
    if tv_ops is not None:
        impls.append(
            Impl(
                "torchvision.ops",
                "sigmoid",
                lambda x, c: tv_ops.sigmoid_focal_loss(x, c.dense, reduction="mean"),
            )
        )
    else:
        skipped.setdefault("torchvision.ops", why)
    kornia_losses, why = optional_import("kornia.losses")
    if kornia_losses is not None:
        impls.append(
            Impl(
                "kornia",
                "sigmoid",
                lambda x, c: kornia_losses.binary_focal_loss_with_logits(
                    x, c.dense, alpha=0.25, gamma=2.0, reduction="mean"
                ),
            )
        )
    else:
        skipped.setdefault("kornia", why)
    monai_losses, why = optional_import("monai.losses")
    if monai_losses is not None:
        monai_loss = monai_losses.FocalLoss(
            gamma=2.0, alpha=0.25, reduction="mean", use_softmax=False
        )
        impls.append(Impl("monai", "sigmoid", lambda x, c: monai_loss(x, c.dense)))
    else:
        skipped.setdefault("monai", why)
    impls.append(
        Impl(
            reference_row("softmax", device_type),
            "softmax",
            lambda x, c: fk.softmax_focal_loss(x, c.labels, gamma=2.0, backend=backend),
        )
    )
    if triton:
        impls.append(
            Impl(
                "focalkit softmax (triton)",
                "softmax",
                lambda x, c: fk.softmax_focal_loss(x, c.labels, gamma=2.0, backend="triton"),
            )
        )
    impls += [
        Impl(BASELINE["softmax"], "softmax", lambda x, c: eager_softmax_focal(x, c.labels)),
        Impl(
            reference_row("ghm_c", device_type),
            "ghm_c",
            lambda x, c: fk.ghm_c_loss(x, c.dense, bins=30, backend=backend),
        ),
    ]
    if triton:
        impls.append(
            Impl(
                "focalkit ghm_c (triton)",
                "ghm_c",
                lambda x, c: fk.ghm_c_loss(x, c.dense, bins=30, backend="triton"),
            )
        )
    impls += [
        Impl(BASELINE["ghm_c"], "ghm_c", lambda x, c: loop_ghm_c(x, c.dense, c.valid, bins=30)),
    ]
    impls += _generalized_implementations(case, skipped)
    impls.append(Impl("copy", "copy", None))
    return impls


FamilyLoss = Callable[[torch.Tensor, Case, str], torch.Tensor]


def _on_backend(loss: FamilyLoss, backend: str) -> Callable[[torch.Tensor, Case], torch.Tensor]:
    return lambda x, c: loss(x, c, backend)


def _generalized_implementations(case: Case, skipped: dict[str, str]) -> list[Impl]:
    """The generalized focal family (QFL, VFL, DFL, ASL, Poly-1 CE): each focalkit row (its
    torch-ops backend, and triton where "auto" picks it) and the public codes' formulas."""
    import focalkit as fk
    from focalkit.kernels.dispatch import resolve_backend

    from . import baselines as b

    device_type = case.logits.device.type
    losses: dict[str, FamilyLoss] = {
        "qfl": lambda x, c, be: fk.quality_focal_loss(
            x, c.det_labels, c.scores, normalizer=c.rows, backend=be
        ),
        "vfl": lambda x, c, be: fk.varifocal_loss(x, c.quality, normalizer=c.rows, backend=be),
        "dfl": lambda x, c, be: fk.distribution_focal_loss(x, c.dfl_target, backend=be),
        "asl": lambda x, c, be: fk.asymmetric_loss(x, c.dense, normalizer=c.rows, backend=be),
        "poly1": lambda x, c, be: fk.poly1_cross_entropy(x, c.labels, backend=be),
    }
    inputs: dict[str, Callable[[Case], torch.Tensor]] = {"dfl": lambda c: c.dfl_pred}
    impls: list[Impl] = []
    for op, loss in losses.items():
        take = inputs.get(op, _logits_of)
        backend = family_backend(op, device_type)
        impls.append(
            Impl(
                reference_row(op, device_type),
                op,
                _on_backend(loss, backend),
                take,
            )
        )
        if op in TRITON_LOSS:
            triton_row = f"{FAMILY_LABEL[op]} (triton)"
            choice = resolve_backend(TRITON_LOSS[op], "auto", take(case))
            if choice.backend == "triton":
                impls.append(Impl(triton_row, op, _on_backend(loss, "triton"), take))
            else:
                skipped.setdefault(
                    triton_row, f"auto backend resolves to {choice.backend} on this device"
                )
    impls += [
        Impl(
            BASELINE["qfl"],
            "qfl",
            lambda x, c: b.mmdet_quality_focal_loss(x, c.det_labels, c.scores),
        ),
        Impl(
            BASELINE["vfl"],
            "vfl",
            lambda x, c: b.ultralytics_varifocal_loss(x, c.quality, (c.quality > 0).to(x.dtype)),
        ),
        Impl("mmdet varifocal_loss", "vfl", lambda x, c: b.mmdet_varifocal_loss(x, c.quality)),
        Impl(
            BASELINE["dfl"],
            "dfl",
            lambda x, c: b.ultralytics_dfl(x, c.dfl_target_clamped.view(-1, 4), reg_max=DFL_BINS),
            inputs["dfl"],
        ),
        Impl(
            "mmdet distribution_focal_loss",
            "dfl",
            lambda x, c: b.mmdet_distribution_focal_loss(x, c.dfl_target),
            inputs["dfl"],
        ),
        Impl(BASELINE["asl"], "asl", lambda x, c: b.timm_asymmetric_loss(x, c.dense)),
        Impl(BASELINE["poly1"], "poly1", lambda x, c: b.eager_poly1_cross_entropy(x, c.labels)),
    ]
    return impls


def make_step(impl: Impl, case: Case, mode: str) -> Callable[[], object]:
    if impl.loss is None:
        dst = torch.empty_like(case.logits)
        return lambda: dst.copy_(case.logits)
    loss_fn = impl.loss
    leaf = impl.input(case)
    if mode == "forward":
        x = leaf.detach()
        return lambda: loss_fn(x, case)
    if mode == "backward":
        x = leaf.detach().requires_grad_(True)
        loss = loss_fn(x, case)
        return lambda: torch.autograd.grad(loss, x, retain_graph=True)

    return fwd_bwd_step(loss_fn, leaf, case)


def _values(impl: Impl, case: Case) -> tuple[float, torch.Tensor]:
    if impl.loss is None:
        raise ValueError(f"{impl.name}: the copy row has no loss to compare")
    x = impl.input(case).detach().requires_grad_(True)
    loss = impl.loss(x, case)
    (grad,) = torch.autograd.grad(loss, x)
    return float(loss.detach().float()), grad.detach().float()


# ----------------------------------------------------------------------------------------------
# the suite
# ----------------------------------------------------------------------------------------------


def _peaks_cpu(numel: int, classes: int, dtype_name: str) -> dict[str, int | None]:
    """Peak bytes of every (impl, mode) on CPU, measured in a child process."""
    peaks = peak_in_child(
        "focalkit.bench.suite:case_peaks", numel=numel, classes=classes, dtype=dtype_name
    )
    return peaks or {}


def case_peaks(numel: int, classes: int, dtype: str) -> dict[str, int | None]:
    """``{"impl|mode": peak bytes}`` of every implementation but the compiled one, in this
    process (run by :func:`_peaks_cpu` in a child)."""
    device = torch.device("cpu")
    case = make_case(numel, classes, dtype, device)
    result: dict[str, int | None] = {}
    for impl in implementations(case, compile_ok=False, skipped={}, with_compile=False):
        for mode in MODES:
            try:
                result[f"{impl.name}|{mode}"] = peak_bytes(make_step(impl, case, mode), device)
            except Exception:  # the parent records the failure when timing
                result[f"{impl.name}|{mode}"] = None
            gc.collect()
    return result


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:200]


def run_case(
    case: Case,
    opts: SuiteOptions,
    device: torch.device,
    skipped: dict[str, str],
    log: Callable[[str], None],
) -> list[dict]:
    impls = implementations(case, compile_ok=opts.compile, skipped=skipped)
    # one fwd+bwd call each: values for max_abs_diff, and failures (e.g. compile) skip the impl
    values: dict[str, tuple[float, torch.Tensor]] = {}
    runnable = []
    for impl in impls:
        if impl.loss is None:
            runnable.append(impl)
            continue
        try:
            values[impl.name] = _values(impl, case)
            runnable.append(impl)
        except Exception as exc:  # recorded; the suite goes on
            skipped[impl.name] = _describe(exc)
            log(f"  skipped {impl.name}: {skipped[impl.name]}")
    peaks: dict[str, int | None] = {}
    if opts.memory and device.type == "cpu":
        try:
            peaks = _peaks_cpu(case.numel, case.classes, case.dtype_name)
        except (subprocess.CalledProcessError, ValueError, OSError) as exc:
            log(f"  peak memory not measured: {_describe(exc)}")
    itemsize = case.logits.element_size()
    rows: list[dict] = []
    for mode in MODES:
        steps = {impl.name: make_step(impl, case, mode) for impl in runnable}
        seconds = interleaved_medians(steps, device, repeat=opts.repeat, warmup=1)
        mode_rows = {}
        for impl in runnable:
            peak = None
            if opts.memory and device.type == "cuda":
                peak = peak_bytes(steps[impl.name], device)
            elif impl.name != COMPILED:
                peak = peaks.get(f"{impl.name}|{mode}")
            size = (case.numel, case.rows)
            if impl.op == "dfl":  # its own input: box sides of 17 bins
                size = (case.dfl_pred.numel(), case.dfl_pred.shape[0])
            nbytes = min_bytes(impl.op, mode, *size, itemsize)
            diff = None
            if impl.loss is not None:
                ref_loss, ref_grad = values[reference_row(impl.op, device.type)]
                loss, grad = values[impl.name]
                diff = (
                    abs(loss - ref_loss)
                    if mode == "forward"
                    else float((grad - ref_grad).abs().max())
                )
            mode_rows[impl.name] = {
                "op": impl.op,
                "impl": impl.name,
                "mode": mode,
                "dtype": case.dtype_name,
                "numel": case.numel,
                "classes": case.classes,
                "rows": case.rows,
                "seconds": seconds[impl.name],
                "peak_bytes": peak,
                "min_bytes": nbytes,
                "bandwidth_gbs": nbytes / seconds[impl.name] / 1e9,
                "baseline": BASELINE[impl.op],
                "max_abs_diff": diff,
            }
        copy_bw = mode_rows["copy"]["bandwidth_gbs"]
        compiled = mode_rows.get(COMPILED)
        for row in mode_rows.values():
            row["pct_of_copy"] = 100.0 * row["bandwidth_gbs"] / copy_bw
            row["ratio_vs_eager"] = mode_rows[row["baseline"]]["seconds"] / row["seconds"]
            row["ratio_vs_compile"] = (
                compiled["seconds"] / row["seconds"]
                if compiled is not None and row["op"] in ("sigmoid", "copy")
                else None
            )
        rows.extend(mode_rows.values())
        del steps
        gc.collect()
    return rows


def case_key(numel: int, classes: int, dtype_name: str) -> list:
    """How a finished size x dtype is listed in a document's ``"done"``."""
    return [int(numel), int(classes), dtype_name]


def run_suite(
    opts: SuiteOptions,
    log: Callable[[str], None] = print,
    *,
    previous: dict | None = None,
    on_case: Callable[[dict], None] | None = None,
) -> dict:
    """Run every size x dtype of ``opts``; returns the results document (not written).

    ``previous``: a document of an earlier, interrupted or shorter run on the same machine
    (see ``focalkit bench --resume``): its rows are kept and the size x dtype cases in its
    ``"done"`` are not measured again. ``on_case`` receives the document so far after each
    case, so that an interrupted run keeps its finished cases; ``"complete"`` says whether
    every size x dtype of ``"sizes"`` x ``"dtypes"`` is in ``"done"``."""
    device = torch.device(opts.device)
    skipped: dict[str, str] = {}
    rows: list[dict] = []
    done: list[list] = []
    sizes = [list(s) for s in opts.sizes]
    dtypes = list(opts.dtypes)
    if previous is not None:
        skipped.update({s["impl"]: s["reason"] for s in previous["skipped"]})
        rows.extend(previous["rows"])
        done.extend(previous["done"])
        sizes = [s for s in previous["sizes"] if s not in sizes] + sizes
        dtypes = [d for d in previous["dtypes"] if d not in dtypes] + dtypes

    def document() -> dict:
        complete = all(case_key(n, c, d) in done for n, c in sizes for d in dtypes)
        return {
            "benchmark": "suite",
            "preset": opts.preset,
            "command": opts.command,
            "device": device.type,
            "environment": environment(device),
            "repeat": opts.repeat,
            "compile": opts.compile,
            "sizes": sizes,
            "dtypes": dtypes,
            "modes": list(MODES),
            "min_bytes_formulas": MIN_BYTES_FORMULAS,
            "skipped": [{"impl": k, "reason": v} for k, v in sorted(skipped.items())],
            "done": done,
            "complete": complete,
            "rows": rows,
        }

    for dtype_name in opts.dtypes:
        for numel, classes in opts.sizes:
            key = case_key(numel, classes, dtype_name)
            if key in done:
                log(f"# {numel:,} logits x {classes} classes, {dtype_name}: kept from --resume")
                continue
            case = make_case(numel, classes, dtype_name, device)
            log(f"# {case.numel:,} logits ({case.rows} x {classes}), {dtype_name}")
            rows.extend(run_case(case, opts, device, skipped, log))
            done.append(key)
            del case
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if on_case is not None:
                on_case(document())
    return document()


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:{spec}}{suffix}")
    )


def format_table(doc: dict) -> str:
    header = (
        f"{'size':>16} {'dtype':>5} {'mode':>8} {'implementation':<27}{'ms':>10}"
        f"{'peak MiB':>10}{'GB/s':>8}{'%copy':>7}{'vs eager':>9}{'vs compile':>11}"
        f"{'max|diff|':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in doc["rows"]:
        size = f"{r['rows']}x{r['classes']}"
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20
        lines.append(
            f"{size:>16} {r['dtype']:>5} {r['mode']:>8} {r['impl']:<27}"
            f"{r['seconds'] * 1e3:>10.2f}{_fmt(peak, '.1f'):>10}{r['bandwidth_gbs']:>8.2f}"
            f"{r['pct_of_copy']:>7.1f}{_fmt(r['ratio_vs_eager'], '.2f', 'x'):>9}"
            f"{_fmt(r['ratio_vs_compile'], '.2f', 'x'):>11}{_fmt(r['max_abs_diff'], '.1e'):>10}"
        )
    for s in doc["skipped"]:
        lines.append(f"skipped {s['impl']}: {s['reason']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# options, resuming and the results file
# ----------------------------------------------------------------------------------------------


def suite_options(
    device: str,
    *,
    preset: str | None = None,
    sizes: list[tuple[int, int]] | None = None,
    dtypes: list[str] | None = None,
    repeat: int = 5,
    compile: bool = True,
    command: str = "",
) -> SuiteOptions:
    """The options of a run on ``device`` (``cpu`` or ``cuda``): the preset (default
    ``gpu`` on CUDA, ``cpu-small`` elsewhere) gives the sizes and dtypes that ``sizes`` and
    ``dtypes`` do not override; with explicit ``sizes`` the run is named ``custom``."""
    preset = preset or ("gpu" if device == "cuda" else "cpu-small")
    return SuiteOptions(
        device=device,
        preset=preset if sizes is None else "custom",
        sizes=list(sizes or PRESETS[preset]["sizes"]),
        dtypes=list(dtypes or PRESETS[preset]["dtypes"]),
        repeat=repeat,
        compile=compile,
        command=command,
    )


def default_json_path(opts: SuiteOptions) -> Path:
    """``benchmarks/results/suite-DEVICE-PRESET.json`` (relative to the working directory)."""
    return Path("benchmarks/results") / f"suite-{opts.device}-{opts.preset}.json"


class ResumeError(ValueError):
    """The results file cannot be extended by this run (the message says why)."""


# what must match for rows of two runs to sit in one table (ratios are within a case, but
# the cases of one table should come from one machine and one software stack)
_RESUME_KEYS = (
    "focalkit",
    "torch",
    "triton",
    "torchvision",
    "kornia",
    "monai",
    "device_name",
    "threads",
)
_DOCUMENT_KEYS = (
    "benchmark",
    "environment",
    "repeat",
    "compile",
    "sizes",
    "dtypes",
    "skipped",
    "done",
    "rows",
)


def load_resumable(path: Path, opts: SuiteOptions) -> dict:
    """The document at ``path`` if a run with ``opts`` can extend it, else :class:`ResumeError`
    (not a suite document, or from another machine, software stack, ``repeat`` or compile
    setting)."""
    doc = read_record(path)
    if doc is None or doc.get("benchmark") != "suite" or any(k not in doc for k in _DOCUMENT_KEYS):
        raise ResumeError(
            f"--resume: {path} is not a results file of this suite "
            "(written after each case since --resume exists)"
        )
    here = environment(torch.device(opts.device))
    for key, found, now in (
        [("device", doc["environment"].get("device"), here["device"])]
        + [(k, doc["environment"].get(k), here[k]) for k in _RESUME_KEYS]
        + [("repeat", doc["repeat"], opts.repeat), ("compile", doc["compile"], opts.compile)]
    ):
        if found != now:
            raise ResumeError(f"--resume: {path} has {key} {found!r}, this run {now!r}")
    return doc


def run_to_file(
    opts: SuiteOptions,
    path: Path,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """:func:`run_suite`, writing the document to ``path`` atomically after each case and at
    the end; with ``resume`` (and ``path`` present) the cases already there are kept (see
    :func:`load_resumable`, checked before anything is measured). Returns the document."""
    previous = load_resumable(path, opts) if resume and path.exists() else None
    doc = run_suite(
        opts,
        log=log,
        previous=previous,
        on_case=lambda partial: atomic_write_json(path, partial),
    )
    atomic_write_json(path, doc)
    return doc
