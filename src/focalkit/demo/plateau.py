"""The demo's stopping rule: train until the validation yardstick stops improving.

Every ``eval_every`` steps a run evaluates its yardstick on a validation split carved from the
training data (never the test set) and hands the value to :meth:`Plateau.update`. An
evaluation *improves* when its value beats the best earlier value by at least ``min_delta``
(higher is better, or lower with ``higher_is_better=False``). The run stops

* after ``patience`` evaluations in a row without improvement, once ``min_steps`` steps are
  done (``reason = "plateau"``), or
* at ``max_steps`` (``reason = "cap"``: the yardstick was still improving, which the report
  says),

and the model kept is the one of the best evaluation (the earliest, on ties); that model is
the one evaluated on the test set. The rule sees nothing but the validation values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Plateau", "PlateauRule"]


@dataclass(frozen=True)
class PlateauRule:
    """When to evaluate, what counts as an improvement, and the step bounds."""

    eval_every: int
    patience: int
    min_delta: float
    min_steps: int
    max_steps: int
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.eval_every < 1 or self.patience < 1:
            raise ValueError(
                f"eval_every and patience: expected ints >= 1, got {self.eval_every}, "
                f"{self.patience}"
            )
        if not 0 <= self.min_steps <= self.max_steps or self.max_steps < 1:
            raise ValueError(
                f"steps: expected 0 <= min_steps <= max_steps, max_steps >= 1, got "
                f"{self.min_steps}, {self.max_steps}"
            )
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta: expected a number >= 0, got {self.min_delta!r}")

    @classmethod
    def of(cls, setting: Mapping[str, Any] | object) -> PlateauRule:
        """The rule a study's setting holds in its ``eval_every``, ``patience``,
        ``min_delta``, ``min_steps`` and ``max_steps``: a setting object, or a recorded
        setting (a mapping; a missing field raises ``KeyError``)."""
        names = ("eval_every", "patience", "min_delta", "min_steps", "max_steps")
        if isinstance(setting, Mapping):
            return cls(**{name: setting[name] for name in names})
        return cls(**{name: getattr(setting, name) for name in names})

    def describe(self, yardstick: str) -> str:
        """The rule in one sentence, for the report."""
        direction = "higher" if self.higher_is_better else "lower"
        return (
            f"{yardstick} on the validation split every {self.eval_every} steps; a run stops "
            f"after {self.patience} evaluations in a row that do not beat the best so far by "
            f"at least {self.min_delta:g} ({direction} is better), not before step "
            f"{self.min_steps}, and at step {self.max_steps} at the latest; the model of the "
            "best evaluation is the one tested"
        )


@dataclass
class Plateau:
    """The state of :class:`PlateauRule` over one run."""

    rule: PlateauRule
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    best_index: int = -1
    stale: int = 0
    reason: str | None = None

    def _better(self, value: float, than: float, delta: float) -> bool:
        if self.rule.higher_is_better:
            return value >= than + delta if delta > 0 else value > than
        return value <= than - delta if delta > 0 else value < than

    def update(self, step: int, value: float) -> bool:
        """Record the validation value at ``step``; return whether the run should stop now.
        Returns ``True`` for every call once stopped. NaN never improves."""
        if self.reason is not None:
            return True
        value = float(value)
        best = self.best_value
        if best is None:
            improved = not math.isnan(value)
        else:
            improved = not math.isnan(value) and self._better(value, best, self.rule.min_delta)
        if not math.isnan(value) and (best is None or self._better(value, best, 0.0)):
            self.best_index = len(self.values)  # the strict best, even below min_delta
        self.steps.append(int(step))
        self.values.append(value)
        self.stale = 0 if improved else self.stale + 1
        if step >= self.rule.max_steps:
            self.reason = "cap" if self.stale < self.rule.patience else "plateau"
        elif self.stale >= self.rule.patience and step >= self.rule.min_steps:
            self.reason = "plateau"
        return self.reason is not None

    @property
    def best_value(self) -> float | None:
        return None if self.best_index < 0 else self.values[self.best_index]

    @property
    def best_step(self) -> int | None:
        return None if self.best_index < 0 else self.steps[self.best_index]

    @property
    def is_best(self) -> bool:
        """Whether the latest evaluation is the best so far (keep that model)."""
        return self.best_index == len(self.values) - 1 and self.best_index >= 0

    def summary(self) -> dict:
        """JSON-ready: the curve, the best evaluation, where and why the run stopped."""
        return {
            "step": list(self.steps),
            "value": list(self.values),
            "best_step": self.best_step,
            "best_value": self.best_value,
            "stopped_at": self.steps[-1] if self.steps else 0,
            "reason": self.reason or "unfinished",
        }
