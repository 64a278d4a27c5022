"""Asymmetric Loss and Poly-1 (cross-entropy and focal): SPEC sections 10 and 11.

Check values with their gradients, the reductions to known losses (ASL with clip 0 and equal
exponents = focal loss without alpha; Poly-1 at epsilon 0 = ``F.cross_entropy`` for every
option combination / sigmoid focal loss), logit space, gradcheck over logits and soft
targets, finite gradients at ``|x| = 100``, autocast, ``torch.compile``, no host reads off the
CPU, argument errors and the Modules.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F

import focalkit as fk
import focalkit._compat as compat
from _generalized_refs import (
    asl_authors_code,
    asl_ref,
    poly1_ce_ref,
    poly1_focal_ref,
    reduce_ref,
)
from conftest import assert_autocast_float32, assert_retained_graph_backward
from focalkit.kernels import chunked
from focalkit.kernels.dispatch import recorded_choices

F64 = {"rtol": 1e-10, "atol": 1e-12}
SPEC = {"rtol": 1e-9, "atol": 1e-12}
IGNORE = -100
f64 = torch.float64


def _grad(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


@contextlib.contextmanager
def _meta_ok(monkeypatch):
    """'meta' tensors have no autocast kernel: make the losses' autocast guard a no-op."""
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(compat, "autocast_enabled", lambda device_type: False)
    yield


def _assert_compiles_and_runs_on_meta(monkeypatch, loss_fn, x, target, meta_target):
    """``loss_fn(x, target)`` under ``torch.compile(fullgraph=True)`` equals eager in value and
    gradient, and forward and backward run on 'meta' tensors (4 x 3 logits, ``meta_target``),
    where no value can be read."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: loss_fn(a, target), fullgraph=True)
    got, exp = _grad(compiled, x), _grad(lambda a: loss_fn(a, target), x)
    torch.testing.assert_close(got[0], exp[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], exp[1], rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()
    with _meta_ok(monkeypatch):
        xm = torch.randn(4, 3, device="meta", requires_grad=True)
        loss_fn(xm, meta_target).backward()
        assert xm.grad.device.type == "meta"


# ============================================================================================
# ASL
# ============================================================================================

ASL_X = [-3.0, 0.5, 3.0, -1.0, 2.0]
ASL_Y = [0.0, 0.0, 1.0, 1.0, 0.0]
ASL_LOSS = [0.0, 0.09125300409, 0.002304297574, 0.9600712226, 0.8464149507]
ASL_GRAD = [0.0, 0.2088736875, -0.004444227696, -0.7926495646, 0.7234899346]
ASL_GRAD_DETACHED = [0.0, 0.05903041626, -0.002249213447, -0.5344466454, 0.2956206377]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_asl_spec_check_values(dtype):
    """SPEC sec. 10 (gamma_neg 4, gamma_pos 1, clip 0.05): loss, sum, d/dx with the weights
    differentiated and detached."""
    x = torch.tensor(ASL_X, dtype=dtype)
    y = torch.tensor(ASL_Y, dtype=dtype)
    tol = SPEC if dtype == f64 else {"rtol": 2e-6, "atol": 1e-9}
    loss, grad = _grad(fk.asymmetric_loss, x, y, reduction="none")
    torch.testing.assert_close(loss.double(), torch.tensor(ASL_LOSS, dtype=f64), **tol)
    torch.testing.assert_close(grad.double(), torch.tensor(ASL_GRAD, dtype=f64), **tol)
    total = fk.asymmetric_loss(x, y, reduction="sum")
    assert float(total) == pytest.approx(1.900043475, rel=1e-9 if dtype == f64 else 2e-6)
    _, detached = _grad(fk.asymmetric_loss, x, y, reduction="none", detach_focusing=True)
    expected = torch.tensor(ASL_GRAD_DETACHED, dtype=f64)
    torch.testing.assert_close(detached.double(), expected, **tol)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_asl_clip_zero_equal_exponents_is_focal_loss_without_alpha(gamma, reduction):
    """SPEC sec. 6, for hard and soft targets (the authors' / timm soft form)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=gen, dtype=f64) * 3
    y = torch.rand(8, 5, generator=gen, dtype=f64)
    y[::2] = (y[::2] > 0.5).double()
    kw = {"gamma_pos": gamma, "gamma_neg": gamma, "clip": 0.0, "reduction": reduction}
    got, got_g = _grad(fk.asymmetric_loss, x, y, **kw)
    exp, exp_g = _grad(fk.sigmoid_focal_loss, x, y, alpha=None, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(got, exp, **F64)
    torch.testing.assert_close(got_g, exp_g, **F64)


ASL_CASES = [
    {},
    {"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05},
    {"gamma_pos": 0.5, "gamma_neg": 0.5, "clip": 0.2},
    {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.0},
    {"detach_focusing": True},
    {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.1},
]


@pytest.mark.parametrize("backend", ["torch", "chunked"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kw", ASL_CASES, ids=str)
def test_asl_matches_reference(monkeypatch, kw, reduction, backend):
    """float64, hard and soft targets, ignored entries and an elementwise weight, chunks of
    20 elements: values and gradients equal autograd through the reference."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 20)
    kw = {**kw, "backend": backend}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 6, generator=gen, dtype=f64) * 4
    x.view(-1)[::7] = 30.0
    y = torch.rand(9, 6, generator=gen, dtype=f64)
    y[::2] = (y[::2] > 0.7).double()
    ignored = torch.rand(9, 6, generator=gen) < 0.15
    targets = torch.where(ignored, float(IGNORE), y)
    w = torch.rand(9, 1, generator=gen, dtype=f64) + 0.5
    xg = x.clone().requires_grad_(True)
    loss = fk.asymmetric_loss(xg, targets, weight=w, reduction=reduction, **kw)
    xr = x.clone().requires_grad_(True)
    keep = (~ignored).double()
    ref_kw = {k: v for k, v in kw.items() if k != "backend"}
    ref = reduce_ref(asl_ref(xr, y, **ref_kw) * w * keep, reduction, keep.sum())
    torch.testing.assert_close(loss, ref, **F64)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, **F64)
    assert (xg.grad[ignored] == 0).all()


def test_asl_sum_reproduces_the_authors_code_and_batchmean():
    """reduction="sum" is the authors' AsymmetricLoss (and timm <= 1.0.30) where no
    probability reaches their 1e-8 clamp; timm's "batchmean" is sum / batch size."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, 10, generator=gen, dtype=f64) * 3
    y = (torch.rand(7, 10, generator=gen) > 0.7).double()
    authors = asl_authors_code(x, y)
    torch.testing.assert_close(fk.asymmetric_loss(x, y, reduction="sum"), authors, **F64)
    torch.testing.assert_close(fk.asymmetric_loss(x, y, normalizer=7), authors / 7, **F64)


def test_asl_in_logit_space_not_clamped():
    """A positive at x = -30 costs 30 (the codes' 1e-8 clamp: 18.42, with zero gradient)."""
    x = torch.tensor([-30.0], dtype=f64)
    y = torch.tensor([1.0], dtype=f64)
    loss, grad = _grad(fk.asymmetric_loss, x, y, gamma_pos=0.0, reduction="sum")
    assert float(loss) == pytest.approx(30.0, rel=1e-12)
    assert float(grad) == pytest.approx(-1.0, rel=1e-12)
    assert float(asl_authors_code(x, y, gamma_pos=0.0)) == pytest.approx(18.42068, rel=1e-6)


def test_asl_probability_shifting_is_a_hard_threshold():
    """A negative with p <= clip has loss 0 and gradient 0; just above, both are positive."""
    clip = 0.05
    at = torch.log(torch.tensor([clip / (1 - clip)], dtype=f64))
    x = torch.cat([at - 2, at - 1e-9, at + 1e-3])
    loss, grad = _grad(fk.asymmetric_loss, x, torch.zeros(3, dtype=f64), reduction="none")
    assert loss[:2].abs().max() == 0 and grad[:2].abs().max() == 0
    assert loss[2] > 0 and grad[2] > 0


@pytest.mark.parametrize("gammas", [(1.0, 4.0), (0.0, 0.5), (0.5, 2.0), (2.0, 2.0)], ids=str)
def test_asl_gradcheck_logits_and_soft_targets(gammas):
    """The focusing weight differentiated (with ``detach_focusing`` the gradient is not the
    function's derivative by design: it is held to the reference's detached autograd)."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 3, generator=gen, dtype=f64) * 2).requires_grad_()
    y = (torch.rand(4, 3, generator=gen, dtype=f64) * 0.9 + 0.05).requires_grad_()
    kw = {"gamma_pos": gammas[0], "gamma_neg": gammas[1]}
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: fk.asymmetric_loss(a, b, reduction=r, **kw), (x, y)
        )


@pytest.mark.parametrize("detach", [False, True])
def test_asl_target_gradient_equals_reference_autograd(detach):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, generator=gen, dtype=f64) * 3
    y = torch.rand(6, 4, generator=gen, dtype=f64) * 0.9 + 0.05
    yg = y.clone().requires_grad_(True)
    fk.asymmetric_loss(x, yg, detach_focusing=detach, reduction="sum").backward()
    yr = y.clone().requires_grad_(True)
    asl_ref(x, yr, detach_focusing=detach).sum().backward()
    torch.testing.assert_close(yg.grad, yr.grad, **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gammas", [(1.0, 4.0), (0.0, 0.5), (0.5, 0.5), (0.25, 0.0)], ids=str)
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_asl_finite_at_saturated_logits(clip, gammas, dtype):
    """SPEC: |x| = 100, y in {0, 1} (and soft, with targets that require grad): finite
    values and gradients for every exponent, 0 < gamma < 1 included."""
    x = torch.tensor([[-100.0, 100.0, -100.0, 100.0]], dtype=dtype, requires_grad=True)
    for y in ([[0.0, 1.0, 1.0, 0.0]], [[0.3, 0.7, 0.0, 1.0]]):
        t = torch.tensor(y, dtype=dtype, requires_grad=True)
        loss = fk.asymmetric_loss(x, t, gamma_pos=gammas[0], gamma_neg=gammas[1], clip=clip)
        loss.backward()
        assert (
            torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(t.grad).all()
        )
        x.grad = None


def test_asl_index_targets_equal_one_hot():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 4, generator=gen, dtype=f64)
    labels = torch.tensor([0, 4, 2, IGNORE, 1, 3, 4, 0])
    one_hot = torch.zeros(8, 4, dtype=f64)
    for row, c in enumerate(labels.tolist()):
        if c == IGNORE:
            one_hot[row] = IGNORE
        elif c < 4:
            one_hot[row, c] = 1.0
    a = _grad(fk.asymmetric_loss, x, labels)
    b = _grad(fk.asymmetric_loss, x, one_hot)
    torch.testing.assert_close(a[0], b[0], **F64)
    torch.testing.assert_close(a[1], b[1], **F64)


def test_asl_and_poly1_focal_auto_take_the_chunked_path_on_cpu():
    """No Triton kernel: "auto" is the chunked path on a CPU tensor (the plain formula over
    cache-sized chunks), and naming "triton" raises."""
    x, y = torch.randn(4, 3), torch.rand(4, 3)
    with recorded_choices() as choices:
        fk.asymmetric_loss(x, y)
        fk.poly1_focal_loss(x, y)
    assert [c.backend for c in choices] == ["chunked", "chunked"]
    for fn in (fk.asymmetric_loss, fk.poly1_focal_loss):
        with pytest.raises(
            ValueError, match=r"^backend: expected one of \('auto', 'torch', 'chunked'\)"
        ):
            fn(x, y, backend="triton")


def test_asl_autocast_compile_and_no_host_reads(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 5, generator=gen)
    y = torch.rand(6, 5, generator=gen)
    assert_autocast_float32(fk.asymmetric_loss, x, y)
    meta_y = torch.empty(4, 3, device="meta")
    _assert_compiles_and_runs_on_meta(monkeypatch, fk.asymmetric_loss, x, y, meta_y)


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"gamma_pos": -1.0}, ValueError, r"^gamma_pos: expected a finite number >= 0"),
        ({"gamma_neg": -0.1}, ValueError, r"^gamma_neg: expected a finite number >= 0"),
        ({"clip": -0.01}, ValueError, r"^clip: expected a probability margin in \[0, 1\)"),
        ({"clip": 1.0}, ValueError, r"^clip: expected a probability margin"),
        ({"clip": None}, TypeError, r"^clip: expected a number"),
        ({"detach_focusing": 1}, TypeError, r"^detach_focusing: expected True or False"),
        ({"weight": torch.tensor([-1.0, 1.0, 1.0])}, ValueError, r"^weight: expected values >= 0"),
        ({"reduction": "batchmean"}, ValueError, r"^reduction: expected one of"),
    ],
)
def test_asl_bad_arguments_name_the_argument(kw, error, message):
    with pytest.raises(error, match=message):
        fk.asymmetric_loss(torch.randn(2, 3), torch.rand(2, 3), **kw)
    if "weight" not in kw and "reduction" not in kw:
        with pytest.raises(error, match=message):
            fk.AsymmetricLoss(**kw)


def test_asl_targets_outside_unit_interval():
    with pytest.raises(ValueError, match=r"^targets: expected float targets in \[0, 1\]"):
        fk.asymmetric_loss(torch.randn(2, 2), torch.tensor([[0.5, 2.0], [0.0, 1.0]]))


def test_asl_module_equals_function():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 4, generator=gen)
    y = torch.rand(5, 4, generator=gen)
    kw = {"gamma_pos": 0.0, "gamma_neg": 3.0, "clip": 0.1, "detach_focusing": True}
    crit = fk.AsymmetricLoss(reduction="sum", **kw)
    torch.testing.assert_close(crit(x, y), fk.asymmetric_loss(x, y, reduction="sum", **kw))
    crit = fk.AsymmetricLoss(normalizer=5)
    torch.testing.assert_close(crit(x, y), fk.asymmetric_loss(x, y, normalizer=5))
    torch.testing.assert_close(crit(x, y, normalizer=2.0), fk.asymmetric_loss(x, y, normalizer=2.0))


# ============================================================================================
# Poly-1 cross-entropy
# ============================================================================================

POLY_X = [[1.0, 2.0, 0.5]]


@pytest.mark.parametrize("backend", ["torch", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_poly1_ce_spec_check_values(dtype, backend):
    """SPEC sec. 11: logits [1, 2, 0.5], y = 0: epsilon 1 (and its gradient), 2, -1; the soft
    target [0.9, 0.05, 0.05] with epsilon 1 (torch only: probability targets)."""
    x = torch.tensor(POLY_X, dtype=dtype)
    y = torch.tensor([0])
    rel = 1e-9 if dtype == f64 else 2e-6
    loss, grad = _grad(fk.poly1_cross_entropy, x, y, backend=backend)
    assert float(loss) == pytest.approx(2.233144886, rel=rel)
    expected = torch.tensor([[-0.9465355092, 0.7738632731, 0.1726722361]], dtype=f64)
    torch.testing.assert_close(grad.double(), expected, rtol=rel, atol=1e-12)
    for eps, value in ((2.0, 3.001920989), (-1.0, 0.6955926817)):
        got = fk.poly1_cross_entropy(x, y, epsilon=eps, backend=backend)
        assert float(got) == pytest.approx(value, rel=rel)
    soft = torch.tensor([[0.9, 0.05, 0.05]], dtype=dtype)
    assert float(fk.poly1_cross_entropy(x, soft)) == pytest.approx(2.192828471, rel=rel)


def _ce_problem(shape, gen, kind):
    x = torch.randn(shape, generator=gen, dtype=f64) * 3
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    if kind == "probabilities":
        return x, torch.softmax(
            torch.randn(shape, generator=gen, dtype=f64) * 2, dim=1 if len(shape) > 1 else 0
        )
    index_shape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    y = torch.randint(0, num_classes, index_shape, generator=gen)
    if y.dim():
        y.view(-1)[1::4] = IGNORE
    return x, y


CE_SHAPES = [(11, 5), (3, 4, 6), (2, 3, 2, 5), (7,)]
CE_OPTIONS = list(
    itertools.product(
        ["index", "probabilities"], [False, True], [0.0, 0.2], ["none", "mean", "sum"]
    )
)


@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize(("kind", "weighted", "smoothing", "reduction"), CE_OPTIONS, ids=str)
def test_poly1_ce_epsilon_zero_is_cross_entropy(shape, kind, weighted, smoothing, reduction):
    """epsilon 0 equals F.cross_entropy in value and gradient for every combination of
    shapes, target form, weight, ignore_index, label_smoothing and reduction, on every CPU
    backend that takes the combination."""
    gen = torch.Generator().manual_seed(len(shape) * 7 + int(weighted))
    x, y = _ce_problem(shape, gen, kind)
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    kw = {"label_smoothing": smoothing, "reduction": reduction}
    if weighted:
        kw["weight"] = torch.rand(num_classes, generator=gen, dtype=f64) + 0.5
    exp = _grad(F.cross_entropy, x, y, ignore_index=IGNORE, **kw)
    backends = ["torch"] + (["chunked"] if kind == "index" and smoothing == 0 else [])
    for backend in backends:
        got = _grad(fk.poly1_cross_entropy, x, y, epsilon=0.0, backend=backend, **kw)
        torch.testing.assert_close(got[0], exp[0], **F64)
        torch.testing.assert_close(got[1], exp[1], **F64)


@pytest.mark.parametrize("epsilon", [-1.0, 1.0, 2.0])
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize(("kind", "weighted", "smoothing", "reduction"), CE_OPTIONS[::3], ids=str)
def test_poly1_ce_matches_reference(
    monkeypatch, shape, kind, weighted, smoothing, reduction, epsilon
):
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 20)
    gen = torch.Generator().manual_seed(len(shape) * 11 + int(weighted))
    x, y = _ce_problem(shape, gen, kind)
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    kw = {"label_smoothing": smoothing, "reduction": reduction, "epsilon": epsilon}
    if weighted:
        kw["weight"] = torch.rand(num_classes, generator=gen, dtype=f64) + 0.5
    xr = x.clone().requires_grad_(True)
    ref = poly1_ce_ref(xr, y, **kw)
    ref.sum().backward()
    backends = ["torch"] + (["chunked"] if kind == "index" and smoothing == 0 else [])
    for backend in backends:
        with recorded_choices() as choices:
            got = _grad(fk.poly1_cross_entropy, x, y, backend=backend, **kw)
        assert [c.backend for c in choices] == [backend]
        torch.testing.assert_close(got[0], ref.detach(), **F64)
        torch.testing.assert_close(got[1], xr.grad, **F64)


def test_poly1_ce_auto_takes_chunked_for_indices_and_torch_for_the_rest():
    x = torch.randn(5, 4)
    with recorded_choices() as choices:
        fk.poly1_cross_entropy(x, torch.tensor([0, 1, 2, 3, 0]))
        fk.poly1_cross_entropy(x, torch.tensor([0, 1, 2, 3, 0]), label_smoothing=0.1)
        fk.poly1_cross_entropy(x, torch.softmax(x, -1))
    assert [c.backend for c in choices] == ["chunked", "torch", "torch"]
    with pytest.raises(ValueError, match=r"backend='chunked' requires options"):
        fk.poly1_cross_entropy(x, torch.softmax(x, -1), backend="chunked")


def test_poly1_ce_margin_of_100():
    """SPEC: p_t = 1 gives 0; a margin of 100 against the target gives 201 (CE 200 + eps 1),
    with finite gradients in every dtype."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16, f64):
        x = torch.tensor([[100.0, -100.0, -100.0]], dtype=dtype)
        right, g_right = _grad(fk.poly1_cross_entropy, x, torch.tensor([0]))
        wrong, g_wrong = _grad(fk.poly1_cross_entropy, x, torch.tensor([1]))
        assert 0.0 <= float(right) < 1e-30  # 0 to the precision (float64: 8e-87)
        assert float(wrong) == pytest.approx(201.0, rel=1e-2 if dtype == torch.bfloat16 else 1e-6)
        assert torch.isfinite(g_right).all() and torch.isfinite(g_wrong).all()


def test_poly1_ce_gradcheck_with_probability_targets():
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(4, 5, generator=gen, dtype=f64) * 2).requires_grad_()
    t = torch.softmax(torch.randn(4, 5, generator=gen, dtype=f64), -1).requires_grad_()
    w = torch.rand(5, generator=gen, dtype=f64) + 0.5
    for kw in ({}, {"weight": w, "label_smoothing": 0.2}, {"epsilon": -1.0}):
        for reduction in ("none", "mean", "sum"):
            assert torch.autograd.gradcheck(
                lambda a, b, r=reduction, k=kw: fk.poly1_cross_entropy(a, b, reduction=r, **k),
                (x, t),
            )


def test_poly1_ce_retained_graph_autocast_compile_and_no_host_reads(monkeypatch):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, 5, generator=gen)
    y = torch.tensor([0, 4, 2, IGNORE, 1, 3, 3])
    xr = x.double().requires_grad_(True)
    poly1_ce_ref(xr, y, reduction="sum").backward()
    assert_retained_graph_backward(fk.poly1_cross_entropy, x, y, xr.grad, reduction="sum")
    assert_autocast_float32(fk.poly1_cross_entropy, x, y)
    meta_y = torch.empty(4, dtype=torch.long, device="meta")
    _assert_compiles_and_runs_on_meta(monkeypatch, fk.poly1_cross_entropy, x, y, meta_y)


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"epsilon": -1.5}, ValueError, r"^epsilon: expected a number >= -1"),
        ({"epsilon": float("inf")}, ValueError, r"^epsilon: expected a finite number"),
        ({"epsilon": "1"}, TypeError, r"^epsilon: expected a number"),
        ({"label_smoothing": 1.5}, ValueError, r"^label_smoothing:"),
        ({"weight": torch.tensor([1.0, -1.0, 1.0])}, ValueError, r"^weight: expected values >= 0"),
        ({"weight": torch.rand(4)}, ValueError, r"^weight: expected a per-class tensor"),
        ({"reduction": "avg"}, ValueError, r"^reduction:"),
        ({"backend": "cuda"}, ValueError, r"^backend:"),
    ],
)
def test_poly1_ce_bad_arguments_name_the_argument(kw, error, message):
    with pytest.raises(error, match=message):
        fk.poly1_cross_entropy(torch.randn(2, 3), torch.tensor([0, 2]), **kw)


def test_poly1_ce_bad_targets():
    with pytest.raises(ValueError, match=r"^targets: expected class indices in \[0, 3\)"):
        fk.poly1_cross_entropy(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"^targets: expected integer class indices of shape"):
        fk.poly1_cross_entropy(torch.randn(2, 3), torch.tensor([0.0, 1.0]))


def test_poly1_ce_module_is_a_cross_entropy_drop_in():
    gen = torch.Generator().manual_seed(10)
    w = torch.rand(4, generator=gen) + 0.5
    crit = fk.Poly1CrossEntropyLoss(epsilon=2.0, weight=w, label_smoothing=0.1)
    assert set(crit.state_dict()) == set(torch.nn.CrossEntropyLoss(weight=w).state_dict())
    x = torch.randn(6, 4, generator=gen)
    y = torch.randint(0, 4, (6,), generator=gen)
    expected = fk.poly1_cross_entropy(x, y, epsilon=2.0, weight=w, label_smoothing=0.1)
    torch.testing.assert_close(crit(x, y), expected)
    zero = fk.Poly1CrossEntropyLoss(epsilon=0.0, weight=w, label_smoothing=0.1)
    torch.testing.assert_close(
        zero(x, y), torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(x, y)
    )
    with pytest.raises(ValueError, match=r"^epsilon"):
        fk.Poly1CrossEntropyLoss(epsilon=-2.0)


# ============================================================================================
# Poly-1 focal
# ============================================================================================

FOCAL_X = [-2.0, 0.0, 3.0]
FOCAL_Y = [0.0, 1.0, 1.0]
FOCAL_CASES = [
    (
        {},
        [0.003046466571, 0.1683216988, 0.0001339917428],
        [0.00812887274, -0.2620716988, -0.0003835538132],
    ),
    ({"epsilon": -1.0}, [-0.0003411223185, -0.08167830122, -7.935008055e-05], None),
    ({"alpha": None}, [0.00349735728, 0.2982867951, 0.0002159542362], None),
]


@pytest.mark.parametrize("dtype", [f64, torch.float32], ids=str)
@pytest.mark.parametrize("case", FOCAL_CASES, ids=lambda c: str(c[0]))
def test_poly1_focal_spec_check_values(case, dtype):
    """SPEC sec. 11: gamma 2, alpha 0.25, epsilon 1 (loss and d/dx), epsilon -1, alpha None."""
    kw, values, grads = case
    x = torch.tensor(FOCAL_X, dtype=dtype)
    y = torch.tensor(FOCAL_Y, dtype=dtype)
    tol = SPEC if dtype == f64 else {"rtol": 2e-6, "atol": 1e-9}
    loss, grad = _grad(fk.poly1_focal_loss, x, y, reduction="none", **kw)
    torch.testing.assert_close(loss.double(), torch.tensor(values, dtype=f64), **tol)
    if grads is not None:
        torch.testing.assert_close(grad.double(), torch.tensor(grads, dtype=f64), **tol)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("form", ["soft", "index", "int_dense"])
def test_poly1_focal_epsilon_zero_is_sigmoid_focal_loss(form, reduction):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(9, 4, generator=gen, dtype=f64) * 3
    if form == "soft":
        y = torch.rand(9, 4, generator=gen, dtype=f64)
    elif form == "index":
        y = torch.tensor([0, 4, 2, IGNORE, 1, 3, 4, 0, 2])
    else:
        y = torch.randint(0, 2, (9, 4), generator=gen)
        y[0, 1] = IGNORE
    w = torch.rand(9, 1, generator=gen, dtype=f64) + 0.5
    for kw in ({"alpha": 0.25, "gamma": 2.0}, {"alpha": None, "gamma": 0.5, "weight": w}):
        got = _grad(fk.poly1_focal_loss, x, y, epsilon=0.0, reduction=reduction, **kw)
        exp = _grad(fk.sigmoid_focal_loss, x, y, reduction=reduction, **kw)
        torch.testing.assert_close(got[0], exp[0], **F64)
        torch.testing.assert_close(got[1], exp[1], **F64)


@pytest.mark.parametrize("backend", ["torch", "chunked"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25, "vector"])
def test_poly1_focal_matches_reference_and_alpha_spares_the_poly_term(
    monkeypatch, alpha, gamma, backend
):
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 6)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(7, 3, generator=gen, dtype=f64) * 3
    y = torch.rand(7, 3, generator=gen, dtype=f64)
    y[::2] = (y[::2] > 0.5).double()
    a = torch.tensor([0.1, 0.5, 0.9], dtype=f64) if alpha == "vector" else alpha
    kw = {"alpha": a, "gamma": gamma, "epsilon": 1.5, "reduction": "none", "backend": backend}
    got = _grad(fk.poly1_focal_loss, x, y, **kw)
    xr = x.clone().requires_grad_(True)
    ref = poly1_focal_ref(xr, y, epsilon=1.5, alpha=a, gamma=gamma)
    ref.sum().backward()
    torch.testing.assert_close(got[0], ref.detach(), **F64)
    torch.testing.assert_close(got[1], xr.grad, **F64)
    # the poly term is the difference to focal loss, whatever alpha is
    focal = fk.sigmoid_focal_loss(x, y, alpha=a, gamma=gamma, reduction="none")
    q = torch.sigmoid(x) * (1 - y) + torch.sigmoid(-x) * y
    torch.testing.assert_close(got[0] - focal, 1.5 * q ** (gamma + 1), **F64)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_poly1_focal_gradcheck_logits_and_soft_targets(gamma):
    gen = torch.Generator().manual_seed(13)
    x = (torch.randn(4, 3, generator=gen, dtype=f64) * 2).requires_grad_()
    y = (torch.rand(4, 3, generator=gen, dtype=f64) * 0.9 + 0.05).requires_grad_()
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: fk.poly1_focal_loss(a, b, gamma=gamma, reduction=r), (x, y)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 2.0])
def test_poly1_focal_finite_at_saturated_logits(gamma, dtype):
    x = torch.tensor([[-100.0, 100.0], [100.0, -100.0]], dtype=dtype, requires_grad=True)
    for y in (torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([1, 2])):
        loss = fk.poly1_focal_loss(x, y, gamma=gamma)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        x.grad = None


def test_poly1_focal_autocast_compile_no_reads_and_module(monkeypatch):
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(6, 4, generator=gen)
    labels = torch.tensor([0, 4, 2, IGNORE, 1, 3])
    assert_autocast_float32(fk.poly1_focal_loss, x, labels)
    meta_labels = torch.empty(4, dtype=torch.long, device="meta")
    _assert_compiles_and_runs_on_meta(monkeypatch, fk.poly1_focal_loss, x, labels, meta_labels)
    alpha = torch.tensor([0.2, 0.4, 0.6, 0.8])
    crit = fk.Poly1FocalLoss(epsilon=-1.0, alpha=alpha, gamma=1.0, normalizer=2.0)
    torch.testing.assert_close(
        crit(x, labels),
        fk.poly1_focal_loss(x, labels, epsilon=-1.0, alpha=alpha, gamma=1.0, normalizer=2.0),
    )
    assert "alpha" not in crit.state_dict()  # a non-persistent buffer, as in SigmoidFocalLoss


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"gamma": -1.0}, ValueError, r"^gamma: expected a finite number >= 0"),
        ({"gamma": "flsd53"}, ValueError, r"^gamma: expected a number >= 0"),
        ({"alpha": 1.5}, ValueError, r"^alpha: expected a number in \[0, 1\]"),
        ({"epsilon": float("nan")}, ValueError, r"^epsilon: expected a finite number"),
        ({"reduction": "sum", "normalizer": 2.0}, ValueError, r"^normalizer:"),
    ],
)
def test_poly1_focal_bad_arguments_name_the_argument(kw, error, message):
    with pytest.raises(error, match=message):
        fk.poly1_focal_loss(torch.randn(2, 3), torch.rand(2, 3), **kw)
