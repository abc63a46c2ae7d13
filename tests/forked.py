"""Run test processes by fork, safely for torch: one OpenMP thread across the fork, imports done once."""

from __future__ import annotations

import multiprocessing as mp

import torch


def run_forked(target, args_per_process: list[tuple], timeout: float = 300) -> list[int | None]:
    """Start ``target(*args)`` for every args tuple at once, wait for all; return the exit codes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no OpenMP pool in flight across the fork
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # torch's first optimizer imports dynamo: once, here
    try:
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=target, args=args) for args in args_per_process]
        for p in procs:  # all start at once (e.g. one creates a study, the other joins it)
            p.start()
        for p in procs:
            p.join(timeout=timeout)
    finally:
        torch.set_num_threads(threads)
    return [p.exitcode for p in procs]
