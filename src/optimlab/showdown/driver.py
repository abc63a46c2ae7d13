"""Run the showdown: every row × seed a training run, resumable, results kept on disk.

Each finished run's history is written to ``<out>/runs/<key>.json``; a run in progress
checkpoints to ``<out>/checkpoints/<key>.pt``. Run the same command again after an
interruption: finished runs are read back, the interrupted one resumes from its checkpoint.
A run's key holds its recipe's fingerprint, so an edited recipe trains again.
Runs go here, one after another, or side by side in :mod:`optimlab.showdown.parallel`'s workers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from optimlab.showdown import parallel
from optimlab.showdown.runner import (ShowdownConfig, _atomic_json, _check_recipes, _finished, _subsets, recipes,
                                      run_key, run_one)


def plan_jobs(cfg: ShowdownConfig, pending: int, callbacks=()) -> tuple[int, int]:
    """(parallel runs, torch threads each). Auto: one run per core, up to the runs left.

    A small CNN uses one core better than two: on 2 cores two single-threaded runs side by
    side do about 1.4x the work of one run on both threads. Callbacks live in this
    process, so a showdown with callbacks runs here, one run at a time. On a GPU
    (``device`` resolving to CUDA) and ``jobs`` unset: one run at a time, here.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.jobs is None and _on_gpu(cfg):  # one GPU: the runs take turns on it, in this process
        return 1, torch.get_num_threads()
    jobs = cfg.jobs if cfg.jobs is not None else min(cores, pending)
    if callbacks or jobs <= 1 or pending <= 1:
        return 1, torch.get_num_threads()
    jobs = min(jobs, pending)
    return jobs, max(1, cores // jobs)


def _on_gpu(cfg: ShowdownConfig) -> bool:
    from optimlab.train._device import resolve_device

    return cfg.device is not None and resolve_device(cfg.device).type == "cuda"


def run_showdown(cfg: ShowdownConfig, *, quiet: bool = False, callbacks=()) -> dict:
    """Train every row × seed (skipping finished runs); return ``{table: {row: [result, ...]}}``.

    Runs go in parallel processes when ``cfg.jobs`` (default: one per core) allows; each
    run's result is the same whichever process trains it, given the same thread count.
    """
    out = Path(cfg.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    tables = recipes(cfg)
    ds, train, val = _subsets(cfg)
    plan = [(table, recipe, seed) for table, rows in tables.items() for recipe in rows for seed in range(cfg.seeds)]
    results_by_key: dict[str, dict] = {}
    for table, recipe, seed in plan:
        key = run_key(table, recipe, seed)
        result = _finished(cfg, key)
        if result is not None:  # the same recipe (its fingerprint is in the key); its words may be newer
            result = results_by_key[key] = {**result, "label": recipe.label, "recipe": recipe.text()}
            if not quiet:
                print(f"[{key}] finished earlier: val acc {result['history']['epochs'][-1].get('val_acc')}",
                      file=sys.stderr)
    pending = [job for job in plan if run_key(*job) not in results_by_key]
    total = -(-len(train[0]) // cfg.batch_size) * (1 if cfg.quick else cfg.epochs)
    _check_recipes({recipe.key + table: recipe for table, recipe, _ in pending}.values(), total)
    jobs, threads = plan_jobs(cfg, len(pending), callbacks)
    if jobs > 1:
        results_by_key.update(parallel.run_parallel(cfg, pending, train, val, ds.source, jobs=jobs,
                                                    threads=threads, quiet=quiet))
    else:
        for table, recipe, seed in pending:
            if not quiet:
                print(f"[{run_key(table, recipe, seed)}] {recipe.label}", file=sys.stderr)
            results_by_key[run_key(table, recipe, seed)] = run_one(
                cfg, table, recipe, seed, train, val, ds.source, quiet=quiet, callbacks=callbacks)
    results: dict = {table: {} for table in tables}  # "beyond" even when no row has a recipe: the report says so
    for table, recipe, seed in plan:
        results.setdefault(table, {}).setdefault(recipe.key, []).append(results_by_key[run_key(table, recipe, seed)])
    _atomic_json(out / "showdown.json", {"config": asdict(cfg), "showdown_id": cfg.showdown_id,
                                          "source": ds.source, "split": ds.split, "results": results})
    return results
