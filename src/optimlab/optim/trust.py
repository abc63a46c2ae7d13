"""Layer-wise trust ratios for large batches: LAMB and LARS (You et al.)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optimlab.optim import _fused, _rules, _rules_modern
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer, TEMPORARY_CHUNK
from optimlab.optim._kernelgen import decay_on, fma, kernel, lerp, norm, sqrt, where
from optimlab.optim._modern import RealOnly


def lamb_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One LAMB step on one tensor (You et al. 2020, Algorithm 2, φ = identity), in place."""
    state["step"] += 1
    t = state["step"].item()
    beta1, beta2 = map(float, group["betas"])
    lr, wd, eps = float(group["lr"]), group["weight_decay"], group["eps"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    g = -grad if group["maximize"] else grad
    m.lerp_(g, 1 - beta1)                              # m_t = β1·m_{t−1} + (1 − β1)·g_t
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)      # v_t = β2·v_{t−1} + (1 − β2)·g_t²
    if group["bias_correction"]:
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)  # m̂ = m/(1 − β1ᵗ), v̂ = v/(1 − β2ᵗ)
    else:
        m_hat, v_hat = m, v
    r = m_hat / (v_hat.sqrt() + eps)                   # r_t = m̂/(√v̂ + ε)
    if wd != 0:
        r = r + wd * param                             #       + λ·θ_{t−1}
    w_norm, r_norm = param.norm(), r.norm()            # ‖θ_{t−1}‖, ‖r_t‖
    trust = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, 1.0)  # 1 when either norm is 0
    param.sub_(lr * trust * r)                         # θ_t = θ_{t−1} − γ·‖θ‖/‖r‖·r_t


@kernel("lamb", arrays=("param", "grad", "exp_avg", "exp_avg_sq"), hyper=("lr", "beta1", "beta2", "eps", "weight_decay"),
        per_tensor=("step",),
        flags={"maximize": "maximize", "decay": decay_on, "bias_correction": "bias_correction"})
def lamb_kernel(x, *, maximize, decay, bias_correction):
    """:func:`optimlab.optim._rules_modern.lamb`: the first pass updates the moments and sums
    ‖θ‖² and ‖r‖²; the second recomputes r from the stored moments and steps θ."""
    g = -x.grad if maximize else x.grad
    m = lerp(x.exp_avg, g, 1 - x.beta1)
    x.exp_avg = m
    v = fma((1 - x.beta2) * g, g, x.exp_avg_sq * x.beta2)
    x.exp_avg_sq = v
    denom = sqrt(v)
    if bias_correction:
        denom = denom / (1 - x.beta2**x.step) ** 0.5
    update = m / (denom + x.eps)
    if bias_correction:
        update = update / (1 - x.beta1**x.step)
    if decay:
        update = fma(x.param, x.weight_decay, update)               # r = m̂/(√v̂ + ε) + λθ
    param_norm, update_norm = norm(x.param), norm(update)
    ok = (param_norm > 0) & (update_norm > 0)
    ratio = where(ok, param_norm / where(ok, update_norm, 1.0), 1.0)  # ‖θ‖/‖r‖ (1 if a norm is 0)
    x.param = fma(update * ratio, -x.lr, x.param)


class LAMB(RealOnly, Optimizer):
    r"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", Algorithm 2): Adam's direction, rescaled per tensor ("layer") so that its
    step is proportional to the tensor's norm.

    With ``g`` the gradient (negated if ``maximize``), per tensor::

        m_t = lerp(m_{t−1}, g_t, 1 − β1),   v_t = β2·v_{t−1} + (1 − β2)·g_t²
        r_t = m̂_t / (√v̂_t + ε) + λ·θ_{t−1}      (m̂ = m/(1 − β1ᵗ), v̂ = v/(1 − β2ᵗ))
        θ_t = θ_{t−1} − γ · ‖θ_{t−1}‖/‖r_t‖ · r_t       (ratio 1 when either norm is 0)

    The weight decay sits inside the trust ratio (the paper's form). ``bias_correction=False``
    drops m̂/v̂ (the paper's first versions). The paper's scaling function φ(‖θ‖) is the
    identity here (its analysis only bounds φ; some implementations clip ‖θ‖, e.g. at 10).

    When to choose it: very large batches (thousands to tens of thousands) for Adam-type
    models, BERT pre-training being the paper's case; at ordinary batch sizes it brings
    little over AdamW. Put biases and norm gains in a group with ``weight_decay=0``.
    """

    registry_name = "lamb"  # registered by this (see _registry)
    rule = staticmethod(lamb_rule)
    kernel = lamb_kernel  # its single-pass CPU kernel (see _kernelgen)

    chunk_elements = TEMPORARY_CHUNK  # temporaries reused from the heap (see Optimizer)
    hyper_checks = {"betas": check.betas, "eps": check.positive, "bias_correction": check.boolean}
    state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})
    default_kernels = "optimlab"  # lamb_kernel: two passes (the norms, then the update)

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, bias_correction: bool = True, *,
                 maximize: bool = False, foreach: bool | None = None, fused: bool | None = None,
                 skip_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return self._adam_moments(param)

    def _update(self, group, params, grads, states) -> None:
        steps = self._advance(states, self._kernel)
        beta1, beta2 = group["betas"]
        if self._kernel and _fused.launch(
                lamb_kernel, dict(param=params, grad=grads, exp_avg=[s["exp_avg"] for s in states],
                                         exp_avg_sq=[s["exp_avg_sq"] for s in states]),
                dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                     weight_decay=group["weight_decay"], maximize=group["maximize"],
                     bias_correction=group["bias_correction"]), dict(step=steps)):
            self._kernel_ran = True
            return
        grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=0)
        _rules_modern.lamb(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                           steps, lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                           weight_decay=group["weight_decay"], bias_correction=group["bias_correction"])


def lars_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One LARS step on one tensor (You, Gitman & Ginsburg 2017, Algorithm 1 with eq. 6), in place."""
    lr, mu, wd = float(group["lr"]), group["momentum"], group["weight_decay"]
    eta = group["trust_coefficient"]
    g = -grad if group["maximize"] else grad
    if group["exclude_1d"] and param.dim() <= 1:
        d = lr * g                                     # biases and gains: plain momentum SGD, γ·g
    else:
        w_norm, g_norm = param.norm(), g.norm()        # ‖θ‖, ‖g‖
        den = g_norm + wd * w_norm
        local = torch.where((w_norm > 0) & (den > 0), eta * w_norm / den, 1.0)  # λ = η‖θ‖/(‖g‖ + β‖θ‖)
        d = lr * local * (g + wd * param)              # γ·λ·(g + βθ)
    if mu != 0:
        v = state["momentum_buffer"]
        v.mul_(mu).add_(d)                             # v_t = μ·v_{t−1} + γ·λ·(g + βθ)
        d = v
    param.sub_(d)                                      # θ_t = θ_{t−1} − v_t


@kernel("lars", arrays=("param", "grad", "momentum_buffer"), hyper=("lr", "momentum", "weight_decay", "trust_coefficient"),
        per_tensor=("adapt",), flags={"maximize": "maximize", "decay": decay_on, "momentum": lambda h: h["momentum"] != 0},
        tensor_flags={"adapt": lambda t: t["adapt"] != 0})
def lars_kernel(x, *, maximize, decay, momentum, adapt):
    """:func:`optimlab.optim._rules_modern.lars`: the first pass sums ‖θ‖² and ‖g‖², the second
    steps; ``adapt`` (per tensor: 1.0, or 0.0 for a tensor ``exclude_1d`` exempts) takes the
    trust ratio and the weight decay."""
    g = -x.grad if maximize else x.grad
    if adapt:
        param_norm, grad_norm = norm(x.param), norm(g)
        den = grad_norm + x.weight_decay * param_norm
        ok = (param_norm > 0) & (den > 0)
        ratio = where(ok, x.trust_coefficient * param_norm / where(ok, den, 1.0), 1.0)  # η‖θ‖/(‖g‖ + β‖θ‖)
        step = (fma(x.param, x.weight_decay, g) if decay else g) * (ratio * x.lr)
    else:
        step = g * x.lr
    if momentum:
        step = x.momentum_buffer * x.momentum + step                # v ← μv + γλ(g + βθ)
        x.momentum_buffer = step
    x.param = x.param - step


class LARS(RealOnly, Optimizer):
    r"""LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks",
    Algorithm 1 with the trust coefficient of eq. 6): momentum SGD with a local learning
    rate per tensor ("layer").

    With ``g`` the gradient (negated if ``maximize``), per tensor::

        λ = η·‖θ‖ / (‖g‖ + β·‖θ‖)                 (λ = 1 when ‖θ‖ or the denominator is 0)
        v_t = μ·v_{t−1} + γ·λ·(g + β·θ)           (β: weight_decay, η: trust_coefficient)
        θ_t = θ_{t−1} − v_t

    As in the paper the learning rate γ enters the velocity ("momentum_buffer"), so a
    schedule does not rescale past steps (torch-style SGD: θ ← θ − γ·b). The two forms are
    identical under a constant γ. ``exclude_1d=True`` gives tensors of at most one
    dimension (biases, norm gains) plain momentum steps ``v ← μv + γg``, without weight
    decay or ratio (the common practice, and pytorch-optimizer's LARS).

    When to choose it: large-batch training of convolutional networks with momentum SGD
    (ImageNet in minutes, SimCLR/BYOL pre-training), with a warm-up and polynomial decay
    of γ. γ is a global rate: typical values are O(1) with η = 0.001.
    """

    registry_name = "lars"  # registered by this (see _registry)
    rule = staticmethod(lars_rule)
    kernel = lars_kernel  # its single-pass CPU kernel (see _kernelgen)

    chunk_elements = TEMPORARY_CHUNK  # temporaries reused from the heap (see Optimizer)
    hyper_checks = {"momentum": check.unit_interval, "trust_coefficient": check.positive,
                    "exclude_1d": check.boolean}
    state_keys = frozenset({"momentum_buffer"})
    other_dtype_grads = "rules"  # its foreach ops take a gradient in another dtype
    default_kernels = "optimlab"  # lars_kernel: two passes (the norms, then the update)

    def __init__(self, params: Any, lr: float | Tensor, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, *, exclude_1d: bool = False, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        exclude_1d=exclude_1d, maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, group, params, grads, states) -> None:
        adapt = [not (group["exclude_1d"] and p.dim() <= 1) for p in params]
        if self._kernel and _fused.launch(
                lars_kernel, dict(param=params, grad=grads, momentum_buffer=[s["momentum_buffer"] for s in states]),
                dict(lr=float(group["lr"]), momentum=group["momentum"], weight_decay=group["weight_decay"],
                     trust_coefficient=group["trust_coefficient"], maximize=group["maximize"]),
                dict(adapt=[1.0 if a else 0.0 for a in adapt])):
            self._kernel_ran = True
            return
        grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=0)
        _rules_modern.lars(params, grads, [s["momentum_buffer"] for s in states], lr=float(group["lr"]),
                           momentum=group["momentum"], weight_decay=group["weight_decay"],
                           trust_coefficient=group["trust_coefficient"],
                           adapt=adapt)
