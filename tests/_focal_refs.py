"""Independent float64 references for the focal losses, written from SPEC.md sections 1 and 5.

Nothing here imports focalkit. Every formula is the textbook one, evaluated elementwise in
float64 with plain torch ops; gradients of the references come from autograd on these
formulas (so they are independent of focalkit's hand-written backward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bce_with_logits_ref",
    "class_balanced_ref",
    "index_to_dense",
    "sigmoid_focal_grad_ref",
    "sigmoid_focal_ref",
    "softmax_focal_ref",
]


def bce_with_logits_ref(x: Tensor, y: Tensor) -> Tensor:
    """-[y log p + (1-y) log(1-p)], p = sigmoid(x), with log p = logsigmoid(x) and
    log(1-p) = logsigmoid(-x) (accurate in float64, correct gradient at x = 0)."""
    return -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))


def _gamma_of(gamma, p_t: Tensor) -> Tensor | float:
    if isinstance(gamma, str):
        assert gamma == "flsd53"
        # Mukhoti et al.: 5 where p_t < 0.2, else 3 (a constant: no gradient through it)
        return torch.where(p_t.detach() < 0.2, 5.0, 3.0).to(p_t.dtype)
    if isinstance(gamma, Tensor):
        return float(gamma)
    return float(gamma)


def index_to_dense(labels: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Class-index targets (c in [0, C) positive, C background, ignore_index ignored)
    -> (dense one-hot float64 targets, float64 validity mask), both of shape (*labels.shape, C)."""
    y = torch.zeros((*labels.shape, num_classes), dtype=torch.float64)
    valid = torch.ones((*labels.shape, num_classes), dtype=torch.float64)
    flat_l = labels.reshape(-1).tolist()
    y2 = y.view(-1, num_classes)
    v2 = valid.view(-1, num_classes)
    for row, c in enumerate(flat_l):
        if c == ignore_index:
            v2[row] = 0.0
        elif 0 <= c < num_classes:
            y2[row, c] = 1.0
        else:
            assert c == num_classes, c  # background: every column negative
    return y, valid


def _reduce(loss: Tensor, reduction: str, denominator, normalizer) -> Tensor:
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if normalizer is not None:
        n = float(normalizer)
        return total / max(n, 1.0)
    denominator = float(denominator)
    return total / (denominator if denominator != 0 else 1.0)


def sigmoid_focal_ref(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha=0.25,
    gamma=2.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer=None,
) -> Tensor:
    """FL = -alpha_t (1 - p_t)^gamma log p_t per element, then the SPEC section 5 reduction.

    ``logits`` is used as given (cast to float64 by the caller if a gradient is wanted).
    """
    x = logits.to(torch.float64)
    C = x.shape[-1] if x.dim() else 1
    if targets.shape == logits.shape:
        if targets.is_floating_point():
            y = targets.to(torch.float64)
            valid = torch.ones_like(y)
        else:
            valid = (targets != ignore_index).to(torch.float64)
            y = torch.where(targets == ignore_index, 0, targets).to(torch.float64)
    else:
        y, valid = index_to_dense(targets, C, ignore_index)
    p = torch.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    ce = bce_with_logits_ref(x, y)  # -log p_t, stable
    g = _gamma_of(gamma, p_t)
    mod = (1 - p_t) ** g
    loss = mod * ce
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=torch.float64)
        alpha_t = a * y + (1 - a) * (1 - y)
        loss = alpha_t * loss
    loss = loss * valid
    if weight is not None:
        w = weight.to(torch.float64) if weight.dtype != torch.float64 else weight
        loss = loss * w
    return _reduce(loss, reduction, valid.sum(), normalizer)


def sigmoid_focal_grad_ref(x: float, y: int, alpha: float | None, gamma: float) -> float:
    """SPEC's closed-form d FL / d x for hard targets (alpha None = 1 for both classes):

        y = 1:  alpha (1-p)^gamma (gamma p log p + p - 1)
        y = 0:  (1-alpha) p^gamma (p - gamma (1-p) log(1-p))

    evaluated in double with 1 - p = sigmoid(-x), log p = -log1p(exp(-x)) and
    log(1 - p) = -log1p(exp(x)), so it is accurate for |x| <= 700.
    """
    p = 1 / (1 + math.exp(-x))
    q = 1 / (1 + math.exp(x))  # 1 - p without cancellation
    log_p = -math.log1p(math.exp(-x))
    log_q = -math.log1p(math.exp(x))
    if y == 1:
        a = 1.0 if alpha is None else alpha
        return a * q**gamma * (gamma * p * log_p - q)
    a = 1.0 if alpha is None else 1 - alpha
    return a * p**gamma * (p - gamma * q * log_q)


def softmax_focal_ref(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha=None,
    gamma=2.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    normalizer=None,
) -> Tensor:
    """Per-class form L = -sum_c alpha_c w_c t_c (1 - p_c)^gamma log p_c (t one-hot for index
    targets, smoothed by (1 - eps) t + eps / C), F.cross_entropy shapes and "mean"
    (sum of w[y] over non-ignored for index targets, number of samples for probabilities)."""
    x = logits.to(torch.float64)
    index_form = targets.shape != logits.shape or not targets.is_floating_point()
    if x.dim() == 1:
        x = x.unsqueeze(0)
        targets = targets.unsqueeze(0)
        squeeze = True
    else:
        squeeze = False
    C = x.shape[1]
    # channel-last
    xl = x.movedim(1, -1)
    w = torch.ones(C, dtype=torch.float64) if weight is None else weight.to(torch.float64)
    if index_form:
        valid = (targets != ignore_index).to(torch.float64)
        safe = torch.where(targets == ignore_index, 0, targets).long()
        t = torch.nn.functional.one_hot(safe, C).to(torch.float64)
        denominator = (w[safe] * valid).sum()
    else:
        t = targets.to(torch.float64).movedim(1, -1)
        valid = torch.ones(t.shape[:-1], dtype=torch.float64)
        denominator = float(valid.numel())
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / C
    logp = torch.log_softmax(xl, dim=-1)
    p = torch.exp(logp)
    g = _gamma_of(gamma, p)
    scale = w
    global_alpha = 1.0
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=torch.float64)
        if a.dim() == 0:
            global_alpha = float(a)
        else:
            scale = scale * a
    loss = -(scale * t * (1 - p) ** g * logp).sum(-1) * valid * global_alpha
    if squeeze:
        loss = loss.squeeze(0)
    return _reduce(loss, reduction, denominator, normalizer)


def class_balanced_ref(counts: list[int], beta: float) -> list[float]:
    """Cui et al.: w_c proportional to (1 - beta) / (1 - beta^n_c), normalised to sum to C."""
    raw = [(1 - beta) / (1 - beta**n) if beta > 0 else 1.0 for n in counts]
    s = sum(raw)
    return [r * len(counts) / s for r in raw]
