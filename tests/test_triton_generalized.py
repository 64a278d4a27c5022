"""The Triton kernels of QFL and VFL (the sigmoid kernel's MODULATION 1-3), DFL (its own
kernel) and Poly-1 cross-entropy (the softmax kernel's epsilon) against the torch backend, in
Triton's interpreter on CPU (see ``_triton_interp``)."""

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
import_kernel("focalkit.kernels.triton_softmax_focal")
triton_dfl = import_kernel("focalkit.kernels.triton_dfl")

pytestmark = pytest.mark.triton

IGNORE = -100


def _iou_targets(kind: str, shape, gen: torch.Generator):
    """QFL / VFL targets: ``index`` (labels with background and ignored rows, and scores,
    some 0 and some NaN at rows that are not positives), ``soft`` (IoU-like positives among
    zeros, a few ignored entries), ``hard`` (0/1 floats) or ``int_dense``."""
    num_classes = shape[-1]
    if kind == "index":
        labels = sigmoid_targets("index", shape, gen)
        scores = torch.rand(shape[:-1], generator=gen)
        scores[torch.rand(shape[:-1], generator=gen) < 0.2] = 0.0
        positive = (labels >= 0) & (labels < num_classes)
        return labels, torch.where(positive, scores, float("nan"))
    if kind == "soft":
        q = torch.rand(shape, generator=gen)
        q[q < 0.6] = 0.0
        q[torch.rand(shape, generator=gen) < 0.1] = IGNORE
        return (q,)
    return (sigmoid_targets(kind, shape, gen),)


def _loss(name):
    return {"qfl": fk.quality_focal_loss, "vfl": fk.varifocal_loss}[name]


def _compare(name, logits, targets, **kw):
    def fn(x, t, **k):
        return _loss(name)(x, *t, **k)

    return compare_backends(fn, logits, targets, **kw)


KWS = {
    "qfl": [{"beta": 0.0}, {"beta": 0.5}, {"beta": 2.0}],
    "vfl": [
        {"gamma": 0.0, "alpha": 1.0},
        {"gamma": 0.5},
        {"gamma": 2.0},
        {"gamma": 2.0, "iou_weighted": False, "alpha": 0.5},
    ],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "soft", "hard", "int_dense"])
@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_qfl_vfl_match_torch(name, kind, dtype):
    """Forward and gradient equal the torch backend for every exponent, reduction and a
    normalizer."""
    gen = torch.Generator().manual_seed(0)
    shape = (13, 7)
    logits = (3 * torch.randn(shape, generator=gen)).to(dtype)
    targets = _iou_targets(kind, shape, gen)
    for kw in KWS[name]:
        for reduction in ("none", "mean", "sum"):
            _compare(name, logits, targets, reduction=reduction, **kw)
    _compare(name, logits, targets, normalizer=3.0)


@pytest.mark.parametrize("name", ["qfl", "vfl"])
@pytest.mark.parametrize("shape", [(1,), (7,), (1003,), (3, 1001), (2, 3, 5)])
def test_qfl_vfl_odd_sizes_and_layouts(name, shape):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(shape, generator=gen)
    for kind in ("soft", "index") if len(shape) > 1 else ("soft",):
        targets = _iou_targets(kind, shape, gen)
        for reduction in ("none", "sum"):
            _compare(name, logits, targets, reduction=reduction)
    base = torch.randn(9, 16, generator=gen)
    for strided in (base[:, ::2], base.t()):
        _compare(name, strided, _iou_targets("index", strided.shape, gen), reduction="mean")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_qfl_vfl_saturated_logits_and_empty(name, dtype):
    logits = torch.tensor([[-100.0, 100.0, -100.0], [100.0, -100.0, 100.0]]).to(dtype)
    key = "beta" if name == "qfl" else "gamma"
    for exponent in (0.0, 0.25, 2.0):
        for targets in (
            (torch.tensor([[0.0, 0.7, 1.0], [0.7, 0.0, 1.0]]),),
            (torch.tensor([1, 0]), torch.tensor([0.7, 1.0])),
        ):
            loss, grad = _compare(name, logits, targets, reduction="sum", **{key: exponent})
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    empty = torch.empty(0, 4).to(dtype)
    loss, grad = _compare(name, empty, (torch.empty(0, dtype=torch.long), torch.empty(0)))
    assert grad.shape == (0, 4) and torch.isfinite(loss).all()


@pytest.mark.parametrize("scale", [1.0, 0.37, 2.0**12])
@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_qfl_vfl_reduction_in_the_kernel_and_any_grad_output(name, scale):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(11, 6, generator=gen)
    targets = _iou_targets("index", (11, 6), gen)
    for kw in ({"reduction": "mean"}, {"normalizer": torch.tensor(3)}, {"normalizer": 0.0}):
        _compare(name, logits, targets, scale=scale, **kw)


def test_qfl_vfl_triton_lacks_weight_and_targets_that_require_grad():
    """ "auto" falls back to chunked... here the interpreter makes CPU tensors Triton's: the
    options the kernel lacks go to torch under "auto" and raise under "triton"."""
    x = torch.randn(4, 3)
    labels = torch.tensor([0, 3, 1, 2])
    for fn in (fk.quality_focal_loss, fk.varifocal_loss):
        for args, kw in (
            ((torch.rand(4, 3),), {"weight": torch.rand(4, 1)}),
            ((torch.rand(4, 3, requires_grad=True),), {}),
            ((labels, torch.rand(4, requires_grad=True)), {}),
        ):
            with dispatch.recorded_choices() as choices:
                fn(x, *args, **kw)
            assert choices[0].backend == "chunked"
            with pytest.raises(ValueError, match="backend='triton' requires options"):
                fn(x, *args, backend="triton", **kw)


# --------------------------------------------------------------------------------------------
# DFL
# --------------------------------------------------------------------------------------------


def _dfl(pred, y, **kw):
    return fk.distribution_focal_loss(pred, y, **kw)


def _dfl_problem(rows, bins, gen, dtype=torch.float32):
    n = bins - 1
    pred = (torch.randn(rows, bins, generator=gen) * 3).to(dtype)
    y = torch.rand(rows, generator=gen) * n
    y[::4] = y[::4].floor()
    y[1::5] = float(n)
    y[2::7] = 0.0
    return pred, y


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bins", [2, 5, 16, 17, 33, 1100])
def test_dfl_matches_torch(bins, dtype):
    """Bin counts from 2 to more than one column block (1100 > MAX_BLOCK_C: the online softmax
    loops), every reduction, a per-row weight and a normalizer."""
    gen = torch.Generator().manual_seed(bins)
    pred, y = _dfl_problem(37, bins, gen, dtype)
    w = torch.rand(37, generator=gen)
    for kw in ({"reduction": "none"}, {"reduction": "mean"}, {"reduction": "sum"}):
        compare_backends(_dfl, pred, y, **kw)
        compare_backends(_dfl, pred, y, weight=w, **kw)
    compare_backends(_dfl, pred, y, weight=w, normalizer=torch.tensor(4.0) * w.sum())


def test_dfl_box_shapes_strides_and_empty():
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(6, 4, 17, generator=gen)
    y = torch.rand(6, 4, generator=gen) * 16
    compare_backends(_dfl, pred, y, weight=torch.rand(6, 1, generator=gen))
    wide = torch.randn(20, 34, generator=gen)[:, ::2]  # strides (34, 2)
    assert not wide.is_contiguous()
    compare_backends(_dfl, wide, torch.rand(20, generator=gen) * 16, reduction="none")
    compare_backends(_dfl, torch.randn(17, 9, generator=gen).t(), torch.rand(9) * 16)
    loss, grad = compare_backends(_dfl, torch.empty(0, 4, 17), torch.empty(0, 4))
    assert grad.shape == (0, 4, 17) and float(loss) == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dfl_saturated_logits(dtype):
    pred = torch.full((3, 5), -100.0)
    pred[0, 0], pred[1, 4], pred[2, 2] = 100.0, 100.0, 100.0
    y = torch.tensor([0.0, 4.0, 0.0])
    loss, grad = compare_backends(_dfl, pred.to(dtype), y, reduction="none")
    assert float(loss[0]) == 0.0 and float(loss[1]) == 0.0
    assert torch.isfinite(grad).all()


def test_dfl_unchecked_targets_outside_the_range_stay_in_their_row():
    """validate=False with targets outside [0, n] (and NaN): the kernel clamps the bins as the
    torch formula does, so it reads nothing outside the row and agrees with it."""
    pred = torch.randn(4, 5)
    y = torch.tensor([-0.5, 4.5, 100.0, 2.0])
    compare_backends(_dfl, pred, y, validate=False, reduction="none")
    out = fk.distribution_focal_loss(
        pred, torch.tensor([float("nan")] * 4), validate=False, backend="triton"
    )
    assert torch.isnan(out)


@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_dfl_stored_gradient_and_retained_graph(scale):
    gen = torch.Generator().manual_seed(4)
    pred, y = _dfl_problem(9, 17, gen)
    compare_backends(_dfl, pred, y, scale=scale)
    x = pred.clone().requires_grad_(True)
    loss = fk.distribution_focal_loss(x, y, backend="triton")
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    loss.backward()
    torch.testing.assert_close(x.grad, first)


def test_dfl_triton_lacks_targets_that_require_grad():
    pred = torch.randn(3, 5)
    y = (torch.rand(3) * 4).requires_grad_(True)
    assert resolve_backend("distribution_focal_loss", "auto", pred).backend == "triton"
    with dispatch.recorded_choices() as choices:
        fk.distribution_focal_loss(pred, y)
    assert choices[0].backend == "chunked"
    with pytest.raises(ValueError, match="targets that require grad"):
        fk.distribution_focal_loss(pred, y, backend="triton")


def test_dfl_block_shapes():
    """Tiles of about TILE elements (a 64 x 32 tile of bf16 rows spilled registers on sm_90),
    at least 2 rows, at most 64."""
    assert triton_dfl._blocks(2) == (64, 2)
    assert triton_dfl._blocks(17) == (32, 32)
    assert triton_dfl._blocks(65) == (8, 128)
    assert triton_dfl._blocks(5000) == (2, 1024)


# --------------------------------------------------------------------------------------------
# Poly-1 cross-entropy (the softmax kernel with epsilon)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("epsilon", [-1.0, 0.0, 1.0, 2.0])
def test_poly1_ce_matches_torch(epsilon, dtype):
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(23, 7, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, 7, (23,), generator=gen)
    labels[::5] = IGNORE
    w = torch.rand(7, generator=gen) + 0.5
    for kw in ({}, {"weight": w}, {"reduction": "sum"}, {"reduction": "none", "weight": w}):
        compare_backends(fk.poly1_cross_entropy, logits, labels, epsilon=epsilon, **kw)
    images = torch.randn(2, 7, 3, 4, generator=gen).to(dtype)
    compare_backends(fk.poly1_cross_entropy, images, torch.randint(0, 7, (2, 3, 4), generator=gen))


def test_poly1_ce_auto_and_what_triton_lacks():
    x = torch.randn(5, 4)
    with dispatch.recorded_choices() as choices:
        fk.poly1_cross_entropy(x, torch.tensor([0, 1, 2, 3, 0]))
        fk.poly1_cross_entropy(x, torch.tensor([0, 1, 2, 3, 0]), label_smoothing=0.1)
    assert [c.backend for c in choices] == ["triton", "torch"]
    with pytest.raises(ValueError, match=r"label_smoothing=0\.1"):
        fk.poly1_cross_entropy(
            x, torch.tensor([0, 1, 2, 3, 0]), label_smoothing=0.1, backend="triton"
        )


def test_softmax_focal_unchanged_by_epsilon_zero():
    """The softmax kernel's epsilon term is exactly 0 for focal loss."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(17, 5, generator=gen) * 3
    labels = torch.randint(0, 5, (17,), generator=gen)
    for gamma in (0.0, 2.0):
        a = fk.softmax_focal_loss(logits, labels, gamma=gamma, backend="triton", reduction="none")
        b = fk.poly1_cross_entropy(logits, labels, epsilon=0.0, backend="triton", reduction="none")
        if gamma == 0:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(
            a, fk.softmax_focal_loss(logits, labels, gamma=gamma, backend="torch", reduction="none")
        )
