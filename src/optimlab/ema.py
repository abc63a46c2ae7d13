"""Exponential moving average (Polyak averaging) of model weights, and of BatchNorm statistics.

The raw weights of SGD keep jittering around a minimum with the gradient
noise; their running average sits closer to it. Keep the average next to the
model, update it after every optimizer step, and evaluate with it::

    ema = EMA(model, decay=0.999, warmup=True)
    for batch in loader:
        ...; optimizer.step(); ema.update()
    with ema.average_parameters():   # averaged weights (and buffers) in, raw ones back out after
        evaluate(model)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from optimlab.optim._validation import checked_setting

BUFFER_MODES = ("average", "copy")


def _shadow_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class EMA:
    """Shadow weights ``θ̄`` updated by ``θ̄ ← d_t · θ̄ + (1 − d_t) · θ``.

    ``d_t = decay``, or with ``warmup=True`` ``d_t = min(decay, (1 + n)/(10 + n))``
    where ``n`` counts earlier updates (TensorFlow's ``num_updates`` rule): early
    on, when the weights still move fast, the average forgets the random
    initialisation quickly instead of dragging it along for ~1/(1 − decay) steps.
    ``θ̄`` starts as a copy of the weights (in float32 for float16/bfloat16 weights, so that
    small updates are not rounded away). Only floating-point parameters are averaged.
    Polyak & Juditsky (1992), "Acceleration of stochastic approximation by averaging".

    ``buffers``: what the model's floating-point buffers (BatchNorm ``running_mean``
    and ``running_var``) are while the averaged weights are in the model:

    * ``"average"`` (default): averaged with the same rule as the parameters, from the
      same start — ``torch.optim.swa_utils.AveragedModel(use_buffers=True)`` with
      ``get_ema_multi_avg_fn(decay)``, and timm's ``ModelEmaV2``. Default because
      it makes a BatchNorm model validate correctly at the averaged weights: the
      running statistics are themselves slow averages of the activations of recent
      weights, so their average matches the averaged weights; the live statistics
      describe the raw weights, whose activations the averaged weights do not produce.
    * ``"copy"``: the live model's current buffers are used as they are (copied from
      the model). Like ``AveragedModel(use_buffers=False)``, except that one keeps the
      buffers of its private copy from when it was built until
      ``torch.optim.swa_utils.update_bn`` recomputes them; here they are the model's
      current ones. For exact statistics at the averaged weights, run ``update_bn``
      inside :meth:`average_parameters` (the block's changes are undone after).

    Integer buffers (``num_batches_tracked``) are never averaged: the model's own are
    used. (torch's ``AveragedModel(use_buffers=True)`` blends them too, truncating.)

    ``model``: an ``nn.Module``, or an iterable of parameters (named ``"[i]"``; no buffers).
    Build the EMA after moving the model to its device.

    Raises ``ValueError`` for a ``decay`` outside [0, 1), a ``warmup`` other than True or
    False, ``buffers`` other than ``"average"``/``"copy"``, or a model with no floating-point
    parameters. ``decay`` and ``warmup`` may be changed between updates; each assignment is
    checked the same way (``buffer_mode`` is fixed).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = False, buffers: str = "average"):
        self.decay, self.warmup = decay, warmup  # (checked: see below)
        if not isinstance(buffers, str) or buffers not in BUFFER_MODES:
            raise ValueError(f"buffers must be 'average' or 'copy', got buffers={buffers!r}")
        is_module = isinstance(model, nn.Module)
        named = model.named_parameters() if is_module else ((f"[{i}]", p) for i, p in enumerate(model))
        self.params = {name: p for name, p in named if torch.is_floating_point(p)}
        if not self.params:
            raise ValueError(f"model has no floating-point parameters to average: model={model!r}")
        self._buffer_mode = buffers
        self.num_updates = 0
        # 16-bit weights are averaged in float32: a bfloat16 shadow would drop every update
        # smaller than its 8-bit mantissa's resolution, i.e. (1 - decay)·Δθ for decay near 1.
        self.shadow = {name: p.detach().to(_shadow_dtype(p.dtype), copy=True) for name, p in self.params.items()}
        # buffers are looked up by name at each use: module.to() replaces buffer tensors (not parameters)
        self._module = model if is_module else None
        self._buffer_names = [name for name, b in self.all_buffers.items()
                              if torch.is_floating_point(b)] if buffers == "average" else []
        self.buffer_shadow = {name: b.detach().to(_shadow_dtype(b.dtype), copy=True)
                              for name, b in self.buffers.items()}
        self._buffers_pending = False  # a state without buffer averages was loaded: start them at the next use

    # decay and warmup may be changed between updates: each assignment is checked, as the constructor's
    decay = checked_setting("decay", lambda self, v: _checked_decay(v),
                            "The decay d in [0, 1) (a float; checked on every assignment).")
    warmup = checked_setting("warmup", lambda self, v: _checked_warmup(v),
                             "Whether the decay ramps up as ``min(d, (1 + n)/(10 + n))`` (True or False; "
                             "checked on every assignment).")

    @property
    def buffer_mode(self) -> str:
        """``"average"`` or ``"copy"``, fixed at construction (which buffers are averaged)."""
        return self._buffer_mode

    @property
    def all_buffers(self) -> dict[str, torch.Tensor]:
        """Every buffer of the model, by name (restored after :meth:`average_parameters`)."""
        return dict(self._module.named_buffers()) if self._module is not None else {}

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """The model's buffers that are averaged (floating-point, ``buffers="average"``), by name."""
        if not self._buffer_names:
            return {}
        live = self.all_buffers
        return {name: live[name] for name in self._buffer_names}

    def current_decay(self) -> float:
        """``d_t`` for the next update (formula in the class doc)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def _start_pending_buffers(self) -> None:
        if self._buffers_pending:
            for name, b in self.buffers.items():
                self.buffer_shadow[name].copy_(b)
            self._buffers_pending = False

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights (and, with ``buffers="average"``, the floating buffers)
        into the average; call after each ``optimizer.step()``."""
        self._start_pending_buffers()
        weight = 1.0 - self.current_decay()
        for shadows, live in ((self.shadow, self.params), (self.buffer_shadow, self.buffers)):
            for name, t in live.items():
                shadow = shadows[name]
                shadow.lerp_(t.detach().to(shadow.dtype), weight)  # θ̄ + (1 − d)(θ − θ̄)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self) -> None:
        """Overwrite the model's weights (and averaged buffers) with the average, for good
        (e.g. before export)."""
        self._start_pending_buffers()
        for name, p in self.params.items():
            p.copy_(self.shadow[name])
        for name, b in self.buffers.items():
            b.copy_(self.buffer_shadow[name])

    @contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Swap the averaged weights (and, with ``buffers="average"``, the averaged
        floating buffers) into the model for the ``with`` block, then put the raw
        weights and every buffer back as they were — even if the block raises, and
        whatever the block did to them (a forward pass in train mode, ``update_bn``).
        Tensors are written in place, so optimizers holding them stay valid."""
        with torch.no_grad():
            raw = {name: p.detach().clone() for name, p in self.params.items()}
            raw_buffers = {name: b.detach().clone() for name, b in self.all_buffers.items()}
            self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(raw[name])
                for name, b in self.all_buffers.items():
                    b.copy_(raw_buffers[name])

    def state_dict(self) -> dict:
        """``decay``, ``warmup``, ``num_updates``, ``shadow`` (parameter averages),
        ``buffers`` (the mode) and ``buffer_shadow`` (buffer averages; empty for ``"copy"``)."""
        self._start_pending_buffers()
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {name: t.clone() for name, t in self.shadow.items()},
                "buffers": self.buffer_mode,
                "buffer_shadow": {name: t.clone() for name, t in self.buffer_shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the average; the parameter names and shapes must match this model's, and so
        must the buffer averages' when this EMA averages buffers. Raises ``ValueError`` naming
        each mismatch before anything changes. A state without buffer averages (from an older
        optimlab, or saved with ``buffers="copy"``) still loads: the buffers' average then starts
        from the model's buffers at the next use. This EMA keeps its own ``buffers`` mode."""
        shadow = state["shadow"]
        _check_names("shadow", shadow, self.params)
        num_updates = state["num_updates"]
        if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 0:
            raise ValueError(f"num_updates must be an integer >= 0, got num_updates={num_updates!r}")
        decay, warmup = _checked_decay(state["decay"]), _checked_warmup(state["warmup"])
        buffer_shadow = state.get("buffer_shadow") or None
        if buffer_shadow is not None and self.buffers:
            _check_names("buffer_shadow", buffer_shadow, self.buffers)
        self.decay, self.warmup, self.num_updates = decay, warmup, num_updates
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)
        if self.buffers:
            if buffer_shadow is None:
                self._buffers_pending = True
            else:
                for name, tensor in buffer_shadow.items():
                    self.buffer_shadow[name].copy_(tensor)
                self._buffers_pending = False

    def __repr__(self) -> str:
        return (f"EMA(decay={self.decay}, warmup={self.warmup}, buffers={self.buffer_mode!r}, "
                f"num_updates={self.num_updates})")


def _check_names(what: str, saved: dict, live: dict) -> None:
    if not isinstance(saved, dict) or set(saved) != set(live):
        names = set(saved) if isinstance(saved, dict) else set()
        missing, extra = sorted(set(live) - names), sorted(names - set(live))
        raise ValueError(f"state {what} does not match the model: missing={missing}, unexpected={extra}")
    for name, tensor in saved.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != live[name].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{what}[{name!r}] has shape {shape}, the model's is {tuple(live[name].shape)}")


def _checked_decay(decay: float) -> float:
    """``decay`` as a float, if a real number in [0, 1); else ValueError naming it."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA: decay must be in [0, 1), got decay={decay!r}")
    return float(decay)


def _checked_warmup(warmup: bool) -> bool:
    if not isinstance(warmup, bool):
        raise ValueError(f"EMA: warmup must be True or False, got warmup={warmup!r}")
    return warmup
