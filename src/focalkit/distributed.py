"""Process-group helpers: all-reduce across ranks, identities without a process group.

Every helper returns a *new*, detached tensor (the input is never modified), works under
``torch.no_grad()``, and is an identity (a copy) when ``torch.distributed`` is unavailable or
no process group is initialised, so the same training script runs on one process or many.

The detection convention these serve (mmdetection's ``reduce_mean``): divide each rank's
summed loss by the *mean over ranks* of the number of positives. Rank ``r`` then returns
``W * sum_r / total`` (``W`` the world size), the mean of the ranks' losses equals the
single-process loss on the whole batch, and DDP's averaging of parameter gradients gives
exactly the single-process gradient.

Example:
    >>> import torch
    >>> from focalkit.distributed import is_dist_ready, reduce_mean
    >>> is_dist_ready()
    False
    >>> reduce_mean(torch.tensor(3))  # no process group: identity (as a float tensor)
    tensor(3.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "get_world_size", "is_dist_ready", "reduce_mean", "sync_world_size"]


def is_dist_ready() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of ranks of the default process group (1 without one)."""
    return dist.get_world_size() if is_dist_ready() else 1


def sync_world_size(sync: bool | None) -> int:
    """How many ranks a ``sync=`` option of a loss reduces over (1 = local, no collective).

    ``None``: all ranks of the default group when one is initialised with more than one
    rank, else local. ``True``: all ranks, and a process group must be initialised.
    ``False``: local.
    """
    if sync is None:
        return get_world_size()
    if sync is True:
        if not is_dist_ready():
            raise ValueError(
                "sync: True needs an initialised torch.distributed process group "
                "(torch.distributed.init_process_group), got none"
            )
        return get_world_size()
    if sync is False:
        return 1
    raise ValueError(f"sync: expected None, True or False, got {sync!r}")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all ranks (a detached copy; a copy of ``tensor`` without a group).

    Example:
        >>> import torch
        >>> from focalkit.distributed import all_reduce_sum
        >>> all_reduce_sum(torch.tensor([1, 2]))
        tensor([1, 2])
    """
    out = tensor.detach().clone()
    if is_dist_ready() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all ranks, e.g. the number of positives for ``normalizer=``.

    Returns a new detached floating tensor: floating inputs keep their dtype, integer and
    bool inputs become ``torch.get_default_dtype()`` (the same on one process and on many).
    Without an initialised process group it is the identity (a copy).

    Example:
        >>> import torch, focalkit as fk
        >>> from focalkit.distributed import reduce_mean
        >>> logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
        >>> labels = torch.tensor([0, 2])  # one positive (class 0), one background row
        >>> num_pos = (labels < 2).sum()
        >>> fk.sigmoid_focal_loss(logits, labels, normalizer=reduce_mean(num_pos))
        tensor(0.4305)
    """
    out = tensor.detach()
    if not out.is_floating_point():
        out = out.to(torch.get_default_dtype())
    else:
        out = out.clone()
    if is_dist_ready():
        world = dist.get_world_size()
        if world > 1:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
            out.div_(world)
    return out
