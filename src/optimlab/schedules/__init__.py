"""Learning-rate schedules as pure functions of the step, and the bridge that
drives any optimizer's param groups with them.

    >>> from optimlab import schedules
    >>> s = schedules.warmup_cosine(base_lr=0.1, total_steps=1000, warmup_steps=50)
    >>> s(0), s(50), s(1000)
    (0.0, 0.1, 0.0)
    >>> sched = schedules.Scheduler(optimizer, s)   # doctest: +SKIP
    >>> # per step: optimizer.step(); sched.step()

See docs/schedules.md for one example per schedule.
"""

from optimlab.schedules._base import Schedule
from optimlab.schedules.bridge import Scheduler
from optimlab.schedules.compose import Sequential, warmup, warmup_cosine
from optimlab.schedules.cosine import CosineAnnealing, CosineWarmRestarts
from optimlab.schedules.decay import (
    Constant, ExponentialDecay, Linear, PiecewiseConstant, Polynomial, PowerDecay,
    multistep_decay, step_decay,
)
from optimlab.schedules.onecycle import OneCycle
from optimlab.schedules.plateau import ReduceOnPlateau
from optimlab.schedules.plot import plot, schedule_table

__all__ = [
    "Schedule", "Scheduler", "ReduceOnPlateau",
    "Constant", "PiecewiseConstant", "ExponentialDecay", "PowerDecay", "Polynomial", "Linear",
    "step_decay", "multistep_decay",
    "CosineAnnealing", "CosineWarmRestarts", "OneCycle",
    "Sequential", "warmup", "warmup_cosine",
    "plot", "schedule_table",
]
