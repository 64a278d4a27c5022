"""Quality Focal Loss and Varifocal Loss: SPEC sections 7 and 9.

Check values (float64, and float32 to its precision), the reductions to BCE, the two target
forms, every CPU backend against the independent float64 references of ``_generalized_refs``,
gradients w.r.t. logits, soft targets and scores (gradcheck), finite gradients at
``|x| = 100`` in float32 / float16 / bfloat16, autocast, ``torch.compile``, no host reads off
the CPU, ignored entries, argument errors and the Modules.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import focalkit as fk
import focalkit._compat as compat
from _generalized_refs import index_scores_to_dense, qfl_ref, reduce_ref, ultralytics_vfl, vfl_ref
from conftest import assert_autocast_float32, assert_retained_graph_backward
from focalkit.kernels import chunked
from focalkit.kernels.dispatch import recorded_choices

F64 = {"rtol": 1e-10, "atol": 1e-12}
SPEC = {"rtol": 1e-9, "atol": 1e-12}  # the check values carry 10 significant digits
F32 = {"rtol": 1e-5, "atol": 1e-6}
IGNORE = -100
CPU_BACKENDS = ["torch", "chunked"]
LOSSES = {"qfl": fk.quality_focal_loss, "vfl": fk.varifocal_loss}


def _ref(name, x, y, **kw):
    if name == "qfl":
        return qfl_ref(x, y, **kw)
    return vfl_ref(x, y, **kw)


def _grad(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


# --------------------------------------------------------------------------------------------
# SPEC check values
# --------------------------------------------------------------------------------------------

QFL_X = [[-2.0, 0.5, 1.0], [0.3, -1.0, 2.0]]
QFL_LOSS = [
    [0.001803562835, 0.3774116009, 0.002439491525],
    [0.2819237362, 0.02265805751, 1.650078179],
]
QFL_GRAD = [
    [0.004870940195, 0.5261518219, -0.01424189572],
    [0.4295064686, 0.05258112998, 1.07671373],
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("form", ["index", "dense"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_qfl_spec_check_values(dtype, form, backend):
    """SPEC sec. 7 (beta 2): labels [2, 3] (C = 3, row 2 background), scores [0.8, 0]."""
    x = torch.tensor(QFL_X, dtype=dtype)
    if form == "index":
        args = (torch.tensor([2, 3]), torch.tensor([0.8, 0.0], dtype=dtype))
    else:
        args = (torch.tensor([[0.0, 0.0, 0.8], [0.0, 0.0, 0.0]], dtype=dtype),)
    loss, grad = _grad(fk.quality_focal_loss, x, *args, reduction="none", backend=backend)
    tol = SPEC if dtype == torch.float64 else {"rtol": 2e-6, "atol": 1e-9}
    expected = torch.tensor(QFL_LOSS, dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, **tol)
    torch.testing.assert_close(grad.double(), torch.tensor(QFL_GRAD, dtype=torch.float64), **tol)
    sums = fk.quality_focal_loss(x, *args, reduction="none", backend=backend).sum(-1)
    rows = torch.tensor([0.3816546552, 1.954659973], dtype=torch.float64)
    torch.testing.assert_close(sums.double(), rows, **tol)


VFL_X = [-2.0, 0.0, 3.0, 1.0, 0.5]
VFL_Q = [0.0, 0.0, 0.9, 0.3, 0.0]
VFL_LOSS = [0.001352672126, 0.1299650964, 0.3137286164, 0.3039785063, 0.2830587006]
VFL_GRAD = [0.003653205147, 0.2237150964, 0.04731671414, 0.1293175736, 0.3946138664]
VFL_UNWEIGHTED = [0.001352672126, 0.1299650964, 0.3485873516, 1.013261688, 0.2830587006]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_vfl_spec_check_values(dtype, backend):
    """SPEC sec. 9: loss, d/dx, and iou_weighted=False."""
    x = torch.tensor(VFL_X, dtype=dtype)
    q = torch.tensor(VFL_Q, dtype=dtype)
    tol = SPEC if dtype == torch.float64 else {"rtol": 2e-6, "atol": 1e-9}
    loss, grad = _grad(fk.varifocal_loss, x, q, reduction="none", backend=backend)
    torch.testing.assert_close(loss.double(), torch.tensor(VFL_LOSS, dtype=torch.float64), **tol)
    torch.testing.assert_close(grad.double(), torch.tensor(VFL_GRAD, dtype=torch.float64), **tol)
    plain = fk.varifocal_loss(x, q, iou_weighted=False, reduction="none", backend=backend)
    expected = torch.tensor(VFL_UNWEIGHTED, dtype=torch.float64)
    torch.testing.assert_close(plain.double(), expected, **tol)


def test_vfl_positives_are_q_positive_not_the_ground_truth_columns():
    """The last column is a ground-truth column whose box has IoU 0: a negative here (the
    paper, mmdetection), no loss in Ultralytics' VarifocalLoss."""
    x = torch.tensor(VFL_X, dtype=torch.float64)
    q = torch.tensor(VFL_Q, dtype=torch.float64)
    label = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    ours = fk.varifocal_loss(x, q, reduction="none")
    theirs = ultralytics_vfl(x, q, label)
    torch.testing.assert_close(ours[:4], theirs[:4], **F64)
    assert float(theirs[4]) == 0.0
    assert float(ours[4]) == pytest.approx(0.2830587006, rel=1e-9)


def test_vfl_negative_branch_is_sigmoid_focal_negative_term():
    """SPEC sec. 9: at q = 0, VFL(alpha) is focal loss's y = 0 term with 1 - alpha_focal =
    alpha: the first check value is focal loss's 0.00135267213 (alpha 0.25)."""
    x = torch.tensor([-2.0, 0.3, 4.0], dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    vfl, vfl_g = _grad(fk.varifocal_loss, x, zeros, alpha=0.75, gamma=2.0, reduction="none")
    focal, focal_g = _grad(fk.sigmoid_focal_loss, x, zeros, alpha=0.25, reduction="none")
    torch.testing.assert_close(vfl, focal, **F64)
    torch.testing.assert_close(vfl_g, focal_g, **F64)
    assert float(vfl[0]) == pytest.approx(0.00135267213, rel=1e-8)


# --------------------------------------------------------------------------------------------
# reductions to known losses (SPEC sec. 6)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_qfl_beta_zero_is_bce(backend, reduction):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64) * 3
    y = torch.rand(9, 5, generator=gen, dtype=torch.float64)
    y[::2] = (y[::2] > 0.5).double()
    got, got_g = _grad(fk.quality_focal_loss, x, y, beta=0.0, reduction=reduction, backend=backend)
    exp, exp_g = _grad(F.binary_cross_entropy_with_logits, x, y, reduction=reduction)
    torch.testing.assert_close(got, exp, **F64)
    torch.testing.assert_close(got_g, exp_g, **F64)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_vfl_alpha_one_gamma_zero_unweighted_is_bce(backend, reduction):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64) * 3
    q = torch.rand(9, 5, generator=gen, dtype=torch.float64)
    q[q < 0.5] = 0.0  # negatives and soft positives
    kw = {"alpha": 1.0, "gamma": 0.0, "iou_weighted": False, "reduction": reduction}
    got, got_g = _grad(fk.varifocal_loss, x, q, backend=backend, **kw)
    exp, exp_g = _grad(F.binary_cross_entropy_with_logits, x, q, reduction=reduction)
    torch.testing.assert_close(got, exp, **F64)
    torch.testing.assert_close(got_g, exp_g, **F64)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_qfl_hard_targets_is_focal_loss_without_alpha(beta):
    """At y in {0, 1}, |y - p| = 1 - p_t: QFL is focal loss with gamma = beta, no alpha."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64) * 3
    y = (torch.rand(7, 4, generator=gen) > 0.6).double()
    got, got_g = _grad(fk.quality_focal_loss, x, y, beta=beta, reduction="sum")
    exp, exp_g = _grad(fk.sigmoid_focal_loss, x, y, alpha=None, gamma=beta, reduction="sum")
    torch.testing.assert_close(got, exp, **F64)
    torch.testing.assert_close(got_g, exp_g, **F64)


def test_qfl_zero_when_prediction_equals_target():
    """y = p gives loss 0 and a finite gradient for every beta > 0 (0^beta = 0)."""
    y = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    x = torch.log(y / (1 - y))
    for beta in (0.25, 0.5, 1.0, 2.0):
        loss, grad = _grad(fk.quality_focal_loss, x, y, beta=beta, reduction="none")
        assert torch.all(loss.abs() < 1e-15), (beta, loss)
        assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------------------------
# backends against the float64 references, the two target forms
# --------------------------------------------------------------------------------------------


def _problem(shape, gen, form):
    """Logits with saturated entries; dense soft targets (zeros and IoU-like positives, a few
    ignored) or (labels, scores) with background (= C) and ignored rows."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    x.view(-1)[::11] = 30.0
    x.view(-1)[5::13] = -30.0
    num_classes = shape[-1]
    labels = torch.randint(0, num_classes + 1, shape[:-1], generator=gen)
    labels.view(-1)[3::7] = IGNORE
    labels.view(-1)[::5] = num_classes
    scores = torch.rand(shape[:-1], generator=gen, dtype=torch.float64)
    scores.view(-1)[1::6] = 0.0  # a ground-truth column whose box has IoU 0
    dense, valid = index_scores_to_dense(labels, scores, num_classes)
    if form == "index":
        return x, (labels, scores), dense, valid
    dense = dense.clone()
    dense[valid == 0] = IGNORE
    return x, (dense,), dense.clamp(min=0), valid


CASES = [
    # (loss, shape, kw)
    ("qfl", (23, 6), {"beta": 2.0}),
    ("qfl", (23, 6), {"beta": 0.5}),
    ("qfl", (4, 5, 3), {"beta": 1.0}),
    ("qfl", (31, 1), {"beta": 2.0}),
    ("vfl", (23, 6), {"alpha": 0.75, "gamma": 2.0}),
    ("vfl", (23, 6), {"alpha": 0.5, "gamma": 0.5, "iou_weighted": False}),
    ("vfl", (4, 5, 3), {"alpha": 1.0, "gamma": 1.0}),
    ("vfl", (31, 1), {"alpha": 0.75, "gamma": 0.0}),
]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("form", ["index", "dense"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_backends_match_reference(monkeypatch, backend, case, form, reduction):
    """float64, chunks of 40 elements: values and gradients equal the reference, ignored
    rows/entries count in no denominator."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 40)
    name, shape, kw = case
    gen = torch.Generator().manual_seed(sum(shape))
    x, args, dense, valid = _problem(shape, gen, form)
    w = torch.linspace(0.5, 1.5, x.numel(), dtype=torch.float64).reshape(shape)
    with recorded_choices() as choices:
        xg = x.clone().requires_grad_(True)
        loss = LOSSES[name](xg, *args, reduction=reduction, backend=backend, **kw)
        (loss * (w if reduction == "none" else 1)).sum().backward()
    assert [c.backend for c in choices] == [backend]
    xr = x.clone().requires_grad_(True)
    ref = reduce_ref(_ref(name, xr, dense, **kw) * valid, reduction, valid.sum())
    (ref * (w if reduction == "none" else 1)).sum().backward()
    torch.testing.assert_close(loss, ref, **F64)
    torch.testing.assert_close(xg.grad, xr.grad, **F64)


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_chunked_equals_plain_formula_in_float32(monkeypatch, name):
    """float32, chunks of 40 elements, both forms, every reduction and a normalizer."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 40)
    gen = torch.Generator().manual_seed(5)
    for form in ("index", "dense"):
        x, args, _, _ = _problem((41, 7), gen, form)
        x = x.float()
        args = tuple(a.float() if a.is_floating_point() else a for a in args)
        for kw in ({"reduction": "none"}, {"reduction": "sum"}, {"normalizer": 9.0}):
            plain = _grad(LOSSES[name], x, *args, backend="torch", **kw)
            fast = _grad(LOSSES[name], x, *args, backend="chunked", **kw)
            torch.testing.assert_close(fast[0], plain[0], **F32)
            torch.testing.assert_close(fast[1], plain[1], **F32)


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_index_form_equals_dense_form_and_reads_no_background_score(name):
    """The index form gives the dense form's values and gradients; the scores of background
    and ignored rows are never read (NaN there changes nothing)."""
    gen = torch.Generator().manual_seed(6)
    x, (labels, scores), dense, valid = _problem((17, 4), gen, "index")
    scores = torch.where((labels >= 0) & (labels < 4), scores, float("nan"))
    dense_targets = torch.where(valid > 0, dense, torch.tensor(IGNORE, dtype=torch.float64))
    for backend in CPU_BACKENDS:
        for reduction in ("none", "mean"):
            a = _grad(LOSSES[name], x, labels, scores, reduction=reduction, backend=backend)
            b = _grad(LOSSES[name], x, dense_targets, reduction=reduction, backend=backend)
            torch.testing.assert_close(a[0], b[0], **F64)
            torch.testing.assert_close(a[1], b[1], **F64)


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_dense_iou_targets_take_the_sparse_positive_path(monkeypatch, name):
    """Dense IoU targets with few positives: the chunked path computes the negatives as focal
    loss's y = 0 term and the positives apart; a chunk with more than a quarter positives
    goes through the plain formula; both equal the reference."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 48)
    taken = []
    real = chunked._sparse_positive_chunk

    def spy(*args):
        done, partial = real(*args)
        taken.append(done)
        return done, partial

    monkeypatch.setattr(chunked, "_sparse_positive_chunk", spy)
    gen = torch.Generator().manual_seed(20)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64) * 3
    q = torch.zeros(40, 6, dtype=torch.float64)
    q[torch.arange(20), torch.randint(0, 6, (20,), generator=gen)] = torch.rand(
        20, generator=gen, dtype=torch.float64
    )
    q[20:] = torch.rand(20, 6, generator=gen, dtype=torch.float64)  # dense soft rows
    q[3, 4] = IGNORE
    for reduction in ("none", "sum"):
        got = _grad(LOSSES[name], x, q, reduction=reduction, backend="chunked")
        exp = _grad(LOSSES[name], x, q, reduction=reduction, backend="torch")
        torch.testing.assert_close(got[0], exp[0], **F64)
        torch.testing.assert_close(got[1], exp[1], **F64)
    assert True in taken and False in taken


def test_index_form_builds_no_one_hot_on_the_chunked_path(monkeypatch):
    """The chunked path never calls the one-hot helper of the plain formula."""
    import focalkit.functional.focal as focal

    calls = []
    real = focal._dense_target
    monkeypatch.setattr(focal, "_dense_target", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(7)
    x, args, _, _ = _problem((50, 8), gen, "index")
    for name in LOSSES:
        _grad(LOSSES[name], x.float(), args[0], args[1].float(), backend="chunked")
    assert calls == []


# --------------------------------------------------------------------------------------------
# gradients w.r.t. targets and scores; weights; gradcheck
# --------------------------------------------------------------------------------------------

QFL_KW = [{"beta": 0.0}, {"beta": 0.5}, {"beta": 2.0}]
VFL_KW = [
    {"gamma": 0.0},
    {"gamma": 0.5, "alpha": 0.5},
    {"gamma": 2.0},
    {"gamma": 2.0, "iou_weighted": False},
]
GRAD_CASES = [("qfl", kw) for kw in QFL_KW] + [("vfl", kw) for kw in VFL_KW]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradcheck_logits_and_soft_targets(case, backend):
    """float64 gradcheck over logits and dense soft targets together (targets in (0, 1),
    away from y = p, so every element stays on one branch)."""
    name, kw = case
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(4, 3, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    y = (torch.rand(4, 3, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    for reduction in ("none", "mean", "sum"):

        def fn(a, b, r=reduction):
            return LOSSES[name](a, b, reduction=r, backend=backend, **kw)

        assert torch.autograd.gradcheck(fn, (x, y))


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradcheck_logits_scores_and_weight_in_index_form(case):
    name, kw = case
    gen = torch.Generator().manual_seed(9)
    x = (torch.randn(6, 3, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    labels = torch.tensor([0, 3, 2, IGNORE, 1, 2])
    scores = (torch.rand(6, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    weight = (torch.rand(6, 1, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    for backend in CPU_BACKENDS:
        assert torch.autograd.gradcheck(
            lambda a, s, w, b=backend: LOSSES[name](a, labels, s, weight=w, backend=b, **kw),
            (x, scores, weight),
        )


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_target_gradient_equals_reference_autograd(case):
    """The targets' gradient equals autograd through the float64 reference (hard and soft
    entries, elementwise weight); at y = 0 VFL's branch is held fixed (only BCE moves)."""
    name, kw = case
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3
    y = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    y[0, 0], y[1, 2] = 0.0, 1.0
    weight = torch.rand(6, 1, generator=gen, dtype=torch.float64) + 0.5
    yg = y.clone().requires_grad_(True)
    LOSSES[name](x, yg, weight=weight, reduction="sum", **kw).backward()
    yr = y.clone().requires_grad_(True)
    (_ref(name, x, yr, **kw) * weight).sum().backward()
    if name == "vfl":  # the reference's weight jumps at q = 0; focalkit holds the branch
        zero = y == 0
        expected = yr.grad.clone()
        p = torch.sigmoid(x)
        neg_factor = kw.get("alpha", 0.75) * p ** kw.get("gamma", 2.0)
        expected[zero] = (neg_factor * -x * weight.expand_as(x))[zero]
        torch.testing.assert_close(yg.grad, expected, **F64)
    else:
        torch.testing.assert_close(yg.grad, yr.grad, **F64)


def test_weight_gradient_is_the_unweighted_loss():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(5, 3, generator=gen, dtype=torch.float64)
    for fn in LOSSES.values():
        w = torch.rand(5, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
        fn(x, y, weight=w, reduction="sum").backward()
        torch.testing.assert_close(w.grad, fn(x, y, reduction="none"), **F64)


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_second_backward_through_retained_graph(name):
    gen = torch.Generator().manual_seed(12)
    x, (labels, scores), dense, valid = _problem((11, 5), gen, "index")
    xr = x.clone().requires_grad_(True)
    _ref(name, xr, dense).mul(valid).sum().backward()
    assert_retained_graph_backward(
        LOSSES[name], x.float(), labels, xr.grad, scores=scores.float(), reduction="sum"
    )


def test_double_backward_is_refused():
    """The gradient is formed in forward: create_graph=True raises rather than return a
    second derivative of zero."""
    x = torch.randn(3, 2, requires_grad=True)
    for fn in LOSSES.values():
        loss = fn(x, torch.rand(3, 2))
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.grad(loss, x, create_graph=True)


# --------------------------------------------------------------------------------------------
# numerics: |x| = 100, low precision, autocast, compile, no host reads
# --------------------------------------------------------------------------------------------

EXPONENTS = [0.0, 0.25, 0.5, 1.0, 2.0, 5.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("exponent", EXPONENTS)
@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_finite_at_saturated_logits(name, exponent, dtype):
    """SPEC: |x| = 100 with targets 0, 0.7 and 1 gives finite values and gradients, for both
    target forms and every exponent >= 0 (0^e guarded for e < 1)."""
    key = "beta" if name == "qfl" else "gamma"
    x = torch.tensor([[-100.0, 100.0, -100.0], [100.0, -100.0, 100.0]], dtype=dtype)
    for targets in (
        (torch.tensor([[0.0, 0.7, 1.0], [0.0, 0.7, 1.0]]),),
        (torch.tensor([[0.7, 0.0, 0.0], [0.0, 0.0, 0.0]]),),
        (torch.tensor([1, 0]), torch.tensor([0.7, 1.0])),
    ):
        for backend in CPU_BACKENDS:
            xg = x.clone().requires_grad_(True)
            loss = LOSSES[name](xg, *targets, backend=backend, **{key: exponent})
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(xg.grad).all(), (targets, backend)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_low_precision_inputs_compute_in_float32(name, dtype):
    gen = torch.Generator().manual_seed(13)
    x = (torch.randn(20, 6, generator=gen) * 3).to(dtype)
    y = torch.rand(20, 6, generator=gen)
    loss, grad = _grad(LOSSES[name], x, y)
    ref, ref_g = _grad(LOSSES[name], x.float(), y)
    assert loss.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(loss.float(), ref, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(grad.float(), ref_g, rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_autocast_runs_in_float32(name):
    gen = torch.Generator().manual_seed(14)
    labels = torch.tensor([0, 4, 2, 1, IGNORE, 3])
    scores = torch.rand(6, generator=gen)
    x = torch.randn(6, 4, generator=gen)
    assert_autocast_float32(lambda a, t: LOSSES[name](a, t, scores), x, labels)
    assert_autocast_float32(lambda a, t: LOSSES[name](a, t, scores), x.bfloat16(), labels)


@pytest.mark.parametrize("form", ["index", "dense"])
@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_torch_compile_fullgraph_equals_eager(name, form):
    gen = torch.Generator().manual_seed(15)
    x, args, _, _ = _problem((9, 5), gen, form)
    x = x.float()
    args = tuple(a.float() if a.is_floating_point() else a for a in args)

    def fn(a):
        return LOSSES[name](a, *args, normalizer=3.0)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)  # "auto" takes the plain formula there
    got = _grad(compiled, x)
    exp = _grad(fn, x)  # eager "auto": the chunked path
    torch.testing.assert_close(got[0], exp[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], exp[1], rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()


@contextlib.contextmanager
def _no_reads_device(monkeypatch):
    """Where a tensor's values cannot be read (a 'meta' tensor: ``.item()``, ``bool()`` and
    ``float()`` raise), as on a GPU where reading would sync; autocast has no meta kernel."""
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(compat, "autocast_enabled", lambda device_type: False)
    yield


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_no_host_reads_off_the_cpu(monkeypatch, name):
    """Forward and backward run on 'meta' tensors (both forms, mean over non-ignored
    elements, a tensor normalizer): nothing on the hot path reads a value."""
    with _no_reads_device(monkeypatch):
        x = torch.randn(8, 3, device="meta", requires_grad=True)
        labels = torch.empty(8, dtype=torch.long, device="meta")
        scores = torch.empty(8, device="meta")
        dense = torch.empty(8, 3, device="meta")
        for args in ((labels, scores), (dense,)):
            for kw in ({}, {"normalizer": torch.empty((), device="meta")}):
                loss = LOSSES[name](x, *args, **kw)
                loss.backward()
                assert loss.device.type == "meta" and x.grad.device.type == "meta"


# --------------------------------------------------------------------------------------------
# ignored entries, reductions, bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_float_targets_equal_to_ignore_index_are_ignored(name, backend):
    """No loss, no gradient (logits and targets), not in the mean's denominator."""
    gen = torch.Generator().manual_seed(16)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    y = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    ignored = torch.rand(6, 4, generator=gen) < 0.3
    y[ignored] = IGNORE
    yg = y.clone().requires_grad_(True)
    loss = LOSSES[name](x, yg, backend=backend)
    loss.backward()
    keep = ~ignored
    ref = (_ref(name, x.detach(), torch.where(ignored, 0.0, y)) * keep).sum() / keep.sum()
    torch.testing.assert_close(loss.detach(), ref, **F64)
    assert (x.grad[ignored] == 0).all() and (yg.grad[ignored] == 0).all()


def test_all_ignored_mean_is_zero_with_zero_gradient():
    x = torch.randn(3, 2, requires_grad=True)
    for fn in LOSSES.values():
        loss = fn(x, torch.full((3,), IGNORE), torch.rand(3))
        loss.backward()
        assert float(loss.detach()) == 0.0 and loss.requires_grad
        assert (x.grad == 0).all()
        x.grad = None


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_normalizer_and_empty_input(name):
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(5, 3, generator=gen)
    y = torch.rand(5, 3, generator=gen)
    total = LOSSES[name](x, y, reduction="sum")
    torch.testing.assert_close(LOSSES[name](x, y, normalizer=2.5), total / 2.5)
    torch.testing.assert_close(LOSSES[name](x, y, normalizer=torch.tensor(0.0)), total)
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = LOSSES[name](empty, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    loss.backward()
    assert float(loss.detach()) == 0.0 and empty.grad.shape == (0, 4)


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_scores_are_required_with_indices_and_refused_with_dense(name):
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"^scores: required with class-index targets"):
        LOSSES[name](x, torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"^scores: only with class-index targets"):
        LOSSES[name](x, torch.rand(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match=r"^scores: expected shape \(4,\)"):
        LOSSES[name](x, torch.tensor([0, 1, 3, 2]), torch.rand(4, 1))
    with pytest.raises(TypeError, match=r"^scores: expected a floating-point tensor"):
        LOSSES[name](x, torch.tensor([0, 1, 3, 2]), torch.tensor([1, 0, 0, 1]))


@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_scores_outside_unit_interval(monkeypatch, name):
    """Checked where reading is free (CPU, eager: the positives' scores only), and anywhere
    with validate=True; validate=False reads nothing."""
    x = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 3, 2])
    bad = torch.tensor([0.5, 1.5, 7.0, 0.2])  # 7.0 is a background row's: not read
    with pytest.raises(ValueError, match=r"^scores: expected values in \[0, 1\] at the positive"):
        LOSSES[name](x, labels, bad)
    LOSSES[name](x, labels, torch.tensor([0.5, 0.9, 7.0, 0.2]))  # background: fine
    LOSSES[name](x, labels, bad, validate=False)
    import focalkit.functional.gfl as gfl

    monkeypatch.setattr(gfl, "may_read_values", lambda tensor: False)
    LOSSES[name](x, labels, bad)  # where reading would sync: not checked by default
    with pytest.raises(ValueError, match=r"^scores: expected values in \[0, 1\]"):
        LOSSES[name](x, labels, bad, validate=True)


@pytest.mark.parametrize(
    ("name", "kw", "message"),
    [
        ("qfl", {"beta": -0.5}, r"^beta: expected a finite number >= 0"),
        ("qfl", {"beta": float("nan")}, r"^beta: expected a finite number >= 0"),
        ("vfl", {"gamma": -1.0}, r"^gamma: expected a finite number >= 0"),
        ("vfl", {"alpha": -0.1}, r"^alpha: expected a finite number >= 0"),
        ("qfl", {"reduction": "avg"}, r"^reduction: expected one of"),
        ("vfl", {"reduction": "sum", "normalizer": 2.0}, r"^normalizer: only valid"),
        ("qfl", {"backend": "cuda"}, r"^backend: expected one of"),
    ],
)
def test_bad_arguments_name_the_argument(name, kw, message):
    with pytest.raises(ValueError, match=message):
        LOSSES[name](torch.randn(3, 2), torch.rand(3, 2), **kw)


def test_bad_targets_and_weights():
    x = torch.randn(3, 2)
    for fn in LOSSES.values():
        with pytest.raises(ValueError, match=r"^targets: expected float targets in \[0, 1\]"):
            fn(x, torch.tensor([[0.5, 1.5], [0.0, 0.1], [0.2, 0.3]]))
        with pytest.raises(ValueError, match=r"^targets: expected class indices in \[0, 2\]"):
            fn(x, torch.tensor([0, 5, 1]), torch.rand(3))
        with pytest.raises(ValueError, match=r"^weight: expected values >= 0"):
            fn(x, torch.rand(3, 2), weight=torch.tensor([1.0, -1.0]))
        with pytest.raises(ValueError, match=r"^targets: expected shape \(3, 2\)"):
            fn(x, torch.rand(2, 3))
        with pytest.raises(TypeError, match=r"^logits: expected a floating-point tensor"):
            fn(torch.ones(3, 2, dtype=torch.long), torch.rand(3, 2))
    with pytest.raises(TypeError, match=r"^iou_weighted: expected True or False"):
        fk.varifocal_loss(x, torch.rand(3, 2), iou_weighted=1)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

MODULES = {"qfl": fk.QualityFocalLoss, "vfl": fk.VarifocalLoss}


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("qfl", {"beta": 1.5, "reduction": "sum"}),
        ("qfl", {"ignore_index": -1, "normalizer": 4.0}),
        ("vfl", {"alpha": 0.5, "gamma": 1.0, "iou_weighted": False}),
        ("vfl", {"reduction": "none", "backend": "torch"}),
    ],
)
def test_module_equals_function(name, kw):
    gen = torch.Generator().manual_seed(18)
    x = torch.randn(6, 3, generator=gen)
    labels = torch.tensor([0, 3, 2, -1, 1, -100])
    scores = torch.rand(6, generator=gen)
    ignore = kw.get("ignore_index", IGNORE)
    labels = torch.where(labels < 0, ignore, labels)
    torch.testing.assert_close(
        MODULES[name](**kw)(x, labels, scores), LOSSES[name](x, labels, scores, **kw)
    )


def test_module_weight_buffer_and_per_call_override():
    gen = torch.Generator().manual_seed(19)
    x = torch.randn(4, 3, generator=gen)
    y = torch.rand(4, 3, generator=gen)
    w = torch.rand(4, 3, generator=gen)
    for name, module in MODULES.items():
        crit = module(weight=w, normalizer=2.0)
        assert "weight" in crit.state_dict()
        torch.testing.assert_close(crit(x, y), LOSSES[name](x, y, weight=w, normalizer=2.0))
        other = torch.rand(4, 3, generator=gen)
        torch.testing.assert_close(
            crit(x, y, weight=other, normalizer=5.0),
            LOSSES[name](x, y, weight=other, normalizer=5.0),
        )


def test_modules_check_hyperparameters_at_construction():
    with pytest.raises(ValueError, match=r"^beta"):
        fk.QualityFocalLoss(beta=-1.0)
    with pytest.raises(ValueError, match=r"^alpha"):
        fk.VarifocalLoss(alpha=-1.0)
    with pytest.raises(ValueError, match=r"^backend"):
        fk.VarifocalLoss(backend="gpu")
    with pytest.raises(ValueError, match=r"^reduction"):
        fk.QualityFocalLoss(reduction="mean_over_batch")
