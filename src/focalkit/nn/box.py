"""Module forms of the box regression losses: they store the keywords of the matching
function in :mod:`focalkit.functional.box` and make one call into it. ``forward`` takes
``(pred_boxes, target_boxes)`` and, per batch, ``weight`` and ``normalizer``."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_nonnegative, check_normalizer, check_positive, check_reduction
from ..functional.box import (
    BOX_FORMATS,
    IOU_MODES,
    _check_focal_l1,
    ciou_loss,
    diou_loss,
    eiou_loss,
    focal_eiou_loss,
    focal_l1_loss,
    giou_loss,
    iou_loss,
)
from ..kernels.dispatch import check_backend

__all__ = [
    "CIoULoss",
    "DIoULoss",
    "EIoULoss",
    "FocalEIoULoss",
    "FocalL1Loss",
    "GIoULoss",
    "IoULoss",
]


class _BoxLoss(nn.Module):
    """Stores ``box_format``, ``eps``, ``reduction``, ``normalizer``, ``validate``,
    ``backend`` (checked once here) plus the loss's own keywords in ``self.options``."""

    _fn: Callable[..., Tensor]

    def __init__(
        self,
        *,
        box_format: str = "xyxy",
        eps: float = 1e-7,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool = False,
        backend: str = "auto",
        **options,
    ) -> None:
        super().__init__()
        if box_format not in BOX_FORMATS:
            raise ValueError(f"box_format: expected one of {BOX_FORMATS}, got {box_format!r}")
        check_positive("eps", eps)
        check_reduction(reduction)
        check_normalizer(normalizer, reduction)
        check_backend(backend)
        self.box_format = box_format
        self.eps = eps
        self.reduction = reduction
        self.normalizer = normalizer
        self.validate = validate
        self.backend = backend
        self.options = options

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return type(self)._fn(
            pred_boxes,
            target_boxes,
            box_format=self.box_format,
            eps=self.eps,
            weight=weight,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            validate=self.validate,
            backend=self.backend,
            **self.options,
        )

    def extra_repr(self) -> str:
        opts = "".join(f"{k}={v!r}, " for k, v in self.options.items())
        return (
            f"{opts}box_format={self.box_format!r}, eps={self.eps}, "
            f"reduction={self.reduction!r}, backend={self.backend!r}"
        )


class IoULoss(_BoxLoss):
    """Module form of :func:`focalkit.iou_loss` (``mode="linear"``: 1 - IoU, ``"log"``: -log IoU).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.IoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6087)
    """

    _fn = staticmethod(iou_loss)

    def __init__(self, mode: str = "linear", **kwargs) -> None:
        if mode not in IOU_MODES:
            raise ValueError(f"mode: expected one of {IOU_MODES}, got {mode!r}")
        super().__init__(mode=mode, **kwargs)


class GIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.giou_loss`.

    Example:
        >>> import torch, focalkit as fk
        >>> fk.GIoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6887)
    """

    _fn = staticmethod(giou_loss)


class DIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.diou_loss`.

    Example:
        >>> import torch, focalkit as fk
        >>> fk.DIoULoss(reduction="none")(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor([0.6487])
    """

    _fn = staticmethod(diou_loss)


class CIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.ciou_loss` (the trade-off ``a`` is constant in backward).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.CIoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
    """

    _fn = staticmethod(ciou_loss)


class EIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.eiou_loss`: Zhang et al.'s *Efficient* IoU
    (arXiv 2101.08158), not mmdetection's ``EIoULoss`` (Extended IoU).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.EIoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
    """

    _fn = staticmethod(eiou_loss)


class FocalEIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.focal_eiou_loss` (``IoU^gamma * L_EIoU``, factor detached).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.FocalEIoULoss(gamma=0.5)(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.4058)
    """

    _fn = staticmethod(focal_eiou_loss)

    def __init__(self, gamma: float = 0.5, **kwargs) -> None:
        check_nonnegative("gamma", gamma)
        super().__init__(gamma=float(gamma), **kwargs)


class FocalL1Loss(nn.Module):
    """Module form of :func:`focalkit.focal_l1_loss`.

    Example:
        >>> import torch, focalkit as fk
        >>> fk.FocalL1Loss(reduction="none")(torch.tensor([0.5, 2.0]), torch.zeros(2))
        tensor([0.2741, 1.7500])
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1 / math.e,
        *,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
    ) -> None:
        super().__init__()
        _check_focal_l1(alpha, beta)
        check_reduction(reduction)
        check_normalizer(normalizer, reduction)
        self.alpha = alpha
        self.beta = beta
        self.reduction = reduction
        self.normalizer = normalizer

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return focal_l1_loss(
            pred,
            target,
            alpha=self.alpha,
            beta=self.beta,
            weight=weight,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, reduction={self.reduction!r}"
