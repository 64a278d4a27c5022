"""Optional fast paths and the one table that decides which backend runs a loss.

Triton is imported lazily (only when :func:`resolve_backend` picks it), so ``import focalkit``
works without it.
"""

from __future__ import annotations

from .dispatch import BACKENDS, TRITON_DTYPES, TRITON_RULES, resolve_backend, triton_available

__all__ = ["BACKENDS", "TRITON_DTYPES", "TRITON_RULES", "resolve_backend", "triton_available"]
