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
    "eager_focal",
    "eager_poly1_cross_entropy",
    "eager_softmax_focal",
    "loop_ghm_c",
    "loop_ghm_r",
    "mmdet_distribution_focal_loss",
    "mmdet_quality_focal_loss",
    "mmdet_varifocal_loss",
    "plain_box_loss",
    "timm_asymmetric_loss",
    "ultralytics_dfl",
    "ultralytics_varifocal_loss",
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
