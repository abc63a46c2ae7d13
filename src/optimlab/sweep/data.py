"""Data for sweeps and range tests: MNIST / Fashion-MNIST, or a small generated set.

``synthetic``: 28x28 grey "digits" — ten fixed random smooth templates, each
image one template, shifted by up to two pixels, scaled and noised. The
lectures' CNN learns it to well above chance in one epoch, so tests and smoke
runs need no download.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["synthetic", "load_dataset"]


def synthetic(n_train: int = 2048, n_val: int = 512, *, seed: int = 0, noise: float = 0.35,
              classes: int = 10) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (x, y), "val": (x, y)}``: images float32 (N, 1, 28, 28) in [0, 1], labels int64."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(classes, 1, 7, 7, generator=g)
    templates = F.interpolate(base, size=(28, 28), mode="bilinear", align_corners=False)
    templates = (templates - templates.mean((2, 3), keepdim=True)) / templates.std((2, 3), keepdim=True)
    n = n_train + n_val
    y = torch.randint(0, classes, (n,), generator=g)
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    x = templates[y].clone()
    for s in range(-2, 3):  # batched rolls: one per distinct shift value and axis
        rows = shifts[:, 0] == s
        x[rows] = torch.roll(x[rows], s, dims=2)
        cols = shifts[:, 1] == s
        x[cols] = torch.roll(x[cols], s, dims=3)
    scale = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
    x = x * scale + noise * 2 * torch.randn(x.shape, generator=g)
    x = torch.sigmoid(x).float()
    return {"train": (x[:n_train], y[:n_train]), "val": (x[n_train:], y[n_train:])}


def load_dataset(name: str, *, n_train: int | None = None, n_val: int | None = None, seed: int = 0):
    """``"mnist"``, ``"fashion-mnist"`` (via :func:`optimlab.data.load`, optionally cut to
    ``n_train`` / ``n_val`` images) or ``"synthetic"``; returns ``{"train": ..., "val": ...}``."""
    if name == "synthetic":
        return synthetic(n_train or 2048, n_val or 512, seed=seed)
    from optimlab import data

    ds = data.load(name)
    train, val = ds.train, ds.val
    if n_train:
        train = (train[0][:n_train], train[1][:n_train])
    if n_val:
        val = (val[0][:n_val], val[1][:n_val])
    return {"train": train, "val": val}
