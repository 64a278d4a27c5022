"""Independent float64 references for QFL, VFL, DFL, ASL and Poly-1, written from SPEC.md
sections 7-11 (and 5 for the reductions).

Nothing here imports focalkit. Each formula is the paper's, evaluated elementwise in float64
with plain torch ops (``logsigmoid`` / ``log_softmax`` for the logs); gradients of the
references come from autograd on these formulas, so they are independent of focalkit's
hand-written backward. Where a public code differs from the paper, the helper named after it
transliterates that code (for the tests that show the difference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "asl_authors_code",
    "asl_ref",
    "dfl_ref",
    "index_scores_to_dense",
    "poly1_ce_ref",
    "poly1_focal_ref",
    "qfl_ref",
    "reduce_ref",
    "ultralytics_dfl",
    "ultralytics_vfl",
    "vfl_ref",
]


def _bce(x: Tensor, y: Tensor) -> Tensor:
    return -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))


def reduce_ref(loss: Tensor, reduction: str, denominator=None, normalizer=None) -> Tensor:
    """SPEC sec. 5: "none", "sum", "mean" (sum / denominator, default the element count,
    0 for an empty mean) or sum / max(normalizer, 1)."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if normalizer is not None:
        return total / max(float(normalizer), 1.0)
    d = float(loss.numel() if denominator is None else denominator)
    return total / (d if d != 0 else 1.0)


def index_scores_to_dense(
    labels: Tensor, scores: Tensor, num_classes: int, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """(labels, scores) with label C = background -> (float64 dense targets, float64 validity
    mask), a Python loop over rows (positives: the score at the label's column)."""
    y = torch.zeros((*labels.shape, num_classes), dtype=torch.float64)
    valid = torch.ones_like(y)
    y2, v2 = y.view(-1, num_classes), valid.view(-1, num_classes)
    rows = zip(labels.reshape(-1).tolist(), scores.reshape(-1).tolist(), strict=True)
    for row, (c, s) in enumerate(rows):
        if c == ignore_index:
            v2[row] = 0.0
        elif 0 <= c < num_classes:
            y2[row, c] = s
        else:
            assert c == num_classes, c
    return y, valid


def qfl_ref(x: Tensor, y: Tensor, beta: float = 2.0) -> Tensor:
    """SPEC sec. 7: |y - p|^beta BCE(x, y) per element."""
    p = torch.sigmoid(x)
    return (y - p).abs() ** beta * _bce(x, y)


def vfl_ref(
    x: Tensor, q: Tensor, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True
) -> Tensor:
    """SPEC sec. 9 (the paper, mmdetection): positives are q > 0."""
    p = torch.sigmoid(x)
    pos = q if iou_weighted else torch.ones_like(q)
    weight = torch.where(q > 0, pos, alpha * p**gamma)
    return weight * _bce(x, q)


def ultralytics_vfl(x: Tensor, q: Tensor, label: Tensor, alpha=0.75, gamma=2.0) -> Tensor:
    """Ultralytics' ``VarifocalLoss`` weight, elementwise (no reduction): positives are the
    ground-truth one-hot ``label``, whatever their IoU."""
    weight = alpha * torch.sigmoid(x) ** gamma * (1 - label) + q * label
    return F.binary_cross_entropy_with_logits(x, q, reduction="none") * weight


def dfl_ref(pred: Tensor, y: Tensor) -> Tensor:
    """SPEC sec. 8, one row at a time: l = min(floor(y), n - 1), r = l + 1,
    (r - y) CE(pred, l) + (y - l) CE(pred, r). ``pred`` (..., n + 1), ``y`` (...)."""
    n = pred.shape[-1] - 1
    flat = pred.reshape(-1, n + 1)
    out = []
    for row, t in enumerate(y.reshape(-1).tolist()):
        left = min(math.floor(t), n - 1)
        logp = torch.log_softmax(flat[row], dim=-1)
        out.append(-((left + 1 - t) * logp[left] + (t - left) * logp[left + 1]))
    return torch.stack(out).reshape(y.shape) if out else flat.sum(-1).reshape(y.shape)


def ultralytics_dfl(pred_dist: Tensor, target: Tensor, reg_max: int) -> Tensor:
    """Ultralytics' ``DFLoss`` (``reg_max`` bins = n + 1; its in-place clamp made a copy here):
    the per-box mean over the sides, shape (N, 1)."""
    target = target.clone().clamp_(0, reg_max - 1 - 0.01)
    tl = target.long()
    tr = tl + 1
    wl = tr - target
    wr = 1 - wl
    return (
        F.cross_entropy(pred_dist, tl.view(-1), reduction="none").view(tl.shape) * wl
        + F.cross_entropy(pred_dist, tr.view(-1), reduction="none").view(tl.shape) * wr
    ).mean(-1, keepdim=True)


def asl_ref(
    x: Tensor,
    y: Tensor,
    gamma_pos: float = 1.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    detach_focusing: bool = False,
) -> Tensor:
    """SPEC sec. 10 in logit space: p_m = max(p - m, 0) (1 - p_m = min(1, sigmoid(-x) + m)),
    CE = -(y log p + (1 - y) log(1 - p_m)) times (1 - p_t)^(g+ y + g- (1 - y)),
    p_t = y p + (1 - y)(1 - p_m)."""
    log_p = F.logsigmoid(x)
    if clip > 0:
        one_minus_pm = (torch.sigmoid(-x) + clip).clamp(max=1)
        log_neg = torch.log(one_minus_pm)
    else:
        one_minus_pm = torch.sigmoid(-x)
        log_neg = F.logsigmoid(-x)
    ce = -(y * log_p + (1 - y) * log_neg)
    p_t = y * torch.sigmoid(x) + (1 - y) * one_minus_pm
    exponent = gamma_pos * y + gamma_neg * (1 - y)
    base = 1 - p_t
    # base ** exponent, with the derivative of 0 ** e taken as 0 (a shifted negative below the
    # margin is identically 0 around it; autograd's inf * 0 would give NaN)
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    weight = torch.where(positive, safe**exponent, (exponent == 0).to(base.dtype))
    if detach_focusing:
        weight = weight.detach()
    return weight * ce


def asl_authors_code(x: Tensor, y: Tensor, gamma_pos=1.0, gamma_neg=4.0, clip=0.05, eps=1e-8):
    """The authors' ``AsymmetricLoss.forward`` (probabilities clamped at ``eps`` before the
    logs), without its global grad toggle: ``-loss.sum()``."""
    xs_pos = torch.sigmoid(x)
    xs_neg = (1 - xs_pos + clip).clamp(max=1) if clip > 0 else 1 - xs_pos
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    pt = xs_pos * y + xs_neg * (1 - y)
    loss = loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -loss.sum()


def poly1_ce_ref(
    logits: Tensor,
    targets: Tensor,
    *,
    epsilon: float = 1.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """SPEC sec. 11, per class: sum_c w_c t_c (-log p_c + epsilon (1 - p_c)) (t the one-hot or
    probability target, smoothed), F.cross_entropy's shapes and "mean" (the summed w[y] of
    the non-ignored index targets, the number of samples for probabilities)."""
    x = logits.to(torch.float64)
    squeeze = x.dim() == 1
    if squeeze:
        x, targets = x.unsqueeze(0), targets.unsqueeze(0)
    num_classes = x.shape[1]
    xl = x.movedim(1, -1)
    w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight.double()
    index_form = targets.shape != logits.shape or not targets.is_floating_point()
    if index_form and squeeze:
        index_form = targets.dim() == 1 and not targets.is_floating_point()
    if index_form:
        valid = (targets != ignore_index).double()
        safe = torch.where(targets == ignore_index, 0, targets).long()
        t = F.one_hot(safe, num_classes).double()
        denominator = (w[safe] * valid).sum()
    else:
        t = targets.double().movedim(1, -1)
        valid = torch.ones(t.shape[:-1], dtype=torch.float64)
        denominator = float(valid.numel())
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / num_classes
    logp = torch.log_softmax(xl, dim=-1)
    per_class = -logp + epsilon * (1 - torch.exp(logp))
    loss = (w * t * per_class).sum(-1) * valid
    if squeeze:
        loss = loss.squeeze(0)
    return reduce_ref(loss, reduction, denominator)


def poly1_focal_ref(
    x: Tensor, y: Tensor, epsilon: float = 1.0, alpha: float | None = 0.25, gamma: float = 2.0
) -> Tensor:
    """SPEC sec. 11: alpha_t (1 - p_t)^gamma BCE + epsilon (1 - p_t)^(gamma + 1), alpha on the
    focal term only."""
    p = torch.sigmoid(x)
    one_minus_pt = 1 - (p * y + (1 - p) * (1 - y))
    focal = one_minus_pt**gamma * _bce(x, y)
    if alpha is not None:
        focal = (alpha * y + (1 - alpha) * (1 - y)) * focal
    return focal + epsilon * one_minus_pt ** (gamma + 1)
