"""Gradient harmonizing mechanism: GHM-C (classification) and GHM-R (regression).

Each element is weighted by the inverse density of its *gradient norm* ``g`` in a histogram
of ``M`` equal bins of ``[0, 1]``, so that the many easy examples (small ``g``) and the few
outliers (``g`` near 1) do not dominate the loss.

Implementation (vectorised, no host sync): the bin of each element is
``floor(g * M)`` computed in float64, where the product of a float32 ``g`` and ``M`` is exact,
so bin ``j`` holds exactly ``j/M <= g < (j+1)/M`` (left-closed; ``g = 1`` goes in the last
bin; float64 inputs round ``g * M`` once). The reference code compares with float32 edges
``arange(M + 1) / M`` instead; the two differ only for a ``g`` equal to an edge that float32
rounds below ``j/M`` (e.g. ``g = float32(0.7)`` with ``M = 10``: bin 6 here, 7 there).
Counts are integer (a ``scatter_add`` of int64 ones here; ``bincount`` in the chunked CPU
backend), so they are exact beyond ``2**24`` elements; weights are formed per bin in float64
and gathered per element. There is no Python loop over bins and no ``.item()``.

This module holds the plain formula (the ``"torch"`` backend). The fast paths are the
``"chunked"`` CPU backend (:mod:`focalkit.kernels.chunked`: the same two passes in cache-sized
chunks) and ``"triton"`` (:mod:`focalkit.kernels.triton_ghm`: the counts in one kernel, the
weighted loss and its gradient in a second one); the steps in between (all-reduce for
``sync``, EMA, per-bin weights) are the torch code below on tensors of ``bins + 1`` entries,
for every backend. :mod:`focalkit.kernels.dispatch` decides which backend runs.

Reference: B. Li, Y. Liu, X. Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019,
https://arxiv.org/abs/1811.05181 (authors' code: github.com/libuyu/GHM_Detection).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import distributed
from .._autograd import refuse_double_backward
from .._checks import (
    check_bins_momentum,
    check_broadcastable_to,
    check_elementwise_weight,
    check_floating,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
)
from .._compat import compute_dtype, output_dtype
from .._reduce import exact_sum, finish
from ..kernels.dispatch import resolve_backend
from ._targets import parse_sigmoid_targets
from .focal import bce_with_logits

_LOSSES = "focalkit GHM-C losses"  # named by the double-backward error

__all__ = ["ghm_c_loss", "ghm_r_loss"]


def index_dtype(bins: int) -> torch.dtype:
    """Smallest integer dtype holding the slots ``0 .. bins`` (bins + the dropped slot)."""
    if bins < 2**8:
        return torch.uint8
    if bins < 2**15:
        return torch.int16
    return torch.int32 if bins < 2**31 else torch.int64


# --------------------------------------------------------------------------------------------
# the gradient-density histogram, shared by GHM-C and GHM-R
# --------------------------------------------------------------------------------------------


def scaled_bins(g: Tensor, bins: int, keep: Tensor | None) -> Tensor:
    """float64 bin numbers: ``floor(g * bins)`` (exact for a float32 ``g``) capped at
    ``bins - 1``; dropped elements (not in ``keep``, or NaN) get ``bins``."""
    scaled = (
        g.to(torch.float64, copy=True)
        .mul_(bins)
        .floor_()
        .clamp_(max=bins - 1)
        .nan_to_num_(nan=bins)
    )
    if keep is not None:
        scaled = scaled.masked_fill_(keep.logical_not(), bins)
    return scaled


def bin_index(g: Tensor, bins: int, keep: Tensor | None) -> Tensor:
    """int64 bin of each ``g`` in ``[0, 1]``: bin ``j`` holds ``j/M <= g < (j+1)/M`` (``M =
    bins``; left-closed, ``g >= 1`` in the last bin); elements not in ``keep`` and NaN go to
    the extra slot ``bins``, which counts nowhere and weighs 0."""
    return scaled_bins(g, bins, keep).to(torch.int64)


def bin_counts(index: Tensor, bins: int) -> Tensor:
    """Exact int64 count of each bin ``0 .. bins - 1`` of an integer ``index`` (the slot
    ``bins`` is dropped): a fixed-size ``scatter_add`` of int64 ones, which runs on every
    device and under ``torch.compile`` without a host sync (CUDA ``bincount`` reads the
    maximum back to the host)."""
    flat = index.reshape(-1).long()
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=flat.device)
    return counts.scatter_add(0, flat, torch.ones_like(flat))[:bins]


def harmonizing_weights(
    counts: Tensor,
    total: Tensor,
    *,
    ema: Tensor | None = None,
    momentum: float = 0.0,
    update: bool = False,
) -> Tensor:
    """Per-bin weights ``total / (n_nonempty * R_j)`` (0 for empty bins) as a float64 tensor of
    ``bins + 1`` entries (the last, for dropped elements, is 0). Runs without autograd.

    * ``n_nonempty`` counts the bins that are non-empty *in this batch*: the authors' code (and
      mmdetection) divide by it, not by ``M`` as the paper writes; see the authors'
      GHM_Detection issue #13 (github.com/libuyu/GHM_Detection/issues/13).
    * ``ema`` (float64, modified in place when ``update``): ``S_j = m S_j + (1 - m) R_j`` for
      the non-empty bins, starting from 0 without bias correction; empty bins keep their old
      value; ``S_j`` replaces ``R_j``. Without ``update`` (evaluation) the stored ``S_j`` is
      used where it is positive and the batch's own ``R_j`` where the EMA has never seen the
      bin (in particular before any training update).
    """
    with torch.no_grad():
        counts = counts.to(torch.float64)
        nonempty = counts > 0
        density = counts
        if ema is not None:
            if update:
                ema.copy_(torch.where(nonempty, momentum * ema + (1.0 - momentum) * counts, ema))
                density = ema
            else:
                density = torch.where(ema > 0, ema, counts)
        n_nonempty = nonempty.sum().clamp(min=1).to(torch.float64)
        per_bin = total.to(torch.float64) / (n_nonempty * density.clamp(min=1e-300))
        per_bin = torch.where(nonempty, per_bin, 0.0)
        return torch.cat([per_bin, per_bin.new_zeros(1)])


def global_histogram(counts: Tensor, total: Tensor, world: int) -> tuple[Tensor, Tensor]:
    """All-reduce (sum) the bin counts and ``total`` in one float64 collective (exact to
    ``2**53``) when ``world > 1``; returns them as float64 tensors."""
    counts = counts.to(torch.float64)
    total = total.to(torch.float64).reshape(1)
    if world == 1:
        return counts, total.reshape(())
    packed = distributed.all_reduce_sum(torch.cat([counts, total]))
    return packed[:-1], packed[-1]


def harmonize(
    counts: Tensor,
    total: Tensor,
    world: int,
    ema: Tensor | None,
    momentum: float,
    update: bool,
) -> tuple[Tensor, Tensor]:
    """float64 per-bin weights (``bins + 1`` entries) and ``total`` (all-reduced over ``world``
    ranks, clamped to >= 1), from the local counts and total: the steps between the two passes
    over the elements, on tensors of ``bins + 1`` entries."""
    counts, total = global_histogram(counts, total, world)
    total = total.clamp(min=1)
    per_bin = harmonizing_weights(counts, total, ema=ema, momentum=momentum, update=update)
    return per_bin, total


# --------------------------------------------------------------------------------------------
# GHM-C
# --------------------------------------------------------------------------------------------


def _keep_mask(
    valid: Tensor | None, shape: torch.Size, parsed_keep: Tensor | None
) -> Tensor | None:
    if valid is None:
        return parsed_keep
    check_tensor("valid", valid)
    check_broadcastable_to("valid", valid, shape)
    mask = valid if valid.dtype == torch.bool else valid > 0
    mask = mask.expand(shape)
    return mask if parsed_keep is None else mask & parsed_keep


def gradient_norm(x: Tensor, y: Tensor) -> Tensor:
    """``g = |sigmoid(x) - y|``, the norm of d BCE / d x, in [0, 1]."""
    return torch.sigmoid(x).sub_(y).abs_()


def bin_pass_plain(x: Tensor, y: Tensor, keep: Tensor | None, bins: int) -> tuple[Tensor, Tensor]:
    """Bin index (a compact integer dtype) and int64 counts of ``g`` over flat ``x``."""
    index = scaled_bins(gradient_norm(x, y), bins, keep).to(index_dtype(bins))
    return index, bin_counts(index, bins)


def weighted_bce_plain(
    x: Tensor, y: Tensor, index: Tensor, per_bin: Tensor, reduce_sum: bool, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """``sum_i w_i BCE(x_i, y_i)`` (or the elementwise terms) with ``w_i = per_bin[index_i]``,
    and its gradient ``w_i (sigmoid(x_i) - y_i)``. BCE is
    :func:`~focalkit.functional.focal.bce_with_logits` (no cancellation)."""
    w = per_bin.take(index.long())
    loss = bce_with_logits(x, y).mul_(w)
    grad = torch.sigmoid(x).sub_(y).mul_(w) if need_grad else None
    return (exact_sum(loss) if reduce_sum else loss), grad


BinPass = Callable[[Tensor, Tensor, Tensor | None, int], tuple[Tensor, Tensor]]
WeightedBCE = Callable[[Tensor, Tensor, Tensor, Tensor, bool, bool], tuple[Tensor, Tensor | None]]


class _WeightedBCE(torch.autograd.Function):
    """:func:`weighted_bce_plain` (or the chunked backend's, passed as ``compute``) as an
    autograd Function: the gradient is formed in forward and stored, so backward is a
    multiplication by ``grad_output`` (and a second derivative, ``create_graph=True``, is
    refused rather than silently zero). Float targets that require grad get
    ``d L / d y_i = -w_i x_i`` (the weights are constants). Inputs are flat."""

    @staticmethod
    def forward(ctx, x, y, index, per_bin, reduce_sum: bool, compute: WeightedBCE):
        loss, grad = compute(x, y, index, per_bin, reduce_sum, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad, x, index, per_bin)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        refuse_double_backward(_LOSSES)
        grad, x, index, per_bin = ctx.saved_tensors
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * grad_output
        if ctx.needs_input_grad[1]:  # d BCE / d y = -x
            grad_y = per_bin.take(index.long()).mul_(x.neg()).mul_(grad_output)
        return grad_x, grad_y, None, None, None, None


def ghm_c_forward(
    logits: Tensor,
    targets: Tensor,
    *,
    bins: int,
    valid: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    ema: Tensor | None = None,
    momentum: float = 0.0,
    update: bool = False,
    sync: bool | None = False,
    backend: str = "auto",
) -> Tensor:
    """GHM-C with optional EMA state (``ema``, modified in place when ``update``): the one
    implementation behind :func:`ghm_c_loss` (stateless) and :class:`focalkit.GHMCLoss`."""
    check_floating("logits", logits)
    check_tensor("targets", targets)
    check_reduction(reduction)
    check_bins_momentum(bins, momentum)
    parsed = parse_sigmoid_targets(logits, targets, ignore_index, None)
    keep = _keep_mask(valid, logits.shape, None)
    world = distributed.sync_world_size(sync)
    lacks = "targets that require grad" if targets.requires_grad else None
    choice = resolve_backend("ghm_c_loss", backend, logits, unsupported={"triton": lacks})
    out_dtype = output_dtype(logits)
    cdtype = compute_dtype(logits)
    with torch.autocast(logits.device.type, enabled=False):
        if choice.backend == "triton":  # the mean is folded into the kernel's weights
            from ..kernels.triton_ghm import ghm_c_triton

            loss = ghm_c_triton(
                logits, parsed, keep, bins, ignore_index, reduction, world, ema, momentum, update
            )
        else:
            y, parsed_keep = parsed.to_dense(logits.shape, cdtype)
            if parsed_keep is not None:
                keep = parsed_keep if keep is None else keep & parsed_keep
            x = logits.to(cdtype).reshape(-1)
            y = y.reshape(-1)
            keep = None if keep is None else keep.reshape(-1)
            bin_pass: BinPass = bin_pass_plain
            weighted_bce: WeightedBCE = weighted_bce_plain
            if choice.backend == "chunked":
                from ..kernels.chunked import ghm_bin_pass, ghm_weighted_bce

                bin_pass, weighted_bce = ghm_bin_pass, ghm_weighted_bce
            with torch.no_grad():
                index, counts = bin_pass(x.detach(), y, keep, bins)
                per_bin, n_valid = harmonize(counts, counts.sum(), world, ema, momentum, update)
            loss = _WeightedBCE.apply(
                x, y, index, per_bin.to(cdtype), reduction != "none", weighted_bce
            )
            if reduction != "none":
                loss = finish(loss, reduction, denominator=n_valid / world)
        if reduction == "none":
            loss = loss.reshape(logits.shape)
    return loss.to(out_dtype)


def ghm_c_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    bins: int = 10,
    valid: Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    r"""GHM-C loss: binary cross-entropy re-weighted by the inverse gradient density.

    .. math::

        g_i = |\sigma(x_i) - y_i|,\qquad
        w_i = \frac{N_{valid}}{n \cdot R_{j(i)}},\qquad
        L = \frac{1}{N_{valid}} \sum_i w_i \,\mathrm{BCE}(x_i, y_i)

    ``R_j`` is the number of valid elements whose ``g`` falls in bin ``j`` of ``bins`` equal,
    left-closed bins of ``[0, 1]`` (``g = 1`` in the last one), and ``n`` the number of
    non-empty bins. Dividing by ``n`` rather than by ``M = bins`` (as the paper writes) is what
    the authors' code and mmdetection do (GHM_Detection issue #13). This function is stateless
    (momentum 0) and local to the process; :class:`focalkit.GHMCLoss` keeps an EMA of the
    counts and can all-reduce them across ranks (``sync``). The weights are constants in
    backward. ``g`` uses the detached probability. The gradient is formed in forward, so the
    loss is differentiable once: ``create_graph=True`` raises a ``RuntimeError``.

    Args:
        logits: ``(*, C)`` (or any shape) unnormalised scores; computed in float32 and returned
            in the input dtype.
        targets: the forms of :func:`focalkit.sigmoid_focal_loss`: floats in [0, 1] of the
            logits' shape (soft targets allowed), integers 0/1/``ignore_index`` of that shape, or
            class indices of shape ``logits.shape[:-1]`` (``C`` = background, ``ignore_index``
            = ignored row).
        bins: number of bins ``M >= 1`` (default 10; the paper uses 30 with the EMA Module).
        valid: optional mask of the logits' shape (bool; other dtypes are read as ``> 0``).
            Invalid and ignored elements get weight 0, count in no bin and not in ``N_valid``.
        ignore_index: label value that is ignored (integer targets).
        reduction: ``"mean"`` (the GHM-C loss above, ``N_valid`` clamped to >= 1, so an
            all-ignored batch gives 0 with zero gradient), ``"sum"`` (``sum_i w_i BCE_i``) or
            ``"none"`` (``w_i BCE_i``, the logits' shape).
        backend: ``"auto"`` (default: the Triton kernels for float32/float16/bfloat16 CUDA
            tensors when triton is importable, the ``"chunked"`` CPU path for CPU tensors,
            else the plain ``"torch"`` formula), or one of those names (``ValueError``
            where it cannot run, e.g. ``"triton"`` for float64 or a CPU tensor). Every
            backend takes every option; the Triton path builds the histogram in a kernel
            and needs no host sync. See :mod:`focalkit.kernels.dispatch`.

    Reference:
        Li, Liu, Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019,
        https://arxiv.org/abs/1811.05181

    Example:
        >>> import torch, focalkit as fk
        >>> logits = torch.tensor([-3.0, -1.0, 1.0, 2.0, 4.0, 0.5])
        >>> targets = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
        >>> valid = torch.tensor([True, True, True, True, True, False])
        >>> fk.ghm_c_loss(logits, targets, bins=4, valid=valid)
        tensor(0.8245)
    """
    return ghm_c_forward(
        logits,
        targets,
        bins=bins,
        valid=valid,
        ignore_index=ignore_index,
        reduction=reduction,
        sync=False,
        backend=backend,
    )


# --------------------------------------------------------------------------------------------
# GHM-R
# --------------------------------------------------------------------------------------------


def ghm_r_forward(
    pred: Tensor,
    target: Tensor,
    *,
    mu: float,
    bins: int,
    weight: Tensor | None,
    ema: Tensor | None = None,
    momentum: float = 0.0,
    update: bool = False,
    sync: bool | None = False,
    backend: str = "auto",
) -> Tensor:
    """GHM-R with optional EMA state: the implementation behind :func:`ghm_r_loss` and
    :class:`focalkit.GHMRLoss`."""
    check_floating("pred", pred)
    check_floating("target", target)
    check_same_shape("target", target, pred.shape, "the shape of pred")
    check_positive("mu", mu)
    check_bins_momentum(bins, momentum)
    check_elementwise_weight(weight, pred.shape)
    world = distributed.sync_world_size(sync)
    choice = resolve_backend("ghm_r_loss", backend, pred)
    out_dtype = output_dtype(pred)
    cdtype = compute_dtype(pred)
    with torch.autocast(pred.device.type, enabled=False):
        if choice.backend == "triton":
            from ..kernels.triton_ghm import ghm_r_triton

            total_loss, total = ghm_r_triton(
                pred, target, weight, mu, bins, world, ema, momentum, update
            )
        else:
            weight = None if weight is None else weight.expand(pred.shape)
            d = pred.to(cdtype) - target.to(cdtype)
            mu2 = float(mu) * float(mu)
            root = torch.sqrt(d * d + mu2)
            asl1 = d * d / (root + mu)  # = sqrt(d^2 + mu^2) - mu, without cancellation
            with torch.no_grad():
                g = d.detach().abs() / root.detach()  # in [0, 1); rounds to 1 -> last bin
                keep = None if weight is None else weight > 0
                index = bin_index(g, bins, keep)
                counts = bin_counts(index, bins)
                if weight is None:
                    total = numel_total(pred)
                else:
                    total = weight.sum(dtype=torch.float64)
                per_bin, total = harmonize(counts, total, world, ema, momentum, update)
                w = per_bin.to(cdtype).take(index)
                if weight is not None:
                    w = w * weight.to(cdtype)
            total_loss = exact_sum(asl1 * w)
        loss = finish(total_loss, "mean", denominator=total / world)
    return loss.to(out_dtype)


def numel_total(pred: Tensor) -> Tensor:
    return torch.full((), float(pred.numel()), dtype=torch.float64, device=pred.device)


def ghm_r_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mu: float = 0.02,
    bins: int = 10,
    weight: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""GHM-R loss: the authentic smooth-L1 (ASL1) re-weighted by the inverse gradient density.

    .. math::

        d = \mathrm{pred} - \mathrm{target},\qquad
        \mathrm{ASL1}(d) = \sqrt{d^2 + \mu^2} - \mu,\qquad
        g = \frac{|d|}{\sqrt{d^2 + \mu^2}}

        L = \frac{1}{N} \sum_i \lambda_i w_i \,\mathrm{ASL1}(d_i),\qquad
        w_i = \frac{N}{n \cdot R_{j(i)}}

    with the binning of :func:`ghm_c_loss` (the last bin is open: ``g < 1`` always, and a ``g``
    that rounds to 1 goes in it). ``N`` is the *sum* of the label weights ``lambda``
    (clamped to >= 1; the number of elements without ``weight``); elements with
    ``lambda <= 0`` count in no bin. For 0/1 weights (the authors' setting) this is exactly
    their code; a fractional ``lambda_i`` also scales its element's term (the reference code
    uses the weight only as a mask and in ``N``). Stateless (momentum 0) and local to the
    process; see :class:`focalkit.GHMRLoss` for the EMA and ``sync``. Weights are constants
    in backward. On the torch backend second derivatives (``create_graph=True``) are exact;
    the Triton kernel is differentiable once and raises a ``RuntimeError`` there.

    Args:
        pred, target: regression outputs and targets of the same shape, e.g. ``(N, 4)`` box
            deltas. Computed in float32, returned in ``pred``'s dtype.
        mu: ASL1 smoothness ``> 0`` (default 0.02, the authors' setting).
        bins: number of bins ``M >= 1`` (default 10).
        weight: optional label weights broadcastable to ``pred``'s shape.
        backend: ``"auto"`` (default: the Triton kernels for float32/float16/bfloat16 CUDA
            tensors when triton is importable, else the plain ``"torch"`` formula),
            ``"torch"`` or ``"triton"`` (``ValueError`` where it cannot run). Every option
            runs on both. See :mod:`focalkit.kernels.dispatch`.

    Returns:
        A scalar.

    Reference:
        Li, Liu, Wang, https://arxiv.org/abs/1811.05181

    Example:
        >>> import torch, focalkit as fk
        >>> d = torch.tensor([0.001, 0.01, 0.05, 0.5, -0.2])
        >>> fk.ghm_r_loss(d, torch.zeros(5), mu=0.02, bins=10)
        tensor(0.0780)
    """
    return ghm_r_forward(pred, target, mu=mu, bins=bins, weight=weight, sync=False, backend=backend)
