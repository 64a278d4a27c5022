"""Thin ``nn.Module`` wrappers over :mod:`focalkit.functional`."""

from .asymmetric import AsymmetricLoss
from .box import CIoULoss, DIoULoss, EIoULoss, FocalEIoULoss, FocalL1Loss, GIoULoss, IoULoss
from .focal import SigmoidFocalLoss, SoftmaxFocalLoss
from .gfl import DistributionFocalLoss, QualityFocalLoss, VarifocalLoss
from .ghm import GHMCLoss, GHMRLoss
from .iou_family import MPDIoULoss, ShapeIoULoss, SIoULoss, WIoULoss
from .poly import Poly1CrossEntropyLoss, Poly1FocalLoss

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
]
