"""The benchmark's workloads: training problems with verified data and a budget in optimizer steps.

A :class:`Workload` declares one problem — a model factory, its data (train / val / test
tensors), the loss, the metric compared between optimizers (on val and test) and its
direction, the batch size, the budget ``steps`` and how often the validation set is
evaluated (``eval_every`` steps). :func:`get` looks one up by name, :func:`register` adds
your own::

    >>> from optimlab.benchmark import workloads as W
    >>> w = W.get("mnist_cnn")                                   # doctest: +SKIP
    >>> torch.manual_seed(0); model = w.model()                  # doctest: +SKIP
    >>> data = w.data()                                          # doctest: +SKIP
    >>> fit(model, opt, {"train": w.batches(data["train"]), "val": data["val"]},
    ...     epochs=w.steps // w.eval_every, batch_size=w.batch_size, loss=w.loss)  # doctest: +SKIP
    >>> w.evaluate(model, "test")["metric"]                      # doctest: +SKIP

Training batches come from :class:`StepBatches`: ``fit``'s "epoch" is ``eval_every`` steps of
an endless stream of shuffled passes over the training set, so fit evaluates every
``eval_every`` steps whatever the training set's size, and a checkpoint resumes mid-"epoch"
bit for bit.

Budgets: one trial is ``steps`` optimizer steps plus ``steps / eval_every`` validation
passes. Measured with ``optimlab.fit`` (Adam, monitor on, no store) on this project's 2-core
virtual machine, one torch thread, data already loaded; "one trial" is the range of 2-4 runs,
the low end on an idle machine, the high end with the other core busy (as when two benchmark
workers run side by side):

    ==============  ==========  =====  =====  =====  ============  =========
    workload        batch size  steps  every  evals  val examples  one trial
    ==============  ==========  =====  =====  =====  ============  =========
    mnist_cnn       64          4000   400    10     10,000        34-43 s
    mnist_logreg    128         6000   500    12     10,000        5-7 s
    fmnist_mlp      128         8000   800    10     10,000        34-49 s
    fmnist_2c2d     128         1000   125    8      5,000         52-61 s
    mnist_vae       64          6000   500    12     10,000        24-42 s
    quadratic_deep  128         2000   200    10     2,000         1-2 s
    ==============  ==========  =====  =====  =====  ============  =========
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from optimlab.benchmark import nets

__all__ = ["BUILTINS", "WORKLOADS", "ImageData", "QuadraticData", "StepBatches", "Workload", "get", "mean_output",
           "names", "register"]

METRICS = ("accuracy", "loss")
MODES = ("max", "min")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
EVAL_BATCH_SIZE = 256  # fit's default eval_batch_size: evaluate() sees the batches fit's validation sees


def mean_output(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss of models whose output is already each sample's loss ``(N,)``: its mean (the
    target is unused). A module-level function, so that a workload pickles into worker processes."""
    return out.mean()


# ------------------------------------------------------------------ batches
class StepBatches:
    """Training batches for ``optimlab.fit`` in "epochs" of ``chunk`` optimizer steps.

    The batches form one endless stream that walks through the training set in shuffled
    passes: pass ``p`` visits the examples in the order
    ``torch.randperm(n, generator=torch.Generator().manual_seed((seed * 1_000_003 + p) % 2**63))``
    and is cut into ``n // batch_size`` batches of exactly ``batch_size`` examples; the
    remainder of each pass (``n % batch_size`` examples, different ones each pass) is dropped,
    so every batch has the same size and no batch straddles two passes. Stream batch ``b`` is
    batch ``b % (n // batch_size)`` of pass ``b // (n // batch_size)``. "Epoch" ``e`` is stream
    batches ``e·chunk … e·chunk + chunk − 1``, whatever the pass boundaries.

    Everything follows from ``(seed, epoch)``: ``epoch(seed, e, start)`` rebuilds any batch
    without state, which is what lets fit resume mid-"epoch" bit for bit.

    Args:
        train: ``(x, y)`` tensors of equal length (or a ``TensorDataset`` of two).
        batch_size: examples per batch, ``1 <= batch_size <= n``.
        chunk: batches per "epoch" (fit evaluates after each one): a positive int.
        device: move ``x`` and ``y`` there once (default: leave them where they are).

    Raises:
        ValueError: ``train`` is not two equal-length non-empty tensors, or a bad
            ``batch_size`` / ``chunk``.
    """

    shuffle = True

    def __init__(self, train, batch_size: int, chunk: int, *, device=None):
        if isinstance(train, torch.utils.data.TensorDataset):
            train = train.tensors
        if not (isinstance(train, (tuple, list)) and len(train) == 2
                and all(isinstance(t, torch.Tensor) for t in train)):
            raise ValueError(f"train must be (inputs, targets) tensors, got {type(train).__name__}")
        x, y = train
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"train: inputs and targets must be non-empty and of equal length, "
                             f"got {len(x)} and {len(y)}")
        if device is not None:
            x, y = x.to(device), y.to(device)
        self.x, self.y, self.n = x, y, len(x)
        for key, value in (("batch_size", batch_size), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {key}={value!r}")
        if batch_size > self.n:
            raise ValueError(f"batch_size={batch_size} is larger than the training set ({self.n} examples)")
        self.batch_size, self.chunk = batch_size, chunk
        self.per_pass = self.n // batch_size  # batches per pass
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.chunk

    def __repr__(self) -> str:
        return f"StepBatches(n={self.n}, batch_size={self.batch_size}, chunk={self.chunk})"

    def order(self, seed: int, p: int) -> torch.Tensor:
        """The permutation of pass ``p`` (0-based) of the stream of ``seed``, on ``x``'s device."""
        if self._cached is not None and self._cached[0] == (seed, p):
            return self._cached[1]
        g = torch.Generator().manual_seed((seed * 1_000_003 + p) % (2**63))
        perm = torch.randperm(self.n, generator=g).to(self.x.device)
        self._cached = ((seed, p), perm)
        return perm

    def indices(self, seed: int, b: int) -> torch.Tensor:
        """The example indices of stream batch ``b`` (0-based), ``(batch_size,)`` int64."""
        p, i = divmod(b, self.per_pass)
        return self.order(seed, p)[i * self.batch_size:(i + 1) * self.batch_size]

    def epoch(self, seed: int, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, …, chunk−1`` of "epoch" ``epoch`` (0-based) as ``(xb, yb)``:
        stream batches ``epoch·chunk + start …``."""
        first = epoch * self.chunk
        for b in range(first + start, first + self.chunk):
            idx = self.indices(seed, b)
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


# --------------------------------------------------------------------- data
@functools.lru_cache(maxsize=None)
def _images(dataset: str, val_size: int | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from optimlab import data

    ds = data.load(dataset)
    xv, yv = ds.val
    if val_size is not None:
        xv, yv = xv[:val_size], yv[:val_size]
    return {"train": ds.train, "val": (xv, yv), "test": ds.test}


@dataclass(frozen=True)
class ImageData:
    """MNIST or Fashion-MNIST through :func:`optimlab.data.load` (SHA-256-verified), memoised per process.

    Calling it returns ``{"train", "val", "test"}`` of ``(images, labels)``: images float32
    ``(N, 1, 28, 28)`` in [0, 1], labels int64 ``(N,)`` (shared by every call: do not modify
    them in place). Train: official training images
    [0, 50,000); val: the first ``val_size`` (default all 10,000) of official training images
    [50,000, 60,000), in file order; test: the official test set (10,000).
    """

    dataset: str
    val_size: int | None = None

    def __call__(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return dict(_images(self.dataset, self.val_size))

    def describe(self) -> dict:
        """Sizes and source, without loading anything."""
        n_val = 10_000 if self.val_size is None else self.val_size
        return {"train": 50_000, "val": n_val, "test": 10_000, "shape": [1, 28, 28],
                "source": f"optimlab.data.load({self.dataset!r}), SHA-256-verified: train = official training "
                          f"images [0, 50,000); val = official training images [50,000, {50_000 + n_val:,}); "
                          "test = official test set"}


@functools.lru_cache(maxsize=None)
def _quadratic_samples(dim: int, sizes: tuple[int, int, int], std: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in zip(("train", "val", "test"), sizes):
        out[split] = (std * torch.randn(n, dim, generator=g), torch.zeros(n))
    return out


@dataclass(frozen=True)
class QuadraticData:
    """The noisy quadratic's "data": fixed draws ``x ~ N(0, std²·I)`` of dimension ``dim``.

    Calling it returns ``{"train", "val", "test"}`` of ``(x, y)``: ``x`` float32 ``(N, dim)``,
    drawn in that order from ``torch.Generator().manual_seed(seed)``; ``y`` float32 zeros ``(N,)``
    (unused: the model's output is the loss). Memoised per process.
    """

    dim: int = 100
    sizes: tuple[int, int, int] = (10_000, 2_000, 2_000)
    std: float = 1.0
    seed: int = 0

    def __call__(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return dict(_quadratic_samples(self.dim, tuple(self.sizes), float(self.std), self.seed))

    def describe(self) -> dict:
        return {"train": self.sizes[0], "val": self.sizes[1], "test": self.sizes[2], "shape": [self.dim],
                "source": f"x ~ N(0, {self.std:g}^2 I_{self.dim}) from torch.Generator().manual_seed({self.seed}): "
                          "train, val, test drawn in that order"}


@functools.lru_cache(maxsize=None)
def _quadratic_hessian(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return nets.deep_quadratic_hessian(dim, seed=seed)


@dataclass(frozen=True)
class QuadraticModel:
    """Builds :class:`optimlab.benchmark.nets.NoisyQuadratic` with the fixed Hessian of
    :func:`optimlab.benchmark.nets.deep_quadratic_hessian` (``dim``, ``seed``)."""

    dim: int = 100
    seed: int = 42

    def __call__(self) -> nets.NoisyQuadratic:
        return nets.NoisyQuadratic(_quadratic_hessian(self.dim, self.seed)[0])

    def hessian(self) -> torch.Tensor:
        """Q as the model holds it (float32, ``(dim, dim)``)."""
        return _quadratic_hessian(self.dim, self.seed)[0].float()


# ----------------------------------------------------------------- workload
def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")


def _qualname(obj) -> str:
    if isinstance(obj, functools.partial):
        return f"partial({_qualname(obj.func)})"
    name = getattr(obj, "__qualname__", None)
    if name is None:  # an instance of a callable class: its repr (a dataclass's shows its settings)
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))
    return f"{getattr(obj, '__module__', '')}.{name}".lstrip(".")


@dataclass(frozen=True)
class Workload:
    """One benchmark problem: what is trained, on what, for how long, and what is compared.

    Fields:
        name: registry key, letters, digits and ``_``, starting with a letter (``"mnist_cnn"``).
        title: a short label for tables. description: what it is (one or two sentences).
        model: builds a fresh model (the caller seeds torch first).
        data: returns ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` tensors (memoised).
        loss: ``optimlab.fit``'s ``loss`` (a name such as ``"cross_entropy"``, or a callable
            ``(outputs, targets) -> scalar``).
        metric: ``"accuracy"`` or ``"loss"`` — the value compared, on val and test.
        mode: ``"max"`` or ``"min"`` — the better direction of ``metric``.
        batch_size: examples per optimizer step. steps: the budget in optimizer steps.
        eval_every: optimizer steps between validation evaluations; divides ``steps``.
        optimum: the best attainable value of the metric, where it is known (else None).
        source: the paper or benchmark it follows.

    Raises:
        ValueError: from ``__post_init__``, naming the field and value, for a bad name,
            metric, mode, loss, non-callable model / data, a non-positive ``batch_size`` /
            ``steps`` / ``eval_every``, or ``steps % eval_every != 0``.
    """

    name: str
    title: str
    description: str
    model: Callable[[], nn.Module]
    data: Callable[[], dict]
    loss: str | Callable
    metric: str
    mode: str
    batch_size: int
    steps: int
    eval_every: int
    optimum: float | None = None
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name must be letters, digits and '_' starting with a letter, got name={self.name!r}")
        for key in ("title", "description", "source"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} must be a string, got {key}={getattr(self, key)!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got metric={self.metric!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got mode={self.mode!r}")
        for key in ("model", "data"):
            if not callable(getattr(self, key)):
                raise ValueError(f"{key} must be a callable, got {key}={getattr(self, key)!r}")
        from optimlab.train.loop import LOSSES

        if isinstance(self.loss, str) and self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got loss={self.loss!r}")
        if not isinstance(self.loss, str) and not callable(self.loss):
            raise ValueError(f"loss must be a name or a callable(outputs, targets), got loss={self.loss!r}")
        for key in ("batch_size", "steps", "eval_every"):
            _positive_int(key, getattr(self, key))
        if self.steps % self.eval_every:
            raise ValueError(f"steps must be a multiple of eval_every, got steps={self.steps}, "
                             f"eval_every={self.eval_every}")
        if self.optimum is not None:
            if isinstance(self.optimum, bool) or not isinstance(self.optimum, (int, float)) \
                    or not math.isfinite(self.optimum):
                raise ValueError(f"optimum must be a finite number or None, got optimum={self.optimum!r}")
            object.__setattr__(self, "optimum", float(self.optimum))

    # ------------------------------------------------------------ budget
    @property
    def evaluations(self) -> int:
        """Validation evaluations per trial: ``steps // eval_every``."""
        return self.steps // self.eval_every

    def scaled(self, fraction: float) -> Workload:
        """This workload with its budget times ``fraction`` (a smoke run, a quick look).

        ``eval_every`` becomes ``max(1, round(eval_every·fraction))`` and the number of
        evaluations ``round(steps·fraction / eval_every)``, at least 1 — and at least 2 when
        the scaled budget has 2 steps or more (then ``eval_every`` is halved as needed); ``steps``
        is their product, so it stays a multiple of ``eval_every`` (within one ``eval_every`` of
        ``steps·fraction``). ``fraction == 1`` returns the workload unchanged.

        Raises:
            ValueError: ``fraction`` not a number in (0, 1].
        """
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"fraction must be a number in (0, 1], got fraction={fraction!r}")
        if fraction == 1:
            return self
        target = max(1, round(self.steps * fraction))
        every = min(max(1, round(self.eval_every * fraction)), target)
        count = max(1, round(target / every))
        if count < 2 <= target:
            count, every = 2, target // 2
        return dataclasses.replace(self, steps=count * every, eval_every=every)

    # ------------------------------------------------------------ identity
    def describe(self) -> dict:
        """The declaration as JSON-safe values, deterministic (it enters the benchmark's identity).

        Every field but the callables, with ``loss`` as its name (a callable's qualified name),
        plus ``"model"``: ``{"class", "parameters", "factory"}`` (built once under a forked RNG,
        so the caller's random state is untouched) and ``"data"``: the splits' sizes and
        source (from ``data.describe()`` where the data object has one, without loading;
        otherwise the data are loaded and their sizes reported).
        """
        with torch.random.fork_rng(devices=[]):
            model = self.model()
        out = {
            "name": self.name, "title": self.title, "description": self.description,
            "loss": self.loss if isinstance(self.loss, str) else _qualname(self.loss),
            "metric": self.metric, "mode": self.mode, "batch_size": self.batch_size, "steps": self.steps,
            "eval_every": self.eval_every, "optimum": self.optimum, "source": self.source,
            "model": {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                      "factory": _qualname(self.model)},
            "data": self._describe_data(),
        }
        return json.loads(json.dumps(out))  # JSON-safe: fails loudly here, not in the store

    def _describe_data(self) -> dict:
        if callable(getattr(self.data, "describe", None)):
            return self.data.describe()
        splits = self.data()
        out = {k: len(splits[k][1]) for k in ("train", "val", "test") if k in splits}
        out["shape"] = list(splits["train"][0].shape[1:])
        out["source"] = _qualname(self.data)
        return out

    # ------------------------------------------------------------ training
    def batches(self, train, *, device=None) -> StepBatches:
        """The training-batch source for ``optimlab.fit``: ``StepBatches(train, batch_size,
        eval_every)``, so fit with ``epochs=steps // eval_every`` runs the budget and evaluates
        every ``eval_every`` steps. fit uses a batch source as it is, without moving it: give
        ``device`` (the model's) to train off the CPU."""
        return StepBatches(train, self.batch_size, self.eval_every, device=device)

    def loss_fn(self) -> Callable:
        """``loss`` as a function ``(outputs, targets) -> scalar``."""
        if isinstance(self.loss, str):
            from optimlab.train.loop import LOSSES

            return LOSSES[self.loss]
        return self.loss

    def evaluate(self, model: nn.Module, split) -> dict:
        """``{"loss", "accuracy", "metric"}`` of ``model`` on ``split``: ``"train"``, ``"val"``,
        ``"test"`` (of ``data()``) or an ``(x, y)`` pair.

        The mean loss per example and the accuracy (None when the outputs are not class
        scores), in batches of 256 (fit's default for validation) on the model's device, in eval
        mode with no autograd graph; the model's mode is restored. ``metric`` is the one of
        the two this workload compares.

        Raises:
            ValueError: an unknown split name, or ``metric == "accuracy"`` and the outputs are
                not class scores.
        """
        from optimlab.train import _data

        if isinstance(split, str):
            splits = self.data()
            if split not in splits:
                raise ValueError(f"split must be one of {sorted(splits)} or an (x, y) pair, got split={split!r}")
            split = splits[split]
        device = next(iter(model.parameters()), torch.empty(0)).device
        loss, accuracy = _data.evaluate(model, split, self.loss_fn(), batch_size=EVAL_BATCH_SIZE, device=device)
        if self.metric == "accuracy" and accuracy is None:
            raise ValueError(f"workload {self.name!r} compares accuracy, but the model's outputs are not class scores")
        return {"loss": loss, "accuracy": accuracy, "metric": accuracy if self.metric == "accuracy" else loss}


# ----------------------------------------------------------------- registry
WORKLOADS: dict[str, Workload] = {}


def register(workload: Workload, *, replace: bool = False) -> Workload:
    """Add ``workload`` to :data:`WORKLOADS` under its name; returns it.

    Raises:
        ValueError: not a :class:`Workload`, or the name is taken and ``replace`` is False.
    """
    if not isinstance(workload, Workload):
        raise ValueError(f"register needs a Workload, got {type(workload).__name__}")
    if workload.name in WORKLOADS and not replace:
        raise ValueError(f"a workload named {workload.name!r} is already registered; "
                         "pass replace=True to replace it")
    WORKLOADS[workload.name] = workload
    return workload


def get(name: str) -> Workload:
    """The registered workload ``name``.

    Raises:
        ValueError: unknown name; the message suggests the nearest names and lists all.
    """
    if isinstance(name, str) and name in WORKLOADS:
        return WORKLOADS[name]
    close = difflib.get_close_matches(str(name), list(WORKLOADS), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    raise ValueError(f"unknown workload {name!r}{hint} known: {', '.join(WORKLOADS)}")


def names() -> list[str]:
    """The registered workloads' names, built-ins first in their fixed order."""
    return list(WORKLOADS)


def _lecture_cnn() -> nn.Module:
    from optimlab.models import lecture_cnn

    return lecture_cnn()


def _logistic_regression() -> nn.Module:
    return nets.LogisticRegression(784, 10)


def _fmnist_mlp() -> nn.Module:
    return nets.MLP(784, (256, 256), 10)


def _fmnist_2c2d() -> nn.Module:
    return nets.TwoC2D(16, 32, 256, 10)


def _mnist_vae() -> nn.Module:
    return nets.VAE(784, 256, 8)


_QUADRATIC = QuadraticModel(dim=100, seed=42)
_QUADRATIC_DATA = QuadraticData(dim=100, sizes=(10_000, 2_000, 2_000), std=1.0, seed=0)


def _quadratic_optimum() -> float:
    """The expected loss's minimum ``½·std²·tr(Q)``, at θ = 0 (E[x xᵀ] = std²·I), to 10
    significant digits: the last bits of Q may differ between BLAS builds, and the optimum
    enters ``describe()``, which must be the same on every machine."""
    value = 0.5 * _QUADRATIC_DATA.std ** 2 * float(_QUADRATIC.hessian().double().trace())
    return float(f"{value:.10g}")


for _w in (
    Workload(
        name="mnist_cnn", title="Lecture CNN · MNIST",
        description="The lectures' showdown CNN (conv 32 3x3, max-pool, dropout 0.25, dense 10; "
                    "optimlab.models.lecture_cnn) on MNIST digits: a small non-convex image classifier.",
        model=_lecture_cnn, data=ImageData("mnist"), loss="cross_entropy", metric="accuracy", mode="max",
        batch_size=64, steps=4000, eval_every=400,
        source="the lectures' Keras MNIST optimizer comparison (batch 64)"),
    Workload(
        name="mnist_logreg", title="Logistic regression · MNIST",
        description="Multinomial logistic regression (flatten, Linear(784, 10)) on MNIST: a convex problem; "
                    "the metric is the convex objective itself, the validation cross-entropy.",
        model=_logistic_regression, data=ImageData("mnist"), loss="cross_entropy", metric="loss", mode="min",
        batch_size=128, steps=6000, eval_every=500,
        source="DeepOBS mnist_logreg (Schneider et al. 2019), batch 128"),
    Workload(
        name="fmnist_mlp", title="MLP · Fashion-MNIST",
        description="A ReLU MLP 784-256-256-10 on Fashion-MNIST clothing images: a non-convex fully "
                    "connected classifier.",
        model=_fmnist_mlp, data=ImageData("fashion-mnist"), loss="cross_entropy", metric="accuracy", mode="max",
        batch_size=128, steps=8000, eval_every=800,
        source="DeepOBS fmnist_mlp (Schneider et al. 2019), narrowed from 1000-500-100 to 256-256, batch 128"),
    Workload(
        name="fmnist_2c2d", title="2c2d CNN · Fashion-MNIST",
        description="DeepOBS's 2c2d convolutional network (two 5x5 'same' conv + ReLU + max-pool layers, "
                    "a dense ReLU layer, dense 10) on Fashion-MNIST, narrowed from widths 32/64/1024 to "
                    "16/32/256 to fit a one-CPU-minute budget. Validation on the first 5,000 held-out images.",
        model=_fmnist_2c2d, data=ImageData("fashion-mnist", 5_000), loss="cross_entropy", metric="accuracy",
        mode="max", batch_size=128, steps=1000, eval_every=125,
        source="DeepOBS fmnist_2c2d (Schneider et al. 2019), batch 128; widths 16/32/256 instead of 32/64/1024"),
    Workload(
        name="mnist_vae", title="VAE · MNIST",
        description="A variational auto-encoder (MLP encoder 784-256-2x8, decoder 8-256-784, Bernoulli "
                    "likelihood) on MNIST: unsupervised, stochastic objective; the metric is the negative "
                    "ELBO in nats per image, evaluated with fixed-seed latent noise.",
        model=_mnist_vae, data=ImageData("mnist"), loss=mean_output, metric="loss", mode="min",
        batch_size=64, steps=6000, eval_every=500,
        source="after DeepOBS mnist_vae (Schneider et al. 2019; Kingma & Welling 2014), batch 64; "
               "MLP instead of conv encoder/decoder"),
    Workload(
        name="quadratic_deep", title="Noisy quadratic · deep spectrum",
        description="DeepOBS's noisy quadratic 0.5 (θ-x)ᵀQ(θ-x) in 100 dimensions, Q's eigenvalues 90 in "
                    "[0, 1] and 10 in [30, 60], x ~ N(0, I), θ from ones: ill-conditioned, convex, noisy. "
                    "The optimum is the expected loss's minimum 0.5·tr(Q) at θ = 0; the val/test loss of a "
                    "finite sample differs from the expected loss slightly.",
        model=_QUADRATIC, data=_QUADRATIC_DATA, loss=mean_output, metric="loss", mode="min",
        batch_size=128, steps=2000, eval_every=200, optimum=_quadratic_optimum(),
        source="DeepOBS quadratic_deep (Schneider et al. 2019), batch 128; noise std 1 (DeepOBS: 0.6) and "
               "10,000 training samples (DeepOBS: 1,000)"),
):
    register(_w)
del _w

#: The built-in workloads' names, in their fixed order: what a benchmark runs unless told otherwise
#: (a workload you register runs when you name it).
BUILTINS: tuple[str, ...] = tuple(WORKLOADS)
