"""Triton sigmoid focal loss: the kernel, its host wrapper and its autograd.Function.

One pass over the flattened logits computes, per element and in float32, the loss and its
gradient (same formulas as ``_soft_terms`` / ``_hard_terms`` in
:mod:`focalkit.functional.focal`); the gradient is stored in **float32** and backward only
scales it by ``grad_output`` (then casts to the logits' dtype, like the torch path).

Supported: dense float targets (hard or soft, in [0, 1]), integer dense targets with
``ignore_index`` (through their validity mask), class-index targets (column = offset % C,
row = offset // C; positive iff ``label[row] == column``; ``C`` = background; ignored rows give
0; no one-hot), ``alpha`` None / scalar / per-class ``(C,)`` (read from device memory: no
sync), scalar float ``gamma >= 0``. ``reduction="none"`` writes the elementwise loss (fp32);
otherwise each program writes one partial sum, summed on the device (no host sync).
Everything else (``weight=``, ``gamma="flsd53"``, tensor gamma, float64) runs on torch: see
:mod:`focalkit.kernels.dispatch`.

``C`` is the constexpr ``NUM_CLASSES``, so the compiler divides the int64 offsets by a constant
(multiply-high and shifts) instead of calling the emulated 64-bit ``div`` / ``rem``. So the
class-index and per-class-alpha forms compile once per distinct ``C`` (one in a training run;
compiled kernels are cached); the dense forms without per-class alpha never divide and are
launched with ``NUM_CLASSES=1``: one compile whatever ``C``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import refuse_double_backward, stored_grad, stored_grad_dtype
from ._triton_math import log1p_small
from .dispatch import outside_compiled_graph
from .triton_scale import apply_grad_output

__all__ = ["TritonSigmoidSpec", "triton_sigmoid_focal"]

BLOCK = 1024
_TINY = tl.constexpr(1e-30)  # a global a @triton.jit body may read


@triton.jit
def _sigmoid_focal_kernel(
    x_ptr,
    y_ptr,  # dense: targets (any dtype); index: int64 labels, one per row
    valid_ptr,  # dense integer targets: uint8 mask of the logits' shape (HAS_VALID)
    alpha_ptr,  # ALPHA_MODE 1: one value; 2: (C,)
    loss_ptr,  # REDUCE: (num_programs,) partial sums; else (n,) elementwise
    grad_ptr,  # (n,) float32, or bfloat16 for bfloat16 logits (NEED_GRAD)
    inv_ptr,  # 0-dim float32: the reduction's 1 / N (or 1 / normalizer; 1 for sum / none)
    n,
    ignore_index,
    gamma,
    NUM_CLASSES: tl.constexpr,  # C where INDEX or ALPHA_MODE 2 read it, else 1
    INDEX: tl.constexpr,
    HAS_VALID: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    GAMMA_ZERO: tl.constexpr,
    REDUCE: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    col = offs % NUM_CLASSES  # by a constant: multiply-high and shifts, no 64-bit division
    if INDEX:
        row = offs // NUM_CLASSES
        label = tl.load(y_ptr + row, mask=mask, other=ignore_index)
        keep = (label != ignore_index).to(tl.float32)
        y = (label == col).to(tl.float32) * keep
    else:
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_VALID:
            keep = tl.load(valid_ptr + offs, mask=mask, other=0).to(tl.float32)
        else:
            keep = tl.full([BLOCK], 1.0, tl.float32)

    # stable sigmoid: p = sigmoid(x), omp = 1 - p = sigmoid(-x), both exact in the tails
    e = tl.exp(-tl.abs(x))
    inv = 1.0 / (1.0 + e)
    p = tl.where(x >= 0, inv, e * inv)
    omp = tl.where(x >= 0, e * inv, inv)
    # q = 1 - p_t = p (1 - y) + (1 - p) y;  BCE = (1 - y) max(x, 0) + y max(-x, 0) + log(1 + e)
    # (non-negative terms: no cancellation for soft y; see functional.focal.bce_with_logits)
    q = p * (1.0 - y) + omp * y
    bce = tl.maximum(x, 0.0) * (1.0 - y) + tl.maximum(-x, 0.0) * y + log1p_small(e)
    grad = p * (1.0 - y) - omp * y  # p - y, exact where y is 0 or 1
    if GAMMA_ZERO:
        loss = bce
    else:
        mod = tl.where(q > 0, tl.exp(gamma * tl.log(tl.maximum(q, _TINY))), 0.0)
        loss = mod * bce
        if NEED_GRAD:
            # r (1 - 2y) = p (1 - p) (1 - 2y) / q: finite for every gamma >= 0
            r = p * omp / tl.maximum(q, _TINY) * (1.0 - 2.0 * y)
            grad = mod * (grad + gamma * r * bce)
    if ALPHA_MODE == 1:
        a = tl.load(alpha_ptr).to(tl.float32)
    if ALPHA_MODE == 2:
        a = tl.load(alpha_ptr + col, mask=mask, other=0.0).to(tl.float32)
    scale = keep
    if ALPHA_MODE != 0:
        scale = scale * (a * y + (1.0 - a) * (1.0 - y))
    loss = tl.where(mask, loss * scale, 0.0)
    if REDUCE:
        tl.store(loss_ptr + pid, tl.sum(loss, axis=0))
    else:
        tl.store(loss_ptr + offs, loss, mask=mask)
    if NEED_GRAD:
        inv = tl.load(inv_ptr)
        tl.store(grad_ptr + offs, grad * (scale * inv), mask=mask)


class TritonSigmoidSpec(NamedTuple):
    gamma: float
    reduce_sum: bool  # True: the summed loss (0-dim); False: the elementwise loss
    index_form: bool
    ignore_index: int


def _launch(
    logits: Tensor,
    target: Tensor,
    valid: Tensor | None,
    alpha_pos: Tensor | None,
    inv: Tensor,
    spec: TritonSigmoidSpec,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Loss (fp32: the 0-dim sum times ``inv``, or the logits' shape) and gradient times
    ``inv`` (logits' shape, in :func:`~focalkit._autograd.stored_grad_dtype`)."""
    device = logits.device
    x = logits.contiguous().view(-1)
    n = x.numel()
    y = target.contiguous().view(-1)
    v = None if valid is None else valid.contiguous().view(-1).view(torch.uint8)
    alpha_mode = 0 if alpha_pos is None else (1 if alpha_pos.dim() == 0 else 2)
    alpha = None if alpha_pos is None else alpha_pos.to(torch.float32).contiguous()
    # the class count only where the kernel divides by it: one compile per C there, else one
    divides = spec.index_form or alpha_mode == 2
    num_classes = logits.shape[-1] if divides and logits.dim() else 1
    grid = (triton.cdiv(n, BLOCK),)
    loss = torch.empty(grid[0] if spec.reduce_sum else n, dtype=torch.float32, device=device)
    grad_dtype = stored_grad_dtype(logits.dtype)
    grad = torch.empty(n, dtype=grad_dtype, device=device) if need_grad else None
    if n > 0:
        _sigmoid_focal_kernel[grid](
            x,
            y,
            x if v is None else v,  # unused pointer placeholders keep one signature
            x if alpha is None else alpha,
            loss,
            x if grad is None else grad,
            inv,
            n,
            spec.ignore_index,
            float(spec.gamma),
            NUM_CLASSES=num_classes,
            INDEX=spec.index_form,
            HAS_VALID=v is not None,
            ALPHA_MODE=alpha_mode,
            GAMMA_ZERO=spec.gamma == 0,
            REDUCE=spec.reduce_sum,
            NEED_GRAD=need_grad,
            BLOCK=BLOCK,
            enable_fp_fusion=True,  # FMA contraction: compared to torch within TOL, not bit-exactly
        )
    loss = loss.sum() * inv if spec.reduce_sum else loss.view(logits.shape)
    return loss, (None if grad is None else grad.view(logits.shape))


class _TritonSigmoidFocalFunction(torch.autograd.Function):
    """Forward runs the kernel and keeps its gradient, already multiplied by the reduction's
    ``inv``; backward scales it in place by ``grad_output`` (elementwise, or 0-dim on the
    device, skipped there when it is 1: :func:`~focalkit.kernels.triton_scale.apply_grad_output`).
    A second backward through a retained graph relaunches the kernel. Targets, alpha and
    ``inv`` are constants."""

    @staticmethod
    def forward(ctx, logits, target, valid, alpha_pos, inv, spec: TritonSigmoidSpec):
        need_grad = ctx.needs_input_grad[0]
        loss, grad = _launch(logits, target, valid, alpha_pos, inv, spec, need_grad)
        ctx.spec = spec
        ctx.logits_dtype = logits.dtype
        ctx.grad = grad
        ctx.save_for_backward(logits, target, valid, alpha_pos, inv)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward("focalkit focal losses")
        grad = stored_grad(ctx, lambda: _launch(*ctx.saved_tensors, ctx.spec, True)[1])
        grad = apply_grad_output(grad, grad_output)
        return grad.to(ctx.logits_dtype), None, None, None, None, None


@outside_compiled_graph
def triton_sigmoid_focal(
    logits: Tensor,
    target: Tensor,
    valid: Tensor | None,
    alpha_pos: Tensor | None,
    spec: TritonSigmoidSpec,
    inv: Tensor,
) -> Tensor:
    """Sigmoid focal loss on the Triton kernel, with parsed targets (see ``_targets.py``):
    ``target`` is the dense targets (``valid`` their mask or None) or the int64 labels
    (``valid`` unused). Returns the fp32 sum times ``inv`` (0-dim float32, the reduction's
    :func:`~focalkit._reduce.reduction_scale`; ``spec.reduce_sum``) or the elementwise loss
    (``inv`` is then 1)."""
    return _TritonSigmoidFocalFunction.apply(logits, target, valid, alpha_pos, inv, spec)
