"""Exponential moving average (Polyak averaging) of model weights.

The raw weights of SGD keep jittering around a minimum with the gradient
noise; their running average sits closer to it. Keep the average next to the
model, update it after every optimizer step, and evaluate with it::

    ema = EMA(model, decay=0.999, warmup=True)
    for batch in loader:
        ...; optimizer.step(); ema.update()
    with ema.average_parameters():   # averaged weights in, raw weights back out after
        evaluate(model)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _shadow_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class EMA:
    """Shadow weights ``θ̄`` updated by ``θ̄ ← d_t · θ̄ + (1 − d_t) · θ``.

    ``d_t = decay``, or with ``warmup=True`` ``d_t = min(decay, (1 + n)/(10 + n))``
    where ``n`` counts earlier updates (TensorFlow's ``num_updates`` rule): early
    on, when the weights still move fast, the average forgets the random
    initialisation quickly instead of dragging it along for ~1/(1 − decay) steps.
    ``θ̄`` starts as a copy of the weights (in float32 for float16/bfloat16 weights, so that
    small updates are not rounded away). Only floating-point parameters are averaged;
    buffers (e.g. BatchNorm statistics) are left to the model.

    ``model``: an ``nn.Module``, or an iterable of parameters (named ``"[i]"``).
    Build the EMA after moving the model to its device.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = False):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got decay={decay!r}")
        named = model.named_parameters() if isinstance(model, nn.Module) else (
            (f"[{i}]", p) for i, p in enumerate(model))
        self.params = {name: p for name, p in named if torch.is_floating_point(p)}
        if not self.params:
            raise ValueError(f"model has no floating-point parameters to average: model={model!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        # 16-bit weights are averaged in float32: a bfloat16 shadow would drop every update
        # smaller than its 8-bit mantissa's resolution, i.e. (1 - decay)·Δθ for decay near 1.
        self.shadow = {name: p.detach().to(_shadow_dtype(p.dtype), copy=True) for name, p in self.params.items()}

    def current_decay(self) -> float:
        """``d_t`` for the next update (formula in the class doc)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the average; call after each ``optimizer.step()``."""
        weight = 1.0 - self.current_decay()
        for name, p in self.params.items():
            shadow = self.shadow[name]
            shadow.lerp_(p.detach().to(shadow.dtype), weight)  # θ̄ + (1 − d)(θ − θ̄)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self) -> None:
        """Overwrite the model's weights with the average, for good (e.g. before export)."""
        for name, p in self.params.items():
            p.copy_(self.shadow[name])

    @contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Swap the averaged weights into the model for the ``with`` block, then
        put the raw weights back — even if the block raises. The parameter
        tensors are written in place, so optimizers holding them stay valid."""
        with torch.no_grad():
            raw = {name: p.detach().clone() for name, p in self.params.items()}
            self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(raw[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {name: t.clone() for name, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the average; the parameter names and shapes must match this model's."""
        shadow = state["shadow"]
        if set(shadow) != set(self.params):
            missing, extra = sorted(set(self.params) - set(shadow)), sorted(set(shadow) - set(self.params))
            raise ValueError(f"state shadow does not match the model: missing={missing}, unexpected={extra}")
        for name, tensor in shadow.items():
            if tensor.shape != self.params[name].shape:
                raise ValueError(f"shadow[{name!r}] has shape {tuple(tensor.shape)}, "
                                 f"the model's is {tuple(self.params[name].shape)}")
        num_updates = state["num_updates"]
        if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 0:
            raise ValueError(f"num_updates must be an integer >= 0, got num_updates={num_updates!r}")
        decay = state["decay"]
        if not (isinstance(decay, float) and math.isfinite(decay) and 0.0 <= decay < 1.0):
            raise ValueError(f"decay must be in [0, 1), got decay={decay!r}")
        self.decay, self.warmup, self.num_updates = decay, bool(state["warmup"]), num_updates
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, warmup={self.warmup}, num_updates={self.num_updates})"
