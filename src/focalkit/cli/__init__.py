"""The ``focalkit`` command line: argument parsing over library calls (:mod:`focalkit.demo`,
:mod:`focalkit.bench`), with the terminal output in :mod:`.console`.

    focalkit demo [--quick | --full] [--out DIR] [--device auto|cpu|cuda] [--seeds N]
                  [--only classification|detection|trees] [--jobs N] [--data-dir DIR]
                  [--force]
    focalkit plot focal-curves [--out FILE]
    focalkit report [--out DIR]
    focalkit bench [--device auto|cpu|cuda] [--preset cpu-small|gpu] [--sizes N[xC] ...]
                   [--dtypes fp32 bf16] [--no-compile] [--json PATH] [--plot PATH] [--repeat N]
                   [--resume]
    focalkit --version

Bad options print one line on stderr and exit with code 2. The sub-commands import what they
need (torch, numpy, matplotlib, rich, ...) only when they run.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import NoReturn

__all__ = ["main"]

PROG = "focalkit"
PRESET_NAMES = ("cpu-small", "gpu")  # focalkit.bench.suite.PRESETS (tests/test_bench.py checks)


class _UsageError(Exception):
    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (no usage block) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.prog, message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive(text: str) -> int:
    """``focalkit bench``'s positive integers (the message quotes the text)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    """``N`` (80 classes) or ``NxC``; N may be written 1e6."""
    match = re.fullmatch(r"\s*([0-9.eE+_]+)\s*(?:[xX]\s*([0-9]+))?\s*", text)
    try:
        numel = int(float(match.group(1))) if match else 0
    except ValueError:
        numel = 0
    classes = int(match.group(2)) if match and match.group(2) else 80
    if numel < 1 or classes < 2 or numel < classes:
        raise argparse.ArgumentTypeError(
            f"expected N or NxC with N >= C >= 2 (logits, classes), got {text!r}"
        )
    return numel, classes


def _version() -> str:
    import focalkit

    return f"{PROG} {focalkit.__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="focalkit: class-imbalance losses for PyTorch, with a reproducible demo.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="run the classification and detection studies and write a report",
        description=(
            "Run Study 1 (long-tailed digit classification), Study 2 (dense detection on "
            "synthetic scenes) and Study 3 (tree crowns in NEON aerial photographs) over "
            "several seeds, every loss trained until its validation yardstick stops improving, "
            "independent runs in parallel processes, one JSON record per run; then write "
            "results.json, figures and report.md. A rerun with the same options reuses the "
            "finished runs whose stored configuration matches."
        ),
    )
    size = demo.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="smallest setting (about a minute on a CPU)"
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="larger setting at full budget, meant for a GPU (adds torchvision's RetinaNet to "
        "the tree-crown study when torchvision imports)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("focalkit-report"),
        metavar="DIR",
        help="output directory (default: ./focalkit-report)",
    )
    demo.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto picks cuda when available (default: auto)",
    )
    demo.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        metavar="N",
        help="seeds per configuration (default: classification 3, detection 1, trees 1; "
        "--quick 2, 1, 1; --full 5, 3, 3)",
    )
    demo.add_argument(
        "--only",
        choices=("classification", "detection", "trees"),
        default=None,
        help="run one study",
    )
    demo.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes for the independent runs, one thread each (default: the "
        "CPUs this process may use); results do not depend on it",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the tree-crown images (the deepforest wheel) are cached "
        "(default: $FOCALKIT_DATA_DIR or ~/.cache/focalkit)",
    )
    demo.add_argument(
        "--force", action="store_true", help="recompute every run, ignoring stored records"
    )

    plot = commands.add_parser("plot", help="draw a figure", description="Draw a figure.")
    figures = plot.add_subparsers(dest="figure", metavar="FIGURE", parser_class=_Parser)
    figures.required = True
    curves = figures.add_parser(
        "focal-curves",
        help="focal loss and its gradient against p_t (Fig. 1 of arXiv 1708.02002)",
        description=(
            "Plot the focal loss and its gradient magnitude with respect to the logit against "
            "p_t for gamma 0, 0.5, 1, 2, 5, computed with focalkit.sigmoid_focal_loss and "
            "autograd."
        ),
    )
    curves.add_argument(
        "--out",
        type=Path,
        default=Path("focal-curves.png"),
        metavar="FILE",
        help="PNG file to write (default: focal-curves.png)",
    )

    report = commands.add_parser(
        "report",
        help="redraw the figures and report.md from an existing results.json",
        description="Redraw the figures and report.md of a demo output directory from its "
        "results.json (no training).",
    )
    report.add_argument(
        "--out",
        type=Path,
        default=Path("focalkit-report"),
        metavar="DIR",
        help="demo output directory holding results.json (default: ./focalkit-report)",
    )
    bench = commands.add_parser(
        "bench",
        help="time focalkit against eager, torch.compile and other libraries",
        description=(
            "Time forward, backward and forward+backward of focalkit's sigmoid focal (torch and, "
            "on CUDA, triton), softmax focal and GHM-C losses against the eager formulations, "
            "torch.compile, torchvision/kornia/MONAI (when installed) and a plain copy of the "
            "logits (the bandwidth ceiling); print a table, write JSON (and a plot)."
        ),
    )
    bench.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto picks cuda when available (default: auto)",
    )
    bench.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default=None,
        help="cpu-small: 1e6 and 4e6 logits, 80 classes, fp32 (default on CPU); "
        "gpu: 1e6 .. 1.28e8 logits (RetinaNet 16 x 100k x 80) and LVIS-like "
        "1203 classes, fp32 and bf16 (default on CUDA)",
    )
    bench.add_argument(
        "--sizes",
        type=_size,
        nargs="+",
        default=None,
        metavar="N[xC]",
        help="logit counts (optionally xCLASSES, default 80); overrides the preset's sizes",
    )
    bench.add_argument(
        "--dtypes",
        choices=("fp32", "bf16"),
        nargs="+",
        default=None,
        help="overrides the preset's dtypes",
    )
    bench.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    bench.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="results file (default: benchmarks/results/suite-DEVICE-PRESET.json)",
    )
    bench.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH",
        help="also draw speed-up and %% of copy bandwidth against size (PNG)",
    )
    bench.add_argument(
        "--repeat",
        type=_positive,
        default=5,
        metavar="N",
        help="timed calls per variant (default 5)",
    )
    bench.add_argument(
        "--resume",
        action="store_true",
        help="keep the cases already in the --json file (written after each "
        "size x dtype, so an interrupted run keeps what it finished) and "
        "measure only the others; the file must come from this machine and "
        "the same versions, --repeat and compile setting",
    )
    return parser


def _resolve_device(requested: str, prog: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise _UsageError(prog, "--device cuda: CUDA is not available on this machine")
    return requested


class _Failure(Exception):
    """A problem reported in one line with exit code 1 (not a usage error)."""


def _demo(args: argparse.Namespace, argv: list[str], console) -> int:
    from focalkit.demo import DemoError, DemoOptions, run

    from .console import RunProgress, log, print_table

    options = DemoOptions(
        preset="quick" if args.quick else "full" if args.full else "default",
        out_dir=args.out,
        device=_resolve_device(args.device, f"{PROG} demo"),
        seeds=args.seeds,
        only=args.only,
        force=args.force,
        jobs=args.jobs,
        data_dir=args.data_dir,
        argv=tuple(argv),
    )
    try:
        result = run(options, progress=lambda total: RunProgress(total, console))
    except DemoError as exc:
        raise _Failure(str(exc)) from exc
    for title, columns, rows in result.tables:
        print_table(title, columns, rows)
    log.info(
        "%d runs computed (%d process%s), %d reused, %.1f s; results: %s",
        result.computed,
        result.jobs,
        "" if result.jobs == 1 else "es",
        result.reused,
        result.seconds,
        result.results_path.resolve(),
    )
    log.info("report: %s", result.report_path.resolve())
    return 0


def _plot(args: argparse.Namespace) -> int:
    from focalkit.demo.focal_curves import focal_curve_data
    from focalkit.demo.plots import plot_focal_curves

    from .console import log

    path = plot_focal_curves(focal_curve_data(), args.out)
    log.info("wrote %s", path.resolve())
    return 0


def _report(args: argparse.Namespace) -> int:
    from focalkit.demo.records import read_record
    from focalkit.demo.report import write_report

    from .console import log

    results = read_record(args.out / "results.json")
    if results is None:
        raise _UsageError(
            f"{PROG} report",
            f"--out {args.out}: no readable results.json there (run focalkit demo)",
        )
    path = write_report(results, args.out)
    log.info("report: %s", path.resolve())
    return 0


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    from focalkit.bench import suite

    prog = f"{PROG} bench"
    device = _resolve_device(args.device, prog)
    opts = suite.suite_options(
        device,
        preset=args.preset,
        sizes=args.sizes,
        dtypes=args.dtypes,
        repeat=args.repeat,
        compile=not args.no_compile,
        command=shlex.join([PROG, *argv]),
    )
    if args.json is not None and args.json.is_dir():
        raise _UsageError(prog, f"--json {args.json}: is a directory")
    json_path = args.json or suite.default_json_path(opts)
    try:
        doc = suite.run_to_file(
            opts, json_path, resume=args.resume, log=lambda msg: print(msg, flush=True)
        )
    except suite.ResumeError as exc:
        raise _UsageError(prog, str(exc)) from None
    print(suite.format_table(doc))
    print(f"wrote {json_path}")
    if args.plot is not None:
        from focalkit.bench.plot import plot_suite

        plot_suite(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``focalkit`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        from .console import setup_logging

        console = setup_logging()
        if args.command == "demo":
            return _demo(args, argv, console)
        if args.command == "plot":
            return _plot(args)
        if args.command == "bench":
            return _bench(args, argv)
        return _report(args)
    except _UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = (
            "add --resume to measure only the rest"
            if "bench" in argv[:1]
            else ("rerun the same command to resume")
        )
        print(f"{PROG}: interrupted; finished runs are saved, {again}", file=sys.stderr)
        return 130
    except _Failure as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
