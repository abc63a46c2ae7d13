"""Stopping a run: early stopping on the validation loss, and the non-finite-loss stop."""

from __future__ import annotations

import math
from typing import Any

import torch


class NonFiniteError(FloatingPointError):
    """The loss or a gradient went NaN/Inf; the run stopped before applying that step.

    ``step`` (1-based optimizer step that would have been taken), ``epoch``, ``batch``,
    ``layer`` (first layer, in model order, whose gradient is non-finite; None if
    none is), ``parameters`` (every such parameter), ``loss``, ``history`` (the run
    so far, diagnosed), ``checkpoint`` (the last good checkpoint, kept; or None).
    """

    def __init__(self, message: str, *, step: int, epoch: int, batch: int, layer: str | None,
                 parameters: list[str], loss: float, history=None, checkpoint: str | None = None):
        super().__init__(message)
        self.step, self.epoch, self.batch = step, epoch, batch
        self.layer, self.parameters, self.loss = layer, parameters, loss
        self.history, self.checkpoint = history, checkpoint


class EarlyStopping:
    """Stop when the monitored metric has not improved for ``patience`` epochs in a row
    (the lectures' "monitor validation loss: stop when it increases"; ``patience=0``
    stops at the first epoch without improvement, as ``patience=1`` does).

    Improvement means ``value < best − min_delta`` (``mode="min"``) or
    ``value > best + min_delta`` (``"max"``). With ``restore_best`` the weights
    of the best epoch are put back at the end of the run (a copy is kept, in
    the checkpoint too). ``monitor`` is an epoch metric: ``"val_loss"``
    (default; ``"train_loss"`` is used when there is no validation data),
    ``"val_acc"`` (with ``mode="max"``), ...
    """

    def __init__(self, patience: int = 5, *, monitor: str = "val_loss", mode: str = "min",
                 min_delta: float = 0.0, restore_best: bool = True):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got patience={patience!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got mode={mode!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a number >= 0, got min_delta={min_delta!r}")
        if not isinstance(monitor, str):
            raise ValueError(f"monitor must be an epoch metric name, got monitor={monitor!r}")
        self.patience, self.monitor, self.mode = patience, monitor, mode
        self.min_delta, self.restore_best = float(min_delta), bool(restore_best)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    @classmethod
    def coerce(cls, value) -> EarlyStopping | None:
        """``None``/``False`` → off; an int → patience; a dict → keyword arguments; an instance as is."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, int):
            return cls(value)
        if isinstance(value, dict):
            return cls(**value)
        raise ValueError(f"early_stopping must be a patience (int), a dict of EarlyStopping arguments "
                         f"or an EarlyStopping, got early_stopping={value!r}")

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int, weights) -> bool:
        """Record one epoch's metric; ``weights()`` gives the state to keep if it is the best.
        Returns True when the run should stop."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in weights().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= max(1, self.patience)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
        self.bad_epochs, self.best_state = int(state["bad_epochs"]), state["best_state"]

    def __repr__(self) -> str:
        return (f"EarlyStopping(patience={self.patience}, monitor={self.monitor!r}, mode={self.mode!r}, "
                f"min_delta={self.min_delta}, restore_best={self.restore_best})")
