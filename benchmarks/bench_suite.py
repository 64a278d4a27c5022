"""The benchmark suite: ``focalkit bench`` as a script (same options).

    python benchmarks/bench_suite.py [--device auto|cpu|cuda] [--preset cpu-small|gpu]
        [--sizes N[xC] ...] [--dtypes fp32 bf16] [--no-compile] [--json PATH] [--plot PATH]
        [--repeat N]

The logic lives in ``focalkit.cli.bench_suite`` (installed with the package); see its docstring
for what is timed, the minimal-bytes formulas and how memory is measured.
"""

from __future__ import annotations

import sys

from focalkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
