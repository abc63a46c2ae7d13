"""What every Keras-convention optimizer shares: Keras 3's ``BaseOptimizer.apply`` on torch.

One ``step()`` does what Keras's ``optimizer.apply(grads, variables)`` does (Keras 3.15,
``keras/src/optimizers/base_optimizer.py`` and the torch backend's overrides):

1. parameters whose ``.grad`` is ``None`` are skipped (Keras drops ``None`` gradients), but
   the one global counter ``iterations`` still advances, so bias corrections use
   ``t = iterations + 1`` for every parameter;
2. the gradients are clipped (copies; ``p.grad`` is left as it was): ``clipnorm`` per
   tensor, else ``global_clipnorm`` over every tensor that has a gradient, else ``clipvalue``;
3. decoupled weight decay ``θ ← θ·(1 − λ·η)`` with the current rate η, in every optimizer,
   except for parameters excluded by :meth:`KerasOptimizer.exclude_from_weight_decay` or in a
   group with ``weight_decay=None``;
4. the optimizer's update (``_update``, a rule from :mod:`optimlab.optim.keras._rules`, in
   Keras's operation order);
5. ``iterations += 1``.

The learning rate is used as Keras holds it: a float32 variable (Keras's ``floatx``), so for
float64 parameters 0.05 acts as 0.05000000074505806, and the decay factor ``1 − λ·η`` is
evaluated in float32, as the torch backend does. ``group["lr"]`` keeps the value you gave
(torch's LR schedulers read and write it); the rounding happens when a step uses it.
"""

from __future__ import annotations

import functools
import numbers
import operator
import re
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from optimlab.optim import _validation as check
from optimlab.optim._base import _KERNEL_DTYPES, Optimizer, UnknownArgumentError, _all_finite

FLOATX = torch.float32  # Keras's default floatx
LEARNING_RATE_DTYPE = FLOATX  # Keras keeps its learning rate in a floatx variable
_is_cpu = operator.attrgetter("is_cpu")
_CLIP_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm")

# Keras constructor arguments with no place in a torch optimizer: what to do instead.
def _number(value: Any, low: float, high: float, symbol: str) -> str:
    """``value`` for a message if it is a usable number in [low, high), else ``symbol``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value < high
    return repr(value) if ok else symbol


def _ema_advice(kwargs: dict[str, Any]) -> str:
    decay = _number(kwargs.get("ema_momentum", 0.99), 0.0, 1.0, "0.99")
    return (f"keep the weight average beside the model: ema = optimlab.ema.EMA(model, decay={decay}) and "
            f"ema.update() after every step() (evaluate inside `with ema.average_parameters():`), "
            f"or train with fit(..., ema={decay})")


def _overwrite_advice(kwargs: dict[str, Any]) -> str:
    n = _number(kwargs["ema_overwrite_frequency"], 1, float("inf"), "n")
    return (f"{_ema_advice(kwargs)}; ema.copy_to() writes the average into the model "
            f"(Keras does it every {n} steps, and at the end of fit)")


def _loss_scale_advice(kwargs: dict[str, Any]) -> str:
    f = _number(kwargs["loss_scale_factor"], 0.0, float("inf"), "the factor")
    return (f"scale the loss outside the optimizer: fit(..., precision='fp16') scales it dynamically "
            f"(torch.amp.GradScaler); by hand, backpropagate loss * {f} and divide the gradients by {f} "
            f"before step()")


def _accumulation_advice(kwargs: dict[str, Any]) -> str:
    k = _number(kwargs["gradient_accumulation_steps"], 2, float("inf"), "k")
    return (f"accumulate outside the optimizer: fit(..., accumulate={k}) averages the gradients of {k} "
            f"micro-batches per step(), as Keras does; by hand, call step() after every {k} backward() "
            f"passes of loss / {k}")


def _decay_advice(kwargs: dict[str, Any]) -> str:
    d = _number(kwargs["decay"], 1e-300, float("inf"), "decay")
    return ("Keras 3 ignores Keras 2's decay= (it only warns), so drop it; Keras 2's rate η/(1 + decay·t) is "
            f"optimlab.schedules.PowerDecay(η, decay_steps=1/{d}), e.g. in fit(..., schedule=...)")


_KERAS_ONLY: dict[str, Callable[[dict[str, Any]], str]] = {
    "decay": _decay_advice,
    "use_ema": _ema_advice,
    "ema_momentum": _ema_advice,
    "ema_overwrite_frequency": _overwrite_advice,
    "loss_scale_factor": _loss_scale_advice,
    "gradient_accumulation_steps": _accumulation_advice,
    "jit_compile": lambda kwargs: "Keras 3 does not take it either (a tf.keras 2 argument); drop it",
    "name": lambda kwargs: "a torch optimizer has no name; drop it",
}
# The values that mean "off" in Keras: accepted and ignored (they ask for nothing).
_KERAS_OFF = {"use_ema": False, "ema_overwrite_frequency": None, "loss_scale_factor": None,
              "gradient_accumulation_steps": None, "decay": None}


def as_keras_lr(lr: Any) -> float:
    """The learning rate as Keras holds it: a float32 variable (0.05 → 0.05000000074505806)."""
    return torch.tensor(float(lr), dtype=LEARNING_RATE_DTYPE).item()


# ------------------------------------------------------------------------------------ checks
def check_learning_rate(name: str, value: Any) -> None:
    """Keras: ``learning_rate`` must be a float (``1`` is refused: write ``1.0``); optimlab: >= 0."""
    if isinstance(value, bool) or not isinstance(value, float):
        hint = ""
        if callable(value):  # a Keras LearningRateSchedule, or a function of the step
            hint = ("; a schedule is a float driven between steps here, as in torch: "
                    "torch.optim.lr_scheduler (StepLR is Keras's ExponentialDecay with staircase=True) or "
                    "optimlab.schedules.Scheduler, which write param_groups[i]['lr']")
        raise ValueError(f"learning_rate must be a float (Keras refuses an int too), got {value!r} "
                         f"({type(value).__name__}){hint}")
    check.non_negative("learning_rate", value)


def check_keras_momentum(name: str, value: Any) -> None:
    """Keras's SGD: ``momentum`` must be a float in [0, 1] (an int is refused)."""
    if isinstance(value, bool) or not isinstance(value, float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], as Keras requires, got {value!r}")


def optional_non_negative(name: str, value: Any) -> None:
    """``None`` (Keras: switched off) or a number >= 0."""
    if value is not None:
        check.non_negative(name, value)


def optional_positive(name: str, value: Any) -> None:
    """``None`` or a number > 0 (Keras silently ignores 0 and negative clip values)."""
    if value is not None:
        check.positive(name, value)


def _check_clipping(owner: str, clip: dict[str, Any]) -> None:
    """Keras's clipping options (``clipnorm``, ``clipvalue``, ``global_clipnorm``): each None
    or > 0, and at most one of them set; ValueError naming them otherwise."""
    for key, value in clip.items():
        check.named(owner, optional_positive, key, value)
    if sum(v is not None for v in clip.values()) > 1:
        raise ValueError(f"{owner}: only one of clipnorm, clipvalue and global_clipnorm can be set "
                         f"(as in Keras), got " + ", ".join(f"{k}={v!r}" for k, v in clip.items()))


def _reject_keras_only(init: Callable, cls_name: str) -> Callable:
    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        for key, value in list(kwargs.items()):
            if key in _KERAS_OFF and value is _KERAS_OFF[key]:
                del kwargs[key]  # Keras's own default (off): code that spells it out ports unchanged
            elif key in _KERAS_ONLY:
                raise UnknownArgumentError(f"{cls_name}() does not take Keras's {key}={value!r}: "
                                           f"{_KERAS_ONLY[key](kwargs)}")
        init(self, *args, **kwargs)

    return checked_init


# ---------------------------------------------------------------------------------- clipping
def clip_by_norm(grad: Tensor, clipnorm: float) -> Tensor:
    """Keras's per-tensor ``clipnorm``: ``g·c / max(‖g‖, c)`` (a zero gradient stays zero).

    As in Keras's torch backend, ``c`` in ``g·c`` is a float32 tensor (Keras converts the
    Python float to floatx: a float64 gradient meets ``float32(c)``), and ``max(‖g‖, c)`` is
    rounded to float32 (Keras's ``ops.maximum`` of a float64 tensor and a Python float returns
    floatx); both matter for float64 gradients only.
    """
    l2sum = torch.sum(torch.square(grad))
    l2norm = torch.where(l2sum > 0, torch.sqrt(torch.where(l2sum > 0, l2sum, torch.ones_like(l2sum))), l2sum)
    divisor = torch.maximum(l2norm, torch.tensor(clipnorm, dtype=l2norm.dtype)).to(FLOATX)
    return ((grad * torch.tensor(clipnorm, dtype=FLOATX)) / divisor).to(grad.dtype)


def clip_by_global_norm(grads: list[Tensor], clipnorm: float) -> list[Tensor]:
    """Keras's ``global_clipnorm``: every gradient times ``c·min(1/‖G‖, 1/c)``, with ‖G‖ the norm
    of all of them together; the factor is float32, as in Keras, and a non-finite norm makes
    every gradient NaN, as in Keras."""
    dtype = functools.reduce(torch.promote_types, (g.dtype for g in grads))
    norm = torch.sqrt(torch.sum(torch.stack([torch.sum(torch.square(g)).to(dtype) for g in grads])))
    scale = clipnorm * torch.minimum(1.0 / norm, torch.tensor(1.0 / clipnorm, dtype=dtype)).to(FLOATX)
    scale = scale + (norm - norm)
    return [g * scale.to(g.dtype) for g in grads]


def _listed(name: str, value: Any) -> list:
    try:
        return list(value)
    except TypeError:
        raise ValueError(f"exclude_from_weight_decay: {name} must be a list, got {value!r}") from None


class KerasOptimizer(Optimizer):
    """Base class of :mod:`optimlab.optim.keras`: Keras's ``apply`` order on torch param groups.

    Subclasses declare ``hyper_checks`` and ``state_keys`` (Keras's slot names), and implement
    ``_init_state`` and ``_update(group, params, grads, states, lr=..., step=...)``, which is
    called once per (device, dtype) bucket with the float32-rounded learning rate and the
    global step ``t``. The constructor keyword is ``learning_rate``; the group key is ``lr``
    (so torch's LR schedulers drive it), and a group dict may use either name.
    """

    keyword_aliases: ClassVar[dict[str, str]] = {
        "lr": "learning_rate", "eps": "epsilon", "betas": "beta_1 and beta_2", "alpha": "rho",
        "beta1": "beta_1", "beta2": "beta_2", "nesterov_momentum": "nesterov",
        "clip_norm": "clipnorm", "clip_value": "clipvalue", "max_norm": "clipnorm or global_clipnorm",
        "global_clip_norm": "global_clipnorm", "initial_accumulator": "initial_accumulator_value",
        "decoupled_weight_decay": "weight_decay (always decoupled in Keras)",
    }
    _common_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": check_learning_rate, "weight_decay": optional_non_negative, "fused": check.optional_boolean,
    }

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _reject_keras_only(cls.__dict__["__init__"], cls.__name__)

    def __init__(self, params: Any, defaults: dict[str, Any], *, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 skip_nonfinite: bool = False):
        self._clipnorm = self._clipvalue = self._global_clipnorm = None
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm  # (checked)
        self.iterations = 0  # Keras's optimizer.iterations: completed steps, shared by every parameter
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    # Keras's clipping options, checked on every assignment (also between steps, by hand)
    clipnorm = check.checked_setting("clipnorm", lambda self, v: self._checked_clip("clipnorm", v),
                                     "Per-tensor norm clipping (None: off); checked on every assignment.")
    clipvalue = check.checked_setting("clipvalue", lambda self, v: self._checked_clip("clipvalue", v),
                                      "Elementwise value clipping (None: off); checked on every assignment.")
    global_clipnorm = check.checked_setting(
        "global_clipnorm", lambda self, v: self._checked_clip("global_clipnorm", v),
        "Norm clipping over every gradient (None: off); checked on every assignment.")

    def _checked_clip(self, key: str, value: Any) -> Any:
        """``value`` for the clipping option ``key``, with the other two as they are (see
        :func:`_check_clipping`)."""
        _check_clipping(type(self).__name__, {**{k: getattr(self, "_" + k, None) for k in _CLIP_OPTIONS}, key: value})
        return value

    # ------------------------------------------------------------------ learning rate
    @property
    def learning_rate(self) -> float:
        """The learning rate of every group (Keras's ``optimizer.learning_rate``); settable."""
        rates = {float(g["lr"]) for g in self.param_groups}
        if len(rates) != 1:
            raise ValueError(f"the param groups have different learning rates {sorted(rates)}; "
                             "read or write optimizer.param_groups[i]['lr']")
        return rates.pop()

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        check.named(type(self).__name__, check_learning_rate, "learning_rate", value)
        for group in self.param_groups:
            group["lr"] = value

    # --------------------------------------------------------------- parameter groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As the base, and a group may say ``learning_rate`` for ``lr``; complex tensors are refused."""
        if isinstance(param_group, dict) and "learning_rate" in param_group:
            if "lr" in param_group:
                raise ValueError(f"param group {len(self.param_groups)} gives both learning_rate and lr; "
                                 "give one")
            param_group = {("lr" if k == "learning_rate" else k): v for k, v in param_group.items()}
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.is_complex():
                self.param_groups.pop()
                raise ValueError(f"{type(self).__name__} takes real tensors only (Keras has no complex "
                                 f"variables), got dtype {p.dtype}")
        names = group.get("param_names")
        if names is not None and (not isinstance(names, list) or len(names) != len(group["params"])
                                  or not all(isinstance(n, str) for n in names)):
            self.param_groups.pop()
            raise ValueError(f"param group {len(self.param_groups)}: param_names must be a list of "
                             f"{len(group['params'])} strings, one per parameter, got {names!r}")

    # ------------------------------------------------------------------- weight decay
    _decay_exclusion: tuple[tuple[Tensor, ...], str | None] | None = None  # (var_list, var_names pattern)

    def exclude_from_weight_decay(self, var_list: Any = None, var_names: Any = None) -> None:
        """Keras's ``exclude_from_weight_decay``: these parameters get no decoupled weight decay.

        ``var_list``: parameters of this optimizer. ``var_names``: a list of strings; a parameter
        is excluded when one of them is found in its name (``re.search`` of the strings joined
        with ``|``, as Keras: ``["bias"]`` excludes every name containing ``bias``). The names are
        the ones torch keeps in each group's ``param_names``: build the optimizer from
        ``model.named_parameters()`` (or give ``(name, tensor)`` pairs in a group's params).
        Each call replaces the previous one, as in Keras. Call it before the first ``step()``
        (Keras: "before the optimizer is built"); the exclusion is a setting, not state: it is
        not in ``state_dict()`` (Keras does not save it either). Keras 3.15,
        ``BaseOptimizer.exclude_from_weight_decay``; what differs is in docs/conventions.md.

        Raises ValueError after the first step, for a ``var_list`` entry that is not a parameter
        of this optimizer, for ``var_names`` that is not a list of strings or not a valid
        regular expression, and for ``var_names`` when the parameters have no names.
        """
        if self.iterations > 0:
            raise ValueError("exclude_from_weight_decay() can only be configured before the optimizer is built "
                             f"(as in Keras): call it before the first step(); this optimizer has taken "
                             f"iterations={self.iterations} steps")
        tensors: tuple[Tensor, ...] = ()
        if var_list is not None:
            if isinstance(var_list, Tensor):
                raise ValueError(f"exclude_from_weight_decay: var_list must be a list of parameters, got one tensor "
                                 f"of shape {tuple(var_list.shape)}; pass [tensor]")
            tensors = tuple(_listed("var_list", var_list))
            mine = {id(p) for g in self.param_groups for p in g["params"]}
            for i, t in enumerate(tensors):
                if not isinstance(t, Tensor):
                    raise ValueError(f"exclude_from_weight_decay: var_list[{i}] must be a torch.Tensor, "
                                     f"got {type(t).__name__}")
                if id(t) not in mine:
                    raise ValueError(f"exclude_from_weight_decay: var_list[{i}] (a tensor of shape "
                                     f"{tuple(t.shape)}) is not a parameter of this optimizer")
        pattern = None
        if var_names is not None:
            names = [] if isinstance(var_names, str) else _listed("var_names", var_names)
            if isinstance(var_names, str) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"exclude_from_weight_decay: var_names must be a list of strings, got "
                                 f"{var_names!r}" + (f"; pass [{var_names!r}]" if isinstance(var_names, str) else ""))
            if names:
                pattern = "|".join(sorted(set(names)))
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"exclude_from_weight_decay: var_names={names!r} is not a valid regular "
                                     f"expression (Keras joins them with '|' and searches the names): {err}") from None
                if any("param_names" not in g for g in self.param_groups):
                    raise ValueError(f"exclude_from_weight_decay: var_names={names!r} are matched against parameter "
                                     "names, and this optimizer's parameters have none: build it from "
                                     "model.named_parameters() (or (name, tensor) pairs in each group's params)")
        self._decay_exclusion = (tensors, pattern) if tensors or pattern else None

    def _decayed(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        """``params`` less those excluded from weight decay."""
        if self._decay_exclusion is None:
            return params
        tensors, pattern = self._decay_exclusion
        excluded = {id(t) for t in tensors}
        if pattern is not None:
            excluded.update(id(p) for p, name in zip(group["params"], group.get("param_names", ()))
                            if re.search(pattern, name))
        return [p for p in params if id(p) not in excluded]

    # ---------------------------------------------------------------------------- step
    @torch._disable_dynamo  # (see optimlab.optim.Optimizer.step)
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Keras ``apply``: skip ``None`` grads, clip, decay, update, ``iterations += 1``.

        A step in which no parameter has a gradient changes nothing (Keras raises "No
        gradients provided for any variable" before counting it); neither does a step
        skipped by ``skip_nonfinite``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_written_hyperparameters()
        self._paths = {}
        groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        params = [p for _, ps in groups for p in ps]
        if not params:
            return loss
        self._check_gradients(groups)
        self._check_states(groups)
        if self.skip_nonfinite and not _all_finite([p.grad for p in params]):
            self.skipped_steps += 1
            return loss
        clipped = dict(zip(params, self._clip([p.grad for p in params])))
        step = self.iterations + 1
        for group, ps in groups:
            if ps:
                self._step_group(group, ps, [clipped[p] for p in ps], step)
        self._finish_step()
        self.iterations = step
        return loss

    def _check_gradients(self, groups) -> None:
        for group, params in groups:
            check.refuse_inference_params(type(self).__name__, params, functools.partial(self._where, group))
            for p in params:
                if p.grad.is_sparse:
                    raise ValueError(f"{type(self).__name__} takes dense gradients only "
                                     "(use nn.Embedding(sparse=False))")
                if p.grad.shape != p.shape:
                    raise ValueError(f"a gradient of shape {tuple(p.grad.shape)} was set on a parameter "
                                     f"of shape {tuple(p.shape)}")

    def _clip(self, grads: list[Tensor]) -> list[Tensor]:
        if self.clipnorm is not None:
            return [clip_by_norm(g, self.clipnorm) for g in grads]
        if self.global_clipnorm is not None:
            return clip_by_global_norm(grads, self.global_clipnorm)
        if self.clipvalue is not None:  # Keras's bounds are float32 tensors, even for float64 gradients
            bound = torch.tensor(self.clipvalue, dtype=FLOATX)
            return [torch.clamp(g, -bound, bound) for g in grads]
        return grads

    def _finish_step(self) -> None:
        """Optimizer-wide bookkeeping once per step, after every update (Nadam's momentum product)."""

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], step: int) -> None:
        lr = as_keras_lr(group["lr"])
        states = []
        for p in params:
            if not self.state[p]:
                self.state[p].update(self._init_state(p, group))
            states.append(self.state[p])
        buckets: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype), []).append(i)
        ran = set()
        for indices in buckets.values():
            ps, gs = [params[i] for i in indices], [grads[i] for i in indices]
            decayed = self._decayed(group, ps) if group["weight_decay"] else []  # None/0: off
            factor = factor_tensor = None
            if decayed:  # Keras's torch backend: θ *= 1 − λ·η, a float32 tensor (which float16/bfloat16
                # tensors meet in float32: a Python float would be rounded to their dtype first)
                factor_tensor = 1 - group["weight_decay"] * torch.tensor(lr, dtype=LEARNING_RATE_DTYPE)
                factor = factor_tensor.item()
            if not self._by_rule and self._wants_kernel_here(group, ps):
                # the single-pass kernel, decay folded in (per tensor: 1.0, an exact no-op, where excluded)
                ids = set(map(id, decayed))
                decay = [factor if id(p) in ids else 1.0 for p in ps]
                if self._kernel_update(group, ps, gs, [states[i] for i in indices], lr=lr, step=step, decay=decay,
                                       exact=group.get("fused") is None):
                    ran.add("fused")
                    continue
            if decayed:
                torch._foreach_mul_(decayed, factor_tensor.to(decayed[0].device))
            if self._by_rule:  # the readable rule, one tensor at a time (Optimizer._by_rule)
                view = self._rule_group(group, ps, step)
                for i in indices:
                    type(self).rule(params[i], grads[i], states[i], view)
                ran.add("rule")
            else:
                self._update(group, ps, gs, [states[i] for i in indices], lr=lr, step=step)
                ran.add("foreach")
        self._paths[id(group)] = "+".join(sorted(ran))

    def _wants_kernel_here(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        """Whether to try the single-pass kernel (:mod:`optimlab.optim._fused`) on one bucket:
        ``fused=True`` yes, ``fused=False`` no; by default on float32/float64 CPU tensors, where
        the kernel is Keras's update bit for bit (``exact``: its square roots torch's)."""
        fused = group.get("fused")
        if fused is not None:
            return fused
        return params[0].dtype in _KERNEL_DTYPES and all(map(_is_cpu, params))

    def _kernel_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                       states: list[dict[str, Any]], *, lr: float, step: int, decay: list[float],
                       exact: bool) -> bool:
        """The update with decay ``θ ← θ·decay[i]`` first, in one pass; True if a kernel did it,
        False (nothing changed) if none applies (then decay and ``_update`` run)."""
        return False

    def _rule_group(self, group: dict[str, Any], params: list[Tensor], step: int) -> dict[str, Any]:
        """``group`` as :attr:`rule` reads it: with the optimizer-wide counter ``iterations``
        (steps completed before this one; Keras's ``t = iterations + 1``). Decay and clipping
        are done before the rule runs, as before ``_update``."""
        return {**group, "iterations": step - 1}

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], *, lr: float, step: int) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------ state I/O
    def _global_state(self) -> dict[str, Any]:
        """Optimizer-wide state saved next to the per-parameter state (the clipping too, so a
        resumed run clips as the saved one did)."""
        return {"iterations": self.iterations, **{k: getattr(self, k) for k in _CLIP_OPTIONS}}

    def _set_global_state(self, saved: dict[str, Any]) -> None:
        self.iterations = saved["iterations"]
        if any(k in saved for k in _CLIP_OPTIONS):  # (checked in _check_loadable; older states keep these)
            self._clipnorm = self._clipvalue = self._global_clipnorm = None
            for key in _CLIP_OPTIONS:
                setattr(self, key, saved.get(key))

    def _state_extras(self) -> dict[str, Any]:
        return {**super()._state_extras(), "convention": "keras", "optimizer": f"keras.{type(self).__name__}",
                **self._global_state()}

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        name = f"keras.{type(self).__name__}"
        extra = state_dict.get("optimlab", {})
        if extra.get("convention") != "keras":
            source = extra.get("optimizer")
            where = f"optimlab's torch-convention {source}" if source else "a torch-convention optimizer"
            raise ValueError(f"this state_dict was saved by {where}, not by a Keras-convention optimizer: "
                             f"{name} keeps different state ({', '.join(sorted(self.state_keys))}) and one "
                             "global step counter; refusing to load it")
        iterations = extra.get("iterations")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"the state's iteration counter must be an int >= 0, got {iterations!r}")
        _check_clipping(name, {k: extra.get(k) for k in _CLIP_OPTIONS})
        super()._check_loadable(state_dict)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by the same Keras-convention optimizer; fully checked first."""
        super().load_state_dict(state_dict)

    def _loaded(self, state_dict: dict[str, Any]) -> None:
        super()._loaded(state_dict)
        self._set_global_state(state_dict["optimlab"])

    @property
    def iterations(self) -> int:
        """Keras's ``optimizer.iterations``: steps completed, shared by every parameter (bias
        corrections use ``t = iterations + 1``). Settable (an int >= 0, else ValueError)."""
        return self.__dict__.get("_iterations", 0)

    @iterations.setter
    def iterations(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{type(self).__name__}: iterations must be an int >= 0, got {value!r}")
        self.__dict__["_iterations"] = int(value)

    def __getstate__(self) -> dict[str, Any]:  # torch pickles only defaults/state/param_groups
        state = super().__getstate__()
        keep = ("_iterations", "skipped_steps", "_decay_exclusion", *self._extra_attributes)
        state.update({k: self.__dict__[k] for k in keep if k in self.__dict__})
        state.update({k: getattr(self, k) for k in _CLIP_OPTIONS})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)  # (a pickle's; load_state_dict passes only state and groups: no options)
        clip = {k: state.pop(k) for k in _CLIP_OPTIONS if k in state}
        if "iterations" in state:  # (pickled before it was a property)
            state["_iterations"] = state.pop("iterations")
        super().__setstate__(state)
        if clip:
            self._clipnorm = self._clipvalue = self._global_clipnorm = None
            for key, value in clip.items():  # (checked, as when set)
                setattr(self, key, value)

    _extra_attributes: ClassVar[tuple[str, ...]] = ()

