"""Keras's Adagrad, RMSprop and Adadelta: ε inside the square root, lr inside the momentum."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optimlab.optim import _fused
from optimlab.optim import _validation as check
from optimlab.optim._kernelgen import KERAS_DECAY, fma, keras_param, kernel, sqrt
from optimlab.optim.keras import _rules
from optimlab.optim.keras._base import KerasOptimizer, check_learning_rate, optional_non_negative


def _zeros(param: Tensor) -> Tensor:
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def _slot(params: list[Tensor], states: list[dict[str, Any]], key: str) -> list[Tensor]:
    """The state tensors ``key`` of ``params``, made (zeros) where a group switched them on mid-run."""
    for p, s in zip(params, states):
        if key not in s:
            s[key] = _zeros(p)
    return [s[key] for s in states]


def _state_slot(param: Tensor, state: dict[str, Any], key: str) -> Tensor:
    """``state[key]``, made (zeros) where a group switched it on mid-run (as :func:`_slot`)."""
    if key not in state:
        state[key] = _zeros(param)
    return state[key]


# The readable rules: one tensor at a time, Keras 3's update in the order of its torch backend
# (keras/src/backend/torch/optimizers/torch_<name>.py, the code Keras runs under KERAS_BACKEND=torch,
# transcribed for lists of tensors in _rules). ``grad`` is the clipped gradient and ``param`` is
# already decayed: clipping and decoupled weight decay are Keras's ``apply`` (the base class).
def adagrad_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of ``keras.optimizers.Adagrad`` on one tensor (torch_adagrad.py; ε inside the
    root). State: ``accumulator``, started at ``initial_accumulator_value``. No step counter."""
    lr = _rules.keras_lr(group, param.dtype)               # η: float32, cast to θ's dtype
    eps = float(group["epsilon"])
    a = state["accumulator"]
    a.add_(grad * grad)                                    # a ← a + g·g
    param.sub_((grad * lr) / (a + eps).sqrt())             # θ ← θ − (g·η)/√(a + ε)


@kernel("keras_adagrad", arrays=("param", "grad", "accumulator"), hyper=("lr", "epsilon", "weight_decay"), per_tensor=("decay",),
        flags=KERAS_DECAY, torch_sqrt=True)
def keras_adagrad_kernel(x, *, decay):
    """:func:`optimlab.optim.keras._rules.adagrad` (ε inside the root)."""
    g = x.grad
    a = x.accumulator + g * g
    x.accumulator = a
    x.param = keras_param(x, decay) - g * x.lr / sqrt(a + x.epsilon)


def rmsprop_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of ``keras.optimizers.RMSprop`` on one tensor (torch_rmsprop.py). State:
    ``velocity``; ``average_gradient`` (centered) and ``momentum`` (μ > 0), made here on first
    use. No step counter. Centred, the denominator is ``(v + ε) − ḡ²`` as in the torch backend
    (rmsprop.py's ``update_step`` writes ``(v − ḡ²) + ε``: the order decides the result once v
    and ḡ² have converged, see _rules)."""
    lr = _rules.keras_lr(group, param.dtype)               # η: float32, cast to θ's dtype
    rho, momentum, eps = float(group["rho"]), float(group["momentum"]), float(group["epsilon"])
    v = state["velocity"]
    v.mul_(rho).add_(grad * grad, alpha=1 - rho)           # v ← ρ·v + (1 − ρ)·g·g
    denominator = v + eps                                  # v + ε
    if group["centered"]:
        avg = _state_slot(param, state, "average_gradient")
        avg.mul_(rho).add_(grad, alpha=1 - rho)            # ḡ ← ρ·ḡ + (1 − ρ)·g
        denominator.sub_(avg * avg)                        # (v + ε) − ḡ·ḡ
    denominator.sqrt_()                                    # d = √(...)
    increment = (grad * lr) / denominator                  # i = (g·η)/d
    if momentum > 0:
        b = _state_slot(param, state, "momentum")
        b.mul_(momentum).add_(increment)                   # b ← μ·b + i   (η inside b)
        param.sub_(b)                                      # θ ← θ − b
    else:
        param.sub_(increment)                              # θ ← θ − i


@kernel("keras_rmsprop", arrays=("param", "grad", "velocity", "average_gradient", "momentum_buffer"),
        hyper=("lr", "rho", "momentum", "epsilon", "weight_decay"), per_tensor=("decay",),
        flags={**KERAS_DECAY, "centered": "centered", "momentum": lambda h: h["momentum"] > 0}, torch_sqrt=True)
def keras_rmsprop_kernel(x, *, decay, centered, momentum):
    """:func:`optimlab.optim.keras._rules.rmsprop` (ε inside the root, η inside the momentum)."""
    g = x.grad
    v = fma(g * g, 1 - x.rho, x.velocity * x.rho)
    x.velocity = v
    denominator = v + x.epsilon
    if centered:
        average = fma(g, 1 - x.rho, x.average_gradient * x.rho)
        x.average_gradient = average
        denominator = denominator - average * average
    increment = g * x.lr / sqrt(denominator)
    p = keras_param(x, decay)
    if momentum:
        b = x.momentum_buffer * x.momentum + increment
        x.momentum_buffer = b
        x.param = p - b
    else:
        x.param = p - increment


def adadelta_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of ``keras.optimizers.Adadelta`` on one tensor (torch_adadelta.py). State:
    ``accumulated_grad``, ``accumulated_delta_var``. No step counter."""
    lr = _rules.keras_lr(group, param.dtype)               # η: float32, cast to θ's dtype
    rho, eps = float(group["rho"]), float(group["epsilon"])
    a, u = state["accumulated_grad"], state["accumulated_delta_var"]
    a.mul_(rho).add_(grad * grad, alpha=1 - rho)           # a ← ρ·a + (1 − ρ)·g·g
    delta = -((u + eps).sqrt() * grad / (a + eps).sqrt())  # Δ = −(√(u + ε)·g)/√(a + ε)
    u.mul_(rho).add_(delta * delta, alpha=1 - rho)         # u ← ρ·u + (1 − ρ)·Δ·Δ
    param.add_(delta, alpha=lr)                            # θ ← θ + η·Δ


@kernel("keras_adadelta", arrays=("param", "grad", "accumulated_grad", "accumulated_delta_var"),
        hyper=("lr", "rho", "epsilon", "weight_decay"), per_tensor=("decay",), flags=KERAS_DECAY, torch_sqrt=True)
def keras_adadelta_kernel(x, *, decay):
    """:func:`optimlab.optim.keras._rules.adadelta`."""
    g = x.grad
    a = fma(g * g, 1 - x.rho, x.accumulated_grad * x.rho)
    x.accumulated_grad = a
    delta = -(sqrt(x.accumulated_delta_var + x.epsilon) * g / sqrt(a + x.epsilon))
    x.accumulated_delta_var = fma(delta * delta, 1 - x.rho, x.accumulated_delta_var * x.rho)
    x.param = fma(delta, x.lr, keras_param(x, decay))


class Adagrad(KerasOptimizer):
    r"""``keras.optimizers.Adagrad`` on torch parameters: Keras 3's names, defaults and maths.

    With ``g`` the (clipped) gradient and η the learning rate (float32)::

        θ ← θ·(1 − λ·η)                      (only if weight_decay is set: decoupled)
        a ← a + g²                           (a₀ = initial_accumulator_value = 0.1; state "accumulator")
        θ ← θ − η·g / √(a + ε)               (ε = 1e-7 INSIDE the square root)

    torch's Adagrad starts the sum at 0, puts ε = 1e-10 outside the root, defaults to
    η = 1e-2 and has ``lr_decay``; Keras has none of that.
    """

    registry_name, registry_convention = "adagrad", "keras"  # registered by this (see _registry)
    rule = staticmethod(adagrad_rule)
    kernel = keras_adagrad_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"lr": check_learning_rate, "initial_accumulator_value": check.non_negative,
                    "epsilon": check.positive, "weight_decay": optional_non_negative}
    state_keys = frozenset({"accumulator"})

    def __init__(self, params: Any, learning_rate: float = 0.001, *, initial_accumulator_value: float = 0.1,
                 epsilon: float = 1e-7, weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=learning_rate, initial_accumulator_value=initial_accumulator_value,
                        epsilon=epsilon, weight_decay=weight_decay, fused=fused)
        super().__init__(params, defaults, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"accumulator": torch.full_like(param, group["initial_accumulator_value"],
                                               memory_format=torch.preserve_format)}

    def _kernel_update(self, group, params, grads, states, *, lr, step, decay, exact) -> bool:
        return _fused.launch(keras_adagrad_kernel,
                             dict(param=params, grad=grads, accumulator=[s["accumulator"] for s in states]),
                             dict(lr=_rules._cast(lr, params[0].dtype).item(), epsilon=float(group["epsilon"]),
                                  weight_decay=group["weight_decay"]), dict(decay=decay), exact=exact)

    def _update(self, group, params, grads, states, *, lr, step) -> None:
        _rules.adagrad(params, grads, [s["accumulator"] for s in states], lr=lr, epsilon=float(group["epsilon"]))


class RMSprop(KerasOptimizer):
    r"""``keras.optimizers.RMSprop`` on torch parameters: Keras 3's names, defaults and maths.

    With ``g`` the (clipped) gradient and η the learning rate (float32)::

        θ ← θ·(1 − λ·η)                      (only if weight_decay is set: decoupled)
        v ← ρ·v + (1 − ρ)·g²                 (state "velocity")
        centered:  ḡ ← ρ·ḡ + (1 − ρ)·g;  d = √((v + ε) − ḡ²)  (state "average_gradient")
        else:      d = √(v + ε)              (ε = 1e-7 INSIDE the square root)
        μ > 0:     b ← μ·b + η·g/d;  θ ← θ − b                (state "momentum"; lr INSIDE b)
        else:      θ ← θ − η·g/d

    torch's RMSprop has α = 0.99 (Keras ρ = 0.9), ε = 1e-8 outside the root, η = 1e-2 and
    keeps the learning rate outside its momentum buffer.
    """

    registry_name, registry_convention = "rmsprop", "keras"  # registered by this (see _registry)
    rule = staticmethod(rmsprop_rule)
    kernel = keras_rmsprop_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"lr": check_learning_rate, "rho": check.unit_interval,
                    "momentum": check.closed_unit_interval, "epsilon": check.positive,
                    "centered": check.boolean, "weight_decay": optional_non_negative}
    state_keys = frozenset({"velocity", "momentum", "average_gradient"})

    def __init__(self, params: Any, learning_rate: float = 0.001, *, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False, weight_decay: float | None = None,
                 clipnorm: float | None = None, clipvalue: float | None = None,
                 global_clipnorm: float | None = None, fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=learning_rate, rho=rho, momentum=momentum, epsilon=epsilon, centered=centered,
                        weight_decay=weight_decay, fused=fused)
        super().__init__(params, defaults, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"velocity": _zeros(param)}  # the optional slots are made on first use

    def _kernel_update(self, group, params, grads, states, *, lr, step, decay, exact) -> bool:
        momentum, centered = float(group["momentum"]), group["centered"]
        return _fused.launch(
            keras_rmsprop_kernel,
            dict(param=params, grad=grads, velocity=[s["velocity"] for s in states],
                 average_gradient=_slot(params, states, "average_gradient") if centered else [],
                 momentum_buffer=_slot(params, states, "momentum") if momentum > 0 else []),
            dict(lr=_rules._cast(lr, params[0].dtype).item(), rho=float(group["rho"]), momentum=momentum,
                 epsilon=float(group["epsilon"]), centered=centered, weight_decay=group["weight_decay"]),
            dict(decay=decay), exact=exact)

    def _update(self, group, params, grads, states, *, lr, step) -> None:
        momentum, centered = float(group["momentum"]), group["centered"]
        _rules.rmsprop(params, grads, [s["velocity"] for s in states],
                       _slot(params, states, "average_gradient") if centered else [],
                       _slot(params, states, "momentum") if momentum > 0 else [],
                       lr=lr, rho=float(group["rho"]), momentum=momentum, epsilon=float(group["epsilon"]),
                       centered=centered)


class Adadelta(KerasOptimizer):
    r"""``keras.optimizers.Adadelta`` on torch parameters: Keras 3's names, defaults and maths.

    With ``g`` the (clipped) gradient and η the learning rate (float32)::

        θ ← θ·(1 − λ·η)                      (only if weight_decay is set: decoupled)
        a ← ρ·a + (1 − ρ)·g²                 (state "accumulated_grad")
        Δ = √(u + ε)·g / √(a + ε)
        u ← ρ·u + (1 − ρ)·Δ²                 (state "accumulated_delta_var")
        θ ← θ − η·Δ

    The same formula as torch's Adadelta; only the defaults differ (Keras η = 0.001,
    ρ = 0.95, ε = 1e-7; torch η = 1.0, ρ = 0.9, ε = 1e-6), which makes Keras's default
    Adadelta a thousand times slower.
    """

    registry_name, registry_convention = "adadelta", "keras"  # registered by this (see _registry)
    rule = staticmethod(adadelta_rule)
    kernel = keras_adadelta_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"lr": check_learning_rate, "rho": check.unit_interval, "epsilon": check.positive,
                    "weight_decay": optional_non_negative}
    state_keys = frozenset({"accumulated_grad", "accumulated_delta_var"})

    def __init__(self, params: Any, learning_rate: float = 0.001, *, rho: float = 0.95, epsilon: float = 1e-7,
                 weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=learning_rate, rho=rho, epsilon=epsilon, weight_decay=weight_decay, fused=fused)
        super().__init__(params, defaults, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"accumulated_grad": _zeros(param), "accumulated_delta_var": _zeros(param)}

    def _kernel_update(self, group, params, grads, states, *, lr, step, decay, exact) -> bool:
        return _fused.launch(
            keras_adadelta_kernel,
            dict(param=params, grad=grads, accumulated_grad=[s["accumulated_grad"] for s in states],
                 accumulated_delta_var=[s["accumulated_delta_var"] for s in states]),
            dict(lr=_rules._cast(lr, params[0].dtype).item(), rho=float(group["rho"]),
                 epsilon=float(group["epsilon"]), weight_decay=group["weight_decay"]), dict(decay=decay), exact=exact)

    def _update(self, group, params, grads, states, *, lr, step) -> None:
        _rules.adadelta(params, grads, [s["accumulated_grad"] for s in states],
                        [s["accumulated_delta_var"] for s in states], lr=lr, rho=float(group["rho"]),
                        epsilon=float(group["epsilon"]))
