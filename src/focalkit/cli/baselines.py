"""Baseline formulations the benchmarks compare focalkit against (plain eager PyTorch).

``eager_focal`` and ``loop_ghm_c`` are the same code as ``benchmarks/bench_focal_cpu.py`` and
``benchmarks/bench_ghm_box.py`` (``tests/test_bench.py`` checks the sources are identical): they
live here too because ``benchmarks/`` is not part of the installed package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["eager_focal", "eager_softmax_focal", "loop_ghm_c"]


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
