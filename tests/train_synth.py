"""Tiny synthetic problems for the training-loop tests: no network, no real data.

``blobs``: a linearly separable 3-class problem in 20 dimensions (a random
linear teacher), small enough that an epoch takes milliseconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Import this fixture into a test module: one torch thread (tiny ops on a shared
    machine stall on thread barriers; one thread is also the same arithmetic in
    every process) and a run store in tmp_path instead of the user's."""
    monkeypatch.setenv("OPTIMLAB_RUNS", str(tmp_path / "runs.sqlite"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(n: int = 512, n_val: int = 256, dim: int = 20, classes: int = 3, seed: int = 0, noise: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(dim, classes, generator=g)
    x = torch.randn(n + n_val, dim, generator=g)
    y = (x @ teacher + noise * torch.randn(n + n_val, classes, generator=g)).argmax(1)
    return (x[:n], y[:n]), (x[n:], y[n:])


def mlp(dim: int = 20, hidden: int = 32, classes: int = 3, seed: int = 0, depth: int = 1,
        act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), act()]
        width = hidden
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class StopAt:
    """A fit callback that stops training after optimizer step ``step`` (an interruption that a
    checkpoint resumes from)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.step == self.step:
            trainer.stop_training = True
