"""Device functions shared by the Triton kernels (imported only with triton installed)."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["log1p_small"]


@triton.jit
def log1p_small(e):
    """Accurate ``log(1 + e)`` for ``0 <= e <= 1`` without libdevice (Goldberg's trick:
    ``log(u) * e / (u - 1)`` with ``u = 1 + e`` rounded, exact where ``u - 1`` is 0)."""
    u = 1.0 + e
    d = u - 1.0
    return tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))
