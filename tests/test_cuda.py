"""Full-size checks on a CUDA device (skipped without one; CI has none).

* every loss, on both backends (torch only for ASL and Poly-1 focal, which have no kernel),
  runs forward and backward under ``torch.cuda.set_sync_debug_mode("error")``: no host sync
  anywhere;
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


def build_cases(device=DEVICE, rows=ROWS, classes=C, boxes=BOXES):
    """name -> (loss_fn(leaf, backend), the tensor the leaf is made from); full size by
    default (``test_triton_torch_compile.py`` runs the same checks small, on CPU)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows + 3, classes, generator=g, device=device) * 3
    labels = torch.randint(0, classes + 1, (rows + 3,), generator=g, device=device)
    labels[::17] = -100
    dense = (torch.rand(rows + 3, classes, generator=g, device=device) < 0.02).float()
    soft = torch.rand(rows + 3, classes, generator=g, device=device)
    alpha_c = torch.rand(classes, generator=g, device=device)
    pred = torch.randn(rows * 4 + 1, generator=g, device=device)
    target = torch.randn(rows * 4 + 1, generator=g, device=device)
    xy = torch.rand(boxes, 2, generator=g, device=device) * 100
    wh = torch.rand(boxes, 2, generator=g, device=device) * 50 + 1
    boxes_p = torch.cat([xy, xy + wh], -1)
    boxes_t = boxes_p + torch.randn(boxes, 4, generator=g, device=device) * 5
    num_pos = (labels >= 0).logical_and(labels < classes).sum()
    scores = torch.rand(rows + 3, generator=g, device=device)
    iou_targets = torch.where(dense > 0, soft, 0.0)  # dense IoU targets: few positives
    boxes_dfl = rows // 4 + 1
    dfl_pred = torch.randn(boxes_dfl, 4, 17, generator=g, device=device) * 2
    dfl_target = torch.rand(boxes_dfl, 4, generator=g, device=device) * 16
    dfl_weight = torch.rand(boxes_dfl, 1, generator=g, device=device)

    cases = {
        "sigmoid_index": (
            lambda z, b: fk.sigmoid_focal_loss(
                z, labels, alpha=0.25, normalizer=num_pos, backend=b
            ),
            x,
        ),
        "sigmoid_dense": (
            lambda z, b: fk.sigmoid_focal_loss(z, dense, alpha=alpha_c, gamma=0.5, backend=b),
            x,
        ),
        "sigmoid_soft_none": (
            lambda z, b: fk.sigmoid_focal_loss(z, soft, reduction="none", backend=b),
            x,
        ),
        "softmax": (
            lambda z, b: fk.softmax_focal_loss(
                z, labels.clamp(max=classes - 1), alpha=0.25, backend=b
            ),
            x,
        ),
        "qfl_index": (
            lambda z, b: fk.quality_focal_loss(z, labels, scores, normalizer=num_pos, backend=b),
            x,
        ),
        "vfl_dense": (
            lambda z, b: fk.varifocal_loss(z, iou_targets, normalizer=num_pos, backend=b),
            x,
        ),
        "dfl": (
            lambda p, b: fk.distribution_focal_loss(
                p, dfl_target, weight=dfl_weight, normalizer=4 * dfl_weight.sum(), backend=b
            ),
            dfl_pred,
        ),
        "poly1_ce": (
            lambda z, b: fk.poly1_cross_entropy(z, labels.clamp(max=classes - 1), backend=b),
            x,
        ),
        "ghm_c": (lambda z, b: fk.ghm_c_loss(z, labels, bins=30, backend=b), x),
        "ghm_r": (lambda p, b: fk.ghm_r_loss(p, target.to(p.dtype), bins=10, backend=b), pred),
    }
    for kind in ("iou", "giou", "diou", "ciou", "eiou", "focal_eiou"):
        fn = getattr(fk, f"{kind}_loss")
        cases[kind] = (lambda p, b, fn=fn: fn(p, boxes_t.to(p.dtype), backend=b), boxes_p)
    # the IoU losses of YOLO-style detectors and the modifiers (every new KIND of the kernel)
    family = {
        "siou_inner": lambda p, t, b: fk.siou_loss(p, t, inner_ratio=0.7, backend=b),
        "wiou_v3": lambda p, t, b: fk.wiou_loss(p, t, iou_mean=0.4, backend=b),
        "mpdiou": lambda p, t, b: fk.mpdiou_loss(p, t, image_size=(150, 160), backend=b),
        "shape_focaler": lambda p, t, b: fk.shape_iou_loss(
            p, t, scale=0.5, focaler=(0.0, 0.95), backend=b
        ),
        "alpha_ciou_gated": lambda p, t, b: fk.ciou_loss(
            p, t, power=3.0, aspect_gate=True, backend=b
        ),
    }
    for name, fn in family.items():
        cases[name] = (lambda p, b, fn=fn: fn(p, boxes_t.to(p.dtype), b), boxes_p)

    # losses without a Triton kernel (their no-sync check runs on torch only)
    cases["asl"] = (lambda z, b: fk.asymmetric_loss(z, dense, normalizer=rows, backend=b), x)
    cases["poly1_focal"] = (
        lambda z, b: fk.poly1_focal_loss(z, labels, normalizer=num_pos, backend=b),
        x,
    )
    return cases


CASES = build_cases() if torch.cuda.is_available() else {}
NAMES = [
    "sigmoid_index",
    "sigmoid_dense",
    "sigmoid_soft_none",
    "softmax",
    "qfl_index",
    "vfl_dense",
    "dfl",
    "poly1_ce",
    "ghm_c",
    "ghm_r",
    "iou",
    "giou",
    "diou",
    "ciou",
    "eiou",
    "focal_eiou",
    "siou_inner",
    "wiou_v3",
    "mpdiou",
    "shape_focaler",
    "alpha_ciou_gated",
]


def _forward_backward(case, backend, dtype, loss_fn=None):
    """Loss and gradient of ``case`` (``loss_fn`` replaces its loss, e.g. compiled)."""
    fn, inp = case
    leaf = inp.to(dtype, copy=True).requires_grad_(True)  # a fresh leaf, never the shared input
    loss = (loss_fn or fn)(leaf, backend)
    loss.backward(torch.ones_like(loss))
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


TORCH_ONLY = ["asl", "poly1_focal"]


@pytest.mark.parametrize("name", TORCH_ONLY)
def test_no_host_sync_without_a_kernel(name):
    case = CASES[name]
    _forward_backward(case, "torch", torch.float32)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _forward_backward(case, "torch", torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_triton_equals_torch(case, dtype):
    rtol, atol = TOL[dtype]
    ref_loss, ref_grad = _forward_backward(case, "torch", dtype)
    loss, grad = _forward_backward(case, "triton", dtype)
    assert loss.dtype == ref_loss.dtype and grad.dtype == ref_grad.dtype
    torch.testing.assert_close(loss.float(), ref_loss.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=rtol, atol=atol)


def check_compiled(case):
    """Under torch.compile (Inductor), "auto" compiles fullgraph on the torch path and a forced
    "triton" runs the kernel outside the graph: both equal the eager kernel (float32)."""
    rtol, atol = TOL[torch.float32]
    ref_loss, ref_grad = _forward_backward(case, "triton", torch.float32)
    torch._dynamo.reset()
    for backend, fullgraph in (("auto", True), ("triton", False)):
        compiled = torch.compile(case[0], fullgraph=fullgraph, dynamic=False)
        loss, grad = _forward_backward(case, backend, torch.float32, compiled)
        torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
        torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_triton_equals_torch_full_size(name, dtype):
    check_triton_equals_torch(CASES[name], dtype)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_auto_and_forced_triton(name):
    check_compiled(CASES[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sigmoid_kernel_peak_memory(dtype):
    """The issue's target: forward + backward of the sigmoid focal kernel on 1.3e8 logits
    (dense targets of the logits' dtype) peaks at no more than logits + targets + gradient
    + 5%: the gradient, kept in the logits' dtype for bfloat16, is the only tensor of the
    logits' size made."""
    rows = 16 * 100_000
    before = torch.cuda.memory_allocated()  # other tests' inputs stay allocated
    x = torch.randn(rows, 80, device=DEVICE).to(dtype).requires_grad_(True)
    y = (torch.rand(rows, 80, device=DEVICE) < 0.01).to(dtype)
    size = x.numel() * x.element_size()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before == 2 * size
    torch.cuda.reset_peak_memory_stats()
    fk.sigmoid_focal_loss(x, y, backend="triton").backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    assert peak <= 1.05 * 3 * size, f"peak {peak / size:.3f} x the logits' size (budget 3.15)"
    assert x.grad.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("go", [1.0, 0.37, 2.0**16, float("nan")])
def test_scale_unless_one_equals_mul(dtype, go):
    """The backward's device-side scale is ``mul_`` by the float32 scalar, bit for bit
    (float32 to bfloat16 rounds to nearest even on the GPU, as in torch)."""
    from focalkit.kernels.triton_scale import scale_unless_one

    g = torch.randn(BOXES, device=DEVICE).to(dtype)
    go_t = torch.tensor(go, device=DEVICE)
    expected = (g.float() * go_t).to(dtype)
    torch.testing.assert_close(scale_unless_one(g, go_t), expected, rtol=0, atol=0, equal_nan=True)


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
