"""Shared set-up of the Triton kernel tests (Triton's interpreter on CPU) and their one
tolerance table.

``TRITON_INTERPRET=1`` must be set when a kernel is decorated, so :func:`import_kernel` sets it
before triton is imported and restores it afterwards; the ``interpret`` fixture sets it again
per test, so other test modules in the same (xdist) worker keep the default CPU behaviour
(``backend="auto"`` -> torch).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch

# one tolerance table: (rtol, atol) for loss and gradient, by logits dtype
TOL = {
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-4),
}
DTYPES = list(TOL)  # the dtypes every kernel is tested in


def import_kernel(module: str) -> ModuleType:
    """Import ``module`` with the interpreter on (skipping the test module without triton)."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        return importlib.import_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _run_backend(loss_fn, logits, targets, backend, scale, **kw):
    x = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(x, targets, backend=backend, **kw)
    if kw.get("reduction") == "none":  # one grad_output per loss element, the same per backend
        grad_out = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1))
        grad_out = grad_out.to(logits.dtype)
    else:  # 0-dim: the kernels skip it on the device where it is 1
        grad_out = torch.full_like(loss, scale)
    loss.backward(grad_out)
    return loss.detach(), x.grad


def compare_backends(loss_fn, logits, targets, *, scale=1.0, **kw):
    """``loss_fn`` on the triton backend equals the torch backend in value, gradient, dtype and
    shape, within :data:`TOL` (``atol`` times ``scale``, the ``grad_output`` of a reduced
    loss: a loss weight or loss scale); returns the triton loss and gradient."""
    rtol, atol = TOL[logits.dtype]
    ref_loss, ref_grad = _run_backend(loss_fn, logits, targets, "torch", scale, **kw)
    loss, grad = _run_backend(loss_fn, logits, targets, "triton", scale, **kw)
    assert loss.dtype == ref_loss.dtype and loss.shape == ref_loss.shape
    assert grad.dtype == ref_grad.dtype and grad.shape == ref_grad.shape
    torch.testing.assert_close(loss.float(), ref_loss.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=rtol, atol=atol * scale)
    return loss, grad


def sigmoid_targets(kind: str, shape, gen: torch.Generator) -> torch.Tensor:
    """Targets of the sigmoid losses for logits of ``shape``: ``soft`` floats, ``hard`` 0/1
    floats, ``int_dense`` 0/1 with ignored (-100) entries, or class indices with positives,
    background (= C) and ignored rows."""
    num_classes = shape[-1]
    if kind == "soft":
        return torch.rand(shape, generator=gen)
    if kind == "hard":
        return (torch.rand(shape, generator=gen) > 0.7).float()
    if kind == "int_dense":  # 0/1 with ignored entries
        t = torch.randint(0, 2, shape, generator=gen)
        return torch.where(torch.rand(shape, generator=gen) < 0.2, -100, t)
    # class indices: positives, background (= C) and ignored rows
    labels = torch.randint(0, num_classes + 1, shape[:-1], generator=gen)
    return torch.where(torch.rand(shape[:-1], generator=gen) < 0.2, -100, labels)
