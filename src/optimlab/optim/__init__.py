"""Optimizers: exact twins of torch.optim (this namespace) and of Keras (``optimlab.optim.keras``).

Every class is a ``torch.optim.Optimizer``. Look them up by name with :func:`create` and
:func:`available`. An optimizer added to this package (a module declaring ``registry_name``,
see docs/contributing.md) is also an attribute here, ``optimlab.optim.ADOPT``, without being
listed in this file: :func:`__getattr__` asks the registry.
"""

from optimlab.optim._base import GradientMismatchError, Optimizer, UnknownArgumentError
from optimlab.optim._registry import aliases, available, create, get, register
from optimlab.optim.adam import Adam, Adamax, AdamW, NAdam, Nadam
from optimlab.optim.adaptive import Adadelta, Adagrad, RMSprop
from optimlab.optim.sgd import NAG, SGD, Momentum
from optimlab.optim.adafactor import Adafactor
from optimlab.optim.lion import Lion
from optimlab.optim.lookahead import Lookahead
from optimlab.optim.sam import SAM
from optimlab.optim.groups import param_groups
from optimlab.optim.muon import Muon, MuonWithAuxAdamW, muon_param_groups
from optimlab.optim.radam import RAdam
from optimlab.optim.schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from optimlab.optim.trust import LAMB, LARS

__all__ = [
    "Optimizer", "UnknownArgumentError", "GradientMismatchError", "aliases", "available", "create", "get", "register",
    "SGD", "Momentum", "NAG", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "Nadam",
    "RAdam", "Lion", "LAMB", "LARS", "Lookahead", "ScheduleFreeAdamW", "ScheduleFreeSGD", "Muon",
    "MuonWithAuxAdamW", "muon_param_groups", "Adafactor", "SAM", "param_groups",
]


def __getattr__(name: str):
    """A registered optimizer class not imported above (``optimlab.optim.ADOPT``), on first use."""
    from optimlab.optim import _registry

    if name == "keras":  # the Keras twins' subpackage, after a bare `import optimlab.optim`
        import importlib

        return importlib.import_module("optimlab.optim.keras")
    if not name.startswith("_"):
        cls = _registry.class_named(name)
        if cls is not None:
            globals()[name] = cls
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    from optimlab.optim import _registry

    _registry._discover()
    return sorted(set(globals()) | {c.__name__ for c in _registry._REGISTRY["torch"].values()
                                     if not isinstance(c, str)})
