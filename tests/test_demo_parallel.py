"""The demo's plateau rule on synthetic curves, and an interrupted parallel demo that keeps
every finished record and resumes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from focalkit.demo.plateau import Plateau, PlateauRule

RULE = PlateauRule(eval_every=100, patience=3, min_delta=0.01, min_steps=300, max_steps=5000)


def run_rule(rule: PlateauRule, curve) -> Plateau:
    plateau = Plateau(rule)
    step = 0
    while True:
        step += rule.eval_every
        if plateau.update(step, curve(step)):
            return plateau


def test_saturating_curve_stops_after_patience_evaluations_without_gain():
    """0.5 (1 - exp(-t / 400)): the gain per 100 steps falls below 0.01 at about t = 1280
    (0.5 (1 - e^-0.25) e^(-t/400) < 0.01); the rule stops patience evaluations after the last
    gain of at least 0.01 over the best, and keeps the best (the latest) evaluation."""
    plateau = run_rule(RULE, lambda t: 0.5 * (1 - math.exp(-t / 400)))
    assert plateau.reason == "plateau"
    # the last evaluation that beat the best by >= 0.01
    gains = [
        t
        for t in range(100, 5001, 100)
        if 0.5 * (1 - math.exp(-t / 400)) - 0.5 * (1 - math.exp(-(t - 100) / 400)) >= 0.01
    ]
    assert plateau.steps[-1] == gains[-1] + 3 * 100
    assert plateau.best_step == plateau.steps[-1]  # still creeping up: the last is the best
    assert plateau.summary()["stopped_at"] == plateau.steps[-1]


def test_rising_curve_runs_to_the_cap():
    plateau = run_rule(RULE, lambda t: t / 5000)  # +0.02 per evaluation
    assert plateau.reason == "cap" and plateau.steps[-1] == 5000 and plateau.best_step == 5000


def test_peak_keeps_the_best_evaluation_and_min_steps_holds():
    """A curve that peaks at 600 then falls: stop at 900, keep 600. A curve that is flat from
    the start still trains min_steps."""
    plateau = run_rule(RULE, lambda t: 0.4 - abs(t - 600) / 2000)
    assert plateau.reason == "plateau" and plateau.best_step == 600 and plateau.steps[-1] == 900
    assert plateau.best_value == pytest.approx(0.4)
    flat = run_rule(dataclasses.replace(RULE, min_steps=600), lambda t: 0.3)
    assert flat.steps[-1] == 600 and flat.best_step == 100  # the earliest of equal values


def test_lower_is_better_and_nan():
    rule = PlateauRule(10, 2, 0.0, 0, 1000, higher_is_better=False)
    values = iter([1.0, 0.5, float("nan"), 0.6, 0.7])
    plateau = Plateau(rule)
    stops = [plateau.update(10 * i, next(values)) for i in range(1, 6)]
    assert stops == [False, False, False, True, True]
    assert plateau.best_step == 20 and plateau.best_value == 0.5


def test_rule_checks_its_arguments():
    with pytest.raises(ValueError, match="patience"):
        PlateauRule(100, 0, 0.0, 0, 100)
    with pytest.raises(ValueError, match="steps"):
        PlateauRule(100, 1, 0.0, 200, 100)
    with pytest.raises(ValueError, match="min_delta"):
        PlateauRule(100, 1, -0.1, 0, 100)
    assert "every 100 steps" in RULE.describe("AP")


def test_rule_of_a_setting_and_of_its_record_agree():
    """Each study's setting and the setting recorded in its JSON give the same rule; a record
    missing a field raises KeyError (the report then says "not recorded")."""
    from focalkit.demo.classification import classification_setting
    from focalkit.demo.detection.study import detection_setting
    from focalkit.demo.detection.trees import trees_setting

    for setting in (
        classification_setting("default"),
        detection_setting("default"),
        trees_setting("default"),
    ):
        rule = setting.plateau_rule()
        assert rule == PlateauRule.of(dataclasses.asdict(setting))
        assert (rule.eval_every, rule.patience, rule.min_delta, rule.min_steps, rule.max_steps) == (
            setting.eval_every,
            setting.patience,
            setting.min_delta,
            setting.min_steps,
            setting.max_steps,
        )
    recorded = dataclasses.asdict(trees_setting("default"))
    del recorded["min_delta"]
    with pytest.raises(KeyError, match="min_delta"):
        PlateauRule.of(recorded)


# --------------------------------------------------------------------------------------------
# an interrupted parallel demo
# --------------------------------------------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _records(out: Path) -> list[Path]:
    return sorted((out / "runs").rglob("*.json")) if (out / "runs").exists() else []


@pytest.mark.slow
def test_interrupted_parallel_demo_keeps_finished_records_and_resumes(tmp_path):
    """Ctrl-C (SIGINT to the process group) while two workers run: exit 130, every record on
    disk is complete, no temporary file is left, and the rerun computes only the others."""
    pytest.importorskip("sklearn")
    out = tmp_path / "o"
    argv = [
        sys.executable,
        "-m",
        "focalkit",
        "demo",
        "--quick",
        "--only",
        "classification",
        "--seeds",
        "3",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "CI": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        # a shell starts background jobs with SIGINT ignored, and a process that starts with
        # it ignored never sees Ctrl-C: give the demo the disposition of a terminal's command
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 240
    while len(_records(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err.strip().splitlines()[-1]
    kept = _records(out)
    total = 3 * 7
    assert 2 <= len(kept) < total, len(kept)
    for path in kept:  # complete records, with their configuration
        record = json.loads(path.read_text())
        assert record["config"]["seed"] == record["seed"] and "metrics" in record
    assert not list(out.rglob(".*.tmp"))
    assert not (out / "results.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in kept}

    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{total - len(kept)} to compute" in again.stderr
    assert f"{len(kept)} reused" in again.stderr
    assert len(_records(out)) == total
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # not rewritten
