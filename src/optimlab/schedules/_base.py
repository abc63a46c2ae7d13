"""The `Schedule` protocol and the argument checks every schedule shares.

A schedule is a pure function ``step -> value``: no optimizer, no hidden
state, so the same object can be plotted, tested, composed and replayed from
any step. ``step`` counts from 0 and is whatever unit the caller steps in
(optimizer steps or epochs).
"""

from __future__ import annotations

import math
from numbers import Integral, Real


class Schedule:
    """Base class: subclasses implement ``_value(step)`` with the formula.

    ``length`` is ``None`` when the schedule is defined for every step >= 0,
    or the number of steps it is defined for (steps ``0 .. length - 1``);
    asking for a step past the end raises ``ValueError``.
    ``momentum(step)`` returns the cycled momentum (SGD) / beta1 (Adam) for
    schedules that cycle it, else ``None``.
    """

    @property
    def length(self) -> int | None:
        return None

    @property
    def cycles_momentum(self) -> bool:
        return False

    def __call__(self, step: int) -> float:
        return self._value(self._check_step(step))

    def momentum(self, step: int) -> float | None:
        self._check_step(step)
        return None

    def _value(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_step(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got step={step!r}")
        if self.length is not None and step >= self.length:
            raise ValueError(
                f"step={step} is past the end of {type(self).__name__}, "
                f"which is defined for steps 0..{self.length - 1}"
            )
        return int(step)


# --- argument checks: each names the argument and the offending value -----------------


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Return ``float(value)`` if it is a finite real inside the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {name}={value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {name}={value!r}")
    return float(value)


def check_int(name: str, value, *, low: int = 0) -> int:
    """Return ``int(value)`` if it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    return int(value)


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {name}={value!r}")
    return value


def check_increasing(name: str, values, *, low: int = 1) -> tuple[int, ...]:
    """Return ``values`` as a tuple of strictly increasing integers >= ``low``."""
    values = tuple(values)
    for i, v in enumerate(values):
        check_int(f"{name}[{i}]", v, low=low)
    for a, b in zip(values, values[1:]):
        if b <= a:
            raise ValueError(f"{name} must be strictly increasing, got {name}={list(values)!r}")
    return tuple(int(v) for v in values)


def set_field(obj, name: str, value) -> None:
    """Write a normalised value into a frozen dataclass from ``__post_init__``."""
    object.__setattr__(obj, name, value)
