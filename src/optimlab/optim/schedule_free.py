"""Schedule-Free optimizers (Defazio et al. 2024): no learning-rate schedule, an average instead."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from optimlab.optim import _fused, _rules, _rules_modern
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer, TEMPORARY_CHUNK
from optimlab.optim._kernelgen import decay_on, fma, kernel, lerp, sqrt, torch_grad
from optimlab.optim._modern import RealOnly


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _open_unit_interval(name: str, value: Any) -> None:
    v = check._as_float(name, value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def _betas_open(name: str, value: Any) -> None:
    check.betas(name, value)
    if value[0] == 0:
        raise ValueError(f"{name}[0] must be > 0 (x is recovered as (y − (1 − β1)z)/β1), got {name}={value!r}")


# the schedulefree package's per-group bookkeeping (so state_dicts interchange with it)
_COUNTERS = {"k": _non_negative_int, "train_mode": check.boolean, "weight_sum": check.non_negative,
             "lr_max": check.anything, "scheduled_lr": check.anything}
_COMMON = {"warmup_steps": _non_negative_int, "r": check.non_negative, "weight_lr_power": check.non_negative,
           **_COUNTERS}


class _ScheduleFree(RealOnly, Optimizer):
    """The train/eval switch and the per-group averaging weights shared by both optimizers."""

    other_dtype_grads = "rules"  # their foreach ops take a gradient in another dtype

    def _counters(self) -> dict[str, Any]:
        return dict(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)

    def _beta1(self, group: dict[str, Any]) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def eval(self) -> None:
        """Put the averaged weights x in the parameters (for evaluation and checkpoints)."""
        for group in self.param_groups:
            if group["train_mode"]:
                beta1 = self._beta1(group)
                for p in group["params"]:
                    if "z" in self.state[p]:
                        p.lerp_(self.state[p]["z"], 1 - 1 / beta1)  # x = (y − (1 − β1)z)/β1
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Put the gradient point y = (1 − β1)z + β1x back in the parameters."""
        for group in self.param_groups:
            if not group["train_mode"]:
                beta1 = self._beta1(group)
                for p in group["params"]:
                    if "z" in self.state[p]:
                        p.lerp_(self.state[p]["z"], 1 - beta1)
                group["train_mode"] = True

    @torch._disable_dynamo  # (see optimlab.optim.Optimizer.step)
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if not all(g["train_mode"] for g in self.param_groups):
            raise RuntimeError(f"{type(self).__name__}.step() called in eval mode: the parameters hold the "
                               "averaged weights x; call optimizer.train() before training steps "
                               "(and optimizer.eval() before evaluating or saving)")
        self._stepped: set[int] = set()
        skipped = self.skipped_steps
        loss = super().step(closure)
        if self.skipped_steps == skipped:
            for group in self.param_groups:
                if id(group) not in self._stepped:  # no gradient in this group: its clock still runs
                    self._advance_group(group)
        return loss

    def _advance_group(self, group: dict[str, Any]) -> tuple[float, float]:
        return _rules_modern.schedule_free_weight(group, group["warmup_steps"], group["r"], group["weight_lr_power"])

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        self._stepped.add(id(group))
        self._now = self._advance_group(group)
        super()._step_group(group, params, grads)


def _schedule_free_step(y: Tensor, z: Tensor, d: Tensor, group: dict[str, Any], beta1: float) -> None:
    """z ← z − γ_t·d; x ← (1 − c_t)·x + c_t·z; y = (1 − β1)·z + β1·x, on the parameter y and
    the state z (x implicit: x = (y − (1 − β1)·z)/β1). Reads the group's counters, which
    :meth:`_ScheduleFree._step_group` has advanced for this step (k = t)."""
    lr = group["scheduled_lr"]                                 # γ_t = γ·min(1, t/warmup)
    w_t = group["k"] ** group["r"] * group["lr_max"] ** group["weight_lr_power"]  # w_t = t^r·(max_{s≤t} γ_s)^p
    c_t = w_t / group["weight_sum"] if group["weight_sum"] != 0 else 0.0  # c_t = w_t / Σ_{s≤t} w_s
    y.lerp_(z, c_t)                                            # y ← (1 − c)·y + c·z_{t−1} ...
    y.add_(d, alpha=lr * (beta1 * (1 - c_t) - 1))              # ... − γ(1 − β1(1 − c))·d: y_t = (1 − β1)z_t + β1x_t
    z.sub_(d, alpha=lr)                                        # z_t = z_{t−1} − γ_t·d


def schedule_free_adamw_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Schedule-Free AdamW step on one tensor (Defazio et al. 2024, Algorithm 1), in place:
    the parameter is y, the state holds z and v."""
    t = group["k"]                                             # this step (the group's counter, advanced)
    beta1, beta2 = map(float, group["betas"])
    wd, eps = group["weight_decay"], group["eps"]
    y, z, v = param, state["z"], state["exp_avg_sq"]
    g = -grad if group["maximize"] else grad                   # g_t, taken at y_{t−1}
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)              # v_t = β2·v_{t−1} + (1 − β2)·g_t²
    d = g / ((v / (1 - beta2**t)).sqrt() + eps)                # d_t = g_t/(√(v_t/(1 − β2ᵗ)) + ε)
    if wd != 0:
        d = d + wd * (z if group["decay_at_z"] else y)         #       + λ·y_{t−1}  (decay_at_z: λ·z_{t−1})
    _schedule_free_step(y, z, d, group, beta1)


def _schedule_free(x, d):
    """Schedule-Free's step on y (the parameter) and z from the direction d
    (:func:`optimlab.optim._rules_modern.schedule_free_step`); ``lr`` is the scheduled γ_t,
    ``ckp1`` the averaging weight c_{t+1}."""
    y = lerp(x.param, x.z, x.ckp1)
    x.param = fma(d, x.lr * (x.beta1 * (1 - x.ckp1) - 1), y)
    x.z = fma(d, -x.lr, x.z)


@kernel("schedule_free_adamw", arrays=("param", "grad", "z", "exp_avg_sq"),
        hyper=("lr", "ckp1", "beta1", "beta2", "eps", "weight_decay", "k"),
        flags={"maximize": "maximize", "decay": decay_on, "decay_at_z": "decay_at_z"})
def schedule_free_adamw_kernel(x, *, maximize, decay, decay_at_z):
    """:func:`optimlab.optim._rules_modern.schedule_free_adam_direction` then the Schedule-Free
    step; ``k`` is the group's step count (the bias correction's t)."""
    g = -x.grad if maximize else x.grad
    v = fma((1 - x.beta2) * g, g, x.exp_avg_sq * x.beta2)
    x.exp_avg_sq = v
    d = g / (sqrt(v / (1 - x.beta2**x.k)) + x.eps)
    if decay:
        d = fma(x.z if decay_at_z else x.param, x.weight_decay, d)
    _schedule_free(x, d)


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled"); the maths of
    the ``schedulefree`` package's ``AdamWScheduleFree`` (and of its reference class).

    Three sequences: z (the base AdamW iterate, state "z"), x (its weighted average, used
    for evaluation) and y = (1 − β1)·z + β1·x (where gradients are taken; the parameters
    in train mode). Each step, with ``g`` the gradient at y (negated if ``maximize``)::

        γ_t = γ·min(1, t/warmup_steps),   w_t = t^r·(max_{s≤t} γ_s)^p,   c_t = w_t / Σ_{s≤t} w_s
        v_t = β2·v_{t−1} + (1 − β2)·g²                            ("exp_avg_sq")
        z_t = z_{t−1} − γ_t·(g/(√(v_t/(1 − β2ᵗ)) + ε) + λ·y)       (decay_at_z: λ·z)
        x_t = (1 − c_t)·x_{t−1} + c_t·z_t
        y_t = (1 − β1)·z_t + β1·x_t

    x is not stored: y is updated directly and :meth:`eval` computes x from y and z (two
    state tensors, as AdamW). β1 is the interpolation, not an EMA of gradients.

    **Call** ``optimizer.eval()`` before evaluating or saving the model and
    ``optimizer.train()`` before the next training step (a step in eval mode raises).
    Networks with BatchNorm need their running statistics recomputed at x.
    ``optimlab.train.fit`` does all this itself (:mod:`optimlab.train.modes`). Unlike the
    package, a new optimizer starts in train mode. The step counter and averaging weights
    live in each param group (the package's keys ``k``, ``weight_sum``, ``lr_max``).

    When to choose it: when the training length is not known in advance or you do not
    want to tune a schedule; it matches or beats cosine/linear-decay AdamW without one
    (winner of the 2024 AlgoPerf self-tuning track). Warm-up is still advised.
    """

    registry_name, registry_aliases = "schedulefree_adamw", ("schedulefree-adamw",)
    rule = staticmethod(schedule_free_adamw_rule)
    kernel = schedule_free_adamw_kernel  # its single-pass CPU kernel (see _kernelgen)

    chunk_elements = TEMPORARY_CHUNK  # temporaries reused from the heap (see Optimizer)
    hyper_checks = {"betas": _betas_open, "eps": check.positive, "decay_at_z": check.boolean, **_COMMON}
    state_keys = frozenset({"z", "exp_avg_sq"})
    default_kernels = "optimlab"  # schedule_free_adamw_kernel

    def __init__(self, params: Any, lr: float | Tensor = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, decay_at_z: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, decay_at_z=decay_at_z, maximize=maximize,
                        foreach=foreach, fused=fused, **self._counters())
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _beta1(self, group):
        return group["betas"][0]

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"z": torch.clone(param, memory_format=torch.preserve_format).detach(),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, group, params, grads, states) -> None:
        lr, ckp1 = self._now
        beta1, beta2 = group["betas"]
        zs = [s["z"] for s in states]
        if self._kernel and _fused.launch(
                schedule_free_adamw_kernel,
                dict(param=params, grad=grads, z=zs, exp_avg_sq=[s["exp_avg_sq"] for s in states]),
                dict(lr=lr, ckp1=ckp1, beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                     weight_decay=group["weight_decay"], k=group["k"], maximize=group["maximize"],
                     decay_at_z=group["decay_at_z"])):
            self._kernel_ran = True
            return
        grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=0)
        directions = _rules_modern.schedule_free_adam_direction(
            params, zs, grads, [s["exp_avg_sq"] for s in states], group["k"], beta2=float(beta2),
            eps=group["eps"], weight_decay=group["weight_decay"], decay_at_z=group["decay_at_z"])
        _rules_modern.schedule_free_step(params, zs, directions, lr=lr, ckp1=ckp1, beta1=float(beta1))


def schedule_free_sgd_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Schedule-Free SGD step on one tensor (Defazio et al. 2024), in place: the parameter
    is y, the state holds z."""
    g = -grad if group["maximize"] else grad                   # g_t, taken at y_{t−1}
    d = g + group["weight_decay"] * param if group["weight_decay"] != 0 else g  # d_t = g_t + λ·y_{t−1}
    _schedule_free_step(param, state["z"], d, group, group["momentum"])


@kernel("schedule_free_sgd", arrays=("param", "grad", "z"), hyper=("lr", "ckp1", "beta1", "weight_decay"),
        flags={"maximize": "maximize", "decay": decay_on})
def schedule_free_sgd_kernel(x, *, maximize, decay):
    """The Schedule-Free step with the (L2-decayed) gradient as the direction."""
    _schedule_free(x, torch_grad(x, maximize, decay))


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-Free SGD (Defazio et al. 2024, "The Road Less Scheduled"); the maths of the
    ``schedulefree`` package's ``SGDScheduleFree`` (and of its reference class).

    As :class:`ScheduleFreeAdamW` with a plain gradient step for z and ``momentum`` = β1::

        z_t = z_{t−1} − γ_t·(g + λ·y),   x_t = (1 − c_t)·x_{t−1} + c_t·z_t,   y_t = (1 − β)·z_t + β·x_t

    One state tensor (z). Call ``optimizer.eval()`` / ``optimizer.train()`` around
    evaluation, as for :class:`ScheduleFreeAdamW`.

    When to choose it: where you would use SGD with momentum and a tuned step/cosine
    schedule (vision models), but want no schedule and a good model at any stopping time.
    The default γ = 1.0 is the package's; SGD-scale problems usually want 0.1–10.
    """

    registry_name, registry_aliases = "schedulefree_sgd", ("schedulefree-sgd",)  # registered by this (see _registry)
    rule = staticmethod(schedule_free_sgd_rule)
    kernel = schedule_free_sgd_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"momentum": _open_unit_interval, **_COMMON}
    state_keys = frozenset({"z"})
    default_kernels = "optimlab"  # schedule_free_sgd_kernel

    def __init__(self, params: Any, lr: float | Tensor = 1.0, momentum: float = 0.9, weight_decay: float = 0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, maximize=maximize, foreach=foreach, fused=fused,
                        **self._counters())
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _beta1(self, group):
        return group["momentum"]

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"z": torch.clone(param, memory_format=torch.preserve_format).detach()}

    def _update(self, group, params, grads, states) -> None:
        lr, ckp1 = self._now
        zs = [s["z"] for s in states]
        if self._kernel and _fused.launch(
                schedule_free_sgd_kernel, dict(param=params, grad=grads, z=zs),
                dict(lr=lr, ckp1=ckp1, beta1=group["momentum"], weight_decay=group["weight_decay"],
                     maximize=group["maximize"])):
            self._kernel_ran = True
            return
        directions = _rules.effective_grads(params, grads, maximize=group["maximize"],
                                            weight_decay=group["weight_decay"])
        _rules_modern.schedule_free_step(params, zs, directions, lr=lr, ckp1=ckp1, beta1=group["momentum"])
