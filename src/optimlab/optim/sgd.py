"""Gradient descent: batch, stochastic and mini-batch, plain or with (Nesterov) momentum."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.sgd import sgd as _torch_sgd  # torch's functional form (fused kernels)

from optimlab.optim import _fused, _rules
from optimlab.optim import _validation as check
from optimlab.optim._base import GradientMismatchError, Optimizer
from optimlab.optim._kernelgen import decay_on, fma, kernel, torch_grad


def sgd_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of SGD on one tensor, torch's convention (``torch.optim.SGD``): plain
    (Robbins & Monro 1951), with heavy-ball momentum (Polyak 1964) or in the Nesterov form
    of Sutskever et al. 2013. State: ``momentum_buffer``, made from the first gradient."""
    g = -grad if group["maximize"] else grad
    if group["weight_decay"] != 0:
        g = g + group["weight_decay"] * param              # L2: g ← g + λθ
    mu = group["momentum"]
    if mu != 0:
        b = state.get("momentum_buffer")
        if b is None:                                      # b₁ = g₁ (undamped, as torch)
            b = state["momentum_buffer"] = torch.clone(g).detach()
        else:
            b.mul_(mu).add_((1 - group["dampening"]) * g)  # b ← μb + (1 − τ)g
        g = g + mu * b if group["nesterov"] else b         # d = g + μb (Nesterov) or b
    param.sub_(group["lr"] * g)                            # θ ← θ − γd


@kernel("sgd", arrays=("param", "grad", "momentum_buffer"), hyper=("lr", "momentum", "dampening", "weight_decay"),
        per_tensor=("first",),
        flags={"maximize": "maximize", "decay": decay_on, "momentum": lambda h: h["momentum"] != 0,
               "nesterov": "nesterov"},
        tensor_flags={"first": lambda t: t["first"] == 1})
def sgd_kernel(x, *, maximize, decay, momentum, nesterov, first):
    """:func:`optimlab.optim._rules.sgd` after :func:`~optimlab.optim._rules.effective_grads`.
    ``first``: the buffer's first step (b = g; the buffer's memory is uninitialised)."""
    g = torch_grad(x, maximize, decay)
    if momentum:
        b = g if first else fma(g, 1 - x.dampening, x.momentum_buffer * x.momentum)
        x.momentum_buffer = b
        g = fma(b, x.momentum, g) if nesterov else b
    x.param = fma(g, -x.lr, x.param)


class SGD(Optimizer):
    r"""Stochastic gradient descent, torch's convention (a twin of ``torch.optim.SGD``).

    Batch, stochastic and mini-batch gradient descent are this one rule; the batch size is
    the data's business. With ``g`` the gradient (negated if ``maximize``) plus ``λθ``::

        b₁ = g₁,   b_t = μ·b_{t−1} + (1 − τ)·g_t          (momentum μ, dampening τ)
        d_t = g_t + μ·b_t  (nesterov)   or   b_t   or   g_t (μ = 0)
        θ_t = θ_{t−1} − γ·d_t

    The lectures also write momentum as ``v ← γ·v + η·∇; w ← w − v`` (the velocity carries
    the learning rate; Keras's convention, :class:`optimlab.optim.keras.SGD`). Under a
    constant learning rate the two are the same optimizer (``v = η·b``); once the rate
    changes they differ: here the whole buffer is rescaled by the current rate.
    """

    registry_name = "sgd"  # registered by this (see _registry)
    rule = staticmethod(sgd_rule)
    kernel = sgd_kernel  # its single-pass CPU kernel (see _kernelgen)

    hyper_checks = {"momentum": check.non_negative, "dampening": check.non_negative,
                    "nesterov": check.boolean}
    state_keys = frozenset({"momentum_buffer"})
    sparse_state_keys = frozenset({"momentum_buffer"})  # (a copy of the first gradient, sparse or not, as torch's)
    supports_sparse = True
    default_kernels = "torch"
    torch_fused_ops = ("_fused_sgd_",)

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None,
                 skip_nonfinite: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_combination(self, group: dict[str, Any]) -> None:
        if group.get("nesterov") and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    #: Whether a momentum buffer may be sparse (a copy of a sparse gradient, as torch makes it):
    #: then :meth:`_check_states` looks for one meeting a dense gradient.
    _sparse_buffers = False

    def _check_states(self, groups) -> None:
        """A sparse momentum buffer (started from a sparse gradient, as torch starts it) cannot
        take a dense gradient (``add(sparse, dense)``: torch.optim.SGD fails part-way, other
        parameters already stepped): GradientMismatchError (a ValueError, and the RuntimeError torch
        raises) before anything changes, naming the parameter."""
        super()._check_states(groups)
        if not self._sparse_buffers:
            return
        found = False
        for group, params, grads in groups:
            if group["momentum"] == 0:
                continue
            for p, g in zip(params, grads):
                buf = self.state[p].get("momentum_buffer") if p in self.state else None
                if isinstance(buf, Tensor) and buf.is_sparse:
                    found = True
                    if not g.is_sparse:
                        raise GradientMismatchError(
                            f"SGD: {self._where(group, p)} has a sparse momentum buffer (started from a sparse "
                            "gradient) and now a dense gradient, which it cannot take (torch.optim.SGD fails "
                            "part-way here); make it dense first: opt.state[p]['momentum_buffer'] = "
                            "buf.to_dense(), or keep the gradients sparse")
        self._sparse_buffers = found

    def _loaded(self, state_dict: dict[str, Any]) -> None:
        self._sparse_buffers = self._holds_sparse_buffers()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._sparse_buffers = self._holds_sparse_buffers()

    def _holds_sparse_buffers(self) -> bool:
        return any(isinstance(b, Tensor) and b.is_sparse for s in self.state.values()
                   for b in [s.get("momentum_buffer")])

    lazy_state = True  # the momentum buffer is created from the first gradient
    other_dtype_grads = "torch"  # torch's SGD promotes (a float16 gradient's buffer stays float16)
    load_defaults = {**Optimizer.load_defaults, "nesterov": False}  # torch.optim.SGD.__setstate__

    def _stateless(self, group: dict[str, Any]) -> bool:
        return group["momentum"] == 0

    def _update(self, group, params, grads, states) -> None:
        momentum = group["momentum"]
        bufs = [s.get("momentum_buffer") for s in states] if momentum != 0 else []
        lr = float(group["lr"])
        amp = self._grad_scale is not None or self._found_inf is not None
        sparse = grads[0].is_sparse
        # The default runs the generated kernel (bit for bit torch's default, single-tensor SGD);
        # fused=True asks for torch's fused kernel, which rounds θ − γ·d twice and so differs in the last bit.
        if (self._kernel and group.get("fused") is None and not sparse and not amp and params[0].is_cpu
                and self._own_kernel(group, params, grads, bufs, states, lr)):
            self._kernel_ran = True
            return
        # torch's fused kernel: asked for, GradScaler's protocol, or a device other than the CPU
        # (where the generated kernel cannot serve, the CPU default keeps torch's default bits: foreach)
        torch_kernel = group.get("fused") is True or amp or not params[0].is_cpu
        fused = self._kernel and torch_kernel and not sparse and _fused_kernel_fits(params, grads, bufs)
        self._kernel_ran = bool(fused)
        if fused and params[0].is_cpu:
            _fused_sgd_cpu(group, params, grads, bufs, lr, self._grad_scale, self._found_inf)
        elif fused:
            _fused.mark_written(params)
            _torch_sgd(params, grads, bufs or [None] * len(params), fused=True, weight_decay=group["weight_decay"],
                                momentum=momentum, lr=lr, dampening=group["dampening"],
                                nesterov=group["nesterov"], maximize=group["maximize"],
                                grad_scale=self._grad_scale, found_inf=self._found_inf)
        elif not self._amp_unscale(grads):
            return
        else:
            grads = _rules.effective_grads(params, grads, maximize=group["maximize"],
                                           weight_decay=group["weight_decay"])
            _rules.sgd(params, grads, bufs, lr=lr, momentum=momentum,
                       dampening=group["dampening"], nesterov=group["nesterov"])
        if momentum != 0:
            for state, buf in zip(states, bufs):
                if buf is not None:  # (None: a step GradScaler skipped before the buffer started)
                    state["momentum_buffer"] = buf
            self._sparse_buffers = self._sparse_buffers or sparse

    @staticmethod
    def _own_kernel(group, params, grads, bufs, states, lr) -> bool:
        """The generated kernel (:data:`.sgd_kernel`, bit for bit the foreach rule, in
        one pass over all tensors: torch's fused CPU kernel dispatches once per tensor): True
        if it did the update; False (nothing changed) where it cannot serve these tensors."""
        momentum = group["momentum"]
        hyper = dict(lr=lr, momentum=momentum, dampening=group["dampening"], nesterov=group["nesterov"],
                     weight_decay=group["weight_decay"], maximize=group["maximize"])
        if not momentum:
            return _fused.launch(sgd_kernel, dict(param=params, grad=grads), hyper,
                                 {"first": [0.0] * len(params)})
        new = [i for i, b in enumerate(bufs) if b is None]  # first step for these: b₁ = g₁
        given = bufs
        if new:
            given = list(bufs)
            for i in new:
                given[i] = torch.empty_like(grads[i])
        first = [0.0] * len(params)
        for i in new:
            first[i] = 1.0
        if not _fused.launch(sgd_kernel, dict(param=params, grad=grads, momentum_buffer=given), hyper,
                             {"first": first}):
            return False
        for i in new:
            states[i]["momentum_buffer"] = given[i]
        return True

    def _update_other_dtype(self, group, params, grads, states) -> None:
        momentum = group["momentum"]
        bufs = [s.get("momentum_buffer") for s in states] if momentum != 0 else [None] * len(params)
        _torch_sgd(params, grads, bufs, foreach=False, fused=False, weight_decay=group["weight_decay"],
                   momentum=momentum, lr=float(group["lr"]), dampening=group["dampening"],
                   nesterov=group["nesterov"], maximize=group["maximize"])
        if momentum != 0:
            for state, buf in zip(states, bufs):
                state["momentum_buffer"] = buf


def _fused_kernel_fits(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor | None]) -> bool:
    """Whether torch's fused kernel can take these tensors (see :func:`_fused.fits`); a
    buffer still None is made by the kernel's first step, like its gradient."""
    old = [i for i, b in enumerate(bufs) if b is not None]  # (not "None in bufs": that is tensor == None)
    if len(old) == len(bufs):
        return _fused.fits([params, grads, bufs] if bufs else [params, grads])
    return _fused.fits([params, grads]) and (not old or _fused.fits([[params[i] for i in old],
                                                                    [bufs[i] for i in old]]))


def _fused_sgd_cpu(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   bufs: list[Tensor | None], lr: float, grad_scale: Tensor | None = None,
                   found_inf: Tensor | None = None) -> None:
    """torch's fused CPU kernel, called directly; ``bufs`` gets the momentum buffers.
    ``grad_scale``/``found_inf``: GradScaler's, passed to the kernel (see Optimizer._grad_scale)."""
    momentum = group["momentum"]
    amp = grad_scale is not None or found_inf is not None
    if momentum == 0 and group["weight_decay"] == 0 and not amp:  # θ ± γg: one foreach op, bit-identical
        torch._foreach_add_(params, grads, alpha=lr if group["maximize"] else -lr)
        return
    _fused.mark_written(params)
    hyper = dict(weight_decay=group["weight_decay"], momentum=momentum, lr=lr,
                 dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
                 grad_scale=grad_scale, found_inf=found_inf)
    if momentum == 0:
        torch._fused_sgd_(params, grads, [], is_first_step=False, **hyper)
        return
    if found_inf is not None and found_inf.item() == 1.0 and any(b is None for b in bufs):
        # the kernel skips this step: start no buffer (torch's _fused_sgd would keep the
        # uninitialised torch.empty_like buffers it made for the kernel's first step)
        return
    new = [i for i, b in enumerate(bufs) if b is None]  # first step for these: b₁ = g₁
    for i in new:
        bufs[i] = torch.empty_like(grads[i])
    if len(new) == len(bufs):
        torch._fused_sgd_(params, grads, bufs, is_first_step=True, **hyper)
        return
    if new:  # a parameter added mid-run: its buffer starts now, the others continue
        torch._fused_sgd_([params[i] for i in new], [grads[i] for i in new], [bufs[i] for i in new],
                          is_first_step=True, **hyper)
        started = set(new)
        old = [i for i in range(len(bufs)) if i not in started]
        params, grads, bufs = [params[i] for i in old], [grads[i] for i in old], [bufs[i] for i in old]
    torch._fused_sgd_(params, grads, bufs, is_first_step=False, **hyper)


class Momentum(SGD):
    """SGD with classical (heavy-ball) momentum, default μ = 0.9: the lectures' "Momentum"."""

    registry_name = "momentum"  # registered by this (see _registry)
    registry_aliases = ('sgd_momentum', 'sgd-momentum')

    def __init__(self, params: Any, lr: float | Tensor, momentum: float = 0.9, dampening: float = 0,
                 weight_decay: float = 0, *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, skip_nonfinite: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=False, maximize=maximize,
                         foreach=foreach, fused=fused, skip_nonfinite=skip_nonfinite)


class NAG(SGD):
    """SGD with Nesterov accelerated gradient, default μ = 0.9: the lectures' "NAG".

    Torch's form evaluates the look-ahead through the buffer: ``d = g + μ·b``.
    """

    registry_name = "nag"  # registered by this (see _registry)
    registry_aliases = ('nesterov',)

    def __init__(self, params: Any, lr: float | Tensor, momentum: float = 0.9, weight_decay: float = 0,
                 *, maximize: bool = False, foreach: bool | None = None, fused: bool | None = None,
                 skip_nonfinite: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=0, weight_decay=weight_decay,
                         nesterov=True, maximize=maximize, foreach=foreach, fused=fused,
                         skip_nonfinite=skip_nonfinite)
