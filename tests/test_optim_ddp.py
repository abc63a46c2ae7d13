"""Our optimizers under DistributedDataParallel (2 CPU processes, gloo) equal one big-batch process."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import optimlab.optim as oo

STEPS = 5


def _data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    return model, torch.randn(64, 6), torch.randn(64, 2)


def _train(model, opt, x, y):
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, x, y = _data()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    shard = slice(rank * 32, (rank + 1) * 32)
    _train(ddp, oo.NAdam(ddp.parameters(), lr=0.01, weight_decay=0.01), x[shard], y[shard])
    torch.save([p.detach() for p in model.parameters()], f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_processes_match_single_process_full_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    model, x, y = _data()
    _train(model, oo.NAdam(model.parameters(), lr=0.01, weight_decay=0.01), x, y)
    for a, b, single in zip(rank0, rank1, model.parameters()):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, single.detach(), rtol=1e-5, atol=1e-6)
