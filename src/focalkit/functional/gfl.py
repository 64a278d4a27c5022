"""IoU-aware classification and distribution regression: Quality Focal Loss, Varifocal Loss
and Distribution Focal Loss.

QFL and VFL are members of the sigmoid family of :mod:`focalkit.functional.focal`: per
element ``m(x, y) BCE(x, y)`` with their own modulating factor ``m`` (one formula,
:func:`~focalkit.functional.focal.sigmoid_terms`, one autograd Function, the same CPU chunked
path and Triton kernel as focal loss). They take focal loss's two target forms: a dense soft
target, or class indices (``C`` = background, ``ignore_index``) plus ``scores``, the target of
each positive's column (the IoU of its predicted box), never expanded to a one-hot tensor on
the fast paths.

DFL is a cross-entropy over the ``n + 1`` bins of one box side against the two-point
distribution of a continuous target: the plain formula below (``log_softmax``), the chunked
CPU path and a Triton kernel (an online softmax per row) compute the loss and its gradient in
forward.

References:
    X. Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes
    for Dense Object Detection", NeurIPS 2020, https://arxiv.org/abs/2006.04388 (QFL, DFL);
    H. Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021,
    https://arxiv.org/abs/2008.13367 (VFL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._autograd import refuse_double_backward, stored_grad
from .._checks import (
    check_distances,
    check_floating,
    check_nonnegative,
    check_nonnegative_weight,
    check_normalizer,
    check_positive_scores,
    check_reduction,
    check_scores,
    check_tensor,
    check_varifocal,
)
from .._compat import compute_dtype, may_read_values, output_dtype
from .._reduce import finish, reduction_scale
from ..kernels.dispatch import outside_compiled_graph, resolve_backend
from ._targets import SigmoidTargets, parse_sigmoid_targets
from .focal import (
    QUALITY,
    VARIFOCAL,
    GammaPlan,
    Modulation,
    run_sigmoid_family,
    times,
)

__all__ = ["distribution_focal_loss", "quality_focal_loss", "varifocal_loss"]

LOSSES = "focalkit generalized focal losses"  # named by the double-backward error


def _parse_iou_aware(
    logits: Tensor,
    targets: Tensor,
    scores: Tensor | None,
    ignore_index: int | None,
    weight: Tensor | None,
    validate: bool | None,
) -> SigmoidTargets:
    """The arguments QFL and VFL share: logits, the two target forms with ``scores`` (checked
    against the form; positives' values in [0, 1] where reading is free or with
    ``validate=True``), an elementwise non-negative ``weight``."""
    check_floating("logits", logits)
    check_tensor("targets", targets)
    parsed = parse_sigmoid_targets(logits, targets, ignore_index, validate)
    check_scores(scores, parsed.is_index, parsed.target.shape)
    read = validate is True or (validate is None and may_read_values(logits))
    if scores is not None and read:
        check_positive_scores(scores, parsed.target, parsed.num_classes)
    check_nonnegative_weight(weight, logits.shape, read)
    return parsed


# --------------------------------------------------------------------------------------------
# Quality Focal Loss
# --------------------------------------------------------------------------------------------


def quality_focal_loss(
    logits: Tensor,
    targets: Tensor,
    scores: Tensor | None = None,
    *,
    beta: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Quality Focal Loss (GFL): sigmoid BCE against a soft quality target, modulated by the
    distance between the prediction and that target.

    .. math::

        \mathrm{QFL}(x, y) = |y - \sigma(x)|^{\beta}\, \mathrm{BCE}(x, y),\qquad y \in [0, 1]

    ``y`` is the IoU of a positive's predicted box with its ground truth at the ground-truth
    class column, 0 everywhere else (at ``y = 0`` the factor is ``p^beta``, mmdetection's
    negative branch). The modulating factor is differentiated (as in mmdetection); ``0^beta``
    is taken as 0 (1 for ``beta = 0``) with a zero slope, the true slope being infinite for
    ``beta < 1``. ``beta = 0`` gives ``BCE(x, y)``. The gradient is analytic and finite at
    ``|x| = 100`` for every ``beta >= 0``.

    Args:
        logits: ``(*, C)`` pre-sigmoid scores (computed in float32, returned in the input
            dtype; float32 under autocast).
        targets: dense soft targets of the logits' shape (float, in [0, 1]; entries equal to
            ``ignore_index`` are ignored; an integer tensor is read as 0/1 with
            ``ignore_index`` entries ignored), or integer class indices of shape ``(*)``: a
            class in ``[0, C)`` (its column's target is the row's score, the others 0),
            ``C`` (background: every column 0) or ``ignore_index`` (the row is ignored).
            Both forms give the same values and gradients; the index form builds no one-hot
            tensor on the fast paths.
        scores: ``(*)`` float targets of the positives' columns (the IoU of each positive's
            box, computed under no-grad as detection heads do): required with class indices,
            refused with dense targets. Only the positive rows' scores are read; they must lie
            in [0, 1] (checked where reading is free, or with ``validate=True``).
        beta: the exponent, ``>= 0`` (default 2, the paper's).
        weight: elementwise, broadcastable to the logits' shape, ``>= 0``.
        ignore_index: see ``targets``; ``None``: nothing is ignored.
        reduction: ``"none"`` | ``"mean"`` (over the non-ignored elements) | ``"sum"``.
        normalizer: ``sum / max(normalizer, 1)``; GFL divides by the number of positive
            anchors (averaged over GPUs). Only with ``reduction="mean"``.
        validate: ``True`` checks target and score values anywhere (a device sync);
            ``None`` where it is free (CPU, eager); ``False`` never.
        backend: ``"auto"``, ``"torch"``, ``"chunked"`` (CPU) or ``"triton"`` (CUDA), as
            :func:`focalkit.sigmoid_focal_loss`; Triton lacks ``weight=`` and targets or
            scores that require grad.

    Float targets and ``scores`` that require grad get the gradient of the formula above
    (the factor differentiated through ``y`` too).

    Reference:
        Li et al., "Generalized Focal Loss", https://arxiv.org/abs/2006.04388

    Example:
        >>> import torch, focalkit as fk
        >>> logits = torch.tensor([[-2.0, 0.5, 1.0], [0.3, -1.0, 2.0]])
        >>> labels = torch.tensor([2, 3])  # row 0: class 2 (its box has IoU 0.8); row 1: background
        >>> fk.quality_focal_loss(logits, labels, torch.tensor([0.8, 0.0]), reduction="none")
        tensor([[0.0018, 0.3774, 0.0024],
                [0.2819, 0.0227, 1.6501]])
    """
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    check_nonnegative("beta", beta)
    parsed = _parse_iou_aware(logits, targets, scores, ignore_index, weight, validate)
    return run_sigmoid_family(
        "quality_focal_loss",
        logits,
        parsed,
        scores,
        mod=Modulation(QUALITY, GammaPlan.of(float(beta))),
        alpha=None,
        pos_weight=None,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )


# --------------------------------------------------------------------------------------------
# Varifocal Loss
# --------------------------------------------------------------------------------------------


def varifocal_loss(
    logits: Tensor,
    targets: Tensor,
    scores: Tensor | None = None,
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
) -> Tensor:
    r"""Varifocal Loss (VarifocalNet): BCE against an IoU-aware target, positives weighted by
    their target, negatives down-weighted as in focal loss.

    .. math::

        \mathrm{VFL}(x, q) = \begin{cases}
            q\, \mathrm{BCE}(x, q) & q > 0 \\
            \alpha\, \sigma(x)^{\gamma}\, \mathrm{BCE}(x, 0) & q = 0
        \end{cases}

    (weight 1 instead of ``q`` with ``iou_weighted=False``). Positives are the elements with
    ``q > 0`` (the paper and mmdetection), not the ground-truth columns: a ground-truth
    column whose box has IoU 0 is a negative here, where Ultralytics' ``VarifocalLoss`` gives
    it no loss. ``alpha`` weights the **negatives** (it is not focal loss's alpha): the
    negative branch is sigmoid focal loss's ``y = 0`` term with ``1 - alpha_focal = alpha``.
    ``p^gamma`` is differentiated; ``alpha = 1, gamma = 0, iou_weighted=False`` gives
    ``BCE(x, q)``. The gradient is analytic and finite at ``|x| = 100`` for every
    ``gamma >= 0``.

    Args:
        logits: ``(*, C)`` pre-sigmoid scores.
        targets: as :func:`quality_focal_loss`: dense IoU-aware targets ``q`` of the logits'
            shape, or class indices with ``scores``.
        scores: the positives' targets with class indices (see :func:`quality_focal_loss`).
        alpha: the negatives' weight, ``>= 0`` (default 0.75).
        gamma: the negatives' exponent, ``>= 0`` (default 2).
        iou_weighted: weight each positive by its target ``q`` (default), or by 1.
        weight, ignore_index, reduction, normalizer, validate, backend: as
            :func:`quality_focal_loss`. VFNet divides the sum by the number of positives
            (``normalizer=num_pos``); RT-DETR (Ultralytics) by the number of ground-truth
            boxes.

    Float targets and ``scores`` that require grad get the gradient of the formula with the
    branch of each element held fixed: ``q BCE(x, q)`` differentiated through both ``q``
    (``iou_weighted``) for a positive, ``alpha p^gamma BCE(x, q)`` through BCE for a negative.

    Reference:
        Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector",
        https://arxiv.org/abs/2008.13367

    Example:
        >>> import torch, focalkit as fk
        >>> x = torch.tensor([-2.0, 0.0, 3.0, 1.0, 0.5])
        >>> q = torch.tensor([0.0, 0.0, 0.9, 0.3, 0.0])
        >>> fk.varifocal_loss(x, q, reduction="none")
        tensor([0.0014, 0.1300, 0.3137, 0.3040, 0.2831])
    """
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    check_varifocal(alpha, gamma, iou_weighted)
    parsed = _parse_iou_aware(logits, targets, scores, ignore_index, weight, validate)
    cdtype = compute_dtype(logits)
    alpha_neg = torch.full((), float(alpha), dtype=cdtype, device=logits.device)
    return run_sigmoid_family(
        "varifocal_loss",
        logits,
        parsed,
        scores,
        mod=Modulation(VARIFOCAL, GammaPlan.of(float(gamma)), iou_weighted=iou_weighted),
        alpha=alpha_neg,
        pos_weight=None,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )


# --------------------------------------------------------------------------------------------
# Distribution Focal Loss
# --------------------------------------------------------------------------------------------


def dfl_bins(y: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The two-point target of each distance: the left bin ``l = min(floor(y), n - 1)``
    (``(M, 1)`` int64, clamped to [0, n - 1], 0 for a NaN target) and the weights
    ``(l + 1 - y, y - l)`` of bins ``l`` and ``l + 1`` (``(M, 1)``, exact in floating point).
    At ``y = n`` the weights are (0, 1): the top bin, no clamp. Targets outside [0, n]
    (unchecked) extrapolate the nearest bracket linearly."""
    left = y.floor().clamp(0, n - 1)
    left = torch.where(torch.isnan(left), 0.0, left).unsqueeze(-1)
    t = y.unsqueeze(-1)
    return left.long(), (left + 1) - t, t - left


class DflSpec(NamedTuple):
    reduce_sum: bool  # True: the (weighted) sum; False: the per-row loss


def dfl_plain(
    pred: Tensor, y: Tensor, weight: Tensor | None, spec: DflSpec, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """The ``"torch"`` backend of DFL for ``(M, n + 1)`` logits and ``(M,)`` distances
    (``weight`` ``(M,)`` or None): the loss (sum or per row) and its gradient, in the compute
    dtype:

        L     = -(w_l log p_l + w_r log p_r),  p = softmax(pred),  r = l + 1
        dL/dx = p - (w_l e_l + w_r e_r)
    """
    cdtype = compute_dtype(pred)
    x = pred.to(cdtype)
    left, w_l, w_r = dfl_bins(y.to(cdtype), x.shape[-1] - 1)
    logp = torch.log_softmax(x, dim=-1)
    loss = -(w_l * logp.gather(-1, left) + w_r * logp.gather(-1, left + 1)).squeeze(-1)
    if weight is not None:
        loss = loss * weight.to(cdtype)
    grad = None
    if need_grad:
        grad = torch.exp(logp)
        grad.scatter_add_(-1, left, w_l.neg()).scatter_add_(-1, left + 1, w_r.neg())
        if weight is not None:
            grad.mul_(weight.to(cdtype).unsqueeze(-1))
    return (loss.sum() if spec.reduce_sum else loss), grad


def dfl_target_grad(pred: Tensor, y: Tensor) -> Tensor:
    """d DFL / d y per row (unweighted): ``log p_l - log p_r = x_l - x_r`` (the bracket
    ``[l, l + 1]`` of each target held fixed)."""
    cdtype = compute_dtype(pred)
    x = pred.to(cdtype)
    left, _, _ = dfl_bins(y.to(cdtype), x.shape[-1] - 1)
    return (x.gather(-1, left) - x.gather(-1, left + 1)).squeeze(-1)


DflCompute = Callable[..., tuple[Tensor, Tensor | None]]


class _DflFunction(torch.autograd.Function):
    """Forward returns the loss and keeps its gradient (from ``compute``: :func:`dfl_plain`
    or the chunked CPU backend); backward scales it in place by ``grad_output`` (a second
    backward through a retained graph recomputes it). Targets and ``weight`` may require
    grad: ``dL/dy = w (x_l - x_r)``, ``dL/dw`` the unweighted loss."""

    @staticmethod
    def forward(ctx, pred, y, weight, spec: DflSpec, compute: DflCompute):
        loss, grad = compute(pred, y, weight, spec, ctx.needs_input_grad[0])
        ctx.spec, ctx.compute, ctx.pred_dtype = spec, compute, pred.dtype
        ctx.grad = grad  # consumed in place by the first backward
        ctx.save_for_backward(pred, y, weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward(LOSSES)
        pred, y, weight = ctx.saved_tensors
        grad_pred = grad_y = grad_w = None
        per_row = grad_output if ctx.spec.reduce_sum else grad_output.unsqueeze(-1)
        if ctx.needs_input_grad[0]:
            args = (pred, y, weight, ctx.spec, True)
            grad = stored_grad(ctx, lambda: ctx.compute(*args)[1])
            grad_pred = grad.mul_(per_row).to(ctx.pred_dtype)
        if ctx.needs_input_grad[1]:
            g = dfl_target_grad(pred, y)
            g = times(g, None if weight is None else weight.to(g.dtype))
            grad_y = (g * grad_output).to(y.dtype)
        if ctx.needs_input_grad[2]:
            unweighted, _ = dfl_plain(pred, y, None, DflSpec(False), False)
            grad_w = (unweighted * grad_output).to(weight.dtype)
        return grad_pred, grad_y, grad_w, None, None


def _dfl_apply(*args) -> Tensor:
    return _DflFunction.apply(*args)


_dfl_apply_eager = outside_compiled_graph(_dfl_apply)  # the chunked backend


def distribution_focal_loss(
    pred: Tensor,
    targets: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Distribution Focal Loss (GFL): the cross-entropy of a box side's distribution over
    ``n + 1`` bins against the two nearest bins of its continuous target.

    .. math::

        \mathrm{DFL}(S, y) = -\big((y_{r} - y) \log S_{l} + (y - y_{l}) \log S_{r}\big),\quad
        l = \min(\lfloor y \rfloor, n - 1),\ r = l + 1,\ S = \mathrm{softmax}(\text{pred})

    ``n`` is read from ``pred`` (``n = pred.shape[-1] - 1``; mmdetection calls it
    ``reg_max``, Ultralytics' ``reg_max`` is the bin count ``n + 1``). Exact at ``y = n`` (the
    top bin, weight 1), with no clamp; targets outside ``[0, n]`` raise ``ValueError`` where
    reading values is free (CPU, eager) or with ``validate=True`` (unchecked they extrapolate
    the nearest bracket). The inputs are never modified. The gradient,
    ``softmax(pred) - (w_l e_l + w_r e_r)``, is computed in forward; its minimum over ``pred``
    is the binary entropy of ``y - l``, not 0.

    Args:
        pred: ``(*, n + 1)`` logits over the bins of one side (a box: ``(N, 4, n + 1)``),
            ``n >= 1`` (computed in float32, returned in the input dtype).
        targets: ``(*)`` float distances in bin units, in ``[0, n]``. Targets that require
            grad get ``dL/dy = log S_l - log S_r``.
        weight: broadcastable to ``targets``' shape (per side, or ``(N, 1)`` per box),
            ``>= 0``; mmdetection weighs each box by its detached maximum class score,
            Ultralytics by its summed target scores.
        reduction: ``"none"`` (``targets``' shape) | ``"mean"`` (over the sides) | ``"sum"``.
        normalizer: ``sum / max(normalizer, 1)`` (e.g. ``4 * weight.sum()`` for a weighted
            mean over boxes of the 4-side mean); only with ``reduction="mean"``.
        validate: ``True`` checks the targets anywhere (a sync); ``None`` where free.
        backend: ``"auto"``, ``"torch"``, ``"chunked"`` (CPU: rows in cache-sized chunks,
            the softmax written into the gradient) or ``"triton"`` (CUDA: an online softmax
            per row); Triton lacks targets that require grad.

    Reference:
        Li et al., "Generalized Focal Loss", https://arxiv.org/abs/2006.04388

    Example:
        >>> import torch, focalkit as fk
        >>> pred = torch.tensor([[0.1, 0.5, 2.0, 0.3, -1.0]])  # n = 4
        >>> fk.distribution_focal_loss(pred, torch.tensor([2.3]))
        tensor(0.9832)
        >>> fk.distribution_focal_loss(pred, torch.tensor([4.0]))  # the top bin
        tensor(3.4732)
    """
    check_floating("pred", pred)
    check_floating("targets", targets)
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    if pred.dim() == 0 or pred.shape[-1] < 2:
        raise ValueError(
            f"pred: expected shape (*, n + 1) with n + 1 >= 2 bins, got {tuple(pred.shape)}"
        )
    if targets.shape != pred.shape[:-1]:
        raise ValueError(
            f"targets: expected shape {tuple(pred.shape[:-1])} (pred.shape[:-1]: one distance "
            f"per distribution), got {tuple(targets.shape)}"
        )
    n = pred.shape[-1] - 1
    if validate is True or (validate is None and may_read_values(targets)):
        check_distances(targets, n)
    check_nonnegative_weight(
        weight, targets.shape, validate is True or (validate is None and may_read_values(weight))
    )
    w = None if weight is None else weight.expand(targets.shape).reshape(-1)
    out_dtype = output_dtype(pred)
    triton_lacks = "targets that require grad" if targets.requires_grad else None
    choice = resolve_backend(
        "distribution_focal_loss", backend, pred, unsupported={"triton": triton_lacks}
    )
    pred2 = pred.reshape(-1, n + 1)
    y = targets.reshape(-1)
    spec = DflSpec(reduction != "none")
    with torch.autocast(pred.device.type, enabled=False):
        if choice.backend == "triton":
            from ..kernels.triton_dfl import triton_dfl

            inv = reduction_scale(
                reduction, normalizer=normalizer, denominator=y.numel(), device=pred.device
            )
            loss = triton_dfl(pred2, y, w, spec.reduce_sum, inv)
        else:
            if choice.backend == "chunked":
                from ..kernels.chunked import dfl_chunked

                loss = _dfl_apply_eager(pred2, y, w, spec, dfl_chunked)
            else:
                loss = _dfl_apply(pred2, y, w, spec, dfl_plain)
            if reduction != "none":
                loss = finish(loss, reduction, normalizer=normalizer, denominator=y.numel())
        if reduction == "none":
            loss = loss.reshape(targets.shape)
    return loss.to(out_dtype)
