"""Focal loss family: sigmoid (binary, multi-label, class-index) and softmax focal loss.

Both losses compute their value *and* their analytic gradient in one pass in float32
(custom ``torch.autograd.Function``), so backward is a multiplication by ``grad_output``.
The gradient formulas are written so that ``(1 - p_t)^(gamma - 1)`` never appears on its own:
it is always multiplied by a factor that vanishes at least as fast, which keeps the gradient
finite for every ``gamma >= 0`` (including ``0 < gamma < 1``) at ``|logit| = 100`` in
float32, float16 and bfloat16.

Reference: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, "Focal Loss for Dense Object
Detection", ICCV 2017, https://arxiv.org/abs/1708.02002.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._autograd import refuse_double_backward, stored_grad
from .._checks import (
    check_alpha,
    check_broadcastable_to,
    check_floating,
    check_nonnegative,
    check_normalizer,
    check_reduction,
    check_tensor,
    check_values_in_unit_interval,
)
from .._compat import compute_dtype, is_compiling, may_read_values, output_dtype
from .._reduce import finish, reduction_scale
from ..kernels.dispatch import resolve_backend
from ._targets import SigmoidTargets, parse_sigmoid_targets

__all__ = [
    "class_balanced_weights",
    "prior_bias",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]

Gamma = float | str | Tensor
Alpha = float | Sequence[float] | Tensor | None

# Elements per chunk on the eager CPU path: the five scratch buffers of one chunk (1 MiB each
# in float32) stay in the last-level cache, and each op still splits across threads; 2**17
# measured slower and 2**19 no faster (benchmarks/bench_focal_cpu.py). torch.compile and
# accelerators process the tensor in one piece.
CHUNK_ELEMENTS = 1 << 18
FLSD_THRESHOLD = 0.2  # Mukhoti et al.: gamma = 5 if p_t < 0.2 else 3
_LOSSES = "focalkit focal losses"  # named by the double-backward error
_TINY = 1e-30


# --------------------------------------------------------------------------------------------
# argument handling shared by both losses
# --------------------------------------------------------------------------------------------


def _check_gamma(gamma: Gamma) -> Gamma:
    if isinstance(gamma, str):
        if gamma == "flsd53":
            return gamma
        if gamma == "auto":
            raise ValueError(
                "gamma: 'auto' keeps a running estimate across batches, so it needs the Module "
                "(SigmoidFocalLoss(gamma='auto') or SoftmaxFocalLoss(gamma='auto')), "
                "not the function"
            )
        raise ValueError(f"gamma: expected a number >= 0 or 'flsd53', got {gamma!r}")
    if isinstance(gamma, Tensor):
        if gamma.dim() != 0 or not gamma.is_floating_point():
            raise ValueError(
                f"gamma: expected a number >= 0, 'flsd53' or a 0-dim float tensor, "
                f"got a {gamma.dtype} tensor of shape {tuple(gamma.shape)}"
            )
        return gamma.detach()
    check_nonnegative("gamma", gamma)
    return float(gamma)


def _alpha_tensor(alpha: Alpha, num_classes: int, like: Tensor) -> Tensor | None:
    """alpha as a tensor (0-dim or (C,)) in the compute dtype of ``like``, on its device.

    A Python number becomes a device-side fill (``torch.full``): ``torch.tensor(x,
    device="cuda")`` would copy from the host and synchronise. A list is copied to the device
    (a synchronising copy on CUDA): pass a tensor on the logits' device to avoid it."""
    if alpha is None:
        return None
    cdtype = compute_dtype(like)
    if isinstance(alpha, (int, float)):  # bool included: check_alpha refuses it
        check_alpha(alpha, num_classes)
        return torch.full((), float(alpha), dtype=cdtype, device=like.device)
    if not isinstance(alpha, Tensor):
        alpha = torch.as_tensor(alpha, dtype=torch.float64)
    check_alpha(alpha, num_classes)
    return alpha.detach().to(device=like.device, dtype=cdtype)


class _GammaPlan(NamedTuple):
    value: float  # used when tensor is None and not flsd
    tensor: Tensor | None  # a 0-dim tensor gamma (e.g. the running "auto" estimate)
    flsd: bool

    @classmethod
    def of(cls, gamma: Gamma) -> _GammaPlan:
        if isinstance(gamma, str):
            return cls(0.0, None, True)
        if isinstance(gamma, Tensor):
            return cls(0.0, gamma.float(), False)
        return cls(float(gamma), None, False)

    def is_plain(self) -> bool:
        """A Python float gamma (not "flsd53", not a tensor)."""
        return not self.flsd and self.tensor is None

    def for_q(self, q: Tensor) -> float | Tensor:
        """gamma as used on elements whose ``1 - p_t`` is ``q`` (a float or a tensor)."""
        if self.flsd:
            # p_t < 0.2  <=>  q > 0.8; the step is piecewise constant, so d gamma / d x = 0.
            return torch.where(q > 1 - FLSD_THRESHOLD, 5.0, 3.0)
        if self.tensor is not None:
            return self.tensor.to(q.device)
        return self.value


def _modulator(q: Tensor, gamma: float | Tensor) -> Tensor | None:
    """``q ** gamma``, or None for gamma == 0 (a Python float)."""
    if isinstance(gamma, float):
        if gamma == 0:
            return None
        if gamma == 1:
            return q
    return q.pow(gamma)


def _times(t: Tensor, factor: Tensor | None) -> Tensor:
    return t if factor is None else t * factor


# --------------------------------------------------------------------------------------------
# sigmoid focal loss: elementwise terms
# --------------------------------------------------------------------------------------------


def _hard_terms(
    z: Tensor, gamma: _GammaPlan, alpha_t: Tensor | None, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Loss and d loss / d z for hard targets written as ``z = x`` (negatives) or ``-x``
    (positives): ``p_t = sigmoid(-z)``, ``q = 1 - p_t = sigmoid(z)``, ``BCE = softplus(z)``.

        L      = a q^g softplus(z)
        dL/dz  = a q^g (g (1 - q) softplus(z) + q)
    """
    q = torch.sigmoid(z)
    bce = F.softplus(z)
    g = gamma.for_q(q)
    mod = _modulator(q, g)
    scale = alpha_t if mod is None else _times(mod, alpha_t)  # a q^g: loss and gradient
    loss = _times(bce, scale)
    if not need_grad:
        return loss, None
    if isinstance(g, float) and g == 0:
        grad = q
    else:
        # 1 - q loses relative precision only where q -> 1, where it is added to q ~ 1:
        # the gradient keeps float precision (no second sigmoid needed)
        one_minus_q = torch.rsub(q, 1)
        if isinstance(g, float):
            grad = torch.addcmul(q, one_minus_q, bce, value=g)
        else:
            grad = torch.addcmul(q, one_minus_q.mul_(bce), g)
    return loss, _times(grad, scale)


def _soft_terms(
    x: Tensor,
    y: Tensor,
    gamma: _GammaPlan,
    alpha_pos: Tensor | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Loss and d loss / d x for soft targets ``y`` in [0, 1] (y held fixed):

        q   = 1 - p_t = p (1 - y) + (1 - p) y,      a_t = alpha y + (1 - alpha)(1 - y)
        BCE = max(x, 0) - x y + log(1 + exp(-|x|))  (exact: no cancellation for y in {0, 1})
        L   = a_t q^g BCE
        dL/dx = a_t q^g (g r (1 - 2y) BCE + p - y), r = p (1 - p) / q  (0 <= r <= 1)

    ``r`` replaces ``q^(g-1) p (1-p)`` by ``q^g r``, which is finite for every gamma >= 0.
    """
    nx = torch.neg(x)
    p = torch.sigmoid(x)
    omp = torch.sigmoid(nx)
    q = torch.lerp(p, omp, y)
    bce = torch.relu(x).addcmul_(x, y, value=-1).add_(F.softplus(torch.minimum(x, nx)))
    alpha_t = None if alpha_pos is None else torch.lerp(1 - alpha_pos, alpha_pos, y)
    g = gamma.for_q(q)
    mod = _modulator(q, g)
    loss = _times(_times(bce, mod), alpha_t)
    if not need_grad:
        return loss, None
    grad = torch.lerp(p, omp.neg(), y)  # p - y, exact where y is 0 or 1
    if not (isinstance(g, float) and g == 0):
        # r (1 - 2y) = p (1 - p) (1 - 2y) / q  ==  (d q / d x) / q
        one = y.new_ones(())
        r = p.mul_(omp).div_(q.clamp(min=_TINY)).mul_(torch.lerp(one, one.neg(), y))
        if isinstance(g, float):
            grad.addcmul_(r, bce, value=g)
        else:
            grad.addcmul_(r.mul_(bce), g)
        grad = _times(grad, mod)
    return loss, _times(grad, alpha_t)


def _binary_terms(
    x: Tensor,
    y: Tensor,
    gamma: _GammaPlan,
    alpha_pos: Tensor | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Dense targets known to be exactly 0 or 1: ``z = x (1 - 2y)`` turns every element into
    the negative case of :func:`_hard_terms` (about half the ops of :func:`_soft_terms`)."""
    z = torch.addcmul(x, x, y, value=-2)  # exact: x or -x
    alpha_t = None if alpha_pos is None else torch.lerp(1 - alpha_pos, alpha_pos, y)
    loss, grad_z = _hard_terms(z, gamma, alpha_t, need_grad)
    if grad_z is None:
        return loss, None
    return loss, grad_z.addcmul_(grad_z, y, value=-2)  # d z / d x = 1 - 2y


def _is_binary(y: Tensor, out: Tensor | None = None) -> bool:
    """True if every entry is exactly 0 or 1 (sum |y - y^2| == 0; a sum is several times
    cheaper than ``any`` on CPU). Reads values, so it is used on CPU in eager mode only.
    ``out``: a scratch tensor of ``y``'s shape for the temporary."""
    return float(torch.addcmul(y, y, y, value=-1, out=out).abs_().sum()) == 0.0


def _positive_terms(
    x: Tensor, col: Tensor, gamma: _GammaPlan, alpha_pos: Tensor | None, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Loss and d loss / d x of each row's element at column ``col`` (``(R, 1)``) taken as
    the positive (``z = -x``), with its ``alpha``."""
    a_pos = None
    if alpha_pos is not None:
        a_pos = alpha_pos.expand(x.shape[-1])[col] if alpha_pos.dim() else alpha_pos
    loss_pos, grad_z = _hard_terms(torch.neg(x.gather(-1, col)), gamma, a_pos, need_grad)
    return loss_pos, (None if grad_z is None else grad_z.neg())


def _put_positives(t: Tensor, col: Tensor, pos: Tensor, values: Tensor) -> Tensor:
    """``t[r, col[r]] = values[r]`` in place where ``pos[r]``; returns ``t``."""
    return t.scatter_(-1, col, torch.where(pos, values, t.gather(-1, col)))


def _index_terms(
    x: Tensor,
    labels: Tensor,
    valid: Tensor,
    gamma: _GammaPlan,
    alpha_pos: Tensor | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Class-index targets on an (R, C) chunk without a one-hot tensor: every element is
    computed as a negative, then the (at most one per row) positive is gathered, recomputed
    with ``z = -x`` and scattered back; ignored rows are zeroed."""
    num_classes = x.shape[-1]
    alpha_neg = None if alpha_pos is None else 1 - alpha_pos
    loss, grad = _hard_terms(x, gamma, alpha_neg, need_grad)

    is_pos = (labels >= 0) & (labels < num_classes) & valid
    col = labels.clamp(0, num_classes - 1).unsqueeze(-1)
    loss_pos, grad_pos = _positive_terms(x, col, gamma, alpha_pos, need_grad)
    pos = is_pos.unsqueeze(-1)
    row_valid = valid.unsqueeze(-1).to(x.dtype)
    # loss and grad are fresh temporaries of this chunk: update them in place
    _put_positives(loss, col, pos, loss_pos).mul_(row_valid)
    if grad is not None:
        _put_positives(grad, col, pos, grad_pos).mul_(row_valid)
    return loss, grad


# --------------------------------------------------------------------------------------------
# sigmoid focal loss: the CPU eager path for hard targets (no temporaries)
# --------------------------------------------------------------------------------------------


class _ChunkViews(NamedTuple):
    bufs: tuple[Tensor, ...]  # five scratch tensors of the chunk's shape
    alpha_neg: Tensor | None  # 1 - alpha broadcast to the chunk (None: not filled)
    alpha_pos: Tensor | None  # alpha broadcast to the chunk


class _Scratch:
    """Chunk-sized buffers allocated once per call and reused by every chunk: on the CPU
    eager path every elementwise op writes into one of them (``out=``) rather than allocating
    a fresh temporary, whose first touch costs page faults (about as much as the op itself).
    The views of a chunk's shape are made once (a call has at most two chunk shapes).

    With ``alpha_pos``, ``1 - alpha`` and ``alpha`` are broadcast to one chunk (filled once),
    so ``alpha_t`` is one ``lerp`` between contiguous tensors: exact for 0/1 targets (``lerp``
    returns its end points there), unlike ``(1 - alpha) + (2 alpha - 1) y``, and without the
    slow path that broadcasting a 0-dim operand takes in a ternary op."""

    def __init__(
        self, rows: int, cols: int, like: Tensor, dtype: torch.dtype, alpha_pos: Tensor | None
    ) -> None:
        self._buf = torch.empty((5, rows, cols), dtype=dtype, device=like.device)
        self._alpha = None
        if alpha_pos is not None:
            ends = torch.stack([1 - alpha_pos, alpha_pos]).reshape(2, 1, -1)
            self._alpha = ends.expand(2, rows, cols).contiguous()
        self._views: dict[int, _ChunkViews] = {}

    def __call__(self, rows: int) -> _ChunkViews:
        views = self._views.get(rows)
        if views is None:
            alpha = (None, None) if self._alpha is None else self._alpha[:, :rows].unbind(0)
            views = self._views[rows] = _ChunkViews(self._buf[:, :rows].unbind(0), *alpha)
        return views


def _hard_chunk(
    z: Tensor,
    gamma: float,
    scale: Tensor | float | None,
    sign: Tensor | None,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
    bufs: tuple[Tensor, ...],
    drop: tuple[Tensor, Tensor] | None = None,
) -> Tensor | None:
    """:func:`_hard_terms` for one CPU chunk, written into ``bufs``, ``loss_out`` and
    ``grad_out`` (no allocation of the chunk's size).

    ``scale`` (``a`` in the formulas: ``alpha_t``, a tensor of the chunk's shape, a float or
    None) multiplies loss and gradient. ``sign`` (the 0/1 targets, or None) multiplies the
    gradient by ``dz/dx = 1 - 2y``. Returns the chunk's summed loss when ``loss_out`` is None
    (else writes the elementwise loss there); the gradient goes to ``grad_out`` if given.
    ``drop = (col, keep)`` removes the terms at ``(row, col[row])`` where ``keep`` is False
    from the returned sum (the caller overwrites those slots of ``loss_out``/``grad_out``).
    ``bufs``: the five scratch tensors of the chunk's shape; ``z`` may be ``bufs[2]`` and
    ``scale`` ``bufs[3]`` (each is dead by the time its slot is written)."""
    q = torch.sigmoid(z, out=bufs[0])
    # BCE = softplus(z) = max(z, 0) - log1p(-min(q, 1 - q)), formed from q in less time than
    # softplus takes on CPU. min(q, 1 - q) is q itself for z <= 0 (log1p keeps its relative
    # precision for tiny q) and 1 - q for z > 0, where its absolute error (~6e-8) is
    # negligible against BCE > log(2): relative error below 1e-7 either way.
    t = torch.add(q, -1, out=bufs[4])  # q - 1, reused by the gradient
    bce = torch.clamp_min(z, 0, out=bufs[1])
    v = torch.maximum(torch.neg(q, out=bufs[2]), t, out=bufs[2])
    bce.sub_(torch.log1p(v, out=v))
    const = 1.0
    if isinstance(scale, float):
        const, scale = scale, None
    mod = None if gamma == 0 else q if gamma == 1 else torch.pow(q, gamma, out=bufs[2])
    if scale is not None:
        mod = scale if mod is None else torch.mul(mod, scale, out=bufs[2])
    # mod is now a q^g (None: 1), still to be multiplied by const
    if drop is not None:
        # zero a factor of the dropped terms; their gradient slots are overwritten later
        col, keep = drop
        factor = bce if gamma == 0 else mod  # gamma == 0: the gradient does not use BCE
        factor.scatter_(-1, col, factor.gather(-1, col).mul_(keep))
    partial = None
    if loss_out is None:
        partial = bce.sum() if mod is None else torch.dot(bce.view(-1), mod.reshape(-1))
        if const != 1.0:
            partial = partial * const
    else:
        if mod is None:
            loss_out.copy_(bce)
        else:
            torch.mul(bce, mod, out=loss_out)
        if const != 1.0:
            loss_out.mul_(const)
    if grad_out is None:
        return partial
    # dL/dz = a q^g (q + g (1 - q) BCE); t = q - 1 is exact to float precision where it matters
    if gamma == 0:
        t = q
    else:
        t = torch.addcmul(q, t, bce, value=-gamma, out=t)
    if sign is not None:
        if mod is not None:
            t = t.mul_(mod)
        torch.addcmul(t, t, sign, value=-2, out=grad_out)  # dz/dx = 1 - 2y
    elif mod is not None:
        torch.mul(t, mod, out=grad_out)
    else:
        grad_out.copy_(t)
    if const != 1.0:
        grad_out.mul_(const)
    return partial


def _binary_chunk(
    x: Tensor,
    y: Tensor,
    gamma: float,
    views: _ChunkViews,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
) -> Tensor | None:
    """:func:`_binary_terms` for one CPU chunk of 0/1 targets, through :func:`_hard_chunk`."""
    bufs = views.bufs
    alpha_t = None
    if views.alpha_neg is not None:
        alpha_t = torch.lerp(views.alpha_neg, views.alpha_pos, y, out=bufs[3])
    z = torch.addcmul(x, x, y, value=-2, out=bufs[2])  # exact: x or -x
    return _hard_chunk(z, gamma, alpha_t, y, loss_out, grad_out, bufs)


def _index_chunk(
    x: Tensor,
    labels: Tensor,
    gamma: _GammaPlan,
    alpha_pos: Tensor | None,
    views: _ChunkViews,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
) -> Tensor | None:
    """:func:`_index_terms` for one CPU chunk whose rows are all valid: every element as a
    negative through :func:`_hard_chunk` (the positives' slots left out of the sum), then the
    (at most one per row) positive recomputed with ``z = -x`` and scattered in."""
    num_classes = x.shape[-1]
    if alpha_pos is None:
        scale = None
    elif alpha_pos.dim() == 0:
        scale = 1.0 - float(alpha_pos)
    else:
        scale = views.alpha_neg
    is_pos = (labels < num_classes).unsqueeze(-1)  # valid rows: labels in [0, C]
    col = labels.clamp(max=num_classes - 1).unsqueeze(-1)
    drop = (col, is_pos.logical_not().to(x.dtype))
    partial = _hard_chunk(x, gamma.value, scale, None, loss_out, grad_out, views.bufs, drop)
    loss_pos, grad_pos = _positive_terms(x, col, gamma, alpha_pos, grad_out is not None)
    if grad_out is not None:
        _put_positives(grad_out, col, is_pos, grad_pos)
    if loss_out is not None:
        _put_positives(loss_out, col, is_pos, loss_pos)
        return None
    return partial + torch.where(is_pos, loss_pos, 0).sum()


# --------------------------------------------------------------------------------------------
# sigmoid focal loss: chunked driver and autograd.Function
# --------------------------------------------------------------------------------------------


class _SigmoidSpec(NamedTuple):
    gamma: _GammaPlan
    reduce_sum: bool  # True: return the (weighted) sum; False: the elementwise loss
    index_form: bool


def _rows_per_chunk(rows: int, cols: int, device: torch.device) -> int:
    if is_compiling() or device.type != "cpu":
        return max(rows, 1)
    return max(1, CHUNK_ELEMENTS // max(cols, 1))


def _sigmoid_forward(
    logits: Tensor,
    target: Tensor,
    valid: Tensor | None,
    weight: Tensor | None,
    alpha_pos: Tensor | None,
    spec: _SigmoidSpec,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Loss (sum or elementwise, compute dtype) and gradient (compute dtype) of the sigmoid
    focal loss, processing rows of the (R, C) view in cache-sized chunks."""
    cdtype = compute_dtype(logits)
    cols = logits.shape[-1] if logits.dim() else 1
    x2 = logits.reshape(-1, cols)
    rows = x2.shape[0]
    t2 = target.reshape(rows) if spec.index_form else target.reshape(rows, cols)
    v2 = (
        None
        if valid is None
        else valid.reshape(rows)
        if spec.index_form
        else valid.reshape(rows, cols)
    )
    w2 = None if weight is None else weight.expand(logits.shape).reshape(rows, cols)

    grad = torch.empty((rows, cols), dtype=cdtype, device=logits.device) if need_grad else None
    out = None if spec.reduce_sum else torch.empty((rows, cols), dtype=cdtype, device=logits.device)
    total = torch.zeros((), dtype=cdtype, device=logits.device)
    step = _rows_per_chunk(rows, cols, logits.device)
    check_binary = may_read_values(logits)  # free on CPU in eager mode, a sync elsewhere
    binary = v2 is not None  # integer dense targets: hard 0/1 by construction
    # CPU eager, a float gamma and no elementwise weight: chunks of hard targets go through
    # _hard_chunk, which writes into per-call scratch buffers instead of allocating
    scratch = None
    if check_binary and spec.gamma.is_plain() and w2 is None and rows:
        # a broadcast alpha is needed except for a scalar alpha on index targets (a float)
        broadcast = alpha_pos is not None and (alpha_pos.dim() or not spec.index_form)
        scratch = _Scratch(min(step, rows), cols, logits, cdtype, alpha_pos if broadcast else None)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        xs = x2[start:stop].to(cdtype)
        loss_out = None if out is None else out[start:stop]
        grad_out = None if grad is None else grad[start:stop]
        if spec.index_form:
            if scratch is not None and bool(v2[start:stop].all()):
                views = scratch(stop - start)
                partial = _index_chunk(
                    xs, t2[start:stop], spec.gamma, alpha_pos, views, loss_out, grad_out
                )
                if partial is not None:
                    total = total + partial
                continue
            loss, g = _index_terms(
                xs, t2[start:stop], v2[start:stop], spec.gamma, alpha_pos, need_grad
            )
        else:
            ys = t2[start:stop].to(cdtype)
            views = None if scratch is None or v2 is not None else scratch(stop - start)
            scratch_t = None if views is None else views.bufs[0]
            hard = binary or (check_binary and _is_binary(ys, scratch_t))
            if hard and views is not None:
                partial = _binary_chunk(xs, ys, spec.gamma.value, views, loss_out, grad_out)
                if partial is not None:
                    total = total + partial
                continue
            terms = _binary_terms if hard else _soft_terms
            loss, g = terms(xs, ys, spec.gamma, alpha_pos, need_grad)
            if v2 is not None:
                vs = v2[start:stop].to(cdtype)
                loss = loss * vs
                g = None if g is None else g * vs
        if w2 is not None:
            ws = w2[start:stop].to(cdtype)
            loss = loss * ws
            g = None if g is None else g * ws
        if spec.reduce_sum:
            total = total + loss.sum()
        else:
            loss_out.copy_(loss)
        if g is not None:
            grad_out.copy_(g)
    if grad is not None:
        grad = grad.reshape(logits.shape)
    return (total if spec.reduce_sum else out.reshape(logits.shape)), grad


class _SigmoidFocalFunction(torch.autograd.Function):
    """Forward returns the loss and keeps its gradient; backward scales that gradient by
    ``grad_output`` in place (no second full-size tensor). A later backward through the same
    graph (``retain_graph=True``) recomputes the gradient, so it stays exact.

    ``weight`` may require grad (d loss / d weight is the unweighted loss, recomputed);
    targets, alpha and gamma are constants.
    """

    @staticmethod
    def forward(ctx, logits, target, valid, weight, alpha_pos, spec: _SigmoidSpec):
        need_grad = ctx.needs_input_grad[0]
        loss, grad = _sigmoid_forward(logits, target, valid, weight, alpha_pos, spec, need_grad)
        ctx.spec = spec
        ctx.logits_dtype = logits.dtype
        ctx.grad = grad  # not save_for_backward: it is consumed in place by the first backward
        ctx.save_for_backward(logits, target, valid, weight, alpha_pos)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward(_LOSSES)
        logits, target, valid, weight, alpha_pos = ctx.saved_tensors
        grad_logits = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad = stored_grad(
                ctx,
                lambda: _sigmoid_forward(logits, target, valid, weight, alpha_pos, ctx.spec, True)[
                    1
                ],
            )
            grad_logits = grad.mul_(grad_output).to(ctx.logits_dtype)
        if ctx.needs_input_grad[3]:
            spec = ctx.spec._replace(reduce_sum=False)
            unweighted, _ = _sigmoid_forward(logits, target, valid, None, alpha_pos, spec, False)
            g = unweighted * grad_output
            # sum over the dimensions that weight was broadcast along
            grad_weight = g.sum_to_size(weight.shape).to(weight.dtype)
        return grad_logits, None, None, grad_weight, None, None


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: Alpha = 0.25,
    gamma: Gamma = 2.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Sigmoid focal loss (binary, multi-label, or RetinaNet-style class-index targets).

    .. math::

        \mathrm{FL}(p_t) = -\alpha_t (1 - p_t)^{\gamma} \log(p_t),\quad
        p = \sigma(x),\; p_t = p y + (1 - p)(1 - y),\;
        \alpha_t = \alpha y + (1 - \alpha)(1 - y)

    ``log(p_t)`` is computed as BCE-with-logits (softplus form), never ``log(sigmoid(x))``;
    the gradient is analytic and finite for every ``gamma >= 0`` at any logit.

    Args:
        logits: ``(*, C)`` pre-sigmoid scores, any floating dtype (computed in float32,
            returned in the input dtype; float32 under autocast).
        targets: either a floating tensor of the logits' shape (binary or soft targets in
            [0, 1]; an integer/bool tensor of that shape is read as hard 0/1 labels with
            ``ignore_index`` entries ignored), or an integer tensor of shape ``(*)`` holding per
            row a class in ``[0, C)`` (positive for that column), ``C`` (background: all
            columns negative) or ``ignore_index`` (row ignored). The index form gives the same
            values and gradients as the one-hot form without building it.
        alpha: weight of the positive class (``1 - alpha`` for negatives); a float, a tensor of
            shape ``(C,)`` (per class), or ``None`` for no weighting. Default 0.25 (RetinaNet).
        gamma: focusing parameter ``>= 0`` (default 2), ``"flsd53"`` (Mukhoti et al. 2020:
            5 where ``p_t < 0.2``, else 3) or a 0-dim tensor (treated as a constant).
        weight: elementwise weight broadcastable to the logits' shape (never broadcasting the
            loss to a larger shape).
        ignore_index: label value (index or integer dense form) that contributes nothing.
        reduction: ``"none"`` (the logits' shape), ``"mean"`` (over non-ignored elements) or
            ``"sum"``.
        normalizer: if given, return ``sum / max(normalizer, 1)`` (detection convention: the
            number of positive anchors). Only with ``reduction="mean"``.
        validate: ``True`` checks target values (a device sync); ``None`` (default) checks
            class indices only where it is free (CPU, eager); ``False`` checks nothing.
        backend: ``"auto"`` (default: the Triton kernel for float32/float16/bfloat16 CUDA
            tensors when triton is installed, else torch), ``"torch"`` or ``"triton"``
            (``ValueError`` where it cannot run). ``weight=``, ``gamma="flsd53"`` and tensor
            gamma always run on torch; see :mod:`focalkit.kernels.dispatch`.

    Returns:
        A scalar, or the logits' shape for ``reduction="none"``.

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", https://arxiv.org/abs/1708.02002

    Example:
        >>> import torch, focalkit as fk
        >>> logits = torch.tensor([[-2.0, 0.0, 3.0]])
        >>> targets = torch.tensor([[0.0, 1.0, 1.0]])
        >>> fk.sigmoid_focal_loss(logits, targets, reduction="none")
        tensor([[1.3527e-03, 4.3322e-02, 2.7321e-05]])
        >>> labels = torch.tensor([1, 3])  # row 0: class 1; row 1: background (C = 3)
        >>> fk.sigmoid_focal_loss(torch.zeros(2, 3), labels, normalizer=1.0)
        tensor(0.6931)
    """
    check_floating("logits", logits)
    check_tensor("targets", targets)
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    gamma = _check_gamma(gamma)
    parsed: SigmoidTargets = parse_sigmoid_targets(logits, targets, ignore_index, validate)
    alpha_pos = _alpha_tensor(alpha, parsed.num_classes, logits)
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable_to("weight", weight, logits.shape)
    out_dtype = output_dtype(logits)
    spec = _SigmoidSpec(_GammaPlan.of(gamma), reduction != "none", parsed.is_index)
    if parsed.is_index:
        target, valid = parsed.labels, parsed.valid_rows
    else:
        target, valid = parsed.dense, parsed.dense_valid
    unsupported = None  # options only the torch backend has (see kernels/dispatch.py)
    if weight is not None:
        unsupported = "weight="
    elif not isinstance(gamma, float):
        unsupported = f"gamma={gamma!r}"
    use_triton = resolve_backend(backend, logits, unsupported=unsupported) == "triton"
    with torch.autocast(logits.device.type, enabled=False):
        if use_triton:
            from ..kernels.triton_sigmoid_focal import TritonSigmoidSpec, triton_sigmoid_focal

            tspec = TritonSigmoidSpec(gamma, spec.reduce_sum, parsed.is_index, ignore_index)
            # the reduction is folded into the kernel's gradient (see kernels/triton_scale.py)
            inv = reduction_scale(
                reduction,
                normalizer=normalizer,
                denominator=parsed.valid_count(logits.numel()),
                device=logits.device,
            )
            loss = triton_sigmoid_focal(
                logits, target, None if parsed.is_index else valid, alpha_pos, tspec, inv
            )
        else:
            loss = _SigmoidFocalFunction.apply(logits, target, valid, weight, alpha_pos, spec)
            if reduction != "none":
                loss = finish(
                    loss,
                    reduction,
                    normalizer=normalizer,
                    denominator=parsed.valid_count(logits.numel()),
                )
    return loss.to(out_dtype)


# --------------------------------------------------------------------------------------------
# softmax focal loss
# --------------------------------------------------------------------------------------------


def _softmax_focal_terms(logp: Tensor, gamma: _GammaPlan) -> tuple[Tensor, Tensor]:
    """For each log-probability: the focal term ``ell = -(1-p)^g log p`` and
    ``G = (1-p)^g - g (1-p)^(g-1) p log p`` (so that d ell / d x_j = G (p_j - [j = c])).

    ``(1-p)^(g-1) log p`` is written ``(1-p)^g * (log p / (1-p))`` with the ratio -> -1 as
    p -> 1, which keeps G finite for every gamma >= 0."""
    one_minus_p = torch.expm1(logp).neg_()  # accurate 1 - p near p = 1
    g = gamma.for_q(one_minus_p)
    mod = _modulator(one_minus_p, g)
    ell = _times(logp.neg(), mod)
    if isinstance(g, float) and g == 0:
        return ell, torch.ones_like(logp)
    ratio = torch.where(one_minus_p > 0, logp / one_minus_p.clamp(min=_TINY), -1.0)
    p = torch.exp(logp)
    G = (1 - g * p * ratio) if not isinstance(g, float) else torch.mul(p, ratio).mul_(-g).add_(1)
    return ell, _times(G, mod)


class _SoftmaxSpec(NamedTuple):
    gamma: _GammaPlan
    reduce_sum: bool
    index_form: bool
    label_smoothing: float
    ignore_index: int


def _weight_sum(valid: Tensor, safe: Tensor, class_weight: Tensor | None, dtype) -> Tensor:
    """``sum w[y]`` over the ``valid`` rows (``w = 1`` without ``class_weight``; ``safe``: the
    labels with invalid rows at 0): ``F.cross_entropy``'s mean denominator, in ``dtype``."""
    if class_weight is None:
        return valid.sum(dtype=dtype)
    return (class_weight.to(dtype).take(safe) * valid).sum()


def _index_denominator(
    labels: Tensor, class_weight: Tensor | None, num_classes: int, ignore_index: int
) -> Tensor:
    """:func:`_weight_sum` (float32) over the rows the Triton kernel counts (``0 <= y < C``,
    ``y != ignore_index``), taken from the ``(M,)`` labels before the kernel runs."""
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    return _weight_sum(valid, torch.where(valid, labels, 0).long(), class_weight, torch.float32)


def _softmax_forward(
    logits: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    alpha: Tensor | None,
    spec: _SoftmaxSpec,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns (loss sum or per-sample loss, mean denominator, gradient) for logits in
    channel-last layout ``(M, C)``.

    Per-class form (used for probability targets and for label smoothing):
    ``L = -sum_c u_c (1-p_c)^g log p_c`` with ``u_c = alpha_c w_c t_c``; its gradient is
    ``p_j sum_c u_c G_c - u_j G_j``. Index form without smoothing is the special case
    ``t = onehot(y)``, computed by a gather instead."""
    cdtype = compute_dtype(logits)
    x = logits.to(cdtype)
    num_classes = x.shape[-1]
    per_class_scale = None  # alpha_c * w_c, shape (C,)
    if class_weight is not None:
        per_class_scale = class_weight.to(cdtype)
    if alpha is not None and alpha.dim() == 1:
        per_class_scale = _times(alpha.to(cdtype), per_class_scale)
    global_alpha = alpha if (alpha is not None and alpha.dim() == 0) else None

    eps = spec.label_smoothing
    # CPU eager, class indices, no smoothing: _softmax_index_chunks, which needs no log_softmax
    cpu_index = spec.index_form and eps == 0 and may_read_values(x)
    logp = None if cpu_index else torch.log_softmax(x, dim=-1)
    if spec.index_form:
        valid = target != spec.ignore_index
        safe = torch.where(valid, target, 0).long().unsqueeze(-1)
        denominator = _weight_sum(valid, safe.squeeze(-1), class_weight, cdtype)
        if cpu_index:
            loss, grad = _softmax_index_chunks(
                x, safe, valid, per_class_scale, global_alpha, spec.gamma, need_grad
            )
            global_alpha = None  # applied per row in the chunks
        elif eps == 0:
            logp_y = logp.gather(-1, safe)
            ell, G = _softmax_focal_terms(logp_y, spec.gamma)
            u = valid.unsqueeze(-1).to(cdtype)
            if per_class_scale is not None:
                u = u * per_class_scale[safe]
            loss = (ell * u).squeeze(-1)
            grad = None
            if need_grad:
                grad = torch.exp(logp).mul_(G * u)
                grad.scatter_add_(-1, safe, (G * u).neg())
        else:
            t = torch.full_like(x, eps / num_classes)
            t.scatter_add_(-1, safe, torch.full_like(logp[:, :1], 1 - eps))
            u = t * valid.unsqueeze(-1)
            loss, grad = _per_class(logp, u, per_class_scale, spec.gamma, need_grad)
    else:
        t = target.to(cdtype)
        if eps > 0:
            t = t * (1 - eps) + eps / num_classes
        denominator = torch.full((), float(x.shape[0]), dtype=cdtype, device=x.device)
        loss, grad = _per_class(logp, t, per_class_scale, spec.gamma, need_grad)
    if global_alpha is not None:
        a = global_alpha.to(cdtype)
        loss = loss * a
        grad = None if grad is None else grad * a
    if spec.reduce_sum:
        loss = loss.sum()
    return loss, denominator, grad


def _softmax_index_chunks(
    x: Tensor,
    safe: Tensor,
    valid: Tensor,
    per_class_scale: Tensor | None,
    global_alpha: Tensor | None,
    gamma: _GammaPlan,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """The index form without label smoothing on the CPU eager path: ``softmax`` written
    straight into the gradient (or, without one, into a cache-sized scratch, chunk by chunk)
    and ``log p`` formed at the target column only; no temporary of the logits' size besides
    the gradient. Returns the per-row loss and the gradient.

    ``rest = 1 - p_y`` is the sum of the other columns' probabilities (no cancellation), so
    ``log p_y`` is ``log1p(-rest)`` for ``p_y >= 1/2`` (exact where ``log_softmax`` rounds
    ``-log(1 + tiny)`` to 0) and ``log(p_y)`` below; rows where ``p_y`` underflows below the
    smallest normal float are recomputed with ``log_softmax``. The gradient is ``p_j G u`` off
    the target column and ``-rest G u`` on it."""
    rows, num_classes = x.shape
    # with a gradient, softmax writes into it: one piece (the per-row work is a few dozen
    # small ops, so fewer pieces are faster); without, cache-sized pieces bound the scratch
    step = max(rows, 1) if need_grad else _rows_per_chunk(rows, num_classes, x.device)
    buf = None if need_grad else x.new_empty((min(step, rows), num_classes))
    loss = x.new_empty(rows)
    grad = torch.empty_like(x) if need_grad else None
    tiny = torch.finfo(x.dtype).tiny
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        xs = x[start:stop]
        out = buf[: stop - start] if grad is None else grad[start:stop]
        p = torch.softmax(xs, -1, out=out)
        col = safe[start:stop]
        p_y = p.gather(-1, col)
        rest = p.scatter_(-1, col, 0.0).sum(-1, keepdim=True)  # 1 - p_y
        logp_y = torch.where(p_y < 0.5, torch.log(p_y), torch.log1p(rest.neg()))
        underflow = p_y < tiny
        if bool(underflow.any()):  # CPU eager: reading the flag is free
            r = underflow.squeeze(-1).nonzero().squeeze(-1)
            logp_y[r] = torch.log_softmax(xs[r], -1).gather(-1, col[r])
        ell, G = _softmax_focal_terms(logp_y, gamma)
        u = valid[start:stop].unsqueeze(-1).to(x.dtype)
        if per_class_scale is not None:
            u = u * per_class_scale[col]
        if global_alpha is not None:
            u = u * global_alpha.to(x.dtype)
        loss[start:stop] = (ell * u).squeeze(-1)
        if grad is not None:
            Gu = G * u
            p.mul_(Gu).scatter_(-1, col, rest.neg_().mul_(Gu))
    return loss, grad


def _per_class(
    logp: Tensor, u: Tensor, scale: Tensor | None, gamma: _GammaPlan, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    u = _times(u, scale)
    ell, G = _softmax_focal_terms(logp, gamma)
    loss = (ell * u).sum(-1)
    if not need_grad:
        return loss, None
    uG = G * u
    grad = torch.exp(logp) * uG.sum(-1, keepdim=True) - uG
    return loss, grad


class _SoftmaxFocalFunction(torch.autograd.Function):
    """Like :class:`_SigmoidFocalFunction`: the gradient is formed in forward and scaled in
    place by ``grad_output`` in backward; a second backward through a retained graph
    recomputes it."""

    @staticmethod
    def forward(ctx, logits, target, class_weight, alpha, spec: _SoftmaxSpec):
        loss, denominator, grad = _softmax_forward(
            logits, target, class_weight, alpha, spec, ctx.needs_input_grad[0]
        )
        ctx.logits_dtype = logits.dtype
        ctx.spec = spec
        ctx.grad = grad  # consumed in place by the first backward
        ctx.save_for_backward(logits, target, class_weight, alpha)
        ctx.mark_non_differentiable(denominator)
        return loss, denominator

    @staticmethod
    def backward(ctx, grad_output, _grad_denominator):
        refuse_double_backward(_LOSSES)
        grad = stored_grad(ctx, lambda: _softmax_forward(*ctx.saved_tensors, ctx.spec, True)[2])
        if not ctx.spec.reduce_sum:
            grad_output = grad_output.unsqueeze(-1)
        return grad.mul_(grad_output).to(ctx.logits_dtype), None, None, None, None


def _channel_last(logits: Tensor) -> Tensor:
    """(N, C, d1, ...) -> (N * d1 * ..., C); (N, C) unchanged; (C,) -> (1, C)."""
    if logits.dim() == 1:
        return logits.unsqueeze(0)
    if logits.dim() == 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def softmax_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: Alpha = None,
    gamma: Gamma = 2.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Softmax (multi-class) focal loss with the conventions of ``F.cross_entropy``.

    .. math::

        \mathrm{FL} = -\alpha_t (1 - p_t)^{\gamma} \log p_t,\qquad p_t = \mathrm{softmax}(x)_y

    With ``gamma=0`` and ``alpha=None`` it equals ``F.cross_entropy`` in value and gradient
    for every combination of shapes, ``weight``, ``ignore_index``, ``label_smoothing`` and
    ``reduction``. Probability targets and label smoothing use the per-class form
    ``-sum_c alpha_c w_c t_c (1 - p_c)^gamma log p_c`` (which is the formula above for one-hot
    ``t``). The gradient is analytic and finite for every ``gamma >= 0``.

    Args:
        logits: ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)`` unnormalised scores (computed in
            float32, returned in the input dtype; float32 under autocast).
        targets: class indices of shape ``(N,)`` / ``(N, d1, ...)`` / ``()`` in ``[0, C)`` or
            ``ignore_index``, or class probabilities of the logits' shape.
        alpha: ``None`` (off), a float (a global scale) or a ``(C,)`` tensor
            (``alpha_t = alpha[y]``).
        gamma: ``>= 0`` (default 2), ``"flsd53"`` (5 where ``p_t < 0.2``, else 3; Mukhoti et al.
            2020) or a 0-dim tensor (a constant).
        weight: per-class rescaling of shape ``(C,)``, as in ``F.cross_entropy``.
        ignore_index: target value that contributes nothing (index targets only).
        label_smoothing: in [0, 1], as in ``F.cross_entropy``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; "mean" divides by the summed weight of
            the non-ignored targets (by the number of samples for probability targets), and
            a batch with nothing to average gives 0, not NaN.
        normalizer: if given, ``sum / max(normalizer, 1)``; only with ``reduction="mean"``.
        validate: ``True`` checks probability targets lie in [0, 1] (a sync); ``None`` checks
            class indices where it is free (CPU, eager).
        backend: ``"auto"`` (default: the Triton kernel for float32/float16/bfloat16 CUDA
            tensors when triton is installed, else torch), ``"torch"`` or ``"triton"``
            (``ValueError`` where it cannot run). Probability targets, ``label_smoothing > 0``,
            ``gamma="flsd53"`` and tensor gamma always run on torch; see
            :mod:`focalkit.kernels.dispatch`.

    Reference:
        Lin et al., https://arxiv.org/abs/1708.02002; FLSD-53: Mukhoti et al.,
        https://arxiv.org/abs/2002.09437

    Example:
        >>> import torch, focalkit as fk
        >>> fk.softmax_focal_loss(torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([0]))
        tensor(0.8655)
        >>> fk.softmax_focal_loss(torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([0]),
        ...                       alpha=torch.tensor([0.25, 0.5, 0.75]))
        tensor(0.2164)
    """
    check_floating("logits", logits)
    check_tensor("targets", targets)
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    gamma = _check_gamma(gamma)
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, (int, float))
        or not (0.0 <= label_smoothing <= 1.0)
    ):
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
    if logits.dim() == 0:
        raise ValueError("logits: expected shape (C,), (N, C) or (N, C, d1, ...), got a scalar")
    num_classes = logits.shape[1] if logits.dim() >= 2 else logits.shape[0]
    alpha_t = _alpha_tensor(alpha, num_classes, logits)
    if weight is not None:
        check_floating("weight", weight)
        if weight.shape != (num_classes,):
            raise ValueError(
                f"weight: expected a per-class tensor of shape ({num_classes},), "
                f"got {tuple(weight.shape)}"
            )
    index_shape = (logits.shape[:1] + logits.shape[2:]) if logits.dim() >= 2 else torch.Size([])
    if targets.shape == logits.shape and targets.is_floating_point():
        index_form = False
        if validate:
            check_values_in_unit_interval("targets", targets)
        flat_target = _channel_last(targets)
    elif (
        targets.shape == index_shape
        and not targets.is_floating_point()
        and targets.dtype != torch.bool
    ):
        index_form = True
        if validate is True or (validate is None and may_read_values(targets)):
            bad = ((targets < 0) | (targets >= num_classes)) & (targets != ignore_index)
            if bool(bad.any()):
                raise ValueError(
                    f"targets: expected class indices in [0, {num_classes}) or "
                    f"ignore_index={ignore_index}, got {int(targets[bad][0])}"
                )
        flat_target = targets.reshape(-1)
    else:
        raise ValueError(
            f"targets: expected integer class indices of shape {tuple(index_shape)} or "
            f"probabilities of shape {tuple(logits.shape)}, got a {targets.dtype} tensor of "
            f"shape {tuple(targets.shape)}"
        )
    out_dtype = output_dtype(logits)
    spec = _SoftmaxSpec(
        _GammaPlan.of(gamma), reduction != "none", index_form, float(label_smoothing), ignore_index
    )
    unsupported = None  # options only the torch backend has (see kernels/dispatch.py)
    if not index_form:
        unsupported = "probability targets"
    elif label_smoothing > 0:
        unsupported = f"label_smoothing={label_smoothing!r}"
    elif not isinstance(gamma, float):
        unsupported = f"gamma={gamma!r}"
    use_triton = resolve_backend(backend, logits, unsupported=unsupported) == "triton"
    with torch.autocast(logits.device.type, enabled=False):
        if use_triton:
            from ..kernels.triton_softmax_focal import TritonSoftmaxSpec, triton_softmax_focal

            tspec = TritonSoftmaxSpec(gamma, spec.reduce_sum, ignore_index)
            denominator = None
            if reduction == "mean" and normalizer is None:
                denominator = _index_denominator(flat_target, weight, num_classes, ignore_index)
            # the reduction is folded into the kernel's gradient (see kernels/triton_scale.py)
            inv = reduction_scale(
                reduction, normalizer=normalizer, denominator=denominator, device=logits.device
            )
            loss = triton_softmax_focal(
                _channel_last(logits), flat_target, weight, alpha_t, tspec, inv
            )
        else:
            loss, denominator = _SoftmaxFocalFunction.apply(
                _channel_last(logits), flat_target, weight, alpha_t, spec
            )
            if reduction != "none":
                loss = finish(loss, reduction, normalizer=normalizer, denominator=denominator)
        if reduction == "none":
            loss = loss.reshape(index_shape)
    return loss.to(out_dtype)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def class_balanced_weights(
    samples_per_class: Sequence[int] | Tensor, beta: float = 0.9999
) -> Tensor:
    r"""Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).

    .. math::

        E_n = \frac{1 - \beta^{n}}{1 - \beta},\qquad
        w_c = \frac{1}{E_{n_c}} \Big/ \frac{1}{C}\sum_k \frac{1}{E_{n_k}}

    normalised so the weights sum to ``C`` (the number of classes). ``beta = 0`` gives equal
    weights; ``beta -> 1`` approaches inverse class frequency. A class with zero samples gets
    the largest finite weight (its effective number is taken as 1).

    Args:
        samples_per_class: ``(C,)`` sample counts (ints >= 0).
        beta: in [0, 1). Default 0.9999 (the paper's setting for long-tailed CIFAR).

    Returns:
        A float32 tensor of shape ``(C,)``, for ``weight=`` of ``softmax_focal_loss`` or
        ``F.cross_entropy``.

    Reference:
        Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of
        Samples", https://arxiv.org/abs/1901.05555

    Example:
        >>> import focalkit as fk
        >>> fk.class_balanced_weights([1000, 100, 10], beta=0.999)
        tensor([0.0422, 0.2800, 2.6778])
    """
    counts = torch.as_tensor(samples_per_class, dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"samples_per_class: expected a non-empty 1-D sequence of counts, "
            f"got shape {tuple(counts.shape)}"
        )
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(f"samples_per_class: expected finite counts >= 0, got {counts.tolist()}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0 <= beta < 1):
        raise ValueError(f"beta: expected a number in [0, 1), got {beta!r}")
    n = counts.clamp(min=1)
    if beta == 0:
        effective = torch.ones_like(n)
    else:
        # (1 - beta^n) / (1 - beta) in log space: -expm1(n log beta) / -expm1(log beta)
        log_beta = math.log(beta)
        effective = torch.expm1(n * log_beta) / math.expm1(log_beta)
    w = 1.0 / effective
    w = w * (counts.numel() / w.sum())
    return w.to(torch.float32)


def prior_bias(pi: float = 0.01) -> float:
    r"""Classifier bias that makes every sigmoid start at probability ``pi``.

    .. math:: b = -\log\frac{1 - \pi}{\pi}

    RetinaNet (sec. 3.3) initialises the last classification layer's bias so that at the start
    of training every anchor predicts foreground with ``pi = 0.01``; without it, the loss of
    the ~100k easy negatives swamps the first iterations.

    Reference:
        Lin et al., https://arxiv.org/abs/1708.02002

    Example:
        >>> import torch, focalkit as fk
        >>> head = torch.nn.Conv2d(256, 9 * 80, 3, padding=1)
        >>> _ = torch.nn.init.constant_(head.bias, fk.prior_bias(0.01))
        >>> round(fk.prior_bias(0.01), 4)
        -4.5951
    """
    if isinstance(pi, bool) or not isinstance(pi, (int, float)) or not (0 < pi < 1):
        raise ValueError(f"pi: expected a probability in (0, 1), got {pi!r}")
    return -math.log((1 - pi) / pi)
