"""Numbers read off a recorded trajectory: the evidence behind each lecture claim."""

from __future__ import annotations

import numpy as np

from optimlab.landscape.trajectory import Trajectory


def _upto(traj: Trajectory, until: int | None) -> np.ndarray:
    n = len(traj.points) if until is None else min(len(traj.points), until + 1)
    return traj.points[:n]


def step_sign_changes(traj: Trajectory, axis: int = 1, until: int | None = None,
                      tiny: float = 1e-12) -> int:
    """How often the step along ``axis`` reverses direction (zigzag), over points ``0..until``.
    Steps shorter than ``tiny`` are ignored."""
    d = np.diff(_upto(traj, until)[:, axis])
    d = d[np.abs(d) > tiny]
    return int(np.count_nonzero(np.sign(d[1:]) != np.sign(d[:-1])))


def crossings(traj: Trajectory, axis: int = 1, level: float = 0.0, until: int | None = None) -> int:
    """How often the path crosses the line ``coordinate[axis] == level`` (a valley floor)."""
    s = np.sign(_upto(traj, until)[:, axis] - level)
    s = s[s != 0]
    return int(np.count_nonzero(s[1:] != s[:-1]))


def travel(traj: Trajectory, axis: int, until: int | None = None) -> float:
    """Total distance moved along ``axis`` (sideways travel, for the steep axis of a ravine)."""
    return float(np.abs(np.diff(_upto(traj, until)[:, axis])).sum())


def overshoot(traj: Trajectory, target) -> float:
    """How far the path went past ``target`` along the start → target direction
    (0 if it never passed it)."""
    start, target = np.asarray(traj.start, dtype=float), np.asarray(target, dtype=float)
    u = target - start
    u = u / np.linalg.norm(u)
    return float(max(0.0, ((traj.points - target) @ u).max()))


def mean_step(traj: Trajectory, first: int | None = None, last: int | None = None) -> float:
    """Mean step length over the first ``first`` or the last ``last`` recorded updates."""
    lengths = traj.step_lengths()
    if first is not None:
        lengths = lengths[:first]
    if last is not None:
        lengths = lengths[-last:]
    return float(lengths.mean()) if len(lengths) else float("nan")


def distance_from(traj: Trajectory, point) -> float:
    """Distance from the final point to ``point``."""
    return float(np.hypot(*(traj.points[-1] - np.asarray(point, dtype=float))))
