"""Monotone decay schedules: constant, piecewise constant, exponential, power,
polynomial and linear (the building block of warm-up).

Every class is a frozen dataclass whose docstring carries its formula; ``t``
is the step (or epoch) counted from 0.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from optimlab.schedules._base import (
    Schedule, check_increasing, check_int, check_number, set_field,
)


@dataclass(frozen=True)
class Constant(Schedule):
    """``η(t) = value``."""

    value: float

    def __post_init__(self):
        set_field(self, "value", check_number("value", self.value, low=0.0))

    def _value(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class PiecewiseConstant(Schedule):
    """``η(t) = values[i]`` where ``i`` = number of boundaries ``<= t``.

    The value switches *at* a boundary, as torch's ``MultiStepLR`` does
    (Keras's ``PiecewiseConstantDecay`` switches one step later).
    ``len(values) == len(boundaries) + 1``; boundaries strictly increasing.
    """

    boundaries: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self):
        set_field(self, "boundaries", check_increasing("boundaries", self.boundaries))
        values = tuple(check_number(f"values[{i}]", v, low=0.0) for i, v in enumerate(self.values))
        if len(values) != len(self.boundaries) + 1:
            raise ValueError(
                f"values must have len(boundaries) + 1 = {len(self.boundaries) + 1} entries, "
                f"got values={list(values)!r}"
            )
        set_field(self, "values", values)

    def _value(self, step: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, step)]


@dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """``η(t) = η0 · r^(t/s)``, or ``η0 · r^⌊t/s⌋`` with ``staircase=True``.

    ``r`` = ``decay_rate`` (e.g. 0.1: divide by 10 every ``s`` steps),
    ``s`` = ``decay_steps``. With ``s = 1`` this is torch's ``ExponentialLR``;
    staircase is step decay (torch's ``StepLR``).
    """

    base_lr: float
    decay_rate: float
    decay_steps: int = 1
    staircase: bool = False

    def __post_init__(self):
        set_field(self, "base_lr", check_number("base_lr", self.base_lr, low=0.0))
        set_field(self, "decay_rate", check_number("decay_rate", self.decay_rate, low=0.0, low_open=True))
        set_field(self, "decay_steps", check_int("decay_steps", self.decay_steps, low=1))

    def _value(self, step: int) -> float:
        exponent = step // self.decay_steps if self.staircase else step / self.decay_steps
        return self.base_lr * self.decay_rate ** exponent


def step_decay(base_lr: float, step_size: int, gamma: float = 0.1) -> ExponentialDecay:
    """Step decay: ``η(t) = η0 · γ^⌊t/step_size⌋`` (multiply by ``γ`` every ``step_size`` steps)."""
    return ExponentialDecay(base_lr, decay_rate=gamma, decay_steps=step_size, staircase=True)


def multistep_decay(base_lr: float, milestones, gamma: float = 0.1) -> PiecewiseConstant:
    """``η(t) = η0 · γ^(number of milestones <= t)``: torch's ``MultiStepLR``."""
    gamma = check_number("gamma", gamma, low=0.0, low_open=True)
    milestones = check_increasing("milestones", milestones)
    return PiecewiseConstant(milestones, tuple(base_lr * gamma ** i for i in range(len(milestones) + 1)))


@dataclass(frozen=True)
class PowerDecay(Schedule):
    """Power scheduling: ``η(t) = η0 / (1 + t/s)^c``.

    Drops fast at first, then slowly; after ``s`` steps the rate is
    ``η0 / 2^c``. ``c = 1`` is Keras's ``InverseTimeDecay``.
    """

    base_lr: float
    decay_steps: float
    power: float = 1.0

    def __post_init__(self):
        set_field(self, "base_lr", check_number("base_lr", self.base_lr, low=0.0))
        set_field(self, "decay_steps", check_number("decay_steps", self.decay_steps, low=0.0, low_open=True))
        set_field(self, "power", check_number("power", self.power, low=0.0))

    def _value(self, step: int) -> float:
        return self.base_lr / (1.0 + step / self.decay_steps) ** self.power


@dataclass(frozen=True)
class Polynomial(Schedule):
    """``η(t) = (η0 − η_end) · (1 − min(t, T)/T)^p + η_end`` with ``T`` = ``decay_steps``.

    Holds ``η_end`` after ``T``. With ``η_end = 0`` this is torch's ``PolynomialLR``.
    """

    base_lr: float
    decay_steps: int
    power: float = 1.0
    end_lr: float = 0.0

    def __post_init__(self):
        set_field(self, "base_lr", check_number("base_lr", self.base_lr, low=0.0))
        set_field(self, "decay_steps", check_int("decay_steps", self.decay_steps, low=1))
        set_field(self, "power", check_number("power", self.power, low=0.0))
        set_field(self, "end_lr", check_number("end_lr", self.end_lr, low=0.0))

    def _value(self, step: int) -> float:
        remaining = 1.0 - min(step, self.decay_steps) / self.decay_steps
        return (self.base_lr - self.end_lr) * remaining ** self.power + self.end_lr


@dataclass(frozen=True)
class Linear(Schedule):
    """``η(t) = η_start + (η_end − η_start) · min(t, T)/T`` with ``T`` = ``steps``; holds ``η_end`` after.

    Linear warm-up (``η_start`` small, ``η_end`` the target) and torch's
    ``LinearLR`` (``η_start = η0·start_factor``, ``η_end = η0·end_factor``).
    """

    start_lr: float
    end_lr: float
    steps: int

    def __post_init__(self):
        set_field(self, "start_lr", check_number("start_lr", self.start_lr, low=0.0))
        set_field(self, "end_lr", check_number("end_lr", self.end_lr, low=0.0))
        set_field(self, "steps", check_int("steps", self.steps, low=1))

    def _value(self, step: int) -> float:
        return self.start_lr + (self.end_lr - self.start_lr) * min(step, self.steps) / self.steps
