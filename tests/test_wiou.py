"""Wise-IoU's running mean of L_IoU (WIoULoss): a float64 buffer in the state_dict, updated in
training mode only, before the loss, without a host sync; equal to the authors' code over
training steps. The two-rank all-reduce is in test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import focalkit as fk
from _iou_family_refs import PAIRS, WiseIoU

F64 = torch.float64


def _batch(n: int, seed: int, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=F64) * 10
    wh = torch.rand(n, 2, generator=gen, dtype=F64) * 5 + 0.5
    target = torch.cat([xy, xy + wh], -1)
    pred = target + torch.randn(n, 4, generator=gen, dtype=F64)
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 0.1)
    return pred.to(dtype), target.to(dtype)


def _l_iou(pred, target):
    return fk.iou_loss(pred, target, reduction="none")


def test_buffer_is_float64_in_state_dict_and_survives_dtype_casts():
    crit = fk.WIoULoss()
    assert crit.iou_mean.dtype == F64 and crit.iou_mean.item() == 1.0
    assert list(crit.state_dict()) == ["iou_mean"]
    crit.half()
    assert crit.iou_mean.dtype == F64
    crit.to(torch.bfloat16)
    assert crit.iou_mean.dtype == F64
    crit(*_batch(4, 0, torch.float32))
    other = fk.WIoULoss()
    other.load_state_dict(crit.state_dict())
    assert torch.equal(other.iou_mean, crit.iou_mean) and other.iou_mean.item() != 1.0


def test_update_comes_first_then_the_loss_uses_the_new_mean():
    """Training mode: mean <- (1 - m) mean + m * batch mean of L_IoU, then the loss with the
    updated mean (the authors' order); eval mode: the stored mean, unchanged."""
    crit = fk.WIoULoss(momentum=0.25, reduction="none")
    pred, target = _batch(6, 1)
    expected_mean = 0.75 * 1.0 + 0.25 * _l_iou(pred, target).mean().item()
    loss = crit(pred, target)
    assert crit.iou_mean.item() == pytest.approx(expected_mean, rel=1e-15)
    torch.testing.assert_close(
        loss, fk.wiou_loss(pred, target, iou_mean=expected_mean, reduction="none")
    )
    crit.eval()
    pred2, target2 = _batch(5, 2)
    loss2 = crit(pred2, target2)
    assert crit.iou_mean.item() == pytest.approx(expected_mean, rel=1e-15)
    torch.testing.assert_close(
        loss2, fk.wiou_loss(pred2, target2, iou_mean=expected_mean, reduction="none")
    )


def test_default_momentum_and_one_update_from_spec():
    """momentum=None is wiou_momentum(890, 34); one update from 1.0 on {A, B}: 0.9999671321."""
    crit = fk.WIoULoss()
    assert crit.momentum == pytest.approx(9.899484435e-5, rel=1e-9)
    pred = torch.tensor([PAIRS["A"][0], PAIRS["B"][0]], dtype=F64)
    target = torch.tensor([PAIRS["A"][1], PAIRS["B"][1]], dtype=F64)
    crit(pred, target)
    assert crit.iou_mean.item() == pytest.approx(0.9999671321, rel=1e-10)
    assert "momentum=9.89948e-05" in repr(crit)


def test_no_update_for_version_one_or_an_empty_batch():
    """v1 has no focusing factor and keeps the mean; an empty batch leaves it unchanged (no
    0/0) and gives a zero still connected to the graph."""
    v1 = fk.WIoULoss(version=1, momentum=0.5)
    v1(*_batch(4, 3))
    assert v1.iou_mean.item() == 1.0
    v3 = fk.WIoULoss(momentum=0.5)
    x = torch.zeros(0, 4, requires_grad=True)
    loss = v3(x, torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0 and v3.iou_mean.item() == 1.0 and x.grad.shape == (0, 4)


def test_weight_weighs_the_loss_not_the_mean():
    pred, target = _batch(6, 4)
    weight = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.0, 1.0], dtype=F64)
    a, b = fk.WIoULoss(momentum=0.3), fk.WIoULoss(momentum=0.3, weight=weight)
    a(pred, target)
    b(pred, target)
    assert torch.equal(a.iou_mean, b.iou_mean)


@pytest.mark.parametrize("version", [2, 3])
def test_equals_the_authors_code_over_training_steps(version):
    """Over 6 training steps the per-box losses, their gradients and the running mean equal
    Instinct323/wiou's IouLoss (v2: monotonous=True; v3: False), which updates with
    ``.item()``; then two evaluation steps."""
    theirs = WiseIoU(890, 34, monotonous=version == 2)
    theirs.momentum = 0.05  # visible changes in a few steps
    ours = fk.WIoULoss(version=version, momentum=0.05, reduction="none")
    for step in range(8):
        if step == 6:
            ours.eval()
            theirs.training = False
        pred, target = _batch(10, 10 + step)
        x, y = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
        got, ref = ours(x, target), theirs(y, target)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)
        got.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-8)
        assert ours.iou_mean.item() == pytest.approx(theirs.iou_mean.item(), rel=1e-8)


def test_no_host_sync():
    """The whole training step (update, loss, backward) runs under FakeTensorMode, where any
    read of a value (``.item()``, ``bool(tensor)``) raises."""
    with FakeTensorMode():
        crit = fk.WIoULoss(base="siou", momentum=0.1, normalizer=torch.tensor(3.0))
        pred = torch.rand(50, 4).requires_grad_(True)
        target = torch.rand(50, 4)
        loss = crit(pred + torch.tensor([0.0, 0.0, 1.0, 1.0]), target)
        loss.backward()
        assert pred.grad.shape == (50, 4)


def test_compiles_fullgraph_and_updates_like_eager():
    """The Module in training mode under torch.compile(fullgraph=True): the same losses,
    gradients and buffer as eager over three steps."""
    torch._dynamo.reset()
    eager, compiled_module = fk.WIoULoss(momentum=0.2), fk.WIoULoss(momentum=0.2)
    compiled = torch.compile(compiled_module, fullgraph=True)
    for step in range(3):
        pred, target = _batch(12, 20 + step, torch.float32)
        results = []
        for fn in (eager, compiled):
            x = pred.clone().requires_grad_(True)
            loss = fn(x, target)
            loss.backward()
            results.append((loss, x.grad))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(eager.iou_mean, compiled_module.iou_mean, rtol=1e-7, atol=0)


def test_sync_without_a_process_group():
    """sync=None without a process group is local; sync=True needs one."""
    pred, target = _batch(4, 5)
    fk.WIoULoss(sync=None)(pred, target)
    fk.WIoULoss(sync=False)(pred, target)
    with pytest.raises(ValueError, match=r"^sync:"):
        fk.WIoULoss(sync=True)(pred, target)
    fk.WIoULoss(sync=True).eval()(pred, target)  # evaluation: no update, no collective


def test_mean_is_clamped_at_eps():
    pred, target = _batch(4, 6)
    for mean in (torch.tensor(0.0, dtype=F64), 1e-30):
        loss = fk.wiou_loss(pred, target, version=2, iou_mean=mean)
        assert torch.isfinite(loss)
