r"""Triton IoU-family box losses: one kernel, its host wrapper and its autograd.Function.

One pass over the boxes computes, per box and in float32, the loss of
:mod:`focalkit.functional.box` (the ``_Geometry`` part: everything before the reduction) and,
when ``pred`` requires grad, its analytic gradient w.r.t. the 4 predicted coordinates. The
gradient is stored in **float32**; backward only scales it by ``grad_output`` and casts it to
``pred``'s dtype. The kernel is specialised by the constexpr ``KIND``: IoU (linear, log), GIoU,
DIoU, CIoU, EIoU, Focal-EIoU.

Memory traffic per box: reads ``8 * s`` bytes (``s`` = 4 for float32 boxes, 2 for
float16/bfloat16: xyxy inputs are read in their own dtype and upcast in registers), writes 4
bytes of loss and, when a gradient is needed, 16 bytes of gradient. Boxes are read through
their row and column strides (no copy for views such as ``boxes[:, :4]``); offsets are int64.

The gradient follows what autograd gives on the torch path, convention for convention:

* ``torch.minimum`` / ``torch.maximum``: the gradient goes to the smaller / larger input, and
  is split in half between both at a tie (identical coordinates);
* ``clamp(min=0)`` of the intersection width/height passes the gradient where the unclamped
  value is ``>= 0`` (at 0 too) and gives 0 below;
* ``iou_loss(mode="log")``: ``-log(max(IoU, eps))``, gradient 0 where ``IoU < eps``;
* CIoU: the trade-off ``a = v / ((1 - IoU) + v + eps)`` is a constant (detached);
* Focal-EIoU: the factor ``max(IoU, 0)^gamma`` is a constant (detached); ``gamma = 0`` runs the
  EIoU kernel (the torch path skips the factor there too).

Triton has no portable ``atan``: :func:`_atan` is Cephes' ``atanf`` (range reduction to
``|x| <= tan(pi/8)`` and a degree-9 odd polynomial; relative error about 2e-7 over the whole
float32 range, ``atan(+-inf) = +-pi/2``).

Not supported here (they run on torch, see :func:`focalkit.functional.box._box_loss`):
``target_boxes`` that require grad (only ``pred`` gets an analytic gradient), float64, and
double backward (the gradient is computed in forward, so its derivative would silently be 0:
refused).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import refuse_double_backward, stored_grad
from .dispatch import outside_compiled_graph

__all__ = ["KINDS", "TritonBoxSpec", "triton_atan", "triton_box_loss"]

BLOCK = 256  # boxes per program (2 per thread with 4 warps: the kernel is register-heavy)
KINDS = {"iou": 0, "iou_log": 1, "giou": 2, "diou": 3, "ciou": 4, "eiou": 5, "focal_eiou": 6}
_FOUR_OVER_PI2 = tl.constexpr(4.0 / math.pi**2)  # a global a @triton.jit body may read


@triton.jit
def _atan(x):
    """float32 arctangent (Cephes atanf): odd; reduce |x| to [0, tan(pi/8)] by
    atan(x) = pi/2 + atan(-1/x) (|x| > tan(3pi/8)) or pi/4 + atan((x-1)/(x+1))."""
    ax = tl.abs(x)
    big = ax > 2.414213562373095
    mid = ax > 0.4142135623730950
    m = tl.where(big, 1.0, ax)  # keeps the branches not taken finite (no inf / inf)
    t = tl.where(big, -1.0 / tl.where(big, ax, 1.0), tl.where(mid, (m - 1.0) / (m + 1.0), ax))
    base = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
    z = t * t
    poly = ((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
    r = base + ((poly - 3.33329491539e-1) * z * t + t)
    return tl.where(x < 0, -r, r)


@triton.jit
def _atan_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, _atan(x), mask=mask)


@triton.jit
def _box_kernel(
    p_ptr,
    t_ptr,
    loss_ptr,  # (n,) float32
    grad_ptr,  # (n, 4) float32, contiguous (NEED_GRAD)
    n,
    p_s0,
    p_s1,
    t_s0,
    t_s1,
    eps,
    gamma,
    KIND: tl.constexpr,  # KINDS: 0 iou, 1 iou_log, 2 giou, 3 diou, 4 ciou, 5 eiou, 6 focal_eiou
    NEED_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = row < n
    p = p_ptr + row * p_s0
    t = t_ptr + row * t_s0
    px1 = tl.load(p, mask=mask, other=0.0).to(tl.float32)
    py1 = tl.load(p + p_s1, mask=mask, other=0.0).to(tl.float32)
    px2 = tl.load(p + 2 * p_s1, mask=mask, other=0.0).to(tl.float32)
    py2 = tl.load(p + 3 * p_s1, mask=mask, other=0.0).to(tl.float32)
    tx1 = tl.load(t, mask=mask, other=0.0).to(tl.float32)
    ty1 = tl.load(t + t_s1, mask=mask, other=0.0).to(tl.float32)
    tx2 = tl.load(t + 2 * t_s1, mask=mask, other=0.0).to(tl.float32)
    ty2 = tl.load(t + 3 * t_s1, mask=mask, other=0.0).to(tl.float32)

    # ---- forward, in the order of _Geometry -------------------------------------------------
    pw = px2 - px1
    ph = py2 - py1
    tw = tx2 - tx1
    th = ty2 - ty1
    iw_raw = tl.minimum(px2, tx2) - tl.maximum(px1, tx1)
    ih_raw = tl.minimum(py2, ty2) - tl.maximum(py1, ty1)
    iw = tl.maximum(iw_raw, 0.0)
    ih = tl.maximum(ih_raw, 0.0)
    inter = iw * ih
    union = pw * ph + tw * th - inter
    den_u = union + eps
    iou = inter / den_u
    zero = tl.zeros_like(iou)
    # adjoints (d loss / d quantity); the ones a KIND does not use stay 0 and fold away
    g_iou = zero - 1.0
    g_union = zero
    g_cw = zero
    g_ch = zero
    g_dx = zero
    g_dy = zero
    g_pw = zero
    g_ph = zero
    if KIND == 1:
        loss = -tl.log(tl.maximum(iou, eps))
        g_iou = tl.where(iou >= eps, -1.0 / tl.where(iou >= eps, iou, 1.0), 0.0)
    else:
        loss = 1.0 - iou
    if KIND >= 2:
        cw = tl.maximum(px2, tx2) - tl.minimum(px1, tx1)
        ch = tl.maximum(py2, ty2) - tl.minimum(py1, ty1)
    if KIND == 2:
        area_c = cw * ch
        den_c = area_c + eps
        pen = (area_c - union) / den_c
        loss = loss + pen
        g_area = (1.0 - pen) / den_c
        g_cw = g_area * ch
        g_ch = g_area * cw
        g_union = -1.0 / den_c
    if KIND >= 3:
        dx = px1 + px2 - tx1 - tx2
        dy = py1 + py2 - ty1 - ty2
        rho2 = 0.25 * (dx * dx + dy * dy)
        cw2 = cw * cw
        ch2 = ch * ch
        den_d = cw2 + ch2 + eps
        pen = rho2 / den_d
        g_rho2 = 1.0 / den_d
        g_dx = g_rho2 * 0.5 * dx
        g_dy = g_rho2 * 0.5 * dy
        g_c2 = -pen / den_d
        g_cw2 = g_c2
        g_ch2 = g_c2
    if KIND == 3:
        loss = loss + pen
    if KIND == 4:
        # a v with a detached, v = 4/pi^2 (atan(tw / (th + eps)) - atan(pw / (ph + eps)))^2
        den_ph = ph + eps
        r = pw / den_ph
        delta = _atan(tw / (th + eps)) - _atan(r)
        v = _FOUR_OVER_PI2 * delta * delta
        a = v / ((1.0 - iou) + v + eps)
        loss = loss + pen + a * v
        g_r = -(a * (2.0 * _FOUR_OVER_PI2) * delta) / (r * r + 1.0)
        g_pw = g_r / den_ph
        g_ph = -g_r * (r / den_ph)
    if KIND >= 5:
        dw = pw - tw
        dh = ph - th
        den_w = cw2 + eps
        den_h = ch2 + eps
        term_w = dw * dw / den_w
        term_h = dh * dh / den_h
        loss = loss + (pen + term_w + term_h)
        g_cw2 = g_cw2 - term_w / den_w
        g_ch2 = g_ch2 - term_h / den_h
        g_pw = 2.0 * dw / den_w
        g_ph = 2.0 * dh / den_h
    if KIND >= 3:
        g_cw = 2.0 * cw * g_cw2
        g_ch = 2.0 * ch * g_ch2
    if KIND == 6:
        focal = tl.where(iou > 0, tl.exp(gamma * tl.log(tl.where(iou > 0, iou, 1.0))), 0.0)
        loss = focal * loss
    tl.store(loss_ptr + row, loss, mask=mask)

    # ---- backward: the adjoints down to the 4 predicted coordinates -------------------------
    if NEED_GRAD:
        g_inter = g_iou / den_u
        g_union = g_union - g_iou * iou / den_u
        g_pw = g_pw + g_union * ph
        g_ph = g_ph + g_union * pw
        g_inter = g_inter - g_union
        g_iw = tl.where(iw_raw >= 0, g_inter * ih, 0.0)  # clamp(min=0): passes at 0
        g_ih = tl.where(ih_raw >= 0, g_inter * iw, 0.0)
        # d min(a, b) / d a = 1 (a < b), 1/2 (a == b), 0; d max / d a = 1 - that of min
        s_x1 = tl.where(px1 < tx1, 1.0, tl.where(px1 == tx1, 0.5, 0.0))  # min(px1, tx1)
        s_y1 = tl.where(py1 < ty1, 1.0, tl.where(py1 == ty1, 0.5, 0.0))
        s_x2 = tl.where(px2 < tx2, 1.0, tl.where(px2 == tx2, 0.5, 0.0))  # min(px2, tx2)
        s_y2 = tl.where(py2 < ty2, 1.0, tl.where(py2 == ty2, 0.5, 0.0))
        # iw = min(px2, tx2) - max(px1, tx1);  cw = max(px2, tx2) - min(px1, tx1)
        gx1 = g_dx - g_pw - g_iw * (1.0 - s_x1) - g_cw * s_x1
        gy1 = g_dy - g_ph - g_ih * (1.0 - s_y1) - g_ch * s_y1
        gx2 = g_dx + g_pw + g_iw * s_x2 + g_cw * (1.0 - s_x2)
        gy2 = g_dy + g_ph + g_ih * s_y2 + g_ch * (1.0 - s_y2)
        if KIND == 6:
            gx1 = gx1 * focal
            gy1 = gy1 * focal
            gx2 = gx2 * focal
            gy2 = gy2 * focal
        g = grad_ptr + row * 4
        tl.store(g, gx1, mask=mask)
        tl.store(g + 1, gy1, mask=mask)
        tl.store(g + 2, gx2, mask=mask)
        tl.store(g + 3, gy2, mask=mask)


class TritonBoxSpec(NamedTuple):
    kind: str  # a key of KINDS
    eps: float
    gamma: float  # focal_eiou only


def _launch(pred: Tensor, target: Tensor, spec: TritonBoxSpec, need_grad: bool):
    """Per-box loss (fp32, ``pred.shape[:-1]``) and gradient (fp32, ``pred.shape``)."""
    p = pred.reshape(-1, 4)  # a view where the strides allow it
    t = target.reshape(-1, 4)
    n = p.shape[0]
    loss = torch.empty(n, dtype=torch.float32, device=pred.device)
    grad = torch.empty((n, 4), dtype=torch.float32, device=pred.device) if need_grad else None
    if n > 0:
        _box_kernel[(triton.cdiv(n, BLOCK),)](
            p,
            t,
            loss,
            loss if grad is None else grad,  # unused placeholder keeps one signature
            n,
            p.stride(0),
            p.stride(1),
            t.stride(0),
            t.stride(1),
            float(spec.eps),
            float(spec.gamma),
            KIND=KINDS[spec.kind],
            NEED_GRAD=need_grad,
            BLOCK=BLOCK,
            enable_fp_fusion=False,  # round like the torch path (one op at a time, no FMA)
        )
    loss = loss.view(pred.shape[:-1])
    return loss, (None if grad is None else grad.view(pred.shape))


class _TritonBoxFunction(torch.autograd.Function):
    """Forward runs the kernel and keeps its fp32 gradient; backward scales it in place by
    ``grad_output[..., None]``. A second backward through a retained graph relaunches the
    kernel. ``target`` is a constant."""

    @staticmethod
    def forward(ctx, pred, target, spec: TritonBoxSpec):
        need_grad = ctx.needs_input_grad[0]
        loss, grad = _launch(pred, target, spec, need_grad)
        ctx.spec = spec
        ctx.pred_dtype = pred.dtype
        ctx.grad = grad  # not save_for_backward: consumed in place by the first backward
        ctx.save_for_backward(pred, target)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward("focalkit box losses on backend='triton'", "; use backend='torch'")
        grad = stored_grad(ctx, lambda: _launch(*ctx.saved_tensors, ctx.spec, True)[1])
        return grad.mul_(grad_output.unsqueeze(-1)).to(ctx.pred_dtype), None, None


@outside_compiled_graph
def triton_box_loss(pred: Tensor, target: Tensor, spec: TritonBoxSpec) -> Tensor:
    """Per-box loss (float32, shape ``pred.shape[:-1]``) of xyxy boxes ``pred`` and ``target``
    (``(..., 4)``, float32/float16/bfloat16, any strides), differentiable w.r.t. ``pred``."""
    if target.device != pred.device:  # a kernel cannot read another device's memory
        raise ValueError(
            f"target_boxes: expected a tensor on {pred.device} (the device of pred_boxes), "
            f"got one on {target.device}"
        )
    return _TritonBoxFunction.apply(pred, target, spec)


def triton_atan(x: Tensor) -> Tensor:
    """The kernel's float32 :func:`_atan` applied elementwise (float32 result); for tests."""
    flat = x.reshape(-1).contiguous()
    out = torch.empty(flat.shape, dtype=torch.float32, device=x.device)
    if flat.numel() > 0:
        _atan_kernel[(triton.cdiv(flat.numel(), 1024),)](
            flat,
            out,
            flat.numel(),
            BLOCK=1024,
            enable_fp_fusion=False,  # as _box_kernel: the same _atan, rounding for rounding
        )
    return out.view(x.shape)
