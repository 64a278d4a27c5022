"""Terminal output of the command line: logging, progress bars with ETA (rich), plain log lines
instead of bars when stderr is not a terminal (or ``CI`` is set), and the summary table.

The handler goes on the ``focalkit`` logger, so the ``focalkit.cli`` lines and those the library
code of :mod:`focalkit.demo` logs on ``focalkit.demo`` come out the same way."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["RunProgress", "interactive", "log", "print_table", "setup_logging"]

log = logging.getLogger("focalkit.cli")
_ROOT = logging.getLogger("focalkit")

_HANDLER_FLAG = "_focalkit_cli_handler"


def interactive() -> bool:
    """Live progress bars only on a real terminal outside CI."""
    if os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    return sys.stderr.isatty()


def _stderr_console():
    from rich.console import Console

    return Console(file=sys.stderr, stderr=True)


def setup_logging(level: int = logging.INFO):
    """(Re)install the one handler of the ``focalkit`` logger on the current stderr and
    return the rich console progress bars must share (``None`` when not interactive)."""
    for old in list(_ROOT.handlers):
        if getattr(old, _HANDLER_FLAG, False):
            _ROOT.removeHandler(old)
    console = None
    handler: logging.Handler
    if interactive():
        from rich.logging import RichHandler

        console = _stderr_console()
        handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("focalkit: %(message)s"))
    setattr(handler, _HANDLER_FLAG, True)
    _ROOT.addHandler(handler)
    _ROOT.setLevel(level)
    _ROOT.propagate = False
    return console


def _format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, sec = divmod(seconds, 60)
    return (
        f"{minutes}:{sec:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{sec:02d}"
    )


class RunProgress:
    """An overall bar over the runs and one bar per run in progress (several when runs are
    parallel), each with its ETA, in one live display.

    Without a terminal the bars are off; a run longer than ``log_every_s`` logs a line with its
    step count and ETA every ``log_every_s`` seconds instead. Safe to call from a thread other
    than the one that entered it (the parallel runner's progress pump).
    """

    def __init__(self, total_runs: int, console=None, log_every_s: float = 30.0) -> None:
        self.console = console
        self.total_runs = total_runs
        self.log_every_s = log_every_s
        self._progress: Any = None  # a rich Progress while the display is live
        self._overall: Any = None
        self._tasks: dict[int, Any] = {}
        self._plain: dict[int, list] = {}  # key -> [description, start, last log time]
        self._lock = threading.Lock()

    def __enter__(self) -> RunProgress:
        if self.console is not None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
            self._overall = self._progress.add_task("all runs", total=self.total_runs)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def run_done(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._overall)

    def start(self, key: int, description: str) -> None:
        with self._lock:
            if self._progress is not None:
                if key not in self._tasks:
                    self._tasks[key] = self._progress.add_task(description, total=None)
            else:
                now = time.perf_counter()
                self._plain[key] = [description, now, now]

    def update(self, key: int, done: int, total: int) -> None:
        with self._lock:
            if self._progress is not None:
                task = self._tasks.get(key)
                if task is not None:
                    self._progress.update(task, completed=done, total=total)
                return
            state = self._plain.get(key)
            if state is None or done <= 0:
                return
            description, start, last = state
            now = time.perf_counter()
            if now - last < self.log_every_s:
                return
            state[2] = now
            eta = (now - start) / done * (total - done)
        log.info("  %s: step %d/%d, ETA %s", description, done, total, _format_seconds(eta))

    def stop(self, key: int) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
            if task is not None and self._progress is not None:
                self._progress.remove_task(task)
            self._plain.pop(key, None)

    @contextmanager
    def run(self, description: str, key: int = -1) -> Iterator[Callable[[int, int], None]]:
        """A ``progress(done, total)`` callback for one run."""
        self.start(key, description)
        try:
            yield lambda done, total: self.update(key, done, total)
        finally:
            self.stop(key)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    width = None if sys.stdout.isatty() else max(100, len(columns) * 18)  # pipes: no wrapping
    Console(file=sys.stdout, width=width).print(table)
