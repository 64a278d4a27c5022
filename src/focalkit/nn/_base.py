"""What every focalkit Module shares.

* Hyperparameters are checked once, at construction, by the same :mod:`focalkit._checks`
  functions the losses call.
* Tensor hyperparameters (``weight``, a per-class ``alpha``, a tensor ``normalizer``) are
  buffers, so they follow ``module.to(device)``; ``weight`` is in the ``state_dict``, as in
  ``torch.nn.CrossEntropyLoss``.
* ``weight`` and ``normalizer`` given to the constructor are defaults: ``forward(...,
  weight=..., normalizer=...)`` overrides them for one call.
* ``forward`` passes the keywords the Module keeps to its function with
  :meth:`LossModule.call_keywords` (extended by :class:`LabelLossModule` and the box losses'
  base with what they keep too), next to the loss's own hyperparameters written out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_normalizer, check_reduction, check_tensor
from ..kernels.dispatch import check_backend

__all__ = ["LabelLossModule", "LossModule"]


class LossModule(nn.Module):
    weight: Tensor | None
    normalizer: float | Tensor | None

    def __init__(
        self,
        *,
        loss: str | None,
        weight: Tensor | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        backend: str = "auto",
    ) -> None:
        """``loss``: the dispatch table's name of the loss (checks ``backend``), or None for a
        loss without backends."""
        super().__init__()
        check_reduction(reduction)
        check_normalizer(normalizer, reduction)
        if loss is not None:
            check_backend(backend, loss)
        if weight is not None:
            check_tensor("weight", weight)
        self.register_buffer("weight", weight)
        self.reduction = reduction
        self.store("normalizer", normalizer)
        self.backend = backend

    def store(self, name: str, value: object) -> None:
        """Keep a hyperparameter: a tensor (or a sequence of numbers, made a float tensor)
        as a non-persistent buffer, anything else as an attribute."""
        if isinstance(value, Sequence) and not isinstance(value, str):
            value = torch.as_tensor(value, dtype=torch.float32)
        if isinstance(value, Tensor):
            self.register_buffer(name, value, persistent=False)
        else:
            setattr(self, name, value)

    def call_weight(self, weight: Tensor | None) -> Tensor | None:
        return self.weight if weight is None else weight

    def call_normalizer(self, normalizer: float | Tensor | None) -> float | Tensor | None:
        return self.normalizer if normalizer is None else normalizer

    def call_keywords(
        self, weight: Tensor | None, normalizer: float | Tensor | None
    ) -> dict[str, Any]:
        """The keywords of one call kept here: this call's ``weight`` and ``normalizer`` (else
        the constructor's), ``reduction`` and ``backend``."""
        return {
            "weight": self.call_weight(weight),
            "reduction": self.reduction,
            "normalizer": self.call_normalizer(normalizer),
            "backend": self.backend,
        }


class LabelLossModule(LossModule):
    """A classification loss with ``ignore_index`` and ``validate`` (sigmoid and softmax focal
    loss, QFL, VFL, ASL, Poly-1 focal): keeps them too, and :meth:`call_keywords` passes them
    on."""

    def __init__(
        self,
        *,
        loss: str,
        weight: Tensor | None,
        ignore_index: int | None,
        reduction: str,
        normalizer: float | Tensor | None,
        validate: bool | None,
        backend: str,
    ) -> None:
        super().__init__(
            loss=loss, weight=weight, reduction=reduction, normalizer=normalizer, backend=backend
        )
        self.ignore_index = ignore_index
        self.validate = validate

    def call_keywords(
        self, weight: Tensor | None, normalizer: float | Tensor | None
    ) -> dict[str, Any]:
        return {
            **super().call_keywords(weight, normalizer),
            "ignore_index": self.ignore_index,
            "validate": self.validate,
        }
