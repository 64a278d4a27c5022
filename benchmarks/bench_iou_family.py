"""Forward+backward time of focalkit's YOLO-era IoU losses against the plain eager formula and
the YOLO forks' copy-paste ``bbox_iou``.

    python benchmarks/bench_iou_family.py [--repeat 9] [--boxes 100000] [--device cpu]
                                          [--threads N] [--json PATH]

The benchmark is :mod:`focalkit.bench.iou_family` (see its docstring for the method).
"""

import sys

from focalkit.bench.iou_family import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
