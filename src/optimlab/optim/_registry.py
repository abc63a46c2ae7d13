"""Look optimizers up by name, in torch's or Keras's convention.

Optimizers register themselves: a class declares, in its own body,

    registry_name = "adopt"                  # the name create() takes
    registry_aliases = ("adopt-adam",)       # optional: other spellings
    registry_convention = "keras"            # optional: "torch" unless said

and the registry finds it. On the first lookup (``available``, ``get``, ``create``, or an
unknown attribute of :mod:`optimlab.optim`) it imports every public module of the
``optimlab.optim`` package and its subpackages (``pkgutil``), and collects the classes
that declare a ``registry_name`` in their own ``__dict__`` (a subclass does not inherit its
parent's name). ``import optimlab.optim`` stays as fast as before: nothing is scanned until a
name is looked up. :func:`register` still adds a name by hand (a plugin's optimizer).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any

import torch

#: Modules never scanned: the command line (it imports what sits above the optimizers).
_SKIP = ("optimlab.optim.cli",)

# convention -> name -> class or "module:Class" (a string is imported when first asked for)
_REGISTRY: dict[str, dict[str, Any]] = {"torch": {}, "keras": {}}
# convention -> alias -> name
_ALIASES: dict[str, dict[str, str]] = {"torch": {}, "keras": {}}
_discovered = False


class RegistryConflictError(RuntimeError):
    """Two optimizers declare the same name (or alias) in one convention."""


def _add(convention: str, name: str, target: Any, aliases: tuple[str, ...] = (), where: str = "") -> None:
    table = _REGISTRY.setdefault(convention, {})
    alias_table = _ALIASES.setdefault(convention, {})
    name = name.lower()
    for key in (name, *(a.lower() for a in aliases)):
        owner = table.get(key, table.get(alias_table.get(key, ""), None))
        if owner is not None and owner is not target:
            raise RegistryConflictError(f"optimizer name {key!r} (convention {convention!r}) is declared twice: "
                                        f"by {where or target!r} and by {owner!r}")
    table[name] = target
    for alias in aliases:
        alias_table[alias.lower()] = name


def _declarations(module) -> list[type]:
    """The classes ``module`` defines that declare a registry name in their own body."""
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and obj.__module__ == module.__name__ and "registry_name" in obj.__dict__]


def _discover() -> None:
    """Import every public module of optimlab.optim (once) and register what they declare."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # a module that looks a name up while it is imported does not recurse
    try:
        _scan()
    except BaseException:
        _discovered = False
        raise


def _scan() -> None:
    package = importlib.import_module("optimlab.optim")
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, prefix="optimlab.optim."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_") or info.name in _SKIP:
            continue
        modules.append(importlib.import_module(info.name))
    for module in modules:
        for cls in _declarations(module):
            _add(cls.__dict__.get("registry_convention", "torch"), cls.registry_name, cls,
                 tuple(cls.__dict__.get("registry_aliases", ())), where=f"{cls.__module__}.{cls.__qualname__}")


def register(name: str, target: Any, convention: str = "torch") -> None:
    """Make ``create(name, ..., convention=convention)`` build ``target``: a class, or
    "module:Class" (imported when first asked for). Optimizers in optimlab.optim need not
    call this: they declare ``registry_name`` (see the module docstring)."""
    _discover()  # a name given by hand replaces a declared one
    _REGISTRY.setdefault(convention, {})[name.lower()] = target
    _ALIASES.setdefault(convention, {})


def _table(convention: str) -> dict[str, Any]:
    _discover()
    if convention not in _REGISTRY:
        raise ValueError(f"convention must be one of {sorted(_REGISTRY)}, got {convention!r}")
    return _REGISTRY[convention]


def available(convention: str = "torch") -> list[str]:
    """The names :func:`create` accepts for ``convention`` ("torch" or "keras")."""
    return sorted(_table(convention))


def aliases(convention: str = "torch") -> dict[str, str]:
    """Other spellings :func:`create` accepts for ``convention``: alias -> name."""
    _table(convention)
    return dict(_ALIASES.get(convention, {}))


def get(name: str, convention: str = "torch") -> type[torch.optim.Optimizer]:
    """The optimizer class registered as ``name``."""
    table = _table(convention)
    key = name.lower() if isinstance(name, str) else name
    if isinstance(key, str):
        # aliases of the convention first, then any convention's (as before: one alias table)
        key = _ALIASES[convention].get(key) or next(
            (a[key] for a in _ALIASES.values() if key in a), key)
    if key not in table:
        close = difflib.get_close_matches(str(key), list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r} for convention {convention!r}.{hint} "
                         f"Known: {', '.join(sorted(table))}")
    target = table[key]
    if isinstance(target, str):
        module, cls = target.split(":")
        return getattr(importlib.import_module(module), cls)
    return target


def class_named(attr: str) -> type | None:
    """The registered torch-convention class whose ``__name__`` is ``attr`` (for the lazy
    attributes of :mod:`optimlab.optim`), or None."""
    _discover()
    for target in _REGISTRY["torch"].values():
        if not isinstance(target, str) and target.__name__ == attr:
            return target
    return None


def create(name: str, params: Any, convention: str = "torch", **hyper: Any) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` on ``params`` with hyperparameters ``hyper``.

    >>> opt = create("adam", model.parameters(), lr=3e-4)                       # doctest: +SKIP
    >>> opt = create("rmsprop", model.parameters(), convention="keras", rho=0.9)  # doctest: +SKIP
    """
    return get(name, convention)(params, **hyper)
