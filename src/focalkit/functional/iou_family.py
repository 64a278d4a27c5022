r"""The IoU losses of today's YOLO-style detectors: SIoU, Wise-IoU v1/v2/v3, MPDIoU and
Shape-IoU (Alpha-, Inner- and Focaler-IoU are modifiers of every IoU-family loss: the
``power``, ``inner_ratio`` and ``focaler`` keywords, see :mod:`focalkit.functional.box`).

They share the IoU family's driver (:func:`focalkit.functional.box.box_loss`: checks, the
backend, format conversion, the one reduction) and its one per-box formula
(:mod:`focalkit.functional._iou_geometry`), so every box format, dtype, reduction and the
Triton kernel work for them as for GIoU. Where public implementations disagree (SIoU's sign,
Wise-IoU's constants, MPDIoU's image size, Shape-IoU's scale), the docstrings say which
variant focalkit follows and how to get the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import distributed
from .._checks import (
    check_image_size,
    check_iou_mean,
    check_nonnegative,
    check_positive,
    check_sync,
    check_theta,
    check_wiou,
    check_wiou_momentum,
)
from ._iou_geometry import BoxSpec
from .box import Focus, _doc, _options, box_loss, modifiers

__all__ = [
    "WIOU_DEFAULT_BATCHES",
    "WIOU_DEFAULT_EPOCHS",
    "mpdiou_loss",
    "shape_iou_loss",
    "siou_loss",
    "wiou_focus",
    "wiou_forward",
    "wiou_loss",
    "wiou_momentum",
]

# the authors' defaults for the momentum of the running mean (Instinct323/wiou, branch v1)
WIOU_DEFAULT_BATCHES, WIOU_DEFAULT_EPOCHS = 890, 34


# --------------------------------------------------------------------------------------------
# SIoU
# --------------------------------------------------------------------------------------------


def siou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    theta: float = 4.0,
    paper_sign: bool = True,
    clamp: bool = False,
    inner_ratio: float | None = None,
    focaler: Sequence[float] | None = None,
    box_format: str = "xyxy",
    eps: float = 1e-7,
    weight: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""SIoU loss (Gevorgyan): IoU plus an angle-aware distance cost and a shape cost.

    .. math::

        \Lambda = \frac{2 |d_x| |d_y|}{d_x^2 + d_y^2} = \sin 2\alpha,\quad
        \gamma = 2 - \Lambda,\quad
        \Delta = \sum_{t \in \{x, y\}} \big(1 - e^{-\gamma \rho_t}\big),\quad
        \rho_x = \Big(\frac{d_x}{C_w}\Big)^2,\ \rho_y = \Big(\frac{d_y}{C_h}\Big)^2

        \Omega = \sum_{t \in \{w, h\}} \big(1 - e^{-\omega_t}\big)^{\theta},\quad
        \omega_w = \frac{|w - w_g|}{\max(w, w_g)},\quad
        L = 1 - \mathrm{IoU} + \frac{\Delta + \Omega}{2}

    with ``(d_x, d_y)`` the offset of the centres. ``Lambda`` is computed as
    ``2 |dx| |dy| / (dx^2 + dy^2 + eps)``, the paper's ``1 - 2 sin^2(arcsin(|dy| / sigma) -
    pi/4)`` without its ``arcsin'(1) = inf`` at ``dx = 0`` or ``dy = 0``, and symmetric about
    45 degrees (the public codes' switch to the other angle above 45 degrees changes nothing).

    **The sign** (``paper_sign``). The paper, YOLOv6 and mmdetection's
    ``siou_loss(neg_gamma=True)`` use ``exp(-gamma rho)``: ``Delta`` in ``[0, 2)`` grows as
    the centres move apart. mmdetection's default (``neg_gamma=False``, "more stable") uses
    ``exp(+gamma rho)``: ``Delta <= 0``, so the distance term *lowers* the loss as the centres
    move apart, and it clamps SIoU to ``[-1, 1]`` (the loss to ``[0, 2]``, zero gradient
    outside): two disjoint boxes then get no training signal at all. focalkit follows the
    paper (``paper_sign=True, clamp=False``); ``paper_sign=False, clamp=True`` reproduces
    mmdetection's default.

    Reference:
        Z. Gevorgyan, "SIoU Loss: More Powerful Learning for Bounding Box Regression",
        https://arxiv.org/abs/2205.12740

    Example:
        >>> import torch, focalkit as fk
        >>> pred, target = torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]])
        >>> fk.siou_loss(pred, target)
        tensor(0.6479)
        >>> far = torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[3.0, 0, 4, 1]])
        >>> fk.siou_loss(*far), fk.siou_loss(*far, paper_sign=False, clamp=True)
        (tensor(1.3377), tensor(0.))
    """
    spec = BoxSpec(
        "siou",
        float(eps),
        theta=check_theta(theta),
        paper_sign=bool(paper_sign),
        clamp=bool(clamp),
        **modifiers(1.0, inner_ratio, focaler),
    )
    return box_loss(
        spec,
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


_SIOU_ARGS = """
        theta: the shape cost's exponent, ``>= 1`` (default 4, the paper's; it suggests 2 to 6).
        paper_sign: True (default): ``exp(-gamma rho)``, the paper's and YOLOv6's distance
            cost; False: ``exp(+gamma rho)``, mmdetection's default.
        clamp: clamp the loss to ``[0, 2]`` (mmdetection clamps SIoU to ``[-1, 1]``; zero
            gradient outside). Default False.
"""

# --------------------------------------------------------------------------------------------
# MPDIoU
# --------------------------------------------------------------------------------------------


def mpdiou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    image_size: Sequence[float] | Tensor | None = None,
    inner_ratio: float | None = None,
    focaler: Sequence[float] | None = None,
    box_format: str = "xyxy",
    eps: float = 1e-7,
    weight: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""MPDIoU loss (Ma & Xu): IoU plus the distances of the top-left and bottom-right corners,
    relative to the image diagonal.

    .. math::

        L = 1 - \mathrm{IoU} + \frac{d_1^2}{W^2 + H^2} + \frac{d_2^2}{W^2 + H^2},\quad
        d_1^2 = (x_1 - x_1^g)^2 + (y_1 - y_1^g)^2,\ d_2^2 = (x_2 - x_2^g)^2 + (y_2 - y_2^g)^2

    ``image_size`` is required and is in the units of the boxes: pixel boxes take the image
    size; boxes in grid units (a YOLO head's) take image size / stride (the YOLO forks pass
    ``(imgsz_h^2 + imgsz_w^2) / stride^2`` per anchor); normalised boxes take ``(1, 1)``.
    ``W^2 + H^2`` is a sum of squares (some YOLOv5 forks pass the feature map's ``H * W``, a
    product: a different loss). No authors' code was published; the widely copied
    ``bbox_mpdiou`` computes the same. ``image_size`` is a constant (never differentiated).

    Reference:
        S. Ma, Y. Xu, "MPDIoU: A Loss for Efficient and Accurate Bounding Box Regression",
        https://arxiv.org/abs/2307.07662

    Example:
        >>> import torch, focalkit as fk
        >>> pred, target = torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]])
        >>> fk.mpdiou_loss(pred, target, image_size=(12, 16))  # 1 - 9/23 + 4/400
        tensor(0.6187)
    """
    size = check_image_size(image_size)
    return box_loss(
        BoxSpec("mpdiou", float(eps), **modifiers(1.0, inner_ratio, focaler)),
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
        image_size=size,
    )


_MPDIOU_ARGS = """
        image_size: required: ``(H, W)`` of the image in the boxes' units, two numbers > 0, or
            a tensor of shape ``(..., 2)`` broadcastable to ``pred_boxes.shape[:-1] + (2,)``
            (one ``(H, W)`` per box; its values are checked where reading them is free, a CPU
            tensor in eager mode, or with ``validate=True``).
"""

# --------------------------------------------------------------------------------------------
# Shape-IoU
# --------------------------------------------------------------------------------------------


def shape_iou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    scale: float = 0.0,
    inner_ratio: float | None = None,
    focaler: Sequence[float] | None = None,
    box_format: str = "xyxy",
    eps: float = 1e-7,
    weight: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""Shape-IoU loss (Zhang & Zhang): the distance and shape costs weighted by the target's
    shape.

    .. math::

        w_w = \frac{2 w_g^s}{w_g^s + h_g^s},\ h_h = \frac{2 h_g^s}{w_g^s + h_g^s},\quad
        \mathrm{dist} = \frac{h_h d_x^2 + w_w d_y^2}{c^2}

        \Omega = \sum_{t \in \{w, h\}} (1 - e^{-\omega_t})^4,\quad
        \omega_w = h_h \frac{|w - w_g|}{\max(w, w_g)},\
        \omega_h = w_w \frac{|h - h_g|}{\max(h, h_g)},\quad
        L = 1 - \mathrm{IoU} + \mathrm{dist} + \tfrac12 \Omega

    The weights come from the *target* box (``s = scale``). ``scale = 0`` (the default, as in
    the authors' code) makes ``w_w = h_h = 1``: **the shape weighting is off** and the loss is
    DIoU's distance plus SIoU's shape cost. The paper relates ``scale`` to the target sizes of
    the dataset, with no single recommended value. A target of zero area has ``w_w = h_h = 1``.

    Reference:
        H. Zhang, S. Zhang, "Shape-IoU: More Accurate Metric considering Bounding Box Shape
        and Scale", https://arxiv.org/abs/2312.17663

    Example:
        >>> import torch, focalkit as fk
        >>> pred, target = torch.tensor([[0.0, 0, 6, 4]]), torch.tensor([[2.0, 1, 5, 7]])
        >>> fk.shape_iou_loss(pred, target), fk.shape_iou_loss(pred, target, scale=1.0)
        (tensor(0.7925), tensor(0.7914))
    """
    check_nonnegative("scale", scale)
    return box_loss(
        BoxSpec("shape", float(eps), scale=float(scale), **modifiers(1.0, inner_ratio, focaler)),
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


_SHAPE_ARGS = """
        scale: the exponent ``s >= 0`` of the target's sides in the weights (default 0: the
            weighting is off, ``ww = hh = 1``).
"""

# --------------------------------------------------------------------------------------------
# Wise-IoU
# --------------------------------------------------------------------------------------------


def wiou_momentum(batches_per_epoch: float, epochs: float) -> float:
    r"""Wise-IoU's momentum of the running mean of ``L_IoU``:
    :math:`m = 1 - 0.05^{1 / (n t)}`, so that after ``n t`` training calls the initial value
    keeps 5 % of its weight. In the authors' words ``n`` is the "number of batches per training
    epoch" and ``t`` "the epoch when mAP's ascension slowed significantly". Their default,
    ``n = 890, t = 34``, is :class:`focalkit.WIoULoss`'s ``momentum=None``.

    Example:
        >>> import focalkit as fk
        >>> f"{fk.wiou_momentum(890, 34):.9e}"
        '9.899484435e-05'
    """
    check_positive("batches_per_epoch", batches_per_epoch)
    check_positive("epochs", epochs)
    return 1.0 - 0.05 ** (1.0 / (float(batches_per_epoch) * float(epochs)))


def wiou_focus(
    version: int, mean: float | Tensor, alpha: float, delta: float, gamma: float, eps: float
) -> Focus | None:
    """Wise-IoU's focusing factor as a function of the plain IoU per box (None for v1):
    ``beta = L_IoU / max(mean, eps)``; v2 ``beta^gamma``; v3
    ``beta / (delta * alpha^(beta - delta))``. Constants in backward (the IoU is detached)."""
    if version == 1:
        return None

    def focus(iou: Tensor) -> Tensor:
        m = mean.to(iou).reshape(()).clamp(min=eps) if isinstance(mean, Tensor) else max(mean, eps)
        beta = (1 - iou) / m
        if version == 2:
            return beta.pow(gamma)
        return beta / (delta * torch.pow(alpha, beta - delta))

    return focus


def _updated_mean(mean: Tensor, l_iou: Tensor, momentum: float, world: int) -> None:
    """``mean <- (1 - m) mean + m * (batch mean of L_IoU)``, in place, without a host sync:
    the batch mean is over the pairs passed in (all ranks' pairs when ``world > 1``, one
    float64 all-reduce of the sum and count); an empty batch leaves ``mean`` unchanged."""
    with torch.no_grad():
        total = l_iou.detach().sum(dtype=torch.float64).reshape(1)
        count = torch.full((1,), float(l_iou.numel()), dtype=torch.float64, device=total.device)
        if world > 1:
            stats = distributed.all_reduce_sum(torch.cat([total, count]))
            total, count = stats[:1], stats[1:]
        elif l_iou.numel() == 0:
            return
        current = mean.detach().to(device=total.device, dtype=torch.float64).reshape(1)
        batch_mean = total / count.clamp(min=1)
        new = torch.where(count > 0, (1 - momentum) * current + momentum * batch_mean, current)
        mean.copy_(new.reshape(mean.shape))


def wiou_forward(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    version: int,
    base: str,
    mean: float | Tensor,
    alpha: float,
    delta: float,
    gamma: float,
    inner_ratio: float | None,
    focaler: Sequence[float] | None,
    box_format: str,
    eps: float,
    weight: Tensor | None,
    reduction: str,
    normalizer: float | Tensor | None,
    validate: bool,
    backend: str,
    momentum: float = 0.0,
    update: bool = False,
    sync: bool | None = False,
) -> Tensor:
    """Wise-IoU with an optional running mean (``mean``, a float64 tensor modified in place
    when ``update``): the one implementation behind :func:`wiou_loss` (stateless) and
    :class:`focalkit.WIoULoss`. The update comes first, from this batch's ``L_IoU``, and the
    loss uses the updated mean (as the authors' code)."""
    check_wiou(version, base, alpha, delta, gamma)
    check_iou_mean(mean)
    check_wiou_momentum(momentum)
    check_sync(sync)
    world = distributed.sync_world_size(sync) if update and version != 1 else 1
    spec = BoxSpec(
        "wiou" if base == "iou" else base, float(eps), **modifiers(1.0, inner_ratio, focaler)
    )
    focus = wiou_focus(version, mean, float(alpha), float(delta), float(gamma), float(eps))
    if focus is not None and update and isinstance(mean, Tensor):
        stateless = focus

        def focus(iou: Tensor) -> Tensor:
            _updated_mean(mean, 1 - iou, momentum, world)
            return stateless(iou)

    return box_loss(
        spec,
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
        focus=focus,
    )


def wiou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    version: int = 3,
    base: str = "iou",
    iou_mean: float | Tensor = 1.0,
    alpha: float = 1.9,
    delta: float = 3.0,
    gamma: float = 0.5,
    inner_ratio: float | None = None,
    focaler: Sequence[float] | None = None,
    box_format: str = "xyxy",
    eps: float = 1e-7,
    weight: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""Wise-IoU loss v1, v2, v3 (Tong et al.), stateless: the mean of ``L_IoU`` is the
    argument ``iou_mean`` (:class:`focalkit.WIoULoss` keeps it as a running mean).

    .. math::

        L_{IoU} = 1 - \mathrm{IoU},\quad
        v1:\ L = R\,L_{IoU},\ R = \exp\Big(\frac{\rho^2}{(C_w^2 + C_h^2)^*}\Big)

        \beta = \frac{L_{IoU}^*}{\overline{L_{IoU}}},\quad
        v2:\ L = \beta^{\gamma} L_{v1},\quad
        v3:\ L = \frac{\beta}{\delta\,\alpha^{\beta - \delta}} L_{v1}

    (``*``: a constant in backward). In ``R`` only the enclosing diagonal is detached, the
    centre distance is differentiated; ``beta`` and the v2/v3 factors are constants. v3 is
    non-monotonic in ``beta``: its factor is 1 at ``beta = delta`` and largest at
    ``beta = 1 / ln(alpha)`` (1.558 for the default ``alpha``), so both easy and very poor
    boxes get smaller gradients.

    ``base`` other than ``"iou"`` gives the authors' "Wise-X": the same v2/v3 factor (``beta``
    always from the plain ``L_IoU``) times the loss of ``X`` (GIoU, DIoU, CIoU, EIoU, SIoU
    with focalkit's defaults), without ``R``; version 1 with such a base is ``X`` itself.
    ``inner_ratio`` / ``focaler`` change the overlap term as in every IoU-family loss
    (``R (1 - IoU_inner)`` for base ``"iou"``); ``beta`` keeps the plain IoU.

    Constants: ``alpha = 1.9, delta = 3``, the paper's code (Instinct323/wiou, branch v1); the
    refactored branch v2 (``IouLoss``) uses ``alpha = 1.7, delta = 2.7`` and a momentum of
    0.01. The authors' code has no eps (two zero-area boxes give NaN there); focalkit adds the
    usual eps and clamps the mean at ``eps`` before dividing.

    Reference:
        Z. Tong, Y. Chen, Z. Xu, R. Yu, "Wise-IoU: Bounding Box Regression Loss with Dynamic
        Focusing Mechanism", https://arxiv.org/abs/2301.10051

    Example:
        >>> import torch, focalkit as fk
        >>> pred, target = torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]])
        >>> [round(fk.wiou_loss(pred, target, version=v, iou_mean=0.5).item(), 4) for v in (1, 2, 3)]
        [0.6335, 0.699, 0.8072]
    """
    return wiou_forward(
        pred_boxes,
        target_boxes,
        version=version,
        base=base,
        mean=iou_mean,
        alpha=alpha,
        delta=delta,
        gamma=gamma,
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


_WIOU_ARGS = """
        version: 1, 2 or 3 (default 3: the non-monotonic focusing factor).
        base: ``"iou"`` (default: Wise-IoU's ``R L_IoU``) or ``"giou"``, ``"diou"``,
            ``"ciou"``, ``"eiou"``, ``"siou"`` (the v2/v3 factor times that loss).
        iou_mean: the mean of ``L_IoU`` that ``beta`` divides by, a number > 0 or a
            one-element tensor (default 1.0, the running mean's start; clamped to >= eps).
        alpha, delta: v3's constants (defaults 1.9 and 3, the paper's code).
        gamma: v2's exponent (default 0.5).
"""

siou_loss.__doc__ = _doc(siou_loss.__doc__, _SIOU_ARGS)
mpdiou_loss.__doc__ = _doc(mpdiou_loss.__doc__, _MPDIOU_ARGS)
shape_iou_loss.__doc__ = _doc(shape_iou_loss.__doc__, _SHAPE_ARGS)
wiou_loss.__doc__ = _doc(wiou_loss.__doc__, _WIOU_ARGS)
