"""Poly-1: cross-entropy and focal loss plus the first polynomial term, ``epsilon (1 - p_t)``.

Poly-1 cross-entropy is the ``gamma = 0`` member of the softmax family of
:mod:`focalkit.functional.focal` (``softmax_focal_terms`` with ``epsilon``): it has
``F.cross_entropy``'s shapes, target forms and options, its chunked CPU path and its Triton
kernel. Poly-1 focal loss is sigmoid focal loss with the term ``epsilon (1 - p_t)^(gamma + 1)``
(``sigmoid_terms`` with ``epsilon``).

Reference:
    Z. Leng, M. Tan, C. Liu, E. D. Cubuk, X. Shi, S. Cheng, D. Anguelov, "PolyLoss: A
    Polynomial Expansion Perspective of Classification Loss Functions", ICLR 2022,
    https://arxiv.org/abs/2204.12511
"""

from __future__ import annotations

from torch import Tensor

from .._checks import (
    check_class_weight,
    check_floating,
    check_label_smoothing,
    check_nonnegative_weight,
    check_normalizer,
    check_poly1_focal,
    check_poly_epsilon,
    check_reduction,
    check_tensor,
)
from .._compat import may_read_values
from ._targets import parse_sigmoid_targets
from .focal import (
    FOCAL,
    Alpha,
    GammaPlan,
    Modulation,
    alpha_tensor,
    parse_softmax_targets,
    run_sigmoid_family,
    run_softmax_family,
    softmax_num_classes,
)

__all__ = ["poly1_cross_entropy", "poly1_focal_loss"]


def poly1_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    epsilon: float = 1.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    validate: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Poly-1 cross-entropy: cross-entropy plus ``epsilon`` times the first term of its
    polynomial expansion in ``1 - p_t``.

    .. math::

        \mathrm{Poly\text{-}1} = -\log p_t + \epsilon\,(1 - p_t),\qquad
        p_t = \sum_c t_c\, \mathrm{softmax}(x)_c

    With the conventions of ``F.cross_entropy`` (shapes ``(N, C)``, ``(N, C, d1, ...)`` or
    ``(C,)``; class indices or class probabilities; ``weight``, ``ignore_index``,
    ``label_smoothing``, ``reduction``); ``epsilon=0`` equals ``F.cross_entropy`` in value
    and gradient for every combination of them. Written per class,
    ``sum_c w_c t_c (-log p_c + epsilon (1 - p_c))``: for probability targets and label
    smoothing ``p_t`` is taken on the (smoothed) target distribution, as in the paper's
    pseudocode and optax; a class weight multiplies both terms of its class, and ``"mean"``
    divides by the summed ``weight[y]`` of the non-ignored targets (by the number of samples
    for probability targets), as ``F.cross_entropy`` does. The gradient is analytic:
    ``(p_j - [j = y]) (1 + epsilon p_y)`` for a class index.

    Args:
        logits: unnormalised scores (computed in float32, returned in the input dtype;
            float32 under autocast).
        targets: class indices in ``[0, C)`` or ``ignore_index``, or probabilities of the
            logits' shape (checked in [0, 1] with ``validate=True``).
        epsilon: ``>= -1`` (below, the loss would increase with ``p_t``). Default 1 (the
            abhuse PyTorch port); the paper tunes it per task: 2 on ImageNet (optax's
            default), -1 for COCO detection.
        weight: per-class rescaling ``(C,)``, ``>= 0``.
        ignore_index: class-index targets equal to it contribute nothing and count in no
            denominator.
        label_smoothing: in [0, 1].
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        validate: ``True`` checks target values anywhere (a sync); ``None``: class indices
            where free (CPU, eager).
        backend: ``"auto"``, ``"torch"``, ``"chunked"`` (CPU) or ``"triton"`` (CUDA): the
            softmax focal loss's paths (class indices without label smoothing; the rest runs
            on torch).

    Probability targets that require grad get their gradient (the loss is linear in them).

    Reference:
        Leng et al., "PolyLoss", https://arxiv.org/abs/2204.12511

    Example:
        >>> import torch, focalkit as fk
        >>> x = torch.tensor([[1.0, 2.0, 0.5]])
        >>> fk.poly1_cross_entropy(x, torch.tensor([0]))
        tensor(2.2331)
        >>> fk.poly1_cross_entropy(x, torch.tensor([0]), epsilon=0.0)  # F.cross_entropy
        tensor(1.4644)
    """
    check_floating("logits", logits)
    check_tensor("targets", targets)
    check_reduction(reduction)
    epsilon = check_poly_epsilon(epsilon)
    label_smoothing = check_label_smoothing(label_smoothing)
    num_classes = softmax_num_classes(logits)
    check_class_weight(
        weight, num_classes, validate is True or (validate is None and may_read_values(weight))
    )
    parsed = parse_softmax_targets(logits, targets, ignore_index, validate)
    return run_softmax_family(
        "poly1_cross_entropy",
        logits,
        parsed,
        weight=weight,
        alpha=None,
        gamma=GammaPlan.of(0.0),
        epsilon=epsilon,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=None,
        backend=backend,
    )


def poly1_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    epsilon: float = 1.0,
    alpha: Alpha = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    validate: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Poly-1 focal loss: sigmoid focal loss plus ``epsilon (1 - p_t)^(gamma + 1)``.

    .. math::

        \mathrm{Poly\text{-}1\ FL} = \alpha_t (1 - p_t)^{\gamma}\,\mathrm{BCE}(x, y)
            + \epsilon\,(1 - p_t)^{\gamma + 1}

    ``alpha`` multiplies the focal term only, not the polynomial term (the paper's
    pseudocode and the abhuse port); ``alpha=None`` turns it off. For soft targets
    ``1 - p_t`` is :func:`focalkit.sigmoid_focal_loss`'s ``q = p (1 - y) + (1 - p) y``. Any
    finite ``epsilon`` is allowed; below 0 the loss can be negative. ``epsilon = 0`` is
    sigmoid focal loss. Both terms are differentiated; ``(1 - p_t)^gamma`` is guarded for
    ``0 < gamma < 1`` (finite gradients at ``|x| = 100``).

    Args:
        logits, targets, weight, ignore_index, reduction, normalizer, validate: as
            :func:`focalkit.sigmoid_focal_loss` (dense 0/1 or soft targets, or class indices
            with ``C`` = background).
        epsilon: the polynomial coefficient (default 1).
        alpha: the positives' weight in [0, 1] (a float or ``(C,)``), or None.
        gamma: the focusing exponent, ``>= 0`` (default 2).
        backend: ``"auto"`` (the chunked path for CPU tensors in eager mode, else the plain
            formula), ``"torch"`` or ``"chunked"`` (the plain formula over cache-sized
            chunks; CPU only). It has no Triton kernel.

    Float targets that require grad get the gradient of the formula (gamma a constant).

    Reference:
        Leng et al., "PolyLoss", https://arxiv.org/abs/2204.12511

    Example:
        >>> import torch, focalkit as fk
        >>> x = torch.tensor([-2.0, 0.0, 3.0])
        >>> fk.poly1_focal_loss(x, torch.tensor([0.0, 1.0, 1.0]), reduction="none")
        tensor([3.0465e-03, 1.6832e-01, 1.3399e-04])
    """
    check_floating("logits", logits)
    check_tensor("targets", targets)
    check_reduction(reduction)
    check_normalizer(normalizer, reduction)
    epsilon, gamma_value = check_poly1_focal(epsilon, gamma)
    parsed = parse_sigmoid_targets(logits, targets, ignore_index, validate)
    read = validate is True or (validate is None and may_read_values(logits))
    alpha_pos = alpha_tensor(alpha, parsed.num_classes, logits, check_values=read)
    check_nonnegative_weight(weight, logits.shape, read)
    mod = Modulation(FOCAL, GammaPlan.of(gamma_value), epsilon=epsilon)
    return run_sigmoid_family(
        "poly1_focal_loss",
        logits,
        parsed,
        None,
        mod=mod,
        alpha=alpha_pos,
        pos_weight=None,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )
