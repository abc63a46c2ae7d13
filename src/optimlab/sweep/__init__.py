"""Hyperparameter sweeps on Optuna: optimizer × learning rate × schedule × batch size × seed.

>>> from optimlab.sweep import SweepConfig, run_sweep, report        # doctest: +SKIP
>>> cfg = SweepConfig(out="sweep", trials=30, epochs=3, dataset="mnist")   # doctest: +SKIP
>>> run_sweep(cfg, workers=4)                                            # doctest: +SKIP

Each trial is one :func:`optimlab.fit` run (metrics into the run store
``<out>/runs.sqlite``), pruned from its per-epoch validation loss. The study
lives in Optuna's storage: one SQLite file by default (``--workers N``
processes share it), or a PostgreSQL URL shared by workers on many machines.
A restarted sweep continues its study. Command line: ``optimlab sweep``.
"""

from optimlab.sweep.runner import SCHEDULES, SweepConfig, best_per_optimizer, open_study, run_sweep, trials_table

__all__ = ["SweepConfig", "run_sweep", "open_study", "trials_table", "best_per_optimizer", "SCHEDULES"]
