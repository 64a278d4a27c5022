"""``python -m focalkit.bench --peak-child TARGET SPEC``: the child process of
:func:`focalkit.bench.harness.peak_in_child`. Anything else is ``focalkit bench ARGS``."""

from __future__ import annotations

import sys

if len(sys.argv) == 4 and sys.argv[1] == "--peak-child":
    from focalkit.bench.harness import peak_child_main

    raise SystemExit(peak_child_main(sys.argv[2], sys.argv[3]))

from focalkit.cli import main

raise SystemExit(main(["bench", *sys.argv[1:]]))
