"""Data-parallel training on ``torch.distributed``: DDP and ZeRO, launched with ``torchrun``.

No home-made scheduler: ``torchrun`` starts one process per worker (on one
machine or many), ``torch.distributed`` (gloo on CPU, nccl on GPUs) averages
the gradients, and the optimlab trainer runs unchanged in every process.

* :class:`ShardedBatches` — each rank's share of every *global* batch, in the
  exact order the trainer would use in one process with the same seed and
  batch size (``fit(..., batch_size=B, seed=s)``): rank ``r`` of ``W`` gets
  rows ``r*B/W ... (r+1)*B/W`` of each global batch. Since DDP averages the
  ranks' gradients, and each rank's loss is a mean over an equal share, the
  averaged gradient is the single process's gradient of the whole batch, and
  the parameters follow the single-process run (to float rounding).
* :func:`fit` — wraps the model in ``DistributedDataParallel``, builds the
  optimizer (optionally ``ZeroRedundancyOptimizer(params, optimizer_class=<an
  optimlab optimizer>)``: each rank keeps the state of a shard of the
  parameters only), shards the data and calls :func:`optimlab.fit`. Only rank
  0 writes to the run store and prints.
* ``python -m optimlab.distributed`` — the trainer on MNIST / Fashion-MNIST /
  synthetic data, for ``torchrun``::

    # one machine, 4 processes
    torchrun --standalone --nproc-per-node 4 -m optimlab.distributed \\
        --dataset mnist --optimizer adam --epochs 5 --batch-size 256
    # two machines, 4 processes each: run on both (host0 reachable from host1)
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint host0:29400 --rdzv-id mnist1 -m optimlab.distributed --dataset mnist ...
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["ShardedBatches", "fit", "make_optimizer", "setup", "cleanup", "main"]


def setup(backend: str | None = None) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (env://); return ``(rank, world_size)``.

    Idempotent; ``backend`` defaults to nccl with CUDA, gloo otherwise. Outside
    ``torchrun`` (no ``WORLD_SIZE``) it does nothing and returns ``(0, 1)``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatches:
    """This rank's part of every global batch of in-memory ``(x, y)``, epoch after epoch.

    ``global_batch_size`` must be a multiple of ``world_size``; the last, short
    global batch is split evenly too when its size allows it, otherwise dropped
    on every rank (``drop_last`` says which happened). Iterating starts the next
    epoch (0, 1, ...); the order of epoch ``e`` is the trainer's own
    (``TensorBatches.order(seed, e)``).
    """

    def __init__(self, data, global_batch_size: int, *, rank: int, world_size: int, seed: int,
                 shuffle: bool = True, device=None):
        from optimlab.train import _data

        if global_batch_size % world_size:
            raise ValueError(f"the global batch size ({global_batch_size}) must be a multiple of the number "
                             f"of processes ({world_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.source = _data.TensorBatches(data, global_batch_size, shuffle=shuffle, device=device)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.global_batch_size = self.source.batch_size
        self.n = self.source.n
        tail = self.n % self.global_batch_size
        self.drop_last = bool(tail and tail % world_size)
        self.epoch = 0
        self.batch_size = self.global_batch_size // world_size
        self.dataset = None

    def __len__(self) -> int:
        return len(self.source) - (1 if self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        count = len(self)
        for i, (xb, yb) in enumerate(self.source.epoch(self.seed, epoch)):
            if i >= count:
                break
            share = len(xb) // self.world_size
            lo = self.rank * share
            yield xb[lo:lo + share], yb[lo:lo + share]


def make_optimizer(name_or_class, params, *, zero: bool = False, convention: str = "torch", **hyper):
    """An optimlab optimizer by name (or class) over ``params``; with ``zero=True`` wrapped in
    ``torch.distributed.optim.ZeroRedundancyOptimizer`` (state sharded over the ranks)."""
    from optimlab import optim

    cls = optim.get(name_or_class, convention) if isinstance(name_or_class, str) else name_or_class
    if zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(list(params), optimizer_class=cls, **hyper)
    return cls(params, **hyper)


def fit(model: nn.Module, optimizer, data, *, batch_size: int = 64, seed: int = 0, zero: bool = False,
        convention: str = "torch", hyper: dict[str, Any] | None = None, store=True, quiet: bool | None = None,
        **fit_kwargs):
    """:func:`optimlab.fit` in every process of a ``torchrun`` job (or alone, without one).

    ``model``: built identically on every rank (DDP broadcasts rank 0's weights
    anyway). ``optimizer``: an optimlab name or class (built here, after the DDP
    wrap, with ``hyper``; ``zero=True`` shards its state with ZeRO), or an
    optimizer already built over ``model``'s parameters. ``data``: in-memory
    tensors as for ``fit`` (``{"train": (x, y), "val": (x, y)}``, a Dataset...),
    sharded by :class:`ShardedBatches`; ``batch_size`` is the *global* batch.
    Rank 0 alone writes to ``store`` and prints (unless ``quiet``). Returns the
    rank's History (its training metrics are those of its shard; validation is
    on the whole set).
    """
    import optimlab
    from optimlab.train import _data

    rank, world = setup()
    train, val = _data.split_data(data, fit_kwargs.pop("val", None))
    device = next(model.parameters()).device
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp = model
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        opt = make_optimizer(optimizer, ddp.parameters(), zero=zero and world > 1, convention=convention,
                             **(hyper or {}))
    batches = ShardedBatches(train, batch_size, rank=rank, world_size=world, seed=seed, device=device)
    config = dict(fit_kwargs.pop("config", None) or {})
    config.update(world_size=world, global_batch_size=batch_size, zero=bool(zero and world > 1))
    return optimlab.fit(ddp, opt, batches, val=val, seed=seed, store=store if rank == 0 else False,
                        quiet=(rank != 0) if quiet is None else quiet, config=config, **fit_kwargs)


# --------------------------------------------------------------------------- torchrun entry point
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun ... -m optimlab.distributed",
                                description="Data-parallel training of the lectures' CNN (launch with torchrun).")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "synthetic"])
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--convention", default="torch", choices=["keras", "torch"])
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--hyper", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch (split over the processes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zero", action="store_true", help="ZeroRedundancyOptimizer: shard the optimizer state")
    p.add_argument("--backend", default=None, help="gloo (CPU, default) or nccl (GPUs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / local processes)")
    p.add_argument("--store", default=None, help="run store file (rank 0 writes; default: the user's store)")
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--save", default=None, help="write rank 0's final state_dict here")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from optimlab import models
    from optimlab.lrfind import parse_hyper
    from optimlab.sweep.data import load_dataset

    args = _parser().parse_args(argv)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local))
    rank, world = setup(args.backend)
    try:
        data = load_dataset(args.dataset, n_train=args.n_train)
        if torch.cuda.is_available() and args.backend != "gloo":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.manual_seed(args.seed)
        model = models.lecture_cnn()
        if torch.cuda.is_available() and args.backend != "gloo":
            model = model.cuda()
        hyper = parse_hyper(args.hyper)
        if args.lr is not None:
            hyper["lr"] = args.lr
        history = fit(model, args.optimizer, data, batch_size=args.batch_size, seed=args.seed, zero=args.zero,
                      convention=args.convention, hyper=hyper, epochs=args.epochs,
                      store=args.store if args.store else True, quiet=args.quiet or rank != 0,
                      name=f"ddp-{args.optimizer}-w{world}")
        if rank == 0:
            print(f"{world} process(es): {history!r}")
            if args.save:
                torch.save(model.state_dict(), args.save)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
