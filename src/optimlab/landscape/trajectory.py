"""Run optimizers on a test function from the same start and record their paths.

>>> from optimlab import landscape
>>> result = landscape.compare("rosenbrock", ["sgd", "momentum", "adam"], steps=300)
>>> print(result.table())                                   # doctest: +SKIP
>>> result["adam"].points.shape, result["adam"].losses[-1]  # doctest: +SKIP

Every contender's point is a float64 tensor; one forward/backward pass per step evaluates
all of them (the function is elementwise, so each point gets exactly its own gradient), then
each optimizer steps its own point. A learning-rate search runs the candidate rates as
parameter groups of one optimizer (these rules are elementwise, so each group is an
independent run) and keeps the best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from optimlab.landscape import functions as F
from optimlab.landscape.specs import (MATRIX_ONLY, Contender, Spec, attach_schedule, copy_instance, resolve,
                                      unique_labels)

TUNE_FACTORS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # the default search grid: multiples of the default rate


@dataclass
class Trajectory:
    """One optimizer's recorded run: ``points[t]`` is the point before update ``t``.

    ``points`` (n, 2), ``losses`` (n,), ``grads`` (n, 2) (the exact gradient, before any
    noise) hold only finite values: a run that diverges is recorded up to the divergence,
    so ``n = steps + 1`` unless it stopped early (``stopped_at``).
    """

    label: str
    optimizer: str
    lr: float | None
    lr_from: str                     # "default", "given", "tuned", "own" or "schedule"
    function: str
    start: tuple[float, float]
    steps: int
    points: np.ndarray
    losses: np.ndarray
    grads: np.ndarray
    min_value: float | None
    tol: float | None
    noise: float = 0.0
    diverged_at: int | None = None   # first step whose point, loss or gradient was not finite,
    # or (bounded functions) whose point was beyond the divergence radius
    escaped_at: int | None = None    # unbounded functions: first step beyond the radius
    left_domain_at: int | None = None
    start_in_domain: bool = True
    distance: float = math.nan       # final point to the nearest global minimum

    @property
    def grad_norms(self) -> np.ndarray:
        return np.hypot(self.grads[:, 0], self.grads[:, 1]) if len(self.grads) else np.zeros(0)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    @property
    def stopped_at(self) -> int | None:
        return self.diverged_at if self.diverged_at is not None else self.escaped_at

    @property
    def final_point(self) -> tuple[float, float]:
        return tuple(map(float, self.points[-1])) if len(self.points) else (math.nan, math.nan)

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1]) if len(self.losses) else math.nan

    @property
    def gaps(self) -> np.ndarray:
        """``f(points[t]) − f*`` (the losses themselves when the function is unbounded below)."""
        return self.losses - (self.min_value or 0.0)

    @property
    def steps_to_tol(self) -> int | None:
        """The first step whose loss is within ``tol`` of the minimum value (``None``: never)."""
        if self.min_value is None or self.tol is None:
            return None
        hit = np.flatnonzero(self.gaps <= self.tol)
        return int(hit[0]) if len(hit) else None

    @property
    def status(self) -> str:
        if self.diverged_at is not None:
            return "diverged"
        if self.escaped_at is not None:
            return "escaped"
        return "converged" if self.steps_to_tol is not None else "not converged"

    def step_lengths(self) -> np.ndarray:
        """``|points[t+1] − points[t]|`` for each recorded update."""
        d = np.diff(self.points, axis=0)
        return np.hypot(d[:, 0], d[:, 1])

    def notes(self) -> list[str]:
        out = []
        if not self.start_in_domain:
            out.append(f"start {_fmt_point(self.start)} outside the plotted domain")
        if self.diverged_at is not None:
            out.append(f"diverged at step {self.diverged_at}; drawn up to step {len(self.points) - 1}")
        if self.escaped_at is not None:
            out.append(f"escaped to -inf (unbounded below) at step {self.escaped_at}")
        if self.left_domain_at is not None and self.start_in_domain and self.stopped_at is None:
            out.append(f"left the plotted domain at step {self.left_domain_at}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, outcome and the recorded arrays as lists."""
        return {"label": self.label, "optimizer": self.optimizer, "lr": self.lr, "lr_from": self.lr_from,
                "function": self.function, "start": list(self.start), "steps": self.steps,
                "noise": self.noise, "status": self.status, "diverged_at": self.diverged_at,
                "escaped_at": self.escaped_at, "left_domain_at": self.left_domain_at,
                "steps_to_tol": self.steps_to_tol, "final_loss": _json_float(self.final_loss),
                "distance": _json_float(self.distance), "points": self.points.tolist(),
                "losses": self.losses.tolist(), "grad_norms": self.grad_norms.tolist()}


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _fmt_point(p) -> str:
    return f"({p[0]:g}, {p[1]:g})"


@dataclass
class Comparison:
    """The trajectories of several optimizers on one function, from one start."""

    function: F.TestFunction
    trajectories: list[Trajectory]
    steps: int
    start: tuple[float, float]
    tol: float | None
    tuned: bool
    noise: float
    seed: int
    candidates: dict[str, list[Trajectory]] = field(default_factory=dict)  # every rate tried

    def __getitem__(self, label: str) -> Trajectory:
        for t in self.trajectories:
            if t.label == label:
                return t
        raise KeyError(f"no trajectory {label!r}; have {[t.label for t in self.trajectories]}")

    def __iter__(self):
        return iter(self.trajectories)

    def __len__(self) -> int:
        return len(self.trajectories)

    def rows(self) -> list[dict[str, Any]]:
        from optimlab.landscape.table import rows
        return rows(self)

    def table(self) -> str:
        from optimlab.landscape.table import format_table
        return format_table(self)

    def to_dict(self) -> dict[str, Any]:
        f = self.function
        return {"function": f.name, "settings": f.params, "feature": f.feature,
                "domain": [list(r) for r in f.domain], "minima": [list(m) for m in f.minima],
                "min_value": f.min_value, "start": list(self.start), "steps": self.steps,
                "tol": self.tol, "tuned": self.tuned, "noise": self.noise, "seed": self.seed,
                "trajectories": [t.to_dict() for t in self.trajectories],
                "lr_search": {label: [{"lr": c.lr, "status": c.status, "steps_to_tol": c.steps_to_tol,
                                       "final_loss": _json_float(c.final_loss)} for c in cands]
                              for label, cands in self.candidates.items()}}


@dataclass
class _Slot:
    contender: Contender
    lr: float | None
    param: torch.Tensor
    points: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    grads: list = field(default_factory=list)
    diverged_at: int | None = None
    escaped_at: int | None = None
    left_domain_at: int | None = None

    @property
    def alive(self) -> bool:
        return self.diverged_at is None and self.escaped_at is None


def _start(function: F.TestFunction, start) -> tuple[float, float]:
    if start is None:
        return function.start
    try:
        x, y = (float(v) for v in start)
    except (TypeError, ValueError):
        raise ValueError(f"start must be two numbers (x, y), got start={start!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"start must be two finite numbers (x, y), got start={start!r}")
    return x, y


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    return float(value)


def _search_factors(tune: bool | Sequence[float]) -> tuple[float, ...]:
    if tune is True:
        return TUNE_FACTORS
    if tune is False or tune is None:
        return (1.0,)
    factors = tuple(float(v) for v in tune)
    if not factors or not all(v > 0 and math.isfinite(v) for v in factors):
        raise ValueError(f"tune must be True/False or positive factors of the default rate, got {tune!r}")
    return factors


def default_radius(function: F.TestFunction) -> float:
    """Beyond this distance from the origin a run counts as diverged (escaped, if unbounded)."""
    return 100.0 * max(abs(v) for r in function.domain for v in r)


def compare(function: str | F.TestFunction, optimizers: Sequence[Any], *, steps: int = 300,
            start=None, tol: float | None = None, tune: bool | Sequence[float] = False,
            noise: float = 0.0, seed: int = 0, radius: float | None = None) -> Comparison:
    """Run every optimizer on ``function`` for ``steps`` updates from the same ``start``.

    ``optimizers``: names, classes, factories, instances or :class:`Spec` s (see
    :mod:`optimlab.landscape.specs`). ``tol``: the tolerance on ``f − f*`` for "steps to
    tolerance" (default: the function's). ``tune``: ``True`` tries each optimizer's default
    rate times ``TUNE_FACTORS`` and keeps the best (reached the tolerance in the fewest steps,
    then lowest final loss, never a diverged run); a sequence gives other factors. ``noise``:
    Gaussian gradient noise (standard deviation), the same draws for every optimizer
    (``seed``). ``radius``: divergence radius (default :func:`default_radius`).
    """
    function = F.get(function)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got steps={steps!r}")
    if isinstance(noise, bool) or not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a number >= 0, got noise={noise!r}")
    if isinstance(optimizers, (str, Spec, torch.optim.Optimizer)) or callable(optimizers):
        optimizers = [optimizers]   # one optimizer (a class or a factory is callable)
    optimizers = list(optimizers)
    if not optimizers:
        raise ValueError("optimizers must name at least one optimizer, got []")
    start = _start(function, start)
    tol = function.tol if tol is None else _positive("tol", tol)
    radius = default_radius(function) if radius is None else _positive("radius", radius)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got seed={seed!r}")
    factors = _search_factors(tune)
    contenders = [resolve(s, function) for s in optimizers]
    unique_labels(contenders)

    slots: list[_Slot] = []
    runners = []  # (optimizer, scheduler)
    for c in contenders:
        if c.instance is not None:
            opt, point = copy_instance(c.instance)
            with torch.no_grad():
                point.copy_(torch.tensor(start, dtype=point.dtype).reshape(point.shape))
            group_slots = [_Slot(c, opt.param_groups[0].get("lr"), point)]
        else:
            lrs = [c.lr * k for k in factors] if (c.tunable and len(factors) > 1) else [c.lr]
            shape = (1, 2) if c.kind in MATRIX_ONLY else (2,)
            group_slots = [_Slot(c, lr, torch.tensor(start, dtype=torch.float64).reshape(shape).requires_grad_())
                           for lr in lrs]
            groups = [{"params": [s.param]} if s.lr is None else {"params": [s.param], "lr": s.lr}
                      for s in group_slots]
            opt = c.build(groups)
        slots += group_slots
        runners.append((opt, attach_schedule(opt, c.schedule)))

    generator = torch.Generator().manual_seed(seed)
    for t in range(steps + 1):
        _evaluate(function, slots, t, radius)
        draw = torch.randn(2, generator=generator, dtype=torch.float64)
        for s in slots:
            if not s.alive:
                s.param.grad = None  # a stopped run stays where it is
                continue
            sigma = noise if s.contender.noise is None else s.contender.noise
            if sigma:
                s.param.grad.add_(draw.to(s.param.dtype).reshape(s.param.shape), alpha=sigma)
        if t == steps:
            break
        for opt, scheduler in runners:
            opt.step()
            if scheduler is not None:
                scheduler.step()
        for s in slots:
            s.param.grad = None

    tuned = len(factors) > 1 and any(c.tunable for c in contenders)
    trajectories, candidates = [], {}
    for c in contenders:
        runs = [_trajectory(s, function, start, steps, tol, noise) for s in slots if s.contender is c]
        best = min(runs, key=_score) if len(runs) > 1 else runs[0]
        if len(runs) > 1:
            best.lr_from = "tuned"
            candidates[c.label] = runs
        trajectories.append(best)
    return Comparison(function, trajectories, steps, start, tol, tuned, float(noise), seed, candidates)


def run(function: str | F.TestFunction, optimizer: Any, **options) -> Trajectory:
    """One optimizer's :class:`Trajectory` (the options of :func:`compare`)."""
    return compare(function, [optimizer], **options).trajectories[0]


def _evaluate(function: F.TestFunction, slots: list[_Slot], t: int, radius: float) -> None:
    """Loss and gradient at every slot's point; record them, or mark where a run stopped."""
    live = [s for s in slots if s.alive]
    if not live:
        return
    stacked = torch.stack([s.param.to(torch.float64).reshape(2) for s in live])
    values = function(stacked[:, 0], stacked[:, 1])
    values.sum().backward()
    points = stacked.detach().numpy()
    values = values.detach().numpy()
    for s, point, value in zip(live, points, values):
        grad = s.param.grad.detach().to(torch.float64).reshape(2).numpy().copy()
        finite = bool(np.isfinite(point).all() and np.isfinite(value) and np.isfinite(grad).all())
        if finite:
            s.points.append(point.copy())
            s.losses.append(float(value))
            s.grads.append(grad)
            if s.left_domain_at is None and not function.in_domain(point):
                s.left_domain_at = t
        if not finite:
            s.diverged_at = t
        elif float(np.hypot(*point)) > radius:
            if function.bounded_below:
                s.diverged_at = t
            else:
                s.escaped_at = t


def _trajectory(s: _Slot, function: F.TestFunction, start, steps, tol, noise) -> Trajectory:
    c = s.contender
    points = np.array(s.points, dtype=np.float64).reshape(-1, 2)
    traj = Trajectory(
        label=c.label, optimizer=c.kind, lr=s.lr, lr_from=c.lr_from, function=function.name,
        start=start, steps=steps, points=points, losses=np.array(s.losses, dtype=np.float64),
        grads=np.array(s.grads, dtype=np.float64).reshape(-1, 2), min_value=function.min_value,
        tol=tol, noise=float(noise if c.noise is None else c.noise), diverged_at=s.diverged_at,
        escaped_at=s.escaped_at, left_domain_at=s.left_domain_at,
        start_in_domain=function.in_domain(start))
    if len(points) and not traj.diverged:
        traj.distance = function.nearest_minimum(points[-1])[1]
    return traj


def _score(traj: Trajectory) -> tuple:
    """Lower is better: reached the goal, in fewer steps, to a lower loss; never diverged."""
    rank = {"converged": 0, "escaped": 0, "not converged": 1, "diverged": 2}[traj.status]
    when = traj.steps_to_tol if traj.steps_to_tol is not None else traj.escaped_at
    gap = float(traj.gaps[-1]) if len(traj.losses) and not traj.diverged else math.inf
    return rank, math.inf if when is None else when, gap, traj.lr or 0.0
