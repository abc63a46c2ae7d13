"""Each optimizer's search space, one table, and how a sampled point becomes an optimizer.

The tuning protocol gives every optimizer the same number of trials over *its own* space
(Choi et al. 2019, "On empirical comparisons of optimizers for deep learning": rankings
follow the search spaces, so the spaces are written down and printed in the report).
The learning rate is searched on a log scale always; momentum / β1, β2, ε, weight decay
and the warm-up fraction where the optimizer has them. Every tuned trial uses the same
schedule: linear warm-up for the sampled fraction of the budget, then cosine decay to
zero (Loshchilov & Hutter 2017), except Schedule-Free, which replaces the schedule
(Defazio et al. 2024) and takes the warm-up as its own ``warmup_steps``.

An optimizer missing from :data:`SPACES` gets :func:`default_space`: its learning rate
over two decades either side of its default, everything else at its defaults.

The ``one-shot`` budget (Schmidt, Schneider & Hennig 2021, "Descending through a crowded
valley") runs each optimizer once at its defaults, with a constant learning rate.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any

SCHEDULE = "linear warm-up for the sampled fraction of the steps, then cosine decay to 0 (constant at the default for one-shot)"


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: ``low``..``high``, log-uniform when ``log``; ``default``
    is the value a one-shot trial uses (the optimizer's own default)."""

    name: str
    low: float
    high: float
    log: bool
    default: float

    def __post_init__(self):
        for key in ("low", "high", "default"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"search space {self.name}: {key} must be a finite number, got {key}={value!r}")
        if self.log and not self.low > 0:
            raise ValueError(f"search space {self.name}: a log-scaled range needs low > 0, got low={self.low!r}")
        if not self.low < self.high:
            raise ValueError(f"search space {self.name}: needs low < high, got low={self.low!r}, high={self.high!r}")

    def distribution(self):
        import optuna

        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)


def _p(name, low, high, default, log=False) -> Param:
    return Param(name, float(low), float(high), log, float(default))


LR = "lr"
WARMUP = "warmup"  # fraction of the steps spent warming up linearly
_WARMUP = _p(WARMUP, 0.0, 0.1, 0.0)
_ADAM = (_p("beta1", 0.8, 0.99, 0.9), _p("beta2", 0.95, 0.9999, 0.999), _p("eps", 1e-10, 1e-4, 1e-8, log=True))

#: optimizer name -> its searched hyperparameters (defaults: torch's)
SPACES: dict[str, tuple[Param, ...]] = {
    "sgd": (_p(LR, 1e-3, 3.0, 1e-3, log=True), _WARMUP),
    "momentum": (_p(LR, 1e-4, 1.0, 1e-2, log=True), _p("momentum", 0.8, 0.99, 0.9), _WARMUP),
    "nag": (_p(LR, 1e-4, 1.0, 1e-2, log=True), _p("momentum", 0.8, 0.99, 0.9), _WARMUP),
    "adagrad": (_p(LR, 1e-3, 1.0, 1e-2, log=True), _p("eps", 1e-10, 1e-4, 1e-10, log=True), _WARMUP),
    "rmsprop": (_p(LR, 1e-5, 1e-1, 1e-2, log=True), _p("alpha", 0.9, 0.999, 0.99),
                _p("eps", 1e-10, 1e-4, 1e-8, log=True), _WARMUP),
    "adadelta": (_p(LR, 1e-2, 10.0, 1.0, log=True), _p("rho", 0.8, 0.99, 0.9),
                 _p("eps", 1e-8, 1e-4, 1e-6, log=True), _WARMUP),
    "adam": (_p(LR, 1e-5, 1e-1, 1e-3, log=True), *_ADAM, _WARMUP),
    "adamw": (_p(LR, 1e-5, 1e-1, 1e-3, log=True), *_ADAM, _p("weight_decay", 1e-5, 1.0, 1e-2, log=True), _WARMUP),
    "nadam": (_p(LR, 1e-5, 1e-1, 2e-3, log=True), *_ADAM, _WARMUP),
    "adamax": (_p(LR, 1e-5, 1e-1, 2e-3, log=True), *_ADAM, _WARMUP),
    "radam": (_p(LR, 1e-5, 1e-1, 1e-3, log=True), *_ADAM, _WARMUP),
    "lion": (_p(LR, 1e-6, 1e-2, 1e-4, log=True), _p("beta1", 0.8, 0.99, 0.9), _p("beta2", 0.9, 0.999, 0.99),
             _p("weight_decay", 1e-5, 1.0, 1e-2, log=True), _WARMUP),
    "schedulefree_adamw": (_p(LR, 1e-4, 1e-1, 2.5e-3, log=True), *_ADAM,
                           _p("weight_decay", 1e-5, 1.0, 1e-2, log=True), _WARMUP),
}
# Lion's and Schedule-Free's torch defaults have no weight decay; their spaces search it,
# and one-shot uses 0 as their constructors do:
ONE_SHOT_OVERRIDES = {"lion": {"weight_decay": 0.0}, "schedulefree_adamw": {"weight_decay": 0.0}}
NO_SCHEDULE = ("schedulefree_adamw", "schedulefree_sgd")  # Schedule-Free: no decay schedule on top


def default_space(name: str) -> tuple[Param, ...]:
    """An optimizer without a declared space: its lr over default / 100 .. default * 100 (log), and warm-up."""
    from optimlab import optim

    cls = optim.get(name)
    sig = inspect.signature(cls.__init__).parameters
    lr = sig["lr"].default if "lr" in sig and isinstance(sig["lr"].default, (int, float)) else 1e-3
    return (_p(LR, lr / 100, lr * 100, lr, log=True), _WARMUP)


def space(name: str, ranges: dict[str, tuple[float, float]] | None = None) -> tuple[Param, ...]:
    """The search space of optimizer ``name`` (a registered name), with ``ranges``
    (``{param: (low, high)}``) replacing the declared bounds of those parameters.

    Errors: ``ValueError`` for a parameter the space lacks, and (:class:`Param`) for a
    bound that is not finite, ``low >= high``, or ``low <= 0`` on a log-scaled parameter.
    """
    params = SPACES.get(name) or default_space(name)
    if not ranges:
        return params
    known = {p.name for p in params}
    for key in ranges:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"search space of {name}: no parameter {key!r} (it has {', '.join(sorted(known))}){hint}")
    out = []
    for p in params:
        if p.name in ranges:
            bounds = ranges[p.name]
            if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
                raise ValueError(f"search space {name}.{p.name}: give (low, high), got {bounds!r}")
            Param(f"{name}.{p.name}", *bounds, p.log, p.default)  # its errors name the optimizer too
            p = Param(p.name, *bounds, p.log, p.default)
        out.append(p)
    return tuple(out)


def describe(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    """The space as JSON-safe rows (the report's protocol table)."""
    return [asdict(p) for p in params]


def defaults(name: str) -> dict[str, float]:
    """The one-shot point: every searched parameter at the optimizer's default (warm-up 0)."""
    point = {p.name: p.default for p in space(name)}
    point.update(ONE_SHOT_OVERRIDES.get(name, {}))
    return point


def sobol_points(params: tuple[Param, ...], n: int, seed: int) -> list[dict[str, float]]:
    """``n`` points of the optimizer's space from Optuna's scrambled Sobol sampler (``QMCSampler``).

    Drawn in a throwaway in-memory study whose first trial only declares the space (so every
    returned point is a Sobol point, none from the sampler's random start-up), in order:
    the first ``k`` points of a longer draw are the points of a shorter one.
    """
    import warnings

    import optuna

    dists = {p.name: p.distribution() for p in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                             warn_independent_sampling=False)
    study = optuna.create_study(sampler=sampler)
    study.add_trial(optuna.trial.create_trial(params={k: d.low for k, d in dists.items()}, distributions=dists,
                                              value=0.0))
    points = []
    for _ in range(n):
        trial = study.ask(dists)
        points.append(dict(trial.params))
        study.tell(trial, 0.0)
    return points


def build(name: str, point: dict[str, float], params, total_steps: int, *, one_shot: bool = False):
    """``(optimizer, schedule or None)`` for a sampled ``point`` over ``params``.

    ``beta1``/``beta2`` become ``betas``; ``warmup`` (a fraction of ``total_steps``)
    becomes the warm-up of the warm-up-cosine schedule, or Schedule-Free's ``warmup_steps``.
    ``one_shot``: a constant learning rate (no schedule).
    """
    from optimlab import optim, schedules

    hyper = {k: v for k, v in point.items() if k not in ("beta1", "beta2", WARMUP)}
    if "beta1" in point:
        hyper["betas"] = (point["beta1"], point["beta2"])
    warm = int(round(point.get(WARMUP, 0.0) * total_steps))
    if name in NO_SCHEDULE:
        if warm:
            hyper["warmup_steps"] = warm
        return optim.create(name, params, **hyper), None
    opt = optim.create(name, params, **hyper)
    if one_shot:
        return opt, None
    return opt, schedules.warmup_cosine(base_lr=point[LR], total_steps=total_steps + 1,
                                        warmup_steps=min(warm, total_steps - 1))
