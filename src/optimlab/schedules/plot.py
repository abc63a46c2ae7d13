"""Tables and PNG plots of schedules: learning rate, and momentum where cycled."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from optimlab.schedules._base import Schedule, check_int


def schedule_table(schedule: Schedule, steps: int) -> dict[str, np.ndarray | None]:
    """Evaluate ``schedule`` at steps ``0 .. min(steps, length) − 1``.

    Returns ``{"step", "lr", "momentum"}`` as float64 arrays; ``momentum`` is
    ``None`` unless the schedule cycles it.
    """
    steps = check_int("steps", steps, low=1)
    if schedule.length is not None:
        steps = min(steps, schedule.length)  # a finite schedule's curve stops at its end
    step = np.arange(steps)
    lr = np.array([schedule(int(t)) for t in step], dtype=np.float64)
    momentum = None
    if schedule.cycles_momentum:
        # None where a composed schedule leaves momentum alone: NaN leaves a gap in the line.
        values = [schedule.momentum(int(t)) for t in step]
        momentum = np.array([np.nan if m is None else m for m in values], dtype=np.float64)
    return {"step": step, "lr": lr, "momentum": momentum}


def _named(schedules) -> dict[str, Schedule]:
    if isinstance(schedules, Schedule):
        return {repr(schedules): schedules}
    if isinstance(schedules, Mapping):
        named = dict(schedules)
    else:
        named = {repr(s): s for s in schedules}
    if not named:
        raise ValueError("schedules must hold at least one schedule, got schedules=[]")
    for label, s in named.items():
        if not isinstance(s, Schedule):
            raise ValueError(f"schedules[{label!r}] must be a Schedule, got {s!r}")
    return named


def plot(schedules, path: str | Path, *, steps: int | None = None, title: str | None = None,
         log_lr: bool = False) -> dict[str, dict]:
    """Write a PNG with one column per schedule: lr against step on top, and a
    momentum row below when any schedule cycles momentum.

    ``schedules``: one schedule, a list, or a ``{label: schedule}`` mapping.
    ``steps`` defaults to the longest finite schedule's length (required when
    all are infinite). Returns the plotted tables, keyed by label.
    Rendering uses matplotlib's Agg canvas directly, so no GUI and no global
    pyplot state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    named = _named(schedules)
    if steps is None:
        lengths = [s.length for s in named.values() if s.length is not None]
        if not lengths:
            raise ValueError("steps is required when no schedule is finite, got steps=None")
        steps = max(lengths)
    tables = {label: schedule_table(s, steps) for label, s in named.items()}
    for label, table in tables.items():
        bad = np.flatnonzero(~np.isfinite(table["lr"]))
        if bad.size:  # a growing schedule past the float range: matplotlib cannot scale an axis to inf
            raise ValueError(f"schedule {label!r} exceeds the float range from step {int(bad[0])} "
                             f"(lr={table['lr'][bad[0]]}): plot fewer steps, got steps={steps}")
    with_momentum = any(t["momentum"] is not None for t in tables.values())

    rows, cols = (2 if with_momentum else 1), len(tables)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharex="col")
    for col, (label, table) in enumerate(tables.items()):
        ax = axes[0][col]
        ax.plot(table["step"], table["lr"], color="tab:blue")
        ax.set_title(textwrap.fill(label, 50), fontsize=8)
        ax.set_ylabel("learning rate")
        if log_lr:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if with_momentum:
            mom = axes[1][col]
            if table["momentum"] is not None:
                mom.plot(table["step"], table["momentum"], color="tab:orange")
            else:
                mom.text(0.5, 0.5, "momentum not cycled", ha="center", va="center", transform=mom.transAxes)
            mom.set_ylabel("momentum / beta1")
            mom.grid(alpha=0.3)
        axes[-1][col].set_xlabel("step")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return tables
