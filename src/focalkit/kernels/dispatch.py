"""The one table that decides which backend computes a loss, and why.

Every loss has the plain PyTorch formula of its :mod:`focalkit.functional` module
(``"torch"``: every option, device, dtype and execution mode; the reference the other
backends are tested against) and may have fast paths (:data:`LOSS_BACKENDS`):

* ``"chunked"`` (:mod:`focalkit.kernels.chunked`): the CPU path. It walks the input in
  cache-sized chunks that write into a few scratch buffers (no temporary of the input's
  size), specialises hard 0/1 and class-index targets, and reads tensor values where that
  is free (a CPU tensor in eager mode).
* ``"triton"`` (``kernels/triton_*.py``): fused GPU kernels that compute the loss and its
  gradient in one pass.

``backend=`` takes ``"auto"`` or any backend name. A named backend runs wherever its rules
(:data:`RULES`) hold and raises ``ValueError`` (naming ``backend``, what is required and what
was found) where one fails. ``"auto"`` takes, in this order:

1. ``"torch"`` while ``torch.compile`` traces the call: the plain formula compiles with
   ``fullgraph=True`` and Inductor fuses it into its own kernels, whereas a hand-written
   kernel or a chunk loop would break the graph. (A named ``"chunked"`` or ``"triton"``
   still runs there, eagerly, outside the compiled graph: :func:`outside_compiled_graph`.)
2. each fast backend of the loss, in the order of :data:`LOSS_BACKENDS`, whose rules all hold
   and, for ``"triton"``, whose kernel is verified on the tensor's device
   (:data:`TRITON_VERIFIED`);
3. ``"torch"`` otherwise.

A Triton kernel counts as verified on a device when its GPU tests have passed there, on real
hardware: :data:`TRITON_VERIFIED` records, per kernel, the architectures (``"sm_90"``, ...)
and ``"interpreter"`` (the CPU test suite, under ``TRITON_INTERPRET=1``). Until a kernel's
tests have run on a GPU, ``"auto"`` does not take it there; a named ``"triton"`` still runs it.

=========  ==========  =====================================================================
backend    rule        requirement
=========  ==========  =====================================================================
triton     triton      ``triton`` is importable
triton     device      a CUDA tensor, or a CPU tensor with ``TRITON_INTERPRET=1`` (Triton's
                       interpreter: slow, for the tests, never picked on CPU otherwise)
triton     dtype       float32, float16 or bfloat16 (float64, for gradcheck and references,
                       is torch's)
triton     features    the kernel supports the requested options. Torch only:
                       ``sigmoid_focal_loss``: ``weight=``, ``gamma="flsd53"`` or a tensor
                       gamma (``gamma="auto"`` in the Module); ``softmax_focal_loss``:
                       probability targets, ``label_smoothing > 0``, ``gamma="flsd53"`` or a
                       tensor gamma; IoU family: ``target_boxes`` that require grad;
                       ``quality_focal_loss``, ``varifocal_loss``: ``weight=``, targets or
                       scores that require grad; ``distribution_focal_loss``: targets that
                       require grad; ``poly1_cross_entropy``: as ``softmax_focal_loss``
chunked    device      a CPU tensor
chunked    features    ``softmax_focal_loss``, ``poly1_cross_entropy``: class-index targets
                       without label smoothing
=========  ==========  =====================================================================

:func:`recorded_choices` records, for every loss call inside it, the backend taken and why.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor

from .._compat import is_compiling

__all__ = [
    "BACKENDS",
    "LOSS_BACKENDS",
    "RULES",
    "TRITON_DTYPES",
    "TRITON_VERIFIED",
    "Choice",
    "check_backend",
    "device_arch",
    "outside_compiled_graph",
    "recorded_choices",
    "resolve_backend",
    "triton_available",
]

BACKENDS = ("auto", "torch", "chunked", "triton")
TRITON_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})

# The fast backends of each loss, in the order "auto" tries them ("torch" is every loss's).
LOSS_BACKENDS: dict[str, tuple[str, ...]] = {
    "sigmoid_focal_loss": ("triton", "chunked"),
    "softmax_focal_loss": ("triton", "chunked"),
    "ghm_c_loss": ("triton", "chunked"),
    "ghm_r_loss": ("triton",),
    # the IoU family: iou, giou, diou, ciou, eiou, focal_eiou, siou, wiou, mpdiou, shape_iou
    "box_loss": ("triton",),
    "focal_l1_loss": (),
    "quality_focal_loss": ("triton", "chunked"),
    "varifocal_loss": ("triton", "chunked"),
    "distribution_focal_loss": ("triton", "chunked"),
    "asymmetric_loss": ("chunked",),
    "poly1_cross_entropy": ("triton", "chunked"),
    "poly1_focal_loss": ("chunked",),
}


class Choice(NamedTuple):
    """The backend that computes a call (``"torch"``, ``"chunked"`` or ``"triton"``) and why."""

    loss: str
    backend: str
    reason: str


def available_backends(loss: str) -> tuple[str, ...]:
    """``"auto"``, ``"torch"`` and the fast backends of ``loss`` (a key of LOSS_BACKENDS)."""
    return ("auto", "torch", *sorted(LOSS_BACKENDS[loss]))


def check_backend(backend: str, loss: str | None = None) -> None:
    """ValueError unless ``backend`` is a backend name (one ``loss`` has, if given); Modules
    check at construction."""
    names = BACKENDS if loss is None else available_backends(loss)
    if backend not in names:
        where = "" if loss is None else f" for {loss}"
        raise ValueError(f"backend: expected one of {names}{where}, got {backend!r}")


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
    unsupported: str | None  # an option this backend lacks, or None


class _Rule(NamedTuple):
    name: str
    required: str
    holds: Callable[[_Call], bool]
    found: Callable[[_Call], str]


_FEATURES = _Rule(
    "features",
    "options the backend supports",
    lambda c: c.unsupported is None,
    lambda c: f"{c.unsupported} (the torch backend supports it)",
)

RULES: dict[str, tuple[_Rule, ...]] = {
    "triton": (
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
        _FEATURES,
    ),
    "chunked": (
        _Rule(
            "device",
            "a CPU tensor",
            lambda c: c.tensor.device.type == "cpu",
            lambda c: f"a tensor on {c.tensor.device}",
        ),
        _FEATURES,
    ),
}


def _first_failure(backend: str, call: _Call) -> _Rule | None:
    for rule in RULES[backend]:
        if not rule.holds(call):
            return rule
    return None


_recorders = threading.local()


def _record(choice: Choice) -> Choice:
    if is_compiling():  # nothing to record from inside a traced graph
        return choice
    stack = getattr(_recorders, "stack", None)
    if stack:
        stack[-1].append(choice)
    return choice


@contextlib.contextmanager
def recorded_choices() -> Iterator[list[Choice]]:
    """Collect the :class:`Choice` of every loss call made inside the block (this thread).

    Example:
        >>> import torch, focalkit as fk
        >>> from focalkit.kernels.dispatch import recorded_choices
        >>> with recorded_choices() as choices:
        ...     _ = fk.sigmoid_focal_loss(torch.zeros(2, 3), torch.tensor([0, 3]))
        >>> choices[0].backend
        'chunked'
        >>> choices[0].reason  # doctest: +ELLIPSIS
        'auto: a CPU tensor in eager mode...'
    """
    stack = getattr(_recorders, "stack", None)
    if stack is None:
        stack = _recorders.stack = []
    stack.append([])
    try:
        yield stack[-1]
    finally:
        stack.pop()


def resolve_backend(
    loss: str,
    backend: str,
    tensor: Tensor,
    *,
    unsupported: Mapping[str, str | None] | None = None,
    dtype_ok: Collection[torch.dtype] = TRITON_DTYPES,
) -> Choice:
    """The backend that computes ``loss`` for the user's ``backend``, and why.

    Args:
        loss: a key of :data:`LOSS_BACKENDS`.
        backend: the user's choice: ``"auto"`` or a backend name.
        tensor: the main input (its device and dtype decide).
        unsupported: per fast backend, ``None`` or a description of a requested option it
            lacks (e.g. ``{"triton": "weight="}``); "auto" then skips it and naming it raises.
        dtype_ok: dtypes the Triton kernel accepts (default float32, float16, bfloat16).

    Raises:
        ValueError: an unknown ``backend``, one the loss does not have, or a named backend
            whose rule fails.
    """
    check_backend(backend, loss)
    unsupported = unsupported or {}
    if backend == "torch":
        return _record(Choice(loss, "torch", "requested"))
    if backend != "auto":
        failed = _first_failure(backend, _Call(tensor, dtype_ok, unsupported.get(backend)))
        if failed is not None:
            call = _Call(tensor, dtype_ok, unsupported.get(backend))
            raise ValueError(
                f"backend={backend!r} requires {failed.required}, found {failed.found(call)}"
            )
        return _record(Choice(loss, backend, "requested"))
    if is_compiling():
        return _record(Choice(loss, "torch", "auto: inside torch.compile (Inductor fuses it)"))
    skipped: list[str] = []
    for name in LOSS_BACKENDS[loss]:
        call = _Call(tensor, dtype_ok, unsupported.get(name))
        failed = _first_failure(name, call)
        unverified = _unverified(loss, tensor) if name == "triton" and failed is None else None
        if unverified is not None:
            skipped.append(f"triton skipped, verified: {unverified}")
            continue
        if failed is None:
            why = "; ".join(skipped)
            return _record(Choice(loss, name, f"auto: {_WHY[name]}" + (f" ({why})" if why else "")))
        skipped.append(f"{name} skipped, {failed.name}: {failed.found(call)}")
    why = "; ".join(skipped) if skipped else "no fast backend for this loss"
    return _record(Choice(loss, "torch", f"auto: {why}"))


_WHY = {
    "triton": "a CUDA tensor the kernel supports",
    "chunked": "a CPU tensor in eager mode",
}

_F = TypeVar("_F", bound=Callable[..., Any])


#: Where each Triton kernel's tests have passed (see the module docstring). The kernels have
#: run in Triton's interpreter and been compiled for sm_90 (``tests/test_triton_compile.py``),
#: but no GPU test has run yet: "auto" takes none of them on a CUDA device.
TRITON_VERIFIED: dict[str, frozenset[str]] = {
    "sigmoid_focal_loss": frozenset({"interpreter"}),
    "softmax_focal_loss": frozenset({"interpreter"}),
    "ghm_c_loss": frozenset({"interpreter"}),
    "ghm_r_loss": frozenset({"interpreter"}),
    "box_loss": frozenset({"interpreter"}),
    "quality_focal_loss": frozenset({"interpreter"}),
    "varifocal_loss": frozenset({"interpreter"}),
    "distribution_focal_loss": frozenset({"interpreter"}),
    "poly1_cross_entropy": frozenset({"interpreter"}),
}


@functools.cache
def _cuda_arch(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def device_arch(tensor: Tensor) -> str:
    """``"sm_XY"`` for a CUDA tensor, ``"interpreter"`` for a CPU tensor under
    ``TRITON_INTERPRET=1``, else the device type."""
    if tensor.is_cuda:
        return _cuda_arch(tensor.device.index if tensor.device.index is not None else 0)
    if tensor.device.type == "cpu" and _interpret():
        return "interpreter"
    return tensor.device.type


def _unverified(loss: str, tensor: Tensor) -> str | None:
    """Why "auto" may not take the Triton kernel of ``loss`` on ``tensor``'s device."""
    arch = device_arch(tensor)
    verified = TRITON_VERIFIED.get(loss, frozenset())
    if arch in verified:
        return None
    where = ", ".join(sorted(verified)) or "nowhere"
    return f"the {loss} kernel is not verified on {arch} (verified: {where})"


def outside_compiled_graph(fn: _F) -> _F:
    """Run ``fn`` (a fast path's entry point) eagerly when called inside ``torch.compile``:
    dynamo breaks the graph around it instead of tracing kernel launches or chunk loops.
    Outside ``torch.compile`` it is a plain call. (``torch.compiler.disable`` is applied at
    the first call under compile, not here: it imports dynamo, and with it triton, which
    ``import focalkit`` must not do.)"""
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not is_compiling():
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return call  # type: ignore[return-value]
