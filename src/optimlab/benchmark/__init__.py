"""The benchmark: a fair comparison of optimizers on several workloads, whose numbers can be traced.

>>> from optimlab import benchmark
>>> cfg = benchmark.BenchmarkConfig.from_preset("quick")            # doctest: +SKIP
>>> bid = benchmark.run_benchmark(cfg)                              # doctest: +SKIP
>>> benchmark.build_report(cfg.store_path, cfg.out, benchmark=bid)  # doctest: +SKIP

* :mod:`~optimlab.benchmark.workloads` — the problems: a small declaration each (model,
  data, loss, metric and direction, budget in steps, evaluation cadence); add your own
  with :func:`register_workload`.
* :mod:`~optimlab.benchmark.space` — each optimizer's search space, one table.
* :mod:`~optimlab.benchmark.config` — the protocol's settings, presets, the benchmark id.
* :mod:`~optimlab.benchmark.runner` — the trials on Optuna (SQLite or PostgreSQL), workers
  on their own cores, every run in the run store.
* :mod:`~optimlab.benchmark.measures` — test results with 95% intervals, targets,
  steps-to-target, tunability, learning-rate sensitivity, performance profiles.
* :mod:`~optimlab.benchmark.report` — the report, from the run store alone.

The protocol and its sources: ``docs/benchmark.md``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "BenchmarkConfig": ("optimlab.benchmark.config", "BenchmarkConfig"),
    "PRESETS": ("optimlab.benchmark.config", "PRESETS"),
    "Workload": ("optimlab.benchmark.workloads", "Workload"),
    "WORKLOADS": ("optimlab.benchmark.workloads", "WORKLOADS"),
    "register_workload": ("optimlab.benchmark.workloads", "register"),
    "get_workload": ("optimlab.benchmark.workloads", "get"),
    "run_benchmark": ("optimlab.benchmark.runner", "run_benchmark"),
    "build_report": ("optimlab.benchmark.report", "build_report"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'optimlab.benchmark' has no attribute {name!r}")
