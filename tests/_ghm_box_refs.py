"""Independent references for the GHM and box-loss tests (float64, written from SPEC.md).

* GHM: the authors' per-bin Python loop (one mask per bin), in float64 with real edges
  ``j / M`` and the last bin closed.
* Box losses: one box at a time with the ``math`` module; the detached factors (CIoU's
  trade-off ``a``, Focal-EIoU's ``IoU^gamma``) can be frozen at given values, so central
  finite differences give the gradient autograd is expected to produce.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# GHM
# --------------------------------------------------------------------------------------------


def _loop_weights(g, valid, bins, total, momentum=0.0, acc=None, update=True):
    """Per-element weights by the per-bin loop of the reference code (float64). With ``acc``
    and ``update=False`` (evaluation): the stored EMA, or the batch count where it is 0."""
    weights = torch.zeros_like(g)
    n = 0
    for j in range(bins):
        lo, hi = j / bins, (j + 1) / bins
        upper = (g <= 1e300) if j == bins - 1 else (g < hi)
        inds = (g >= lo) & upper & valid
        num = int(inds.sum())
        if num > 0:
            if acc is not None and update:
                acc[j] = momentum * acc[j] + (1 - momentum) * num
                weights[inds] = total / acc[j]
            elif acc is not None:
                weights[inds] = total / (acc[j] if acc[j] > 0 else num)
            else:
                weights[inds] = total / num
            n += 1
    if n > 0:
        weights = weights / n
    return weights


def ghm_c_reference(logits, targets, valid=None, bins=10, momentum=0.0, acc=None, update=True):
    """GHM-C ("mean") with dense float targets; ``acc`` (a list) holds the EMA if given."""
    x = logits.double()
    y = targets.double()
    valid = torch.ones_like(x, dtype=torch.bool) if valid is None else valid.bool()
    g = (torch.sigmoid(x.detach()) - y).abs()
    total = max(float(valid.sum()), 1.0)
    w = _loop_weights(g, valid, bins, total, momentum, acc, update)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    return (w * bce).sum() / total, w


def ghm_r_reference(
    pred, target, mu=0.02, bins=10, weight=None, momentum=0.0, acc=None, update=True
):
    d = pred.double() - target.double()
    asl1 = torch.sqrt(d * d + mu * mu) - mu
    g = (d.abs() / torch.sqrt(d * d + mu * mu)).detach()
    if weight is None:
        lam = torch.ones_like(d)
    else:
        lam = weight.double().expand(d.shape)
    valid = lam > 0
    total = max(float(lam.sum()), 1.0)
    w = _loop_weights(g, valid, bins, total, momentum, acc, update)
    return (w * lam * asl1).sum() / total


# --------------------------------------------------------------------------------------------
# box losses, one box at a time
# --------------------------------------------------------------------------------------------

EPS = 1e-7


def box_parts(p, t, eps=EPS):
    """Geometry of two xyxy boxes (tuples of 4 floats)."""
    px1, py1, px2, py2 = p
    tx1, ty1, tx2, ty2 = t
    pw, ph, tw, th = px2 - px1, py2 - py1, tx2 - tx1, ty2 - ty1
    iw = max(min(px2, tx2) - max(px1, tx1), 0.0)
    ih = max(min(py2, ty2) - max(py1, ty1), 0.0)
    inter = iw * ih
    union = pw * ph + tw * th - inter
    iou = inter / (union + eps)
    cw = max(px2, tx2) - min(px1, tx1)
    ch = max(py2, ty2) - min(py1, ty1)
    rho2 = ((px1 + px2 - tx1 - tx2) ** 2 + (py1 + py2 - ty1 - ty2) ** 2) / 4
    return {
        "pw": pw,
        "ph": ph,
        "tw": tw,
        "th": th,
        "union": union,
        "iou": iou,
        "cw": cw,
        "ch": ch,
        "rho2": rho2,
    }


def ciou_v(p, t, eps=EPS):
    q = box_parts(p, t, eps)
    delta = math.atan(q["tw"] / (q["th"] + eps)) - math.atan(q["pw"] / (q["ph"] + eps))
    return 4 / math.pi**2 * delta * delta


def ciou_alpha(p, t, eps=EPS):
    v = ciou_v(p, t, eps)
    return v / ((1 - box_parts(p, t, eps)["iou"]) + v + eps)


def box_loss_reference(kind, p, t, eps=EPS, gamma=0.5, frozen=None):
    """Loss of one box pair. ``frozen``: the value of the detached factor (CIoU's ``a``,
    Focal-EIoU's ``IoU^gamma``); None computes it at ``p``."""
    q = box_parts(p, t, eps)
    iou = q["iou"]
    if kind == "iou":
        return 1 - iou
    if kind == "iou_log":
        return -math.log(max(iou, eps))
    if kind == "giou":
        area_c = q["cw"] * q["ch"]
        return 1 - iou + (area_c - q["union"]) / (area_c + eps)
    diou = 1 - iou + q["rho2"] / (q["cw"] ** 2 + q["ch"] ** 2 + eps)
    if kind == "diou":
        return diou
    if kind == "ciou":
        a = ciou_alpha(p, t, eps) if frozen is None else frozen
        return diou + a * ciou_v(p, t, eps)
    cw2, ch2 = q["cw"] ** 2, q["ch"] ** 2
    eiou = (
        1
        - iou
        + q["rho2"] / (cw2 + ch2 + eps)
        + (q["pw"] - q["tw"]) ** 2 / (cw2 + eps)
        + (q["ph"] - q["th"]) ** 2 / (ch2 + eps)
    )
    if kind == "eiou":
        return eiou
    if kind == "focal_eiou":
        factor = iou**gamma if frozen is None else frozen
        return factor * eiou
    raise ValueError(kind)


def frozen_factor(kind, p, t, eps=EPS, gamma=0.5):
    if kind == "ciou":
        return ciou_alpha(p, t, eps)
    if kind == "focal_eiou":
        return box_parts(p, t, eps)["iou"] ** gamma
    return None


def box_grad_reference(kind, p, t, eps=EPS, gamma=0.5, h=1e-6):
    """d loss / d pred by central differences, the detached factor frozen at ``p``."""
    frozen = frozen_factor(kind, p, t, eps, gamma)
    grad = []
    for k in range(4):
        hi = list(p)
        lo = list(p)
        hi[k] += h
        lo[k] -= h
        f_hi = box_loss_reference(kind, hi, t, eps, gamma, frozen)
        f_lo = box_loss_reference(kind, lo, t, eps, gamma, frozen)
        grad.append((f_hi - f_lo) / (2 * h))
    return grad


def focal_l1_reference(x, alpha=1.0, beta=1 / math.e):
    x = abs(x)
    if x <= 1:
        if x == 0:
            return 0.0
        return -alpha * x * x * (2 * math.log(beta * x) - 1) / 4
    return -alpha * math.log(beta) * x + (2 * alpha * math.log(beta) + alpha) / 4


def random_boxes(n, generator, scale=10.0, min_size=0.05, dtype=torch.float64):
    """``n`` xyxy boxes with positive sizes, overlapping each other often."""
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * scale / 2 + min_size
    return torch.cat([xy, xy + wh], dim=-1)


def torch_ciou_v(pred, target, eps=EPS):
    """CIoU's ``v`` in torch (float64), for the gradcheck of ``ciou_loss`` with ``a`` frozen."""
    pw, ph = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1]
    tw, th = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
    delta = torch.atan(tw / (th + eps)) - torch.atan(pw / (ph + eps))
    return 4 / math.pi**2 * delta * delta
