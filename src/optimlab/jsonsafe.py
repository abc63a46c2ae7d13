"""Plain, JSON-safe copies of values: shared by the training history, its checkpoints and the
run store (which must not reach up into ``optimlab.train`` for it)."""

from __future__ import annotations

import math
import numbers

__all__ = ["clean"]


def clean(value):
    """A JSON- and ``weights_only``-safe copy: plain Python types; non-finite floats
    become None (strict JSON has no NaN)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return str(value)  # plain str (e.g. torch.__version__ is a str subclass)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value
