"""The benchmark workloads' models that :mod:`optimlab.models` does not have.

Each takes 28x28 grey images ``(N, 1, 28, 28)`` (the quadratic: vectors ``(N, dim)``):

* :class:`LogisticRegression` — flatten → ``Linear(784, 10)``: logits of a convex problem.
* :class:`MLP` — flatten → ``Linear`` + ReLU layers → ``Linear(…, 10)``: logits.
* :class:`TwoC2D` — DeepOBS's ``2c2d`` (Schneider et al. 2019), widths as arguments: logits.
* :class:`VAE` — a small MLP variational auto-encoder; ``forward`` returns each image's
  negative ELBO ``(N,)`` in nats.
* :class:`NoisyQuadratic` — DeepOBS's noisy quadratic; ``forward`` returns each sample's loss ``(N,)``.

:func:`deep_quadratic_hessian` builds the Hessian of DeepOBS's ``quadratic_deep``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optimlab.models import ChannelsLastConv2d, FlattenHWC

__all__ = ["LogisticRegression", "MLP", "NoisyQuadratic", "TwoC2D", "VAE", "deep_quadratic_hessian"]


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: ``logits = W · flatten(x) + b``, ``(N, inputs)`` → ``(N, classes)``.

    With cross-entropy the objective is convex in ``(W, b)``. ``W`` and ``b`` start at torch's
    ``nn.Linear`` initialisation (uniform in ±1/√inputs).
    """

    def __init__(self, inputs: int = 784, classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(inputs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """flatten → (``Linear`` → ReLU) per hidden width → ``Linear(…, classes)``; outputs logits."""

    def __init__(self, inputs: int = 784, hidden: tuple[int, ...] = (256, 256), classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        width = inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class TwoC2D(nn.Module):
    """DeepOBS's ``2c2d`` for 28x28 grey images, outputs logits ``(N, classes)``:

    conv ``c1`` 5x5 "same" → ReLU → max-pool 2 → conv ``c2`` 5x5 "same" → ReLU → max-pool 2
    → dense ``hidden`` → ReLU → dense ``classes``.

    DeepOBS uses widths 32 / 64 / 1024; the arguments allow narrower ones. Initialisation as
    DeepOBS: weights truncated normal (std 0.05, cut at ±2 std), biases 0.05. The convolutions
    keep channels_last weights (:class:`optimlab.models.ChannelsLastConv2d`: faster pooling on
    a CPU) and flatten in height, width, channel order.
    """

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 1024, classes: int = 10):
        super().__init__()
        self.conv1 = ChannelsLastConv2d(1, c1, 5, padding=2)
        self.conv2 = ChannelsLastConv2d(c1, c2, 5, padding=2)
        self.flatten = FlattenHWC()
        self.dense1 = nn.Linear(7 * 7 * c2, hidden)
        self.dense2 = nn.Linear(hidden, classes)
        with torch.no_grad():
            for layer in (self.conv1, self.conv2, self.dense1, self.dense2):
                nn.init.trunc_normal_(layer.weight, std=0.05, a=-0.1, b=0.1)
                nn.init.constant_(layer.bias, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu_(F.max_pool2d(self.conv1(x), 2))  # = pool(relu(.)): max and ReLU commute
        h = F.relu_(F.max_pool2d(self.conv2(h), 2))
        return self.dense2(F.relu_(self.dense1(self.flatten(h))))


class VAE(nn.Module):
    """A variational auto-encoder with a Bernoulli likelihood; ``forward(x)`` → negative ELBO ``(N,)``.

    Encoder: flatten(``x``) (``inputs`` pixels in [0, 1]) → ``Linear(inputs, hidden)`` → ReLU →
    ``Linear(hidden, 2·latent)`` = (μ, log σ²). Decoder: ``Linear(latent, hidden)`` → ReLU →
    ``Linear(hidden, inputs)`` = Bernoulli logits ℓ. With ``z = μ + σ·ε``, ``ε ~ N(0, I)``::

        −ELBO(x) = Σ_pixels BCEWithLogits(ℓ(z), x) + ½ Σ_latent (μ² + σ² − 1 − log σ²)

    in nats per image: a one-sample estimate of the reconstruction term plus the analytic KL
    divergence to the N(0, I) prior. Grey levels are used as (continuous) Bernoulli targets.

    The noise ε: in training mode from torch's global generator (which ``fit`` seeds and
    checkpoints); in eval mode from a generator seeded with ``eval_seed`` at every call, so an
    evaluation is deterministic (row ``i`` of every batch gets the same ε: the value depends on
    the evaluation batch size, not on any RNG state) and still an unbiased ELBO estimate.
    ``forward(x, eps)`` uses the given ε ``(N, latent)`` instead.
    """

    def __init__(self, inputs: int = 784, hidden: int = 256, latent: int = 8, *, eval_seed: int = 0):
        super().__init__()
        self.latent, self.eval_seed = latent, eval_seed
        self.encoder = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, inputs))

    def noise(self, mu: torch.Tensor) -> torch.Tensor:
        """ε shaped like ``mu``: global RNG in training, the fixed ``eval_seed`` generator in eval mode."""
        if self.training:
            return torch.randn_like(mu)
        g = torch.Generator(device=mu.device).manual_seed(self.eval_seed)
        return torch.randn(mu.shape, generator=g, device=mu.device, dtype=mu.dtype)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.flatten(1)
        mu, logvar = self.encoder(flat).chunk(2, dim=1)
        eps = self.noise(mu) if eps is None else eps
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.decoder(z)
        reconstruction = F.binary_cross_entropy_with_logits(logits, flat, reduction="none").sum(1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)
        return reconstruction + kl

    def extra_repr(self) -> str:
        return f"latent={self.latent}, eval_seed={self.eval_seed}"


def deep_quadratic_hessian(dim: int = 100, *, seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, eigenvalues)`` of DeepOBS's ``quadratic_deep``, float64: ``Q = Rᵀ·diag(D)·R``.

    ``D``: 90% of the eigenvalues uniform in [0, 1], the other 10% uniform in [30, 60] (the
    spectrum reported for deep networks, Chaudhari et al. 2017), in that order; ``R``: a random
    rotation (the Q factor of a seeded Gaussian matrix, signs fixed so it is Haar-distributed).
    Everything is drawn from ``torch.Generator().manual_seed(seed)``: a fixed problem. ``Q`` is
    exactly symmetric.
    """
    g = torch.Generator().manual_seed(seed)
    small = dim - dim // 10
    eigenvalues = torch.cat([torch.rand(small, generator=g, dtype=torch.float64),
                             30.0 + 30.0 * torch.rand(dim - small, generator=g, dtype=torch.float64)])
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    rotation = q * torch.sign(torch.diagonal(r))  # Haar measure (Mezzadri 2007)
    hessian = rotation.T @ torch.diag(eigenvalues) @ rotation
    return 0.5 * (hessian + hessian.T), eigenvalues


class NoisyQuadratic(nn.Module):
    """DeepOBS's noisy quadratic: ``forward(x)`` → ``½ (θ − xᵢ)ᵀ Q (θ − xᵢ)`` per row ``xᵢ``, shape ``(N,)``.

    ``θ`` (the only parameter, ``dim`` values) starts at ones, as in DeepOBS; ``Q`` (``dim x dim``,
    symmetric) is a buffer, stored in the model's dtype.
    """

    def __init__(self, hessian: torch.Tensor):
        super().__init__()
        if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
            raise ValueError(f"hessian must be a square matrix, got shape {tuple(hessian.shape)}")
        self.theta = nn.Parameter(torch.ones(hessian.shape[0]))
        self.register_buffer("hessian", hessian.to(torch.get_default_dtype()).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.theta - x
        return 0.5 * ((d @ self.hessian) * d).sum(1)

    def extra_repr(self) -> str:
        return f"dim={self.theta.numel()}, trace={float(self.hessian.double().trace()):.6g}"

