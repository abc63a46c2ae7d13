"""ADOPT: Adam that normalises the gradient by the *previous* second moment (Taniguchi et al. 2024)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from optimlab.optim import _fused
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer
from optimlab.optim._kernelgen import clamp, decay_on, fma, kernel, lerp, sqrt
from optimlab.optim._modern import RealOnly


def adopt_rule(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, *, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
               decoupled_weight_decay: bool = False, clip_exponent: float | None = 0.25,
               maximize: bool = False) -> None:
    """One ADOPT step on one tensor, in place (Algorithm 1 of the paper, with the clipped
    normalised gradient of its Section 4 and its reference code). ``step`` counts from 1.

    Step 1 only sets ``v_0 = g_0²`` (and applies weight decay): the parameter moves from step 2,
    when ``v`` holds a gradient the current one is independent of."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - weight_decay * lr)             # θ ← θ(1 − γλ), as AdamW
        else:
            g = g.add(param, alpha=weight_decay)          # g ← g + λθ, as Adam's L2
    if step == 1:
        exp_avg_sq.addcmul_(g, g)                         # v_0 = g_0²; no update
        return
    normed = g / exp_avg_sq.sqrt().clamp(min=eps)         # g_t / max(√v_{t−1}, ε): the *previous* v
    if clip_exponent is not None:
        c = math.pow(step, clip_exponent)                 # clip at t^(1/4) (step t + 1 in the paper's count)
        normed = normed.clamp(-c, c)
    exp_avg.lerp_(normed, 1 - beta1)                      # m_t = β1·m_{t−1} + (1 − β1)·clip(...)
    param.add_(exp_avg, alpha=-lr)                        # θ_t = θ_{t−1} − γ·m_t
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v_t = β2·v_{t−1} + (1 − β2)·g_t², after


def _clip_exponent(name: str, value: Any) -> None:
    if value is not None:
        check.non_negative(name, value)


def adopt_state_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """:func:`adopt_rule` in the form every optimizer declares (``ADOPT.rule``): this tensor's
    state (``step``, ``exp_avg``, ``exp_avg_sq``) and the group's hyperparameters."""
    state["step"] += 1
    beta1, beta2 = group["betas"]
    adopt_rule(param, grad, state["exp_avg"], state["exp_avg_sq"], int(state["step"].item()),
               lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
               weight_decay=group["weight_decay"], decoupled_weight_decay=group["decoupled_weight_decay"],
               clip_exponent=group["clip_exponent"], maximize=group["maximize"])


@kernel("adopt", arrays=("param", "grad", "exp_avg", "exp_avg_sq"),
        hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "clip_exponent"), per_tensor=("step",),
        flags={"maximize": "maximize", "decay": decay_on, "decoupled": "decoupled_weight_decay",
               "clip": lambda h: h["clip_exponent"] is not None},
        tensor_flags={"first": lambda t: t["step"] == 1})
def adopt_kernel(x, *, maximize, decay, decoupled, clip, first):
    """:func:`optimlab.optim.adopt.adopt_rule` (within an ulp per square root: the C library's,
    correctly rounded, where torch's CPU ``sqrt`` is MKL's, which is not always; bit for bit otherwise).
    ``first``: the tensor's first step, which only sets v = g² (and decays)."""
    g = -x.grad if maximize else x.grad
    if decay and decoupled:
        x.param = x.param * (1 - x.weight_decay * x.lr)
    elif decay:
        g = fma(x.param, x.weight_decay, g)
    if first:
        x.exp_avg_sq = fma(g, g, x.exp_avg_sq)
        return
    normed = g / clamp(sqrt(x.exp_avg_sq), x.eps)              # g / max(√v_{t−1}, ε)
    if clip:
        c = x.step**x.clip_exponent
        normed = clamp(normed, -c, c)
    m = lerp(x.exp_avg, normed, 1 - x.beta1)
    x.exp_avg = m
    x.param = fma(m, -x.lr, x.param)
    x.exp_avg_sq = fma((1 - x.beta2) * g, g, x.exp_avg_sq * x.beta2)


class ADOPT(RealOnly, Optimizer):
    r"""ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any β2 with the
    Optimal Rate"); the rule of ``pytorch_optimizer.ADOPT`` and the authors' code.

    With ``g`` the gradient (negated if ``maximize``); L2 decay ``g += λθ``, or with
    ``decoupled_weight_decay`` ``θ ← θ(1 − γλ)``::

        t = 1:   v = g²                                         (no parameter update)
        t > 1:   m_t = β1·m_{t−1} + (1 − β1)·clip(g_t / max(√v_{t−1}, ε), t^{1/4})
                 θ_t = θ_{t−1} − γ·m_t
                 v_t = β2·v_{t−1} + (1 − β2)·g_t²

    Two changes to Adam: the gradient is normalised by the second moment *before* it is
    updated with that gradient (so the two are independent), and the normalisation happens
    before the momentum, not after. Together they remove Adam's dependence on β2 for
    convergence; the clip (``clip_exponent``, ``None``: off) keeps the first steps bounded.
    No bias correction. State: ``step``, ``exp_avg``, ``exp_avg_sq`` (torch's names).

    When to choose it: where Adam is unstable or needs β2 tuned (small batches, RL, long
    runs), as a drop-in Adam with the same two moments; its defaults (β2 = 0.9999, ε = 1e-6)
    are the paper's.
    """

    registry_name = "adopt"  # registered by this (see _registry)
    rule = staticmethod(adopt_state_rule)
    kernel = adopt_kernel  # its single-pass CPU kernel (see _kernelgen)
    unfused_path = "single-tensor"  # (no multi-tensor rule: without the kernel, adopt_rule per tensor)

    hyper_checks = {"betas": check.betas, "eps": check.positive, "decoupled_weight_decay": check.boolean,
                    "clip_exponent": _clip_exponent}
    state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})
    default_kernels = "optimlab"  # adopt_kernel: adopt_rule in one pass

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.9999),
                 eps: float = 1e-6, weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
                 clip_exponent: float | None = 0.25, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, clip_exponent=clip_exponent,
                        maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return self._adam_moments(param)

    def _update(self, group, params, grads, states) -> None:
        steps = self._advance(states, self._kernel)
        beta1, beta2 = group["betas"]
        if self._kernel and _fused.launch(
                adopt_kernel, dict(param=params, grad=grads, exp_avg=[s["exp_avg"] for s in states],
                                          exp_avg_sq=[s["exp_avg_sq"] for s in states]),
                dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                     weight_decay=group["weight_decay"], decoupled_weight_decay=group["decoupled_weight_decay"],
                     clip_exponent=group["clip_exponent"], maximize=group["maximize"]),
                dict(step=steps)):
            self._kernel_ran = True
            return
        for p, g, s, t in zip(params, grads, states, steps):
            adopt_rule(p, g, s["exp_avg"], s["exp_avg_sq"], int(t), lr=float(group["lr"]), beta1=float(beta1),
                       beta2=float(beta2), eps=group["eps"], weight_decay=group["weight_decay"],
                       decoupled_weight_decay=group["decoupled_weight_decay"],
                       clip_exponent=group["clip_exponent"], maximize=group["maximize"])
