"""Cosine annealing, with a floor, and with warm restarts (SGDR)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from optimlab.schedules._base import Schedule, check_int, check_number, check_order, set_field


def cosine_between(start: float, end: float, fraction: float) -> float:
    """Half a cosine from ``start`` (fraction 0) to ``end`` (fraction 1):
    ``end + (start − end) · (1 + cos(π·fraction)) / 2``."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1.0)


@dataclass(frozen=True)
class CosineAnnealing(Schedule):
    """``η(t) = η_min + (η0 − η_min) · (1 + cos(π t / T)) / 2`` with ``T`` = ``period``.

    Past ``T`` the cosine keeps going (back up to ``η0`` at ``2T``), exactly as
    torch's ``CosineAnnealingLR``; to hold the floor instead, follow it with a
    ``Constant`` in a ``Sequential`` (``warmup_cosine`` does this).
    ``min_lr > base_lr`` is refused: torch does not check ``eta_min``, but documents
    it as the minimum; to rise, use a warm-up (``Linear``, ``warmup``).
    """

    base_lr: float
    period: int
    min_lr: float = 0.0

    def __post_init__(self):
        set_field(self, "base_lr", check_number("base_lr", self.base_lr, low=0.0))
        set_field(self, "period", check_int("period", self.period, low=1))
        set_field(self, "min_lr", check_number("min_lr", self.min_lr, low=0.0))
        check_order("min_lr", self.min_lr, "base_lr", self.base_lr)  # a floor above the peak is no floor

    def _value(self, step: int) -> float:
        return cosine_between(self.base_lr, self.min_lr, step / self.period)


@dataclass(frozen=True)
class CosineWarmRestarts(Schedule):
    """SGDR: cosine annealing that restarts at ``η0`` after each period.

    The periods are ``T_0, T_0·m, T_0·m², …`` (``T_0`` = ``period``, ``m`` =
    ``period_mult``). With ``t_cur`` the steps since the last restart and
    ``T_i`` the current period:
    ``η(t) = η_min + (η0 − η_min) · (1 + cos(π t_cur / T_i)) / 2``.
    The jump back to ``η0`` is the "temporary increase" that helps escape a
    poor basin. Matches torch's ``CosineAnnealingWarmRestarts``.
    """

    base_lr: float
    period: int
    period_mult: int = 1
    min_lr: float = 0.0

    def __post_init__(self):
        set_field(self, "base_lr", check_number("base_lr", self.base_lr, low=0.0))
        set_field(self, "period", check_int("period", self.period, low=1))
        set_field(self, "period_mult", check_int("period_mult", self.period_mult, low=1))
        set_field(self, "min_lr", check_number("min_lr", self.min_lr, low=0.0))
        check_order("min_lr", self.min_lr, "base_lr", self.base_lr)  # a floor above the peak is no floor

    def position(self, step: int) -> tuple[int, int]:
        """``(t_cur, T_i)``: steps into the current period, and its length."""
        step = self._check_step(step)
        if self.period_mult == 1:
            return step % self.period, self.period
        # Integer arithmetic, not torch's float log, so restarts never land one step off.
        period = self.period
        while step >= period:
            step -= period
            period *= self.period_mult
        return step, period

    def _value(self, step: int) -> float:
        t_cur, period = self.position(step)
        return cosine_between(self.base_lr, self.min_lr, t_cur / period)
