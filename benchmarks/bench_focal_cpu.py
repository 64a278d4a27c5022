"""Forward+backward time and peak memory of ``focalkit.sigmoid_focal_loss`` against the plain
eager formula of SPEC.md section 1 (torchvision's ``sigmoid_focal_loss``).

    python benchmarks/bench_focal_cpu.py [--numel 4000000] [--classes 80] [--repeat 7] [--json PATH]

The benchmark is :mod:`focalkit.bench.focal_cpu` (see its docstring for the method).
"""

import sys

from focalkit.bench.focal_cpu import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
