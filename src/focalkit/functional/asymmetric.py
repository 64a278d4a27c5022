"""Asymmetric Loss (ASL) for multi-label classification.

ASL is a member of the sigmoid family of :mod:`focalkit.functional.focal`: its elementwise
formula (:func:`~focalkit.functional.focal.sigmoid_terms`, kind ``"asymmetric"``) computes
the loss and its analytic gradient in logit space, and it shares focal loss's target forms,
``ignore_index``, reductions and autograd Function.

Reference:
    T. Ridnik, E. Ben-Baruch, N. Zamir, A. Noy, I. Friedman, M. Protter, L. Zelnik-Manor,
    "Asymmetric Loss For Multi-Label Classification", ICCV 2021,
    https://arxiv.org/abs/2009.14119
"""

from __future__ import annotations

from torch import Tensor

from .._checks import (
    check_clip,
    check_flag,
    check_floating,
    check_nonnegative,
    check_nonnegative_weight,
    check_normalizer,
    check_reduction,
    check_tensor,
)
from .._compat import may_read_values
from ._targets import parse_sigmoid_targets
from .focal import ASYMMETRIC, GammaPlan, Modulation, run_sigmoid_family

__all__ = ["asymmetric_loss"]


def asymmetric_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma_pos: float = 1.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    detach_focusing: bool = False,
    weight: Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Asymmetric Loss: focal-style down-weighting with separate exponents for positives and
    negatives, and a probability margin that discards easy negatives.

    .. math::

        p_m = \max(p - m, 0),\qquad
        \mathrm{ASL} = -y\,(1 - p)^{\gamma_+} \log p - (1 - y)\, p_m^{\gamma_-} \log(1 - p_m)

    with ``p = sigmoid(x)`` and ``m = clip``. A negative with ``p <= clip`` has loss 0 and
    gradient 0 (the hard threshold of probability shifting). Soft targets follow the
    authors' code and timm: ``CE = -(y log p + (1 - y) log(1 - p_m))`` weighted by
    ``(1 - p_t)^(gamma_pos y + gamma_neg (1 - y))``, ``p_t = y p + (1 - y)(1 - p_m)`` (the
    formula above at ``y`` in {0, 1}; with ``clip=0`` and ``gamma_pos = gamma_neg = g`` it is
    sigmoid focal loss without alpha for every ``y``).

    Computed in logit space: ``log p = -softplus(-x)`` and ``log(1 - p_m)`` without clamping,
    where the public codes clamp probabilities at 1e-8 (a positive at ``x = -30`` costs 30
    here, 18.42 there, with zero gradient there). The gradient is analytic, finite at
    ``|x| = 100`` for every exponent ``>= 0`` (``0^gamma`` is 0 with zero slope).

    Args:
        logits: ``(*, C)`` pre-sigmoid scores (computed in float32, returned in the input
            dtype; float32 under autocast).
        targets: multi-label targets of the logits' shape: floats in [0, 1] (soft targets
            allowed; entries equal to ``ignore_index`` are ignored) or integer 0/1 (with
            ``ignore_index`` entries ignored); or integer class indices of shape ``(*)`` (one
            positive per row, ``C`` = none, ``ignore_index`` = ignored row), as
            :func:`focalkit.sigmoid_focal_loss`.
        gamma_pos: the positives' exponent, ``>= 0`` (default 1; the authors' MS-COCO
            training uses 0).
        gamma_neg: the negatives' exponent, ``>= 0`` (default 4).
        clip: the probability margin ``m`` in [0, 1) (default 0.05; 0 turns shifting off).
        detach_focusing: treat the focusing weight ``(1 - p_t)^e`` as a constant in backward
            (the authors' ``disable_torch_grad_focal_loss=True``); default False: it is
            differentiated, as in timm and as focal loss's is.
        weight: elementwise, broadcastable to the logits' shape, ``>= 0``.
        ignore_index: see ``targets``; ``None``: nothing is ignored.
        reduction: ``"none"`` | ``"mean"`` (over the non-ignored elements) | ``"sum"``. The
            authors' ``AsymmetricLoss`` and timm up to 1.0.30 return the sum over batch and
            classes: ``reduction="sum"``; timm's later ``"batchmean"`` is
            ``sum / batch size``: ``normalizer=logits.shape[0]``.
        normalizer: ``sum / max(normalizer, 1)``; only with ``reduction="mean"``.
        validate: ``True`` checks target values anywhere (a sync); ``None`` where free.
        backend: ``"auto"`` (the chunked path for CPU tensors in eager mode, else the plain
            formula), ``"torch"`` or ``"chunked"`` (the plain formula over cache-sized
            chunks; CPU only). ASL has no Triton kernel.

    Float targets that require grad get the gradient of the formula (the weight
    differentiated through ``y`` as well, its ``log q`` taken as 0 at ``q = 0``; with
    ``detach_focusing`` the weight is a constant there too).

    Reference:
        Ridnik et al., "Asymmetric Loss For Multi-Label Classification",
        https://arxiv.org/abs/2009.14119

    Example:
        >>> import torch, focalkit as fk
        >>> x = torch.tensor([-3.0, 0.5, 3.0, -1.0, 2.0])
        >>> y = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])
        >>> fk.asymmetric_loss(x, y, reduction="sum")  # the authors' reduction
        tensor(1.9000)
    """
    check_floating("logits", logits)
    check_tensor("targets", targets)
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    check_nonnegative("gamma_pos", gamma_pos)
    check_nonnegative("gamma_neg", gamma_neg)
    clip = check_clip(clip)
    check_flag("detach_focusing", detach_focusing)
    parsed = parse_sigmoid_targets(logits, targets, ignore_index, validate)
    check_nonnegative_weight(
        weight, logits.shape, validate is True or (validate is None and may_read_values(weight))
    )
    mod = Modulation(
        ASYMMETRIC,
        GammaPlan.of(float(gamma_neg)),
        gamma_pos=float(gamma_pos),
        clip=clip,
        detach=detach_focusing,
    )
    return run_sigmoid_family(
        "asymmetric_loss",
        logits,
        parsed,
        None,
        mod=mod,
        alpha=None,
        pos_weight=None,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )
