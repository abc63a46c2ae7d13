"""Update rules of the optimizers that came after Adam, written once.

As in :mod:`optimlab.optim._rules`, each rule updates lists of tensors in place, in the
operation order of the implementation it twins (torch.optim for RAdam, Adafactor and
Muon; lion-pytorch for Lion; the schedulefree package for Schedule-Free), so results
agree to the last few ulp. LAMB and LARS follow the papers' algorithms (there is no
canonical library twin). ``steps`` are step counts after this step's increment.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

Tensors = list[Tensor]


# ----------------------------------------------------------------------------- RAdam
def radam(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors, steps: Sequence[float], *,
          lr: float, beta1: float, beta2: float, eps: float) -> None:
    """RAdam (Liu et al. 2020), torch's foreach form.

    ``m ← lerp(m, g, 1 − β1)``; ``v ← β2·v + (1 − β2)·g²``; ``ρ∞ = 2/(1 − β2) − 1``,
    ``ρ_t = ρ∞ − 2tβ2ᵗ/(1 − β2ᵗ)``. If ``ρ_t > 5``:
    ``θ ← θ − γ·r_t·√(1 − β2ᵗ)/(1 − β1ᵗ) · m/(√v + ε)`` with
    ``r_t = √((ρ_t − 4)(ρ_t − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρ_t))``; else ``θ ← θ − γ/(1 − β1ᵗ)·m``.
    """
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    rho_inf = 2 / (1 - beta2) - 1
    rho_ts = [rho_inf - 2 * t * (beta2**t) / (1 - beta2**t) for t in steps]
    rect = [((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5 if rho > 5 else 0
            for rho in rho_ts]
    unrectified = [0 if r > 0 else 1.0 for r in rect]
    bc1 = [1 - beta1**t for t in steps]
    unrect_step = [(lr * u / b) * -1 for u, b in zip(unrectified, bc1)]
    rect_step = [((1 - beta2**t) ** 0.5) * (lr * r / b) * -1 for t, r, b in zip(steps, rect, bc1)]
    buffer = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(buffer, eps)
    torch._foreach_div_(buffer, rect_step)  # ÷ −0.0 on unrectified steps: −inf, whose reciprocal is −0
    torch._foreach_reciprocal_(buffer)
    torch._foreach_add_(buffer, unrect_step)
    torch._foreach_addcmul_(params, exp_avgs, buffer)


# ------------------------------------------------------------------------------ Lion
def lion(params: Tensors, grads: Tensors, exp_avgs: Tensors, *, lr: float, beta1: float, beta2: float) -> None:
    """Lion (Chen et al. 2023): ``c = β1·m + (1 − β1)·g``; ``θ ← θ − γ·sign(c)``;
    ``m ← β2·m + (1 − β2)·g`` (the stored momentum uses β2; β1 only forms the sign)."""
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, grads, alpha=1 - beta1)
    torch._foreach_sign_(update)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)


# ------------------------------------------------------------------- trust ratios
def _trust_ratios(numerators: Tensors, denominators: Tensors) -> list[Tensor]:
    """``‖θ‖/‖u‖`` per tensor, 1 where either norm is 0 (the layer is then left to the plain step)."""
    num, den = torch.stack(numerators), torch.stack(denominators)
    ok = (num > 0) & (den > 0)
    return list(torch.where(ok, num / torch.where(ok, den, 1.0), 1.0).unbind())


def lamb(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors, steps: Sequence[float], *,
         lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, bias_correction: bool) -> None:
    """LAMB (You et al. 2020, Algorithm 2), one trust ratio per tensor.

    ``m ← lerp(m, g, 1 − β1)``; ``v ← β2·v + (1 − β2)·g²``;
    ``r = m̂/(√v̂ + ε) + λθ`` (``m̂ = m/(1 − β1ᵗ)``, ``v̂ = v/(1 − β2ᵗ)``; uncorrected if not
    ``bias_correction``); ``θ ← θ − γ·‖θ‖/‖r‖·r`` (ratio 1 if a norm is 0).
    """
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if bias_correction:
        torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in steps])
    torch._foreach_add_(denom, eps)
    updates = torch._foreach_div(exp_avgs, denom)
    if bias_correction:
        torch._foreach_div_(updates, [1 - beta1**t for t in steps])
    if weight_decay != 0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    ratios = _trust_ratios(torch._foreach_norm(params), torch._foreach_norm(updates))
    torch._foreach_mul_(updates, ratios)
    torch._foreach_add_(params, updates, alpha=-lr)


def lars(params: Tensors, grads: Tensors, momentum_buffers: Tensors, *, lr: float, momentum: float,
         weight_decay: float, trust_coefficient: float, adapt: Sequence[bool]) -> None:
    """LARS (You et al. 2017, Algorithm 1 with eq. 6): per tensor,

    ``λ = η·‖θ‖/(‖g‖ + β·‖θ‖)`` (1 if a norm is 0); ``v ← μ·v + γ·λ·(g + β·θ)``; ``θ ← θ − v``.
    The learning rate enters the velocity (the paper's form). Tensors with ``adapt`` False
    take ``v ← μ·v + γ·g`` (no decay, no ratio).
    """
    idx = [i for i, a in enumerate(adapt) if a]
    steps = list(grads)
    if idx:
        ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
        p_norms, g_norms = torch._foreach_norm(ps), torch._foreach_norm(gs)
        p_norm, den = torch.stack(p_norms), torch.stack(g_norms) + weight_decay * torch.stack(p_norms)
        ok = (p_norm > 0) & (den > 0)
        ratios = torch.where(ok, trust_coefficient * p_norm / torch.where(ok, den, 1.0), 1.0).unbind()
        decayed = torch._foreach_add(gs, ps, alpha=weight_decay) if weight_decay != 0 else gs
        scaled = torch._foreach_mul(decayed, [r * lr for r in ratios])
        for i, s in zip(idx, scaled):
            steps[i] = s
    plain = [i for i, a in enumerate(adapt) if not a]
    if plain:
        for i, s in zip(plain, torch._foreach_mul([grads[i] for i in plain], lr)):
            steps[i] = s
    if momentum != 0:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_add_(momentum_buffers, steps)
        steps = momentum_buffers
    torch._foreach_sub_(params, steps)


# ------------------------------------------------------------------------- Adafactor
def adafactor(params: Tensors, grads: Tensors, row_vars: list[Tensor | None], col_vars: list[Tensor | None],
              variances: list[Tensor | None], steps: Sequence[float], *, lr: float, beta2_decay: float,
              eps1: float | None, eps2: float, d: float, weight_decay: float) -> None:
    """Adafactor (Shazeer & Stern 2018), torch's form (``torch.optim.Adafactor``).

    ``β̂2_t = 1 − t^τ``; ``ρ_t = min(γ, 1/√t)``; ``α_t = max(ε2, RMS(θ))·ρ_t``; ``θ ← θ(1 − γλ)``.
    ≥ 2-D (factored over the last two dims): ``R ← lerp(R, mean_{-1}(g²), t^τ)``,
    ``C ← lerp(C, mean_{-2}(g²), t^τ)``, ``V̂ = R·C / max(mean(R), ε1)``; else ``V̂ ← lerp(V̂, g², t^τ)``.
    ``U = g / max(√V̂, ε1)``; ``θ ← θ − α_t · U / max(1, RMS(U)/d)``.
    """
    weights = [t**beta2_decay for t in steps]
    rhos = [min(lr, 1 / (t**0.5)) for t in steps]
    alphas = [max(eps2, p.norm(2).item() / (p.numel() ** 0.5)) * r for p, r in zip(params, rhos)]
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    eps1_ = torch.finfo(params[0].dtype).eps if eps1 is None else eps1
    estimates: list[Tensor | None] = [None] * len(params)
    factored = [i for i, g in enumerate(grads) if g.dim() > 1]
    if factored:
        gs = [grads[i] for i in factored]
        rows, cols = [row_vars[i] for i in factored], [col_vars[i] for i in factored]
        row_means = [torch.norm(g, dim=-1, keepdim=True) for g in gs]
        torch._foreach_mul_(row_means, row_means)
        torch._foreach_div_(row_means, [g.size(-1) for g in gs])
        torch._foreach_lerp_(rows, row_means, [weights[i] for i in factored])
        col_means = [torch.norm(g, dim=-2, keepdim=True) for g in gs]
        torch._foreach_mul_(col_means, col_means)
        torch._foreach_div_(col_means, [g.size(-2) for g in gs])
        torch._foreach_lerp_(cols, col_means, [weights[i] for i in factored])
        var_estimates = [r @ c for r, c in zip(rows, cols)]
        row_var_means = [r.mean(dim=-2, keepdim=True) for r in rows]
        torch._foreach_clamp_min_(row_var_means, eps1_)
        torch._foreach_div_(var_estimates, row_var_means)
        for i, v in zip(factored, var_estimates):
            estimates[i] = v
    unfactored = [i for i, g in enumerate(grads) if g.dim() <= 1]
    if unfactored:
        gs = [grads[i] for i in unfactored]
        vs = [variances[i] for i in unfactored]
        torch._foreach_lerp_(vs, torch._foreach_mul(gs, gs), [weights[i] for i in unfactored])
        for i, v in zip(unfactored, vs):
            estimates[i] = v.clone()
    torch._foreach_clamp_min_(estimates, eps1_ * eps1_)
    torch._foreach_rsqrt_(estimates)
    torch._foreach_mul_(estimates, grads)
    scales = [-a / (max(1.0, u.norm(2).item() / ((u.numel() ** 0.5) * d))) for a, u in zip(alphas, estimates)]
    torch._foreach_mul_(estimates, scales)
    torch._foreach_add_(params, estimates)


# ------------------------------------------------------------------------------ Muon
def newton_schulz(matrix: Tensor, coefficients: Sequence[float], steps: int, eps: float) -> Tensor:
    """Approximately orthogonalise ``matrix`` (``UΣVᵀ → US'Vᵀ``, ``S' ≈ 1``) in bfloat16.

    ``X ← G/max(‖G‖_F, ε)`` (transposed so rows ≤ columns); ``steps`` times
    ``A = XXᵀ``, ``X ← aX + (bA + cA²)X``: torch's ``_zeropower_via_newtonschulz``.
    """
    a, b, c = coefficients
    x = matrix.bfloat16()
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def muon_lr(lr: float, adjust_lr_fn: str | None, shape: Sequence[int]) -> float:
    """Per-matrix rate: ``γ·√max(1, A/B)`` ("original", Jordan) or ``0.2γ·√max(A, B)``
    ("match_rms_adamw", Moonshot: the update's RMS matches AdamW's)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    return lr * 0.2 * math.sqrt(max(rows, cols))


def muon(params: Tensors, grads: Tensors, momentum_buffers: Tensors, *, lr: float, weight_decay: float,
         momentum: float, nesterov: bool, ns_coefficients: Sequence[float], ns_steps: int, eps: float,
         adjust_lr_fn: str | None) -> None:
    """Muon (Jordan et al. 2024), torch's form: ``B ← lerp(B, g, 1 − μ)``;
    ``U = lerp(g, B, μ)`` (Nesterov) or ``B``; ``O = NS(U)``; ``θ ← θ(1 − γλ) − γ'·O``."""
    for p, g, buf in zip(params, grads, momentum_buffers):
        buf.lerp_(g, 1 - momentum)
        update = g.lerp(buf, momentum) if nesterov else buf
        update = newton_schulz(update, ns_coefficients, ns_steps, eps)
        p.mul_(1 - lr * weight_decay)
        p.add_(update, alpha=-muon_lr(lr, adjust_lr_fn, p.shape))


# --------------------------------------------------------------------- Schedule-Free
def schedule_free_weight(group: dict, warmup_steps: int, r: float, weight_lr_power: float) -> tuple[float, float]:
    """Advance a group's Schedule-Free counters; return ``(γ_t, c_{t+1})``.

    ``γ_t = γ·min(1, (k+1)/warmup)``; ``w = (k+1)^r · (max_{s≤t} γ_s)^p``; ``c = w/Σw``.
    Updates ``k``, ``scheduled_lr``, ``lr_max`` and ``weight_sum`` in ``group`` (the
    schedulefree package's keys, so state_dicts interchange).
    """
    k = group["k"]
    sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr = group["lr"] * sched
    group["scheduled_lr"] = lr
    lr_max = group["lr_max"] = max(lr, group["lr_max"])
    weight = ((k + 1) ** r) * (lr_max**weight_lr_power)
    weight_sum = group["weight_sum"] = group["weight_sum"] + weight
    group["k"] = k + 1
    return lr, (weight / weight_sum if weight_sum != 0 else 0.0)


def schedule_free_step(ys: Tensors, zs: Tensors, directions: Tensors, *, lr: float, ckp1: float, beta1: float) -> None:
    """One Schedule-Free step on ``y`` (the parameters) and ``z``, with ``x`` implicit.

    With ``d`` the base step direction: ``z ← z − γd``; ``x ← (1 − c)x + c·z``;
    ``y = (1 − β1)z + β1x``, computed as ``y ← lerp(y, z, c) + γ(β1(1 − c) − 1)·d``.
    """
    torch._foreach_lerp_(ys, zs, weight=ckp1)
    torch._foreach_add_(ys, directions, alpha=lr * (beta1 * (1 - ckp1) - 1))
    torch._foreach_sub_(zs, directions, alpha=lr)


def schedule_free_adam_direction(ys: Tensors, zs: Tensors, grads: Tensors, exp_avg_sqs: Tensors, step: float, *,
                                 beta2: float, eps: float, weight_decay: float, decay_at_z: bool) -> Tensors:
    """``v ← β2·v + (1 − β2)·g²``; ``d = g/(√(v/(1 − β2ᵗ)) + ε) + λ·(z if decay_at_z else y)``."""
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_div(exp_avg_sqs, 1 - beta2**step)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    directions = torch._foreach_div(grads, denom)
    if weight_decay != 0:
        torch._foreach_add_(directions, zs if decay_at_z else ys, alpha=weight_decay)
    return directions
