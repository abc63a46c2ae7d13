"""Per-coordinate adaptive rates: AdaGrad, RMSprop, Adadelta (torch's conventions)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.adadelta import adadelta as _torch_adadelta  # torch's functional forms: fused kernels,
from torch.optim.adagrad import adagrad as _torch_adagrad  # and the reference for gradients in another dtype
from torch.optim.rmsprop import rmsprop as _torch_rmsprop

from optimlab.optim import _fused, _rules
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer
from optimlab.optim._kernelgen import decay_on, fma, kernel, lerp, sqrt, torch_grad


def _effective_grad(param: Tensor, grad: Tensor, group: dict[str, Any]) -> Tensor:
    """``g = (−∇ if maximize else ∇) + λθ``: the gradient the torch-convention rules see."""
    g = -grad if group["maximize"] else grad
    return g + group["weight_decay"] * param if group["weight_decay"] != 0 else g


def adagrad_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One AdaGrad step on one tensor (Duchi et al. 2011; ``torch.optim.Adagrad``)."""
    state["step"] += 1
    t = state["step"].item()
    g = _effective_grad(param, grad, group)
    lr_t = group["lr"] / (1 + (t - 1) * group["lr_decay"])    # γ_t = γ / (1 + (t − 1)·decay)
    s = state["sum"]
    s.add_(g * g)                                              # s ← s + g²
    param.sub_(lr_t * g / (s.sqrt() + group["eps"]))           # θ ← θ − γ_t·g / (√s + ε)


def rmsprop_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One RMSprop step on one tensor (Hinton's lecture 6e, 2012; centred: Graves 2013;
    ``torch.optim.RMSprop``)."""
    state["step"] += 1
    g = _effective_grad(param, grad, group)
    alpha, eps = group["alpha"], group["eps"]
    v = state["square_avg"]
    v.mul_(alpha).add_((1 - alpha) * g * g)                    # v ← αv + (1 − α)g²
    if group["centered"]:
        g_avg = state.setdefault("grad_avg", torch.zeros_like(param))
        g_avg.mul_(alpha).add_((1 - alpha) * g)                # ḡ ← αḡ + (1 − α)g
        rms = (v - g_avg * g_avg).sqrt() + eps                 # √(v − ḡ²) + ε
    else:
        rms = v.sqrt() + eps                                   # √v + ε
    if group["momentum"] > 0:
        b = state.setdefault("momentum_buffer", torch.zeros_like(param))
        b.mul_(group["momentum"]).add_(g / rms)                # b ← μb + g/rms
        param.sub_(group["lr"] * b)                            # θ ← θ − γb
    else:
        param.sub_(group["lr"] * g / rms)                      # θ ← θ − γ·g/rms


@kernel("rmsprop", arrays=("param", "grad", "square_avg", "grad_avg", "momentum_buffer"),
        hyper=("lr", "alpha", "eps", "momentum", "weight_decay"),
        flags={"maximize": "maximize", "decay": decay_on, "centered": "centered",
               "momentum": lambda h: h["momentum"] > 0})
def rmsprop_kernel(x, *, maximize, decay, centered, momentum):
    """:func:`optimlab.optim._rules.rmsprop` after :func:`~optimlab.optim._rules.effective_grads`."""
    g = torch_grad(x, maximize, decay)
    v = fma((1 - x.alpha) * g, g, x.square_avg * x.alpha)
    x.square_avg = v
    if centered:
        ga = lerp(x.grad_avg, g, 1 - x.alpha)
        x.grad_avg = ga
        avg = sqrt(fma(-ga, ga, v))
    else:
        avg = sqrt(v)
    avg = avg + x.eps
    if momentum:
        b = x.momentum_buffer * x.momentum + g / avg
        x.momentum_buffer = b
        x.param = fma(b, -x.lr, x.param)
    else:
        x.param = x.param + -x.lr * g / avg


def adadelta_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Adadelta step on one tensor (Zeiler 2012, Algorithm 1; ``torch.optim.Adadelta``,
    whose ``lr`` scales the step, 1.0 in the paper)."""
    state["step"] += 1
    g = _effective_grad(param, grad, group)
    rho, eps = group["rho"], group["eps"]
    v, u = state["square_avg"], state["acc_delta"]
    v.mul_(rho).add_((1 - rho) * g * g)                        # E[g²] ← ρE[g²] + (1 − ρ)g²
    delta = (u + eps).sqrt() / (v + eps).sqrt() * g            # Δ = RMS[Δ]_{t−1} / RMS[g]_t · g
    u.mul_(rho).add_((1 - rho) * delta * delta)                # E[Δ²] ← ρE[Δ²] + (1 − ρ)Δ²
    param.sub_(group["lr"] * delta)                            # θ ← θ − γΔ


@kernel("adadelta", arrays=("param", "grad", "square_avg", "acc_delta"), hyper=("lr", "rho", "eps", "weight_decay"),
        flags={"maximize": "maximize", "decay": decay_on})
def adadelta_kernel(x, *, maximize, decay):
    """:func:`optimlab.optim._rules.adadelta` after :func:`~optimlab.optim._rules.effective_grads`."""
    g = torch_grad(x, maximize, decay)
    v = fma((1 - x.rho) * g, g, x.square_avg * x.rho)
    x.square_avg = v
    std = sqrt(v + x.eps)
    delta = sqrt(x.acc_delta + x.eps) / std * g
    x.acc_delta = fma((1 - x.rho) * delta, delta, x.acc_delta * x.rho)
    x.param = fma(delta, -x.lr, x.param)


class Adagrad(Optimizer):
    r"""AdaGrad (Duchi et al. 2011), a twin of ``torch.optim.Adagrad``.

    With ``g`` the gradient (negated if ``maximize``) plus ``λθ``::

        s_t = s_{t−1} + g_t²                         (s₀ = initial_accumulator_value)
        θ_t = θ_{t−1} − γ/(1 + (t − 1)·lr_decay) · g_t / (√s_t + ε)

    Each coordinate's rate shrinks with its own gradient history, so rare features keep
    large steps: the lectures' case for sparse data. Sparse gradients
    (``nn.Embedding(sparse=True)``) update only the rows they touch. As in torch, the
    state is created at construction (``step = 0``, ``sum = initial_accumulator_value``).
    """

    registry_name = "adagrad"  # registered by this (see _registry)
    rule = staticmethod(adagrad_rule)

    hyper_checks = {"lr_decay": check.non_negative, "initial_accumulator_value": check.non_negative,
                    "eps": check.positive}
    state_keys = frozenset({"step", "sum"})
    supports_sparse = True
    other_dtype_grads = "torch"  # torch's Adagrad promotes
    default_kernels = "torch"
    torch_fused_ops = ("_fused_adagrad_",)

    def __init__(self, params: Any, lr: float | Tensor = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None,
                 skip_nonfinite: bool = False):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:  # eager state, as torch: state_dict() is complete at once
            self.state[p] = self._init_state(p, group)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        init = group["initial_accumulator_value"]
        value = complex(init, init) if param.is_complex() else init
        return {"step": self._new_step(),
                "sum": torch.full_like(param, value, memory_format=torch.preserve_format)}

    def _update(self, group, params, grads, states) -> None:
        lr, lr_decay, eps = float(group["lr"]), group["lr_decay"], group["eps"]
        if grads[0].is_sparse:
            if not self._amp_unscale(grads):
                return
            (step,) = self._advance(states)
            grad = -grads[0] if group["maximize"] else grads[0]
            _rules.adagrad_sparse(params[0], grad, states[0]["sum"], step, lr=lr, lr_decay=lr_decay, eps=eps)
            return
        sums, steps = [s["sum"] for s in states], [s["step"] for s in states]
        fused = self._kernel and _fused.fits([params, grads, sums])
        self._kernel_ran = bool(fused)
        if fused and params[0].is_cpu:  # torch's fused CPU kernel, called directly
            _fused.increment(steps)
            _fused.mark_written(params)
            torch._fused_adagrad_(params, grads, sums, steps, lr=lr, lr_decay=lr_decay,
                                  weight_decay=group["weight_decay"], eps=eps, maximize=group["maximize"],
                                  grad_scale=self._grad_scale, found_inf=self._found_inf)
            self._amp_rewind(steps)  # as torch's _fused_adagrad: steps -= found_inf
            return
        if fused:
            _fused.mark_written(params)
            _torch_adagrad(params, grads, sums, self._steps_on(params[0].device, states), fused=True, lr=lr,
                                        weight_decay=group["weight_decay"], lr_decay=lr_decay, eps=eps,
                                        maximize=group["maximize"], grad_scale=self._grad_scale,
                                        found_inf=self._found_inf)
            return
        if not self._amp_unscale(grads):
            return
        step_values = self._advance(states)
        params, grads, sums = self._real(params), self._real(grads), self._real(sums)
        grads = _rules.effective_grads(params, grads, maximize=group["maximize"],
                                       weight_decay=group["weight_decay"])
        _rules.adagrad(params, grads, sums, step_values, lr=lr, lr_decay=lr_decay, eps=eps,
                       grads_owned=bool(group["maximize"] or group["weight_decay"]))
        self._amp_rewind(steps)

    def _update_other_dtype(self, group, params, grads, states) -> None:
        _torch_adagrad(params, grads, [s["sum"] for s in states], [s["step"] for s in states], fused=False,
                       foreach=False, has_complex=any(map(torch.is_complex, params)), lr=float(group["lr"]),
                       weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
                       maximize=group["maximize"])


class RMSprop(Optimizer):
    r"""RMSprop (Hinton's lecture 6e), a twin of ``torch.optim.RMSprop``.

    With ``g`` the gradient (negated if ``maximize``) plus ``λθ``::

        v_t = α·v_{t−1} + (1 − α)·g_t²
        centered:  ḡ_t = lerp(ḡ_{t−1}, g_t, 1 − α),   v̂_t = v_t − ḡ_t²   (else v̂_t = v_t)
        d_t = g_t / (√v̂_t + ε)
        momentum:  b_t = μ·b_{t−1} + d_t,  θ_t = θ_{t−1} − γ·b_t;   else θ_t = θ_{t−1} − γ·d_t

    An exponentially decaying average forgets old gradients, so the rate does not decay
    to zero as AdaGrad's does (the lectures: good for non-stationary objectives).
    """

    registry_name = "rmsprop"  # registered by this (see _registry)
    rule = staticmethod(rmsprop_rule)
    kernel = rmsprop_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"alpha": check.unit_interval, "eps": check.positive, "momentum": check.non_negative,
                    "centered": check.boolean}
    state_keys = frozenset({"step", "square_avg", "momentum_buffer", "grad_avg"})
    keyword_aliases = {**Optimizer.keyword_aliases, "rho": "alpha"}
    other_dtype_grads = "torch"  # as torch's RMSprop (whose centred lerp fails unless L2 decay promoted)
    load_defaults = {**Optimizer.load_defaults, "momentum": 0, "centered": False}  # as torch's __setstate__
    optional_state_keys = frozenset({"momentum_buffer", "grad_avg"})  # made by _update if missing
    default_kernels = "optimlab"

    def __init__(self, params: Any, lr: float | Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {"step": self._new_step(), "square_avg": torch.zeros_like(param, memory_format=torch.preserve_format)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _add_optional_state(self, group, params, states) -> None:
        if group["momentum"] > 0 or group["centered"]:  # a group may switch them on mid-run
            for p, s in zip(params, states):
                if group["momentum"] > 0 and "momentum_buffer" not in s:
                    s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["centered"] and "grad_avg" not in s:
                    s["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update_other_dtype(self, group, params, grads, states) -> None:
        self._add_optional_state(group, params, states)
        _torch_rmsprop(params, grads, [s["square_avg"] for s in states],
                       [s["grad_avg"] for s in states] if group["centered"] else [],
                       [s["momentum_buffer"] for s in states] if group["momentum"] > 0 else [],
                       [s["step"] for s in states], foreach=False, maximize=group["maximize"],
                       has_complex=any(map(torch.is_complex, params)), lr=float(group["lr"]),
                       alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                       momentum=group["momentum"], centered=group["centered"])

    def _update(self, group, params, grads, states) -> None:
        self._advance(states, self._kernel)
        self._add_optional_state(group, params, states)
        lists = dict(
            params=self._real(params), grads=self._real(grads),
            square_avgs=self._real([s["square_avg"] for s in states]),
            grad_avgs=self._real([s["grad_avg"] for s in states]) if group["centered"] else [],
            momentum_buffers=self._real([s["momentum_buffer"] for s in states]) if group["momentum"] > 0 else [])
        hyper = dict(lr=float(group["lr"]), alpha=group["alpha"], eps=group["eps"],
                     momentum=group["momentum"], centered=group["centered"])
        if self._kernel and _fused.rmsprop(**lists, **hyper, maximize=group["maximize"],
                                           weight_decay=group["weight_decay"]):
            self._kernel_ran = True
            return
        lists["grads"] = _rules.effective_grads(lists["params"], lists["grads"], maximize=group["maximize"],
                                                weight_decay=group["weight_decay"])
        _rules.rmsprop(**lists, **hyper)


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler 2012), a twin of ``torch.optim.Adadelta``.

    With ``g`` the gradient (negated if ``maximize``) plus ``λθ``::

        v_t = ρ·v_{t−1} + (1 − ρ)·g_t²
        Δ_t = √(u_{t−1} + ε) / √(v_t + ε) · g_t
        u_t = ρ·u_{t−1} + (1 − ρ)·Δ_t²
        θ_t = θ_{t−1} − γ·Δ_t                 (γ = 1: the paper's "no learning rate")

    The ratio of two running RMS values gives the step the units of θ.
    """

    registry_name = "adadelta"  # registered by this (see _registry)
    rule = staticmethod(adadelta_rule)
    kernel = adadelta_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"rho": check.unit_interval, "eps": check.positive}
    state_keys = frozenset({"step", "square_avg", "acc_delta"})
    other_dtype_grads = "torch"  # torch's Adadelta promotes
    default_kernels = "optimlab"

    def __init__(self, params: Any, lr: float | Tensor = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach: bool | None = None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None,
                 skip_nonfinite: bool = False):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": self._new_step(),
                "square_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "acc_delta": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, group, params, grads, states) -> None:
        self._advance(states, self._kernel)
        lists = dict(params=self._real(params), grads=self._real(grads),
                     square_avgs=self._real([s["square_avg"] for s in states]),
                     acc_deltas=self._real([s["acc_delta"] for s in states]))
        hyper = dict(lr=float(group["lr"]), rho=group["rho"], eps=group["eps"])
        if self._kernel and _fused.adadelta(**lists, **hyper, maximize=group["maximize"],
                                            weight_decay=group["weight_decay"]):
            self._kernel_ran = True
            return
        lists["grads"] = _rules.effective_grads(lists["params"], lists["grads"], maximize=group["maximize"],
                                                weight_decay=group["weight_decay"])
        _rules.adadelta(**lists, **hyper)

    def _update_other_dtype(self, group, params, grads, states) -> None:
        _torch_adadelta(params, grads, [s["square_avg"] for s in states], [s["acc_delta"] for s in states],
                        [s["step"] for s in states], foreach=False, has_complex=any(map(torch.is_complex, params)),
                        lr=float(group["lr"]), rho=group["rho"], eps=group["eps"],
                        weight_decay=group["weight_decay"], maximize=group["maximize"])
