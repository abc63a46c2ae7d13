"""Lion: the sign of an interpolated momentum (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optimlab.optim import _fused, _rules, _rules_modern
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer, TEMPORARY_CHUNK
from optimlab.optim._kernelgen import decay_on, decoupled_param, fma, kernel, sign
from optimlab.optim._modern import RealOnly


def lion_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Lion step on one tensor (Chen et al. 2023, Algorithm 2), in place."""
    beta1, beta2 = map(float, group["betas"])
    lr, wd = float(group["lr"]), group["weight_decay"]
    m = state["exp_avg"]
    g = -grad if group["maximize"] else grad
    if wd != 0:
        param.mul_(1 - lr * wd)                    # θ ← θ(1 − γλ), with θ_{t−1}
    c = m.mul(beta1).add_(g, alpha=1 - beta1)     # c_t = β1·m_{t−1} + (1 − β1)·g_t
    param.add_(c.sign_(), alpha=-lr)               # θ_t = θ − γ·sign(c_t)   (sign(0) = 0)
    m.mul_(beta2).add_(g, alpha=1 - beta2)        # m_t = β2·m_{t−1} + (1 − β2)·g_t


@kernel("lion", arrays=("param", "grad", "exp_avg"), hyper=("lr", "beta1", "beta2", "weight_decay", "decay_factor"),
        flags={"maximize": "maximize", "decay": decay_on})
def lion_kernel(x, *, maximize, decay):
    """:func:`optimlab.optim._rules_modern.lion` after decoupled decay (lion-pytorch's order)."""
    g = -x.grad if maximize else x.grad
    p = decoupled_param(x, decay)
    update = fma(g, 1 - x.beta1, x.exp_avg * x.beta1)        # c = β1·m + (1 − β1)·g
    x.param = fma(sign(update), -x.lr, p)                     # θ ← θ − γ·sign(c)
    x.exp_avg = fma(g, 1 - x.beta2, x.exp_avg * x.beta2)     # m ← β2·m + (1 − β2)·g


class Lion(RealOnly, Optimizer):
    r"""Lion, "EvoLved Sign Momentum" (Chen et al. 2023, "Symbolic Discovery of Optimization
    Algorithms", Algorithm 2); the maths of the ``lion-pytorch`` package.

    With ``g`` the gradient (negated if ``maximize``)::

        θ ← θ·(1 − γλ)                            (decoupled weight decay, with θ_{t−1})
        c_t = β1·m_{t−1} + (1 − β1)·g_t           (β1 only forms the sign)
        θ_t = θ − γ·sign(c_t)                     (sign(0) = 0)
        m_t = β2·m_{t−1} + (1 − β2)·g_t           (the stored momentum uses β2)

    Every coordinate moves by exactly ±γ, so the update's norm is larger than Adam's: the
    paper uses a learning rate 3–10× smaller than AdamW's and a weight decay 3–10× larger
    (the product γλ, the effective decay, stays the same). One state tensor (Adam: two).

    When to choose it: as a lower-memory alternative to AdamW for large models and large
    batches (the paper's image/language models); it is less robust to small batches.
    """

    registry_name = "lion"  # registered by this (see _registry)
    rule = staticmethod(lion_rule)
    kernel = lion_kernel  # its single-pass CPU kernel (see _kernelgen)

    chunk_elements = TEMPORARY_CHUNK  # temporaries reused from the heap (see Optimizer)
    hyper_checks = {"betas": check.betas}
    state_keys = frozenset({"exp_avg"})
    other_dtype_grads = "rules"  # its foreach ops take a gradient in another dtype
    default_kernels = "optimlab"  # lion_kernel

    def __init__(self, params: Any, lr: float | Tensor = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, group, params, grads, states) -> None:
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        if self._kernel and _fused.launch(
                lion_kernel, dict(param=params, grad=grads, exp_avg=[s["exp_avg"] for s in states]),
                dict(lr=lr, beta1=float(beta1), beta2=float(beta2), weight_decay=group["weight_decay"],
                     decay_factor=_rules.decay_factor(lr, group["weight_decay"]), maximize=group["maximize"])):
            self._kernel_ran = True
            return
        grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=0)
        _rules.decoupled_decay(params, lr=lr, weight_decay=group["weight_decay"])
        _rules_modern.lion(params, grads, [s["exp_avg"] for s in states], lr=lr,
                           beta1=float(beta1), beta2=float(beta2))
