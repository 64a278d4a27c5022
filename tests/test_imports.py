"""``import focalkit`` needs torch only: the demo's, the benchmarks' and the command line's
dependencies (numpy, matplotlib, rich, scikit-learn, scipy, pycocotools) are imported by
``focalkit.demo``, ``focalkit.bench`` and ``focalkit.cli`` only, and only when used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("numpy", "matplotlib", "rich", "pycocotools", "sklearn", "scipy")
APPS = ("focalkit.demo", "focalkit.bench", "focalkit.cli")


def _modules_after(code: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def _under(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def _heavy_beyond_torch(modules: set[str], torch_only: set[str]) -> dict[str, list[str]]:
    """The heavy modules in ``modules`` that ``import torch`` alone did not load (torch
    imports numpy itself where it is installed)."""
    found = {name: _under(modules - torch_only, name) for name in HEAVY}
    return {name: mods for name, mods in found.items() if mods}


def test_import_focalkit_loads_torch_only():
    torch_only = _modules_after("import torch")
    after = _modules_after("import torch\nimport focalkit")
    assert _heavy_beyond_torch(after, torch_only) == {}
    for name in ("matplotlib", "rich", "pycocotools", "sklearn"):
        assert _under(after, name) == [], name
    for package in APPS:
        assert _under(after, package) == [], package


def test_version_and_the_package_inits_stay_light():
    """``focalkit --version`` and importing the (lazy) ``focalkit.demo`` / ``focalkit.bench``
    packages and the shared records module load none of the heavy dependencies."""
    torch_only = _modules_after("import torch")
    version = _modules_after(
        "import contextlib, io\n"
        "from focalkit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--version']) == 0"
    )
    assert _heavy_beyond_torch(version, torch_only) == {}
    assert _under(version, "focalkit.demo") == [] and _under(version, "focalkit.bench") == []
    packages = _modules_after("import focalkit.demo, focalkit.bench, focalkit.demo.records")
    assert _heavy_beyond_torch(packages, torch_only) == {}


# --------------------------------------------------------------------------------------------
# optional peers that are installed but fail to import
# --------------------------------------------------------------------------------------------

BROKEN = "operator torchvision::nms does not exist"


def _broken_torchvision(root) -> None:
    """A ``torchvision`` package whose import raises as a wheel built for another torch
    build does."""
    package = root / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text(f"raise RuntimeError({BROKEN!r})\n")
    (package / "ops.py").write_text("")


def test_optional_import_reports_a_failing_module_as_not_available(tmp_path, monkeypatch):
    from focalkit import _optional

    _broken_torchvision(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_optional, "_FAILED", {})
    for name in ("torchvision", "torchvision.ops"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        module, why = _optional.optional_import(name)
        assert module is None
        assert why == f"import failed: RuntimeError: {BROKEN}"
    module, why = _optional.optional_import("focalkit_no_such_package")
    assert module is None and why == "not installed"
    module, why = _optional.optional_import("json")
    assert module is not None and why == ""


def test_bench_skips_a_comparison_library_that_fails_to_import(tmp_path):
    """``focalkit bench`` with a broken torchvision on the path: no traceback, the row is
    skipped with the reason, in the output and in the JSON's skipped list."""
    _broken_torchvision(tmp_path)
    json_path = tmp_path / "suite.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "focalkit",
            "bench",
            "--device",
            "cpu",
            "--sizes",
            "2000",
            "--repeat",
            "1",
            "--no-compile",
            "--json",
            str(json_path),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    doc = json.loads(json_path.read_text())
    skipped = {s["impl"]: s["reason"] for s in doc["skipped"]}
    assert skipped["torchvision.ops"] == f"import failed: RuntimeError: {BROKEN}"
    assert f"torchvision.ops: import failed: RuntimeError: {BROKEN}" in run.stdout + run.stderr
