"""Sharpness-aware minimisation (SAM) and adaptive SAM (ASAM), wrapping any optimizer."""

from __future__ import annotations

import functools
from collections import OrderedDict, defaultdict
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from optimlab.optim import _hooks
from optimlab.optim import _validation as check

_USAGE = """\
    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    loss = closure()          # the gradient at the current weights
    optimizer.step(closure)   # the closure is evaluated again at the perturbed weights"""

_HOOK_DICTS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
               "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
               "_optimizer_load_state_dict_post_hooks")


class SAM(torch.optim.Optimizer):
    r"""Sharpness-aware minimisation (Foret, Kleiner, Mobahi & Neyshabur 2021, "Sharpness-Aware
    Minimization for Efficiently Improving Generalization", ICLR) and, with ``adaptive=True``,
    adaptive SAM (Kwon, Kim, Park & Choi 2021, "ASAM: Adaptive Sharpness-Aware Minimization
    for Scale-Invariant Learning of Deep Neural Networks", ICML), around any base optimizer.

    One ``step(closure)``, with ``g = ∇L(θ)`` already in ``.grad`` (the caller ran forward and
    backward at θ), ρ = ``rho``, ε₀ = ``perturb_eps`` and ``T = diag(|θ| + η)``::

        SAM:   e = ρ · g / (‖g‖ + ε₀)
        ASAM:  e = ρ · T²g / (‖T g‖ + ε₀)
        θ ← θ + e;   closure() (zeroes the grads, recomputes L and ∇L(θ + e));   θ ← θ − e
        base_optimizer.step()  with  ∇L(θ + e)  in ``.grad``

    ‖·‖ is the L2 norm over every parameter of every group that has a gradient (one global
    norm, each tensor's norm in its own dtype, float16/bfloat16 in float32, the total in the
    widest of them). θ is restored from a copy, not by subtracting ``e``, so it comes back bit
    for bit. Parameters whose ``.grad`` is ``None`` are not perturbed (and the base skips them).
    A zero gradient gives ``e = 0`` (ε₀ keeps the quotient finite).

    The twin is ``pytorch_optimizer.SAM`` (pytorch-optimizer 4.1.0, ``optimizer/sam.py``; its
    ``adaptive=True`` is its ASAM): same signature, defaults (ρ = 0.05, ε₀ = 1e-12, η = 0) and
    update, step for step. Differences: its global norm is accumulated in float32 whatever the
    parameters' dtype (here: in their dtype, so float64 runs agree with it to about 1e-7 of ρ,
    and float32 runs exactly); ``step()`` without a closure raises ``ValueError`` (it:
    ``NoClosureError``); ``rho`` and ``perturb_eps`` must be > 0 (it allows 0); ``step(closure)``
    returns the closure's loss (at θ + e), it returns ``None``; and ρ, ``adaptive`` are
    attributes of the SAM (``sam.rho``), not group keys, since base optimizers such as Adadelta
    and Keras's RMSprop have a ``rho`` of their own. ``maximize=True`` in the base is not
    special-cased, as in the twin: e still ascends along +g.

    Args:
        params: parameters or param-group dicts for the base optimizer, or a built optimizer
            (then ``base_optimizer`` is omitted): ``SAM(torch.optim.SGD(ps, lr=0.1), rho=0.05)``.
        base_optimizer: an optimizer class (or any callable ``(params, **kwargs) -> Optimizer``),
            a name in optimlab's registry (``"sgd"``, ``"adamw"``, ...), or a built optimizer.
        rho: the neighbourhood radius ρ > 0. The ASAM paper uses ρ = 0.5 (ρ = 0.05 for SAM).
        adaptive: ASAM's scale-invariant perturbation.
        use_gc: centralise each ≥2-D gradient (subtract its mean over all but dim 0) in place
            before perturbing, after the norm is taken, as the twin does.
        perturb_eps: ε₀ > 0, added to the norm.
        eta: η ≥ 0 in ``T = |θ| + η`` (ASAM only; Kwon et al.'s code uses 0.01, the twin 0).
        foreach: passed to the base optimizer (when SAM builds it), as the twin does.
        **kwargs: the base optimizer's hyperparameters (``lr``, ``momentum``, ...), when SAM
            builds it.

    ``param_groups``, ``state`` and ``defaults`` are the base optimizer's own objects, so an LR
    scheduler built on the SAM drives the base. ``state_dict()`` is the base's plus a ``"sam"``
    entry (ρ, adaptive, ε₀, η, use_gc); ``load_state_dict`` restores both, after checking them.
    ``requires_closure = True`` tells a training loop to pass a closure. For manual loops:
    ``first_step()`` (perturb), your own forward/backward, ``second_step()`` (restore, update).

    Raises:
        ValueError: a bad hyperparameter (naming it and its value), a missing or unusable base
            optimizer (one that needs its own closure, such as LBFGS or another SAM),
            ``step()`` without a closure, or ``step(closure)`` when no parameter has a gradient.

    When to choose it: to trade twice the compute per step for flatter minima and better
    generalisation (Foret et al. report gains on CIFAR and ImageNet with SGD; ASAM when the
    network's weights rescale freely, e.g. with normalisation layers). Shapes: any; every
    parameter keeps one copy of itself during a step.
    """

    requires_closure: ClassVar[bool] = True

    def __init__(self, params: Any = None, base_optimizer: Any = None, rho: float = 0.05, adaptive: bool = False,
                 use_gc: bool = False, perturb_eps: float = 1e-12, eta: float = 0.0, foreach: bool | None = None,
                 **kwargs: Any):
        settings = _checked_settings(rho=rho, adaptive=adaptive, use_gc=use_gc, perturb_eps=perturb_eps, eta=eta)
        check.optional_boolean("foreach", foreach)
        self.base_optimizer = _build_base(params, base_optimizer, foreach, kwargs)
        self.rho, self.adaptive, self.use_gc = settings["rho"], settings["adaptive"], settings["use_gc"]
        self.perturb_eps, self.eta = settings["perturb_eps"], settings["eta"]
        self._saved: dict[Tensor, Tensor] = {}  # θ during a step (never in the base's state)
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()

    # the settings may be changed between steps: each assignment is checked (as the constructor's)
    rho = check.checked_setting("rho", lambda self, v: _setting("rho", v),
                                "The neighbourhood radius ρ > 0 (checked on every assignment).")
    adaptive = check.checked_setting("adaptive", lambda self, v: _setting("adaptive", v),
                                     "ASAM's scale-invariant neighbourhood (checked on every assignment).")
    use_gc = check.checked_setting("use_gc", lambda self, v: _setting("use_gc", v),
                                   "Gradient centralisation (checked on every assignment).")
    perturb_eps = check.checked_setting("perturb_eps", lambda self, v: _setting("perturb_eps", v),
                                        "ε₀ > 0 added to the norm (checked on every assignment).")
    eta = check.checked_setting("eta", lambda self, v: _setting("eta", v),
                                "ASAM's η >= 0 (checked on every assignment).")

    # the base optimizer's groups, defaults and state are this optimizer's
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base_optimizer.param_groups

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base_optimizer.defaults

    @property
    def state(self) -> defaultdict:  # type: ignore[override]
        return self.base_optimizer.state

    def __getstate__(self) -> dict[str, Any]:
        return {"base_optimizer": self.base_optimizer, "rho": self.rho, "adaptive": self.adaptive,
                "use_gc": self.use_gc, "perturb_eps": self.perturb_eps, "eta": self.eta, "_saved": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for name in _SETTINGS:
            setattr(self, name, state.pop(name))
        self.__dict__.update(state)
        for name in _HOOK_DICTS:
            self.__dict__.setdefault(name, OrderedDict())
        self._patch_step_function()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rho={self.rho}, adaptive={self.adaptive}, perturb_eps={self.perturb_eps}, "
                f"eta={self.eta}, use_gc={self.use_gc}, base_optimizer={self.base_optimizer!r})")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base_optimizer.add_param_group(param_group)

    def path_for(self, group: dict[str, Any] | int = 0) -> str | None:
        """The implementation the base optimizer's last step ran for ``group`` (see
        ``optimlab.optim.Optimizer.path_for``); None where the base optimizer does not say
        (a ``torch.optim`` one)."""
        inner = getattr(self.base_optimizer, "path_for", None)
        return inner(group) if inner is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    # ----------------------------------------------------------------------------- step
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """θ ← θ + e (see the class docstring), keeping a copy of θ; ``zero_grad``: then clear
        the gradients. Raises ValueError if no parameter has a gradient (backward not run?),
        if (UnsupportedSettingError) one is an inference tensor outside inference mode, or if
        an optimlab base optimizer holds a bad hyperparameter written into its param groups."""
        if self._saved:  # a second perturbation would overwrite the only copy of θ
            raise ValueError("SAM.first_step: the weights are already perturbed; call second_step() first")
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            raise ValueError("SAM: no parameter has a gradient; run loss.backward() at the "
                             f"current weights before step(closure):\n{_USAGE}")
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise ValueError("SAM does not support sparse gradients "
                             "(use nn.Embedding(sparse=False))")
        check.refuse_inference_params("SAM", params, lambda p: f"a parameter of shape {tuple(p.shape)}")
        written = getattr(self.base_optimizer, "_check_written_hyperparameters", None)
        if written is not None:  # (before the perturbation: the base's step would refuse them after it)
            written()
        weighted = [g * self._scale(p) for p, g in zip(params, grads)] if self.adaptive else grads
        norm = _global_norm(weighted).add_(self.perturb_eps)
        del weighted
        ratio = self.rho / norm  # the twin's op, so float32 runs match it bit for bit
        for p, g in zip(params, grads):
            if self.use_gc and g.dim() > 1:  # after the norm, as the twin
                g.add_(-g.mean(dim=tuple(range(1, g.dim())), keepdim=True))
            self._saved[p] = p.clone()
            if self.adaptive:
                t = self._scale(p)  # recomputed, not kept: one copy of θ less at the peak
                e = t.mul_(t).mul_(g)
            else:
                e = g
            p.add_(e * ratio.to(p))
        if zero_grad:
            self.zero_grad()

    def _scale(self, p: Tensor) -> Tensor:
        t = p.abs()
        return t.add_(self.eta) if self.eta else t

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """θ ← the copy taken by :meth:`first_step`, then the base optimizer's step with the
        gradient now in ``.grad``; ``zero_grad``: then clear the gradients."""
        self._restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def _restore(self) -> None:
        for p, old in self._saved.items():
            p.copy_(old)
        self._saved.clear()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SAM step: perturb, ``closure()`` at θ + e, restore θ, base step. Returns the
        closure's loss (at θ + e). If the closure raises, θ is restored before the error
        propagates, and the base does not step."""
        if closure is None:
            raise ValueError(f"SAM.step() needs a closure that zeroes the gradients, "
                             f"recomputes the loss, calls backward() and returns the loss:\n{_USAGE}")
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                loss = closure()
        except BaseException:
            self._restore()
            raise
        self.second_step()
        return loss

    # ------------------------------------------------------------------------ state I/O
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict with a ``"sam"`` entry (this wrapper's own state-dict
        hooks run around it, as torch runs them)."""
        _hooks.run_state_dict_pre_hooks(self)
        sd = self.base_optimizer.state_dict()
        sd["sam"] = {"rho": self.rho, "adaptive": self.adaptive, "perturb_eps": self.perturb_eps,
                     "eta": self.eta, "use_gc": self.use_gc}
        return _hooks.run_state_dict_post_hooks(self, sd)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimizer's state and SAM's settings; SAM's are checked first (after
        this wrapper's load pre-hooks, which may replace the dict; its post-hooks run last)."""
        if isinstance(state_dict, dict):
            state_dict = _hooks.load_pre_hooked(self, state_dict)
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("sam"), dict):
            raise ValueError("this state_dict has no 'sam' entry: it was not saved by a SAM "
                             "(load it into the base optimizer instead)")
        mine = {"rho": self.rho, "adaptive": self.adaptive, "perturb_eps": self.perturb_eps, "eta": self.eta,
                "use_gc": self.use_gc}
        unknown = set(state_dict["sam"]) - set(mine)
        if unknown:
            raise ValueError(f"the state_dict's 'sam' entry has unknown key(s) {sorted(unknown)}")
        settings = _checked_settings(**{**mine, **state_dict["sam"]})
        self.base_optimizer.load_state_dict({k: v for k, v in state_dict.items() if k != "sam"})
        for key, value in settings.items():
            setattr(self, key, value)
        _hooks.run_load_post_hooks(self)


def _global_norm(tensors: list[Tensor]) -> Tensor:
    """‖(t₁, t₂, ...)‖₂ as a 0-dim tensor on the first tensor's device: each norm in its
    tensor's dtype (float16/bfloat16 in float32), the sum of squares in the widest of them."""
    low = (torch.float16, torch.bfloat16)
    same = len({(t.device, t.dtype) for t in tensors}) == 1 and tensors[0].dtype not in low
    # _foreach_norm where the twin uses it (one device and dtype), else one norm per tensor, as it does
    norms = torch._foreach_norm(tensors) if same else [(t.float() if t.dtype in low else t).norm() for t in tensors]
    dtype = functools.reduce(torch.promote_types, (n.dtype for n in norms))
    device = tensors[0].device
    return torch.stack([n.to(device=device, dtype=dtype) for n in norms]).square_().sum().sqrt_()


#: SAM's settings: their checks, and the type each is kept as.
_SETTINGS: dict[str, tuple[Callable[[str, Any], None], Callable[[Any], Any]]] = {
    "rho": (check.positive, float), "adaptive": (check.boolean, bool), "use_gc": (check.boolean, bool),
    "perturb_eps": (check.positive, float), "eta": (check.non_negative, float),
}


def _setting(name: str, value: Any) -> Any:
    checked, kept_as = _SETTINGS[name]
    return kept_as(check.named("SAM", checked, name, value))


def _checked_settings(**settings: Any) -> dict[str, Any]:
    return {name: _setting(name, value) for name, value in settings.items()}


def _build_base(params: Any, base: Any, foreach: bool | None, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    if base is None and isinstance(params, torch.optim.Optimizer):
        params, base = None, params
    if isinstance(base, torch.optim.Optimizer):
        if params is not None or kwargs or foreach is not None:
            given = ["params"] * (params is not None) + sorted(kwargs) + ["foreach"] * (foreach is not None)
            raise ValueError(f"SAM: base_optimizer is a built {type(base).__name__}, which already has its "
                             f"parameters and hyperparameters; also got {', '.join(given)}. Pass either "
                             "SAM(params, base_optimizer=Class, **hyper) or SAM(built_optimizer, rho=...)")
        opt = base
    elif base is None:
        raise ValueError("SAM: base_optimizer is required: an optimizer class (torch.optim.SGD), a registry "
                         "name ('sgd') or a built optimizer, e.g. SAM(model.parameters(), torch.optim.SGD, "
                         "rho=0.05, lr=0.1, momentum=0.9)")
    else:
        if params is None:
            raise ValueError(f"SAM: params is required to build base_optimizer={base!r}")
        if foreach is not None:
            kwargs = {**kwargs, "foreach": foreach}
        if isinstance(base, str):
            from optimlab.optim._registry import create

            if base.lower() == "sam":
                raise ValueError("SAM: base_optimizer='sam' cannot wrap itself (its step needs a closure)")
            opt = create(base, params, **kwargs)
        elif callable(base):
            opt = base(params, **kwargs)
        else:
            raise ValueError(f"SAM: base_optimizer must be an optimizer class, a registry name or a built "
                             f"optimizer, got {base!r}")
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"SAM: base_optimizer={base!r} built a {type(opt).__name__}, "
                             "not a torch.optim.Optimizer")
    if getattr(opt, "requires_closure", False) or isinstance(opt, torch.optim.LBFGS):
        raise ValueError(f"SAM: the base optimizer {type(opt).__name__} needs a closure of its own in step(); "
                         "SAM steps its base without one")
    return opt


class SAMByName(SAM):
    """SAM around an optimizer named in the registry (SGD by default), for ``create("sam", ...)``.

    ``SAMByName(params, base="sgd", rho=0.05, adaptive=False, **hyper)`` is
    ``SAM(params, base_optimizer="sgd", rho=0.05, adaptive=False, **hyper)``; ``hyper`` (``lr``,
    ``momentum``, ...) goes to the base. ``adaptive=True`` gives ASAM.
    """

    registry_name = "sam"  # registered by this (see _registry)

    def __init__(self, params: Any, *, base: str = "sgd", rho: float = 0.05, adaptive: bool = False,
                 use_gc: bool = False, perturb_eps: float = 1e-12, eta: float = 0.0, **base_hyper: Any):
        if not isinstance(base, str) or isinstance(params, torch.optim.Optimizer):
            raise ValueError(f"base must be the name of an optimizer (e.g. 'sgd') and params the parameters, "
                             f"got base={base!r}, params of type {type(params).__name__}")
        super().__init__(params, base, rho=rho, adaptive=adaptive, use_gc=use_gc, perturb_eps=perturb_eps,
                         eta=eta, **base_hyper)

