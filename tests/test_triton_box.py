"""The Triton IoU-family box kernel against the torch backend (Triton's interpreter on CPU).

The torch backend (autograd through ``_Geometry``) is the reference: every kind's loss and its
gradient w.r.t. ``pred_boxes`` must match it within the one tolerance table ``TOL``, over
dtypes, sizes, strides, formats, reductions and degenerate boxes (where min/max ties and the
intersection clamp decide the gradient).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import focalkit as fk
from _triton_interp import (  # noqa: F401 (interpret: autouse fixture)
    DTYPES,
    compare_backends,
    import_kernel,
    interpret,
)
from conftest import DEGENERATE_BOXES, FP16_OVERFLOW

triton_box = import_kernel("focalkit.kernels.triton_box")

pytestmark = pytest.mark.triton

LOSSES = {
    "iou": fk.iou_loss,
    "iou_log": lambda p, t, **kw: fk.iou_loss(p, t, mode="log", **kw),
    "giou": fk.giou_loss,
    "diou": fk.diou_loss,
    "ciou": fk.ciou_loss,
    "eiou": fk.eiou_loss,
    "focal_eiou": fk.focal_eiou_loss,  # gamma 0.5
    "focal_eiou_g0": lambda p, t, **kw: fk.focal_eiou_loss(p, t, gamma=0.0, **kw),
    "focal_eiou_g2": lambda p, t, **kw: fk.focal_eiou_loss(p, t, gamma=2.0, **kw),
}
MODULES = {
    "iou": fk.IoULoss,
    "giou": fk.GIoULoss,
    "diou": fk.DIoULoss,
    "ciou": fk.CIoULoss,
    "eiou": fk.EIoULoss,
    "focal_eiou": fk.FocalEIoULoss,
}
# the cases of test_box.py, plus containment and shared edges (ties of min/max)
DEGENERATE = {
    **DEGENERATE_BOXES,
    "contained": ([1.0, 1, 2, 3], [0.0, 0, 4, 4]),
    "containing": ([0.0, 0, 4, 4], [1.0, 1, 2, 3]),
    "shared_left_edge": ([0.0, 0, 2, 3], [0.0, 1, 4, 2]),
}


def _boxes(n: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` xyxy pairs: overlapping, plus (cycling through the first rows) identical,
    disjoint, contained and zero-width predictions."""
    gen = torch.Generator().manual_seed(seed)
    xy = 20 * torch.rand(n, 2, generator=gen)
    wh = 0.5 + 8 * torch.rand(n, 2, generator=gen)
    target = torch.cat([xy, xy + wh], -1)
    jitter = torch.randn(n, 4, generator=gen)
    pred = target + jitter
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2])  # keep x2 >= x1 (zero width allowed)
    special = torch.arange(n) % 8
    pred[special == 1] = target[special == 1]  # identical
    pred[special == 2] = target[special == 2] + 40.0  # disjoint
    inner = target + torch.cat([0.25 * wh, -0.25 * wh], -1)
    pred[special == 3] = inner[special == 3]  # contained
    pred[special == 4, 2] = pred[special == 4, 0]  # zero width
    return pred.to(dtype), target.to(dtype)


def _compare(kind, pred, target, **kw):
    return compare_backends(LOSSES[kind], pred, target, **kw)


# --------------------------------------------------------------------------------------------
# forward and gradient equal the torch backend
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(LOSSES))
def test_matches_torch_every_reduction(kind, dtype):
    """Every kind, dtype and reduction, with and without weight and normalizer."""
    pred, target = _boxes(37, seed=len(kind), dtype=dtype)
    weight = torch.rand(37, generator=torch.Generator().manual_seed(5))
    for reduction in ("none", "mean", "sum"):
        _compare(kind, pred, target, reduction=reduction)
        _compare(kind, pred, target, reduction=reduction, weight=weight)
    _compare(kind, pred, target, normalizer=7.0, weight=weight)
    _compare(kind, pred, target, normalizer=torch.tensor(0.0))  # clamped to 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_degenerate_boxes_match_torch_and_are_finite(dtype):
    """Identical, disjoint, touching, contained, zero-width/height and point boxes: the same
    values and (tie-split, clamp-passing) gradients as torch, finite where torch's are."""
    pred = torch.tensor([p for p, _ in DEGENERATE.values()], dtype=dtype)
    target = torch.tensor([t for _, t in DEGENERATE.values()], dtype=dtype)
    for kind in LOSSES:
        loss, grad = _compare(kind, pred, target, reduction="none")
        assert torch.isfinite(loss).all(), kind
        for i, name in enumerate(DEGENERATE):
            if not (dtype == torch.float16 and name in FP16_OVERFLOW):
                assert torch.isfinite(grad[i]).all(), (kind, name, grad[i])


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_box_formats(fmt, dtype):
    """Non-xyxy formats are converted in float32 by torch (differentiably), then the kernel."""
    pred, target = _boxes(19, seed=3)
    pred, target = fk.box_convert(pred, "xyxy", fmt), fk.box_convert(target, "xyxy", fmt)
    for kind in LOSSES:
        _compare(kind, pred.to(dtype), target.to(dtype), box_format=fmt, reduction="none")


@pytest.mark.parametrize("shape", [(), (1,), (7,), (257,), (3, 5), (2, 3, 43)], ids=str)
def test_odd_sizes_and_leading_dims(shape):
    """Sizes that are not a multiple of the block, several programs, leading batch dims."""
    n = math.prod(shape)
    pred, target = _boxes(n, seed=n)
    pred, target = pred.reshape(*shape, 4), target.reshape(*shape, 4)
    weight = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    for kind in ("giou", "ciou", "focal_eiou"):
        loss, _ = _compare(kind, pred, target, reduction="none")
        assert loss.shape == shape
        _compare(kind, pred, target, weight=weight)


def test_non_contiguous_inputs():
    """Column slices, transposes and row steps: read through strides, gradient of the shape."""
    pred, target = _boxes(24, seed=4)
    extra = torch.randn(24, 2)
    cases = [
        (torch.cat([pred, extra], -1)[:, :4], torch.cat([extra, target], -1)[:, 2:]),
        (pred.t().contiguous().t(), target.t().contiguous().t()),
        (pred[::3], target[1::3]),
        (pred.reshape(4, 6, 4).transpose(0, 1), target.reshape(4, 6, 4).transpose(0, 1)),
        (pred.t().contiguous().t(), target[5].expand(24, 4)),  # one target for all: stride 0
    ]
    for p, t in cases:
        assert not p.is_contiguous() and not t.is_contiguous()
        for kind in LOSSES:
            _, grad = _compare(kind, p, t, reduction="none")
            assert grad.shape == p.shape


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty(reduction):
    """Empty input: no launch, a zero (mean, sum) still connected to the graph."""
    for shape in ((0, 4), (2, 0, 4)):
        pred = torch.empty(shape)
        for kind in ("iou", "ciou", "focal_eiou"):
            loss, grad = _compare(kind, pred, torch.empty(shape), reduction=reduction)
            assert grad.shape == shape and torch.isfinite(loss).all()


def test_float64_targets_and_mixed_dtypes():
    """Targets of another dtype than the predictions are read as float32, like torch."""
    pred, target = _boxes(11, seed=6, dtype=torch.float16)
    for t in (target.double(), target.float(), target.bfloat16()):
        for kind in ("iou", "eiou"):
            _compare(kind, pred, t, reduction="none")


# --------------------------------------------------------------------------------------------
# autograd behaviour, Modules, validate, autocast
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MODULES))
def test_module_forwards_backend(kind):
    """The Module stores ``backend`` (in its repr) and equals the function."""
    pred, target = _boxes(9, seed=7)
    module = MODULES[kind](backend="triton", reduction="sum")
    assert "backend='triton'" in repr(module)
    torch.testing.assert_close(
        module(pred, target), MODULES[kind](backend="torch", reduction="sum")(pred, target)
    )
    with pytest.raises(ValueError, match=r"^backend: expected one of"):
        MODULES[kind](backend="cuda")


def test_retained_graph_and_no_grad_paths():
    """A second backward through a retained graph is exact; inputs without grad skip it."""
    pred, target = _boxes(10, seed=8)
    x = pred.clone().requires_grad_(True)
    loss = fk.ciou_loss(x, target, backend="triton")
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    loss.backward()
    torch.testing.assert_close(x.grad, first)
    with torch.no_grad():
        torch.testing.assert_close(
            fk.ciou_loss(pred, target, backend="triton"), fk.ciou_loss(pred, target)
        )


def test_double_backward_is_refused():
    pred, target = _boxes(4, seed=9)
    x = pred.clone().requires_grad_(True)
    loss = fk.giou_loss(x, target, backend="triton")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_validate_works_on_triton():
    good = torch.tensor([[0.0, 0, 2, 2]])
    bad = torch.tensor([[0.0, 0, 2, 2], [3.0, 1, 2, 2]])
    fk.giou_loss(good, good, validate=True, backend="triton")
    with pytest.raises(ValueError, match=r"^pred_boxes: expected x2 >= x1.*index \(1,\)"):
        fk.giou_loss(bad, bad, validate=True, backend="triton")
    with pytest.raises(ValueError, match=r"^pred_boxes:"):  # after the format conversion
        fk.iou_loss(
            torch.tensor([[0.0, 0, -1, 2]]),
            good,
            box_format="xywh",
            validate=True,
            backend="triton",
        )
    with pytest.raises(ValueError, match=r"^target_boxes:"):
        fk.CIoULoss(validate=True, backend="triton")(bad[[0, 0]].half(), bad.half())


def test_autocast_returns_float32():
    pred, target = _boxes(5, seed=10, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fk.diou_loss(pred, target, backend="triton")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fk.diou_loss(pred.float(), target.float(), backend="torch"))


def test_no_host_sync():
    """Under FakeTensorMode (no data: any value read raises) the whole call, forward and
    backward with a tensor normalizer, runs and launches the kernel once; validate=True,
    which reads values, is caught, so the check can see a sync."""
    launches = []

    class _Stub:
        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((grid, kw["KIND"]))

    original = triton_box._box_kernel
    triton_box._box_kernel = _Stub()
    try:
        with FakeTensorMode():
            pred = torch.rand(300, 4, requires_grad=True)
            target, weight = torch.rand(300, 4), torch.rand(300)
            loss = fk.ciou_loss(
                pred, target, weight=weight, normalizer=torch.tensor(3.0), backend="triton"
            )
            loss.backward()
            assert pred.grad.shape == (300, 4)
            with pytest.raises(Exception, match=r"local_scalar_dense|data-dependent"):
                fk.ciou_loss(pred, target, backend="triton", validate=True)
    finally:
        triton_box._box_kernel = original
    assert launches == [((2,), triton_box.KINDS["ciou"])]


# --------------------------------------------------------------------------------------------
# dispatch: what "auto" picks and what "triton" refuses
# --------------------------------------------------------------------------------------------


def test_forced_triton_errors_and_auto_fallbacks():
    """float64 and target_boxes that require grad run on torch under "auto"; "triton" raises
    a ValueError naming what is required and what was found."""
    pred, target = _boxes(6, seed=11)
    with pytest.raises(ValueError, match=r"backend='triton' requires dtype.*torch.float64"):
        fk.giou_loss(pred.double(), target.double(), backend="triton")
    torch.testing.assert_close(
        fk.giou_loss(pred.double(), target.double(), backend="auto"),
        fk.giou_loss(pred.double(), target.double(), backend="torch"),
    )
    t = target.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"backend='triton' requires options.*target_boxes"):
        fk.eiou_loss(pred, t, backend="triton")
    fk.eiou_loss(pred, t, backend="auto").backward()  # torch: the target gets a gradient
    assert t.grad is not None and t.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"^backend: expected one of"):
        fk.ciou_loss(pred, target, backend="cuda")
    with pytest.raises(ValueError, match=r"^target_boxes: expected a tensor on cpu"):
        fk.ciou_loss(pred, target.to("meta"), backend="triton")


def test_auto_is_torch_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    pred, target = _boxes(3, seed=12)
    fk.giou_loss(pred, target)  # auto -> torch
    with pytest.raises(ValueError, match="backend='triton' requires a CUDA tensor"):
        fk.giou_loss(pred, target, backend="triton")


def test_import_and_auto_without_triton():
    """With triton blocked, focalkit imports, "auto" runs on torch and never loads the kernel
    module, and "triton" raises."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, focalkit as fk\n"
        "p = torch.tensor([[0.0, 0, 4, 4]]); t = torch.tensor([[1.0, 1, 5, 5]])\n"
        "assert abs(fk.giou_loss(p, t).item() - 0.688695652) < 1e-6\n"
        "assert 'focalkit.kernels.triton_box' not in sys.modules\n"
        "try:\n"
        "    fk.giou_loss(p, t, backend='triton')\n"
        "except ValueError as e:\n"
        "    assert 'requires triton' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------------------------
# the atan helper
# --------------------------------------------------------------------------------------------


def test_atan_matches_torch_over_the_float32_range():
    """Cephes atanf: within 2 ulp-scale relative error of float64 atan from 1e-30 to 1e30,
    exact signs, atan(0) = 0, atan(+-inf) = +-pi/2, continuous across the reduction points."""
    edges = torch.tensor([math.tan(3 * math.pi / 8), math.tan(math.pi / 8)], dtype=torch.float64)
    near_edges = torch.cat([edges * (1 + k) for k in (-1e-6, -1e-7, 0.0, 1e-7, 1e-6)])
    special = torch.tensor([0.0, 1.0, float("inf")], dtype=torch.float64)
    mags = torch.cat([torch.logspace(-30, 30, 4001, dtype=torch.float64), near_edges, special])
    x = torch.cat([mags, -mags]).float()
    got = triton_box.triton_atan(x)
    ref = torch.atan(x.double())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=2.5e-7, atol=0)
    torch.testing.assert_close(got, torch.atan(x), rtol=2.5e-7, atol=0)
    assert got[x == 0].eq(0).all() and torch.equal(torch.sign(got), torch.sign(x))
    assert triton_box.triton_atan(torch.tensor([float("nan")])).isnan().all()
