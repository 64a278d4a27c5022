"""Triton kernel of the sigmoid family (focal loss, QFL, VFL): the kernel, its host wrapper
and its autograd.Function.

One pass over the flattened logits computes, per element and in float32, the loss
``m(x, y) BCE(x, y)`` and its gradient (the formulas of
:func:`focalkit.functional.focal.sigmoid_terms`); the constexpr ``MODULATION`` picks the
modulating factor ``m``: focal loss's ``alpha_t q^gamma``, QFL's ``|y - p|^beta``, VFL's ``y``
(or 1) on positives and ``alpha p^gamma`` on negatives. The gradient is stored in **float32**
and backward only scales it by ``grad_output`` (then casts to the logits' dtype, like the
torch path).

Supported: dense float targets (hard or soft, in [0, 1]), integer dense targets with
``ignore_index`` (through their validity mask), class-index targets (column = offset % C,
row = offset // C; positive iff ``label[row] == column``; ``C`` = background; ignored rows give
0; no one-hot), with QFL and VFL their positives' targets ``scores`` (one per row, read per
element from the row), ``alpha`` None / scalar / per-class ``(C,)`` (read from device memory:
no sync), scalar float ``gamma >= 0``. ``reduction="none"`` writes the elementwise loss
(fp32); otherwise each program writes one partial sum, summed on the device (no host sync).
Everything else (``weight=``, ``gamma="flsd53"``, tensor gamma, targets that require grad,
float64) runs on torch: see :mod:`focalkit.kernels.dispatch`.

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
    scores_ptr,  # index form with HAS_SCORES: one target per row for its label's column
    valid_ptr,  # dense integer targets: uint8 mask of the logits' shape (HAS_VALID)
    alpha_ptr,  # ALPHA_MODE 1: one value; 2: (C,)
    loss_ptr,  # REDUCE: (num_programs,) partial sums; else (n,) elementwise
    grad_ptr,  # (n,) float32, or bfloat16 for bfloat16 logits (NEED_GRAD)
    inv_ptr,  # 0-dim float32: the reduction's 1 / N (or 1 / normalizer; 1 for sum / none)
    n,
    ignore_index,
    gamma,  # focal loss's gamma, QFL's beta, VFL's gamma
    NUM_CLASSES: tl.constexpr,  # C where INDEX or ALPHA_MODE 2 read it, else 1
    INDEX: tl.constexpr,
    HAS_SCORES: tl.constexpr,
    HAS_VALID: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    MODULATION: tl.constexpr,  # 0 focal, 1 QFL, 2 VFL, 3 VFL without iou weighting
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
        hot = (label == col) & (keep > 0)
        if HAS_SCORES:  # only a positive's score is read (others may hold anything)
            score = tl.load(scores_ptr + row, mask=mask & hot, other=0.0).to(tl.float32)
            y = tl.where(hot, score, 0.0)
        else:
            y = hot.to(tl.float32)
    else:
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_VALID:
            keep = tl.load(valid_ptr + offs, mask=mask, other=0).to(tl.float32)
        else:
            keep = tl.full([BLOCK], 1.0, tl.float32)
    if ALPHA_MODE == 1:
        a = tl.load(alpha_ptr).to(tl.float32)
    if ALPHA_MODE == 2:
        a = tl.load(alpha_ptr + col, mask=mask, other=0.0).to(tl.float32)

    # stable sigmoid: p = sigmoid(x), omp = 1 - p = sigmoid(-x), both exact in the tails
    e = tl.exp(-tl.abs(x))
    inv = 1.0 / (1.0 + e)
    p = tl.where(x >= 0, inv, e * inv)
    omp = tl.where(x >= 0, e * inv, inv)
    # BCE = (1 - y) max(x, 0) + y max(-x, 0) + log(1 + e)
    # (non-negative terms: no cancellation for soft y; see functional.focal.bce_with_logits)
    bce = tl.maximum(x, 0.0) * (1.0 - y) + tl.maximum(-x, 0.0) * y + log1p_small(e)
    grad = p * (1.0 - y) - omp * y  # d BCE / dx = p - y, exact where y is 0 or 1
    scale = keep
    # loss = m BCE, grad = m (dBCE/dx + k BCE): the modulating factor m of each loss
    # (functional.focal.sigmoid_terms) and k = d log m / dx, bounded
    if MODULATION == 0:  # focal: m = alpha_t q^g, q = 1 - p_t
        if GAMMA_ZERO:
            loss = bce
        else:
            q = p * (1.0 - y) + omp * y
            mod = tl.where(q > 0, tl.exp(gamma * tl.log(tl.maximum(q, _TINY))), 0.0)
            loss = mod * bce
            if NEED_GRAD:
                # r (1 - 2y) = p (1 - p) (1 - 2y) / q: finite for every gamma >= 0
                r = p * omp / tl.maximum(q, _TINY) * (1.0 - 2.0 * y)
                grad = mod * (grad + gamma * r * bce)
        if ALPHA_MODE != 0:
            scale = scale * (a * y + (1.0 - a) * (1.0 - y))
    elif MODULATION == 1:  # QFL: m = |y - p|^beta, k = beta p (1 - p) / (p - y)
        if GAMMA_ZERO:
            loss = bce
        else:
            d = grad
            ad = tl.abs(d)
            mod = tl.where(ad > 0, tl.exp(gamma * tl.log(tl.maximum(ad, _TINY))), 0.0)
            loss = mod * bce
            if NEED_GRAD:
                s = tl.where(ad > 0, p * omp / tl.where(ad > 0, d, 1.0), 0.0)
                grad = mod * (d + gamma * s * bce)
    else:  # VFL: m = y (or 1) where y > 0, alpha p^g where y = 0; k = g (1 - p) there
        positive = y > 0
        if MODULATION == 2:
            pos_mod = y
        else:
            pos_mod = tl.full([BLOCK], 1.0, tl.float32)
        if GAMMA_ZERO:
            neg_mod = tl.full([BLOCK], 1.0, tl.float32)
        else:
            neg_mod = tl.where(p > 0, tl.exp(gamma * tl.log(tl.maximum(p, _TINY))), 0.0)
        if ALPHA_MODE != 0:
            neg_mod = neg_mod * a
        mod = tl.where(positive, pos_mod, neg_mod)
        loss = mod * bce
        if NEED_GRAD:
            if GAMMA_ZERO:
                grad = mod * grad
            else:
                grad = mod * (grad + tl.where(positive, 0.0, gamma * omp) * bce)
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
    modulation: int = 0  # the kernel's MODULATION: 0 focal, 1 QFL, 2 VFL, 3 VFL unweighted


def _launch(
    logits: Tensor,
    target: Tensor,
    scores: Tensor | None,
    valid: Tensor | None,
    alpha: Tensor | None,
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
    sc = None if scores is None else scores.contiguous().view(-1)
    v = None if valid is None else valid.contiguous().view(-1).view(torch.uint8)
    alpha_mode = 0 if alpha is None else (1 if alpha.dim() == 0 else 2)
    alpha = None if alpha is None else alpha.to(torch.float32).contiguous()
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
            x if sc is None else sc,  # unused pointer placeholders keep one signature
            x if v is None else v,
            x if alpha is None else alpha,
            loss,
            x if grad is None else grad,
            inv,
            n,
            spec.ignore_index,
            float(spec.gamma),
            NUM_CLASSES=num_classes,
            INDEX=spec.index_form,
            HAS_SCORES=sc is not None,
            HAS_VALID=v is not None,
            ALPHA_MODE=alpha_mode,
            MODULATION=spec.modulation,
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
    def forward(ctx, logits, target, scores, valid, alpha, inv, spec: TritonSigmoidSpec):
        need_grad = ctx.needs_input_grad[0]
        loss, grad = _launch(logits, target, scores, valid, alpha, inv, spec, need_grad)
        ctx.spec = spec
        ctx.logits_dtype = logits.dtype
        ctx.grad = grad
        ctx.save_for_backward(logits, target, scores, valid, alpha, inv)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward("focalkit focal losses")
        grad = stored_grad(ctx, lambda: _launch(*ctx.saved_tensors, ctx.spec, True)[1])
        grad = apply_grad_output(grad, grad_output)
        return grad.to(ctx.logits_dtype), None, None, None, None, None, None


@outside_compiled_graph
def triton_sigmoid_focal(
    logits: Tensor,
    target: Tensor,
    scores: Tensor | None,
    valid: Tensor | None,
    alpha: Tensor | None,
    spec: TritonSigmoidSpec,
    inv: Tensor,
) -> Tensor:
    """A loss of the sigmoid family on the Triton kernel, with parsed targets (see
    ``_targets.py``): ``target`` is the dense targets (``valid`` their mask or None) or the
    int64 labels (``valid`` unused; ``scores`` the positives' targets, or None for 1).
    ``alpha`` is focal loss's weight of the positives or VFL's of the negatives. Returns the fp32 sum times ``inv`` (0-dim float32, the reduction's
    :func:`~focalkit._reduce.reduction_scale`; ``spec.reduce_sum``) or the elementwise loss
    (``inv`` is then 1)."""
    return _TritonSigmoidFocalFunction.apply(logits, target, scores, valid, alpha, inv, spec)
