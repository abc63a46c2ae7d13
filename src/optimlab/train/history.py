"""The record of one run: its configuration, one row per epoch, sampled rows per step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from optimlab.jsonsafe import clean  # noqa: F401  (re-exported: optimlab.train.history.clean)

# How a run ended.
RUNNING, COMPLETED, EARLY_STOPPED, NONFINITE, STOPPED = "running", "completed", "early_stopped", "nonfinite", "stopped"


@dataclass
class History:
    """What ``fit`` returns (and what the run store keeps).

    ``epochs``: one dict per epoch — ``epoch`` (1-based), ``step`` (optimizer
    steps so far), ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
    ``lr``, ``momentum``, ``grad_norm`` (mean global gradient norm over the
    epoch's steps), ``grad_norm_max``, ``grad_norm/<layer>``,
    ``update_ratio/<layer>`` (mean of the sampled ‖Δθ‖/‖θ‖), ``time_s``,
    ``samples_per_s``.
    ``steps``: every ``sample_every``-th step — ``step``, ``epoch``, ``loss``
    and ``grad_norm`` (means over the steps since the previous sample),
    ``grad_norm_max``, ``lr``, ``momentum``, and per layer ``grad_norm/``,
    ``update_ratio/``, ``weight_norm/``.
    ``status``: ``completed``, ``early_stopped``, ``nonfinite`` or ``stopped`` (by a
    callback setting ``trainer.stop_training``); ``stop``
    says why and where a run stopped early. ``diagnoses``: what
    :func:`optimlab.diagnose` found at the end of the run.
    ``store_error``: None when the run store holds the run in full (or no store
    was used); else why it does not (``fit`` warned and trained on):
    ``RunStore.write_history(history)`` records the whole run later. It
    describes this process's store, so it is not part of ``to_dict``.
    """

    config: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    status: str = RUNNING
    stop: dict[str, Any] | None = None
    best_epoch: int | None = None
    run_id: str | None = None
    diagnoses: list = field(default_factory=list)
    store_error: str | None = None

    def __getitem__(self, key: str) -> list:
        """``history["val_loss"]``: that metric for every epoch (None where missing)."""
        if not any(key in row for row in self.epochs):
            known = sorted({k for row in self.epochs for k in row})
            raise KeyError(f"no epoch metric {key!r}; recorded: {', '.join(known)}")
        return [row.get(key) for row in self.epochs]

    def step_series(self, key: str) -> list:
        """A per-step metric over the sampled steps (None where missing)."""
        return [row.get(key) for row in self.steps]

    @property
    def last(self) -> dict[str, Any]:
        return self.epochs[-1] if self.epochs else {}

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "stop": self.stop, "best_epoch": self.best_epoch,
                "layers": list(self.layers), "config": self.config, "epochs": self.epochs, "steps": self.steps,
                "diagnoses": [d.to_dict() if hasattr(d, "to_dict") else d for d in self.diagnoses]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        from optimlab.train.diagnostics import Diagnosis

        diagnoses = [Diagnosis.from_dict(x) if isinstance(x, dict) else x for x in d.get("diagnoses", [])]
        return cls(config=dict(d.get("config", {})), epochs=list(d.get("epochs", [])),
                   steps=list(d.get("steps", [])), layers=list(d.get("layers", [])),
                   status=d.get("status", RUNNING), stop=d.get("stop"), best_epoch=d.get("best_epoch"),
                   run_id=d.get("run_id"), diagnoses=diagnoses)

    def to_json(self, **kwargs) -> str:
        return json.dumps(clean(self.to_dict()), **kwargs)

    def __repr__(self) -> str:
        last = self.last
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("train_loss", "val_loss", "val_acc")
                          if isinstance(last.get(k), float))
        return (f"History(run_id={self.run_id!r}, status={self.status!r}, epochs={len(self.epochs)}"
                + (f", {shown}" if shown else "") + f", diagnoses={len(self.diagnoses)})")
