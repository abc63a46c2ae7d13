"""Train one network from the same initial weights with several optimizers and compare the
loss surfaces around their final points: the lectures' "sharp versus flat minima".

For each optimizer: the 1-D line from the initial to the final weights, a 2-D slice along two
filter-normalised random directions (contour and surface), and a 2-D slice on the PCA plane of
its own weight path with that path drawn on it. The table adds a sharpness number (mean loss
rise within a filter-normalised radius) next to train and validation results — a heuristic:
Dinh et al. (2017) show sharpness can be changed by reparametrising a network without changing
what it computes, so read it together with the validation numbers, not instead of them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from optimlab.landscape import network as N
from optimlab.landscape.plots import _figure, color
from optimlab.landscape.table import markdown


def lecture_cnn() -> nn.Module:
    """The lectures' MNIST CNN: Conv2D(32, 3×3) → ReLU → MaxPool(2) → Dropout(0.25) → Dense(10)."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
                         nn.Flatten(), nn.Linear(32 * 13 * 13, 10))


def mlp() -> nn.Module:
    """The demo's MLP: 784 → 128 → ReLU → 10."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


MODELS = {"cnn": lecture_cnn, "mlp": mlp}


@dataclass
class NetworkResult:
    """One optimizer's trained network and the surfaces around its final weights."""

    optimizer: str
    lr: float
    train_loss: float            # on the fixed evaluation subset, at the final weights
    train_acc: float
    val_loss: float
    val_acc: float
    line: N.Line
    random_slice: N.Slice
    pca_slice: N.Slice
    path: torch.Tensor
    step_losses: list

    def sharpness(self) -> float:
        return self.random_slice.sharpness(radius=float(self.random_slice.alphas.max()) / 2)


def study(make_model, optimizers: dict[str, dict], train, evaluate, val, *, epochs: int = 1,
          batch_size: int = 64, record_every: int | None = None, resolution: int = 15, pca_resolution: int = 9,
          span: float = 1.0, eval_batch: int = 1000, seed: int = 0, progress: bool = True) -> list[NetworkResult]:
    """Train ``make_model()`` (one initialisation, seeded) with each optimizer
    (``{name: {"lr": ..., ...}}``, names for :func:`optimlab.optim.create`) on ``train``, then
    measure its surfaces on the fixed subset ``evaluate`` and its generalisation on ``val``.
    ``record_every`` (steps between recorded weights) defaults to about 50 points per path."""
    import optimlab.optim as oo

    if record_every is None:
        record_every = max(1, epochs * math.ceil(len(train[0]) / batch_size) // 50)
    torch.manual_seed(seed)
    initial = make_model()
    start = N.flatten(initial)
    results = []
    for name, hyper in optimizers.items():
        model = copy.deepcopy(initial)
        opt = oo.create(name, model.parameters(), **hyper)
        path, step_losses = N.train_path(model, opt, train, epochs=epochs, batch_size=batch_size,
                                         record_every=record_every, seed=seed, progress=progress,
                                         label=f"{name}: train")
        final = N.flatten(model)
        ev = N.Evaluator(model, evaluate, batch_size=eval_batch)
        train_loss, train_acc = ev(final)
        val_loss, val_acc = N.Evaluator(model, val, batch_size=eval_batch)(final)
        line = N.interpolate(model, start, final, evaluate, batch_size=eval_batch, progress=progress,
                             label=f"{name}: line")
        rnd = N.slice2d(model, evaluate, center=final, directions="random", span=span,
                        resolution=resolution, seed=seed, batch_size=eval_batch, progress=progress,
                        label=f"{name}: random slice")
        pca = N.slice2d(model, evaluate, center=final, directions="pca", path=path,
                        resolution=pca_resolution, batch_size=eval_batch, progress=progress,
                        label=f"{name}: PCA slice")
        results.append(NetworkResult(name, float(hyper.get("lr", math.nan)), train_loss, train_acc,
                                     val_loss, val_acc, line, rnd, pca, path, step_losses))
    return results


def table(results: list[NetworkResult]) -> str:
    header = ["optimizer", "lr", "train loss", "train acc", "val loss", "val acc",
              "sharpness (mean rise, r = span/2)", "PCA variance (d1, d2)"]
    lines = []
    for r in results:
        ex = r.pca_slice.explained
        lines.append([r.optimizer, f"{r.lr:g}", f"{r.train_loss:.4f}", f"{r.train_acc:.4f}",
                      f"{r.val_loss:.4f}", f"{r.val_acc:.4f}", f"{r.sharpness():.4f}",
                      f"{ex[0]:.0%}, {ex[1]:.0%}" if ex is not None else "—"])
    return markdown(header, lines)


def _levels(slices) -> np.ndarray:
    lo = min(float(s.losses.min()) for s in slices)
    hi = max(float(s.losses.max()) for s in slices)
    return np.linspace(lo, hi if hi > lo else lo + 1e-6, 25)


def plot_line(results: list[NetworkResult], path: str | Path, dpi: int = 100) -> Path:
    """The 1-D loss curves from the initial (α = 0) to the final (α = 1) weights."""
    fig = _figure((7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(results):
        ax.plot(r.line.alphas, r.line.losses, color=color(i), label=r.optimizer)
    ax.axvline(0, color="gray", lw=0.8, ls=":")
    ax.axvline(1, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("α   (θ = (1 − α)·θ_initial + α·θ_final)")
    ax.set_ylabel("loss on the evaluation subset")
    ax.set_yscale("log")
    ax.set_title("loss along the line from initial to final weights (Goodfellow et al. 2015)", fontsize=10)
    ax.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return Path(path)


def plot_slices(results: list[NetworkResult], path: str | Path, dpi: int = 90) -> Path:
    """Per optimizer (one row each): the random filter-normalised slice as contour and surface
    (same colour levels for every optimizer), and the PCA-plane slice with the weight path."""
    levels = _levels([r.random_slice for r in results])
    fig = _figure((15, 4.6 * len(results)))
    for row, r in enumerate(results):
        s = r.random_slice
        A, B = np.meshgrid(s.alphas, s.betas)
        ax = fig.add_subplot(len(results), 3, 3 * row + 1)
        cs = ax.contourf(A, B, s.losses, levels=levels, cmap="viridis", extend="both")
        ax.contour(A, B, s.losses, levels=levels[::2], colors="white", linewidths=0.4)
        ax.plot(0, 0, "*", color="gold", markeredgecolor="black", markersize=12)
        ax.set_title(f"{r.optimizer}: random filter-normalised slice\nval acc {r.val_acc:.4f}, "
                     f"sharpness {r.sharpness():.3f}", fontsize=9)
        ax.set_xlabel("a (d₁)")
        ax.set_ylabel("b (d₂)")
        fig.colorbar(cs, ax=ax, shrink=0.8)
        ax3 = fig.add_subplot(len(results), 3, 3 * row + 2, projection="3d")
        ax3.plot_surface(A, B, s.losses, cmap="viridis", vmin=levels[0], vmax=levels[-1], linewidth=0)
        ax3.set_zlim(levels[0], levels[-1])
        ax3.set_title(f"{r.optimizer}: surface", fontsize=9)
        p = r.pca_slice
        A2, B2 = np.meshgrid(p.alphas, p.betas)
        ax2 = fig.add_subplot(len(results), 3, 3 * row + 3)
        cs2 = ax2.contourf(A2, B2, p.losses, levels=25, cmap="viridis")
        fig.colorbar(cs2, ax=ax2, shrink=0.8)
        if p.path_xy is not None:
            ax2.plot(p.path_xy[:, 0], p.path_xy[:, 1], "-o", color="white", markersize=2, lw=1)
            ax2.plot(*p.path_xy[0], "s", color="white", markeredgecolor="black")
        ax2.plot(0, 0, "*", color="gold", markeredgecolor="black", markersize=12)
        ex = p.explained
        ax2.set_title(f"{r.optimizer}: PCA plane of its weight path\n(d₁ {ex[0]:.0%}, d₂ {ex[1]:.0%} "
                      "of the path's variance)", fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return Path(path)
