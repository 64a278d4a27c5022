"""The demo as a library call: :func:`run` runs the studies (seeded, one JSON record per run,
resumable), then writes ``results.json``, the figures and ``report.md``. ``focalkit demo`` parses
its options into :class:`DemoOptions`, calls :func:`run` with its progress bars and prints the
summary tables of the returned :class:`DemoResult`.

Resume: a run's record ``runs/<study>/<name>-seed<k>.json`` is reused when its stored
``config`` (study, loss(es), seed, setting, device) equals the requested one; a missing,
corrupt or differently configured record is recomputed; ``force=True`` recomputes all.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import classification
from .focal_curves import focal_curve_data
from .metrics import mean_std
from .records import atomic_write_json, canonical, environment, read_record, record_path

__all__ = [
    "STUDIES",
    "DemoError",
    "DemoOptions",
    "DemoResult",
    "Job",
    "Progress",
    "build_jobs",
    "run",
    "summary_tables",
]

log = logging.getLogger("focalkit.demo")

STUDIES = ("classification", "detection")
DEFAULT_SEEDS = {"classification": 3, "detection": 2}
SUMMARY_METRICS = {
    "classification": ("balanced_accuracy", "macro_f1", "worst_class_recall", "ece", "nll"),
    "detection": ("AP", "AP50", "AP75", "AP_small"),
}


class DemoError(RuntimeError):
    """A problem the command line reports in one line (exit code 1)."""


@dataclass(frozen=True)
class DemoOptions:
    preset: str = "default"  # quick | default | full
    out_dir: Path = Path("focalkit-report")
    device: str = "cpu"  # resolved: cpu | cuda
    seeds: int | None = None  # None: DEFAULT_SEEDS per study
    only: str | None = None  # classification | detection | None (both)
    force: bool = False
    argv: tuple[str, ...] = ()

    def studies(self) -> tuple[str, ...]:
        return STUDIES if self.only is None else (self.only,)

    def seeds_for(self, study: str) -> int:
        return DEFAULT_SEEDS[study] if self.seeds is None else self.seeds


@dataclass
class Job:
    """One seeded run: what to call and the configuration its record must match."""

    study: str
    name: str
    seed: int
    params: dict[str, str]
    setting: Any
    runner: Callable[..., dict] = field(repr=False)

    def config(self, device: str) -> dict:
        return canonical(
            {
                "study": self.study,
                **self.params,
                "seed": self.seed,
                "setting": dataclasses.asdict(self.setting),
                "device": device,
            }
        )

    def path(self, out_dir: Path) -> Path:
        return record_path(out_dir, self.study, self.name, self.seed)

    def describe(self) -> str:
        return f"{self.study} {self.name} seed {self.seed}"


def _detection_module():
    from focalkit._optional import optional_import

    detection, why = optional_import("focalkit.demo.detection.study")
    if detection is None:
        raise DemoError(
            f"the detection study is not available ({why}); run with --only classification"
        )
    return detection


def build_jobs(options: DemoOptions) -> list[Job]:
    """Every run the options ask for, classification first."""
    jobs: list[Job] = []
    if "classification" in options.studies():
        setting = classification.classification_setting(options.preset)
        for loss in classification.CLASSIFICATION_LOSSES:
            for seed in range(options.seeds_for("classification")):
                jobs.append(
                    Job(
                        "classification",
                        loss,
                        seed,
                        {"loss": loss},
                        setting,
                        lambda loss, seed, setting, **kw: classification.run_classification(
                            loss, seed, setting, **kw
                        ),
                    )
                )
    if "detection" in options.studies():
        detection = _detection_module()
        setting = detection.detection_setting(options.preset)
        workdir = Path(options.out_dir) / "detection"
        for cls_loss, box_loss in detection.detection_runs():
            for seed in range(options.seeds_for("detection")):
                jobs.append(
                    Job(
                        "detection",
                        f"{cls_loss}-{box_loss}",
                        seed,
                        {"cls_loss": cls_loss, "box_loss": box_loss},
                        setting,
                        lambda cls_loss, box_loss, seed, setting, **kw: detection.run_detection(
                            cls_loss, box_loss, seed, setting, workdir=workdir, **kw
                        ),
                    )
                )
    return jobs


def _call(job: Job, device: str, progress: Callable[[int, int], None]) -> dict:
    return job.runner(
        **job.params, seed=job.seed, setting=job.setting, device=device, progress=progress
    )


def _metric_line(record: dict) -> str:
    names = SUMMARY_METRICS[record["study"]][:2]
    return ", ".join(f"{k} {record['metrics'][k]:.3f}" for k in names if k in record["metrics"])


class Progress(Protocol):
    """What :func:`run` reports progress to (``focalkit demo`` passes its progress bars):
    a context manager around all runs, ``run(description)`` a context manager around one run
    that yields its ``progress(done, total)`` step callback, and ``run_done()`` after each run
    (computed or reused)."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...

    def run(self, description: str) -> AbstractContextManager[Callable[[int, int], None]]: ...

    def run_done(self) -> None: ...


class _NoProgress:
    """The default :class:`Progress`: reports nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @contextmanager
    def run(self, description: str) -> Iterator[Callable[[int, int], None]]:
        yield lambda done, total: None

    def run_done(self) -> None:
        return None


@dataclass
class DemoResult:
    """What :func:`run` did: the ``results.json`` document and where it and the report are,
    the summary tables (title, columns, rows) to print, and what was computed or reused."""

    results: dict
    results_path: Path
    report_path: Path
    tables: list[tuple[str, list[str], list[list[str]]]]
    computed: int
    reused: int
    seconds: float


def run(options: DemoOptions, progress: Callable[[int], Progress] | None = None) -> DemoResult:
    """Run (or reuse) every job, write results.json, the figures and report.md.

    ``progress(total_runs)`` makes the :class:`Progress` the runs report to (default: none).
    Each run's outcome is logged on the ``focalkit.demo`` logger. Raises :class:`DemoError`
    when a requested study cannot run here."""
    from .report import write_report

    started = time.perf_counter()
    out_dir = Path(options.out_dir)
    jobs = build_jobs(options)
    env = environment(options.device)
    log.info(
        "%s demo, %d runs (%s), device %s, output %s",
        options.preset,
        len(jobs),
        ", ".join(f"{s} x{options.seeds_for(s)} seeds" for s in options.studies()),
        options.device,
        out_dir.resolve(),
    )

    records: list[dict] = []
    reused = computed = 0
    status: dict[tuple[str, str], list[int]] = {}
    with _NoProgress() if progress is None else progress(len(jobs)) as bars:
        for index, job in enumerate(jobs, start=1):
            path = job.path(out_dir)
            config = job.config(options.device)
            stored = None if options.force else read_record(path)
            counts = status.setdefault((job.study, job.name), [0, 0])
            if stored is not None and stored.get("config") == config:
                records.append(stored)
                reused += 1
                counts[1] += 1
                log.info("[%d/%d] %s: reused %s", index, len(jobs), job.describe(), path)
                bars.run_done()
                continue
            if stored is not None:
                log.info(
                    "[%d/%d] %s: stored config differs, recomputing",
                    index,
                    len(jobs),
                    job.describe(),
                )
            elif path.exists() and not options.force:
                log.info(
                    "[%d/%d] %s: unreadable record, recomputing", index, len(jobs), job.describe()
                )
            with bars.run(f"{job.study} {job.name} s{job.seed}") as step_done:
                record = _call(job, options.device, step_done)
            record = {**record, "name": job.name, "config": config, "versions": env}
            atomic_write_json(path, record)
            records.append(record)
            computed += 1
            counts[0] += 1
            log.info(
                "[%d/%d] %s: %s (%.1f s) -> %s",
                index,
                len(jobs),
                job.describe(),
                _metric_line(record),
                record.get("time_s", float("nan")),
                path,
            )
            bars.run_done()

    results = {
        "focalkit": env["focalkit"],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": ["focalkit", *options.argv],
        "options": {
            "preset": options.preset,
            "seeds": {s: options.seeds_for(s) for s in options.studies()},
            "device": options.device,
            "only": options.only,
            "force": options.force,
        },
        "studies": list(options.studies()),
        "environment": env,
        "focal_curves": focal_curve_data(),
        "runs": records,
    }
    results_path = out_dir / "results.json"
    atomic_write_json(results_path, results)
    report_path = write_report(results, out_dir)
    return DemoResult(
        results=results,
        results_path=results_path,
        report_path=report_path,
        tables=summary_tables(records, status),
        computed=computed,
        reused=reused,
        seconds=time.perf_counter() - started,
    )


def summary_tables(
    records: Sequence[dict], status: dict[tuple[str, str], list[int]] | None = None
) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per study, a table of mean ± std over seeds of its summary metrics, one row per
    configuration; ``status[(study, name)] = [computed, reused]`` adds the reused count."""
    status = status or {}
    tables = []
    for study in STUDIES:
        mine = [r for r in records if r["study"] == study]
        if not mine:
            continue
        metrics = SUMMARY_METRICS[study]
        rows = []
        for name in dict.fromkeys(r["name"] for r in mine):
            runs = [r for r in mine if r["name"] == name]
            cells = []
            for metric in metrics:
                mean, std, n = mean_std([r["metrics"].get(metric) for r in runs])
                cells.append("undefined" if n == 0 else f"{mean:.3f} ± {std:.3f}")
            _done, kept = status.get((study, name), [len(runs), 0])
            seeds = f"{len(runs)}" + (f" ({kept} reused)" if kept else "")
            rows.append([name, *cells, seeds])
        tables.append((f"{study}: mean ± std over seeds", ["run", *metrics, "seeds"], rows))
    return tables
