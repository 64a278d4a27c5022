"""Module forms of the box regression losses. Each has the keyword signature of its function
in :mod:`focalkit.functional.box`, checks it once and makes one call into the function.
``forward`` takes ``(pred_boxes, target_boxes)`` and, per batch, ``weight`` and
``normalizer``, which override the constructor's (see :mod:`focalkit.nn._base`). Every
IoU-family Module takes Inner-IoU's ``inner_ratio`` and Focaler-IoU's ``focaler``; IoU, GIoU,
DIoU and CIoU also Alpha-IoU's ``power``. SIoU, Wise-IoU, MPDIoU and Shape-IoU are in
:mod:`focalkit.nn.iou_family`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .._checks import (
    BOX_FORMATS,
    IOU_MODES,
    check_choice,
    check_focal_l1,
    check_focaler,
    check_inner_ratio,
    check_nonnegative,
    check_positive,
    check_power,
)
from ..functional.box import (
    ciou_loss,
    diou_loss,
    eiou_loss,
    focal_eiou_loss,
    focal_l1_loss,
    giou_loss,
    iou_loss,
)
from ._base import LossModule

__all__ = [
    "CIoULoss",
    "DIoULoss",
    "EIoULoss",
    "FocalEIoULoss",
    "FocalL1Loss",
    "GIoULoss",
    "IoULoss",
]


class _BoxLoss(LossModule):
    """Stores the keywords every IoU-family loss shares (Inner-IoU's ``inner_ratio`` and
    Focaler-IoU's ``focaler`` included); ``call_keywords`` passes them on."""

    def __init__(
        self,
        *,
        inner_ratio: float | None,
        focaler: Sequence[float] | None,
        box_format: str,
        eps: float,
        weight: Tensor | None,
        reduction: str,
        normalizer: float | Tensor | None,
        validate: bool,
        backend: str,
    ) -> None:
        super().__init__(
            loss="box_loss",
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            backend=backend,
        )
        check_choice("box_format", box_format, BOX_FORMATS)
        check_positive("eps", eps)
        self.inner_ratio = check_inner_ratio(inner_ratio)
        self.focaler = check_focaler(focaler)
        self.box_format = box_format
        self.eps = eps
        self.validate = validate

    def call_keywords(
        self, weight: Tensor | None, normalizer: float | Tensor | None
    ) -> dict[str, Any]:
        return {
            "inner_ratio": self.inner_ratio,
            "focaler": self.focaler,
            "box_format": self.box_format,
            "eps": self.eps,
            "validate": self.validate,
            **super().call_keywords(weight, normalizer),
        }

    def extra_repr(self) -> str:
        mods = "".join(
            f"{name}={getattr(self, name)!r}, "
            for name in ("power", "inner_ratio", "focaler")
            if getattr(self, name, None) not in (None, 1.0)
        )
        return (
            f"{mods}box_format={self.box_format!r}, eps={self.eps}, "
            f"reduction={self.reduction!r}, backend={self.backend!r}"
        )


class IoULoss(_BoxLoss):
    """Module form of :func:`focalkit.iou_loss` (``mode="linear"``: 1 - IoU, ``"log"``: -log IoU;
    ``power``: Alpha-IoU's ``1 - IoU^a``).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.IoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6087)
        >>> fk.IoULoss(inner_ratio=0.7)(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.7395)
    """

    def __init__(
        self,
        mode: str = "linear",
        *,
        power: float = 1.0,
        inner_ratio: float | None = None,
        focaler: Sequence[float] | None = None,
        box_format: str = "xyxy",
        eps: float = 1e-7,
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool = False,
        backend: str = "auto",
    ) -> None:
        check_choice("mode", mode, IOU_MODES)
        if mode == "log" and check_power(power) != 1:
            raise ValueError(
                f"power: Alpha-IoU is 1 - IoU^a, defined for mode='linear'; got power={power!r} "
                "with mode='log'"
            )
        super().__init__(
            inner_ratio=inner_ratio,
            focaler=focaler,
            box_format=box_format,
            eps=eps,
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        self.mode = mode
        self.power = check_power(power)

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return iou_loss(
            pred_boxes,
            target_boxes,
            mode=self.mode,
            power=self.power,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, " + super().extra_repr()


class GIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.giou_loss`.

    Example:
        >>> import torch, focalkit as fk
        >>> fk.GIoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6887)
    """

    def __init__(
        self,
        *,
        power: float = 1.0,
        inner_ratio: float | None = None,
        focaler: Sequence[float] | None = None,
        box_format: str = "xyxy",
        eps: float = 1e-7,
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            inner_ratio=inner_ratio,
            focaler=focaler,
            box_format=box_format,
            eps=eps,
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        self.power = check_power(power)

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return giou_loss(
            pred_boxes,
            target_boxes,
            power=self.power,
            **self.call_keywords(weight, normalizer),
        )


class DIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.diou_loss`.

    Example:
        >>> import torch, focalkit as fk
        >>> fk.DIoULoss(reduction="none")(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor([0.6487])
    """

    def __init__(
        self,
        *,
        power: float = 1.0,
        inner_ratio: float | None = None,
        focaler: Sequence[float] | None = None,
        box_format: str = "xyxy",
        eps: float = 1e-7,
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            inner_ratio=inner_ratio,
            focaler=focaler,
            box_format=box_format,
            eps=eps,
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        self.power = check_power(power)

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return diou_loss(
            pred_boxes,
            target_boxes,
            power=self.power,
            **self.call_keywords(weight, normalizer),
        )


class CIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.ciou_loss` (the trade-off ``a`` is constant in backward;
    ``aspect_gate=True``: mmdetection's / the CIoU authors' later form, ``a = 0`` where
    ``IoU <= 0.5`` and the loss clamped to ``[0, 2]``).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.CIoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
        >>> fk.CIoULoss(power=3.0)(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.9401)
    """

    def __init__(
        self,
        *,
        aspect_gate: bool = False,
        power: float = 1.0,
        inner_ratio: float | None = None,
        focaler: Sequence[float] | None = None,
        box_format: str = "xyxy",
        eps: float = 1e-7,
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            inner_ratio=inner_ratio,
            focaler=focaler,
            box_format=box_format,
            eps=eps,
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        self.aspect_gate = bool(aspect_gate)
        self.power = check_power(power)

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return ciou_loss(
            pred_boxes,
            target_boxes,
            aspect_gate=self.aspect_gate,
            power=self.power,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        return f"aspect_gate={self.aspect_gate}, " + super().extra_repr()


class EIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.eiou_loss`: Zhang et al.'s *Efficient* IoU
    (arXiv 2101.08158), not mmdetection's ``EIoULoss`` (Extended IoU).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.EIoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
    """

    def __init__(
        self,
        *,
        inner_ratio: float | None = None,
        focaler: Sequence[float] | None = None,
        box_format: str = "xyxy",
        eps: float = 1e-7,
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            inner_ratio=inner_ratio,
            focaler=focaler,
            box_format=box_format,
            eps=eps,
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return eiou_loss(
            pred_boxes,
            target_boxes,
            **self.call_keywords(weight, normalizer),
        )


class FocalEIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.focal_eiou_loss` (``IoU^gamma * L_EIoU``, factor detached).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.FocalEIoULoss(gamma=0.5)(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.4058)
    """

    def __init__(
        self,
        gamma: float = 0.5,
        *,
        inner_ratio: float | None = None,
        focaler: Sequence[float] | None = None,
        box_format: str = "xyxy",
        eps: float = 1e-7,
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool = False,
        backend: str = "auto",
    ) -> None:
        check_nonnegative("gamma", gamma)
        super().__init__(
            inner_ratio=inner_ratio,
            focaler=focaler,
            box_format=box_format,
            eps=eps,
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        self.gamma = float(gamma)

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return focal_eiou_loss(
            pred_boxes,
            target_boxes,
            gamma=self.gamma,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, " + super().extra_repr()


class FocalL1Loss(LossModule):
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
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
    ) -> None:
        super().__init__(loss=None, weight=weight, reduction=reduction, normalizer=normalizer)
        check_focal_l1(alpha, beta)
        self.alpha = alpha
        self.beta = beta

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
            weight=self.call_weight(weight),
            reduction=self.reduction,
            normalizer=self.call_normalizer(normalizer),
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, reduction={self.reduction!r}"
