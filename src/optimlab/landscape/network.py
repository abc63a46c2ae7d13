"""Loss surfaces of real networks.

* :func:`interpolate`: the loss along the straight line from the initial to the final weights,
  ``θ(α) = (1 − α)·θ₀ + α·θ₁`` (Goodfellow, Vinyals & Saxe 2015).
* :func:`slice2d`: the loss on a plane ``θ* + a·d₁ + b·d₂`` around the final weights, along two
  random directions with filter normalisation (Li et al. 2018): each filter (row along the
  first axis of a weight tensor) of ``d`` is rescaled to the norm of the same filter of ``θ*``,
  and biases / norm-layer parameters (tensors with one dimension) get 0, so distances mean the
  same for every layer and every network. With ``directions="pca"`` the plane is spanned by the
  first two principal components of the recorded weight path, and the path is projected on it.

Every loss is a mean over one fixed data subset, evaluated in batches without gradients, with
a progress bar on stderr. The model's own weights are restored afterwards.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters


class Progress:
    """A one-line progress bar on ``stream`` (redrawn in place on a terminal, every 25% otherwise)."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start, self.done, self._shown = time.perf_counter(), 0, -1

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        quarter = 4 * self.done // self.total
        if self.tty or quarter != self._shown or self.done == self.total:
            self._shown = quarter
            width = 30
            filled = width * self.done // self.total
            text = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                    f"{time.perf_counter() - self.start:.1f} s")
            end = "\n" if self.done >= self.total or not self.tty else ""
            print(("\r" if self.tty else "") + text, end=end, file=self.stream, flush=True)


def flatten(model: nn.Module) -> Tensor:
    """All parameters of ``model`` as one detached vector (``parameters()`` order)."""
    return parameters_to_vector([p.detach() for p in model.parameters()]).clone()


@torch.no_grad()
def assign(model: nn.Module, vector: Tensor) -> None:
    """Write ``vector`` (laid out as :func:`flatten`) into ``model``'s parameters."""
    vector_to_parameters(vector.to(next(model.parameters()).dtype), list(model.parameters()))


@contextmanager
def weights(model: nn.Module, vector: Tensor):
    """Temporarily give ``model`` the weights ``vector``."""
    saved = flatten(model)
    assign(model, vector)
    try:
        yield model
    finally:
        assign(model, saved)


class Evaluator:
    """Mean loss (and accuracy, for classifiers) of ``model`` at given weights on one fixed subset."""

    def __init__(self, model: nn.Module, data: tuple[Tensor, Tensor],
                 loss_fn: Callable = nn.functional.cross_entropy, batch_size: int = 500,
                 accuracy: bool = True):
        x, y = data
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"data must be (inputs, targets) of the same non-zero length, got "
                             f"{len(x)} and {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size!r}")
        self.model, self.x, self.y = model, x, y
        self.loss_fn, self.batch_size, self.accuracy = loss_fn, batch_size, accuracy
        self.calls = 0

    @torch.no_grad()
    def __call__(self, vector: Tensor | None = None) -> tuple[float, float]:
        """``(mean loss, accuracy)`` at ``vector`` (the model's current weights if ``None``);
        accuracy is NaN when not asked for."""
        self.calls += 1
        if vector is None:
            return self._evaluate()
        with weights(self.model, vector):
            return self._evaluate()

    def _evaluate(self) -> tuple[float, float]:
        was_training = self.model.training
        self.model.eval()
        total, correct, n = 0.0, 0, len(self.x)
        try:
            for i in range(0, n, self.batch_size):
                xb, yb = self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
                out = self.model(xb)
                total += float(self.loss_fn(out, yb, reduction="sum"))
                if self.accuracy:
                    correct += int((out.argmax(1) == yb).sum())
        finally:
            self.model.train(was_training)
        return total / n, (correct / n if self.accuracy else math.nan)


def filter_normalized_direction(model: nn.Module, generator: torch.Generator | None = None,
                                *, biases: str = "zero") -> Tensor:
    """A Gaussian random direction, filter-normalised to ``model``'s current weights (Li et al.).

    For a parameter with ≥ 2 dimensions each filter ``d[i]`` is scaled to ``‖θ[i]‖``; 1-D
    parameters (biases, norm layers) are set to 0 (``biases="zero"``, the paper's choice) or
    copied from the weights (``biases="weights"``)."""
    if biases not in ("zero", "weights"):
        raise ValueError(f"biases must be 'zero' or 'weights', got biases={biases!r}")
    parts = []
    for p in model.parameters():
        w = p.detach()
        if w.dim() <= 1:
            parts.append(torch.zeros_like(w) if biases == "zero" else w.clone())
            continue
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device)
        w_norm = w.reshape(len(w), -1).norm(dim=1)
        d_norm = d.reshape(len(d), -1).norm(dim=1)
        scale = w_norm / (d_norm + 1e-10)
        parts.append(d * scale.reshape(-1, *([1] * (w.dim() - 1))))
    return torch.cat([t.reshape(-1) for t in parts])


def pca_directions(path: Tensor, center: Tensor | None = None) -> tuple[Tensor, Tensor, np.ndarray]:
    """The first two principal directions of the weight path ``path`` (k, n) about ``center``
    (default: its last point), and the share of the variance each explains."""
    path = torch.as_tensor(path)
    if path.dim() != 2 or len(path) < 2:
        raise ValueError(f"path must be (k >= 2, n) weight vectors, got shape {tuple(path.shape)}")
    center = path[-1] if center is None else center
    m = (path - center).to(torch.float64)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    var = (s ** 2).numpy()
    ratios = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return vh[0].to(path.dtype), vh[1].to(path.dtype), ratios


def project(path: Tensor, center: Tensor, d1: Tensor, d2: Tensor) -> np.ndarray:
    """Coordinates ``(a, b)`` of each ``path[k] − center`` in the plane of ``d1, d2`` (least squares)."""
    basis = torch.stack([d1, d2], dim=1).to(torch.float64)              # (n, 2)
    diff = (torch.as_tensor(path) - center).to(torch.float64)            # (k, n)
    gram = basis.T @ basis
    return torch.linalg.solve(gram, basis.T @ diff.T).T.numpy()


@dataclass
class Line:
    """The loss along ``(1 − α)·start + α·end``."""

    alphas: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray


def interpolate(model: nn.Module, start: Tensor, end: Tensor, data, *, alphas=None,
                loss_fn: Callable = nn.functional.cross_entropy, batch_size: int = 500,
                progress: bool = True, label: str = "line") -> Line:
    """The 1-D loss curve from ``start`` (α = 0, e.g. the initial weights) to ``end`` (α = 1)."""
    alphas = np.linspace(-0.5, 1.5, 41) if alphas is None else np.asarray(alphas, dtype=np.float64)
    evaluate = Evaluator(model, data, loss_fn, batch_size)
    bar = Progress(len(alphas), label, progress)
    losses, accs = [], []
    for a in alphas:
        loss, acc = evaluate((1 - float(a)) * start + float(a) * end)
        losses.append(loss)
        accs.append(acc)
        bar.update()
    return Line(alphas, np.array(losses), np.array(accs))


@dataclass
class Slice:
    """Losses on ``center + a·d1 + b·d2`` for ``a`` in ``alphas`` (columns), ``b`` in ``betas`` (rows)."""

    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray               # (len(betas), len(alphas))
    accuracies: np.ndarray
    center_loss: float
    kind: str                        # "random (filter-normalised)", "pca" or "given"
    d1: Tensor
    d2: Tensor
    path_xy: np.ndarray | None = None  # the projected weight path, (k, 2)
    explained: np.ndarray | None = None  # PCA: variance share of d1, d2

    def sharpness(self, radius: float) -> float:
        """Mean loss rise over the grid points within ``radius`` of the centre (a heuristic)."""
        A, B = np.meshgrid(self.alphas, self.betas)
        inside = np.hypot(A, B) <= radius + 1e-12
        return float(np.mean(self.losses[inside] - self.center_loss))


def slice2d(model: nn.Module, data, *, center: Tensor | None = None, directions="random",
            path: Tensor | None = None, span: float | tuple[float, float] | str | None = None,
            resolution: int = 31,
            seed: int = 0, loss_fn: Callable = nn.functional.cross_entropy, batch_size: int = 500,
            progress: bool = True, label: str = "slice") -> Slice:
    """The loss on a ``resolution`` × ``resolution`` grid around ``center`` (default: the model's
    weights). ``directions``: ``"random"`` (filter-normalised, seeded), ``"pca"`` (of ``path``)
    or a pair of vectors. ``span``: half-width of the grid along each direction, a pair, or
    ``"path"`` (cover the projected path, the default for PCA; 1.0 otherwise). ``path`` (k, n),
    if given, is projected onto the plane (``Slice.path_xy``)."""
    if not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got resolution={resolution!r}")
    center = flatten(model) if center is None else center.detach().clone()
    explained = None
    if isinstance(directions, str) and directions == "random":
        generator = torch.Generator().manual_seed(seed)
        with weights(model, center):
            d1 = filter_normalized_direction(model, generator)
            d2 = filter_normalized_direction(model, generator)
        kind = "random (filter-normalised)"
    elif isinstance(directions, str) and directions == "pca":
        if path is None:
            raise ValueError("directions='pca' needs the weight path: path=(k, n) tensor")
        d1, d2, explained = pca_directions(path, center)
        kind = "pca"
    elif isinstance(directions, (tuple, list)) and len(directions) == 2:
        d1, d2 = (torch.as_tensor(d).detach() for d in directions)
        kind = "given"
    else:
        raise ValueError(f"directions must be 'random', 'pca' or a pair of vectors, got {directions!r}")
    path_xy = project(path, center, d1, d2) if path is not None else None
    if span is None:
        span = "path" if kind == "pca" else 1.0
    if isinstance(span, str):
        if span != "path" or path_xy is None:
            raise ValueError(f"span must be a number, a pair, or 'path' (with a path), got span={span!r}")
        span = tuple(1.25 * max(float(np.abs(path_xy[:, i]).max()), 1e-6) for i in range(2))
    sa, sb = (span, span) if isinstance(span, (int, float)) else span
    alphas = np.linspace(-sa, sa, resolution)
    betas = np.linspace(-sb, sb, resolution)
    evaluate = Evaluator(model, data, loss_fn, batch_size)
    bar = Progress(resolution * resolution, label, progress)
    losses = np.empty((resolution, resolution))
    accs = np.empty((resolution, resolution))
    for i, b in enumerate(betas):
        for j, a in enumerate(alphas):
            losses[i, j], accs[i, j] = evaluate(center + float(a) * d1 + float(b) * d2)
            bar.update()
    center_loss = evaluate(center)[0]
    return Slice(alphas, betas, losses, accs, center_loss, kind, d1, d2, path_xy, explained)


def train_path(model: nn.Module, optimizer: torch.optim.Optimizer, data, *, epochs: int = 1,
               batch_size: int = 64, record_every: int = 10, seed: int = 0,
               loss_fn: Callable = nn.functional.cross_entropy, progress: bool = True,
               label: str = "train") -> tuple[Tensor, list[float]]:
    """Train ``model`` in place with ``optimizer`` on shuffled mini-batches of ``data``,
    recording the weights every ``record_every`` steps (and at the start and the end).

    Returns the path ``(k, n)`` and the training loss of every step."""
    x, y = data
    steps_per_epoch = math.ceil(len(x) / batch_size)
    bar = Progress(epochs * steps_per_epoch, label, progress)
    path, losses, step = [flatten(model)], [], 0
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % record_every == 0:
                path.append(flatten(model))
            bar.update()
    if step % record_every:
        path.append(flatten(model))
    return torch.stack(path), losses
