"""Composition: a sequence of schedules joined at boundaries, and warm-up in
front of any schedule."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from optimlab.schedules._base import (
    Schedule, check_increasing, check_int, check_number, check_order, set_field,
)
from optimlab.schedules.cosine import CosineAnnealing
from optimlab.schedules.decay import Constant, Linear


@dataclass(frozen=True)
class Sequential(Schedule):
    """Run ``schedules[i]`` between ``boundaries[i−1]`` and ``boundaries[i]``.

    Each schedule starts from its own step 0 at its boundary:
    ``η(t) = schedules[i](t − boundaries[i−1])`` (with ``boundaries[−1] = 0``),
    like torch's ``SequentialLR``. A finite schedule must cover its whole
    segment; the sequence is finite if its last schedule is.
    """

    schedules: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def __post_init__(self):
        schedules = tuple(self.schedules)
        for i, s in enumerate(schedules):
            if not isinstance(s, Schedule):
                raise ValueError(f"schedules[{i}] must be a Schedule, got schedules[{i}]={s!r}")
        boundaries = check_increasing("boundaries", self.boundaries)
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"boundaries must have len(schedules) - 1 = {len(schedules) - 1} entries, "
                f"got boundaries={list(boundaries)!r}"
            )
        starts = (0,) + boundaries
        for i, (s, start, end) in enumerate(zip(schedules, starts, boundaries)):
            if s.length is not None and s.length < end - start:
                raise ValueError(
                    f"schedules[{i}] lasts {s.length} steps but its segment "
                    f"{start}..{end} needs {end - start}: boundaries={list(boundaries)!r}"
                )
        set_field(self, "schedules", schedules)
        set_field(self, "boundaries", boundaries)

    @property
    def length(self) -> int | None:
        last = self.schedules[-1].length
        return None if last is None else (self.boundaries[-1] if self.boundaries else 0) + last

    @property
    def cycles_momentum(self) -> bool:
        return any(s.cycles_momentum for s in self.schedules)

    def _locate(self, step: int) -> tuple[Schedule, int]:
        i = bisect.bisect_right(self.boundaries, step)
        return self.schedules[i], step - (self.boundaries[i - 1] if i else 0)

    def _value(self, step: int) -> float:
        schedule, local = self._locate(step)
        return schedule(local)

    def momentum(self, step: int) -> float | None:
        """The active schedule's momentum; ``None`` (leave it alone) where it cycles none."""
        schedule, local = self._locate(self._check_step(step))
        return schedule.momentum(local)


def warmup(schedule: Schedule, warmup_steps: int, start_lr: float = 0.0) -> Sequential:
    """Linear warm-up from ``start_lr`` to ``schedule(0)`` over ``warmup_steps``, then ``schedule``.

    ``η(t) = start_lr + (schedule(0) − start_lr) · t/W`` for ``t < W``, then
    ``schedule(t − W)``.
    """
    warmup_steps = check_int("warmup_steps", warmup_steps, low=1)
    ramp = Linear(start_lr, schedule(0), warmup_steps)
    return Sequential((ramp, schedule), (warmup_steps,))


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int = 0,
                  min_lr: float = 0.0, start_lr: float = 0.0) -> Schedule:
    """Warm-up, cosine decay to a floor, then hold the floor (nanoGPT's ``get_lr``).

    ``W`` = ``warmup_steps``, ``T`` = ``total_steps``:
    ``start_lr → η0`` linearly for ``t < W``; cosine from ``η0`` to ``η_min``
    over ``T − W`` steps; ``η_min`` for ``t >= T``.
    """
    total_steps = check_int("total_steps", total_steps, low=1)
    warmup_steps = check_int("warmup_steps", warmup_steps, low=0)
    base_lr = check_number("base_lr", base_lr, low=0.0)
    check_order("min_lr", check_number("min_lr", min_lr, low=0.0), "base_lr", base_lr)
    start_lr = check_number("start_lr", start_lr, low=0.0)  # even when unused (no warm-up): a typo is a typo
    if warmup_steps >= total_steps:
        raise ValueError(
            f"warmup_steps must be < total_steps={total_steps}, got warmup_steps={warmup_steps}"
        )
    decay = Sequential((CosineAnnealing(base_lr, total_steps - warmup_steps, min_lr), Constant(min_lr)),
                       (total_steps - warmup_steps,))
    return warmup(decay, warmup_steps, start_lr) if warmup_steps else decay
