"""The demo as a library call: :func:`run` runs the studies (seeded, one JSON record per run,
resumable, independent runs in parallel processes), then writes ``results.json``, the figures
and ``report.md``. ``focalkit demo`` parses its options into :class:`DemoOptions`, calls
:func:`run` with its progress display and prints the summary tables of the returned
:class:`DemoResult`.

Resume: a run's record ``runs/<study>/<name>-seed<k>.json`` is reused when its stored
``config`` (study, loss(es), seed, setting, device) equals the requested one; a missing,
corrupt or differently configured record is recomputed; ``force=True`` recomputes all.

Parallel runs: with ``jobs > 1`` the runs still to compute go to a pool of that many worker
processes (``spawn``ed, so nothing of the parent's thread pools is inherited). Every run uses
one intra-op thread, in a worker as in the parent, so a record is bit-for-bit the one a serial
run (``jobs=1``, everything in this process) writes. A worker writes its record atomically as
soon as its run finishes, so an interrupted demo keeps every finished run; workers ignore
SIGINT and the parent, on Ctrl-C, tells them to abandon their runs at the next step and waits
for them. Progress comes back over a queue to the one display of the parent.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import multiprocessing
import os
import queue as queue_module
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
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
    "default_jobs",
    "run",
    "summary_tables",
]

log = logging.getLogger("focalkit.demo")

STUDIES = ("classification", "detection", "trees")
# seeds per study and preset: the default fits its time budget on a 2-core CPU (README)
DEFAULT_SEEDS = {
    "quick": {"classification": 2, "detection": 1, "trees": 1},
    "default": {"classification": 3, "detection": 1, "trees": 1},
    "full": {"classification": 5, "detection": 3, "trees": 3},
}
SUMMARY_METRICS = {
    "classification": ("balanced_accuracy", "macro_f1", "worst_class_recall", "ece", "nll"),
    "detection": ("AP", "AP50", "AP75", "AP_small"),
    "trees": ("AP", "AP50", "AP75"),
}
# longest first, so the pool's last minutes are not one long run alone
_SUBMIT_ORDER = {"trees": 0, "detection": 1, "classification": 2}
_PROGRESS_EVERY_S = 0.25


class DemoError(RuntimeError):
    """A problem the command line reports in one line (exit code 1)."""


@dataclass(frozen=True)
class DemoOptions:
    preset: str = "default"  # quick | default | full
    out_dir: Path = Path("focalkit-report")
    device: str = "cpu"  # resolved: cpu | cuda
    seeds: int | None = None  # None: DEFAULT_SEEDS per study
    only: str | None = None  # one of STUDIES | None (all)
    force: bool = False
    jobs: int | None = None  # worker processes; None: default_jobs()
    data_dir: Path | None = None  # the real-image data's cache (None: FOCALKIT_DATA_DIR, ~/.cache)
    argv: tuple[str, ...] = ()

    def studies(self) -> tuple[str, ...]:
        return STUDIES if self.only is None else (self.only,)

    def seeds_for(self, study: str) -> int:
        return DEFAULT_SEEDS[self.preset][study] if self.seeds is None else self.seeds


def default_jobs() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity`` where it exists)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Job:
    """One seeded run: which study function to call with what, and the configuration its
    record must match. Picklable (it travels to a worker process)."""

    study: str
    name: str
    seed: int
    params: dict[str, str]
    setting: Any
    extra: dict[str, str] = field(default_factory=dict)  # paths the study function needs

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


def _trees_module():
    _detection_module()
    from .detection import trees

    return trees


def build_jobs(options: DemoOptions) -> list[Job]:
    """Every run the options ask for, in study order (classification, detection, trees)."""
    jobs: list[Job] = []
    if "classification" in options.studies():
        setting = classification.classification_setting(options.preset)
        for loss in classification.CLASSIFICATION_LOSSES:
            for seed in range(options.seeds_for("classification")):
                jobs.append(Job("classification", loss, seed, {"loss": loss}, setting))
    workdir = str(Path(options.out_dir) / "detection")
    if "detection" in options.studies():
        detection = _detection_module()
        setting = detection.detection_setting(options.preset)
        for cls_loss, box_loss in detection.detection_runs():
            for seed in range(options.seeds_for("detection")):
                jobs.append(
                    Job(
                        "detection",
                        f"{cls_loss}-{box_loss}",
                        seed,
                        {"cls_loss": cls_loss, "box_loss": box_loss},
                        setting,
                        {"workdir": workdir},
                    )
                )
    if "trees" in options.studies():
        trees = _trees_module()
        setting = trees.trees_setting(options.preset)
        wheel = _tree_data(trees, options)
        for detector, cls_loss, box_loss in trees.trees_runs(setting):
            for seed in range(options.seeds_for("trees")):
                jobs.append(
                    Job(
                        "trees",
                        trees.run_name(detector, cls_loss, box_loss),
                        seed,
                        {"detector": detector, "cls_loss": cls_loss, "box_loss": box_loss},
                        setting,
                        {"workdir": str(Path(options.out_dir) / "trees"), "wheel": str(wheel)},
                    )
                )
    return jobs


def _tree_data(trees: Any, options: DemoOptions) -> Path:
    from .detection import neon

    try:
        return neon.fetch_wheel(options.data_dir)
    except neon.DataUnavailable as exc:
        raise DemoError(
            f"the tree-crown images are not available ({exc}); run with network access to "
            "the package index once, or leave the real-image study out with --only"
        ) from exc


def execute(job: Job, device: str, progress: Callable[[int, int], None]) -> dict:
    """Run one job's study function (looked up at call time) and return its record."""
    if job.study == "classification":
        return classification.run_classification(
            job.params["loss"], job.seed, job.setting, device=device, progress=progress
        )
    if job.study == "detection":
        detection = _detection_module()
        return detection.run_detection(
            job.params["cls_loss"],
            job.params["box_loss"],
            job.seed,
            job.setting,
            device=device,
            workdir=Path(job.extra["workdir"]),
            progress=progress,
        )
    if job.study == "trees":
        trees = _trees_module()
        return trees.run_trees(
            job.params["cls_loss"],
            job.params["box_loss"],
            job.seed,
            job.setting,
            detector=job.params["detector"],
            device=device,
            wheel=Path(job.extra["wheel"]),
            workdir=Path(job.extra["workdir"]),
            progress=progress,
        )
    raise ValueError(f"study: expected one of {STUDIES}, got {job.study!r}")


def _finish(job: Job, record: dict, config: dict, env: dict, out_dir: Path) -> dict:
    """The stored form of a run's record, written atomically."""
    record = {**record, "name": job.name, "config": config, "versions": env}
    atomic_write_json(job.path(out_dir), record)
    return record


def _metric_line(record: dict) -> str:
    names = SUMMARY_METRICS[record["study"]][:2]
    line = ", ".join(f"{k} {record['metrics'][k]:.3f}" for k in names if k in record["metrics"])
    if "steps" in record:
        line += f", {record['steps']} steps"
    return line


class Progress(Protocol):
    """What :func:`run` reports progress to (``focalkit demo`` passes its display): a context
    manager around all runs; ``start(key, description)``, ``update(key, done, total)`` and
    ``stop(key)`` around each computed run (several at once when runs are parallel); and
    ``run_done()`` after each run, computed or reused."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...

    def start(self, key: int, description: str) -> None: ...

    def update(self, key: int, done: int, total: int) -> None: ...

    def stop(self, key: int) -> None: ...

    def run_done(self) -> None: ...


class _NoProgress:
    """The default :class:`Progress`: reports nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, key: int, description: str) -> None:
        return None

    def update(self, key: int, done: int, total: int) -> None:
        return None

    def stop(self, key: int) -> None:
        return None

    def run_done(self) -> None:
        return None


@contextmanager
def _one_run(bars: Progress, key: int, description: str) -> Iterator[Callable[[int, int], None]]:
    bars.start(key, description)
    try:
        yield lambda done, total: bars.update(key, done, total)
    finally:
        bars.stop(key)


# --------------------------------------------------------------------------------------------
# worker processes
# --------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


class _Abandoned(Exception):
    """Raised inside a worker's run when the parent asked every worker to stop."""


def _worker_init(progress_queue: Any, stop_event: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; see _run_parallel
    import torch

    torch.set_num_threads(1)
    _WORKER["queue"] = progress_queue
    _WORKER["stop"] = stop_event


def _worker_task(key: int, job: Job, device: str, config: dict, env: dict, out_dir: str) -> dict:
    progress_queue, stop_event = _WORKER["queue"], _WORKER["stop"]
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if stop_event.is_set():
            raise _Abandoned
        now = time.monotonic()
        if done >= total or now - last[0] >= _PROGRESS_EVERY_S:
            last[0] = now
            progress_queue.put((key, done, total))

    if stop_event.is_set():
        raise _Abandoned
    progress_queue.put((key, 0, 0))  # started
    record = execute(job, device, progress)
    return _finish(job, record, config, env, Path(out_dir))


def _pump(
    progress_queue: Any,
    bars: Progress,
    describe: dict[int, str],
    finished: set[int],
    done: threading.Event,
) -> None:
    """Forward the workers' progress messages to the display until ``done`` is set (a message
    that arrives after its run finished is dropped)."""
    started: set[int] = set()
    while True:
        try:
            key, steps, total = progress_queue.get(timeout=0.1)
        except queue_module.Empty:
            if done.is_set():
                return
            continue
        except (EOFError, OSError):
            return
        if key in finished:
            continue
        if key not in started:
            started.add(key)
            bars.start(key, describe[key])
        if total:
            bars.update(key, steps, total)


def _run_parallel(
    pending: list[tuple[int, Job, dict]],
    options: DemoOptions,
    env: dict,
    bars: Progress,
    workers: int,
    on_record: Callable[[int, Job, dict], None],
) -> None:
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    stop_event = context.Event()
    describe = {key: f"{job.study} {job.name} s{job.seed}" for key, job, _ in pending}
    pumped = threading.Event()
    finished_keys: set[int] = set()
    pump = threading.Thread(
        target=_pump,
        args=(progress_queue, bars, describe, finished_keys, pumped),
        daemon=True,
    )
    pump.start()
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_worker_init,
        initargs=(progress_queue, stop_event),
    )
    futures: dict[Future, tuple[int, Job]] = {}
    try:
        order = sorted(pending, key=lambda item: (_SUBMIT_ORDER.get(item[1].study, 9), item[0]))
        for key, job, config in order:
            future = pool.submit(
                _worker_task, key, job, options.device, config, env, str(options.out_dir)
            )
            futures[future] = (key, job)
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                key, job = futures[future]
                record = future.result()  # a run's exception stops the demo here
                finished_keys.add(key)
                bars.stop(key)
                on_record(key, job, record)
    except BaseException:
        stop_event.set()  # running runs stop at their next step; queued ones never start
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        pumped.set()
        pump.join()
        for key, _job in futures.values():
            finished_keys.add(key)
            bars.stop(key)
        progress_queue.close()


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


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
    jobs: int = 1


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
    env["torch_threads"] = "1"  # every run uses one intra-op thread (see the module doc)

    records: dict[int, dict] = {}
    status: dict[tuple[str, str], list[int]] = {}
    pending: list[tuple[int, Job, dict]] = []
    reused = computed = 0
    for index, job in enumerate(jobs):
        config = job.config(options.device)
        path = job.path(out_dir)
        stored = None if options.force else read_record(path)
        counts = status.setdefault((job.study, job.name), [0, 0])
        if stored is not None and stored.get("config") == config:
            records[index] = stored
            counts[1] += 1
            reused += 1
            continue
        if stored is not None:
            log.info("%s: stored config differs, recomputing", job.describe())
        elif path.exists() and not options.force:
            log.info("%s: unreadable record, recomputing", job.describe())
        pending.append((index, job, config))

    workers = max(1, min(options.jobs or default_jobs(), len(pending)))
    if options.device != "cpu":
        workers = 1  # one accelerator: runs share it better one after the other
    log.info(
        "%s demo, %d runs (%s), %d to compute with %d process%s, %d reused; device %s, output %s",
        options.preset,
        len(jobs),
        ", ".join(f"{s} x{options.seeds_for(s)} seeds" for s in options.studies()),
        len(pending),
        workers,
        "" if workers == 1 else "es",
        reused,
        options.device,
        out_dir.resolve(),
    )

    def on_record(index: int, job: Job, record: dict) -> None:
        nonlocal computed
        records[index] = record
        computed += 1
        status[(job.study, job.name)][0] += 1
        log.info(
            "[%d/%d] %s: %s (%.1f s) -> %s",
            computed,
            len(pending),
            job.describe(),
            _metric_line(record),
            record.get("time_s", float("nan")),
            job.path(out_dir),
        )
        bars.run_done()

    with _NoProgress() if progress is None else progress(len(jobs)) as bars:
        for _ in range(reused):
            bars.run_done()
        if workers == 1:
            for index, job, config in pending:
                with _one_run(bars, index, f"{job.study} {job.name} s{job.seed}") as step_done:
                    record = execute(job, options.device, step_done)
                on_record(index, job, _finish(job, record, config, env, out_dir))
        else:
            _run_parallel(pending, options, env, bars, workers, on_record)

    ordered = [records[i] for i in range(len(jobs))]
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
            "jobs": workers,
        },
        "studies": list(options.studies()),
        "environment": env,
        "focal_curves": focal_curve_data(),
        "runs": ordered,
    }
    wheels = [job.extra["wheel"] for job in jobs if job.study == "trees"]
    if wheels:
        from .detection import neon

        results["tree_data"] = neon.provenance(Path(wheels[0]))
    results_path = out_dir / "results.json"
    atomic_write_json(results_path, results)
    report_path = write_report(results, out_dir)
    return DemoResult(
        results=results,
        results_path=results_path,
        report_path=report_path,
        tables=summary_tables(ordered, status),
        computed=computed,
        reused=reused,
        seconds=time.perf_counter() - started,
        jobs=workers,
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
            steps = [r["steps"] for r in runs if "steps" in r]
            cells.append(f"{sum(steps) / len(steps):.0f}" if steps else "-")
            _done, kept = status.get((study, name), [len(runs), 0])
            seeds = f"{len(runs)}" + (f" ({kept} reused)" if kept else "")
            rows.append([name, *cells, seeds])
        tables.append(
            (f"{study}: mean ± std over seeds", ["run", *metrics, "steps", "seeds"], rows)
        )
    return tables
