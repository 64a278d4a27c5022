"""One reduction for every loss: elementwise weight, then "none" | "mean" | "sum" | normalizer."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_broadcastable_to


def exact_sum(values: Tensor) -> Tensor:
    """The sum of ``values`` accumulated in float64, returned in their dtype: a float32 sum
    of millions of terms of very different sizes loses the small ones (GHM-C's 2^24 easy
    negatives after its hard ones: 4e-6 relative), a float64 one does not."""
    return values.sum(dtype=torch.float64).to(values.dtype)


def safe_divide(total: Tensor, denominator: float | Tensor) -> Tensor:
    """``total / denominator`` with a zero denominator read as 1 (an empty mean is 0, not NaN)."""
    if isinstance(denominator, Tensor):
        denominator = denominator.to(total.dtype)
        return total / torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return total / (denominator if denominator != 0 else 1)


def normalize(total: Tensor, normalizer: float | Tensor) -> Tensor:
    """Detection convention: ``sum / max(normalizer, 1)``; a zero normalizer never gives inf/NaN."""
    if isinstance(normalizer, Tensor):
        return total / normalizer.detach().to(total.dtype).reshape(()).clamp(min=1)
    return total / max(float(normalizer), 1.0)


def reduction_scale(
    reduction: str,
    *,
    normalizer: float | Tensor | None = None,
    denominator: float | Tensor | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The factor (0-dim float32 on ``device``) that :func:`finish` divides a sum by, as a
    reciprocal: 1 for ``"sum"`` (and ``"none"``), ``1 / max(normalizer, 1)``, or
    ``1 / denominator`` with a zero denominator read as 1. Kernels that store their gradient
    in forward multiply it in, so that ``grad_output`` is 1 after a plain ``backward()``."""
    if reduction != "mean":
        return torch.ones((), dtype=torch.float32, device=device)
    if normalizer is not None:
        # a CPU tensor's value is read on the host (free, unlike a copy to the device)
        if isinstance(normalizer, Tensor) and normalizer.device.type != "cpu":
            norm = normalizer.detach().to(device=device, dtype=torch.float32).reshape(())
            return norm.clamp(min=1).reciprocal()
        return torch.full((), 1.0 / max(float(normalizer), 1.0), dtype=torch.float32, device=device)
    if isinstance(denominator, Tensor) and denominator.device.type != "cpu":
        d = denominator.detach().to(device=device, dtype=torch.float32).reshape(())
        return torch.where(d == 0, torch.ones_like(d), d).reciprocal()
    value = 1.0 if denominator is None else float(denominator)
    return torch.full((), 1.0 / (value if value != 0 else 1.0), dtype=torch.float32, device=device)


def finish(
    total: Tensor,
    reduction: str,
    *,
    normalizer: float | Tensor | None = None,
    denominator: float | Tensor | None = None,
) -> Tensor:
    """Turn a summed loss into the requested reduction (``reduction`` is "mean" or "sum")."""
    if reduction == "sum":
        return total
    if normalizer is not None:
        return normalize(total, normalizer)
    return safe_divide(total, 1 if denominator is None else denominator)


def reduce_loss(
    loss: Tensor,
    reduction: str,
    *,
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    denominator: float | Tensor | None = None,
) -> Tensor:
    """Reduce an elementwise ``loss``.

    ``weight`` multiplies elementwise and must broadcast to ``loss.shape`` without changing it.
    "mean" divides the weighted sum by ``denominator`` (default: ``loss.numel()``, i.e. the
    number of elements, not the sum of weights — the torchvision/mmdetection convention) and
    ``normalizer`` replaces that by ``sum / max(normalizer, 1)``.
    Reductions over an empty loss return a zero that is still connected to the graph.
    """
    if weight is not None:
        check_broadcastable_to("weight", weight, loss.shape)
        loss = loss * weight.to(loss.dtype)
    if reduction == "none":
        return loss
    return finish(
        exact_sum(loss),
        reduction,
        normalizer=normalizer,
        denominator=loss.numel() if denominator is None else denominator,
    )
