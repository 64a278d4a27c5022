"""The integrations without their stacks: importing them, the errors when a stack is missing
or broken, the loss tables and the routing of options. Runs in every environment."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from focalkit.integrations import _table
from focalkit.integrations import torchvision as fk_tv
from focalkit.integrations import ultralytics as fk_yolo
from focalkit.integrations._table import LossSpec, split_options

TABLES = {
    "torchvision": {"classification": fk_tv.CLASSIFICATION_LOSSES, "box": fk_tv.BOX_LOSSES},
    "ultralytics": {
        "classification": fk_yolo.CLASSIFICATION_LOSSES,
        "box": fk_yolo.BOX_LOSSES,
        "dfl": fk_yolo.DFL_LOSSES,
    },
}
SPECS = [
    (stack, role, name, spec)
    for stack, roles in TABLES.items()
    for role, table in roles.items()
    for name, spec in table.items()
]


def _python(code: str, *, path: str | None = None) -> subprocess.CompletedProcess:
    env = None
    if path is not None:
        import os

        env = dict(os.environ)
        env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_import_focalkit_imports_no_integration_and_no_stack():
    out = _python(
        "import focalkit, json, sys\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] in "
        "('torchvision', 'ultralytics') or m.startswith('focalkit.integrations')]))"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_integration_modules_import_without_their_stacks():
    out = _python(
        "import json, sys\n"
        "from focalkit.integrations import torchvision, ultralytics\n"
        "torchvision.options_table(); ultralytics.options_table()\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] in "
        "('torchvision', 'ultralytics')]))"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    "call,package",
    [
        (
            "from focalkit.integrations import torchvision as m; m.set_losses(object())",
            "torchvision",
        ),
        (
            "from focalkit.integrations import ultralytics as m; m.set_losses(object())",
            "ultralytics",
        ),
        ("from focalkit.integrations import ultralytics as m; m.DetectionLoss", "ultralytics"),
    ],
)
def test_a_missing_stack_raises_import_error_naming_it_and_the_extra(call, package):
    """Absent (``None`` in sys.modules: what a missing package looks like to import)."""
    out = _python(f"import sys; sys.modules[{package!r}] = None\n{call}")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: focalkit.integrations.")
    assert f"needs {package}, which is not installed" in last
    assert f"pip install 'focalkit[{package}]'" in last


@pytest.mark.parametrize("package", ["torchvision", "ultralytics"])
def test_a_broken_stack_never_breaks_import_focalkit(tmp_path, package):
    """Installed but failing at import (a torchvision wheel built for another torch): import
    focalkit works, the integration says what failed."""
    stub = tmp_path / package
    stub.mkdir()
    (stub / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    module = "torchvision" if package == "torchvision" else "ultralytics"
    out = _python(
        f"import focalkit\nfrom focalkit.integrations import {module} as m\nm.set_losses(object())",
        path=str(tmp_path),
    )
    last = out.stderr.strip().splitlines()[-1]
    assert "installed but import failed: RuntimeError: operator torchvision::nms" in last
    assert last.startswith("ImportError:")


@pytest.mark.parametrize(
    "stack,role,name,spec", SPECS, ids=[f"{s[0]}-{s[1]}-{s[2]}" for s in SPECS]
)
def test_table_entries_name_real_keywords(stack, role, name, spec):
    """The keywords an entry fixes and passes exist on its callable (a typo would otherwise
    only show as a TypeError at the first training step)."""
    assert spec.name == name
    if not spec.available():
        pytest.skip(f"{spec.qualname} is not in this focalkit yet ({spec.provides})")
    target = spec.resolve()
    init = inspect.signature(target).parameters
    assert set(spec.fixed) <= set(init), sorted(set(spec.fixed) - set(init))
    call = inspect.signature(target.forward if spec.module else target).parameters
    assert set(spec.call_needs) <= set(call)
    assert _table.accepted_options(spec) is not None


def test_options_tables_list_every_name():
    rows = fk_tv.options_table() + fk_yolo.options_table()
    assert [(r["role"], r["name"]) for r in rows] == [(s[1], s[2]) for s in SPECS]
    for row in rows:
        assert bool(row["options"]) or bool(row["available"]) or row["name"] == "l1"


FOCAL = fk_tv.CLASSIFICATION_LOSSES["focal"]
FOCAL_EIOU = fk_tv.BOX_LOSSES["focal_eiou"]
GIOU = fk_tv.BOX_LOSSES["giou"]


def test_options_go_to_the_loss_that_takes_them():
    routed = split_options(
        {"classification": ("cls_", FOCAL), "box": ("box_", GIOU)},
        {"alpha": 0.5, "gamma": 1.0, "eps": 1e-6},
    )
    assert routed == {"classification": {"alpha": 0.5, "gamma": 1.0}, "box": {"eps": 1e-6}}


def test_an_option_both_losses_take_needs_a_prefix():
    choices = {"classification": ("cls_", FOCAL), "box": ("box_", FOCAL_EIOU)}
    with pytest.raises(ValueError, match=r"'gamma' is taken by both .* cls_gamma= or box_gamma="):
        split_options(choices, {"gamma": 1.0})
    routed = split_options(choices, {"cls_gamma": 1.0, "box_gamma": 0.25, "box_backend": "torch"})
    assert routed == {
        "classification": {"gamma": 1.0},
        "box": {"gamma": 0.25, "backend": "torch"},
    }
    with pytest.raises(ValueError, match="given twice"):
        split_options(choices, {"cls_alpha": 0.5, "alpha": 0.5})


def test_an_option_no_loss_takes_lists_what_each_accepts():
    with pytest.raises(ValueError) as info:
        split_options({"classification": ("cls_", FOCAL), "box": ("box_", GIOU)}, {"bins": 30})
    text = str(info.value)
    assert "option 'bins' belongs to none of the chosen losses" in text
    assert (
        "classification='focal' (focalkit.sigmoid_focal_loss) takes: alpha, backend, gamma" in text
    )
    assert "box='giou' (focalkit.giou_loss) takes: backend, eps" in text


def test_unknown_names_and_unavailable_functions():
    with pytest.raises(ValueError, match=r"box: unknown loss 'l3'; supported: l1, smooth_l1"):
        _table.build("box", "l3", fk_tv.BOX_LOSSES)
    missing = LossSpec("x", "no_such_loss", "index", "a loss no focalkit has", provides="nowhere")
    assert not missing.available()
    with pytest.raises(
        _table.LossUnavailableError, match=r"'x' needs focalkit\.no_such_loss.*comes with nowhere"
    ):
        _table.build("classification", "x", {"x": missing})


def test_a_callable_without_a_keyword_the_integration_passes_is_refused():
    def plain(pred, target, *, reduction="mean"):
        return pred.sum()

    spec = LossSpec("p", "", "index", "p", func=plain, call_needs=frozenset({"weight"}))
    with pytest.raises(_table.LossUnavailableError, match="takes no 'weight' keyword"):
        _table.build("classification", "p", {"p": spec})
