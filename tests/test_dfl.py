"""Distribution Focal Loss: SPEC section 8.

Check values (loss and gradient), the top bin without clamp, the range check, inputs left
untouched, the CPU backends against the float64 reference, gradcheck over pred, targets and
weight, saturated logits, low precision, autocast, ``torch.compile``, no host reads off the
CPU, the GFL normalisation and the Module.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import focalkit as fk
import focalkit._compat as compat
from _generalized_refs import dfl_ref, reduce_ref, ultralytics_dfl
from conftest import assert_autocast_float32, assert_retained_graph_backward
from focalkit.kernels import chunked
from focalkit.kernels.dispatch import recorded_choices

F64 = {"rtol": 1e-10, "atol": 1e-12}
SPEC = {"rtol": 1e-9, "atol": 1e-12}
F32 = {"rtol": 1e-5, "atol": 1e-6}
CPU_BACKENDS = ["torch", "chunked"]
PRED = [0.1, 0.5, 2.0, 0.3, -1.0]  # n = 4


def _grad(x, y, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = fk.distribution_focal_loss(x, y, **kw)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_spec_check_values(dtype, backend):
    """SPEC sec. 8: y = 2.3, 0, 3, 4 (the top bin: mmdet raises, Ultralytics clamps), and the
    gradient at y = 2.3."""
    pred = torch.tensor([PRED] * 4, dtype=dtype)
    y = torch.tensor([2.3, 0.0, 3.0, 4.0], dtype=dtype)
    loss, grad = _grad(pred, y, reduction="none", backend=backend)
    expected = torch.tensor(
        [0.9832292786, 2.373229279, 2.173229279, 3.473229279], dtype=torch.float64
    )
    tol = SPEC if dtype == torch.float64 else {"rtol": 2e-6, "atol": 1e-9}
    torch.testing.assert_close(loss.double(), expected, **tol)
    g23 = torch.tensor(
        [0.09317933786, 0.1390072375, -0.07701278284, -0.1861904997, 0.03101670717],
        dtype=torch.float64,
    )
    torch.testing.assert_close(grad[0].double(), g23, **tol)


def test_four_sides_of_one_box_against_ultralytics():
    """SPEC sec. 8: the four targets as the sides of one box. Ultralytics' DFLoss(reg_max=5)
    clamps y = 4 to 3.99 (2.247479279); focalkit is exact there (2.250729279)."""
    pred = torch.tensor([PRED] * 4, dtype=torch.float64)
    y = torch.tensor([2.3, 0.0, 3.0, 4.0], dtype=torch.float64)
    ours = fk.distribution_focal_loss(pred.unsqueeze(0), y.unsqueeze(0))
    assert float(ours) == pytest.approx(2.250729279, rel=1e-9)
    theirs = ultralytics_dfl(pred, y.unsqueeze(0), reg_max=5)
    assert float(theirs) == pytest.approx(2.247479279, rel=1e-9)


def test_exact_and_continuous_at_the_top_bin():
    """l = min(floor y, n - 1): at y = n the weight is all on bin n, and the loss is the
    limit from below (no clamp, no IndexError)."""
    pred = torch.tensor([PRED], dtype=torch.float64)
    at_n = fk.distribution_focal_loss(pred, torch.tensor([4.0], dtype=torch.float64))
    below = fk.distribution_focal_loss(pred, torch.tensor([4.0 - 1e-9], dtype=torch.float64))
    ce = torch.nn.functional.cross_entropy(pred, torch.tensor([4]))
    torch.testing.assert_close(at_n, ce, **F64)
    assert abs(float(at_n - below)) < 1e-8


@pytest.mark.parametrize("value", [-0.5, 4.01, float("nan")])
def test_targets_outside_zero_to_n_raise(monkeypatch, value):
    pred = torch.tensor([PRED])
    with pytest.raises(ValueError, match=r"^targets: expected distances in \[0, n\] = \[0, 4\]"):
        fk.distribution_focal_loss(pred, torch.tensor([value]))
    import focalkit.functional.gfl as gfl

    monkeypatch.setattr(gfl, "may_read_values", lambda tensor: False)
    with pytest.raises(ValueError, match=r"^targets: expected distances"):
        fk.distribution_focal_loss(pred, torch.tensor([value]), validate=True)


def test_unchecked_targets_extrapolate_without_reading_outside_the_row():
    """validate=False: a target outside [0, n] uses the nearest bracket (linear
    extrapolation), never an index outside the row."""
    pred = torch.tensor([PRED, PRED], dtype=torch.float64)
    y = torch.tensor([-0.5, 4.5], dtype=torch.float64)
    for backend in CPU_BACKENDS:
        loss = fk.distribution_focal_loss(
            pred, y, validate=False, reduction="none", backend=backend
        )
        logp = torch.log_softmax(pred[0], -1)
        expected = torch.stack(
            [-(1.5 * logp[0] - 0.5 * logp[1]), -(-0.5 * logp[3] + 1.5 * logp[4])]
        )
        torch.testing.assert_close(loss, expected, **F64)


def test_inputs_are_never_modified():
    pred = torch.randn(3, 4, 8)
    y = torch.rand(3, 4) * 7
    y[0, 0] = 7.0
    w = torch.rand(3, 1)
    copies = [t.clone() for t in (pred, y, w)]
    for backend in CPU_BACKENDS:
        xg = pred.clone().requires_grad_(True)
        fk.distribution_focal_loss(xg, y, weight=w, backend=backend).backward()
        for t, c in zip((pred, y, w), copies, strict=True):
            assert torch.equal(t, c)


# --------------------------------------------------------------------------------------------
# backends against the float64 reference
# --------------------------------------------------------------------------------------------

SHAPES = [(7, 5), (3, 4, 17), (2, 3, 4, 9), (5, 2), (1, 33)]


def _problem(shape, gen):
    n = shape[-1] - 1
    pred = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    y = torch.rand(shape[:-1], generator=gen, dtype=torch.float64) * n
    flat = y.view(-1)
    flat[::4] = flat[::4].floor()  # integer targets, the top bin and 0 among them
    flat[1::5] = float(n)
    flat[2::7] = 0.0
    return pred, y


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_backends_match_reference(monkeypatch, backend, shape, weighted, reduction):
    """float64, chunks of 40 elements: values and gradients equal the per-row reference."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 40)
    gen = torch.Generator().manual_seed(sum(shape))
    pred, y = _problem(shape, gen)
    kw = {"reduction": reduction, "backend": backend}
    w = None
    if weighted:
        w = torch.rand(*shape[:-2], 1, generator=gen, dtype=torch.float64) + 0.5
        kw["weight"] = w
    out_w = torch.linspace(0.5, 1.5, y.numel(), dtype=torch.float64).reshape(y.shape)
    with recorded_choices() as choices:
        xg = pred.clone().requires_grad_(True)
        loss = fk.distribution_focal_loss(xg, y, **kw)
        (loss * (out_w if reduction == "none" else 1)).sum().backward()
    assert [c.backend for c in choices] == [backend]
    xr = pred.clone().requires_grad_(True)
    ref = dfl_ref(xr, y)
    if w is not None:
        ref = ref * w
    ref = reduce_ref(ref, reduction)
    (ref * (out_w if reduction == "none" else 1)).sum().backward()
    torch.testing.assert_close(loss, ref, **F64)
    torch.testing.assert_close(xg.grad, xr.grad, **F64)


def test_chunked_equals_plain_formula_in_float32(monkeypatch):
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 64)
    gen = torch.Generator().manual_seed(3)
    pred, y = _problem((40, 4, 17), gen)
    pred, y = pred.float(), y.float()
    w = torch.rand(40, 1, generator=gen)
    for kw in ({"reduction": "none"}, {"reduction": "sum"}, {"normalizer": 7.0, "weight": w}):
        plain = _grad(pred, y, backend="torch", **kw)
        fast = _grad(pred, y, backend="chunked", **kw)
        torch.testing.assert_close(fast[0], plain[0], **F32)
        torch.testing.assert_close(fast[1], plain[1], **F32)


def test_normalizer_gives_gfl_weighted_mean_over_boxes():
    """mmdet GFL / Ultralytics: per box, the 4-side mean times the box weight, summed and
    divided by the summed weight: weight=(N, 1), normalizer=4 * weight.sum()."""
    gen = torch.Generator().manual_seed(4)
    pred, y = _problem((6, 4, 17), gen)
    w = torch.rand(6, 1, generator=gen, dtype=torch.float64) + 0.5
    got = fk.distribution_focal_loss(pred, y, weight=w, normalizer=4 * w.sum())
    per_box = dfl_ref(pred, y).mean(-1, keepdim=True)
    torch.testing.assert_close(got, (per_box * w).sum() / w.sum(), **F64)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_pred_targets_and_weight(backend):
    """Targets away from the integers (the bracket [l, l + 1] is piecewise constant), weight
    per box; the target gradient is log S_l - log S_r."""
    gen = torch.Generator().manual_seed(5)
    pred = (torch.randn(3, 4, 6, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, 5, (3, 4), generator=gen) + 0.2 + 0.6 * torch.rand(3, 4, generator=gen)
    y = y.double().requires_grad_()
    w = (torch.rand(3, 1, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, r=reduction: fk.distribution_focal_loss(
                a, b, weight=c, reduction=r, backend=backend
            ),
            (pred, y, w),
        )


def test_gradient_is_softmax_minus_two_point_target():
    gen = torch.Generator().manual_seed(6)
    pred = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    y = torch.tensor([0.0, 2.5, 7.25, 8.0, 3.0], dtype=torch.float64)
    _, grad = _grad(pred, y, reduction="sum")
    target = torch.zeros_like(pred)
    left = torch.clamp(y.floor(), max=7).long()
    target[torch.arange(5), left] = (left + 1) - y
    target[torch.arange(5), left + 1] += y - left
    torch.testing.assert_close(grad, torch.softmax(pred, -1) - target, **F64)


def test_minimum_is_the_binary_entropy_not_zero():
    """At pred = log of the two-point target (other bins ~0) the loss is the entropy of
    y - l; only at an integer y is it ~0."""
    y = 2.3
    two_point = torch.full((5,), 1e-30, dtype=torch.float64)
    two_point[2], two_point[3] = 0.7, 0.3
    loss = fk.distribution_focal_loss(
        two_point.log().unsqueeze(0), torch.tensor([y], dtype=torch.float64)
    )
    entropy = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert float(loss) == pytest.approx(entropy, rel=1e-9)


def test_second_backward_through_retained_graph():
    gen = torch.Generator().manual_seed(7)
    pred, y = _problem((9, 6), gen)
    xr = pred.clone().requires_grad_(True)
    dfl_ref(xr, y).sum().backward()
    assert_retained_graph_backward(
        fk.distribution_focal_loss, pred.float(), y.float(), xr.grad, reduction="sum"
    )


def test_double_backward_is_refused():
    pred = torch.randn(3, 5, requires_grad=True)
    loss = fk.distribution_focal_loss(pred, torch.rand(3) * 4)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, pred, create_graph=True)


# --------------------------------------------------------------------------------------------
# numerics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_saturated_logits(backend, dtype):
    """SPEC sec. 8: logits at +-100 with the right bin on top, y = 0 or y = n: loss 0 and a
    finite (zero) gradient; the wrong bin on top: finite, about 200."""
    pred = torch.full((3, 5), -100.0, dtype=dtype)
    pred[0, 0] = 100.0
    pred[1, 4] = 100.0
    pred[2, 2] = 100.0
    y = torch.tensor([0.0, 4.0, 0.0], dtype=dtype)
    loss, grad = _grad(pred, y, reduction="none", backend=backend)
    assert float(loss[0]) == 0.0 and float(loss[1]) == 0.0
    assert float(loss[2]) == pytest.approx(200.0, rel=1e-2)
    assert torch.isfinite(grad).all() and grad.dtype == dtype
    assert float(grad[:2].abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_inputs_compute_in_float32(dtype):
    gen = torch.Generator().manual_seed(8)
    pred = (torch.randn(10, 4, 17, generator=gen) * 3).to(dtype)
    y = torch.rand(10, 4, generator=gen) * 16
    loss, grad = _grad(pred, y)
    ref, ref_g = _grad(pred.float(), y)
    assert loss.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(loss.float(), ref, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(grad.float(), ref_g, rtol=2e-2, atol=1e-4)


def test_autocast_runs_in_float32():
    gen = torch.Generator().manual_seed(9)
    pred = torch.randn(6, 4, 9, generator=gen)
    y = torch.rand(6, 4, generator=gen) * 8
    assert_autocast_float32(fk.distribution_focal_loss, pred, y)
    assert_autocast_float32(fk.distribution_focal_loss, pred.bfloat16(), y)


def test_torch_compile_fullgraph_equals_eager():
    gen = torch.Generator().manual_seed(10)
    pred, y = _problem((8, 4, 9), gen)
    pred, y = pred.float(), y.float()
    w = torch.rand(8, 1, generator=gen)

    def fn(a):
        return fk.distribution_focal_loss(a, y, weight=w, normalizer=4 * w.sum())

    torch._dynamo.reset()
    got = _grad_fn(torch.compile(fn, fullgraph=True), pred)
    exp = _grad_fn(fn, pred)
    torch.testing.assert_close(got[0], exp[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], exp[1], rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()


def _grad_fn(fn, x):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def test_no_host_reads_off_the_cpu(monkeypatch):
    """Forward and backward on 'meta' tensors (values unreadable, as on a GPU where a read
    syncs): nothing on the hot path reads a value."""
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(compat, "autocast_enabled", lambda device_type: False)
    pred = torch.randn(5, 4, 17, device="meta", requires_grad=True)
    y = torch.empty(5, 4, device="meta")
    w = torch.empty(5, 1, device="meta")
    loss = fk.distribution_focal_loss(pred, y, weight=w, normalizer=torch.empty((), device="meta"))
    loss.backward()
    assert pred.grad.device.type == "meta"


# --------------------------------------------------------------------------------------------
# arguments, reductions, Module
# --------------------------------------------------------------------------------------------


def test_reductions_and_empty_input():
    gen = torch.Generator().manual_seed(11)
    pred, y = _problem((6, 4, 9), gen)
    each = fk.distribution_focal_loss(pred, y, reduction="none")
    assert each.shape == (6, 4)
    torch.testing.assert_close(fk.distribution_focal_loss(pred, y), each.mean(), **F64)
    torch.testing.assert_close(
        fk.distribution_focal_loss(pred, y, reduction="sum"), each.sum(), **F64
    )
    torch.testing.assert_close(
        fk.distribution_focal_loss(pred, y, normalizer=0.0), each.sum(), **F64
    )
    empty = torch.zeros(0, 4, 9, requires_grad=True)
    loss = fk.distribution_focal_loss(empty, torch.zeros(0, 4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and empty.grad.shape == (0, 4, 9)


@pytest.mark.parametrize(
    ("args", "kw", "error", "message"),
    [
        (
            (torch.randn(3, 1), torch.rand(3)),
            {},
            ValueError,
            r"^pred: expected shape \(\*, n \+ 1\)",
        ),
        ((torch.randn(3, 5), torch.rand(3, 1)), {}, ValueError, r"^targets: expected shape \(3,\)"),
        (
            (torch.randn(3, 5), torch.ones(3, dtype=torch.long)),
            {},
            TypeError,
            r"^targets: expected a floating",
        ),
        (
            (torch.randn(3, 5), torch.rand(3)),
            {"weight": torch.tensor([1.0, -1.0, 1.0])},
            ValueError,
            r"^weight: expected values >= 0",
        ),
        (
            (torch.randn(3, 5), torch.rand(3)),
            {"weight": torch.rand(4)},
            ValueError,
            r"^weight: expected a shape",
        ),
        ((torch.randn(3, 5), torch.rand(3)), {"reduction": "avg"}, ValueError, r"^reduction:"),
        (
            (torch.randn(3, 5), torch.rand(3)),
            {"reduction": "sum", "normalizer": 3.0},
            ValueError,
            r"^normalizer:",
        ),
        ((torch.randn(3, 5), torch.rand(3)), {"backend": "cuda"}, ValueError, r"^backend:"),
    ],
)
def test_bad_arguments_name_the_argument(args, kw, error, message):
    with pytest.raises(error, match=message):
        fk.distribution_focal_loss(*args, **kw)


def test_module_equals_function_and_overrides():
    gen = torch.Generator().manual_seed(12)
    pred, y = _problem((5, 4, 9), gen)
    w = torch.rand(5, 1, generator=gen, dtype=torch.float64)
    crit = fk.DistributionFocalLoss(weight=w, normalizer=3.0)
    assert "weight" in crit.state_dict()
    torch.testing.assert_close(
        crit(pred, y), fk.distribution_focal_loss(pred, y, weight=w, normalizer=3.0)
    )
    other = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        crit(pred, y, weight=other, normalizer=9.0),
        fk.distribution_focal_loss(pred, y, weight=other, normalizer=9.0),
    )
    with pytest.raises(ValueError, match=r"^backend"):
        fk.DistributionFocalLoss(backend="gpu")
