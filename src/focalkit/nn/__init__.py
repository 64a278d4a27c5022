"""Thin ``nn.Module`` wrappers over :mod:`focalkit.functional`."""

from .box import CIoULoss, DIoULoss, EIoULoss, FocalEIoULoss, FocalL1Loss, GIoULoss, IoULoss
from .focal import SigmoidFocalLoss, SoftmaxFocalLoss
from .ghm import GHMCLoss, GHMRLoss

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
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
]
