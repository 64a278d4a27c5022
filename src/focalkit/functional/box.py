r"""Bounding-box regression losses: IoU, GIoU, DIoU, CIoU, EIoU, Focal-EIoU (with the
Alpha-, Inner- and Focaler-IoU modifiers), the driver every IoU-family loss shares, and
FocalL1. SIoU, Wise-IoU, MPDIoU and Shape-IoU are in :mod:`focalkit.functional.iou_family`;
the one per-box formula of them all is :mod:`focalkit.functional._iou_geometry`.

Boxes are ``(..., 4)`` tensors in ``box_format`` ``"xyxy"`` (default: ``x1, y1, x2, y2``),
``"xywh"`` (``x1, y1, w, h``) or ``"cxcywh"``; they are converted to ``xyxy`` after being
upcast to float32 (float64 stays float64). Every loss is per box (shape ``(...)``), then one
reduction (:func:`focalkit._reduce.reduce_loss`): ``weight`` per box, ``"mean"`` over boxes,
``normalizer`` for the detection ``sum / max(normalizer, 1)``. An ``eps`` in every
denominator keeps values and gradients finite for identical, disjoint and zero-width/height
boxes. One limit: when *both* boxes have zero area and overlap along a segment, IoU jumps
(0 at zero area, 1 for identical boxes of any positive area), and its float32 gradient there
is of order ``length / eps``: finite in float32/bfloat16, beyond the float16 range. Nothing
reads tensor values unless ``validate=True`` (a device sync).

Modifiers (every IoU-family loss where they are defined; they compose): ``power`` (Alpha-IoU:
``1 - IoU^a`` and each penalty to the power ``a``; IoU, GIoU, DIoU, CIoU), ``inner_ratio``
(Inner-IoU: the overlap term from auxiliary boxes scaled about their centres) and
``focaler`` (Focaler-IoU: the overlap term mapped linearly from ``[d, u]`` to ``[0, 1]``).
Inner and Focaler change only the overlap term: ``L_X + IoU - IoU_modified``; every penalty
keeps the original boxes and IoU.

``backend=`` chooses who computes the per-box loss: ``"torch"`` (autograd through the plain
formula: the reference) or ``"triton"`` (one fused kernel writing the loss and its analytic
gradient, :mod:`focalkit.kernels.triton_box`); ``"auto"`` picks Triton for
float32/float16/bfloat16 CUDA tensors when triton is installed. Format conversion and the
reduction are torch on both.

Notation, for a predicted box ``A`` (``w, h``) and target box ``B`` (``w_g, h_g``): ``C`` the
smallest box enclosing both (``C_w, C_h``), ``rho`` the distance of the centres,
``c^2 = C_w^2 + C_h^2`` the squared diagonal of ``C``.

.. math::

    \mathrm{IoU} = \frac{|A \cap B|}{|A \cup B| + \epsilon},\quad
    L_{GIoU} = 1 - \mathrm{IoU} + \frac{|C| - |A \cup B|}{|C| + \epsilon},\quad
    L_{DIoU} = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2 + \epsilon}

References: GIoU, Rezatofighi et al., https://arxiv.org/abs/1902.09630; DIoU/CIoU, Zheng et
al., https://arxiv.org/abs/1911.08287; EIoU/Focal-EIoU/FocalL1, Zhang et al.,
https://arxiv.org/abs/2101.08158; Alpha-IoU, He et al., https://arxiv.org/abs/2110.13675;
Inner-IoU, Zhang, Xu, Zhang, https://arxiv.org/abs/2311.02877; Focaler-IoU, Zhang & Zhang,
https://arxiv.org/abs/2401.10525.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._checks import (
    BOX_FORMATS,
    IOU_MODES,
    check_boxes,
    check_broadcastable_to,
    check_choice,
    check_floating,
    check_focal_l1,
    check_focaler,
    check_image_size_values,
    check_inner_ratio,
    check_nonnegative,
    check_normalizer,
    check_positive,
    check_power,
    check_reduction,
    check_same_shape,
    check_tensor,
    check_xyxy,
)
from .._compat import compute_dtype, may_read_values, output_dtype
from .._reduce import reduce_loss
from ..kernels.dispatch import resolve_backend
from ._iou_geometry import BoxSpec, torch_per_box

__all__ = [
    "BOX_FORMATS",
    "IOU_MODES",
    "box_convert",
    "ciou_loss",
    "diou_loss",
    "eiou_loss",
    "focal_eiou_loss",
    "focal_l1_loss",
    "giou_loss",
    "iou_loss",
]


# --------------------------------------------------------------------------------------------
# box formats and argument checks
# --------------------------------------------------------------------------------------------


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``(..., 4)`` boxes between ``"xyxy"``, ``"xywh"`` (corner + size) and
    ``"cxcywh"`` (centre + size). Differentiable; keeps the dtype.

    Example:
        >>> import torch, focalkit as fk
        >>> fk.box_convert(torch.tensor([[1.0, 2.0, 4.0, 6.0]]), "xyxy", "cxcywh")
        tensor([[2.5000, 4.0000, 3.0000, 4.0000]])
    """
    check_tensor("boxes", boxes)
    check_choice("in_fmt", in_fmt, BOX_FORMATS)
    check_choice("out_fmt", out_fmt, BOX_FORMATS)
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes: expected shape (..., 4), got {tuple(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    # now xyxy
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = 0.5 * (a + c), 0.5 * (b + d), c - a, d - b
    return torch.stack((a, b, c, d), dim=-1)


# --------------------------------------------------------------------------------------------
# the per-box loss on each backend, and the one driver every IoU-family loss calls
# --------------------------------------------------------------------------------------------


def _triton_per_box(
    spec: BoxSpec, pred: Tensor, target: Tensor, diag2: Tensor | None, need_iou: bool
) -> tuple[Tensor, Tensor | None]:
    """The per-box loss from the fused Triton kernel (float32; gradient w.r.t. pred) and,
    with ``need_iou``, the plain IoU."""
    from ..kernels.triton_box import triton_box_loss

    if spec.base == "focal_eiou" and spec.gamma == 0:
        spec = spec._replace(base="eiou")  # the torch path skips the factor at gamma = 0 too
    if target.dtype == torch.float64:  # pred is never float64 here (dispatch rule "dtype")
        target = target.to(torch.float32)
    if diag2 is not None:
        diag2 = diag2.to(torch.float32)
    return triton_box_loss(pred, target, spec, diag2=diag2, need_iou=need_iou)


class _BoxOptions(NamedTuple):
    """The keywords every IoU-family loss shares (see ``_COMMON_ARGS``)."""

    box_format: str
    eps: float
    weight: Tensor | None
    reduction: str
    normalizer: float | Tensor | None
    validate: bool
    backend: str


Focus = Callable[[Tensor], Tensor]  # plain IoU per box (detached) -> a factor per box


def _image_diagonal(
    image_size: tuple[float, float] | Tensor | None,
    boxes: Tensor,
    cdtype: torch.dtype,
    validate: bool,
) -> float | Tensor | None:
    """MPDIoU's ``W^2 + H^2``: a Python float for ``(H, W)``, or a detached tensor (the
    boxes' device, ``cdtype``) broadcasting to the boxes for a ``(..., 2)`` tensor."""
    if image_size is None:
        return None
    if isinstance(image_size, Tensor):
        check_broadcastable_to("image_size", image_size, torch.Size((*boxes.shape[:-1], 2)))
        if validate or may_read_values(image_size):
            check_image_size_values(image_size)
        size = image_size.detach().to(device=boxes.device, dtype=cdtype)
        return size[..., 0] * size[..., 0] + size[..., 1] * size[..., 1]
    h, w = image_size
    return h * h + w * w


def box_loss(
    spec: BoxSpec,
    pred_boxes: Tensor,
    target_boxes: Tensor,
    opts: _BoxOptions,
    *,
    image_size: tuple[float, float] | Tensor | None = None,
    focus: Focus | None = None,
) -> Tensor:
    """Every IoU-family loss: checks, the backend, format conversion, the per-box loss of
    ``spec`` (:func:`focalkit.functional._iou_geometry.torch_per_box` or the Triton kernel),
    ``focus`` (Wise-IoU's factor of the detached plain IoU) and the one reduction."""
    check_boxes(pred_boxes, target_boxes, opts.box_format)
    check_positive("eps", opts.eps)
    check_reduction(opts.reduction)
    check_normalizer(opts.normalizer, opts.reduction)
    if opts.weight is not None:
        check_tensor("weight", opts.weight)
    # the kernel differentiates w.r.t. pred_boxes only (see kernels/triton_box.py)
    lacks = "target_boxes that require grad" if target_boxes.requires_grad else None
    choice = resolve_backend("box_loss", opts.backend, pred_boxes, unsupported={"triton": lacks})
    use_triton = choice.backend == "triton"
    out_dtype = output_dtype(pred_boxes)
    cdtype = compute_dtype(pred_boxes)
    with torch.autocast(pred_boxes.device.type, enabled=False):
        if use_triton and opts.box_format == "xyxy":  # the kernel upcasts to float32 on load
            pred, target = pred_boxes, target_boxes
        else:
            pred = box_convert(pred_boxes.to(cdtype), opts.box_format, "xyxy")
            target = box_convert(target_boxes.to(cdtype), opts.box_format, "xyxy")
        if opts.validate:
            check_xyxy("pred_boxes", pred)
            check_xyxy("target_boxes", target)
        diag2 = _image_diagonal(image_size, pred_boxes, cdtype, opts.validate)
        iou: Tensor | None
        if use_triton:
            if isinstance(diag2, float):
                diag2 = torch.full((), diag2, dtype=torch.float32, device=pred_boxes.device)
            loss, iou = _triton_per_box(spec, pred, target, diag2, focus is not None)
        else:
            loss, iou = torch_per_box(spec, pred, target, diag2)
        if focus is not None and iou is not None:
            loss = loss * focus(iou)
        loss = reduce_loss(loss, opts.reduction, weight=opts.weight, normalizer=opts.normalizer)
    return loss.to(out_dtype)


def modifiers(
    power: float, inner_ratio: float | None, focaler: Sequence[float] | None
) -> dict[str, Any]:
    """Alpha-, Inner- and Focaler-IoU's keywords, checked, as ``BoxSpec`` fields."""
    return {
        "power": check_power(power),
        "inner_ratio": check_inner_ratio(inner_ratio),
        "focaler": check_focaler(focaler),
    }


_COMMON_ARGS = """
        box_format: ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``.
        eps: added to every denominator (default 1e-7).
        weight: optional per-box weight broadcastable to ``pred_boxes.shape[:-1]``.
        reduction: ``"none"`` (shape ``(...)``), ``"mean"`` (over boxes; an empty input gives
            a zero still connected to the graph) or ``"sum"``.
        normalizer: if given, ``sum / max(normalizer, 1)``; only with ``reduction="mean"``.
        validate: if True, raise ValueError when a box has ``x2 < x1`` or ``y2 < y1``
            (reads values: a device sync; off by default).
        backend: ``"auto"`` (default: the Triton kernel for float32/float16/bfloat16 CUDA
            tensors when triton is installed, else the plain ``"torch"`` formula),
            ``"torch"`` or ``"triton"``
            (``ValueError`` where it cannot run: float64, no CUDA, no triton, or
            ``target_boxes`` that require grad, which only torch differentiates). Both give
            the same values and gradients; the Triton backward is once-differentiable
            (no ``create_graph=True``). See :mod:`focalkit.kernels.dispatch`.
"""

_BOXES_ARGS = """
        pred_boxes: ``(..., 4)`` predicted boxes (float; computed in float32 and returned in
            the input dtype, float32 under autocast).
        target_boxes: ``(..., 4)`` target boxes, the same shape.
"""

_POWER_ARG = """
        power: Alpha-IoU's exponent ``a >= 1`` (default 1: the plain loss; the paper uses 3):
            ``1 - IoU^a`` and every penalty to the power ``a``.
"""

_MODIFIER_ARGS = """
        inner_ratio: Inner-IoU (default None: off): the overlap term is the IoU of auxiliary
            boxes with the same centres and sides times ``inner_ratio > 0`` (< 1 for
            high-IoU samples, > 1 for low-IoU ones; 0.7 is the common choice, 1 the plain
            loss); the penalties keep the original boxes and IoU.
        focaler: Focaler-IoU (default None: off): ``(d, u)`` with ``0 <= d < u <= 1``; the
            overlap term becomes ``clamp((IoU - d) / (u - d), 0, 1)`` (the authors' default
            ``(0.0, 0.95)``; ``(0, 1)`` is the plain loss).
"""


def _doc(text: str | None, own: str = "", modifiers: str = _MODIFIER_ARGS) -> str | None:
    """Insert the shared ``Args:`` (boxes, the loss's ``own`` ``Args:`` lines, the modifiers,
    the common keywords) before ``Reference:``."""
    if not text:  # python -OO strips docstrings
        return text
    head, _, tail = text.partition("    Reference:")
    args = "    Args:\n" + _BOXES_ARGS.lstrip("\n") + own.lstrip("\n") + modifiers.lstrip("\n")
    return head + args + _COMMON_ARGS.lstrip("\n") + "\n    Reference:" + tail


def _options(
    box_format: str,
    eps: float,
    weight: Tensor | None,
    reduction: str,
    normalizer: float | Tensor | None,
    validate: bool,
    backend: str,
) -> _BoxOptions:
    return _BoxOptions(box_format, float(eps), weight, reduction, normalizer, validate, backend)


def iou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    mode: str = "linear",
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
) -> Tensor:
    r"""IoU loss: ``mode="linear"`` gives :math:`1 - \mathrm{IoU}`, ``mode="log"`` gives
    :math:`-\log \max(\mathrm{IoU}, \epsilon)` (UnitBox; its gradient is 0 for disjoint boxes).
    With ``power=a``: Alpha-IoU's :math:`1 - \mathrm{IoU}^a` (linear mode only); with
    ``inner_ratio`` / ``focaler``: ``1 - IoU_inner`` / ``1 - IoU_f`` (and their logs).

    Reference:
        Yu et al., "UnitBox", https://arxiv.org/abs/1608.01471; He et al., "Alpha-IoU",
        https://arxiv.org/abs/2110.13675

    Example:
        >>> import torch, focalkit as fk
        >>> pred, target = torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]])
        >>> fk.iou_loss(pred, target)  # 1 - 9/23
        tensor(0.6087)
        >>> fk.iou_loss(pred, target, mode="log")
        tensor(0.9383)
        >>> fk.iou_loss(pred, target, power=3.0)  # 1 - (9/23)^3
        tensor(0.9401)
    """
    check_choice("mode", mode, IOU_MODES)
    mods = modifiers(power, inner_ratio, focaler)
    if mode == "log" and mods["power"] != 1:
        raise ValueError(
            f"power: Alpha-IoU is 1 - IoU^a, defined for mode='linear'; got power={power!r} "
            "with mode='log'"
        )
    return box_loss(
        BoxSpec("iou", float(eps), log=mode == "log", **mods),
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def giou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
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
) -> Tensor:
    r"""Generalised IoU loss, in ``[0, 2)``:

    .. math:: L = 1 - \mathrm{IoU} + \frac{|C \setminus (A \cup B)|}{|C|}

    Alpha-GIoU (``power=a``): :math:`1 - \mathrm{IoU}^a + (|C \setminus (A \cup B)| / |C|)^a`.

    Reference:
        Rezatofighi et al., "Generalized Intersection over Union", https://arxiv.org/abs/1902.09630

    Example:
        >>> import torch, focalkit as fk
        >>> fk.giou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6887)
    """
    return box_loss(
        BoxSpec("giou", float(eps), **modifiers(power, inner_ratio, focaler)),
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def diou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
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
) -> Tensor:
    r"""Distance IoU loss, in ``[0, 2)``:

    .. math:: L = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2}

    with ``rho`` the distance of the centres and ``c`` the diagonal of the enclosing box.
    Alpha-DIoU (``power=a``): :math:`1 - \mathrm{IoU}^a + \rho^{2a} / c^{2a}`.

    Reference:
        Zheng et al., "Distance-IoU Loss", https://arxiv.org/abs/1911.08287

    Example:
        >>> import torch, focalkit as fk
        >>> fk.diou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
    """
    return box_loss(
        BoxSpec("diou", float(eps), **modifiers(power, inner_ratio, focaler)),
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def ciou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
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
) -> Tensor:
    r"""Complete IoU loss:

    .. math::

        L = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2} + a v,\quad
        v = \frac{4}{\pi^2}\Big(\arctan\frac{w_g}{h_g} - \arctan\frac{w}{h}\Big)^2,\quad
        a = \frac{v}{(1 - \mathrm{IoU}) + v}

    The trade-off ``a`` is a constant in backward (computed under no-grad); only ``v``
    carries the aspect-ratio gradient. By default ``a`` is the AAAI 2020 paper's, at every
    IoU, as in torchvision's ``complete_box_iou_loss``. The CIoU authors' later code
    (Zzh-tju/CIoU, arXiv 2005.03572) and mmdetection's ``ciou_loss`` differ: they set
    ``a = 0`` where ``IoU <= 0.5`` (CIoU is DIoU there) and clamp CIoU to ``[-1, 1]`` (the
    loss to ``[0, 2]``, zero gradient outside); ``aspect_gate=True`` gives that form.
    Alpha-CIoU (``power=a``): :math:`1 - \mathrm{IoU}^a + \rho^{2a}/c^{2a} + (a_{CIoU} v)^a`,
    the trade-off from the plain IoU, detached.

    Reference:
        Zheng et al., "Distance-IoU Loss", https://arxiv.org/abs/1911.08287; the gated form:
        Zheng et al., "Enhancing Geometric Factors into Model Learning and Inference for
        Object Detection and Instance Segmentation", https://arxiv.org/abs/2005.03572

    Example:
        >>> import torch, focalkit as fk
        >>> fk.ciou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
        >>> pred, target = torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[0.0, 0, 4, 5]])
        >>> fk.ciou_loss(pred, target), fk.ciou_loss(pred, target, aspect_gate=True)  # IoU 0.8
        (tensor(0.2062), tensor(0.2062))
        >>> pred = torch.tensor([[0.0, 0, 8, 4]])  # IoU 0.44 <= 0.5: gated, CIoU is DIoU here
        >>> fk.ciou_loss(pred, target), fk.ciou_loss(pred, target, aspect_gate=True)
        (tensor(0.6124), tensor(0.6033))
    """
    return box_loss(
        BoxSpec(
            "ciou",
            float(eps),
            aspect_gate=bool(aspect_gate),
            clamp=bool(aspect_gate),
            **modifiers(power, inner_ratio, focaler),
        ),
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def eiou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
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
) -> Tensor:
    r"""Efficient IoU loss (Zhang et al.):

    .. math::

        L = 1 - \mathrm{IoU} + \frac{\rho^2}{C_w^2 + C_h^2}
            + \frac{(w - w_g)^2}{C_w^2} + \frac{(h - h_g)^2}{C_h^2}

    This is *Efficient*-IoU (arXiv 2101.08158), not mmdetection's ``EIoULoss``, which is a
    different loss ("Extended IoU").

    Reference:
        Zhang, Ren, Zhang, Jia, Wang, Tan, "Focal and Efficient IOU Loss for Accurate
        Bounding Box Regression", https://arxiv.org/abs/2101.08158

    Example:
        >>> import torch, focalkit as fk
        >>> fk.eiou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
    """
    return box_loss(
        BoxSpec("eiou", float(eps), **modifiers(1.0, inner_ratio, focaler)),
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def focal_eiou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
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
    r"""Focal-EIoU loss: :math:`L = \mathrm{IoU}^{\gamma} L_{EIoU}` (Efficient IoU, see
    :func:`eiou_loss`), with the factor :math:`\mathrm{IoU}^{\gamma}` a constant in backward
    (detached). It up-weights high-IoU boxes; at IoU = 0 the loss is 0 (for ``gamma > 0``);
    ``gamma = 0`` gives :func:`eiou_loss`. ``gamma >= 0`` (default 0.5, the paper's). The
    factor always uses the plain IoU (Inner / Focaler change the EIoU term only).

    Reference:
        Zhang et al., https://arxiv.org/abs/2101.08158

    Example:
        >>> import torch, focalkit as fk
        >>> fk.focal_eiou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.4058)
    """
    check_nonnegative("gamma", gamma)
    return box_loss(
        BoxSpec(
            "focal_eiou", float(eps), gamma=float(gamma), **modifiers(1.0, inner_ratio, focaler)
        ),
        pred_boxes,
        target_boxes,
        _options(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


_ALPHA_MODIFIER_ARGS = _POWER_ARG + _MODIFIER_ARGS.lstrip("\n")
_CIOU_ARGS = """
        aspect_gate: False (default): the paper's trade-off ``a`` at every IoU. True: the CIoU
            authors' later code / mmdetection: ``a = 0`` where ``IoU <= 0.5`` and the loss
            clamped to ``[0, 2]``.
"""
_FOCAL_EIOU_ARGS = """
        gamma: exponent of the detached ``IoU^gamma`` factor, ``>= 0`` (default 0.5).
"""
_IOU_ARGS = """
        mode: ``"linear"`` (``1 - IoU``, default) or ``"log"`` (``-log max(IoU, eps)``).
"""
iou_loss.__doc__ = _doc(iou_loss.__doc__, _IOU_ARGS, _ALPHA_MODIFIER_ARGS)
giou_loss.__doc__ = _doc(giou_loss.__doc__, "", _ALPHA_MODIFIER_ARGS)
diou_loss.__doc__ = _doc(diou_loss.__doc__, "", _ALPHA_MODIFIER_ARGS)
ciou_loss.__doc__ = _doc(ciou_loss.__doc__, _CIOU_ARGS, _ALPHA_MODIFIER_ARGS)
eiou_loss.__doc__ = _doc(eiou_loss.__doc__)
focal_eiou_loss.__doc__ = _doc(focal_eiou_loss.__doc__, _FOCAL_EIOU_ARGS)


# --------------------------------------------------------------------------------------------
# FocalL1
# --------------------------------------------------------------------------------------------


def focal_l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1 / math.e,
    weight: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""FocalL1 loss (Zhang et al.), elementwise on ``x = |pred - target|``:

    .. math::

        L(x) = \begin{cases}
            -\frac{\alpha x^2 (2 \ln(\beta x) - 1)}{4} & 0 \le x \le 1 \\
            -\alpha \ln(\beta)\, x + \frac{2 \alpha \ln\beta + \alpha}{4} & x > 1
        \end{cases}

    the integral of the designed gradient magnitude ``-alpha x ln(beta x)`` (``x <= 1``),
    ``-alpha ln(beta)`` (``x > 1``): small for easy (small ``x``) errors, continuous at 1.

    Args:
        pred, target: tensors of the same shape (computed in float32, returned in the input
            dtype).
        alpha: scale ``> 0`` (default 1).
        beta: in ``[1/e, 1]`` (default ``1/e``).
        weight: optional elementwise weight broadcastable to ``pred``'s shape.
        reduction: ``"none"`` | ``"mean"`` (over elements) | ``"sum"``.
        normalizer: if given, ``sum / max(normalizer, 1)``; only with ``reduction="mean"``.

    Reference:
        Zhang et al., https://arxiv.org/abs/2101.08158

    Example:
        >>> import torch, focalkit as fk
        >>> fk.focal_l1_loss(torch.tensor([0.5, 2.0]), torch.zeros(2), reduction="none")
        tensor([0.2741, 1.7500])
    """
    check_floating("pred", pred)
    check_floating("target", target)
    check_same_shape("target", target, pred.shape, "the shape of pred")
    check_focal_l1(alpha, beta)
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    if weight is not None:
        check_tensor("weight", weight)
    out_dtype = output_dtype(pred)
    cdtype = compute_dtype(pred)
    with torch.autocast(pred.device.type, enabled=False):
        x = (pred.to(cdtype) - target.to(cdtype)).abs()
        alpha, log_beta = float(alpha), math.log(beta)
        # ln(beta x) at x = 0 is -inf, but x^2 ln(beta x) -> 0: take ln(beta) there (grad 0).
        log_bx = torch.log(torch.where(x > 0, x, 1.0)) + log_beta
        small = -0.25 * alpha * x * x * (2 * log_bx - 1)
        large = -alpha * log_beta * x + (2 * alpha * log_beta + alpha) / 4
        loss = torch.where(x <= 1, small, large)
        loss = reduce_loss(loss, reduction, weight=weight, normalizer=normalizer)
    return loss.to(out_dtype)
