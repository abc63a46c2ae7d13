"""torch.optim.Optimizer's state-dict hooks, run by optimizers whose ``state_dict`` and
``load_state_dict`` do more than torch's (check a state before loading it, add their own
entries), so that the hooks run where torch runs them: load pre-hooks first, on a shallow copy,
each may return a replacement, and what they return is what gets checked and loaded; load
post-hooks last, after everything is loaded; state-dict post-hooks on the finished dict, each
may return a replacement (torch 2.13's ``Optimizer.load_state_dict`` and ``state_dict``)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Iterator

import torch

__all__ = ["held", "load_pre_hooked", "run_load_post_hooks", "run_state_dict_pre_hooks",
           "run_state_dict_post_hooks"]

_KINDS = {"load_pre": "_optimizer_load_state_dict_pre_hooks", "load_post": "_optimizer_load_state_dict_post_hooks",
          "state_pre": "_optimizer_state_dict_pre_hooks", "state_post": "_optimizer_state_dict_post_hooks"}


def load_pre_hooked(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``state_dict`` passed through the optimizer's load-state-dict pre-hooks."""
    state_dict = state_dict.copy()
    for hook in list(getattr(optimizer, _KINDS["load_pre"], {}).values()):
        result = hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    return state_dict


def run_load_post_hooks(optimizer: torch.optim.Optimizer) -> None:
    for hook in list(getattr(optimizer, _KINDS["load_post"], {}).values()):
        hook(optimizer)


def run_state_dict_pre_hooks(optimizer: torch.optim.Optimizer) -> None:
    for hook in list(getattr(optimizer, _KINDS["state_pre"], {}).values()):
        hook(optimizer)


def run_state_dict_post_hooks(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    for hook in list(getattr(optimizer, _KINDS["state_post"], {}).values()):
        result = hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    return state_dict


@contextlib.contextmanager
def held(optimizer: torch.optim.Optimizer, *kinds: str) -> Iterator[None]:
    """Within: the optimizer's hooks of these kinds ("load_pre", "load_post", "state_pre",
    "state_post") are set aside, for a call of torch's method that would run them a second time
    or too early. The same dicts come back (handles registered on them stay valid)."""
    saved = {}
    for kind in kinds:
        attr = _KINDS[kind]
        if attr in optimizer.__dict__:
            saved[attr] = optimizer.__dict__[attr]
            setattr(optimizer, attr, OrderedDict())
    try:
        yield
    finally:
        for attr, hooks in saved.items():
            setattr(optimizer, attr, hooks)
