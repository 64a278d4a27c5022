"""Detection study (focalkit.demo.detection): geometry, assignment, coding, NMS, COCO, one run."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import pathlib

import numpy as np
import pytest
import torch

from focalkit.demo.detection import study as det
from focalkit.demo.detection.boxes import (
    assign_targets,
    batched_nms,
    box_iou,
    decode_boxes,
    encode_boxes,
    grid_anchors,
    nms,
)
from focalkit.demo.detection.data import (
    SceneSpec,
    coco_dict,
    generate_scene,
    load_scenes,
    write_coco,
)
from focalkit.demo.detection.evaluate import coco_evaluate, cumulative_loss, gradient_norm_histogram

pytest.importorskip("pycocotools")

C = 3
IGNORE = -100


# --- anchors ------------------------------------------------------------------------------


def test_grid_anchors_count_centres_and_sizes():
    """One anchor per (cell, size, ratio); centres on the cell centres; area size^2, h/w = ratio."""
    sizes, ratios = (10.0, 14.0), (0.5, 1.0, 2.0)
    anchors = grid_anchors(4, 8, sizes, ratios, dtype=torch.float64)
    assert anchors.shape == (4 * 4 * 6, 4)
    per_cell = anchors.reshape(4, 4, 6, 4)
    cx = (per_cell[..., 0] + per_cell[..., 2]) / 2
    cy = (per_cell[..., 1] + per_cell[..., 3]) / 2
    grid = (torch.arange(4, dtype=torch.float64) + 0.5) * 8
    torch.testing.assert_close(cx, grid[None, :, None].expand(4, 4, 6))
    torch.testing.assert_close(cy, grid[:, None, None].expand(4, 4, 6))
    w = per_cell[0, 0, :, 2] - per_cell[0, 0, :, 0]
    h = per_cell[0, 0, :, 3] - per_cell[0, 0, :, 1]
    expected_area = torch.tensor([s * s for _ in ratios for s in sizes], dtype=torch.float64)
    expected_ratio = torch.tensor([r for r in ratios for _ in sizes], dtype=torch.float64)
    torch.testing.assert_close(w * h, expected_area)
    torch.testing.assert_close(h / w, expected_ratio)


def test_default_setting_anchor_count_and_sparsity():
    """Default setting: 9 anchors at every cell of both levels; fg:bg on the train set <= 1/300."""
    setting = det.detection_setting("default")
    stats = det.anchor_statistics(setting)
    cells = sum((setting.image_size // s) ** 2 for s in det.STRIDES)
    assert stats["num_anchors"] == 9 * cells
    assert stats["fg_per_image"] >= 1.0  # every image has objects and their best anchors
    assert stats["fg_bg_ratio"] == pytest.approx(stats["fg_per_image"] / stats["bg_per_image"])
    assert stats["fg_bg_ratio"] <= 1 / 100  # 96-pixel scenes: about 1 : 130


def test_quick_setting_is_sparse_too():
    stats = det.anchor_statistics(det.detection_setting("quick"))
    assert stats["fg_bg_ratio"] <= 1 / 40  # 64-pixel scenes


# --- assignment ---------------------------------------------------------------------------


def test_assignment_iou_bands_and_best_anchor_rule():
    """IoU >= 0.5 positive, < 0.4 background, in between ignored; each gt's best anchor positive."""
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 104.0, 104.0]])
    gt_labels = torch.tensor([2, 0])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0 -> class 2
            [0.0, 0.0, 10.0, 16.0],  # IoU 100/160 = 0.625 -> class 2
            [0.0, 0.0, 10.0, 22.0],  # IoU 100/220 = 0.4545 -> ignored
            [0.0, 0.0, 10.0, 25.0],  # IoU 0.4 exactly -> ignored (background is < 0.4)
            [0.0, 0.0, 10.0, 26.0],  # IoU 0.3846 -> background
            [50.0, 50.0, 60.0, 60.0],  # IoU 0 -> background
            [100.0, 100.0, 110.0, 110.0],  # IoU 16/100 with gt 1, its best -> class 0
            [101.0, 101.0, 111.0, 111.0],  # IoU 9/107 with gt 1 -> background
        ]
    )
    out = assign_targets(anchors, gt, gt_labels, C, ignore_index=IGNORE)
    assert out.labels.tolist() == [2, 2, IGNORE, IGNORE, C, C, 0, C]
    assert out.matched[[0, 1, 6]].tolist() == [0, 0, 1]
    torch.testing.assert_close(out.max_iou[6], torch.tensor(0.16))


def test_best_anchor_rule_keeps_ties_and_prefers_its_own_gt():
    """Tied best anchors are all positive; an anchor that is some gt's best anchor is matched to
    that gt even when it overlaps another gt more (the other gt has better anchors)."""
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 20.0, 20.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 8.0, 8.0],  # IoU 0.25 with gt 0 (its best), 0.16 with gt 1
            [0.0, 0.0, 8.0, 8.0],  # a tie: also gt 0's best
            [0.0, 0.0, 20.0, 20.0],  # gt 1, IoU 1
        ]
    )
    out = assign_targets(anchors, gt, torch.tensor([1, 0]), C)
    assert out.labels.tolist() == [1, 1, 0]
    assert out.matched.tolist() == [0, 0, 1]


def test_assignment_batched_padding_equals_single_images():
    """Padded batch assignment equals one image at a time; no gt gives all background."""
    anchors = grid_anchors(8, 8, (10.0, 16.0), (0.5, 1.0, 2.0))
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 3, 2, generator=gen) * 40
    wh = 4 + torch.rand(2, 3, 2, generator=gen) * 20
    boxes = torch.cat([xy, xy + wh], dim=-1)
    labels = torch.tensor([[0, 1, 2], [2, -1, -1]])  # image 1 has one gt, padded to 3
    batched = assign_targets(anchors, boxes, labels, C)
    for i, g in enumerate((3, 1)):
        single = assign_targets(anchors, boxes[i, :g], labels[i, :g], C)
        assert torch.equal(batched.labels[i], single.labels)
        positive = single.labels < C
        assert torch.equal(batched.matched[i][positive], single.matched[positive])
    empty = assign_targets(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), C)
    assert (empty.labels == C).all()


# --- box coding ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip_float64(weights):
    gen = torch.Generator().manual_seed(1)

    def random_boxes(n):
        xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100
        wh = 2 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 48  # ratios < 62.5 (clamp)
        return torch.cat([xy, xy + wh], dim=1)

    boxes, anchors = random_boxes(500), random_boxes(500)
    deltas = encode_boxes(boxes, anchors, weights)
    torch.testing.assert_close(decode_boxes(deltas, anchors, weights), boxes, rtol=0, atol=1e-9)
    assert torch.equal(encode_boxes(anchors, anchors, weights), torch.zeros_like(anchors))


def test_decode_clamps_huge_deltas():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = decode_boxes(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchors)
    assert torch.isfinite(out).all()
    assert (out[0, 2] - out[0, 0]).item() == pytest.approx(10 * 1000 / 16, rel=1e-5)


# --- NMS ----------------------------------------------------------------------------------


def _iou_py(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_py(boxes, scores, labels, threshold):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(labels[i] != labels[k] or _iou_py(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_matches_python_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 60
    xy = torch.rand(n, 2, generator=gen) * 30  # crowded: long suppression chains
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=gen) * 15], dim=1)
    scores = torch.rand(n, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    keep = batched_nms(boxes, scores, labels, 0.5)
    expected = _nms_py(boxes.tolist(), scores.tolist(), labels.tolist(), 0.5)
    assert keep.tolist() == expected
    assert 0 < len(expected) < n


def test_nms_hand_made_and_empty():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0.5, 0, 10.5, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]  # 0 and 1 overlap 3 by IoU > 0.5
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.5).tolist() == [3, 1, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_box_iou_values():
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[1.0, 1.0, 5.0, 5.0], [10.0, 10.0, 12.0, 12.0], [2.0, 2.0, 2.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[9 / 23, 0.0, 0.0]]))


# --- scenes and COCO ----------------------------------------------------------------------

SPEC = SceneSpec(
    image_size=96, num_images=6, min_objects=2, max_objects=5, min_size=6, max_size=30, seed=7
)


def test_scene_generator_deterministic_and_boxes_inside():
    a = generate_scene(SPEC, 3)
    b = generate_scene(SPEC, 3)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    image, boxes, labels, areas = a
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert not np.array_equal(image, generate_scene(SPEC, 4)[0])
    other_split = SceneSpec(**{**SPEC.__dict__, "seed": 8})
    assert not np.array_equal(image, generate_scene(other_split, 3)[0])
    assert 2 <= len(boxes) <= 5
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert set(labels.tolist()) <= {0, 1, 2}
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert (areas > 0).all() and (areas <= box_area).all()


def test_render_scene_is_the_scene_used():
    setting = det.detection_setting("quick")
    image = det.render_scene(setting, "test", 2)
    assert np.array_equal(image, load_scenes(setting.scene_spec("test")).images[2])
    with pytest.raises(ValueError, match="split"):
        det.render_scene(setting, "holdout", 0)
    # the validation split is its own stream of scenes, not the test one
    assert not np.array_equal(det.render_scene(setting, "val", 2), image)


def test_default_objects_are_mostly_coco_small():
    setting = det.detection_setting("default")
    areas = np.concatenate(load_scenes(setting.scene_spec("test")).areas)
    assert (areas < 32**2).mean() > 0.6


def _gt_as_results(payload):
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in payload["annotations"]
    ]


def test_coco_json_loads_and_ground_truth_scores_ap_one(tmp_path):
    from pycocotools.coco import COCO

    payload = coco_dict(SPEC, load_scenes(SPEC), "test")
    path = write_coco(tmp_path / "sub" / "test.json", payload)
    assert [p.name for p in path.parent.iterdir()] == ["test.json"]  # no temporary left
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    assert len(coco.getImgIds()) == 6 and len(coco.getCatIds()) == 3
    assert len(coco.getAnnIds()) == sum(len(b) for b in load_scenes(SPEC).boxes)
    metrics = coco_evaluate(path, _gt_as_results(payload))
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)
    shifted = _gt_as_results(payload)
    for r in shifted:  # half-box shift: IoU 1/3 < 0.5, every detection a false positive
        r["bbox"] = [r["bbox"][0] + r["bbox"][2] / 2, *r["bbox"][1:]]
    assert coco_evaluate(path, shifted)["AP50"] == pytest.approx(0.0)
    empty = coco_evaluate(path, [])
    assert empty["AP"] == 0.0 and empty["AP50"] == 0.0


# --- diagnostics --------------------------------------------------------------------------


def test_gradient_norm_histogram_and_cumulative_loss():
    logits = torch.tensor([[[5.0, -5.0, 0.0], [-6.0, -6.0, -6.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, C, IGNORE]])  # the ignored anchor counts nowhere
    hist = gradient_norm_histogram(logits, labels)
    assert len(hist["edges"]) == 31 and sum(hist["counts"]) == 6
    assert hist["counts"][0] == 5  # g = sigmoid(-5) etc. < 1/30, except the p = 0.5 pair
    assert hist["counts"][15] == 1
    curves = cumulative_loss(logits, labels, points=11)
    assert curves["fraction"][0] == 0.0 and curves["fraction"][-1] == 1.0
    for name in ("pos", "neg"):
        for curve in curves[name]:
            assert curve[0] == 0.0 and curve[-1] == pytest.approx(1.0)
            assert all(b >= a for a, b in itertools.pairwise(curve))
    # negatives: five pairs, one of them (logit 0) much harder; larger gamma puts more of the
    # loss on it, so the easiest 80 % carry less
    neg_80 = [curve[8] for curve in curves["neg"]]
    assert all(b < a for a, b in itertools.pairwise(neg_80))


# --- runs ---------------------------------------------------------------------------------


def test_runs_and_presets():
    runs = det.detection_runs()
    assert len(runs) == len(set(runs)) == len(det.CLS_LOSSES) + len(det.BOX_LOSSES) - 1
    assert {("qfl", det.DEFAULT_BOX), ("vfl", det.DEFAULT_BOX)} <= set(runs)
    assert (det.DEFAULT_CLS, det.DEFAULT_BOX) in runs
    assert {c for c, b in runs if b == det.DEFAULT_BOX} == set(det.CLS_LOSSES)
    assert {b for c, b in runs if c == det.DEFAULT_CLS} == set(det.BOX_LOSSES)
    quick, default, full = (det.detection_setting(p) for p in ("quick", "default", "full"))
    assert quick.max_steps < default.max_steps < full.max_steps
    assert quick.min_steps < default.min_steps < full.min_steps
    with pytest.raises(ValueError, match="preset"):
        det.detection_setting("huge")
    with pytest.raises(ValueError, match="cls_loss"):
        det.run_detection("ce", "giou", 0, quick, workdir=pathlib.Path("."))


def test_box_criteria_of_the_iou_family():
    """siou, inner_ciou and wiou are in the sweep; wiou's criterion holds a WIoULoss (v3) whose
    running mean is state of the run (momentum from n t = the shortest run, min_steps)."""
    import focalkit as fk

    assert {"siou", "wiou", "inner_ciou"} <= set(det.BOX_LOSSES)
    quick = det.detection_setting("quick")
    crit = det._Criterion("focal", "wiou", quick)
    assert isinstance(crit.wiou, fk.WIoULoss) and crit.wiou.version == 3
    assert crit.wiou.momentum == fk.wiou_momentum(1, quick.min_steps)
    assert "wiou.iou_mean" in crit.state_dict()
    assert det._Criterion("focal", "siou", quick).wiou is None


@pytest.fixture(scope="module")
def quick_record(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("det")
    calls = []
    record = det.run_detection(
        "focal",
        "smooth_l1",
        0,
        det.detection_setting("quick"),
        workdir=workdir,
        progress=lambda done, total: calls.append((done, total)),
    )
    return record, workdir, calls


def test_quick_run_record(quick_record):
    record, workdir, calls = quick_record
    setting = det.detection_setting("quick")
    text = json.dumps(record)  # plain JSON types only
    assert json.loads(text)["cls_loss"] == "focal"
    steps = record["steps"]
    assert setting.min_steps <= steps <= setting.max_steps
    assert [done for done, _ in calls] == list(range(1, steps + 1))
    assert all(total == setting.max_steps for _, total in calls[:-1])
    assert calls[-1][1] in (steps, setting.max_steps)
    validation = record["validation"]
    assert validation["step"] == list(range(setting.eval_every, steps + 1, setting.eval_every))
    assert validation["best_value"] == max(validation["value"])
    assert validation["reason"] in ("plateau", "cap") and validation["stopped_at"] == steps
    for name in ("AP", "AP50", "AP75", "AP_small"):
        value = record["metrics"][name]
        assert value == -1.0 or 0.0 <= value <= 1.0
    assert (workdir / record["annotations"]).is_file()
    assert record["annotations"].endswith("test.json")
    curve = record["curve"]
    assert 0 < len(curve["step"]) <= 51 and curve["step"][-1] == steps
    assert all(math.isfinite(v) for v in curve["loss_cls"] + curve["loss_box"])
    assert curve["loss_cls"][-1] < curve["loss_cls"][0]  # it learns something
    assert record["anchors"]["fg_bg_ratio"] < 1 / 40
    hist = record["grad_norm_hist"]
    assert len(hist["counts"]) == 30 and hist["edges"][0] == 0.0 and hist["edges"][-1] == 1.0
    valid = sum(hist["counts"])
    assert valid > 0 and valid % 3 == 0  # 3 class pairs per valid anchor
    cum = record["cumulative_loss"]
    assert cum["gammas"] == [0, 0.5, 1, 2]
    assert len(cum["pos"]) == len(cum["neg"]) == 4
    assert all(abs(c[-1] - 1.0) < 1e-9 for c in cum["pos"] + cum["neg"])
    assert len(record["examples"]) == 4
    for example in record["examples"]:
        assert all(len(p) == 6 and p[4] > setting.example_score for p in example["pred"])
        assert len(example["true"]) >= setting.min_objects
    assert record["setting"]["preset"] == "quick" and record["time_s"] > 0


def test_quick_run_is_deterministic(quick_record):
    record, workdir, _ = quick_record
    again = det.run_detection(
        "focal", "smooth_l1", 0, det.detection_setting("quick"), workdir=workdir
    )
    assert again["metrics"] == record["metrics"]
    assert again["curve"] == record["curve"]


# --- IoU-aware classification (QFL, VFL) --------------------------------------------------


def test_positive_ious_are_the_decoded_boxes_iou_with_their_ground_truth():
    """Each positive anchor's score is the IoU of the box its deltas decode to with its
    ground truth (box_iou's diagonal), 0 at the other anchors, and carries no gradient."""
    setting = det.detection_setting("quick")
    gen = torch.Generator().manual_seed(0)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 25.0], [2.0, 2.0, 4.0, 4.0]])
    deltas = (torch.randn(2, 3, 4, generator=gen) * 0.3).requires_grad_(True)
    gt = torch.tensor([[1.0, 1.0, 11.0, 9.0], [4.0, 6.0, 22.0, 20.0], [0.0, 0.0, 0.0, 0.0]])
    boxes = gt.expand(2, 3, 4).clone()
    labels = torch.tensor([[0, 1, C], [IGNORE, 2, C]])
    positive = ((labels >= 0) & (labels < C)).reshape(-1)
    targets = det._Targets(labels, boxes, torch.zeros_like(boxes))
    scores = det._positive_ious(deltas, anchors, targets, positive, setting)
    assert not scores.requires_grad and scores.shape == (6,)
    decoded = decode_boxes(
        deltas.detach().reshape(-1, 4), anchors.repeat(2, 1), setting.box_weights
    )
    expected = box_iou(decoded, boxes.reshape(-1, 4)).diagonal()
    torch.testing.assert_close(scores, torch.where(positive, expected, 0.0))
    assert (scores[positive] > 0).all()


@pytest.mark.parametrize("cls_loss", ["qfl", "vfl"])
def test_iou_aware_criterion_trains_the_logits_only(cls_loss):
    """QFL / VFL criteria give finite losses; the IoU targets are constants, so the box
    deltas get their gradient from the box loss alone."""
    setting = det.detection_setting("quick")
    crit = det._Criterion(cls_loss, "smooth_l1", setting)
    gen = torch.Generator().manual_seed(1)
    anchors = grid_anchors(4, 8, (10.0, 16.0), (0.5, 1.0, 2.0))
    num = anchors.shape[0]
    logits = torch.randn(2, num, det.NUM_CLASSES, generator=gen, requires_grad=True)
    deltas = (torch.randn(2, num, 4, generator=gen) * 0.1).requires_grad_(True)
    labels = torch.full((2, num), det.NUM_CLASSES)
    labels[:, :5] = torch.tensor([0, 1, 2, IGNORE, 0])
    boxes = anchors.expand(2, -1, -1).clone() + 1.0
    targets = det._Targets(labels, boxes, torch.zeros_like(boxes))
    loss_cls, loss_box = crit(logits, deltas, anchors, targets)
    assert torch.isfinite(loss_cls) and torch.isfinite(loss_box)
    (g_deltas,) = torch.autograd.grad(loss_cls, deltas, allow_unused=True)
    assert g_deltas is None or (g_deltas == 0).all()
    loss_cls.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
