"""Softmax focal loss and its Module: float64 reference (``_focal_refs``), F.cross_entropy
equivalence at gamma = 0, numerics, properties, gamma="auto" and the argument checks of its
own. What every loss shares (shapes, Module == function, gradcheck, double backward, empty
inputs, torch.compile, autocast, retained graphs, CPU backends, generic argument errors) is
checked once for all of them in ``test_contract.py``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import focalkit as fk
from _focal_refs import softmax_focal_ref
from conftest import (
    F32,
    F64,
    HYP,
    IGNORE,
    REDUCTIONS,
    assert_auto_gamma_schedule,
    assert_close_as,
    assert_raises,
    focal_alpha,
    make_gen,
    softmax_problem,
    value_and_grad,
)
from focalkit.kernels import chunked

GAMMAS = [0.0, 0.5, 1.0, 2.0, 5.0, "flsd53"]


def _ref_value_and_grad(logits, targets, **kw):
    """The float64 reference's value and gradient (conftest.value_and_grad)."""
    return value_and_grad(softmax_focal_ref, logits.double(), targets, **kw)


# ------------------------------------------------------------------------------------------
# 1. SPEC check values
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spec_check_values_softmax(dtype):
    x = torch.tensor([[1.0, 2.0, 0.5]], dtype=dtype)
    y = torch.tensor([0])
    plain = fk.softmax_focal_loss(x, y, gamma=2.0)
    weighted = fk.softmax_focal_loss(
        x, y, gamma=2.0, alpha=torch.tensor([0.25, 0.5, 0.75], dtype=dtype)
    )
    assert plain.dtype == dtype
    assert plain.item() == pytest.approx(0.8654664, rel=1e-6)
    assert weighted.item() == pytest.approx(0.2163666, rel=1e-6)
    # the 1-D (C,) form with a 0-dim target is the same sample
    assert fk.softmax_focal_loss(x[0], y[0]).item() == pytest.approx(0.8654664, rel=1e-6)


def test_spec_check_values_reference():
    """The independent reference reproduces SPEC's numbers (guards the reference)."""
    x = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    assert softmax_focal_ref(x, y).item() == pytest.approx(0.8654664, rel=1e-6)
    a = torch.tensor([0.25, 0.5, 0.75])
    assert softmax_focal_ref(x, y, alpha=a).item() == pytest.approx(0.2163666, rel=1e-6)


# ------------------------------------------------------------------------------------------
# 2. values and gradients against the float64 reference
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", ["plain", "weight", "weight_ls"])
@pytest.mark.parametrize("form", ["index", "prob"])
@pytest.mark.parametrize("alpha_kind", ["none", "float", "vector"])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_matches_reference_float32(gamma, alpha_kind, form, options):
    gen = make_gen(101)
    C = 5
    logits, targets = softmax_problem((8, C), form, gen)
    kw = {"gamma": gamma, "alpha": focal_alpha(alpha_kind, C, torch.float32)}
    if options != "plain":
        kw["weight"] = torch.tensor([1.0, 0.5, 2.0, 0.25, 1.5])
    if options == "weight_ls":
        kw["label_smoothing"] = 0.1
    for reduction in REDUCTIONS:
        got, got_g = value_and_grad(
            fk.softmax_focal_loss, logits, targets, reduction=reduction, **kw
        )
        exp, exp_g = _ref_value_and_grad(logits, targets, reduction=reduction, **kw)
        assert got.dtype == torch.float32 and got.shape == exp.shape
        assert_close_as(got, exp, F32)
        assert_close_as(got_g, exp_g, F32)


@pytest.mark.parametrize("shape", [(7,), (6, 4), (3, 4, 5), (2, 3, 2, 3)])
@pytest.mark.parametrize("form", ["index", "prob"])
@pytest.mark.parametrize("gamma", [0.5, 2.0, "flsd53"])
def test_matches_reference_shapes_float64(shape, form, gamma):
    gen = make_gen(103)
    C = shape[0] if len(shape) == 1 else shape[1]
    logits, targets = softmax_problem(shape, form, gen, dtype=torch.float64)
    weight = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    for reduction, ls, alpha in itertools.product(REDUCTIONS, [0.0, 0.2], [None, 0.5]):
        kw = {"gamma": gamma, "weight": weight, "label_smoothing": ls, "alpha": alpha}
        got, got_g = value_and_grad(
            fk.softmax_focal_loss, logits, targets, reduction=reduction, **kw
        )
        exp, exp_g = _ref_value_and_grad(logits, targets, reduction=reduction, **kw)
        assert got.dtype == torch.float64 and got.shape == exp.shape
        assert_close_as(got, exp, F64)
        assert_close_as(got_g, exp_g, F64)


def test_alpha_vector_float64_precision():
    """A float64 alpha vector is used at float64 precision with float64 logits."""
    gen = make_gen(107)
    logits, targets = softmax_problem((6, 3), "index", gen, dtype=torch.float64)
    alpha = torch.tensor([0.1, 0.3, 0.7], dtype=torch.float64)  # not float32-representable
    got, got_g = value_and_grad(fk.softmax_focal_loss, logits, targets, alpha=alpha)
    exp, exp_g = _ref_value_and_grad(logits, targets, alpha=alpha)
    assert_close_as(got, exp, F64)
    assert_close_as(got_g, exp_g, F64)


def test_gamma_tensor_equals_gamma_float():
    gen = make_gen(109)
    logits, targets = softmax_problem((6, 4), "index", gen)
    a = value_and_grad(fk.softmax_focal_loss, logits, targets, gamma=torch.tensor(1.5))
    b = value_and_grad(fk.softmax_focal_loss, logits, targets, gamma=1.5)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("form", ["index", "prob"])
@pytest.mark.parametrize(
    "normalizer",
    [3.0, 0.5, 0.0, torch.tensor(4.0), torch.tensor(0.0)],
    ids=["f3", "f0.5", "f0", "t4", "t0"],
)
def test_normalizer(normalizer, form):
    gen = make_gen(113)
    logits, targets = softmax_problem((6, 3), form, gen)
    kw = {"weight": torch.tensor([1.0, 2.0, 0.5])}
    got, got_g = value_and_grad(fk.softmax_focal_loss, logits, targets, normalizer=normalizer, **kw)
    n = float(normalizer)
    exp, exp_g = _ref_value_and_grad(logits, targets, normalizer=n, **kw)
    assert torch.isfinite(got) and torch.isfinite(got_g).all()
    assert_close_as(got, exp, F32)
    assert_close_as(got_g, exp_g, F32)
    summed = fk.softmax_focal_loss(logits, targets, reduction="sum", **kw)
    assert_close_as(got, summed / max(n, 1.0), F32)


def test_custom_ignore_index_matches_cross_entropy():
    gen = make_gen(129)
    logits, targets = softmax_problem((6, 4), "index", gen, dtype=torch.float64)
    targets = torch.where(targets == IGNORE, 255, targets)
    a = value_and_grad(fk.softmax_focal_loss, logits, targets, gamma=0.0, ignore_index=255)
    b = value_and_grad(F.cross_entropy, logits, targets, ignore_index=255)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, "flsd53"])
@pytest.mark.parametrize("alpha_kind", ["none", "float", "vector"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cpu_chunks_match_reference(monkeypatch, weighted, alpha_kind, gamma):
    """Index targets on the CPU eager path in chunks of 5 rows (41 rows: the last chunk
    short, ignored rows in three of them): equal to the float64 reference."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 5 * 7)
    gen = make_gen(41)
    logits, targets = softmax_problem((41, 7), "index", gen)
    targets[17] = IGNORE
    weight = torch.rand(7, generator=gen) + 0.5 if weighted else None
    for reduction in REDUCTIONS:
        kw = {"gamma": gamma, "alpha": focal_alpha(alpha_kind, 7, torch.float32), "weight": weight}
        kw["reduction"] = reduction
        got, got_g = value_and_grad(fk.softmax_focal_loss, logits, targets, **kw)
        ref_kw = dict(kw, weight=None if weight is None else weight.double())
        ref_kw["alpha"] = (
            kw["alpha"].double() if isinstance(kw["alpha"], torch.Tensor) else kw["alpha"]
        )
        exp, exp_g = _ref_value_and_grad(logits, targets, **ref_kw)
        assert_close_as(got, exp, F32)
        assert_close_as(got_g, exp_g, F32)


def test_non_contiguous_logits():
    gen = make_gen(127)
    base = torch.randn(5, 8, generator=gen) * 2
    logits = base.t()  # (8, 5)
    targets = torch.tensor([0, 1, 2, 3, 4, IGNORE, 2, 0])
    assert not logits.is_contiguous()
    for reduction in REDUCTIONS:
        got, got_g = value_and_grad(fk.softmax_focal_loss, logits, targets, reduction=reduction)
        exp, exp_g = _ref_value_and_grad(logits, targets, reduction=reduction)
        assert_close_as(got, exp, F32)
        assert_close_as(got_g, exp_g, F32)


# ------------------------------------------------------------------------------------------
# 3. extreme logits and low precision
# ------------------------------------------------------------------------------------------

EXTREME_LOGITS = [
    [100.0, -100.0, 0.0, 5.0],
    [-100.0, 100.0, 0.0, -5.0],
    [0.0, 0.0, 0.0, 0.0],
    [30.0, -30.0, 17.0, -17.0],
    [100.0, 100.0, -100.0, 0.0],
    [-100.0, -100.0, -100.0, 100.0],
]
EXTREME_INDEX = [0, 0, 2, 1, 1, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("form", ["index", "prob"])
def test_finite_gradients_at_extreme_logits(form, gamma, dtype):
    x = torch.tensor(EXTREME_LOGITS, dtype=dtype, requires_grad=True)
    if form == "index":
        targets = torch.tensor(EXTREME_INDEX)
        kw = {"label_smoothing": 0.0}
    else:
        targets = torch.tensor(
            [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.25] * 4, [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
            dtype=dtype,
        )
        kw = {"label_smoothing": 0.1}
    loss = fk.softmax_focal_loss(x, targets, gamma=gamma, reduction="none", **kw)
    assert loss.dtype == dtype
    loss.sum().backward()
    assert x.grad.dtype == dtype
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(x.grad).all(), x.grad
    # softmax gradients sum to zero over classes
    torch.testing.assert_close(
        x.grad.float().sum(1), torch.zeros(6), atol=1e-2 if dtype != torch.float32 else 1e-5, rtol=0
    )


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 2.0, 5.0])
def test_extreme_logits_float32_close_to_float64(gamma):
    """float32 at a +-100 spread agrees with the float64 implementation (finite everywhere)."""
    x = torch.tensor(EXTREME_LOGITS)
    t = torch.tensor(EXTREME_INDEX)
    a, ga = value_and_grad(fk.softmax_focal_loss, x, t, gamma=gamma, reduction="none")
    b, gb = value_and_grad(fk.softmax_focal_loss, x.double(), t, gamma=gamma, reduction="none")
    assert torch.isfinite(gb).all() and torch.isfinite(b).all()
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga.double(), gb, rtol=1e-5, atol=1e-6)
    # confidently wrong rows (p_t = e^-200) lose ~200 and keep an O(1) gradient
    assert a[1].item() == pytest.approx(200.0, rel=1e-4)
    assert ga[1, 0].item() < -0.5 and ga[1, 1].item() > 0.5


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"), [(torch.float16, 2e-3, 2e-4), (torch.bfloat16, 1.6e-2, 2e-3)]
)
@pytest.mark.parametrize("form", ["index", "prob"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, "flsd53"])
def test_low_precision_close_to_float32(gamma, form, dtype, rtol, atol, reduction):
    gen = make_gen(131)
    logits, targets = softmax_problem((12, 5), form, gen, dtype=dtype)
    lo, glo = value_and_grad(
        fk.softmax_focal_loss, logits, targets, gamma=gamma, reduction=reduction
    )
    t32 = targets.float() if form == "prob" else targets
    hi, ghi = value_and_grad(
        fk.softmax_focal_loss, logits.float(), t32, gamma=gamma, reduction=reduction
    )
    assert lo.dtype == dtype and glo.dtype == dtype
    torch.testing.assert_close(lo.float(), hi, rtol=rtol, atol=atol)
    torch.testing.assert_close(glo.float(), ghi, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# 4. all-ignored batches
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4), (4,), (2, 4, 3)])
@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("weight", [None, torch.tensor([1.0, 2.0, 0.5, 1.0])])
def test_all_ignored_mean_is_zero_with_zero_grads(shape, ls, weight):
    """focalkit returns 0 (torch's F.cross_entropy returns NaN) for an all-ignored mean."""
    x = torch.randn(shape, requires_grad=True)
    index_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    targets = torch.full(index_shape, IGNORE)
    for gamma in [0.0, 2.0]:
        x.grad = None
        loss = fk.softmax_focal_loss(x, targets, gamma=gamma, weight=weight, label_smoothing=ls)
        assert loss.item() == 0.0
        loss.backward()
        assert bool((x.grad == 0).all())


# ------------------------------------------------------------------------------------------
# 5. gamma = 0, alpha = None is F.cross_entropy, for every option
# ------------------------------------------------------------------------------------------

_CE_CASES = [
    (shape, form, weighted, ls, reduction)
    for shape in [(6, 4), (3, 4, 2, 3), (4,)]
    for form in ["index", "index_ignore", "prob"]
    for weighted in [False, True]
    for ls in [0.0, 0.1]
    for reduction in REDUCTIONS
    if not (shape == (4,) and form == "index_ignore")
]


@pytest.mark.parametrize(("shape", "form", "weighted", "ls", "reduction"), _CE_CASES)
def test_gamma_zero_equals_cross_entropy(shape, form, weighted, ls, reduction):
    gen = make_gen(151)
    logits, targets = softmax_problem(
        shape,
        "prob" if form == "prob" else "index",
        gen,
        ignore=form == "index_ignore",
        dtype=torch.float64,
    )
    C = shape[0] if len(shape) == 1 else shape[1]
    kw = {
        "weight": torch.linspace(0.5, 2.0, C, dtype=torch.float64) if weighted else None,
        "label_smoothing": ls,
        "reduction": reduction,
        "ignore_index": IGNORE,
    }
    a, ga = value_and_grad(fk.softmax_focal_loss, logits, targets, gamma=0.0, alpha=None, **kw)
    b, gb = value_and_grad(F.cross_entropy, logits, targets, **kw)
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", ["index", "prob"])
def test_gamma_zero_equals_cross_entropy_float32(form):
    gen = make_gen(157)
    logits, targets = softmax_problem((16, 5), form, gen)
    kw = {"weight": torch.tensor([1.0, 0.5, 2.0, 1.0, 3.0]), "label_smoothing": 0.05}
    a, ga = value_and_grad(fk.softmax_focal_loss, logits, targets, gamma=0.0, alpha=None, **kw)
    b, gb = value_and_grad(F.cross_entropy, logits, targets, **kw)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------
# 6. properties
# ------------------------------------------------------------------------------------------

_row = st.lists(st.floats(-20, 20), min_size=2, max_size=6)


@HYP
@given(row=_row, data=st.data(), gamma=st.floats(0, 5))
def test_property_focal_le_cross_entropy(row, data, gamma):
    """Softmax focal loss <= cross-entropy per sample for every gamma >= 0 (alpha None)."""
    x = torch.tensor([row], dtype=torch.float64)
    y = torch.tensor([data.draw(st.integers(0, len(row) - 1))])
    fl = fk.softmax_focal_loss(x, y, gamma=gamma, reduction="none")
    ce = F.cross_entropy(x, y, reduction="none")
    # + 1e-15: F.cross_entropy rounds log(1 + tiny) (absolute ~1e-16); focalkit does not
    assert bool((fl <= ce * (1 + 1e-9) + 1e-15).all()), (fl, ce)


@HYP
@given(row=_row, data=st.data(), gamma=st.floats(0, 5), dx=st.floats(1e-2, 5))
def test_property_strictly_decreasing_in_pt(row, data, gamma, dx):
    """Raising the target logit raises p_t and strictly lowers the focal loss (SPEC errata)."""
    y = data.draw(st.integers(0, len(row) - 1))
    x1 = torch.tensor([row], dtype=torch.float64)
    x2 = x1.clone()
    x2[0, y] += dx
    t = torch.tensor([y])
    p1 = torch.softmax(x1, 1)[0, y]
    assume(float(p1) < 1 - 1e-6)  # p_t must be able to grow visibly in float64
    l1 = fk.softmax_focal_loss(x1, t, gamma=gamma)
    l2 = fk.softmax_focal_loss(x2, t, gamma=gamma)
    assert l2 < l1, (l1, l2)


@HYP
@given(
    rows=st.lists(st.lists(st.floats(-6, 6), min_size=3, max_size=3), min_size=1, max_size=6),
    data=st.data(),
)
def test_property_flsd53_piecewise_gamma(rows, data):
    """FLSD-53 equals gamma 5 where p_t < 0.2 and gamma 3 elsewhere (value and gradient)."""
    x = torch.tensor(rows, dtype=torch.float64)
    t = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=len(rows), max_size=len(rows))))
    p_t = torch.softmax(x, 1).gather(1, t[:, None])[:, 0]
    assume(bool(((p_t - 0.2).abs() > 1e-9).all()))
    got, g = value_and_grad(fk.softmax_focal_loss, x, t, gamma="flsd53", reduction="none")
    five, g5 = value_and_grad(fk.softmax_focal_loss, x, t, gamma=5.0, reduction="none")
    three, g3 = value_and_grad(fk.softmax_focal_loss, x, t, gamma=3.0, reduction="none")
    hard = p_t < 0.2
    torch.testing.assert_close(got, torch.where(hard, five, three), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g, torch.where(hard[:, None], g5, g3), rtol=1e-12, atol=1e-15)


@HYP
@given(row=_row, data=st.data(), gamma=st.floats(0, 5))
def test_property_index_equals_one_hot_probability(row, data, gamma):
    """Index targets equal one-hot probability targets (per-class form, t one-hot), to the
    float64 rounding of ``log p_y`` (absolute ~1e-16: the per-class form takes it from
    ``log_softmax``, which rounds ``log(1 + tiny)``; the index form computes ``1 - p_y``
    without cancellation, see the next test)."""
    x = torch.tensor([row], dtype=torch.float64)
    y = data.draw(st.integers(0, len(row) - 1))
    onehot = F.one_hot(torch.tensor([y]), len(row)).double()
    a, ga = value_and_grad(fk.softmax_focal_loss, x, torch.tensor([y]), gamma=gamma)
    b, gb = value_and_grad(fk.softmax_focal_loss, x, onehot, gamma=gamma)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gap", [5.0, 12.0, 17.0, 30.0, 60.0])
def test_confident_row_loss_keeps_relative_precision(gap, dtype):
    """A confident, correct row (logits 0 and -gap): the cross-entropy is log1p(exp(-gap)),
    ~1e-26 at gap 60, and the index form gets it to float precision (``log_softmax`` in
    float32 returns 0 below gap ~17)."""
    x = torch.tensor([[0.0, -gap]], dtype=dtype, requires_grad=True)
    loss = fk.softmax_focal_loss(x, torch.tensor([0]), gamma=0.0, reduction="sum")
    loss.backward()
    exact = math.log1p(math.exp(-gap))
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    assert loss.item() == pytest.approx(exact, rel=rtol)
    # d/dx0 = p0 - 1 = -(1 - p0) = -exp(-gap) / (1 + exp(-gap)), also to relative precision
    rest = math.exp(-gap) / (1 + math.exp(-gap))
    assert x.grad[0, 0].item() == pytest.approx(-rest, rel=rtol)
    assert x.grad[0, 1].item() == pytest.approx(rest, rel=rtol)


# ------------------------------------------------------------------------------------------
# 7. Module: gamma="auto"
# ------------------------------------------------------------------------------------------


def _softmax_batch_pt(x, targets):
    """Mean softmax probability of the correct class over non-ignored targets (float64)."""
    dim = 0 if x.dim() == 1 else 1
    p = torch.softmax(x.double(), dim=dim)
    if targets.shape == x.shape and targets.is_floating_point():
        return float((p * targets.double()).sum(dim).mean())
    p = p.movedim(dim, -1).reshape(-1, p.shape[dim])
    t = targets.reshape(-1)
    keep = t != IGNORE
    return float(p[keep].gather(1, t[keep][:, None]).mean())


@pytest.mark.parametrize(
    ("shape", "form"), [((6, 4), "index"), ((2, 4, 3), "index"), ((5, 4), "prob")]
)
def test_module_auto_gamma(shape, form):
    gen = make_gen(173)
    module = fk.SoftmaxFocalLoss(gamma="auto")
    x1, t1 = softmax_problem(shape, form, gen)
    x2, t2 = softmax_problem(shape, form, gen)

    batches = ((x1, t1), (x2, t2))
    assert_auto_gamma_schedule(module, fk.softmax_focal_loss, _softmax_batch_pt, batches, (x2, t2))


# ------------------------------------------------------------------------------------------
# 8. bad input specific to the softmax focal loss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [4, -1, 99])
def test_bad_class_index(bad):
    targets = torch.tensor([0, bad, 2])  # C = 4: 4 is out of range for softmax
    with pytest.raises(ValueError, match="targets") as info:
        fk.softmax_focal_loss(torch.randn(3, 4), targets)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_prob_target_outside_unit_interval_validate_true(value):
    t = torch.tensor([[0.5, value, 0.0]])
    assert_raises(ValueError, "targets", fk.softmax_focal_loss, torch.randn(1, 3), t, validate=True)


def test_prob_target_outside_unit_interval_not_checked_by_default():
    """validate=None does not read probability-target values (that would sync)."""
    t = torch.tensor([[0.5, 1.5, 0.0]])
    assert torch.isfinite(fk.softmax_focal_loss(torch.randn(1, 3), t))


def test_bad_alpha_length():
    assert_raises(
        ValueError,
        "alpha",
        fk.softmax_focal_loss,
        torch.randn(2, 3),
        torch.tensor([0, 1]),
        alpha=torch.tensor([0.25, 0.5]),
    )


def test_negative_gamma():
    assert_raises(
        ValueError,
        "gamma",
        fk.softmax_focal_loss,
        torch.randn(2, 3),
        torch.tensor([0, 1]),
        gamma=-1.0,
    )


@pytest.mark.parametrize("gamma", ["flsd", "auto"])
def test_unknown_gamma_string(gamma):
    assert_raises(
        ValueError,
        "gamma",
        fk.softmax_focal_loss,
        torch.randn(2, 3),
        torch.tensor([0, 1]),
        gamma=gamma,
    )


def test_unknown_gamma_string_module():
    assert_raises(ValueError, "gamma", fk.SoftmaxFocalLoss, gamma="Auto")


@pytest.mark.parametrize("ls", [-0.1, 1.5])
def test_label_smoothing_outside_unit_interval(ls):
    assert_raises(
        ValueError,
        "label_smoothing",
        fk.softmax_focal_loss,
        torch.randn(2, 3),
        torch.tensor([0, 1]),
        label_smoothing=ls,
    )
