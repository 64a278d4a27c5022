"""Triton GHM-C and GHM-R: histogram kernels, loss-and-gradient kernels, their autograd.Functions.

Two passes over the flattened inputs, with the tiny ``(bins + 1,)`` steps in between left to
the torch code of :mod:`focalkit.functional.ghm` (``global_histogram``: the all-reduce for
``sync``; ``harmonizing_weights``: the EMA), so nothing reads a value back to the host:

1. **histogram**: each program walks its tiles (a grid-stride loop over at most
   :data:`MAX_PROGRAMS` programs), computes ``g`` and its bin and accumulates a register
   histogram (``tl.histogram``), then adds it with one int64 ``atomic_add`` per bin into a
   ``(bins,)`` counts buffer. Above :data:`HIST_MAX_BINS` bins it adds each element's 1 to the
   counts directly (per-element atomics). GHM-R also writes one float64 partial sum of the
   label weights per program (``N``). Reads: GHM-C the logits, the targets (or one int64 label
   per row) and an optional uint8 mask; GHM-R ``pred``, ``target`` and the optional weight.
   Writes: nothing per element.
2. **loss and gradient**: recomputes ``g`` and its bin from the same inputs (the same jit
   helpers, so the same bin), gathers the float32 per-bin weight from the ``(bins + 1,)``
   table and writes the float32 gradient (stored for backward, which only scales it by
   ``grad_output``) and either one partial sum per program or the elementwise loss
   (GHM-C ``reduction="none"``). Recomputing costs the reads of pass 1 again; storing a bin
   index instead would add a write and a read of it and still need the logits and targets.

The bin is computed as in ``_scaled_bins``: ``floor(g * bins)`` with the product in float64
(exact for a float32 ``g``), capped at ``bins - 1``; dropped (ignored, invalid, ``weight <= 0``)
and NaN elements go to the slot ``bins``, which counts nowhere and weighs 0. ``g`` uses the
same IEEE operations as the torch path, in the same order: GHM-C ``|1 / (1 + exp(-x)) - y|``
(on CUDA with libdevice ``expf``, the ``exp`` of torch's CUDA sigmoid; the interpreter uses
numpy's ``exp``, which can differ from torch's CPU one in the last bit), GHM-R
``|d| / sqrt(d * d + mu^2)`` with correctly rounded division and square root. Kernels are
launched with ``enable_fp_fusion=False`` so no multiply-add is contracted.

Everything runs in float32 (float32, float16 or bfloat16 inputs, any target dtype), with int64
offsets. Supported: every GHM-C target form (dense float, integer dense with ``ignore_index``
through its mask, class indices with ``C`` = background read per row without a one-hot),
``valid``, every reduction, any ``bins >= 1``; GHM-R ``mu`` and ``weight`` (read per element or
per row when it broadcasts over the last dimension). float64 runs on torch (see
:mod:`focalkit.kernels.dispatch`).

GHM-C's ``C`` is the constexpr ``NUM_CLASSES``, so the index form divides the int64 offsets by
a constant (multiply-high and shifts) instead of calling the emulated 64-bit ``div`` / ``rem``:
it compiles once per distinct ``C`` (one in a training run; the compiled kernels are cached).
The dense forms never divide and pass ``NUM_CLASSES=1``: one compile whatever ``C``.

GHM-R's row length ``K`` (the last dimension) is the constexpr ``ROW_LEN``, so the per-row
weight (``W_MODE`` 2) divides the int64 offsets by a constant (multiply-high and shifts)
instead of calling the emulated 64-bit ``div``: it compiles once per distinct ``K`` (one in a
training run; the compiled kernels are cached). No weight and the elementwise weight never
divide and pass ``ROW_LEN=1``: one compile whatever ``K``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from .._autograd import refuse_double_backward, stored_grad, stored_grad_dtype
from ..functional._targets import SigmoidTargets
from ..functional.focal import NO_LABEL
from ..functional.ghm import harmonize, numel_total
from ._triton_math import log1p_small
from .dispatch import outside_compiled_graph
from .triton_scale import apply_grad_output

__all__ = [
    "GHMCInputs",
    "GHMRInputs",
    "ghm_c_histogram",
    "ghm_c_inputs",
    "ghm_r_histogram",
    "ghm_r_inputs",
    "triton_ghm_c",
    "triton_ghm_r",
]

BLOCK = 1024  # elements per tile
MAX_PROGRAMS = 1024  # programs of the histogram pass (each walks several tiles)
# above: per-element atomics instead of a register histogram (read at launch). 4096 compiles
# without spills on triton 3.9 but spills 300-700 bytes per thread on 3.6 (sm_90)
HIST_MAX_BINS = 2048


# --------------------------------------------------------------------------------------------
# shared jit helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _exp(x, EXACT_EXP: tl.constexpr):
    # libdevice expf is what torch's CUDA sigmoid calls; tl.exp is a faster approximation
    if EXACT_EXP:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _bin(g, keep, bins):
    """floor(g * bins) with the product in float64, capped at bins - 1; `bins` where not keep
    or NaN (int32)."""
    ok = keep & (g == g)
    scaled = tl.where(ok, g, 0.0).to(tl.float64) * bins
    # tl.cast, not .to: bins == 1 is specialised to a constexpr int at launch
    scaled = tl.minimum(scaled, tl.cast(bins - 1, tl.float64))
    return tl.where(ok, scaled.to(tl.int32), bins)


@triton.jit
def _count(b, hist, counts_ptr, mask, bins, NB: tl.constexpr, ATOMIC: tl.constexpr):
    # b == bins (the dropped slot) is < NB, so tl.histogram needs no mask
    if ATOMIC:
        one = tl.full(b.shape, 1, tl.int64)
        tl.atomic_add(counts_ptr + b, one, mask=mask & (b < bins))
    else:
        hist += tl.histogram(b, NB)
    return hist


@triton.jit
def _flush(hist, counts_ptr, bins, NB: tl.constexpr, ATOMIC: tl.constexpr):
    if not ATOMIC:
        r = tl.arange(0, NB)
        tl.atomic_add(counts_ptr + r, hist.to(tl.int64), mask=r < bins)


# --------------------------------------------------------------------------------------------
# GHM-C
# --------------------------------------------------------------------------------------------


@triton.jit
def _c_tile(
    x_ptr,
    y_ptr,
    keep_ptr,
    offs,
    mask,
    ignore_index,
    NUM_CLASSES: tl.constexpr,
    INDEX: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    EXACT_EXP: tl.constexpr,
):
    """x, y (float32), keep, p = sigmoid(x) as torch computes it, and the bin of |p - y|."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    keep = mask
    if INDEX:
        # by a constant: multiply-high and shifts, no 64-bit division
        label = tl.load(y_ptr + offs // NUM_CLASSES, mask=mask, other=ignore_index)
        keep = keep & (label != ignore_index)
        y = (label == offs % NUM_CLASSES).to(tl.float32)
    else:
        y = tl.load(y_ptr + offs, mask=mask, other=0).to(tl.float32)
    if HAS_KEEP:
        keep = keep & (tl.load(keep_ptr + offs, mask=mask, other=0) != 0)
    p = tl.math.div_rn(tl.full(x.shape, 1.0, tl.float32), 1.0 + _exp(-x, EXACT_EXP))
    return x, y, p, keep


@triton.jit
def _ghm_c_hist_kernel(
    x_ptr,
    y_ptr,  # dense: targets (any dtype); index: int64 labels, one per row
    keep_ptr,  # uint8 mask of the logits' shape (HAS_KEEP)
    counts_ptr,  # (bins,) int64, zeroed
    n,
    ignore_index,
    bins,
    NUM_CLASSES: tl.constexpr,  # C in the index form, else 1
    INDEX: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    EXACT_EXP: tl.constexpr,
    NB: tl.constexpr,
    ATOMIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    hist = tl.zeros([NB], dtype=tl.int32)
    # (n - 1) // BLOCK + 1, not tl.cdiv: n + BLOCK - 1 overflows an i32 n near 2**31 (n >= 1)
    for tile in range(tl.program_id(0), (n - 1) // BLOCK + 1, tl.num_programs(0)):
        offs = tl.arange(0, BLOCK).to(tl.int64) + tile * BLOCK
        mask = offs < n
        _, y, p, keep = _c_tile(
            x_ptr,
            y_ptr,
            keep_ptr,
            offs,
            mask,
            ignore_index,
            NUM_CLASSES,
            INDEX,
            HAS_KEEP,
            EXACT_EXP,
        )
        b = _bin(tl.abs(p - y), keep, bins)
        hist = _count(b, hist, counts_ptr, mask, bins, NB, ATOMIC)
    _flush(hist, counts_ptr, bins, NB, ATOMIC)


@triton.jit
def _ghm_c_loss_kernel(
    x_ptr,
    y_ptr,
    keep_ptr,
    per_bin_ptr,  # (bins + 1,) float32, the last entry 0
    loss_ptr,  # REDUCE: (num_programs,) partial sums; else (n,) elementwise
    grad_ptr,  # (n,) float32, or bfloat16 for bfloat16 logits (NEED_GRAD)
    n,
    ignore_index,
    bins,
    NUM_CLASSES: tl.constexpr,  # C in the index form, else 1
    INDEX: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    EXACT_EXP: tl.constexpr,
    REDUCE: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    x, y, p, keep = _c_tile(
        x_ptr, y_ptr, keep_ptr, offs, mask, ignore_index, NUM_CLASSES, INDEX, HAS_KEEP, EXACT_EXP
    )
    b = _bin(tl.abs(p - y), keep, bins)
    w = tl.load(per_bin_ptr + b, mask=mask, other=0.0)
    # BCE as a sum of non-negative terms (no cancellation for soft y; see bce_with_logits)
    bce = tl.maximum(x, 0.0) * (1.0 - y) + tl.maximum(-x, 0.0) * y + log1p_small(tl.exp(-tl.abs(x)))
    loss = tl.where(mask, bce * w, 0.0)
    if REDUCE:
        tl.store(loss_ptr + pid, tl.sum(loss, axis=0))
    else:
        tl.store(loss_ptr + offs, loss, mask=mask)
    if NEED_GRAD:
        tl.store(grad_ptr + offs, (p - y) * w, mask=mask)


class GHMCInputs(NamedTuple):
    """Flat, contiguous kernel inputs shared by both passes (built once by ghm_c_inputs)."""

    x: Tensor  # logits, detached
    y: Tensor  # dense targets, or int64 labels per row (index form)
    keep: Tensor | None  # uint8 mask of the logits' shape
    num_classes: int  # NUM_CLASSES: C in the index form, else 1 (the dense forms ignore it)
    ignore_index: int
    index_form: bool
    bins: int
    reduce_sum: bool  # True: the summed loss (0-dim); False: the elementwise loss


def _flat(t: Tensor) -> Tensor:
    t = t.detach().contiguous().view(-1)
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def ghm_c_inputs(
    logits: Tensor,
    target: Tensor,
    keep: Tensor | None,
    *,
    index_form: bool,
    ignore_index: int,
    bins: int,
    reduce_sum: bool,
) -> GHMCInputs:
    """``target``: the dense targets of the logits' shape, or the labels ``logits.shape[:-1]``
    (index form; ``ignore_index`` rows are dropped in the kernel); ``keep``: None or a bool
    mask broadcastable to the logits' shape."""
    # the class count only where the kernels divide by it: one compile per C there, else one
    num_classes = logits.shape[-1] if index_form and logits.dim() else 1
    if keep is not None:
        keep = _flat(keep.expand(logits.shape))
    return GHMCInputs(
        _flat(logits),
        _flat(target),
        keep,
        num_classes,
        ignore_index,
        index_form,
        bins,
        reduce_sum,
    )


def _hist_grid(n: int) -> tuple[int]:
    return (max(1, min(triton.cdiv(n, BLOCK), MAX_PROGRAMS)),)


def _hist_meta(bins: int) -> dict:
    nb = max(32, triton.next_power_of_2(bins + 1))
    atomic = nb > HIST_MAX_BINS
    return {"NB": 32 if atomic else nb, "ATOMIC": atomic}


def ghm_c_histogram(inp: GHMCInputs) -> Tensor:
    """int64 ``(bins,)`` counts of ``g = |sigmoid(x) - y|`` over the kept elements."""
    counts = torch.zeros(inp.bins, dtype=torch.int64, device=inp.x.device)
    n = inp.x.numel()
    if n > 0:
        _ghm_c_hist_kernel[_hist_grid(n)](
            inp.x,
            inp.y,
            inp.x if inp.keep is None else inp.keep,  # unused placeholder keeps one signature
            counts,
            n,
            inp.ignore_index,
            inp.bins,
            NUM_CLASSES=inp.num_classes,
            INDEX=inp.index_form,
            HAS_KEEP=inp.keep is not None,
            EXACT_EXP=inp.x.is_cuda,
            BLOCK=BLOCK,
            enable_fp_fusion=False,
            **_hist_meta(inp.bins),
        )
    return counts


def _ghm_c_launch(
    inp: GHMCInputs, per_bin: Tensor, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    n = inp.x.numel()
    device = inp.x.device
    grid = (triton.cdiv(n, BLOCK),)
    loss = torch.empty(grid[0] if inp.reduce_sum else n, dtype=torch.float32, device=device)
    grad_dtype = stored_grad_dtype(inp.x.dtype)
    grad = torch.empty(n, dtype=grad_dtype, device=device) if need_grad else None
    if n > 0:
        _ghm_c_loss_kernel[grid](
            inp.x,
            inp.y,
            inp.x if inp.keep is None else inp.keep,
            per_bin,
            loss,
            inp.x if grad is None else grad,
            n,
            inp.ignore_index,
            inp.bins,
            NUM_CLASSES=inp.num_classes,
            INDEX=inp.index_form,
            HAS_KEEP=inp.keep is not None,
            EXACT_EXP=inp.x.is_cuda,
            REDUCE=inp.reduce_sum,
            NEED_GRAD=need_grad,
            BLOCK=BLOCK,
            enable_fp_fusion=False,
        )
    return (loss.sum() if inp.reduce_sum else loss), grad


class _TritonGHMCFunction(torch.autograd.Function):
    """Forward runs the loss pass and keeps its gradient; backward scales it by
    ``grad_output``. A second backward through a retained graph relaunches the pass. The
    targets and the per-bin weights are constants."""

    @staticmethod
    def forward(ctx, logits: Tensor, per_bin: Tensor, inp: GHMCInputs):
        need_grad = ctx.needs_input_grad[0]
        loss, grad = _ghm_c_launch(inp, per_bin, need_grad)
        ctx.inp, ctx.per_bin, ctx.grad = inp, per_bin, grad
        ctx.shape, ctx.dtype = logits.shape, logits.dtype
        return loss if inp.reduce_sum else loss.view(logits.shape)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        refuse_double_backward("focalkit GHM-C losses")
        grad = stored_grad(ctx, lambda: _ghm_c_launch(ctx.inp, ctx.per_bin, True)[1])
        grad = apply_grad_output(grad.view(ctx.shape), grad_output)
        return grad.to(ctx.dtype), None, None


def triton_ghm_c(logits: Tensor, inp: GHMCInputs, per_bin: Tensor) -> Tensor:
    """``sum_i w_i BCE(x_i, y_i)`` (0-dim, float32) or its terms (the logits' shape), with
    ``w_i = per_bin[bin_i]`` (float32, ``bins + 1`` entries, the last 0)."""
    return _TritonGHMCFunction.apply(logits, per_bin.to(torch.float32).contiguous(), inp)


# --------------------------------------------------------------------------------------------
# GHM-R
# --------------------------------------------------------------------------------------------


@triton.jit
def _r_tile(
    p_ptr,
    t_ptr,
    w_ptr,
    offs,
    mask,
    mu2,
    ROW_LEN: tl.constexpr,
    W_MODE: tl.constexpr,
):
    """d, root = sqrt(d d + mu^2) as torch computes them, the label weight (native dtype)
    and keep (weight > 0)."""
    d = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32) - tl.load(
        t_ptr + offs, mask=mask, other=0.0
    ).to(tl.float32)
    root = tl.sqrt_rn(d * d + mu2)
    keep = mask
    wv = tl.full(offs.shape, 1.0, tl.float32)
    if W_MODE == 1:
        wv = tl.load(w_ptr + offs, mask=mask, other=0)
        keep = keep & (wv > 0)
    if W_MODE == 2:
        # by a constant: multiply-high and shifts, no 64-bit division
        wv = tl.load(w_ptr + offs // ROW_LEN, mask=mask, other=0)
        keep = keep & (wv > 0)
    return d, root, wv, keep


@triton.jit
def _ghm_r_hist_kernel(
    p_ptr,
    t_ptr,
    w_ptr,  # W_MODE 1: (n,) label weights; 2: one per row of ROW_LEN elements
    counts_ptr,  # (bins,) int64, zeroed
    wsum_ptr,  # (num_programs,) float64 partial sums of the weights (W_MODE != 0)
    n,
    mu2,
    bins,
    ROW_LEN: tl.constexpr,  # the row length in W_MODE 2, else 1
    W_MODE: tl.constexpr,
    NB: tl.constexpr,
    ATOMIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    hist = tl.zeros([NB], dtype=tl.int32)
    wsum = tl.zeros([BLOCK], dtype=tl.float64)
    # (n - 1) // BLOCK + 1, not tl.cdiv: n + BLOCK - 1 overflows an i32 n near 2**31 (n >= 1)
    for tile in range(tl.program_id(0), (n - 1) // BLOCK + 1, tl.num_programs(0)):
        offs = tl.arange(0, BLOCK).to(tl.int64) + tile * BLOCK
        mask = offs < n
        d, root, wv, keep = _r_tile(p_ptr, t_ptr, w_ptr, offs, mask, mu2, ROW_LEN, W_MODE)
        b = _bin(tl.math.div_rn(tl.abs(d), root), keep, bins)
        hist = _count(b, hist, counts_ptr, mask, bins, NB, ATOMIC)
        if W_MODE != 0:
            wsum += tl.where(mask, wv.to(tl.float64), 0.0)
    _flush(hist, counts_ptr, bins, NB, ATOMIC)
    if W_MODE != 0:
        tl.store(wsum_ptr + tl.program_id(0), tl.sum(wsum, axis=0))


@triton.jit
def _ghm_r_loss_kernel(
    p_ptr,
    t_ptr,
    w_ptr,
    per_bin_ptr,  # (bins + 1,) float32, the last entry 0
    loss_ptr,  # (num_programs,) float32 partial sums
    grad_ptr,  # (n,) float32, d loss / d pred (NEED_GRAD)
    n,
    mu,
    mu2,
    bins,
    ROW_LEN: tl.constexpr,  # the row length in W_MODE 2, else 1
    W_MODE: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    d, root, wv, keep = _r_tile(p_ptr, t_ptr, w_ptr, offs, mask, mu2, ROW_LEN, W_MODE)
    b = _bin(tl.math.div_rn(tl.abs(d), root), keep, bins)
    w = tl.load(per_bin_ptr + b, mask=mask, other=0.0)
    if W_MODE != 0:
        w = w * wv.to(tl.float32)
    asl1 = d * d / (root + mu)  # sqrt(d^2 + mu^2) - mu without cancellation
    tl.store(loss_ptr + pid, tl.sum(tl.where(mask, asl1 * w, 0.0), axis=0))
    if NEED_GRAD:
        tl.store(grad_ptr + offs, w * (d / root), mask=mask)


class GHMRInputs(NamedTuple):
    """Flat, contiguous kernel inputs shared by both passes (built once by ghm_r_inputs)."""

    pred: Tensor  # detached
    target: Tensor  # detached
    weight: Tensor | None  # (n,) or one per row of row_len elements
    weight_mode: int  # 0: none, 1: elementwise, 2: per row
    row_len: int  # ROW_LEN: the last dimension in weight_mode 2, else 1 (the others ignore it)
    mu: float
    bins: int


def ghm_r_inputs(
    pred: Tensor, target: Tensor, weight: Tensor | None, *, mu: float, bins: int
) -> GHMRInputs:
    """``weight``: None or label weights broadcastable to ``pred``'s shape; a weight of shape
    ``(*, 1)`` against ``(*, K)`` is read once per row (no expanded copy)."""
    shape = pred.shape
    mode = 0
    if weight is not None:
        if pred.dim() and shape[-1] > 1 and (weight.dim() == 0 or weight.shape[-1] == 1):
            mode, weight = 2, _flat(weight.expand(*shape[:-1], 1))
        else:
            mode, weight = 1, _flat(weight.expand(shape))
    # the row length only where the kernels divide by it: one compile per K there, else one
    row_len = shape[-1] if mode == 2 else 1
    return GHMRInputs(_flat(pred), _flat(target), weight, mode, row_len, float(mu), bins)


def ghm_r_histogram(inp: GHMRInputs) -> tuple[Tensor, Tensor | None]:
    """int64 ``(bins,)`` counts of ``g = |d| / sqrt(d^2 + mu^2)`` over the elements with
    ``weight > 0`` and the float64 sum of the weights (None without ``weight``)."""
    device = inp.pred.device
    n = inp.pred.numel()
    counts = torch.zeros(inp.bins, dtype=torch.int64, device=device)
    grid = _hist_grid(n)
    wsum = None
    if inp.weight_mode:
        wsum = torch.zeros(grid[0], dtype=torch.float64, device=device)
    if n > 0:
        _ghm_r_hist_kernel[grid](
            inp.pred,
            inp.target,
            inp.pred if inp.weight is None else inp.weight,
            counts,
            counts if wsum is None else wsum,
            n,
            inp.mu * inp.mu,
            inp.bins,
            ROW_LEN=inp.row_len,
            W_MODE=inp.weight_mode,
            BLOCK=BLOCK,
            enable_fp_fusion=False,
            **_hist_meta(inp.bins),
        )
    return counts, (None if wsum is None else wsum.sum())


def _ghm_r_launch(
    inp: GHMRInputs, per_bin: Tensor, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    n = inp.pred.numel()
    device = inp.pred.device
    grid = (triton.cdiv(n, BLOCK),)
    loss = torch.zeros(grid[0], dtype=torch.float32, device=device)
    grad = torch.empty(n, dtype=torch.float32, device=device) if need_grad else None
    if n > 0:
        _ghm_r_loss_kernel[grid](
            inp.pred,
            inp.target,
            inp.pred if inp.weight is None else inp.weight,
            per_bin,
            loss,
            inp.pred if grad is None else grad,
            n,
            inp.mu,
            inp.mu * inp.mu,
            inp.bins,
            ROW_LEN=inp.row_len,
            W_MODE=inp.weight_mode,
            NEED_GRAD=need_grad,
            BLOCK=BLOCK,
            enable_fp_fusion=False,
        )
    return loss.sum(), grad


class _TritonGHMRFunction(torch.autograd.Function):
    """As :class:`_TritonGHMCFunction`; the gradient w.r.t. ``target`` is minus the one
    w.r.t. ``pred``."""

    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor, per_bin: Tensor, inp: GHMRInputs):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss, grad = _ghm_r_launch(inp, per_bin, need_grad)
        ctx.inp, ctx.per_bin, ctx.grad = inp, per_bin, grad
        ctx.shape, ctx.dtypes = pred.shape, (pred.dtype, target.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        refuse_double_backward("focalkit GHM-R losses on backend='triton'", "; use backend='torch'")
        grad = stored_grad(ctx, lambda: _ghm_r_launch(ctx.inp, ctx.per_bin, True)[1])
        grad = grad.view(ctx.shape)
        grad_target = None
        if ctx.needs_input_grad[1]:
            grad_target = (grad * grad_output).neg_().to(ctx.dtypes[1])
        grad_pred = None
        if ctx.needs_input_grad[0]:
            grad_pred = grad.mul_(grad_output).to(ctx.dtypes[0])
        return grad_pred, grad_target, None, None


def triton_ghm_r(pred: Tensor, target: Tensor, inp: GHMRInputs, per_bin: Tensor) -> Tensor:
    """``sum_i lambda_i w_i ASL1(d_i)`` (0-dim, float32) with ``w_i = per_bin[bin_i]``."""
    return _TritonGHMRFunction.apply(pred, target, per_bin.to(torch.float32).contiguous(), inp)


# --------------------------------------------------------------------------------------------
# the GHM losses on these kernels: histogram, the shared per-bin steps, weighted loss
# --------------------------------------------------------------------------------------------


@outside_compiled_graph
def ghm_c_triton(
    logits: Tensor,
    parsed: SigmoidTargets,
    keep: Tensor | None,
    bins: int,
    ignore_index: int | None,
    reduction: str,
    world: int,
    ema: Tensor | None,
    momentum: float,
    update: bool,
) -> Tensor:
    """GHM-C on the Triton kernels (float32: the reduced loss, or the elementwise one).
    Class-index targets stay labels (rows with ``ignore_index`` dropped in the kernel);
    integer dense targets bring their mask. The mean's ``1 / N_valid`` multiplies the
    per-bin weights, so the kernel's stored gradient is final and ``grad_output`` is 1 after
    a plain ``backward()`` (see :mod:`focalkit.kernels.triton_scale`)."""
    target = parsed.target
    if not parsed.is_index and parsed.valid is not None:
        keep = parsed.valid if keep is None else keep & parsed.valid
    inp = ghm_c_inputs(
        logits,
        target,
        keep,
        index_form=parsed.is_index,
        ignore_index=NO_LABEL if ignore_index is None else ignore_index,
        bins=bins,
        reduce_sum=reduction != "none",
    )
    with torch.no_grad():
        counts = ghm_c_histogram(inp)
        per_bin, n_valid = harmonize(counts, counts.sum(), world, ema, momentum, update)
        if reduction == "mean":  # N_valid >= 1 (clamped), float64
            per_bin = per_bin * (world / n_valid)
    return triton_ghm_c(logits, inp, per_bin)


@outside_compiled_graph
def ghm_r_triton(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mu: float,
    bins: int,
    world: int,
    ema: Tensor | None,
    momentum: float,
    update: bool,
) -> tuple[Tensor, Tensor]:
    """The summed, weighted ASL1 (float32) and ``N`` on the Triton kernels."""
    inp = ghm_r_inputs(pred, target, weight, mu=mu, bins=bins)
    with torch.no_grad():
        counts, weight_sum = ghm_r_histogram(inp)
        total = numel_total(pred) if weight_sum is None else weight_sum
        per_bin, total = harmonize(counts, total, world, ema, momentum, update)
    return triton_ghm_r(pred, target, inp, per_bin), total
