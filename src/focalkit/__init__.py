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

try:
    __version__ = version("focalkit")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "__version__",
    "class_balanced_weights",
    "prior_bias",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
