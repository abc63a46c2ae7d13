"""What every optimlab optimizer shares: strict input checks, the step loop, state I/O.

A concrete optimizer declares its hyperparameter checks (``hyper_checks``), the keys of
its per-parameter state (``state_keys``), how a parameter's state starts
(``_init_state``) and how one bucket of tensors is updated (``_update``, which calls a
rule from :mod:`optimlab.optim._rules`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import operator
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import Tensor

from optimlab.optim import _fused
from optimlab.optim import _validation as check

_grad_of = operator.attrgetter("grad")
_is_sparse = operator.attrgetter("is_sparse")
_shape_of = operator.attrgetter("shape")
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_is_complex = Tensor.is_complex
_numel = Tensor.numel
#: Elements per _update call for rules with big temporaries (4 MB of float32).
TEMPORARY_CHUNK = 1 << 20
_NO_STATE: dict = {}  # read-only stand-in for a stateless update


class UnknownArgumentError(TypeError, ValueError):
    """A keyword the optimizer does not take (a ``TypeError`` and a ``ValueError``)."""


def _reject_unknown_keywords(init: Callable, cls_name: str, aliases: dict[str, str]) -> Callable:
    sig = inspect.signature(init)
    known = [n for n, p in sig.parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        for key in kwargs:
            if key not in known:
                hint = aliases.get(key) or next(iter(difflib.get_close_matches(key, known, n=1)), None)
                advice = f"; did you mean {hint!r}?" if hint else ""
                raise UnknownArgumentError(
                    f"{cls_name}() got an unknown keyword argument {key!r}{advice} "
                    f"(accepted: {', '.join(known[1:])})")
        init(self, *args, **kwargs)

    return checked_init


def _checked_param_list(params: Any, cls_name: str) -> list:
    if isinstance(params, Tensor):
        raise ValueError(f"params must be an iterable of tensors or dicts, got a single tensor "
                         f"of shape {tuple(params.shape)}; pass [tensor] or model.parameters()")
    params = list(params)
    if not params:
        raise ValueError(f"{cls_name} got an empty parameter list: nothing to optimize "
                         "(did the model have no parameters, or was a generator consumed twice?)")
    return params


def _tensors_of(group_params: Iterable) -> list[Tensor]:
    return [p[1] if isinstance(p, tuple) else p for p in group_params]


class Optimizer(torch.optim.Optimizer):
    """Base class. Subclasses set the class attributes below and implement two methods."""

    hyper_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {}
    state_keys: ClassVar[frozenset[str]] = frozenset()
    supports_sparse: ClassVar[bool] = False
    lazy_state: ClassVar[bool] = False  # True: no _init_state; _update fills the state itself
    chunk_elements: ClassVar[int | None] = None  # see _update_in_chunks
    keyword_aliases: ClassVar[dict[str, str]] = {
        "learning_rate": "lr", "epsilon": "eps", "beta_1": "betas", "beta_2": "betas",
        "beta1": "betas", "beta2": "betas", "nesterov_momentum": "nesterov",
    }
    _common_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": check.non_negative, "weight_decay": check.non_negative, "maximize": check.boolean,
        "foreach": check.optional_boolean, "fused": check.optional_boolean,
        "differentiable": check.must_be_false, "capturable": check.must_be_false,
    }

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _reject_unknown_keywords(cls.__dict__["__init__"], cls.__name__,
                                                    cls.keyword_aliases)

    def __init__(self, params: Any, defaults: dict[str, Any], *, skip_nonfinite: bool = False):
        check.boolean("skip_nonfinite", skip_nonfinite)
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        super().__init__(_checked_param_list(params, type(self).__name__), defaults)

    # ----------------------------------------------------------------- parameter groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate a group (its tensors and every hyperparameter) before adding it."""
        if not isinstance(param_group, dict):
            raise ValueError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        raw = group.get("params")
        group_params = [raw] if isinstance(raw, Tensor) else list(raw if raw is not None else [])
        where = f"param group {len(self.param_groups)}"
        if not group_params:
            raise ValueError(f"{where} has an empty parameter list")
        tensors = _tensors_of(group_params)
        seen: set[int] = set()
        for i, p in enumerate(tensors):
            if not isinstance(p, Tensor):
                raise ValueError(f"{where}: params[{i}] must be a torch.Tensor, got {type(p).__name__}")
            if not (p.is_floating_point() or p.is_complex()):
                raise ValueError(f"{where}: params[{i}] has dtype {p.dtype}; only floating-point "
                                 "(or complex) tensors can be optimized")
            if id(p) in seen:
                raise ValueError(f"{where}: params[{i}] (shape {tuple(p.shape)}) is given twice")
            seen.add(id(p))
        for other in self.param_groups:
            if any(id(p) in seen for p in other["params"]):
                raise ValueError(f"{where} shares parameters with an earlier group; "
                                 "each parameter may appear in one group only")
        unknown = set(group) - set(self.defaults) - {"params", "param_names"}
        if unknown:
            raise ValueError(f"{where} has unknown hyperparameter(s) {sorted(unknown)}; "
                             f"{type(self).__name__} takes {sorted(self.defaults)}")
        for key, default in self.defaults.items():
            group.setdefault(key, default)
        self._check_hyperparameters(group, where)
        group["params"] = group_params
        super().add_param_group(group)

    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        checks = {**self._common_checks, **self.hyper_checks}
        for key, value in group.items():
            if key in checks:
                try:
                    checks[key](key, value)
                except ValueError as err:
                    raise ValueError(f"{type(self).__name__}: {err}" + (f" (in {where})" if self.param_groups else "")) from None
        self._check_combination(group)

    def _check_combination(self, group: dict[str, Any]) -> None:
        """Constraints between hyperparameters (e.g. Nesterov needs momentum)."""

    # ----------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update; ``closure`` (optional) re-evaluates the loss with grad enabled."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                groups.append((group, params, list(map(_grad_of, params))))
        self._check_gradients(groups)
        if self.skip_nonfinite and not _all_finite([g for _, _, grads in groups for g in grads]):
            self.skipped_steps += 1
            return loss
        for group, params, grads in groups:
            self._step_group(group, params, grads)
        return loss

    def _check_gradients(self, groups) -> None:
        # Shapes matter beyond a clear message: the C kernels trust them for memory bounds.
        for group, params, grads in groups:
            if any(map(_is_sparse, grads)):
                self._check_sparse(group)
            if list(map(_shape_of, grads)) != list(map(_shape_of, params)):
                p, g = next((p, g) for p, g in zip(params, grads) if g.shape != p.shape)
                raise ValueError(f"a gradient of shape {tuple(g.shape)} was set on a parameter "
                                 f"of shape {tuple(p.shape)}")

    def _check_sparse(self, group: dict[str, Any]) -> None:
        if not self.supports_sparse:
            raise ValueError(f"{type(self).__name__} does not support sparse gradients "
                             "(use Adagrad or SGD, or nn.Embedding(sparse=False))")
        if group["weight_decay"] != 0:
            raise ValueError(f"weight_decay={group['weight_decay']!r} cannot be combined "
                             "with sparse gradients")

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        all_state = self.state
        if self._stateless(group):
            states = [_NO_STATE] * len(params)
        elif self.lazy_state:  # _update creates what it needs (e.g. SGD's buffer from the first gradient)
            states = [all_state[p] for p in params]
        else:
            states = []
            for p in params:
                state = all_state[p]
                if not state:
                    state.update(self._init_state(p, group))
                states.append(state)
        if (group["foreach"] is not False and not any(map(_is_sparse, grads))
                and len(set(map(_dtype_of, params))) == 1 and len(set(map(_device_of, params))) == 1):
            self._update_in_chunks(group, params, grads, states)  # the usual case: one device, one dtype
            return
        for indices in self._buckets(params, grads):
            ps = [params[i] for i in indices]
            ss = [states[i] for i in indices]
            if group["foreach"] is False or grads[indices[0]].is_sparse:
                for p, s in zip(ps, ss):  # torch's single-tensor path: same rule, one tensor at a time
                    self._update(group, [p], [p.grad], [s])
            else:
                self._update_in_chunks(group, ps, [grads[i] for i in indices], ss)

    def _update_in_chunks(self, group, params, grads, states) -> None:
        """``_update`` on runs of tensors of about ``chunk_elements`` elements each.

        For rules that allocate temporaries as large as their inputs: a few megabytes at a
        time are reused from the heap, where the whole model's worth would be fresh pages
        (page faults) every step. Elementwise, per-tensor rules give the same result."""
        budget = self.chunk_elements
        if budget is None or len(params) == 1:
            self._update(group, params, grads, states)
            return
        start, size = 0, 0
        for i, n in enumerate(map(_numel, params)):
            size += n
            if size >= budget:
                self._update(group, params[start:i + 1], grads[start:i + 1], states[start:i + 1])
                start, size = i + 1, 0
        if start < len(params):
            self._update(group, params[start:], grads[start:], states[start:])

    @staticmethod
    def _buckets(params: list[Tensor], grads: list[Tensor]) -> list[list[int]]:
        """Indices of the tensors that share a device, a dtype and a gradient layout."""
        buckets: dict[tuple, list[int]] = {}
        for i, (p, g) in enumerate(zip(params, grads)):
            buckets.setdefault((p.device, p.dtype, g.is_sparse), []).append(i)
        return list(buckets.values())

    def _stateless(self, group: dict[str, Any]) -> bool:
        """True when ``group``'s update keeps no per-parameter state (plain SGD): skip the lookups."""
        return False

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers for rules
    @staticmethod
    def _real(tensors: list[Tensor]) -> list[Tensor]:
        """Complex tensors as real pairs: adaptive rules treat Re and Im independently (as torch)."""
        if not any(map(_is_complex, tensors)):
            return tensors
        return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]

    @staticmethod
    def _advance(states: list[dict[str, Any]], fused: bool | None = False) -> list[float]:
        """Increment each tensor's step counter (a float32 tensor, as torch) and read it.

        ``fused``: the group asked for the C kernels, which do the same increments in one call
        (torch's dispatch costs microseconds per 0-dim counter)."""
        steps = [s["step"] for s in states]
        if fused:
            values = _fused.advance_steps(steps)
            if values is not None:
                return values
        torch._foreach_add_(steps, 1)
        return [t.item() for t in steps]

    @staticmethod
    def _new_step() -> Tensor:
        """A fresh step counter: a 0-dim float32 tensor (float64 under a float64 default), as torch."""
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        return torch.tensor(0.0, dtype=dtype)

    # ------------------------------------------------------------------------ state I/O
    def __getstate__(self) -> dict[str, Any]:
        # torch pickles defaults, state and groups only; keep the non-finite policy and count too
        return {**super().__getstate__(), "skip_nonfinite": self.skip_nonfinite,
                "skipped_steps": self.skipped_steps}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)  # torch's load_state_dict passes only state and groups: keep ours then
        self.skip_nonfinite = state.pop("skip_nonfinite", getattr(self, "skip_nonfinite", False))
        self.skipped_steps = state.pop("skipped_steps", getattr(self, "skipped_steps", 0))
        super().__setstate__(state)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optimlab"] = {"optimizer": type(self).__name__, "skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state; it is fully checked before anything here is modified."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("load_state_dict expects a dict with 'state' and 'param_groups' "
                             "(as returned by optimizer.state_dict())")
        extra = state_dict.get("optimlab", {})
        self._check_loadable(state_dict)
        plain = {k: v for k, v in state_dict.items() if k != "optimlab"}
        super().load_state_dict(plain)
        self.skipped_steps = int(extra.get("skipped_steps", 0))

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        source = state_dict.get("optimlab", {}).get("optimizer")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state has {len(groups)} param groups, this {name} has "
                             f"{len(self.param_groups)}")
        index_to_param = {}
        for i, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(f"param group {i}: the state has {len(saved['params'])} parameters, "
                                 f"this optimizer has {len(mine['params'])}")
            missing = [k for k in self.hyper_checks if k not in saved]
            if missing:
                raise ValueError(f"param group {i} of the state lacks {missing}: it was saved by "
                                 f"{'a ' + source if source else 'another optimizer'}, not by {name}")
            checked = {k: v for k, v in saved.items() if k != "params"}
            self._check_hyperparameters(checked, f"param group {i} of the loaded state")
            index_to_param.update(zip(saved["params"], mine["params"]))
        for index, st in state_dict["state"].items():
            if index not in index_to_param:
                raise ValueError(f"the state has an entry for parameter {index!r}, which is in no group")
            param = index_to_param[index]
            foreign = set(st) - self.state_keys
            if foreign:
                raise ValueError(f"the state of parameter {index} has key(s) {sorted(foreign)} that "
                                 f"{name} does not use: the state_dict comes from another optimizer"
                                 + (f" ({source})" if source else ""))
            for key, value in st.items():
                if isinstance(value, Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"state[{index}][{key!r}] has shape {tuple(value.shape)} but the "
                                     f"parameter has shape {tuple(param.shape)}")


def _all_finite(grads: list[Tensor]) -> bool:
    """One reduction pass over every gradient (an inf-norm is NaN or inf iff one entry is)."""
    dense = [g.coalesce()._values() if g.is_sparse else g for g in grads]
    dense = [torch.view_as_real(g) if g.is_complex() else g for g in dense if g.numel()]
    if not dense:
        return True
    norms = torch._foreach_norm(dense, float("inf"))
    return bool(torch.stack([n.float() for n in norms]).isfinite().all())
