"""Small shims over torch versions (>= 2.3) and execution modes."""

from __future__ import annotations

import torch
from torch import Tensor


def is_compiling() -> bool:
    """True while torch.compile / dynamo traces the code (no data-dependent checks then)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return False


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (the signature changed in torch 2.4)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """Losses compute in float32 (float64 stays float64, for gradcheck and references)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def output_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype a loss returns: the input's, or float32 under autocast (like F.cross_entropy)."""
    if autocast_enabled(tensor.device.type):
        return torch.promote_types(tensor.dtype, torch.float32)
    return tensor.dtype


def may_read_values(tensor: Tensor | None) -> bool:
    """Reading values costs nothing on CPU in eager mode; elsewhere it syncs or breaks graphs.
    False for what is not a tensor (an optional ``weight`` left out, or a wrong object its own
    check refuses)."""
    return isinstance(tensor, Tensor) and tensor.device.type == "cpu" and not is_compiling()
