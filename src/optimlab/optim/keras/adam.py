"""Keras's Adam family: Adam (AMSGrad), AdamW, Adamax, Nadam."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from optimlab.optim import _fused
from optimlab.optim import _validation as check
from optimlab.optim._kernelgen import KERAS_DECAY, fma, keras_param, kernel, maximum, sqrt
from optimlab.optim.keras import _rules
from optimlab.optim.keras._base import KerasOptimizer, as_keras_lr, check_learning_rate, optional_non_negative


def _zeros(param: Tensor) -> Tensor:
    return torch.zeros_like(param, memory_format=torch.preserve_format)


# The readable rules: one tensor at a time, Keras 3's update in the order of its torch backend
# (keras/src/backend/torch/optimizers/torch_<name>.py, the code Keras runs under KERAS_BACKEND=torch,
# transcribed for lists of tensors in _rules). ``grad`` is the clipped gradient and ``param`` is
# already decayed: clipping and decoupled weight decay are Keras's ``apply`` (the base class).
# Keras counts steps per optimizer: ``group`` is the param group seen with the optimizer's
# ``iterations`` (steps completed before this one), and t = iterations + 1 (_rules.local_step).
# The scalars (η, the β-powers, Nadam's schedule) are evaluated in the parameter's dtype, as Keras.
def adam_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of ``keras.optimizers.Adam`` (and ``AdamW``) on one tensor (torch_adam.py; ε
    before the bias correction). State: ``momentum``, ``velocity``; ``velocity_hat`` (amsgrad),
    made here on first use. Reads ``group["iterations"]``: no per-tensor step counter."""
    dtype = param.dtype
    t = _rules.local_step(group)
    beta_1, beta_2, eps = float(group["beta_1"]), float(group["beta_2"]), float(group["epsilon"])
    lr = _rules._cast(as_keras_lr(group["lr"]), dtype)     # η: float32, cast to θ's dtype (0-dim)
    beta_1_power, beta_2_power = _rules._power(beta_1, t, dtype), _rules._power(beta_2, t, dtype)
    alpha = (lr * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power)).item()  # α = η·√(1 − β2ᵗ)/(1 − β1ᵗ)
    m, v = state["momentum"], state["velocity"]
    m.mul_(beta_1).add_(grad, alpha=1 - beta_1)            # m ← β1·m + (1 − β1)·g
    v.mul_(beta_2).add_(grad * grad, alpha=1 - beta_2)     # v ← β2·v + (1 − β2)·g·g
    if group["amsgrad"]:
        if "velocity_hat" not in state:
            state["velocity_hat"] = _zeros(param)
        v_hat = state["velocity_hat"]
        torch.maximum(v_hat, v, out=v_hat)                 # v̂ ← max(v̂, v)
        v = v_hat                                          # used for v
    param.sub_((m * alpha) / (v.sqrt() + eps))             # θ ← θ − (m·α)/(√v + ε)


@kernel("keras_adam", arrays=("param", "grad", "momentum", "velocity", "velocity_hat"),
        hyper=("alpha", "beta_1", "beta_2", "epsilon", "weight_decay"), per_tensor=("decay",),
        flags={**KERAS_DECAY, "amsgrad": "amsgrad"}, torch_sqrt=True)
def keras_adam_kernel(x, *, decay, amsgrad):
    """:func:`optimlab.optim.keras._rules.adam`; ``alpha`` = η·√(1 − β2ᵗ)/(1 − β1ᵗ) in the
    variable's dtype (:func:`optimlab.optim.keras._rules.adam_alpha`)."""
    g = x.grad
    x.momentum = m = fma(g, 1 - x.beta_1, x.momentum * x.beta_1)
    x.velocity = v = fma(g * g, 1 - x.beta_2, x.velocity * x.beta_2)
    if amsgrad:
        x.velocity_hat = v = maximum(x.velocity_hat, v)
    x.param = keras_param(x, decay) - m * x.alpha / (sqrt(v) + x.epsilon)


def adamax_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of ``keras.optimizers.Adamax`` on one tensor (torch_adamax.py; ε after the max).
    State: ``momentum``, ``norm``. Reads ``group["iterations"]``: no per-tensor step counter."""
    dtype = param.dtype
    t = _rules.local_step(group)
    beta_1, beta_2, eps = float(group["beta_1"]), float(group["beta_2"]), float(group["epsilon"])
    lr = _rules.keras_lr(group, dtype)                     # η: float32, cast to θ's dtype
    bias_correction = (1 - _rules._power(beta_1, t, dtype)).item()  # 1 − β1ᵗ
    m, u = state["momentum"], state["norm"]
    m.mul_(beta_1).add_(grad, alpha=1 - beta_1)            # m ← β1·m + (1 − β1)·g
    u.mul_(beta_2)                                         # u ← β2·u
    torch.maximum(u, grad.abs(), out=u)                    # u ← max(u, |g|)
    param.sub_((m * lr) / ((u + eps) * bias_correction))   # θ ← θ − (m·η)/((u + ε)·(1 − β1ᵗ))


@kernel("keras_adamax", arrays=("param", "grad", "momentum", "norm"),
        hyper=("lr", "beta_1", "beta_2", "epsilon", "bias_correction", "weight_decay"), per_tensor=("decay",),
        flags=KERAS_DECAY, torch_sqrt=True)
def keras_adamax_kernel(x, *, decay):
    """:func:`optimlab.optim.keras._rules.adamax` (ε after the max); ``bias_correction`` = 1 − β1ᵗ
    in the variable's dtype."""
    g = x.grad
    x.momentum = m = fma(g, 1 - x.beta_1, x.momentum * x.beta_1)
    x.norm = u = maximum(x.norm * x.beta_2, abs(g))
    x.param = keras_param(x, decay) - m * x.lr / ((u + x.epsilon) * x.bias_correction)


def nadam_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of ``keras.optimizers.Nadam`` on one tensor (torch_nadam.py). State:
    ``momentum``, ``velocity``. Reads two optimizer-wide values from ``group``: ``iterations``
    and ``u_product``, the momentum product ``U_{t−1}`` before this step (Keras's ``_u_product``
    variable: a 0-dim tensor in the first parameter's dtype; :class:`Nadam` keeps it as
    ``u_product`` and advances it to ``U_t = U_{t−1}·u_t`` once per step)."""
    dtype = param.dtype
    t = _rules.local_step(group)
    beta_1, beta_2, eps = float(group["beta_1"]), float(group["beta_2"]), float(group["epsilon"])
    lr = _rules.keras_lr(group, dtype)                     # η: float32, cast to θ's dtype
    u_t = _rules.nadam_momentum(beta_1, t, dtype)          # u_t = β1·(1 − ½·0.96ᵗ)
    u_t_1 = _rules.nadam_momentum(beta_1, t + 1, dtype)    # u_{t+1}
    u_product_t = group["u_product"] * u_t                 # U_t = U_{t−1}·u_t
    u_product_t_1 = u_product_t * u_t_1                    # U_t·u_{t+1}
    beta_2_power = _rules._power(beta_2, t, dtype)         # β2ᵗ
    m, v = state["momentum"], state["velocity"]
    m.mul_(beta_1).add_(grad, alpha=1 - beta_1)            # m ← β1·m + (1 − β1)·g
    v.mul_(beta_2).add_(grad * grad, alpha=1 - beta_2)     # v ← β2·v + (1 − β2)·g·g
    m_hat = ((m * u_t_1.item()) / (1 - u_product_t_1).item()          # m̂ = (m·u_{t+1})/(1 − U_t·u_{t+1})
             + (grad * (1 - u_t).item()) / (1 - u_product_t).item())  #     + (g·(1 − u_t))/(1 − U_t)
    v_hat = v / (1 - beta_2_power).item()                  # v̂ = v/(1 − β2ᵗ)
    param.sub_((m_hat * lr) / (v_hat.sqrt() + eps))        # θ ← θ − (m̂·η)/(√v̂ + ε)


@kernel("keras_nadam", arrays=("param", "grad", "momentum", "velocity"),
        hyper=("lr", "beta_1", "beta_2", "epsilon", "u_next", "one_minus_u", "one_minus_u_product",
               "one_minus_u_product_next", "one_minus_beta_2_power", "weight_decay"),
        per_tensor=("decay",), flags=KERAS_DECAY, torch_sqrt=True)
def keras_nadam_kernel(x, *, decay):
    """:func:`optimlab.optim.keras._rules.nadam`; the schedule's numbers are
    :func:`optimlab.optim.keras._rules.nadam_scalars`'."""
    g = x.grad
    x.momentum = m = fma(g, 1 - x.beta_1, x.momentum * x.beta_1)
    x.velocity = v = fma(g * g, 1 - x.beta_2, x.velocity * x.beta_2)
    m_hat = m * x.u_next / x.one_minus_u_product_next + g * x.one_minus_u / x.one_minus_u_product
    v_hat = v / x.one_minus_beta_2_power
    x.param = keras_param(x, decay) - m_hat * x.lr / (sqrt(v_hat) + x.epsilon)


_ADAM_CHECKS = {"lr": check_learning_rate, "beta_1": check.unit_interval, "beta_2": check.unit_interval,
                "epsilon": check.positive, "weight_decay": optional_non_negative}


class Adam(KerasOptimizer):
    r"""``keras.optimizers.Adam`` on torch parameters: Keras 3's names, defaults and maths.

    With ``g`` the (clipped) gradient, η the learning rate (float32) and ``t`` the global step::

        θ ← θ·(1 − λ·η)                      (only if weight_decay is set: decoupled, as AdamW)
        m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g²       (states "momentum", "velocity")
        amsgrad: v̂ ← max(v̂, v), used for v                     (state "velocity_hat")
        θ ← θ − η·√(1 − β2ᵗ)/(1 − β1ᵗ) · m / (√v + ε̂)          (ε̂ = 1e-7)

    ε̂ is added to the *uncorrected* √v (the paper's "efficient" form), which is torch's
    Adam with a step-dependent ε = ε̂/√(1 − β2ᵗ): 3.2e-6 at t = 1, 3.2e-7 at t = 100.
    The β-powers are evaluated in the parameter's dtype, as Keras does.
    """

    registry_name, registry_convention = "adam", "keras"  # registered by this (see _registry)
    rule = staticmethod(adam_rule)
    kernel = keras_adam_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {**_ADAM_CHECKS, "amsgrad": check.boolean}
    state_keys = frozenset({"momentum", "velocity", "velocity_hat"})
    optional_state_keys = frozenset({"velocity_hat"})  # made by _update if missing

    def __init__(self, params: Any, learning_rate: float = 0.001, *, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, amsgrad: bool = False, weight_decay: float | None = None,
                 clipnorm: float | None = None, clipvalue: float | None = None,
                 global_clipnorm: float | None = None, fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad,
                        weight_decay=weight_decay, fused=fused)
        super().__init__(params, defaults, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {"momentum": _zeros(param), "velocity": _zeros(param)}
        if group["amsgrad"]:
            state["velocity_hat"] = _zeros(param)
        return state

    def _kernel_update(self, group, params, grads, states, *, lr, step, decay, exact) -> bool:
        amsgrad = group["amsgrad"]
        if amsgrad:
            for p, s in zip(params, states):
                if "velocity_hat" not in s:
                    s["velocity_hat"] = _zeros(p)
        beta_1, beta_2 = float(group["beta_1"]), float(group["beta_2"])
        return _fused.launch(
            keras_adam_kernel,
            dict(param=params, grad=grads, momentum=[s["momentum"] for s in states],
                 velocity=[s["velocity"] for s in states],
                 velocity_hat=[s["velocity_hat"] for s in states] if amsgrad else []),
            dict(alpha=_rules.adam_alpha(lr, beta_1, beta_2, step, params[0].dtype), beta_1=beta_1, beta_2=beta_2,
                 epsilon=float(group["epsilon"]), amsgrad=amsgrad, weight_decay=group["weight_decay"]),
            dict(decay=decay), exact=exact)

    def _update(self, group, params, grads, states, *, lr, step) -> None:
        amsgrad = group["amsgrad"]
        if amsgrad:  # a group may switch it on mid-run
            for p, s in zip(params, states):
                if "velocity_hat" not in s:
                    s["velocity_hat"] = _zeros(p)
        _rules.adam(params, grads, [s["momentum"] for s in states], [s["velocity"] for s in states],
                    [s["velocity_hat"] for s in states] if amsgrad else [], lr=lr, beta_1=float(group["beta_1"]),
                    beta_2=float(group["beta_2"]), epsilon=float(group["epsilon"]), amsgrad=amsgrad, step=step)


class AdamW(Adam):
    r"""``keras.optimizers.AdamW``: :class:`Adam` with ``weight_decay = 0.004`` by default.

    Keras decouples weight decay in every optimizer, so ``Adam(weight_decay=λ)`` is the same
    optimizer; the decay is ``θ ← θ·(1 − λ·η)`` with the current rate η, like torch's AdamW
    (whose default λ is 1e-2), but the Adam step differs by ε's placement. As in Keras, the
    constructor refuses ``weight_decay=None``; a param group with ``weight_decay=None`` gets no
    decay (as in every Keras twin), and so do parameters given to
    :meth:`~KerasOptimizer.exclude_from_weight_decay` (Keras's way).
    """

    registry_name, registry_convention = "adamw", "keras"  # registered by this (see _registry)
    rule = staticmethod(adam_rule)

    def __init__(self, params: Any, learning_rate: float = 0.001, *, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
                 clipnorm: float | None = None, clipvalue: float | None = None,
                 global_clipnorm: float | None = None, fused: bool | None = None, skip_nonfinite: bool = False):
        if weight_decay is None:  # Keras: "Argument `weight_decay` must be a float"
            raise ValueError("AdamW: weight_decay must be a float, got None (as Keras requires); for no decay "
                             "use Adam, for no decay on some parameters give their param group "
                             "weight_decay=None or call exclude_from_weight_decay()")
        super().__init__(params, learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad,
                         weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, fused=fused, skip_nonfinite=skip_nonfinite)


class Adamax(KerasOptimizer):
    r"""``keras.optimizers.Adamax`` on torch parameters: Keras 3's names, defaults and maths.

    With ``g`` the (clipped) gradient, η the learning rate (float32) and ``t`` the global step::

        θ ← θ·(1 − λ·η)                      (only if weight_decay is set: decoupled)
        m ← β1·m + (1 − β1)·g                (state "momentum")
        u ← max(β2·u, |g|)                   (state "norm")
        θ ← θ − η/(1 − β1ᵗ) · m / (u + ε)    (ε AFTER the max; torch: max(β2·u, |g| + ε))

    Defaults η = 0.001 (torch 0.002), ε = 1e-7 (torch 1e-8).
    """

    registry_name, registry_convention = "adamax", "keras"  # registered by this (see _registry)
    rule = staticmethod(adamax_rule)
    kernel = keras_adamax_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = dict(_ADAM_CHECKS)
    state_keys = frozenset({"momentum", "norm"})

    def __init__(self, params: Any, learning_rate: float = 0.001, *, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, weight_decay=weight_decay,
                        fused=fused)
        super().__init__(params, defaults, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum": _zeros(param), "norm": _zeros(param)}

    def _kernel_update(self, group, params, grads, states, *, lr, step, decay, exact) -> bool:
        lr_, bias_correction = _rules.adamax_scalars(lr, float(group["beta_1"]), step, params[0].dtype)
        return _fused.launch(
            keras_adamax_kernel,
            dict(param=params, grad=grads, momentum=[s["momentum"] for s in states], norm=[s["norm"] for s in states]),
            dict(lr=lr_, beta_1=float(group["beta_1"]), beta_2=float(group["beta_2"]), epsilon=float(group["epsilon"]),
                 bias_correction=bias_correction, weight_decay=group["weight_decay"]), dict(decay=decay), exact=exact)

    def _update(self, group, params, grads, states, *, lr, step) -> None:
        _rules.adamax(params, grads, [s["momentum"] for s in states], [s["norm"] for s in states], lr=lr,
                      beta_1=float(group["beta_1"]), beta_2=float(group["beta_2"]),
                      epsilon=float(group["epsilon"]), step=step)


class Nadam(KerasOptimizer):
    r"""``keras.optimizers.Nadam`` on torch parameters: Keras 3's names, defaults and maths.

    With ``g`` the (clipped) gradient, η the learning rate (float32), ``t`` the global step and
    the momentum schedule ``u_t = β1·(1 − ½·0.96ᵗ)``, ``U_t = U_{t−1}·u_t`` (one product for
    the whole optimizer, as Keras's ``u_product``)::

        θ ← θ·(1 − λ·η)                      (only if weight_decay is set: decoupled)
        m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g²       (states "momentum", "velocity")
        m̂ = u_{t+1}·m/(1 − U_t·u_{t+1}) + (1 − u_t)·g/(1 − U_t);   v̂ = v/(1 − β2ᵗ)
        θ ← θ − η·m̂ / (√v̂ + ε)

    This is torch's NAdam with ``momentum_decay = 1``: torch's default ψ = 0.004 makes its
    momentum ``β1·(1 − ½·0.96^(0.004·t))`` reach β1 only after ~10⁴ steps (Keras: ~100).
    ``beta_1`` must be the same in every param group (Keras has one momentum schedule).
    """

    registry_name, registry_convention = "nadam", "keras"  # registered by this (see _registry)
    rule = staticmethod(nadam_rule)
    kernel = keras_nadam_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = dict(_ADAM_CHECKS)
    state_keys = frozenset({"momentum", "velocity"})
    _extra_attributes = ("u_product",)

    def __init__(self, params: Any, learning_rate: float = 0.001, *, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        self.u_product = 1.0  # Keras's u_product U_t (in the first parameter's dtype), after `iterations` steps
        self._next_u_product: float | None = None
        defaults = dict(lr=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, weight_decay=weight_decay,
                        fused=fused)
        super().__init__(params, defaults, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, skip_nonfinite=skip_nonfinite)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        first, new = self.param_groups[0]["beta_1"], self.param_groups[-1]["beta_1"]
        if new != first:
            self.param_groups.pop()
            raise ValueError(f"Nadam: beta_1 must be the same in every param group (Keras has one momentum "
                             f"schedule), got {new!r} after {first!r}")

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum": _zeros(param), "velocity": _zeros(param)}

    def _kernel_update(self, group, params, grads, states, *, lr, step, decay, exact) -> bool:
        dtype = self.param_groups[0]["params"][0].dtype  # Keras keeps u_product in the first variable's dtype
        scalars, u_product = _rules.nadam_scalars(lr, float(group["beta_1"]), float(group["beta_2"]), step,
                                                  torch.tensor(self.u_product, dtype=dtype), params[0].dtype)
        done = _fused.launch(
            keras_nadam_kernel,
            dict(param=params, grad=grads, momentum=[s["momentum"] for s in states],
                 velocity=[s["velocity"] for s in states]),
            dict(scalars, beta_1=float(group["beta_1"]), beta_2=float(group["beta_2"]),
                 epsilon=float(group["epsilon"]), weight_decay=group["weight_decay"]), dict(decay=decay), exact=exact)
        if done:
            self._next_u_product = u_product.item()
        return done

    def _update(self, group, params, grads, states, *, lr, step) -> None:
        dtype = self.param_groups[0]["params"][0].dtype  # Keras keeps u_product in the first variable's dtype
        u_product = _rules.nadam(params, grads, [s["momentum"] for s in states], [s["velocity"] for s in states],
                                 lr=lr, beta_1=float(group["beta_1"]), beta_2=float(group["beta_2"]),
                                 epsilon=float(group["epsilon"]), step=step,
                                 u_product=torch.tensor(self.u_product, dtype=dtype))
        self._next_u_product = u_product.item()

    def _rule_group(self, group, params, step):
        """As the base, with ``u_product`` (U_{t−1}, in the first parameter's dtype, as
        ``_update`` passes it); U_t for ``_finish_step`` is computed as ``_update`` does."""
        u_product = torch.tensor(self.u_product, dtype=self.param_groups[0]["params"][0].dtype)
        u_t = _rules.nadam_momentum(float(group["beta_1"]), step, params[0].dtype)
        self._next_u_product = (u_product * u_t).item()
        return {**super()._rule_group(group, params, step), "u_product": u_product}

    def _finish_step(self) -> None:
        self.u_product, self._next_u_product = self._next_u_product, None

    def _global_state(self) -> dict[str, Any]:
        return {**super()._global_state(), "u_product": self.u_product}

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        super()._check_loadable(state_dict)
        u = state_dict["optimlab"].get("u_product")
        if isinstance(u, bool) or not isinstance(u, float) or not math.isfinite(u) or not 0 <= u <= 1:
            raise ValueError(f"the state's Nadam momentum product u_product must be a float in [0, 1], got {u!r}")

    def _set_global_state(self, saved: dict[str, Any]) -> None:
        super()._set_global_state(saved)
        self.u_product = saved["u_product"]
