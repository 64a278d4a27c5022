"""Render the README's benchmark tables from the JSON under benchmarks/results/.

    python benchmarks/render_readme.py          # rewrite the block between the bench markers
    python benchmarks/render_readme.py --check  # exit 1 if the README is out of date

The README never carries a typed-in number: this script is the only writer of that block.
The rendering is :mod:`focalkit.bench.readme`.
"""

import sys
from pathlib import Path

from focalkit.bench.readme import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], root=Path(__file__).resolve().parents[1]))
