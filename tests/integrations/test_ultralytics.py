"""focalkit.integrations.ultralytics against Ultralytics' own v8DetectionLoss, and through its
training loop.

Runs where ultralytics imports (``make test-stacks``); skipped elsewhere, and a failure when
``FOCALKIT_REQUIRE_STACKS=1`` (CI's stacks step). Ultralytics runs offline here: settings in a
temporary folder, models built from yaml (no weights), generated images in ``tmp_path``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _stacks import (
    assert_gradients_close,
    available,
    gradients,
    import_stack,
    needs,
)

import_stack("ultralytics")

from ultralytics import YOLO  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss  # noqa: E402

import focalkit  # noqa: E402
from focalkit.integrations import LossUnavailableError  # noqa: E402
from focalkit.integrations import ultralytics as fk_yolo  # noqa: E402

HAS_DFL = available("distribution_focal_loss")


def reference_dfl(pred, target, *, weight=None, reduction="mean"):
    """The DFL formula of GFL (Li et al. 2020), written out for the tests that exercise the
    integration's plumbing before ``focalkit.distribution_focal_loss`` lands (it comes with
    the generalized-focal branch): ``-((t_r - t) log p_l + (t - t_l) log p_r)``."""
    left = target.long()
    w_left = left + 1 - target
    logp = F.log_softmax(pred, dim=-1)
    lp_left = logp.gather(-1, left[..., None])[..., 0]
    lp_right = logp.gather(-1, (left + 1)[..., None])[..., 0]
    loss = -(lp_left * w_left + lp_right * (1 - w_left))
    if weight is not None:
        loss = loss * weight
    return loss.sum() if reduction == "sum" else loss.mean() if reduction == "mean" else loss


@pytest.fixture
def dfl_formula(monkeypatch):
    """focalkit's DFL where it exists, else the reference formula above in its place."""
    if not HAS_DFL:
        monkeypatch.setattr(focalkit, "distribution_focal_loss", reference_dfl, raising=False)
    return focalkit.distribution_focal_loss


def make_model(cfg: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    model = YOLO(cfg).model
    model.args = get_cfg()  # Ultralytics' default hyperparameters, as the trainer sets them
    return model.to(dtype).train()


def make_batch(dtype: torch.dtype = torch.float32, seed: int = 0):
    """Three 128-pixel images with 3, 0 and 1 boxes (normalised xywh, as the dataloader; the
    labels stay float32, as Ultralytics' target padding is float32 whatever the model)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.rand(3, 3, 128, 128, generator=g, dtype=dtype),
        "batch_idx": torch.tensor([0.0, 0, 0, 2]),
        "cls": torch.tensor([[1.0], [5], [0], [7]]),
        "bboxes": torch.tensor(
            [[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.5, 0.4], [0.2, 0.8, 0.1, 0.1], [0.5, 0.5, 0.9, 0.9]]
        ),
    }


def run(model, criterion, batch):
    model.zero_grad()
    loss, items = criterion(model(batch["img"]), batch)
    loss.sum().backward()
    return loss.detach(), items, gradients(model)


def compare(
    cfg,
    dtype,
    rtol,
    criterion=lambda m: fk_yolo.DetectionLoss(m, "bce", "ciou"),
    reference=v8DetectionLoss,
):
    model = make_model(cfg, dtype=dtype)
    ours_model = copy.deepcopy(model)
    batch = make_batch(dtype)
    ref_loss, ref_items, ref_grads = run(model, reference(model), batch)
    loss, items, grads = run(ours_model, criterion(ours_model), batch)
    assert list(items) == list(ref_items)
    for key in ref_items:
        torch.testing.assert_close(items[key], ref_items[key], rtol=rtol, atol=0)
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=0)
    assert_gradients_close(ref_grads, grads, rtol=rtol)


# --------------------------------------------------------------------------------------------
# equal to Ultralytics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_bce_ciou_equal_v8_detection_loss(cfg):
    """The contract: classification="bce", box="ciou" gives v8DetectionLoss's three loss items,
    its returned loss and every parameter's gradient (relative 1e-5, float32), with the DFL
    computed by focalkit.distribution_focal_loss."""
    needs("distribution_focal_loss")
    compare(cfg, torch.float32, 1e-5)


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_bce_ciou_equal_v8_detection_loss_with_the_reference_dfl(cfg, dfl_formula):
    """The same comparison with the DFL formula of GFL in focalkit's place when focalkit has
    none yet: the assignment, the classification and box losses, the DFL's targets, weights
    and normalisation, the gains and the returned values are the integration's own."""
    compare(cfg, torch.float32, 1e-5)


def compare_terms(gains, rtol):
    model = make_model("yolov8n.yaml", dtype=torch.float64)
    model.args.box, model.args.cls, model.args.dfl = gains
    ours_model = copy.deepcopy(model)
    batch = make_batch(torch.float64)
    _, ref_items, ref_grads = run(model, v8DetectionLoss(model), batch)
    _, items, grads = run(ours_model, fk_yolo.DetectionLoss(ours_model), batch)
    for key in ref_items:
        torch.testing.assert_close(items[key], ref_items[key], rtol=rtol, atol=0)
    assert_gradients_close(ref_grads, grads, rtol=rtol)


def test_classification_and_dfl_equal_in_float64(dfl_formula):
    """In float64 the classification loss and the DFL (targets, weights, normalisation)
    agree to rounding (1e-10), not merely closely."""
    compare_terms((0.0, 0.5, 1.5), 1e-10)


def test_ciou_in_float64_differs_only_by_where_eps_goes(dfl_formula):
    """Ultralytics' CIoU adds eps = 1e-7 to each box's height (areas, aspect ratio) and to the
    union; focalkit adds it to the IoU's and the aspect ratios' denominators. In float64 that
    shows, at 1e-7 of the loss; in float32 it is below rounding."""
    compare_terms((7.5, 0.0, 0.0), 1e-6)


def test_end_to_end_head_equal_e2e_loss():
    """A YOLO26 head (one-to-many + one-to-one branches, reg_max 1: no DFL, Ultralytics' L1):
    set_losses builds Ultralytics' E2ELoss over two focalkit DetectionLoss, equal to the
    stock E2ELoss."""
    compare(
        "yolo26n.yaml",
        torch.float32,
        1e-5,
        criterion=lambda m: fk_yolo.set_losses(m, "bce", "ciou"),
        reference=E2ELoss,
    )


def test_class_weights_are_applied_as_ultralytics_does(dfl_formula):
    model = make_model("yolov8n.yaml")
    model.class_weights = torch.linspace(0.5, 2.0, model.model[-1].nc)
    ours_model = copy.deepcopy(model)
    batch = make_batch()
    _, ref_items, _ = run(model, v8DetectionLoss(model), batch)
    _, items, _ = run(ours_model, fk_yolo.DetectionLoss(ours_model), batch)
    torch.testing.assert_close(items["cls_loss"], ref_items["cls_loss"], rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# every loss of the tables
# --------------------------------------------------------------------------------------------


def _skip_unavailable(spec):
    if not spec.available():
        needs(spec.attr)


@pytest.mark.parametrize("name", list(fk_yolo.CLASSIFICATION_LOSSES))
def test_every_classification_loss_trains(name, dfl_formula):
    _skip_unavailable(fk_yolo.CLASSIFICATION_LOSSES[name])
    model = make_model("yolov8n.yaml")
    loss, items, grads = run(model, fk_yolo.DetectionLoss(model, name, "ciou"), make_batch())
    assert torch.isfinite(loss).all() and all(torch.isfinite(v) for v in items.values())
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", list(fk_yolo.BOX_LOSSES))
def test_every_box_loss_trains(name, dfl_formula):
    _skip_unavailable(fk_yolo.BOX_LOSSES[name])
    model = make_model("yolov8n.yaml")
    loss, items, grads = run(model, fk_yolo.DetectionLoss(model, "focal", name), make_batch())
    assert torch.isfinite(loss).all() and float(items["box_loss"]) > 0
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_focal_options_change_only_the_classification_loss(dfl_formula):
    model = make_model("yolov8n.yaml")
    batch = make_batch()
    _, bce, _ = run(model, fk_yolo.DetectionLoss(model, "focal", gamma=0.0, alpha=None), batch)
    _, ref, _ = run(model, fk_yolo.DetectionLoss(model, "bce"), batch)
    torch.testing.assert_close(bce["cls_loss"], ref["cls_loss"], rtol=1e-6, atol=0)
    _, focal, _ = run(model, fk_yolo.DetectionLoss(model, "focal", gamma=2.0, alpha=0.25), batch)
    assert float(focal["cls_loss"]) < float(ref["cls_loss"])
    torch.testing.assert_close(focal["box_loss"], ref["box_loss"])


def test_reduce_mean_without_a_process_group_is_the_model_normalisation(dfl_formula):
    model = make_model("yolov8n.yaml")
    batch = make_batch()
    _, a, _ = run(model, fk_yolo.DetectionLoss(model, "focal", "giou"), batch)
    _, b, _ = run(
        model, fk_yolo.DetectionLoss(model, "focal", "giou", normalization="reduce_mean"), batch
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key])


# --------------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------------


def write_dataset(root, n: int = 4):
    """``n`` generated 64-pixel images per split, one or two coloured boxes each, in
    Ultralytics' layout, and the data yaml."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            image = np.full((64, 64, 3), 114, np.uint8)
            lines = []
            for k in range(1 + i % 2):
                x0, y0 = rng.integers(2, 30, 2)
                w, h = rng.integers(12, 30, 2)
                image[y0 : y0 + h, x0 : x0 + w] = (200, 40 + 100 * k, 30)
                cx, cy = (x0 + w / 2) / 64, (y0 + h / 2) / 64
                lines.append(f"{k} {cx:.4f} {cy:.4f} {w / 64:.4f} {h / 64:.4f}")
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: orange\n"
    )
    return data


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
def test_set_losses_survives_the_trainer_rebuilding_the_model(cfg, tmp_path, dfl_formula):
    """YOLO(...).train(...) builds a new model and its EMA copy: the callback set_losses
    registered gives both focalkit's criterion, which computes every training batch's loss
    (and the validation loss), through Ultralytics' own loop: one epoch on generated images,
    CPU, nothing downloaded, no plots."""
    yolo = YOLO(cfg)
    fk_yolo.set_losses(yolo, classification="focal", box="giou", gamma=1.5)
    fk_yolo.set_losses(
        yolo, classification="focal", box="giou", gamma=1.5
    )  # replaces, no duplicate
    hooks = [h for h in yolo.callbacks[fk_yolo.EVENT] if isinstance(h, fk_yolo._InstallCallback)]
    assert len(hooks) == 1
    seen = []

    def spy(trainer):
        from ultralytics.utils.torch_utils import unwrap_model

        criterion = unwrap_model(trainer.model).criterion
        one = getattr(criterion, "one2many", criterion)
        seen.append(
            (type(one).__name__, one.calls, one.classification, one.box, dict(one.cls_options))
        )
        ema = getattr(trainer.ema.ema.criterion, "one2many", trainer.ema.ema.criterion)
        seen.append(("ema", type(ema).__name__))
        assert trainer.model is not yolo.model  # the trainer's own model

    yolo.add_callback("on_train_batch_end", spy)
    yolo.train(
        data=str(write_dataset(tmp_path / "data")),
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        val=True,
        project=str(tmp_path / "runs"),
        name="run",
        exist_ok=True,
        verbose=False,
    )
    assert seen[0] == ("DetectionLoss", 1, "focal", "giou", {"gamma": 1.5})
    assert seen[1] == ("ema", "DetectionLoss")


# --------------------------------------------------------------------------------------------
# installing, bad input
# --------------------------------------------------------------------------------------------


def test_set_losses_on_a_detection_model_and_remove(dfl_formula):
    model = make_model("yolov8n.yaml")
    criterion = fk_yolo.set_losses(model, "focal", "diou")
    assert model.criterion is criterion and isinstance(criterion, v8DetectionLoss)
    loss, _ = model.loss(make_batch())
    assert torch.isfinite(loss).all() and criterion.calls == 1
    fk_yolo.remove_losses(model)
    model.loss(make_batch())
    assert type(model.criterion) is v8DetectionLoss


def test_a_yolo_object_built_from_yaml_has_dict_args():
    """A YOLO(...) model holds its args as a dict; the criterion reads Ultralytics' defaults
    (v8DetectionLoss itself would fail on hyp.box there)."""
    needs("distribution_focal_loss")
    yolo = YOLO("yolov8n.yaml")
    criterion = fk_yolo.set_losses(yolo, "bce", "ciou")
    assert criterion.hyp.box == get_cfg().box
    loss, _ = yolo.model.loss(make_batch())
    assert torch.isfinite(loss).all()


def test_unknown_names_and_options_raise_listing_what_is_supported(dfl_formula):
    model = make_model("yolov8n.yaml")
    with pytest.raises(
        ValueError, match=r"classification: unknown loss 'ghm'; supported: bce, focal, qfl, vfl"
    ):
        fk_yolo.DetectionLoss(model, "ghm")
    with pytest.raises(
        ValueError, match=r"box: unknown loss 'l1'; supported: iou, giou, diou, ciou"
    ):
        fk_yolo.DetectionLoss(model, "bce", "l1")
    with pytest.raises(ValueError, match=r"option 'bins' belongs to none.*'focal'.*takes: alpha"):
        fk_yolo.DetectionLoss(model, "focal", "ciou", bins=10)
    with pytest.raises(ValueError, match="normalization: expected one of 'model', 'reduce_mean'"):
        fk_yolo.DetectionLoss(model, normalization="batch")
    with pytest.raises(ValueError, match=r"cls_gamma=.*box_gamma="):
        fk_yolo.DetectionLoss(model, "focal", "focal_eiou", gamma=0.5)


def test_unsupported_models_raise_type_error():
    seg = YOLO("yolov8n-seg.yaml")
    with pytest.raises(
        TypeError, match=r"expected an ultralytics DetectionModel.*SegmentationModel"
    ):
        fk_yolo.set_losses(seg)
    with pytest.raises(TypeError, match=r"got torch.nn.modules.linear.Linear"):
        fk_yolo.DetectionLoss(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "role,name",
    [("classification", n) for n, s in fk_yolo.CLASSIFICATION_LOSSES.items() if not s.available()]
    + [("box", n) for n, s in fk_yolo.BOX_LOSSES.items() if not s.available()],
)
def test_unavailable_losses_say_where_they_come_from(role, name):
    table = fk_yolo.CLASSIFICATION_LOSSES if role == "classification" else fk_yolo.BOX_LOSSES
    spec = table[name]
    with pytest.raises(LossUnavailableError, match=rf"needs focalkit\.{spec.attr}.*comes with the"):
        fk_yolo.DetectionLoss(make_model("yolov8n.yaml"), **{role: name})


def test_the_dfl_goes_through_the_table():
    """Without focalkit.distribution_focal_loss a reg_max > 1 head cannot be built, and the
    error says where the function comes from."""
    if HAS_DFL:
        pytest.skip("focalkit has distribution_focal_loss")
    with pytest.raises(
        LossUnavailableError,
        match=r"'dfl' needs focalkit\.distribution_focal_loss.*generalized-focal",
    ):
        fk_yolo.DetectionLoss(make_model("yolov8n.yaml"))
