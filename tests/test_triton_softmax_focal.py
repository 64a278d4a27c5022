"""The Triton softmax focal kernel against the torch backend (Triton's interpreter on CPU).

The interpreter's set-up (``TRITON_INTERPRET=1`` at decoration, restored for the other test
modules of the worker) and the tolerance table are ``_triton_interp``'s.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import focalkit as fk
from _triton_interp import (  # noqa: F401 (interpret: autouse fixture)
    DTYPES,
    compare_backends,
    import_kernel,
    interpret,
)
from focalkit.functional import focal as focal_impl

tsf = import_kernel("focalkit.kernels.triton_softmax_focal")

pytestmark = pytest.mark.triton

GAMMAS = [0.0, 0.5, 2.0]


def _compare(logits, targets, **kw):
    return compare_backends(fk.softmax_focal_loss, logits, targets, **kw)


def _labels(shape, num_classes, gen, ignore=0.2):
    labels = torch.randint(0, num_classes, shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < ignore, -100, labels)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_classes", [3, 17, 130])
def test_matches_torch(dtype, num_classes, monkeypatch):
    """Forward and gradient equal the torch backend for every weight, alpha, gamma and
    reduction; C = 130 runs with 64-column blocks (3 blocks, the last one partial)."""
    if num_classes == 130:
        monkeypatch.setattr(tsf, "MAX_BLOCK", 64)
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(11, num_classes, generator=gen)).to(dtype)
    targets = _labels((11,), num_classes, gen)
    weights = [None, torch.rand(num_classes, generator=gen) + 0.5]
    alphas = [None, 0.25, torch.rand(num_classes, generator=gen)]
    for weight in weights:
        for gamma in GAMMAS:
            for alpha in alphas:
                for reduction in ("none", "mean", "sum"):
                    _compare(
                        logits,
                        targets,
                        weight=weight,
                        gamma=gamma,
                        alpha=alpha,
                        reduction=reduction,
                    )
    _compare(logits, targets, reduction="mean", normalizer=3.0)
    _compare(logits, targets.int(), reduction="mean", weight=weights[1])  # int32 labels


@pytest.mark.parametrize(
    ("shape", "target_shape"),
    [((1, 5), (1,)), ((7, 5), (7,)), ((5,), ()), ((3, 17, 4), (3, 4)), ((2, 6, 3, 5), (2, 3, 5))],
)
def test_shapes(shape, target_shape):
    """Odd M, a single row, (C,) logits and (N, C, d...) inputs."""
    gen = torch.Generator().manual_seed(2)
    logits = 2 * torch.randn(shape, generator=gen)
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    targets = _labels(target_shape, num_classes, gen, ignore=0.2 if target_shape else 0.0)
    weight = torch.rand(num_classes, generator=gen) + 0.5
    for reduction in ("none", "mean", "sum"):
        _compare(logits, targets, reduction=reduction)
        _compare(logits, targets, reduction=reduction, weight=weight, gamma=0.5)


def test_non_contiguous_logits():
    """Strided logits (read through their strides) give the torch backend's values."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(9, 34, generator=gen)
    for logits in (base[:, ::2], base[:, :16].t(), base[::2, 1:]):
        assert not logits.is_contiguous()
        targets = _labels(logits.shape[:1], logits.shape[1], gen)
        for reduction in ("none", "mean"):
            _compare(logits, targets, reduction=reduction, alpha=0.5)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty(reduction):
    """Empty input: no launch, zero loss (not NaN) and an empty gradient."""
    for logits, targets in (
        (torch.empty(0, 4), torch.empty(0, dtype=torch.long)),
        (torch.empty(2, 4, 0), torch.empty(2, 0, dtype=torch.long)),
    ):
        loss, grad = _compare(logits, targets, reduction=reduction)
        assert grad.shape == logits.shape
        assert torch.isfinite(loss).all()


def test_all_rows_ignored():
    logits = torch.randn(4, 5)
    targets = torch.full((4,), -100)
    loss, grad = _compare(logits, targets, reduction="mean")
    assert loss.item() == 0 and not grad.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_extreme_logits_finite(dtype, gamma):
    """Logits spread +-100 give finite loss and gradient, equal to the torch backend
    (p_t = 1 exactly, p_t ~ exp(-200), and ties)."""
    logits = torch.tensor(
        [[-100.0, 100.0, -100.0], [100.0, -100.0, 100.0], [0.0, 100.0, -100.0]]
    ).to(dtype)
    for targets in (torch.tensor([1, 1, 2]), torch.tensor([0, 2, 1]), torch.tensor([2, 0, 0])):
        for reduction in ("none", "sum"):
            loss, grad = _compare(logits, targets, gamma=gamma, reduction=reduction)
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_gamma_zero_is_cross_entropy():
    """gamma=0, alpha=None equals F.cross_entropy in value and gradient."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 7, 3, generator=gen)
    targets = _labels((6, 3), 7, gen)
    weight = torch.rand(7, generator=gen) + 0.5
    for w in (None, weight):
        for reduction in ("none", "mean", "sum"):
            x1 = logits.clone().requires_grad_(True)
            x2 = logits.clone().requires_grad_(True)
            ours = fk.softmax_focal_loss(
                x1, targets, gamma=0.0, weight=w, reduction=reduction, backend="triton"
            )
            ref = F.cross_entropy(x2, targets, weight=w, reduction=reduction)
            torch.testing.assert_close(ours, ref)
            ours.sum().backward()
            ref.sum().backward()
            torch.testing.assert_close(x1.grad, x2.grad)


def test_module_retained_graph_and_double_backward():
    """The Module forwards ``backend``; a second backward through a retained graph is exact;
    create_graph=True is refused like on the torch path."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 4, generator=gen, requires_grad=True)
    targets = torch.tensor([0, 3, -100, 1, 2])
    crit = fk.SoftmaxFocalLoss(backend="triton", alpha=[0.1, 0.2, 0.3, 0.4])
    loss = crit(logits, targets)
    torch.testing.assert_close(
        loss,
        fk.softmax_focal_loss(logits, targets, alpha=[0.1, 0.2, 0.3, 0.4], backend="torch"),
    )
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    logits.grad = None
    loss.backward()
    torch.testing.assert_close(logits.grad, first)
    loss = crit(logits, targets)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, logits, create_graph=True)


def test_unsupported_options_fall_back_or_raise():
    """Probability targets, label smoothing, gamma='flsd53' and tensor gamma run on torch under
    "auto" and raise under "triton"; float64 too."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 3, generator=gen)
    labels = torch.tensor([0, 2, 1, -100])
    probs = torch.softmax(torch.randn(4, 3, generator=gen), -1)
    cases = [
        (probs, {}),
        (labels, {"label_smoothing": 0.1}),
        (labels, {"gamma": "flsd53"}),
        (labels, {"gamma": torch.tensor(1.5)}),
    ]
    for targets, kw in cases:
        auto = fk.softmax_focal_loss(logits, targets, backend="auto", **kw)
        torch.testing.assert_close(
            auto, fk.softmax_focal_loss(logits, targets, backend="torch", **kw)
        )
        with pytest.raises(ValueError, match="backend='triton' requires options"):
            fk.softmax_focal_loss(logits, targets, backend="triton", **kw)
    x64 = logits.double()
    torch.testing.assert_close(
        fk.softmax_focal_loss(x64, labels, backend="auto"),
        fk.softmax_focal_loss(x64, labels, backend="torch"),
    )
    with pytest.raises(ValueError, match=r"backend='triton' requires dtype.*float64"):
        fk.softmax_focal_loss(x64, labels, backend="triton")
    with pytest.raises(ValueError, match="backend: expected one of"):
        fk.softmax_focal_loss(logits, labels, backend="cuda")


def test_auto_uses_kernel_only_under_interpreter(monkeypatch):
    """On CPU "auto" runs the kernel under TRITON_INTERPRET=1 and never without it."""
    calls = []
    real = tsf.triton_softmax_focal

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(tsf, "triton_softmax_focal", spy)
    logits, targets = torch.randn(3, 4), torch.tensor([0, 1, 3])
    fk.softmax_focal_loss(logits, targets)
    assert calls == [1]
    monkeypatch.delenv("TRITON_INTERPRET")
    fk.softmax_focal_loss(logits, targets)
    fk.SoftmaxFocalLoss()(logits, targets)
    assert calls == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"reduction": "sum"},
        {"weight": "w"},
        {"weight": "w", "alpha": "a"},
        {"normalizer": torch.tensor(5)},
        {"normalizer": 0.0},
    ],
    ids=["mean", "sum", "weight_mean", "weight_alpha_c", "norm_tensor", "norm_zero"],
)
@pytest.mark.parametrize("scale", [1.0, 0.37, 2.0**12])
def test_reduction_in_the_kernel_and_any_grad_output(dtype, kw, scale):
    """The mean's 1 / sum w[y] (computed from the labels before the kernel) or 1 / normalizer
    is folded into the kernel's gradient and grad_output is applied on the device: values and
    gradients equal the torch backend for ``loss.backward()``, a loss weight and a large loss
    scale, with ignored rows and class weights."""
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(13, 7, generator=gen).to(dtype)
    labels = _labels((13,), 7, gen)
    kw = dict(kw)
    if kw.get("weight") == "w":
        kw["weight"] = torch.rand(7, generator=gen) + 0.5
    if kw.get("alpha") == "a":
        kw["alpha"] = torch.rand(7, generator=gen)
    _compare(logits, labels, scale=scale, **kw)


def test_index_denominator_is_cross_entropy_s():
    """The mean's denominator from the labels equals F.cross_entropy's sum of w[y] over the
    non-ignored rows (checked through the weighted mean)."""
    gen = torch.Generator().manual_seed(10)
    labels = _labels((40,), 6, gen)
    w = torch.rand(6, generator=gen)
    got = focal_impl.index_denominator(labels, w, 6, -100)
    x = torch.zeros(40, 6)
    ce_sum = F.cross_entropy(x, labels, weight=w, reduction="sum")
    ce_mean = F.cross_entropy(x, labels, weight=w)
    torch.testing.assert_close(got, ce_sum / ce_mean)
    assert focal_impl.index_denominator(labels, None, 6, -100) == (labels != -100).sum()
