"""The benchmark's measures: pure functions of finished runs' numbers (no torch, no store).

Conventions shared by every function here:

- ``mode`` is ``"max"`` (higher is better: accuracy) or ``"min"`` (lower is better: loss);
  anything else is a ``ValueError``.
- A missing or non-finite value (``None``, NaN, ±inf) is a failed result (a diverged run):
  it is never best, and it is counted, not silently dropped, where a count is reported.
- Epoch rows are the run store's: ``"step"`` (optimizer steps so far), ``"val_loss"``,
  ``"val_acc"``, ``"time_s"`` (seconds of that evaluation interval).

Sources: AlgoPerf's time-to-target (Dahl et al. 2023, "Benchmarking Neural Network Training
Algorithms"); tunability as the expected best of k trials (Sivaprasad et al. 2020, "Optimizer
Benchmarking Needs to Account for Hyperparameter Tuning", ICML); performance profiles (Dolan & Moré
2002, "Benchmarking optimization software with performance profiles", Math. Programming 91).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

__all__ = ["final_value", "select_best", "Interval", "mean_ci", "target", "steps_to_target", "median_cost",
           "expected_max_k", "tunability_curve", "LRSensitivity", "lr_sensitivity", "performance_ratios",
           "performance_profile", "profile_taus", "metric_cost"]

MODES = ("max", "min")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'max' or 'min', got mode={mode!r}")


def _finite(value) -> float | None:
    """``value`` as a float, or None when it is missing or not finite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _worst(mode: str) -> float:
    return -math.inf if mode == "max" else math.inf


def _key(value, mode: str) -> float:
    """A sort key, larger = better; a failed value is -inf."""
    v = _finite(value)
    if v is None:
        return -math.inf
    return v if mode == "max" else -v


# --------------------------------------------------------------------------- one run
def final_value(rows: Sequence[Mapping], metric_key: str) -> float | None:
    """The run's last evaluation of ``metric_key`` (e.g. ``"val_acc"``): the value in the last
    epoch row that has the key; None when no row has it or that last value is not finite
    (a diverged run's last evaluation is its result, not an earlier good one)."""
    for row in reversed(rows):
        if metric_key in row:
            return _finite(row[metric_key])
    return None


def steps_to_target(rows: Sequence[Mapping], metric_key: str, target: float,
                    mode: str) -> tuple[int, float] | tuple[None, None]:
    """Time to target (AlgoPerf, Dahl et al. 2023): the first evaluation whose ``metric_key``
    reaches ``target`` (``>=`` for ``"max"``, ``<=`` for ``"min"``).

    Returns ``(steps, seconds)``: that row's ``"step"`` and the sum of ``"time_s"`` over the rows
    up to and including it (a missing ``time_s`` counts 0); ``(None, None)`` when no evaluation
    reaches it. A non-finite value never reaches the target.
    """
    _check_mode(mode)
    elapsed = 0.0
    for row in rows:
        elapsed += _finite(row.get("time_s")) or 0.0
        v = _finite(row.get(metric_key))
        if v is not None and (v >= target if mode == "max" else v <= target):
            return int(row["step"]), elapsed
    return None, None


# --------------------------------------------------------------------------- trials and seeds
def select_best(trials: Sequence[Mapping], mode: str) -> dict:
    """The best tuning trial: the largest (``"max"``) or smallest (``"min"``) ``"val"``.

    Each trial is a mapping with at least ``"trial"`` (int) and ``"val"`` (the final validation
    metric; None/NaN/inf for a failed trial, which is worst). Ties go to the lowest trial number;
    when every trial failed, that is the lowest trial number too. Returns the trial's mapping
    (as a dict). Raises ``ValueError`` for no trials or a bad ``mode``.
    """
    _check_mode(mode)
    if not trials:
        raise ValueError("select_best needs at least one trial, got none")
    best = max(trials, key=lambda t: (_key(t.get("val"), mode), -int(t["trial"])))
    return dict(best)


class Interval(NamedTuple):
    """A mean with its confidence half-width: ``mean ± half_width`` over ``n`` finite values.
    ``mean`` is None when ``n == 0``; ``half_width`` is None when ``n < 2``."""

    mean: float | None
    half_width: float | None
    n: int


def mean_ci(values: Iterable, level: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval: ``half_width = t_{(1+level)/2, n-1} · s / √n``
    (``s`` the sample standard deviation, ``t`` from ``scipy.stats.t.ppf``).

    None and non-finite values are left out; ``n`` says how many were used. Returns an
    :class:`Interval` (a named tuple, so ``mean, half, n = mean_ci(xs)`` works). Raises
    ``ValueError`` unless ``0 < level < 1``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got level={level!r}")
    xs = [v for v in (_finite(x) for x in values) if v is not None]
    if not xs:
        return Interval(None, None, 0)
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(mean, None, 1)
    from scipy.stats import t

    half = float(t.ppf((1 + level) / 2, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Interval(mean, half, len(xs))


def _median_worst(values: Iterable, mode: str) -> float:
    """Median with every failed value counted as the worst possible (±inf)."""
    xs = [_finite(v) for v in values]
    xs = [_worst(mode) if v is None else v for v in xs]
    return statistics.median(xs) if xs else _worst(mode)


def target(baselines: Mapping[str, Sequence], mode: str) -> tuple[float, str]:
    """AlgoPerf-style target (Dahl et al. 2023): the better of the baselines' median results.

    ``baselines``: name → that tuned baseline's final validation values over its confirm seeds
    (the benchmark passes tuned Adam's and tuned SGD-with-momentum's). A failed seed counts as the
    worst value in the median, so a baseline that failed on half its seeds or more has no finite
    median and gives no target. Returns ``(value, name)``: the best finite median by ``mode``; equal
    medians go to the name given first. Raises ``ValueError`` when no baseline has a finite median.
    """
    _check_mode(mode)
    best: tuple[float, str] | None = None
    for name, values in baselines.items():
        m = _median_worst(values, mode)
        if not math.isfinite(m):
            continue
        if best is None or (m > best[0] if mode == "max" else m < best[0]):
            best = (m, name)
    if best is None:
        raise ValueError(f"no baseline has a finite median to set a target: {sorted(baselines)}")
    return best


def median_cost(values: Iterable) -> float:
    """The median of costs (lower is better) with every missing/non-finite value as ``inf``:
    the convention for time-to-target over seeds (a seed that did not reach the target took
    forever), so the median is ``inf`` when half the seeds or more did not reach it. No values
    at all: ``inf``."""
    return _median_worst(values, "min")


def metric_cost(value, mode: str) -> float | None:
    """A final metric as a cost for :func:`performance_profile`: the metric itself for ``"min"``
    (a loss), ``1 - metric`` for ``"max"`` (an accuracy: the error rate). None when not finite."""
    _check_mode(mode)
    v = _finite(value)
    return None if v is None else (v if mode == "min" else 1.0 - v)


# --------------------------------------------------------------------------- tunability
def _outcomes(values: Iterable, mode: str, penalty: float | None) -> list[float] | None:
    """Trial results best first, failed trials replaced by ``penalty`` (default: the worst finite
    result); None when nothing is finite and there is no penalty."""
    xs = [_finite(v) for v in values]
    finite = [v for v in xs if v is not None]
    if penalty is None:
        if not finite:
            return None
        penalty = min(finite) if mode == "max" else max(finite)
    return sorted((penalty if v is None else v for v in xs), reverse=(mode == "max"))


def expected_max_k(values: Sequence, k: int, mode: str, *, penalty: float | None = None) -> float | None:
    """Tunability (Sivaprasad et al. 2020, ICML): the expected best result of ``k`` trials drawn
    without replacement from the ``n`` observed ``values``, computed exactly.

    With the results sorted best first, ``v_(1), ..., v_(n)``, the best of a random ``k``-subset is
    ``v_(i)`` exactly when the subset holds position ``i`` and ``k - 1`` of the ``n - i`` worse
    positions, so ``E = Σ_i C(n-i, k-1) / C(n, k) · v_(i)``. "Best" is the largest for ``"max"``,
    the smallest for ``"min"``. At ``k = n`` it is the best value; at ``k = 1`` the mean.

    Failed trials (None/NaN/inf) count as ``penalty``; by default that is the worst finite value
    observed (failing is as bad as the worst trial that finished, so the expectation stays finite).
    Returns None when every trial failed and no penalty is given. Raises ``ValueError`` unless
    ``1 <= k <= n``.
    """
    _check_mode(mode)
    n = len(values)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer from 1 to the number of trials ({n}), got k={k!r}")
    ordered = _outcomes(values, mode, penalty)
    if ordered is None:
        return None
    total = math.comb(n, k)
    return math.fsum(math.comb(n - i, k - 1) * v for i, v in enumerate(ordered, start=1) if n - i >= k - 1) / total


def tunability_curve(values: Sequence, mode: str, *, penalty: float | None = None) -> list[float | None]:
    """:func:`expected_max_k` for ``k = 1 .. n``: the expected best validation result against the
    number of tuning trials (Sivaprasad et al. 2020). Empty input: an empty list."""
    return [expected_max_k(values, k, mode, penalty=penalty) for k in range(1, len(values) + 1)]


# --------------------------------------------------------------------------- learning-rate sensitivity
@dataclass(frozen=True)
class LRSensitivity:
    """One optimizer's validation results against its learning rate.

    ``points``: (lr, val) of the finished trials, sorted by lr. ``failed``: trials with no finite
    result. ``best_lr``/``best``: the best trial (lowest lr on ties). ``low``/``high``: the smallest
    and largest lr among the near-best trials; ``decades = log10(high / low)`` (0 with one
    near-best trial); ``near``: how many trials are near-best. All None/0 when nothing finished.
    """

    points: list[tuple[float, float]]
    failed: int
    best_lr: float | None
    best: float | None
    low: float | None
    high: float | None
    decades: float | None
    near: int


def lr_sensitivity(trials: Iterable[tuple[float, object]], mode: str, tol: float | None = None) -> LRSensitivity:
    """How wide a learning-rate range reaches close to the best result, from one optimizer's
    tuning trials, given as ``(lr, val)`` pairs (``val`` None/NaN for a failed trial).

    Near-best means: for ``"max"`` (accuracy) ``val >= best - tol``, ``tol`` absolute, default
    0.01 (one accuracy point); for ``"min"`` (loss) ``val <= best + tol · |best|``, ``tol``
    relative, default 0.05 (5 % of the best loss). The summary is the width in decades of the lr
    span of the near-best trials. The other hyperparameters vary between trials too (they were
    tuned jointly), so this is the sensitivity along the tuned path, not a one-dimensional sweep.
    Raises ``ValueError`` for a bad ``mode``, a negative ``tol`` or an lr that is not a positive
    finite number.
    """
    _check_mode(mode)
    if tol is None:
        tol = 0.01 if mode == "max" else 0.05
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got tol={tol!r}")
    points, failed = [], 0
    for lr, val in trials:
        lr_f = _finite(lr)
        if lr_f is None or lr_f <= 0:
            raise ValueError(f"a learning rate must be a positive finite number, got lr={lr!r}")
        v = _finite(val)
        if v is None:
            failed += 1
        else:
            points.append((lr_f, v))
    points.sort()
    if not points:
        return LRSensitivity([], failed, None, None, None, None, None, 0)
    best_lr, best = max(points, key=lambda p: (_key(p[1], mode), -p[0]))
    near = [lr for lr, v in points if (v >= best - tol if mode == "max" else v <= best + tol * abs(best))]
    low, high = min(near), max(near)
    return LRSensitivity(points, failed, best_lr, best, low, high, math.log10(high / low), len(near))


# --------------------------------------------------------------------------- performance profiles
def _cost(value) -> float:
    v = _finite(value)
    if v is None:
        return math.inf
    if v < 0:
        raise ValueError(f"performance-profile costs must be >= 0, got {value!r}")
    return v


def performance_ratios(costs: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Dolan & Moré (2002) performance ratios ``r_{p,s} = t_{p,s} / min_s t_{p,s}``.

    ``costs``: solver → problem → cost (lower is better, ``>= 0``); None/NaN/inf or a problem the
    solver lacks is a failure, ratio ``inf``. The problems are all problems any solver has. When
    the best cost on a problem is 0, solvers with cost 0 get ratio 1 and the others ``inf`` (no
    finite ratio exists). A problem every solver failed gives every solver ``inf``. Raises
    ``ValueError`` for a negative cost.
    """
    problems = sorted({p for per in costs.values() for p in per})
    table = {s: {p: _cost(per.get(p)) for p in problems} for s, per in costs.items()}
    out: dict[str, dict[str, float]] = {s: {} for s in costs}
    for p in problems:
        best = min((table[s][p] for s in costs), default=math.inf)
        for s in costs:
            t = table[s][p]
            if math.isinf(t) or math.isinf(best):
                out[s][p] = math.inf
            elif best == 0:
                out[s][p] = 1.0 if t == 0 else math.inf
            else:
                out[s][p] = t / best
    return out


def performance_profile(costs: Mapping[str, Mapping[str, object]], taus: Sequence[float]) -> dict[str, list[float]]:
    """Performance profiles (Dolan & Moré 2002): for each solver ``s`` and each ``τ`` in ``taus``,
    ``ρ_s(τ)`` = the fraction of all problems with ``r_{p,s} <= τ`` (see
    :func:`performance_ratios`; failures never count, but stay in the denominator).

    ``ρ_s(1)`` is the share of problems where ``s`` was best (ties count for each); the limit for
    large ``τ`` is the share it solved at all; a higher curve is better. Returns solver → list of
    ``ρ`` aligned with ``taus``; with no problems every ``ρ`` is 0.
    """
    ratios = performance_ratios(costs)
    out = {}
    for s, per in ratios.items():
        n = len(per)
        out[s] = [sum(r <= tau for r in per.values()) / n if n else 0.0 for tau in taus]
    return out


def profile_taus(costs: Mapping[str, Mapping[str, object]], points: int = 50, margin: float = 1.1) -> list[float]:
    """A τ grid for :func:`performance_profile`: ``points`` log-spaced values from 1 to
    ``margin ×`` the largest finite ratio (the margin shows the last step's width), plus every
    observed finite ratio, so the steps of the profile fall exactly where they are. Sorted,
    without duplicates; ``[1.0]`` when every finite ratio is 1 (and ``margin`` is 1)."""
    if points < 2 or margin < 1:
        raise ValueError(f"need points >= 2 and margin >= 1, got points={points!r}, margin={margin!r}")
    observed = {r for per in performance_ratios(costs).values() for r in per.values() if math.isfinite(r)}
    top = max(observed, default=1.0) * margin
    grid = {1.0, *observed}
    if top > 1.0:
        grid |= {math.exp(math.log(top) * i / (points - 1)) for i in range(points)}
    return sorted(grid)
