"""The kernel descriptions: one per optimizer with a single-pass CPU kernel.

Each is the optimizer's foreach rule written for one element (see :mod:`._kernelgen` for
the language): the same operations in the same order, so the generated kernel matches the
foreach path bit for bit, except for square roots, which are the C library's (correctly
rounded; torch's are MKL's, within an ulp) unless the description says ``torch_sqrt=True``
(then torch's own routine: the Keras twins, ADOPT).
:mod:`._fused` builds every variant of every description below into one C library and runs
them; an optimizer's ``_update`` calls ``_fused.launch(<description>, arrays, hyper, ...)``.

To give an optimizer a kernel, add its description here (docs/contributing.md).

Conventions shared by the torch-convention descriptions: ``maximize`` negates the gradient
(exactly); L2 weight decay is ``g ← fma(θ, λ, g)`` (torch's ``add(g, θ, alpha=λ)``); decoupled
decay is ``θ ← θ·(1 − γλ)``; ``addcmul(v, g, g, value=c)`` is ``fma(c·g, g, v)``,
``addcdiv(θ, a, b, value=c)`` is ``θ + c·a/b``, ``add(a, b, alpha=c)`` is ``fma(b, c, a)``.
"""

from __future__ import annotations

from optimlab.optim._kernelgen import clamp, fma, kernel, lerp, maximum, norm, sign, sqrt, where


def _decay(h) -> bool:
    return h["weight_decay"] != 0


def _grad(x, maximize: bool, l2: bool):
    """The gradient the rule sees: negated if maximizing, plus λθ for L2 weight decay."""
    g = -x.grad if maximize else x.grad
    return fma(x.param, x.weight_decay, g) if l2 else g


# ------------------------------------------------------------- torch's conventions
@kernel(arrays=("param", "grad", "momentum_buffer"), hyper=("lr", "momentum", "dampening", "weight_decay"),
        per_tensor=("first",),
        flags={"maximize": "maximize", "decay": _decay, "momentum": lambda h: h["momentum"] != 0,
               "nesterov": "nesterov"},
        tensor_flags={"first": lambda t: t["first"] == 1})
def sgd(x, *, maximize, decay, momentum, nesterov, first):
    """:func:`optimlab.optim._rules.sgd` after :func:`~optimlab.optim._rules.effective_grads`.
    ``first``: the buffer's first step (b = g; the buffer's memory is uninitialised)."""
    g = _grad(x, maximize, decay)
    if momentum:
        b = g if first else fma(g, 1 - x.dampening, x.momentum_buffer * x.momentum)
        x.momentum_buffer = b
        g = fma(b, x.momentum, g) if nesterov else b
    x.param = fma(g, -x.lr, x.param)


@kernel(arrays=("param", "grad", "square_avg", "grad_avg", "momentum_buffer"),
        hyper=("lr", "alpha", "eps", "momentum", "weight_decay"),
        flags={"maximize": "maximize", "decay": _decay, "centered": "centered",
               "momentum": lambda h: h["momentum"] > 0})
def rmsprop(x, *, maximize, decay, centered, momentum):
    """:func:`optimlab.optim._rules.rmsprop` after :func:`~optimlab.optim._rules.effective_grads`."""
    g = _grad(x, maximize, decay)
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


@kernel(arrays=("param", "grad", "square_avg", "acc_delta"), hyper=("lr", "rho", "eps", "weight_decay"),
        flags={"maximize": "maximize", "decay": _decay})
def adadelta(x, *, maximize, decay):
    """:func:`optimlab.optim._rules.adadelta` after :func:`~optimlab.optim._rules.effective_grads`."""
    g = _grad(x, maximize, decay)
    v = fma((1 - x.rho) * g, g, x.square_avg * x.rho)
    x.square_avg = v
    std = sqrt(v + x.eps)
    delta = sqrt(x.acc_delta + x.eps) / std * g
    x.acc_delta = fma((1 - x.rho) * delta, delta, x.acc_delta * x.rho)
    x.param = fma(delta, -x.lr, x.param)


@kernel(arrays=("param", "grad", "exp_avg", "exp_inf"), hyper=("lr", "beta1", "beta2", "eps", "weight_decay"),
        per_tensor=("step",), flags={"maximize": "maximize", "decay": _decay})
def adamax(x, *, maximize, decay):
    """:func:`optimlab.optim._rules.adamax` after :func:`~optimlab.optim._rules.effective_grads`."""
    g = _grad(x, maximize, decay)
    m = lerp(x.exp_avg, g, 1 - x.beta1)
    x.exp_avg = m
    u = maximum(x.exp_inf * x.beta2, abs(g) + x.eps)
    x.exp_inf = u
    x.param = x.param + -x.lr / (1 - x.beta1**x.step) * m / u


@kernel(arrays=("param", "grad", "exp_avg", "exp_avg_sq"), hyper=("lr", "beta1", "beta2", "eps", "weight_decay"),
        per_tensor=("step", "mu", "mu_next", "mu_product"),
        flags={"maximize": "maximize", "decay": _decay, "decoupled": "decoupled_weight_decay"})
def nadam(x, *, maximize, decay, decoupled):
    """:func:`optimlab.optim._rules.nadam` after :func:`~optimlab.optim._rules.effective_grads` (or,
    ``decoupled``, :func:`~optimlab.optim._rules.decoupled_decay`). Per tensor: ``mu`` = μ_t,
    ``mu_next`` = μ_{t+1}, ``mu_product`` = Π_t (already multiplied by μ_t)."""
    g = _grad(x, maximize, decay and not decoupled)
    p = x.param * (1 - x.lr * x.weight_decay) if decay and decoupled else x.param
    m = lerp(x.exp_avg, g, 1 - x.beta1)
    x.exp_avg = m
    v = fma((1 - x.beta2) * g, g, x.exp_avg_sq * x.beta2)
    x.exp_avg_sq = v
    denom = sqrt(v / (1 - x.beta2**x.step)) + x.eps
    p = p + -x.lr * (1.0 - x.mu) / (1.0 - x.mu_product) * g / denom
    x.param = p + -x.lr * x.mu_next / (1.0 - x.mu_product * x.mu_next) * m / denom


# ------------------------------------------------------------------ after Adam
def _decoupled(x, decay: bool):
    """θ·(1 − γλ) (decoupled weight decay, as torch._foreach_mul_(params, 1 − lr·wd))."""
    return x.param * (1 - x.lr * x.weight_decay) if decay else x.param


@kernel(arrays=("param", "grad", "exp_avg"), hyper=("lr", "beta1", "beta2", "weight_decay"),
        flags={"maximize": "maximize", "decay": _decay})
def lion(x, *, maximize, decay):
    """:func:`optimlab.optim._rules_modern.lion` after decoupled decay (lion-pytorch's order)."""
    g = -x.grad if maximize else x.grad
    p = _decoupled(x, decay)
    update = fma(g, 1 - x.beta1, x.exp_avg * x.beta1)        # c = β1·m + (1 − β1)·g
    x.param = fma(sign(update), -x.lr, p)                     # θ ← θ − γ·sign(c)
    x.exp_avg = fma(g, 1 - x.beta2, x.exp_avg * x.beta2)     # m ← β2·m + (1 − β2)·g


@kernel(arrays=("param", "grad", "exp_avg", "exp_avg_sq"), hyper=("lr", "beta1", "beta2", "eps", "weight_decay"),
        per_tensor=("step",),
        flags={"maximize": "maximize", "decay": _decay, "decoupled": "decoupled_weight_decay"})
def radam(x, *, maximize, decay, decoupled):
    """:func:`optimlab.optim._rules_modern.radam` (torch's foreach form, branch-free: an
    unrectified step divides by −0.0, whose reciprocal is −0) after the weight decay."""
    g = _grad(x, maximize, decay and not decoupled)
    p = _decoupled(x, decay and decoupled)
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


@kernel(arrays=("param", "grad", "exp_avg", "exp_avg_sq"),
        hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "clip_exponent"), per_tensor=("step",),
        flags={"maximize": "maximize", "decay": _decay, "decoupled": "decoupled_weight_decay",
               "clip": lambda h: h["clip_exponent"] is not None},
        tensor_flags={"first": lambda t: t["step"] == 1}, torch_sqrt=True)
def adopt(x, *, maximize, decay, decoupled, clip, first):
    """:func:`optimlab.optim.adopt.adopt_rule`, bit for bit (its square root is torch's).
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


def _schedule_free(x, d):
    """Schedule-Free's step on y (the parameter) and z from the direction d
    (:func:`optimlab.optim._rules_modern.schedule_free_step`); ``lr`` is the scheduled γ_t,
    ``ckp1`` the averaging weight c_{t+1}."""
    y = lerp(x.param, x.z, x.ckp1)
    x.param = fma(d, x.lr * (x.beta1 * (1 - x.ckp1) - 1), y)
    x.z = fma(d, -x.lr, x.z)


@kernel(arrays=("param", "grad", "z", "exp_avg_sq"),
        hyper=("lr", "ckp1", "beta1", "beta2", "eps", "weight_decay", "k"),
        flags={"maximize": "maximize", "decay": _decay, "decay_at_z": "decay_at_z"})
def schedule_free_adamw(x, *, maximize, decay, decay_at_z):
    """:func:`optimlab.optim._rules_modern.schedule_free_adam_direction` then the Schedule-Free
    step; ``k`` is the group's step count (the bias correction's t)."""
    g = -x.grad if maximize else x.grad
    v = fma((1 - x.beta2) * g, g, x.exp_avg_sq * x.beta2)
    x.exp_avg_sq = v
    d = g / (sqrt(v / (1 - x.beta2**x.k)) + x.eps)
    if decay:
        d = fma(x.z if decay_at_z else x.param, x.weight_decay, d)
    _schedule_free(x, d)


@kernel(arrays=("param", "grad", "z"), hyper=("lr", "ckp1", "beta1", "weight_decay"),
        flags={"maximize": "maximize", "decay": _decay})
def schedule_free_sgd(x, *, maximize, decay):
    """The Schedule-Free step with the (L2-decayed) gradient as the direction."""
    _schedule_free(x, _grad(x, maximize, decay))


# ------------------------------------------------------------------- trust ratios
# Two passes over memory each (the generator splits the body at the reductions): the norms
# first, then the update.
@kernel(arrays=("param", "grad", "exp_avg", "exp_avg_sq"), hyper=("lr", "beta1", "beta2", "eps", "weight_decay"),
        per_tensor=("step",),
        flags={"maximize": "maximize", "decay": _decay, "bias_correction": "bias_correction"})
def lamb(x, *, maximize, decay, bias_correction):
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


@kernel(arrays=("param", "grad", "momentum_buffer"), hyper=("lr", "momentum", "weight_decay", "trust_coefficient"),
        per_tensor=("adapt",), flags={"maximize": "maximize", "decay": _decay, "momentum": lambda h: h["momentum"] != 0},
        tensor_flags={"adapt": lambda t: t["adapt"] != 0})
def lars(x, *, maximize, decay, momentum, adapt):
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


# ------------------------------------------------------------ Keras's conventions
# Transcriptions of optimlab.optim.keras._rules (Keras 3's torch backend, operation by
# operation: a multiply and an add where torch's rules have lerp/addcmul), bit for bit with
# Keras (square roots: torch's). Each first applies Keras's decoupled weight decay
# θ ← θ·(1 − λη) (the base class's step, folded into the kernel): ``decay`` is that factor per
# tensor (1.0 for a tensor excluded from decay: an exact no-op). ``lr`` is Keras's learning
# rate as the rule uses it (cast to the variable's dtype where Keras casts it); the scalars
# Keras computes in the variable's dtype come from keras._rules' helpers.
_KERAS_DECAY = {"decay": lambda h: bool(h["weight_decay"])}


def _keras_param(x, decay: bool):
    return x.param * x.decay if decay else x.param


@kernel(arrays=("param", "grad", "velocity"), hyper=("lr", "momentum", "weight_decay"), per_tensor=("decay",),
        flags={**_KERAS_DECAY, "momentum": lambda h: h["momentum"] != 0, "nesterov": "nesterov"}, torch_sqrt=True)
def keras_sgd(x, *, decay, momentum, nesterov):
    """:func:`optimlab.optim.keras._rules.sgd` (the velocity carries the learning rate)."""
    p = _keras_param(x, decay)
    if not momentum:
        x.param = fma(x.grad, -x.lr, p)
        return
    v = fma(x.grad, -x.lr, x.velocity * x.momentum)           # v ← μ·v − η·g
    x.velocity = v
    if nesterov:
        x.param = fma(v, x.momentum, fma(x.grad, -x.lr, p))     # θ ← θ − η·g + μ·v
    else:
        x.param = p + v


@kernel(arrays=("param", "grad", "accumulator"), hyper=("lr", "epsilon", "weight_decay"), per_tensor=("decay",),
        flags=_KERAS_DECAY, torch_sqrt=True)
def keras_adagrad(x, *, decay):
    """:func:`optimlab.optim.keras._rules.adagrad` (ε inside the root)."""
    g = x.grad
    a = x.accumulator + g * g
    x.accumulator = a
    x.param = _keras_param(x, decay) - g * x.lr / sqrt(a + x.epsilon)


@kernel(arrays=("param", "grad", "velocity", "average_gradient", "momentum_buffer"),
        hyper=("lr", "rho", "momentum", "epsilon", "weight_decay"), per_tensor=("decay",),
        flags={**_KERAS_DECAY, "centered": "centered", "momentum": lambda h: h["momentum"] > 0}, torch_sqrt=True)
def keras_rmsprop(x, *, decay, centered, momentum):
    """:func:`optimlab.optim.keras._rules.rmsprop` (ε inside the root, η inside the momentum)."""
    g = x.grad
    v = fma(g * g, 1 - x.rho, x.velocity * x.rho)
    x.velocity = v
    denominator = v + x.epsilon
    if centered:
        average = fma(g, 1 - x.rho, x.average_gradient * x.rho)
        x.average_gradient = average
        denominator = denominator - average * average
    increment = g * x.lr / sqrt(denominator)
    p = _keras_param(x, decay)
    if momentum:
        b = x.momentum_buffer * x.momentum + increment
        x.momentum_buffer = b
        x.param = p - b
    else:
        x.param = p - increment


@kernel(arrays=("param", "grad", "accumulated_grad", "accumulated_delta_var"),
        hyper=("lr", "rho", "epsilon", "weight_decay"), per_tensor=("decay",), flags=_KERAS_DECAY, torch_sqrt=True)
def keras_adadelta(x, *, decay):
    """:func:`optimlab.optim.keras._rules.adadelta`."""
    g = x.grad
    a = fma(g * g, 1 - x.rho, x.accumulated_grad * x.rho)
    x.accumulated_grad = a
    delta = -(sqrt(x.accumulated_delta_var + x.epsilon) * g / sqrt(a + x.epsilon))
    x.accumulated_delta_var = fma(delta * delta, 1 - x.rho, x.accumulated_delta_var * x.rho)
    x.param = fma(delta, x.lr, _keras_param(x, decay))


@kernel(arrays=("param", "grad", "momentum", "velocity", "velocity_hat"),
        hyper=("alpha", "beta_1", "beta_2", "epsilon", "weight_decay"), per_tensor=("decay",),
        flags={**_KERAS_DECAY, "amsgrad": "amsgrad"}, torch_sqrt=True)
def keras_adam(x, *, decay, amsgrad):
    """:func:`optimlab.optim.keras._rules.adam`; ``alpha`` = η·√(1 − β2ᵗ)/(1 − β1ᵗ) in the
    variable's dtype (:func:`optimlab.optim.keras._rules.adam_alpha`)."""
    g = x.grad
    x.momentum = m = fma(g, 1 - x.beta_1, x.momentum * x.beta_1)
    x.velocity = v = fma(g * g, 1 - x.beta_2, x.velocity * x.beta_2)
    if amsgrad:
        x.velocity_hat = v = maximum(x.velocity_hat, v)
    x.param = _keras_param(x, decay) - m * x.alpha / (sqrt(v) + x.epsilon)


@kernel(arrays=("param", "grad", "momentum", "norm"),
        hyper=("lr", "beta_1", "beta_2", "epsilon", "bias_correction", "weight_decay"), per_tensor=("decay",),
        flags=_KERAS_DECAY, torch_sqrt=True)
def keras_adamax(x, *, decay):
    """:func:`optimlab.optim.keras._rules.adamax` (ε after the max); ``bias_correction`` = 1 − β1ᵗ
    in the variable's dtype."""
    g = x.grad
    x.momentum = m = fma(g, 1 - x.beta_1, x.momentum * x.beta_1)
    x.norm = u = maximum(x.norm * x.beta_2, abs(g))
    x.param = _keras_param(x, decay) - m * x.lr / ((u + x.epsilon) * x.bias_correction)


@kernel(arrays=("param", "grad", "momentum", "velocity"),
        hyper=("lr", "beta_1", "beta_2", "epsilon", "u_next", "one_minus_u", "one_minus_u_product",
               "one_minus_u_product_next", "one_minus_beta_2_power", "weight_decay"),
        per_tensor=("decay",), flags=_KERAS_DECAY, torch_sqrt=True)
def keras_nadam(x, *, decay):
    """:func:`optimlab.optim.keras._rules.nadam`; the schedule's numbers are
    :func:`optimlab.optim.keras._rules.nadam_scalars`'."""
    g = x.grad
    x.momentum = m = fma(g, 1 - x.beta_1, x.momentum * x.beta_1)
    x.velocity = v = fma(g * g, 1 - x.beta_2, x.velocity * x.beta_2)
    m_hat = m * x.u_next / x.one_minus_u_product_next + g * x.one_minus_u / x.one_minus_u_product
    v_hat = v / x.one_minus_beta_2_power
    x.param = _keras_param(x, decay) - m_hat * x.lr / (sqrt(v_hat) + x.epsilon)


#: Every description, in the order of the library's table (a variant's id is its index there).
KERNELS = [sgd, rmsprop, adadelta, adamax, nadam, lion, radam, adopt, schedule_free_adamw, schedule_free_sgd, lamb, lars,
           keras_sgd, keras_adagrad, keras_rmsprop, keras_adadelta, keras_adam, keras_adamax, keras_nadam]
