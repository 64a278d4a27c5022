"""Module wrappers of the focal losses. They store hyperparameters and make one call into
:mod:`focalkit.functional.focal`; ``gamma="auto"`` keeps its running estimate as a buffer."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import (
    check_floating,
    check_gamma,
    check_label_smoothing,
    check_nonnegative,
    check_unit_interval,
)
from ..functional._targets import parse_sigmoid_targets
from ..functional.focal import Alpha, Gamma, sigmoid_focal_loss, softmax_focal_loss
from ._base import LabelLossModule

__all__ = ["SigmoidFocalLoss", "SoftmaxFocalLoss"]

_P_HAT_MIN = 1e-6


class _FocalLossBase(LabelLossModule):
    """Shared state for ``gamma="auto"`` (Weber et al., arXiv 1904.09048):
    ``gamma = -log(p_hat)``, ``p_hat`` an EMA of the batch-mean probability of the correct
    class, updated in training mode only and used as a constant in backward. The subclasses
    call :meth:`_store_focusing` after :class:`LabelLossModule`'s constructor."""

    p_hat: Tensor
    p_hat_initialized: Tensor
    alpha: Alpha
    gamma: Gamma

    def _store_focusing(self, gamma: Gamma, alpha: Alpha, auto_momentum: float) -> None:
        """Check and keep ``gamma``, ``alpha`` and ``auto_momentum`` (and, for ``"auto"``, the
        estimate's buffers)."""
        self.auto = gamma == "auto"
        # a tensor gamma is a buffer (it follows .to()); "auto" keeps its estimate in p_hat
        self.store("gamma", gamma if self.auto else check_gamma(gamma))
        self.store("alpha", alpha)
        check_unit_interval("auto_momentum", auto_momentum, closed_right=False)
        self.auto_momentum = float(auto_momentum)
        if self.auto:
            # p_hat = 1 means gamma = 0 (plain cross-entropy) until the first training batch.
            self.register_buffer("p_hat", torch.ones(()))
            self.register_buffer("p_hat_initialized", torch.zeros((), dtype=torch.bool))

    def _current_gamma(self, p_correct_fn) -> Gamma:
        if not self.auto:
            return self.gamma
        if self.training:
            with torch.no_grad():
                batch = p_correct_fn().float().to(self.p_hat.device)
                m = self.auto_momentum
                updated = torch.where(
                    self.p_hat_initialized, m * self.p_hat + (1 - m) * batch, batch
                )
                self.p_hat.copy_(updated)
                self.p_hat_initialized.fill_(True)
        return -torch.log(self.p_hat.clamp(min=_P_HAT_MIN, max=1.0))

    def extra_repr(self) -> str:
        gamma = "'auto'" if self.auto else repr(self.gamma)
        return f"gamma={gamma}, alpha={self.alpha!r}, reduction={self.reduction!r}"


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean() if values.numel() else values.new_ones(())
    mask = mask.to(values.dtype)
    count = mask.sum()
    return torch.where(count > 0, (values * mask).sum() / count.clamp(min=1), values.new_ones(()))


class SigmoidFocalLoss(_FocalLossBase):
    """Module form of :func:`focalkit.sigmoid_focal_loss` (same keywords and defaults).

    ``gamma="auto"`` adapts gamma during training (Weber et al., "Automated Focal Loss for
    Image based Object Detection", arXiv 1904.09048): ``gamma = -log(p_hat)`` where ``p_hat`` is
    an EMA (``auto_momentum``, default 0.95) of the mean ``p_t`` over the batch's valid
    elements. ``forward`` also takes per-batch ``weight`` and ``normalizer``, which override the
    constructor's for that call.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction="sum")
        >>> crit(torch.tensor([[-2.0, 0.0, 3.0]]), torch.tensor([[0.0, 1.0, 1.0]]))
        tensor(0.0447)
    """

    pos_weight: float | Tensor | None

    def __init__(
        self,
        *,
        alpha: Alpha = 0.25,
        gamma: Gamma = 2.0,
        weight: Tensor | None = None,
        pos_weight: float | Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool | None = None,
        auto_momentum: float = 0.95,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            loss="sigmoid_focal_loss",
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        self._store_focusing(gamma, alpha, auto_momentum)
        if isinstance(pos_weight, Tensor):  # a buffer in the state_dict, as in BCEWithLogitsLoss
            check_floating("pos_weight", pos_weight)
            self.register_buffer("pos_weight", pos_weight)
        else:
            if pos_weight is not None:
                check_nonnegative("pos_weight", pos_weight)
            self.pos_weight = pos_weight

    def _p_correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        parsed = parse_sigmoid_targets(logits, targets, self.ignore_index, False)
        y, valid = parsed.to_dense(logits.shape, torch.float32)
        p = torch.sigmoid(logits.detach().float())
        p_t = p * y + (1 - p) * (1 - y)
        return _masked_mean(p_t, valid)

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        gamma = self._current_gamma(lambda: self._p_correct(logits, targets))
        return sigmoid_focal_loss(
            logits,
            targets,
            alpha=self.alpha,
            gamma=gamma,
            pos_weight=self.pos_weight,
            **self.call_keywords(weight, normalizer),
        )


class SoftmaxFocalLoss(_FocalLossBase):
    """Module form of :func:`focalkit.softmax_focal_loss` (same keywords and defaults).

    ``gamma="auto"``: ``gamma = -log(p_hat)``, ``p_hat`` an EMA of the batch-mean softmax
    probability of the target class (Weber et al., arXiv 1904.09048), updated in training only.
    ``forward`` also takes per-batch ``weight`` (the per-class weight) and ``normalizer``,
    which override the constructor's for that call.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.SoftmaxFocalLoss(gamma=2.0)
        >>> crit(torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([0]))
        tensor(0.8655)
    """

    ignore_index: int  # class indices only, as F.cross_entropy (never None)

    def __init__(
        self,
        *,
        alpha: Alpha = None,
        gamma: Gamma = 2.0,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        validate: bool | None = None,
        auto_momentum: float = 0.95,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            loss="softmax_focal_loss",
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        self._store_focusing(gamma, alpha, auto_momentum)
        self.label_smoothing = check_label_smoothing(label_smoothing)

    def _p_correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        probs = torch.softmax(logits.detach().float(), dim=1 if logits.dim() > 1 else 0)
        if targets.shape == logits.shape and targets.is_floating_point():
            dim = 1 if logits.dim() > 1 else 0
            return (probs * targets.float()).sum(dim).mean()
        valid = targets != self.ignore_index
        safe = torch.where(valid, targets, 0).long()
        if logits.dim() == 1:
            return probs[safe]
        p_t = probs.gather(1, safe.unsqueeze(1)).squeeze(1)
        return _masked_mean(p_t, valid)

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        gamma = self._current_gamma(lambda: self._p_correct(logits, targets))
        return softmax_focal_loss(
            logits,
            targets,
            alpha=self.alpha,
            gamma=gamma,
            label_smoothing=self.label_smoothing,
            **self.call_keywords(weight, normalizer),
        )
