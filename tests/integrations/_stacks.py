"""What the integration tests share: importing a stack (skip when it is absent, fail when CI
requires it), skipping on a focalkit function that another branch provides, and comparing the
gradients of two models."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

import focalkit
from focalkit._optional import optional_import

#: set by .ci/run for the stacks step: a missing or broken stack fails instead of skipping
REQUIRE = "FOCALKIT_REQUIRE_STACKS"

#: the focalkit functions other branches add, and where they come from
PROVIDERS = {
    "quality_focal_loss": "generalized-focal",
    "varifocal_loss": "generalized-focal",
    "poly1_focal_loss": "generalized-focal",
    "distribution_focal_loss": "generalized-focal",
    "siou_loss": "iou-family",
    "WIoULoss": "iou-family",
    "mpdiou_loss": "iou-family",
    "shape_iou_loss": "iou-family",
}


def stacks_required() -> bool:
    return os.environ.get(REQUIRE, "") not in ("", "0")


def import_stack(name: str):
    """The module, or a module-level skip (a failure under ``FOCALKIT_REQUIRE_STACKS=1``)."""
    if name.startswith("ultralytics"):
        offline_ultralytics()
    module, reason = optional_import(name)
    if module is None:
        message = f"{name} is {reason} (pip install 'focalkit[{name.split('.')[0]}]')"
        if stacks_required():
            pytest.fail(f"{message}, and {REQUIRE}=1 requires it", pytrace=False)
        pytest.skip(message, allow_module_level=True)
    return module


def offline_ultralytics() -> None:
    """Before ultralytics is imported: no network (no settings sync, font or weight download)
    and a settings file in a temporary folder, not the user's."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="focalkit-yolo-config-"))


def needs(attr: str) -> None:
    """Skip unless focalkit has ``attr`` (a loss another branch adds)."""
    if getattr(focalkit, attr, None) is None:
        branch = PROVIDERS.get(attr, "a later focalkit")
        pytest.skip(
            f"focalkit.{attr} is not in this focalkit yet (it comes with the {branch} branch)"
        )


def available(attr: str) -> bool:
    return getattr(focalkit, attr, None) is not None


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (zeros where backward did not reach it)."""
    return {
        n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        for n, p in model.named_parameters()
    }


def assert_gradients_close(
    expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], rtol: float
) -> None:
    """Every gradient entry within ``rtol`` of the expected one, relative to the gradient's
    scale: ``|a - e| <= rtol * (|e| + max |e over the model|)``. The scale term is what lets
    entries that are rounding noise of a sum that cancels (a batch-norm bias before a
    normalising layer: 1e-8 of the largest entry in float32) pass; every other entry is held
    to ``rtol`` of itself."""
    assert expected.keys() == actual.keys()
    scale = max(float(g.abs().max()) for g in expected.values() if g.numel())
    assert scale > 0, "no gradient reached the parameters"
    worst, where = 0.0, ""
    for name, e in expected.items():
        a = actual[name]
        err = float(((a - e).abs() / (e.abs() + scale)).max()) if e.numel() else 0.0
        if err > worst:
            worst, where = err, name
    assert worst <= rtol, f"gradient of {where}: relative error {worst:.3g} > {rtol}"
