"""optimlab: train, compare and understand neural-network optimizers."""

__version__ = "0.1.0"

from optimlab import optim  # noqa: E402  (the core every other module stands on)

__all__ = ["optim", "fit", "diagnose", "lr_find", "__version__"]

_LAZY = {"fit": "optimlab.train", "diagnose": "optimlab.train.diagnostics", "lr_find": "optimlab.lrfind"}  # imported on first use


# optimlab.train, optimlab.ema, ... work after a bare `import optimlab`, imported on first use
_SUBMODULES = {"train", "schedules", "ema", "clip", "init", "data", "models", "store", "landscape", "sweep",
               "showdown", "lrfind", "report", "distributed", "cpu", "jsonsafe"}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"optimlab.{name}")  # the import binds it here too
    raise AttributeError(f"module 'optimlab' has no attribute {name!r}")
