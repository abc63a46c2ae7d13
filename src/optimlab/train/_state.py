"""A trainer's complete state, as a checkpoint dict, and back.

What a run needs to continue bit-identically: the model, optimizer,
schedule, EMA and early-stopping states; every RNG state (and, for a
DataLoader, the state at the start of the epoch); the position in the data
order (epoch, next batch, global step); the epoch's partial statistics; the
history so far. All of it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

from optimlab.train import checkpoint as ckpt
from optimlab.train.history import History, clean

FORMAT = "optimlab.checkpoint/1"


def _identity(trainer) -> dict[str, Any]:
    """What must match for a checkpoint to continue this run's data order."""
    return {"batch_size": trainer.batch_size, "n_train": trainer.batches.n,
            "steps_per_epoch": trainer.steps_per_epoch, "shuffle": trainer.shuffle}


def capture(trainer, epoch: int, batch: int, elapsed: float) -> dict[str, Any]:
    """The state after ``batch`` batches of epoch ``epoch`` (0-based; batch 0 = the epoch's start)."""
    t = trainer
    return {
        "format": FORMAT, "epoch": epoch, "batch": batch, "step": t.step, "seed": t.seed,
        "elapsed": elapsed, "check": _identity(t), "history": clean(t.history.to_dict()),
        "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "early_stopping": t.early_stopping.state_dict() if t.early_stopping is not None else None,
        "rng": ckpt.rng_state(), "epoch_rng": t._epoch_rng if batch else None,
        "monitor": t.monitor.state() if batch else None,
    }


def restore(trainer, state: dict[str, Any]) -> tuple[int, int]:
    """Load ``state`` into ``trainer`` (checked first); return (epoch, batch) to continue from.
    The RNG states are restored by the loop, at the start of the epoch it resumes."""
    t = trainer
    if state.get("format") != FORMAT:
        raise ValueError(f"{t.checkpoint} is not an optimlab training checkpoint "
                         f"(format {state.get('format')!r}, expected {FORMAT!r})")
    check = _identity(t)
    if state["check"] != check:
        raise ValueError(f"the checkpoint {t.checkpoint} was written by a run with {state['check']}, "
                         f"this run has {check}: resume with the same data and batch size")
    t.seed = state["seed"]
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    for obj, key in ((t.scheduler, "scheduler"), (t.ema, "ema"), (t.early_stopping, "early_stopping")):
        if obj is not None and state[key] is not None:
            obj.load_state_dict(state[key])
    t.history = History.from_dict(state["history"])
    t.history.config["resumed_from_step"] = state["step"]
    t.step = state["step"]
    return state["epoch"], state["batch"]
