"""Every fast path of the losses as a backend, and the one table that decides which runs.

* :mod:`~focalkit.kernels.dispatch`: the table (``backend="auto"`` and named backends).
* :mod:`~focalkit.kernels.chunked`: the CPU backend (cache-sized chunks, scratch buffers).
* ``triton_*.py``: the Triton kernels (imported only when the table picks them, so
  ``import focalkit`` works without triton).
"""

from __future__ import annotations

from .dispatch import (
    BACKENDS,
    LOSS_BACKENDS,
    RULES,
    TRITON_DTYPES,
    Choice,
    recorded_choices,
    resolve_backend,
    triton_available,
)

__all__ = [
    "BACKENDS",
    "LOSS_BACKENDS",
    "RULES",
    "TRITON_DTYPES",
    "Choice",
    "recorded_choices",
    "resolve_backend",
    "triton_available",
]
