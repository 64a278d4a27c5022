"""``focalkit bench``: the suite end to end on CPU (rows, ratios, minimal bytes, agreement of
the implementations with focalkit, JSON and PNG), its option errors, and its baselines."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from focalkit.bench import baselines, focal_cpu, ghm_box, iou_family
from focalkit.bench.readme import suite_table
from focalkit.bench.suite import MIN_BYTES_FORMULAS, MODES, min_bytes
from focalkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALWAYS = {
    "focalkit (chunked)": "sigmoid",  # the CPU runs: "auto" takes the chunked backend
    "eager torchvision formula": "sigmoid",
    "focalkit softmax (chunked)": "softmax",
    "eager cross_entropy focal": "softmax",
    "focalkit ghm_c (chunked)": "ghm_c",
    "per-bin loop ghm_c": "ghm_c",
    "focalkit qfl (chunked)": "qfl",
    "mmdet quality_focal_loss": "qfl",
    "focalkit vfl (chunked)": "vfl",
    "ultralytics VarifocalLoss": "vfl",
    "mmdet varifocal_loss": "vfl",
    "focalkit dfl (chunked)": "dfl",
    "ultralytics DFLoss": "dfl",
    "mmdet distribution_focal_loss": "dfl",
    "focalkit asl (chunked)": "asl",
    "timm AsymmetricLossMultiLabel": "asl",
    "focalkit poly1 (chunked)": "poly1",
    "eager poly1 cross_entropy": "poly1",
    "copy": "copy",
}
BASELINE = {
    "sigmoid": "eager torchvision formula",
    "softmax": "eager cross_entropy focal",
    "ghm_c": "per-bin loop ghm_c",
    "qfl": "mmdet quality_focal_loss",
    "vfl": "ultralytics VarifocalLoss",
    "dfl": "ultralytics DFLoss",
    "asl": "timm AsymmetricLossMultiLabel",
    "poly1": "eager poly1 cross_entropy",
    "copy": "eager torchvision formula",
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, png = out / "suite.json", out / "suite.png"
    argv = [
        "bench",
        "--device",
        "cpu",
        "--sizes",
        "20000",
        "--repeat",
        "2",
        "--no-compile",
        "--json",
        str(json_path),
        "--plot",
        str(png),
    ]
    assert main(argv) == 0
    return json.loads(json_path.read_text()), png


def test_rows_for_every_implementation_and_mode(suite):
    doc, _ = suite
    found = {(r["impl"], r["mode"]) for r in doc["rows"]}
    assert {(impl, mode) for impl in ALWAYS for mode in MODES} <= found
    assert len(found) == len(doc["rows"])  # one size, one dtype: no duplicates
    for row in doc["rows"]:
        assert row["op"] == ALWAYS.get(row["impl"], row["op"])
        assert row["seconds"] > 0 and row["bandwidth_gbs"] > 0
        assert (row["numel"], row["classes"], row["rows"], row["dtype"]) == (20000, 80, 250, "fp32")
    skipped = {s["impl"]: s["reason"] for s in doc["skipped"]}
    assert skipped["torch.compile(eager)"] == "disabled with --no-compile"
    assert "focalkit (triton)" in skipped  # CPU without TRITON_INTERPRET: torch backend
    for lib, module in (
        ("torchvision.ops", "torchvision"),
        ("kornia", "kornia"),
        ("monai", "monai"),
    ):
        if importlib.util.find_spec(module) is None:
            assert skipped[lib] == "not installed"


def test_ratios_bandwidth_and_min_bytes(suite):
    doc, _ = suite
    by_key = {(r["impl"], r["mode"]): r for r in doc["rows"]}
    for row in doc["rows"]:
        base = by_key[(BASELINE[row["op"]], row["mode"])]
        copy = by_key[("copy", row["mode"])]
        assert row["ratio_vs_eager"] == pytest.approx(base["seconds"] / row["seconds"], rel=1e-9)
        assert row["ratio_vs_compile"] is None  # --no-compile
        assert row["bandwidth_gbs"] == pytest.approx(
            row["min_bytes"] / row["seconds"] / 1e9, rel=1e-9
        )
        assert row["pct_of_copy"] == pytest.approx(
            100 * row["bandwidth_gbs"] / copy["bandwidth_gbs"], rel=1e-9
        )
    # 20000 fp32 logits (4 bytes), 250 rows: the documented formulas
    expected = {
        ("sigmoid", "forward"): 160_000,
        ("sigmoid", "backward"): 240_000,
        ("sigmoid", "fwd+bwd"): 240_000,
        ("ghm_c", "forward"): 160_000,
        ("ghm_c", "fwd+bwd"): 240_000,
        ("softmax", "forward"): 82_000,
        ("softmax", "backward"): 162_000,
        ("softmax", "fwd+bwd"): 162_000,
        ("copy", "forward"): 160_000,
        ("copy", "fwd+bwd"): 160_000,
        ("qfl", "forward"): 80_000 + 2_000 + 1_000,  # logits, int64 labels, scores
        ("qfl", "fwd+bwd"): 80_000 + 2_000 + 1_000 + 80_000,
        ("vfl", "forward"): 160_000,
        ("asl", "fwd+bwd"): 240_000,
        ("poly1", "fwd+bwd"): 162_000,
        # 20000 // 68 = 294 boxes: 1176 sides of 17 bins
        ("dfl", "forward"): 1176 * 17 * 4 + 1176 * 4,
        ("dfl", "fwd+bwd"): 2 * 1176 * 17 * 4 + 1176 * 4,
    }
    for row in doc["rows"]:
        if (row["op"], row["mode"]) in expected:
            assert row["min_bytes"] == expected[(row["op"], row["mode"])], row
    assert min_bytes("sigmoid", "fwd+bwd", 10, 1, 2) == 60
    assert set(doc["min_bytes_formulas"]) == set(MIN_BYTES_FORMULAS)


def test_every_implementation_agrees_with_focalkit(suite):
    doc, _ = suite
    for row in doc["rows"]:
        if row["impl"] == "copy":
            assert row["max_abs_diff"] is None
        else:
            assert row["max_abs_diff"] is not None and row["max_abs_diff"] < 1e-5, row


@pytest.mark.triton
def test_triton_rows_agree_with_the_torch_backend(tmp_path, monkeypatch):
    """Where "auto" picks the kernels (here Triton's interpreter on CPU stands in for CUDA),
    the suite times a triton row per family in every mode, and its loss and gradient agree
    with the torch backend's."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # before triton's first import in this process
    pytest.importorskip("triton")
    json_path = tmp_path / "suite.json"
    argv = [
        "bench",
        "--device",
        "cpu",
        "--sizes",
        "400x8",
        "--repeat",
        "1",
        "--no-compile",
        "--json",
        str(json_path),
    ]
    assert main(argv) == 0
    doc = json.loads(json_path.read_text())
    triton_rows = {(r["impl"], r["mode"]): r for r in doc["rows"] if "(triton)" in r["impl"]}
    impls = (
        "focalkit (triton)",
        "focalkit softmax (triton)",
        "focalkit ghm_c (triton)",
        "focalkit qfl (triton)",
        "focalkit vfl (triton)",
        "focalkit dfl (triton)",
        "focalkit poly1 (triton)",
    )
    assert set(triton_rows) == {(impl, mode) for impl in impls for mode in MODES}
    for row in triton_rows.values():
        assert row["seconds"] > 0 and row["max_abs_diff"] < 1e-5, row
    assert not any("(triton)" in s["impl"] for s in doc["skipped"])


def test_metadata_memory_and_plot(suite):
    doc, png = suite
    env = doc["environment"]
    for key in ("focalkit", "torch", "python", "device_name", "threads"):
        assert env[key]
    assert doc["device"] == "cpu" and doc["preset"] == "custom"
    assert doc["command"].startswith("focalkit bench --device cpu --sizes 20000")
    peaks = [r["peak_bytes"] for r in doc["rows"]]
    assert all(p is None or p >= 0 for p in peaks)
    if Path("/proc/self/clear_refs").exists():
        assert any(p is not None for p in peaks)
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_interrupted_run_keeps_finished_cases_and_resume_measures_only_the_rest(
    tmp_path, monkeypatch, capsys
):
    """The JSON is rewritten after each size x dtype: a run stopped in its second case leaves
    the first; ``--resume`` keeps those rows untouched and measures only the second."""
    from focalkit.bench import suite as bench_suite

    json_path = tmp_path / "suite.json"
    argv = [
        "bench",
        "--device",
        "cpu",
        "--sizes",
        "2000x8",
        "3000x8",
        "--repeat",
        "1",
        "--no-compile",
        "--json",
        str(json_path),
    ]
    measured = []
    run_case = bench_suite.run_case

    def stop_in_the_second_case(case, *args):
        measured.append(case.numel)
        if len(measured) == 2:
            raise KeyboardInterrupt
        return run_case(case, *args)

    monkeypatch.setattr(bench_suite, "run_case", stop_in_the_second_case)
    assert main(argv) == 130
    assert "add --resume to measure only the rest" in capsys.readouterr().err
    partial = json.loads(json_path.read_text())
    assert partial["done"] == [[2000, 8, "fp32"]] and partial["complete"] is False
    assert {r["numel"] for r in partial["rows"]} == {2000}
    table = suite_table(partial)
    assert "Partial: 1 of 2 size x dtype cases measured." in table

    measured.clear()
    monkeypatch.setattr(
        bench_suite, "run_case", lambda case, *a: measured.append(case.numel) or run_case(case, *a)
    )
    assert main([*argv, "--resume"]) == 0
    assert measured == [3000]
    doc = json.loads(json_path.read_text())
    assert doc["done"] == [[2000, 8, "fp32"], [3000, 8, "fp32"]] and doc["complete"] is True
    assert [r for r in doc["rows"] if r["numel"] == 2000] == partial["rows"]
    assert {(r["impl"], r["mode"]) for r in doc["rows"] if r["numel"] == 3000} == {
        (r["impl"], r["mode"]) for r in partial["rows"]
    }


def test_resume_refusals_name_the_mismatch(tmp_path, capsys):
    json_path = tmp_path / "suite.json"
    argv = [
        "bench",
        "--device",
        "cpu",
        "--sizes",
        "2000x8",
        "--no-compile",
        "--json",
        str(json_path),
        "--resume",
    ]
    for text in ("[1, 2]", '{"benchmark": "focal_cpu"}'):
        json_path.write_text(text)
        assert main([*argv, "--repeat", "1"]) == 2
        assert "is not a results file of this suite" in capsys.readouterr().err
    assert main([*argv[:-1], "--repeat", "1"]) == 0  # without --resume: written afresh
    assert main([*argv, "--repeat", "2"]) == 2
    assert "has repeat 1, this run 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options",
    [
        ["--preset", "tiny"],
        ["--sizes", "abc"],
        ["--sizes", "10x80"],
        ["--repeat", "0"],
        ["--dtypes", "fp16"],
        ["--device", "tpu"],
    ],
)
def test_bad_options_exit_2_with_one_line(options, capsys):
    assert main(["bench", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("focalkit bench: error:") and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_exits_2(capsys, tmp_path):
    assert main(["bench", "--device", "cuda", "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_help(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--device",
        "--preset",
        "--sizes",
        "--dtypes",
        "--no-compile",
        "--json",
        "--plot",
        "--repeat",
        "--resume",
    ):
        assert option in out


def test_script_is_the_same_command():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_suite.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "--no-compile" in out.stdout


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("script", "benchmark", "function"),
    [
        ("bench_focal_cpu", focal_cpu, "eager_focal"),
        ("bench_ghm_box", ghm_box, "loop_ghm_c"),
        ("bench_iou_family", iou_family, "yolo_iou_loss"),
    ],
)
def test_benchmark_scripts_use_the_package_baselines(script, benchmark, function):
    """The scripts and `focalkit bench` time one and the same baseline function: each script
    only runs its benchmark in focalkit.bench, which times the package's baseline."""
    assert _load(script).main is benchmark.main
    assert getattr(benchmark, function) is getattr(baselines, function)


def test_cli_presets_are_the_suite_presets():
    from focalkit.bench.suite import PRESETS
    from focalkit.cli import PRESET_NAMES

    assert set(PRESET_NAMES) == set(PRESETS)


def _schema(value):
    """Keys and value types, recursively (list elements merged), without the numbers (which
    may be null: a peak or ratio not measured)."""
    if isinstance(value, dict):
        return {key: _schema(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(_schema(item), sort_keys=True) for item in value})
    return "number" if value is None or isinstance(value, (int, float)) else type(value).__name__


@pytest.mark.parametrize(
    ("benchmark", "argv", "committed"),
    [
        (focal_cpu, ["--numel", "16000", "--repeat", "1"], "focal_cpu.json"),
        (ghm_box, ["--repeat", "1", "--ghm-sizes", "8000", "--boxes", "100"], "ghm_box_cpu.json"),
        (iou_family, ["--repeat", "1", "--boxes", "100"], "iou_family_cpu.json"),
    ],
)
def test_named_benchmarks_write_the_schema_of_the_committed_results(
    benchmark, argv, committed, tmp_path, capsys
):
    """`benchmarks/bench_focal_cpu.py`, `bench_ghm_box.py` and `bench_iou_family.py` (thin
    callers of these) write what the committed results and render_readme.py hold."""
    path = tmp_path / committed
    assert benchmark.main([*argv, "--json", str(path)]) == 0
    assert capsys.readouterr().out.strip()
    new = json.loads(path.read_text())
    old = json.loads((ROOT / "benchmarks" / "results" / committed).read_text())
    assert set(new.pop("environment")) == set(old.pop("environment"))  # values: per machine
    assert _schema(new) == _schema(old)


def test_iou_family_baselines_compute_the_same_losses():
    """The benchmark's three implementations of each loss (plain formula, the YOLO forks'
    bbox_iou, focalkit) agree on the value (the forks' eps placement aside)."""
    doc = iou_family.measure(boxes=300, repeat=1)
    assert [row["name"] for row in doc["rows"]] == list(iou_family.KINDS)
    for row in doc["rows"]:
        assert row["rel_diff_plain"] < 1e-5, row
        assert row["rel_diff_bbox_iou"] < 1e-5, row
        assert row["focalkit_backend"] == "torch"
    assert "wiou_v3" in iou_family.summary(doc)
