"""The training loop both detection studies share: AdamW with a linear warm-up then a constant
learning rate, an exponential moving average (EMA) of the weights, and the plateau rule of
:mod:`focalkit.demo.plateau` on a validation yardstick computed from the EMA weights.

Why this schedule: a run's length is decided by the plateau rule, so the learning rate cannot
be a schedule that must know the length in advance (a cosine to 0 at a fixed step would make
"the budget" the schedule's, not the loss's). The EMA of the weights (decay ``ema_decay``,
ramped as ``min(decay, (1 + t) / (10 + t))`` so early steps are not averaged with the
initialisation) plays the part of the final learning-rate decay: it is what is validated,
kept at the best evaluation and tested, as YOLO-style detectors do.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..plateau import Plateau, PlateauRule

__all__ = ["TrainResult", "train_with_plateau"]

CURVE_POINTS = 50


class Stop(Exception):
    """Raised by a progress callback to abandon a run (the parallel runner's interrupt)."""


@dataclass
class TrainResult:
    curve: dict  # training losses: step, loss_cls, loss_box (each point a window mean)
    validation: dict  # Plateau.summary()
    best_state: dict[str, Tensor]  # EMA weights of the best validation evaluation
    steps: int  # steps trained


def _lr_factor(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def train_with_plateau(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, int], tuple[Tensor, Tensor]],
    validate: Callable[[nn.Module], float],
    rule: PlateauRule,
    *,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    ema_decay: float,
    progress: Callable[[int, int], object] | None = None,
) -> TrainResult:
    """Train ``model`` until ``rule`` stops it.

    ``loss_fn(model, step)`` returns the (classification, box) losses of step ``step``'s batch;
    ``validate(ema_model)`` the yardstick on the validation split (the EMA model is put in
    eval mode around the call). ``progress(step, max_steps)`` is called after every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, max(1, warmup_steps))
    )
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    ema_params: list[Tensor] = list(ema.parameters())
    params = list(model.parameters())
    plateau = Plateau(rule)
    best_state = {k: v.detach().clone() for k, v in ema.state_dict().items()}
    every = max(1, math.ceil(rule.max_steps / CURVE_POINTS))
    curve: dict[str, list] = {"step": [], "loss_cls": [], "loss_box": []}
    window_cls: list[float] = []
    window_box: list[float] = []
    model.train()
    step = 0
    while step < rule.max_steps:
        loss_cls, loss_box = loss_fn(model, step)
        optimizer.zero_grad(set_to_none=True)
        (loss_cls + loss_box).backward()
        optimizer.step()
        schedule.step()
        decay = min(ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
        step += 1
        window_cls.append(float(loss_cls.detach()))
        window_box.append(float(loss_box.detach()))
        if step % every == 0:
            curve["step"].append(step)
            curve["loss_cls"].append(float(np.mean(window_cls)))
            curve["loss_box"].append(float(np.mean(window_box)))
            window_cls, window_box = [], []
        stop = False
        if step % rule.eval_every == 0 or step == rule.max_steps:
            ema.eval()
            value = validate(ema)
            stop = plateau.update(step, value)
            if plateau.is_best:
                best_state = {k: v.detach().clone() for k, v in ema.state_dict().items()}
        if progress is not None:
            progress(step, step if stop else rule.max_steps)
        if stop:
            break
    if window_cls:
        curve["step"].append(step)
        curve["loss_cls"].append(float(np.mean(window_cls)))
        curve["loss_box"].append(float(np.mean(window_box)))
    return TrainResult(curve, plateau.summary(), best_state, step)
