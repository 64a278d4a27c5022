"""The losses as functions (one family a file); Modules in :mod:`focalkit.nn` wrap these."""

from .focal import class_balanced_weights, prior_bias, sigmoid_focal_loss, softmax_focal_loss

__all__ = [
    "class_balanced_weights",
    "prior_bias",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
