"""Plain reference rules for the optimizers that have no canonical library twin: LAMB and
LARS, written from the papers' algorithms (one tensor at a time, textbook order).

Each function updates ``theta`` and ``state`` in place from gradient ``g`` with
hyperparameters ``h``, like ``tests/reference/optimizers.py``. The keyword ``variant``
models a published implementation's documented departures from the paper, so the same
reference is also cross-checked against the ``pytorch-optimizer`` package:

* LAMB, ``variant="pytorch_optimizer"`` (pytorch-optimizer 4.1.0 ``Lamb`` with
  ``weight_decouple=False``): the second moment is not bias-corrected and the first
  moment's correction multiplies the step *outside* the trust ratio (``γ/(1 − β1ᵗ)``),
  ``‖θ‖`` is clipped at 10, the ratio is ``‖θ‖/(‖r‖ + ε)``, and t counts the param
  group's steps (one counter per group, advanced also for tensors without a gradient;
  the caller passes it as ``h["group_step"]``).
* LARS, ``variant="pytorch_optimizer"`` (its ``LARS``): the learning rate multiplies the
  velocity at use (``b ← μb + λ(g + βθ)``, ``θ ← θ − γb``: torch's SGD convention, equal to
  the paper's only under a constant γ), and tensors of at most one dimension take plain
  momentum SGD with no weight decay or ratio.
"""

from __future__ import annotations

import torch


def _norm(t):
    return torch.linalg.vector_norm(t)


def lamb(theta, g, state, h, variant="paper"):
    """You et al. 2020, Algorithm 2 (φ = identity): per tensor,
    ``r = m̂/(√v̂ + ε) + λθ``; ``θ ← θ − γ·‖θ‖/‖r‖·r`` (ratio 1 if a norm is 0)."""
    t = state["t"] = state.get("t", 0) + 1
    g = -g if h.get("maximize") else g
    b1, b2 = h.get("betas", (0.9, 0.999))
    eps, wd, lr = h.get("eps", 1e-6), h.get("weight_decay", 0.0), h["lr"]
    state["m"] = b1 * state.get("m", torch.zeros_like(theta)) + (1 - b1) * g
    state["v"] = b2 * state.get("v", torch.zeros_like(theta)) + (1 - b2) * g * g
    if variant == "paper":
        if h.get("bias_correction", True):
            m_hat, v_hat = state["m"] / (1 - b1**t), state["v"] / (1 - b2**t)
        else:
            m_hat, v_hat = state["m"], state["v"]
        r = m_hat / (v_hat.sqrt() + eps) + wd * theta
        w_norm, r_norm = _norm(theta), _norm(r)
        ratio = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
        theta.sub_(lr * ratio * r)
    elif variant == "pytorch_optimizer":
        r = state["m"] / (state["v"].sqrt() + eps) + wd * theta
        w_norm, r_norm = _norm(theta).clamp(max=10.0), _norm(r)
        ratio = w_norm / (r_norm + eps) if w_norm > 0 and r_norm > 0 else 1.0
        theta.sub_(lr / (1 - b1 ** h["group_step"]) * ratio * r)
    else:
        raise ValueError(variant)


def lars(theta, g, state, h, variant="paper"):
    """You, Gitman & Ginsburg 2017, Algorithm 1 with eq. 6: per tensor,
    ``λ = η‖θ‖/(‖g‖ + β‖θ‖)``; ``v ← μv + γλ(g + βθ)``; ``θ ← θ − v``."""
    g = -g if h.get("maximize") else g
    lr, mu, wd = h["lr"], h.get("momentum", 0.9), h.get("weight_decay", 0.0)
    eta = h.get("trust_coefficient", 1e-3)
    adapt = not (h.get("exclude_1d", False) or variant == "pytorch_optimizer") or theta.dim() > 1
    if adapt:
        w_norm, g_norm = _norm(theta), _norm(g)
        den = g_norm + wd * w_norm
        local = eta * w_norm / den if w_norm > 0 and den > 0 else 1.0
        d = local * (g + wd * theta)
    else:
        d = g
    v = state.get("v", torch.zeros_like(theta))
    if variant == "paper":
        state["v"] = mu * v + lr * d
        theta.sub_(state["v"])
    elif variant == "pytorch_optimizer":
        state["v"] = mu * v + d
        theta.sub_(lr * state["v"])
    else:
        raise ValueError(variant)


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
