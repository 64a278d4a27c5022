"""Sigmoid focal loss, its Module, and the helpers (class_balanced_weights, prior_bias).

References are the float64 formulas in ``_focal_refs`` (SPEC.md sections 1 and 5). What every
loss shares (shapes, Module == function, gradcheck, double backward, empty inputs,
torch.compile, autocast, retained graphs, CPU backends, generic argument errors) is checked
once for all of them in ``test_contract.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import focalkit as fk
from _focal_refs import (
    bce_with_logits_ref,
    class_balanced_ref,
    index_to_dense,
    sigmoid_focal_grad_ref,
    sigmoid_focal_ref,
)
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
    sigmoid_targets,
    value_and_grad,
)
from focalkit.kernels import chunked

GAMMAS = [0.0, 0.5, 1.0, 2.0, 5.0, "flsd53"]


def _ref_value_and_grad(logits, targets, upstream_seed=0, **kw):
    """The float64 reference's value and gradient (conftest.value_and_grad)."""
    return value_and_grad(sigmoid_focal_ref, logits.double(), targets, upstream_seed, **kw)


# ------------------------------------------------------------------------------------------
# 1. SPEC check values and helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spec_check_values_sigmoid(dtype):
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=dtype, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0], dtype=dtype)
    loss = fk.sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0, reduction="none")
    loss.sum().backward()
    expected_loss = torch.tensor([0.00135267213, 0.0433216988, 2.73208311e-5], dtype=torch.float64)
    expected_grad = torch.tensor(
        [0.00365320515, -0.0745716988, -7.87179616e-5], dtype=torch.float64
    )
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(x.grad.double(), expected_grad, rtol=1e-6, atol=0)


def test_spec_check_values_match_reference():
    """The independent reference reproduces SPEC's numbers too (guards the reference)."""
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    loss, grad = _ref_value_and_grad(x, y, alpha=0.25, gamma=2.0, reduction="sum")
    assert loss.item() == pytest.approx(0.00135267213 + 0.0433216988 + 2.73208311e-5, rel=1e-8)
    closed = [
        sigmoid_focal_grad_ref(v, int(t), 0.25, 2.0)
        for v, t in zip([-2, 0, 3], [0, 1, 1], strict=True)
    ]
    torch.testing.assert_close(grad, torch.tensor(closed, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        grad,
        torch.tensor([0.00365320515, -0.0745716988, -7.87179616e-5], dtype=torch.float64),
        rtol=1e-8,
        atol=0,
    )


def test_prior_bias():
    b = fk.prior_bias(0.01)
    assert b == pytest.approx(-math.log(99.0), rel=1e-12)
    assert b == pytest.approx(-4.59511985013459, rel=1e-12)
    assert 1 / (1 + math.exp(-b)) == pytest.approx(0.01, rel=1e-12)
    assert fk.prior_bias(0.5) == pytest.approx(0.0, abs=1e-15)
    assert fk.prior_bias(0.9) == pytest.approx(math.log(9.0), rel=1e-12)


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.999, 0.9999])
def test_class_balanced_weights_closed_form(beta):
    counts = [1000, 100, 10, 1, 7]
    w = fk.class_balanced_weights(counts, beta=beta)
    expected = torch.tensor(class_balanced_ref(counts, beta), dtype=torch.float64)
    assert w.shape == (5,)
    torch.testing.assert_close(w.double(), expected, rtol=1e-6, atol=0)
    assert w.double().sum().item() == pytest.approx(5.0, rel=1e-6)
    # rarer classes never weigh less (strictly more once beta^n is not ~0)
    assert bool((w[[0, 1, 2, 3]].diff() >= 0).all())
    if beta >= 0.9:
        assert bool((w[[1, 2, 3]].diff() > 0).all())


def test_class_balanced_weights_beta_zero_gives_ones():
    w = fk.class_balanced_weights([1000, 3, 50], beta=0.0)
    torch.testing.assert_close(w, torch.ones(3, dtype=w.dtype), rtol=0, atol=1e-7)


def test_class_balanced_weights_accepts_tensor():
    counts = torch.tensor([40, 20, 5])
    w = fk.class_balanced_weights(counts, beta=0.99)
    expected = torch.tensor(class_balanced_ref([40, 20, 5], 0.99), dtype=torch.float64)
    torch.testing.assert_close(w.double(), expected, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------
# 2. values and gradients against the float64 reference
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["soft", "binary", "index", "int_dense"])
@pytest.mark.parametrize("alpha_kind", ["none", "float", "vector"])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_matches_reference_float32(gamma, alpha_kind, target_kind, reduction):
    gen = make_gen(hash((str(gamma), alpha_kind, target_kind)) % 2**31)
    N, C = 9, 4
    logits = (torch.randn(N, C, generator=gen, dtype=torch.float64) * 3).float()
    targets = sigmoid_targets(target_kind, N, C, gen)
    if target_kind in ("soft", "binary"):
        targets = targets.float()
    alpha = focal_alpha(alpha_kind, C)
    kw = {"alpha": alpha, "gamma": gamma, "reduction": reduction}
    got, got_g = value_and_grad(fk.sigmoid_focal_loss, logits, targets, **kw)
    exp, exp_g = _ref_value_and_grad(logits, targets, **kw)
    assert got.dtype == torch.float32
    assert got.shape == exp.shape
    assert_close_as(got, exp, F32)
    assert_close_as(got_g, exp_g, F32)


@pytest.mark.parametrize("alpha_kind", ["none", "float", "vector"])
@pytest.mark.parametrize("target_kind", ["soft", "index", "int_dense"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, "flsd53", torch.tensor(1.5, dtype=torch.float64)])
def test_matches_reference_float64(gamma, target_kind, alpha_kind):
    gen = make_gen(7)
    N, C = 8, 5
    logits = torch.randn(N, C, generator=gen, dtype=torch.float64) * 4
    targets = sigmoid_targets(target_kind, N, C, gen)
    for reduction in REDUCTIONS:
        kw = {"alpha": focal_alpha(alpha_kind, C), "gamma": gamma}
        got, got_g = value_and_grad(
            fk.sigmoid_focal_loss, logits, targets, reduction=reduction, **kw
        )
        exp, exp_g = _ref_value_and_grad(logits, targets, reduction=reduction, **kw)
        assert got.dtype == torch.float64
        assert_close_as(got, exp, F64)
        assert_close_as(got_g, exp_g, F64)


def test_gamma_tensor_equals_gamma_float():
    gen = make_gen(3)
    x = torch.randn(6, 3, generator=gen)
    y = torch.rand(6, 3, generator=gen)
    a = value_and_grad(fk.sigmoid_focal_loss, x, y, gamma=torch.tensor(1.5))
    b = value_and_grad(fk.sigmoid_focal_loss, x, y, gamma=1.5)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "weight_shape", [(7, 4), (7, 1), (4,), (1, 4), ()], ids=["full", "N1", "C", "1C", "scalar"]
)
@pytest.mark.parametrize("target_kind", ["soft", "index", "int_dense"])
def test_elementwise_weight(weight_shape, target_kind, reduction):
    gen = make_gen(11)
    N, C = 7, 4
    logits = torch.randn(N, C, generator=gen) * 2
    targets = sigmoid_targets(target_kind, N, C, gen)
    if target_kind == "soft":
        targets = targets.float()
    weight = torch.rand(weight_shape, generator=gen) + 0.5
    kw = {"weight": weight, "reduction": reduction, "gamma": 2.0, "alpha": 0.25}
    got, got_g = value_and_grad(fk.sigmoid_focal_loss, logits, targets, **kw)
    exp, exp_g = _ref_value_and_grad(logits, targets, **kw)
    assert got.shape == exp.shape
    assert_close_as(got, exp, F32)
    assert_close_as(got_g, exp_g, F32)


def test_weight_mean_divides_by_element_count_not_weight_sum():
    """SPEC 5: "mean" averages over non-ignored elements; weight only multiplies."""
    x = torch.zeros(2, 2)
    y = torch.zeros(2, 2)
    w = torch.tensor([[2.0], [0.0]])
    got = fk.sigmoid_focal_loss(x, y, alpha=None, gamma=0.0, weight=w)
    # elementwise BCE = log 2; weighted sum = 2 * 2 log 2 ; 4 elements
    assert got.item() == pytest.approx(math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("target_kind", ["soft", "index", "int_dense"])
@pytest.mark.parametrize(
    "normalizer",
    [3.0, 0.5, 0.0, 7, torch.tensor(4.0), torch.tensor(0.0), torch.tensor([2.5])],
    ids=["f3", "f0.5", "f0", "int7", "t4", "t0", "t1elem"],
)
def test_normalizer(normalizer, target_kind):
    gen = make_gen(5)
    N, C = 6, 3
    logits = torch.randn(N, C, generator=gen) * 2
    targets = sigmoid_targets(target_kind, N, C, gen)
    if target_kind == "soft":
        targets = targets.float()
    got, got_g = value_and_grad(fk.sigmoid_focal_loss, logits, targets, normalizer=normalizer)
    ref_norm = float(normalizer) if not isinstance(normalizer, torch.Tensor) else normalizer.item()
    exp, exp_g = _ref_value_and_grad(logits, targets, normalizer=ref_norm)
    assert torch.isfinite(got).all() and torch.isfinite(got_g).all()
    assert_close_as(got, exp, F32)
    assert_close_as(got_g, exp_g, F32)
    summed = fk.sigmoid_focal_loss(logits, targets, reduction="sum")
    assert_close_as(got, summed / max(ref_norm, 1.0), F32)


@pytest.mark.parametrize(
    ("reduction", "kw"),
    [
        ("sum", {"denominator": 7}),
        ("mean", {"denominator": 7}),
        ("mean", {"denominator": 0}),
        ("mean", {"denominator": torch.tensor(12)}),
        ("mean", {"denominator": torch.tensor(0.0)}),
        ("mean", {"normalizer": 3.0}),
        ("mean", {"normalizer": 0.25}),
        ("mean", {"normalizer": torch.tensor(5)}),
        ("mean", {"normalizer": torch.tensor(0)}),
    ],
)
def test_reduction_scale_is_the_reciprocal_finish_divides_by(reduction, kw):
    """The Triton paths multiply by reduction_scale where the torch paths call finish: the
    same reduction (zero denominators read as 1, normalizers clamped to >= 1)."""
    from focalkit._reduce import finish, reduction_scale

    total = torch.tensor(10.5)
    got = total * reduction_scale(reduction, **kw)
    # one rounding more (the reciprocal): within 2 float32 ulps
    torch.testing.assert_close(got, finish(total, reduction, **kw), rtol=2.4e-7, atol=0)


def test_normalizer_tensor_requires_no_grad_path():
    """A normalizer tensor that requires grad is treated as a constant (no grad flows to it)."""
    x = torch.randn(4, 3, requires_grad=True)
    n = torch.tensor(2.0, requires_grad=True)
    loss = fk.sigmoid_focal_loss(x, torch.rand(4, 3), normalizer=n)
    loss.backward()
    assert n.grad is None or float(n.grad) == 0.0
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, "flsd53"])
def test_index_form_equals_dense_forms(gamma, reduction):
    gen = make_gen(13)
    N, C = 10, 4
    logits = torch.randn(N, C, generator=gen) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 4, IGNORE, 1, IGNORE, 0])  # 4 = background
    onehot, valid = index_to_dense(labels, C, IGNORE)
    # integer dense form with the ignored rows marked ignore_index
    int_dense = onehot.long()
    int_dense[valid == 0] = IGNORE
    kw = {"gamma": gamma, "reduction": reduction, "alpha": torch.tensor([0.1, 0.3, 0.6, 0.9])}
    a, ga = value_and_grad(fk.sigmoid_focal_loss, logits, labels, **kw)
    b, gb = value_and_grad(fk.sigmoid_focal_loss, logits, int_dense, **kw)
    # float32: the gradient is accurate to ~1e-7 of its O(1) scale (p - y cancels in float32)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)
    # float one-hot dense form on the non-ignored rows only
    keep = labels != IGNORE
    c, gc = value_and_grad(fk.sigmoid_focal_loss, logits[keep], onehot[keep].float(), **kw)
    if reduction == "none":
        torch.testing.assert_close(a[keep], c, rtol=1e-6, atol=1e-7)
        assert bool((a[~keep] == 0).all())
    else:
        # upstream r of a scalar is 1: grads of the kept rows coincide, ignored rows are 0
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ga[keep], gc, rtol=1e-6, atol=1e-7)
        assert bool((ga[~keep] == 0).all())


def test_index_form_background_row_is_all_negative():
    x = torch.tensor([[1.0, -2.0, 0.5]])
    a = fk.sigmoid_focal_loss(x, torch.tensor([3]), reduction="none")
    b = fk.sigmoid_focal_loss(x, torch.zeros(1, 3), reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_ignored_rows_count_in_no_denominator():
    x = torch.randn(4, 3)
    labels = torch.tensor([0, IGNORE, 2, IGNORE])
    full = fk.sigmoid_focal_loss(x, labels, reduction="sum")
    mean = fk.sigmoid_focal_loss(x, labels, reduction="mean")
    torch.testing.assert_close(mean, full / 6.0, rtol=1e-6, atol=0)  # 2 valid rows * 3 columns
    dense = torch.tensor([[1, 0, IGNORE], [0, 0, 0], [IGNORE, IGNORE, IGNORE], [1, 1, 1]])
    s = fk.sigmoid_focal_loss(x, dense, reduction="sum")
    m = fk.sigmoid_focal_loss(x, dense, reduction="mean")
    torch.testing.assert_close(m, s / 8.0, rtol=1e-6, atol=0)


def test_target_dtypes_and_custom_ignore_index():
    """int32 labels, bool / uint8 dense targets and ignore_index=255 read the same labels."""
    gen = make_gen(61)
    x = torch.randn(5, 3, generator=gen)
    labels = torch.tensor([0, 3, IGNORE, 2, 1])
    base = value_and_grad(fk.sigmoid_focal_loss, x, labels, reduction="mean")
    same = [
        value_and_grad(fk.sigmoid_focal_loss, x, labels.int(), reduction="mean"),
        value_and_grad(
            fk.sigmoid_focal_loss,
            x,
            torch.where(labels == IGNORE, 255, labels),
            reduction="mean",
            ignore_index=255,
        ),
    ]
    for other in same:
        torch.testing.assert_close(other, base, rtol=0, atol=0)
    dense = (torch.rand(5, 3, generator=gen) > 0.5).long()
    ref = value_and_grad(fk.sigmoid_focal_loss, x, dense.float())
    for t in [dense, dense.bool(), dense.to(torch.uint8), dense.int()]:
        torch.testing.assert_close(value_and_grad(fk.sigmoid_focal_loss, x, t), ref)


@pytest.mark.parametrize("target_kind", ["soft", "index"])
def test_multidim_logits(target_kind):
    """(N, A, C) logits with (N, A, C) dense or (N, A) index targets."""
    gen = make_gen(17)
    logits = torch.randn(2, 5, 3, generator=gen) * 2
    if target_kind == "soft":
        targets = torch.rand(2, 5, 3, generator=gen)
    else:
        targets = torch.tensor([[0, 3, IGNORE, 2, 1], [3, 3, 0, IGNORE, 1]])
    for reduction in REDUCTIONS:
        got, got_g = value_and_grad(fk.sigmoid_focal_loss, logits, targets, reduction=reduction)
        exp, exp_g = _ref_value_and_grad(logits, targets, reduction=reduction)
        assert got.shape == exp.shape
        assert_close_as(got, exp, F32)
        assert_close_as(got_g, exp_g, F32)


@pytest.mark.parametrize("target_kind", ["soft", "index", "int_dense"])
def test_large_input_spanning_chunks(target_kind):
    """More rows than one CPU chunk, with an elementwise weight (the allocating path)."""
    gen = make_gen(19)
    N, C = 40_001, 7  # 280007 elements: two chunks of 2**18, the second one short
    assert N * C > chunked.FOCAL_CHUNK_ELEMENTS
    logits = torch.randn(N, C, generator=gen) * 3
    targets = sigmoid_targets(target_kind, N, C, gen)
    if target_kind == "soft":
        targets = targets.float()
    for reduction in ["none", "mean"]:
        kw = {"reduction": reduction, "weight": torch.rand(N, 1, generator=gen)}
        got, got_g = value_and_grad(fk.sigmoid_focal_loss, logits, targets, **kw)
        exp, exp_g = _ref_value_and_grad(logits, targets, **kw)
        # "mean" divides by N * C: gradients are ~1e-6, so scale atol with them
        atol = 1e-6 if reduction == "none" else 1e-11
        assert_close_as(got, exp, {"rtol": 1e-5, "atol": atol})
        assert_close_as(got_g, exp_g, {"rtol": 1e-5, "atol": atol})


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha_kind", ["none", "float", "vector", "one", "zero"])
@pytest.mark.parametrize("target_kind", ["binary", "mixed", "index"])
def test_cpu_chunk_paths_match_reference(monkeypatch, target_kind, alpha_kind, gamma):
    """The CPU eager path in small chunks (6 rows of 9): binary chunks and all-valid index
    chunks go through the scratch-buffer kernels, soft chunks and chunks with ignored rows
    through the general ones; every chunk matches the float64 reference."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 54)
    gen = make_gen(31)
    N, C = 41, 9
    logits = torch.randn(N, C, generator=gen) * 4
    logits[::5, ::3] = 12.0
    logits[1::7, 1::4] = -12.0
    if target_kind == "index":
        targets = torch.randint(0, C + 1, (N,), generator=gen)
        targets[20] = IGNORE  # one chunk (rows 18-23) takes the general path
        targets[::5] = 0  # a confident column is the positive there
    else:
        targets = (torch.rand(N, C, generator=gen) < 0.3).float()
        if target_kind == "mixed":
            targets[6:12] = torch.rand(6, C, generator=gen)  # one soft chunk
    alpha = (
        {"one": 1.0, "zero": 0.0}.get(alpha_kind)
        if alpha_kind in ("one", "zero")
        else (focal_alpha(alpha_kind, C))
    )
    for reduction in REDUCTIONS:
        kw = {"reduction": reduction, "alpha": alpha, "gamma": gamma}
        got, got_g = value_and_grad(fk.sigmoid_focal_loss, logits, targets, **kw)
        exp, exp_g = _ref_value_and_grad(logits, targets, **kw)
        assert_close_as(got, exp, {"rtol": 1e-5, "atol": 1e-7})
        assert_close_as(got_g, exp_g, {"rtol": 1e-5, "atol": 1e-7})


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_index_chunk_sum_without_cancellation(alpha):
    """All rows confidently right (+12 on the label, -12 elsewhere): the summed loss is
    ~1e-10; the index path must not add each positive's negative-case term (~9) and subtract
    it again, which would leave float32 rounding of ~1e-6."""
    N, C = 64, 5
    labels = torch.arange(N) % C
    logits = torch.full((N, C), -12.0)
    logits[torch.arange(N), labels] = 12.0
    for reduction in ["sum", "none"]:
        kw = {"reduction": reduction, "alpha": alpha}
        got, got_g = value_and_grad(fk.sigmoid_focal_loss, logits, labels, **kw)
        exp, exp_g = _ref_value_and_grad(logits, labels, **kw)
        assert_close_as(got, exp, {"rtol": 1e-5, "atol": 0})
        assert_close_as(got_g, exp_g, {"rtol": 1e-5, "atol": 0})


def test_non_contiguous_inputs():
    gen = make_gen(23)
    base = torch.randn(5, 8, generator=gen) * 3
    logits = base.t()  # (8, 5), non-contiguous
    targets = torch.rand(5, 8, generator=gen).t()
    weight = torch.rand(5, 8, generator=gen).t()
    assert not logits.is_contiguous()
    for reduction in REDUCTIONS:
        kw = {"reduction": reduction, "weight": weight}
        got, got_g = value_and_grad(fk.sigmoid_focal_loss, logits, targets, **kw)
        exp, exp_g = _ref_value_and_grad(logits, targets, **kw)
        assert_close_as(got, exp, F32)
        assert_close_as(got_g, exp_g, F32)


def test_single_column_logits_index_form():
    """C = 1 (binary detector head): labels 0 positive, 1 background."""
    x = torch.tensor([[0.3], [-1.2], [2.0]])
    labels = torch.tensor([0, 1, IGNORE])
    got, got_g = value_and_grad(fk.sigmoid_focal_loss, x, labels, reduction="sum")
    exp, exp_g = _ref_value_and_grad(x, labels, reduction="sum")
    assert_close_as(got, exp, F32)
    assert_close_as(got_g, exp_g, F32)


# ------------------------------------------------------------------------------------------
# 3. extreme logits and low precision
# ------------------------------------------------------------------------------------------

EXTREME = [-100.0, -30.0, -17.0, -1.0, 0.0, 1.0, 17.0, 30.0, 100.0]
EXTREME_GAMMAS = [0.0, 0.25, 0.5, 1.0, 2.0, 5.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", EXTREME_GAMMAS)
def test_finite_gradients_at_extreme_logits(gamma, dtype):
    x = torch.tensor(EXTREME, dtype=dtype).repeat(3)
    y = torch.tensor([0.0] * 9 + [1.0] * 9 + [0.5] * 9, dtype=dtype)
    for alpha in [None, 0.25]:
        xr = x.clone().requires_grad_(True)
        loss = fk.sigmoid_focal_loss(xr, y, gamma=gamma, alpha=alpha, reduction="none")
        assert loss.dtype == dtype
        loss.sum().backward()
        assert xr.grad.dtype == dtype
        assert torch.isfinite(loss).all(), loss
        assert torch.isfinite(xr.grad).all(), xr.grad
    # index form at the same logits: column 0 positive in half of the rows
    xi = x[:9].reshape(9, 1).repeat(1, 2).clone().requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, IGNORE])
    li = fk.sigmoid_focal_loss(xi, labels, gamma=gamma, reduction="sum")
    li.backward()
    assert li.dtype == dtype and torch.isfinite(li) and torch.isfinite(xi.grad).all()


@pytest.mark.parametrize("gamma", EXTREME_GAMMAS)
@pytest.mark.parametrize("y", [0, 1])
def test_gradient_accurate_at_extreme_logits_float32(y, gamma):
    """float32 gradient vs SPEC's closed form (float64): relative 1e-4, absolute 1e-7 (the
    float32 resolution of an O(1) gradient; p - y cancels for confident positives)."""
    x = torch.tensor(EXTREME, requires_grad=True)
    t = torch.full_like(x, float(y))
    fk.sigmoid_focal_loss(x, t, gamma=gamma, alpha=0.25, reduction="sum").backward()
    expected = torch.tensor(
        [sigmoid_focal_grad_ref(v, y, 0.25, gamma) for v in EXTREME], dtype=torch.float64
    )
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-4, atol=1e-7)
    # the sign is never wrong: positives pull the logit up, negatives push it down
    nonzero = x.grad != 0
    assert bool((torch.sign(x.grad[nonzero]) == (-1 if y == 1 else 1)).all())


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"), [(torch.float16, 2e-3, 1e-4), (torch.bfloat16, 1.6e-2, 1e-3)]
)
@pytest.mark.parametrize("target_kind", ["soft", "index"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, "flsd53"])
def test_low_precision_close_to_float32(gamma, target_kind, dtype, rtol, atol, reduction):
    gen = make_gen(29)
    N, C = 16, 4
    x_low = (torch.randn(N, C, generator=gen) * 2).to(dtype)
    targets = sigmoid_targets(target_kind, N, C, gen)
    if target_kind == "soft":
        targets = targets.to(dtype)
    lo, glo = value_and_grad(fk.sigmoid_focal_loss, x_low, targets, reduction=reduction)
    t32 = targets.float() if target_kind == "soft" else targets
    hi, ghi = value_and_grad(fk.sigmoid_focal_loss, x_low.float(), t32, reduction=reduction)
    assert lo.dtype == dtype and glo.dtype == dtype
    torch.testing.assert_close(lo.float(), hi, rtol=rtol, atol=atol)
    torch.testing.assert_close(glo.float(), ghi, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# 4. the gradient with respect to weight (float64)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_shape", [(4, 3), (4, 1), (3,)])
@pytest.mark.parametrize("target_kind", ["soft", "index"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradcheck_weight(weight_shape, target_kind, reduction):
    gen = make_gen(41)
    x = (torch.randn(4, 3, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    w = (torch.rand(weight_shape, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    if target_kind == "soft":
        targets = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    else:
        targets = torch.tensor([0, 3, IGNORE, 2])

    def f(x, w):
        return fk.sigmoid_focal_loss(x, targets, gamma=2.0, weight=w, reduction=reduction)

    assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_weight_gradient_is_unweighted_loss():
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.rand(4, 3, dtype=torch.float64)
    w = torch.rand(4, 3, dtype=torch.float64).requires_grad_(True)
    fk.sigmoid_focal_loss(x, y, weight=w, reduction="sum").backward()
    torch.testing.assert_close(w.grad, sigmoid_focal_ref(x, y, reduction="none"), **F64)


def test_weight_only_requires_grad():
    """Gradient flows to weight when logits do not require grad."""
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.rand(4, 3, dtype=torch.float64)
    w = torch.rand(4, 1, dtype=torch.float64).requires_grad_(True)
    fk.sigmoid_focal_loss(x, y, weight=w, reduction="sum").backward()
    expected = sigmoid_focal_ref(x, y, reduction="none").sum(1, keepdim=True)
    torch.testing.assert_close(w.grad, expected, **F64)


# ------------------------------------------------------------------------------------------
# 5. all-ignored batches
# ------------------------------------------------------------------------------------------


def test_all_ignored_mean_is_zero_with_zero_grad():
    x = torch.randn(3, 4, requires_grad=True)
    loss = fk.sigmoid_focal_loss(x, torch.full((3,), IGNORE))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert bool((x.grad == 0).all())


# ------------------------------------------------------------------------------------------
# 6. properties
# ------------------------------------------------------------------------------------------

_logit = st.floats(-20, 20, allow_nan=False)
_gamma = st.floats(0, 5, allow_nan=False)


@HYP
@given(
    xs=st.lists(_logit, min_size=1, max_size=8),
    ys=st.lists(st.floats(0, 1), min_size=8, max_size=8),
    gamma=_gamma,
)
def test_property_focal_le_cross_entropy(xs, ys, gamma):
    """Focal loss <= cross-entropy elementwise for every gamma >= 0 (alpha None)."""
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys[: len(xs)], dtype=torch.float64)
    fl = fk.sigmoid_focal_loss(x, y, gamma=gamma, alpha=None, reduction="none")
    # accurate float64 BCE (torch's own float64 BCE is off by ~1e-7 relative at |x| ~ 17)
    ce = bce_with_logits_ref(x, y)
    assert bool((fl <= ce * (1 + 1e-9)).all()), (fl, ce)


@HYP
@given(x1=st.floats(-15, 15), dx=st.floats(1e-2, 10), gamma=_gamma, y=st.sampled_from([0, 1]))
def test_property_strictly_decreasing_in_pt(x1, dx, gamma, y):
    """FL strictly decreases as p_t increases, for fixed gamma (SPEC errata: no stationary point)."""
    x2 = x1 + dx
    # y = 1: p_t grows with x; y = 0: p_t grows as x falls
    lo_pt, hi_pt = (x1, x2) if y == 1 else (x2, x1)
    x = torch.tensor([lo_pt, hi_pt], dtype=torch.float64)
    t = torch.full((2,), float(y), dtype=torch.float64)
    fl = fk.sigmoid_focal_loss(x, t, gamma=gamma, alpha=0.25, reduction="none")
    assert fl[0] > fl[1], (x, fl)


@HYP
@given(
    xs=st.lists(st.floats(-30, 30), min_size=1, max_size=8),
    ys=st.lists(st.floats(0, 1), min_size=8, max_size=8),
)
def test_property_gamma_zero_equals_bce(xs, ys):
    """gamma = 0 and alpha None is BCE-with-logits, in value and gradient."""
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys[: len(xs)], dtype=torch.float64)
    for reduction in REDUCTIONS:
        a, ga = value_and_grad(
            fk.sigmoid_focal_loss, x, y, gamma=0.0, alpha=None, reduction=reduction
        )
        b, gb = value_and_grad(F.binary_cross_entropy_with_logits, x, y, reduction=reduction)
        # torch's float64 BCE value is only ~1e-7-relative accurate for confident logits
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
        c, gc = value_and_grad(_bce_ref, x, y, reduction=reduction)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ga, gc, rtol=1e-10, atol=1e-12)


def _bce_ref(x, y, reduction):
    loss = bce_with_logits_ref(x, y)
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


@HYP
@given(
    data=st.data(),
    n=st.integers(1, 6),
    c=st.integers(1, 5),
    gamma=st.one_of(_gamma, st.just("flsd53")),
)
def test_property_index_equals_dense(data, n, c, gamma):
    """Class-index targets equal their one-hot dense form (ignore rows = ignore_index entries)."""
    labels = data.draw(
        st.lists(st.one_of(st.integers(0, c), st.just(IGNORE)), min_size=n, max_size=n)
    )
    xs = data.draw(st.lists(_logit, min_size=n * c, max_size=n * c))
    x = torch.tensor(xs, dtype=torch.float64).reshape(n, c)
    lab = torch.tensor(labels)
    onehot, valid = index_to_dense(lab, c, IGNORE)
    dense = onehot.long()
    dense[valid == 0] = IGNORE
    for reduction in REDUCTIONS:
        a, ga = value_and_grad(fk.sigmoid_focal_loss, x, lab, gamma=gamma, reduction=reduction)
        b, gb = value_and_grad(fk.sigmoid_focal_loss, x, dense, gamma=gamma, reduction=reduction)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)


@HYP
@given(
    xs=st.lists(st.floats(-8, 8), min_size=1, max_size=8),
    ys=st.lists(st.sampled_from([0.0, 1.0, 0.3]), min_size=8, max_size=8),
)
def test_property_flsd53_piecewise_gamma(xs, ys):
    """FLSD-53 equals gamma 5 where p_t < 0.2 and gamma 3 elsewhere (value and gradient)."""
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys[: len(xs)], dtype=torch.float64)
    p = torch.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    assume(bool(((p_t - 0.2).abs() > 1e-9).all()))
    got, g = value_and_grad(fk.sigmoid_focal_loss, x, y, gamma="flsd53", reduction="none")
    five, g5 = value_and_grad(fk.sigmoid_focal_loss, x, y, gamma=5.0, reduction="none")
    three, g3 = value_and_grad(fk.sigmoid_focal_loss, x, y, gamma=3.0, reduction="none")
    hard = p_t < 0.2
    torch.testing.assert_close(got, torch.where(hard, five, three), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g, torch.where(hard, g5, g3), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------
# 7. Module: gamma="auto"
# ------------------------------------------------------------------------------------------


def _sigmoid_batch_pt(x, targets):
    """Mean probability of the correct label over valid elements (float64, independent)."""
    if targets.shape == x.shape:
        y, valid = targets.double(), torch.ones_like(x, dtype=torch.float64)
    else:
        y, valid = index_to_dense(targets, x.shape[-1], IGNORE)
    p = torch.sigmoid(x.double())
    p_t = p * y + (1 - p) * (1 - y)
    return float((p_t * valid).sum() / valid.sum())


@pytest.mark.parametrize("target_kind", ["soft", "index"])
def test_module_auto_gamma(target_kind):
    gen = make_gen(53)
    module = fk.SigmoidFocalLoss(gamma="auto", alpha=None)
    x1 = torch.randn(6, 3, generator=gen) * 2
    x2 = torch.randn(6, 3, generator=gen) * 2 + 1
    if target_kind == "soft":
        t1 = (torch.rand(6, 3, generator=gen) > 0.5).float()
        t2 = (torch.rand(6, 3, generator=gen) > 0.5).float()
    else:
        t1 = torch.tensor([0, 3, IGNORE, 2, 1, 1])
        t2 = torch.tensor([3, 3, 0, IGNORE, 2, 0])

    batches = ((x1, t1), (x2, t2))
    c = assert_auto_gamma_schedule(
        module, fk.sigmoid_focal_loss, _sigmoid_batch_pt, batches, (x1, t1), alpha=None
    )

    # the buffer round-trips through state_dict
    fresh = fk.SigmoidFocalLoss(gamma="auto", alpha=None)
    fresh.load_state_dict(module.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x1, t1), c)


# ------------------------------------------------------------------------------------------
# 8. bad input specific to the sigmoid focal loss and the helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [4, -1, 17])
def test_bad_class_index(bad):
    labels = torch.tensor([0, bad, 3])  # C = 3: 3 is background, 4 is out of range
    with pytest.raises(ValueError, match="targets") as info:
        fk.sigmoid_focal_loss(torch.randn(3, 3), labels)
    assert str(bad) in str(info.value)


def test_bad_integer_dense_value():
    t = torch.tensor([[0, 1, 2]])
    assert_raises(ValueError, "targets", fk.sigmoid_focal_loss, torch.randn(1, 3), t)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_float_target_outside_unit_interval_validate_true(value):
    t = torch.tensor([[0.0, value, 1.0]])
    assert_raises(ValueError, "targets", fk.sigmoid_focal_loss, torch.randn(1, 3), t, validate=True)


def test_float_target_outside_unit_interval_checked_where_reading_is_free(monkeypatch):
    """validate=None reads float target values on a CPU tensor in eager mode (free there): a
    value outside [0, 1] that is not ignore_index raises. validate=False reads nothing (no
    error, finite result), and where reading would sync the device nothing is checked."""
    t = torch.tensor([[0.0, 1.5, 1.0]])
    with pytest.raises(ValueError, match=r"targets: expected float targets in \[0, 1\]"):
        fk.sigmoid_focal_loss(torch.randn(1, 3), t)
    assert torch.isfinite(fk.sigmoid_focal_loss(torch.randn(1, 3), t, validate=False))
    import focalkit.functional._targets as targets_impl

    monkeypatch.setattr(targets_impl, "may_read_values", lambda tensor: False)
    assert torch.isfinite(fk.sigmoid_focal_loss(torch.randn(1, 3), t))


def test_bad_alpha_length():
    assert_raises(
        ValueError,
        "alpha",
        fk.sigmoid_focal_loss,
        torch.randn(2, 3),
        torch.rand(2, 3),
        alpha=torch.tensor([0.25, 0.5]),
    )


def test_negative_gamma():
    assert_raises(
        ValueError, "gamma", fk.sigmoid_focal_loss, torch.randn(2, 3), torch.rand(2, 3), gamma=-0.5
    )


@pytest.mark.parametrize("gamma", ["flsd35", "auto"])
def test_unknown_gamma_string(gamma):
    assert_raises(
        ValueError, "gamma", fk.sigmoid_focal_loss, torch.randn(2, 3), torch.rand(2, 3), gamma=gamma
    )


def test_unknown_gamma_string_module():
    assert_raises(ValueError, "gamma", fk.SigmoidFocalLoss, gamma="adaptive")


def test_class_balanced_weights_beta_one():
    assert_raises(ValueError, "beta", fk.class_balanced_weights, [10, 5], beta=1.0)


def test_class_balanced_weights_negative_count():
    assert_raises(ValueError, "samples_per_class", fk.class_balanced_weights, [10, -5, 3])


@pytest.mark.parametrize("pi", [0.0, 1.0, -0.1])
def test_prior_bias_bad_pi(pi):
    assert_raises(ValueError, "pi", fk.prior_bias, pi)
