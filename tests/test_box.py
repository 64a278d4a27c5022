"""Box losses (IoU, GIoU, DIoU, CIoU, EIoU, Focal-EIoU) and FocalL1: SPEC check values,
per-box pure-Python references (values; gradients by central differences with the detached
factors frozen), degenerate boxes and dtypes, box formats, reductions, validation, the
argument checks of their own and properties from the papers. What every loss shares (shapes,
Module == function, gradcheck, double backward, empty inputs, torch.compile, autocast,
retained graphs, CPU backends, generic argument errors) is checked once for all of them in
``test_contract.py``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import focalkit as fk
from _ghm_box_refs import (
    box_grad_reference,
    box_loss_reference,
    focal_l1_reference,
    random_boxes,
)
from conftest import DEGENERATE_BOXES, FP16_OVERFLOW, HYP, make_gen

LOSSES = {
    "iou": fk.iou_loss,
    "iou_log": lambda p, t, **kw: fk.iou_loss(p, t, mode="log", **kw),
    "giou": fk.giou_loss,
    "diou": fk.diou_loss,
    "ciou": fk.ciou_loss,
    "eiou": fk.eiou_loss,
    "focal_eiou": fk.focal_eiou_loss,
}

# --------------------------------------------------------------------------------------------
# SPEC check values
# --------------------------------------------------------------------------------------------

SPEC_PRED = [0.0, 0.0, 4.0, 4.0]
SPEC_TARGET = [1.0, 1.0, 5.0, 5.0]
SPEC_VALUES = {
    "iou": 1 - 9 / 23,
    "iou_log": -math.log(9 / 23),
    "giou": 0.688695652,
    "diou": 0.648695652,
    "ciou": 0.648695652,
    "eiou": 0.648695652,
    "focal_eiou": 0.405787181,
}


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spec_check_values(kind, dtype):
    pred = torch.tensor([SPEC_PRED], dtype=dtype)
    target = torch.tensor([SPEC_TARGET], dtype=dtype)
    loss = LOSSES[kind](pred, target)
    assert loss.dtype == dtype
    assert abs(loss.item() - SPEC_VALUES[kind]) < (1e-8 if dtype == torch.float64 else 1e-6)


def test_focal_l1_spec_check_values():
    out = fk.focal_l1_loss(
        torch.tensor([0.5, 2.0, -0.5, -2.0], dtype=torch.float64),
        torch.zeros(4, dtype=torch.float64),
        reduction="none",
    )
    expected = torch.tensor([0.274143398, 1.75, 0.274143398, 1.75], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# per-box references: values and gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(LOSSES))
def test_matches_pure_python_reference_values_and_gradients(kind):
    gen = make_gen(hash(kind) % 1000)
    pred = random_boxes(24, gen)
    target = random_boxes(24, gen)
    pred[:4] = target[:4] + 0.3  # some strongly overlapping pairs
    pred[4:6] = target[4:6] + 20.0  # disjoint pairs
    x = pred.clone().requires_grad_(True)
    loss = LOSSES[kind](x, target, reduction="none")
    loss.sum().backward()
    ref = [
        box_loss_reference(kind, p, t) for p, t in zip(pred.tolist(), target.tolist(), strict=True)
    ]
    torch.testing.assert_close(loss, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    ref_grad = [
        box_grad_reference(kind, p, t) for p, t in zip(pred.tolist(), target.tolist(), strict=True)
    ]
    torch.testing.assert_close(
        x.grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", list(LOSSES))
def test_float32_matches_float64(kind):
    gen = make_gen(3)
    pred, target = random_boxes(200, gen), random_boxes(200, gen)
    a = LOSSES[kind](pred.float(), target.float(), reduction="none")
    b = LOSSES[kind](pred, target, reduction="none")
    torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-5)


def test_focal_l1_matches_reference_values_and_gradients():
    d = torch.tensor([-3.0, -1.0, -0.7, -0.01, 0.0, 0.2, 0.9, 1.0, 1.5, 4.0], dtype=torch.float64)
    for alpha, beta in [(1.0, 1 / math.e), (2.5, 0.6), (0.5, 1.0)]:
        x = d.clone().requires_grad_(True)
        loss = fk.focal_l1_loss(x, torch.zeros_like(d), alpha=alpha, beta=beta, reduction="none")
        loss.sum().backward()
        ref = torch.tensor(
            [focal_l1_reference(v, alpha, beta) for v in d.tolist()], dtype=torch.float64
        )
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
        # designed gradient magnitude: -alpha x ln(beta x) (x <= 1), -alpha ln(beta) (x > 1)
        a = d.abs()
        mag = torch.where(
            a <= 1, -alpha * a * torch.log(beta * a.clamp(min=1e-300)), -alpha * math.log(beta)
        )
        mag = torch.where(a == 0, 0.0, mag)
        torch.testing.assert_close(x.grad, torch.sign(d) * mag, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# degenerate boxes and dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", list(LOSSES))
def test_finite_values_and_gradients_for_degenerate_boxes(kind, dtype):
    for name, (p, t) in DEGENERATE_BOXES.items():
        x = torch.tensor([p], dtype=dtype, requires_grad=True)
        loss = LOSSES[kind](x, torch.tensor([t], dtype=dtype))
        loss.backward()
        assert loss.dtype == dtype and x.grad.dtype == dtype
        assert torch.isfinite(loss).all(), (name, loss)
        if dtype == torch.float16 and name in FP16_OVERFLOW:
            continue
        assert torch.isfinite(x.grad).all(), (name, x.grad)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_half_inputs_are_computed_in_float32(kind):
    gen = make_gen(5)
    pred, target = (
        random_boxes(50, gen, dtype=torch.float32),
        random_boxes(50, gen, dtype=torch.float32),
    )
    for dtype in (torch.float16, torch.bfloat16):
        p, t = pred.to(dtype), target.to(dtype)
        got = LOSSES[kind](p, t, reduction="none")
        expected = LOSSES[kind](p.float(), t.float(), reduction="none").to(dtype)
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# formats and reductions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_format_equals_converted_xyxy(fmt):
    gen = make_gen(8)
    pred, target = random_boxes(10, gen), random_boxes(10, gen)
    for kind, fn in LOSSES.items():
        a = fn(
            fk.box_convert(pred, "xyxy", fmt), fk.box_convert(target, "xyxy", fmt), box_format=fmt
        )
        b = fn(pred, target)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=kind)
    for out in ("xyxy", "xywh", "cxcywh"):
        back = fk.box_convert(fk.box_convert(pred, "xyxy", fmt), fmt, out)
        torch.testing.assert_close(back, fk.box_convert(pred, "xyxy", out), rtol=1e-12, atol=1e-12)


def test_box_convert_values():
    box = torch.tensor([1.0, 2.0, 4.0, 6.0])
    assert fk.box_convert(box, "xyxy", "xywh").tolist() == [1.0, 2.0, 3.0, 4.0]
    assert fk.box_convert(box, "xyxy", "cxcywh").tolist() == [2.5, 4.0, 3.0, 4.0]
    assert (
        fk.box_convert(torch.tensor([2.5, 4.0, 3.0, 4.0]), "cxcywh", "xyxy").tolist()
        == box.tolist()
    )


@pytest.mark.parametrize("kind", list(LOSSES))
def test_reductions_weight_normalizer(kind):
    gen = make_gen(9)
    pred, target = random_boxes(12, gen).reshape(3, 4, 4), random_boxes(12, gen).reshape(3, 4, 4)
    fn = LOSSES[kind]
    none = fn(pred, target, reduction="none")
    assert none.shape == (3, 4)
    torch.testing.assert_close(fn(pred, target, reduction="sum"), none.sum())
    torch.testing.assert_close(fn(pred, target), none.mean())
    weight = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(fn(pred, target, weight=weight, reduction="none"), none * weight)
    torch.testing.assert_close(fn(pred, target, weight=weight), (none * weight).mean())
    torch.testing.assert_close(fn(pred, target, normalizer=5.0), none.sum() / 5)
    torch.testing.assert_close(
        fn(pred, target, normalizer=torch.tensor(0.0)), none.sum()
    )  # clamp >= 1


# --------------------------------------------------------------------------------------------
# validation and argument errors
# --------------------------------------------------------------------------------------------


def test_validate_flag_rejects_inverted_boxes():
    good = torch.tensor([[0.0, 0, 2, 2]])
    bad = torch.tensor([[0.0, 0, 2, 2], [3.0, 1, 2, 2]])  # x2 < x1 in row 1
    fk.giou_loss(good, good, validate=True)
    fk.giou_loss(bad, bad[[1, 0]])  # not validated: no error, no sync
    with pytest.raises(ValueError, match=r"^pred_boxes: expected x2 >= x1.*index \(1,\)"):
        fk.giou_loss(bad, bad, validate=True)
    with pytest.raises(ValueError, match=r"^target_boxes:"):
        fk.diou_loss(bad[[0, 0]], bad, validate=True)
    with pytest.raises(ValueError, match=r"^pred_boxes:"):  # after the format conversion
        fk.iou_loss(torch.tensor([[0.0, 0, -1, 2]]), good, box_format="xywh", validate=True)
    with pytest.raises(ValueError, match=r"^pred_boxes:"):
        fk.CIoULoss(validate=True)(bad, bad)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (
            lambda: fk.giou_loss(torch.zeros(3, 4), torch.zeros(3, 4), box_format="xyhw"),
            "box_format",
        ),
        (lambda: fk.giou_loss(torch.zeros(3, 4), torch.zeros(3, 4), eps=0.0), "eps"),
        (lambda: fk.iou_loss(torch.zeros(3, 4), torch.zeros(3, 4), mode="square"), "mode"),
        (lambda: fk.IoULoss(mode="square"), "mode"),
        (lambda: fk.GIoULoss(box_format="xy"), "box_format"),
        (lambda: fk.focal_eiou_loss(torch.zeros(1, 4), torch.zeros(1, 4), gamma=-1.0), "gamma"),
        (lambda: fk.box_convert(torch.zeros(3, 4), "xyxy", "yxyx"), "out_fmt"),
        (lambda: fk.box_convert(torch.zeros(3, 3), "xyxy", "xywh"), "boxes"),
        (lambda: fk.focal_l1_loss(torch.zeros(3), torch.zeros(3), beta=0.2), "beta"),
        (lambda: fk.focal_l1_loss(torch.zeros(3), torch.zeros(3), beta=1.5), "beta"),
        (lambda: fk.focal_l1_loss(torch.zeros(3), torch.zeros(3), alpha=0.0), "alpha"),
        (lambda: fk.FocalL1Loss(beta=2.0), "beta"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------

coord = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
# sizes 0 or >= 0.01: a translation must not round a tiny width away (that changes the input)
size = st.one_of(st.just(0.0), st.floats(0.01, 50))
box = st.tuples(coord, coord, size, size).map(lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])
proper_box = st.tuples(coord, coord, st.floats(0.5, 50), st.floats(0.5, 50)).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]
)


@HYP
@given(proper_box, box)
def test_identical_boxes_give_zero_and_every_loss_is_finite(b, other):
    """Every IoU loss is 0 for identical boxes, and finite with finite gradients everywhere."""
    same = torch.tensor([b], dtype=torch.float64)
    for kind, fn in LOSSES.items():
        assert abs(fn(same, same).item()) < 1e-6, kind
        x = same.clone().requires_grad_(True)
        loss = fn(x, torch.tensor([other], dtype=torch.float64))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), kind


@HYP
@given(box, box)
def test_focal_eiou_with_gamma_zero_equals_eiou(b1, b2):
    """Focal-EIoU with gamma = 0 is EIoU (IoU^0 = 1, also at IoU = 0)."""
    p, t = torch.tensor([b1], dtype=torch.float64), torch.tensor([b2], dtype=torch.float64)
    assert fk.focal_eiou_loss(p, t, gamma=0.0).item() == fk.eiou_loss(p, t).item()


@HYP
@given(box, box, st.floats(-50, 50), st.floats(-50, 50))
def test_losses_are_invariant_to_translating_both_boxes(b1, b2, dx, dy):
    """Translating both boxes by the same vector leaves every loss unchanged."""
    p, t = torch.tensor([b1], dtype=torch.float64), torch.tensor([b2], dtype=torch.float64)
    shift = torch.tensor([dx, dy, dx, dy], dtype=torch.float64)
    for kind, fn in LOSSES.items():
        a, b = fn(p, t).item(), fn(p + shift, t + shift).item()
        assert abs(a - b) < 1e-6 * max(1.0, abs(a)), kind


@HYP
@given(proper_box, proper_box, st.floats(0.1, 10))
def test_iou_family_is_scale_invariant(b1, b2, scale):
    """Scaling both boxes by the same factor leaves IoU, GIoU, DIoU, CIoU, EIoU unchanged
    (up to the absolute eps, taken tiny here)."""
    p, t = torch.tensor([b1], dtype=torch.float64), torch.tensor([b2], dtype=torch.float64)
    for kind in ("iou", "giou", "diou", "ciou", "eiou", "focal_eiou"):
        fn = LOSSES[kind]
        a, b = fn(p, t, eps=1e-12).item(), fn(p * scale, t * scale, eps=1e-12).item()
        assert abs(a - b) < 1e-6, kind


@HYP
@given(box, box)
def test_giou_and_diou_losses_lie_in_zero_two(b1, b2):
    """L_GIoU and L_DIoU lie in [0, 2); L_IoU in [0, 1]; CIoU, EIoU >= 0."""
    p, t = torch.tensor([b1], dtype=torch.float64), torch.tensor([b2], dtype=torch.float64)
    for kind in ("giou", "diou"):
        value = LOSSES[kind](p, t).item()
        assert -1e-9 <= value < 2, (kind, value)
    assert -1e-9 <= fk.iou_loss(p, t).item() <= 1
    assert fk.ciou_loss(p, t).item() >= -1e-9 and fk.eiou_loss(p, t).item() >= -1e-9


@HYP
@given(box, box)
def test_penalty_terms_order_the_losses(b1, b2):
    """DIoU, CIoU and EIoU add non-negative penalties to 1 - IoU; Focal-EIoU <= EIoU."""
    p, t = torch.tensor([b1], dtype=torch.float64), torch.tensor([b2], dtype=torch.float64)
    base = fk.iou_loss(p, t).item()
    diou = fk.diou_loss(p, t).item()
    assert diou >= base - 1e-12
    assert fk.ciou_loss(p, t).item() >= diou - 1e-12
    assert fk.eiou_loss(p, t).item() >= base - 1e-12
    assert fk.focal_eiou_loss(p, t).item() <= fk.eiou_loss(p, t).item() + 1e-12


@HYP
@given(st.floats(0, 10), st.floats(0, 10), st.floats(0.1, 5), st.floats(1 / math.e, 1.0))
def test_focal_l1_is_nondecreasing_in_the_error(x1, x2, alpha, beta):
    """FocalL1 is a non-decreasing function of |d| (its gradient magnitude is >= 0)."""
    assume(x1 != x2)
    lo, hi = sorted((x1, x2))
    out = fk.focal_l1_loss(
        torch.tensor([lo, hi], dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
        alpha=alpha,
        beta=beta,
        reduction="none",
    )
    assert out[0] <= out[1] + 1e-12
    at_one = fk.focal_l1_loss(
        torch.tensor([1.0 - 1e-9, 1.0 + 1e-9], dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
        alpha=alpha,
        beta=beta,
        reduction="none",
    )
    assert abs(at_one[0] - at_one[1]) < 1e-6  # continuous at |d| = 1
