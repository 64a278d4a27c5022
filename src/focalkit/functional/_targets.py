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

from .._checks import check_binary_labels, check_class_indices
from .._compat import may_read_values


@dataclass(frozen=True)
class SigmoidTargets:
    """Targets in one of the two forms.

    * dense (``is_index`` False): ``target`` has the logits' shape (floats, or the 0/1 values
      of integer targets with ignored entries at 0); ``valid`` is the bool mask of integer
      targets (None for float targets: every entry counts).
    * index: ``target`` holds the int64 labels, ``logits.shape[:-1]``; ``valid`` the bool
      mask of the rows that are not ``ignore_index``.
    """

    num_classes: int
    target: Tensor
    valid: Tensor | None
    is_index: bool

    def valid_count(self, numel: int) -> Tensor | int:
        """Number of elements that count in a mean (ignored ones do not)."""
        if self.valid is None:
            return numel
        count = self.valid.sum()
        return count * self.num_classes if self.is_index else count

    def to_dense(self, shape: torch.Size, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Materialise (targets, valid-mask-or-None) of the logits' shape (slow paths only)."""
        if not self.is_index:
            return self.target.to(dtype), self.valid
        cols = torch.arange(self.num_classes, device=self.target.device)
        y = (self.target.unsqueeze(-1) == cols).to(dtype)
        valid = None if self.valid is None else self.valid.unsqueeze(-1).expand(shape)
        return y, valid


def _float_targets(
    targets: Tensor, num_classes: int, ignore_index: int | None, validate: bool | None
) -> SigmoidTargets:
    """Float targets: entries equal to ``ignore_index`` are masked (and set to 0, keeping the
    graph of targets that require grad); the others must lie in [0, 1].

    On a CPU tensor in eager mode the values are read (free there): one ``aminmax`` pass finds
    whether any entry leaves [0, 1], and only then is a mask built (and, unless ``validate``
    is False, a value that is neither in [0, 1] nor ``ignore_index`` raises). Elsewhere
    reading would sync the device: the mask is always built (``ignore_index=None`` skips it)
    and values are checked only with ``validate=True``."""
    if ignore_index is None and validate is False:  # nothing to find, nothing to check
        return SigmoidTargets(num_classes, targets, None, is_index=False)
    if not may_read_values(targets):
        if validate:
            _check_float_values(targets, ignore_index)
        if ignore_index is None:
            return SigmoidTargets(num_classes, targets, None, is_index=False)
        valid = targets != ignore_index
        return SigmoidTargets(num_classes, torch.where(valid, targets, 0), valid, is_index=False)
    if targets.numel():
        lo, hi = torch.aminmax(targets.detach())
        if bool(lo >= 0) and bool(hi <= 1):
            return SigmoidTargets(num_classes, targets, None, is_index=False)
    else:
        return SigmoidTargets(num_classes, targets, None, is_index=False)
    if validate is not False:
        _check_float_values(targets, ignore_index)
    if ignore_index is None:
        return SigmoidTargets(num_classes, targets, None, is_index=False)
    valid = targets != ignore_index
    if bool(valid.all()):
        return SigmoidTargets(num_classes, targets, None, is_index=False)
    return SigmoidTargets(num_classes, torch.where(valid, targets, 0), valid, is_index=False)


def _check_float_values(targets: Tensor, ignore_index: int | None) -> None:
    """Reads values: every float target in [0, 1] or equal to ``ignore_index``."""
    rest = targets.detach()
    if ignore_index is not None:
        rest = rest[rest != ignore_index]
    if rest.numel() and bool(((rest < 0) | (rest > 1) | rest.isnan()).any()):
        lo, hi = float(rest.min()), float(rest.max())
        also = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(
            f"targets: expected float targets in [0, 1]{also}, got values in [{lo}, {hi}]"
        )


def parse_sigmoid_targets(
    logits: Tensor, targets: Tensor, ignore_index: int | None, validate: bool | None
) -> SigmoidTargets:
    """Classify ``targets`` into the dense or index form, checking shapes, and values where
    ``validate`` is True, or None on a CPU tensor in eager mode where reading is free.
    ``ignore_index=None``: nothing is ignored."""
    num_classes = logits.shape[-1] if logits.dim() > 0 else 1
    check_values = validate is True or (validate is None and may_read_values(targets))
    if targets.shape == logits.shape:
        if targets.is_floating_point():
            return _float_targets(targets, num_classes, ignore_index, validate)
        if check_values:
            check_binary_labels(targets, ignore_index)
        if ignore_index is None:
            return SigmoidTargets(num_classes, targets, None, is_index=False)
        valid = targets != ignore_index
        return SigmoidTargets(num_classes, targets * valid, valid, is_index=False)
    if logits.dim() > 0 and targets.shape == logits.shape[:-1]:
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise ValueError(
                f"targets: class-index targets of shape {tuple(targets.shape)} must be an integer "
                f"tensor, got dtype {targets.dtype}"
            )
        if check_values:
            check_class_indices(targets, num_classes, ignore_index, background=True)
        labels = targets.long()
        rows = None if ignore_index is None else labels != ignore_index
        return SigmoidTargets(num_classes, labels, rows, is_index=True)
    raise ValueError(
        f"targets: expected shape {tuple(logits.shape)} (dense/soft targets, the logits' shape) "
        f"or {tuple(logits.shape[:-1])} (integer class indices), got {tuple(targets.shape)}"
    )
