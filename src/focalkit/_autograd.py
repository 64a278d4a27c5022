"""The autograd pattern shared by the losses' ``torch.autograd.Function`` s: forward computes
the gradient with the loss and keeps it on ``ctx.grad``; backward takes it once and scales it
in place by ``grad_output``; a second backward through a retained graph recomputes it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["refuse_double_backward", "stored_grad", "stored_grad_dtype"]


def refuse_double_backward(losses: str, hint: str = "") -> None:
    """The gradient is computed in forward, not built from differentiable ops, so a second
    derivative would silently be zero: refuse ``create_graph=True`` instead. ``losses`` names
    them in the message; ``hint`` is appended to it."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{losses} are differentiable once: their backward does not support "
            f"double backward (create_graph=True){hint}"
        )


def stored_grad(ctx, recompute: Callable[[], Tensor | None]) -> Tensor:
    """The gradient forward kept on ``ctx.grad``, handed over once (the caller may scale it in
    place); a later backward through the same retained graph gets ``recompute()`` (a forward
    pass asked for its gradient)."""
    grad, ctx.grad = ctx.grad, None
    if grad is None:
        grad = recompute()
    if grad is None:
        raise RuntimeError("focalkit: a loss recomputed in backward returned no gradient")
    return grad


def stored_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel keeps a gradient in from forward to backward, for inputs of ``dtype``.

    bfloat16 for bfloat16 inputs: the gradient handed back is bfloat16 anyway, so no float32
    tensor of the inputs' size is kept, and none is converted in backward (``grad_output``,
    a scale, then costs one more rounding). float32 otherwise: a float16 gradient stored
    before ``grad_output`` is applied would underflow where a loss scale (``GradScaler``) is
    there to prevent it; float32 inputs get float32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
