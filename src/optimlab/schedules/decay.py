"""Monotone decay schedules: constant, piecewise constant, exponential, power,
polynomial and linear (the building block of warm-up).

Every class is a frozen dataclass whose docstring carries its formula; ``t``
is the step (or epoch) counted from 0.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from optimlab.schedules._base import (
    Schedule, check_increasing, check_int, check_number, scaled_exp2, scaled_power, set_field,
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

    ``r`` = ``decay_rate`` (e.g. 0.1: divide by 10 every ``s`` steps; ``r > 1``
    grows, as torch's and Keras's allow), ``s`` = ``decay_steps``. With ``s = 1``
    this is torch's ``ExponentialLR``; staircase is step decay (torch's ``StepLR``).
    Evaluated without intermediate overflow: ``inf`` only where the true rate
    exceeds the float range.
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
        return scaled_power(self.base_lr, self.decay_rate, exponent)


def step_decay(base_lr: float, step_size: int, gamma: float = 0.1) -> ExponentialDecay:
    """Step decay: ``η(t) = η0 · γ^⌊t/step_size⌋`` (multiply by ``γ`` every ``step_size`` steps)."""
    # checked under this function's own names, not ExponentialDecay's
    step_size = check_int("step_size", step_size, low=1)
    gamma = check_number("gamma", gamma, low=0.0, low_open=True)
    return ExponentialDecay(base_lr, decay_rate=gamma, decay_steps=step_size, staircase=True)


def multistep_decay(base_lr: float, milestones, gamma: float = 0.1) -> PiecewiseConstant:
    """``η(t) = η0 · γ^(number of milestones <= t)``: torch's ``MultiStepLR``."""
    base_lr = check_number("base_lr", base_lr, low=0.0)
    gamma = check_number("gamma", gamma, low=0.0, low_open=True)
    milestones = check_increasing("milestones", milestones)
    values = tuple(scaled_power(base_lr, gamma, i) for i in range(len(milestones) + 1))
    if not math.isfinite(values[-1]):
        raise ValueError(f"base_lr={base_lr!r} · gamma={gamma!r}^{len(milestones)} is beyond the float range "
                         f"after milestones={list(milestones)!r}")
    return PiecewiseConstant(milestones, values)


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
        ratio = step / self.decay_steps
        try:
            denominator = (1.0 + ratio) ** self.power
        except OverflowError:
            denominator = math.inf
        if denominator < math.inf:
            return self.base_lr / denominator
        # (1 + t/s)^c left the float range: the quotient, from its logarithm, is still a number (or 0).
        log2_denominator = (math.log1p(ratio) / math.log(2) if ratio < math.inf
                            else math.log2(step) - math.log2(self.decay_steps))  # 1 + t/s ≈ t/s there
        return scaled_exp2(self.base_lr, -self.power * log2_denominator)


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
