"""Performance scheduling: reduce the learning rate when a monitored metric
stops improving."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

from optimlab.schedules._base import check_choice, check_int, check_number, check_state
from optimlab.schedules.bridge import write_lr


class ReduceOnPlateau:
    """Multiply every group's lr by ``factor`` once the metric has not improved
    for more than ``patience`` consecutive calls to ``step(metric)``.

    Unlike the other schedules this one is driven by a metric, not the step,
    so it holds state: the best value so far, the count of bad steps, and the
    cooldown counter. ``step(metric)`` (same state machine as torch's
    ``ReduceLROnPlateau``):

    1. ``metric`` improves on ``best`` if, with ``θ`` = ``threshold``,
       mode ``min``: ``metric < best·(1 − θ)`` (``rel``) or ``metric < best − θ`` (``abs``);
       mode ``max``: ``metric > best·(1 + θ)`` (``rel``) or ``metric > best + θ`` (``abs``).
       An improvement sets ``best`` and clears the bad count; otherwise the
       count grows (NaN never improves).
    2. During cooldown the counter ticks down and bad steps are not counted.
    3. When the bad count exceeds ``patience``: ``lr ← max(lr·factor, min_lr)``
       for each group (skipped when the change would be ≤ ``eps``), then the
       cooldown starts and the bad count clears.

    ``rel`` thresholds assume a positive metric (for a negative one ``best·(1−θ)``
    lies above ``best``); use ``abs`` for metrics that can be negative.
    Only ``optimizer.param_groups`` is used, so any optimizer works.
    """

    def __init__(self, optimizer, *, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float | Sequence[float] = 0.0, eps: float = 1e-8):
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.threshold_mode = check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.factor = check_number("factor", factor, low=0.0, high=1.0, low_open=True, high_open=True)
        self.patience = check_int("patience", patience)
        self.threshold = check_number("threshold", threshold, low=0.0)
        self.cooldown = check_int("cooldown", cooldown)
        self.eps = check_number("eps", eps, low=0.0)
        groups = optimizer.param_groups
        if isinstance(min_lr, Sequence):
            if len(min_lr) != len(groups):
                raise ValueError(
                    f"min_lr must be one number or one per param group ({len(groups)}), got min_lr={list(min_lr)!r}"
                )
            self.min_lrs = [check_number(f"min_lr[{i}]", m, low=0.0) for i, m in enumerate(min_lr)]
        else:
            self.min_lrs = [check_number("min_lr", min_lr, low=0.0)] * len(groups)
        self.optimizer = optimizer
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_steps = 0
        self.cooldown_counter = 0
        self.steps = 0

    def is_improvement(self, metric: float) -> bool:
        """Whether ``metric`` beats ``best`` by more than the threshold (formulas in the class doc)."""
        if self.mode == "min":
            bar = self.best * (1.0 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold
            return metric < bar
        bar = self.best * (1.0 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold
        return metric > bar

    def step(self, metric: float) -> bool:
        """Record one value of the monitored metric; return True if the lr was reduced."""
        metric = float(metric)
        self.steps += 1
        if self.is_improvement(metric):
            self.best = metric
            self.num_bad_steps = 0
        else:
            self.num_bad_steps += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_steps = 0  # the metric may still be settling after the last cut
        if self.num_bad_steps <= self.patience:
            return False
        reduced = False
        for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
            old = float(group["lr"])
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:  # ignore cuts too small to matter (at the floor)
                write_lr(group, new)
                reduced = True
        self.cooldown_counter = self.cooldown
        self.num_bad_steps = 0
        return reduced

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """The counters; the configuration comes from the constructor."""
        return {"best": self.best, "num_bad_steps": self.num_bad_steps,
                "cooldown_counter": self.cooldown_counter, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Checks every value before it changes any: on a ValueError nothing has changed."""
        state = check_state("ReduceOnPlateau", state, ("best", "num_bad_steps", "cooldown_counter", "steps"))
        best = state["best"]
        # ±inf is a legitimate best (the start, or an infinite metric); NaN never improves, so never is one
        if isinstance(best, bool) or not isinstance(best, Real) or math.isnan(best):
            raise ValueError(f"best must be a number (or ±inf), got best={best!r}")
        counters = {k: check_int(k, state[k]) for k in ("num_bad_steps", "cooldown_counter", "steps")}
        self.best = float(best)
        self.num_bad_steps, self.cooldown_counter, self.steps = (
            counters["num_bad_steps"], counters["cooldown_counter"], counters["steps"])

    def __repr__(self) -> str:
        return (f"ReduceOnPlateau(mode={self.mode!r}, factor={self.factor}, patience={self.patience}, "
                f"threshold={self.threshold}, threshold_mode={self.threshold_mode!r}, "
                f"cooldown={self.cooldown}, min_lr={self.min_lrs}, eps={self.eps})")
