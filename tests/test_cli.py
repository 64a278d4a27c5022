"""The ``focalkit`` command line: options and their errors, the quick demo end to end (records,
results.json, COCO annotations, report and figures), and resuming an interrupted demo."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("rich")
pytest.importorskip("sklearn")

import focalkit
from focalkit.cli import main
from focalkit.demo import classification

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLS_FIGURES = (
    "classification-per-class-recall.png",
    "classification-reliability.png",
    "classification-curves.png",
)
DET_FIGURES = (
    "detection-ap.png",
    "detection-grad-norm.png",
    "detection-cumulative-loss.png",
    "detection-curves.png",
    "detection-scenes.png",
    "detection-validation.png",
)
TREE_FIGURES = ("trees-validation.png", "trees-test.png")


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, path


def record_files(out: Path) -> dict[str, Path]:
    return {p.relative_to(out).as_posix(): p for p in sorted((out / "runs").rglob("*.json"))}


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"focalkit {focalkit.__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["demo", "--help"],
        ["plot", "--help"],
        ["plot", "focal-curves", "--help"],
        ["report", "--help"],
    ],
)
def test_help(argv, capsys):
    assert main(argv) == 0
    assert "usage: focalkit" in capsys.readouterr().out


BAD = [
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    (["demo", "--seeds", "0"], "--seeds"),
    (["demo", "--seeds", "two"], "--seeds"),
    (["demo", "--quick", "--full"], "not allowed with"),
    (["demo", "--device", "tpu"], "--device"),
    (["demo", "--only", "segmentation"], "--only"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
    (["plot"], "required"),
    (["plot", "pie-chart"], "invalid choice"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[" ".join(a) or "none" for a, _ in BAD])
def test_bad_options_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("focalkit") and "error:" in err and needle in err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error(tmp_path, capsys):
    assert main(["demo", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err
    assert not (tmp_path / "o").exists()


def test_report_without_results_is_a_usage_error(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_python_dash_m():
    out = subprocess.run(
        [sys.executable, "-m", "focalkit", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"focalkit {focalkit.__version__}"
    bad = subprocess.run(
        [sys.executable, "-m", "focalkit", "demo", "--seeds", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_plot_focal_curves(tmp_path, capsys):
    path = tmp_path / "curves.png"
    assert main(["plot", "focal-curves", "--out", str(path)]) == 0
    assert_png(path)
    assert str(path.resolve()) in capsys.readouterr().err


def test_focal_curve_data_is_the_library_loss():
    """gamma = 0 is -log(p_t); the gradient at p_t is |dFL/dx| of the spec's closed form."""
    from focalkit.demo.focal_curves import focal_curve_data

    data = focal_curve_data(gammas=(0.0, 2.0), points=9)
    p = torch.tensor(data["p_t"], dtype=torch.float64)
    assert torch.allclose(torch.tensor(data["loss"][0], dtype=torch.float64), -p.log(), rtol=1e-5)
    closed = (1 - p) ** 2 * (2 * p * p.log() + p - 1)  # spec sec. 1, y = 1, alpha off
    assert torch.allclose(
        torch.tensor(data["grad"][1], dtype=torch.float64), closed.abs(), rtol=1e-4
    )


# --------------------------------------------------------------------------------------------
# the quick demo end to end (both studies)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """``focalkit demo --quick --seeds 2 --jobs 2`` once for the end-to-end checks below (all
    three studies, in two worker processes)."""
    pytest.importorskip("pycocotools")
    pytest.importorskip("PIL")
    from focalkit.demo.detection import neon

    try:
        neon.fetch_wheel()  # the tree-crown images: the package index, once per cache
    except neon.DataUnavailable as exc:
        pytest.skip(f"the tree-crown data is not available here: {exc}")
    out = tmp_path_factory.mktemp("quick") / "report"
    if os.environ.get("FOCALKIT_TEST_QUICK_OUT"):  # reuse an existing output (debugging)
        return Path(os.environ["FOCALKIT_TEST_QUICK_OUT"]), None
    stdout, stderr = sys.stdout, sys.stderr
    import io

    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    try:
        code = main(["demo", "--quick", "--seeds", "2", "--jobs", "2", "--out", str(out)])
        captured = (sys.stdout.getvalue(), sys.stderr.getvalue())
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    assert code == 0, captured[1][-3000:]
    return out, captured


@pytest.mark.slow
def test_quick_demo_logs_and_summary(quick_demo):
    out, captured = quick_demo
    if captured is None:
        pytest.skip("reused output")
    stdout, stderr = captured
    assert f"report: {(out / 'report.md').resolve()}" in stderr
    assert "classification: mean ± std over seeds" in stdout  # the summary tables
    assert "detection: mean ± std over seeds" in stdout
    assert "trees: mean ± std over seeds" in stdout
    assert "(2 processes)" in stderr


@pytest.mark.slow
def test_quick_demo_records(quick_demo):
    from focalkit.demo.detection import study as detection

    out, _ = quick_demo
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    cls_runs = [r for r in runs if r["study"] == "classification"]
    det_runs = [r for r in runs if r["study"] == "detection"]
    seeds = results["options"]["seeds"]
    assert len(cls_runs) == seeds["classification"] * len(classification.CLASSIFICATION_LOSSES)
    assert len(det_runs) == seeds["detection"] * len(detection.detection_runs())
    assert len(detection.detection_runs()) == (
        len(detection.CLS_LOSSES) + len(detection.BOX_LOSSES) - 1
    )
    assert results["environment"]["torch"] == torch.__version__

    # every run has its own record, identical to the one in results.json
    files = record_files(out)
    assert len(files) == len(runs)
    for run in runs:
        path = out / "runs" / run["study"] / f"{run['name']}-seed{run['seed']}.json"
        assert json.loads(path.read_text()) == run
        assert run["config"]["seed"] == run["seed"] and run["config"]["device"] == "cpu"
        assert set(run["versions"]) >= {
            "focalkit",
            "torch",
            "numpy",
            "python",
            "platform",
            "device",
        }
    names = {r["name"] for r in det_runs}
    assert {"bce-smooth_l1", "focal-smooth_l1", "ghmc-smooth_l1", "focal-ghmr"} <= names
    assert {"focal-siou", "focal-wiou", "focal-inner_ciou"} <= names
    assert {"qfl-smooth_l1", "vfl-smooth_l1"} <= names
    assert {"poly1", "asl"} <= {r["name"] for r in cls_runs}
    tree_runs = [r for r in runs if r["study"] == "trees"]
    from focalkit.demo.detection import trees

    setting = trees.trees_setting("quick")
    assert len(tree_runs) == seeds["trees"] * len(trees.trees_runs(setting))
    assert results["tree_data"]["splits"]["transfer"][0]["tile"] == "OSBS_029"
    assert results["tree_data"]["splits"]["test"][0]["tile"].startswith("2019_YELL_2_528000")
    for run in [*det_runs, *tree_runs, *cls_runs]:  # the plateau rule's account of each run
        validation = run["validation"]
        assert validation["stopped_at"] == run["steps"] and validation["reason"] in (
            "plateau",
            "cap",
        )
        assert validation["best_step"] in validation["step"]


@pytest.mark.slow
def test_quick_demo_metrics_in_range(quick_demo):
    out, _ = quick_demo
    runs = json.loads((out / "results.json").read_text())["runs"]
    for run in runs:
        m = run["metrics"]
        if run["study"] == "classification":
            for key in ("balanced_accuracy", "macro_f1", "worst_class_recall", "ece"):
                assert 0.0 <= m[key] <= 1.0, (run["name"], key, m[key])
            assert m["nll"] > 0
        else:
            for key in ("AP", "AP50", "AP75", "AP_small"):
                assert m[key] == -1 or 0.0 <= m[key] <= 1.0, (run["name"], key, m[key])
            if run["study"] == "detection":  # Study 3 records no gradient-norm histogram
                assert len(run["grad_norm_hist"]["counts"]) == 30
            else:
                for key in ("AP_transfer", "AP50_transfer", "AP50_OSBS", "AP50_SOAP"):
                    assert -1 <= m[key] <= 1, (run["name"], key, m[key])


@pytest.mark.slow
def test_quick_demo_coco_annotations(quick_demo):
    """COCOeval ran on the annotations each record names; they exist and load."""
    from pycocotools.coco import COCO

    out, _ = quick_demo
    runs = json.loads((out / "results.json").read_text())["runs"]
    det_runs = [r for r in runs if r["study"] == "detection"]
    for path in sorted({r["annotations"] for r in det_runs}):
        annotations = out / "detection" / path
        assert annotations.is_file(), annotations
        gt = COCO(str(annotations))
        assert len(gt.getImgIds()) == det_runs[0]["setting"]["num_test"]
        assert len(gt.getAnnIds()) > 0


@pytest.mark.slow
def test_quick_demo_report_and_figures(quick_demo, tmp_path):
    out, _ = quick_demo
    report = (out / "report.md").read_text()
    for name in ("focal-curves.png", *CLS_FIGURES, *DET_FIGURES, *TREE_FIGURES):
        assert_png(out / "figures" / name)
        assert f"](figures/{name})" in report
    for section in (
        "Study 1",
        "Study 2",
        "Study 3",
        "Nothing was tuned per loss",
        "Seeds per configuration",
        "trained until its validation yardstick",
        "Reduced version",  # the tree study says what it left out
        "CC0",
        "MIT License",
        "OSBS_029",
        "Training budget: where each loss stops",
        "GHM-C",
    ):
        assert section in report, section
    assert re.search(
        r"focal (beat|did not beat|was ahead of|and) bce .*?on AP here.*?\(\d\.\d{3} vs \d\.\d{3}",
        report,
    )
    assert not re.search(r"\bnan\b", report, flags=re.IGNORECASE)

    # the report can be redrawn from results.json alone
    redrawn = tmp_path / "redrawn"
    redrawn.mkdir()
    (redrawn / "results.json").write_bytes((out / "results.json").read_bytes())
    if (out / "detection").exists():
        (redrawn / "detection").symlink_to(out / "detection")
    assert main(["report", "--out", str(redrawn)]) == 0
    assert (redrawn / "report.md").read_text() == report


def _runs(metric: str, values: list[float]) -> list[dict]:
    return [{"seed": s, "metrics": {metric: v}} for s, v in enumerate(values)]


def test_report_comparisons_come_from_the_numbers():
    """The comparison sentence follows the measured means and a t-test over seeds."""
    from focalkit.demo.report import compare

    strong = compare(
        "AP",
        "focal",
        _runs("AP", [0.50, 0.52, 0.51]),
        "bce",
        _runs("AP", [0.30, 0.31, 0.305]),
        "AP",
    )
    assert strong.startswith(
        "focal beat bce on AP here (0.510 vs 0.305; paired t-test over 3 seeds"
    )
    noisy = compare("AP", "focal", _runs("AP", [0.5, 0.2]), "bce", _runs("AP", [0.3, 0.35]), "AP")
    assert noisy.startswith(
        "focal was ahead of bce on AP here but not significantly (0.350 vs 0.325"
    )
    worse = compare("AP", "focal", _runs("AP", [0.1, 0.2]), "bce", _runs("AP", [0.3, 0.35]), "AP")
    assert worse.startswith("focal did not beat bce on AP here")
    ece = compare(
        "ECE",
        "a",
        _runs("ece", [0.05, 0.06, 0.04]),
        "b",
        _runs("ece", [0.1, 0.12, 0.11]),
        "ece",
        False,
    )
    assert ece.startswith("a beat b on ECE here (0.050 vs 0.110, lower is better")
    tie = compare("AP", "a", _runs("AP", [0.2, 0.2]), "b", _runs("AP", [0.2, 0.2001]), "AP")
    assert "tied" in tie
    one = compare("AP", "a", _runs("AP", [0.3]), "b", _runs("AP", [0.2]), "AP")
    assert one == "a beat b on AP here (0.300 vs 0.200; one seed, no test possible)."
    undefined = compare(
        "AP_small", "a", _runs("AP_small", [-1, -1]), "b", _runs("AP_small", [0.2, 0.1]), "AP_small"
    )
    assert "undefined for a" in undefined


# --------------------------------------------------------------------------------------------
# resume (classification only: fast)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of run_classification (still running the real thing)."""
    real = classification.run_classification
    calls: list[tuple[str, int]] = []

    def spy(loss, seed, setting, **kwargs):
        calls.append((loss, seed))
        return real(loss, seed, setting, **kwargs)

    monkeypatch.setattr(classification, "run_classification", spy)
    return calls


# --jobs 1: these tests count calls of a monkeypatched study function, so the runs must stay
# in this process (the parallel path has its own tests in test_demo_parallel.py)
QUICK_CLS = ["demo", "--quick", "--only", "classification", "--jobs", "1", "--seeds", "1"]


def test_resume_reuses_finished_runs(tmp_path, counted, capsys):
    out = tmp_path / "o"
    argv = [*QUICK_CLS, "--out", str(out)]
    assert main(argv) == 0
    n = len(classification.CLASSIFICATION_LOSSES)
    assert len(counted) == n
    files = record_files(out)
    assert len(files) == n
    stamps = {k: p.stat().st_mtime_ns for k, p in files.items()}

    # the same command again: nothing recomputed, nothing rewritten
    counted.clear()
    assert main(argv) == 0
    assert counted == []
    assert {k: p.stat().st_mtime_ns for k, p in record_files(out).items()} == stamps

    # one record deleted: only that run is recomputed
    counted.clear()
    files["runs/classification/focal-seed0.json"].unlink()
    assert main(argv) == 0
    assert counted == [("focal", 0)]
    after = {k: p.stat().st_mtime_ns for k, p in record_files(out).items()}
    assert set(after) == set(stamps)
    assert {k: v for k, v in after.items() if "focal-seed0" not in k} == {
        k: v for k, v in stamps.items() if "focal-seed0" not in k
    }

    # a corrupt (truncated) record and one with a different stored configuration: both redone
    counted.clear()
    (out / "runs/classification/ce-seed0.json").write_text('{"study": "classif')
    edited = json.loads((out / "runs/classification/auto-seed0.json").read_text())
    edited["config"]["setting"]["max_steps"] += 1
    (out / "runs/classification/auto-seed0.json").write_text(json.dumps(edited))
    assert main(argv) == 0
    assert sorted(counted) == [("auto", 0), ("ce", 0)]
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == n
    assert all(r["config"]["setting"]["max_steps"] == 300 for r in results["runs"])

    # --force recomputes everything
    counted.clear()
    assert main([*argv, "--force"]) == 0
    assert len(counted) == n

    # more seeds: the finished seed-0 runs are kept, only seed 1 runs
    counted.clear()
    assert main([*QUICK_CLS[:-1], "2", "--out", str(out)]) == 0  # --seeds 2
    assert sorted(counted) == sorted((loss, 1) for loss in classification.CLASSIFICATION_LOSSES)
    assert "(1 reused)" in capsys.readouterr().out


def test_changed_option_recomputes(tmp_path, monkeypatch, counted):
    out = tmp_path / "o"
    assert main([*QUICK_CLS, "--out", str(out)]) == 0
    counted.clear()
    # the default preset (different setting): every record is stale. Shrink the steps the
    # runner actually trains so the test stays fast; the stored config is the requested one.
    spy = classification.run_classification
    monkeypatch.setattr(
        classification,
        "run_classification",
        lambda loss, seed, setting, **kw: spy(
            loss,
            seed,
            dataclasses.replace(setting, max_steps=20, min_steps=10, eval_every=10),
            **kw,
        ),
    )
    argv = ["demo", "--only", "classification", "--jobs", "1", "--seeds", "1", "--out", str(out)]
    assert main(argv) == 0
    assert len(counted) == len(classification.CLASSIFICATION_LOSSES)
    results = json.loads((out / "results.json").read_text())
    assert {r["config"]["setting"]["preset"] for r in results["runs"]} == {"default"}


def test_interrupted_demo_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the third run: exit 130, the two finished runs are on disk, and the rerun
    computes only the other three."""
    out = tmp_path / "o"
    real = classification.run_classification
    calls = []
    interrupt = [True]

    def flaky(loss, seed, setting, **kwargs):
        calls.append(loss)
        if len(calls) == 3 and interrupt[0]:
            raise KeyboardInterrupt
        return real(
            loss,
            seed,
            dataclasses.replace(setting, max_steps=20, min_steps=10, eval_every=10),
            **kwargs,
        )

    monkeypatch.setattr(classification, "run_classification", flaky)
    assert main([*QUICK_CLS, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("focalkit: interrupted")
    assert len(record_files(out)) == 2
    assert not list((out / "runs").rglob(".*.tmp"))  # no temporary files left behind
    assert not (out / "results.json").exists()

    calls.clear()
    interrupt[0] = False
    assert main([*QUICK_CLS, "--out", str(out)]) == 0
    assert len(calls) == len(classification.CLASSIFICATION_LOSSES) - 2
    assert len(record_files(out)) == len(classification.CLASSIFICATION_LOSSES)


def test_only_classification_report(tmp_path, monkeypatch):
    """--only classification: only that study's sections and figures; progress bars on a
    (pretend) terminal render without error."""
    from focalkit.cli import console

    monkeypatch.setattr(console, "interactive", lambda: True)
    monkeypatch.delenv("CI", raising=False)
    out = tmp_path / "o"
    real = classification.run_classification
    monkeypatch.setattr(
        classification,
        "run_classification",
        lambda loss, seed, setting, **kw: real(
            loss,
            seed,
            dataclasses.replace(setting, max_steps=30, min_steps=10, eval_every=10),
            **kw,
        ),
    )
    assert main([*QUICK_CLS, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Study 1" in report and "Study 2" not in report
    for name in ("focal-curves.png", *CLS_FIGURES):
        assert_png(out / "figures" / name)
    assert not any((out / "figures" / name).exists() for name in DET_FIGURES)
    assert not (out / "detection").exists()
    for record in record_files(out).values():
        assert oct(record.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_parallel_records_equal_a_serial_run(quick_demo, tmp_path):
    """The quick demo ran its runs in two worker processes; running some of the same jobs
    again serially in this process (``--jobs 1``'s path) gives bit-identical records, the
    timing aside: one study of each kind, a stateful loss (GHM-C's EMA) among them."""
    from focalkit.demo import runner

    out, _ = quick_demo
    results = json.loads((out / "results.json").read_text())
    options = runner.DemoOptions(preset="quick", out_dir=tmp_path / "serial", seeds=2, jobs=1)
    jobs = {(j.study, j.name, j.seed): j for j in runner.build_jobs(options)}
    env = results["environment"]
    picked = [
        ("classification", "auto", 1),
        ("detection", "ghmc-smooth_l1", 1),
        ("detection", "focal-wiou", 0),
        ("trees", "ghmc-smooth_l1", 0),
    ]
    for key in picked:
        job = jobs[key]
        config = job.config("cpu")
        record = runner._finish(
            job, runner.execute(job, "cpu", lambda d, t: None), config, env, tmp_path / "serial"
        )
        stored = json.loads(job.path(out).read_text())
        assert stored["config"] == config
        record.pop("time_s"), stored.pop("time_s")
        if job.study != "classification":
            record.pop("annotations"), stored.pop("annotations")  # relative to each workdir
        assert json.loads(json.dumps(record)) == stored, key
