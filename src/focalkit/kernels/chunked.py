"""The ``"chunked"`` backend: the CPU fast paths of the sigmoid family (focal loss, QFL, VFL),
the softmax family (softmax focal loss, Poly-1 cross-entropy), DFL and GHM-C.

Each walks its input in cache-sized chunks. The focal losses write every elementwise op into
a few scratch buffers allocated once per call (``out=``) rather than allocating a fresh
temporary whose first touch costs page faults (about as much as the op itself), and
specialise what the plain formula of :mod:`focalkit.functional.focal` treats generally:
hard 0/1 targets (half the ops of the soft-target form) and class indices (no one-hot
tensor). Chunks these forms do not cover (soft targets, ``weight=``, ``gamma="flsd53"``, a
tensor gamma) go through the plain formula chunk by chunk. Chunk sums are accumulated in
float64. The backend reads tensor values (is this chunk binary? does it hold an ignored
row?), which is free on a CPU tensor in eager mode: :mod:`focalkit.kernels.dispatch` picks it
there only. Tests hold it to the plain formula and to float64 references.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._compat import compute_dtype
from ..functional.focal import (
    FOCAL,
    QUALITY,
    VARIFOCAL,
    GammaPlan,
    Modulation,
    SigmoidSpec,
    sigmoid_focal_plain,
    sigmoid_terms,
    softmax_focal_terms,
)
from ..functional.gfl import DflSpec, dfl_bins
from ..functional.ghm import gradient_norm, index_dtype, scaled_bins, weighted_bce_plain

__all__ = [
    "FOCAL_CHUNK_ELEMENTS",
    "GHM_CHUNK_ELEMENTS",
    "bincount_bins",
    "dfl_chunked",
    "ghm_bin_pass",
    "ghm_weighted_bce",
    "sigmoid_focal_chunked",
    "softmax_index_rows",
]

# Elements per chunk of the focal losses: the five scratch buffers of one chunk (1 MiB each in
# float32) stay in the last-level cache, and each op still splits across threads; 2**17
# measured slower and 2**19 no faster (benchmarks/bench_focal_cpu.py).
FOCAL_CHUNK_ELEMENTS = 1 << 18
# Elements per chunk of GHM-C: the temporaries of one chunk stay in cache.
GHM_CHUNK_ELEMENTS = 1 << 16


# --------------------------------------------------------------------------------------------
# sigmoid focal loss
# --------------------------------------------------------------------------------------------


class _ChunkViews(NamedTuple):
    bufs: tuple[Tensor, ...]  # five scratch tensors of the chunk's shape
    alpha_neg: Tensor | None  # the negatives' factor broadcast to the chunk (None: not filled)
    alpha_pos: Tensor | None  # the positives' factor broadcast to the chunk


class _Scratch:
    """Chunk-sized buffers allocated once per call and reused by every chunk: on the CPU
    eager path every elementwise op writes into one of them (``out=``) rather than allocating
    a fresh temporary, whose first touch costs page faults (about as much as the op itself).
    The views of a chunk's shape are made once (a call has at most two chunk shapes).

    With ``ends``, the negatives' and the positives' factors (:func:`_hard_factors`) are
    broadcast to one chunk (filled once), so ``alpha_t`` is one ``lerp`` between contiguous
    tensors: exact for 0/1 targets (``lerp`` returns its end points there), unlike
    ``(1 - alpha) + (2 alpha - 1) y``, and without the slow path that broadcasting a 0-dim
    operand takes in a ternary op."""

    def __init__(
        self,
        rows: int,
        cols: int,
        like: Tensor,
        dtype: torch.dtype,
        ends: tuple[Tensor, Tensor] | None,
    ) -> None:
        self._buf = torch.empty((5, rows, cols), dtype=dtype, device=like.device)
        self._alpha = None
        if ends is not None:
            pair = torch.stack(torch.broadcast_tensors(*ends)).reshape(2, 1, -1)
            self._alpha = pair.to(dtype).expand(2, rows, cols).contiguous()
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
    """The focal terms of hard targets written as ``z = x`` (negatives) or ``z = -x``
    (positives), for one chunk, written into ``bufs``, ``loss_out`` and ``grad_out`` (no
    allocation of the chunk's size). With ``q = 1 - p_t = sigmoid(z)`` and ``BCE = softplus(z)``
    (:func:`~focalkit.functional.focal.sigmoid_focal_terms` at ``y`` in {0, 1})::

        L      = a q^g BCE
        dL/dz  = a q^g (q + g (1 - q) BCE)


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
        # gamma == 0: the gradient does not use BCE (and mod is no power of q)
        factor = mod if gamma != 0 and mod is not None else bce
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
    keep: Tensor | None,
    gamma: float,
    views: _ChunkViews,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
) -> Tensor | None:
    """Dense 0/1 targets on one chunk: ``z = x (1 - 2y)`` turns every element into the
    negative case of :func:`_hard_chunk` (exact: ``x`` or ``-x``). ``keep``: the validity
    mask of integer targets (ignored entries scaled by 0), or None."""
    bufs = views.bufs
    alpha_t = None
    if views.alpha_neg is not None and views.alpha_pos is not None:
        alpha_t = torch.lerp(views.alpha_neg, views.alpha_pos, y, out=bufs[3])
        if keep is not None:
            alpha_t.mul_(keep)
    elif keep is not None:
        alpha_t = bufs[3].copy_(keep)
    z = torch.addcmul(x, x, y, value=-2, out=bufs[2])  # exact: x or -x
    return _hard_chunk(z, gamma, alpha_t, y, loss_out, grad_out, bufs)


def _index_negatives(
    x: Tensor,
    labels: Tensor,
    valid: Tensor | None,
    mod: Modulation,
    factors: tuple[Tensor, Tensor] | None,
    views: _ChunkViews,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
    row_weight: Tensor | None = None,
) -> Tensor | None:
    """Class-index targets on one ``(R, C)`` chunk without a one-hot tensor: every element as
    a negative through :func:`_hard_chunk`, the positives' slots left out of the sum (their
    terms come from :func:`_index_positives`, once for the whole tensor), ignored rows scaled
    by 0. ``row_weight`` (R,): a ``weight=`` that is constant along the classes (a
    detector's per-anchor weight), folded into the same scale as the ignored rows.

    Every loss of the sigmoid family is focal loss's negative term at ``y = 0`` (QFL:
    ``p^beta BCE(x, 0)``, no alpha; VFL: ``alpha p^gamma BCE(x, 0)``), so ``_hard_chunk``
    serves them all; ``factors`` are (the negatives' factor, the positives' alpha)."""
    num_classes = x.shape[-1]
    bufs = views.bufs
    scale: Tensor | float | None
    if factors is None:
        scale = None
    elif factors[0].dim() == 0:
        scale = float(factors[0])
    else:
        scale = views.alpha_neg
    keep: Tensor | None = None
    if valid is not None and not bool(valid.all()):  # ignored rows: a zero scale
        keep = valid.unsqueeze(-1)
    if row_weight is not None:
        rows_w = row_weight.to(x.dtype).unsqueeze(-1)
        keep = rows_w if keep is None else rows_w * keep
    if keep is not None:
        if isinstance(scale, Tensor):
            scale = torch.mul(scale, keep, out=bufs[3])
        else:
            factor = 1.0 if scale is None else scale
            scale = bufs[3].copy_(keep.expand_as(x)).mul_(factor)
    is_pos = (labels >= 0) & (labels < num_classes)
    col = labels.clamp(0, num_classes - 1).unsqueeze(-1)
    drop = (col, is_pos.logical_not().unsqueeze(-1).to(x.dtype))
    return _hard_chunk(x, mod.gamma.value, scale, None, loss_out, grad_out, bufs, drop)


def _index_positives(
    x: Tensor,
    labels: Tensor,
    scores: Tensor | None,
    valid: Tensor | None,
    mod: Modulation,
    factors: tuple[Tensor, Tensor] | None,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
    row_weight: Tensor | None,
    dtype: torch.dtype,
) -> Tensor | None:
    """The (at most one per row) positive of every row of ``(R, C)`` logits, computed once
    (a handful of ops on ``R`` elements rather than on every chunk) with
    :func:`~focalkit.functional.focal.sigmoid_terms` at its target (1, or its ``scores``
    entry) and scattered into ``loss_out`` / ``grad_out`` (their slots were left to it by
    :func:`_index_negatives`); returns the positives' sum when ``loss_out`` is None."""
    num_classes = x.shape[-1]
    is_pos = (labels >= 0) & (labels < num_classes)
    if valid is not None:
        is_pos &= valid
    is_pos = is_pos.unsqueeze(-1)
    col = labels.clamp(0, num_classes - 1).unsqueeze(-1)
    a_pos = None  # focal: the positive's factor alpha * pos_weight, as its alpha at y = 1
    if factors is not None:
        a_pos = factors[1][col] if factors[1].dim() else factors[1]
    x_pos = x.gather(-1, col).to(dtype)
    y_pos = torch.ones_like(x_pos) if scores is None else scores.to(dtype).unsqueeze(-1)
    loss_pos, grad_pos = sigmoid_terms(x_pos, y_pos, mod, a_pos, grad_out is not None)
    if row_weight is not None:
        rows_w = row_weight.to(dtype).unsqueeze(-1)
        loss_pos = loss_pos * rows_w
        grad_pos = None if grad_pos is None else grad_pos * rows_w
    if grad_out is not None and grad_pos is not None:
        _put_positives(grad_out, col, is_pos, grad_pos)
    if loss_out is not None:
        _put_positives(loss_out, col, is_pos, loss_pos)
        return None
    return torch.where(is_pos, loss_pos, 0).sum()


# a dense chunk of QFL / VFL takes the sparse-positive path when at most this share of its
# elements are positive (y > 0): detection targets have about one per anchor row or fewer
SPARSE_POSITIVE_SHARE = 0.25


def _sparse_positive_chunk(
    x: Tensor,
    y: Tensor,
    keep: Tensor | None,
    mod: Modulation,
    factors: tuple[Tensor, Tensor] | None,
    views: _ChunkViews,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
) -> tuple[bool, Tensor | None]:
    """Dense soft targets of QFL or VFL on one chunk whose positives (``y > 0``) are few (IoU
    targets): every element as a negative through :func:`_hard_chunk` with the positives'
    (and ignored entries') slots scaled by 0, then the positives gathered, computed at their
    target with :func:`~focalkit.functional.focal.sigmoid_terms` and put back. Returns
    (False, None) without writing anything when more than :data:`SPARSE_POSITIVE_SHARE` of
    the chunk is positive (the plain formula is then faster), else (True, the chunk's sum or
    None)."""
    bufs = views.bufs
    positive = y > 0
    flat = positive.view(-1).nonzero().squeeze(1)
    if flat.numel() > SPARSE_POSITIVE_SHARE * y.numel():
        return False, None
    scale = bufs[3].copy_(positive).neg_().add_(1)  # 0 at the positives
    if keep is not None:
        scale.mul_(keep)
    alpha = None
    if factors is not None:  # VFL: the negatives' alpha (also passed to the positives)
        alpha = factors[0]
        scale.mul_(float(alpha))
    partial = _hard_chunk(x, mod.gamma.value, scale, None, loss_out, grad_out, bufs)
    loss_pos, grad_pos = sigmoid_terms(
        x.reshape(-1)[flat], y.reshape(-1)[flat], mod, alpha, grad_out is not None
    )
    if grad_out is not None and grad_pos is not None:
        grad_out.view(-1)[flat] = grad_pos
    if loss_out is not None:
        loss_out.view(-1)[flat] = loss_pos
        return True, None
    positives = loss_pos.sum()
    return True, positives if partial is None else partial + positives


def _put_positives(t: Tensor, col: Tensor, pos: Tensor, values: Tensor) -> Tensor:
    """``t[r, col[r]] = values[r]`` in place where ``pos[r]``; returns ``t``."""
    return t.scatter_(-1, col, torch.where(pos, values, t.gather(-1, col)))


def _is_binary(y: Tensor, out: Tensor | None = None) -> bool:
    """True if every entry is exactly 0 or 1 (sum |y - y^2| == 0; a sum is several times
    cheaper than ``any`` on CPU). ``out``: a scratch tensor of ``y``'s shape."""
    return float(torch.addcmul(y, y, y, value=-1, out=out).abs_().sum()) == 0.0


def _hard_factors(
    alpha_pos: Tensor | None, pos_weight: Tensor | None
) -> tuple[Tensor, Tensor] | None:
    """The factors of a hard negative and a hard positive: ``1 - alpha`` and
    ``alpha * pos_weight`` (1 where a part is None); None when both are 1. For ``y`` in
    {0, 1}, ``pos_weight`` multiplies the positive term only, so it folds into alpha."""
    if alpha_pos is None:
        return None if pos_weight is None else (torch.ones_like(pos_weight), pos_weight)
    if pos_weight is None:
        return 1 - alpha_pos, alpha_pos
    return 1 - alpha_pos, alpha_pos * pos_weight


def _family_factors(
    mod: Modulation, alpha: Tensor | None, pos_weight: Tensor | None
) -> tuple[Tensor, Tensor] | None:
    """(the negatives' factor, the positives' alpha) of the hard paths: focal
    :func:`_hard_factors`; QFL none; VFL ``alpha`` for the negatives (also passed to the
    positives, whose target may be 0)."""
    if mod.kind == FOCAL:
        return _hard_factors(alpha, pos_weight)
    if mod.kind == VARIFOCAL and alpha is not None:
        return alpha, alpha
    return None


def sigmoid_focal_chunked(
    logits: Tensor,
    target: Tensor,
    scores: Tensor | None,
    valid: Tensor | None,
    weight: Tensor | None,
    alpha: Tensor | None,
    pos_weight: Tensor | None,
    spec: SigmoidSpec,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """:func:`~focalkit.functional.focal.sigmoid_focal_plain` (same arguments and results)
    chunk by chunk, for every loss of the sigmoid family. Dense targets are chunked by
    elements whatever the shape (a ``(N,)`` or ``(B, 1, H, W)`` tensor as well as ``(N, C)``),
    except with a per-class alpha or ``pos_weight``, which need whole rows; class indices by
    rows. Specialised: class indices (focal loss, QFL, VFL: the negatives through
    :func:`_hard_chunk`, the positives gathered, computed at their score and scattered),
    dense 0/1 chunks of focal loss and QFL (at ``y`` in {0, 1}, QFL is focal loss with
    ``gamma = beta`` and no alpha) and dense chunks of QFL and VFL with few positives
    (:func:`_sparse_positive_chunk`); other chunks (and every chunk of ASL and of Poly-1
    focal) go through the plain formula."""
    cdtype = compute_dtype(logits)
    mod = spec.mod
    factors = _family_factors(mod, alpha, pos_weight)
    per_class = factors is not None and max(factors[0].dim(), factors[1].dim()) == 1
    cols = logits.shape[-1] if (spec.index_form or per_class) and logits.dim() else 1
    x2 = logits.reshape(-1, cols)
    rows = x2.shape[0]
    t2 = target.reshape(rows) if spec.index_form else target.reshape(rows, cols)
    s2 = None if scores is None else scores.reshape(rows)
    v2 = None
    if valid is not None:
        v2 = valid.reshape(rows) if spec.index_form else valid.reshape(rows, cols)
    w2 = None if weight is None else weight.expand(logits.shape).reshape(rows, cols)
    binary_ok = mod.kind in (FOCAL, QUALITY)
    sparse_ok = mod.kind in (QUALITY, VARIFOCAL)  # dense IoU targets: few positives
    hard_ok = mod.kind in (FOCAL, QUALITY, VARIFOCAL)  # ASL's negatives are not focal's
    scratch_ok = hard_ok and spec.gamma.is_plain() and mod.epsilon == 0
    row_w = None  # a weight constant along the classes on index targets: a row scale
    if w2 is not None and weight is not None and spec.index_form and scratch_ok:
        if weight.dim() == 0 or weight.shape[-1] == 1:
            row_w = weight.expand(*logits.shape[:-1], 1).reshape(rows)
            w2 = None

    grad = torch.empty((rows, cols), dtype=cdtype, device=logits.device) if need_grad else None
    out = None if spec.reduce_sum else torch.empty((rows, cols), dtype=cdtype, device=x2.device)
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    step = max(1, FOCAL_CHUNK_ELEMENTS // cols)
    # a float exponent, no Poly-1 term and no elementwise weight: hard and index chunks go
    # through the scratch buffers (dense 0/1 chunks for focal loss and QFL only)
    scratch = None
    if scratch_ok and w2 is None and rows:
        # focal loss's factors are broadcast to a chunk for dense targets (the binary path);
        # scalar ones on index targets, and VFL's alpha, are used as floats
        broadcast = mod.kind == FOCAL and factors is not None
        broadcast = broadcast and (per_class or not spec.index_form)
        scratch = _Scratch(min(step, rows), cols, logits, cdtype, factors if broadcast else None)
    integer_targets = not target.is_floating_point()  # 0/1 (and masked) by construction
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        xs = x2[start:stop].to(cdtype)
        ts = t2[start:stop]
        ss = None if s2 is None else s2[start:stop]
        vs = None if v2 is None else v2[start:stop]
        loss_out = None if out is None else out[start:stop]
        grad_out = None if grad is None else grad[start:stop]
        views = None if scratch is None else scratch(stop - start)
        partial: Tensor | None = None
        fast = views is not None
        if views is not None and spec.index_form:
            rw = None if row_w is None else row_w[start:stop]
            partial = _index_negatives(xs, ts, vs, mod, factors, views, loss_out, grad_out, rw)
        elif views is not None:
            ys = ts.to(cdtype)
            if binary_ok and (integer_targets or _is_binary(ys, views.bufs[0])):
                partial = _binary_chunk(xs, ys, vs, spec.gamma.value, views, loss_out, grad_out)
            elif sparse_ok:
                keep = None if vs is None else vs.to(cdtype)
                fast, partial = _sparse_positive_chunk(
                    xs, ys, keep, mod, factors, views, loss_out, grad_out
                )
            else:
                fast = False
        if not fast:
            ws = None if w2 is None else w2[start:stop]
            partial, g = sigmoid_focal_plain(xs, ts, ss, vs, ws, alpha, pos_weight, spec, need_grad)
            if loss_out is not None:
                loss_out.copy_(partial)
                partial = None
            if g is not None and grad_out is not None:
                grad_out.copy_(g)
        if partial is not None:
            total += partial
    if scratch is not None and spec.index_form:  # every chunk left its positives' slots
        positives = _index_positives(x2, t2, s2, v2, mod, factors, out, grad, row_w, cdtype)
        if positives is not None:
            total += positives
    if grad is not None:
        grad = grad.reshape(logits.shape)
    if out is None:
        return total.to(cdtype), grad
    return out.reshape(logits.shape), grad


# --------------------------------------------------------------------------------------------
# softmax focal loss
# --------------------------------------------------------------------------------------------


def softmax_index_rows(
    x: Tensor,
    safe: Tensor,
    u: Tensor,
    gamma: GammaPlan,
    need_grad: bool,
    epsilon: float = 0.0,
) -> tuple[Tensor, Tensor | None]:
    """:func:`~focalkit.functional.focal.softmax_index_rows_plain` (same arguments and
    results: class indices without label smoothing, Poly-1's ``epsilon`` included) with ``softmax`` written
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
    step = max(rows, 1) if need_grad else max(1, FOCAL_CHUNK_ELEMENTS // max(num_classes, 1))
    grad = torch.empty_like(x) if need_grad else None
    buf = grad if grad is not None else x.new_empty((min(step, rows), num_classes))
    loss = x.new_empty(rows)
    tiny = torch.finfo(x.dtype).tiny
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        xs = x[start:stop]
        out = buf[start:stop] if grad is not None else buf[: stop - start]
        p = torch.softmax(xs, -1, out=out)
        col = safe[start:stop]
        p_y = p.gather(-1, col)
        rest = p.scatter_(-1, col, 0.0).sum(-1, keepdim=True)  # 1 - p_y
        logp_y = torch.where(p_y < 0.5, torch.log(p_y), torch.log1p(rest.neg()))
        underflow = p_y < tiny
        if bool(underflow.any()):  # CPU eager: reading the flag is free
            r = underflow.squeeze(-1).nonzero().squeeze(-1)
            logp_y[r] = torch.log_softmax(xs[r], -1).gather(-1, col[r])
        ell, G = softmax_focal_terms(logp_y, gamma, epsilon)
        us = u[start:stop]
        loss[start:stop] = (ell * us).squeeze(-1)
        if grad is not None:
            Gu = G * us
            p.mul_(Gu).scatter_(-1, col, rest.neg_().mul_(Gu))
    return loss, grad


# --------------------------------------------------------------------------------------------
# GHM-C
# --------------------------------------------------------------------------------------------


def _slices(n: int) -> list[slice]:
    return [slice(i, min(i + GHM_CHUNK_ELEMENTS, n)) for i in range(0, n, GHM_CHUNK_ELEMENTS)]


def ghm_bin_pass(x: Tensor, y: Tensor, keep: Tensor | None, bins: int) -> tuple[Tensor, Tensor]:
    """:func:`~focalkit.functional.ghm.bin_pass_plain` chunk by chunk, counting with
    ``bincount`` (exact int64 counts, no temporary of the input's size)."""
    index = torch.empty(x.shape, dtype=index_dtype(bins), device=x.device)
    counts = torch.zeros(bins, dtype=torch.int64, device=x.device)
    for s in _slices(x.shape[0]):
        g = gradient_norm(x[s], y[s])
        index[s] = scaled_bins(g, bins, None if keep is None else keep[s])
        counts += bincount_bins(index[s], bins)
    return index, counts


def bincount_bins(index: Tensor, bins: int) -> Tensor:
    """:func:`~focalkit.functional.ghm.bin_counts` with ``bincount`` (a CPU tensor: exact
    int64 counts, faster than a ``scatter_add``)."""
    return torch.bincount(index.reshape(-1), minlength=bins + 1)[:bins]


def ghm_weighted_bce(
    x: Tensor, y: Tensor, index: Tensor, per_bin: Tensor, reduce_sum: bool, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """:func:`~focalkit.functional.ghm.weighted_bce_plain` chunk by chunk; the chunk sums
    are accumulated in float64."""
    grad = torch.empty_like(x) if need_grad else None
    out = None if reduce_sum else torch.empty_like(x)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in _slices(x.shape[0]):
        loss, g = weighted_bce_plain(x[s], y[s], index[s], per_bin, reduce_sum, need_grad)
        if out is None:
            total += loss
        else:
            out[s] = loss
        if grad is not None and g is not None:
            grad[s] = g
    return (total.to(x.dtype) if out is None else out), grad


# --------------------------------------------------------------------------------------------
# Distribution Focal Loss
# --------------------------------------------------------------------------------------------


def dfl_chunked(
    pred: Tensor, y: Tensor, weight: Tensor | None, spec: DflSpec, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """:func:`~focalkit.functional.gfl.dfl_plain` (same arguments and results) over
    cache-sized chunks of rows. Per chunk the softmax is written straight into the gradient
    (or a chunk-sized scratch without one): ``e = exp(x - max)``, ``s = sum e``, so that
    ``-log p_c = (max - x_c) + log s`` at the two target bins only (no ``log_softmax`` of the
    whole row, no temporary of the input's size) and the gradient is ``e / s`` minus the two
    weights. Chunk sums are accumulated in float64."""
    cdtype = compute_dtype(pred)
    rows, bins = pred.shape
    step = max(1, FOCAL_CHUNK_ELEMENTS // max(bins, 1))
    grad = torch.empty((rows, bins), dtype=cdtype, device=pred.device) if need_grad else None
    scratch = None if grad is not None else pred.new_empty((min(step, rows), bins), dtype=cdtype)
    out = None if spec.reduce_sum else torch.empty(rows, dtype=cdtype, device=pred.device)
    total = torch.zeros((), dtype=torch.float64, device=pred.device)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        xs = pred[start:stop].to(cdtype)
        e = grad[start:stop] if grad is not None else scratch[: stop - start]  # type: ignore[index]
        top = xs.amax(-1, keepdim=True)
        torch.sub(xs, top, out=e).exp_()
        s = e.sum(-1, keepdim=True)
        left, w_l, w_r = dfl_bins(y[start:stop].to(cdtype), bins - 1)
        log_s = torch.log(s)
        nll_l = (top - xs.gather(-1, left)).add_(log_s)
        nll_r = (top - xs.gather(-1, left + 1)).add_(log_s)
        loss = nll_l.mul_(w_l).addcmul_(nll_r, w_r).squeeze(-1)
        ws = None if weight is None else weight[start:stop].to(cdtype)
        if ws is not None:
            loss = loss * ws
        if out is not None:
            out[start:stop] = loss
        else:
            total += loss.sum()
        if grad is not None:
            e.div_(s).scatter_add_(-1, left, w_l.neg()).scatter_add_(-1, left + 1, w_r.neg())
            if ws is not None:
                e.mul_(ws.unsqueeze(-1))
    if out is None:
        return total.to(cdtype), grad
    return out, grad
