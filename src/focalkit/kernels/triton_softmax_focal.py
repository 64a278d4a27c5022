"""Triton softmax focal loss and Poly-1 cross-entropy: the kernel, its host wrapper and its
autograd.Function.

The fused cross-entropy technique (as in Liger-Kernel's ``cross_entropy``): one program per
row of the channel-last ``(M, C)`` logits. Pass 1 runs an online softmax over ``C`` in blocks
(running max ``m``, ``d = sum exp(x - m)`` and ``d_other``, the same sum without the target
column, all float32) and reads ``x[y]``; then ``q = 1 - p_t = d_other / d`` is exact even where
``p_t -> 1``. Pass 2 writes the gradient row ``u G (p_j - [j = y])``; nothing else of size
``(M, C)`` is allocated. Per row the kernel writes the loss to an ``(M,)`` float32 buffer.

Same formulas as ``softmax_focal_terms`` in :mod:`focalkit.functional.focal`:
``ell = -(1 - p_t)^g log p_t + eps (1 - p_t)^(g+1)``,
``G = (1 - p_t)^g (1 - g p_t log(p_t) / (1 - p_t) + eps (g + 1) p_t)`` with the
ratio -> -1 as ``p_t -> 1`` (``eps``: Poly-1's epsilon, 0 for focal loss); ``u = [y != ignore] w[y] alpha_t``. The gradient is stored
already multiplied by the reduction's ``1 / sum w[y]`` (or ``1 / normalizer``), in
:func:`~focalkit._autograd.stored_grad_dtype`, and backward only applies ``grad_output``: on
the device, skipped where it is 1 (:mod:`focalkit.kernels.triton_scale`).

Supported: class-index targets (any integer dtype; int32/int64 read directly) with
``ignore_index``, per-class ``weight`` ``(C,)``, ``alpha`` None / scalar (global scale) /
``(C,)`` (``alpha[y]``), scalar float ``gamma >= 0``. Probability targets, label smoothing,
``gamma="flsd53"``, tensor gamma and float64 run on torch: see :mod:`focalkit.kernels.dispatch`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import refuse_double_backward, stored_grad, stored_grad_dtype
from .dispatch import outside_compiled_graph
from .triton_scale import apply_grad_output

__all__ = ["TritonSoftmaxSpec", "triton_softmax_focal"]

MAX_BLOCK = 4096  # columns per block of the online softmax (read at launch time)
_TINY = tl.constexpr(1e-30)  # a global a @triton.jit body may read


@triton.jit
def _log1p_neg(q):
    # accurate log(1 - q) for 0 <= q <= 1/2 without libdevice (Goldberg's trick)
    u = 1.0 - q
    d = u - 1.0
    return tl.where(d == 0.0, -q, tl.log(u) * (-q / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _softmax_focal_kernel(
    x_ptr,  # (M, C) logits, any strides
    y_ptr,  # (M,) int32/int64 class indices
    w_ptr,  # (C,) float32 class weight (HAS_WEIGHT)
    alpha_ptr,  # ALPHA_MODE 1: one value (global scale); 2: (C,)
    loss_ptr,  # (M,) float32 per-row loss
    inv_ptr,  # 0-dim float32: the reduction's 1 / sum w[y] (or 1 / normalizer; 1 for sum)
    grad_ptr,  # (M, C) float32 (bfloat16 for bfloat16 logits), contiguous (NEED_GRAD)
    num_classes,
    stride_row,
    stride_col,
    ignore_index,
    gamma,
    epsilon,  # Poly-1's: adds epsilon (1 - p_t)^(gamma + 1) (0 for softmax focal loss)
    HAS_WEIGHT: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    GAMMA_ZERO: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_row
    label = tl.load(y_ptr + row).to(tl.int64)
    valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
    safe = tl.where(valid, label, 0)

    # pass 1: online softmax (running max m, d = sum exp(x - m), d_other = same without y)
    m = -float("inf")
    d = 0.0
    d_other = 0.0
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < num_classes
        xb = tl.load(x_row + cols * stride_col, mask=mask, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(xb, axis=0))
        e = tl.exp(xb - m_new)
        rescale = tl.exp(m - m_new)
        d = d * rescale + tl.sum(e, axis=0)
        d_other = d_other * rescale + tl.sum(tl.where(cols == safe, 0.0, e), axis=0)
        m = m_new
    x_y = tl.load(x_row + safe * stride_col).to(tl.float32)

    # p_t, q = 1 - p_t (exact near p_t = 1), log p_t (log1p(-q) where q is small)
    q = d_other / d
    p_t = tl.exp(x_y - m) / d
    logp = tl.where(q < 0.5, _log1p_neg(tl.minimum(q, 0.5)), (x_y - m) - tl.log(d))
    if GAMMA_ZERO:
        ell = -logp + epsilon * q
        G = 1.0 + epsilon * p_t
    else:
        mod = tl.where(q > 0, tl.exp(gamma * tl.log(tl.maximum(q, _TINY))), 0.0)
        ell = mod * (epsilon * q - logp)
        ratio = tl.where(q > 0, logp / tl.maximum(q, _TINY), -1.0)
        G = mod * (1.0 - gamma * p_t * ratio + epsilon * (gamma + 1.0) * p_t)

    wy = valid.to(tl.float32)
    if HAS_WEIGHT:
        wy = wy * tl.load(w_ptr + safe).to(tl.float32)
    u = wy
    if ALPHA_MODE == 1:
        u = u * tl.load(alpha_ptr).to(tl.float32)
    if ALPHA_MODE == 2:
        u = u * tl.load(alpha_ptr + safe).to(tl.float32)
    tl.store(loss_ptr + row, ell * u)

    if NEED_GRAD:
        # pass 2: grad_j = u G (p_j - [j = y]), times the reduction's 1 / N
        uG = u * G * tl.load(inv_ptr)
        inv_d = 1.0 / d
        g_row = grad_ptr + row * num_classes
        for start in range(0, num_classes, BLOCK):
            cols = start + tl.arange(0, BLOCK).to(tl.int64)
            mask = cols < num_classes
            xb = tl.load(x_row + cols * stride_col, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(xb - m) * inv_d
            g = uG * (p - (cols == safe).to(tl.float32))
            tl.store(g_row + cols, g, mask=mask)


class TritonSoftmaxSpec(NamedTuple):
    gamma: float
    reduce_sum: bool  # True: the summed loss (0-dim); False: the per-row loss (M,)
    ignore_index: int
    epsilon: float = 0.0  # Poly-1 cross-entropy's (with gamma 0)


def _launch(
    logits: Tensor,
    labels: Tensor,
    class_weight: Tensor | None,
    alpha: Tensor | None,
    inv: Tensor,
    spec: TritonSoftmaxSpec,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-row loss (M,) fp32 and the gradient (M, C) times ``inv``, in
    :func:`~focalkit._autograd.stored_grad_dtype`."""
    device = logits.device
    rows, num_classes = logits.shape
    y = labels if labels.dtype in (torch.int32, torch.int64) else labels.long()
    y = y.contiguous()
    w = None if class_weight is None else class_weight.to(torch.float32).contiguous()
    alpha_mode = 0 if alpha is None else (1 if alpha.dim() == 0 else 2)
    a = None if alpha is None else alpha.to(torch.float32).contiguous()
    loss = torch.zeros(rows, dtype=torch.float32, device=device)
    grad = None
    if need_grad:  # every entry is written (ignored rows get zeros): no memset pass
        grad = torch.empty(rows, num_classes, dtype=stored_grad_dtype(logits.dtype), device=device)
    if rows > 0 and num_classes > 0:
        block = min(MAX_BLOCK, triton.next_power_of_2(num_classes))
        _softmax_focal_kernel[(rows,)](
            logits,
            y,
            loss if w is None else w,  # unused pointer placeholders keep one signature
            loss if a is None else a,
            loss,
            inv,
            loss if grad is None else grad,
            num_classes,
            logits.stride(0),
            logits.stride(1),
            spec.ignore_index,
            float(spec.gamma),
            float(spec.epsilon),
            HAS_WEIGHT=w is not None,
            ALPHA_MODE=alpha_mode,
            GAMMA_ZERO=spec.gamma == 0,
            NEED_GRAD=need_grad,
            BLOCK=block,
            enable_fp_fusion=True,  # FMA contraction: compared to torch within TOL, not bit-exactly
        )
    return loss, grad


class _TritonSoftmaxFocalFunction(torch.autograd.Function):
    """Forward runs the kernel and keeps its gradient (times ``inv``); backward applies
    ``grad_output`` in place: per row, or 0-dim on the device, skipped where it is 1. A second
    backward through a retained graph relaunches the kernel."""

    @staticmethod
    def forward(ctx, logits, labels, class_weight, alpha, inv, spec: TritonSoftmaxSpec):
        need_grad = ctx.needs_input_grad[0]
        loss, grad = _launch(logits, labels, class_weight, alpha, inv, spec, need_grad)
        if spec.reduce_sum:
            loss = loss.sum() * inv
        ctx.spec = spec
        ctx.logits_dtype = logits.dtype
        ctx.grad = grad
        ctx.save_for_backward(logits, labels, class_weight, alpha, inv)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward("focalkit focal losses")
        grad = stored_grad(ctx, lambda: _launch(*ctx.saved_tensors, ctx.spec, True)[1])
        grad = apply_grad_output(grad, grad_output)  # 0-dim, or one per row
        return grad.to(ctx.logits_dtype), None, None, None, None, None


@outside_compiled_graph
def triton_softmax_focal(
    logits: Tensor,
    labels: Tensor,
    class_weight: Tensor | None,
    alpha: Tensor | None,
    spec: TritonSoftmaxSpec,
    inv: Tensor,
) -> Tensor:
    """Softmax focal loss on the Triton kernel for channel-last ``(M, C)`` logits and ``(M,)``
    class indices: the fp32 sum times ``inv`` (0-dim float32, the reduction's
    :func:`~focalkit._reduce.reduction_scale`; ``spec.reduce_sum``) or the per-row loss
    (``inv`` is then 1)."""
    return _TritonSoftmaxFocalFunction.apply(logits, labels, class_weight, alpha, inv, spec)
