"""Two tiny benchmark workloads for the runner's tests (a regression and a classifier), registered on import.

:func:`main` runs the tiny benchmark of :func:`config` in one worker, slowly: the SIGKILL
test's child process (``python -c "from tests import benchmark_tiny; benchmark_tiny.main(OUT)"``;
imported, not run as ``__main__``, so that its workloads' declarations are the test's).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from optimlab.benchmark import workloads as W

SLOW = {"on": False}  # the SIGKILL test's child makes every step slow enough to be caught mid-trial


@functools.lru_cache(maxsize=None)
def _regression(test_shift: float = 0.0):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 1, generator=g)
    x = torch.randn(600, 6, generator=g)
    y = x @ w + 0.1 * torch.randn(600, 1, generator=g)
    y_test = y[500:] + test_shift
    return {"train": (x[:400], y[:400]), "val": (x[400:500], y[400:500]), "test": (x[500:], y_test)}


@functools.lru_cache(maxsize=None)
def _blobs(flip_test: bool = False):
    g = torch.Generator().manual_seed(1)
    centres = 2 * torch.randn(3, 5, generator=g)
    y = torch.randint(0, 3, (600,), generator=g)
    x = centres[y] + torch.randn(600, 5, generator=g)
    y_test = (y[500:] + 1) % 3 if flip_test else y[500:]
    return {"train": (x[:400], y[:400]), "val": (x[400:500], y[400:500]), "test": (x[500:], y_test)}


class _Slow(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if SLOW["on"]:
            import time

            time.sleep(0.2)
        return self.inner(x)


def _linear():
    return _Slow(nn.Linear(6, 1))


def _mlp():
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


TEST = {"shift": 0.0, "flip": False}  # what the test split looks like (the selection test changes it)


def regression_data():
    return _regression(TEST["shift"])


def blobs_data():
    return _blobs(TEST["flip"])


REGRESSION = W.Workload(name="tiny_regression", title="tiny regression", description="linear regression, 6 inputs",
                        model=_linear, data=regression_data, loss="mse", metric="loss", mode="min",
                        batch_size=40, steps=20, eval_every=5, source="test fixture")
BLOBS = W.Workload(name="tiny_blobs", title="tiny blobs", description="3 Gaussian blobs, an MLP",
                   model=_mlp, data=blobs_data, loss="cross_entropy", metric="accuracy", mode="max",
                   batch_size=40, steps=20, eval_every=5, source="test fixture")
for _w in (REGRESSION, BLOBS):
    W.register(_w, replace=True)


def config(out, storage=None, **kwargs):
    from optimlab.benchmark import BenchmarkConfig

    base = dict(workloads=("tiny_regression", "tiny_blobs"), optimizers=("adam", "momentum", "sgd"), trials=3,
                seeds=2, out=str(out), storage=storage, workers=1, threads=1)
    base.update(kwargs)
    return BenchmarkConfig(**base)


def main(out, storage=None):
    from optimlab.benchmark.runner import run_benchmark

    SLOW["on"] = True
    run_benchmark(config(out, storage), quiet=False)
