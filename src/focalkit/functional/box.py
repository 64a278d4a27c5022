r"""Bounding-box regression losses: IoU, GIoU, DIoU, CIoU, EIoU, Focal-EIoU, and FocalL1.

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

``backend=`` chooses who computes the per-box loss: ``"torch"`` (autograd through
``_Geometry``: the reference) or ``"triton"`` (one fused kernel writing the loss and its
analytic gradient, :mod:`focalkit.kernels.triton_box`); ``"auto"`` picks Triton for
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
https://arxiv.org/abs/2101.08158.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import (
    BOX_FORMATS,
    IOU_MODES,
    check_boxes,
    check_choice,
    check_floating,
    check_focal_l1,
    check_nonnegative,
    check_normalizer,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
    check_xyxy,
)
from .._compat import compute_dtype, output_dtype
from .._reduce import reduce_loss
from ..kernels.dispatch import resolve_backend

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

_FOUR_OVER_PI2 = 4.0 / math.pi**2


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
# per-box geometry and the losses
# --------------------------------------------------------------------------------------------


class _Geometry:
    """The quantities shared by the IoU family, for xyxy boxes in the compute dtype."""

    def __init__(self, pred: Tensor, target: Tensor, eps: float) -> None:
        px1, py1, px2, py2 = pred.unbind(-1)
        tx1, ty1, tx2, ty2 = target.unbind(-1)
        self.eps = eps
        self.pw, self.ph = px2 - px1, py2 - py1
        self.tw, self.th = tx2 - tx1, ty2 - ty1
        iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
        ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
        inter = iw * ih
        self.union = self.pw * self.ph + self.tw * self.th - inter
        self.iou = inter / (self.union + eps)
        # smallest enclosing box
        self.cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
        self.ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
        self._centres = (px1 + px2 - tx1 - tx2, py1 + py2 - ty1 - ty2)

    @property
    def rho2(self) -> Tensor:
        """Squared distance of the box centres."""
        dx, dy = self._centres
        return 0.25 * (dx * dx + dy * dy)

    def giou_penalty(self) -> Tensor:
        area_c = self.cw * self.ch
        return (area_c - self.union) / (area_c + self.eps)

    def diou_penalty(self) -> Tensor:
        return self.rho2 / (self.cw * self.cw + self.ch * self.ch + self.eps)

    def ciou_penalty(self) -> Tensor:
        """``a v`` with ``a = v / ((1 - IoU) + v)`` a constant in backward (authors' code)."""
        eps = self.eps
        delta = torch.atan(self.tw / (self.th + eps)) - torch.atan(self.pw / (self.ph + eps))
        v = _FOUR_OVER_PI2 * delta * delta
        with torch.no_grad():
            a = v / ((1 - self.iou) + v + eps)
        return a * v

    def eiou_penalty(self) -> Tensor:
        eps = self.eps
        cw2, ch2 = self.cw * self.cw, self.ch * self.ch
        dw, dh = self.pw - self.tw, self.ph - self.th
        return self.rho2 / (cw2 + ch2 + eps) + dw * dw / (cw2 + eps) + dh * dh / (ch2 + eps)


def _torch_per_box(
    kind: str, pred: Tensor, target: Tensor, eps: float, gamma: float, mode: str
) -> Tensor:
    """The reference: per-box loss of xyxy boxes, autograd through :class:`_Geometry`."""
    geo = _Geometry(pred, target, eps)
    if kind == "iou":
        return 1 - geo.iou if mode == "linear" else -torch.log(geo.iou.clamp(min=eps))
    if kind == "giou":
        return 1 - geo.iou + geo.giou_penalty()
    if kind == "diou":
        return 1 - geo.iou + geo.diou_penalty()
    if kind == "ciou":
        return 1 - geo.iou + geo.diou_penalty() + geo.ciou_penalty()
    loss = 1 - geo.iou + geo.eiou_penalty()  # eiou, focal_eiou
    if kind == "focal_eiou" and gamma != 0:
        loss = geo.iou.detach().clamp(min=0).pow(gamma) * loss
    return loss


def _triton_per_box(
    kind: str, pred: Tensor, target: Tensor, eps: float, gamma: float, mode: str
) -> Tensor:
    """The same per-box loss from the fused Triton kernel (float32; gradient w.r.t. pred)."""
    from ..kernels.triton_box import TritonBoxSpec, triton_box_loss

    if kind == "iou" and mode == "log":
        kind = "iou_log"
    elif kind == "focal_eiou" and gamma == 0:
        kind = "eiou"  # the torch path skips the factor at gamma = 0 too
    if target.dtype == torch.float64:  # pred is never float64 here (dispatch rule "dtype")
        target = target.to(torch.float32)
    return triton_box_loss(pred, target, TritonBoxSpec(kind, float(eps), float(gamma)))


class _BoxOptions(NamedTuple):
    """The keywords every IoU-family loss shares (see ``_COMMON_ARGS``)."""

    box_format: str
    eps: float
    weight: Tensor | None
    reduction: str
    normalizer: float | Tensor | None
    validate: bool
    backend: str


def _box_loss(
    kind: str,
    pred_boxes: Tensor,
    target_boxes: Tensor,
    opts: _BoxOptions,
    *,
    gamma: float = 0.0,
    mode: str = "linear",
) -> Tensor:
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
        per_box = _triton_per_box if use_triton else _torch_per_box
        loss = per_box(kind, pred, target, opts.eps, gamma, mode)
        loss = reduce_loss(loss, opts.reduction, weight=opts.weight, normalizer=opts.normalizer)
    return loss.to(out_dtype)


_COMMON_ARGS = """
    Args:
        pred_boxes: ``(..., 4)`` predicted boxes (float; computed in float32 and returned in
            the input dtype, float32 under autocast).
        target_boxes: ``(..., 4)`` target boxes, the same shape.
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


def _doc(text: str | None) -> str | None:
    if not text:  # python -OO strips docstrings
        return text
    head, _, tail = text.partition("    Reference:")
    return head + _COMMON_ARGS.lstrip("\n") + "\n    Reference:" + tail


def iou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    mode: str = "linear",
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

    Reference:
        Yu et al., "UnitBox", https://arxiv.org/abs/1608.01471

    Example:
        >>> import torch, focalkit as fk
        >>> pred, target = torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]])
        >>> fk.iou_loss(pred, target)  # 1 - 9/23
        tensor(0.6087)
        >>> fk.iou_loss(pred, target, mode="log")
        tensor(0.9383)
    """
    check_choice("mode", mode, IOU_MODES)
    return _box_loss(
        "iou",
        pred_boxes,
        target_boxes,
        _BoxOptions(box_format, eps, weight, reduction, normalizer, validate, backend),
        mode=mode,
    )


def giou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
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

    Reference:
        Rezatofighi et al., "Generalized Intersection over Union", https://arxiv.org/abs/1902.09630

    Example:
        >>> import torch, focalkit as fk
        >>> fk.giou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6887)
    """
    return _box_loss(
        "giou",
        pred_boxes,
        target_boxes,
        _BoxOptions(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def diou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
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

    Reference:
        Zheng et al., "Distance-IoU Loss", https://arxiv.org/abs/1911.08287

    Example:
        >>> import torch, focalkit as fk
        >>> fk.diou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
    """
    return _box_loss(
        "diou",
        pred_boxes,
        target_boxes,
        _BoxOptions(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def ciou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
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

    The trade-off ``a`` is a constant in backward (computed under no-grad), as in the CIoU
    authors' code; only ``v`` carries the aspect-ratio gradient.

    Reference:
        Zheng et al., "Distance-IoU Loss", https://arxiv.org/abs/1911.08287

    Example:
        >>> import torch, focalkit as fk
        >>> fk.ciou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.6487)
    """
    return _box_loss(
        "ciou",
        pred_boxes,
        target_boxes,
        _BoxOptions(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def eiou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
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
    return _box_loss(
        "eiou",
        pred_boxes,
        target_boxes,
        _BoxOptions(box_format, eps, weight, reduction, normalizer, validate, backend),
    )


def focal_eiou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    gamma: float = 0.5,
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
    ``gamma = 0`` gives :func:`eiou_loss`. ``gamma >= 0`` (default 0.5, the paper's).

    Reference:
        Zhang et al., https://arxiv.org/abs/2101.08158

    Example:
        >>> import torch, focalkit as fk
        >>> fk.focal_eiou_loss(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]]))
        tensor(0.4058)
    """
    check_nonnegative("gamma", gamma)
    return _box_loss(
        "focal_eiou",
        pred_boxes,
        target_boxes,
        _BoxOptions(box_format, eps, weight, reduction, normalizer, validate, backend),
        gamma=float(gamma),
    )


for _fn in (iou_loss, giou_loss, diou_loss, ciou_loss, eiou_loss, focal_eiou_loss):
    _fn.__doc__ = _doc(_fn.__doc__)
del _fn


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
