"""What a benchmark is: workloads × optimizers × the tuning protocol, its presets and its identity.

Everything that changes a result enters the benchmark's id (``bm-`` and 8 hex digits): the
workloads' declarations (model, data, budget), the optimizers and their search spaces, the
number of trials, the confirm seeds, the budget kind and the sampler's seed. The same
command finds its finished trials again; an edited workload or space is a new benchmark.
How it runs (workers, threads, where the files go) is not part of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace

#: The lecture's six, then what came after (issue #17's laptop preset).
LECTURE_SIX = ("adam", "rmsprop", "momentum", "sgd", "adagrad", "adadelta")
LAPTOP_OPTIMIZERS = LECTURE_SIX + ("adamw", "radam", "lion", "schedulefree_adamw")
BUDGETS = ("tuned", "one-shot")


@dataclass(frozen=True)
class Preset:
    """A named set of defaults; options given explicitly override them."""

    description: str
    optimizers: tuple[str, ...]
    trials: int
    seeds: int
    fraction: float  # of each workload's declared budget (steps and evaluation cadence)
    workloads: tuple[str, ...] | None = None  # None: every built-in workload
    all_cores: bool = True  # default workers: one per core (each single-threaded); False: one worker


PRESETS = {
    "quick": Preset("a smoke run, under two minutes: the two cheapest workloads, three optimizers, 2 trials, "
                    "2 seeds, 5% of each budget", ("adam", "momentum", "sgd"), trials=2, seeds=2, fraction=0.05,
                    workloads=("quadratic_deep", "mnist_logreg"), all_cores=False),
    "laptop": Preset("the lecture's six plus AdamW, RAdam, Lion and Schedule-Free AdamW on every workload, "
                     "within an hour on 2 cores: 4 trials, 5 seeds, 10% of each budget",
                     LAPTOP_OPTIMIZERS, trials=4, seeds=5, fraction=0.1),
    "full": Preset("the protocol's defaults: 16 trials, 5 seeds, full budgets (for more cores or several machines)",
                   LAPTOP_OPTIMIZERS, trials=16, seeds=5, fraction=1.0),
}


def _core_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    return value


@dataclass
class BenchmarkConfig:
    """A benchmark's settings. Start from a preset with :meth:`from_preset`.

    ``trials``: trials per optimizer and workload (every optimizer gets exactly this many);
    ``budget``: ``"tuned"`` (Sobol trials over each optimizer's space) or ``"one-shot"``
    (one trial at the optimizer's defaults, constant learning rate; ``trials`` is then 1);
    ``seeds``: re-runs of the selected setting (seeds 1..seeds; the trials use seed 0);
    ``fraction``: the share of each workload's declared budget to run.
    Errors: ``ValueError`` naming the setting, before anything is created.
    """

    workloads: tuple[str, ...] = ()
    optimizers: tuple[str, ...] = LAPTOP_OPTIMIZERS
    trials: int = 16
    budget: str = "tuned"
    seeds: int = 5
    fraction: float = 1.0
    sampler_seed: int = 0
    preset: str | None = None
    out: str = "benchmark"
    storage: str | None = None  # Optuna's; default sqlite:///<out>/benchmark.db
    store: str | None = None  # the run store; default <out>/runs.sqlite
    workers: int = 1
    threads: int | None = None  # torch threads per worker; default cores // workers
    spaces: dict | None = None  # {optimizer: {param: (low, high)}}: bounds replacing the declared ones

    def __post_init__(self):
        from optimlab import optim
        from optimlab.benchmark import workloads as W

        self.workloads = tuple(self.workloads) or W.BUILTINS  # yours run when named
        self.optimizers = tuple(self.optimizers)
        if not self.optimizers:
            raise ValueError("optimizers must name at least one optimizer, got optimizers=()")
        for name in self.workloads:
            W.get(name)  # unknown: the known names and the nearest one
        for name in self.optimizers:
            optim.get(name)  # unknown: the registry's error, with a suggestion
        for label, values in (("workloads", self.workloads), ("optimizers", self.optimizers)):
            if len(set(values)) != len(values):
                raise ValueError(f"{label} lists a name twice: {label}={values}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be 'tuned' or 'one-shot', got budget={self.budget!r}")
        _check_int("trials", self.trials, 1)
        _check_int("seeds", self.seeds, 1)
        _check_int("sampler_seed", self.sampler_seed, 0)
        _check_int("workers", self.workers, 1)
        if self.budget == "one-shot":
            self.trials = 1
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not (0 < self.fraction <= 1 and math.isfinite(self.fraction)):
            raise ValueError(f"fraction must be in (0, 1], got fraction={self.fraction!r}")
        cores = _core_count()
        if self.workers > cores:
            raise ValueError(f"workers={self.workers}: this machine has {cores} cores, and parallel workers "
                             f"must not share cores (honest timing); use --workers {cores} or fewer")
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
            if self.threads * self.workers > cores:
                raise ValueError(f"threads={self.threads} x workers={self.workers} exceeds this machine's "
                                 f"{cores} cores: workers must not share cores")
        self.spaces = {o: {k: tuple(v) for k, v in r.items()} for o, r in (self.spaces or {}).items()}
        for name in self.spaces:
            if name not in self.optimizers:
                import difflib

                close = difflib.get_close_matches(name, self.optimizers, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"spaces: {name!r} is not one of the benchmark's optimizers "
                                 f"({', '.join(self.optimizers)}){hint}")
        for name in self.optimizers:
            self.space(name)  # a bad bound: the parameter and the value, before anything runs
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got preset={self.preset!r}")
        if self.storage is not None:
            from optimlab.sweep.runner import check_storage_url

            check_storage_url(self.storage)

    @classmethod
    def from_preset(cls, preset: str = "laptop", **overrides) -> "BenchmarkConfig":
        """The preset's settings, with ``overrides`` (None values ignored) on top."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got preset={preset!r}")
        p = PRESETS[preset]
        base = dict(workloads=p.workloads or (), optimizers=p.optimizers, trials=p.trials, seeds=p.seeds,
                    fraction=p.fraction, preset=preset, workers=_core_count() if p.all_cores else 1)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    # ------------------------------------------------------------------ derived
    @property
    def threads_per_worker(self) -> int:
        return self.threads or max(1, _core_count() // self.workers)

    @property
    def storage_url(self) -> str:
        from pathlib import Path

        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'benchmark.db'}"

    @property
    def store_path(self) -> str:
        from pathlib import Path

        return self.store or str(Path(self.out) / "runs.sqlite")

    def workload(self, name: str):
        """The workload ``name`` at this benchmark's budget fraction."""
        from optimlab.benchmark import workloads as W

        w = W.get(name)
        return w if self.fraction == 1 else w.scaled(self.fraction)

    def space(self, optimizer: str):
        """``optimizer``'s search space in this benchmark (:func:`optimlab.benchmark.space.space`)."""
        from optimlab.benchmark import space

        return space.space(optimizer, self.spaces.get(optimizer))

    def protocol(self) -> dict:
        """Everything that defines the results (JSON-safe): the input of :attr:`benchmark_id`."""
        from optimlab.benchmark import space

        return {"workloads": [self.workload(n).describe() for n in self.workloads],
                "optimizers": list(self.optimizers),
                "spaces": {o: space.describe(self.space(o)) for o in self.optimizers},
                "trials": self.trials, "budget": self.budget, "seeds": list(range(1, self.seeds + 1)),
                "sampler": f"optuna QMCSampler (scrambled Sobol), seed {self.sampler_seed}; trials at seed 0",
                "schedule": space.SCHEDULE, "fraction": self.fraction}

    @property
    def benchmark_id(self) -> str:
        if "_id" not in self.__dict__:  # describing the workloads reads their data once: computed once
            blob = json.dumps(self.protocol(), sort_keys=True, default=str)
            self.__dict__["_id"] = "bm-" + hashlib.sha1(blob.encode()).hexdigest()[:8]
        return self.__dict__["_id"]

    def with_(self, **changes) -> "BenchmarkConfig":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)
