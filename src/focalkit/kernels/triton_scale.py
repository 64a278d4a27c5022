"""``grad *= grad_output`` on the device, skipped there when ``grad_output`` is exactly 1.

The loss kernels write their gradient in forward, so backward only has to apply the scalar
``grad_output``: with ``torch.mul_`` that is a full read and write of the gradient, 8 of the
20 bytes per float32 element that forward + backward then move (12 are the minimum: read
logits and targets, write the gradient), which caps forward + backward at 60% of the copy
bandwidth. The losses fold their reduction (``1 / N``, ``1 / normalizer``) into the stored
gradient, so after the usual ``loss.backward()`` (or ``(a + b).backward()``) their
``grad_output`` is exactly 1. Reading it on the host would sync; instead every program of
:func:`scale_unless_one` reads the scalar and returns at once when it is 1, and otherwise
scales its tiles (a loss weight, a ``GradScaler`` scale).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["apply_grad_output", "scale_unless_one"]

BLOCK = 1024  # elements per tile
MAX_PROGRAMS = 4096  # programs (each walks several tiles): few empty ones when grad_output is 1


@triton.jit
def _scale_kernel(grad_ptr, go_ptr, n, BLOCK: tl.constexpr):
    go = tl.load(go_ptr).to(tl.float32)
    if go != 1.0:  # NaN too: it propagates as in torch
        # (n - 1) // BLOCK + 1, not tl.cdiv: n + BLOCK - 1 overflows an i32 n near 2**31
        for tile in range(tl.program_id(0), (n - 1) // BLOCK + 1, tl.num_programs(0)):
            offs = tl.arange(0, BLOCK).to(tl.int64) + tile * BLOCK
            mask = offs < n
            g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(grad_ptr + offs, g * go, mask=mask)


def scale_unless_one(grad: Tensor, grad_output: Tensor) -> Tensor:
    """``grad`` (contiguous, float32 or bfloat16) multiplied in place by the 0-dim
    ``grad_output`` (in float32, rounded once), without a host sync; returns ``grad``."""
    n = grad.numel()
    if n > 0:
        go = grad_output.reshape(()).to(torch.float32)
        _scale_kernel[(max(1, min(triton.cdiv(n, BLOCK), MAX_PROGRAMS)),)](
            grad, go, n, BLOCK=BLOCK, enable_fp_fusion=True
        )
    return grad


def apply_grad_output(grad: Tensor, grad_output: Tensor) -> Tensor:
    """``grad`` times ``grad_output``, in place: a 0-dim ``grad_output`` (a reduced loss) by
    :func:`scale_unless_one`, else elementwise, ``grad_output`` aligned with ``grad``'s leading
    dimensions (per element, or per row of a per-row loss)."""
    if grad_output.dim() == 0:
        return scale_unless_one(grad, grad_output)
    extra = grad.dim() - grad_output.dim()
    return grad.mul_(grad_output.reshape(*grad_output.shape, *(1,) * extra))
