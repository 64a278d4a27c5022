"""Triton Distribution Focal Loss: the kernel, its host wrapper and its autograd.Function.

Each program takes ``BLOCK_R`` rows of the ``(M, n + 1)`` logits (any strides) as one tile of
``BLOCK_R x BLOCK_C`` columns, ``BLOCK_C`` the bin count rounded up to a power of two (at most
:data:`MAX_BLOCK_C`; wider rows loop over column blocks). Pass 1 is an online softmax per row
(running max ``m`` and ``s = sum exp(x - m)``, float32) that also reads the logits of the two
target bins ``l = min(floor(y), n - 1)`` and ``l + 1``; the loss is
``w_l (m - x_l + log s) + w_r (m - x_r + log s)`` (``w_l = l + 1 - y``, ``w_r = y - l``, the
formulas of :func:`focalkit.functional.gfl.dfl_plain`). Pass 2 writes the gradient row
``(exp(x - m) / s - w_l [j = l] - w_r [j = l + 1]) * weight * inv``, ``inv`` the reduction's
``1 / M`` (or ``1 / normalizer``), in :func:`~focalkit._autograd.stored_grad_dtype`; backward
only applies ``grad_output`` (on the device, skipped where it is 1:
:mod:`focalkit.kernels.triton_scale`). Per row the kernel writes the loss to an ``(M,)``
float32 buffer.

Supported: float32/float16/bfloat16 logits, float targets of any dtype, an optional per-row
weight (the elementwise weight broadcast to the targets' shape). Targets that require grad
and float64 run on torch: see :mod:`focalkit.kernels.dispatch`. The bins are clamped to
``[0, n - 1]`` in the kernel as in the torch formula, so an unchecked target outside ``[0, n]``
(or NaN) never reads outside its row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import refuse_double_backward, stored_grad, stored_grad_dtype
from .dispatch import outside_compiled_graph
from .triton_scale import apply_grad_output

__all__ = ["MAX_BLOCK_C", "TILE", "triton_dfl"]

MAX_BLOCK_C = 1024  # columns per block of the online softmax
TILE = 1024  # elements per program's tile: BLOCK_R = max(2, min(64, TILE // BLOCK_C)) rows


@triton.jit
def _dfl_kernel(
    x_ptr,  # (M, n + 1) logits, any strides
    y_ptr,  # (M,) distances in bin units
    w_ptr,  # (M,) float32 weights (HAS_WEIGHT)
    loss_ptr,  # (M,) float32 per-row loss
    inv_ptr,  # 0-dim float32: the reduction's 1 / M (or 1 / normalizer; 1 for sum / none)
    grad_ptr,  # (M, n + 1) contiguous, float32 (bfloat16 for bfloat16 logits) (NEED_GRAD)
    rows,
    num_bins,
    stride_row,
    stride_col,
    HAS_WEIGHT: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    rmask = r < rows
    x_rows = x_ptr + r * stride_row
    y = tl.load(y_ptr + r, mask=rmask, other=0.0).to(tl.float32)
    top = num_bins - 2  # n - 1, the highest left bin
    # l = min(floor(y), n - 1), clamped again after the conversion (NaN converts to 0)
    left = tl.minimum(tl.maximum(y, 0.0), top * 1.0).to(tl.int32)
    left = tl.minimum(tl.maximum(left, 0), top).to(tl.int64)
    w_l = (left + 1).to(tl.float32) - y
    w_r = y - left.to(tl.float32)

    # pass 1: online softmax per row (running max m, s = sum exp(x - m))
    m = tl.full([BLOCK_R], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK_R], tl.float32)
    for start in range(0, num_bins, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C).to(tl.int64)
        cmask = cols < num_bins
        ptrs = x_rows[:, None] + cols[None, :] * stride_col
        xb = tl.load(ptrs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        xb = tl.where(cmask[None, :], xb, -float("inf"))  # rows past M stay finite (zeros)
        m_new = tl.maximum(m, tl.max(xb, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(xb - m_new[:, None]), axis=1)
        m = m_new
    x_l = tl.load(x_rows + left * stride_col, mask=rmask, other=0.0).to(tl.float32)
    x_r = tl.load(x_rows + (left + 1) * stride_col, mask=rmask, other=0.0).to(tl.float32)
    log_s = tl.log(s)
    loss = w_l * (m - x_l + log_s) + w_r * (m - x_r + log_s)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + r, mask=rmask, other=0.0).to(tl.float32)
        loss = loss * w
    tl.store(loss_ptr + r, loss, mask=rmask)

    if NEED_GRAD:
        # pass 2: grad_j = (p_j - w_l [j = l] - w_r [j = l + 1]) * weight / N
        scale = tl.zeros([BLOCK_R], tl.float32) + tl.load(inv_ptr)
        if HAS_WEIGHT:
            scale = scale * w
        inv_s = 1.0 / s
        g_rows = grad_ptr + r * num_bins
        for start in range(0, num_bins, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C).to(tl.int64)
            cmask = cols < num_bins
            tmask = rmask[:, None] & cmask[None, :]
            ptrs = x_rows[:, None] + cols[None, :] * stride_col
            xb = tl.load(ptrs, mask=tmask, other=0.0).to(tl.float32)
            p = tl.exp(xb - m[:, None]) * inv_s[:, None]
            hot_l = (cols[None, :] == left[:, None]).to(tl.float32)
            hot_r = (cols[None, :] == left[:, None] + 1).to(tl.float32)
            g = (p - w_l[:, None] * hot_l - w_r[:, None] * hot_r) * scale[:, None]
            tl.store(g_rows[:, None] + cols[None, :], g, mask=tmask)


def _blocks(num_bins: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C) for rows of ``num_bins`` columns."""
    block_c = min(MAX_BLOCK_C, triton.next_power_of_2(num_bins))
    return max(2, min(64, TILE // block_c)), block_c


def _launch(
    pred: Tensor, y: Tensor, weight: Tensor | None, inv: Tensor, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-row loss (M,) fp32 and the gradient (M, n + 1) times ``inv``, in
    :func:`~focalkit._autograd.stored_grad_dtype`."""
    device = pred.device
    rows, num_bins = pred.shape
    w = None if weight is None else weight.to(torch.float32).contiguous()
    loss = torch.zeros(rows, dtype=torch.float32, device=device)
    grad = None
    if need_grad:  # every entry is written: no memset pass
        grad = torch.empty(rows, num_bins, dtype=stored_grad_dtype(pred.dtype), device=device)
    if rows > 0:
        block_r, block_c = _blocks(num_bins)
        _dfl_kernel[(triton.cdiv(rows, block_r),)](
            pred,
            y.contiguous(),
            loss if w is None else w,  # unused pointer placeholders keep one signature
            loss,
            inv,
            loss if grad is None else grad,
            rows,
            num_bins,
            pred.stride(0),
            pred.stride(1),
            HAS_WEIGHT=w is not None,
            NEED_GRAD=need_grad,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
            enable_fp_fusion=True,  # FMA contraction: compared to torch within TOL, not bit-exactly
        )
    return loss, grad


class _TritonDflFunction(torch.autograd.Function):
    """Forward runs the kernel and keeps its gradient (times ``inv``); backward applies
    ``grad_output`` in place: per row, or 0-dim on the device, skipped where it is 1. A second
    backward through a retained graph relaunches the kernel. Targets, weight and ``inv`` are
    constants."""

    @staticmethod
    def forward(ctx, pred, y, weight, inv, reduce_sum: bool):
        loss, grad = _launch(pred, y, weight, inv, ctx.needs_input_grad[0])
        if reduce_sum:
            loss = loss.sum() * inv
        ctx.pred_dtype = pred.dtype
        ctx.grad = grad
        ctx.save_for_backward(pred, y, weight, inv)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward("focalkit generalized focal losses")
        grad = stored_grad(ctx, lambda: _launch(*ctx.saved_tensors, True)[1])
        grad = apply_grad_output(grad, grad_output)  # 0-dim, or one per row
        return grad.to(ctx.pred_dtype), None, None, None, None


@outside_compiled_graph
def triton_dfl(
    pred: Tensor, y: Tensor, weight: Tensor | None, reduce_sum: bool, inv: Tensor
) -> Tensor:
    """DFL on the Triton kernel for ``(M, n + 1)`` logits, ``(M,)`` targets and an optional
    ``(M,)`` weight: the fp32 sum times ``inv`` (0-dim float32, the reduction's
    :func:`~focalkit._reduce.reduction_scale`; ``reduce_sum``) or the per-row loss (``inv``
    is then 1)."""
    return _TritonDflFunction.apply(pred, y, weight, inv, reduce_sum)
