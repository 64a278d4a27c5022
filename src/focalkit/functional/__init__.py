"""The losses as functions (one family a file); Modules in :mod:`focalkit.nn` wrap these."""

from .asymmetric import asymmetric_loss
from .box import (
    box_convert,
    ciou_loss,
    diou_loss,
    eiou_loss,
    focal_eiou_loss,
    focal_l1_loss,
    giou_loss,
    iou_loss,
)
from .focal import class_balanced_weights, prior_bias, sigmoid_focal_loss, softmax_focal_loss
from .gfl import distribution_focal_loss, quality_focal_loss, varifocal_loss
from .ghm import ghm_c_loss, ghm_r_loss
from .iou_family import mpdiou_loss, shape_iou_loss, siou_loss, wiou_loss, wiou_momentum
from .poly import poly1_cross_entropy, poly1_focal_loss

__all__ = [
    "asymmetric_loss",
    "box_convert",
    "ciou_loss",
    "class_balanced_weights",
    "diou_loss",
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
