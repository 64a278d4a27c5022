"""GHM-C / GHM-R: SPEC check values, the authors' per-bin loop as reference (float64, values
and gradients), target forms, reductions, EMA state, exact counts, the exact second
derivative of GHM-R, properties and the argument checks of their own. What every loss shares
(shapes, Module == function, gradcheck, double backward, empty inputs, torch.compile,
autocast, retained graphs, CPU backends, generic argument errors) is checked once for all of
them in ``test_contract.py``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import focalkit as fk
from _ghm_box_refs import ghm_c_reference, ghm_r_reference
from conftest import HYP, ghm_c_problem, make_gen
from focalkit.functional import ghm as ghm_impl
from focalkit.kernels import chunked

# --------------------------------------------------------------------------------------------
# SPEC check values
# --------------------------------------------------------------------------------------------

SPEC_LOGITS = [-3.0, -1.0, 1.0, 2.0, 4.0, 0.5]
SPEC_TARGETS = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]
SPEC_VALID = [True, True, True, True, True, False]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ghm_c_spec_check_value(dtype):
    loss = fk.ghm_c_loss(
        torch.tensor(SPEC_LOGITS, dtype=dtype),
        torch.tensor(SPEC_TARGETS, dtype=dtype),
        bins=4,
        valid=torch.tensor(SPEC_VALID),
    )
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    assert loss.dtype == dtype
    assert abs(loss.item() - 0.8245194461) < tol


def test_ghm_c_spec_check_value_divides_by_nonempty_bins_not_m():
    """With M = 4 and 3 non-empty bins, dividing by M would give 0.6183895846 (SPEC)."""
    x = torch.tensor(SPEC_LOGITS, dtype=torch.float64)
    loss = fk.ghm_c_loss(
        x, torch.tensor(SPEC_TARGETS, dtype=x.dtype), bins=4, valid=torch.tensor(SPEC_VALID)
    )
    assert abs(loss.item() * 3 / 4 - 0.6183895846) < 1e-9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ghm_r_spec_check_value(dtype):
    d = torch.tensor([0.001, 0.01, 0.05, 0.5, -0.2], dtype=dtype)
    loss = fk.ghm_r_loss(d, torch.zeros_like(d), mu=0.02, bins=10)
    tol = 1e-10 if dtype == torch.float64 else 1e-7
    assert abs(loss.item() - 0.07804511035) < tol


# --------------------------------------------------------------------------------------------
# against the per-bin loop reference: values and gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [1, 3, 10, 30])
@pytest.mark.parametrize("soft", [False, True])
def test_ghm_c_matches_loop_reference(bins, soft):
    logits, targets, valid = ghm_c_problem(seed=bins, soft=soft)
    x = logits.clone().requires_grad_(True)
    loss = fk.ghm_c_loss(x, targets, bins=bins, valid=valid)
    loss.backward()
    xr = logits.clone().requires_grad_(True)
    ref, _ = ghm_c_reference(xr, targets, valid, bins=bins)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_ghm_c_reductions_match_reference(reduction):
    logits, targets, valid = ghm_c_problem(seed=3)
    _, w = ghm_c_reference(logits, targets, valid, bins=10)
    terms = w * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    out = fk.ghm_c_loss(logits, targets, bins=10, valid=valid, reduction=reduction)
    expected = terms if reduction == "none" else terms.sum()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    mean = fk.ghm_c_loss(logits, targets, bins=10, valid=valid)
    torch.testing.assert_close(mean, terms.sum() / valid.sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("weighted", ["none", "binary", "fractional"])
def test_ghm_r_matches_loop_reference(weighted):
    gen = make_gen(5)
    pred = torch.randn(40, 4, generator=gen, dtype=torch.float64) * 0.3
    target = torch.randn(40, 4, generator=gen, dtype=torch.float64) * 0.3
    weight = None
    if weighted == "binary":
        weight = (torch.rand(40, 1, generator=gen) < 0.6).double()  # per box, broadcast
    elif weighted == "fractional":
        weight = torch.rand(40, 4, generator=gen, dtype=torch.float64) * (
            torch.rand(40, 4, generator=gen) < 0.7
        )
    x = pred.clone().requires_grad_(True)
    loss = fk.ghm_r_loss(x, target, mu=0.02, bins=10, weight=weight)
    loss.backward()
    xr = pred.clone().requires_grad_(True)
    ref = ghm_r_reference(xr, target, mu=0.02, bins=10, weight=weight)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-13)


def test_ghm_c_chunked_path_matches_reference(monkeypatch):
    """The cache-sized chunk loop (CPU eager) gives the one-piece result."""
    logits, targets, valid = ghm_c_problem(shape=(301, 7), seed=11)
    whole = fk.ghm_c_loss(logits, targets, bins=30, valid=valid, reduction="none")
    monkeypatch.setattr(chunked, "GHM_CHUNK_ELEMENTS", 64)
    x = logits.clone().requires_grad_(True)
    loss = fk.ghm_c_loss(x, targets, bins=30, valid=valid)
    loss.backward()
    chunked_none = fk.ghm_c_loss(logits, targets, bins=30, valid=valid, reduction="none")
    xr = logits.clone().requires_grad_(True)
    ref, _ = ghm_c_reference(xr, targets, valid, bins=30)
    ref.backward()
    torch.testing.assert_close(chunked_none, whole, rtol=0, atol=0)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)


def test_ghm_c_float32_matches_float64_reference():
    logits, targets, valid = ghm_c_problem(shape=(1000, 3), seed=2, dtype=torch.float32)
    x = logits.clone().requires_grad_(True)
    loss = fk.ghm_c_loss(x, targets, bins=30, valid=valid)
    loss.backward()
    xr = logits.double().requires_grad_(True)
    ref, _ = ghm_c_reference(xr, targets.double(), valid, bins=30)
    ref.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-8)


# --------------------------------------------------------------------------------------------
# target forms, masks, edge cases
# --------------------------------------------------------------------------------------------


def test_ghm_c_index_targets_equal_dense_one_hot():
    gen = make_gen(7)
    logits = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (50,), generator=gen)  # 4 = background
    labels[::7] = -100  # ignored rows
    dense = F.one_hot(labels.clamp(min=0), 5)[:, :4].double()
    valid = (labels != -100).unsqueeze(1).expand(50, 4)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    a = fk.ghm_c_loss(x1, labels, bins=10)
    b = fk.ghm_c_loss(x2, dense, bins=10, valid=valid)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)


def test_ghm_c_integer_dense_targets_with_ignore_index_and_valid():
    logits, targets, valid = ghm_c_problem(seed=9)
    ints = targets.long()
    ints[0, :] = 255
    both = valid.clone()
    both[0, :] = False
    a = fk.ghm_c_loss(logits, ints, bins=10, valid=valid, ignore_index=255)
    b = fk.ghm_c_loss(logits, targets, bins=10, valid=both)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ghm_c_all_ignored_gives_zero_loss_and_zero_gradient():
    x = torch.randn(6, 3, requires_grad=True)
    targets = torch.full((6,), -100)
    loss = fk.ghm_c_loss(x, targets, bins=10)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))
    x.grad = None
    loss = fk.ghm_c_loss(x, torch.ones(6, 3), valid=torch.zeros(6, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_ghm_c_noncontiguous_and_half_precision():
    logits, targets, valid = ghm_c_problem(shape=(5, 40), seed=4, dtype=torch.float32)
    a = fk.ghm_c_loss(logits.t(), targets.t(), valid=valid.t(), bins=10)
    b = fk.ghm_c_loss(
        logits.t().contiguous(), targets.t().contiguous(), valid=valid.t().contiguous(), bins=10
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for dtype in (torch.float16, torch.bfloat16):
        x = logits.to(dtype).requires_grad_(True)
        loss = fk.ghm_c_loss(x, targets.to(dtype), valid=valid, bins=10)
        loss.backward()
        assert loss.dtype == dtype and x.grad.dtype == dtype
        assert torch.isfinite(x.grad).all()
        ref = fk.ghm_c_loss(logits.to(dtype).float(), targets, valid=valid, bins=10)
        torch.testing.assert_close(loss.float(), ref, rtol=1e-2, atol=1e-3)


def test_ghm_weights_are_constants_in_backward():
    """d loss / d x_i = w_i (sigmoid(x_i) - y_i) / N: no gradient flows through the weights."""
    logits, targets, valid = ghm_c_problem(seed=12)
    x = logits.clone().requires_grad_(True)
    fk.ghm_c_loss(x, targets, bins=10, valid=valid).backward()
    _, w = ghm_c_reference(logits, targets, valid, bins=10)
    expected = w * (torch.sigmoid(logits) - targets) / valid.sum()
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# exact counts
# --------------------------------------------------------------------------------------------


def test_bin_counts_are_exact_int64_beyond_2_pow_24():
    n = 2**24 + 1  # not representable in float32: a float32 count would read 2**24
    index = torch.zeros(n, dtype=torch.uint8)
    index[-3:] = 2  # two elements in the dropped slot (bins = 2)
    for count in (chunked.bincount_bins, ghm_impl.bin_counts):
        counts = count(index, 2)
        assert counts.dtype == torch.int64
        assert counts.tolist() == [n - 3, 0]
    assert ghm_impl.bin_counts(index, 2).tolist() == [n - 3, 0]


def test_ghm_c_histogram_pass_counts_exactly_beyond_2_pow_24(monkeypatch):
    """The chunked CPU pass over 2**24 + 1 elements (zero-stride inputs: no large allocation
    but the uint8 bin index) counts every element in its bin exactly."""
    monkeypatch.setattr(chunked, "GHM_CHUNK_ELEMENTS", 2**23)  # 3 chunks: few parallel regions
    n = 2**24 + 1
    x = torch.zeros(()).expand(n)
    y = torch.zeros(()).expand(n)  # g = 0.5 for all: bin 1 of 2
    index, counts = chunked.ghm_bin_pass(x, y, None, 2)
    assert counts.dtype == torch.int64 and counts.tolist() == [0, n]
    assert index.dtype == torch.uint8


def test_bins_are_left_closed_and_one_is_in_the_last_bin():
    g = torch.tensor([0.0, 0.25, 0.5 - 1e-9, 0.5, 0.75, 1.0], dtype=torch.float64)
    assert ghm_impl.bin_index(g, 4, None).tolist() == [0, 1, 1, 2, 3, 3]
    keep = torch.tensor([True, True, True, False, True, True])
    assert ghm_impl.bin_index(g, 4, keep).tolist() == [0, 1, 1, 4, 3, 3]
    assert ghm_impl.bin_index(torch.tensor([float("nan")]), 4, None).tolist() == [4]


# --------------------------------------------------------------------------------------------
# Modules and the EMA
# --------------------------------------------------------------------------------------------


def test_ghm_c_module_ema_matches_reference_over_batches():
    crit = fk.GHMCLoss(bins=10, momentum=0.75).double()  # the buffer is float64 anyway
    acc = [0.0] * 10
    for step in range(3):
        logits, targets, valid = ghm_c_problem(seed=20 + step)
        x = logits.clone().requires_grad_(True)
        loss = crit(x, targets, valid)
        loss.backward()
        xr = logits.clone().requires_grad_(True)
        ref, _ = ghm_c_reference(xr, targets, valid, bins=10, momentum=0.75, acc=acc)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(crit.bin_count_ema, torch.tensor(acc, dtype=torch.float64))


def test_ghm_module_state_dict_and_eval_mode():
    crit = fk.GHMCLoss(bins=10, momentum=0.75)
    assert "bin_count_ema" in crit.state_dict()
    assert crit.bin_count_ema.dtype == torch.float64
    logits, targets, valid = ghm_c_problem(seed=30)
    # eval before any training update: the batch's own counts (= the stateless function)
    crit.eval()
    torch.testing.assert_close(
        crit(logits, targets, valid), fk.ghm_c_loss(logits, targets, bins=10, valid=valid)
    )
    assert torch.count_nonzero(crit.bin_count_ema) == 0
    crit.train()
    crit(logits, targets, valid)
    stored = crit.bin_count_ema.clone()
    assert torch.count_nonzero(stored) > 0
    # eval: uses the stored EMA, never changes it
    crit.eval()
    acc = stored.tolist()
    other, other_t, other_v = ghm_c_problem(seed=31)
    out = crit(other, other_t, other_v)
    ref, _ = ghm_c_reference(other, other_t, other_v, bins=10, acc=acc, update=False)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(crit.bin_count_ema, stored)
    # dtype conversions of the Module keep the counts' EMA in float64
    assert crit.half().bin_count_ema.dtype == torch.float64
    assert torch.equal(crit.to(torch.bfloat16).bin_count_ema, stored)
    # the buffer round-trips through state_dict
    fresh = fk.GHMCLoss(bins=10, momentum=0.75)
    fresh.load_state_dict(crit.state_dict())
    assert torch.equal(fresh.bin_count_ema, stored)


def test_ghm_r_module_ema_matches_reference_over_batches():
    crit = fk.GHMRLoss(mu=0.02, bins=10, momentum=0.7)
    assert "bin_count_ema" in crit.state_dict()
    acc = [0.0] * 10
    gen = make_gen(40)
    for _ in range(3):
        pred = torch.randn(30, 4, generator=gen, dtype=torch.float64) * 0.2
        target = torch.zeros(30, 4, dtype=torch.float64)
        weight = (torch.rand(30, 1, generator=gen) < 0.7).double()
        out = crit(pred, target, weight)
        ref = ghm_r_reference(pred, target, weight=weight, momentum=0.7, acc=acc)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# the Modules under torch.compile, the second derivative of GHM-R, properties, errors
# --------------------------------------------------------------------------------------------


def test_ghm_modules_compile_fullgraph_with_the_ema_update():
    """The Modules (EMA buffer updated in place in training mode) compile without a graph
    break and keep the same losses and EMA as eager over several steps."""
    torch._dynamo.reset()
    eager, traced = fk.GHMCLoss(bins=10), fk.GHMCLoss(bins=10)
    compiled = torch.compile(traced, fullgraph=True, backend="aot_eager")
    gen = make_gen(61)
    for _ in range(3):
        logits = torch.randn(32, 4, generator=gen) * 3
        targets = (torch.rand(32, 4, generator=gen) < 0.3).float()
        torch.testing.assert_close(compiled(logits, targets), eager(logits, targets))
    torch.testing.assert_close(traced.bin_count_ema, eager.bin_count_ema, rtol=0, atol=0)
    eager_r, traced_r = fk.GHMRLoss(), fk.GHMRLoss()
    compiled_r = torch.compile(traced_r, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        pred = torch.randn(16, 4, generator=gen) * 0.1
        torch.testing.assert_close(
            compiled_r(pred, torch.zeros(16, 4)), eager_r(pred, torch.zeros(16, 4))
        )
    torch.testing.assert_close(traced_r.bin_count_ema, eager_r.bin_count_ema, rtol=0, atol=0)


def test_ghm_r_second_derivative_is_exact():
    """GHM-R is built from differentiable ops: with the weights constant, d2L/dd2 is
    w mu^2 / (d^2 + mu^2)^(3/2) / N, elementwise."""
    mu, bins = 0.02, 5
    pred = (torch.randn(8, 4, generator=make_gen(73), dtype=torch.float64) * 0.1).requires_grad_(
        True
    )
    (g,) = torch.autograd.grad(
        fk.ghm_r_loss(pred, torch.zeros_like(pred), mu=mu, bins=bins), pred, create_graph=True
    )
    (h,) = torch.autograd.grad(g.sum(), pred)
    d = pred.detach()
    bin_of = (d.abs() / torch.sqrt(d * d + mu * mu) * bins).floor().long().clamp_max(bins - 1)
    per = torch.bincount(bin_of.flatten(), minlength=bins).double()
    w = d.numel() / (per[bin_of] * int((per > 0).sum()))
    expected = w * mu * mu / (d * d + mu * mu) ** 1.5 / d.numel()
    torch.testing.assert_close(h, expected, rtol=1e-10, atol=0)


@HYP
@given(
    st.lists(st.floats(-20, 20), min_size=1, max_size=24),
    st.integers(0, 2**31 - 1),
)
def test_ghm_c_one_bin_equals_bce_mean(logit_list, seed):
    """GHM-C with bins=1 is the plain BCE mean over the valid elements."""
    x = torch.tensor(logit_list, dtype=torch.float64)
    gen = make_gen(seed)
    y = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    valid = torch.rand(x.shape, generator=gen) < 0.7
    got = fk.ghm_c_loss(x, y, bins=1, valid=valid)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    expected = (bce * valid).sum() / max(int(valid.sum()), 1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@HYP
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=24), st.floats(1e-3, 1.0))
def test_ghm_r_one_bin_equals_asl1_mean(d_list, mu):
    """GHM-R with bins=1 is the mean authentic smooth-L1, sqrt(d^2 + mu^2) - mu."""
    d = torch.tensor(d_list, dtype=torch.float64)
    got = fk.ghm_r_loss(d, torch.zeros_like(d), mu=mu, bins=1)
    expected = (torch.sqrt(d * d + mu * mu) - mu).mean()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-15)


@HYP
@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_ghm_c_mean_is_bounded_by_bce_sum_per_bin(bins, seed):
    """The GHM-C loss is sum_j mean(BCE in bin j) / n: finite, >= 0, and at most the largest
    per-element BCE."""
    logits, targets, valid = ghm_c_problem(shape=(20,), seed=seed)
    loss = fk.ghm_c_loss(logits, targets, bins=bins, valid=valid)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.isfinite(loss) and loss >= 0
    top = bce[valid].max() if valid.any() else torch.tensor(0.0, dtype=bce.dtype)
    assert loss <= top + 1e-12


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: fk.ghm_c_loss(torch.zeros(3), torch.zeros(3), bins=0), "bins"),
        (lambda: fk.GHMCLoss(momentum=1.0), "momentum"),
        (lambda: fk.GHMCLoss(momentum=-0.1), "momentum"),
        # an int beyond float's range is compared as it is, not converted (no OverflowError)
        (lambda: fk.GHMCLoss(momentum=10**400), "momentum"),
        (lambda: fk.ghm_r_loss(torch.zeros(3), torch.zeros(3), mu=-(10**400)), "mu"),
        (lambda: fk.GHMCLoss(bins=0), "bins"),
        (lambda: fk.GHMCLoss(sync="yes"), "sync"),
        (lambda: fk.GHMRLoss(mu=0.0), "mu"),
        (lambda: fk.ghm_r_loss(torch.zeros(3), torch.zeros(3), mu=-1.0), "mu"),
        (lambda: fk.GHMCLoss(sync=True)(torch.zeros(3), torch.zeros(3)), "sync"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


def test_non_integer_bins_is_a_type_error():
    with pytest.raises(TypeError, match=r"^bins:"):
        fk.ghm_c_loss(torch.zeros(3), torch.zeros(3), bins=2.5)


def test_ghm_c_large_logits_are_finite():
    x = torch.tensor([-100.0, 100.0, 0.0, 50.0], requires_grad=True)
    loss = fk.ghm_c_loss(x, torch.tensor([1.0, 0.0, 1.0, 1.0]), bins=10)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(x.grad).all()
