"""Parsing of the two target forms shared by the sigmoid losses (focal, GHM-C).

* dense: a tensor of the logits' shape. Floating → binary or soft targets in [0, 1]
  (multi-label is this case). Integer/bool → hard 0/1 targets where entries equal to
  ``ignore_index`` are ignored.
* index: an integer tensor of shape ``logits.shape[:-1]`` holding, per row, a class in
  [0, C) (a positive for that column), ``C`` (background: every column negative) or
  ``ignore_index`` (the whole row contributes nothing and counts in no denominator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_binary_labels, check_class_indices, check_values_in_unit_interval
from .._compat import may_read_values


@dataclass(frozen=True)
class SigmoidTargets:
    """Targets in one of the two forms; exactly one of ``dense`` / ``labels`` is set."""

    num_classes: int
    dense: Tensor | None = None  # float, logits' shape
    dense_valid: Tensor | None = None  # bool, logits' shape (only for integer dense targets)
    labels: Tensor | None = None  # int64, logits.shape[:-1]
    valid_rows: Tensor | None = None  # bool, logits.shape[:-1] (index form)

    @property
    def is_index(self) -> bool:
        return self.labels is not None

    def valid_count(self, numel: int) -> Tensor | int:
        """Number of elements that count in a mean (ignored ones do not)."""
        if self.labels is not None:
            return self.valid_rows.sum() * self.num_classes
        if self.dense_valid is not None:
            return self.dense_valid.sum()
        return numel

    def to_dense(self, shape: torch.Size, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Materialise (targets, valid-mask-or-None) of the logits' shape (slow paths only)."""
        if self.labels is None:
            return self.dense.to(dtype), self.dense_valid
        cols = torch.arange(self.num_classes, device=self.labels.device)
        y = (self.labels.unsqueeze(-1) == cols).to(dtype)
        return y, self.valid_rows.unsqueeze(-1).expand(shape)


def parse_sigmoid_targets(
    logits: Tensor, targets: Tensor, ignore_index: int, validate: bool | None
) -> SigmoidTargets:
    """Classify ``targets`` into the dense or index form, checking shapes (never values,
    unless ``validate`` is True, or None on CPU in eager mode where reading is free)."""
    num_classes = logits.shape[-1] if logits.dim() > 0 else 1
    check_values = validate is True or (validate is None and may_read_values(targets))
    if targets.shape == logits.shape:
        if targets.is_floating_point():
            if validate:
                check_values_in_unit_interval("targets", targets)
            return SigmoidTargets(num_classes, dense=targets)
        valid = targets != ignore_index
        if check_values:
            check_binary_labels(targets, valid, ignore_index)
        return SigmoidTargets(num_classes, dense=targets * valid, dense_valid=valid)
    if logits.dim() > 0 and targets.shape == logits.shape[:-1]:
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise ValueError(
                f"targets: class-index targets of shape {tuple(targets.shape)} must be an integer "
                f"tensor, got dtype {targets.dtype}"
            )
        if check_values:
            check_class_indices(targets, num_classes, ignore_index, background=True)
        labels = targets.long()
        return SigmoidTargets(num_classes, labels=labels, valid_rows=labels != ignore_index)
    raise ValueError(
        f"targets: expected shape {tuple(logits.shape)} (dense/soft targets, the logits' shape) "
        f"or {tuple(logits.shape[:-1])} (integer class indices), got {tuple(targets.shape)}"
    )
