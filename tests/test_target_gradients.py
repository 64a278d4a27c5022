"""Float targets that require grad get the gradient of the documented formula (knowledge
distillation and learned soft labels depend on it, as they do on
``F.binary_cross_entropy_with_logits`` and ``F.cross_entropy``).

Each test is a float64 ``gradcheck`` over logits and targets together, or a comparison with
autograd through the independent references of ``_focal_refs`` (whose focusing term is
differentiated through the target, with gamma a constant).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import focalkit as fk
from _focal_refs import sigmoid_focal_ref, softmax_focal_ref

F64 = {"rtol": 1e-9, "atol": 1e-12}


def _soft(shape, gen):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()


def _logits(shape, gen):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).requires_grad_()


ALPHAS = [None, 0.25, "vector"]
GAMMAS = [0.0, 0.5, 2.0, "flsd53", "tensor"]


def _alpha(kind, num_classes):
    if kind == "vector":
        return torch.linspace(0.2, 0.8, num_classes, dtype=torch.float64)
    return kind


def _gamma(kind):
    return torch.tensor(1.5, dtype=torch.float64) if kind == "tensor" else kind


@pytest.mark.parametrize("backend", ["torch", "chunked"])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_sigmoid_focal_gradcheck_over_logits_and_targets(alpha, gamma, backend):
    gen = torch.Generator().manual_seed(1)
    x, y = _logits((4, 3), gen), _soft((4, 3), gen)
    kw = {"alpha": _alpha(alpha, 3), "gamma": _gamma(gamma), "backend": backend}
    for reduction in ["none", "mean", "sum"]:

        def fn(a, b, reduction=reduction):
            return fk.sigmoid_focal_loss(a, b, reduction=reduction, **kw)

        assert torch.autograd.gradcheck(fn, (x, y))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, "flsd53"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_sigmoid_focal_target_gradient_equals_reference_autograd(alpha, gamma):
    """The target gradient equals autograd through the float64 reference (a separate
    transliteration of the formula), with elementwise weight, pos_weight, ignored entries."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3
    y = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    y[0, 0], y[1, 2] = 0.0, 1.0  # hard entries among the soft ones
    weight = torch.rand(6, 1, generator=gen, dtype=torch.float64) + 0.5
    kw = {"alpha": _alpha(alpha, 4), "gamma": gamma, "weight": weight}
    yg = y.clone().requires_grad_(True)
    fk.sigmoid_focal_loss(x, yg, **kw).backward()
    yr = y.clone().requires_grad_(True)
    sigmoid_focal_ref(x, yr, **kw).backward()
    torch.testing.assert_close(yg.grad, yr.grad, **F64)


def test_sigmoid_focal_target_gradient_with_pos_weight():
    gen = torch.Generator().manual_seed(3)
    x, y = _logits((5, 3), gen), _soft((5, 3), gen)
    pos_weight = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: fk.sigmoid_focal_loss(a, b, pos_weight=pos_weight, gamma=0.5), (x, y)
    )
    # gamma 0, alpha None: BCE with pos_weight, whose target gradient torch knows
    yg = y.detach().clone().requires_grad_(True)
    fk.sigmoid_focal_loss(x.detach(), yg, alpha=None, gamma=0.0, pos_weight=pos_weight).backward()
    yt = y.detach().clone().requires_grad_(True)
    F.binary_cross_entropy_with_logits(x.detach(), yt, pos_weight=pos_weight).backward()
    torch.testing.assert_close(yg.grad, yt.grad, **F64)


def test_sigmoid_focal_target_gradient_at_saturated_logits_is_finite():
    """|x| = 100 with targets near and at 0/1 (q -> 0, where (1-p_t)^(g-1) alone would blow
    up for g < 1): finite target gradients in float32 and float64."""
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([100.0, -100.0, 100.0, -100.0, 0.0], dtype=dtype)
        y = torch.tensor([1.0, 0.0, 0.999, 1e-6, 0.5], dtype=dtype, requires_grad=True)
        for gamma in (0.0, 0.25, 0.5, 2.0):
            y.grad = None
            fk.sigmoid_focal_loss(x, y, gamma=gamma, reduction="sum").backward()
            assert torch.isfinite(y.grad).all(), (dtype, gamma, y.grad)


def test_ignored_float_target_entries_get_no_target_gradient():
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.rand(3, 4, dtype=torch.float64)
    y[1, 2] = -100.0
    yg = y.clone().requires_grad_(True)
    fk.sigmoid_focal_loss(x, yg).backward()
    assert yg.grad[1, 2] == 0
    assert (yg.grad.flatten()[torch.arange(12) != 6] != 0).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, "flsd53"])
@pytest.mark.parametrize("options", ["plain", "weight_alpha", "smoothing"])
def test_softmax_focal_gradcheck_over_logits_and_probability_targets(gamma, options):
    gen = torch.Generator().manual_seed(4)
    x = _logits((4, 5), gen)
    t = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), -1).requires_grad_()
    kw: dict = {"gamma": gamma}
    if options == "weight_alpha":
        kw["weight"] = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
        kw["alpha"] = torch.linspace(0.2, 0.9, 5, dtype=torch.float64)
    elif options == "smoothing":
        kw["label_smoothing"] = 0.2
        kw["alpha"] = 0.5
    for reduction in ["none", "mean", "sum"]:
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: fk.softmax_focal_loss(a, b, reduction=r, **kw), (x, t)
        )
    tg = t.detach().clone().requires_grad_(True)
    fk.softmax_focal_loss(x.detach(), tg, **kw).backward()
    tr = t.detach().clone().requires_grad_(True)
    softmax_focal_ref(x.detach(), tr, **kw).backward()
    torch.testing.assert_close(tg.grad, tr.grad, **F64)


def test_softmax_focal_gamma_zero_target_gradient_equals_cross_entropy():
    """gamma 0: the target gradient of F.cross_entropy with probability targets."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    t = torch.softmax(torch.randn(3, 4, 2, generator=gen, dtype=torch.float64), 1)
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    tg = t.clone().requires_grad_(True)
    fk.softmax_focal_loss(x, tg, gamma=0.0, weight=w, label_smoothing=0.1).backward()
    tc = t.clone().requires_grad_(True)
    F.cross_entropy(x, tc, weight=w, label_smoothing=0.1).backward()
    torch.testing.assert_close(tg.grad, tc.grad, **F64)


@pytest.mark.parametrize("backend", ["torch", "chunked"])
def test_ghm_c_target_gradient_with_constant_weights(backend):
    """GHM-C: d L / d y = -w x / N with the weights w held constant (gradcheck would move
    elements between bins, so the check is the closed form, and gradcheck at bins=1 where
    every weight is 1)."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 2
    y = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    yg = y.clone().requires_grad_(True)
    loss = fk.ghm_c_loss(x, yg, bins=5, reduction="none", backend=backend)
    loss.sum().backward()
    with torch.no_grad():
        w = loss / fk.ghm_c_loss(x, y, bins=1, reduction="none", backend=backend)
    torch.testing.assert_close(yg.grad, -w * x, **F64)
    xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: fk.ghm_c_loss(a, b, bins=1, backend=backend), (xs, ys)
    )


def test_triton_backend_refuses_targets_that_require_grad(monkeypatch):
    """The kernels differentiate the logits only: "auto" falls back, a named "triton" raises
    (checked in Triton's interpreter, where every other rule holds)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(2, 3)
    y = torch.rand(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"backend='triton' requires.*targets that require grad"):
        fk.sigmoid_focal_loss(x, y, backend="triton")
    with pytest.raises(ValueError, match=r"backend='triton' requires.*targets that require grad"):
        fk.ghm_c_loss(x, y, backend="triton")
