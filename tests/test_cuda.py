"""Full-size checks on a CUDA device (skipped without one; CI has none).

* every loss, on both backends, runs forward and backward under
  ``torch.cuda.set_sync_debug_mode("error")``: no host sync anywhere;
* the Triton kernels equal the torch backend at full size (millions of elements), in value and
  gradient, within the one tolerance table of ``_triton_interp``;
* the sigmoid focal kernel indexes past ``2**31`` elements (int64 offsets), checked against the
  closed form at zero logits.

Run on a GPU machine with ``pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import focalkit as fk
from _triton_interp import TOL

# triton is not imported here: importing it without TRITON_INTERPRET=1 would fix its mode for
# the interpreter tests that share this (xdist) worker
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
]

DEVICE = "cuda"
ROWS, C = 1 << 16, 80  # 5.2M logits: many programs, odd last block below
BOXES = 1 << 20 | 7


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _cases():
    """name -> callable(backend, dtype) returning (loss, leaf input): full-size inputs."""
    g = _gen(0)
    x = torch.randn(ROWS + 3, C, generator=g, device=DEVICE) * 3
    labels = torch.randint(0, C + 1, (ROWS + 3,), generator=g, device=DEVICE)
    labels[::17] = -100
    dense = (torch.rand(ROWS + 3, C, generator=g, device=DEVICE) < 0.02).float()
    soft = torch.rand(ROWS + 3, C, generator=g, device=DEVICE)
    alpha_c = torch.rand(C, generator=g, device=DEVICE)
    pred = torch.randn(ROWS * 4 + 1, generator=g, device=DEVICE)
    target = torch.randn(ROWS * 4 + 1, generator=g, device=DEVICE)
    xy = torch.rand(BOXES, 2, generator=g, device=DEVICE) * 100
    wh = torch.rand(BOXES, 2, generator=g, device=DEVICE) * 50 + 1
    boxes_p = torch.cat([xy, xy + wh], -1)
    boxes_t = boxes_p + torch.randn(BOXES, 4, generator=g, device=DEVICE) * 5
    num_pos = (labels >= 0).logical_and(labels < C).sum()

    def leaf(t, dtype):
        return t.to(dtype).requires_grad_(True)

    def sigmoid_index(backend, dtype):
        z = leaf(x, dtype)
        return fk.sigmoid_focal_loss(z, labels, alpha=0.25, normalizer=num_pos, backend=backend), z

    def sigmoid_dense(backend, dtype):
        z = leaf(x, dtype)
        return fk.sigmoid_focal_loss(z, dense, alpha=alpha_c, gamma=0.5, backend=backend), z

    def sigmoid_soft_none(backend, dtype):
        z = leaf(x, dtype)
        return fk.sigmoid_focal_loss(z, soft, reduction="none", backend=backend), z

    def softmax(backend, dtype):
        z = leaf(x, dtype)
        return fk.softmax_focal_loss(z, labels.clamp(max=C - 1), alpha=0.25, backend=backend), z

    def ghm_c(backend, dtype):
        z = leaf(x, dtype)
        return fk.ghm_c_loss(z, labels, bins=30, backend=backend), z

    def ghm_r(backend, dtype):
        p = leaf(pred, dtype)
        return fk.ghm_r_loss(p, target.to(dtype), bins=10, backend=backend), p

    def box(kind):
        fn = getattr(fk, f"{kind}_loss")

        def run(backend, dtype):
            p = leaf(boxes_p, dtype)
            return fn(p, boxes_t.to(dtype), backend=backend), p

        return run

    cases = {
        "sigmoid_index": sigmoid_index,
        "sigmoid_dense": sigmoid_dense,
        "sigmoid_soft_none": sigmoid_soft_none,
        "softmax": softmax,
        "ghm_c": ghm_c,
        "ghm_r": ghm_r,
    }
    for kind in ("iou", "giou", "diou", "ciou", "eiou", "focal_eiou"):
        cases[kind] = box(kind)
    return cases


CASES = _cases() if torch.cuda.is_available() else {}
NAMES = [
    "sigmoid_index",
    "sigmoid_dense",
    "sigmoid_soft_none",
    "softmax",
    "ghm_c",
    "ghm_r",
    "iou",
    "giou",
    "diou",
    "ciou",
    "eiou",
    "focal_eiou",
]


def _forward_backward(case, backend, dtype):
    loss, leaf = case(backend, dtype)
    grad_out = torch.ones_like(loss)
    loss.backward(grad_out)
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", NAMES)
def test_no_host_sync(name, backend):
    case = CASES[name]
    _forward_backward(case, backend, torch.float32)  # compile / warm up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _forward_backward(case, backend, torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_triton_equals_torch_full_size(name, dtype):
    rtol, atol = TOL[dtype]
    ref_loss, ref_grad = _forward_backward(CASES[name], "torch", dtype)
    loss, grad = _forward_backward(CASES[name], "triton", dtype)
    assert loss.dtype == ref_loss.dtype and grad.dtype == ref_grad.dtype
    torch.testing.assert_close(loss.float(), ref_loss.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=rtol, atol=atol)


def test_sigmoid_kernel_beyond_int32_offsets():
    """2**31 + 64 * 5 bf16 logits, all zero, class-index targets: every element has
    p = 1/2, so its loss is a_t 2^-g log 2 and its gradient +-a_t 2^-g (1/2 + g/2 log 2).
    The sum and the gradient of the rows past 2**31 elements equal that closed form."""
    cols, gamma, alpha = 64, 2.0, 0.25
    rows = (1 << 31) // cols + 5
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    x = torch.zeros(rows, cols, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    labels = torch.arange(rows, device=DEVICE) % (cols + 1)  # cols = background
    loss = fk.sigmoid_focal_loss(
        x, labels, alpha=alpha, gamma=gamma, reduction="sum", backend="triton"
    )
    loss.backward()
    positives = int((labels < cols).sum())
    negatives = rows * cols - positives
    unit = 0.5**gamma * math.log(2.0)
    expected = (alpha * positives + (1 - alpha) * negatives) * unit
    assert loss.item() == pytest.approx(expected, rel=1e-3)
    slope = 0.5**gamma * (0.5 + gamma * 0.5 * math.log(2.0))
    tail = x.grad[-3:].float()
    tail_labels = labels[-3:]
    want = torch.full_like(tail, (1 - alpha) * slope)
    pos = tail_labels < cols
    want[pos.nonzero().squeeze(1), tail_labels[pos]] = -alpha * slope
    torch.testing.assert_close(tail, want, rtol=1.6e-2, atol=0)
