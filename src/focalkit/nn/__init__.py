"""Thin ``nn.Module`` wrappers over :mod:`focalkit.functional`."""

from .focal import SigmoidFocalLoss, SoftmaxFocalLoss

__all__ = ["SigmoidFocalLoss", "SoftmaxFocalLoss"]
