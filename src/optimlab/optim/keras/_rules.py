"""Keras 3's update rules in Keras's own operation order, so that float32 runs agree bit for bit.

Each rule transcribes ``_parallel_update_step`` of Keras 3.15's torch backend
(``keras/src/backend/torch/optimizers/torch_<name>.py``, the code ``keras.optimizers.X.apply``
runs with ``KERAS_BACKEND=torch``): the same ``torch._foreach_*`` operations in the same
order, with each scalar in the same dtype. Where Keras casts a scalar to the variable's dtype
(``ops.cast(learning_rate, dtype)``, the β-powers, Nadam's schedule) it is computed here as a
0-dim tensor in that dtype and passed as its exact value; where Keras passes a Python float
(ρ, β, μ, ε, ``1 − ρ``) so does this module.

The order is part of the result, not only of its last bit: torch's rules (``optimlab.optim._rules``)
update running averages with ``lerp`` and ``addcmul``, Keras with a multiply and an add, and in
centred RMSprop the denominator ``(v + ε) − ḡ²`` subtracts two running averages of the same
gradient, whose difference is decided by rounding once they have converged. With torch's order,
``keras.RMSprop(learning_rate=1e-3, centered=True)`` under a constant gradient 3.3 took a square
root of a negative number from step 139 on (NaN), where Keras stays finite.

Every rule updates its tensors in place and takes one (device, dtype) bucket; ``lr`` is
Keras's float32 learning rate (a Python float) and ``step`` is ``iterations + 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optimlab.optim.keras._base import as_keras_lr

Tensors = list[Tensor]


def _cast(x: float, dtype: torch.dtype) -> Tensor:
    """Keras's ``ops.cast(x, dtype)`` of a Python number: a 0-dim tensor."""
    return torch.tensor(x, dtype=dtype)


def sgd(params: Tensors, grads: Tensors, momentums: Tensors, *, lr: float, momentum: float,
        nesterov: bool) -> None:
    """``v ← μ·v − η·g``; ``θ ← θ + v``, or Nesterov ``θ ← θ − η·g + μ·v`` (torch_sgd.py).

    The velocity carries the learning rate (torch's buffer does not). η is not cast to the
    variable's dtype here, as in Keras.
    """
    if momentum != 0:
        torch._foreach_mul_(momentums, momentum)
        torch._foreach_add_(momentums, grads, alpha=-lr)
        if nesterov:
            torch._foreach_add_(params, grads, alpha=-lr)
            torch._foreach_add_(params, momentums, alpha=momentum)
        else:
            torch._foreach_add_(params, momentums)
    else:
        torch._foreach_add_(params, grads, alpha=-lr)


def adagrad(params: Tensors, grads: Tensors, accumulators: Tensors, *, lr: float, epsilon: float) -> None:
    """``a ← a + g·g``; ``θ ← θ − (g·η) / √(a + ε)`` (torch_adagrad.py; ε inside the root)."""
    lr_ = _cast(lr, params[0].dtype).item()
    torch._foreach_add_(accumulators, torch._foreach_mul(grads, grads))
    torch._foreach_add_(
        params,
        torch._foreach_div(torch._foreach_mul(grads, lr_),
                           torch._foreach_sqrt(torch._foreach_add(accumulators, epsilon))),
        alpha=-1)


def rmsprop(params: Tensors, grads: Tensors, velocities: Tensors, average_grads: Tensors, momentums: Tensors, *,
            lr: float, rho: float, momentum: float, epsilon: float, centered: bool) -> None:
    """``v ← ρ·v + (1 − ρ)·g·g``; ``d = √(v + ε)``, centred ``ḡ ← ρ·ḡ + (1 − ρ)·g``,
    ``d = √((v + ε) − ḡ·ḡ)``; ``i = (g·η)/d``; with momentum ``b ← μ·b + i``, ``θ ← θ − b``,
    else ``θ ← θ − i`` (torch_rmsprop.py: ε inside the root, η inside the momentum)."""
    lr_ = _cast(lr, params[0].dtype).item()
    torch._foreach_mul_(velocities, rho)
    torch._foreach_add_(velocities, torch._foreach_mul(grads, grads), alpha=1 - rho)
    denominators = torch._foreach_add(velocities, epsilon)
    if centered:
        torch._foreach_mul_(average_grads, rho)
        torch._foreach_add_(average_grads, grads, alpha=1 - rho)
        torch._foreach_add_(denominators, torch._foreach_mul(average_grads, average_grads), alpha=-1)
    torch._foreach_sqrt_(denominators)
    increments = torch._foreach_div(torch._foreach_mul(grads, lr_), denominators)
    if momentum > 0:
        torch._foreach_mul_(momentums, momentum)
        torch._foreach_add_(momentums, increments)
        torch._foreach_add_(params, momentums, alpha=-1)
    else:
        torch._foreach_add_(params, increments, alpha=-1)


def adadelta(params: Tensors, grads: Tensors, accumulated_grads: Tensors, accumulated_delta_vars: Tensors, *,
             lr: float, rho: float, epsilon: float) -> None:
    """``a ← ρ·a + (1 − ρ)·g·g``; ``Δ = −(√(u + ε)·g)/√(a + ε)``; ``u ← ρ·u + (1 − ρ)·Δ·Δ``;
    ``θ ← θ + η·Δ`` (torch_adadelta.py)."""
    lr_ = _cast(lr, params[0].dtype).item()
    torch._foreach_mul_(accumulated_grads, rho)
    torch._foreach_add_(accumulated_grads, torch._foreach_mul(grads, grads), alpha=1 - rho)

    def rms(x: Tensors) -> Tensors:
        return torch._foreach_sqrt(torch._foreach_add(x, epsilon))

    deltas = torch._foreach_mul(
        torch._foreach_div(torch._foreach_mul(rms(accumulated_delta_vars), grads), rms(accumulated_grads)), -1)
    torch._foreach_mul_(accumulated_delta_vars, rho)
    torch._foreach_add_(accumulated_delta_vars, torch._foreach_mul(deltas, deltas), alpha=1 - rho)
    torch._foreach_add_(params, deltas, alpha=lr_)


def _power(beta: float, step: int, dtype: torch.dtype) -> Tensor:
    """``βᵗ`` as Keras evaluates it: ``ops.power(ops.cast(β, dtype), ops.cast(t, dtype))``."""
    return torch.pow(_cast(beta, dtype), _cast(float(step), dtype))


def adam_alpha(lr: float, beta_1: float, beta_2: float, step: int, dtype: torch.dtype) -> float:
    """Adam's step size ``α = η·√(1 − β2ᵗ)/(1 − β1ᵗ)``, computed in the variable's dtype as
    torch_adam.py does, as a number (also what the single-pass kernel is given)."""
    return (_cast(lr, dtype) * torch.sqrt(1 - _power(beta_2, step, dtype)) / (1 - _power(beta_1, step, dtype))).item()


def adam(params: Tensors, grads: Tensors, momentums: Tensors, velocities: Tensors, velocity_hats: Tensors, *,
         lr: float, beta_1: float, beta_2: float, epsilon: float, amsgrad: bool, step: int) -> None:
    """``m ← β1·m + (1 − β1)·g``; ``v ← β2·v + (1 − β2)·g·g``; AMSGrad ``v̂ ← max(v̂, v)``, used for v;
    ``α = η·√(1 − β2ᵗ)/(1 − β1ᵗ)`` (in the variable's dtype); ``θ ← θ − (m·α)/(√v + ε)``
    (torch_adam.py; ε before the bias correction, unlike torch's Adam)."""
    alpha = adam_alpha(lr, beta_1, beta_2, step, params[0].dtype)
    torch._foreach_mul_(momentums, beta_1)
    torch._foreach_add_(momentums, grads, alpha=1 - beta_1)
    torch._foreach_mul_(velocities, beta_2)
    torch._foreach_add_(velocities, torch._foreach_mul(grads, grads), alpha=1 - beta_2)
    if amsgrad:
        torch._foreach_maximum_(velocity_hats, velocities)
        velocities = velocity_hats
    torch._foreach_add_(
        params,
        torch._foreach_div(torch._foreach_mul(momentums, alpha),
                           torch._foreach_add(torch._foreach_sqrt(velocities), epsilon)),
        alpha=-1)


def adamax_scalars(lr: float, beta_1: float, step: int, dtype: torch.dtype) -> tuple[float, float]:
    """Adamax's ``(η, 1 − β1ᵗ)`` in the variable's dtype (torch_adamax.py), as numbers."""
    return _cast(lr, dtype).item(), (1 - _power(beta_1, step, dtype)).item()


def adamax(params: Tensors, grads: Tensors, momentums: Tensors, norms: Tensors, *, lr: float, beta_1: float,
           beta_2: float, epsilon: float, step: int) -> None:
    """``m ← β1·m + (1 − β1)·g``; ``u ← max(β2·u, |g|)``; ``θ ← θ − (m·η)/((u + ε)·(1 − β1ᵗ))``
    (torch_adamax.py; ε after the max, unlike torch's Adamax)."""
    lr_, bias_correction = adamax_scalars(lr, beta_1, step, params[0].dtype)
    torch._foreach_mul_(momentums, beta_1)
    torch._foreach_add_(momentums, grads, alpha=1 - beta_1)
    torch._foreach_mul_(norms, beta_2)
    torch._foreach_maximum_(norms, torch._foreach_abs(grads))
    torch._foreach_add_(
        params,
        torch._foreach_div(torch._foreach_mul(momentums, lr_),
                           torch._foreach_mul(torch._foreach_add(norms, epsilon), bias_correction)),
        alpha=-1)


def nadam(params: Tensors, grads: Tensors, momentums: Tensors, velocities: Tensors, *, lr: float, beta_1: float,
          beta_2: float, epsilon: float, step: int, u_product: Tensor) -> Tensor:
    """Nadam (torch_nadam.py), with ``u_t = β1·(1 − ½·0.96ᵗ)`` and the product ``U_t = U_{t−1}·u_t``
    (``u_product`` holds ``U_{t−1}``, a 0-dim tensor; the new ``U_t`` is returned)::

        m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g·g
        m̂ = (m·u_{t+1})/(1 − U_t·u_{t+1}) + (g·(1 − u_t))/(1 − U_t);   v̂ = v/(1 − β2ᵗ)
        θ ← θ − (m̂·η)/(√v̂ + ε)

    torch's NAdam with ``momentum_decay = 1``, in Keras's order and dtypes.
    """
    s, u_product_t = nadam_scalars(lr, beta_1, beta_2, step, u_product, params[0].dtype)
    torch._foreach_mul_(momentums, beta_1)
    torch._foreach_add_(momentums, grads, alpha=1 - beta_1)
    torch._foreach_mul_(velocities, beta_2)
    torch._foreach_add_(velocities, torch._foreach_mul(grads, grads), alpha=1 - beta_2)
    m_hats = torch._foreach_add(
        torch._foreach_div(torch._foreach_mul(momentums, s["u_next"]), s["one_minus_u_product_next"]),
        torch._foreach_div(torch._foreach_mul(grads, s["one_minus_u"]), s["one_minus_u_product"]))
    v_hats = torch._foreach_div(velocities, s["one_minus_beta_2_power"])
    torch._foreach_add_(
        params,
        torch._foreach_div(torch._foreach_mul(m_hats, s["lr"]), torch._foreach_add(torch._foreach_sqrt(v_hats), epsilon)),
        alpha=-1)
    return u_product_t


def nadam_scalars(lr: float, beta_1: float, beta_2: float, step: int, u_product: Tensor,
                  dtype: torch.dtype) -> tuple[dict[str, float], Tensor]:
    """Nadam's numbers for step ``step``, in the variable's dtype (torch_nadam.py): ``lr`` (η),
    ``u_next`` (u_{t+1}), ``one_minus_u`` (1 − u_t), ``one_minus_u_product`` (1 − U_t),
    ``one_minus_u_product_next`` (1 − U_t·u_{t+1}), ``one_minus_beta_2_power`` (1 − β2ᵗ); and
    ``U_t = U_{t−1}·u_t`` (``u_product`` holds U_{t−1}, a 0-dim tensor)."""
    lr_ = _cast(lr, dtype).item()
    decay, beta_1_ = _cast(0.96, dtype), _cast(beta_1, dtype)
    u_t = beta_1_ * (1.0 - 0.5 * torch.pow(decay, _cast(float(step), dtype)))
    u_t_1 = beta_1_ * (1.0 - 0.5 * torch.pow(decay, _cast(float(step + 1), dtype)))
    u_product_t = u_product * u_t
    u_product_t_1 = u_product_t * u_t_1
    beta_2_power = _power(beta_2, step, dtype)
    return dict(lr=lr_, u_next=u_t_1.item(), one_minus_u=(1 - u_t).item(),
                one_minus_u_product=(1 - u_product_t).item(), one_minus_u_product_next=(1 - u_product_t_1).item(),
                one_minus_beta_2_power=(1 - beta_2_power).item()), u_product_t


# ------------------------------------------------------------------ for the readable rules
# The classes' ``rule`` functions (one tensor at a time; see ``optimlab.optim._base.Optimizer.rule``)
# live next to their classes and use these to read what Keras's ``update_step`` takes from
# ``self``: the learning rate, cast to the variable's dtype, and the global step.
def keras_lr(group: dict, dtype: torch.dtype) -> float:
    """``ops.cast(learning_rate, dtype)``: the group's ``lr`` as Keras's float32 learning-rate
    variable holds it (``as_keras_lr``), cast to ``dtype`` (a number)."""
    return _cast(as_keras_lr(group["lr"]), dtype).item()


def local_step(group: dict) -> int:
    """Keras's ``local_step = iterations + 1``. A rule's ``group`` is the param group seen
    with the optimizer-wide counter ``iterations`` (steps completed before this one, the
    class's ``KerasOptimizer.iterations``): Keras counts steps per optimizer, not per tensor."""
    return group["iterations"] + 1


def nadam_momentum(beta_1: float, step: int, dtype: torch.dtype) -> Tensor:
    """Nadam's momentum schedule ``u_t = β1·(1 − ½·0.96ᵗ)`` in ``dtype`` (a 0-dim tensor), as
    torch_nadam.py evaluates it (the same expression as :func:`nadam`)."""
    decay, beta_1_ = _cast(0.96, dtype), _cast(beta_1, dtype)
    return beta_1_ * (1.0 - 0.5 * torch.pow(decay, _cast(float(step), dtype)))
