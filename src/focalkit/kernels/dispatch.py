"""The one explicit table that decides which backend computes a loss.

``backend`` is one of :data:`BACKENDS`:

* ``"torch"``: the plain PyTorch path (every feature, every device and dtype).
* ``"triton"``: the Triton kernel; every rule of :data:`TRITON_RULES` must hold, otherwise a
  ``ValueError`` names ``backend``, what is required and what was found.
* ``"auto"``: ``"triton"`` where every rule of :data:`TRITON_RULES` holds, else ``"torch"``.

:data:`TRITON_RULES`, checked in order (all read at call time, nothing at import time):

=================  ===========================================================================
rule               requirement
=================  ===========================================================================
triton             ``triton`` is importable
device             the tensor is on CUDA, or on CPU with ``TRITON_INTERPRET=1`` set (Triton's
                   interpreter: slow, meant for the CPU tests, never picked on CPU otherwise)
dtype              float32, float16 or bfloat16 (float64 -- gradcheck, references -- is torch)
features           the kernel supports the requested options. On torch only:
                   ``sigmoid_focal_loss``: ``weight=`` (elementwise), ``gamma="flsd53"``, a
                   tensor gamma (``gamma="auto"`` in the Module); ``softmax_focal_loss``:
                   probability targets, ``label_smoothing > 0``, ``gamma="flsd53"``/tensor
                   gamma; IoU family: ``target_boxes`` that require grad (the kernel
                   differentiates ``pred_boxes`` only); GHM-C/GHM-R: none
=================  ===========================================================================

Inside ``torch.compile`` (while dynamo traces), ``"auto"`` is ``"torch"``: the torch path
compiles with ``fullgraph=True`` and Inductor fuses it into its own kernels, whereas a
``torch.autograd.Function`` launching hand-written Triton kernels is traced by dynamo only
partly (saved tensors on ``ctx``, launch grids) and differently from one torch version to the
next. A forced ``"triton"`` there still runs the kernels, eagerly, outside the compiled graph
(:func:`outside_compiled_graph`: a graph break, so not with ``fullgraph=True``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Collection
from typing import NamedTuple

import torch
from torch import Tensor

from .._compat import is_compiling

__all__ = [
    "BACKENDS",
    "TRITON_DTYPES",
    "TRITON_RULES",
    "check_backend",
    "outside_compiled_graph",
    "resolve_backend",
    "triton_available",
]

BACKENDS = ("auto", "torch", "triton")
TRITON_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


def check_backend(backend: str) -> None:
    """ValueError unless ``backend`` is one of :data:`BACKENDS` (Modules check at construction)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def triton_available() -> bool:
    """True if ``triton`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None (import blocked)
        return False


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class _Call(NamedTuple):
    tensor: Tensor
    dtype_ok: Collection[torch.dtype]
    unsupported: str | None


class _Rule(NamedTuple):
    name: str
    required: str
    holds: Callable[[_Call], bool]
    found: Callable[[_Call], str]


TRITON_RULES: tuple[_Rule, ...] = (
    _Rule(
        "triton",
        "triton to be installed (pip install 'focalkit[triton]')",
        lambda c: triton_available(),
        lambda c: "no importable 'triton' module",
    ),
    _Rule(
        "device",
        "a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1, for tests)",
        lambda c: c.tensor.is_cuda or (c.tensor.device.type == "cpu" and _interpret()),
        lambda c: (
            f"a tensor on {c.tensor.device} with TRITON_INTERPRET="
            f"{os.environ.get('TRITON_INTERPRET', '<unset>')}"
        ),
    ),
    _Rule(
        "dtype",
        "dtype float32, float16 or bfloat16",
        lambda c: c.tensor.dtype in c.dtype_ok,
        lambda c: f"dtype {c.tensor.dtype}",
    ),
    _Rule(
        "features",
        "options the triton kernel supports",
        lambda c: c.unsupported is None,
        lambda c: f"{c.unsupported} (only the torch backend supports it)",
    ),
)


def resolve_backend(
    backend: str,
    tensor: Tensor,
    dtype_ok: Collection[torch.dtype] = TRITON_DTYPES,
    unsupported: str | None = None,
) -> str:
    """Return ``"torch"`` or ``"triton"`` for ``backend`` in ``("auto", "torch", "triton")``.

    Args:
        backend: the user's choice.
        tensor: the main input (its device and dtype decide).
        dtype_ok: dtypes the kernel accepts (default float32, float16, bfloat16).
        unsupported: ``None``, or a description of a requested option the kernel lacks
            (e.g. ``"weight="``); "auto" then picks torch and "triton" raises.

    Raises:
        ValueError: unknown ``backend``, or ``"triton"`` forced where a rule fails.

    Inside ``torch.compile``, ``"auto"`` returns ``"torch"`` (see the module docstring).
    """
    check_backend(backend)
    if backend == "torch" or (backend == "auto" and is_compiling()):
        return "torch"
    call = _Call(tensor, dtype_ok, unsupported)
    for rule in TRITON_RULES:
        if not rule.holds(call):
            if backend == "triton":
                raise ValueError(
                    f"backend='triton' requires {rule.required}, found {rule.found(call)}"
                )
            return "torch"
    return "triton"


def outside_compiled_graph(fn: Callable) -> Callable:
    """Run ``fn`` (a Triton path's entry point) eagerly when called inside ``torch.compile``:
    dynamo breaks the graph around it instead of tracing the kernel launches. Outside
    ``torch.compile`` it is a plain call. (``torch.compiler.disable`` is applied at the first
    call under compile, not here: it imports dynamo, and with it triton, which
    ``import focalkit`` must not do.)"""
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not is_compiling():
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return call
