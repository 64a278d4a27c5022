"""One-call use of focalkit's losses in the detectors people train.

* :mod:`focalkit.integrations.torchvision` (``pip install "focalkit[torchvision]"``):
  ``set_losses(model, classification=..., box=...)`` for torchvision's RetinaNet and FCOS.
* :mod:`focalkit.integrations.ultralytics` (``pip install "focalkit[ultralytics]"``):
  ``DetectionLoss`` (a drop-in for ``v8DetectionLoss``) and ``set_losses(yolo, ...)`` for
  Ultralytics YOLO (v8, 11) detection, through Ultralytics' own training loop.

Importing this package, or either module, needs neither stack: the stack is imported when
a function needs it, and a missing or broken install raises an ``ImportError`` that names it
and the extra to install. See docs/integrations.md.
"""

from ._table import LossSpec, LossUnavailableError

__all__ = ["LossSpec", "LossUnavailableError"]
