"""Keras's SGD: the velocity carries the learning rate."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optimlab.optim import _fused
from optimlab.optim import _validation as check
from optimlab.optim._kernelgen import KERAS_DECAY, fma, keras_param, kernel
from optimlab.optim.keras import _rules
from optimlab.optim.keras._base import (KerasOptimizer, as_keras_lr, check_keras_momentum, check_learning_rate,
                                        optional_non_negative)


def _zeros(param: Tensor) -> Tensor:
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def sgd_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of ``keras.optimizers.SGD`` on one tensor: Keras 3's update, in the order of its
    torch backend (``torch_sgd.py``, ``_parallel_update_step``; ``sgd.py``'s ``update_step`` has
    the same maths). State: ``momentum`` (the velocity, which carries the learning rate), made
    here if a group switched momentum on mid-run. No step counter.

    ``grad`` is the clipped gradient and ``param`` is already decayed: clipping and the
    decoupled weight decay ``θ ← θ·(1 − λ·η)`` are Keras's ``apply`` (the base class), not the
    update. η is Keras's float32 learning rate, not cast to the parameter's dtype (as Keras)."""
    lr = as_keras_lr(group["lr"])                          # η: Keras's float32 variable
    momentum = group["momentum"]
    if momentum != 0:
        v = state.get("momentum")
        if v is None:
            v = state["momentum"] = _zeros(param)
        v.mul_(momentum).add_(grad, alpha=-lr)             # v ← μ·v − η·g
        if group["nesterov"]:
            param.add_(grad, alpha=-lr)                    # θ ← θ − η·g
            param.add_(v, alpha=momentum)                  #     + μ·v
        else:
            param.add_(v)                                  # θ ← θ + v
    else:
        param.add_(grad, alpha=-lr)                        # θ ← θ − η·g


@kernel("keras_sgd", arrays=("param", "grad", "velocity"), hyper=("lr", "momentum", "weight_decay"), per_tensor=("decay",),
        flags={**KERAS_DECAY, "momentum": lambda h: h["momentum"] != 0, "nesterov": "nesterov"}, torch_sqrt=True)
def keras_sgd_kernel(x, *, decay, momentum, nesterov):
    """:func:`optimlab.optim.keras._rules.sgd` (the velocity carries the learning rate)."""
    p = keras_param(x, decay)
    if not momentum:
        x.param = fma(x.grad, -x.lr, p)
        return
    v = fma(x.grad, -x.lr, x.velocity * x.momentum)           # v ← μ·v − η·g
    x.velocity = v
    if nesterov:
        x.param = fma(v, x.momentum, fma(x.grad, -x.lr, p))     # θ ← θ − η·g + μ·v
    else:
        x.param = p + v


class SGD(KerasOptimizer):
    r"""``keras.optimizers.SGD`` on torch parameters: Keras 3's names, defaults and maths.

    With ``g`` the (clipped) gradient, η the learning rate (float32, as Keras) and μ the momentum::

        θ ← θ·(1 − λ·η)                      (only if weight_decay is set: decoupled)
        μ = 0:      θ ← θ − η·g
        μ > 0:      v ← μ·v − η·g;   θ ← θ + v          (state "momentum" holds v)
        nesterov:   v ← μ·v − η·g;   θ ← θ + μ·v − η·g

    The velocity carries the learning rate, so when η changes, past momentum keeps the rate
    it was made with; ``torch.optim.SGD`` (``optimlab.optim.SGD``) rescales its whole buffer
    by the current rate instead. Under a constant rate the two are the same optimizer.
    As in Keras, ``momentum`` must be a float in [0, 1] and ``nesterov=True`` without
    momentum is plain SGD. There is no dampening.
    """

    registry_name, registry_convention = "sgd", "keras"  # registered by this (see _registry)
    rule = staticmethod(sgd_rule)
    kernel = keras_sgd_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"lr": check_learning_rate, "momentum": check_keras_momentum, "nesterov": check.boolean,
                    "weight_decay": optional_non_negative}
    state_keys = frozenset({"momentum"})
    optional_state_keys = frozenset({"momentum"})  # made by _update if missing

    def __init__(self, params: Any, learning_rate: float = 0.01, *, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float | None = None, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=learning_rate, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        fused=fused)
        super().__init__(params, defaults, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum": _zeros(param)} if group["momentum"] != 0 else {}

    def _kernel_update(self, group, params, grads, states, *, lr, step, decay, exact) -> bool:
        momentum = group["momentum"]
        if momentum:
            for p, s in zip(params, states):
                if "momentum" not in s:
                    s["momentum"] = _zeros(p)
        return _fused.launch(keras_sgd_kernel,
                             dict(param=params, grad=grads, velocity=[s["momentum"] for s in states] if momentum else []),
                             dict(lr=lr, momentum=momentum, nesterov=group["nesterov"],
                                  weight_decay=group["weight_decay"]), dict(decay=decay), exact=exact)

    def _update(self, group, params, grads, states, *, lr, step) -> None:
        momentum = group["momentum"]
        if momentum:  # a group may switch momentum on mid-run
            for p, s in zip(params, states):
                if "momentum" not in s:
                    s["momentum"] = _zeros(p)
        velocities = [s["momentum"] for s in states] if momentum else []
        _rules.sgd(params, grads, velocities, lr=lr, momentum=momentum, nesterov=group["nesterov"])
