"""Independent references for the IoU-family tests (SIoU, Wise-IoU, Alpha-IoU, MPDIoU,
Inner-IoU, Focaler-IoU, Shape-IoU, the modifiers on IoU..EIoU), written from SPEC.md. Never
imports focalkit.

* :func:`iou_family_reference`: one box pair at a time with the ``math`` module, in Python
  floats (float64). The factors focalkit treats as constants in backward (CIoU's / Alpha-CIoU's
  trade-off, Focal-EIoU's ``IoU^gamma``, Wise-IoU's enclosing diagonal and focusing factor)
  can be frozen at given values, so central differences (:func:`iou_family_grad`) give the
  gradient autograd is expected to produce.
* Transliterations of public code (torch, float64, the arithmetic and eps placement of the
  cited file kept): mmdetection's ``siou_loss`` and ``ciou_loss``
  (``mmdet/models/losses/iou_loss.py``, open-mmlab/mmdetection, 3.x), YOLOv6's SIoU
  (``yolov6/utils/figure_iou.py``), Wise-IoU's ``IouLoss`` (Instinct323/wiou, ``iou.py``),
  Alpha-IoU's ``bbox_alpha_iou`` (Jacobi93/Alpha-IoU, ``utils/general.py``), Inner-IoU's
  ``inner_ciou`` (malagoutou/Inner-IoU), Shape-IoU's ``shape_iou`` (malagoutou/Shape-IoU) and
  the widely copied ``bbox_mpdiou``. They show where focalkit agrees with the public code and
  where that code returns NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

EPS = 1e-7
FOUR_OVER_PI2 = 4 / math.pi**2

# SPEC's box pairs (pred, target): A same size, B different shapes, C disjoint
PAIR_A = ([0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 5.0])
PAIR_B = ([0.0, 0.0, 6.0, 4.0], [2.0, 1.0, 5.0, 7.0])
PAIR_C = ([0.0, 0.0, 2.0, 2.0], [3.0, 1.0, 6.0, 4.0])
PAIRS = {"A": PAIR_A, "B": PAIR_B, "C": PAIR_C}

# SPEC's degenerate cases
DEGENERATE = {
    "identical": ([1.0, 1.0, 4.0, 3.0], [1.0, 1.0, 4.0, 3.0]),
    "disjoint": ([0.0, 0.0, 1.0, 1.0], [10.0, 10.0, 12.0, 13.0]),
    "zero_area_pred": ([1.0, 1.0, 1.0, 3.0], [0.0, 0.0, 2.0, 2.0]),
    "both_zero_equal": ([2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]),
    "both_zero_apart": ([0.0, 0.0, 0.0, 2.0], [1.0, 0.0, 1.0, 2.0]),
}


class Options(NamedTuple):
    """Everything that selects a loss of the family (defaults: the plain base loss)."""

    base: str = "iou"  # iou giou diou ciou eiou focal_eiou siou mpdiou shape wiou
    eps: float = EPS
    log: bool = False  # -log(max(o, eps)) instead of 1 - o
    power: float = 1.0
    inner_ratio: float | None = None
    focaler: tuple[float, float] | None = None
    aspect_gate: bool = False  # CIoU: mmdetection's gated trade-off and clamp
    theta: float = 4.0  # SIoU
    paper_sign: bool = True  # SIoU
    clamp: bool = False  # SIoU
    image_size: tuple[float, float] = (1.0, 1.0)  # MPDIoU (H, W)
    scale: float = 0.0  # Shape-IoU
    gamma: float = 0.5  # Focal-EIoU


def parts(p, t, eps=EPS):
    """Geometry of two xyxy boxes (sequences of 4 floats)."""
    px1, py1, px2, py2 = p
    tx1, ty1, tx2, ty2 = t
    pw, ph, tw, th = px2 - px1, py2 - py1, tx2 - tx1, ty2 - ty1
    iw = max(min(px2, tx2) - max(px1, tx1), 0.0)
    ih = max(min(py2, ty2) - max(py1, ty1), 0.0)
    inter = iw * ih
    union = pw * ph + tw * th - inter
    cw = max(px2, tx2) - min(px1, tx1)
    ch = max(py2, ty2) - min(py1, ty1)
    dx = (tx1 + tx2 - px1 - px2) / 2  # target centre - prediction centre
    dy = (ty1 + ty2 - py1 - py2) / 2
    return {
        "pw": pw,
        "ph": ph,
        "tw": tw,
        "th": th,
        "inter": inter,
        "union": union,
        "iou": inter / (union + eps),
        "cw": cw,
        "ch": ch,
        "dx": dx,
        "dy": dy,
        "rho2": dx * dx + dy * dy,
        "c2": cw * cw + ch * ch,
    }


def inner_iou(p, t, ratio, eps=EPS):
    """IoU of the auxiliary boxes: the same centres, sides scaled by ``ratio``."""

    def aux(b):
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        hw, hh = ratio * (b[2] - b[0]) / 2, ratio * (b[3] - b[1]) / 2
        return cx - hw, cy - hh, cx + hw, cy + hh

    a, b = aux(p), aux(t)
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    areas = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1])
    return inter / (ratio * ratio * areas - inter + eps)


def overlap(p, t, o: Options):
    """The overlap term: IoU, or Inner-IoU, then Focaler's mapping, then Alpha's power."""
    q = parts(p, t, o.eps)
    value = q["iou"] if o.inner_ratio is None else inner_iou(p, t, o.inner_ratio, o.eps)
    if o.focaler is not None:
        d, u = o.focaler
        value = min(max((value - d) / (u - d), 0.0), 1.0)
    return value**o.power


def ciou_v(q, eps=EPS):
    delta = math.atan(q["tw"] / (q["th"] + eps)) - math.atan(q["pw"] / (q["ph"] + eps))
    return FOUR_OVER_PI2 * delta * delta


def ciou_trade_off(p, t, o: Options):
    """CIoU's ``a = v / ((1 - IoU) + v)`` (plain IoU; 0 where IoU <= 0.5 when gated)."""
    q = parts(p, t, o.eps)
    v = ciou_v(q, o.eps)
    a = v / ((1 - q["iou"]) + v + o.eps)
    return 0.0 if o.aspect_gate and not q["iou"] > 0.5 else a


def _exp_cost(omega, theta):
    return (1 - math.exp(-omega)) ** theta


def penalty(p, t, o: Options, frozen=None):
    """The base loss's terms beyond ``1 - overlap`` (Alpha's powers applied)."""
    q = parts(p, t, o.eps)
    eps, a = o.eps, o.power
    base = o.base
    if base in ("iou", "wiou"):
        return 0.0
    if base == "giou":
        area_c = q["cw"] * q["ch"]
        return max((area_c - q["union"]) / (area_c + eps), 0.0) ** a
    if base in ("diou", "ciou"):
        pen = (q["rho2"] / (q["c2"] + eps)) ** a
        if base == "ciou":
            trade = ciou_trade_off(p, t, o) if frozen is None else frozen["a"]
            pen += (trade * ciou_v(q, eps)) ** a
        return pen
    if base in ("eiou", "focal_eiou"):
        cw2, ch2 = q["cw"] ** 2, q["ch"] ** 2
        return (
            q["rho2"] / (cw2 + ch2 + eps)
            + (q["pw"] - q["tw"]) ** 2 / (cw2 + eps)
            + (q["ph"] - q["th"]) ** 2 / (ch2 + eps)
        )
    if base == "siou":
        dx, dy = q["dx"], q["dy"]
        lam = 2 * abs(dx) * abs(dy) / (dx * dx + dy * dy + eps)
        gamma = 2 - lam
        sign = -1.0 if o.paper_sign else 1.0
        rho_x = (dx / (q["cw"] + eps)) ** 2
        rho_y = (dy / (q["ch"] + eps)) ** 2
        dist = (1 - math.exp(sign * gamma * rho_x)) + (1 - math.exp(sign * gamma * rho_y))
        om_w = abs(q["pw"] - q["tw"]) / (max(q["pw"], q["tw"]) + eps)
        om_h = abs(q["ph"] - q["th"]) / (max(q["ph"], q["th"]) + eps)
        shape = _exp_cost(om_w, o.theta) + _exp_cost(om_h, o.theta)
        return (dist + shape) / 2
    if base == "mpdiou":
        h, w = o.image_size
        d1 = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
        d2 = (p[2] - t[2]) ** 2 + (p[3] - t[3]) ** 2
        return (d1 + d2) / (w * w + h * h)
    if base == "shape":
        if o.scale == 0:
            ww = hh = 1.0
        else:
            ws = q["tw"] ** o.scale if q["tw"] > 0 else 0.0
            hs = q["th"] ** o.scale if q["th"] > 0 else 0.0
            ww, hh = (2 * ws / (ws + hs), 2 * hs / (ws + hs)) if ws + hs > 0 else (1.0, 1.0)
        dist = (hh * q["dx"] ** 2 + ww * q["dy"] ** 2) / (q["c2"] + eps)
        om_w = hh * abs(q["pw"] - q["tw"]) / (max(q["pw"], q["tw"]) + eps)
        om_h = ww * abs(q["ph"] - q["th"]) / (max(q["ph"], q["th"]) + eps)
        return dist + 0.5 * (_exp_cost(om_w, 4) + _exp_cost(om_h, 4))
    raise ValueError(base)


def frozen_factors(p, t, o: Options):
    """The detached factors at ``p``."""
    q = parts(p, t, o.eps)
    return {
        "a": ciou_trade_off(p, t, o),
        "focal": max(q["iou"], 0.0) ** o.gamma,
        "c2": q["c2"],
    }


PLAIN = Options()
WISE = Options(base="wiou")


def iou_family_reference(p, t, o: Options = PLAIN, frozen=None):
    """The per-box loss of ``o`` (before any Wise-IoU focusing factor)."""
    q = parts(p, t, o.eps)
    first = -math.log(max(overlap(p, t, o), o.eps)) if o.log else 1 - overlap(p, t, o)
    loss = first + penalty(p, t, o, frozen)
    if o.base == "wiou":  # v1: R (1 - IoU), R = exp(rho^2 / c^2*)
        c2 = q["c2"] if frozen is None else frozen["c2"]
        loss = math.exp(q["rho2"] / (c2 + o.eps)) * (1 - overlap(p, t, o))
    if o.base == "focal_eiou":
        loss *= frozen_factors(p, t, o)["focal"] if frozen is None else frozen["focal"]
    if o.clamp or o.aspect_gate:
        loss = min(max(loss, 0.0), 2.0)
    return loss


def iou_family_grad(p, t, o: Options = PLAIN, h=1e-6):
    """d loss / d pred by central differences, the detached factors frozen at ``p``."""
    frozen = frozen_factors(p, t, o)
    grad = []
    for k in range(4):
        hi, lo = list(p), list(p)
        hi[k] += h
        lo[k] -= h
        f_hi = iou_family_reference(hi, t, o, frozen)
        f_lo = iou_family_reference(lo, t, o, frozen)
        grad.append((f_hi - f_lo) / (2 * h))
    return grad


def wiou_factor(l_iou, mean, version, alpha=1.9, delta=3.0, gamma=0.5, eps=EPS):
    """Wise-IoU's focusing factor of ``L_IoU`` (a constant in backward): 1 (v1),
    ``beta^gamma`` (v2), ``beta / (delta alpha^(beta - delta))`` (v3)."""
    beta = l_iou / max(mean, eps)
    if version == 1:
        return 1.0
    if version == 2:
        return beta**gamma
    return beta / (delta * alpha ** (beta - delta))


def wiou_reference(p, t, version, mean, o: Options = WISE, **factor_kw):
    """Wise-IoU: the factor of the plain ``L_IoU`` times the base loss (``R (1 - IoU)`` for
    base ``"wiou"``, i.e. ``wiou_loss(base="iou")``)."""
    l_iou = 1 - parts(p, t, o.eps)["iou"]
    return wiou_factor(l_iou, mean, version, eps=o.eps, **factor_kw) * iou_family_reference(p, t, o)


def wiou_grad(p, t, version, mean, o: Options = WISE, **factor_kw):
    l_iou = 1 - parts(p, t, o.eps)["iou"]
    factor = wiou_factor(l_iou, mean, version, eps=o.eps, **factor_kw)
    return [factor * g for g in iou_family_grad(p, t, o)]


def wiou_momentum(n, t):
    return 1 - 0.05 ** (1 / (n * t))


# --------------------------------------------------------------------------------------------
# transliterations of public code (torch, float64, (n, 4) xyxy boxes)
# --------------------------------------------------------------------------------------------


def _corners(b):
    return b[:, 0], b[:, 1], b[:, 2], b[:, 3]


def mmdet_siou_loss(pred, target, eps=1e-7, neg_gamma=False):
    """mmdetection ``siou_loss`` (mmdet/models/losses/iou_loss.py, 3.x), per box.
    ``neg_gamma=False`` is its default: exp(+gamma rho), the result clamped."""
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap_ = wh[:, 0] * wh[:, 1]
    ap = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    ag = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = ap + ag - overlap_ + eps
    ious = overlap_ / union
    enclose_wh = (
        torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])
    ).clamp(min=eps)
    cw, ch = enclose_wh[:, 0], enclose_wh[:, 1]
    b1_x1, b1_y1, b1_x2, b1_y2 = _corners(pred)
    b2_x1, b2_y1, b2_x2, b2_y2 = _corners(target)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    s_cw = (b2_x1 + b2_x2 - b1_x1 - b1_x2) * 0.5 + eps
    s_ch = (b2_y1 + b2_y2 - b1_y1 - b1_y2) * 0.5 + eps
    sigma = torch.pow(s_cw**2 + s_ch**2, 0.5)
    sin_alpha_1 = torch.abs(s_cw) / sigma
    sin_alpha_2 = torch.abs(s_ch) / sigma
    threshold = pow(2, 0.5) / 2
    sin_alpha = torch.where(sin_alpha_1 > threshold, sin_alpha_2, sin_alpha_1)
    angle_cost = torch.cos(torch.asin(sin_alpha) * 2 - math.pi / 2)
    rho_x = (s_cw / cw) ** 2
    rho_y = (s_ch / ch) ** 2
    gamma = angle_cost - 2 if neg_gamma else 2 - angle_cost
    distance_cost = 2 - torch.exp(gamma * rho_x) - torch.exp(gamma * rho_y)
    omiga_w = torch.abs(w1 - w2) / torch.max(w1, w2)
    omiga_h = torch.abs(h1 - h2) / torch.max(h1, h2)
    shape_cost = torch.pow(1 - torch.exp(-1 * omiga_w), 4) + torch.pow(
        1 - torch.exp(-1 * omiga_h), 4
    )
    sious = ious - 0.5 * (distance_cost + shape_cost)
    return 1 - sious.clamp(min=-1.0, max=1.0)


def mmdet_ciou_loss(pred, target, eps=1e-7):
    """mmdetection ``ciou_loss`` (mmdet/models/losses/iou_loss.py, 3.x, from the authors'
    Zzh-tju/CIoU ``layers/modules/multibox_loss.py``): the trade-off only where IoU > 0.5,
    CIoU clamped to [-1, 1]; per box."""
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap_ = wh[:, 0] * wh[:, 1]
    ap = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    ag = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = ap + ag - overlap_ + eps
    ious = overlap_ / union
    enclose_wh = (
        torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])
    ).clamp(min=0)
    cw, ch = enclose_wh[:, 0], enclose_wh[:, 1]
    c2 = cw**2 + ch**2 + eps
    b1_x1, b1_y1, b1_x2, b1_y2 = _corners(pred)
    b2_x1, b2_y1, b2_x2, b2_y2 = _corners(target)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    left = ((b2_x1 + b2_x2) - (b1_x1 + b1_x2)) ** 2 / 4
    right = ((b2_y1 + b2_y2) - (b1_y1 + b1_y2)) ** 2 / 4
    rho2 = left + right
    v = FOUR_OVER_PI2 * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = (ious > 0.5).float() * v / (1 - ious + v)
    cious = ious - (rho2 / c2 + alpha * v)
    return 1 - cious.clamp(min=-1.0, max=1.0)


def yolov6_siou_loss(pred, target, eps=1e-10):
    """YOLOv6 ``IOUloss(iou_type="siou")`` (yolov6/utils/figure_iou.py; its BboxLoss passes
    eps 1e-10), xyxy boxes: the paper's sign, no clamp; per box."""
    b1_x1, b1_y1, b1_x2, b1_y2 = _corners(pred)
    b2_x1, b2_y1, b2_x2, b2_y2 = _corners(target)
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    s_cw = (b2_x1 + b2_x2 - b1_x1 - b1_x2) * 0.5
    s_ch = (b2_y1 + b2_y2 - b1_y1 - b1_y2) * 0.5
    sigma = torch.pow(s_cw**2 + s_ch**2, 0.5)
    sin_alpha_1 = torch.abs(s_cw) / sigma
    sin_alpha_2 = torch.abs(s_ch) / sigma
    threshold = pow(2, 0.5) / 2
    sin_alpha = torch.where(sin_alpha_1 > threshold, sin_alpha_2, sin_alpha_1)
    angle_cost = torch.cos(torch.arcsin(sin_alpha) * 2 - math.pi / 2)
    rho_x = (s_cw / cw) ** 2
    rho_y = (s_ch / ch) ** 2
    gamma = angle_cost - 2
    distance_cost = 2 - torch.exp(gamma * rho_x) - torch.exp(gamma * rho_y)
    omiga_w = torch.abs(w1 - w2) / torch.max(w1, w2)
    omiga_h = torch.abs(h1 - h2) / torch.max(h1, h2)
    shape_cost = torch.pow(1 - torch.exp(-1 * omiga_w), 4) + torch.pow(
        1 - torch.exp(-1 * omiga_h), 4
    )
    return 1 - (iou - 0.5 * (distance_cost + shape_cost))


class WiseIoU:
    """Instinct323/wiou ``IouLoss`` (iou.py: ``ltype="WIoU"``; ``monotonous`` None = v1,
    True = v2 with gamma 0.5, False = v3) with its running mean of ``L_IoU``, updated from
    the batch mean (``.item()``) before the loss, in training mode. No eps anywhere."""

    def __init__(self, n, t, monotonous=False, alpha=1.9, delta=3.0):
        self.momentum = 1 - pow(0.05, 1 / (n * t))
        self.monotonous = monotonous
        self.alpha, self.delta = alpha, delta
        self.iou_mean = torch.tensor(1.0, dtype=torch.float64)
        self.training = True

    def __call__(self, pred, target):
        pred_wh = pred[..., 2:4] - pred[..., :2]
        target_wh = target[..., 2:4] - target[..., :2]
        min_coord = torch.minimum(pred, target)
        max_coord = torch.maximum(pred, target)
        wh_inter = torch.relu(min_coord[..., 2:4] - max_coord[..., :2])
        s_inter = torch.prod(wh_inter, dim=-1)
        s_union = torch.prod(pred_wh, dim=-1) + torch.prod(target_wh, dim=-1) - s_inter
        wh_box = max_coord[..., 2:4] - min_coord[..., :2]
        l2_box = torch.square(wh_box).sum(dim=-1)
        d_center = (pred[..., :2] + pred[..., 2:4]) / 2 - (target[..., :2] + target[..., 2:4]) / 2
        l2_center = torch.square(d_center).sum(dim=-1)
        l_iou = 1 - s_inter / s_union
        if self.training and self.monotonous is not None:
            self.iou_mean.mul_(1 - self.momentum)
            self.iou_mean.add_(self.momentum * l_iou.detach().mean().item())
        loss = torch.exp(l2_center / l2_box.detach()) * l_iou
        if self.monotonous is not None:
            beta = l_iou.detach() / self.iou_mean
            if self.monotonous:
                loss = loss * beta.sqrt()
            else:
                loss = loss * beta / (self.delta * torch.pow(self.alpha, beta - self.delta))
        return loss


def alpha_iou_loss(pred, target, alpha=3.0, kind="ciou", eps=1e-9):
    """Jacobi93/Alpha-IoU ``bbox_alpha_iou`` (utils/general.py, xyxy) as ``1 - value``; per
    box. ``kind`` in iou, giou, diou, ciou."""
    b1_x1, b1_y1, b1_x2, b1_y2 = _corners(pred)
    b2_x1, b2_y1, b2_x2, b2_y2 = _corners(target)
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = torch.pow(inter / union + eps, alpha)
    if kind == "iou":
        return 1 - iou
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    if kind == "giou":
        c_area = torch.max(cw * ch + eps, union)
        return 1 - (iou - torch.pow((c_area - union) / c_area + eps, alpha))
    c2 = (cw**2 + ch**2) ** alpha + eps
    rho_x = torch.abs(b2_x1 + b2_x2 - b1_x1 - b1_x2)
    rho_y = torch.abs(b2_y1 + b2_y2 - b1_y1 - b1_y2)
    rho2 = ((rho_x**2 + rho_y**2) / 4) ** alpha
    if kind == "diou":
        return 1 - (iou - rho2 / c2)
    v = FOUR_OVER_PI2 * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha_ciou = v / ((1 + eps) - inter / union + v)
    return 1 - (iou - (rho2 / c2 + torch.pow(v * alpha_ciou + eps, alpha)))


def _to_cxcywh(b):
    return torch.stack(
        [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]],
        -1,
    )


def inner_ciou_loss(pred, target, ratio=0.7, eps=1e-7):
    """malagoutou/Inner-IoU ``inner_ciou`` (which reads (cx, cy, w, h) boxes) as
    ``1 - value``; xyxy inputs converted first; per box."""
    (x1, y1, w1, h1) = _to_cxcywh(pred).unbind(-1)
    (x2, y2, w2, h2) = _to_cxcywh(target).unbind(-1)
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * (
        b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    ib1_x1, ib1_x2 = x1 - w1 * ratio / 2, x1 + w1 * ratio / 2
    ib1_y1, ib1_y2 = y1 - h1 * ratio / 2, y1 + h1 * ratio / 2
    ib2_x1, ib2_x2 = x2 - w2 * ratio / 2, x2 + w2 * ratio / 2
    ib2_y1, ib2_y2 = y2 - h2 * ratio / 2, y2 + h2 * ratio / 2
    inner_inter = (torch.min(ib1_x2, ib2_x2) - torch.max(ib1_x1, ib2_x1)).clamp(0) * (
        torch.min(ib1_y2, ib2_y2) - torch.max(ib1_y1, ib2_y1)
    ).clamp(0)
    inner_union = w1 * ratio * h1 * ratio + w2 * ratio * h2 * ratio - inner_inter + eps
    inner = inner_inter / inner_union
    cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)
    ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    v = FOUR_OVER_PI2 * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return 1 - (inner - (rho2 / c2 + v * alpha))


def shape_iou_loss(pred, target, scale=0.0, eps=1e-7):
    """malagoutou/Shape-IoU ``shape_iou`` (reads (cx, cy, w, h)) as ``1 - value``; xyxy
    inputs converted first; per box."""
    (x1, y1, w1, h1) = _to_cxcywh(pred).unbind(-1)
    (x2, y2, w2, h2) = _to_cxcywh(target).unbind(-1)
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * (
        b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    ww = 2 * torch.pow(w2, scale) / (torch.pow(w2, scale) + torch.pow(h2, scale))
    hh = 2 * torch.pow(h2, scale) / (torch.pow(w2, scale) + torch.pow(h2, scale))
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    c2 = cw**2 + ch**2 + eps
    distance = (
        hh * (b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 / 4
        + ww * (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2 / 4
    ) / c2
    omiga_w = hh * torch.abs(w1 - w2) / torch.max(w1, w2)
    omiga_h = ww * torch.abs(h1 - h2) / torch.max(h1, h2)
    shape_cost = torch.pow(1 - torch.exp(-1 * omiga_w), 4) + torch.pow(
        1 - torch.exp(-1 * omiga_h), 4
    )
    return 1 - (iou - distance - 0.5 * shape_cost)


def bbox_mpdiou_loss(pred, target, image_hw, eps=1e-7):
    """The widely copied ``bbox_mpdiou`` (``IoU - d1^2 / hw - d2^2 / hw``, ``hw = W^2 + H^2``)
    as ``1 - value``; per box."""
    b1_x1, b1_y1, b1_x2, b1_y2 = _corners(pred)
    b2_x1, b2_y1, b2_x2, b2_y2 = _corners(target)
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    d1 = (b2_x1 - b1_x1) ** 2 + (b2_y1 - b1_y1) ** 2
    d2 = (b2_x2 - b1_x2) ** 2 + (b2_y2 - b1_y2) ** 2
    h, w = image_hw
    hw = w**2 + h**2
    return 1 - (iou - d1 / hw - d2 / hw)
