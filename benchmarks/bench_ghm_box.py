"""Forward+backward time of focalkit's GHM and box losses against their plain formulations.

    python benchmarks/bench_ghm_box.py [--repeat 5] [--ghm-sizes 1000000 10000000]
                                       [--boxes 100000] [--device cpu] [--json PATH]

The benchmark is :mod:`focalkit.bench.ghm_box` (see its docstring for the method).
"""

import sys

from focalkit.bench.ghm_box import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
