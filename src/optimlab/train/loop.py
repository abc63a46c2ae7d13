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
from optimlab.train import _data, _device, _state, checkpoint as ckpt, progress as _progress
from optimlab.train.checkpoint import CheckpointError
from optimlab.train.diagnostics import diagnose
from optimlab.train.history import COMPLETED, EARLY_STOPPED, NONFINITE, STOPPED, History, clean
from optimlab.train.monitor import Monitor, first_nonfinite, hyper_in_use, layer_name
from optimlab.train.modes import ModeSwitch, ema_refusal
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
                 eval_batch_size: int = 256, shuffle: bool = True, accumulate: int = 1, precision: str = "32",
                 device=None, sharpness_every=None, logger=None):
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
        self._check_run_setup(model, optimizer, accumulate, precision, device, ema)
        from optimlab.train import loggers as _loggers, sharpness as _sharpness
        self.sharpness = _sharpness.tracker(sharpness_every, model, callbacks)  # None, or a callback measuring λ_max
        self.loggers = _loggers.bind(logger)  # made now: an unwritable path is refused before anything is written
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
        if self.ema is not None and ema_refusal(optimizer):
            raise ValueError(ema_refusal(optimizer))
        # Schedule-Free: train() to train, eval() to evaluate and save (optimlab.train.modes)
        self.modes = ModeSwitch(model, optimizer, lambda epoch: self.batches.epoch(self.seed, epoch))
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
        self.callbacks = [*([self.sharpness] if self.sharpness else []), *callbacks, *self.loggers]
        self.step = 0
        self.stop_training = False
        self.history = History()
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._to_device(ema)

    # ------------------------------------------------------------------ set-up
    def _check_run_setup(self, model, optimizer, accumulate, precision, device, ema) -> None:
        """Check ``accumulate``, ``precision`` and ``device`` (before anything is moved or written)."""
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(f"accumulate must be a positive integer (micro-batches per optimizer step), "
                             f"got accumulate={accumulate!r}")
        here = _device.model_device(model)
        target = _device.resolve_device(device) if device is not None else (here or torch.device("cpu"))
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        self.precision = _device.check_precision(precision, target)
        self.closure_step = bool(getattr(optimizer, "requires_closure", False))
        if self.closure_step and self.precision == "fp16":
            raise ValueError(f"precision='fp16' cannot drive {type(optimizer).__name__}, whose step takes a "
                             "closure (requires_closure): the fp16 loss scaler cannot unscale the gradient "
                             "the closure computes inside step(); use precision='bf16' or '32'")
        from optimlab.ema import EMA

        if isinstance(ema, EMA) and here is not None and target != here:
            raise ValueError(f"ema: this EMA was built on {here}, and fit moves the model to device={str(target)!r}; "
                             "build the EMA after moving the model (model.to(device)), or pass ema=<decay>")
        self.accumulate, self.device, self._move = accumulate, target, here is not None and target != here

    def _to_device(self, ema) -> None:
        """Move the run to ``device`` (the last step of the set-up: every check has passed)."""
        if self._move:
            _device.move(self.model, self.optimizer, None, self.device)
            if self.ema is not None:  # built from a decay on the old device: again, on this one
                self.ema = self._bind_ema(ema)
        self._autocast = _device.autocast(self.precision, self.device)
        self.scaler = _device.grad_scaler(self.precision, self.device)
        slow = _device.slow_precision(self.precision, self.device)
        if slow:
            warnings.warn(slow, RuntimeWarning, stacklevel=4)  # the caller of fit

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
            "accumulate": self.accumulate, "precision": self.precision,
            "loss": self.loss_name, "schedule": repr(self.scheduler) if self.scheduler is not None else None,
            "schedule_unit": self.schedule_unit, "clip": self.clip_repr, "ema": repr(self.ema) if self.ema else None,
            "early_stopping": repr(self.early_stopping) if self.early_stopping else None,
            "seed": self.seed, "monitor": self.monitoring, "sample_every": self.monitor.sample_every,
            "sharpness": repr(self.sharpness) if self.sharpness else None,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(self.device),
        }
        config.update(self.modes.describe(len(self.batches)))
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
        self.batches_per_epoch = len(self.batches)
        self.steps_per_epoch = -(-self.batches_per_epoch // self.accumulate)  # optimizer steps; a short last group steps
        every = self.sample_every or max(1, min(50, self.steps_per_epoch // 25))
        self.monitor = Monitor(self.model, self.optimizer, sample_every=every, enabled=self.monitoring,
                               count_skipped=self.scaler is not None)
        start_epoch, start_batch, state = 0, 0, None
        if self.checkpoint is not None:
            ckpt.clean_leftovers(self.checkpoint)  # temporary files of writers killed mid-save
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            try:
                # to the CPU: the RNG states must be CPU tensors there; load_state_dict then puts the
                # weights, optimizer state and EMA next to this run's parameters (a device change is fine)
                state = ckpt.load(self.checkpoint, map_location=torch.device("cpu"))
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
            for cb in self.callbacks:  # loggers write what is left and close, however the run ends
                if hasattr(cb, "on_fit_end"):
                    cb.on_fit_end(self)
        return self._finish(status)

    def _train(self, start_epoch: int, start_batch: int, state) -> str:
        model = self.model
        for epoch in range(start_epoch, self.epochs):
            model.train()
            self.modes.to_train(epoch)
            resumed = state is not None and epoch == start_epoch
            self.monitor.start_epoch(self.steps_per_epoch, state["monitor"] if resumed and start_batch else None)
            elapsed = state["elapsed"] if resumed and start_batch else 0.0
            first = start_batch if resumed else 0
            self.display.epoch_start(epoch + 1, first // self.accumulate)  # first: a batch, at a step's start
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
        """Train from batch ``first`` on (the first batch of an optimizer step: ``accumulate`` batches make
        one step); False when a callback stopped the run before the epoch's end."""
        optimizer, monitor = self.optimizer, self.monitor
        last = self.steps_per_epoch - 1
        per_step = self.scheduler is not None and self.schedule_kind == "step" and self.schedule_unit == "step"
        step_callbacks = [cb.on_step_end for cb in self.callbacks if hasattr(cb, "on_step_end")]
        source = self.batches.epoch(self.seed, epoch, first)
        if after_skip is not None:
            source = _then(source, after_skip)
        batch = first - 1  # the last batch used
        for index, group in enumerate(_data.groups(source, self.accumulate), start=first // self.accumulate):
            batch += len(group)  # index: the step within the epoch; group: its micro-batches
            optimizer.zero_grad(set_to_none=True)
            loss, out, yb = self._forward_backward(group)
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)  # the monitor, clipping and the checks see true gradients
            check = monitor.after_backward(loss, out, yb, micro=len(group) > 1)
            if not math.isfinite(check.item()) and not self._scaler_overflow(loss):
                self._nonfinite(epoch, batch, loss)
            if self.clip is not None and not self.closure_step:
                self.clip()
            sample = monitor.is_sample(index, last)
            before = monitor.snapshot() if sample else None
            self._optimizer_step(group, epoch, batch)
            self.step += 1
            if sample:
                monitor.after_step(before, self.step, epoch + 1, index)
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
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and index != last:
                self._save(epoch, batch + 1, time.perf_counter() - t0)
            if self.stop_training and index != last:
                return False
        return True

    def _forward_backward(self, group: list) -> tuple[torch.Tensor, Any, Any]:
        """Forward (under the precision's autocast) and backward of the micro-batches of one
        optimizer step, into the zeroed gradients. Each micro-batch's loss is weighted by its
        share of the step's samples, so that for a mean-reduced loss the gradient is the one of
        all the samples as one batch. Returns (the step's loss, outputs, targets): for one
        micro-batch its loss, output and target; for several their sample-weighted mean loss
        (float64) and the lists of their (detached) outputs and targets."""
        model, loss_fn, scaler = self.model, self.loss_fn, self.scaler
        if len(group) == 1:
            xb, yb = group[0]
            with self._autocast():
                out = model(xb)
                loss = loss_fn(out, yb)
            (loss if scaler is None else scaler.scale(loss)).backward()
            return loss, out, yb
        total = sum(len(yb) for _, yb in group)
        mean, outs, targets = None, [], []
        for xb, yb in group:
            with self._autocast():
                out = model(xb)
                loss = loss_fn(out, yb)
            share = len(yb) / total
            part = loss * share
            (part if scaler is None else scaler.scale(part)).backward()
            value = loss.detach().double() * share
            mean = value if mean is None else mean + value
            outs.append(out.detach())
            targets.append(yb)
        return mean, outs, targets

    def _scaler_overflow(self, loss: torch.Tensor) -> bool:
        """Whether a non-finite check is an fp16 gradient overflow the loss scaler skips: only
        with a finite loss, and at a loss scale above 1 (a gradient that is non-finite even
        unscaled is no overflow of the scaling: the run stops as for any non-finite gradient)."""
        return (self.scaler is not None and math.isfinite(float(loss.detach()))
                and self.scaler.get_scale() > 1.0)

    def _optimizer_step(self, group: list, epoch: int, batch: int) -> None:
        """One optimizer step: through the fp16 loss scaler (a step it skips for an overflow is
        counted by the monitor), or with a closure re-running the step's micro-batches for an
        optimizer that needs one (SAM: ``requires_closure``)."""
        optimizer, scaler = self.optimizer, self.scaler
        if self.closure_step:
            from optimlab.optim.sam import SAM

            # the closure runs at perturbed weights; optimlab's SAM restores them itself when it raises
            params = [] if isinstance(optimizer, SAM) else [p for _, p in self.named]
            kept = [p.detach().clone() for p in params]
            try:
                optimizer.step(self._closure(group))
            except _ClosureNonFinite as err:  # the weights may be perturbed: put them back first
                with torch.no_grad():
                    for p, value in zip(params, kept):
                        p.copy_(value)
                self._nonfinite(epoch, batch, err.loss, phase="in the closure's forward-backward pass "
                                                               f"(inside {type(optimizer).__name__}.step)")
        elif scaler is not None:
            scale = scaler.get_scale()
            scaler.step(optimizer)  # skipped if the unscaled gradients hold inf/NaN
            scaler.update()
            if scaler.get_scale() < scale:
                self.monitor.mark_skipped()
        else:
            optimizer.step()

    def _closure(self, group: list):
        """The closure for ``optimizer.step(closure)``: zero the gradients, forward and backward
        the step's micro-batches again (at the weights the optimizer set), clip, return the loss.
        A non-finite loss or gradient raises, and the step is not applied."""
        def closure():
            with torch.enable_grad():
                self.optimizer.zero_grad(set_to_none=True)
                loss, _, _ = self._forward_backward(group)
                grads = [p.grad for _, p in self.named if p.grad is not None]
                check = loss.detach().double() + (self.monitor._norms(grads).sum() if grads else 0.0)
                if not math.isfinite(check.item()):
                    raise _ClosureNonFinite(loss.detach())
                if self.clip is not None:
                    self.clip()
            return loss
        return closure

    def _end_epoch(self, epoch: int, seconds: float) -> bool:
        self.modes.to_eval()  # evaluation, early stopping, checkpoint and callbacks see x
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
        if self.sharpness is not None:  # its measurements join the rows before they are recorded
            self.sharpness.merge(self, epoch + 1, row, step_rows)
        self.history.epochs.append(row)
        self.history.steps.extend(step_rows)
        # The checkpoint first, then the store: an epoch the store holds is one a resume can continue
        # from (under the same run id). Killed between the two, the resume rewrites the store from the
        # checkpoint's history (write_history); the other order lost the first epoch's checkpoint while
        # the store showed the epoch, and a resume started the run afresh under a new id.
        if self.checkpoint is not None:
            self._save(epoch + 1, 0, 0.0)
        self._record("log_epoch", self.history.run_id, row, step_rows)
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
        return _data.evaluate(self.model, self.val, self.loss_fn, batch_size=self.eval_batch_size, device=self.device,
                              autocast=self._autocast)

    def _partial_epoch(self, epoch: int, seconds: float) -> None:
        row, step_rows = self.monitor.summarize()
        if row:
            row = {"epoch": epoch + 1, "step": self.step, **row, "time_s": seconds, "partial": True}
            if self.sharpness is not None:
                self.sharpness.merge(self, epoch + 1, row, step_rows)
            self.history.epochs.append(row)
            self.history.steps.extend(step_rows)
            self._record("log_epoch", self.history.run_id, row, step_rows)
        self.history.stop = {"reason": "callback", "epoch": epoch + 1, "step": self.step}

    def _nonfinite(self, epoch: int, batch: int, loss: torch.Tensor, phase: str | None = None) -> None:
        parameter, bad = first_nonfinite(self.named)
        layer = layer_name(parameter) if parameter else None
        loss_value = float(loss.detach())
        step = self.step + 1
        where = f"step {step} (epoch {epoch + 1}, batch {batch + 1} of {self.batches_per_epoch})"
        if phase:
            where += f", {phase}"
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
            if self.sharpness is not None:
                self.sharpness.merge(self, epoch + 1, row, step_rows)
            self.history.epochs.append({"epoch": epoch + 1, "step": self.step, **row, "partial": True})
            self.history.steps.extend(step_rows)
            self._record("log_epoch", self.history.run_id, self.history.epochs[-1], step_rows)
        self.history.stop = {"reason": "nonfinite", "step": step, "epoch": epoch + 1, "batch": batch + 1,
                             "loss": repr(loss_value), "layer": layer, "parameter": parameter, "parameters": bad,
                             "checkpoint": str(self.checkpoint) if kept else None, "message": message}
        raise NonFiniteError(message, step=step, epoch=epoch + 1, batch=batch + 1, layer=layer, parameters=bad,
                             loss=loss_value, history=self.history, checkpoint=str(self.checkpoint) if kept else None)

    def _finish(self, status: str) -> History:
        self.modes.to_eval()  # fit returns the evaluation weights (optimizer in eval mode)
        h = self.history
        if self.scaler is not None:  # fp16: the steps the loss scaler skipped, over the whole run
            h.config["skipped_steps"] = sum(int(r.get("skipped_steps") or 0) for r in h.epochs)
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
        with self.modes.evaluation():  # the checkpoint's model is x, its train_model y
            ckpt.save(_state.capture(self, epoch, batch, elapsed), self.checkpoint)
        for cb in self.callbacks:
            if hasattr(cb, "on_checkpoint"):
                cb.on_checkpoint(self, self.checkpoint)

    def _restore(self, state: dict[str, Any], override: bool = False) -> tuple[int, int]:
        return _state.restore(self, state, override)


class _ClosureNonFinite(Exception):
    """Raised by the step's closure when its loss or gradient is non-finite."""

    def __init__(self, loss: torch.Tensor):
        super().__init__("non-finite loss or gradient in the closure")
        self.loss = loss


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
