"""Lookahead: k fast steps of any optimizer, then the slow weights move part of the way."""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any, Callable

import torch
from torch import Tensor

from optimlab.optim import _hooks
from optimlab.optim import _validation as check


class Lookahead(torch.optim.Optimizer):
    r"""Lookahead (Zhang, Lucas, Hinton & Ba 2019, "Lookahead Optimizer: k steps forward,
    1 step back"), wrapping any ``torch.optim.Optimizer``.

    Slow weights φ (one copy of the parameters, taken at the first step) and the fast
    weights θ (the parameters, updated by the inner optimizer)::

        every step:            θ ← inner_step(θ)
        after every k-th step: φ ← φ + α·(θ − φ),   θ ← φ

    The inner optimizer's state (momenta, second moments) is kept across syncs (optax's
    ``reset_state=False``). ``param_groups`` is the inner optimizer's list itself, so an
    LR scheduler built on the Lookahead drives the inner rates. ``state_dict()`` is the
    inner optimizer's, plus a ``"lookahead"`` entry with k, α, the step count and the
    slow weights. A step the inner optimizer skipped (``skip_nonfinite``) is not counted.

    When to choose it: to make a tuned optimizer less sensitive to its learning rate and
    smoother late in training, at the cost of one extra copy of the weights; common
    settings are k ∈ {5, 10}, α ∈ {0.5, 0.8} (RAdam + Lookahead is "Ranger").
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise check.InputTypeError(f"Lookahead wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        _check_k_alpha(k, alpha)
        self.optimizer, self.k, self.alpha = optimizer, k, alpha
        self.fast_steps = 0
        self.slow: dict[Tensor, Tensor] = {}
        self._optimizer_step_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        self._patch_step_function()

    # k and alpha may be changed between steps: each assignment is checked (as the constructor's)
    k = check.checked_setting("k", lambda self, k: _check_k_alpha(k, 0.5) or k,
                              "Steps between syncs, an integer >= 1 (checked on every assignment).")
    alpha = check.checked_setting("alpha", lambda self, a: _check_k_alpha(1, a) or float(a),
                                  "The slow weights' step α in (0, 1] (checked on every assignment).")

    # the inner optimizer's groups, defaults and state are this optimizer's
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @property
    def state(self) -> defaultdict:  # type: ignore[override]
        return self.optimizer.state

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "k": self.k, "alpha": self.alpha, "fast_steps": self.fast_steps,
                "slow": self.slow}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.k, self.alpha = state.pop("k"), state.pop("alpha")
        self.__dict__.update(state)
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                     "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            self.__dict__.setdefault(name, OrderedDict())
        self._patch_step_function()

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One fast step of the inner optimizer; every k-th, the slow weights move and θ ← φ."""
        # φ₀ = θ at the first step that sees p (after any checkpoint load); kept only once the
        # inner step has run, so a step it refuses changes nothing here either
        new = {p: p.detach().clone(memory_format=torch.preserve_format) for p in self._params() if p not in self.slow}
        skipped = getattr(self.optimizer, "skipped_steps", None)
        loss = self.optimizer.step(closure)
        self.slow.update(new)
        if skipped is not None and getattr(self.optimizer, "skipped_steps", None) != skipped:
            return loss
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            self.sync()
        return loss

    def path_for(self, group: dict[str, Any] | int = 0) -> str | None:
        """The implementation the inner optimizer's last step ran for ``group`` (see
        ``optimlab.optim.Optimizer.path_for``); None where the inner optimizer does not say
        (a ``torch.optim`` one)."""
        inner = getattr(self.optimizer, "path_for", None)
        return inner(group) if inner is not None else None

    @torch.no_grad()
    def sync(self) -> None:
        """``φ ← φ + α(θ − φ)``, ``θ ← φ`` for every parameter (done after every k-th step)."""
        for p in self._params():
            slow = self.slow.get(p)
            if slow is not None:
                slow.lerp_(p.detach(), self.alpha)
                p.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict with a ``"lookahead"`` entry (this wrapper's own
        state-dict hooks run around it, as torch runs them)."""
        _hooks.run_state_dict_pre_hooks(self)
        sd = self.optimizer.state_dict()
        index = {p: i for i, p in enumerate(self._params())}
        sd["lookahead"] = {"k": self.k, "alpha": self.alpha, "fast_steps": self.fast_steps,
                           "slow": {index[p]: s.clone() for p, s in self.slow.items() if p in index}}
        return _hooks.run_state_dict_post_hooks(self, sd)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the inner state and the slow weights; everything is checked before anything
        changes (after this wrapper's load pre-hooks, which may replace the dict; its post-hooks
        run last)."""
        if isinstance(state_dict, dict):
            state_dict = _hooks.load_pre_hooked(self, state_dict)
        if not isinstance(state_dict, dict) or "lookahead" not in state_dict:
            raise ValueError("Lookahead: this state_dict has no 'lookahead' entry: it was not saved by a Lookahead "
                             "(load it into the inner optimizer instead)")
        extra = state_dict["lookahead"]
        params = self._params()
        slow = {}
        for i, value in extra.get("slow", {}).items():
            if not isinstance(i, int) or not 0 <= i < len(params):
                raise ValueError(f"Lookahead: the slow weights name parameter {i!r}; this Lookahead has "
                                 f"{len(params)}")
            if not isinstance(value, Tensor) or value.shape != params[i].shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"Lookahead: slow weight {i} has shape {shape}, its parameter "
                                 f"{tuple(params[i].shape)}")
            slow[params[i]] = value.to(device=params[i].device, dtype=params[i].dtype).clone()
        k, alpha = extra.get("k", self.k), extra.get("alpha", self.alpha)
        _check_k_alpha(k, alpha)
        fast_steps = extra.get("fast_steps", 0)
        if isinstance(fast_steps, bool) or not isinstance(fast_steps, int) or fast_steps < 0:
            raise ValueError(f"Lookahead: fast_steps must be a non-negative integer, got {fast_steps!r}")
        self.optimizer.load_state_dict({k: v for k, v in state_dict.items() if k != "lookahead"})
        self.slow, self.fast_steps = slow, fast_steps
        self.k, self.alpha = k, alpha
        _hooks.run_load_post_hooks(self)


def _check_k_alpha(k: Any, alpha: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise check.InputTypeError(f"Lookahead: k must be an integer >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"Lookahead: k must be an integer >= 1, got {k!r}")
    try:
        check.closed_unit_interval("alpha", alpha)
        in_range = alpha != 0
    except check.InputTypeError as err:  # (a string: a TypeError too)
        raise check.InputTypeError(f"Lookahead: {err}") from None
    except ValueError:  # (NaN, or outside [0, 1])
        in_range = False
    if not in_range:
        raise ValueError(f"Lookahead: alpha must be in (0, 1], got {alpha!r}")


class LookaheadByName(Lookahead):
    """Lookahead around an optimizer named in the registry (Adam by default), for ``create("lookahead", ...)``.

    ``LookaheadByName(params, lr, base="radam", k=5, alpha=0.5, **hyper)`` is
    ``Lookahead(create(base, params, lr=lr, **hyper), k, alpha)``; ``base="radam"`` gives Ranger.
    """

    registry_name = "lookahead"  # registered by this (see _registry)

    def __init__(self, params: Any, lr: float = 1e-3, *, base: str = "adam", k: int = 5, alpha: float = 0.5,
                 **base_hyper: Any):
        from optimlab.optim._registry import create

        if not isinstance(base, str) or base.lower() == "lookahead":
            raise ValueError(f"Lookahead: base must be the name of an optimizer other than 'lookahead', got {base!r}")
        super().__init__(create(base, params, lr=lr, **base_hyper), k=k, alpha=alpha)
