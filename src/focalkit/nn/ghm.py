"""Module forms of the GHM losses. They keep the EMA of the bin counts as a float64 buffer
(``bin_count_ema``, in ``state_dict``) and make one call into :mod:`focalkit.functional.ghm`.

* Training mode: the EMA is updated from the batch's counts (all-reduced first when ``sync``
  is on, so it stays identical on every rank) and used for the weights.
* Evaluation mode: the stored EMA is used and never changed; a bin the EMA has never seen
  (every bin before the first training update) uses the batch's own count instead.
* ``sync=None``: all-reduce the counts and ``N`` when a ``torch.distributed`` process group
  is initialised with more than one rank; ``True`` / ``False`` force it on / off. With sync on
  every forward call is a collective: all ranks must call it. See :class:`GHMCLoss` for what
  equals what across ranks.

The buffer stays float64 through ``module.half()`` / ``.to(dtype)`` (a loss that is a submodule
of a detection head gets converted with it; a float16 count would be inexact above 2048 and
infinite above 65504); ``.to(device)`` moves it as usual.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_bins_momentum, check_positive, check_sync
from ..functional.ghm import ghm_c_forward, ghm_r_forward
from ._base import LossModule

__all__ = ["GHMCLoss", "GHMRLoss"]


class _GHMBase(LossModule):
    bin_count_ema: Tensor

    def __init__(
        self,
        loss: str,
        bins: int,
        momentum: float,
        sync: bool | None,
        weight: Tensor | None,
        reduction: str,
        backend: str,
    ) -> None:
        super().__init__(loss=loss, weight=weight, reduction=reduction, backend=backend)
        check_bins_momentum(bins, momentum)
        check_sync(sync)
        self.bins = bins
        self.momentum = float(momentum)
        self.sync = sync
        self.register_buffer("bin_count_ema", torch.zeros(bins, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        ema = self.bin_count_ema
        super()._apply(fn, recurse)
        moved = self.bin_count_ema
        if moved.dtype != torch.float64:  # a dtype conversion: undo it, keep the device
            self.bin_count_ema = ema.to(device=moved.device, dtype=torch.float64)
        return self

    def _state(self) -> dict:
        return {
            "ema": self.bin_count_ema,
            "momentum": self.momentum,
            "update": self.training,
            "sync": self.sync,
            "backend": self.backend,
        }


class GHMCLoss(_GHMBase):
    """Module form of :func:`focalkit.ghm_c_loss` with the EMA of the bin counts
    (``S_j = m S_j + (1 - m) R_j``, from 0 without bias correction, empty bins keep their
    value; paper setting ``bins=30, momentum=0.75``).

    ``forward(logits, targets, valid=None)`` takes the target forms of
    :func:`focalkit.ghm_c_loss`. ``ignore_index``, ``reduction`` and ``backend`` are the
    function's (``backend="auto"``: the Triton kernels for float32/float16/bfloat16 CUDA
    tensors when triton is importable, the chunked CPU path for CPU tensors, else torch; the
    EMA and ``sync`` work on every backend).

    Across ranks (``sync`` on, world size ``W``, a batch split between the ranks): the counts
    and ``N_valid`` are global, so every element gets the weight it would get in one process
    on the whole batch; ``"none"`` and ``"sum"`` return the single-process terms of the rank's
    elements; ``"mean"`` divides by ``N_valid / W`` (the mean over ranks, as
    ``reduce_mean(num_pos)``), so the *mean* of the ranks' losses equals the single-process
    loss, each rank's gradient w.r.t. its logits is ``W`` times the matching rows of the
    single-process gradient, and DDP's gradient averaging gives exactly the single-process
    parameter gradient.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.GHMCLoss(bins=30, momentum=0.75)
        >>> logits, targets = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]])
        >>> loss = crit(logits, targets)  # training mode: updates crit.bin_count_ema
        >>> sorted(crit.state_dict())
        ['bin_count_ema']
    """

    def __init__(
        self,
        bins: int = 30,
        momentum: float = 0.75,
        sync: bool | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__("ghm_c_loss", bins, momentum, sync, None, reduction, backend)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
        return ghm_c_forward(
            logits,
            targets,
            bins=self.bins,
            valid=valid,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            **self._state(),
        )

    def extra_repr(self) -> str:
        return (
            f"bins={self.bins}, momentum={self.momentum}, sync={self.sync}, "
            f"reduction={self.reduction!r}, backend={self.backend!r}"
        )


class GHMRLoss(_GHMBase):
    """Module form of :func:`focalkit.ghm_r_loss` with the EMA of the bin counts (authors'
    setting ``mu=0.02, bins=10, momentum=0.7``, used with loss weight 10).

    ``forward(pred, target, weight=None)``: the label weights of that call, else the
    constructor's ``weight`` (a buffer). ``backend`` is :func:`focalkit.ghm_r_loss`'s
    (``"auto"``: Triton for float32/float16/bfloat16 CUDA tensors when triton is importable,
    else torch). With ``sync`` on, the counts and ``N`` (the sum of
    the label weights) are global and the loss is divided by ``N / W``: as for
    :class:`GHMCLoss`, the mean of the ranks' losses is the single-process loss and
    DDP-averaged gradients equal the single-process ones.

    Example:
        >>> import torch, focalkit as fk
        >>> crit = fk.GHMRLoss().eval()  # before any training update: the batch's own counts
        >>> d = torch.tensor([0.001, 0.01, 0.05, 0.5, -0.2])
        >>> crit(d, torch.zeros(5))
        tensor(0.0780)
    """

    def __init__(
        self,
        mu: float = 0.02,
        bins: int = 10,
        momentum: float = 0.7,
        sync: bool | None = None,
        *,
        weight: Tensor | None = None,
        backend: str = "auto",
    ) -> None:
        check_positive("mu", mu)
        super().__init__("ghm_r_loss", bins, momentum, sync, weight, "mean", backend)
        self.mu = float(mu)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return ghm_r_forward(
            pred,
            target,
            mu=self.mu,
            bins=self.bins,
            weight=self.call_weight(weight),
            **self._state(),
        )

    def extra_repr(self) -> str:
        return (
            f"mu={self.mu}, bins={self.bins}, momentum={self.momentum}, sync={self.sync}, "
            f"backend={self.backend!r}"
        )
