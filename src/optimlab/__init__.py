"""optimlab: train, compare and understand neural-network optimizers."""

__version__ = "0.1.0"

from optimlab import optim  # noqa: E402  (the core every other module stands on)

__all__ = ["optim", "__version__"]
