"""Module forms of SIoU, MPDIoU, Shape-IoU and Wise-IoU (:mod:`focalkit.functional.iou_family`).

Each has its function's keywords, checks them once and makes one call into the function;
``forward(pred_boxes, target_boxes, *, weight=None, normalizer=None)`` as every box Module.
:class:`WIoULoss` keeps Wise-IoU's running mean of ``L_IoU`` as a float64 buffer
(``iou_mean``, in the ``state_dict``), updated in training mode only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import (
    check_image_size,
    check_nonnegative,
    check_sync,
    check_theta,
    check_wiou,
    check_wiou_momentum,
)
from ..functional.iou_family import (
    WIOU_DEFAULT_BATCHES,
    WIOU_DEFAULT_EPOCHS,
    mpdiou_loss,
    shape_iou_loss,
    siou_loss,
    wiou_forward,
    wiou_momentum,
)
from .box import _BoxLoss

__all__ = ["MPDIoULoss", "SIoULoss", "ShapeIoULoss", "WIoULoss"]


class SIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.siou_loss` (the paper's sign by default;
    ``paper_sign=False, clamp=True`` is mmdetection's default).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.SIoULoss()(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6479)
    """

    def __init__(
        self,
        theta: float = 4.0,
        paper_sign: bool = True,
        clamp: bool = False,
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
        theta = check_theta(theta)
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
        self.theta = theta
        self.paper_sign = bool(paper_sign)
        self.clamp = bool(clamp)

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return siou_loss(
            pred_boxes,
            target_boxes,
            theta=self.theta,
            paper_sign=self.paper_sign,
            clamp=self.clamp,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        return (
            f"theta={self.theta}, paper_sign={self.paper_sign}, clamp={self.clamp}, "
            + super().extra_repr()
        )


class MPDIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.mpdiou_loss`. ``image_size`` (required) is ``(H, W)``
    in the boxes' units, kept as given, or a ``(..., 2)`` tensor, kept as a buffer (it
    follows ``module.to(device)``; not in the ``state_dict``).

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.MPDIoULoss(image_size=(12, 16))
        >>> crit(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6187)
    """

    image_size: tuple[float, float] | Tensor

    def __init__(
        self,
        image_size: Sequence[float] | Tensor | None = None,
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
        size = check_image_size(image_size)
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
        if isinstance(size, Tensor):
            self.register_buffer("image_size", size, persistent=False)
        else:
            self.image_size = size

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return mpdiou_loss(
            pred_boxes,
            target_boxes,
            image_size=self.image_size,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        size = self.image_size
        shown = f"tensor of shape {tuple(size.shape)}" if isinstance(size, Tensor) else size
        return f"image_size={shown}, " + super().extra_repr()


class ShapeIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.shape_iou_loss` (``scale=0``, the default, turns the
    shape weighting off).

    Example:
        >>> import torch, focalkit as fk
        >>> fk.ShapeIoULoss(scale=1.0)(torch.tensor([[0.0, 0, 6, 4]]), torch.tensor([[2.0, 1, 5, 7]]))
        tensor(0.7914)
    """

    def __init__(
        self,
        scale: float = 0.0,
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
        check_nonnegative("scale", scale)
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
        self.scale = float(scale)

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return shape_iou_loss(
            pred_boxes, target_boxes, scale=self.scale, **self.call_keywords(weight, normalizer)
        )

    def extra_repr(self) -> str:
        return f"scale={self.scale}, " + super().extra_repr()


class WIoULoss(_BoxLoss):
    """Module form of :func:`focalkit.wiou_loss` with the running mean of ``L_IoU``.

    * ``iou_mean``: a one-element float64 buffer (in the ``state_dict``, like GHM's EMA; it
      stays float64 through ``module.half()``), starting at 1.0. Each call in **training mode** first
      updates it, ``mean <- (1 - m) mean + m * mean(L_IoU of the batch, detached)``, then
      computes the loss with the new value, as the authors' code; evaluation mode uses it
      unchanged. The update is tensor arithmetic (no ``.item()``, no host sync); an empty
      batch leaves it unchanged; version 1 (no focusing factor) never updates it.
    * ``momentum``: ``m``; None (default) is :func:`focalkit.wiou_momentum` ``(890, 34)`` =
      9.899484435e-5, the authors' default (``n`` = 890 batches per epoch, ``t`` = 34 epochs
      until mAP stops rising quickly). For your schedule pass
      ``wiou_momentum(batches_per_epoch, epochs)``.
    * ``sync``: under ``torch.distributed``, the batch mean is over the pairs of every rank
      (one float64 all-reduce of the sum and the count), so the buffer is identical on all
      ranks and equals a single process's on the whole batch. ``None`` (default): on when a
      process group with more than one rank is initialised; ``True`` / ``False`` force it.
      The authors' code keeps a per-process mean (no all-reduce): ``sync=False`` is that.
      With sync on, every training-mode call is a collective: all ranks must call it.

    The batch mean is over every pair passed in (pass the positive pairs, as detectors do);
    ``weight`` weighs the loss, not the mean.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.WIoULoss()  # v3, base IoU, momentum from (890, 34)
        >>> pred = torch.tensor([[0.0, 0, 4, 4], [0.0, 0, 6, 4]])
        >>> target = torch.tensor([[1.0, 1, 5, 5], [2.0, 1, 5, 7]])
        >>> loss = crit(pred, target)  # training mode: updates crit.iou_mean first
        >>> f"{crit.iou_mean.item():.10f}", sorted(crit.state_dict())
        ('0.9999671321', ['iou_mean'])
    """

    iou_mean: Tensor

    def __init__(
        self,
        version: int = 3,
        base: str = "iou",
        momentum: float | None = None,
        alpha: float = 1.9,
        delta: float = 3.0,
        gamma: float = 0.5,
        sync: bool | None = None,
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
        check_wiou(version, base, alpha, delta, gamma)
        check_wiou_momentum(momentum)
        check_sync(sync)
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
        self.version = version
        self.base = base
        if momentum is None:
            momentum = wiou_momentum(WIOU_DEFAULT_BATCHES, WIOU_DEFAULT_EPOCHS)
        self.momentum = float(momentum)
        self.alpha, self.delta, self.gamma = float(alpha), float(delta), float(gamma)
        self.sync = sync
        # shape (1,), not 0-dim: torch.compile (Inductor, CPU, torch 2.13) drops in-place
        # updates of a 0-dim float64 buffer
        self.register_buffer("iou_mean", torch.ones(1, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        mean = self.iou_mean
        super()._apply(fn, recurse)
        moved = self.iou_mean
        if moved.dtype != torch.float64:  # a dtype conversion: undo it, keep the device
            self.iou_mean = mean.to(device=moved.device, dtype=torch.float64)
        return self

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return wiou_forward(
            pred_boxes,
            target_boxes,
            version=self.version,
            base=self.base,
            mean=self.iou_mean,
            alpha=self.alpha,
            delta=self.delta,
            gamma=self.gamma,
            momentum=self.momentum,
            update=self.training,
            sync=self.sync,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        return (
            f"version={self.version}, base={self.base!r}, momentum={self.momentum:.6g}, "
            f"alpha={self.alpha}, delta={self.delta}, gamma={self.gamma}, sync={self.sync}, "
            + super().extra_repr()
        )
