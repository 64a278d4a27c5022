"""Benchmarks of focalkit against eager PyTorch, ``torch.compile`` and other libraries.

* :mod:`.harness`: the one timing (median of interleaved repeats, CUDA synchronised) and
  peak-memory (``VmHWM`` / ``max_memory_allocated``, in a child process on CPU) harness and
  the environment record;
* :mod:`.suite`: the suite behind ``focalkit bench`` (every size x dtype x mode, resumable
  results file);
* :mod:`.focal_cpu`, :mod:`.ghm_box`, :mod:`.iou_family`: the named benchmarks behind
  ``benchmarks/bench_focal_cpu.py``, ``benchmarks/bench_ghm_box.py`` and
  ``benchmarks/bench_iou_family.py``;
* :mod:`.baselines`: the reference implementations timed against focalkit;
* :mod:`.plot`: the suite's figure (matplotlib); :mod:`.readme`: the README tables rendered
  from the results files.

``import focalkit`` does not import this package; this ``__init__`` imports nothing.
"""

from __future__ import annotations

__all__ = ["torch_ops_backend"]


def torch_ops_backend(device_type: str) -> str:
    """The backend of the suite's focalkit rows that run PyTorch ops (the "(triton)" rows are
    added where "auto" picks triton): the chunked fast path on a CPU (what "auto" takes
    there), the plain formula elsewhere. The rows are labelled with it."""
    return "chunked" if device_type == "cpu" else "torch"
