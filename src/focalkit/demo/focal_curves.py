"""The data of Fig. 1 of the focal-loss paper (arXiv 1708.02002), computed with the library:
loss and gradient magnitude against p_t, for several gamma."""

from __future__ import annotations

import torch

import focalkit as fk

__all__ = ["FOCAL_CURVE_GAMMAS", "focal_curve_data"]

FOCAL_CURVE_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)


def focal_curve_data(
    gammas: tuple[float, ...] = FOCAL_CURVE_GAMMAS, points: int = 400
) -> dict[str, list]:
    """``FL(p_t)`` and ``|dFL/dx|`` of a positive (y = 1, logit ``x = logit(p_t)``) for
    ``p_t`` on an even grid of (0, 1), from ``fk.sigmoid_focal_loss(alpha=None)`` and autograd
    on the logits (no re-typed formula). gamma = 0 is plain cross-entropy.

    Returns ``{"p_t": [...], "gammas": [...], "loss": [[...] per gamma],
    "grad": [[...] per gamma]}``.
    """
    p_t = torch.linspace(0.0, 1.0, points + 2)[1:-1]  # float32: the library computes in fp32
    loss_rows, grad_rows = [], []
    for gamma in gammas:
        logits = torch.logit(p_t).requires_grad_(True)
        targets = torch.ones_like(logits)
        loss = fk.sigmoid_focal_loss(logits, targets, alpha=None, gamma=gamma, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        loss_rows.append([float(v) for v in loss.detach()])
        grad_rows.append([float(v) for v in grad.abs()])
    return {
        "p_t": [float(v) for v in p_t],
        "gammas": [float(g) for g in gammas],
        "loss": loss_rows,
        "grad": grad_rows,
    }
