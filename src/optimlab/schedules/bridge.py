"""The one bridge from pure schedules to an optimizer's param groups."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from optimlab.schedules._base import Schedule, check_int, check_state


def write_lr(group: dict, value: float) -> None:
    """Set ``group["lr"]``, in place when it is a tensor (capturable/fused optimizers keep it on device)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def write_momentum(group: dict, value: float) -> None:
    """Cycle Adam-style ``betas[0]`` if the group has ``betas`` (the same precedence as
    torch's ``OneCycleLR``), else a Keras twin's ``beta_1``, else SGD-style ``momentum``."""
    if "betas" in group:
        group["betas"] = (value, *group["betas"][1:])
    elif "beta_1" in group:
        group["beta_1"] = float(value)
    else:
        group["momentum"] = value


class Scheduler:
    """Drive ``optimizer.param_groups`` with a schedule, one ``step()`` at a time.

    Works with any optimizer: it only reads and writes ``param_groups``
    (``lr``, and ``momentum`` or ``betas`` when the schedule cycles momentum).
    ``schedule`` is one schedule for every group, or a list with one per group.

    Position ``k`` means the groups hold ``schedule(k)``. Construction writes
    ``schedule(0)``; call ``step()`` once after every optimizer step (or once
    per epoch, for per-epoch schedules), so the ``k``-th update (from 0) uses
    ``schedule(k)`` — the same convention as ``torch.optim.lr_scheduler``.

    A finite schedule (``length`` = L) may reach position L when the run's last
    ``step()`` is called; the groups keep ``schedule(L − 1)`` and a further
    ``step()`` raises ``ValueError``.

    ``state_dict()`` holds the position; after ``load_state_dict`` the groups
    hold that position's values again, so a resumed run continues exactly.
    """

    def __init__(self, optimizer, schedule: Schedule | Sequence[Schedule]):
        groups = optimizer.param_groups
        # a str is a Sequence too: let it fail below as "not a Schedule", not as a list of letters
        per_group = isinstance(schedule, Sequence) and not isinstance(schedule, str)
        schedules = list(schedule) if per_group else [schedule] * len(groups)
        if len(schedules) != len(groups):
            raise ValueError(
                f"schedule must be one schedule or one per param group ({len(groups)}), "
                f"got {len(schedules)} schedules"
            )
        for i, (s, group) in enumerate(zip(schedules, groups)):
            if not isinstance(s, Schedule):
                raise ValueError(f"schedule for param group {i} must be a Schedule, got {s!r}")
            if s.cycles_momentum and not {"momentum", "betas", "beta_1"} & set(group):
                raise ValueError(
                    f"{s!r} cycles momentum but param group {i} has neither 'momentum' nor 'betas' "
                    "(nor a Keras twin's 'beta_1'); pass cycle_momentum=False"
                )
        self.optimizer = optimizer
        self.schedules = schedules
        self.position = 0
        self._apply()

    @property
    def length(self) -> int | None:
        """The shortest schedule's length, or None when all are infinite."""
        lengths = [s.length for s in self.schedules if s.length is not None]
        return min(lengths) if lengths else None

    def step(self) -> None:
        """Advance one step (or epoch) and write the new values into the groups."""
        if self.length is not None and self.position >= self.length:
            raise ValueError(
                f"step past the end of the schedule: position={self.position + 1} but the schedule "
                f"is defined for {self.length} steps"
            )
        self.position += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rates now in the groups (torch's scheduler method of the same name)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Checks everything first: on a ValueError nothing has changed."""
        position = check_int("position", check_state("Scheduler", state, ("position",))["position"])
        if self.length is not None and position > self.length:
            raise ValueError(f"position must be <= {self.length} for this schedule, got position={position}")
        self.position = position
        self._apply()

    def _apply(self) -> None:
        if self.length is not None and self.position >= self.length:
            return  # the run is over: keep the last values rather than extrapolate
        for schedule, group in zip(self.schedules, self.optimizer.param_groups):
            write_lr(group, schedule(self.position))
            momentum = schedule.momentum(self.position)
            if momentum is not None:
                write_momentum(group, momentum)

    def __repr__(self) -> str:
        return f"Scheduler(position={self.position}, schedules={self.schedules!r})"
