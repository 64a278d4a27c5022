"""focalkit: exact, numerically safe and fast class-imbalance and hard-example losses.

>>> import focalkit as fk
>>> loss = fk.sigmoid_focal_loss(logits, labels, normalizer=num_pos)  # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

# --- focal-loss family ---------------------------------------------------------------------
from .functional.focal import (
    class_balanced_weights,
    prior_bias,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from .nn.focal import SigmoidFocalLoss, SoftmaxFocalLoss

# isort: split
# --- the generalized focal family: QFL, VFL, DFL, ASL, Poly-1 --------------------------------
from .functional.asymmetric import asymmetric_loss
from .functional.gfl import distribution_focal_loss, quality_focal_loss, varifocal_loss
from .functional.poly import poly1_cross_entropy, poly1_focal_loss
from .nn.asymmetric import AsymmetricLoss
from .nn.gfl import DistributionFocalLoss, QualityFocalLoss, VarifocalLoss
from .nn.poly import Poly1CrossEntropyLoss, Poly1FocalLoss

# isort: split
# --- GHM -----------------------------------------------------------------------------------
from .functional.ghm import ghm_c_loss, ghm_r_loss
from .nn.ghm import GHMCLoss, GHMRLoss

# isort: split
# --- box losses ----------------------------------------------------------------------------
from .functional.box import (
    box_convert,
    ciou_loss,
    diou_loss,
    eiou_loss,
    focal_eiou_loss,
    focal_l1_loss,
    giou_loss,
    iou_loss,
)
from .nn.box import CIoULoss, DIoULoss, EIoULoss, FocalEIoULoss, FocalL1Loss, GIoULoss, IoULoss

# isort: split
# --- the IoU losses of YOLO-style detectors (Alpha-, Inner-, Focaler-IoU are keywords) -----
from .functional.iou_family import (
    mpdiou_loss,
    shape_iou_loss,
    siou_loss,
    wiou_loss,
    wiou_momentum,
)
from .nn.iou_family import MPDIoULoss, ShapeIoULoss, SIoULoss, WIoULoss

# isort: split
# --- multi-process helpers -----------------------------------------------------------------
from . import distributed

try:
    __version__ = version("focalkit")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "AsymmetricLoss",
    "CIoULoss",
    "DIoULoss",
    "DistributionFocalLoss",
    "EIoULoss",
    "FocalEIoULoss",
    "FocalL1Loss",
    "GHMCLoss",
    "GHMRLoss",
    "GIoULoss",
    "IoULoss",
    "MPDIoULoss",
    "Poly1CrossEntropyLoss",
    "Poly1FocalLoss",
    "QualityFocalLoss",
    "SIoULoss",
    "ShapeIoULoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "VarifocalLoss",
    "WIoULoss",
    "__version__",
    "asymmetric_loss",
    "box_convert",
    "ciou_loss",
    "class_balanced_weights",
    "diou_loss",
    "distributed",
    "distribution_focal_loss",
    "eiou_loss",
    "focal_eiou_loss",
    "focal_l1_loss",
    "ghm_c_loss",
    "ghm_r_loss",
    "giou_loss",
    "iou_loss",
    "mpdiou_loss",
    "poly1_cross_entropy",
    "poly1_focal_loss",
    "prior_bias",
    "quality_focal_loss",
    "shape_iou_loss",
    "sigmoid_focal_loss",
    "siou_loss",
    "softmax_focal_loss",
    "varifocal_loss",
    "wiou_loss",
    "wiou_momentum",
]
