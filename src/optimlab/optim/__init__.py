"""Optimizers: exact twins of torch.optim (this namespace) and of Keras (``optimlab.optim.keras``).

Every class is a ``torch.optim.Optimizer``. Look them up by name with :func:`create` and
:func:`available`.
"""

from optimlab.optim._base import Optimizer, UnknownArgumentError
from optimlab.optim._registry import available, create, get, register
from optimlab.optim.adam import Adam, Adamax, AdamW, NAdam, Nadam
from optimlab.optim.adaptive import Adadelta, Adagrad, RMSprop
from optimlab.optim.sgd import NAG, SGD, Momentum

__all__ = [
    "Optimizer", "UnknownArgumentError", "available", "create", "get", "register",
    "SGD", "Momentum", "NAG", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "Nadam",
]
