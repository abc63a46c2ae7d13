"""Hyperparameter checks shared by every optimizer.

Each check raises ``ValueError`` naming the parameter and the offending value, so a
typo is caught at construction, not as a NaN a thousand steps later.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable

import torch

Check = Callable[[str, Any], None]


class InputTypeError(TypeError, ValueError):
    """Input of the wrong kind (a single tensor where an iterable of them goes, a string
    where a number goes, a list where a param group dict goes): a ``TypeError``, what
    torch.optim raises there, and a ``ValueError``, as every optimlab input error."""


class MissingParamsError(ValueError, KeyError):
    """A param group dict without a "params" entry: a ``KeyError``, what torch.optim
    raises, and a ``ValueError``, as every optimlab input error."""

    __str__ = BaseException.__str__  # the message as written, not KeyError's repr of it


class UnsupportedSettingError(ValueError, RuntimeError):
    """A setting the optimizer cannot run with (``fused=True`` with ``foreach=True``, or on
    a device without fused kernels; a tensor ``lr`` with ``foreach=True`` where torch
    refuses it; ``differentiable=True``; a parameter made under ``torch.inference_mode()``,
    stepped outside it): a ``ValueError``, as every optimlab input error, and a
    ``RuntimeError``, what torch.optim raises for most of these."""


def refuse_inference_params(owner: str, params, where) -> None:
    """Raise UnsupportedSettingError if, outside ``torch.inference_mode()``, a parameter is an
    inference tensor: torch refuses to update one in place there (its default step raises
    RuntimeError part-way), and a kernel would write it behind that check.
    ``where(p)`` says which parameter, for the message."""
    if torch.is_inference_mode_enabled():
        return
    for p in params:
        if p.is_inference():
            raise UnsupportedSettingError(
                f"{owner}: {where(p)} is an inference tensor (made under torch.inference_mode()), which "
                "cannot be updated in place outside inference mode; step inside torch.inference_mode(), "
                "or make it a normal tensor first (e.g. p.data = p.data.clone() outside inference mode)")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, torch.Tensor)):
        raise InputTypeError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be a real number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def non_negative(name: str, value: Any) -> None:
    if _as_float(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def positive(name: str, value: Any) -> None:
    if _as_float(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def unit_interval(name: str, value: Any) -> None:
    """A decay rate in [0, 1)."""
    v = _as_float(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def closed_unit_interval(name: str, value: Any) -> None:
    v = _as_float(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def betas(name: str, value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InputTypeError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    for i, b in enumerate(value):
        try:
            unit_interval(f"{name}[{i}]", b)
        except ValueError as err:
            raise type(err)(f"{err} ({name}={value!r})") from None
    if isinstance(value[0], torch.Tensor) != isinstance(value[1], torch.Tensor):
        raise ValueError(f"{name} must be both numbers or both tensors (as torch.optim requires), got {value!r}")


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def optional_boolean(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None, got {value!r}")


def must_be_false(name: str, value: Any) -> None:
    boolean(name, value)
    if value:
        raise UnsupportedSettingError(f"{name}=True is not supported by optimlab optimizers, got {value!r}")


def anything(name: str, value: Any) -> None:
    """For bookkeeping keys (e.g. a counter) that carry no maths."""


def named(owner: str, checked: Callable[[str, Any], None], name: str, value: Any) -> Any:
    """``value`` once ``checked(name, value)`` passed; its error, prefixed with ``owner``, if not."""
    try:
        checked(name, value)
    except ValueError as err:
        raise type(err)(f"{owner}: {err}") from None
    return value


def checked_setting(name: str, checked: Callable[[Any, Any], Any], doc: str = "") -> property:
    """A setting kept as an attribute (Lookahead's ``k``, SAM's ``rho``, a Keras twin's
    ``clipnorm``) whose every assignment, in the constructor or by hand mid-training, runs
    ``checked(owner, value)`` first: it raises ValueError (naming the setting and the value)
    or returns the value to keep (in ``owner._<name>``). A bad value is refused where it is
    written, before a step can use it."""
    attr = "_" + name

    def get(self):
        return getattr(self, attr)

    def set_(self, value):
        setattr(self, attr, checked(self, value))

    return property(get, set_, doc=doc or f"``{name}`` (checked on every assignment)")
