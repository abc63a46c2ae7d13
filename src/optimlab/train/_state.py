"""A trainer's complete state, as a checkpoint dict, and back.

What a run needs to continue bit-identically: the model, optimizer,
schedule, EMA and early-stopping states (and fp16's loss-scaler state); every RNG state (and, for a
DataLoader, the state at the start of the epoch); the position in the data
order (epoch, next batch, global step); the epoch's partial statistics; the
history so far. All of it loads with ``torch.load(weights_only=True)``.

What the run was set up with is recorded too, so that a resume notices what
changed: the model's structure (every module's name, class and settings),
the optimizer's class and every param group's hyperparameters *as given to
fit* (before a schedule rewrote them: a schedule moving the learning rate is
not a change), and the schedule, EMA, early-stopping and precision settings
(``accumulate`` other than 1 is part of the data position, ``check``). Parameter
names, shapes and dtypes are compared from the stored weights themselves.

Before anything is loaded, :func:`restore` checks the checkpoint is complete
and matches; differences are refused with :class:`CheckpointError` listing
each one, unless the caller overrides them (``fit(..., resume="override")``),
in which case this run's settings win. Differences that make the state
unloadable (parameter names or shapes, the optimizer's class or groups, the
data order) are refused even then.

Format 1 checkpoints (optimlab before these records) are accepted with a
warning: they are verified and checked for completeness like any other, and
their weights' names and shapes are compared, but the model's structure and
the optimizer's settings cannot be, and the checkpoint's hyperparameters are
used. The next save writes format 2.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import torch

from optimlab.train import checkpoint as ckpt
from optimlab.train.checkpoint import CheckpointError
from optimlab.train.history import History, clean

FORMAT = "optimlab.checkpoint/2"
FORMAT_1 = "optimlab.checkpoint/1"
REQUIRED = ("format", "epoch", "batch", "step", "seed", "elapsed", "check", "history", "model", "optimizer",
            "scheduler", "ema", "early_stopping", "rng", "epoch_rng", "monitor")
REQUIRED_2 = ("model_structure", "optimizer_config", "setup")
MISMATCH = ("Resume with the settings the checkpoint was written with, pass resume='override' to continue "
            "its state with this run's settings, or start afresh (delete it, resume=False, or another "
            "checkpoint path).")
UNLOADABLE = ("Its state cannot be loaded into this model and optimizer: resume with the ones it was written "
              "with, or start afresh (delete it, resume=False, or another checkpoint path).")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


# ------------------------------------------------------------ what a run is
def _identity(trainer) -> dict[str, Any]:
    """What must match for a checkpoint to continue this run's data order."""
    check = {"batch_size": trainer.batch_size, "n_train": trainer.batches.n,
             "steps_per_epoch": trainer.steps_per_epoch, "shuffle": trainer.shuffle}
    if getattr(trainer, "accumulate", 1) != 1:  # absent for 1: checkpoints from before accumulation match
        check["accumulate"] = trainer.accumulate
    return check


def group_values(optimizer) -> list[dict[str, Any]]:
    """Every param group's hyperparameters as they are now (tensors cloned): taken when the
    trainer is built, before a schedule writes into the groups."""
    return [{k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
             for k, v in g.items() if k not in ("params", "param_names")} for g in optimizer.param_groups]


def _plain(value):
    """``value`` as numbers, strings and lists (comparable, safe to load)."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return _ADDRESS.sub("", repr(value))


def optimizer_record(optimizer, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The optimizer's class and each group's hyperparameters from :func:`group_values`. A torch
    LR scheduler keeps the learning rate it started from in ``initial_lr``: that one is recorded."""
    records = []
    for g in groups:
        record = {k: _plain(v) for k, v in g.items() if k != "initial_lr"}
        if "initial_lr" in g:
            record["lr"] = _plain(g["initial_lr"])
        records.append(record)
    return {"class": type(optimizer).__qualname__, "groups": records}


def model_record(model: torch.nn.Module) -> list[list[str]]:
    """Every module's name and ``Class(settings)``: two models with the same parameter shapes
    but other layers (Tanh for ReLU) differ here."""
    return [[name, f"{type(m).__qualname__}({_ADDRESS.sub('', m.extra_repr())})"]
            for name, m in model.named_modules()]


def _setup(trainer) -> dict[str, Any]:
    """The schedule, EMA and early-stopping settings (not their progress)."""
    t, s = trainer, trainer.scheduler
    if s is None:
        schedule = None
    elif isinstance(getattr(s, "schedules", None), list):  # optimlab Scheduler: its repr holds its position
        shown = {repr(x) for x in s.schedules}
        schedule = repr(s.schedules[0]) if len(shown) == 1 else repr(s.schedules)
    elif type(s).__repr__ is object.__repr__:
        schedule = type(s).__qualname__
    else:
        schedule = repr(s)
    if schedule is not None:
        schedule = f"{_ADDRESS.sub('', schedule)} per {t.schedule_unit if t.schedule_kind == 'step' else 'metric'}"
    ema = None if t.ema is None else f"EMA(decay={t.ema.decay}, warmup={t.ema.warmup}, buffers={t.ema.buffer_mode!r})"
    return {"schedule": schedule, "ema": ema,
            "early_stopping": None if t.early_stopping is None else repr(t.early_stopping),
            "precision": getattr(t, "precision", "32")}


# ------------------------------------------------------------------ capture
def capture(trainer, epoch: int, batch: int, elapsed: float) -> dict[str, Any]:
    """The state after ``batch`` batches of epoch ``epoch`` (0-based; batch 0 = the epoch's start)."""
    t = trainer
    return {
        "format": FORMAT, "epoch": epoch, "batch": batch, "step": t.step, "seed": t.seed,
        "elapsed": elapsed, "check": _identity(t), "history": clean(t.history.to_dict()),
        "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
        # Schedule-Free (optimlab.train.modes): "model" holds the evaluation weights x, this the
        # exact training point y (eval() then train() is not bit-exact); None for other optimizers
        "train_model": getattr(getattr(t, "modes", None), "train_state", None),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "scaler": t.scaler.state_dict() if getattr(t, "scaler", None) is not None else None,  # fp16
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "early_stopping": t.early_stopping.state_dict() if t.early_stopping is not None else None,
        "rng": ckpt.rng_state(), "epoch_rng": t._epoch_rng if batch else None,
        "monitor": t.monitor.state() if batch else None,
        "model_structure": model_record(t.model), "optimizer_config": t._optimizer_record,
        "setup": _setup(t),
    }


# ------------------------------------------------------------------ restore
def restore(trainer, state: dict[str, Any], override: bool = False) -> tuple[int, int]:
    """Check ``state`` against ``trainer``, then load it; return (epoch, batch) to continue from.

    Raises :class:`CheckpointError` (naming the checkpoint, each problem or difference, and
    what to do) if the checkpoint is incomplete, from another data order, or was written with
    another model or optimizer setup — unless ``override``, for differences that can be
    overridden (this run's settings then win). Nothing in ``trainer`` changes when it raises.
    The RNG states are restored by the loop, at the start of the epoch it resumes.
    """
    t, path = trainer, trainer.checkpoint
    _check_complete(state, path)
    check = _identity(t)
    if state["check"] != check:
        raise CheckpointError(path, f"it was written by a run with {state['check']}, this run has {check}",
                              "Resume with the same data and batch size, or start afresh (delete it, "
                              "resume=False, or another checkpoint path).")
    if state["format"] == FORMAT_1:
        warnings.warn(f"checkpoint {str(path)!r} was written by an older optimlab (format 1), which did not "
                      "record the model's structure or the optimizer's settings: changes to them cannot be "
                      "detected, and the checkpoint's hyperparameters are used", stacklevel=5)
    hard, soft = _differences(t, state)
    if hard:
        raise CheckpointError(path, "it does not fit this run", UNLOADABLE, hard + soft)
    if soft and not override:
        raise CheckpointError(path, "it was written with other settings than this run's", MISMATCH, soft)
    history = _prepare(t, state, path)
    _load(t, state, override and bool(soft), path)
    t.seed = state["seed"]
    t.history = history
    t.history.config["resumed_from_step"] = state["step"]
    if override and soft:
        t.history.config["resume_overrides"] = soft
    t.step = state["step"]
    return state["epoch"], state["batch"]


def _check_complete(state: dict[str, Any], path) -> None:
    """Every key the loop reads is there, with the right kind of value."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(path, f"it lacks {', '.join(map(repr, missing))}, which a resume needs "
                                    "(it was not written by optimlab's fit, or is damaged)")
    if state["format"] not in (FORMAT, FORMAT_1):
        newer = isinstance(state["format"], str) and state["format"].startswith("optimlab.checkpoint/")
        raise CheckpointError(path, f"its format is {state['format']!r}; this optimlab reads {FORMAT_1!r} and "
                                    f"{FORMAT!r}" + (" (it was written by a newer optimlab)" if newer else ""))
    missing = [k for k in REQUIRED_2 if k not in state] if state["format"] == FORMAT else []
    if missing:
        raise CheckpointError(path, f"it lacks {', '.join(map(repr, missing))}, which format {FORMAT!r} holds")

    def kind(key, ok, what):
        if not ok(state[key]):
            raise CheckpointError(path, f"its {key!r} is {_short(state[key])}, not {what}")

    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in ("epoch", "batch", "step", "seed"):
        kind(key, count, "an integer >= 0")
    kind("elapsed", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
    for key in ("check", "history", "rng"):
        kind(key, lambda v: isinstance(v, dict), "a dict")
    kind("model", lambda v: isinstance(v, dict) and all(isinstance(x, torch.Tensor) for x in v.values()),
         "a dict of tensors")
    kind("optimizer", lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
         and isinstance(v.get("param_groups"), list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                            for g in v["param_groups"]),
         "an optimizer state dict")
    for key in ("scheduler", "ema", "early_stopping", "epoch_rng", "monitor"):
        kind(key, lambda v: v is None or isinstance(v, dict), "a dict or None")
    scaler = state.get("scaler")  # fp16's loss scaler (absent before precision=)
    if scaler is not None and not (isinstance(scaler, dict) and all(
            isinstance(scaler.get(k), (int, float)) and not isinstance(scaler.get(k), bool)
            for k in SCALER_KEYS)):
        raise CheckpointError(path, f"its 'scaler' is {_short(scaler)}, not a loss scaler's state "
                                    f"({', '.join(SCALER_KEYS)})")
    train_model = state.get("train_model")
    if train_model is not None and not (
            isinstance(train_model, dict) and train_model.keys() == state["model"].keys()
            and all(isinstance(v, torch.Tensor) and v.shape == state["model"][k].shape
                    for k, v in train_model.items())):
        raise CheckpointError(path, "its 'train_model' (the Schedule-Free training point) does not match its "
                                    "'model' (the same names and shapes)")
    if state["batch"] and state["monitor"] is None:
        raise CheckpointError(path, "it was written mid-epoch but lacks the epoch's statistics ('monitor')")
    if state["format"] == FORMAT:
        kind("model_structure", lambda v: isinstance(v, list) and all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x) for x in v),
            "a list of [name, module]")
        kind("optimizer_config", lambda v: isinstance(v, dict) and isinstance(v.get("class"), str)
             and isinstance(v.get("groups"), list) and all(isinstance(g, dict) for g in v["groups"]),
             "an optimizer record")
        kind("setup", lambda v: isinstance(v, dict), "a dict")


def _short(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _differences(t, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(differences that make the state unloadable, differences that can be overridden)."""
    hard, soft = [], []
    # the weights: names and shapes must match, a dtype would be cast
    saved, now = state["model"], t.model.state_dict()
    for k in saved.keys() - now.keys():
        hard.append(f"model: {k!r} {tuple(saved[k].shape)} is in the checkpoint, not in this model")
    for k in now.keys() - saved.keys():
        hard.append(f"model: {k!r} {tuple(now[k].shape)} is in this model, not in the checkpoint")
    for k in saved.keys() & now.keys():
        if saved[k].shape != now[k].shape:
            hard.append(f"model: {k!r} has shape {tuple(saved[k].shape)} in the checkpoint, {tuple(now[k].shape)} now")
        elif saved[k].dtype != now[k].dtype:
            soft.append(f"model: {k!r} is {saved[k].dtype} in the checkpoint, {now[k].dtype} now")
    hard.sort()
    # the optimizer: its groups must hold as many parameters
    groups = state["optimizer"]["param_groups"]
    if len(groups) != len(t.optimizer.param_groups):
        hard.append(f"optimizer: {len(groups)} param groups in the checkpoint, {len(t.optimizer.param_groups)} now")
    else:
        for i, (g, h) in enumerate(zip(groups, t.optimizer.param_groups)):
            if len(g["params"]) != len(h["params"]):
                hard.append(f"optimizer: param group {i} has {len(g['params'])} parameters in the checkpoint, "
                            f"{len(h['params'])} now")
    if state["format"] == FORMAT:
        soft += _model_changes(state["model_structure"], model_record(t.model))
        record = state["optimizer_config"]
        if record["class"] != t._optimizer_record["class"]:
            hard.append(f"optimizer: checkpoint {record['class']}, now {t._optimizer_record['class']}")
        elif len(record["groups"]) == len(t._optimizer_record["groups"]):
            soft += _hyper_changes(record["groups"], t._optimizer_record["groups"])
        setup = _setup(t)
        for key in ("schedule", "ema", "early_stopping"):
            if state["setup"].get(key) != setup[key]:
                soft.append(f"{key}: checkpoint {_none(state['setup'].get(key))}, now {_none(setup[key])}")
        if state["setup"].get("precision", "32") != setup["precision"]:  # absent: written before precision=
            soft.append(f"precision: checkpoint {state['setup'].get('precision', '32')!r}, "
                        f"now {setup['precision']!r}")
    elif t.ema is not None and state["ema"] is not None:  # format 1 records the EMA's settings in its state
        for key in ("decay", "warmup"):
            if state["ema"].get(key) != getattr(t.ema, key):
                soft.append(f"ema.{key}: checkpoint {state['ema'].get(key)!r}, now {getattr(t.ema, key)!r}")
    for key, obj in (("schedule", t.scheduler), ("ema", t.ema), ("early_stopping", t.early_stopping)):
        stored = state["scheduler" if key == "schedule" else key]
        if state["format"] == FORMAT_1 and (stored is None) != (obj is None):
            soft.append(f"{key}: {'none' if stored is None else 'one'} in the checkpoint, "
                        f"{'none' if obj is None else 'one'} now")
    return hard, soft


def _none(value) -> str:
    return "none" if value is None else str(value)


def _model_changes(saved: list, now: list) -> list[str]:
    old, new = dict(map(tuple, saved)), dict(map(tuple, now))
    changes = []
    for name, module in now:
        label = f"{name!r}" if name else "the model itself"
        if name not in old:
            changes.append(f"model: {label} ({module}) is new in this model")
        elif old[name] != module:
            changes.append(f"model: {label} is {old[name]} in the checkpoint, {module} now")
    changes += [f"model: {name!r} ({module}) is in the checkpoint, not in this model"
                for name, module in saved if name not in new]
    return changes


def _hyper_changes(saved: list[dict], now: list[dict]) -> list[str]:
    changes = []
    for i, (old, new) in enumerate(zip(saved, now)):
        prefix = "optimizer." if len(now) == 1 else f"optimizer.param_groups[{i}]."
        for key in [*old, *(k for k in new if k not in old)]:
            a, b = old.get(key, _UNSET), new.get(key, _UNSET)
            if a != b:
                changes.append(f"{prefix}{key}: checkpoint {_value(a)}, now {_value(b)}")
    return changes


_UNSET = object()


def _value(value) -> str:
    return "(not set)" if value is _UNSET else repr(value)


def _prepare(t, state: dict[str, Any], path) -> History:
    """Everything that can fail without changing the trainer: the history, a trial of the RNG
    states (then put back) and of the epoch's statistics (on the fresh monitor)."""
    try:
        history = History.from_dict(state["history"])
        current = ckpt.rng_state()
        try:
            for key in ("rng", "epoch_rng"):
                if state[key] is not None:
                    ckpt.set_rng_state(state[key])
        finally:
            ckpt.set_rng_state(current)
        if state["batch"]:
            t.monitor.start_epoch(t.steps_per_epoch, state["monitor"])
    except Exception as err:
        raise CheckpointError(path, f"its run state cannot be used ({type(err).__name__}: {err})") from err
    return history


def _load(t, state: dict[str, Any], override: bool, path) -> None:
    """Load the states, the fallible ones first; on a failure put back what was loaded and
    raise :class:`CheckpointError`. The model is loaded last: its names and shapes were checked."""
    objects = {"scheduler": t.scheduler, "ema": t.ema, "early_stopping": t.early_stopping}
    saved = {k: obj.state_dict() for k, obj in objects.items() if obj is not None and k != "ema"}
    ema_settings = None if t.ema is None else (t.ema.decay, t.ema.warmup)
    old_optimizer = t.optimizer.state_dict()  # references: loading replaces the state, it does not write into it
    try:
        if t.scheduler is not None and state["scheduler"] is not None:
            t.scheduler.load_state_dict(state["scheduler"])  # a trial first: e.g. a position past a shorter schedule
        t.optimizer.load_state_dict(state["optimizer"])
        changed = _apply_current(t, state) if override else set()
        if t.scheduler is not None:  # writes its values into the groups the optimizer just loaded
            t.scheduler.load_state_dict(state["scheduler"] if state["scheduler"] is not None else saved["scheduler"])
            base_lrs = getattr(t.scheduler, "base_lrs", None)
            for i in sorted(i for i, key in changed if key == "lr"):  # a torch LR scheduler's base: this run's lr
                if isinstance(base_lrs, list) and i < len(base_lrs) and "initial_lr" in t.optimizer.param_groups[i]:
                    base_lrs[i] = t.optimizer.param_groups[i]["initial_lr"]
        if t.early_stopping is not None and state["early_stopping"] is not None:
            t.early_stopping.load_state_dict(state["early_stopping"])
        if t.ema is not None:  # checks everything before it changes anything
            t.ema.load_state_dict(state["ema"] if state["ema"] is not None else _fresh_ema(t, state))
            if override:
                t.ema.decay, t.ema.warmup = ema_settings
        if getattr(t, "scaler", None) is not None and state.get("scaler") is not None:
            t.scaler.load_state_dict(state["scaler"])  # its keys were checked: this cannot fail half-way
    except Exception as err:
        for key in ("early_stopping", "scheduler"):
            if key in saved:
                objects[key].load_state_dict(saved[key])
        t.optimizer.load_state_dict(old_optimizer)
        raise CheckpointError(path, f"its state could not be loaded into this run ({type(err).__name__}: {err})",
                              UNLOADABLE) from err
    t.model.load_state_dict(state["model"])
    if getattr(t, "modes", None) is not None:
        t.modes.resume(state.get("train_model"))  # Schedule-Free: y is put back by the next train()


def _fresh_ema(t, state: dict[str, Any]) -> dict[str, Any]:
    """An EMA added on resume averages from the loaded weights."""
    weights = state["model"]
    return {"decay": t.ema.decay, "warmup": t.ema.warmup, "num_updates": 0,
            "shadow": {name: weights.get(name, p.detach()) for name, p in t.ema.params.items()}}


def put_back(optimizer, groups: list[dict[str, Any]]) -> None:
    """Write :func:`group_values` back into the optimizer's groups (undoes a schedule's writes)."""
    for group, raw in zip(optimizer.param_groups, groups):
        for key, value in raw.items():
            group[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def _apply_current(t, state: dict[str, Any]) -> set[tuple[int, str]]:
    """After loading the checkpoint's optimizer: this run's value of each hyperparameter the
    checkpoint recorded differently (a schedule loaded next still drives what it schedules).
    Returns the (group index, key) pairs set."""
    changed = set()
    if state["format"] != FORMAT:
        return changed
    groups = zip(t.optimizer.param_groups, state["optimizer_config"]["groups"], t._initial_groups)
    for i, (group, old, raw) in enumerate(groups):
        now = optimizer_record(t.optimizer, [raw])["groups"][0]
        for key in now.keys() | old.keys():
            if now.get(key, _UNSET) == old.get(key, _UNSET):
                continue
            changed.add((i, key))
            if key not in raw:
                group.pop(key, None)
                continue
            group[key] = raw[key].clone() if isinstance(raw[key], torch.Tensor) else copy.deepcopy(raw[key])
            if key == "lr" and "initial_lr" in raw:  # a torch LR scheduler starts again from this run's lr
                group["lr"] = copy.deepcopy(raw["initial_lr"])
                group["initial_lr"] = copy.deepcopy(raw["initial_lr"])
    return changed
