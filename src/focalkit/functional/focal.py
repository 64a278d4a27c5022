"""Focal loss family: sigmoid (binary, multi-label, class-index) and softmax focal loss, and
the two formulas the generalized focal losses share with them.

* The sigmoid family: per element ``m(x, y) BCE(x, y)`` with a modulating factor ``m``
  (:class:`Modulation`): focal loss, QFL and VFL (:mod:`.gfl`), ASL (:mod:`.asymmetric`, with
  the cross-entropy of its shifted probability) and Poly-1 focal (:mod:`.poly`) are one
  formula, :func:`sigmoid_terms`, one autograd Function and one driver,
  :func:`run_sigmoid_family`.
* The softmax family: softmax focal loss and Poly-1 cross-entropy (its ``gamma = 0`` member
  with Poly-1's ``epsilon``): :func:`softmax_focal_terms` and :func:`run_softmax_family`.

This module holds, for each loss, its argument handling, the one plain formula in torch ops
(the ``"torch"`` backend, the reference every fast path is tested against) and the public
function. The formula computes the loss *and* its analytic gradient in one pass in float32
(a custom ``torch.autograd.Function``), so backward is a multiplication by ``grad_output``.
The gradient is written so that ``(1 - p_t)^(gamma - 1)`` never appears on its own: it is
always multiplied by a factor that vanishes at least as fast, which keeps it finite for every
``gamma >= 0`` (including ``0 < gamma < 1``) at ``|logit| = 100`` in float32, float16 and
bfloat16. The fast paths (the CPU ``"chunked"`` backend, the Triton kernels) live in
:mod:`focalkit.kernels`; :mod:`focalkit.kernels.dispatch` decides which one runs.

Reference: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, "Focal Loss for Dense Object
Detection", ICCV 2017, https://arxiv.org/abs/1708.02002.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._autograd import refuse_double_backward, stored_grad
from .._checks import (
    FLSD,
    check_alpha,
    check_class_indices,
    check_class_vector,
    check_class_weight,
    check_elementwise_weight,
    check_floating,
    check_gamma,
    check_label_smoothing,
    check_nonnegative,
    check_nonnegative_values,
    check_normalizer,
    check_open_unit_interval,
    check_reduction,
    check_sample_counts,
    check_tensor,
    check_unit_interval,
    check_values_in_unit_interval,
)
from .._compat import compute_dtype, may_read_values, output_dtype
from .._reduce import exact_sum, finish, reduction_scale
from ..kernels.dispatch import outside_compiled_graph, resolve_backend
from ._targets import SigmoidTargets, parse_sigmoid_targets

__all__ = [
    "class_balanced_weights",
    "prior_bias",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]

Gamma = float | str | Tensor
Alpha = float | Sequence[float] | Tensor | None

FLSD_THRESHOLD = 0.2  # Mukhoti et al.: gamma = 5 if p_t < 0.2 else 3
LOSSES = "focalkit focal losses"  # named by the double-backward error
TINY = 1e-30
NO_LABEL = -(2**62)  # the kernels' ignore_index when nothing is ignored (no label equals it)


# --------------------------------------------------------------------------------------------
# argument handling shared by both losses
# --------------------------------------------------------------------------------------------


def alpha_tensor(
    alpha: Alpha, num_classes: int, like: Tensor, *, unit: bool = True, check_values: bool = False
) -> Tensor | None:
    """alpha as a tensor (0-dim or (C,)) in the compute dtype of ``like``, on its device.

    A Python number becomes a device-side fill (``torch.full``): ``torch.tensor(x,
    device="cuda")`` would copy from the host and synchronise. A list is copied to the device
    (a synchronising copy on CUDA): pass a tensor on the logits' device to avoid it. Values
    lie in [0, 1] (``unit``: the sigmoid losses' weight of the positives) or are >= 0 (a
    scale: the softmax loss); a number is always checked, a tensor only with
    ``check_values`` (a read)."""
    if alpha is None:
        return None
    cdtype = compute_dtype(like)
    if isinstance(alpha, (int, float)):  # bool included: check_alpha refuses it
        check_alpha(alpha, num_classes, unit=unit)
        return torch.full((), float(alpha), dtype=cdtype, device=like.device)
    if not isinstance(alpha, Tensor):
        alpha = torch.as_tensor(alpha, dtype=torch.float64)
    check_alpha(alpha, num_classes, unit=unit)
    if check_values and unit:
        check_values_in_unit_interval("alpha", alpha)
    elif check_values:
        check_nonnegative_values("alpha", alpha)
    return alpha.detach().to(device=like.device, dtype=cdtype)


def class_tensor(
    name: str,
    value: float | Tensor | None,
    num_classes: int,
    like: Tensor,
    *,
    check_values: bool = False,
) -> Tensor | None:
    """A per-class non-negative factor (``pos_weight``): None, a number (a 0-dim fill on the
    device, no host copy) or a tensor of shape ``()`` or ``(C,)``, in the compute dtype of
    ``like`` on its device. Negative values raise (numbers always; tensors with
    ``check_values``, a read)."""
    if value is None:
        return None
    cdtype = compute_dtype(like)
    if not isinstance(value, Tensor):
        check_nonnegative(name, value)
        return torch.full((), float(value), dtype=cdtype, device=like.device)
    check_class_vector(name, value, num_classes)
    if check_values:
        check_nonnegative_values(name, value)
    return value.detach().to(device=like.device, dtype=cdtype)


class GammaPlan(NamedTuple):
    """gamma as the formulas use it: a float, a 0-dim tensor (a constant) or FLSD-53."""

    value: float  # used when tensor is None and not flsd
    tensor: Tensor | None  # a 0-dim tensor gamma (e.g. the running "auto" estimate)
    flsd: bool

    @classmethod
    def of(cls, gamma: Gamma) -> GammaPlan:
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


def modulator(q: Tensor, gamma: float | Tensor) -> Tensor | None:
    """``q ** gamma``, or None for gamma == 0 (a Python float)."""
    if isinstance(gamma, float):
        if gamma == 0:
            return None
        if gamma == 1:
            return q
    return q.pow(gamma)


def times(t: Tensor, factor: Tensor | None) -> Tensor:
    return t if factor is None else t * factor


# --------------------------------------------------------------------------------------------
# the sigmoid family (focal loss, QFL, VFL, Poly-1 focal): the formula
# --------------------------------------------------------------------------------------------


def bce_with_logits(x: Tensor, y: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, ``-(w y log p + (1 - y) log(1 - p))`` with
    ``p = sigmoid(x)`` and ``w = pos_weight`` (1 without), computed without cancellation:

        BCE = (1 - y) softplus(x) + w y softplus(-x),    softplus(x) = log(1 + exp(x))

    Both terms are non-negative and ``softplus`` is exact (``log1p``) on the whole line, so
    the relative error is a few float32 roundings for every ``x`` and every ``y`` in [0, 1]
    (the two terms are one ``lerp``, which returns its end points exactly at ``y`` in {0, 1}
    and cannot cancel between two non-negative values). ``F.binary_cross_entropy_with_logits``
    forms ``x - x y + max(-x, 0) + log(...)`` instead and loses relative precision where terms
    cancel (``x = -8, y = 0``: 9e-4 in float32)."""
    softplus = torch.nn.functional.softplus
    positive = softplus(-x)  # -log p
    if pos_weight is not None:
        positive = positive * pos_weight.to(x.dtype)
    return torch.lerp(softplus(x), positive, y)


# The modulating factors of the sigmoid family: every loss of the family is, per element,
# ``m(x, y) * BCE(x, y)`` with its own factor m (focal loss adds Poly-1's term when asked).
FOCAL = "focal"  # m = alpha_t q^gamma,  q = 1 - p_t = p (1 - y) + (1 - p) y
QUALITY = "quality"  # m = |y - p|^beta                                     (QFL)
VARIFOCAL = "varifocal"  # m = y (or 1) where y > 0, alpha p^gamma where y = 0  (VFL)
# ASL: m = q^(g+ y + g- (1 - y)), q = y (1 - p) + (1 - y) p_m, times the cross-entropy of the
# shifted probability p_m = max(p - clip, 0) (BCE itself at clip 0)
ASYMMETRIC = "asymmetric"


class Modulation(NamedTuple):
    """The modulating factor ``m`` of ``L = m(x, y) BCE(x, y)`` (see :func:`sigmoid_terms`).

    ``gamma`` is focal loss's gamma, QFL's beta, VFL's gamma or ASL's ``gamma_neg``;
    ``iou_weighted`` is VFL's (the positives' weight is their target, else 1); ``epsilon``
    adds Poly-1's ``epsilon q^(gamma + 1)`` to focal loss (not weighted by alpha);
    ``gamma_pos``, ``clip`` and ``detach`` are ASL's (``detach``: the focusing weight is a
    constant in backward)."""

    kind: str
    gamma: GammaPlan
    iou_weighted: bool = True
    epsilon: float = 0.0
    gamma_pos: float = 0.0
    clip: float = 0.0
    detach: bool = False

    @classmethod
    def focal(cls, gamma: GammaPlan) -> Modulation:
        return cls(FOCAL, gamma)


def _focal_terms(
    y: Tensor,
    p: Tensor,
    omp: Tensor,
    bce: Tensor,
    mod: Modulation,
    alpha_pos: Tensor | None,
    need_grad: bool,
    pos_weight: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Focal loss (and Poly-1 focal), see :func:`sigmoid_terms`:

        m = a_t q^g,  dL/dx = a_t q^g (g r (1 - 2y) BCE + dBCE/dx),  r = p (1 - p) / q

    ``r`` (in [0, 1]) replaces ``q^(g-1) p (1-p)`` by ``q^g r``, finite for every gamma >= 0.
    Poly-1 adds ``eps q^(g+1)``, whose derivative is ``eps (g + 1) q^g p (1 - p) (1 - 2y)``."""
    q = torch.lerp(p, omp, y)
    alpha_t = None if alpha_pos is None else torch.lerp(1 - alpha_pos, alpha_pos, y)
    g = mod.gamma.for_q(q)
    m = modulator(q, g)
    loss = times(times(bce, m), alpha_t)
    eps = mod.epsilon
    if eps != 0:
        loss = loss + eps * times(q, m)
    if not need_grad:
        return loss, None
    one = y.new_ones(())
    sign = torch.lerp(one, one.neg(), y)  # 1 - 2y, exact at y in {0, 1}
    poly = None
    if eps != 0:  # d (eps q^(g+1)) / dx, formed before p is overwritten below
        poly = times(p * omp * sign, m) * (eps * (g + 1))
    # d BCE / dx = (1 - y) p - w y (1 - p): p - y, exact where y is 0 or 1
    neg_omp = omp.neg() if pos_weight is None else omp * pos_weight.to(p.dtype).neg()
    grad = torch.lerp(p, neg_omp, y)
    if not (isinstance(g, float) and g == 0):
        # r (1 - 2y) = p (1 - p) (1 - 2y) / q  ==  (d q / d x) / q
        r = p.mul_(omp).div_(q.clamp(min=TINY)).mul_(sign)
        if isinstance(g, float):
            grad.addcmul_(r, bce, value=g)
        else:
            grad.addcmul_(r.mul_(bce), g)
        grad = times(grad, m)
    grad = times(grad, alpha_t)
    return loss, (grad if poly is None else grad + poly)


def _quality_terms(
    y: Tensor, p: Tensor, omp: Tensor, bce: Tensor, mod: Modulation, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """QFL, see :func:`sigmoid_terms`: with ``d = p - y`` (exact at y in {0, 1}),

        m = |d|^beta,  dL/dx = |d|^beta (d + beta s BCE),  s = p (1 - p) / d  (0 at d = 0)

    At ``d = 0`` the factor is ``0^beta`` (0, or 1 for beta = 0) with zero slope: for
    ``beta < 1`` the true slope is infinite there (SPEC sec. 7)."""
    d = torch.lerp(p, omp.neg(), y)
    beta = mod.gamma.value
    m = modulator(d.abs(), beta)
    loss = times(bce, m)
    if not need_grad:
        return loss, None
    grad = d.clone()
    if beta != 0:
        s = torch.where(d != 0, p * omp / torch.where(d != 0, d, 1.0), 0.0)
        grad.addcmul_(s, bce, value=beta)
    return loss, times(grad, m)


def _varifocal_factor(y: Tensor, p: Tensor, mod: Modulation, alpha_neg: Tensor | None) -> Tensor:
    """VFL's ``m``: ``y`` (1 with iou_weighted=False) where ``y > 0``, ``alpha p^g`` where
    ``y = 0``."""
    neg = modulator(p, mod.gamma.value)
    if alpha_neg is not None:
        neg = alpha_neg.expand_as(p) if neg is None else neg * alpha_neg
    return torch.where(y > 0, y if mod.iou_weighted else 1.0, 1.0 if neg is None else neg)


def _varifocal_terms(
    y: Tensor,
    p: Tensor,
    omp: Tensor,
    bce: Tensor,
    mod: Modulation,
    alpha_neg: Tensor | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """VFL, see :func:`sigmoid_terms`: positives are ``y > 0`` (the paper and mmdetection),

        y > 0:  m = y (1 with iou_weighted=False),  dL/dx = m (p - y)
        y = 0:  m = alpha p^g,                       dL/dx = m (p + g (1 - p) BCE)

    The negative branch is focal loss's ``y = 0`` term with ``1 - alpha_focal = alpha``."""
    m = _varifocal_factor(y, p, mod, alpha_neg)
    loss = bce * m
    if not need_grad:
        return loss, None
    grad = torch.lerp(p, omp.neg(), y)  # p - y
    g = mod.gamma.value
    if g != 0:
        grad.addcmul_(torch.where(y > 0, 0.0, omp), bce, value=g)
    return loss, grad.mul_(m)


class _AslParts(NamedTuple):
    ce: Tensor  # -(y log p + (1 - y) log(1 - p_m))
    q: Tensor  # y (1 - p) + (1 - y) p_m
    w: Tensor | None  # q^e, e = gamma_pos y + gamma_neg (1 - y) (None: 1)
    log_neg: Tensor  # log(1 - p_m)
    p_m: Tensor
    shifted: Tensor | None  # p > clip (None at clip 0: every p)


def _asymmetric_parts(x: Tensor, y: Tensor, p: Tensor, omp: Tensor, mod: Modulation) -> _AslParts:
    """ASL's pieces in logit space: ``log p = -softplus(-x)``; ``log(1 - p_m)`` is
    ``-softplus(x)`` at clip 0, else ``log1p(-p_m)`` with ``p_m = max(p - clip, 0)`` (no
    cancellation: ``1 - p_m >= clip``, and ``p_m`` carries ``p``'s absolute error only)."""
    softplus = torch.nn.functional.softplus
    log_pos = softplus(x.neg()).neg_()
    m = mod.clip
    shifted = None
    if m == 0:
        p_m = p
        log_neg = softplus(x).neg_()
    else:
        p_m = (p - m).clamp_(min=0)
        shifted = p > m
        log_neg = torch.log1p(p_m.neg())
    ce = torch.lerp(log_neg, log_pos, y).neg_()
    q = torch.lerp(p_m, omp, y)
    gn, gp = mod.gamma.value, mod.gamma_pos
    if gp == gn:
        w = modulator(q, gn)
    else:
        w = q.pow(torch.lerp(y.new_full((), gn), y.new_full((), gp), y))
    return _AslParts(ce, q, w, log_neg, p_m, shifted)


def _asymmetric_terms(
    x: Tensor, y: Tensor, p: Tensor, omp: Tensor, mod: Modulation, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """ASL (SPEC sec. 10; the soft-target form of the authors' code and timm):

        p_m = max(p - clip, 0),  q = y (1 - p) + (1 - y) p_m,  e = g+ y + g- (1 - y)
        CE  = -(y log p + (1 - y) log(1 - p_m)),  L = q^e CE
        dCE/dx = -y (1 - p) + (1 - y) [p > clip] p (1 - p) / (1 - p_m)
        dq/dx  = p (1 - p) ((1 - y) [p > clip] - y)
        dL/dx  = q^e (dCE/dx + e (dq/dx / q) CE)          (q^e dCE/dx with ``detach``)

    ``dq/dx / q`` is taken as 0 at ``q = 0`` (``0^e = 0`` with zero slope for every ``e``
    in (0, 1)); a negative with ``p <= clip`` has loss 0 and gradient 0 (the hard
    threshold)."""
    parts = _asymmetric_parts(x, y, p, omp, mod)
    loss = times(parts.ce, parts.w)
    if not need_grad:
        return loss, None
    pq = p * omp
    dneg = pq / (1 - parts.p_m) if parts.shifted is not None else p
    if parts.shifted is not None:
        dneg = torch.where(parts.shifted, dneg, 0.0)
    grad = torch.lerp(dneg, omp.neg(), y)
    gn, gp = mod.gamma.value, mod.gamma_pos
    if not mod.detach and not (gn == 0 and gp == 0):
        neg_dq = pq if parts.shifted is None else torch.where(parts.shifted, pq, 0.0)
        dq = torch.lerp(neg_dq, pq.neg(), y)
        ratio = torch.where(parts.q > 0, dq / parts.q.clamp(min=TINY), 0.0)
        e = gn if gp == gn else torch.lerp(y.new_full((), gn), y.new_full((), gp), y)
        grad = grad + e * ratio * parts.ce
    return loss, times(grad, parts.w)


def _asymmetric_target_grad(x: Tensor, y: Tensor, mod: Modulation) -> Tensor:
    """d ASL / d y: ``q^e (dCE/dy + CE (e (dq/dy) / q + (g+ - g-) log q))`` with
    ``dCE/dy = log(1 - p_m) - log p``, ``dq/dy = 1 - p - p_m`` (``q^e dCE/dy`` with
    ``detach``); ``1 / q`` and ``log q`` are taken as 0 at ``q = 0``."""
    p = torch.sigmoid(x)
    omp = torch.sigmoid(torch.neg(x))
    parts = _asymmetric_parts(x, y, p, omp, mod)
    grad = torch.nn.functional.softplus(x.neg()) + parts.log_neg
    gn, gp = mod.gamma.value, mod.gamma_pos
    if not mod.detach and not (gn == 0 and gp == 0):
        positive_q = parts.q > 0
        safe_q = torch.where(positive_q, parts.q, 1.0)
        e = gn if gp == gn else torch.lerp(y.new_full((), gn), y.new_full((), gp), y)
        dlog_w = torch.where(positive_q, e * (omp - parts.p_m) / safe_q, 0.0)
        if gp != gn:
            dlog_w = dlog_w + (gp - gn) * torch.where(positive_q, torch.log(safe_q), 0.0)
        grad = grad + parts.ce * dlog_w
    return times(grad, parts.w)


def sigmoid_terms(
    x: Tensor,
    y: Tensor,
    mod: Modulation,
    alpha: Tensor | None,
    need_grad: bool,
    pos_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Elementwise loss ``L = m(x, y) BCE(x, y)`` and d L / d x for targets ``y`` in [0, 1]
    (held fixed), the one formula of the sigmoid family:

        p   = sigmoid(x),  BCE = -(w y log p + (1 - y) log(1 - p))    (w = pos_weight)
        dL/dx = m dBCE/dx + BCE dm/dx,  dBCE/dx = (1 - y) p - w y (1 - p)

    with ``m`` by ``mod.kind`` (:func:`_focal_terms`, :func:`_quality_terms`,
    :func:`_varifocal_terms`): focal ``a_t q^g``, QFL ``|y - p|^beta``, VFL ``y`` (or 1)
    where ``y > 0`` and ``alpha p^g`` where ``y = 0``. ASL (:func:`_asymmetric_terms`)
    replaces BCE by the cross-entropy of its shifted probability (BCE at ``clip = 0``). ``alpha`` is focal loss's weight of
    the positives (``a_t = alpha y + (1 - alpha)(1 - y)``) or VFL's weight of the negatives;
    it and ``pos_weight`` (focal loss only) broadcast against ``x``. Each gradient is written
    as ``m (dBCE/dx + k BCE)`` with ``k = d log m / d x`` bounded, so it stays finite at
    ``|x| = 100`` for every exponent ``>= 0``."""
    p = torch.sigmoid(x)
    omp = torch.sigmoid(torch.neg(x))
    if mod.kind == ASYMMETRIC:
        return _asymmetric_terms(x, y, p, omp, mod, need_grad)
    bce = bce_with_logits(x, y, pos_weight)
    if mod.kind == FOCAL:
        return _focal_terms(y, p, omp, bce, mod, alpha, need_grad, pos_weight)
    if mod.kind == QUALITY:
        return _quality_terms(y, p, omp, bce, mod, need_grad)
    return _varifocal_terms(y, p, omp, bce, mod, alpha, need_grad)


def sigmoid_focal_terms(
    x: Tensor,
    y: Tensor,
    gamma: GammaPlan,
    alpha_pos: Tensor | None,
    need_grad: bool,
    pos_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Focal loss's elementwise loss and d loss / d x (:func:`sigmoid_terms` with the focal
    factor):

        p   = sigmoid(x),  q = 1 - p_t = p (1 - y) + (1 - p) y,  a_t = alpha y + (1 - alpha)(1 - y)
        BCE = -(w y log p + (1 - y) log(1 - p))          (:func:`bce_with_logits`; w = pos_weight)
        L   = a_t q^g BCE
        dL/dx = a_t q^g (g r (1 - 2y) BCE + (1 - y) p - w y (1 - p)),  r = p (1 - p) / q

    ``r`` (in [0, 1]) replaces ``q^(g-1) p (1-p)`` by ``q^g r``, which is finite for every
    gamma >= 0. ``alpha_pos`` and ``pos_weight`` broadcast against ``x`` (0-dim, or ``(C,)``
    along the last dimension). For y in {0, 1} this is focal loss as the paper writes it:
    ``-alpha (1-p)^g log p`` for a positive, ``-(1-alpha) p^g log(1-p)`` for a negative.
    """
    return sigmoid_terms(x, y, Modulation.focal(gamma), alpha_pos, need_grad, pos_weight)


def sigmoid_target_grad(
    x: Tensor,
    y: Tensor,
    mod: Modulation,
    alpha: Tensor | None,
    pos_weight: Tensor | None = None,
) -> Tensor:
    """d loss / d y of :func:`sigmoid_terms` (soft targets that require grad):
    ``dL/dy = m dBCE/dy + BCE dm/dy`` with ``dBCE/dy = w log(1 + e^-x) - log(1 + e^x)``
    (``-x`` without pos_weight) and, by kind:

    * focal: ``dm/dy = (2 alpha - 1) q^g + a_t g (1 - 2p) q^g / q`` (gamma a constant: for
      ``"flsd53"`` a piecewise constant of q, for a tensor gamma the value given); Poly-1's
      term adds ``eps (g + 1) q^g (1 - 2p)``. ``q^g BCE / q`` stays bounded as ``q -> 0``
      and is taken as 0 at ``q = 0``.
    * quality: ``dm/dy = -beta |d|^beta / d`` (``d = p - y``; 0 at ``d = 0``).
    * varifocal: ``dm/dy = 1`` where ``y > 0`` with iou_weighted, else 0 (the step at
      ``y = 0`` contributes nothing: the branch of each element is held fixed).
    * asymmetric: :func:`_asymmetric_target_grad`.
    """
    if mod.kind == ASYMMETRIC:
        return _asymmetric_target_grad(x, y, mod)
    p = torch.sigmoid(x)
    omp = torch.sigmoid(torch.neg(x))
    bce = bce_with_logits(x, y, pos_weight)
    if pos_weight is None:
        dbce = x.neg()
    else:
        softplus = torch.nn.functional.softplus
        dbce = pos_weight.to(x.dtype) * softplus(x.neg()) - softplus(x)
    if mod.kind == QUALITY:
        d = torch.lerp(p, omp.neg(), y)
        beta = mod.gamma.value
        if beta != 0:
            dbce = dbce - beta * torch.where(d != 0, bce / torch.where(d != 0, d, 1.0), 0.0)
        return times(dbce, modulator(d.abs(), beta))
    if mod.kind == VARIFOCAL:
        grad = dbce * _varifocal_factor(y, p, mod, alpha)
        if mod.iou_weighted:
            grad = grad + torch.where(y > 0, bce, 0.0)
        return grad
    q = torch.lerp(p, omp, y)
    g = mod.gamma.for_q(q)
    mod_q = modulator(q, g)
    grad = dbce
    if not (isinstance(g, float) and g == 0):
        ratio = torch.where(q > 0, bce / q.clamp(min=TINY), 0.0)
        grad = grad + g * (omp - p) * ratio
    grad = times(grad, mod_q)
    if alpha is not None:
        alpha_t = torch.lerp(1 - alpha, alpha, y)
        grad = grad * alpha_t + times(bce, mod_q) * (2 * alpha - 1)
    if mod.epsilon != 0:
        grad = grad + mod.epsilon * (g + 1) * times(omp - p, mod_q)
    return grad


class SigmoidSpec(NamedTuple):
    mod: Modulation
    reduce_sum: bool  # True: return the (weighted) sum; False: the elementwise loss
    index_form: bool

    @property
    def gamma(self) -> GammaPlan:
        return self.mod.gamma


SigmoidCompute = Callable[..., tuple[Tensor, Tensor | None]]


def _dense_target(
    target: Tensor, scores: Tensor | None, spec: SigmoidSpec, num_classes: int, dtype
) -> Tensor:
    """The dense targets: as given, or the one-hot of class indices (its ones replaced by
    ``scores``, the positives' targets, where given; other rows' scores are never read)."""
    if not spec.index_form:
        return target.to(dtype)
    cols = torch.arange(num_classes, device=target.device)
    hot = target.unsqueeze(-1) == cols
    if scores is None:
        return hot.to(dtype)
    return torch.where(hot, scores.to(dtype).unsqueeze(-1), 0.0)


def _element_scale(
    valid: Tensor | None, weight: Tensor | None, spec: SigmoidSpec, dtype
) -> Tensor | None:
    """The validity mask (ignored rows or entries: 0) times ``weight``, or None."""
    scale = None
    if valid is not None:
        scale = (valid.unsqueeze(-1) if spec.index_form else valid).to(dtype)
    if weight is not None:
        scale = times(weight.to(dtype), scale)
    return scale


def sigmoid_focal_plain(
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
    """The ``"torch"`` backend of the sigmoid family: loss (sum or elementwise) and gradient,
    both in the compute dtype, of :func:`sigmoid_terms` over the whole tensor. Class indices
    become a one-hot target here, its positives at their ``scores`` where given (the fast
    backends never build it); ``valid`` (the ignored rows or entries) and ``weight`` multiply
    the terms."""
    cdtype = compute_dtype(logits)
    x = logits.to(cdtype)
    y = _dense_target(target, scores, spec, x.shape[-1], cdtype)
    loss, grad = sigmoid_terms(x, y, spec.mod, alpha, need_grad, pos_weight)
    scale = _element_scale(valid, weight, spec, cdtype)
    if scale is not None:
        loss = loss * scale
        grad = None if grad is None else grad * scale
    return (exact_sum(loss) if spec.reduce_sum else loss), grad


class _SigmoidFocalFunction(torch.autograd.Function):
    """Forward returns the loss and keeps its gradient (from ``compute``: the plain formula
    or the chunked CPU backend, which share this signature); backward scales that gradient
    by ``grad_output`` in place (no second full-size tensor). A later backward through the
    same graph (``retain_graph=True``) recomputes the gradient, so it stays exact.

    ``weight`` may require grad (d loss / d weight is the unweighted loss, recomputed), and so
    may float targets and ``scores`` (:func:`sigmoid_target_grad`, computed in backward; for
    ``scores``, taken at each positive's column); alpha, ``pos_weight`` and gamma are
    constants.
    """

    @staticmethod
    def forward(
        ctx,
        logits,
        target,
        scores,
        valid,
        weight,
        alpha,
        pos_weight,
        spec: SigmoidSpec,
        compute,
    ):
        need_grad = ctx.needs_input_grad[0]
        args = (logits, target, scores, valid, weight, alpha, pos_weight)
        loss, grad = compute(*args, spec, need_grad)
        ctx.spec = spec
        ctx.compute = compute
        ctx.logits_dtype = logits.dtype
        ctx.grad = grad  # not save_for_backward: it is consumed in place by the first backward
        ctx.save_for_backward(*args)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward(LOSSES)
        logits, target, scores, valid, weight, alpha, pos_weight = ctx.saved_tensors
        spec = ctx.spec
        grad_logits = grad_target = grad_scores = grad_weight = None
        if ctx.needs_input_grad[0]:
            args = (logits, target, scores, valid, weight, alpha, pos_weight, spec, True)
            grad = stored_grad(ctx, lambda: ctx.compute(*args)[1])
            grad_logits = grad.mul_(grad_output).to(ctx.logits_dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # float targets, scores
            cdtype = compute_dtype(logits)
            y = _dense_target(target, scores, spec, logits.shape[-1], cdtype)
            grad_y = sigmoid_target_grad(logits.to(cdtype), y, spec.mod, alpha, pos_weight)
            scale = _element_scale(valid, weight, spec, cdtype)
            grad_y = times(grad_y, scale).mul_(grad_output)
            if ctx.needs_input_grad[1]:
                grad_target = grad_y.to(target.dtype)
            else:  # index form: each row's score is the target of its label's column
                num_classes = logits.shape[-1]
                col = target.clamp(0, num_classes - 1).unsqueeze(-1)
                positive = (target >= 0) & (target < num_classes)
                grad_s = torch.where(positive, grad_y.gather(-1, col).squeeze(-1), 0.0)
                grad_scores = grad_s.to(scores.dtype)
        if ctx.needs_input_grad[4]:
            elementwise = spec._replace(reduce_sum=False)
            unweighted, _ = ctx.compute(
                logits, target, scores, valid, None, alpha, pos_weight, elementwise, False
            )
            g = unweighted * grad_output
            # sum over the dimensions that weight was broadcast along
            grad_weight = g.sum_to_size(weight.shape).to(weight.dtype)
        return (
            grad_logits,
            grad_target,
            grad_scores,
            None,
            grad_weight,
            None,
            None,
            None,
            None,
        )


def _sigmoid_apply(*args) -> Tensor:
    return _SigmoidFocalFunction.apply(*args)


_sigmoid_apply_eager = outside_compiled_graph(_sigmoid_apply)  # the chunked backend

# the Triton kernel's modulating factor (its constexpr MODULATION)
_TRITON_MODULATION = {FOCAL: 0, QUALITY: 1}


def triton_modulation(mod: Modulation) -> int:
    """The sigmoid kernel's ``MODULATION``: 0 focal, 1 QFL, 2 VFL, 3 VFL without
    iou_weighting."""
    if mod.kind == VARIFOCAL:
        return 2 if mod.iou_weighted else 3
    return _TRITON_MODULATION[mod.kind]


def run_sigmoid_family(
    loss_name: str,
    logits: Tensor,
    parsed: SigmoidTargets,
    scores: Tensor | None,
    *,
    mod: Modulation,
    alpha: Tensor | None,
    pos_weight: Tensor | None,
    weight: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    normalizer: float | Tensor | None,
    backend: str,
    lacks: str | None = None,
) -> Tensor:
    """The loss of the sigmoid family for checked arguments: picks the backend (``loss_name``
    in the dispatch table; ``lacks``: an option that no fast backend has) and runs it, then
    reduces. Shared by focal loss, QFL, VFL, ASL and Poly-1 focal."""
    out_dtype = output_dtype(logits)
    spec = SigmoidSpec(mod, reduction != "none", parsed.is_index)
    target, valid = parsed.target, parsed.valid
    triton_lacks = lacks  # options the Triton kernel lacks (see kernels/dispatch.py)
    if triton_lacks is None:
        if weight is not None:
            triton_lacks = "weight="
        elif pos_weight is not None:
            triton_lacks = "pos_weight="
        elif mod.gamma.flsd:
            triton_lacks = f"gamma={FLSD!r}"
        elif mod.gamma.tensor is not None:
            triton_lacks = f"gamma={mod.gamma.tensor!r}"
        elif target.requires_grad or (scores is not None and scores.requires_grad):
            triton_lacks = "targets that require grad"
    choice = resolve_backend(
        loss_name, backend, logits, unsupported={"triton": triton_lacks, "chunked": lacks}
    )
    denominator = parsed.valid_count(logits.numel())
    with torch.autocast(logits.device.type, enabled=False):
        if choice.backend == "triton":
            from ..kernels.triton_sigmoid_focal import TritonSigmoidSpec, triton_sigmoid_focal

            tspec = TritonSigmoidSpec(
                mod.gamma.value,
                spec.reduce_sum,
                parsed.is_index,
                NO_LABEL if ignore_index is None else ignore_index,
                triton_modulation(mod),
            )
            # the reduction is folded into the kernel's gradient (see kernels/triton_scale.py)
            inv = reduction_scale(
                reduction, normalizer=normalizer, denominator=denominator, device=logits.device
            )
            loss = triton_sigmoid_focal(
                logits, target, scores, None if parsed.is_index else valid, alpha, tspec, inv
            )
        else:
            args = (logits, target, scores, valid, weight, alpha, pos_weight, spec)
            if choice.backend == "chunked":
                from ..kernels.chunked import sigmoid_focal_chunked

                loss = _sigmoid_apply_eager(*args, sigmoid_focal_chunked)
            else:
                loss = _sigmoid_apply(*args, sigmoid_focal_plain)
            if reduction != "none":
                loss = finish(loss, reduction, normalizer=normalizer, denominator=denominator)
    return loss.to(out_dtype)


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: Alpha = 0.25,
    gamma: Gamma = 2.0,
    weight: Tensor | None = None,
    pos_weight: float | Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Sigmoid focal loss (binary, multi-label, or RetinaNet-style class-index targets).

    .. math::

        \mathrm{FL} = \alpha_t\, q^{\gamma}\, \mathrm{BCE}(x, y),\quad
        p = \sigma(x),\; q = p (1 - y) + (1 - p) y,\;
        \alpha_t = \alpha y + (1 - \alpha)(1 - y)

    with :math:`\mathrm{BCE}(x, y) = -(w y \log p + (1 - y) \log(1 - p))`, ``w`` the
    ``pos_weight`` (1 by default). For a hard target this is the paper's
    :math:`-\alpha_t (1 - p_t)^\gamma \log p_t` (``q = 1 - p_t``). For a soft target
    ``y`` in (0, 1) it is exactly the formula above: the modulating factor uses ``q``, the
    probability mass on the wrong side, and the cross-entropy is the full soft BCE (not
    ``-log(p y + (1-p)(1-y))``); kornia's and MONAI's soft forms differ, see
    ``docs/losses.md``. BCE is computed in log space without cancellation (never
    ``log(sigmoid(x))``); the gradient is analytic and finite for every ``gamma >= 0`` at any
    logit. Float targets that require grad get their gradient (gamma a constant).

    Args:
        logits: ``(*, C)`` pre-sigmoid scores, any floating dtype (computed in float32,
            returned in the input dtype; float32 under autocast).
        targets: either a floating tensor of the logits' shape (binary or soft targets in
            [0, 1]; an integer/bool tensor of that shape is read as hard 0/1 labels with
            ``ignore_index`` entries ignored), or an integer tensor of shape ``(*)`` holding per
            row a class in ``[0, C)`` (positive for that column), ``C`` (background: all
            columns negative) or ``ignore_index`` (row ignored). The index form gives the same
            values and gradients as the one-hot form without building it. Float targets
            equal to ``ignore_index`` are ignored too (a dense label map masked with -100);
            other float targets outside [0, 1] raise ``ValueError`` where reading values is
            free (CPU, eager) or with ``validate=True``.
        alpha: weight of the positive class (``1 - alpha`` for negatives); a float, a tensor of
            shape ``(C,)`` (per class), or ``None`` for no weighting. Default 0.25 (RetinaNet).
        gamma: focusing parameter ``>= 0`` (default 2), ``"flsd53"`` (Mukhoti et al. 2020:
            5 where ``p_t < 0.2``, else 3) or a 0-dim tensor (treated as a constant).
        weight: elementwise weight broadcastable to the logits' shape (never broadcasting the
            loss to a larger shape).
        pos_weight: weight of the positive term of BCE, as in ``torch.nn.BCEWithLogitsLoss``:
            a number or a tensor of shape ``()`` or ``(C,)`` (per class, broadcast over the
            last dimension), ``>= 0``. With ``gamma=0, alpha=None`` the loss equals
            ``F.binary_cross_entropy_with_logits(..., pos_weight=...)``.
        ignore_index: target value (index, integer or float dense form) that contributes
            nothing: no loss, no gradient, not in the mean's denominator. ``None``: nothing is
            ignored (and float targets need no mask pass off the CPU).
        reduction: ``"none"`` (the logits' shape), ``"mean"`` (over non-ignored elements) or
            ``"sum"``.
        normalizer: if given, return ``sum / max(normalizer, 1)`` (detection convention: the
            number of positive anchors). Only with ``reduction="mean"``.
        validate: ``True`` checks target values, per-class ``alpha`` and ``pos_weight`` (a
            device sync); ``None`` (default) checks them only where it is free (CPU, eager);
            ``False`` checks nothing.
        backend: ``"auto"`` (default: the Triton kernel for float32/float16/bfloat16 CUDA
            tensors when triton is installed, the ``"chunked"`` CPU path for CPU tensors,
            else the plain ``"torch"`` formula), or one of those names (``ValueError``
            where it cannot run). Triton lacks ``weight=``, ``pos_weight=``,
            ``gamma="flsd53"``, tensor gamma and targets that require grad; the chunked path
            takes every option. See
            :mod:`focalkit.kernels.dispatch`.

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
    gamma = check_gamma(gamma)
    parsed = parse_sigmoid_targets(logits, targets, ignore_index, validate)
    read = validate is True or (validate is None and may_read_values(logits))
    alpha_pos = alpha_tensor(alpha, parsed.num_classes, logits, check_values=read)
    pos = class_tensor("pos_weight", pos_weight, parsed.num_classes, logits, check_values=read)
    check_elementwise_weight(weight, logits.shape)
    return run_sigmoid_family(
        "sigmoid_focal_loss",
        logits,
        parsed,
        None,
        mod=Modulation.focal(GammaPlan.of(gamma)),
        alpha=alpha_pos,
        pos_weight=pos,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )


# --------------------------------------------------------------------------------------------
# softmax focal loss: the formula
# --------------------------------------------------------------------------------------------


def softmax_focal_terms(
    logp: Tensor, gamma: GammaPlan, epsilon: float = 0.0
) -> tuple[Tensor, Tensor]:
    """For each log-probability: the focal term ``ell = -(1-p)^g log p`` and
    ``G = (1-p)^g - g (1-p)^(g-1) p log p`` (so that d ell / d x_j = G (p_j - [j = c])).

    ``(1-p)^(g-1) log p`` is written ``(1-p)^g * (log p / (1-p))`` with the ratio -> -1 as
    p -> 1, which keeps G finite for every gamma >= 0. ``epsilon`` adds Poly-1's term
    ``epsilon (1-p)^(g+1)`` to ``ell`` and ``epsilon (g + 1) p (1-p)^g`` to ``G`` (at
    ``g = 0``: Poly-1 cross-entropy, ``G = 1 + epsilon p``)."""
    one_minus_p = torch.expm1(logp).neg_()  # accurate 1 - p near p = 1
    g = gamma.for_q(one_minus_p)
    mod = modulator(one_minus_p, g)
    ell = times(logp.neg(), mod)
    if epsilon != 0:
        ell = ell + epsilon * times(one_minus_p, mod)
    if isinstance(g, float) and g == 0:
        if epsilon == 0:
            return ell, torch.ones_like(logp)
        return ell, torch.exp(logp).mul_(epsilon).add_(1)
    ratio = torch.where(one_minus_p > 0, logp / one_minus_p.clamp(min=TINY), -1.0)
    p = torch.exp(logp)
    G = (1 - g * p * ratio) if not isinstance(g, float) else torch.mul(p, ratio).mul_(-g).add_(1)
    if epsilon != 0:
        G = G + (epsilon * (g + 1)) * p
    return ell, times(G, mod)


class SoftmaxSpec(NamedTuple):
    gamma: GammaPlan
    reduce_sum: bool
    index_form: bool
    label_smoothing: float
    ignore_index: int
    epsilon: float = 0.0  # Poly-1's epsilon (0: softmax focal loss)


def weight_sum(valid: Tensor, safe: Tensor, class_weight: Tensor | None, dtype) -> Tensor:
    """``sum w[y]`` over the ``valid`` rows (``w = 1`` without ``class_weight``; ``safe``: the
    labels with invalid rows at 0): ``F.cross_entropy``'s mean denominator, in ``dtype``."""
    if class_weight is None:
        return valid.sum(dtype=dtype)
    return (class_weight.to(dtype).take(safe) * valid).sum()


def index_denominator(
    labels: Tensor, class_weight: Tensor | None, num_classes: int, ignore_index: int
) -> Tensor:
    """:func:`weight_sum` (float32) over the rows the Triton kernel counts (``0 <= y < C``,
    ``y != ignore_index``), taken from the ``(M,)`` labels before the kernel runs."""
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    return weight_sum(valid, torch.where(valid, labels, 0).long(), class_weight, torch.float32)


def softmax_index_rows_plain(
    x: Tensor,
    safe: Tensor,
    u: Tensor,
    gamma: GammaPlan,
    need_grad: bool,
    epsilon: float = 0.0,
) -> tuple[Tensor, Tensor | None]:
    """Class-index targets without smoothing: the per-row loss ``u ell(log p_y)`` and its
    gradient ``u G (p_j - [j = y])`` for ``(M, C)`` logits, ``safe`` the ``(M, 1)`` labels
    (ignored rows at 0) and ``u`` the ``(M, 1)`` row scale (0 for ignored rows); ``epsilon``
    is Poly-1's (:func:`softmax_focal_terms`)."""
    logp = torch.log_softmax(x, dim=-1)
    ell, G = softmax_focal_terms(logp.gather(-1, safe), gamma, epsilon)
    loss = (ell * u).squeeze(-1)
    if not need_grad:
        return loss, None
    Gu = G * u
    grad = torch.exp(logp).mul_(Gu)
    return loss, grad.scatter_add_(-1, safe, Gu.neg())


def _per_class(
    logp: Tensor, u: Tensor, gamma: GammaPlan, need_grad: bool, epsilon: float = 0.0
) -> tuple[Tensor, Tensor | None]:
    """``L = sum_c u_c ell_c`` per row (``ell_c = -(1-p_c)^g log p_c``, plus Poly-1's
    ``epsilon (1-p_c)^(g+1)``), and its gradient ``p_j sum_c u_c G_c - u_j G_j``."""
    ell, G = softmax_focal_terms(logp, gamma, epsilon)
    loss = (ell * u).sum(-1)
    if not need_grad:
        return loss, None
    uG = G * u
    grad = torch.exp(logp) * uG.sum(-1, keepdim=True) - uG
    return loss, grad


def _class_scale(
    class_weight: Tensor | None, alpha: Tensor | None, num_classes: int, dtype
) -> Tensor | None:
    """``alpha_c * w_c`` (a global alpha as a constant vector), shape ``(C,)``, or None."""
    scale = None if class_weight is None else class_weight.to(dtype)
    if alpha is not None:
        scale = times(alpha.to(dtype).expand(num_classes), scale)
    return scale


def softmax_focal_target_grad(
    logits: Tensor,
    class_weight: Tensor | None,
    alpha: Tensor | None,
    spec: SoftmaxSpec,
) -> Tensor:
    """d (per-row loss) / d t for probability targets: ``(1 - eps) alpha_c w_c ell_c`` with
    ``ell_c = -(1 - p_c)^g log p_c`` (the per-class form is linear in the targets; gamma is a
    constant)."""
    cdtype = compute_dtype(logits)
    x = logits.to(cdtype)
    ell, _ = softmax_focal_terms(torch.log_softmax(x, dim=-1), spec.gamma, spec.epsilon)
    grad = times(ell, _class_scale(class_weight, alpha, x.shape[-1], cdtype))
    return grad * (1 - spec.label_smoothing)


IndexRows = Callable[[Tensor, Tensor, Tensor, GammaPlan, bool, float], tuple[Tensor, Tensor | None]]


def softmax_focal_forward(
    logits: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    alpha: Tensor | None,
    spec: SoftmaxSpec,
    need_grad: bool,
    index_rows: IndexRows = softmax_index_rows_plain,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns (loss sum or per-sample loss, mean denominator, gradient) for logits in
    channel-last layout ``(M, C)``.

    Per-class form (probability targets and label smoothing):
    ``L = -sum_c u_c (1-p_c)^g log p_c`` with ``u_c = alpha_c w_c t_c``; its gradient is
    ``p_j sum_c u_c G_c - u_j G_j``. The index form without smoothing is the special case
    ``t = onehot(y)``, computed by ``index_rows`` (the plain gather, or the chunked CPU
    backend's :func:`~focalkit.kernels.chunked.softmax_index_rows`)."""
    cdtype = compute_dtype(logits)
    x = logits.to(cdtype)
    rows, num_classes = x.shape
    scale = _class_scale(class_weight, alpha, num_classes, cdtype)

    eps = spec.label_smoothing
    if spec.index_form:
        valid = target != spec.ignore_index
        safe = torch.where(valid, target, 0).long().unsqueeze(-1)
        denominator = weight_sum(valid, safe.squeeze(-1), class_weight, cdtype)
        u = valid.unsqueeze(-1).to(cdtype)
        if eps == 0:
            if scale is not None:
                u = u * scale[safe]
            loss, grad = index_rows(x, safe, u, spec.gamma, need_grad, spec.epsilon)
        else:
            t = torch.full_like(x, eps / num_classes)
            t.scatter_add_(-1, safe, torch.full_like(x[:, :1], 1 - eps))
            logp = torch.log_softmax(x, dim=-1)
            u = times(t * u, scale)
            loss, grad = _per_class(logp, u, spec.gamma, need_grad, spec.epsilon)
    else:
        t = target.to(cdtype)
        if eps > 0:
            t = t * (1 - eps) + eps / num_classes
        denominator = torch.full((), float(rows), dtype=cdtype, device=x.device)
        logp = torch.log_softmax(x, dim=-1)
        loss, grad = _per_class(logp, times(t, scale), spec.gamma, need_grad, spec.epsilon)
    if spec.reduce_sum:
        loss = exact_sum(loss)
    return loss, denominator, grad


class _SoftmaxFocalFunction(torch.autograd.Function):
    """Like :class:`_SigmoidFocalFunction`: the gradient is formed in forward and scaled in
    place by ``grad_output`` in backward; a second backward through a retained graph
    recomputes it."""

    @staticmethod
    def forward(ctx, logits, target, class_weight, alpha, spec: SoftmaxSpec, index_rows):
        loss, denominator, grad = softmax_focal_forward(
            logits, target, class_weight, alpha, spec, ctx.needs_input_grad[0], index_rows
        )
        ctx.logits_dtype = logits.dtype
        ctx.spec = spec
        ctx.index_rows = index_rows
        ctx.grad = grad  # consumed in place by the first backward
        ctx.save_for_backward(logits, target, class_weight, alpha)
        ctx.mark_non_differentiable(denominator)
        return loss, denominator

    @staticmethod
    def backward(ctx, grad_output, _grad_denominator):
        refuse_double_backward(LOSSES)
        logits, target, class_weight, alpha = ctx.saved_tensors
        if not ctx.spec.reduce_sum:
            grad_output = grad_output.unsqueeze(-1)
        grad_logits = grad_target = None
        if ctx.needs_input_grad[0]:
            args = (logits, target, class_weight, alpha, ctx.spec, True, ctx.index_rows)
            grad = stored_grad(ctx, lambda: softmax_focal_forward(*args)[2])
            grad_logits = grad.mul_(grad_output).to(ctx.logits_dtype)
        if ctx.needs_input_grad[1]:  # probability targets (class indices never require grad)
            grad_t = softmax_focal_target_grad(logits, class_weight, alpha, ctx.spec)
            grad_target = grad_t.mul_(grad_output).to(target.dtype)
        return grad_logits, grad_target, None, None, None, None


def _softmax_apply(*args) -> tuple[Tensor, Tensor]:
    return _SoftmaxFocalFunction.apply(*args)


_softmax_apply_eager = outside_compiled_graph(_softmax_apply)  # the chunked backend


def _channel_last(logits: Tensor) -> Tensor:
    """(N, C, d1, ...) -> (N * d1 * ..., C); (N, C) unchanged; (C,) -> (1, C)."""
    if logits.dim() == 1:
        return logits.unsqueeze(0)
    if logits.dim() == 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


class SoftmaxTargets(NamedTuple):
    """Targets of the softmax losses: ``flat`` (the ``(M,)`` class indices or the ``(M, C)``
    channel-last probabilities), the form and the shape of a per-sample loss."""

    flat: Tensor
    index_form: bool
    index_shape: torch.Size
    num_classes: int


def softmax_num_classes(logits: Tensor) -> int:
    """``C`` of ``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)`` logits (a scalar raises)."""
    if logits.dim() == 0:
        raise ValueError("logits: expected shape (C,), (N, C) or (N, C, d1, ...), got a scalar")
    return logits.shape[1] if logits.dim() >= 2 else logits.shape[0]


def parse_softmax_targets(
    logits: Tensor, targets: Tensor, ignore_index: int, validate: bool | None
) -> SoftmaxTargets:
    """The ``F.cross_entropy`` target forms: class indices of shape ``(N, d1, ...)`` (checked
    in ``[0, C)`` or ``ignore_index`` where reading is free, or with ``validate=True``) or
    probabilities of the logits' shape (checked in [0, 1] with ``validate=True``)."""
    num_classes = softmax_num_classes(logits)
    index_shape = (logits.shape[:1] + logits.shape[2:]) if logits.dim() >= 2 else torch.Size([])
    if targets.shape == logits.shape and targets.is_floating_point():
        if validate:
            check_values_in_unit_interval("targets", targets)
        return SoftmaxTargets(_channel_last(targets), False, index_shape, num_classes)
    if (
        targets.shape == index_shape
        and not targets.is_floating_point()
        and targets.dtype != torch.bool
    ):
        if validate is True or (validate is None and may_read_values(targets)):
            check_class_indices(targets, num_classes, ignore_index, background=False)
        return SoftmaxTargets(targets.reshape(-1), True, index_shape, num_classes)
    raise ValueError(
        f"targets: expected integer class indices of shape {tuple(index_shape)} or "
        f"probabilities of shape {tuple(logits.shape)}, got a {targets.dtype} tensor of "
        f"shape {tuple(targets.shape)}"
    )


def run_softmax_family(
    loss_name: str,
    logits: Tensor,
    parsed: SoftmaxTargets,
    *,
    weight: Tensor | None,
    alpha: Tensor | None,
    gamma: GammaPlan,
    epsilon: float,
    label_smoothing: float,
    ignore_index: int,
    reduction: str,
    normalizer: float | Tensor | None,
    backend: str,
) -> Tensor:
    """The loss of the softmax family (softmax focal loss; Poly-1 cross-entropy, its
    ``gamma = 0`` member with Poly-1's ``epsilon``) for checked arguments: picks the backend
    (``loss_name`` in the dispatch table) and runs it, then reduces."""
    index_form, flat_target = parsed.index_form, parsed.flat
    out_dtype = output_dtype(logits)
    spec = SoftmaxSpec(
        gamma, reduction != "none", index_form, label_smoothing, ignore_index, epsilon
    )
    lacks = None  # options only the plain formula has (see kernels/dispatch.py)
    if not index_form:
        lacks = "probability targets"
    elif label_smoothing > 0:
        lacks = f"label_smoothing={label_smoothing!r}"
    triton_lacks = lacks
    if triton_lacks is None and gamma.flsd:
        triton_lacks = f"gamma={FLSD!r}"
    elif triton_lacks is None and gamma.tensor is not None:
        triton_lacks = f"gamma={gamma.tensor!r}"
    choice = resolve_backend(
        loss_name,
        backend,
        logits,
        unsupported={"triton": triton_lacks, "chunked": lacks},
    )
    with torch.autocast(logits.device.type, enabled=False):
        if choice.backend == "triton":
            from ..kernels.triton_softmax_focal import TritonSoftmaxSpec, triton_softmax_focal

            tspec = TritonSoftmaxSpec(gamma.value, spec.reduce_sum, ignore_index, epsilon)
            denominator = None
            if reduction == "mean" and normalizer is None:
                denominator = index_denominator(
                    flat_target, weight, parsed.num_classes, ignore_index
                )
            # the reduction is folded into the kernel's gradient (see kernels/triton_scale.py)
            inv = reduction_scale(
                reduction, normalizer=normalizer, denominator=denominator, device=logits.device
            )
            loss = triton_softmax_focal(
                _channel_last(logits), flat_target, weight, alpha, tspec, inv
            )
        else:
            args = (_channel_last(logits), flat_target, weight, alpha, spec)
            if choice.backend == "chunked":
                from ..kernels.chunked import softmax_index_rows

                loss, denominator = _softmax_apply_eager(*args, softmax_index_rows)
            else:
                loss, denominator = _softmax_apply(*args, softmax_index_rows_plain)
            if reduction != "none":
                loss = finish(loss, reduction, normalizer=normalizer, denominator=denominator)
        if reduction == "none":
            loss = loss.reshape(parsed.index_shape)
    return loss.to(out_dtype)


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
            tensors when triton is installed, the ``"chunked"`` CPU path for CPU tensors,
            else the plain ``"torch"`` formula), or one of those names (``ValueError``
            where it cannot run). Probability targets and ``label_smoothing > 0`` run on
            torch only; ``gamma="flsd53"`` and tensor gamma not on Triton. See
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
    gamma = check_gamma(gamma)
    label_smoothing = check_label_smoothing(label_smoothing)
    num_classes = softmax_num_classes(logits)
    read = validate is True or (validate is None and may_read_values(logits))
    alpha_t = alpha_tensor(alpha, num_classes, logits, unit=False, check_values=read)
    check_class_weight(weight, num_classes, read)
    parsed = parse_softmax_targets(logits, targets, ignore_index, validate)
    return run_softmax_family(
        "softmax_focal_loss",
        logits,
        parsed,
        weight=weight,
        alpha=alpha_t,
        gamma=GammaPlan.of(gamma),
        epsilon=0.0,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )


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
    check_sample_counts(counts)
    check_unit_interval("beta", beta, closed_right=False)
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
    check_open_unit_interval("pi", pi)
    return -math.log((1 - pi) / pi)
