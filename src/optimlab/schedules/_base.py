"""The `Schedule` protocol and the argument checks every schedule shares.

A schedule is a pure function ``step -> value``: no optimizer, no hidden
state, so the same object can be plotted, tested, composed and replayed from
any step. ``step`` counts from 0 and is whatever unit the caller steps in
(optimizer steps or epochs).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
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


def check_order(low_name: str, low: float, high_name: str, high: float) -> None:
    """Refuse ``low > high`` for two bounds, naming both (e.g. a floor above the rate it floors)."""
    if low > high:
        raise ValueError(f"{low_name} must be <= {high_name}, got {low_name}={low!r}, {high_name}={high!r}")


def check_state(owner: str, state, keys: tuple[str, ...]) -> Mapping:
    """``state`` must be a mapping with exactly ``keys`` (a state_dict of the same class)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{owner}.load_state_dict needs a dict from {owner}.state_dict(), "
                         f"got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    unexpected = sorted(str(k) for k in state if k not in keys)
    if missing or unexpected:
        raise ValueError(f"{owner}.load_state_dict needs the keys {list(keys)}: "
                         f"missing {missing}, unexpected {unexpected}; nothing was loaded")
    return state


# --- arithmetic that neither overflows nor underflows on the way -------------------------


def scaled_power(base: float, rate: float, exponent: float) -> float:
    """``base · rate**exponent`` for ``base >= 0``, ``rate > 0``.

    ``rate**exponent`` alone can leave the float range (``OverflowError``, or 0
    from underflow) where the product is an ordinary number, e.g. ``1e-300 · 10**600``.
    Then the product is formed from its base-2 logarithm (:func:`scaled_exp2`). The
    result is ``inf`` or 0 only where the true value is beyond the float range; in
    range the direct product is kept, so ordinary values are bit-identical to
    ``base * rate**exponent``.
    """
    if base == 0.0:
        return 0.0
    try:
        factor = rate ** exponent
    except OverflowError:
        factor = math.inf
    if sys.float_info.min <= factor < math.inf:  # a normal float: the product is correctly rounded
        return base * factor
    return scaled_exp2(base, exponent * math.log2(rate))


def scaled_exp2(base: float, log2_factor: float) -> float:
    """``base · 2**log2_factor`` for ``base >= 0`` with no intermediate overflow or underflow:
    the integer part of ``log2_factor`` goes into the float's exponent (``ldexp``), so
    only the true result can be ``inf`` or 0."""
    if base == 0.0:
        return 0.0
    if not math.isfinite(log2_factor):
        return math.inf if log2_factor > 0 else 0.0
    whole = math.floor(log2_factor)
    mantissa, exponent = math.frexp(base)  # base = mantissa · 2**exponent, mantissa in [0.5, 1)
    try:
        return math.ldexp(mantissa * 2.0 ** (log2_factor - whole), exponent + whole)
    except OverflowError:
        return math.inf


def set_field(obj, name: str, value) -> None:
    """Write a normalised value into a frozen dataclass from ``__post_init__``."""
    object.__setattr__(obj, name, value)
