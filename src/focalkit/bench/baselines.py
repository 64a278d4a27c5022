"""Baseline formulations every focalkit benchmark compares focalkit against (plain eager
PyTorch, as torchvision, mmdetection, Ultralytics, timm and the papers' code write them). The
one copy: the suite (``focalkit bench``) and the named benchmarks (:mod:`.focal_cpu`,
:mod:`.ghm_box`, which the ``benchmarks/`` scripts run) all time these functions.

The generalized focal family's baselines are written out from the public codes (each
docstring names the code and version it follows): mmdetection's ``quality_focal_loss``,
``varifocal_loss`` and ``distribution_focal_loss`` (``mmdet/models/losses/gfocal_loss.py``,
``varifocal_loss.py``), Ultralytics' ``VarifocalLoss`` and ``DFLoss``
(``ultralytics/utils/loss.py``), timm's ``AsymmetricLossMultiLabel``
(``timm/loss/asymmetric_loss.py``) and the PolyLoss paper's Poly-1 pseudocode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "WIoUScale",
    "eager_focal",
    "eager_poly1_cross_entropy",
    "eager_softmax_focal",
    "loop_ghm_c",
    "loop_ghm_r",
    "mmdet_distribution_focal_loss",
    "mmdet_quality_focal_loss",
    "mmdet_varifocal_loss",
    "plain_box_loss",
    "plain_iou_family_loss",
    "timm_asymmetric_loss",
    "ultralytics_dfl",
    "ultralytics_varifocal_loss",
    "yolo_bbox_iou",
    "yolo_iou_loss",
]


def eager_focal(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """torchvision.ops.sigmoid_focal_loss (v0.20), reduction="mean"."""
    p = torch.sigmoid(logits)
    ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.mean()


def loop_ghm_c(pred, target, label_weight, bins=30):
    """mmdetection ``GHMC.forward`` with momentum 0, reduction "mean"."""
    edges = torch.arange(bins + 1).float().to(pred.device) / bins
    edges[-1] += 1e-6
    weights = torch.zeros_like(pred)
    g = torch.abs(pred.sigmoid().detach() - target)
    valid = label_weight > 0
    tot = max(valid.float().sum().item(), 1.0)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num_in_bin = inds.sum().item()
        if num_in_bin > 0:
            weights[inds] = tot / num_in_bin
            n += 1
    if n > 0:
        weights = weights / n
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    return (loss * weights).sum() / tot


def eager_softmax_focal(logits, labels, gamma: float = 2.0):
    """Softmax focal loss the usual eager way: ``F.cross_entropy`` per row, ``p_t = exp(-ce)``,
    ``mean((1 - p_t) ** gamma * ce)`` (no alpha)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    p_t = torch.exp(-ce)
    return ((1 - p_t) ** gamma * ce).mean()


def loop_ghm_r(pred, target, label_weight, mu=0.02, bins=10):
    """mmdetection ``GHMR.forward`` with momentum 0."""
    edges = torch.arange(bins + 1).float().to(pred.device) / bins
    edges[-1] = 1e3
    diff = pred - target
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    g = torch.abs(diff / torch.sqrt(mu * mu + diff * diff)).detach()
    weights = torch.zeros_like(g)
    valid = label_weight > 0
    tot = max(label_weight.float().sum().item(), 1.0)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num_in_bin = inds.sum().item()
        if num_in_bin > 0:
            n += 1
            weights[inds] = tot / num_in_bin
    if n > 0:
        weights /= n
    return (loss * weights).sum() / tot


def _plain_parts(pred, target, eps):
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    w, h, wg, hg = x2 - x1, y2 - y1, x2g - x1g, y2g - y1g
    xk1, yk1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xk2, yk2 = torch.min(x2, x2g), torch.min(y2, y2g)
    inter = (xk2 - xk1).clamp(min=0) * (yk2 - yk1).clamp(min=0)
    union = w * h + wg * hg - inter
    iou = inter / (union + eps)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    cw, ch = xc2 - xc1, yc2 - yc1
    rho2 = ((x1 + x2 - x1g - x2g) ** 2 + (y1 + y2 - y1g - y2g) ** 2) / 4
    return w, h, wg, hg, union, iou, cw, ch, rho2


def plain_box_loss(kind, pred, target, eps=1e-7):
    """The textbook IoU-family loss ``kind`` (``iou``, ``giou``, ``diou``, ``ciou``, ``eiou``,
    ``focal_eiou`` with gamma 0.5) of ``(x1, y1, x2, y2)`` boxes, mean over boxes, autograd on
    the plain expression."""
    w, h, wg, hg, union, iou, cw, ch, rho2 = _plain_parts(pred, target, eps)
    if kind == "iou":
        return (1 - iou).mean()
    if kind == "giou":
        area_c = cw * ch
        return (1 - iou + (area_c - union) / (area_c + eps)).mean()
    diou = 1 - iou + rho2 / (cw**2 + ch**2 + eps)
    if kind == "diou":
        return diou.mean()
    if kind == "ciou":
        v = (4 / math.pi**2) * (torch.atan(wg / (hg + eps)) - torch.atan(w / (h + eps))) ** 2
        with torch.no_grad():
            alpha = v / (1 - iou + v + eps)
        return (diou + alpha * v).mean()
    eiou = (
        1
        - iou
        + rho2 / (cw**2 + ch**2 + eps)
        + (w - wg) ** 2 / (cw**2 + eps)
        + (h - hg) ** 2 / (ch**2 + eps)
    )
    if kind == "eiou":
        return eiou.mean()
    return (iou.detach() ** 0.5 * eiou).mean()  # focal_eiou


# --------------------------------------------------------------------------------------------
# the IoU losses of YOLO-style detectors
# --------------------------------------------------------------------------------------------


def plain_iou_family_loss(kind, pred, target, eps=1e-7, image_size=(640.0, 640.0), mean=1.0):
    """The textbook formula of ``kind`` (``siou``, ``wiou_v3`` with a fixed ``mean`` or, given
    ``[mean, momentum]``, a running mean updated in place on the device first,
    ``mpdiou``, ``shape_iou`` (scale 0), ``alpha_ciou`` (a = 3), ``inner_ciou`` (ratio 0.7),
    ``focaler_ciou`` ((0, 0.95)), ``inner_siou`` (0.7)) of ``(x1, y1, x2, y2)`` boxes, mean
    over boxes, autograd on the plain expression (what one writes from the papers)."""
    w, h, wg, hg, _, iou, cw, ch, rho2 = _plain_parts(pred, target, eps)
    dx = (target[..., 0] + target[..., 2] - pred[..., 0] - pred[..., 2]) / 2
    dy = (target[..., 1] + target[..., 3] - pred[..., 1] - pred[..., 3]) / 2
    c2 = cw**2 + ch**2 + eps

    def ciou_terms(overlap):
        v = (4 / math.pi**2) * (torch.atan(wg / (hg + eps)) - torch.atan(w / (h + eps))) ** 2
        with torch.no_grad():
            a = v / (1 - iou + v + eps)
        return 1 - overlap + rho2 / c2 + a * v

    def inner(ratio):
        cx, cy, gx, gy = (
            (pred[..., 0] + pred[..., 2]) / 2,
            (pred[..., 1] + pred[..., 3]) / 2,
            (target[..., 0] + target[..., 2]) / 2,
            (target[..., 1] + target[..., 3]) / 2,
        )
        iw = torch.min(cx + w * ratio / 2, gx + wg * ratio / 2) - torch.max(
            cx - w * ratio / 2, gx - wg * ratio / 2
        )
        ih = torch.min(cy + h * ratio / 2, gy + hg * ratio / 2) - torch.max(
            cy - h * ratio / 2, gy - hg * ratio / 2
        )
        inter = iw.clamp(min=0) * ih.clamp(min=0)
        return inter / (ratio**2 * (w * h + wg * hg) - inter + eps)

    def siou(overlap):
        angle = 2 * dx.abs() * dy.abs() / (dx**2 + dy**2 + eps)
        gamma = 2 - angle
        dist = (
            2
            - torch.exp(-gamma * (dx / (cw + eps)) ** 2)
            - torch.exp(-gamma * (dy / (ch + eps)) ** 2)
        )
        om_w = (w - wg).abs() / (torch.max(w, wg) + eps)
        om_h = (h - hg).abs() / (torch.max(h, hg) + eps)
        shape = (1 - torch.exp(-om_w)) ** 4 + (1 - torch.exp(-om_h)) ** 4
        return 1 - overlap + (dist + shape) / 2

    if kind == "siou":
        loss = siou(iou)
    elif kind == "inner_siou":
        loss = siou(inner(0.7))
    elif kind == "wiou_v3":  # mean: a float, or a list holding the running mean (updated)
        if isinstance(mean, list):
            mean[0] = (1 - mean[1]) * mean[0] + mean[1] * (1 - iou).detach().mean()
        m = mean[0] if isinstance(mean, list) else mean
        r_dist = torch.exp(rho2 / c2.detach())
        beta = (1 - iou).detach() / m
        loss = beta / (3.0 * 1.9 ** (beta - 3.0)) * r_dist * (1 - iou)
    elif kind == "mpdiou":
        hw = image_size[0] ** 2 + image_size[1] ** 2
        d1 = ((pred[..., :2] - target[..., :2]) ** 2).sum(-1)
        d2 = ((pred[..., 2:] - target[..., 2:]) ** 2).sum(-1)
        loss = 1 - iou + d1 / hw + d2 / hw
    elif kind == "shape_iou":
        om_w = (w - wg).abs() / (torch.max(w, wg) + eps)
        om_h = (h - hg).abs() / (torch.max(h, hg) + eps)
        shape = (1 - torch.exp(-om_w)) ** 4 + (1 - torch.exp(-om_h)) ** 4
        loss = 1 - iou + rho2 / c2 + 0.5 * shape
    elif kind == "alpha_ciou":
        v = (4 / math.pi**2) * (torch.atan(wg / (hg + eps)) - torch.atan(w / (h + eps))) ** 2
        with torch.no_grad():
            a = v / (1 - iou + v + eps)
        loss = 1 - iou**3 + (rho2 / c2) ** 3 + (a * v) ** 3
    elif kind == "inner_ciou":
        loss = ciou_terms(inner(0.7))
    elif kind == "focaler_ciou":
        loss = ciou_terms(((iou - 0.0) / 0.95).clamp(0, 1))
    else:
        raise ValueError(kind)
    return loss.mean()


class WIoUScale:
    """The Wise-IoU state of the YOLO forks' ``bbox_iou`` (their class ``WIoU_Scale``, one
    instance here instead of class attributes): the running mean of ``L_IoU`` updated from
    the batch mean read to the host (``.item()``: a device sync per call), momentum
    ``1 - 0.5 ** (1 / 7000)``, v3 with alpha 1.9 and delta 3 (v2 with ``monotonous=True``)."""

    def __init__(self, monotonous: bool | None = False, momentum: float = 1 - 0.5 ** (1 / 7000)):
        self.iou_mean = 1.0
        self.monotonous = monotonous
        self.momentum = momentum
        self.training = True

    def update(self, l_iou):
        if self.training:
            self.iou_mean = (
                1 - self.momentum
            ) * self.iou_mean + self.momentum * l_iou.detach().mean().item()

    def factor(self, l_iou, gamma=1.9, delta=3.0):
        if self.monotonous is None:
            return 1
        beta = l_iou.detach() / self.iou_mean
        if self.monotonous:
            return beta.sqrt()
        return beta / (delta * torch.pow(gamma, beta - delta))


def yolo_bbox_iou(
    box1,
    box2,
    xywh=False,
    GIoU=False,  # the forks' keyword names
    DIoU=False,
    CIoU=False,
    SIoU=False,
    EIoU=False,
    WIoU=False,
    MPDIoU=False,
    ShapeIoU=False,
    Inner_iou=False,
    alpha=1,
    scale=None,
    eps=1e-7,
    feat_w=640,
    feat_h=640,
    ratio=0.7,
    shape_scale=0,
):
    """The ``bbox_iou`` that YOLOv5/v8 forks copy to add SIoU, EIoU, Wise-IoU, MPDIoU,
    Shape-IoU, Alpha- and Inner-IoU (one function, a flag per loss; ``(n, 4)`` boxes, every
    flag's arithmetic and eps placement as they write it). Returns what their ``BboxLoss``
    consumes: the IoU-like value (loss = ``1 - value``), or for ``WIoU`` with ``scale`` (a
    :class:`WIoUScale`) the tuple ``(factor, (1 - IoU) R)`` (loss = ``factor * second``).
    As there, ``alpha`` powers ``IoU``, ``rho^2`` and ``c^2`` (Alpha-IoU), the Wise-IoU
    ``R`` is not detached, and Inner-IoU only replaces the IoU where ``alpha == 1``."""
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
        w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
        w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * (
        b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    if scale is not None:
        scale.update(1 - inter / union)
    iou = torch.pow(inter / (union + eps), alpha)

    def inner_iou():
        cx1, cy1, cx2, cy2 = (
            (b1_x1 + b1_x2) / 2,
            (b1_y1 + b1_y2) / 2,
            (b2_x1 + b2_x2) / 2,
            (b2_y1 + b2_y2) / 2,
        )
        i_inter = (
            torch.min(cx1 + w1 * ratio / 2, cx2 + w2 * ratio / 2)
            - torch.max(cx1 - w1 * ratio / 2, cx2 - w2 * ratio / 2)
        ).clamp(0) * (
            torch.min(cy1 + h1 * ratio / 2, cy2 + h2 * ratio / 2)
            - torch.max(cy1 - h1 * ratio / 2, cy2 - h2 * ratio / 2)
        ).clamp(0)
        return i_inter / (w1 * h1 * ratio * ratio + w2 * h2 * ratio * ratio - i_inter + eps)

    # Inner-IoU replaces the IoU in the returned value only (after CIoU's trade-off)
    overlap = inner_iou() if Inner_iou and alpha == 1 else iou
    if CIoU or DIoU or GIoU or EIoU or SIoU or WIoU:
        cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)
        ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
        if CIoU or DIoU or EIoU or SIoU or WIoU:
            c2 = (cw**2 + ch**2) ** alpha + eps
            rho2 = (
                ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
            ) ** alpha
            if CIoU:
                v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
                with torch.no_grad():
                    alpha_ciou = v / (v - iou + (1 + eps))
                return overlap - (rho2 / c2 + torch.pow(v * alpha_ciou + eps, alpha))
            if EIoU:
                rho_w2 = ((b2_x2 - b2_x1) - (b1_x2 - b1_x1)) ** 2
                rho_h2 = ((b2_y2 - b2_y1) - (b1_y2 - b1_y1)) ** 2
                cw2 = torch.pow(cw**2 + eps, alpha)
                ch2 = torch.pow(ch**2 + eps, alpha)
                return overlap - (rho2 / c2 + rho_w2 / cw2 + rho_h2 / ch2)
            if SIoU:
                s_cw = (b2_x1 + b2_x2 - b1_x1 - b1_x2) * 0.5 + eps
                s_ch = (b2_y1 + b2_y2 - b1_y1 - b1_y2) * 0.5 + eps
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
                return overlap - torch.pow(0.5 * (distance_cost + shape_cost) + eps, alpha)
            if WIoU and scale is not None:
                return scale.factor(1 - inter / union), (1 - overlap) * torch.exp(rho2 / c2)
            if WIoU:
                return overlap, torch.exp(rho2 / c2)
            return overlap - rho2 / c2
        c_area = cw * ch + eps
        return overlap - torch.pow((c_area - union) / c_area + eps, alpha)
    if MPDIoU:
        sq_sum = feat_w**2 + feat_h**2
        d12 = (b2_x1 - b1_x1) ** 2 + (b2_y1 - b1_y1) ** 2
        d22 = (b2_x2 - b1_x2) ** 2 + (b2_y2 - b1_y2) ** 2
        return overlap - d12 / sq_sum - d22 / sq_sum
    if ShapeIoU:
        ww = (
            2
            * torch.pow(w2, shape_scale)
            / (torch.pow(w2, shape_scale) + torch.pow(h2, shape_scale))
        )
        hh = (
            2
            * torch.pow(h2, shape_scale)
            / (torch.pow(w2, shape_scale) + torch.pow(h2, shape_scale))
        )
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
        return overlap - distance - 0.5 * shape_cost
    return overlap


def yolo_iou_loss(kind, pred, target, scale=None, image_size=(640.0, 640.0)):
    """The forks' ``BboxLoss`` on top of :func:`yolo_bbox_iou`, mean over boxes: ``1 - value``,
    or ``factor * (1 - IoU) R`` for Wise-IoU v3 (``scale``: a :class:`WIoUScale`)."""
    flags = {
        "siou": {"SIoU": True},
        "inner_siou": {"SIoU": True, "Inner_iou": True},
        "mpdiou": {"MPDIoU": True, "feat_h": image_size[0], "feat_w": image_size[1]},
        "shape_iou": {"ShapeIoU": True},
        "alpha_ciou": {"CIoU": True, "alpha": 3},
        "inner_ciou": {"CIoU": True, "Inner_iou": True},
    }
    if kind == "wiou_v3":
        factor, loss = yolo_bbox_iou(pred, target, WIoU=True, scale=scale)
        return (factor * loss).mean()
    if kind == "focaler_ciou":  # the Focaler forks map the IoU inside their bbox_iou copy
        value = yolo_bbox_iou(pred, target, CIoU=True)
        iou = yolo_bbox_iou(pred, target)
        return (1 - value + iou - ((iou - 0.0) / 0.95).clamp(0, 1)).mean()
    return (1 - yolo_bbox_iou(pred, target, **flags[kind])).mean()


# ----------------------------------------------------------------------------------------------
# the generalized focal family
# ----------------------------------------------------------------------------------------------


def mmdet_quality_focal_loss(pred, label, score, beta: float = 2.0):
    """mmdetection ``quality_focal_loss`` (``gfocal_loss.py``), reduction "mean" over anchors
    of the per-anchor sum over classes: every element first as a negative
    (``BCE(x, 0) p^beta``), then the positives overwritten by index with
    ``BCE(x, score) |score - p|^beta``."""
    pred_sigmoid = pred.sigmoid()
    zero = pred_sigmoid.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zero, reduction="none") * pred_sigmoid.pow(beta)
    background = pred.size(1)
    pos = ((label >= 0) & (label < background)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none"
    ) * scale.abs().pow(beta)
    return loss.sum(dim=1).mean()


def mmdet_varifocal_loss(pred, target, alpha: float = 0.75, gamma: float = 2.0):
    """mmdetection ``varifocal_loss`` (iou_weighted), summed and divided by the number of
    anchors (``avg_factor``): positives are ``target > 0``."""
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    weight = (
        target * (target > 0.0).float()
        + alpha * (pred_sigmoid - target).abs().pow(gamma) * (target <= 0.0).float()
    )
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * weight
    return loss.sum() / pred.shape[0]


def ultralytics_varifocal_loss(pred_score, gt_score, label, alpha=0.75, gamma=2.0):
    """Ultralytics ``VarifocalLoss.forward`` (RT-DETR): positives are the one-hot ``label``;
    ``(BCE * weight).mean(1).sum()`` on ``(batch, queries, classes)``; the suite passes one
    batch of ``rows`` queries, so this is the sum divided by ``rows``."""
    weight = alpha * pred_score.sigmoid().pow(gamma) * (1 - label) + gt_score * label
    loss = F.binary_cross_entropy_with_logits(
        pred_score.float(), gt_score.float(), reduction="none"
    )
    return (loss * weight).unsqueeze(0).mean(1).sum()


def mmdet_distribution_focal_loss(pred, label):
    """mmdetection ``distribution_focal_loss`` (left bin ``label.long()``: an IndexError at
    ``label = n``), mean over the sides."""
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.float() - label
    weight_right = label - dis_left.float()
    loss = (
        F.cross_entropy(pred, dis_left, reduction="none") * weight_left
        + F.cross_entropy(pred, dis_right, reduction="none") * weight_right
    )
    return loss.mean()


def ultralytics_dfl(pred_dist, target, reg_max: int):
    """Ultralytics ``DFLoss.__call__`` (``reg_max`` = the bin count; the target clamped in place
    to ``reg_max - 1.01``), ``pred_dist`` ``(N * 4, reg_max)``, ``target`` ``(N, 4)``: the mean
    over boxes of the per-box 4-side mean."""
    target = target.clamp_(0, reg_max - 1 - 0.01)
    tl = target.long()
    tr = tl + 1
    wl = tr - target
    wr = 1 - wl
    return (
        (
            F.cross_entropy(pred_dist, tl.view(-1), reduction="none").view(tl.shape) * wl
            + F.cross_entropy(pred_dist, tr.view(-1), reduction="none").view(tl.shape) * wr
        )
        .mean(-1, keepdim=True)
        .mean()
    )


def timm_asymmetric_loss(x, y, gamma_neg=4.0, gamma_pos=1.0, clip=0.05, eps=1e-8):
    """timm ``AsymmetricLossMultiLabel.forward`` (as in the authors' code, focusing weights
    differentiated), ``-loss.sum()`` divided by the batch size (timm's later "batchmean")."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        loss = loss * torch.pow(1 - pt, one_sided_gamma)
    return -loss.sum() / x.shape[0]


def eager_poly1_cross_entropy(logits, labels, epsilon: float = 1.0):
    """The PolyLoss paper's Poly-1 pseudocode in PyTorch (as the abhuse port writes it):
    ``CE + epsilon (1 - p_t)``, ``p_t`` from a one-hot target, mean over samples."""
    one_hot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    pt = (one_hot * F.softmax(logits, dim=-1)).sum(dim=-1)
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (ce + epsilon * (1 - pt)).mean()
