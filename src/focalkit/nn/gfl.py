"""Module forms of Quality Focal Loss, Varifocal Loss and Distribution Focal Loss: they store
the hyperparameters and make one call into :mod:`focalkit.functional.gfl`."""

from __future__ import annotations

from torch import Tensor

from .._checks import check_nonnegative, check_varifocal
from ..functional.gfl import distribution_focal_loss, quality_focal_loss, varifocal_loss
from ._base import LabelLossModule, LossModule

__all__ = ["DistributionFocalLoss", "QualityFocalLoss", "VarifocalLoss"]


class QualityFocalLoss(LabelLossModule):
    """Module form of :func:`focalkit.quality_focal_loss` (same keywords and defaults).

    ``forward(logits, targets, scores=None, *, weight=None, normalizer=None)``: ``weight``
    and ``normalizer`` override the constructor's for that call (GFL passes the number of
    positives as ``normalizer`` each step).

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.QualityFocalLoss(beta=2.0, reduction="sum")
        >>> logits = torch.tensor([[-2.0, 0.5, 1.0], [0.3, -1.0, 2.0]])
        >>> crit(logits, torch.tensor([2, 3]), torch.tensor([0.8, 0.0]))
        tensor(2.3363)
    """

    def __init__(
        self,
        *,
        beta: float = 2.0,
        weight: Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            loss="quality_focal_loss",
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        check_nonnegative("beta", beta)
        self.beta = float(beta)

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        scores: Tensor | None = None,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return quality_focal_loss(
            logits, targets, scores, beta=self.beta, **self.call_keywords(weight, normalizer)
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}"


class VarifocalLoss(LabelLossModule):
    """Module form of :func:`focalkit.varifocal_loss` (same keywords and defaults).

    ``forward(logits, targets, scores=None, *, weight=None, normalizer=None)``, as
    :class:`QualityFocalLoss`.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.VarifocalLoss(reduction="sum")
        >>> x = torch.tensor([-2.0, 0.0, 3.0, 1.0, 0.5])
        >>> crit(x, torch.tensor([0.0, 0.0, 0.9, 0.3, 0.0]))
        tensor(1.0321)
    """

    def __init__(
        self,
        *,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        weight: Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            loss="varifocal_loss",
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        check_varifocal(alpha, gamma, iou_weighted)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.iou_weighted = iou_weighted

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        scores: Tensor | None = None,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return varifocal_loss(
            logits,
            targets,
            scores,
            alpha=self.alpha,
            gamma=self.gamma,
            iou_weighted=self.iou_weighted,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
            f"reduction={self.reduction!r}"
        )


class DistributionFocalLoss(LossModule):
    """Module form of :func:`focalkit.distribution_focal_loss` (same keywords and defaults).

    ``forward(pred, targets, *, weight=None, normalizer=None)``: the per-box weights and the
    normalizer change every step, so they are usually given per call.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.DistributionFocalLoss()
        >>> crit(torch.tensor([[0.1, 0.5, 2.0, 0.3, -1.0]]), torch.tensor([2.3]))
        tensor(0.9832)
    """

    def __init__(
        self,
        *,
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            loss="distribution_focal_loss",
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            backend=backend,
        )
        self.validate = validate

    def forward(
        self,
        pred: Tensor,
        targets: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return distribution_focal_loss(
            pred, targets, validate=self.validate, **self.call_keywords(weight, normalizer)
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
