"""``focalkit bench``: the benchmark suite of :mod:`focalkit.cli.bench_suite` from the CLI."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]

PRESET_NAMES = ("cpu-small", "gpu")


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    bench = subparsers.add_parser(
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
    return bench


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    import torch

    from focalkit.demo.records import atomic_write_json

    from . import _UsageError
    from .bench_suite import PRESETS, SuiteOptions, format_table, plot_suite, run_suite

    prog = "focalkit bench"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _UsageError(prog, "--device cuda: CUDA is not available on this machine")
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    preset = args.preset or ("gpu" if device == "cuda" else "cpu-small")
    sizes = args.sizes or PRESETS[preset]["sizes"]
    name = preset if args.sizes is None else "custom"
    dtypes = args.dtypes or PRESETS[preset]["dtypes"]
    if args.json is not None and args.json.is_dir():
        raise _UsageError(prog, f"--json {args.json}: is a directory")
    json_path = args.json or Path("benchmarks/results") / f"suite-{device}-{name}.json"
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = SuiteOptions(
        device=device,
        preset=name,
        sizes=list(sizes),
        dtypes=list(dtypes),
        repeat=args.repeat,
        compile=not args.no_compile,
        command=shlex.join(["focalkit", *argv]),
    )
    previous = None
    if args.resume and json_path.exists():
        previous = _resumable(prog, json_path, opts)
    doc = run_suite(
        opts,
        log=lambda msg: print(msg, flush=True),
        previous=previous,
        on_case=lambda partial: atomic_write_json(json_path, partial),
    )
    print(format_table(doc))
    atomic_write_json(json_path, doc)
    print(f"wrote {json_path}")
    if args.plot is not None:
        plot_suite(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0


# what must match for rows of two runs to sit in one table (ratios are within a case, but
# the cases of one table should come from one machine and one software stack)
_RESUME_KEYS = (
    "focalkit",
    "torch",
    "triton",
    "torchvision",
    "kornia",
    "monai",
    "device_name",
    "threads",
)


def _resumable(prog: str, path: Path, opts) -> dict:
    """The document at ``path`` if ``opts`` can extend it, else a usage error saying why."""
    import torch

    from focalkit.demo.records import read_record

    from . import _UsageError
    from .bench_suite import environment

    doc = read_record(path)
    needed = (
        "benchmark",
        "environment",
        "repeat",
        "compile",
        "sizes",
        "dtypes",
        "skipped",
        "done",
        "rows",
    )
    if doc is None or doc.get("benchmark") != "suite" or any(k not in doc for k in needed):
        raise _UsageError(
            prog,
            f"--resume: {path} is not a results file of this suite "
            "(written after each case since --resume exists)",
        )
    here = environment(torch.device(opts.device))
    for key, found, now in (
        [("device", doc["environment"].get("device"), here["device"])]
        + [(k, doc["environment"].get(k), here[k]) for k in _RESUME_KEYS]
        + [("repeat", doc["repeat"], opts.repeat), ("compile", doc["compile"], opts.compile)]
    ):
        if found != now:
            raise _UsageError(prog, f"--resume: {path} has {key} {found!r}, this run {now!r}")
    return doc
