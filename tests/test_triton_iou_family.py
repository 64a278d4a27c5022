"""The Triton box kernel's new bases and modifiers (SIoU, MPDIoU, Shape-IoU, Wise-IoU v1 and
its focusing factor, Alpha-, Inner-, Focaler-IoU, gated CIoU) against the torch backend, in
Triton's interpreter on CPU: values and analytic gradients within the tolerance table of
``_triton_interp``, over dtypes, degenerate boxes, formats, sizes and strides."""

from __future__ import annotations

import functools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import focalkit as fk
from _triton_interp import (  # noqa: F401 (interpret: autouse fixture)
    DTYPES,
    TOL,
    compare_backends,
    import_kernel,
    interpret,
)
from focalkit.kernels.dispatch import recorded_choices

triton_box = import_kernel("focalkit.kernels.triton_box")

pytestmark = pytest.mark.triton

P = functools.partial
# every KIND, CLAMP and WRITE_IOU path, each with and without modifiers (below)
LOSSES = {
    "siou": fk.siou_loss,
    "siou_mmdet": P(fk.siou_loss, paper_sign=False, clamp=True),
    "siou_theta1": P(fk.siou_loss, theta=1.0),
    "mpdiou": P(fk.mpdiou_loss, image_size=(30, 40)),
    "shape": fk.shape_iou_loss,
    "shape_s05": P(fk.shape_iou_loss, scale=0.5),
    "wiou_v1": P(fk.wiou_loss, version=1),
    "wiou_v3": P(fk.wiou_loss, iou_mean=0.5),
    "wiou_v2_ciou": P(fk.wiou_loss, version=2, base="ciou", iou_mean=0.4),
    "wiou_v3_siou": P(fk.wiou_loss, base="siou", iou_mean=0.6),
    "ciou_gated": P(fk.ciou_loss, aspect_gate=True),
    "a_iou": P(fk.iou_loss, power=3.0),
    "a_giou": P(fk.giou_loss, power=3.0),
    "a_diou": P(fk.diou_loss, power=2.0),
    "a_ciou": P(fk.ciou_loss, power=3.0),
    "iou_log": P(fk.iou_loss, mode="log"),
    "eiou": fk.eiou_loss,
    "focal_eiou": fk.focal_eiou_loss,
}
MODIFIERS = {
    "plain": {},
    "inner": {"inner_ratio": 0.7},
    "inner_wide": {"inner_ratio": 1.4},
    "focaler": {"focaler": (0.1, 0.9)},
    "both": {"inner_ratio": 0.8, "focaler": (0.0, 0.95)},
}
DEGENERATE = {
    "identical": ([1.0, 1, 4, 3], [1.0, 1, 4, 3]),
    "disjoint": ([0.0, 0, 1, 1], [10.0, 10, 12, 13]),
    "zero_area_pred": ([1.0, 1, 1, 3], [0.0, 0, 2, 2]),
    "both_zero_equal": ([2.0, 2, 2, 2], [2.0, 2, 2, 2]),
    "both_zero_apart": ([0.0, 0, 0, 2], [1.0, 0, 1, 2]),
    "touching": ([0.0, 0, 1, 1], [1.0, 0, 2, 1]),
    "contained": ([1.0, 1, 2, 3], [0.0, 0, 4, 4]),
    "shared_left_edge": ([0.0, 0, 2, 3], [0.0, 1, 4, 2]),
    "same_width": ([0.0, 0, 2, 3], [1.0, 1, 3, 5]),
    "same_centre": ([0.0, 0, 4, 2], [1.0, -1, 3, 3]),
}


def _boxes(n: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` xyxy pairs: overlapping, plus (cycling) identical, disjoint, contained,
    zero-width and same-centre predictions."""
    gen = torch.Generator().manual_seed(seed)
    xy = 20 * torch.rand(n, 2, generator=gen)
    wh = 0.5 + 8 * torch.rand(n, 2, generator=gen)
    target = torch.cat([xy, xy + wh], -1)
    pred = target + torch.randn(n, 4, generator=gen)
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 0.05)
    special = torch.arange(n) % 8
    pred[special == 1] = target[special == 1]
    pred[special == 2] = target[special == 2] + 40.0
    inner = target + torch.cat([0.25 * wh, -0.25 * wh], -1)
    pred[special == 3] = inner[special == 3]
    pred[special == 4, 2] = pred[special == 4, 0]
    centre = (target[:, :2] + target[:, 2:]) / 2
    same = torch.cat([centre - 0.3 * wh.flip(-1), centre + 0.3 * wh.flip(-1)], -1)
    pred[special == 5] = same[special == 5]
    return pred.to(dtype), target.to(dtype)


@pytest.mark.parametrize("mod", list(MODIFIERS))
@pytest.mark.parametrize("name", list(LOSSES))
def test_matches_torch(name, mod):
    """Each loss and modifier: float32 values and gradients per box, and a weighted mean."""
    pred, target = _boxes(37, seed=len(name) + 7 * len(mod))
    fn = P(LOSSES[name], **MODIFIERS[mod])
    compare_backends(fn, pred, target, reduction="none")
    weight = torch.rand(37, generator=torch.Generator().manual_seed(5))
    compare_backends(fn, pred, target, weight=weight, normalizer=7.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_half_inputs_and_degenerate_boxes(dtype):
    """float16/bfloat16 inputs (read in their dtype, computed in float32) and SPEC's
    degenerate cases: torch's values and gradients, finite."""
    pred = torch.tensor([p for p, _ in DEGENERATE.values()], dtype=dtype)
    target = torch.tensor([t for _, t in DEGENERATE.values()], dtype=dtype)
    for name, fn in LOSSES.items():
        for mod in ("plain", "both"):
            loss, grad = compare_backends(P(fn, **MODIFIERS[mod]), pred, target, reduction="none")
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), (name, mod)
    rand_pred, rand_target = _boxes(29, seed=3, dtype=dtype)
    for name in ("siou", "shape_s05", "wiou_v3", "a_ciou", "mpdiou"):
        compare_backends(P(LOSSES[name], inner_ratio=0.7), rand_pred, rand_target, reduction="none")


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_formats(fmt):
    pred, target = _boxes(19, seed=4)
    pred, target = fk.box_convert(pred, "xyxy", fmt), fk.box_convert(target, "xyxy", fmt)
    for name in ("siou", "mpdiou", "shape_s05", "wiou_v3", "a_giou"):
        compare_backends(
            P(LOSSES[name], focaler=(0.0, 0.95)), pred, target, box_format=fmt, reduction="none"
        )


@pytest.mark.parametrize("shape", [(), (1,), (257,), (3, 5), (2, 3, 43)], ids=str)
def test_odd_sizes_strides_and_per_box_image_sizes(shape):
    """Sizes that are not a multiple of the block, leading dims, non-contiguous boxes, and
    MPDIoU's image size per box (strided), per row (broadcast) or one for all (stride 0)."""
    n = 1
    for s in shape:
        n *= s
    pred, target = _boxes(n, seed=n)
    pred, target = pred.reshape(*shape, 4), target.reshape(*shape, 4)
    gen = torch.Generator().manual_seed(2)
    sizes = 20 + 40 * torch.rand(*shape, 2, generator=gen)
    per_row = [sizes[..., :1, :]] if shape else []  # broadcast along the last box dim
    for image_size in ((30, 40), torch.tensor([30.0, 40.0]), sizes, *per_row):
        loss, _ = compare_backends(
            fk.mpdiou_loss, pred, target, image_size=image_size, reduction="none"
        )
        assert loss.shape == shape
    wide = torch.cat([pred, pred[..., :1]], -1)[..., :4]  # a (..., 5) buffer's view
    cols = pred.reshape(-1, 4).t().contiguous().t().reshape(pred.shape)
    for p in (wide, cols):
        for name in ("siou", "shape_s05", "wiou_v3_siou"):
            compare_backends(P(LOSSES[name], inner_ratio=0.7), p, target, reduction="none")


def test_wiou_module_on_triton_updates_like_torch():
    """WIoULoss in training mode on the Triton kernel (which writes the IoU for the focusing
    factor): the same losses, gradients and running mean as on torch over three steps."""
    ours, ref = (
        fk.WIoULoss(momentum=0.2, backend="triton"),
        fk.WIoULoss(momentum=0.2, backend="torch"),
    )
    for step in range(3):
        pred, target = _boxes(23, seed=30 + step)
        results = []
        for crit in (ours, ref):
            x = pred.clone().requires_grad_(True)
            loss = crit(x, target)
            loss.backward()
            results.append((loss, x.grad))
        rtol, atol = TOL[torch.float32]
        torch.testing.assert_close(results[0][0], results[1][0], rtol=rtol, atol=atol)
        torch.testing.assert_close(results[0][1], results[1][1], rtol=rtol, atol=atol)
        torch.testing.assert_close(ours.iou_mean, ref.iou_mean, rtol=1e-6, atol=0)


def test_choices_and_fallbacks():
    """ "auto" on a CPU tensor under the interpreter takes triton for every new loss; targets
    that require grad fall back to torch under "auto" and raise under "triton"."""
    pred, target = _boxes(6, seed=8)
    with recorded_choices() as choices:
        for fn in LOSSES.values():
            fn(pred, target)
    assert {c.backend for c in choices} == {"triton"}
    t = target.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"backend='triton' requires options.*target_boxes"):
        fk.siou_loss(pred, t, backend="triton")
    fk.shape_iou_loss(pred, t, scale=0.5).backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()
    with pytest.raises(ValueError, match=r"^image_size: expected a tensor on cpu"):
        triton_box.triton_box_loss(
            pred, target, triton_box.BoxSpec("mpdiou"), diag2=torch.ones(6, device="meta")
        )


def test_double_backward_is_refused_and_retained_graph_works():
    pred, target = _boxes(8, seed=9)
    x = pred.clone().requires_grad_(True)
    loss = fk.wiou_loss(x, target, base="siou", inner_ratio=0.7, backend="triton")
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    loss.backward()
    torch.testing.assert_close(x.grad, first)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(fk.siou_loss(x, target, backend="triton"), x, create_graph=True)


def test_no_host_sync_and_one_launch():
    """Under FakeTensorMode (no data) a Wise-IoU training step on the kernel runs (update,
    factor, backward) and launches it once, with the IoU written (WRITE_IOU)."""
    launches = []

    class _Stub:
        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((kw["KIND"], kw["WRITE_IOU"], kw["INNER"]))

    original = triton_box._box_kernel
    triton_box._box_kernel = _Stub()
    try:
        with FakeTensorMode():
            crit = fk.WIoULoss(base="siou", inner_ratio=0.7, backend="triton", momentum=0.1)
            pred = torch.rand(300, 4, requires_grad=True)
            crit(pred, torch.rand(300, 4)).backward()
            assert pred.grad.shape == (300, 4)
    finally:
        triton_box._box_kernel = original
    assert launches == [(triton_box.KINDS["siou"], True, True)]
