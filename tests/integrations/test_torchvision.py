"""focalkit.integrations.torchvision against torchvision's own RetinaNet and FCOS losses.

Runs where torchvision imports (``make test-stacks``); skipped elsewhere, and a failure when
``FOCALKIT_REQUIRE_STACKS=1`` (CI's stacks step)."""

from __future__ import annotations

import copy
import io
import pickle
from collections import OrderedDict

import pytest
import torch
from _stacks import assert_gradients_close, available, gradients, import_stack, needs
from torch import nn

tv = import_stack("torchvision")

from torchvision.models.detection import FCOS, RetinaNet  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from focalkit.integrations import LossUnavailableError  # noqa: E402
from focalkit.integrations import torchvision as fk_tv  # noqa: E402

NUM_CLASSES = 5
KINDS = ("retinanet", "fcos")


class TinyBackbone(nn.Module):
    """Three feature maps (strides 4, 8, 16): a cheap stand-in for a ResNet-FPN."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.out_channels = channels
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, 4, 1), nn.ReLU())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU()) for _ in range(2)
        )

    def forward(self, x: torch.Tensor) -> OrderedDict:
        feats = OrderedDict()
        x = self.stem(x)
        feats["0"] = x
        for i, layer in enumerate(self.down):
            x = layer(x)
            feats[str(i + 1)] = x
        return feats


def make_model(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    backbone = TinyBackbone()
    common = {"min_size": 128, "max_size": 160, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    if kind == "retinanet":
        sizes = ((12, 16, 20), (24, 32, 40), (48, 64, 80))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 3)
        model = RetinaNet(backbone, NUM_CLASSES, anchor_generator=anchors, **common)
    else:
        anchors = AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3)
        model = FCOS(backbone, NUM_CLASSES, anchor_generator=anchors, **common)
    return model.to(dtype).train()


SIZES = ((120, 150), (128, 128), (100, 140))


def make_batch(dtype: torch.dtype = torch.float32, seed: int = 1, sizes=SIZES):
    """Three images (by default of different sizes) with 4, 0 and 1 boxes: an image without
    boxes, boxes of several scales, two overlapping boxes."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, h, w, generator=g, dtype=dtype) for h, w in sizes]
    boxes = [
        [[10.0, 20, 60, 90], [30, 30, 120, 110], [5, 5, 20, 25], [32, 34, 118, 108]],
        [],
        [[40.0, 10, 100, 80]],
    ]
    labels = [[1, 3, 0, 2], [], [4]]
    targets = [
        {
            "boxes": torch.tensor(b, dtype=dtype).reshape(-1, 4),
            "labels": torch.tensor(lab, dtype=torch.int64),
        }
        for b, lab in zip(boxes, labels, strict=True)
    ]
    return images, targets


def run(model: nn.Module, dtype: torch.dtype = torch.float32, seed: int = 1):
    model.zero_grad()
    images, targets = make_batch(dtype, seed)
    losses = model(images, targets)
    sum(losses.values()).backward()
    return {k: v.detach() for k, v in losses.items()}, gradients(model)


def patched(model: nn.Module, **kwargs) -> nn.Module:
    copy_ = copy.deepcopy(model)
    fk_tv.set_losses(copy_, **kwargs)
    return copy_


# --------------------------------------------------------------------------------------------
# equal to torchvision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_focal_and_the_model_box_loss_equal_torchvision(kind):
    """classification="focal" (alpha 0.25, gamma 2), the model's own box loss: the same loss
    dict and every parameter's gradient, relative 1e-5 in float32."""
    model = make_model(kind)
    ref_losses, ref_grads = run(model)
    ours = patched(model, classification="focal")
    losses, grads = run(ours)
    assert losses.keys() == ref_losses.keys()
    for key in ref_losses:
        torch.testing.assert_close(losses[key], ref_losses[key], rtol=1e-5, atol=0)
    assert_gradients_close(ref_grads, grads, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_equal_to_torchvision_in_float64(kind):
    """In float64 the two computations agree to rounding (1e-10): the same matches, targets,
    box coding and normalisation, not merely close ones."""
    model = make_model(kind, dtype=torch.float64)
    ref_losses, ref_grads = run(model, torch.float64)
    losses, grads = run(patched(model), torch.float64)
    for key in ref_losses:
        torch.testing.assert_close(losses[key], ref_losses[key], rtol=1e-12, atol=0)
    assert_gradients_close(ref_grads, grads, rtol=1e-10)


@pytest.mark.parametrize("box", ["l1", "smooth_l1", "giou", "diou", "ciou"])
def test_retinanet_box_losses_of_torchvision_equal(box):
    """Each box loss torchvision's RetinaNet offers (``_loss_type``) gives the same value and
    gradients through focalkit."""
    model = make_model("retinanet", dtype=torch.float64)
    model.head.regression_head._loss_type = box
    ref_losses, ref_grads = run(model, torch.float64)
    losses, grads = run(patched(model, box=box), torch.float64)
    torch.testing.assert_close(
        losses["bbox_regression"], ref_losses["bbox_regression"], rtol=1e-9, atol=0
    )
    assert_gradients_close(ref_grads, grads, rtol=1e-8)


def test_standard_constructors_any_backbone():
    """The library's own constructors (ResNet-50 FPN, no weights downloaded) also match."""
    from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn

    for build in (retinanet_resnet50_fpn, fcos_resnet50_fpn):
        torch.manual_seed(0)
        model = build(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=96, max_size=128
        )
        model.train()
        images, targets = make_batch()
        images, targets = images[:2], targets[:2]
        ref = model(images, targets)
        ours = patched(model)(images, targets)
        for key in ref:
            torch.testing.assert_close(ours[key], ref[key], rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# batched matching = torchvision's per-image matching
# --------------------------------------------------------------------------------------------


def random_targets(g: torch.Generator, n: int, max_boxes: int):
    out = []
    for _ in range(n):
        k = int(torch.randint(0, max_boxes + 1, (), generator=g))
        xy = torch.rand(k, 2, generator=g) * 100
        wh = 4 + torch.rand(k, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + wh], 1)
        if k >= 2:
            boxes[1] = boxes[0]  # a duplicate box: ties in the IoU
        out.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (k,), generator=g)})
    return out


@pytest.mark.parametrize("seed", range(5))
def test_batched_retinanet_matching_equals_the_matcher(seed):
    g = torch.Generator().manual_seed(seed)
    model = make_model("retinanet")
    targets = random_targets(g, 4, 6)
    image = torch.zeros(1, 3, 128, 128)
    from torchvision.models.detection.image_list import ImageList

    feats = list(model.backbone(image).values())
    anchors = model.anchor_generator(ImageList(image, [(128, 128)]), feats)[0]
    anchors_t = anchors.expand(len(targets), -1, -1)
    gt, _, valid = fk_tv._pad_targets(targets, anchors.device, anchors.dtype)
    batched = fk_tv._match_retinanet(model, gt, valid, anchors_t, targets)
    for i, t in enumerate(targets):
        if t["boxes"].numel() == 0:
            expected = torch.full((len(anchors),), -1)
        else:
            expected = model.proposal_matcher(box_iou(t["boxes"], anchors))
        torch.testing.assert_close(batched[i], expected, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_batched_fcos_matching_equals_fcos(seed):
    """The matches FCOS.compute_loss hands its head, recorded, equal the batched ones."""
    g = torch.Generator().manual_seed(seed)
    model = make_model("fcos")
    targets = random_targets(g, 4, 6)
    images = [torch.rand(3, 128, 128, generator=g) for _ in targets]
    recorded = {}
    head_loss = model.head.compute_loss

    def record(targets_, head_outputs, anchors, matched_idxs):
        recorded["matched"] = torch.stack(matched_idxs)
        recorded["anchors"] = torch.stack(anchors)
        recorded["targets"] = targets_
        return head_loss(targets_, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = record
    model(images, targets)
    feats = list(model.backbone(torch.zeros(1, 3, 128, 128)).values())
    levels = [f.shape[2] * f.shape[3] for f in feats]
    gt, _, valid = fk_tv._pad_targets(recorded["targets"], torch.device("cpu"), torch.float32)
    batched = fk_tv._match_fcos(model, gt, valid, recorded["anchors"], levels)
    torch.testing.assert_close(batched, recorded["matched"], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# normalisation options
# --------------------------------------------------------------------------------------------


SAME = ((128, 128),) * 3  # one image alone is padded as in the batch: the same anchors


def per_image_sums(kind: str):
    """Each image's summed losses and foreground count, from single-image runs of the
    patched model ("model" normalisation of one image: sum / max(1, n))."""
    model = make_model(kind)
    images, targets = make_batch(sizes=SAME)
    sums, counts = [], []
    ours = patched(model)
    for image, target in zip(images, targets, strict=True):
        seen = {}
        original = fk_tv._match_retinanet if kind == "retinanet" else fk_tv._match_fcos

        def spy(*args, original=original, seen=seen):
            out = original(*args)
            seen["n"] = int((out >= 0).sum())
            return out

        name = "_match_retinanet" if kind == "retinanet" else "_match_fcos"
        setattr(fk_tv, name, spy)
        try:
            losses = ours([image], [target])
        finally:
            setattr(fk_tv, name, original)
        sums.append({k: v.detach() * max(1, seen["n"]) for k, v in losses.items()})
        counts.append(seen["n"])
    return model, sums, counts


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalization", ["batch", "reduce_mean"])
def test_batch_normalisation_divides_the_batch_sum_by_the_batch_positives(kind, normalization):
    """ "batch" (and "reduce_mean" with no process group): sum over the batch / the batch's
    positives, for both models (FCOS's own rule; RetinaNet's per-image rule differs)."""
    model, sums, counts = per_image_sums(kind)
    images, targets = make_batch(sizes=SAME)
    losses = patched(model, normalization=normalization)(images, targets)
    total = max(1, sum(counts))
    for key, value in losses.items():
        expected = sum(s[key] for s in sums) / total
        torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=0)


def test_retinanet_model_normalisation_averages_per_image_ratios():
    model, sums, counts = per_image_sums("retinanet")
    images, targets = make_batch(sizes=SAME)
    losses = patched(model)(images, targets)
    for key, value in losses.items():
        expected = sum(s[key] / max(1, n) for s, n in zip(sums, counts, strict=True)) / len(counts)
        torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# every loss of the tables
# --------------------------------------------------------------------------------------------


def _skip_unavailable(spec):
    if not spec.available():
        needs(spec.attr)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(fk_tv.CLASSIFICATION_LOSSES))
def test_every_classification_loss_trains(kind, name):
    _skip_unavailable(fk_tv.CLASSIFICATION_LOSSES[name])
    model = patched(make_model(kind), classification=name)
    losses, grads = run(model)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert float(grads["head.classification_head.cls_logits.bias"].abs().sum()) > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(fk_tv.BOX_LOSSES))
def test_every_box_loss_trains(kind, name):
    _skip_unavailable(fk_tv.BOX_LOSSES[name])
    model = patched(make_model(kind), box=name)
    losses, grads = run(model)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert float(grads["head.regression_head.bbox_reg.weight"].abs().sum()) > 0


def test_options_reach_the_loss():
    """alpha/gamma change the focal loss exactly as focalkit's function does; "bce" equals
    focal with gamma 0 and no alpha."""
    model = make_model("fcos")
    base, _ = run(patched(model, classification="focal", gamma=0.0, alpha=None))
    bce, _ = run(patched(model, classification="bce"))
    torch.testing.assert_close(bce["classification"], base["classification"], rtol=1e-6, atol=0)
    other, _ = run(patched(model, classification="focal", gamma=1.0, alpha=0.5))
    assert not torch.allclose(other["classification"], base["classification"])


def test_ghmc_keeps_its_ema_in_the_models_state_dict():
    model = patched(make_model("retinanet"), classification="ghmc", bins=10, momentum=0.75)
    run(model)
    state = model.state_dict()
    key = "focalkit_losses.cls_loss.bin_count_ema"
    assert key in state and float(state[key].sum()) > 0


def test_prefixes_resolve_an_option_both_losses_take():
    model = make_model("retinanet")
    with pytest.raises(ValueError, match=r"cls_gamma=.*box_gamma="):
        fk_tv.set_losses(model, classification="focal", box="focal_eiou", gamma=0.5)
    losses = fk_tv.set_losses(
        model, classification="focal", box="focal_eiou", cls_gamma=1.5, box_gamma=0.25
    )
    assert losses.cls_options == {"gamma": 1.5} and losses.box_options == {"gamma": 0.25}


# --------------------------------------------------------------------------------------------
# installing, removing, copying
# --------------------------------------------------------------------------------------------


def test_remove_losses_restores_the_models_own_computation():
    model = make_model("retinanet")
    ref, _ = run(model)
    assert fk_tv.set_losses(model, classification="bce") is model.focalkit_losses
    changed, _ = run(model)
    assert not torch.allclose(changed["classification"], ref["classification"])
    assert fk_tv.remove_losses(model)
    assert "focalkit_losses" not in dict(model.named_modules())
    again, _ = run(model)
    torch.testing.assert_close(again["classification"], ref["classification"], rtol=0, atol=0)
    assert not fk_tv.remove_losses(model)


def test_patched_model_copies_pickles_and_loads_unpatched_checkpoints():
    model = make_model("fcos")
    ours = patched(model, classification="focal", box="ciou")
    expected, _ = run(ours)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        losses, _ = run(clone)
        assert clone.compute_loss.model is clone
        torch.testing.assert_close(losses["bbox_regression"], expected["bbox_regression"])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    ours.load_state_dict(torch.load(buffer))  # stateless losses add no keys


def test_ddp_wrapped_model_is_unwrapped():
    model = make_model("retinanet")
    wrapper = nn.DataParallel(model)
    fk_tv.set_losses(wrapper)
    assert isinstance(model.focalkit_losses, fk_tv.TorchvisionLosses)


def test_eval_mode_is_untouched():
    model = make_model("retinanet")
    ours = patched(model)
    model.eval()
    ours.eval()
    images, _ = make_batch()
    with torch.no_grad():
        a, b = model(images), ours(images)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["boxes"], y["boxes"])


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_unknown_loss_names_list_the_supported_ones():
    model = make_model("retinanet")
    with pytest.raises(
        ValueError, match=r"classification: unknown loss 'dice'; supported: focal, bce, ghmc"
    ):
        fk_tv.set_losses(model, classification="dice")
    with pytest.raises(
        ValueError, match=r"box: unknown loss 'l2'; supported: l1, smooth_l1, focal_l1, iou"
    ):
        fk_tv.set_losses(model, box="l2")
    with pytest.raises(TypeError, match="expected a loss name"):
        fk_tv.set_losses(model, classification=None)
    with pytest.raises(
        ValueError, match=r"normalization: expected one of 'model', 'batch', 'reduce_mean'"
    ):
        fk_tv.set_losses(model, normalization="mmdet")


def test_options_that_belong_to_no_chosen_loss_raise_with_the_accepted_ones():
    model = make_model("fcos")
    with pytest.raises(
        ValueError, match=r"option 'beta' belongs to none.*'focal'.*takes: alpha.*gamma"
    ):
        fk_tv.set_losses(model, classification="focal", box="giou", beta=0.5)
    with pytest.raises(ValueError, match="option 'gamma' belongs to none"):
        fk_tv.set_losses(model, classification="bce", gamma=2.0)  # bce fixes gamma = 0
    with pytest.raises(ValueError, match="option 'weight' belongs to none"):
        fk_tv.set_losses(model, weight=torch.ones(1))  # the integration owns the weights
    assert "focalkit_losses" not in dict(model.named_modules())


def test_unsupported_model_classes_raise_type_error():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(
        TypeError,
        match=r"RetinaNet or FCOS.*got torchvision.*FasterRCNN; supported: RetinaNet, FCOS",
    ):
        fk_tv.set_losses(model)
    with pytest.raises(TypeError, match=r"got torch\.nn\.modules\.linear\.Linear"):
        fk_tv.set_losses(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "role,name",
    [("classification", n) for n, s in fk_tv.CLASSIFICATION_LOSSES.items() if not s.available()]
    + [("box", n) for n, s in fk_tv.BOX_LOSSES.items() if not s.available()],
)
def test_unavailable_losses_say_where_they_come_from(role, name):
    table = fk_tv.CLASSIFICATION_LOSSES if role == "classification" else fk_tv.BOX_LOSSES
    spec = table[name]
    with pytest.raises(LossUnavailableError, match=rf"needs focalkit\.{spec.attr}.*comes with the"):
        fk_tv.set_losses(make_model("retinanet"), **{role: name})


def test_mpdiou_gets_each_images_size():
    needs("mpdiou_loss")
    model = patched(make_model("retinanet"), box="mpdiou")
    losses, _ = run(model)
    assert model.focalkit_losses.image_sizes is not None
    assert torch.isfinite(losses["bbox_regression"])
    assert available("mpdiou_loss")


def test_pairwise_iou_is_box_iou_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 40, 2, generator=g) * 100
    a = torch.cat([xy, xy + 1 + torch.rand(2, 40, 2, generator=g) * 50], -1)
    b = a[:, :25].flip(1) + torch.rand(2, 25, 4, generator=g)
    for i in range(2):
        torch.testing.assert_close(
            fk_tv.pairwise_iou(a[i], b[i]), box_iou(a[i], b[i]), rtol=0, atol=0
        )
    torch.testing.assert_close(fk_tv.pairwise_iou(a, b)[1], box_iou(a[1], b[1]), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# DistributedDataParallel: "reduce_mean" over 2 ranks = "batch" on one process
# --------------------------------------------------------------------------------------------

DDP_SIZES = ((128, 128),) * 4  # one padding for any split of the batch: the same anchors


def ddp_batch():
    images, targets = make_batch(torch.float64, sizes=DDP_SIZES[:3])
    images.append(torch.rand(3, 128, 128, dtype=torch.float64))
    targets.append(
        {
            "boxes": torch.tensor([[8.0, 8, 70, 50], [60, 60, 120, 124]], dtype=torch.float64),
            "labels": torch.tensor([2, 0]),
        }
    )
    return images, targets


def _ddp_rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model = make_model("retinanet", dtype=torch.float64)
        fk_tv.set_losses(model, normalization="reduce_mean")
        ddp = DistributedDataParallel(model)
        images, targets = ddp_batch()
        part = slice(2 * rank, 2 * rank + 2)
        sum(ddp(images[part], targets[part]).values()).backward()
        torch.save(gradients(model), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_reduce_mean_under_ddp_equals_one_process_with_the_whole_batch(tmp_path):
    """Two gloo ranks, each with half the images and normalization="reduce_mean": after DDP
    averages the gradients, every parameter's gradient equals one process's with the whole
    batch and normalization="batch" (float64, 1e-10)."""
    import torch.multiprocessing as mp

    for attempt in range(3):  # gloo on CPU can abort a rank from a background thread
        try:
            init = f"file://{tmp_path}/store{attempt}"
            mp.spawn(_ddp_rank, args=(init, str(tmp_path)), nprocs=2, join=True)
            break
        except mp.ProcessExitedException:
            if attempt == 2:
                raise
    model = patched(make_model("retinanet", dtype=torch.float64), normalization="batch")
    images, targets = ddp_batch()
    sum(model(images, targets).values()).backward()
    expected = gradients(model)
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert_gradients_close(expected, grads, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------


def _schema(value):
    if isinstance(value, dict):
        return {k: _schema(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_schema(value[0])] if value and isinstance(value[0], dict) else "list"
    if isinstance(value, bool) or value is None:
        return "optional"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def test_detection_losses_benchmark_writes_the_committed_schema(tmp_path, capsys):
    """`benchmarks/bench_detection_losses.py` (a small run) writes what the committed results
    and the README renderer hold, and both variants compute the same losses."""
    import json
    from pathlib import Path

    from focalkit.bench import detection_losses, readme

    path = tmp_path / "detection_losses_cpu.json"
    argv = ["--models", "fcos", "--size", "96", "128", "--classes", "5", "--repeat", "1"]
    assert detection_losses.main([*argv, "--rounds", "1", "--json", str(path)]) == 0
    assert "fcos" in capsys.readouterr().out
    new = json.loads(path.read_text())
    assert [r["model"] for r in new["rows"]] == ["fcos"]
    assert all(r["max_rel_diff"] < 1e-5 for r in new["rows"])
    committed = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / path.name
    old = json.loads(committed.read_text())
    assert set(new.pop("environment")) == set(old.pop("environment"))
    new_rows, old_rows = new.pop("rows"), old.pop("rows")
    assert _schema(new) == _schema(old)
    assert set(new_rows[0]) == set(old_rows[0])
    assert "| retinanet |" in readme.detection_losses_table(json.loads(committed.read_text()))
