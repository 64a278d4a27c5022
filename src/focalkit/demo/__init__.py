"""The demo: Study 1 (long-tailed digit classification) and Study 2 (synthetic detection), their
run records, metrics, figures and report, as library calls ``focalkit demo`` / ``plot`` /
``report`` make.

    from focalkit.demo import DemoOptions, run
    result = run(DemoOptions(preset="quick", out_dir=Path("out")))

Modules: :mod:`.runner` (:func:`run`: the jobs, resume, ``results.json``), :mod:`.classification`
(Study 1), :mod:`.detection` (Study 2: ``data``, ``model``, ``boxes``, ``evaluate``, ``study``),
:mod:`.records` (atomic JSON writes, tolerant reads, environment), :mod:`.metrics`,
:mod:`.report` (``report.md``), :mod:`.plots` (matplotlib figures) and :mod:`.focal_curves`.

Needs the ``demo`` extra (numpy, matplotlib, scikit-learn, pycocotools). ``import focalkit``
does not import this package, and this ``__init__`` imports nothing heavy: the names below are
loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import DemoError, DemoOptions, DemoResult, run

__all__ = ["DemoError", "DemoOptions", "DemoResult", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".runner", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
