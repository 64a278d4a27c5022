"""Thin ``nn.Module`` wrappers over :mod:`focalkit.functional`."""

from .box import CIoULoss, DIoULoss, EIoULoss, FocalEIoULoss, FocalL1Loss, GIoULoss, IoULoss
from .focal import SigmoidFocalLoss, SoftmaxFocalLoss
from .ghm import GHMCLoss, GHMRLoss
from .iou_family import MPDIoULoss, ShapeIoULoss, SIoULoss, WIoULoss

__all__ = [
    "CIoULoss",
    "DIoULoss",
    "EIoULoss",
    "FocalEIoULoss",
    "FocalL1Loss",
    "GHMCLoss",
    "GHMRLoss",
    "GIoULoss",
    "IoULoss",
    "MPDIoULoss",
    "SIoULoss",
    "ShapeIoULoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "WIoULoss",
]
