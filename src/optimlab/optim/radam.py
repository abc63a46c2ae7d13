"""RAdam: Adam with its early, high-variance steps rectified (torch's conventions)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.radam import radam as _torch_radam  # the reference for gradients in another dtype

from optimlab.optim import _fused, _rules, _rules_modern
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer, TEMPORARY_CHUNK
from optimlab.optim._kernelgen import decay_on, decoupled_param, fma, kernel, lerp, sqrt, torch_grad, where


def radam_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One RAdam step on one tensor (Liu et al. 2020, Algorithm 2), in place, as torch's
    single-tensor RAdam (so ``differentiable=True`` runs it under autograd)."""
    state["step"] += 1
    t = state["step"].item()
    beta1, beta2 = map(float, group["betas"])
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    g = -grad if group["maximize"] else grad
    if wd != 0:
        if group["decoupled_weight_decay"]:
            param.mul_(1 - lr * wd)                    # θ ← θ(1 − γλ)
        else:
            g = g.add(param, alpha=wd)                 # g ← g + λθ
    m.lerp_(g, 1 - beta1)                              # m_t = β1·m_{t−1} + (1 − β1)·g_t
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)      # v_t = β2·v_{t−1} + (1 − β2)·g_t²
    m_hat = m / (1 - beta1**t)                         # m̂_t = m_t/(1 − β1ᵗ)
    rho_inf = 2 / (1 - beta2) - 1                      # ρ∞ = 2/(1 − β2) − 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)  # ρ_t = ρ∞ − 2tβ2ᵗ/(1 − β2ᵗ)
    if rho_t > 5:                                      # the variance of the adaptive rate is tractable
        r_t = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        l_t = (1 - beta2**t) ** 0.5 / (v.sqrt() + eps)  # l_t = √(1 − β2ᵗ)/(√v_t + ε)  (torch's ε)
        param.sub_(m_hat * lr * l_t * r_t)             # θ_t = θ_{t−1} − γ·r_t·l_t·m̂_t
    else:
        param.sub_(m_hat * lr)                         # θ_t = θ_{t−1} − γ·m̂_t  (momentum SGD)


@kernel("radam", arrays=("param", "grad", "exp_avg", "exp_avg_sq"), hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "decay_factor"),
        per_tensor=("step",),
        flags={"maximize": "maximize", "decay": decay_on, "decoupled": "decoupled_weight_decay"})
def radam_kernel(x, *, maximize, decay, decoupled):
    """:func:`optimlab.optim._rules_modern.radam` (torch's foreach form, branch-free: an
    unrectified step divides by −0.0, whose reciprocal is −0) after the weight decay."""
    g = torch_grad(x, maximize, decay and not decoupled)
    p = decoupled_param(x, decay and decoupled)
    m = lerp(x.exp_avg, g, 1 - x.beta1)
    x.exp_avg = m
    v = fma((1 - x.beta2) * g, g, x.exp_avg_sq * x.beta2)
    x.exp_avg_sq = v
    t, beta1, beta2 = x.step, x.beta1, x.beta2
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * (beta2**t) / (1 - beta2**t)
    rect = where(rho_t > 5, ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5, 0)
    unrectified = where(rect > 0, 0, 1.0)
    bc1 = 1 - beta1**t
    unrect_step = (x.lr * unrectified / bc1) * -1
    rect_step = ((1 - beta2**t) ** 0.5) * (x.lr * rect / bc1) * -1
    x.param = fma(m, 1 / ((sqrt(v) + x.eps) / rect_step) + unrect_step, p)


class RAdam(Optimizer):
    r"""RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond"),
    a twin of ``torch.optim.RAdam``.

    With ``g`` the gradient (negated if ``maximize``); L2 decay ``g += λθ``, or with
    ``decoupled_weight_decay`` ``θ ← θ(1 − γλ)``::

        m_t = lerp(m_{t−1}, g_t, 1 − β1),   v_t = β2·v_{t−1} + (1 − β2)·g_t²
        ρ∞ = 2/(1 − β2) − 1,   ρ_t = ρ∞ − 2t·β2ᵗ/(1 − β2ᵗ)
        ρ_t > 5:  r_t = √((ρ_t − 4)(ρ_t − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρ_t))
                  θ_t = θ_{t−1} − γ·r_t·√(1 − β2ᵗ)/(1 − β1ᵗ) · m_t/(√v_t + ε)
        else:     θ_t = θ_{t−1} − γ/(1 − β1ᵗ) · m_t         (bias-corrected momentum SGD)

    With β2 = 0.999 the first 5 steps are momentum-SGD steps; the adaptive rate is switched
    in gradually as the variance of ``v`` becomes trustworthy.

    When to choose it: where Adam needs a learning-rate warm-up to be stable (transformers,
    large learning rates); RAdam is that warm-up derived from the variance of ``v`` rather
    than tuned. Otherwise it behaves like Adam.
    """

    registry_name = "radam"  # registered by this (see _registry)
    rule = staticmethod(radam_rule)
    kernel = radam_kernel  # its single-pass CPU kernel (see _kernelgen)

    chunk_elements = TEMPORARY_CHUNK  # temporaries reused from the heap (see Optimizer)
    hyper_checks = {"betas": check.betas, "eps": check.positive, "decoupled_weight_decay": check.boolean}
    state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})
    load_defaults = {**Optimizer.load_defaults, "decoupled_weight_decay": False}  # as torch's __setstate__
    other_dtype_grads = "torch"  # as torch's RAdam (whose lerp fails unless L2 decay promoted first)
    default_kernels = "optimlab"  # radam_kernel

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable, decoupled_weight_decay=decoupled_weight_decay,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return self._adam_moments(param)

    def _update(self, group, params, grads, states) -> None:
        steps = self._advance(states, self._kernel)
        beta1, beta2 = group["betas"]
        lr, wd = float(group["lr"]), group["weight_decay"]
        params, grads = self._real(params), self._real(grads)
        if self._kernel and _fused.launch(
                radam_kernel, dict(param=params, grad=grads, exp_avg=self._real([s["exp_avg"] for s in states]),
                                          exp_avg_sq=self._real([s["exp_avg_sq"] for s in states])),
                dict(lr=lr, beta1=float(beta1), beta2=float(beta2), eps=group["eps"], weight_decay=wd,
                     decay_factor=_rules.decay_factor(group["lr"], wd), maximize=group["maximize"],
                     decoupled_weight_decay=group["decoupled_weight_decay"]),
                dict(step=steps)):
            self._kernel_ran = True
            return
        if group["decoupled_weight_decay"]:
            grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=0)
            _rules.decoupled_decay(params, lr=group["lr"], weight_decay=wd)  # (a tensor lr: torch's factor)
        else:
            grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=wd)
        _rules_modern.radam(params, grads, self._real([s["exp_avg"] for s in states]),
                            self._real([s["exp_avg_sq"] for s in states]), steps,
                            lr=lr, beta1=float(beta1), beta2=float(beta2), eps=group["eps"])

    def _update_other_dtype(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        _torch_radam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                     [s["step"] for s in states], decoupled_weight_decay=group["decoupled_weight_decay"],
                     foreach=False, has_complex=any(map(torch.is_complex, params)), maximize=group["maximize"],
                     beta1=float(beta1), beta2=float(beta2), lr=float(group["lr"]),
                     weight_decay=group["weight_decay"], eps=group["eps"])
