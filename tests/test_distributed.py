"""Data-parallel training with 2 real processes (torchrun, gloo on CPU): the trainer under DDP and
under ZeroRedundancyOptimizer with optimlab optimizer classes. Parameters stay identical across ranks
and equal a single-process run with the same global batch (to float tolerance).

This file is also the worker script that torchrun starts (see ``__main__`` below).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.forked import run_forked

CASES = {  # name -> (optimlab optimizer, hyperparameters)
    "momentum": ("sgd", {"lr": 0.05, "momentum": 0.9}),
    "adam": ("adam", {"lr": 0.01}),
    "adagrad": ("adagrad", {"lr": 0.1}),
}
EPOCHS, GLOBAL_BATCH, SEED = 2, 32, 3
ROOT = Path(__file__).resolve().parents[1]


def _data():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(10, 3, generator=g)
    x = torch.randn(320, 10, generator=g)
    y = (x @ teacher).argmax(1)
    return {"train": (x[:256], y[:256]), "val": (x[256:], y[256:])}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _worker(out: Path) -> None:
    from optimlab import distributed

    torch.set_num_threads(1)
    rank, world = distributed.setup("gloo")
    assert world == 2
    try:
        for key, (name, hyper) in CASES.items():
            for zero in (False, True):
                model = _model()
                h = distributed.fit(model, name, _data(), batch_size=GLOBAL_BATCH, seed=SEED, zero=zero, hyper=hyper,
                                    epochs=EPOCHS, store=False, quiet=True)
                assert h.status == "completed" and len(h.epochs) == EPOCHS
                if zero:
                    opt_type = type(distributed.make_optimizer(name, [torch.zeros(1, requires_grad=True)]))
                    assert h.config["optimizer"] == "ZeroRedundancyOptimizer", h.config["optimizer"]
                    assert opt_type.__module__.startswith("optimlab.optim")
                torch.save({"params": [p.detach().clone() for p in model.parameters()],
                            "steps": h.epochs[-1]["step"], "val_loss": h.epochs[-1]["val_loss"]},
                           out / f"{key}-{int(zero)}-rank{rank}.pt")
    finally:
        distributed.cleanup()


def _forked_rank(rank: int, port: int, out: str) -> None:
    # what torchrun sets for each process (env:// rendezvous), then the same worker code
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _worker(Path(out))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Two real processes. Forked rather than started by torchrun so that they inherit the
    imported torch (a fresh interpreter pays 5-20 s of imports on a busy 2-core machine); the
    torchrun command of the README runs the same code: ``torchrun --standalone --nproc-per-node 2
    tests/test_distributed.py OUT`` (this file's ``__main__``)."""
    import socket

    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_forked(_forked_rank, [(r, port, str(out)) for r in range(2)]) == [0, 0]
    return out


@pytest.mark.parametrize("zero", [False, True], ids=["ddp", "zero"])
@pytest.mark.parametrize("key", list(CASES))
def test_two_processes_equal_one_process_with_the_global_batch(ranks, key, zero):
    import optimlab
    from optimlab import optim

    r0, r1 = (torch.load(ranks / f"{key}-{int(zero)}-rank{r}.pt") for r in (0, 1))
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b), "the ranks' parameters differ"
    name, hyper = CASES[key]
    torch.set_num_threads(1)
    model = _model()
    h = optimlab.fit(model, optim.create(name, model.parameters(), **hyper), _data(), epochs=EPOCHS,
                     batch_size=GLOBAL_BATCH, seed=SEED, store=False, quiet=True)
    assert r0["steps"] == h.epochs[-1]["step"] == EPOCHS * 256 // GLOBAL_BATCH
    start = list(_model().parameters())
    for a, single, p0 in zip(r0["params"], model.parameters(), start):
        assert not torch.allclose(single.detach(), p0.detach())  # it trained
        torch.testing.assert_close(a, single.detach(), rtol=1e-5, atol=1e-6)
    assert abs(r0["val_loss"] - h.epochs[-1]["val_loss"]) < 1e-5


def test_sharded_batches_split_every_global_batch_evenly():
    from optimlab.distributed import ShardedBatches
    from optimlab.train import _data

    x, y = torch.arange(100).float().unsqueeze(1), torch.arange(100)
    shards = [ShardedBatches((x, y), 20, rank=r, world_size=4, seed=1) for r in range(4)]
    single = list(_data.TensorBatches((x, y), 20).epoch(1, 0))
    parts = [list(s) for s in shards]
    assert all(len(p) == len(single) == 5 for p in parts)
    for i, (_, yb) in enumerate(single):
        assert torch.equal(torch.cat([p[i][1] for p in parts]), yb)
    again = [yb for _, yb in shards[0]]  # the next epoch reshuffles
    assert not all(torch.equal(a, p[1]) for a, p in zip(again, parts[0]))
    with pytest.raises(ValueError, match="multiple"):
        ShardedBatches((x, y), 10, rank=0, world_size=3, seed=0)


if __name__ == "__main__":  # a torchrun worker
    sys.path.insert(0, str(ROOT / "src"))
    _worker(Path(sys.argv[1]))
