"""The autograd pattern shared by the losses' ``torch.autograd.Function`` s: forward computes
the gradient with the loss and keeps it on ``ctx.grad``; backward takes it once and scales it
in place by ``grad_output``; a second backward through a retained graph recomputes it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["refuse_double_backward", "stored_grad"]


def refuse_double_backward(losses: str, hint: str = "") -> None:
    """The gradient is computed in forward, not built from differentiable ops, so a second
    derivative would silently be zero: refuse ``create_graph=True`` instead. ``losses`` names
    them in the message; ``hint`` is appended to it."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{losses} are differentiable once: their backward does not support "
            f"double backward (create_graph=True){hint}"
        )


def stored_grad(ctx, recompute: Callable[[], Tensor]) -> Tensor:
    """The gradient forward kept on ``ctx.grad``, handed over once (the caller may scale it in
    place); a later backward through the same retained graph gets ``recompute()``."""
    grad, ctx.grad = ctx.grad, None
    return recompute() if grad is None else grad
