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
import math
import numbers
import operator
from itertools import compress, repeat
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import Tensor

from optimlab.optim import _fused, _hooks, _layout
from optimlab.optim import _validation as check

_grad_of = operator.attrgetter("grad")
_is_sparse = operator.attrgetter("is_sparse")
_shape_of = operator.attrgetter("shape")
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_is_cpu = operator.attrgetter("is_cpu")  # cheaper than building each device
_is_complex = Tensor.is_complex
_is_inference = Tensor.is_inference
_numel = Tensor.numel
#: Elements per _update call for rules with big temporaries (4 MB of float32).
TEMPORARY_CHUNK = 1 << 20
_NO_STATE: dict = {}  # read-only stand-in for a stateless update
#: The dtypes the default path sends to a single-pass kernel: there the kernels agree with the
#: foreach rule to an ulp or two (float16/bfloat16 would be computed in float32 and rounded
#: once, unlike torch's default loop: no twin).
_KERNEL_DTYPES = frozenset({torch.float32, torch.float64})


@functools.lru_cache(maxsize=None)
def _fused_device_types() -> tuple[str, ...]:
    """The device types torch has fused optimizer kernels for (cpu, cuda, ...), in its order."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # pragma: no cover - older torch
        return ("cpu", "cuda")


@functools.lru_cache(maxsize=None)
def _torch_fused_device_types() -> frozenset[str]:
    """The non-CPU device types torch has fused optimizer kernels for (CUDA, ...)."""
    return frozenset(_fused_device_types()) - {"cpu"}


@functools.lru_cache(maxsize=None)
def _torch_has_kernels(ops: tuple[str, ...], device_type: str) -> bool:
    """Whether this torch build registers a kernel of every op in ``ops`` (``"_fused_adagrad_"``,
    ...) for ``device_type``: torch's fused kernels did not reach every device at once (a torch
    whose Adagrad has a CPU kernel only), so its device list alone does not say it. True where
    it cannot ask (no such query in this torch); False for a device it cannot name."""
    key = {"privateuseone": "PrivateUse1"}.get(device_type, device_type.upper())
    query = getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)
    if query is None:  # pragma: no cover - a torch without the query
        return True
    try:
        return all(query(f"aten::{op}", key) for op in ops)
    except RuntimeError:  # (not a dispatch key: the foreach rule, not a failing kernel call)
        return False


class UnknownArgumentError(TypeError, ValueError):
    """A keyword the optimizer does not take (a ``TypeError`` and a ``ValueError``)."""


class GradientMismatchError(ValueError, RuntimeError):
    """A gradient that does not fit its parameter: another shape, or a dtype the update
    cannot take. A ``ValueError``, as every optimlab input error, and a ``RuntimeError``,
    what torch.optim raises for such a gradient."""


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
                if key == "differentiable":  # a real torch flag, which only the torch twins take
                    advice = ("; differentiable=True is supported by the torch twins (SGD, Adagrad, RMSprop, "
                              "Adadelta, Adam, AdamW, Adamax, NAdam, RAdam) only")
                raise UnknownArgumentError(
                    f"{cls_name}() got an unknown keyword argument {key!r}{advice} "
                    f"(accepted: {', '.join(known[1:])})")
        init(self, *args, **kwargs)

    return checked_init


def _optimizer_classes() -> list[type]:
    """Optimizer and every class derived from it, defined so far."""
    classes, stack = [], [Optimizer]
    while stack:
        cls = stack.pop()
        classes.append(cls)
        stack.extend(cls.__subclasses__())
    return classes


def _hyperparameter_names() -> set[str]:
    """The keyword arguments of every optimizer here (its hyperparameters), but names of one or
    two letters (Lookahead's k, Schedule-Free's r), too common as a user's own group keys."""
    names = set()
    for init in (cls.__dict__.get("__init__") for cls in _optimizer_classes()):
        if init is not None:
            parameters = inspect.signature(init).parameters.values()
            names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return {n for n in names if len(n) > 2} - {"self", "params", "defaults"}


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``a`` is ``b`` with one character added, dropped, changed, or two adjacent ones
    swapped (a typo: ``lrr``, ``weight_decy``, ``amsgard``)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((i for i in range(len(short)) if short[i] != long[i]), len(short))
    return short[i:] == long[i + 1:]


def _state_key_names() -> set[str]:
    """Every state key some optimizer here keeps per parameter (its ``state_keys``)."""
    return {key for cls in _optimizer_classes() for key in cls.__dict__.get("state_keys", ())}


def _checked_param_list(params: Any, cls_name: str) -> list:
    """``params`` as a list. Raises InputTypeError (a TypeError, as torch, and a ValueError)
    for a single tensor or a non-iterable, ValueError for an empty list."""
    if isinstance(params, Tensor):
        raise check.InputTypeError(f"params must be an iterable of tensors or dicts, got a single tensor "
                                   f"of shape {tuple(params.shape)}; pass [tensor] or model.parameters()")
    try:
        params = list(params)
    except TypeError:
        raise check.InputTypeError(f"params must be an iterable of tensors or dicts, got "
                                   f"{type(params).__name__}") from None
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
    #: The single-pass kernels the default (``fused=None``, ``foreach=None``) picks where they
    #: are exact: "torch" (torch's fused kernels: CPU, and the devices torch has them for) or
    #: "optimlab" (the C kernels of :mod:`._fused`, CPU); None: the foreach rule.
    default_kernels: ClassVar[str | None] = None
    #: With ``default_kernels = "torch"``: the torch ops those kernels are (their names in
    #: ``torch``); the default takes them off the CPU only where torch has all of them there.
    torch_fused_ops: ClassVar[tuple[str, ...]] = ()
    #: Set by :meth:`_step_group` for :meth:`_update`: whether to try the single-pass kernel
    #: (which falls back to the foreach rule, silently, where the tensors do not fit it); the
    #: update sets ``_kernel_ran`` when a kernel did the work.
    _kernel: bool = False
    _kernel_ran: bool = False
    keyword_aliases: ClassVar[dict[str, str]] = {
        "learning_rate": "lr", "epsilon": "eps", "beta_1": "betas", "beta_2": "betas",
        "beta1": "betas", "beta2": "betas", "nesterov_momentum": "nesterov",
    }
    _common_checks: ClassVar[dict[str, Callable[[str, Any], None]]] = {
        "lr": check.non_negative, "weight_decay": check.non_negative, "maximize": check.boolean,
        "foreach": check.optional_boolean, "fused": check.optional_boolean,
        "differentiable": check.boolean, "capturable": check.must_be_false,
    }
    #: The readable rule: ``rule(param, grad, state, group)`` updates one tensor ``param`` and
    #: its ``state`` (this optimizer's state dict for it, as :meth:`_init_state` made it, the
    #: step counter included, or empty where ``lazy_state``) in place from ``grad`` with the
    #: hyperparameters of ``group``: plain per-tensor torch code following the paper, the update
    #: the docs show. It is the maths written once: every implementation (foreach, the
    #: single-pass kernels, the single-tensor path) is tested against it in float64
    #: (tests/test_optim_conformance.py), and ``differentiable=True`` runs it under autograd.
    #: Complex tensors reach it as real views (``torch.view_as_real``); group-level counters
    #: (Schedule-Free's) are advanced before it runs. A staticmethod; None for wrappers.
    rule: ClassVar[Callable[[Tensor, Tensor, dict, dict], None] | None] = None
    #: The single-pass CPU kernel's description (a :class:`._kernelgen.Kernel`: the foreach
    #: rule written for one element), declared beside the rule in the optimizer's module; the
    #: kernel library is generated from every class's (:func:`._fused.kernels`). None: no kernel
    #: of optimlab's (torch's fused kernels, or not elementwise).
    kernel: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _reject_unknown_keywords(cls.__dict__["__init__"], cls.__name__,
                                                    cls.keyword_aliases)

    #: Skip a step whose gradients hold a NaN or an infinity (counted in ``skipped_steps``).
    skip_nonfinite = check.checked_setting(
        "skip_nonfinite", lambda self, v: check.named(type(self).__name__, check.boolean, "skip_nonfinite", v),
        "Skip a step whose gradients hold a NaN or an infinity (True or False; checked on every assignment).")

    def __init__(self, params: Any, defaults: dict[str, Any], *, skip_nonfinite: bool = False):
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        # a group's keys (torch's __setstate__ adds "differentiable" to every optimizer's defaults)
        self._group_keys = tuple(defaults)
        # the constructor's hyperparameters first, as torch.optim (its checks precede the params')
        self._check_hyperparameters(defaults, "the constructor's arguments")
        super().__init__(_checked_param_list(params, type(self).__name__), defaults)
        if defaults.get("fused") and self.default_kernels == "torch":
            # as torch's fused SGD, Adam, AdamW and Adagrad: GradScaler.step then leaves the
            # unscaling to the step, through optimizer.grad_scale and optimizer.found_inf
            self._step_supports_amp_scaling = True

    # ----------------------------------------------------------------- parameter groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate a group (its tensors and every hyperparameter) before adding it."""
        if not isinstance(param_group, dict):
            raise check.InputTypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        where = f"param group {len(self.param_groups)}"
        if "params" not in group:
            raise check.MissingParamsError(f"{where} has no 'params' entry (keys: {sorted(group)})")
        raw = group["params"]
        if isinstance(raw, Tensor):
            group_params = [raw]
        else:
            try:
                group_params = list(raw if raw is not None else [])
            except TypeError:
                raise check.InputTypeError(f"{where}: 'params' must be a tensor or an iterable of tensors, "
                                           f"got {type(raw).__name__}") from None
        if not group_params:
            raise ValueError(f"{where} has an empty parameter list")
        tensors = _tensors_of(group_params)
        seen: set[int] = set()
        for i, p in enumerate(tensors):
            if not isinstance(p, Tensor):
                raise check.InputTypeError(f"{where}: params[{i}] must be a torch.Tensor, got {type(p).__name__}")
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
        # Keys of the user's own (a name, timm's lr_scale, a scheduler's initial_lr) are kept, as
        # torch keeps them; refused are those that look meant for the update but that it would not
        # read: another name of one of its keys (learning_rate), one edit from one (weight_decy,
        # lrr), or a hyperparameter of other optimizers (momentum on Adam).
        unknown = set(group) - set(self.defaults) - {"params", "param_names"}
        near = {k: self._group_key_for(k) or next((d for d in self.defaults if len(k) > 2 and _one_edit_apart(k, d)),
                                                  None)
                for k in unknown}
        others = _hyperparameter_names() if unknown else set()
        refused = sorted(k for k in unknown if near[k] or k in others)
        if refused:
            hints = [f"{k!r}: did you mean {near[k]!r}?" for k in refused if near[k]]
            raise ValueError(f"{where} has hyperparameter(s) {refused} that {type(self).__name__} does not "
                             f"read; it takes {sorted(self.defaults)}"
                             + (f" ({'; '.join(hints)})" if hints else ""))
        for key, default in self.defaults.items():
            group.setdefault(key, default)
        self._check_hyperparameters(group, where)
        group["params"] = group_params
        super().add_param_group(group)

    def _check_hyperparameters(self, group: dict[str, Any], where: str, keys: Iterable[str] | None = None) -> None:
        """The checks of ``group``'s hyperparameters (of ``keys`` only, if given), then of the
        group's settings together; raises the check's ValueError, naming class, key and value."""
        checks = {**self._common_checks, **self.hyper_checks}
        in_group = bool(getattr(self, "param_groups", None))
        for key, value in group.items() if keys is None else ((k, group[k]) for k in keys):
            if key in checks:
                try:
                    checks[key](key, value)
                except ValueError as err:  # (keeps the class: InputTypeError is a TypeError too)
                    raise type(err)(f"{type(self).__name__}: {err}" + (f" (in {where})" if in_group else "")) from None
        try:
            self._check_implementation(group)
            self._check_combination(group)
        except ValueError as err:
            raise type(err)(f"{type(self).__name__}: {err}" + (f" (in {where})" if in_group else "")) from None

    def _check_written_hyperparameters(self) -> None:
        """Check, before a step changes anything, the hyperparameters written into
        ``param_groups`` since they were last checked (by an LR scheduler, or by hand): each
        changed value gets the check the constructor gives it, and its group the checks of
        settings together (e.g. a tensor ``lr`` with ``foreach=True``). torch.optim checks only
        at construction; without this, a string ``lr`` was silently converted and a
        two-element tensor or a ``None`` failed deep in the update, after the step counters
        had moved. Values that can change in place (a CPU tensor, as torch's schedulers
        ``fill_`` a tensor ``lr``; a list; a tuple holding tensors) are checked at every step;
        a CUDA tensor's value is not read (that would wait for the device). Raises ValueError
        (or its subclasses), naming the class, group, key and value; also for a group that
        lacks one of its keys, or holds one of them under another name (``learning_rate``
        for ``lr``), which the update would not read. An unchanged group of plain numbers
        costs one comparison of identities."""
        groups = self.param_groups
        seen = self.__dict__.get("_hyper_seen")
        if seen is None or len(seen) != len(groups):
            seen = self.__dict__["_hyper_seen"] = [None] * len(groups)
        for i, group in enumerate(groups):
            keys, values = tuple(group), tuple(group.values())
            last = seen[i]
            if last is not None and last[0] is group and last[1] == keys:
                if all(map(operator.is_, values, last[2])):
                    if not last[3]:
                        continue
                    changed = last[3]  # (values that may have changed in place)
                else:
                    changed = [k for k, v, w in zip(keys, values, last[2]) if v is not w or k in last[3]]
            else:
                changed = None
                self._check_group_keys(group, i, () if last is None or last[0] is not group else last[1])
            self._check_hyperparameters(group, f"param group {i}, as written into param_groups", changed)
            seen[i] = (group, keys, values, [k for k, v in zip(keys, values) if _mutable(v)])

    def _check_group_keys(self, group: dict[str, Any], i: int, known: Iterable[str]) -> None:
        """A group must hold every key of this optimizer's groups, and none of them under
        another name (``learning_rate`` for ``lr``: the update would not read it). Other keys
        (a scheduler's ``initial_lr``, the user's own) are left alone, as torch.optim does."""
        name = type(self).__name__
        missing = [k for k in self._group_keys if k not in group]
        if missing:
            raise ValueError(f"{name}: param group {i} lacks the key(s) {missing} "
                             f"(each group holds {list(self._group_keys)}); put them back")
        known = set(known)
        for key in group:
            meant = self._group_key_for(key)
            if key not in known and meant is not None:
                raise ValueError(f"{name}: param group {i} holds {key!r}={group[key]!r}, which {name} does not "
                                 f"read: its key is {meant!r} (write param_groups[{i}][{meant!r}])")

    def _group_key_for(self, key: str) -> str | None:
        """The group key that ``key`` (not one itself) names under another name, or None."""
        if key in self.defaults:
            return None
        meant = "lr" if key == "learning_rate" else self.keyword_aliases.get(key)
        return meant if meant in self.defaults else None

    #: Hyperparameters that torch.optim's class refuses as tensors with ``foreach=True`` (and
    #: ``capturable=False``, which optimlab always has): Adam's and AdamW's "lr" and "betas".
    foreach_scalar_only: ClassVar[tuple[str, ...]] = ()

    def _check_implementation(self, group: dict[str, Any]) -> None:
        """Settings torch.optim refuses together (UnsupportedSettingError: a ValueError, and the
        RuntimeError or ValueError torch raises): ``fused=True`` with ``foreach=True``, and
        tensors where ``foreach=True`` needs numbers (``foreach_scalar_only``);
        ``differentiable=True`` with ``fused=True`` or ``foreach=True`` (it runs the readable
        rule, one tensor at a time, as torch's single-tensor path)."""
        if group.get("fused") is True and group.get("foreach") is True:
            raise check.UnsupportedSettingError("fused=True and foreach=True cannot be set together: "
                                                "fused runs one kernel per step, foreach the multi-tensor ops")
        if group.get("differentiable") is True:
            if self.rule is None:
                raise check.UnsupportedSettingError(f"differentiable=True is not supported by {type(self).__name__}")
            for key in ("fused", "foreach"):
                if group.get(key) is True:
                    raise check.UnsupportedSettingError(
                        f"`{key}` does not support `differentiable`: differentiable=True runs the readable rule "
                        f"one tensor at a time (as torch); leave {key} unset")
        if group.get("foreach") is True:
            for key in self.foreach_scalar_only:
                values = group.get(key)
                for i, value in enumerate(values if isinstance(values, (tuple, list)) else [values]):
                    if isinstance(value, Tensor):
                        name = f"{key}[{i}]" if isinstance(values, (tuple, list)) else key
                        raise check.UnsupportedSettingError(
                            f"{name} as a tensor ({value!r}) is not supported with foreach=True (as in "
                            f"torch.optim, without capturable=True); pass a number, or leave foreach unset")

    def _check_combination(self, group: dict[str, Any]) -> None:
        """Constraints between hyperparameters (e.g. Nesterov needs momentum)."""

    #: Group keys a loaded state may lack, and the value torch.optim's ``__setstate__`` then
    #: gives them (flags added since torch 1.12, so older state dicts load). A missing
    #: "foreach" or "fused" (which choose an implementation only) keeps this optimizer's setting.
    load_defaults: ClassVar[dict[str, Any]] = {"maximize": False, "differentiable": False, "capturable": False}
    #: Group keys a load sets whatever the state says (AdamW: decoupled decay, as torch's).
    load_overrides: ClassVar[dict[str, Any]] = {}
    #: Per-parameter counters: 0-dim tensors, which older state dicts hold as numbers.
    scalar_state_keys: ClassVar[tuple[str, ...]] = ("step",)
    #: State entries the update creates when missing, so a loaded state may lack them.
    optional_state_keys: ClassVar[frozenset[str]] = frozenset()

    # ----------------------------------------------------------------------------- step
    # torch.compile runs the step eagerly (a graph break): it is one kernel call per group
    # already, and tracing it (C calls, layouts remembered per step) would recompile every step.
    @torch._disable_dynamo  # (torch.compiler.disable, but imports torch._dynamo at the first call: as torch.optim)
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update; ``closure`` (optional) re-evaluates the loss with grad enabled.

        Raises, before anything changes: GradientMismatchError (a ValueError) for a gradient
        of another shape than its parameter, or of another dtype where this update cannot
        take it (see ``other_dtype_grads``); ValueError for sparse gradients it cannot use."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_written_hyperparameters()
        groups = []
        for group in self.param_groups:
            params = list(group["params"])
            grads = list(map(_grad_of, params))
            present = list(map(operator.is_not, grads, repeat(None)))
            if False in present:
                params, grads = list(compress(params, present)), list(compress(grads, present))
            if params:
                groups.append((group, params, grads))
        other_dtype = self._check_gradients(groups)
        self._check_fused_devices(groups)
        self._check_states(groups)
        self._paths = {}
        if self.skip_nonfinite and not _all_finite([g for _, _, grads in groups for g in grads]):
            self.skipped_steps += 1
            return loss
        if self.default_kernels == "torch":  # GradScaler's protocol for torch's fused kernels
            self._grad_scale = getattr(self, "grad_scale", None)
            self._found_inf = getattr(self, "found_inf", None)
        for (group, params, grads), odd in zip(groups, other_dtype):
            self._ran = ran = set()
            if odd:
                params, grads = self._step_other_dtype(group, params, grads, odd)
                ran.add("single-tensor")
            if params:
                known = self._facts.get(id(params))  # (checked or matched by _check_gradients)
                token = known[2] if known is not None and known[0] is params else None
                before = _layout.vouch(params, grads, token)
                try:
                    self._step_group(group, params, grads)
                finally:
                    _layout.unvouch(before)
            self._paths[id(group)] = "+".join(sorted(ran))
        return loss

    #: GradScaler's ``grad_scale`` and ``found_inf`` (0-dim float32 tensors) for this step,
    #: read by :meth:`step` from the attributes GradScaler sets on an optimizer whose
    #: ``_step_supports_amp_scaling`` is True (torch's fused SGD, Adam, AdamW, Adagrad and
    #: their twins here): torch's fused kernels take them; other paths use :meth:`_amp_unscale`.
    _grad_scale: Tensor | None = None
    _found_inf: Tensor | None = None

    def _amp_unscale(self, grads: list[Tensor]) -> bool:
        """For a step that does not reach torch's fused kernel, what that kernel does with
        GradScaler's tensors: False (skip the update) where ``found_inf`` is 1, else True,
        having divided the gradients in place by ``grad_scale`` (the kernel stores them so)."""
        found_inf, grad_scale = self._found_inf, self._grad_scale
        if found_inf is not None and found_inf.item() == 1.0:
            return False
        if grad_scale is not None:
            for g in grads:
                g.div_(grad_scale.to(g.device))
        return True

    def _amp_rewind(self, steps: list[Tensor]) -> None:
        """torch's fused step subtracts ``found_inf`` from the step counters after its kernel
        (undoing the increment of a skipped step)."""
        found_inf = self._found_inf
        if found_inf is not None and steps and found_inf.item() != 0:
            torch._foreach_sub_(steps, [found_inf.to(steps[0].device)] * len(steps))

    #: Whether a step ran under ``torch.inference_mode()``: its state may hold inference tensors.
    _inference_state = False

    def _check_states(self, groups) -> None:
        """Refuse, before anything changes, a state that this step cannot update (the update
        would fail part-way, some tensors already changed, or a kernel write what torch
        refuses to): state made under ``torch.inference_mode()`` (inference tensors, which
        cannot be updated in place outside it; torch's step raises RuntimeError there),
        stepped outside it: UnsupportedSettingError naming the parameter. Subclasses add
        their own (call this first)."""
        if torch.is_inference_mode_enabled():
            self._inference_state = True
        elif self._inference_state:
            for group in self.param_groups:
                for p in group["params"]:
                    state = self.state.get(p)
                    if state and any(isinstance(v, Tensor) and v.is_inference() for v in state.values()):
                        raise check.UnsupportedSettingError(
                            f"{type(self).__name__}: the state of {self._where(group, p)} was made under "
                            "torch.inference_mode() (inference tensors), and cannot be updated in place outside "
                            "it (torch.optim raises here too); step inside torch.inference_mode(), or start the "
                            "state again outside it (optimizer.state.clear())")
            self._inference_state = False

    def _check_fused_devices(self, groups) -> None:
        """``fused=True`` on a parameter of a device no fused kernel runs on ("meta"):
        UnsupportedSettingError (a RuntimeError, as torch's, and a ValueError) before anything
        changes. (Complex parameters, which torch's fused optimizers refuse too, step on the
        foreach rules: see docs/conventions.md, section 6.)"""
        for group, params, _ in groups:
            if group.get("fused") is not True:
                continue
            devices = _fused_device_types()
            if all(d.type in devices for d in set(map(_device_of, params))):
                continue  # (the usual case: one C-level pass, no loop over the parameters)
            for p in params:
                if p.device.type not in devices:
                    raise check.UnsupportedSettingError(
                        f"{type(self).__name__}: fused=True needs parameters on a device with fused kernels "
                        f"({', '.join(devices)}); {self._where(group, p)} is {p.dtype} on {p.device.type}")

    def path_for(self, group: dict[str, Any] | int = 0) -> str | None:
        """The implementation the last ``step()`` ran for ``group`` (a param group or its
        index): "fused" (a single-pass kernel: torch's fused kernel or optimlab's), "foreach"
        (the multi-tensor rule), "single-tensor" (one tensor at a time: ``foreach=False``,
        sparse gradients, gradients in another dtype, Muon's orthogonalisation, ADOPT without its
        kernel), "rule" (the readable rule:
        ``differentiable=True``), several joined by "+" where a group's
        tensors took different paths; None if the group had no gradient in that step."""
        if isinstance(group, int):
            group = self.param_groups[group]
        if not any(g is group for g in self.param_groups):
            raise ValueError("path_for: not a param group of this optimizer")
        return getattr(self, "_paths", {}).get(id(group))

    def _wants_kernel(self, group: dict[str, Any], params: list[Tensor], dense_one_dtype: bool,
                      on_cpu: bool) -> bool:
        """Whether ``_update`` should try the single-pass kernel for this group's step.

        ``fused=True``: yes; ``fused=False`` or ``foreach`` set: no. The default: yes where a
        kernel is exact and faster than the foreach rule: dense gradients, one dtype, float32
        or float64 (``dense_one_dtype`` says the first two), all on the CPU (``on_cpu``), or
        (torch's kernels) on one device torch has them for."""
        fused = group.get("fused")
        if fused is not None or group.get("foreach") is not None or self.default_kernels is None:
            return bool(fused)
        p0 = params[0]
        if not dense_one_dtype or p0.dtype not in _KERNEL_DTYPES:
            return False
        if on_cpu:
            return True
        return (self.default_kernels == "torch" and p0.device.type in _torch_fused_device_types()
                and _torch_has_kernels(self.torch_fused_ops, p0.device.type)
                and len(set(map(_device_of, params))) == 1)

    #: A gradient in another dtype than its parameter's (which ``p.grad.data = ...`` allows):
    #: "refuse" it (GradientMismatchError before anything changes); "torch": give it torch.optim's
    #: own single-tensor update (:meth:`_update_other_dtype`), which promotes where its ops do,
    #: and refuse it where that update fails (tried first on scratch tensors, so the decision
    #: follows torch for every setting: a float16 gradient passes Adam's lerp only once L2
    #: weight decay has promoted it); "rules": the foreach rules take it as it is.
    other_dtype_grads: ClassVar[str] = "refuse"

    def _check_gradients(self, groups) -> list[list[int]]:
        """Refuse, before anything changes, a gradient that does not fit its parameter.

        Returns, per group, the indices of the gradients in another dtype that
        :meth:`_step_other_dtype` takes (empty lists in the usual case).
        Raises GradientMismatchError (shape, or a dtype this optimizer refuses) or ValueError
        (sparse gradients where they cannot be used)."""
        other_dtype = []
        memo = self._layouts
        self._facts = {}
        for group, params, grads in groups:
            flat = [*params, *grads]
            facts = memo.get(id(group), flat, params)  # (a gradient is never nested where its parameter is not)
            if facts is not None and facts[0] is group:  # the layouts of a step that passed
                self._facts[id(params)] = (params, *facts[1:])
                other_dtype.append([])
                continue
            inference = any(map(_is_inference, params))
            if inference:
                check.refuse_inference_params(type(self).__name__, params, functools.partial(self._where, group))
            sparse = any(map(_is_sparse, grads))
            if sparse:
                self._check_sparse(group)
            # Shapes and dtypes matter beyond a clear message: kernels trust them for memory bounds.
            if list(map(_shape_of, grads)) != list(map(_shape_of, params)):
                p, g = next((p, g) for p, g in zip(params, grads) if g.shape != p.shape)
                raise GradientMismatchError(f"a gradient of shape {tuple(g.shape)} was set on a parameter "
                                            f"of shape {tuple(p.shape)} ({self._where(group, p)})")
            odd = []
            if list(map(_dtype_of, grads)) != list(map(_dtype_of, params)):
                odd = [i for i, (p, g) in enumerate(zip(params, grads)) if g.dtype != p.dtype]
                policy, fails = self.other_dtype_grads, {}
                for i in odd:
                    p, g = params[i], grads[i]
                    if policy == "torch" and (p.dtype, g.dtype) not in fails:
                        fails[p.dtype, g.dtype] = self._torch_update_fails(group, p, g)
                    if policy == "refuse" or (policy == "torch" and fails[p.dtype, g.dtype]):
                        why = ("torch.optim's update fails on it too, with these settings" if policy == "torch"
                               else "this update takes gradients in their parameter's dtype only")
                        raise GradientMismatchError(
                            f"{type(self).__name__}: a gradient of dtype {g.dtype} was set on a parameter of "
                            f"dtype {p.dtype} ({self._where(group, p)}, shape {tuple(p.shape)}; through "
                            f".grad.data?): {why}; convert it: p.grad = p.grad.to(p.dtype)")
                if policy != "torch":
                    odd = []
            if not odd and not sparse and not inference:  # (sparse: the checks depend on weight_decay;
                # inference tensors: on whether inference mode is on, which the memo does not see)
                facts, token = self._layout_facts(params, grads), object()  # (token: see _layout.vouch)
                memo.put(id(group), flat, (group, facts, token))
                self._facts[id(params)] = (params, facts, token)
            other_dtype.append(odd)
        return other_dtype

    @staticmethod
    def _layout_facts(params: list[Tensor], grads: list[Tensor]) -> tuple[bool, bool, bool, bool]:
        """What :meth:`_step_group` needs to know of a group's tensors: dense gradients and
        one dtype; all on the CPU; all on one device; every parameter a plain Tensor or
        Parameter (:data:`._fused.PLAIN_TYPES`; the remembered layouts compare Python types)."""
        dense_one_dtype = not any(map(_is_sparse, grads)) and len(set(map(_dtype_of, params))) == 1
        on_cpu = all(map(_is_cpu, params))
        plain = set(map(type, params)) <= _fused.PLAIN_TYPES
        return dense_one_dtype, on_cpu, on_cpu or len(set(map(_device_of, params))) == 1, plain

    @property
    def _layouts(self) -> _layout.Memo:
        """Each param group's checked layouts (params and gradients) with their
        :meth:`_layout_facts`: a step whose tensors have them skips the checks (see
        :mod:`._layout`). Made on first use, so unpickled optimizers have one too."""
        memo = self.__dict__.get("_layout_memo")
        if memo is None:
            memo = self.__dict__["_layout_memo"] = _layout.Memo(64)
        return memo

    def _torch_update_fails(self, group: dict[str, Any], param: Tensor, grad: Tensor) -> bool:
        """Whether :meth:`_update_other_dtype` raises for these dtypes and ``group``'s settings,
        tried on one-element scratch tensors (nothing real is touched)."""
        p = torch.zeros(1, dtype=param.dtype, device=param.device)
        g = torch.ones(1, dtype=grad.dtype, device=grad.device)
        state = {} if self.lazy_state else self._init_state(p, group)
        try:
            self._update_other_dtype(group, [p], [g], [state])
        except RuntimeError:
            return True
        return False

    def _where(self, group: dict[str, Any], param: Tensor) -> str:
        """"params[i] of param group k", for messages."""
        k = next(k for k, g in enumerate(self.param_groups) if g is group)
        i = next(i for i, p in enumerate(group["params"]) if p is param)
        return f"params[{i}] of param group {k}"

    def _step_other_dtype(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                          odd: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """Update the tensors ``odd`` with :meth:`_update_other_dtype`; return the others."""
        ps, gs = [params[i] for i in odd], [grads[i] for i in odd]
        if self._amp_unscale(gs):
            states = self._states(group, ps)
            self._update_other_dtype(group, ps, gs, states)
            self._amp_rewind([s["step"] for s in states if isinstance(s.get("step"), Tensor)])
        taken = set(odd)
        keep = [i for i in range(len(params)) if i not in taken]
        return [params[i] for i in keep], [grads[i] for i in keep]

    def _update_other_dtype(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                            states: list[dict[str, Any]]) -> None:
        """torch.optim's single-tensor update (its functional form) for gradients whose dtype
        is not their parameter's; what torch computes there is the reference, op for op."""
        raise NotImplementedError

    def _check_sparse(self, group: dict[str, Any]) -> None:
        if not self.supports_sparse:
            raise ValueError(f"{type(self).__name__} does not support sparse gradients "
                             "(use Adagrad or SGD, or nn.Embedding(sparse=False))")
        if group["weight_decay"] != 0:
            raise ValueError(f"weight_decay={group['weight_decay']!r} cannot be combined "
                             "with sparse gradients")

    def _states(self, group: dict[str, Any], params: list[Tensor]) -> list[dict[str, Any]]:
        """Each parameter's state, started (``_init_state``) where it is empty."""
        all_state = self.state
        if self._stateless(group):
            return [_NO_STATE] * len(params)
        if self.lazy_state:  # _update creates what it needs (e.g. SGD's buffer from the first gradient)
            return [all_state[p] for p in params]
        states = []
        for p in params:
            state = all_state[p]
            if not state:
                state.update(self._init_state(p, group))
            states.append(state)
        return states

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if group.get("differentiable") or self._by_rule:
            self._step_by_rule(group, params, grads)
            return
        states = self._states(group, params)
        known = getattr(self, "_facts", {}).get(id(params))
        if known is not None and known[0] is params:  # (from _check_gradients, this step)
            dense_one_dtype, on_cpu, one_device, plain = known[1]
        else:
            dense_one_dtype, on_cpu, one_device, plain = self._layout_facts(params, grads)
        # a tensor subclass, by default: one tensor at a time, as torch (see _fused.PLAIN_TYPES)
        single = group["foreach"] is False or (
            not plain and group["foreach"] is None and group.get("fused") is None)
        self._kernel = not single and self._wants_kernel(group, params, dense_one_dtype, on_cpu)
        if not single and dense_one_dtype and one_device:
            self._update_in_chunks(group, params, grads, states)  # the usual case: one device, one dtype
            return
        for indices in self._buckets(params, grads):
            ps = [params[i] for i in indices]
            ss = [states[i] for i in indices]
            if single or grads[indices[0]].is_sparse:
                for p, s in zip(ps, ss):  # torch's single-tensor path: same rule, one tensor at a time
                    self._run_update(group, [p], [p.grad], [s], "single-tensor")
            else:
                self._update_in_chunks(group, ps, [grads[i] for i in indices], ss)

    #: Hyperparameters whose tensors (``requires_grad``) the rule differentiates through with
    #: ``differentiable=True``; others given as such tensors are refused at the step (the rule
    #: reads them as numbers, so their gradient would silently be lost).
    differentiable_hypers: ClassVar[tuple[str, ...]] = ("lr",)

    #: Run every group's step through :attr:`rule` (what ``differentiable=True`` does; the
    #: conformance tests set it to run the readable rule inside the real optimizer).
    _by_rule: bool = False

    def _step_by_rule(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """The readable rule, one tensor at a time: under autograd where ``group`` is
        ``differentiable`` (as torch's single-tensor path then runs), and without it otherwise."""
        rule = type(self).rule
        if rule is None:
            raise check.UnsupportedSettingError(f"{type(self).__name__} has no readable rule")
        if group.get("differentiable"):  # before anything changes (the unscaling below included)
            for key, value in group.items():
                values = value if isinstance(value, (tuple, list)) else [value]
                if key not in ("params", *self.differentiable_hypers) and any(
                        isinstance(v, Tensor) and v.requires_grad for v in values):
                    raise check.UnsupportedSettingError(
                        f"{type(self).__name__}: differentiable=True differentiates through "
                        f"{', '.join(self.differentiable_hypers)}, the parameters, gradients and state; "
                        f"{key} is a tensor that requires grad: pass a number (or a tensor without grad)")
        if not self._amp_unscale(grads):
            return
        # grad mode from the constructor's setting, as torch's step (_use_grad_for_differentiable):
        # a group flagged later runs its rule without autograd, as torch's does
        with torch.set_grad_enabled(bool(group.get("differentiable")) and bool(self.defaults.get("differentiable"))):
            for p, g, state in zip(params, grads, self._states(group, params)):
                if p.is_complex():
                    _rule_on_real_views(rule, p, g, state, group)
                else:
                    rule(p, g, state, group)
        self._amp_rewind([s["step"] for s in map(self.state.get, params)
                          if s and isinstance(s.get("step"), Tensor)])
        self._ran.add("rule")

    #: What :meth:`path_for` calls ``_update`` without a kernel: "foreach" (a multi-tensor
    #: rule), or "single-tensor" where ``_update`` runs the rule one tensor at a time (ADOPT).
    unfused_path: ClassVar[str] = "foreach"

    def _run_update(self, group, params, grads, states, path: str | None = None) -> None:
        """``_update``, noting which path it took (see :meth:`path_for`)."""
        self._kernel_ran = False
        self._update(group, params, grads, states)
        ran = getattr(self, "_ran", None)
        if ran is not None:
            ran.add("fused" if self._kernel_ran else path or self.unfused_path)

    def _update_in_chunks(self, group, params, grads, states) -> None:
        """``_update`` on runs of tensors of about ``chunk_elements`` elements each.

        For rules that allocate temporaries as large as their inputs: a few megabytes at a
        time are reused from the heap, where the whole model's worth would be fresh pages
        (page faults) every step. Elementwise, per-tensor rules give the same result. Not for
        a step that goes to a kernel (no temporaries; one call instead of one per chunk),
        unless the kernels are known to be unavailable."""
        budget = self.chunk_elements
        if budget is None or len(params) == 1 or (self._kernel and not _fused.unavailable()):
            self._run_update(group, params, grads, states)
            return
        start, size = 0, 0
        for i, n in enumerate(map(_numel, params)):
            size += n
            if size >= budget:
                self._run_update(group, params[start:i + 1], grads[start:i + 1], states[start:i + 1])
                start, size = i + 1, 0
        if start < len(params):
            self._run_update(group, params[start:], grads[start:], states[start:])

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
    def _steps_on(device: torch.device, states: list[dict[str, Any]]) -> list[Tensor]:
        """The step counters, moved (in the state) to ``device`` as float32 where they are
        elsewhere: what torch's fused kernels on that device read (torch's fused optimizers
        keep them there too)."""
        steps = []
        for s in states:
            step = s["step"]
            if step.device != device:
                step = s["step"] = step.to(device=device, dtype=torch.float32)
            steps.append(step)
        return steps

    @classmethod
    def _adam_moments(cls, param: Tensor) -> dict[str, Tensor]:
        """Adam's state for ``param`` under torch's keys: a step counter and zeroed first and
        second moments (``exp_avg``, ``exp_avg_sq``) in the parameter's layout."""
        return {"step": cls._new_step(),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}

    @staticmethod
    def _new_step() -> Tensor:
        """A fresh step counter: a 0-dim float32 tensor (float64 under a float64 default), as torch."""
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        return torch.tensor(0.0, dtype=dtype)

    # ------------------------------------------------------------------------ state I/O
    def __getstate__(self) -> dict[str, Any]:
        # torch pickles defaults, state and groups only; keep the non-finite policy and count too
        return {**super().__getstate__(), "skip_nonfinite": self.skip_nonfinite,
                "skipped_steps": self.skipped_steps, "_group_keys": self._group_keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)  # torch's load_state_dict passes only state and groups: keep ours then
        self.skip_nonfinite = state.pop("skip_nonfinite", getattr(self, "skip_nonfinite", False))
        self.skipped_steps = state.pop("skipped_steps", getattr(self, "skipped_steps", 0))
        self._group_keys = state.pop("_group_keys", None) or getattr(self, "_group_keys", None) \
            or tuple(state["defaults"])  # (a pickle from before _group_keys)
        super().__setstate__(state)
        self._upgrade_state()

    def _upgrade_state(self) -> None:
        """What torch.optim's ``__setstate__`` does to an older state (from load_state_dict or
        a pickle): missing group keys take their defaults (:meth:`_completed_group`) and
        counters stored as numbers become 0-dim tensors (float32 in a fused group, as torch)."""
        default = self._new_step().dtype
        for group in self.param_groups:
            group.update(self._completed_group(group))
            step_dtype = torch.float32 if group.get("fused") else default
            for p in group["params"]:
                state = self.state.get(p)
                for key in self.scalar_state_keys if state else ():
                    value = state.get(key)
                    if value is not None and not isinstance(value, Tensor):
                        state[key] = torch.tensor(float(value), dtype=step_dtype if key == "step" else default)

    def _completed_group(self, saved: dict[str, Any]) -> dict[str, Any]:
        """``saved`` with the keys it may lack filled in (see ``load_defaults``) and
        ``load_overrides`` applied."""
        group = dict(saved)
        for key in ("foreach", "fused"):
            if key in self._group_keys and key not in group:
                group[key] = self.defaults[key]
        for key, value in self.load_defaults.items():
            if key in self._group_keys:
                group.setdefault(key, value)
        group.update((k, v) for k, v in self.load_overrides.items() if k in self._group_keys)
        return group

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict with an ``"optimlab"`` entry (:meth:`_state_extras`); the
        state-dict post-hooks see (and may replace) the finished dict, as in torch."""
        with _hooks.held(self, "state_post"):
            sd = super().state_dict()
        sd["optimlab"] = self._state_extras()
        return _hooks.run_state_dict_post_hooks(self, sd)

    def _state_extras(self) -> dict[str, Any]:
        """What optimlab adds to the state dict (its ``"optimlab"`` entry)."""
        return {"optimizer": type(self).__name__, "skipped_steps": self.skipped_steps,
                "skip_nonfinite": self.skip_nonfinite}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state: this optimizer's, or what torch.optim's optimizer of the same name
        loads (torch >= 1.12: group keys added since default as torch's ``__setstate__``
        does, per-parameter steps stored as numbers become tensors).

        Raises ValueError, with nothing here modified, if the state is not one this optimizer
        can step: another number of groups or parameters, a group lacking a hyperparameter
        that has no default or holding an invalid one, a parameter's state lacking an entry
        or holding one of another shape (or kind) than the update needs.

        As torch, the load-state-dict pre-hooks run first (on a shallow copy; what they return
        is what is checked and loaded) and the post-hooks last."""
        if isinstance(state_dict, dict):
            state_dict = _hooks.load_pre_hooked(self, state_dict)
        if (not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict)
                or "param_groups" not in state_dict):
            raise ValueError("load_state_dict expects a dict with 'state' and 'param_groups' "
                             "(as returned by optimizer.state_dict())")
        extra = state_dict.get("optimlab", {})
        self._check_loadable(state_dict)
        plain = {k: v for k, v in state_dict.items() if k != "optimlab"}
        with _hooks.held(self, "load_pre", "load_post"):
            super().load_state_dict(plain)
        for st in self.state.values():  # lazy views (torch keeps them): in-place multi-tensor ops refuse them
            for key, value in st.items():
                if isinstance(value, Tensor) and (value.is_neg() or value.is_conj() or value._is_zerotensor()):
                    st[key] = value.resolve_conj().resolve_neg() if not value._is_zerotensor() else value.clone()
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        if "skip_nonfinite" in extra:  # (checked with the rest; a state from before it keeps this one's)
            self.skip_nonfinite = extra["skip_nonfinite"]
        self._loaded(state_dict)
        _hooks.run_load_post_hooks(self)

    def _loaded(self, state_dict: dict[str, Any]) -> None:
        """After :meth:`load_state_dict` loaded ``state_dict`` (checked; before the post-hooks):
        where a subclass restores what it keeps besides torch's state."""

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        extra = state_dict.get("optimlab", {})
        if "skip_nonfinite" in extra:
            check.named(name, check.boolean, "skip_nonfinite", extra["skip_nonfinite"])
        source = extra.get("optimizer")
        origin = (f"it was saved by {_article(source)} {source}, not by {name}" if source and source != name
                  else f"it was saved by {_article(name)} {name} and is incomplete (edited since?)" if source
                  else f"incomplete, or not saved by {name}")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            count = len(groups) if isinstance(groups, (list, tuple)) else repr(type(groups).__name__)
            raise ValueError(f"the state has {count} param groups, this {name} has {len(self.param_groups)}")
        index_to_param = {}
        for i, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"param group {i} of the state must be a dict with a 'params' list, "
                                 f"got {saved!r:.80}")
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(f"param group {i}: the state has {len(saved['params'])} parameters, "
                                 f"this optimizer has {len(mine['params'])}")
            group = self._completed_group(saved)
            missing = [k for k in self._group_keys if k not in group]
            if missing:
                raise ValueError(f"param group {i} of the state lacks {missing}, which have no default: "
                                 f"{origin}")
            checked = {k: v for k, v in group.items() if k != "params"}
            self._check_hyperparameters(checked, f"param group {i} of the loaded state")
            index_to_param.update((index, (param, group)) for index, param in zip(saved["params"], mine["params"]))
        for index, st in state_dict["state"].items():
            if index not in index_to_param:
                raise ValueError(f"the state has an entry for parameter {index!r}, which is in no group")
            if not isinstance(st, dict):
                raise ValueError(f"the state of parameter {index} must be a dict, got {type(st).__name__}")
            # (keys of other optimizers' states: a state_dict of another optimizer; any other key,
            # the user's own, is kept as torch keeps it)
            foreign = (set(st) - self.state_keys) & _state_key_names()
            if foreign:
                raise ValueError(f"the state of parameter {index} has key(s) {sorted(foreign)} that "
                                 f"{name} does not use: the state_dict comes from another optimizer"
                                 + (f" ({source})" if source else ""))
            self._check_param_state(index, st, *index_to_param[index], origin)

    #: State entries that may be sparse (COO), as sparse gradients leave them (SGD's buffer).
    sparse_state_keys: ClassVar[frozenset[str]] = frozenset()

    def _check_scalar_state(self, where: str, key: str, value: float) -> None:
        """A loaded counter's value: ``step`` a whole number >= 0 (a negative or NaN count made
        the next step's bias corrections NaN). Subclasses add their own counters' ranges."""
        if key == "step" and not (math.isfinite(value) and value >= 0 and value == int(value)):
            raise ValueError(f"{where} must be a whole number >= 0 (the steps taken), got {value!r}")

    def _check_param_state(self, index: Any, state: dict[str, Any], param: Tensor, group: dict[str, Any],
                           origin: str) -> None:
        """One parameter's loaded state against what ``_init_state`` makes for it (built on
        the meta device: no memory): every entry present (but ``optional_state_keys``), each
        tensor of that shape, counters one number. torch's load casts the tensors to a real
        parameter's dtype and device; a complex parameter's keep theirs, so they must match."""
        if not state:
            return  # started at the first step
        template = {} if self.lazy_state else self._init_state(torch.empty_like(param, device="meta"), group)
        missing = sorted(set(template) - self.optional_state_keys - set(state))
        if missing:
            raise ValueError(f"the state of parameter {index} lacks {missing}: {origin}")
        for key, value in state.items():
            if key not in self.state_keys:
                continue  # (a key of the user's own: kept, not read)
            where = f"state[{index}][{key!r}]"
            if key in self.scalar_state_keys:
                number = isinstance(value, numbers.Real) and not isinstance(value, bool)
                if not number and not (isinstance(value, Tensor) and value.layout == torch.strided
                                       and value.numel() == 1 and not value.is_complex()):
                    raise ValueError(f"{where} must be a number or a one-element real tensor, got "
                                     + (f"a tensor of shape {tuple(value.shape)} ({value.dtype}, {value.layout})"
                                        if isinstance(value, Tensor) else repr(value)))
                if not (isinstance(value, Tensor) and value.device.type == "meta"):  # (meta: no value)
                    self._check_scalar_state(where, key, float(value))
                continue
            if value is None and self.lazy_state:
                continue  # e.g. an SGD buffer not yet started (older torch saved it as None)
            sparse_ok = key in self.sparse_state_keys and isinstance(value, Tensor) and value.layout == torch.sparse_coo
            if not isinstance(value, Tensor) or (value.layout != torch.strided and not sparse_ok):
                raise ValueError(f"{where} must be a dense tensor, got "
                                 + (f"layout {value.layout}" if isinstance(value, Tensor) else repr(value)))
            expected = template[key].shape if key in template else param.shape
            if value.shape != expected:
                raise ValueError(f"{where} has shape {tuple(value.shape)} but the parameter has shape "
                                 f"{tuple(param.shape)}" + (f" (it needs {tuple(expected)})"
                                                            if expected != param.shape else ""))
            if (param.is_complex() or value.is_complex()) and value.dtype != param.dtype:
                raise ValueError(f"{where} has dtype {value.dtype} but the parameter has dtype {param.dtype}")


def _rule_on_real_views(rule: Callable, param: Tensor, grad: Tensor, state: dict[str, Any],
                        group: dict[str, Any]) -> None:
    """A complex tensor through a rule for real ones: its real and imaginary parts as
    independent elements (torch's convention); what the rule creates is kept complex."""
    real_param = torch.view_as_real(param)
    real = {k: torch.view_as_real(v) if isinstance(v, Tensor) and v.is_complex() else v for k, v in state.items()}
    rule(real_param, torch.view_as_real(grad), real, group)
    for k, v in real.items():  # what the rule created (e.g. SGD's momentum buffer), back in the state
        if k not in state:
            state[k] = torch.view_as_complex(v) if isinstance(v, Tensor) and v.shape == real_param.shape else v


def _mutable(value: Any) -> bool:
    """Whether a hyperparameter's value can change in place and is cheap to read: a CPU
    tensor, a list, or a tuple holding a CPU tensor (tensor ``betas``)."""
    if isinstance(value, Tensor):
        return value.is_cpu
    if isinstance(value, list):
        return True
    return isinstance(value, tuple) and any(isinstance(v, Tensor) and v.is_cpu for v in value)


def _all_finite(grads: list[Tensor]) -> bool:
    """One reduction pass over every gradient (an inf-norm is NaN or inf iff one entry is)."""
    dense = [g.coalesce()._values() if g.is_sparse else g for g in grads]
    dense = [torch.view_as_real(g) if g.is_complex() else g for g in dense if g.numel()]
    if not dense:
        return True
    norms = torch._foreach_norm(dense, float("inf"))
    return bool(torch.stack([n.float() for n in norms]).isfinite().all())


def _article(name: str) -> str:
    """"an" before a class name read with a vowel sound (Adam, RMSprop, SGD), else "a"."""
    name = name.split(".")[-1]
    return "an" if name[:1] in "AEIOU" or name.startswith(("RMS", "SGD")) else "a"
