"""optimlab: train, compare and understand neural-network optimizers."""

__version__ = "0.1.0"

from optimlab import optim  # noqa: E402  (the core every other module stands on)

__all__ = ["optim", "fit", "diagnose", "lr_find", "__version__"]

_LAZY = {"fit": "optimlab.train", "diagnose": "optimlab.train.diagnostics", "lr_find": "optimlab.lrfind"}  # imported on first use


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'optimlab' has no attribute {name!r}")
