"""Per-element relative error of BCE in float32 against float64, for every implementation.

    python benchmarks/bce_precision.py [--points 2001] [--json PATH]

The measurement is :mod:`focalkit.bench.precision` (see its docstring).
"""

import sys

from focalkit.bench.precision import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
