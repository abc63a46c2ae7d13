"""Plain, readable reference rules: one parameter at a time, textbook maths, no fast paths.

These are the oracles the fast paths are checked against (in float64). Each function
updates ``theta`` and ``state`` (a dict) in place from gradient ``g`` with hyperparameters
``h`` (torch's names). They follow torch's conventions (docs/optimizer-reference.md).
"""

from __future__ import annotations

import torch


def _grad(theta, g, h):
    g = -g if h.get("maximize", False) else g
    if h.get("weight_decay", 0) and not h.get("decoupled_weight_decay", False):
        g = g + h["weight_decay"] * theta
    return g


def _decay(theta, h):
    if h.get("weight_decay", 0) and h.get("decoupled_weight_decay", False):
        theta.mul_(1 - h["lr"] * h["weight_decay"])


def sgd(theta, g, state, h):
    g = _grad(theta, g, h)
    mu = h.get("momentum", 0)
    if mu:
        if "b" not in state:
            state["b"] = g.clone()
        else:
            state["b"] = mu * state["b"] + (1 - h.get("dampening", 0)) * g
        g = g + mu * state["b"] if h.get("nesterov") else state["b"]
    theta.sub_(h["lr"] * g)


def adagrad(theta, g, state, h):
    state["t"] = state.get("t", 0) + 1
    g = _grad(theta, g, h)
    state["s"] = state.get("s", torch.full_like(theta, h.get("initial_accumulator_value", 0))) + g * g
    lr_t = h["lr"] / (1 + (state["t"] - 1) * h.get("lr_decay", 0))
    theta.sub_(lr_t * g / (state["s"].sqrt() + h.get("eps", 1e-10)))


def rmsprop(theta, g, state, h):
    g = _grad(theta, g, h)
    a, eps = h.get("alpha", 0.99), h.get("eps", 1e-8)
    state["v"] = a * state.get("v", torch.zeros_like(theta)) + (1 - a) * g * g
    v = state["v"]
    if h.get("centered"):
        state["gbar"] = a * state.get("gbar", torch.zeros_like(theta)) + (1 - a) * g
        v = v - state["gbar"] ** 2
    d = g / (v.sqrt() + eps)
    if h.get("momentum", 0):
        state["b"] = h["momentum"] * state.get("b", torch.zeros_like(theta)) + d
        d = state["b"]
    theta.sub_(h["lr"] * d)


def adadelta(theta, g, state, h):
    g = _grad(theta, g, h)
    rho, eps = h.get("rho", 0.9), h.get("eps", 1e-6)
    state["v"] = rho * state.get("v", torch.zeros_like(theta)) + (1 - rho) * g * g
    u = state.get("u", torch.zeros_like(theta))
    delta = ((u + eps).sqrt() / (state["v"] + eps).sqrt()) * g
    state["u"] = rho * u + (1 - rho) * delta * delta
    theta.sub_(h.get("lr", 1.0) * delta)


def adam(theta, g, state, h):
    t = state["t"] = state.get("t", 0) + 1
    g = _grad(theta, g, h)
    _decay(theta, h)
    b1, b2 = h.get("betas", (0.9, 0.999))
    state["m"] = b1 * state.get("m", torch.zeros_like(theta)) + (1 - b1) * g
    state["v"] = b2 * state.get("v", torch.zeros_like(theta)) + (1 - b2) * g * g
    v = state["v"]
    if h.get("amsgrad"):
        state["vmax"] = torch.maximum(state.get("vmax", torch.zeros_like(theta)), v)
        v = state["vmax"]
    m_hat = state["m"] / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    theta.sub_(h["lr"] * m_hat / (v_hat.sqrt() + h.get("eps", 1e-8)))


def adamw(theta, g, state, h):
    adam(theta, g, state, {"weight_decay": 1e-2, **h, "decoupled_weight_decay": True})


def adamax(theta, g, state, h):
    t = state["t"] = state.get("t", 0) + 1
    g = _grad(theta, g, h)
    b1, b2 = h.get("betas", (0.9, 0.999))
    state["m"] = b1 * state.get("m", torch.zeros_like(theta)) + (1 - b1) * g
    state["u"] = torch.maximum(b2 * state.get("u", torch.zeros_like(theta)), g.abs() + h.get("eps", 1e-8))
    theta.sub_(h["lr"] / (1 - b1**t) * state["m"] / state["u"])


def nadam(theta, g, state, h):
    t = state["t"] = state.get("t", 0) + 1
    g = _grad(theta, g, h)
    _decay(theta, h)
    b1, b2 = h.get("betas", (0.9, 0.999))
    psi = h.get("momentum_decay", 4e-3)
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    # torch keeps the product of momenta in a float32 tensor (a documented convention)
    state["prod"] = (torch.tensor(state.get("prod", 1.0), dtype=torch.float32) * mu).item()
    state["m"] = b1 * state.get("m", torch.zeros_like(theta)) + (1 - b1) * g
    state["v"] = b2 * state.get("v", torch.zeros_like(theta)) + (1 - b2) * g * g
    den = (state["v"] / (1 - b2**t)).sqrt() + h.get("eps", 1e-8)
    theta.sub_(h["lr"] * (1 - mu) / (1 - state["prod"]) * g / den)
    theta.sub_(h["lr"] * mu_next / (1 - state["prod"] * mu_next) * state["m"] / den)


RULES = {"sgd": sgd, "momentum": sgd, "nag": sgd, "adagrad": adagrad, "rmsprop": rmsprop,
         "adadelta": adadelta, "adam": adam, "adamw": adamw, "adamax": adamax, "nadam": nadam}


def keras_style_momentum(theta, g, state, h):
    """The lectures' other momentum: ``v ← γ·v + η·g``, ``θ ← θ − v`` (lr inside the velocity)."""
    state["v"] = h["momentum"] * state.get("v", torch.zeros_like(theta)) + h["lr"] * g
    theta.sub_(state["v"])

