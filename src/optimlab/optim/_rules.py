"""The update rules: the maths of every optimizer, written once.

Each rule updates lists of tensors in place with ``torch._foreach_*`` operations, in the
operation order of torch.optim's own implementation, so the result matches torch to the
last few ulp. ``steps`` holds each tensor's step count *after* this step's increment
(a Python float, as torch reads it with ``.item()``); bias corrections are computed from
it in double precision, exactly as torch does on its default path.

The Keras-convention twins (``optimlab.optim.keras``) do not use these rules: they run
``optimlab.optim.keras._rules``, transcribed from Keras's own code in Keras's operation order
(a multiply and an add where torch has ``lerp``/``addcmul``), which changes results beyond
the last bit (centred RMSprop). L2 weight decay (torch) enters the gradient here; decoupled
weight decay (AdamW) is applied by the caller or by the ``decoupled`` switch before the
moment updates.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

Tensors = list[Tensor]


def effective_grads(params: Tensors, grads: Tensors, *, maximize: bool, weight_decay: float) -> Tensors:
    """``g ← (−g if maximize else g) + λ·θ`` (L2 decay enters after the negation)."""
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if maximize:  # already a private copy: update it in place
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    return grads


def decay_factor(lr: float | Tensor, weight_decay: float) -> float:
    """``1 − γλ``, as torch computes it for ``param.mul_(1 - lr * weight_decay)``: in double
    for a number γ; in γ's own dtype for a tensor γ (torch's NAdam and RAdam keep a tensor lr a
    tensor there, so a float32 γ gives a float32 factor, on float64 parameters too)."""
    return float(1 - lr * weight_decay) if isinstance(lr, Tensor) else 1 - lr * weight_decay


def decoupled_decay(params: Tensors, *, lr: float | Tensor, weight_decay: float,
                    single_tensor: bool = False) -> None:
    """``θ ← θ·(1 − γλ)`` (AdamW), the factor as :func:`decay_factor` computes it; rounded as
    torch's multi-tensor multiply, or (``single_tensor``: a rule of torch's single-tensor form)
    as its ``mul_`` (see :func:`single_tensor_mul_`)."""
    if weight_decay != 0:
        (single_tensor_mul_ if single_tensor else torch._foreach_mul_)(params, decay_factor(lr, weight_decay))


def single_tensor_mul_(tensors: Tensors, scalar: float) -> None:
    """``t.mul_(scalar)`` for each tensor, as torch's single-tensor ops round it: torch's
    in-place multi-tensor multiply rounds a Python scalar to float16 first (0.999 →
    0.99902), its ``mul_`` computes with the scalar in float32 (the same in every other dtype)."""
    if any(t.dtype == torch.float16 for t in tensors):
        for t in tensors:
            t.mul_(scalar)
    else:
        torch._foreach_mul_(tensors, scalar)


def one_minus_powers(beta: float, steps: Sequence[float]) -> list[float]:
    """``1 − βᵗ`` for each step, in Python double (torch's default path)."""
    return [1 - beta**t for t in steps]


def sgd(params: Tensors, grads: Tensors, momentum_buffers: list[Tensor | None], *, lr: float,
        momentum: float, dampening: float, nesterov: bool) -> None:
    """SGD with optional (Nesterov) momentum, torch's convention.

    ``b ← g`` on the first step, then ``b ← μ·b + (1 − τ)·g``;
    ``d ← g + μ·b`` (Nesterov) or ``d ← b``; ``θ ← θ − γ·d``.
    The learning rate multiplies the buffer at use, so a schedule rescales past momentum.
    ``momentum_buffers`` is updated in place; new buffers replace its ``None`` entries.
    """
    if momentum != 0:
        existing = [i for i, b in enumerate(momentum_buffers) if b is not None]
        if existing:
            bufs = [momentum_buffers[i] for i in existing]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, [grads[i] for i in existing], alpha=1 - dampening)
        for i, b in enumerate(momentum_buffers):
            if b is None:  # first step: the buffer is a copy of the gradient, undamped
                momentum_buffers[i] = torch.clone(grads[i]).detach()
        if nesterov:
            grads = torch._foreach_add(grads, momentum_buffers, alpha=momentum)
        else:
            grads = momentum_buffers
    torch._foreach_add_(params, grads, alpha=-lr)


def adagrad(params: Tensors, grads: Tensors, sums: Tensors, steps: Sequence[float], *, lr: float,
            lr_decay: float, eps: float, grads_owned: bool = False) -> None:
    """AdaGrad: ``s ← s + g²``; ``θ ← θ − γ_t·g / (√s + ε)``, ``γ_t = γ / (1 + (t − 1)·decay)``.

    ``grads_owned``: ``grads`` are this step's own tensors (``effective_grads`` made them: decay or
    ``maximize``), scaled in place as torch's foreach Adagrad then does (in float16/bfloat16
    torch's in-place multi-tensor multiply rounds the scalar to the dtype, its out-of-place one
    does not)."""
    torch._foreach_addcmul_(sums, grads, grads, value=1)
    std = torch._foreach_sqrt(sums)
    torch._foreach_add_(std, eps)
    minus_clr = [-lr / (1 + (t - 1) * lr_decay) for t in steps]
    if grads_owned:
        torch._foreach_mul_(grads, minus_clr)
        numerator = grads
    else:
        numerator = torch._foreach_mul(grads, minus_clr)
    torch._foreach_addcdiv_(params, numerator, std)


def adagrad_sparse(param: Tensor, grad: Tensor, state_sum: Tensor, step: float, *, lr: float,
                   lr_decay: float, eps: float) -> None:
    """AdaGrad for one sparse gradient: only the rows present in the gradient change."""
    clr = lr / (1 + (step - 1) * lr_decay)
    grad = grad.coalesce()
    indices, values = grad._indices(), grad._values()

    def sparse_like(v: Tensor) -> Tensor:
        return torch.sparse_coo_tensor(indices, v, grad.size(), dtype=v.dtype, device=v.device,
                                       check_invariants=False)

    state_sum.add_(sparse_like(values.pow(2)))
    std_values = state_sum.sparse_mask(grad)._values()
    std_values = std_values.sqrt_().add_(eps)
    param.add_(sparse_like(values / std_values), alpha=-clr)


def rmsprop(params: Tensors, grads: Tensors, square_avgs: Tensors, grad_avgs: Tensors,
            momentum_buffers: Tensors, *, lr: float, alpha: float, eps: float, momentum: float,
            centered: bool) -> None:
    """RMSprop: ``v ← α·v + (1 − α)·g²``; centred: ``ḡ ← lerp(ḡ, g, 1 − α)``, ``v̂ = v − ḡ²``.

    ``d = g / (√v̂ + ε)``; with momentum ``b ← μ·b + d``, ``θ ← θ − γ·b``; else ``θ ← θ − γ·d``.
    """
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if centered:
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        avg = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(avg)
    else:
        avg = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(avg, eps)
    if momentum > 0:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_addcdiv_(momentum_buffers, grads, avg)
        torch._foreach_add_(params, momentum_buffers, alpha=-lr)
    else:
        torch._foreach_addcdiv_(params, grads, avg, value=-lr)


def adadelta(params: Tensors, grads: Tensors, square_avgs: Tensors, acc_deltas: Tensors, *, lr: float,
             rho: float, eps: float) -> None:
    """Adadelta: ``v ← ρ·v + (1 − ρ)·g²``; ``Δ = √(u + ε) / √(v + ε) · g``;
    ``u ← ρ·u + (1 − ρ)·Δ²``; ``θ ← θ − γ·Δ`` (γ = 1 in the paper)."""
    torch._foreach_mul_(square_avgs, rho)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - rho)
    std = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(std)
    deltas = torch._foreach_add(acc_deltas, eps)
    torch._foreach_sqrt_(deltas)
    torch._foreach_div_(deltas, std)
    torch._foreach_mul_(deltas, grads)
    torch._foreach_mul_(acc_deltas, rho)
    torch._foreach_addcmul_(acc_deltas, deltas, deltas, value=1 - rho)
    torch._foreach_add_(params, deltas, alpha=-lr)


def adam(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
         max_exp_avg_sqs: Tensors, steps: Sequence[float], *, lr: float, beta1: float, beta2: float,
         eps: float, amsgrad: bool) -> None:
    """Adam: ``m ← lerp(m, g, 1 − β1)``; ``v ← β2·v + (1 − β2)·g²``; AMSGrad: ``v ← max(v_max, v)``.

    ``θ ← θ − γ/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)`` (torch; Algorithm 1 of the paper).
    """
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    bc1 = one_minus_powers(beta1, steps)
    bc2_sqrt = [b**0.5 for b in one_minus_powers(beta2, steps)]
    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        denom = torch._foreach_sqrt(max_exp_avg_sqs)
    else:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    step_size = [-lr / b for b in bc1]
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


def adamax(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_infs: Tensors, steps: Sequence[float], *,
           lr: float, beta1: float, beta2: float, eps: float) -> None:
    """Adamax: ``m ← lerp(m, g, 1 − β1)``; ``u ← max(β2·u, |g| + ε)``; ``θ ← θ − γ/(1 − β1ᵗ) · m / u``."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_infs, beta2)
    abs_grads = torch._foreach_abs(grads)
    torch._foreach_add_(abs_grads, eps)
    torch._foreach_maximum_(exp_infs, abs_grads)
    denom = exp_infs
    step_size = [-lr / b for b in one_minus_powers(beta1, steps)]
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


def nadam_momentum(beta1: float, step: float, momentum_decay: float) -> float:
    """Dozat's momentum schedule ``μ_t = β1·(1 − ½·0.96^(t·ψ))``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def nadam(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors, mu_products: Tensors,
          steps: Sequence[float], *, lr: float, beta1: float, beta2: float, eps: float,
          momentum_decay: float) -> None:
    """NAdam (Dozat 2016), torch's form, with the schedule ``μ_t`` of :func:`nadam_momentum`.

    ``Π_t = Π_{t−1}·μ_t`` (stored); ``m ← lerp(m, g, 1 − β1)``; ``v ← β2·v + (1 − β2)·g²``;
    ``den = √(v/(1 − β2ᵗ)) + ε``;
    ``θ ← θ − γ(1 − μ_t)/(1 − Π_t) · g/den − γ·μ_{t+1}/(1 − Π_t·μ_{t+1}) · m/den``.
    Keras's Nadam is this rule with ``momentum_decay = 1`` (in another operation order and with
    its scalars in the variable's dtype: ``optimlab.optim.keras._rules.nadam``).
    """
    mus = [nadam_momentum(beta1, t, momentum_decay) for t in steps]
    mu_nexts = [nadam_momentum(beta1, t + 1, momentum_decay) for t in steps]
    torch._foreach_mul_(mu_products, mus)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    single_tensor_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_div(exp_avg_sqs, one_minus_powers(beta2, steps))
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    products = [p.item() for p in mu_products]
    grad_coef = [-lr * (1.0 - mu) / (1.0 - prod) for mu, prod in zip(mus, products)]
    avg_coef = [-lr * mu_next / (1.0 - prod * mu_next) for mu_next, prod in zip(mu_nexts, products)]
    torch._foreach_addcdiv_(params, grads, denom, grad_coef)
    torch._foreach_addcdiv_(params, exp_avgs, denom, avg_coef)
