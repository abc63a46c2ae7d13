"""The training loop: ``fit(model, optimizer, data, ...)`` and the ``Trainer`` behind it."""

from __future__ import annotations

import contextlib
import math
import os
import random
import secrets
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optimlab.cpu import tune_allocator
from optimlab.train import _data, _state, checkpoint as ckpt, progress as _progress
from optimlab.train.checkpoint import CheckpointError
from optimlab.train.diagnostics import diagnose
from optimlab.train.history import COMPLETED, EARLY_STOPPED, NONFINITE, STOPPED, History, clean
from optimlab.train.monitor import Monitor, first_nonfinite, hyper_in_use, layer_name
from optimlab.train.stopping import EarlyStopping, NonFiniteError

LOSSES = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss, "nll": F.nll_loss}


def _loss(loss):
    if loss is None:
        return F.cross_entropy, "cross_entropy"
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got loss={loss!r}")
        return LOSSES[loss], loss
    if callable(loss):
        return loss, getattr(loss, "__name__", type(loss).__name__)
    raise ValueError(f"loss must be a name or a callable(outputs, targets), got loss={loss!r}")


def _simple(value):
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)



def model_and_optimizer(model, optimizer) -> torch.optim.Optimizer:
    """Check ``model`` is an ``nn.Module``; return ``optimizer``, built by name (its defaults) if a string."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(optimizer, str):
        from optimlab import optim
        optimizer = optim.create(optimizer, model.parameters())
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or a name, got {optimizer!r}")
    return optimizer

class Trainer:
    """Everything ``fit`` does, as an object (see :func:`fit` for the arguments)."""

    def __init__(self, model: nn.Module, optimizer, *, loss=None, batch_size: int | str = 32, schedule=None,
                 schedule_unit: str = "step", clip=None, ema=None, early_stopping=None, seed: int | None = None,
                 monitor: bool = True, sample_every: int | None = None, progress: bool | None = None,
                 quiet: bool = False, checkpoint: str | os.PathLike | None = None,
                 checkpoint_every: int | None = None, store=True, name: str | None = None,
                 config: dict | None = None, on_nonfinite: str = "raise", callbacks=(),
                 eval_batch_size: int = 256, shuffle: bool = True):
        optimizer = model_and_optimizer(model, optimizer)
        if schedule_unit not in ("step", "epoch"):
            raise ValueError(f"schedule_unit must be 'step' or 'epoch', got schedule_unit={schedule_unit!r}")
        if on_nonfinite not in ("raise", "stop"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got on_nonfinite={on_nonfinite!r}")
        for key, value in (("sample_every", sample_every), ("checkpoint_every", checkpoint_every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive integer or None, got {key}={value!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got seed={seed!r}")
        _data.batch_size_for(batch_size, 1)  # validates
        if checkpoint is not None and Path(checkpoint).is_dir():
            raise CheckpointError(checkpoint, "it is a directory, not a checkpoint file",
                                  "Pass a file path, e.g. checkpoint='runs/model.pt'.")
        # the hyperparameters as given, before a schedule writes into the groups: what a resume compares
        self._initial_groups = _state.group_values(optimizer)
        self._optimizer_record = _state.optimizer_record(optimizer, self._initial_groups)
        self.model, self.optimizer = model, optimizer
        self.loss_fn, self.loss_name = _loss(loss)
        self.batch_size, self.shuffle, self.eval_batch_size = batch_size, shuffle, eval_batch_size
        self.schedule_unit = schedule_unit
        self.scheduler, self.schedule_kind = self._bind_schedule(schedule)
        self.clip = self._bind_clip(clip)
        self.clip_repr = None if self.clip is None else repr(clip)
        self.ema = self._bind_ema(ema)
        self.early_stopping = EarlyStopping.coerce(early_stopping)
        self.seed = seed if seed is not None else secrets.randbelow(2**31)
        self.monitoring, self.sample_every = bool(monitor), sample_every
        self.progress_arg, self.quiet = progress, quiet
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = checkpoint_every
        if checkpoint_every is not None and checkpoint is None:
            raise ValueError("checkpoint_every needs a checkpoint path (checkpoint=...)")
        self.store = _bind_store(store)
        self._owns_store = store is True or isinstance(store, (str, os.PathLike))  # fit closes what it opened
        self.name, self.user_config = name, dict(config or {})
        self.on_nonfinite = on_nonfinite
        self.callbacks = list(callbacks)
        self.step = 0
        self.stop_training = False
        self.history = History()
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ set-up
    def _bind_schedule(self, schedule):
        if schedule is None:
            return None, None
        from optimlab.schedules import ReduceOnPlateau, Schedule, Scheduler

        if isinstance(schedule, Schedule) or (isinstance(schedule, (list, tuple)) and schedule
                                               and all(isinstance(s, Schedule) for s in schedule)):
            return Scheduler(self.optimizer, schedule), "step"
        if getattr(schedule, "optimizer", self.optimizer) is not self.optimizer:
            raise ValueError("the schedule drives another optimizer than the one given to fit")
        if isinstance(schedule, (ReduceOnPlateau, torch.optim.lr_scheduler.ReduceLROnPlateau)):
            return schedule, "metric"
        if callable(getattr(schedule, "step", None)) and callable(getattr(schedule, "state_dict", None)):
            return schedule, "step"
        raise ValueError(f"schedule must be an optimlab Schedule, a Scheduler, ReduceOnPlateau or a torch "
                         f"LR scheduler, got schedule={schedule!r}")

    def _bind_clip(self, clip):
        if clip is None or clip is False:
            return None
        from optimlab import clip as _clip

        if isinstance(clip, (int, float)) and not isinstance(clip, bool):
            spec = {"norm": clip}
        elif isinstance(clip, dict) and len(clip) == 1 and set(clip) <= {"norm", "value"}:
            spec = clip
        elif callable(clip):
            return clip
        else:
            raise ValueError(f"clip must be a max global norm, {{'norm': x}}, {{'value': x}} or a callable, "
                             f"got clip={clip!r}")
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if "norm" in spec:
            _clip._check("max_norm", spec["norm"])
            return lambda: _clip.clip_grad_norm(params, spec["norm"], nonfinite="keep")
        _clip._check("clip_value", spec["value"])
        return lambda: _clip.clip_grad_value(params, spec["value"], nonfinite="keep")

    def _bind_ema(self, ema):
        if ema is None or ema is False:
            return None
        from optimlab.ema import EMA

        if isinstance(ema, EMA):
            return ema
        if isinstance(ema, (int, float)) and not isinstance(ema, bool):
            return EMA(self.model, decay=ema, warmup=True)
        raise ValueError(f"ema must be a decay in [0, 1) or an optimlab.ema.EMA, got ema={ema!r}")

    def _config(self, train, val) -> dict[str, Any]:
        group = self.optimizer.param_groups[0]
        hyper = {k: _simple(v) if not isinstance(v, tuple) else list(v)
                 for k, v in group.items() if k not in ("params", "param_names")}
        n_val = None if val is None else (len(val[1]) if isinstance(val, (tuple, list)) else None)
        config = {
            "name": self.name, "model": type(self.model).__name__,
            "parameters": sum(p.numel() for _, p in self.named), "optimizer": type(self.optimizer).__name__,
            "hyper": hyper, "batch_size": self.batch_size, "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch, "n_train": self.batches.n, "n_val": n_val,
            "loss": self.loss_name, "schedule": repr(self.scheduler) if self.scheduler is not None else None,
            "schedule_unit": self.schedule_unit, "clip": self.clip_repr, "ema": repr(self.ema) if self.ema else None,
            "early_stopping": repr(self.early_stopping) if self.early_stopping else None,
            "seed": self.seed, "monitor": self.monitoring, "sample_every": self.monitor.sample_every,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(self.device),
        }
        config.update(self.user_config)
        return clean(config)

    # ------------------------------------------------------------------- fit
    def fit(self, data, *, epochs: int = 1, val=None, resume: bool | str = False) -> History:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got epochs={epochs!r}")
        if not (isinstance(resume, bool) or (isinstance(resume, str) and resume == "override")):
            raise ValueError(f"resume must be True, False or 'override', got resume={resume!r}")
        self.epochs = epochs
        train, val = _data.split_data(data, val)
        self.device = next(self.model.parameters()).device
        if self.device.type == "cpu":
            tune_allocator()  # no page faults on the big per-step tensors (optimlab.cpu)
        self.batches = _data.batches(train, self.batch_size, shuffle=self.shuffle, device=self.device)
        self.val = val
        self.steps_per_epoch = len(self.batches)
        every = self.sample_every or max(1, min(50, self.steps_per_epoch // 25))
        self.monitor = Monitor(self.model, self.optimizer, sample_every=every, enabled=self.monitoring)
        start_epoch, start_batch, state = 0, 0, None
        if self.checkpoint is not None:
            ckpt.clean_leftovers(self.checkpoint)  # temporary files of writers killed mid-save
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            try:
                state = ckpt.load(self.checkpoint, map_location=self.device)
                start_epoch, start_batch = self._restore(state, override=resume == "override")
            except CheckpointError:
                _state.put_back(self.optimizer, self._initial_groups)  # undo the schedule's first write
                raise
        else:
            self.history = History(config=self._config(train, val), layers=list(self.monitor.layers))
            self.history.run_id = _new_run_id()
            torch.manual_seed(self.seed)
            random.seed(self.seed)
            np.random.seed(self.seed % 2**32)
        if state is not None:  # a resumed run records all it has again: no holes where a store write failed
            self._record("write_history", self.history, name=self.name)
        else:
            self._record("start_run", self.history.run_id, self.history.config, name=self.name)
        self.display = _progress.make(self.progress_arg, self.quiet)
        self.display.start(epochs, self.steps_per_epoch, start_epoch)
        try:
            status = self._train(start_epoch, start_batch, state)
        except NonFiniteError as err:
            self._finish(NONFINITE)
            if self.on_nonfinite == "raise":
                raise
            self.display.message(str(err))
            return self.history
        except BaseException as err:  # the run ends here: its row should not go on claiming 'running'
            from optimlab.store import INTERRUPTED

            self._record("finish_run", self.history.run_id, status=INTERRUPTED, summary=clean(self.history.last),
                         stop={"reason": "exception", "error": f"{type(err).__name__}: {err}"})
            self._close_store()
            raise
        finally:
            self.display.close()
        return self._finish(status)

    def _train(self, start_epoch: int, start_batch: int, state) -> str:
        model = self.model
        for epoch in range(start_epoch, self.epochs):
            model.train()
            resumed = state is not None and epoch == start_epoch
            self.monitor.start_epoch(self.steps_per_epoch, state["monitor"] if resumed and start_batch else None)
            elapsed = state["elapsed"] if resumed and start_batch else 0.0
            first = start_batch if resumed else 0
            self.display.epoch_start(epoch + 1, first)
            loader = isinstance(self.batches, _data.LoaderBatches)
            self._epoch_rng, after_skip = None, None
            if resumed and first and loader:
                # A loader draws its shuffling seed when it starts: start it from the epoch's
                # RNG state, skip the batches done, then continue from the checkpoint's state.
                ckpt.set_rng_state(state["epoch_rng"])
                self._epoch_rng = state["epoch_rng"]
                after_skip = lambda: ckpt.set_rng_state(state["rng"])  # noqa: E731
            else:
                if resumed:
                    ckpt.set_rng_state(state["rng"])
                if loader:
                    self._epoch_rng = ckpt.rng_state()
            t0 = time.perf_counter()
            finished = self._run_epoch(epoch, first, t0 - elapsed, after_skip)
            seconds = time.perf_counter() - t0 + elapsed
            if not finished:  # a callback stopped the run mid-epoch: keep the last checkpoint as it is
                self._partial_epoch(epoch, seconds)
                return STOPPED
            if self._end_epoch(epoch, seconds):
                return EARLY_STOPPED
            if self.stop_training:
                return STOPPED
        return COMPLETED

    def _run_epoch(self, epoch: int, first: int, t0: float, after_skip) -> bool:
        """Train from batch ``first`` on; False when a callback stopped the run before the epoch's end."""
        model, optimizer, monitor, loss_fn = self.model, self.optimizer, self.monitor, self.loss_fn
        last = self.steps_per_epoch - 1
        per_step = self.scheduler is not None and self.schedule_kind == "step" and self.schedule_unit == "step"
        step_callbacks = [cb.on_step_end for cb in self.callbacks if hasattr(cb, "on_step_end")]
        source = self.batches.epoch(self.seed, epoch, first)
        if after_skip is not None:
            source = _then(source, after_skip)
        for batch, (xb, yb) in enumerate(source, start=first):
            out = model(xb)
            loss = loss_fn(out, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            check = monitor.after_backward(loss, out, yb)
            if not math.isfinite(check.item()):
                self._nonfinite(epoch, batch, loss)
            if self.clip is not None:
                self.clip()
            sample = monitor.is_sample(batch, last)
            before = monitor.snapshot() if sample else None
            optimizer.step()
            self.step += 1
            if sample:
                monitor.after_step(before, self.step, epoch + 1, batch)
            if self.ema is not None:
                self.ema.update()
            if per_step:
                self.scheduler.step()
            if self.display.wants_values():
                self.display.step(*monitor.running())
            else:
                self.display.step()
            for cb in step_callbacks:
                cb(self)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and batch != last:
                self._save(epoch, batch + 1, time.perf_counter() - t0)
            if self.stop_training and batch != last:
                return False
        return True

    def _end_epoch(self, epoch: int, seconds: float) -> bool:
        row, step_rows = self.monitor.summarize()
        lr, momentum = (step_rows[-1]["lr"], step_rows[-1]["momentum"]) if step_rows else hyper_in_use(self.optimizer)
        row = {"epoch": epoch + 1, "step": self.step, **row, "lr": lr, "momentum": momentum,
               "time_s": seconds, "samples_per_s": row.get("samples", 0) / seconds if seconds > 0 else None}
        stop = False
        if self.val is not None:
            t = time.perf_counter()
            if self.ema is not None:
                with self.ema.average_parameters():
                    row["val_loss"], row["val_acc"] = self._evaluate()
            else:
                row["val_loss"], row["val_acc"] = self._evaluate()
            row["val_time_s"] = time.perf_counter() - t
        if self.scheduler is not None and self.schedule_kind == "metric":
            self.scheduler.step(row.get("val_loss", row["train_loss"]))
        elif self.scheduler is not None and self.schedule_unit == "epoch":
            self.scheduler.step()
        es = self.early_stopping
        if es is not None:
            key = es.monitor if es.monitor in row else "train_loss"
            stop = es.update(row[key], epoch + 1, self._weights)
            self.history.best_epoch = es.best_epoch
        self.history.epochs.append(row)
        self.history.steps.extend(step_rows)
        self._record("log_epoch", self.history.run_id, row, step_rows)
        if self.checkpoint is not None:
            self._save(epoch + 1, 0, 0.0)
        self.display.epoch_end(epoch + 1, row)
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(self, row)
        return stop

    def _weights(self) -> dict[str, torch.Tensor]:
        if self.ema is None:
            return self.model.state_dict()
        with self.ema.average_parameters():
            return {k: v.clone() for k, v in self.model.state_dict().items()}

    def _evaluate(self) -> tuple[float, float | None]:
        return _data.evaluate(self.model, self.val, self.loss_fn, batch_size=self.eval_batch_size, device=self.device)

    def _partial_epoch(self, epoch: int, seconds: float) -> None:
        row, step_rows = self.monitor.summarize()
        if row:
            row = {"epoch": epoch + 1, "step": self.step, **row, "time_s": seconds, "partial": True}
            self.history.epochs.append(row)
            self.history.steps.extend(step_rows)
            self._record("log_epoch", self.history.run_id, row, step_rows)
        self.history.stop = {"reason": "callback", "epoch": epoch + 1, "step": self.step}

    def _nonfinite(self, epoch: int, batch: int, loss: torch.Tensor) -> None:
        parameter, bad = first_nonfinite(self.named)
        layer = layer_name(parameter) if parameter else None
        loss_value = float(loss.detach())
        step = self.step + 1
        where = f"step {step} (epoch {epoch + 1}, batch {batch + 1} of {self.steps_per_epoch})"
        if layer is not None:
            cause = (f"the first layer whose gradient went non-finite is {layer!r} (parameter {parameter!r}"
                     + (f"; also {', '.join(bad[1:])}" if len(bad) > 1 else "") + ")")
        elif math.isfinite(loss_value):
            cause = "every gradient is finite but their norm overflowed (exploding gradients)"
        else:
            cause = "every gradient is finite"
        kept = (f"; the last good checkpoint is kept at {self.checkpoint}"
                if self.checkpoint is not None and self.checkpoint.exists() else "")
        message = (f"training stopped at {where}: loss = {loss_value}; {cause}. The step was not applied{kept}. "
                   "Remedies (lectures): clip the gradients (fit(..., clip=1.0)) and lower the learning rate; "
                   "check for log(0) or division by zero.")
        self.monitor.drop_last()
        row, step_rows = self.monitor.summarize()
        if row:
            self.history.epochs.append({"epoch": epoch + 1, "step": self.step, **row, "partial": True})
            self.history.steps.extend(step_rows)
            self._record("log_epoch", self.history.run_id, self.history.epochs[-1], step_rows)
        self.history.stop = {"reason": "nonfinite", "step": step, "epoch": epoch + 1, "batch": batch + 1,
                             "loss": repr(loss_value), "layer": layer, "parameter": parameter, "parameters": bad,
                             "checkpoint": str(self.checkpoint) if kept else None, "message": message}
        raise NonFiniteError(message, step=step, epoch=epoch + 1, batch=batch + 1, layer=layer, parameters=bad,
                             loss=loss_value, history=self.history, checkpoint=str(self.checkpoint) if kept else None)

    def _finish(self, status: str) -> History:
        h = self.history
        es = self.early_stopping
        if status != NONFINITE and es is not None and es.restore_best and es.best_state is not None:
            self.model.load_state_dict(es.best_state)
        if status == EARLY_STOPPED and h.stop is None:
            h.stop = {"reason": "early_stopping", "epoch": len(h.epochs), "best_epoch": h.best_epoch}
        if status == STOPPED and h.stop is None:
            h.stop = {"reason": "callback", "epoch": len(h.epochs), "step": self.step}
        h.status = status
        h.diagnoses = diagnose(h)
        self._record("finish_run", h.run_id, status=status, summary=clean(h.last), stop=clean(h.stop),
                     diagnoses=[d.to_dict() for d in h.diagnoses])
        self._close_store()
        for d in h.diagnoses:
            self.display.message(str(d))
        return h

    # ---------------------------------------------------------------- run store
    def _record(self, method: str, *args, **kwargs) -> None:
        """``self.store.<method>(...)``, unless there is no store or it failed earlier in this run.

        The store is a record, not the work: its first failure (``sqlite3.Error`` or ``OSError``)
        warns once, naming the file and the error, sets ``history.store_error``, marks the run
        ``incomplete`` if the file still takes that, and training goes on."""
        if self.store is None or self.history.store_error is not None:
            return
        try:
            getattr(self.store, method)(*args, **kwargs)
        except (sqlite3.Error, OSError) as err:
            from optimlab.store import INCOMPLETE

            self.history.store_error = f"{self.store.path}: {method} failed: {type(err).__name__}: {err}"
            warnings.warn(f"run store {self.store.path}: {method} failed ({type(err).__name__}: {err}); training "
                          "goes on without recording this run (history.store_error); "
                          "RunStore.write_history(history) records it later", RuntimeWarning, stacklevel=2)
            # best effort, never raises: the row should not claim 'running' for a run it no longer follows
            with contextlib.suppress(sqlite3.Error, OSError):
                self.store.finish_run(self.history.run_id, status=INCOMPLETE,
                                      stop={"reason": "store_error", "error": str(err)})

    def _close_store(self) -> None:
        """Close a store fit opened itself (from a path), so no connection outlives the run."""
        if self._owns_store:
            with contextlib.suppress(sqlite3.Error):
                self.store.close()

    # -------------------------------------------------------------- checkpoints
    def _save(self, epoch: int, batch: int, elapsed: float) -> None:
        ckpt.save(_state.capture(self, epoch, batch, elapsed), self.checkpoint)
        for cb in self.callbacks:
            if hasattr(cb, "on_checkpoint"):
                cb.on_checkpoint(self, self.checkpoint)

    def _restore(self, state: dict[str, Any], override: bool = False) -> tuple[int, int]:
        return _state.restore(self, state, override)


def _then(iterator, hook):
    """Yield from ``iterator``, calling ``hook()`` once just before the first item is handed out."""
    called = False
    for item in iterator:
        if not called:
            hook()
            called = True
        yield item


def _new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _bind_store(store):
    if store is None or store is False:
        return None
    from optimlab.store import RunStore

    if store is True:
        return RunStore()
    if isinstance(store, RunStore):
        if store.readonly:
            raise ValueError(f"store {store!r} was opened read-only: fit needs RunStore(path) to write the run")
        return store
    if isinstance(store, (str, os.PathLike)):
        return RunStore(store)
    raise ValueError(f"store must be True (the default store), False, a path or a RunStore, got store={store!r}")
