"""Showdown runs in parallel worker processes, with one live progress display here.

Each worker is a fresh (spawned) process with its own torch thread count; the training
data reach it once, through shared memory. Workers report progress through a queue; this
process draws one bar per run (a terminal) or prints each run's epoch lines (a log).

Ctrl-C: the workers ignore SIGINT and are stopped here; each run in progress keeps its
last checkpoint (written atomically every ``checkpoint_every`` steps and at each epoch's
end), so the same command resumes it and skips the finished ones.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch
import torch.multiprocessing as tmp

from optimlab.showdown.runner import run_key, run_one
from optimlab.train.progress import _fmt

_worker: dict = {}
_DONE = "done"


def _init_worker(threads: int, train, val, source: str, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    torch.set_num_threads(threads)
    _worker.update(train=train, val=val, source=source, queue=queue)


class _Reporter:
    """A fit callback sending this run's progress to the parent, at most every 0.25 s."""

    def __init__(self, key: str, queue):
        self.key, self.queue, self._last = key, queue, 0.0

    def on_step_end(self, trainer) -> None:
        now = time.monotonic()
        if now - self._last >= 0.25:
            self._last = now
            self.queue.put((self.key, "step", trainer.step))

    def on_epoch_end(self, trainer, row) -> None:
        self.queue.put((self.key, "epoch", (trainer.step, row["epoch"], _fmt(row))))


def _run_in_worker(cfg, table: str, recipe, seed: int) -> dict:
    """Train the parent's recipe itself (data, pickled), not one rebuilt from this process's modules:
    the run's key, made in the parent from its fingerprint, names what trains."""
    key, w = run_key(table, recipe, seed), _worker
    result = run_one(cfg, table, recipe, seed, w["train"], w["val"], w["source"], quiet=True,
                     callbacks=[_Reporter(key, w["queue"])])
    w["queue"].put((key, _DONE, result["history"]["epochs"][-1].get("val_acc")))
    return result


class _Display:
    """Bars on a terminal (rich), otherwise one line per epoch per run."""

    def __init__(self, runs: dict[str, tuple[str, int]], quiet: bool):
        self.quiet, self.progress, self.tasks = quiet, None, {}
        if quiet:
            return
        if sys.stderr.isatty():
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            except ImportError:
                return
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self.progress.start()
            for key, (label, total) in runs.items():
                self.tasks[key] = self.progress.add_task(f"{key} ({label})", total=total, info="waiting")

    def update(self, key: str, kind: str, payload) -> None:
        if self.quiet:
            return
        if kind == "step" and self.progress:
            self.progress.update(self.tasks[key], completed=payload, info="")
        elif kind == "epoch":
            step, epoch, text = payload
            if self.progress:
                self.progress.update(self.tasks[key], completed=step, info=f"epoch {epoch}: {text}")
            else:
                print(f"[{key}] epoch {epoch}: {text}", file=sys.stderr, flush=True)
        elif kind == _DONE and not self.progress:
            print(f"[{key}] finished: val acc {payload}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()


def run_parallel(cfg, pending, train, val, source: str, *, jobs: int, threads: int, quiet: bool) -> dict[str, dict]:
    """Train ``pending`` [(table, recipe, seed)] in ``jobs`` processes; return {run key: result}."""
    ctx = tmp.get_context("spawn")
    queue = ctx.Queue()
    steps = -(-len(train[0]) // cfg.batch_size) * (1 if cfg.quick else cfg.epochs)
    keys = {run_key(t, r, s): (r.label, steps) for t, r, s in pending}
    display = _Display(keys, quiet)
    if not quiet:
        print(f"{len(pending)} runs, {jobs} at a time, {threads} torch thread(s) each", file=sys.stderr)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                item = queue.get(timeout=0.1)
            except Exception:  # queue.Empty, or the queue closed under us
                continue
            display.update(*item)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, train, val, source, queue))
    results: dict[str, dict] = {}
    try:
        futures = {pool.submit(_run_in_worker, cfg, t, r, s): run_key(t, r, s) for t, r, s in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                results[futures[future]] = future.result()  # a worker's error surfaces here
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()  # checkpoints are atomic: each run resumes from its last one
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        time.sleep(0.2)  # let the last progress messages arrive
        stop.set()
        reader.join(timeout=2)
        display.close()
    pool.shutdown(wait=True)
    return results
