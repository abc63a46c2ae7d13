"""Weight initialisation schemes for Linear and Conv layers, on top of
``torch.nn.init`` (which does the sampling; nothing here re-implements it).

With ``n_in`` / ``n_out`` the layer's fan-in / fan-out (for a convolution,
channels × kernel size), the weights are drawn with mean 0 and

================  ====================================  ============================
scheme            std                                   sampled by torch.nn.init
================  ====================================  ============================
xavier_normal     ``sqrt(2 / (n_in + n_out))``          ``xavier_normal_``
xavier_uniform    same std, U(±sqrt(6 / (n_in+n_out)))  ``xavier_uniform_``
he_normal         ``sqrt(2 / n_in)``  (for ReLU)        ``kaiming_normal_`` (relu)
he_uniform        same std, U(±sqrt(6 / n_in))          ``kaiming_uniform_`` (relu)
lecun_normal      ``sqrt(1 / n_in)``  (for SELU/tanh)   ``kaiming_normal_`` (linear)
lecun_uniform     same std, U(±sqrt(3 / n_in))          ``kaiming_uniform_`` (linear)
normal            the ``std`` you pass (the naive way)  ``normal_``
================  ====================================  ============================

``glorot_*`` and ``kaiming_*`` are accepted as aliases. Xavier keeps the
signal's variance about constant forwards *and* backwards for tanh/sigmoid;
He doubles LeCun's variance because ReLU zeroes half of the signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

# Layers whose weight is (out, in/groups, *kernel), as torch's fan computation expects.
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_SAMPLERS: dict[str, Callable] = {
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "he_normal": partial(nn.init.kaiming_normal_, mode="fan_in", nonlinearity="relu"),
    "he_uniform": partial(nn.init.kaiming_uniform_, mode="fan_in", nonlinearity="relu"),
    "lecun_normal": partial(nn.init.kaiming_normal_, mode="fan_in", nonlinearity="linear"),
    "lecun_uniform": partial(nn.init.kaiming_uniform_, mode="fan_in", nonlinearity="linear"),
    "normal": nn.init.normal_,
}
_ALIASES = {"glorot_normal": "xavier_normal", "glorot_uniform": "xavier_uniform",
            "kaiming_normal": "he_normal", "kaiming_uniform": "he_uniform"}
SCHEMES = tuple(_SAMPLERS) + tuple(_ALIASES)


def _canonical(scheme: str) -> str:
    name = _ALIASES.get(scheme, scheme)
    if name not in _SAMPLERS:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got scheme={scheme!r}")
    return name


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """``(n_in, n_out)`` of a Linear/Conv weight, as ``torch.nn.init`` computes them."""
    receptive_field = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive_field, weight.shape[0] * receptive_field


def weight_std(scheme: str, n_in: int, n_out: int, std: float | None = None) -> float:
    """The standard deviation ``scheme`` gives a layer with these fans (the table above)."""
    name = _canonical(scheme)
    if name == "normal":
        return _check_std(std)
    if name.startswith("xavier"):
        return math.sqrt(2.0 / (n_in + n_out))
    return math.sqrt((2.0 if name.startswith("he") else 1.0) / n_in)


def _check_std(std) -> float:
    if std is None or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
        raise ValueError(f"scheme 'normal' needs a std > 0, got std={std!r}")
    return float(std)


def apply(model: nn.Module, scheme: str, *, std: float | None = None, zero_bias: bool = True,
          generator: torch.Generator | None = None) -> list[str]:
    """Initialise every Linear and Conv{1,2,3}d weight in ``model`` with ``scheme``
    and (by default) zero their biases. Returns the names of the layers changed.

    ``std`` is required by, and only allowed with, the ``normal`` scheme.
    ``generator`` makes the draw reproducible without touching the global seed.
    """
    name = _canonical(scheme)
    if name == "normal":
        sampler = partial(nn.init.normal_, mean=0.0, std=_check_std(std))
    elif std is not None:
        raise ValueError(f"std is fixed by scheme {scheme!r}; pass std only with 'normal', got std={std!r}")
    else:
        sampler = _SAMPLERS[name]
    changed = []
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if not isinstance(module, LAYERS):
                continue
            sampler(module.weight, generator=generator)
            if zero_bias and module.bias is not None:
                nn.init.zeros_(module.bias)
            changed.append(module_name)
    if not changed:
        raise ValueError(f"model has no Linear or Conv layers to initialise: model={type(model).__name__}")
    return changed
