"""1cycle (Leslie Smith, "super-convergence"): the learning rate rises then
falls, momentum moves the other way."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from optimlab.schedules._base import (
    Schedule, check_choice, check_int, check_number, check_order, set_field,
)
from optimlab.schedules.cosine import cosine_between


def linear_between(start: float, end: float, fraction: float) -> float:
    """``start + (end − start) · fraction``."""
    return (end - start) * fraction + start


_ANNEAL = {"cos": cosine_between, "linear": linear_between}


@dataclass(frozen=True)
class OneCycle(Schedule):
    """1cycle over ``T`` = ``total_steps`` steps (defined for steps ``0 .. T−1``).

    With ``η_max`` = ``max_lr``, ``η_init = η_max / div_factor`` and
    ``η_min = η_init / final_div_factor``, and ``p = pct_start``:

    ============  ===================  =================  ====================
    phase         ends at step         learning rate      momentum / beta1
    ============  ===================  =================  ====================
    warm-up       ``p·T − 1``          η_init → η_max     m_max → m_base
    annealing     ``T − 1``            η_max → η_min      m_base → m_max
    ============  ===================  =================  ====================

    With ``three_phase=True`` the second phase ends at ``2p·T − 2`` going back
    down to η_init (m_base → m_max), and a final annihilation phase takes
    η_init → η_min over the remaining steps with momentum held at m_max — the
    lecture's "last few epochs with a further rapid drop".

    Inside a phase from step ``a`` to ``b`` the value moves with fraction
    ``(t − a)/(b − a)`` along a half cosine (``anneal="cos"``) or a straight
    line (``anneal="linear"``). Identical to torch's ``OneCycleLR``.
    ``momentum(t)`` gives the cycled value: the bridge writes it to SGD's
    ``momentum`` or to Adam's ``betas[0]``.
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    anneal: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    # (end_step, lr_start, lr_end, momentum_start, momentum_end) per phase
    phases: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        check_number("max_lr", self.max_lr, low=0.0, low_open=True)
        check_int("total_steps", self.total_steps, low=1)
        check_number("pct_start", self.pct_start, low=0.0, high=1.0, low_open=True, high_open=True)
        check_choice("anneal", self.anneal, tuple(_ANNEAL))
        check_number("div_factor", self.div_factor, low=0.0, low_open=True)
        check_number("final_div_factor", self.final_div_factor, low=0.0, low_open=True)
        check_number("base_momentum", self.base_momentum, low=0.0, high=1.0, high_open=True)
        check_number("max_momentum", self.max_momentum, low=0.0, high=1.0, high_open=True)
        check_order("base_momentum", self.base_momentum, "max_momentum", self.max_momentum)

        initial_lr = self.max_lr / self.div_factor
        min_lr = initial_lr / self.final_div_factor
        for name, value in (("max_lr / div_factor", initial_lr), ("max_lr / div_factor / final_div_factor", min_lr)):
            if not math.isfinite(value):  # a tiny divisor: the cycle would start or end at infinity
                raise ValueError(f"{name} is beyond the float range, got max_lr={self.max_lr!r}, "
                                 f"div_factor={self.div_factor!r}, final_div_factor={self.final_div_factor!r}")
        lo, hi = self.base_momentum, self.max_momentum
        # Phase ends as torch computes them (floats), so every step agrees bit for bit.
        rise_end = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            phases = ((rise_end, initial_lr, self.max_lr, hi, lo),
                      (float(2 * self.pct_start * self.total_steps) - 2, self.max_lr, initial_lr, lo, hi),
                      (self.total_steps - 1, initial_lr, min_lr, hi, hi))
        else:
            phases = ((rise_end, initial_lr, self.max_lr, hi, lo),
                      (self.total_steps - 1, self.max_lr, min_lr, lo, hi))
        start = 0.0
        for end, *_ in phases:
            if end <= start:  # a phase of no length would divide by zero
                raise ValueError(
                    f"pct_start={self.pct_start} with total_steps={self.total_steps} leaves a phase "
                    f"with no steps (three_phase={self.three_phase}); raise total_steps or move pct_start"
                )
            start = end
        set_field(self, "phases", phases)

    @property
    def length(self) -> int:
        return self.total_steps

    @property
    def cycles_momentum(self) -> bool:
        return self.cycle_momentum

    def _phase(self, step: int) -> tuple[tuple, float]:
        """The phase containing ``step`` and the fraction of it already done."""
        start = 0.0
        for i, phase in enumerate(self.phases):
            end = phase[0]
            if step <= end or i == len(self.phases) - 1:
                return phase, (step - start) / (end - start)
            start = end
        raise AssertionError("unreachable: the last phase catches every step")

    def _value(self, step: int) -> float:
        (_, lr_start, lr_end, _, _), fraction = self._phase(step)
        return _ANNEAL[self.anneal](lr_start, lr_end, fraction)

    def momentum(self, step: int) -> float | None:
        step = self._check_step(step)
        if not self.cycle_momentum:
            return None
        (_, _, _, m_start, m_end), fraction = self._phase(step)
        return _ANNEAL[self.anneal](m_start, m_end, fraction)
