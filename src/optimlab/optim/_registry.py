"""Look optimizers up by name, in torch's or Keras's convention."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import torch

# convention -> name -> "module:Class"; a module is imported when its optimizer is first asked for.
_REGISTRY: dict[str, dict[str, str]] = {
    "torch": {
        "sgd": "optimlab.optim.sgd:SGD",
        "momentum": "optimlab.optim.sgd:Momentum",
        "nag": "optimlab.optim.sgd:NAG",
        "adagrad": "optimlab.optim.adaptive:Adagrad",
        "rmsprop": "optimlab.optim.adaptive:RMSprop",
        "adadelta": "optimlab.optim.adaptive:Adadelta",
        "adam": "optimlab.optim.adam:Adam",
        "adamw": "optimlab.optim.adam:AdamW",
        "adamax": "optimlab.optim.adam:Adamax",
        "nadam": "optimlab.optim.adam:NAdam",
        "radam": "optimlab.optim.radam:RAdam",
        "lion": "optimlab.optim.lion:Lion",
        "lamb": "optimlab.optim.trust:LAMB",
        "lars": "optimlab.optim.trust:LARS",
        "adafactor": "optimlab.optim.adafactor:Adafactor",
        "muon": "optimlab.optim.muon:Muon",
        "muon_adamw": "optimlab.optim.muon:MuonWithAuxAdamW",
        "schedulefree_adamw": "optimlab.optim.schedule_free:ScheduleFreeAdamW",
        "schedulefree_sgd": "optimlab.optim.schedule_free:ScheduleFreeSGD",
        "lookahead": "optimlab.optim.lookahead:LookaheadByName",
        "sam": "optimlab.optim.sam:SAMByName",
    },
    "keras": {name.lower(): f"optimlab.optim.keras:{name}"
              for name in ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam")},
}
_ALIASES = {"nesterov": "nag", "sgd_momentum": "momentum", "sgd-momentum": "momentum",
            "muon-adamw": "muon_adamw", "schedulefree-adamw": "schedulefree_adamw",
            "schedulefree-sgd": "schedulefree_sgd"}


def register(name: str, target: str, convention: str = "torch") -> None:
    """Make ``create(name, ..., convention=convention)`` build ``target`` ("module:Class")."""
    _REGISTRY.setdefault(convention, {})[name.lower()] = target


def _table(convention: str) -> dict[str, str]:
    if convention not in _REGISTRY:
        raise ValueError(f"convention must be one of {sorted(_REGISTRY)}, got {convention!r}")
    return _REGISTRY[convention]


def available(convention: str = "torch") -> list[str]:
    """The names :func:`create` accepts for ``convention`` ("torch" or "keras")."""
    return sorted(_table(convention))


def get(name: str, convention: str = "torch") -> type[torch.optim.Optimizer]:
    """The optimizer class registered as ``name``."""
    table = _table(convention)
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in table:
        close = difflib.get_close_matches(str(key), list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r} for convention {convention!r}.{hint} "
                         f"Known: {', '.join(sorted(table))}")
    module, cls = table[key].split(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, params: Any, convention: str = "torch", **hyper: Any) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` on ``params`` with hyperparameters ``hyper``.

    >>> opt = create("adam", model.parameters(), lr=3e-4)                       # doctest: +SKIP
    >>> opt = create("rmsprop", model.parameters(), convention="keras", rho=0.9)  # doctest: +SKIP
    """
    return get(name, convention)(params, **hyper)
