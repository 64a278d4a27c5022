"""Checks shared by the sigmoid and softmax focal-loss tests (autograd and autocast
behaviour), each taking the loss function and a float64 reference gradient."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

F32 = {"rtol": 1e-5, "atol": 1e-6}


def assert_retained_graph_backward(
    loss_fn: Callable[..., Tensor], logits: Tensor, targets: Tensor, ref_grad: Tensor, **kw
) -> None:
    """``loss_fn(..., reduction="sum")`` keeps its gradient from forward and scales it in place
    in backward; a second backward through the retained graph must recompute it, so the first
    gradient and the second (``grad_output = 3``) both equal the reference."""
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, targets, reduction="sum", **kw)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    loss.backward(torch.tensor(3.0))
    torch.testing.assert_close(first.double(), ref_grad, **F32)
    torch.testing.assert_close(x.grad.double(), 3 * ref_grad, **F32)


def assert_autocast_float32(
    loss_fn: Callable[..., Tensor],
    logits: Tensor,
    targets: Tensor,
    ref_targets: Tensor | None = None,
) -> None:
    """Under CPU bfloat16 autocast the loss is computed and returned in float32 (equal to the
    float32 call, with ``ref_targets`` if given) and the gradient comes back in the logits'
    dtype."""
    x32 = logits.detach().float().clone().requires_grad_(True)
    ref = loss_fn(x32, targets if ref_targets is None else ref_targets)
    ref.backward()
    x = logits.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(x, targets)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == logits.dtype
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-6, atol=1e-7)
    tol = (
        {"rtol": 1e-6, "atol": 1e-8}
        if logits.dtype == torch.float32
        else {"rtol": 1e-2, "atol": 1e-4}
    )
    torch.testing.assert_close(x.grad.float(), x32.grad, **tol)
