r"""Triton IoU-family box losses: one kernel, its host wrapper and its autograd.Function.

One pass over the boxes computes, per box and in float32, the loss of
:func:`focalkit.functional._iou_geometry.torch_per_box` (everything before the reduction)
and, when ``pred`` requires grad, its analytic gradient w.r.t. the 4 predicted coordinates.
The gradient is stored in **float32**; backward only scales it by ``grad_output`` and casts
it to ``pred``'s dtype. The geometry (widths, intersection, union, IoU, enclosing box, centre
offsets) is computed once per box; the kernel is specialised by constexprs:

* ``KIND``, the base (:data:`KINDS`): IoU (linear, log), GIoU, DIoU, CIoU, EIoU, Focal-EIoU,
  SIoU, MPDIoU, Shape-IoU, Wise-IoU v1's ``R (1 - o)``;
* the modifiers of the overlap term ``o``: ``INNER`` (Inner-IoU's auxiliary boxes),
  ``FOCALER`` (Focaler-IoU's linear map of ``[d, u]``), ``POWER`` (Alpha-IoU's ``o^a`` and
  the penalties to the power ``a``); ``CLAMP`` (the loss clamped to ``[0, 2]``:
  mmdetection's SIoU and gated CIoU); ``WRITE_IOU`` (also store the plain IoU, from which
  Wise-IoU's focusing factor is formed in torch: a constant in backward, so multiplying the
  loss by it afterwards is exact); ``NEED_GRAD``.

The scalars a specialisation reads (eps, gamma, power, ratio, d, u, theta, SIoU's sign,
Shape-IoU's scale, CIoU's gate) are runtime arguments; MPDIoU's ``W^2 + H^2`` is read per box
through a pointer and a stride (0 for one image size).

Memory traffic per box: reads ``8 * s`` bytes (``s`` = 4 for float32 boxes, 2 for
float16/bfloat16: xyxy inputs are read in their own dtype and upcast in registers; plus 4
for a per-box image size), writes 4 bytes of loss, 4 of IoU with ``WRITE_IOU`` and, when a
gradient is needed, 16 bytes of gradient. Boxes are read through their row and column strides
(no copy for views such as ``boxes[:, :4]``); offsets are int64.

The gradient follows what autograd gives on the torch path, convention for convention:

* ``torch.minimum`` / ``torch.maximum``: the gradient goes to the smaller / larger input, and
  is split in half between both at a tie (identical coordinates);
* ``clamp(min=0)`` of an intersection width/height passes the gradient where the unclamped
  value is ``>= 0`` (at 0 too) and gives 0 below; ``clamp(0, 1)`` (Focaler) and the loss's
  ``clamp(0, 2)`` pass it on the closed interval; ``abs`` has gradient 0 at 0;
* ``x ** a`` (Alpha-IoU, SIoU's and Shape-IoU's shape costs) of ``x`` clamped at 0: the
  gradient ``a x^(a - 1)`` is 0 at ``x = 0`` for ``a > 1`` and 1 for ``a = 1``;
* ``iou_loss(mode="log")``: ``-log(max(o, eps))``, gradient 0 where ``o < eps``;
* constants in backward: CIoU's trade-off ``a = v / ((1 - IoU) + v + eps)`` (0 where
  ``IoU <= 0.5`` when gated), Focal-EIoU's ``max(IoU, 0)^gamma`` (``gamma = 0`` runs the
  EIoU kernel: the torch path skips the factor there too), Wise-IoU's enclosing diagonal.

Triton has no portable ``atan``: :func:`_atan` is Cephes' ``atanf`` (range reduction to
``|x| <= tan(pi/8)`` and a degree-9 odd polynomial; relative error about 2e-7 over the whole
float32 range, ``atan(+-inf) = +-pi/2``). Powers are ``exp(a log x)``.

Not supported here (they run on torch, see :func:`focalkit.functional.box.box_loss`):
``target_boxes`` that require grad (only ``pred`` gets an analytic gradient), float64, and
double backward (the gradient is computed in forward, so its derivative would silently be 0:
refused).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import refuse_double_backward, stored_grad
from ..functional._iou_geometry import BoxSpec
from .dispatch import outside_compiled_graph

__all__ = ["KINDS", "triton_atan", "triton_box_loss"]

BLOCK = 256  # boxes per program (2 per thread with 4 warps: the kernel is register-heavy)
KINDS = {
    "iou": 0,
    "iou_log": 1,
    "giou": 2,
    "diou": 3,
    "ciou": 4,
    "eiou": 5,
    "focal_eiou": 6,
    "siou": 7,
    "mpdiou": 8,
    "shape": 9,
    "wiou": 10,
}
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
def _min_share(a, b):
    """d min(a, b) / d a: 1 (a < b), 1/2 (a == b), 0 (d max(a, b) / d a is 1 minus it)."""
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _pow_pos(x, a):
    """``max(x, 0) ** a`` for ``a >= 1`` and its derivative ``a x^(a-1)`` (0 at ``x <= 0``,
    except ``a == 1``: 1 at 0, as torch's clamp-then-pow)."""
    a = a + tl.zeros_like(x)  # a runtime scalar or a literal, as a tensor
    pos = x > 0
    lx = tl.log(tl.where(pos, x, 1.0))
    value = tl.where(pos, tl.exp(a * lx), 0.0)
    slope = tl.where(pos, a * tl.exp((a - 1.0) * lx), tl.where((a == 1.0) & (x == 0), 1.0, 0.0))
    return value, slope


@triton.jit
def _shape_cost(omega, theta):
    """``(1 - exp(-omega))^theta`` and its derivative w.r.t. ``omega``."""
    e = tl.exp(-omega)
    value, slope = _pow_pos(1.0 - e, theta)
    return value, slope * e


@triton.jit
def _box_kernel(
    p_ptr,
    t_ptr,
    loss_ptr,  # (n,) float32
    grad_ptr,  # (n, 4) float32, contiguous (NEED_GRAD)
    iou_ptr,  # (n,) float32 (WRITE_IOU)
    diag_ptr,  # MPDIoU's W^2 + H^2 per box, float32, read at row * diag_s0 (KIND 8)
    n,
    p_s0,
    p_s1,
    t_s0,
    t_s1,
    diag_s0,
    eps,
    gamma,  # Focal-EIoU
    power,  # Alpha-IoU (POWER)
    ratio,  # Inner-IoU (INNER)
    f_lo,  # Focaler-IoU's d, u (FOCALER)
    f_hi,
    theta,  # SIoU
    sign,  # SIoU: -1 the paper's exp(-gamma rho), +1 mmdetection's exp(+gamma rho)
    scale,  # Shape-IoU
    gate,  # CIoU: 1 gives a = 0 where IoU <= 0.5
    KIND: tl.constexpr,  # KINDS
    INNER: tl.constexpr,
    FOCALER: tl.constexpr,
    POWER: tl.constexpr,
    CLAMP: tl.constexpr,
    WRITE_IOU: tl.constexpr,
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

    # ---- forward, in the order of _Geometry and torch_per_box -------------------------------
    pw = px2 - px1
    ph = py2 - py1
    tw = tx2 - tx1
    th = ty2 - ty1
    iw_raw = tl.minimum(px2, tx2) - tl.maximum(px1, tx1)
    ih_raw = tl.minimum(py2, ty2) - tl.maximum(py1, ty1)
    iw = tl.maximum(iw_raw, 0.0)
    ih = tl.maximum(ih_raw, 0.0)
    inter = iw * ih
    area_sum = pw * ph + tw * th
    union = area_sum - inter
    den_u = union + eps
    iou = inter / den_u
    if WRITE_IOU:
        tl.store(iou_ptr + row, iou, mask=mask)
    if KIND >= 2 and KIND != 8:  # the enclosing box
        cw = tl.maximum(px2, tx2) - tl.minimum(px1, tx1)
        ch = tl.maximum(py2, ty2) - tl.minimum(py1, ty1)
        cw2 = cw * cw
        ch2 = ch * ch
    if KIND >= 3 and KIND != 8:  # twice the offset of the centres, prediction - target
        dx = px1 + px2 - tx1 - tx2
        dy = py1 + py2 - ty1 - ty2
        rho2 = 0.25 * (dx * dx + dy * dy)

    # the overlap term o: IoU (or Inner-IoU) -> Focaler -> power
    x = iou
    if INNER:
        half = 0.5 * ratio
        pcx = 0.5 * (px1 + px2)
        pcy = 0.5 * (py1 + py2)
        tcx = 0.5 * (tx1 + tx2)
        tcy = 0.5 * (ty1 + ty2)
        phw = pw * half
        phh = ph * half
        thw = tw * half
        thh = th * half
        ax1 = pcx - phw
        ax2 = pcx + phw
        ay1 = pcy - phh
        ay2 = pcy + phh
        bx1 = tcx - thw
        bx2 = tcx + thw
        by1 = tcy - thh
        by2 = tcy + thh
        iwi_raw = tl.minimum(ax2, bx2) - tl.maximum(ax1, bx1)
        ihi_raw = tl.minimum(ay2, by2) - tl.maximum(ay1, by1)
        iwi = tl.maximum(iwi_raw, 0.0)
        ihi = tl.maximum(ihi_raw, 0.0)
        inter_i = iwi * ihi
        den_i = ratio * ratio * area_sum - inter_i + eps
        x = inter_i / den_i
    m = x
    if FOCALER:
        m_raw = (x - f_lo) / (f_hi - f_lo)
        m = tl.minimum(tl.maximum(m_raw, 0.0), 1.0)
    o = m
    if POWER:
        o, o_slope = _pow_pos(m, power)
    if KIND == 1:
        loss = -tl.log(tl.maximum(o, eps))
    else:
        loss = 1.0 - o
    if KIND == 10:  # Wise-IoU v1: R (1 - o), R = exp(rho^2 / c^2), c^2 constant in backward
        den_r = (cw2 + ch2) + eps
        r_w = tl.exp(rho2 / den_r)
        one_minus_o = loss
        loss = r_w * loss

    # the penalties, added one at a time (Alpha's power on each for GIoU, DIoU, CIoU)
    if KIND == 2:
        area_c = cw * ch
        den_c = area_c + eps
        pen_g = (area_c - union) / den_c
        term_g = pen_g
        slope_g = 1.0
        if POWER:
            term_g, slope_g = _pow_pos(pen_g, power)
        loss = loss + term_g
    if KIND == 3 or KIND == 4 or KIND == 5 or KIND == 6:
        den_d = cw2 + ch2 + eps
        pen_d = rho2 / den_d
    if KIND == 3 or KIND == 4:
        term_d = pen_d
        slope_d = 1.0
        if POWER:
            term_d, slope_d = _pow_pos(pen_d, power)
        loss = loss + term_d
    if KIND == 4:
        # a v with a detached, v = 4/pi^2 (atan(tw / (th + eps)) - atan(pw / (ph + eps)))^2
        den_ph = ph + eps
        r = pw / den_ph
        delta = _atan(tw / (th + eps)) - _atan(r)
        v = _FOUR_OVER_PI2 * delta * delta
        a = v / ((1.0 - iou) + v + eps)
        a = tl.where((gate != 0) & (iou <= 0.5), 0.0, a)
        term_v = a * v
        slope_v = 1.0
        if POWER:
            term_v, slope_v = _pow_pos(a * v, power)
        loss = loss + term_v
    if KIND == 5 or KIND == 6:
        dw = pw - tw
        dh = ph - th
        den_w = cw2 + eps
        den_h = ch2 + eps
        term_w = dw * dw / den_w
        term_h = dh * dh / den_h
        loss = loss + (pen_d + term_w + term_h)
    if KIND == 7 or KIND == 9:  # SIoU and Shape-IoU: the halved offsets, |w - w_g| / max
        hx = 0.5 * dx
        hy = 0.5 * dy
        dwp = pw - tw
        dhp = ph - th
        mw = tl.maximum(pw, tw) + eps
        mh = tl.maximum(ph, th) + eps
        om_w = tl.abs(dwp) / mw
        om_h = tl.abs(dhp) / mh
    if KIND == 7:
        den_l = hx * hx + hy * hy + eps
        lam = 2.0 * tl.abs(hx) * tl.abs(hy) / den_l
        rate = sign * (2.0 - lam)
        den_x = cw + eps
        den_y = ch + eps
        rx = hx / den_x
        ry = hy / den_y
        ex = tl.exp(rate * (rx * rx))
        ey = tl.exp(rate * (ry * ry))
        q_w, s_w = _shape_cost(om_w, theta)
        q_h, s_h = _shape_cost(om_h, theta)
        loss = loss + 0.5 * (((1.0 - ex) + (1.0 - ey)) + (q_w + q_h))
    if KIND == 8:
        diag = tl.load(diag_ptr + row * diag_s0, mask=mask, other=1.0).to(tl.float32)
        e1x = px1 - tx1
        e1y = py1 - ty1
        e2x = px2 - tx2
        e2y = py2 - ty2
        loss = loss + ((e1x * e1x + e1y * e1y) + (e2x * e2x + e2y * e2y)) / diag
    if KIND == 9:
        off = scale == 0.0
        lw = tl.log(tl.where(tw > 0, tw, 1.0))
        lh = tl.log(tl.where(th > 0, th, 1.0))
        ws = tl.where(tw > 0, tl.exp(scale * lw), 0.0)
        hs = tl.where(th > 0, tl.exp(scale * lh), 0.0)
        den_s = ws + hs
        ok = den_s > 0
        safe = tl.where(ok, den_s, 1.0)
        ww = tl.where(off | (~ok), 1.0, 2.0 * ws / safe)
        hh = tl.where(off | (~ok), 1.0, 2.0 * hs / safe)
        den_sd = cw2 + ch2 + eps
        dist = (hh * (hx * hx) + ww * (hy * hy)) / den_sd
        q_w, s_w = _shape_cost(hh * om_w, 4.0)
        q_h, s_h = _shape_cost(ww * om_h, 4.0)
        loss = loss + dist
        loss = loss + 0.5 * (q_w + q_h)
    g_loss = tl.zeros_like(loss) + 1.0
    if KIND == 6:
        focal = tl.where(iou > 0, tl.exp(gamma * tl.log(tl.where(iou > 0, iou, 1.0))), 0.0)
        loss = focal * loss
        g_loss = focal
    if CLAMP:
        g_loss = tl.where((loss >= 0.0) & (loss <= 2.0), g_loss, 0.0)
        loss = tl.minimum(tl.maximum(loss, 0.0), 2.0)
    tl.store(loss_ptr + row, loss, mask=mask)

    # ---- backward: adjoints (d loss / d quantity) down to the 4 predicted coordinates -------
    if NEED_GRAD:
        zero = tl.zeros_like(loss)
        g_iou = zero
        g_union = zero
        g_area = zero  # of area_sum = w h + w_g h_g
        g_cw = zero
        g_ch = zero
        g_cw2 = zero
        g_ch2 = zero
        g_dx = zero
        g_dy = zero
        g_pw = zero
        g_ph = zero
        g_x1 = zero  # direct adjoints of the coordinates (Inner-IoU, MPDIoU)
        g_y1 = zero
        g_x2 = zero
        g_y2 = zero
        # the overlap term
        if KIND == 1:
            g_o = tl.where(o >= eps, -g_loss / tl.where(o >= eps, o, 1.0), 0.0)
        else:
            g_o = -g_loss
        if KIND == 10:
            g_o = g_o * r_w
            g_rho2_w = g_loss * one_minus_o * r_w / den_r
            g_dx += g_rho2_w * 0.5 * dx
            g_dy += g_rho2_w * 0.5 * dy
        g_m = g_o
        if POWER:
            g_m = g_o * o_slope
        g_x = g_m
        if FOCALER:
            g_x = tl.where((m_raw >= 0.0) & (m_raw <= 1.0), g_m / (f_hi - f_lo), 0.0)
        if INNER:
            g_inter_i = g_x / den_i
            g_den_i = -g_x * x / den_i
            g_area += g_den_i * (ratio * ratio)
            g_inter_i -= g_den_i
            g_iwi = tl.where(iwi_raw >= 0, g_inter_i * ihi, 0.0)
            g_ihi = tl.where(ihi_raw >= 0, g_inter_i * iwi, 0.0)
            s_ax1 = _min_share(ax1, bx1)  # max(ax1, bx1) takes 1 - s_ax1
            s_ax2 = _min_share(ax2, bx2)
            s_ay1 = _min_share(ay1, by1)
            s_ay2 = _min_share(ay2, by2)
            g_ax1 = -g_iwi * (1.0 - s_ax1)
            g_ax2 = g_iwi * s_ax2
            g_ay1 = -g_ihi * (1.0 - s_ay1)
            g_ay2 = g_ihi * s_ay2
            # a1 = c - w half, a2 = c + w half, c = (p1 + p2) / 2, w = p2 - p1
            g_cx = g_ax1 + g_ax2
            g_hw = (g_ax2 - g_ax1) * half
            g_cy = g_ay1 + g_ay2
            g_hh = (g_ay2 - g_ay1) * half
            g_x1 += 0.5 * g_cx - g_hw
            g_x2 += 0.5 * g_cx + g_hw
            g_y1 += 0.5 * g_cy - g_hh
            g_y2 += 0.5 * g_cy + g_hh
        else:
            g_iou += g_x
        # the penalties
        if KIND == 2:
            g_pen = g_loss * slope_g
            g_ac = g_pen * (1.0 - pen_g) / den_c
            g_cw += g_ac * ch
            g_ch += g_ac * cw
            g_union += -g_pen / den_c
        if KIND == 3 or KIND == 4:
            g_pd = g_loss * slope_d
        if KIND == 5 or KIND == 6:
            g_pd = g_loss
            g_cw2 += -g_loss * term_w / den_w
            g_ch2 += -g_loss * term_h / den_h
            g_pw += g_loss * 2.0 * dw / den_w
            g_ph += g_loss * 2.0 * dh / den_h
        if KIND >= 3 and KIND <= 6:
            g_rho2 = g_pd / den_d
            g_dx += g_rho2 * 0.5 * dx
            g_dy += g_rho2 * 0.5 * dy
            g_c2 = -g_pd * pen_d / den_d
            g_cw2 += g_c2
            g_ch2 += g_c2
        if KIND == 4:
            g_v = g_loss * slope_v * a
            g_r = -(g_v * (2.0 * _FOUR_OVER_PI2) * delta) / (r * r + 1.0)
            g_pw += g_r / den_ph
            g_ph += -g_r * (r / den_ph)
        if KIND == 7 or KIND == 9:
            g_hx = zero
            g_hy = zero
            g_omw = g_loss * 0.5 * s_w
            g_omh = g_loss * 0.5 * s_h
        if KIND == 7:
            g_ex = -0.5 * g_loss
            g_rate = g_ex * ex * (rx * rx) + g_ex * ey * (ry * ry)
            g_rx = g_ex * ex * rate * 2.0 * rx
            g_ry = g_ex * ey * rate * 2.0 * ry
            g_hx += g_rx / den_x
            g_hy += g_ry / den_y
            g_cw += -g_rx * rx / den_x
            g_ch += -g_ry * ry / den_y
            g_lam = -sign * g_rate
            g_num = g_lam / den_l
            g_den = -g_lam * lam / den_l
            g_hx += g_num * 2.0 * tl.abs(hy) * _sign(hx) + g_den * 2.0 * hx
            g_hy += g_num * 2.0 * tl.abs(hx) * _sign(hy) + g_den * 2.0 * hy
        if KIND == 9:
            g_hx += g_loss * 2.0 * hh * hx / den_sd
            g_hy += g_loss * 2.0 * ww * hy / den_sd
            g_c2s = -g_loss * dist / den_sd
            g_cw2 += g_c2s
            g_ch2 += g_c2s
            g_omw = g_omw * hh
            g_omh = g_omh * ww
        if KIND == 7 or KIND == 9:
            # omega_w = |w - w_g| / (max(w, w_g) + eps); d max / d w = 1 - min's share
            g_pw += g_omw * _sign(dwp) / mw - g_omw * om_w / mw * (1.0 - _min_share(pw, tw))
            g_ph += g_omh * _sign(dhp) / mh - g_omh * om_h / mh * (1.0 - _min_share(ph, th))
            g_dx += 0.5 * g_hx
            g_dy += 0.5 * g_hy
        if KIND == 8:
            g_d = g_loss * 2.0 / diag
            g_x1 += g_d * e1x
            g_y1 += g_d * e1y
            g_x2 += g_d * e2x
            g_y2 += g_d * e2y
        if KIND >= 2 and KIND != 8:
            g_cw += 2.0 * cw * g_cw2
            g_ch += 2.0 * ch * g_ch2
        # the geometry
        g_inter = g_iou / den_u
        g_union += -g_iou * iou / den_u
        g_area += g_union
        g_inter -= g_union
        g_pw += g_area * ph
        g_ph += g_area * pw
        g_iw = tl.where(iw_raw >= 0, g_inter * ih, 0.0)  # clamp(min=0): passes at 0
        g_ih = tl.where(ih_raw >= 0, g_inter * iw, 0.0)
        s_x1 = _min_share(px1, tx1)  # of min(px1, tx1); max takes 1 - it
        s_y1 = _min_share(py1, ty1)
        s_x2 = _min_share(px2, tx2)
        s_y2 = _min_share(py2, ty2)
        # iw = min(px2, tx2) - max(px1, tx1);  cw = max(px2, tx2) - min(px1, tx1)
        gx1 = g_x1 + g_dx - g_pw - g_iw * (1.0 - s_x1) - g_cw * s_x1
        gy1 = g_y1 + g_dy - g_ph - g_ih * (1.0 - s_y1) - g_ch * s_y1
        gx2 = g_x2 + g_dx + g_pw + g_iw * s_x2 + g_cw * (1.0 - s_x2)
        gy2 = g_y2 + g_dy + g_ph + g_ih * s_y2 + g_ch * (1.0 - s_y2)
        g = grad_ptr + row * 4
        tl.store(g, gx1, mask=mask)
        tl.store(g + 1, gy1, mask=mask)
        tl.store(g + 2, gx2, mask=mask)
        tl.store(g + 3, gy2, mask=mask)


_UNUSED = (0.0, 1.0)  # placeholders for the scalars a specialisation does not read


def _kind(spec: BoxSpec) -> str:
    return "iou_log" if spec.log else spec.base


def _launch(
    pred: Tensor,
    target: Tensor,
    spec: BoxSpec,
    diag2: Tensor | None,
    need_grad: bool,
    need_iou: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-box loss (fp32, ``pred.shape[:-1]``), gradient (fp32, ``pred.shape``) and IoU (fp32,
    ``pred.shape[:-1]``, with ``need_iou``)."""
    p = pred.reshape(-1, 4)  # a view where the strides allow it
    t = target.reshape(-1, 4)
    n = p.shape[0]
    loss = torch.empty(n, dtype=torch.float32, device=pred.device)
    grad = torch.empty((n, 4), dtype=torch.float32, device=pred.device) if need_grad else None
    iou = torch.empty(n, dtype=torch.float32, device=pred.device) if need_iou else None
    if n > 0:
        if diag2 is None:
            diag, diag_s0 = loss, 0  # unused placeholder
        else:
            diag = diag2.to(torch.float32).expand(pred.shape[:-1]).reshape(-1)
            diag_s0 = diag.stride(0)
        d, u = spec.focaler if spec.focaler is not None else _UNUSED
        _box_kernel[(triton.cdiv(n, BLOCK),)](
            p,
            t,
            loss,
            loss if grad is None else grad,  # unused placeholders keep one signature
            loss if iou is None else iou,
            diag,
            n,
            p.stride(0),
            p.stride(1),
            t.stride(0),
            t.stride(1),
            diag_s0,
            float(spec.eps),
            float(spec.gamma),
            float(spec.power),
            1.0 if spec.inner_ratio is None else float(spec.inner_ratio),
            float(d),
            float(u),
            float(spec.theta),
            -1.0 if spec.paper_sign else 1.0,
            float(spec.scale),
            int(spec.aspect_gate),
            KIND=KINDS[_kind(spec)],
            INNER=spec.inner_ratio is not None,
            FOCALER=spec.focaler is not None,
            POWER=spec.power != 1,
            CLAMP=spec.clamp,
            WRITE_IOU=need_iou,
            NEED_GRAD=need_grad,
            BLOCK=BLOCK,
            enable_fp_fusion=False,  # round like the torch path (one op at a time, no FMA)
        )
    shape = pred.shape[:-1]
    return (
        loss.view(shape),
        None if grad is None else grad.view(pred.shape),
        None if iou is None else iou.view(shape),
    )


class _TritonBoxFunction(torch.autograd.Function):
    """Forward runs the kernel and keeps its fp32 gradient; backward scales it in place by
    ``grad_output[..., None]``. A second backward through a retained graph relaunches the
    kernel. ``target`` and ``diag2`` are constants; the second output (the plain IoU, or an
    empty tensor) is not differentiable."""

    @staticmethod
    def forward(ctx, pred, target, diag2, spec: BoxSpec, need_iou: bool):
        need_grad = ctx.needs_input_grad[0]
        loss, grad, iou = _launch(pred, target, spec, diag2, need_grad, need_iou)
        ctx.spec = spec
        ctx.pred_dtype = pred.dtype
        ctx.grad = grad  # not save_for_backward: consumed in place by the first backward
        ctx.save_for_backward(pred, target, diag2)
        iou = loss.new_empty(0) if iou is None else iou
        ctx.mark_non_differentiable(iou)
        return loss, iou

    @staticmethod
    def backward(ctx, grad_output, _grad_iou):
        refuse_double_backward("focalkit box losses on backend='triton'", "; use backend='torch'")
        pred, target, diag2 = ctx.saved_tensors
        grad = stored_grad(ctx, lambda: _launch(pred, target, ctx.spec, diag2, True, False)[1])
        return grad.mul_(grad_output.unsqueeze(-1)).to(ctx.pred_dtype), None, None, None, None


@outside_compiled_graph
def triton_box_loss(
    pred: Tensor,
    target: Tensor,
    spec: BoxSpec,
    *,
    diag2: Tensor | None = None,
    need_iou: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Per-box loss of ``spec`` (float32, shape ``pred.shape[:-1]``) of xyxy boxes ``pred`` and
    ``target`` (``(..., 4)``, float32/float16/bfloat16, any strides), differentiable w.r.t.
    ``pred``, and with ``need_iou`` the plain IoU (float32, not differentiable). ``diag2``:
    MPDIoU's ``W^2 + H^2``, broadcastable to ``pred.shape[:-1]``."""
    for name, other in (("target_boxes", target), ("image_size", diag2)):
        if other is not None and other.device != pred.device:  # a kernel reads one device
            raise ValueError(
                f"{name}: expected a tensor on {pred.device} (the device of pred_boxes), "
                f"got one on {other.device}"
            )
    loss, iou = _TritonBoxFunction.apply(pred, target, diag2, spec, need_iou)
    return loss, (iou.view(pred.shape[:-1]) if need_iou else None)


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
