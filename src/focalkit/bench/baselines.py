"""Baseline formulations every focalkit benchmark compares focalkit against (plain eager
PyTorch, as torchvision, mmdetection and the papers' code write them). The one copy: the suite
(``focalkit bench``) and the named benchmarks (:mod:`.focal_cpu`, :mod:`.ghm_box`, which the
``benchmarks/`` scripts run) all time these functions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "eager_focal",
    "eager_softmax_focal",
    "loop_ghm_c",
    "loop_ghm_r",
    "plain_box_loss",
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
