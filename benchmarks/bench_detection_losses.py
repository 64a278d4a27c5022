"""Loss computation of torchvision's RetinaNet and FCOS, their own against focalkit's.

    python benchmarks/bench_detection_losses.py [--models retinanet fcos] [--batch 2]
        [--size 800 1088] [--classes 91] [--boxes 7] [--repeat 15] [--rounds 5]
        [--device cpu] [--json PATH]

The benchmark is :mod:`focalkit.bench.detection_losses` (see its docstring for the method);
it needs torchvision (``make test-stacks`` builds an environment with it).
"""

import sys

from focalkit.bench.detection_losses import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
