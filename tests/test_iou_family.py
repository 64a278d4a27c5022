"""The IoU losses of YOLO-style detectors (SIoU, Wise-IoU, MPDIoU, Shape-IoU) and the
Alpha-, Inner-, Focaler-IoU modifiers of every IoU-family loss, plus CIoU's gated form:
SPEC's check values (values and gradients), an independent float64 reference on random boxes
in every box format, the reductions between losses, transliterations of the public code,
degenerate boxes in every dtype, argument errors, Modules, torch.compile and properties.

Wise-IoU's running mean (the Module's state) is tested in test_wiou.py, the Triton kernel in
test_triton_iou_family.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import focalkit as fk
from _iou_family_refs import (
    DEGENERATE,
    PAIRS,
    Options,
    alpha_iou_loss,
    bbox_mpdiou_loss,
    inner_ciou_loss,
    iou_family_grad,
    iou_family_reference,
    mmdet_ciou_loss,
    mmdet_siou_loss,
    shape_iou_loss,
    wiou_grad,
    wiou_reference,
    yolov6_siou_loss,
)

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)
RTOL = 1e-6  # SPEC: public codes place eps elsewhere, < 1e-7 relative


def _pairs(names="ABC", dtype=F64):
    pred = torch.tensor([PAIRS[k][0] for k in names], dtype=dtype)
    target = torch.tensor([PAIRS[k][1] for k in names], dtype=dtype)
    return pred, target


def _values_and_grad(fn, names="ABC", grad_of="B", **kw):
    """Per-box values on SPEC's pairs, and d/dpred of the single-pair loss of ``grad_of``."""
    pred, target = _pairs(names)
    values = fn(pred, target, reduction="none", **kw)
    p, t = _pairs(grad_of)
    x = p.clone().requires_grad_(True)
    fn(x, t, reduction="sum", **kw).backward()
    return values.tolist(), x.grad[0].tolist()


def _close(got, expected, rtol=RTOL, atol=1e-12):
    torch.testing.assert_close(
        torch.tensor(got, dtype=F64), torch.tensor(expected, dtype=F64), rtol=rtol, atol=atol
    )


# --------------------------------------------------------------------------------------------
# SPEC check values
# --------------------------------------------------------------------------------------------


def test_siou_spec_check_values():
    """SPEC sec. 12: paper sign (A, B, C; d/dpred B), mmdetection's sign, the far pair."""
    values, grad = _values_and_grad(fk.siou_loss)
    _close(values, [0.6479062151, 0.8064531602, 1.264670296])
    _close(grad, [-0.03158774605, -0.06004945578, 0.04334089757, -0.1032014569])
    values, grad = _values_and_grad(fk.siou_loss, paper_sign=False, clamp=True)
    _close(values, [0.5678848793, 0.6706575057, 0.6363731279])  # the clamp is inactive here
    _close(grad, [-0.05092932116, -0.0238260916, 0.03108033154, -0.03102830707])
    far_p = torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 1, 1]], dtype=F64)
    far_t = torch.tensor([[3.0, 0, 4, 1], [40.0, 30, 42, 31]], dtype=F64)
    paper = fk.siou_loss(far_p, far_t, reduction="none")
    unclamped = fk.siou_loss(far_p, far_t, paper_sign=False, reduction="none")
    clamped = fk.siou_loss(far_p, far_t, paper_sign=False, clamp=True, reduction="none")
    _close(paper.tolist(), [1.337673757, 1.63429414])
    _close(unclamped.tolist(), [-0.04010833783, -0.6357205391])
    assert clamped.tolist() == [0.0, 0.0]


def test_siou_signs_pull_in_or_push_away():
    """SPEC sec. 12: shifting the disjoint prediction towards the target, d L / d shift is
    -0.0304 with the paper's sign (pulls in), +0.2888 with mmdetection's (pushes away) and 0
    once clamped (no training signal)."""
    target = torch.tensor([[3.0, 0, 4, 1]], dtype=F64)
    shift = torch.zeros((), dtype=F64, requires_grad=True)
    expected = {(True, False): -0.03043617129, (False, False): 0.2887703206, (False, True): 0.0}
    for (paper_sign, clamp), value in expected.items():
        pred = torch.tensor([[0.0, 0, 1, 1]], dtype=F64) + shift * torch.tensor([1.0, 0, 1, 0])
        (g,) = torch.autograd.grad(
            fk.siou_loss(pred, target, paper_sign=paper_sign, clamp=clamp), shift
        )
        assert g.item() == pytest.approx(value, rel=RTOL, abs=1e-12), (paper_sign, clamp)


def test_wiou_spec_check_values():
    """SPEC sec. 13 (mean 0.5): v1, v2, v3 on A and B; d/dpred B for v1 and v3."""
    expected = {
        1: [0.6335369947, 0.7645607982],
        2: [0.6990159385, 0.9220950176],
        3: [0.8072155398, 0.9995835235],
    }
    for version, values in expected.items():
        got, grad = _values_and_grad(fk.wiou_loss, "AB", version=version, iou_mean=0.5)
        _close(got, values)
        if version == 1:
            _close(grad, [-0.03925017976, -0.07011881077, 0.03025534685, -0.08749519272])
        if version == 3:
            _close(grad, [-0.05131551745, -0.09167303385, 0.0395557113, -0.1143908414])
    # the mean as a one-element tensor gives the same
    pred, target = _pairs("AB")
    torch.testing.assert_close(
        fk.wiou_loss(pred, target, iou_mean=torch.tensor(0.5, dtype=F64)),
        fk.wiou_loss(pred, target, iou_mean=0.5),
    )


def test_wiou_momentum_and_one_update():
    """m(890, 34) = 9.899484435e-5; one update from 1.0 on the batch {A, B} gives 0.9999671321."""
    assert fk.wiou_momentum(890, 34) == pytest.approx(9.899484435e-5, rel=1e-9)
    crit = fk.WIoULoss()
    assert crit.momentum == fk.wiou_momentum(890, 34)
    crit(*_pairs("AB"))
    assert crit.iou_mean.item() == pytest.approx(0.9999671321, rel=1e-10)


ALPHA_LOSSES = {
    "iou": fk.iou_loss,
    "giou": fk.giou_loss,
    "diou": fk.diou_loss,
    "ciou": fk.ciou_loss,
}


def test_alpha_iou_spec_check_values():
    """SPEC sec. 14 (a = 3): a-IoU, a-GIoU, a-DIoU, a-CIoU on A and B; d/dpred B of a-IoU
    and a-CIoU."""
    expected = {
        "iou": [0.9400838341, 0.9797145006],
        "giou": [0.9405958341, 0.9895541506],
        "diou": [0.9401478341, 0.9798395006],
        "ciou": [0.9401478341, 0.9798424021],
    }
    grads = {
        "iou": [-0.007376545229, -0.01106481784, 0.007376545229, -0.01475309052],
        "ciou": [-0.007370301307, -0.01117565431, 0.007282066013, -0.01493343052],
    }
    for name, values in expected.items():
        got, grad = _values_and_grad(ALPHA_LOSSES[name], "AB", power=3.0)
        _close(got, values)
        if name in grads:
            _close(grad, grads[name])


def test_mpdiou_spec_check_values():
    """SPEC sec. 15 (W 16, H 12): A, B, C and d/dpred B; image_size is (H, W)."""
    values, grad = _values_and_grad(fk.mpdiou_loss, image_size=(12, 16))
    _close(values, [0.6186956539, 0.7647727281, 1.075])
    _close(grad, [-0.04305785104, -0.05458677656, 0.03805785104, -0.08111570235])
    pred, target = _pairs()
    as_tensor = fk.mpdiou_loss(pred, target, image_size=torch.tensor([12.0, 16.0]))
    torch.testing.assert_close(as_tensor, fk.mpdiou_loss(pred, target, image_size=(12, 16)))


def test_inner_iou_spec_check_values():
    """SPEC sec. 16: IoU_inner at ratios 0.7 and 1.3; Inner-IoU, -GIoU, -CIoU, -SIoU (0.7),
    Inner-IoU and Inner-CIoU (1.3); d/dpred B of Inner-IoU (0.7)."""
    pred, target = _pairs()
    for ratio, inner in (
        (0.7, [0.2604501587, 0.1807228905, 0]),
        (1.3, [0.4840834235, 0.3284671527, 0]),
    ):
        got = 1 - fk.iou_loss(pred, target, inner_ratio=ratio, reduction="none")
        _close(got.tolist(), inner, atol=1e-10)
    expected = {
        (0.7, "iou"): [0.7395498413, 0.8192771095, 1],
        (0.7, "giou"): [0.819549841, 1.033562823, 1.458333331],
        (0.7, "ciou"): [0.7795498412, 0.8835401401, 1.278846153],
        (0.7, "siou"): [0.7787604026, 0.8984575416, 1.264670296],
        (1.3, "iou"): [0.5159165765, 0.6715328473, 1],
        (1.3, "ciou"): [0.5559165764, 0.735795878, 1.278846153],
    }
    losses = {**ALPHA_LOSSES, "siou": fk.siou_loss}
    for (ratio, name), values in expected.items():
        got = losses[name](pred, target, inner_ratio=ratio, reduction="none")
        _close(got.tolist(), values)
    _, grad = _values_and_grad(fk.iou_loss, inner_ratio=0.7)
    _close(grad, [-0.02032225263, -0.05182174432, 0.02032225263, -0.09043402481])


def test_focaler_iou_spec_check_values():
    """SPEC sec. 17: Focaler-IoU, -GIoU, -CIoU for (d, u) = (0, 0.95) and (0.2, 0.8);
    d/dpred B of Focaler-IoU (0, 0.95)."""
    pred, target = _pairs()
    expected = {
        (0.0, 0.95): ([0.5881006883, 0.7129186612, 1], [0.668100688, 0.9272043749, 1.458333331],
                      [0.6281006882, 0.7771816918, 1.278846153]),
        (0.2, 0.8): ([0.6811594231, 0.8787878802, 1], [0.7611594228, 1.093073594, 1.458333331],
                     [0.721159423, 0.9430509108, 1.278846153]),
    }  # fmt: skip
    for focaler, per_loss in expected.items():
        for fn, values in zip((fk.iou_loss, fk.giou_loss, fk.ciou_loss), per_loss, strict=True):
            _close(fn(pred, target, focaler=focaler, reduction="none").tolist(), values)
    _, grad = _values_and_grad(fk.iou_loss, focaler=(0.0, 0.95))
    _close(grad, [-0.03479773794, -0.0521966069, 0.03479773794, -0.06959547616])


def test_shape_iou_spec_check_values():
    """SPEC sec. 18: scale 0 and 1, A, B, C and d/dpred B."""
    values, grad = _values_and_grad(fk.shape_iou_loss)
    _close(values, [0.6486956538, 0.7924854753, 1.285302998])
    _close(grad, [-0.03803930251, -0.05944051486, 0.02627459664, -0.09508549343])
    values, grad = _values_and_grad(fk.shape_iou_loss, scale=1.0)
    _close(values, [0.6486956538, 0.7913834464, 1.285302998])
    _close(grad, [-0.04906231195, -0.05805205697, 0.03337603745, -0.08320982215])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_check_values_in_lower_precision(dtype):
    """The default float32 compute agrees with the float64 check values to float32 precision
    whatever the input dtype (half inputs are upcast; the inputs here are exact in half)."""
    pred, target = _pairs(dtype=dtype)
    calls = [
        (fk.siou_loss, {}, [0.6479062151, 0.8064531602, 1.264670296]),
        (fk.mpdiou_loss, {"image_size": (12, 16)}, [0.6186956539, 0.7647727281, 1.075]),
        (fk.shape_iou_loss, {}, [0.6486956538, 0.7924854753, 1.285302998]),
        (fk.ciou_loss, {"inner_ratio": 0.7}, [0.7795498412, 0.8835401401, 1.278846153]),
        (fk.iou_loss, {"focaler": (0.2, 0.8)}, [0.6811594231, 0.8787878802, 1]),
    ]
    for fn, kw, expected in calls:
        got = fn(pred, target, reduction="none", **kw)
        assert got.dtype == dtype
        ref = fn(pred.float(), target.float(), reduction="none", **kw)
        _close(ref.double().tolist(), expected, rtol=2e-6, atol=1e-6)
        torch.testing.assert_close(got, ref.to(dtype), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# every base x modifier against the float64 reference, in every box format
# --------------------------------------------------------------------------------------------

# name: (focalkit function, its keywords, the reference's Options fields)
BASES = {
    "iou": (fk.iou_loss, {}, {"base": "iou"}),
    "iou_log": (fk.iou_loss, {"mode": "log"}, {"base": "iou", "log": True}),
    "giou": (fk.giou_loss, {}, {"base": "giou"}),
    "diou": (fk.diou_loss, {}, {"base": "diou"}),
    "ciou": (fk.ciou_loss, {}, {"base": "ciou"}),
    "ciou_gated": (fk.ciou_loss, {"aspect_gate": True}, {"base": "ciou", "aspect_gate": True}),
    "eiou": (fk.eiou_loss, {}, {"base": "eiou"}),
    "focal_eiou": (fk.focal_eiou_loss, {}, {"base": "focal_eiou"}),
    "siou": (fk.siou_loss, {}, {"base": "siou"}),
    "siou_theta2": (fk.siou_loss, {"theta": 2.0}, {"base": "siou", "theta": 2.0}),
    "siou_mmdet": (
        fk.siou_loss,
        {"paper_sign": False, "clamp": True},
        {"base": "siou", "paper_sign": False, "clamp": True},
    ),
    "mpdiou": (
        fk.mpdiou_loss,
        {"image_size": (24, 32)},
        {"base": "mpdiou", "image_size": (24, 32)},
    ),
    "shape": (fk.shape_iou_loss, {}, {"base": "shape"}),
    "shape_s1": (fk.shape_iou_loss, {"scale": 1.0}, {"base": "shape", "scale": 1.0}),
    "shape_s05": (fk.shape_iou_loss, {"scale": 0.5}, {"base": "shape", "scale": 0.5}),
}
ALPHA_BASES = {"iou", "giou", "diou", "ciou", "ciou_gated"}
MODIFIERS = {
    "plain": {},
    "power3": {"power": 3.0},
    "power1.5": {"power": 1.5},
    "inner0.7": {"inner_ratio": 0.7},
    "inner1.3": {"inner_ratio": 1.3},
    "focaler": {"focaler": (0.1, 0.9)},
    "inner_focaler": {"inner_ratio": 0.8, "focaler": (0.0, 0.95)},
    "all": {"power": 2.0, "inner_ratio": 1.2, "focaler": (0.05, 0.85)},
}
COMBOS = [
    (base, mod)
    for base in BASES
    for mod in MODIFIERS
    if "power" not in MODIFIERS[mod] or (base in ALPHA_BASES and base != "iou_log")
    if not (base == "iou_log" and mod == "plain")  # covered by test_box.py
]


def _random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy float64 pairs: overlapping (some strongly), disjoint and contained ones."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=F64) * 10
    wh = torch.rand(n, 2, generator=gen, dtype=F64) * 5 + 0.2
    target = torch.cat([xy, xy + wh], -1)
    pred = target + torch.randn(n, 4, generator=gen, dtype=F64) * 1.2
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 0.05)
    if n >= 8:
        pred[:4] = target[:4] + 0.2 * torch.randn(4, 4, generator=gen, dtype=F64)  # overlap
        pred[4:6] = target[4:6] + 25.0  # disjoint
        pred[6] = target[6] + torch.tensor([0.3, 0.2, -0.3, -0.2], dtype=F64) * wh[6].repeat(2)
    return pred, target


def _reference(base, mod, pred, target):
    fn, kw, ref_kw = BASES[base]
    opts = Options(**ref_kw, **MODIFIERS[mod])
    pairs = list(zip(pred.tolist(), target.tolist(), strict=True))
    values = [iou_family_reference(p, t, opts) for p, t in pairs]
    grads = [iou_family_grad(p, t, opts) for p, t in pairs]
    return fn, kw, torch.tensor(values, dtype=F64), torch.tensor(grads, dtype=F64)


@pytest.mark.parametrize(("base", "mod"), COMBOS, ids=[f"{b}-{m}" for b, m in COMBOS])
def test_every_base_and_modifier_matches_the_reference(base, mod):
    """Values (rtol 1e-10) and gradients (central differences, the detached factors frozen)
    of 24 random pairs, in xyxy, xywh and cxcywh (the gradient taken w.r.t. the xyxy boxes
    through the conversion)."""
    pred, target = _random_pairs(24, seed=hash((base, mod)) % 2**16)
    fn, kw, ref, ref_grad = _reference(base, mod, pred, target)
    for fmt in ("xyxy", "xywh", "cxcywh"):
        x = pred.clone().requires_grad_(True)
        loss = fn(
            fk.box_convert(x, "xyxy", fmt),
            fk.box_convert(target, "xyxy", fmt),
            box_format=fmt,
            reduction="none",
            **kw,
            **MODIFIERS[mod],
        )
        loss.sum().backward()
        torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12, msg=fmt)
        torch.testing.assert_close(x.grad, ref_grad, rtol=1e-5, atol=1e-6, msg=fmt)


WISE_BASES = ("iou", "giou", "diou", "ciou", "eiou", "siou")


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("base", WISE_BASES)
def test_wiou_every_version_and_base_matches_the_reference(version, base):
    """Wise-IoU v1/v2/v3 over every base (base "iou": R L_IoU; others: the factor times the
    base loss), with and without Inner/Focaler, against the reference."""
    pred, target = _random_pairs(16, seed=version * 10 + len(base))
    mean = 0.37
    for mods in ({}, {"inner_ratio": 0.7, "focaler": (0.0, 0.95)}):
        opts = Options(base="wiou" if base == "iou" else base, **mods)
        pairs = list(zip(pred.tolist(), target.tolist(), strict=True))
        ref = torch.tensor([wiou_reference(p, t, version, mean, opts) for p, t in pairs], dtype=F64)
        ref_grad = torch.tensor([wiou_grad(p, t, version, mean, opts) for p, t in pairs], dtype=F64)
        x = pred.clone().requires_grad_(True)
        loss = fk.wiou_loss(
            x, target, version=version, base=base, iou_mean=mean, reduction="none", **mods
        )
        loss.sum().backward()
        torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x.grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_wiou_constants_and_gamma():
    """alpha, delta (v3) and gamma (v2) reach the factor."""
    pred, target = _random_pairs(8, seed=3)
    pairs = list(zip(pred.tolist(), target.tolist(), strict=True))
    opts = Options(base="wiou")
    for version, kw in ((3, {"alpha": 1.7, "delta": 2.7}), (2, {"gamma": 1.3})):
        got = fk.wiou_loss(pred, target, version=version, iou_mean=0.6, reduction="none", **kw)
        ref = [wiou_reference(p, t, version, 0.6, opts, **kw) for p, t in pairs]
        torch.testing.assert_close(got, torch.tensor(ref, dtype=F64), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# the reductions between losses (SPEC sec. 6) and other identities
# --------------------------------------------------------------------------------------------

coord = st.floats(-50, 50, allow_nan=False, allow_infinity=False)
side = st.floats(0.05, 30)
box = st.tuples(coord, coord, side, side).map(lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])
proper_side = st.floats(0.5, 30)  # 1 - IoU of identical boxes is eps / area: < 1e-6 here
proper_box = st.tuples(coord, coord, proper_side, proper_side).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]
)
ALL_LOSSES = {
    "iou": fk.iou_loss,
    "giou": fk.giou_loss,
    "diou": fk.diou_loss,
    "ciou": fk.ciou_loss,
    "eiou": fk.eiou_loss,
    "focal_eiou": fk.focal_eiou_loss,
    "siou": fk.siou_loss,
    "mpdiou": lambda p, t, **kw: fk.mpdiou_loss(p, t, image_size=(100, 80), **kw),
    "shape": lambda p, t, **kw: fk.shape_iou_loss(p, t, scale=0.7, **kw),
    "wiou": lambda p, t, **kw: fk.wiou_loss(p, t, iou_mean=0.4, **kw),
    "wiou_siou": lambda p, t, **kw: fk.wiou_loss(p, t, base="siou", iou_mean=0.4, **kw),
}


@SETTINGS
@given(box, box)
def test_power_one_is_the_base_loss(b1, b2):
    """Alpha-IoU with a = 1 is IoU, GIoU, DIoU, CIoU exactly."""
    p, t = torch.tensor([b1], dtype=F64), torch.tensor([b2], dtype=F64)
    for name, fn in ALPHA_LOSSES.items():
        assert fn(p, t, power=1.0).item() == fn(p, t).item(), name


@SETTINGS
@given(box, box)
def test_inner_ratio_one_and_focaler_zero_one_are_the_base_loss(b1, b2):
    """Inner-IoU with ratio 1 and Focaler-IoU with (d, u) = (0, 1) are their base, for every
    loss of the family (ratio 1: equal up to rounding of the auxiliary boxes' corners)."""
    p, t = torch.tensor([b1], dtype=F64), torch.tensor([b2], dtype=F64)
    for name, fn in ALL_LOSSES.items():
        base = fn(p, t).item()
        assert fn(p, t, focaler=(0.0, 1.0)).item() == base, name
        assert fn(p, t, inner_ratio=1.0).item() == pytest.approx(base, rel=1e-12, abs=1e-12), name


@SETTINGS
@given(box, box, st.floats(0.3, 2.0), st.floats(0.0, 0.4), st.floats(0.6, 1.0))
def test_modifiers_change_only_the_overlap_term(b1, b2, ratio, d, u):
    """L_Inner-X = L_X + IoU - IoU_inner and L_Focaler-X = L_X + IoU - IoU_f, for every X."""
    p, t = torch.tensor([b1], dtype=F64), torch.tensor([b2], dtype=F64)
    iou = 1 - fk.iou_loss(p, t).item()
    iou_inner = 1 - fk.iou_loss(p, t, inner_ratio=ratio).item()
    iou_f = 1 - fk.iou_loss(p, t, focaler=(d, u)).item()
    assert iou_f == pytest.approx(min(max((iou - d) / (u - d), 0.0), 1.0), abs=1e-12)
    focal = iou**0.5  # Focal-EIoU's factor multiplies the modified EIoU
    for name, fn in ALL_LOSSES.items():
        if name.startswith("wiou"):
            continue  # R multiplies the overlap term: see test_wiou_modifiers_and_versions_reduce
        scale = focal if name == "focal_eiou" else 1.0
        base = fn(p, t).item()
        assert fn(p, t, inner_ratio=ratio).item() == pytest.approx(
            base + scale * (iou - iou_inner), rel=1e-9, abs=1e-9
        ), name
        assert fn(p, t, focaler=(d, u)).item() == pytest.approx(
            base + scale * (iou - iou_f), rel=1e-9, abs=1e-9
        ), name


def test_wiou_modifiers_and_versions_reduce():
    """Wise-IoU: v1 over a base other than IoU is that base; v2 with gamma 0 is v1; v3 at
    beta = delta (mean = L_IoU / delta) is v1; Inner replaces the overlap term inside R."""
    pred, target = _random_pairs(12, seed=5)
    kw = {"reduction": "none"}
    for base, fn in (("giou", fk.giou_loss), ("ciou", fk.ciou_loss), ("siou", fk.siou_loss)):
        torch.testing.assert_close(
            fk.wiou_loss(pred, target, version=1, base=base, **kw), fn(pred, target, **kw)
        )
    v1 = fk.wiou_loss(pred, target, version=1, **kw)
    torch.testing.assert_close(
        fk.wiou_loss(pred, target, version=2, gamma=0.0, iou_mean=0.3, **kw), v1
    )
    l_iou = fk.iou_loss(pred[:1], target[:1]).item()
    at_delta = fk.wiou_loss(pred[:1], target[:1], version=3, iou_mean=l_iou / 3.0)
    torch.testing.assert_close(at_delta, v1[:1].sum())
    r = v1 / fk.iou_loss(pred, target, **kw)
    inner = fk.wiou_loss(pred, target, version=1, inner_ratio=0.7, **kw)
    torch.testing.assert_close(inner, r * fk.iou_loss(pred, target, inner_ratio=0.7, **kw))


@SETTINGS
@given(box, box)
def test_mpdiou_scales_with_the_image(b1, b2):
    """Scaling the boxes and the image size by one factor leaves MPDIoU unchanged; the
    corner term is (d1^2 + d2^2) / (W^2 + H^2)."""
    p, t = torch.tensor([b1], dtype=F64), torch.tensor([b2], dtype=F64)
    a = fk.mpdiou_loss(p, t, image_size=(60, 80), eps=1e-14).item()
    b = fk.mpdiou_loss(3 * p, 3 * t, image_size=(180, 240), eps=1e-14).item()
    assert a == pytest.approx(b, rel=1e-9, abs=1e-10)
    d2 = ((p - t) ** 2).sum().item()
    assert a == pytest.approx(fk.iou_loss(p, t, eps=1e-14).item() + d2 / 10000, rel=1e-9, abs=1e-10)


def test_mpdiou_per_box_image_sizes():
    """A (N, 2) image_size gives each box its own diagonal; (2,) broadcasts."""
    pred, target = _random_pairs(6, seed=7)
    sizes = torch.tensor([[10.0, 20.0], [30, 40], [50, 60], [10, 10], [20, 30], [640, 480]])
    got = fk.mpdiou_loss(pred, target, image_size=sizes, reduction="none")
    one_by_one = [
        fk.mpdiou_loss(pred[i : i + 1], target[i : i + 1], image_size=tuple(sizes[i].tolist()))
        for i in range(6)
    ]
    torch.testing.assert_close(got, torch.stack(one_by_one))
    batched = fk.mpdiou_loss(
        pred.reshape(2, 3, 4), target.reshape(2, 3, 4), image_size=sizes[:2, None], reduction="none"
    )
    torch.testing.assert_close(
        batched[0], fk.mpdiou_loss(pred[:3], target[:3], image_size=(10, 20), reduction="none")
    )


def test_shape_iou_scale_zero_is_diou_plus_siou_shape_cost():
    """Shape-IoU at scale 0 is DIoU's distance plus half SIoU's shape cost (theta 4)."""
    pred, target = _random_pairs(16, seed=11)
    kw = {"reduction": "none"}
    siou_shape = fk.siou_loss(pred, target, **kw) - fk.iou_loss(pred, target, **kw)
    # SIoU's extra terms minus its distance cost leave half its shape cost
    w, h = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
    wg, hg = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    om_w = (w - wg).abs() / (torch.maximum(w, wg) + 1e-7)
    om_h = (h - hg).abs() / (torch.maximum(h, hg) + 1e-7)
    shape = (1 - torch.exp(-om_w)) ** 4 + (1 - torch.exp(-om_h)) ** 4
    torch.testing.assert_close(
        fk.shape_iou_loss(pred, target, **kw), fk.diou_loss(pred, target, **kw) + 0.5 * shape
    )
    assert (siou_shape >= 0.5 * shape - 1e-12).all()  # the paper-sign distance cost is >= 0


# --------------------------------------------------------------------------------------------
# transliterations of the public code
# --------------------------------------------------------------------------------------------


def test_siou_mmdet_default_equals_mmdetection():
    """paper_sign=False, clamp=True reproduces mmdetection's siou_loss default; the paper
    sign equals its neg_gamma=True and YOLOv6's (eps placement aside), values and gradients."""
    pred, target = _random_pairs(64, seed=13)
    for ours_kw, theirs in (
        ({"paper_sign": False, "clamp": True}, lambda p: mmdet_siou_loss(p, target)),
        ({}, lambda p: mmdet_siou_loss(p, target, neg_gamma=True)),
        ({}, lambda p: yolov6_siou_loss(p, target)),
    ):
        x, y = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
        ours = fk.siou_loss(x, target, reduction="none", **ours_kw)
        ref = theirs(y)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
        ours.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-5)


def test_ciou_aspect_gate_equals_mmdetection():
    """aspect_gate=True is mmdetection's ciou_loss (the CIoU authors' later code): no aspect
    term where IoU <= 0.5, clamped; the default differs exactly there."""
    pred, target = _random_pairs(64, seed=17)
    x, y = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    ours = fk.ciou_loss(x, target, aspect_gate=True, reduction="none")
    ref = mmdet_ciou_loss(y, target)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-5)
    low = (1 - fk.iou_loss(pred, target, reduction="none")) <= 0.5
    plain = fk.ciou_loss(pred, target, reduction="none")
    assert low.any() and (~low).any()
    torch.testing.assert_close(ours[~low].detach(), plain[~low])
    torch.testing.assert_close(
        ours[low].detach(), fk.diou_loss(pred, target, reduction="none")[low]
    )
    assert (plain[low] > ours[low].detach()).any()


def test_alpha_inner_shape_mpdiou_equal_their_public_code():
    """Alpha-IoU (bbox_alpha_iou, a = 3), Inner-CIoU (inner_ciou, the YOLOv5 trade-off that
    equals CIoU's), Shape-IoU (shape_iou) and MPDIoU (bbox_mpdiou) agree with the
    transliterations to their eps placement."""
    pred, target = _random_pairs(48, seed=19)
    kw = {"reduction": "none"}
    for kind, fn in ALPHA_LOSSES.items():
        ours = fn(pred, target, power=3.0, **kw)
        torch.testing.assert_close(
            ours, alpha_iou_loss(pred, target, 3.0, kind), rtol=1e-6, atol=1e-6
        )
    torch.testing.assert_close(
        fk.ciou_loss(pred, target, inner_ratio=0.7, **kw),
        inner_ciou_loss(pred, target, 0.7),
        rtol=1e-6,
        atol=1e-6,
    )
    for scale in (0.0, 1.0):
        torch.testing.assert_close(
            fk.shape_iou_loss(pred, target, scale=scale, **kw),
            shape_iou_loss(pred, target, scale),
            rtol=1e-6,
            atol=1e-6,
        )
    torch.testing.assert_close(
        fk.mpdiou_loss(pred, target, image_size=(48, 64), **kw),
        bbox_mpdiou_loss(pred, target, (48, 64)),
        rtol=1e-6,
        atol=1e-6,
    )


# --------------------------------------------------------------------------------------------
# degenerate boxes: SPEC's table, finite gradients in every dtype, the public codes' NaNs
# --------------------------------------------------------------------------------------------

DEGENERATE_LOSSES = {
    "siou": (fk.siou_loss, {}),
    "siou_mmdet": (fk.siou_loss, {"paper_sign": False, "clamp": True}),
    "wiou_v1": (fk.wiou_loss, {"version": 1, "iou_mean": 0.5}),
    "wiou_v3": (fk.wiou_loss, {"version": 3, "iou_mean": 0.5}),
    "a_iou": (fk.iou_loss, {"power": 3.0}),
    "a_giou": (fk.giou_loss, {"power": 3.0}),
    "a_diou": (fk.diou_loss, {"power": 3.0}),
    "a_ciou": (fk.ciou_loss, {"power": 3.0}),
    "mpdiou": (fk.mpdiou_loss, {"image_size": (12, 16)}),
    "inner_ciou": (fk.ciou_loss, {"inner_ratio": 0.7}),
    "focaler_iou": (fk.iou_loss, {"focaler": (0.0, 0.95)}),
    "shape": (fk.shape_iou_loss, {}),
    "ciou_gated": (fk.ciou_loss, {"aspect_gate": True}),
    "inner_siou_focaler": (fk.siou_loss, {"inner_ratio": 1.3, "focaler": (0.2, 0.8)}),
    "wiou_v2_siou": (fk.wiou_loss, {"version": 2, "base": "siou", "iou_mean": 0.5}),
}
# SPEC's "Degenerate boxes" table: identical, disjoint, zero-area pred, both zero-area equal,
# both zero-area apart
DEGENERATE_VALUES = {
    "siou": [1.67e-8, 1.563515137, 1.179461933, 1, 1.432332331],
    "siou_mmdet": [1.67e-8, 0, 0.9554062155, 1, 0],
    "wiou_v1": [1.67e-8, 2.093459354, 1.079958999, 1, 1.221402753],
    "wiou_v3": [1.27e-15, 2.651715182, 1.367948065, 1.266666667, 1.547110154],
    "a_iou": [5.0e-8, 1, 1, 1, 1],
    "a_giou": [5.0e-8, 1.871334699, 1.037037035, 1, 1.99999985],
    "a_diou": [5.0e-8, 1.403285132, 1.000455166, 1, 1.008],
    "a_ciou": [5.0e-8, 1.403285132, 1.000580166, 1, 1.008],
    "mpdiou": [1.67e-8, 2.1625, 1.01, 1, 1.005],
    "inner_ciou": [3.40e-8, 1.739063399, 1.126923067, 1, 1.199999996],
    "focaler_iou": [0, 1, 1, 1, 1],
    "shape": [1.67e-8, 1.778830547, 1.156753717, 1, 1.199999996],
}
# the rounded identical-box entries (3 significant digits in SPEC)
_ROUNDED = {0: 1e-2}


def _degenerate(dtype):
    pred = torch.tensor([p for p, _ in DEGENERATE.values()], dtype=dtype)
    target = torch.tensor([t for _, t in DEGENERATE.values()], dtype=dtype)
    return pred, target


@pytest.mark.parametrize("name", list(DEGENERATE_VALUES))
def test_degenerate_boxes_give_specs_values(name):
    fn, kw = DEGENERATE_LOSSES[name]
    got = fn(*_degenerate(F64), reduction="none", **kw).tolist()
    expected = DEGENERATE_VALUES[name]
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        rtol = _ROUNDED.get(i, RTOL)
        assert g == pytest.approx(e, rel=rtol, abs=1e-12), (name, list(DEGENERATE)[i], g, e)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(DEGENERATE_LOSSES))
def test_degenerate_boxes_have_finite_values_and_gradients(name, dtype):
    """Every case of SPEC's table: finite values and finite gradients, in every dtype (half
    inputs are upcast; the gradient returns in the input dtype)."""
    fn, kw = DEGENERATE_LOSSES[name]
    pred, target = _degenerate(dtype)
    x = pred.clone().requires_grad_(True)
    loss = fn(x, target, reduction="none", **kw)
    loss.sum().backward()
    assert loss.dtype == dtype and x.grad.dtype == dtype
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(x.grad).all(), x.grad


def _nan_somewhere(fn, pred, target):
    x = pred.clone().requires_grad_(True)
    loss = fn(x, target)
    loss.sum().backward()
    return bool(loss.isnan().any() or x.grad.isnan().any())


@pytest.mark.parametrize(
    ("name", "public", "ours"),
    [
        ("siou (mmdet)", lambda p, t: mmdet_siou_loss(p, t, neg_gamma=True), fk.siou_loss),
        ("siou (yolov6)", yolov6_siou_loss, fk.siou_loss),
        (
            "wiou v1 (authors)",
            lambda p, t: __import__("_iou_family_refs").WiseIoU(890, 34, None)(p, t),
            lambda p, t, **kw: fk.wiou_loss(p, t, version=1, **kw),
        ),
        (
            "inner-ciou (authors)",
            inner_ciou_loss,
            lambda p, t, **kw: fk.ciou_loss(p, t, inner_ratio=0.7, **kw),
        ),
        ("shape-iou (authors)", shape_iou_loss, fk.shape_iou_loss),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_public_codes_nan_cases_are_finite_here(name, public, ours):
    """SPEC's "[code NaN]" cases: two zero-area boxes, equal or apart. The public code returns
    NaN (value or gradient) on at least one of them; focalkit is finite on both."""
    pred, target = _degenerate(F64)
    both = slice(3, 5)
    assert _nan_somewhere(public, pred[both], target[both]), name
    x = pred[both].clone().requires_grad_(True)
    loss = ours(x, target[both], reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------------------------
# argument errors
# --------------------------------------------------------------------------------------------

_B = torch.zeros(2, 4)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: fk.iou_loss(_B, _B, power=0.5), "power"),
        (lambda: fk.ciou_loss(_B, _B, power=float("inf")), "power"),
        (lambda: fk.iou_loss(_B, _B, mode="log", power=2.0), "power"),
        (lambda: fk.IoULoss(mode="log", power=2.0), "power"),
        (lambda: fk.GIoULoss(power=0.9), "power"),
        (lambda: fk.giou_loss(_B, _B, inner_ratio=0.0), "inner_ratio"),
        (lambda: fk.siou_loss(_B, _B, inner_ratio=-1.0), "inner_ratio"),
        (lambda: fk.SIoULoss(inner_ratio=float("nan")), "inner_ratio"),
        (lambda: fk.diou_loss(_B, _B, focaler=(0.5, 0.5)), "focaler"),
        (lambda: fk.eiou_loss(_B, _B, focaler=(-0.1, 0.9)), "focaler"),
        (lambda: fk.iou_loss(_B, _B, focaler=(0.2, 1.1)), "focaler"),
        (lambda: fk.iou_loss(_B, _B, focaler=0.5), "focaler"),
        (lambda: fk.iou_loss(_B, _B, focaler=(0.1, 0.5, 0.9)), "focaler"),
        (lambda: fk.ShapeIoULoss(focaler=(0.9, 0.1)), "focaler"),
        (lambda: fk.mpdiou_loss(_B, _B), "image_size"),
        (lambda: fk.mpdiou_loss(_B, _B, image_size=(0, 640)), "image_size"),
        (lambda: fk.mpdiou_loss(_B, _B, image_size=(640, -1)), "image_size"),
        (lambda: fk.mpdiou_loss(_B, _B, image_size=640), "image_size"),
        (lambda: fk.mpdiou_loss(_B, _B, image_size=torch.tensor([640.0, 0.0])), "image_size"),
        (lambda: fk.mpdiou_loss(_B, _B, image_size=torch.ones(3, 2)), "image_size"),
        (lambda: fk.mpdiou_loss(_B, _B, image_size=torch.ones(3)), "image_size"),
        (lambda: fk.MPDIoULoss(), "image_size"),
        (lambda: fk.MPDIoULoss(image_size=(1, float("inf"))), "image_size"),
        (lambda: fk.wiou_loss(_B, _B, base="shape"), "base"),
        (lambda: fk.wiou_loss(_B, _B, version=4), "version"),
        (lambda: fk.wiou_loss(_B, _B, version=True), "version"),
        (lambda: fk.WIoULoss(version=0), "version"),
        (lambda: fk.WIoULoss(base="mpdiou"), "base"),
        (lambda: fk.wiou_loss(_B, _B, iou_mean=0.0), "iou_mean"),
        (lambda: fk.wiou_loss(_B, _B, iou_mean=torch.ones(2)), "iou_mean"),
        (lambda: fk.wiou_loss(_B, _B, alpha=0.0), "alpha"),
        (lambda: fk.wiou_loss(_B, _B, delta=-1.0), "delta"),
        (lambda: fk.wiou_loss(_B, _B, gamma=-0.5), "gamma"),
        (lambda: fk.WIoULoss(momentum=1.5), "momentum"),
        (lambda: fk.WIoULoss(sync="yes"), "sync"),
        (lambda: fk.wiou_momentum(0, 34), "batches_per_epoch"),
        (lambda: fk.wiou_momentum(890, -1), "epochs"),
        (lambda: fk.siou_loss(_B, _B, theta=0.5), "theta"),
        (lambda: fk.SIoULoss(theta=0.0), "theta"),
        (lambda: fk.shape_iou_loss(_B, _B, scale=-1.0), "scale"),
        (lambda: fk.ShapeIoULoss(scale=-0.1), "scale"),
        (lambda: fk.siou_loss(torch.zeros(2, 5), torch.zeros(2, 5)), "pred_boxes"),
        (lambda: fk.wiou_loss(_B, torch.zeros(3, 4)), "target_boxes"),
        (lambda: fk.shape_iou_loss(_B, _B, reduction="max"), "reduction"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


def test_image_size_values_are_checked_with_validate():
    """A tensor image_size's values are read where that is free (CPU, eager) or with
    validate=True (elsewhere reading them would be a device sync)."""
    fk.mpdiou_loss(_B, _B, image_size=torch.tensor([[640.0, 480.0], [320.0, 320.0]]))
    with pytest.raises(ValueError, match=r"^image_size: expected H > 0"):
        fk.mpdiou_loss(
            _B, _B, image_size=torch.tensor([[640.0, 480.0], [320.0, -1.0]]), validate=True
        )


def test_wrong_kinds_raise_type_error():
    for call in (
        lambda: fk.iou_loss(_B, _B, power="3"),
        lambda: fk.siou_loss(_B, _B, theta=None),
        lambda: fk.wiou_momentum("890", 34),
    ):
        with pytest.raises(TypeError):
            call()


# --------------------------------------------------------------------------------------------
# reductions, Modules, compile, gradcheck
# --------------------------------------------------------------------------------------------

FUNCTIONS = {
    "siou": (fk.siou_loss, fk.SIoULoss, {"theta": 3.0, "paper_sign": False, "clamp": True}),
    "mpdiou": (fk.mpdiou_loss, fk.MPDIoULoss, {"image_size": (40, 50)}),
    "shape": (fk.shape_iou_loss, fk.ShapeIoULoss, {"scale": 0.5}),
    "wiou": (fk.wiou_loss, fk.WIoULoss, {"version": 2, "base": "ciou"}),
    "iou": (fk.iou_loss, fk.IoULoss, {"power": 3.0}),
    "giou": (fk.giou_loss, fk.GIoULoss, {"power": 2.0}),
    "diou": (fk.diou_loss, fk.DIoULoss, {"power": 3.0}),
    "ciou": (fk.ciou_loss, fk.CIoULoss, {"aspect_gate": True, "power": 3.0}),
    "eiou": (fk.eiou_loss, fk.EIoULoss, {}),
    "focal_eiou": (fk.focal_eiou_loss, fk.FocalEIoULoss, {"gamma": 1.0}),
}
MODS = {"inner_ratio": 0.7, "focaler": (0.0, 0.95)}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_module_equals_function(name):
    """Each Module (eval mode for Wise-IoU: the mean stays 1.0) equals its function, per
    reduction, with the constructor's weight and a per-call override, and the modifiers."""
    fn, module_cls, kw = FUNCTIONS[name]
    pred, target = _random_pairs(7, seed=23)
    weight = torch.rand(7, generator=torch.Generator().manual_seed(1), dtype=F64)
    for reduction in ("mean", "sum", "none"):
        module = module_cls(**kw, **MODS, reduction=reduction, weight=weight).eval()
        torch.testing.assert_close(
            module(pred, target), fn(pred, target, **kw, **MODS, weight=weight, reduction=reduction)
        )
        torch.testing.assert_close(
            module(pred, target, weight=2 * weight),
            fn(pred, target, **kw, **MODS, weight=2 * weight, reduction=reduction),
        )
    module = module_cls(**kw, normalizer=3.0).eval()
    torch.testing.assert_close(module(pred, target), fn(pred, target, **kw, normalizer=3.0))
    text = repr(module_cls(**kw, **MODS))
    assert "inner_ratio=0.7" in text and "focaler=(0.0, 0.95)" in text


def test_mpdiou_module_keeps_a_tensor_image_size_as_a_buffer():
    sizes = torch.tensor([[12.0, 16.0]])
    module = fk.MPDIoULoss(image_size=sizes).double()
    assert "image_size" in dict(module.named_buffers()) and "image_size" not in module.state_dict()
    torch.testing.assert_close(module(*_pairs()), fk.mpdiou_loss(*_pairs(), image_size=(12, 16)))


@pytest.mark.parametrize("name", ["siou", "mpdiou", "shape", "wiou", "ciou"])
def test_reductions_weight_normalizer_and_empty(name):
    fn, _, kw = FUNCTIONS[name]
    pred, target = _random_pairs(12, seed=29)
    pred, target = pred.reshape(3, 4, 4), target.reshape(3, 4, 4)
    none = fn(pred, target, reduction="none", **kw)
    assert none.shape == (3, 4)
    torch.testing.assert_close(fn(pred, target, reduction="sum", **kw), none.sum())
    torch.testing.assert_close(fn(pred, target, **kw), none.mean())
    weight = torch.rand(3, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(fn(pred, target, weight=weight, **kw), (none * weight).mean())
    torch.testing.assert_close(fn(pred, target, normalizer=5.0, **kw), none.sum() / 5)
    x = torch.zeros(0, 4, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = fn(x, torch.zeros(0, 4), reduction=reduction, **kw)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
    assert x.grad.shape == (0, 4)


def test_new_losses_compile_fullgraph_and_match_eager():
    """Every new loss and modifier under torch.compile(fullgraph=True) (no graph break, no
    host sync): values and gradients equal eager."""
    torch._dynamo.reset()

    def everything(pred, target, weight, sizes):
        losses = [
            fk.siou_loss(pred, target, weight=weight),
            fk.siou_loss(pred, target, paper_sign=False, clamp=True, inner_ratio=0.7),
            fk.mpdiou_loss(pred, target, image_size=(64, 48), focaler=(0.0, 0.95)),
            fk.mpdiou_loss(pred, target, image_size=sizes, box_format="cxcywh"),
            fk.shape_iou_loss(pred, target, scale=0.5, inner_ratio=1.3),
            fk.wiou_loss(pred, target, iou_mean=0.4),
            fk.wiou_loss(pred, target, version=2, base="siou", iou_mean=torch.tensor(0.6)),
            fk.iou_loss(pred, target, power=3.0, focaler=(0.1, 0.9)),
            fk.giou_loss(pred, target, power=3.0, inner_ratio=0.7),
            fk.ciou_loss(pred, target, aspect_gate=True, power=2.0),
            fk.focal_eiou_loss(pred, target, inner_ratio=0.8, reduction="sum"),
        ]
        return torch.stack(losses)

    compiled = torch.compile(everything, fullgraph=True)
    pred, target = (t.float() for t in _random_pairs(16, seed=31))
    weight = torch.rand(16, generator=torch.Generator().manual_seed(3))
    sizes = torch.rand(16, 2, generator=torch.Generator().manual_seed(4)) * 50 + 10
    results = []
    for fn in (compiled, everything):
        x = pred.clone().requires_grad_(True)
        out = fn(x, target, weight, sizes)
        out.sum().backward()
        results.append((out, x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "call",
    [
        lambda p, t: fk.siou_loss(p, t),
        lambda p, t: fk.siou_loss(p, t, paper_sign=False, theta=2.5),
        lambda p, t: fk.mpdiou_loss(p, t, image_size=(20, 30)),
        lambda p, t: fk.shape_iou_loss(p, t, scale=1.5),
        lambda p, t: fk.giou_loss(p, t, power=3.0, inner_ratio=0.7),
        lambda p, t: fk.diou_loss(p, t, power=2.0, focaler=(0.1, 0.95)),
        lambda p, t: fk.iou_loss(p, t, inner_ratio=1.3, mode="log"),
    ],
)
def test_gradcheck_float64(call):
    """gradcheck of the losses without a detached factor (the others: the reference tests)."""
    pred, target = _random_pairs(5, seed=37)
    x = pred.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: call(p, target), (x,))


def test_target_gradient_on_torch():
    """target_boxes that require grad get a finite gradient (torch backend; Shape-IoU's
    weights are differentiated w.r.t. the target, finite at zero sides too)."""
    pred, target = _random_pairs(6, seed=41)
    target[0, 2] = target[0, 0]  # a zero-width target
    t = target.clone().requires_grad_(True)
    for call in (
        lambda: fk.shape_iou_loss(pred, t, scale=0.5),
        lambda: fk.siou_loss(pred, t, inner_ratio=0.7),
        lambda: fk.mpdiou_loss(pred, t, image_size=(9, 9)),
    ):
        t.grad = None
        call().backward()
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# properties from the papers
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(proper_box, box)
def test_identical_boxes_give_zero_and_everything_is_finite(b, other):
    """Every loss of the family is ~0 for identical boxes (Wise-IoU's factor included), and
    finite with finite gradients for any pair."""
    same = torch.tensor([b], dtype=F64)
    for name, fn in ALL_LOSSES.items():
        assert abs(fn(same, same).item()) < 1e-6, name
        for kw in ({}, {"inner_ratio": 0.7, "focaler": (0.1, 0.9)}):
            x = same.clone().requires_grad_(True)
            loss = fn(x, torch.tensor([other], dtype=F64), **kw)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), name


@SETTINGS
@given(box, box, st.floats(-30, 30), st.floats(-30, 30), st.floats(0.2, 5))
def test_translation_and_scale_invariance(b1, b2, dx, dy, scale):
    """Translating both boxes changes no loss; scaling both changes none but MPDIoU (whose
    image size does not scale) - eps taken tiny."""
    p, t = torch.tensor([b1], dtype=F64), torch.tensor([b2], dtype=F64)
    shift = torch.tensor([dx, dy, dx, dy], dtype=F64)
    for name, fn in ALL_LOSSES.items():
        a, b = fn(p, t).item(), fn(p + shift, t + shift).item()
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6), name
        if name in ("mpdiou", "shape"):  # Shape-IoU's weights use target sides ^ scale
            continue
        a, b = fn(p, t, eps=1e-14).item(), fn(p * scale, t * scale, eps=1e-14).item()
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6), name


@SETTINGS
@given(box, box)
def test_siou_bounds(b1, b2):
    """Paper sign: 0 <= L_SIoU < 3 (1 - IoU in [0, 1], Delta in [0, 2), Omega in [0, 2));
    mmdetection's default sign and clamp: L in [0, 2] and never above the paper's."""
    p, t = torch.tensor([b1], dtype=F64), torch.tensor([b2], dtype=F64)
    paper = fk.siou_loss(p, t).item()
    mmdet = fk.siou_loss(p, t, paper_sign=False, clamp=True).item()
    assert -1e-12 <= paper < 3
    assert 0 <= mmdet <= 2 and mmdet <= paper + 1e-12


def test_focaler_is_flat_outside_the_interval():
    """Focaler-IoU: IoU above u counts as solved (0, no gradient); below d no overlap gradient,
    and disjoint boxes under base IoU get no gradient at all (pair it with GIoU for that)."""
    target = torch.tensor([[0.0, 0, 10, 10]], dtype=F64)
    near = torch.tensor([[0.1, 0.1, 10.1, 10.1]], dtype=F64, requires_grad=True)  # IoU 0.98
    loss = fk.iou_loss(near, target, focaler=(0.0, 0.95))
    loss.backward()
    assert loss.item() == 0 and near.grad.abs().sum() == 0
    far = torch.tensor([[20.0, 0, 30, 10]], dtype=F64, requires_grad=True)
    fk.iou_loss(far, target, focaler=(0.2, 0.8)).backward()
    assert far.grad.abs().sum() == 0
    far.grad = None
    fk.giou_loss(far, target, focaler=(0.2, 0.8)).backward()
    assert far.grad.abs().sum() > 0


def test_wiou_v3_factor_peaks_at_one_over_log_alpha():
    """v3's factor beta / (delta alpha^(beta - delta)) is 1 at beta = delta and largest at
    beta = 1 / ln(alpha) (1.558 for alpha 1.9)."""
    pred, target = (
        torch.tensor([[0.0, 0, 4, 4]], dtype=F64),
        torch.tensor([[1.0, 1, 5, 5]], dtype=F64),
    )
    l_iou = fk.iou_loss(pred, target).item()
    v1 = fk.wiou_loss(pred, target, version=1).item()
    betas = torch.linspace(0.2, 6, 581, dtype=F64)
    factors = torch.tensor(
        [fk.wiou_loss(pred, target, iou_mean=l_iou / b.item()).item() / v1 for b in betas]
    )
    assert betas[factors.argmax()].item() == pytest.approx(1 / math.log(1.9), abs=0.01)
    assert factors[torch.isclose(betas, torch.tensor(3.0, dtype=F64))].item() == pytest.approx(1.0)
