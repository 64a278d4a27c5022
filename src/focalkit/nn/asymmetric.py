"""Module form of the Asymmetric Loss: it stores the hyperparameters and makes one call into
:mod:`focalkit.functional.asymmetric`."""

from __future__ import annotations

from torch import Tensor

from .._checks import check_clip, check_flag, check_nonnegative
from ..functional.asymmetric import asymmetric_loss
from ._base import LabelLossModule

__all__ = ["AsymmetricLoss"]


class AsymmetricLoss(LabelLossModule):
    """Module form of :func:`focalkit.asymmetric_loss` (same keywords and defaults).

    ``forward(logits, targets, *, weight=None, normalizer=None)``; ``weight`` and
    ``normalizer`` override the constructor's for that call. The authors' ``AsymmetricLoss``
    is ``AsymmetricLoss(reduction="sum")``; timm's ``"batchmean"`` is the default reduction
    with ``normalizer=`` the batch size.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.AsymmetricLoss(gamma_pos=1.0, gamma_neg=4.0, clip=0.05, reduction="sum")
        >>> x = torch.tensor([[-3.0, 0.5, 3.0, -1.0, 2.0]])
        >>> crit(x, torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]))
        tensor(1.9000)
    """

    def __init__(
        self,
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
    ) -> None:
        super().__init__(
            loss="asymmetric_loss",
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            normalizer=normalizer,
            validate=validate,
            backend=backend,
        )
        check_nonnegative("gamma_pos", gamma_pos)
        check_nonnegative("gamma_neg", gamma_neg)
        check_flag("detach_focusing", detach_focusing)
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.clip = check_clip(clip)
        self.detach_focusing = detach_focusing

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return asymmetric_loss(
            logits,
            targets,
            gamma_pos=self.gamma_pos,
            gamma_neg=self.gamma_neg,
            clip=self.clip,
            detach_focusing=self.detach_focusing,
            **self.call_keywords(weight, normalizer),
        )

    def extra_repr(self) -> str:
        return (
            f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}, "
            f"detach_focusing={self.detach_focusing}, reduction={self.reduction!r}"
        )
