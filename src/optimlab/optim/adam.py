"""Adam and its family: Adam (AMSGrad), AdamW, Adamax, NAdam (torch's conventions)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as _torch_adam  # torch's functional forms: fused kernels, and
from torch.optim.adamax import adamax as _torch_adamax  # the reference for gradients in another dtype
from torch.optim.nadam import nadam as _torch_nadam

from optimlab.optim import _fused, _rules
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer
from optimlab.optim._kernelgen import decay_on, decoupled_param, fma, kernel, lerp, maximum, sqrt, torch_grad


def _zeros(param: Tensor) -> Tensor:
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def _adam_grad(param: Tensor, grad: Tensor, group: dict[str, Any]) -> Tensor:
    """The gradient Adam's family sees: ``g = −∇`` if maximize; then L2 decay ``g ← g + λθ``,
    or, decoupled (AdamW), ``θ ← θ(1 − γλ)`` before the moments."""
    g = -grad if group["maximize"] else grad
    wd = group["weight_decay"]
    if wd != 0:
        if group.get("decoupled_weight_decay", False):
            param.mul_(1 - group["lr"] * wd)                   # θ ← θ(1 − γλ)
        else:
            g = g + wd * param                                 # g ← g + λθ
    return g


def adam_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Adam step on one tensor (Kingma & Ba 2015, Algorithm 1; AMSGrad: Reddi et al.
    2018; AdamW: Loshchilov & Hutter 2019; ``torch.optim.Adam``/``AdamW``)."""
    state["step"] += 1
    t = state["step"].item()
    g = _adam_grad(param, grad, group)
    beta1, beta2 = group["betas"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(beta1).add_((1 - beta1) * g)                        # m ← β1·m + (1 − β1)·g
    v.mul_(beta2).add_((1 - beta2) * g * g)                    # v ← β2·v + (1 − β2)·g²
    if group["amsgrad"]:
        v_max = state.setdefault("max_exp_avg_sq", torch.zeros_like(param))
        v_max.copy_(torch.maximum(v_max.clone(), v))           # v_max ← max(v_max, v) (a copy: autograd)
        v = v_max
    m_hat = m / (1 - beta1**t)                                 # m̂ = m / (1 − β1ᵗ)
    v_hat = v / (1 - beta2**t)                                 # v̂ = v / (1 − β2ᵗ)
    param.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))  # θ ← θ − γ·m̂/(√v̂ + ε)


def adamax_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Adamax step on one tensor (Kingma & Ba 2015, Algorithm 2; ``torch.optim.Adamax``,
    which adds ε inside the max)."""
    state["step"] += 1
    t = state["step"].item()
    g = _adam_grad(param, grad, group)
    beta1, beta2 = group["betas"]
    m, u = state["exp_avg"], state["exp_inf"]
    m.mul_(beta1).add_((1 - beta1) * g)                        # m ← β1·m + (1 − β1)·g
    u.copy_(torch.maximum(beta2 * u, g.abs() + group["eps"]))  # u ← max(β2·u, |g| + ε)
    param.sub_(group["lr"] / (1 - beta1**t) * m / u)           # θ ← θ − γ/(1 − β1ᵗ)·m/u


@kernel("adamax", arrays=("param", "grad", "exp_avg", "exp_inf"), hyper=("lr", "beta1", "beta2", "eps", "weight_decay"),
        per_tensor=("step",), flags={"maximize": "maximize", "decay": decay_on})
def adamax_kernel(x, *, maximize, decay):
    """:func:`optimlab.optim._rules.adamax` after :func:`~optimlab.optim._rules.effective_grads`."""
    g = torch_grad(x, maximize, decay)
    m = lerp(x.exp_avg, g, 1 - x.beta1)
    x.exp_avg = m
    u = maximum(x.exp_inf * x.beta2, abs(g) + x.eps)
    x.exp_inf = u
    x.param = x.param + -x.lr / (1 - x.beta1**x.step) * m / u


def nadam_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One NAdam step on one tensor (Dozat 2016, with the momentum schedule
    μ_t = β1(1 − ½·0.96^{tψ}); ``torch.optim.NAdam``)."""
    state["step"] += 1
    t = state["step"].item()
    g = _adam_grad(param, grad, group)
    beta1, beta2 = group["betas"]
    psi = group["momentum_decay"]
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * psi))                 # μ_t
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))      # μ_{t+1}
    state["mu_product"].mul_(mu)                               # Π_{s≤t} μ_s, a tensor as torch keeps it
    prod = state["mu_product"].double()                        # (read in double, as a number would be)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(beta1).add_((1 - beta1) * g)                        # m ← β1·m + (1 − β1)·g
    v.mul_(beta2).add_((1 - beta2) * g * g)                    # v ← β2·v + (1 − β2)·g²
    den = (v / (1 - beta2**t)).sqrt() + group["eps"]           # √v̂ + ε
    lr = group["lr"]
    param.sub_(lr * (1 - mu) / (1 - prod) * g / den)           # θ ← θ − γ(1 − μ_t)/(1 − Πμ)·g/den
    param.sub_(lr * mu_next / (1 - prod * mu_next) * m / den)  #     − γμ_{t+1}/(1 − Πμ·μ_{t+1})·m/den


@kernel("nadam", arrays=("param", "grad", "exp_avg", "exp_avg_sq"), hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "decay_factor"),
        per_tensor=("step", "mu", "mu_next", "mu_product"),
        flags={"maximize": "maximize", "decay": decay_on, "decoupled": "decoupled_weight_decay"})
def nadam_kernel(x, *, maximize, decay, decoupled):
    """:func:`optimlab.optim._rules.nadam` after :func:`~optimlab.optim._rules.effective_grads` (or,
    ``decoupled``, :func:`~optimlab.optim._rules.decoupled_decay`). Per tensor: ``mu`` = μ_t,
    ``mu_next`` = μ_{t+1}, ``mu_product`` = Π_t (already multiplied by μ_t)."""
    g = torch_grad(x, maximize, decay and not decoupled)
    p = decoupled_param(x, decay and decoupled)
    m = lerp(x.exp_avg, g, 1 - x.beta1)
    x.exp_avg = m
    v = fma((1 - x.beta2) * g, g, x.exp_avg_sq * x.beta2)
    x.exp_avg_sq = v
    denom = sqrt(v / (1 - x.beta2**x.step)) + x.eps
    p = p + -x.lr * (1.0 - x.mu) / (1.0 - x.mu_product) * g / denom
    x.param = p + -x.lr * x.mu_next / (1.0 - x.mu_product * x.mu_next) * m / denom


class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015), a twin of ``torch.optim.Adam``.

    With ``g`` the gradient (negated if ``maximize``); L2 decay ``g += λθ``, or with
    ``decoupled_weight_decay`` ``θ ← θ(1 − γλ)`` (AdamW)::

        m_t = β1·m_{t−1} + (1 − β1)·g_t          (computed as lerp, as torch)
        v_t = β2·v_{t−1} + (1 − β2)·g_t²         (amsgrad: v_t ← max(v_max, v_t))
        θ_t = θ_{t−1} − γ/(1 − β1ᵗ) · m_t / (√v_t / √(1 − β2ᵗ) + ε)

    ε is added after the bias correction (the paper's Algorithm 1); Keras adds it before
    (:class:`optimlab.optim.keras.Adam`). ``fused=True`` runs torch's fused kernel.
    """

    registry_name = "adam"  # registered by this (see _registry)
    rule = staticmethod(adam_rule)
    differentiable_hypers = ("lr", "betas")  # as torch's differentiable Adam

    hyper_checks = {"betas": check.betas, "eps": check.positive, "amsgrad": check.boolean,
                    "decoupled_weight_decay": check.boolean}
    state_keys = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
    optional_state_keys = frozenset({"max_exp_avg_sq"})  # made by _update if missing
    other_dtype_grads = "torch"  # as torch's Adam (whose lerp fails unless L2 decay promoted first)
    load_defaults = {**Optimizer.load_defaults, "amsgrad": False, "decoupled_weight_decay": False}
    default_kernels = "torch"
    torch_fused_ops = ("_fused_adam_", "_fused_adamw_")
    foreach_scalar_only = ("lr", "betas")  # torch.optim.Adam refuses them as tensors with foreach=True

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {"step": self._new_step(), "exp_avg": _zeros(param), "exp_avg_sq": _zeros(param)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = _zeros(param)
        return state

    def _update(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = float(group["lr"]), group["weight_decay"]
        amsgrad = group["amsgrad"]
        if amsgrad:
            for p, s in zip(params, states):
                s.setdefault("max_exp_avg_sq", _zeros(p))
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        maxes = [s["max_exp_avg_sq"] for s in states] if amsgrad else []
        fused = self._kernel and _fused.fits([params, grads, exp_avgs, exp_avg_sqs, *([maxes] if amsgrad else [])])
        self._kernel_ran = bool(fused)
        if fused and params[0].is_cpu:  # torch's fused CPU kernel, called directly
            steps = [s["step"] for s in states]
            _fused.increment(steps)
            kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
            _fused.mark_written(params)
            kernel(params, grads, exp_avgs, exp_avg_sqs, maxes, steps, amsgrad=amsgrad, lr=lr,
                   beta1=float(beta1), beta2=float(beta2), weight_decay=wd, eps=group["eps"],
                   maximize=group["maximize"], grad_scale=self._grad_scale, found_inf=self._found_inf)
            self._amp_rewind(steps)  # as torch's _fused_adam: steps -= found_inf
            return
        if fused:
            _fused.mark_written(params)
            _torch_adam(params, grads, exp_avgs, exp_avg_sqs, maxes, self._steps_on(params[0].device, states),
                                  fused=True, decoupled_weight_decay=group["decoupled_weight_decay"],
                                  amsgrad=amsgrad, beta1=float(beta1), beta2=float(beta2), lr=lr,
                                  weight_decay=wd, eps=group["eps"], maximize=group["maximize"],
                                  grad_scale=self._grad_scale, found_inf=self._found_inf)
            return
        if not self._amp_unscale(grads):
            return
        step_tensors = [s["step"] for s in states]
        steps = self._advance(states)
        params, grads = self._real(params), self._real(grads)
        if group["decoupled_weight_decay"]:
            grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=0)
            _rules.decoupled_decay(params, lr=lr, weight_decay=wd)
        else:
            grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=wd)
        _rules.adam(params, grads, self._real(exp_avgs), self._real(exp_avg_sqs), self._real(maxes), steps,
                    lr=lr, beta1=float(beta1), beta2=float(beta2), eps=group["eps"], amsgrad=amsgrad)
        self._amp_rewind(step_tensors)

    def _update_other_dtype(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        if group["amsgrad"]:
            for p, s in zip(params, states):
                s.setdefault("max_exp_avg_sq", _zeros(p))
        _torch_adam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                    [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [], [s["step"] for s in states],
                    foreach=False, fused=False, has_complex=any(map(torch.is_complex, params)),
                    decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"],
                    beta1=float(beta1), beta2=float(beta2), lr=float(group["lr"]), weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=group["maximize"])


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter 2019), a twin of ``torch.optim.AdamW``: Adam whose weight
    decay is decoupled from the gradient, ``θ ← θ·(1 − γλ)`` before the Adam step, with the
    current learning rate γ (so the decay follows a schedule). Default λ = 1e-2."""

    registry_name = "adamw"  # registered by this (see _registry)

    load_overrides = {"decoupled_weight_decay": True}  # as torch.optim.AdamW.__setstate__ (an Adam state too)

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None, skip_nonfinite: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
                         skip_nonfinite=skip_nonfinite)


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba 2015, §7.1), a twin of ``torch.optim.Adamax``: Adam with the
    infinity norm in place of the second moment. With ``g`` (negated if ``maximize``) + ``λθ``::

        m_t = lerp(m_{t−1}, g_t, 1 − β1)
        u_t = max(β2·u_{t−1}, |g_t| + ε)
        θ_t = θ_{t−1} − γ/(1 − β1ᵗ) · m_t / u_t
    """

    registry_name = "adamax"  # registered by this (see _registry)
    rule = staticmethod(adamax_rule)
    kernel = adamax_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"betas": check.betas, "eps": check.positive}
    state_keys = frozenset({"step", "exp_avg", "exp_inf"})
    other_dtype_grads = "torch"  # as torch's Adamax (whose lerp fails unless L2 decay promoted first)
    default_kernels = "optimlab"

    def __init__(self, params: Any, lr: float | Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": self._new_step(), "exp_avg": _zeros(param), "exp_inf": _zeros(param)}

    def _update(self, group, params, grads, states) -> None:
        steps = self._advance(states, self._kernel)
        beta1, beta2 = group["betas"]
        lists = dict(params=self._real(params), grads=self._real(grads),
                     exp_avgs=self._real([s["exp_avg"] for s in states]),
                     exp_infs=self._real([s["exp_inf"] for s in states]))
        hyper = dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=group["eps"])
        if self._kernel and _fused.adamax(**lists, steps=steps, **hyper, maximize=group["maximize"],
                                          weight_decay=group["weight_decay"]):
            self._kernel_ran = True
            return
        lists["grads"] = _rules.effective_grads(lists["params"], lists["grads"], maximize=group["maximize"],
                                                weight_decay=group["weight_decay"])
        _rules.adamax(**lists, steps=steps, **hyper)

    def _update_other_dtype(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        _torch_adamax(params, grads, [s["exp_avg"] for s in states], [s["exp_inf"] for s in states],
                      [s["step"] for s in states], foreach=False, maximize=group["maximize"],
                      has_complex=any(map(torch.is_complex, params)), eps=group["eps"], beta1=float(beta1),
                      beta2=float(beta2), lr=float(group["lr"]), weight_decay=group["weight_decay"])


class NAdam(Optimizer):
    r"""NAdam (Dozat 2016), a twin of ``torch.optim.NAdam``: Adam with Nesterov momentum.

    With ``g`` (negated if ``maximize``); L2 decay ``g += λθ`` or, with
    ``decoupled_weight_decay``, ``θ ← θ(1 − γλ)``; ``μ_t = β1·(1 − ½·0.96^(t·ψ))``, ψ = momentum_decay::

        Π_t = Π_{t−1}·μ_t                         (state "mu_product")
        m_t = lerp(m_{t−1}, g_t, 1 − β1),   v_t = β2·v_{t−1} + (1 − β2)·g_t²
        d_t = √(v_t / (1 − β2ᵗ)) + ε
        θ_t = θ_{t−1} − γ(1 − μ_t)/(1 − Π_t) · g_t/d_t − γ·μ_{t+1}/(1 − Π_t·μ_{t+1}) · m_t/d_t

    Keras's Nadam uses ψ = 1 (its momentum reaches β1 within ~100 steps; torch's within ~10⁴).
    """

    registry_name = "nadam"  # registered by this (see _registry)
    rule = staticmethod(nadam_rule)
    kernel = nadam_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"betas": check.betas, "eps": check.positive, "momentum_decay": check.non_negative,
                    "decoupled_weight_decay": check.boolean}
    state_keys = frozenset({"step", "mu_product", "exp_avg", "exp_avg_sq"})
    scalar_state_keys = ("step", "mu_product")
    other_dtype_grads = "torch"  # as torch's NAdam (whose lerp fails unless L2 decay promoted first)
    default_kernels = "optimlab"
    load_defaults = {**Optimizer.load_defaults, "decoupled_weight_decay": False}  # as torch's __setstate__

    def _check_scalar_state(self, where: str, key: str, value: float) -> None:
        """As the base, and ``mu_product`` (a product of momentum coefficients) in [0, 1]."""
        super()._check_scalar_state(where, key, value)
        if key == "mu_product" and not 0.0 <= value <= 1.0:
            raise ValueError(f"{where} must be in [0, 1] (a product of momentum coefficients), got {value!r}")

    def __init__(self, params: Any, lr: float | Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 skip_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        return {"step": self._new_step(), "mu_product": torch.ones((), dtype=dtype),
                "exp_avg": _zeros(param), "exp_avg_sq": _zeros(param)}

    def _update(self, group, params, grads, states) -> None:
        steps = self._advance(states, self._kernel)
        beta1, beta2 = group["betas"]
        lr, wd = float(group["lr"]), group["weight_decay"]
        params, grads = self._real(params), self._real(grads)
        decoupled = group["decoupled_weight_decay"]
        lists = dict(params=params, grads=grads, exp_avgs=self._real([s["exp_avg"] for s in states]),
                     exp_avg_sqs=self._real([s["exp_avg_sq"] for s in states]),
                     mu_products=[s["mu_product"] for s in states])
        hyper = dict(lr=lr, beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                     momentum_decay=group["momentum_decay"])
        if self._kernel and _fused.nadam(**lists, steps=steps, **hyper, maximize=group["maximize"],
                                         weight_decay=wd, decoupled=decoupled,
                                         decay_factor=_rules.decay_factor(group["lr"], wd)):
            self._kernel_ran = True
            return
        if decoupled:
            lists["grads"] = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=0)
            _rules.decoupled_decay(params, lr=group["lr"], weight_decay=wd,  # (a tensor lr: torch's factor)
                                   single_tensor=True)
        else:
            lists["grads"] = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=wd)
        _rules.nadam(**lists, steps=steps, **hyper)

    def _update_other_dtype(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        _torch_nadam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                     [s["mu_product"] for s in states], [s["step"] for s in states],
                     decoupled_weight_decay=group["decoupled_weight_decay"], foreach=False,
                     has_complex=any(map(torch.is_complex, params)), maximize=group["maximize"],
                     beta1=float(beta1), beta2=float(beta2), lr=float(group["lr"]),
                     weight_decay=group["weight_decay"], momentum_decay=group["momentum_decay"], eps=group["eps"])


Nadam = NAdam
