"""Argument checks shared by every loss.

Each check raises ``ValueError`` (or ``TypeError`` for a wrong kind of object) whose message
names the argument, what was expected and what was given. None of them reads tensor *values*
unless the caller asked for it (``validate=True``), so the hot path never syncs with the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def check_normalizer(normalizer: float | Tensor | None, reduction: str) -> None:
    """``normalizer`` divides the summed loss; it only makes sense with ``reduction="mean"``."""
    if normalizer is None:
        return
    if reduction != "mean":
        raise ValueError(
            f"normalizer: only valid with reduction='mean' (the summed loss is divided by it), "
            f"got normalizer={_describe(normalizer)} with reduction={reduction!r}"
        )
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise ValueError(
                f"normalizer: expected a number or a one-element tensor, got {_describe(normalizer)}"
            )
    elif not isinstance(normalizer, (int, float)) or isinstance(normalizer, bool):
        raise TypeError(f"normalizer: expected a number or a tensor, got {_describe(normalizer)}")
    elif not math.isfinite(normalizer):
        raise ValueError(f"normalizer: expected a finite number, got {normalizer!r}")


def check_floating(name: str, tensor: object) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")


def check_tensor(name: str, tensor: object) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")


def check_nonnegative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {_describe(value)}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {_describe(value)}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")


def check_int_at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def check_unit_interval(name: str, value: float, *, closed_right: bool = True) -> None:
    """``value`` in [0, 1] (or [0, 1) with ``closed_right=False``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {_describe(value)}")
    ok = 0 <= value <= 1 if closed_right else 0 <= value < 1
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")


def check_alpha(alpha: float | Sequence[float] | Tensor | None, num_classes: int) -> None:
    """``alpha``: None, a float in [0, 1], or one value per class (length ``num_classes``)."""
    if alpha is None:
        return
    if isinstance(alpha, Tensor):
        if alpha.dim() == 0:
            return
        if alpha.dim() != 1 or alpha.shape[0] != num_classes:
            raise ValueError(
                f"alpha: expected None, a float or a tensor of shape ({num_classes},) "
                f"(one value per class), got {_describe(alpha)}"
            )
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected None, a float or a tensor, got {_describe(alpha)}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha: expected a finite number, got {alpha!r}")


def check_same_shape(name: str, tensor: Tensor, expected: torch.Size, what: str) -> None:
    if tensor.shape != expected:
        raise ValueError(
            f"{name}: expected shape {tuple(expected)} ({what}), got {tuple(tensor.shape)}"
        )


def check_broadcastable_to(name: str, tensor: Tensor, shape: torch.Size) -> None:
    """``tensor`` must broadcast to ``shape`` without changing ``shape`` (no silent broadcast)."""
    try:
        out = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError:
        out = None
    if out != shape:
        raise ValueError(
            f"{name}: expected a shape that broadcasts to {tuple(shape)}, got {tuple(tensor.shape)}"
        )


def check_values_in_unit_interval(name: str, tensor: Tensor) -> None:
    """Reads values (a device sync): only called when the user passed ``validate=True``."""
    if tensor.numel() and bool(((tensor < 0) | (tensor > 1) | tensor.isnan()).any()):
        lo, hi = float(tensor.min()), float(tensor.max())
        raise ValueError(f"{name}: expected values in [0, 1], got values in [{lo}, {hi}]")
