"""The benchmark suite: ``focalkit bench`` as a script (same options).

    python benchmarks/bench_suite.py [--device auto|cpu|cuda] [--preset cpu-small|gpu]
        [--sizes N[xC] ...] [--dtypes fp32 bf16] [--no-compile] [--json PATH] [--plot PATH]
        [--repeat N] [--resume]

The suite is :mod:`focalkit.bench.suite` (see its docstring for what is timed, the
minimal-bytes formulas and how memory is measured).
"""

import sys

from focalkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
