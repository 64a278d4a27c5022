"""The chunked CPU path of the sigmoid focal loss keeps its class-index fast path for a
``weight=`` that is constant along the classes (a detector's per-anchor weight, as
focalkit.integrations passes), and equals the plain formula there."""

from __future__ import annotations

import pytest
import torch

import focalkit as fk
from focalkit.kernels import chunked


@pytest.mark.parametrize("shape", [(3, 700, 7), (2000, 5), (1, 1, 3)])
@pytest.mark.parametrize("alpha", [0.25, None, "per-class"])
@pytest.mark.parametrize("ignored", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_row_weight_equals_the_plain_formula(shape, alpha, ignored, reduction):
    torch.manual_seed(0)
    num_classes = shape[-1]
    if alpha == "per-class":
        alpha = torch.linspace(0.1, 0.9, num_classes)
    x = (torch.randn(shape) * 3).requires_grad_()
    labels = torch.randint(0, num_classes + 1, shape[:-1])
    if ignored:
        labels.view(-1)[::7] = -100
    for wshape in [(*shape[:-1], 1), (shape[0],) + (1,) * (len(shape) - 1), ()]:
        weight = torch.rand(wshape) + 0.1
        results = []
        for backend in ("chunked", "torch"):
            x.grad = None
            loss = fk.sigmoid_focal_loss(
                x, labels, alpha=alpha, weight=weight, reduction=reduction, backend=backend
            )
            (loss.sum() if reduction == "none" else loss).backward()
            results.append((loss.detach(), x.grad.clone()))
        (loss_c, grad_c), (loss_t, grad_t) = results
        torch.testing.assert_close(loss_c, loss_t, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_c, grad_t, rtol=1e-5, atol=1e-7)


def test_row_weight_takes_the_index_fast_path(monkeypatch):
    """No chunk falls back to the plain formula for a per-row weight."""
    calls = []
    plain = chunked.sigmoid_focal_plain
    monkeypatch.setattr(
        chunked, "sigmoid_focal_plain", lambda *a, **k: calls.append(1) or plain(*a, **k)
    )
    x = torch.randn(4, 300, 9, requires_grad=True)
    labels = torch.randint(0, 10, (4, 300))
    weight = torch.rand(4, 1, 1)
    fk.sigmoid_focal_loss(x, labels, weight=weight, reduction="sum", backend="chunked").backward()
    assert calls == []
    fk.sigmoid_focal_loss(x, labels, weight=torch.rand(4, 300, 9), backend="chunked")
    assert calls  # an elementwise weight still takes the plain formula
