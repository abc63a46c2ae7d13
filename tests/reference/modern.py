"""Plain reference transcriptions for tests/test_optim_modern.py.

LAMB and LARS as the papers give them are the readable rules of :mod:`optimlab.optim.trust`
(``LAMB.rule``, ``LARS.rule``), which the classes are tested against. What stays here is
independent of our code:

* ``lamb_pytorch_optimizer`` and ``lars_pytorch_optimizer``: the paper's algorithms with the
  documented departures of the ``pytorch-optimizer`` package, cross-checked against that
  package (so the departures listed below are the only differences from our rules):

  - LAMB (pytorch-optimizer 4.1.0 ``Lamb`` with ``weight_decouple=False``): the second
    moment is not bias-corrected and the first moment's correction multiplies the step
    *outside* the trust ratio (``γ/(1 − β1ᵗ)``), ``‖θ‖`` is clipped at 10, the ratio is
    ``‖θ‖/(‖r‖ + ε)``, and t counts the param group's steps (one counter per group,
    advanced also for tensors without a gradient; the caller passes it as ``h["group_step"]``).
  - LARS (its ``LARS``): the learning rate multiplies the velocity at use (``b ← μb + λ(g + βθ)``,
    ``θ ← θ − γb``: torch's SGD convention, equal to the paper's only under a constant γ), and
    tensors of at most one dimension take plain momentum SGD with no weight decay or ratio.

* ``lookahead_sgd``: Lookahead around momentum SGD, as the paper's loop.

Each rule updates ``theta`` and ``state`` in place from gradient ``g`` with hyperparameters
``h``, like ``tests/reference/optimizers.py``.
"""

from __future__ import annotations

import torch


def _norm(t):
    return torch.linalg.vector_norm(t)


def lamb_pytorch_optimizer(theta, g, state, h):
    """You et al. 2020, Algorithm 2, as pytorch-optimizer's ``Lamb`` (module docstring)."""
    g = -g if h.get("maximize") else g
    b1, b2 = h.get("betas", (0.9, 0.999))
    eps, wd, lr = h.get("eps", 1e-6), h.get("weight_decay", 0.0), h["lr"]
    state["m"] = b1 * state.get("m", torch.zeros_like(theta)) + (1 - b1) * g
    state["v"] = b2 * state.get("v", torch.zeros_like(theta)) + (1 - b2) * g * g
    r = state["m"] / (state["v"].sqrt() + eps) + wd * theta
    w_norm, r_norm = _norm(theta).clamp(max=10.0), _norm(r)
    ratio = w_norm / (r_norm + eps) if w_norm > 0 and r_norm > 0 else 1.0
    theta.sub_(lr / (1 - b1 ** h["group_step"]) * ratio * r)


def lars_pytorch_optimizer(theta, g, state, h):
    """You, Gitman & Ginsburg 2017, Algorithm 1 with eq. 6, as pytorch-optimizer's ``LARS``
    (module docstring)."""
    g = -g if h.get("maximize") else g
    lr, mu, wd = h["lr"], h.get("momentum", 0.9), h.get("weight_decay", 0.0)
    eta = h.get("trust_coefficient", 1e-3)
    if theta.dim() > 1:
        w_norm, g_norm = _norm(theta), _norm(g)
        den = g_norm + wd * w_norm
        local = eta * w_norm / den if w_norm > 0 and den > 0 else 1.0
        d = local * (g + wd * theta)
    else:
        d = g
    state["v"] = mu * state.get("v", torch.zeros_like(theta)) + d
    theta.sub_(lr * state["v"])


def lookahead_sgd(params, grads_seq, *, lr, momentum, k, alpha):
    """Lookahead (Zhang et al. 2019, Algorithm 1) around torch-convention momentum SGD,
    written as a plain loop: φ₀ = θ₀; k inner steps; φ ← φ + α(θ − φ); θ ← φ."""
    slow = [p.clone() for p in params]
    bufs = [None] * len(params)
    for t, grads in enumerate(grads_seq, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            bufs[i] = g.clone() if bufs[i] is None else momentum * bufs[i] + g
            p.sub_(lr * bufs[i])
        if t % k == 0:
            for p, s in zip(params, slow):
                s.add_(alpha * (p - s))
                p.copy_(s)
    return params
