"""Study 3's torchvision detector (the demo's ``--full`` preset when torchvision imports):
torchvision's RetinaNet trains on the NEON crops with focalkit's losses installed through
``focalkit.integrations.torchvision``, and is validated and tested with COCOeval."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from _stacks import import_stack

import_stack("torchvision.models.detection")
pytest.importorskip("PIL")
pytest.importorskip("pycocotools")

from focalkit.demo.detection import trees  # noqa: E402
from focalkit.integrations import torchvision as fk_tv  # noqa: E402


def tiny_setting() -> trees.TreesSetting:
    return dataclasses.replace(
        trees.trees_setting("quick"),
        patch=64,
        batch_size=2,
        eval_every=2,
        patience=1,
        min_steps=2,
        max_steps=2,
        warmup_steps=1,
    )


def test_full_preset_adds_torchvision_runs():
    runs = trees.trees_runs(trees.trees_setting("full"))
    assert [r for r in runs if r[0] == "torchvision"] == list(trees._TV_RUNS)
    assert all(r[0] == "tiny" for r in trees.trees_runs(trees.trees_setting("default")))


@pytest.mark.parametrize(("cls_loss", "box_loss"), [("ghmc", "smooth_l1"), ("focal", "giou")])
def test_the_model_computes_focalkit_losses(cls_loss, box_loss):
    model = trees._torchvision_model(tiny_setting(), cls_loss, box_loss)
    losses = model.focalkit_losses
    assert isinstance(losses, fk_tv.TorchvisionLosses)
    assert (losses.classification.name, losses.box.name) == (cls_loss, box_loss)
    assert fk_tv.remove_losses(model)  # they were installed


@pytest.mark.parametrize(("cls_loss", "box_loss"), [("ghmc", "smooth_l1"), ("focal", "giou")])
def test_torchvision_retinanet_trains_and_is_evaluated(cls_loss, box_loss, wheel, tmp_path):
    torch.manual_seed(0)
    record = trees.run_trees(
        cls_loss,
        box_loss,
        0,
        tiny_setting(),
        detector="torchvision",
        wheel=wheel,
        workdir=tmp_path,
    )
    assert record["detector"] == "torchvision" and record["steps"] == 2
    assert record["validation"]["step"] == [2]
    for key in ("loss_cls", "loss_box"):
        assert all(math.isfinite(v) and v >= 0 for v in record["curve"][key]), key
    for key in ("AP", "AP50", "AP75", "AP_transfer", "AP50_OSBS", "AP50_SOAP"):
        assert -1.0 <= record["metrics"][key] <= 1.0, key
    assert [e["tile"] for e in record["examples"]][2:] == ["OSBS_029", "SOAP_061"]
    assert [e["split"] for e in record["examples"]] == ["test", "test", "transfer", "transfer"]
    assert len(record["examples"][2]["true"]) == 61
