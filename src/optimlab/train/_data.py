"""Where the batches come from: in-memory tensors sliced by index, or any DataLoader.

In-memory data are shuffled once per epoch with a permutation drawn from a
generator seeded by ``(seed, epoch)`` and batched by slicing that permutation
(``x.index_select(0, perm[i:i+b])``): no per-sample ``__getitem__`` calls, and
the order of any epoch can be rebuilt from the seed alone, which is what lets
a checkpoint resume in the middle of an epoch. An object that is already a
batch source (a callable ``epoch(seed, epoch, start)`` and ``__len__``, e.g.
``optimlab.benchmark.workloads.StepBatches``) is used as it is.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset

BatchSize = int | str


def batch_size_for(batch_size: BatchSize, n: int) -> int:
    """``"full"`` → n (batch gradient descent), ``1`` → stochastic, an integer → mini-batch."""
    if batch_size == "full":
        return n
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be 'full' or a positive integer, got batch_size={batch_size!r}")
    return min(batch_size, n)


def _pair(data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, TensorDataset):
        data = data.tensors
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"{what}: inputs and targets differ in length ({len(x)} vs {len(y)})")
        if len(x) == 0:
            raise ValueError(f"{what} is empty")
        return x, y
    raise ValueError(f"{what} must be (inputs, targets) tensors, a TensorDataset of two tensors, "
                     f"or a DataLoader; got {type(data).__name__}")


class TensorBatches:
    """Shuffled mini-batches of in-memory ``(x, y)`` by index slicing."""

    def __init__(self, data, batch_size: BatchSize, *, shuffle: bool = True, device=None):
        x, y = _pair(data, "data")
        if device is not None and x.device != torch.device(device):
            x, y = x.to(device), y.to(device)
        self.x, self.y = x, y
        self.n = len(x)
        self.batch_size = batch_size_for(batch_size, self.n)
        self.shuffle = shuffle and self.batch_size < self.n  # one full batch: order is irrelevant

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def order(self, seed: int, epoch: int) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        return torch.randperm(self.n, generator=g).to(self.x.device)

    def epoch(self, seed: int, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, ...`` of epoch ``epoch`` (0-based)."""
        perm, b, n = self.order(seed, epoch), self.batch_size, self.n
        x, y = self.x, self.y
        for i in range(start * b, n, b):
            if perm is None:
                yield x[i:i + b], y[i:i + b]
            else:
                idx = perm[i:i + b]
                yield x.index_select(0, idx), y.index_select(0, idx)


class LoaderBatches:
    """Batches from a ``DataLoader`` (or any re-iterable of ``(x, y)`` pairs).

    Resuming mid-epoch restores the RNG state of the epoch's start, starts the
    loader (a shuffling sampler draws its seed then) and skips the batches
    already done: exact for a single-process loader whose randomness comes
    from torch's generator (``DataLoader(..., shuffle=True)``).
    """

    def __init__(self, loader, device=None):
        self.loader = loader
        self.device = device
        try:
            self._len = len(loader)
        except TypeError:
            self._len = None
        self.n = len(loader.dataset) if isinstance(loader, DataLoader) and hasattr(loader.dataset, "__len__") else None
        self.batch_size = getattr(loader, "batch_size", None)

    def __len__(self) -> int:
        if self._len is None:
            raise TypeError("this loader has no length")
        return self._len

    def epoch(self, seed: int, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = iter(self.loader)
        for _ in range(start):
            next(it)
        for batch in it:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ValueError(f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}")
            xb, yb = batch
            if self.device is not None:
                xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            yield xb, yb


def is_batch_source(data) -> bool:
    """Whether ``data`` already serves batches the way fit reads them: a callable
    ``epoch(seed, epoch, start=0)`` and ``__len__`` (batches per epoch), and not a
    DataLoader, tuple, list or TensorDataset."""
    return (not isinstance(data, (DataLoader, tuple, list, TensorDataset))
            and callable(getattr(data, "epoch", None)) and callable(getattr(data, "__len__", None)))


def batches(data, batch_size: BatchSize, *, shuffle: bool = True, device=None):
    """The right batch source for ``data``: a batch source (``epoch`` and ``__len__``) or a
    DataLoader as it is, tensors by slicing."""
    if is_batch_source(data):
        return data
    if isinstance(data, DataLoader) or (hasattr(data, "__iter__") and not isinstance(data, (tuple, list, TensorDataset))):
        return LoaderBatches(data, device)
    return TensorBatches(data, batch_size, shuffle=shuffle, device=device)


def groups(source, k: int) -> Iterator[list]:
    """The batches of ``source`` in lists of ``k`` (the micro-batches of one optimizer step with
    gradient accumulation); the last list is shorter when the batches do not divide by ``k``."""
    it = iter(source)
    while True:
        group = list(itertools.islice(it, k))
        if not group:
            return
        yield group


def split_data(data, val):
    """``(train, val)`` from ``data``: an optimlab ``Dataset`` (uses its ``.val``), a dict with
    ``"train"``/``"val"``, or the training data itself with ``val`` given separately."""
    if hasattr(data, "train") and hasattr(data, "val") and not isinstance(data, DataLoader):
        return data.train, (data.val if val is None else val)
    if isinstance(data, dict):
        unknown = set(data) - {"train", "val"}
        if "train" not in data or unknown:
            raise ValueError(f"a data dict needs 'train' (and optionally 'val'), got keys {sorted(data)}")
        return data["train"], data.get("val", val)
    return data, val


@torch.no_grad()
def evaluate(model, data, loss_fn, *, batch_size: int = 256, device=None,
             autocast=None) -> tuple[float, float | None]:
    """Mean loss and accuracy (None when the outputs are not class scores) over ``data``.

    No autograd graph is built. ``autocast``: a function returning a context to run each
    forward pass and loss in (``fit``'s precision), or None. Batches of a few hundred keep a small network's activations
    in cache on a CPU (the lecture CNN evaluates 3x faster at 256 than at 2000).
    """
    was_training = model.training
    model.eval()
    try:
        source = batches(data, batch_size, shuffle=False, device=device)
        total = torch.zeros((), dtype=torch.float64)
        correct, count, classify = 0, 0, True
        for xb, yb in source.epoch(0, 0):
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(xb)
                loss = loss_fn(out, yb)
            total += loss.double().cpu() * len(yb)
            classify = classify and out.dim() == 2 and yb.dim() == 1 and not yb.is_floating_point()
            if classify:
                correct += int((out.argmax(1) == yb).sum())
            count += len(yb)
    finally:
        model.train(was_training)
    return float(total) / max(count, 1), (correct / count if classify and count else None)
