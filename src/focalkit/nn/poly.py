"""Module forms of Poly-1 cross-entropy and Poly-1 focal loss: they store the hyperparameters
and make one call into :mod:`focalkit.functional.poly`."""

from __future__ import annotations

from torch import Tensor

from .._checks import check_label_smoothing, check_poly1_focal, check_poly_epsilon
from ..functional.focal import Alpha
from ..functional.poly import poly1_cross_entropy, poly1_focal_loss
from ._base import LabelLossModule, LossModule

__all__ = ["Poly1CrossEntropyLoss", "Poly1FocalLoss"]


class Poly1CrossEntropyLoss(LossModule):
    """Module form of :func:`focalkit.poly1_cross_entropy` (same keywords and defaults), a
    drop-in for ``torch.nn.CrossEntropyLoss``: the per-class ``weight`` is a buffer in the
    ``state_dict``; ``forward(logits, targets, *, weight=None)`` overrides it for one call.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.Poly1CrossEntropyLoss(epsilon=1.0)
        >>> crit(torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([0]))
        tensor(2.2331)
    """

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        validate: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            loss="poly1_cross_entropy", weight=weight, reduction=reduction, backend=backend
        )
        self.epsilon = check_poly_epsilon(epsilon)
        self.ignore_index = ignore_index
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.validate = validate

    def forward(self, logits: Tensor, targets: Tensor, *, weight: Tensor | None = None) -> Tensor:
        return poly1_cross_entropy(
            logits,
            targets,
            epsilon=self.epsilon,
            weight=self.call_weight(weight),
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            validate=self.validate,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, label_smoothing={self.label_smoothing}, "
            f"reduction={self.reduction!r}"
        )


class Poly1FocalLoss(LabelLossModule):
    """Module form of :func:`focalkit.poly1_focal_loss` (same keywords and defaults; a
    per-class ``alpha`` is a buffer). ``forward(logits, targets, *, weight=None,
    normalizer=None)`` overrides the constructor's ``weight`` and ``normalizer`` for one call.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.Poly1FocalLoss(epsilon=1.0, reduction="sum")
        >>> crit(torch.tensor([-2.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 1.0]))
        tensor(0.1715)
    """

    alpha: Alpha

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        alpha: Alpha = 0.25,
        gamma: float = 2.0,
        weight: Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            loss="poly1_focal_loss",
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        self.epsilon, self.gamma = check_poly1_focal(epsilon, gamma)
        self.store("alpha", alpha)

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return poly1_focal_loss(
            logits,
            targets,
            epsilon=self.epsilon,
            alpha=self.alpha,
            gamma=self.gamma,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, alpha={self.alpha!r}, gamma={self.gamma}, "
            f"reduction={self.reduction!r}"
        )
