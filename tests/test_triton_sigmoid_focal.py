"""The Triton sigmoid focal kernel against the torch backend (Triton's interpreter on CPU).

The interpreter's set-up (``TRITON_INTERPRET=1`` at decoration, restored for the other test
modules of the worker) and the tolerance table are ``_triton_interp``'s.
"""

from __future__ import annotations

import pytest
import torch

import focalkit as fk
from _triton_interp import (  # noqa: F401 (interpret: autouse fixture)
    DTYPES,
    compare_backends,
    import_kernel,
    interpret,
    sigmoid_targets,
)
from focalkit.kernels import dispatch, resolve_backend

import_kernel("focalkit.kernels.triton_sigmoid_focal")
triton_scale = import_kernel("focalkit.kernels.triton_scale")

pytestmark = pytest.mark.triton

GAMMAS = [0.0, 0.5, 2.0]


def _compare(logits, targets, **kw):
    return compare_backends(fk.sigmoid_focal_loss, logits, targets, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["soft", "hard", "int_dense", "index"])
def test_matches_torch(dtype, kind):
    """Forward and gradient equal the torch backend for every alpha, gamma and reduction."""
    gen = torch.Generator().manual_seed(0)
    shape = (13, 7)
    logits = (3 * torch.randn(shape, generator=gen)).to(dtype)
    targets = sigmoid_targets(kind, shape, gen)
    alphas = [None, 0.25, torch.rand(7, generator=gen)]
    for gamma in GAMMAS:
        for alpha in alphas:
            for reduction in ("none", "mean", "sum"):
                _compare(logits, targets, gamma=gamma, alpha=alpha, reduction=reduction)
    _compare(logits, targets, reduction="mean", normalizer=3.0)


@pytest.mark.parametrize("shape", [(1,), (7,), (1003,), (3, 1001)])
def test_odd_sizes(shape):
    """Sizes that are not a multiple of the block, and more than one program."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(shape, generator=gen)
    for kind in ("soft", "index") if len(shape) > 1 else ("soft",):
        targets = sigmoid_targets(kind, shape, gen)
        for reduction in ("none", "sum"):
            _compare(logits, targets, reduction=reduction)


def test_non_contiguous_logits():
    """Strided logits give the torch backend's values and a gradient of their shape."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(9, 16, generator=gen)
    for logits in (base[:, ::2], base.t()):
        assert not logits.is_contiguous()
        for kind in ("soft", "index"):
            _compare(logits, sigmoid_targets(kind, logits.shape, gen), reduction="none")
            _compare(logits, sigmoid_targets(kind, logits.shape, gen), reduction="mean")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty(reduction):
    """Empty input: no launch, zero loss (not NaN) and an empty gradient."""
    logits = torch.empty(0, 4)
    for targets in (torch.empty(0, 4), torch.empty(0, dtype=torch.long)):
        loss, grad = _compare(logits, targets, reduction=reduction)
        assert grad.shape == (0, 4)
        assert torch.isfinite(loss).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_extreme_logits_finite(dtype, gamma):
    """|logit| = 100 gives finite loss and gradient, equal to the torch backend."""
    logits = torch.tensor([[-100.0, 100.0, -100.0, 100.0]]).to(dtype)
    for targets in (
        torch.tensor([[0.0, 1.0, 1.0, 0.0]]),
        torch.tensor([[0.3, 0.9, 0.0, 1.0]]),
        torch.tensor([1]),
    ):
        for reduction in ("none", "sum"):
            loss, grad = _compare(logits, targets, gamma=gamma, reduction=reduction)
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_module_and_retained_graph():
    """The Module forwards ``backend``; a second backward through a retained graph is exact."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 3, generator=gen, requires_grad=True)
    targets = torch.tensor([0, 3, 2, 1, 3])
    crit = fk.SigmoidFocalLoss(backend="triton")
    loss = crit(logits, targets)
    torch.testing.assert_close(loss, fk.sigmoid_focal_loss(logits, targets, backend="torch"))
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    logits.grad = None
    loss.backward()
    torch.testing.assert_close(logits.grad, first)


def _stored_gradients(loss: torch.Tensor) -> list[torch.Tensor]:
    """The gradients the loss's autograd nodes keep from forward (``ctx.grad``)."""
    found, todo, seen = [], [loss.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(getattr(node, "grad", None), torch.Tensor):
            found.append(node.grad)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return found


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float32),
    ],
    ids=str,
)
def test_stored_gradient_dtype(dtype, stored):
    """Between forward and backward the (N, C) kernels keep one gradient of the logits' size:
    bfloat16 for bfloat16 logits (no float32 copy kept, none converted in backward)."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(9, 5, generator=gen).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 5, (9,), generator=gen)
    for loss in (
        fk.sigmoid_focal_loss(x, labels, backend="triton"),
        fk.softmax_focal_loss(x, labels, backend="triton"),
        fk.ghm_c_loss(x, labels, backend="triton"),
    ):
        (grad,) = _stored_gradients(loss)
        assert grad.dtype == stored and grad.numel() == x.numel()


def test_float16_gradient_survives_a_loss_scale():
    """float16 logits, backward with a loss scale (GradScaler's idea) of 2**15: the kernel
    keeps a float32 gradient until the scale is applied, so elements whose unscaled gradient
    (3e-8, 8e-9, 2e-9) is below float16's smallest subnormal (6e-8) get their scaled gradient
    (the float64 one times 2**15), as on the torch backend, rather than 0."""
    x = torch.tensor([[-6.0, -6.5, -7.0, 3.0]], dtype=torch.float16)
    y = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    scale = 2.0**15
    ref = x.double().requires_grad_(True)
    fk.sigmoid_focal_loss(ref, y.double(), reduction="sum").backward()
    assert (ref.grad[0, :3] < 6e-8).all()
    for backend in ("torch", "triton"):
        z = x.clone().requires_grad_(True)
        loss = fk.sigmoid_focal_loss(z, y, reduction="sum", backend=backend)
        (grad,) = torch.autograd.grad(loss, z, torch.tensor(scale, dtype=torch.float16))
        torch.testing.assert_close(grad.double(), ref.grad * scale, rtol=2e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("go", [1.0, 0.37, 2.0**16, 0.0, -1.0, float("inf"), float("nan")])
def test_scale_unless_one_is_mul_in_float32(dtype, go):
    """The device-side scale equals ``mul_`` by the float32 scalar, NaN and inf included; at
    exactly 1 the gradient is left as it is. (Triton's interpreter rounds float32 to bfloat16
    by truncation, the GPU to nearest even as torch does: within one bfloat16 step here,
    exact in ``test_cuda.py``.)"""
    g = torch.randn(3001, generator=torch.Generator().manual_seed(7)).to(dtype)
    g[:3] = torch.tensor([float("nan"), 0.0, -0.0])
    expected = (g.float() * torch.tensor(go)).to(dtype)
    out = triton_scale.scale_unless_one(g.clone(), torch.tensor(go))
    rtol = 2.0**-7 if dtype == torch.bfloat16 and go != 1.0 else 0.0
    torch.testing.assert_close(out, expected, rtol=rtol, atol=0, equal_nan=True)
    assert torch.equal(out[1:3].float().sign(), expected[1:3].float().sign())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "reduction_kw",
    [
        {"reduction": "mean"},
        {"reduction": "sum"},
        {"normalizer": 7.0},
        {"normalizer": torch.tensor(3)},
        {"normalizer": 0.0},
    ],
    ids=["mean", "sum", "norm_float", "norm_tensor", "norm_zero"],
)
@pytest.mark.parametrize("scale", [1.0, 0.37, 2.0**12])
def test_reduction_in_the_kernel_and_any_grad_output(dtype, reduction_kw, scale):
    """The reduction's 1 / N is folded into the kernel's gradient and grad_output is applied
    on the device (skipped at 1): values and gradients equal the torch backend for
    ``loss.backward()``, a loss weight and a large loss scale, with ignored rows."""
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(11, 6, generator=gen).to(dtype)
    labels = sigmoid_targets("index", (11, 6), gen)
    compare_backends(fk.sigmoid_focal_loss, logits, labels, scale=scale, **reduction_kw)


def test_unsupported_options_fall_back_or_raise():
    """weight= and gamma='flsd53' run on torch under "auto" and raise under "triton"."""
    logits = torch.randn(4, 3)
    targets = torch.rand(4, 3)
    weight = torch.rand(4, 1)
    for kw in ({"weight": weight}, {"gamma": "flsd53"}, {"gamma": torch.tensor(1.5)}):
        auto = fk.sigmoid_focal_loss(logits, targets, backend="auto", **kw)
        torch.testing.assert_close(
            auto, fk.sigmoid_focal_loss(logits, targets, backend="torch", **kw)
        )
        with pytest.raises(ValueError, match="backend='triton'"):
            fk.sigmoid_focal_loss(logits, targets, backend="triton", **kw)


# --------------------------------------------------------------------------------------------
# the dispatch table
# --------------------------------------------------------------------------------------------


def test_auto_is_torch_on_cpu_without_interpreter(monkeypatch):
    """Without TRITON_INTERPRET a CPU tensor never goes to triton."""
    monkeypatch.delenv("TRITON_INTERPRET")
    x = torch.randn(3)
    # not triton: the CPU tensor goes to the chunked backend, or torch where a loss has none
    assert resolve_backend("sigmoid_focal_loss", "auto", x).backend == "chunked"
    assert resolve_backend("ghm_r_loss", "auto", x).backend == "torch"
    with pytest.raises(ValueError, match="backend='triton' requires a CUDA tensor"):
        resolve_backend("sigmoid_focal_loss", "triton", x)


def test_auto_picks_triton_under_interpreter():
    loss = "sigmoid_focal_loss"
    assert resolve_backend(loss, "auto", torch.randn(3)).backend == "triton"
    assert resolve_backend(loss, "torch", torch.randn(3)).backend == "torch"
    assert (
        resolve_backend("ghm_r_loss", "auto", torch.randn(3, dtype=torch.float64)).backend
        == "torch"
    )


def test_forced_triton_without_triton_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    x = torch.randn(3)
    assert resolve_backend("ghm_r_loss", "auto", x).backend == "torch"
    with pytest.raises(ValueError, match=r"backend='triton' requires triton.*found no importable"):
        fk.sigmoid_focal_loss(x, torch.rand(3), backend="triton")


def test_forced_triton_unsupported_dtype_raises():
    with pytest.raises(
        ValueError, match=r"backend='triton' requires dtype.*found dtype torch.float64"
    ):
        fk.sigmoid_focal_loss(torch.randn(3, dtype=torch.float64), torch.rand(3), backend="triton")


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend: expected one of"):
        fk.sigmoid_focal_loss(torch.randn(3), torch.rand(3), backend="cuda")
