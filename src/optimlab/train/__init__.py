"""The training loop, what it watches, what it concludes, and how it survives a crash.

>>> from optimlab import train, data, models, optim
>>> ds = data.load("mnist")                                              # doctest: +SKIP
>>> model = models.lecture_cnn()                                         # doctest: +SKIP
>>> history = train.fit(model, optim.create("adam", model.parameters()), ds,
...                     epochs=10, batch_size=64, early_stopping=3, seed=0)  # doctest: +SKIP
>>> history["val_acc"], history.diagnoses                                # doctest: +SKIP

* ``fit`` — batch (``batch_size="full"``), stochastic (``1``) or mini-batch
  gradient descent over in-memory tensors (sliced by index) or a DataLoader;
  schedules, clipping, weight EMA, early stopping with the best weights
  restored; deterministic for a given ``seed``; a progress bar or quiet.
* Monitoring (:mod:`optimlab.train.monitor`) — loss, accuracy, learning rate
  and momentum, global and per-layer gradient norms, per-layer update-to-weight
  ratios, time and throughput; per epoch and sampled per step.
* Diagnostics (:func:`diagnose`) — the lectures' failure patterns and remedies;
  a NaN/Inf loss stops the run at once (:class:`NonFiniteError`).
* Checkpoints (:mod:`optimlab.train.checkpoint`) — atomic, verified before
  use, safe to load, and complete: a run killed mid-epoch resumes
  bit-identically; a damaged checkpoint, or one from another model or
  optimizer setup, is refused with :class:`CheckpointError`.
* The run store (:mod:`optimlab.store`) — every run's configuration and metrics.
"""

from __future__ import annotations

from optimlab.train.checkpoint import CheckpointError
from optimlab.train.diagnostics import Diagnosis, diagnose
from optimlab.train.history import History
from optimlab.train.loop import Trainer
from optimlab.train.stopping import EarlyStopping, NonFiniteError

__all__ = ["fit", "Trainer", "History", "EarlyStopping", "NonFiniteError", "CheckpointError", "Diagnosis",
           "diagnose"]


def fit(model, optimizer, data, *, epochs: int = 1, batch_size: int | str = 32, val=None, loss=None,
        schedule=None, schedule_unit: str = "step", clip=None, ema=None, early_stopping=None,
        seed: int | None = None, monitor: bool = True, sample_every: int | None = None,
        progress: bool | None = None, quiet: bool = False, checkpoint=None, checkpoint_every: int | None = None,
        resume: bool | str = False, store=True, name: str | None = None, config: dict | None = None,
        on_nonfinite: str = "raise", callbacks=(), eval_batch_size: int = 256, shuffle: bool = True,
        accumulate: int = 1, precision: str = "32", device=None, sharpness_every=None, logger=None) -> History:
    """Train ``model`` with ``optimizer`` on ``data``; return the run's :class:`History`.

    ``model``: an ``nn.Module`` (seed torch before building it for a reproducible start).
    ``optimizer``: a ``torch.optim.Optimizer`` over the model's parameters, or a name
    for ``optimlab.optim.create`` with its default hyperparameters.
    ``data``: an ``optimlab.data.Dataset`` (its ``.train``; ``.val`` for validation),
    ``(x, y)`` tensors, a ``TensorDataset``, a dict ``{"train": ..., "val": ...}``, or
    a ``DataLoader`` of ``(x, y)`` batches. In-memory tensors are batched by index
    slicing (no per-sample calls) and shuffled every epoch from ``seed``.
    ``val``: validation data (tensors or DataLoader), evaluated after every epoch.
    ``batch_size``: ``"full"`` (batch gradient descent), ``1`` (stochastic) or an
    integer (mini-batch), the lectures' three regimes. Ignored for a DataLoader.
    ``loss``: ``"cross_entropy"`` (default), ``"mse"``, ``"nll"`` or ``callable(out, y)``.
    ``schedule``: an ``optimlab.schedules`` schedule (a pure function of the step,
    driven through ``schedules.Scheduler``; ``schedule_unit="epoch"`` to step it per
    epoch), a ``Scheduler``, ``ReduceOnPlateau`` (stepped with the validation loss),
    or a torch LR scheduler.
    ``clip``: a max global gradient norm (``optimlab.clip.clip_grad_norm``),
    ``{"value": v}`` (``clip_grad_value``), or a callable run after ``backward()``.
    ``ema``: a decay (``optimlab.ema.EMA`` with warm-up) or an ``EMA``; validation
    uses the averaged weights. Refused (``ValueError``) with a Schedule-Free optimizer.
    ``early_stopping``: a patience (epochs without improvement of the validation
    loss), a dict of :class:`EarlyStopping` arguments, or an ``EarlyStopping``.
    The best weights are restored at the end unless ``restore_best=False``.
    ``seed``: seeds torch, ``random`` and numpy and the data order; the same seed
    and the same initial model give the same weights bit for bit (same machine,
    same threads). ``None`` draws one, recorded in ``history.config["seed"]``.
    ``monitor``: per-step gradient norms and sampled per-layer statistics (on by
    default, costs ~1% of a step); ``sample_every``: steps between samples
    (default: ~25 per epoch, at most every 50 steps).
    ``progress``: a live bar (default on a terminal; epoch lines otherwise);
    ``quiet=True`` prints nothing.
    ``checkpoint``: a file to write after every epoch and every
    ``checkpoint_every`` steps (atomically); ``resume=True`` continues from it
    when it exists, bit-identically to an uninterrupted run (when it does not,
    the run starts afresh). The checkpoint is verified first (its CRC-32s) and
    must be complete and match this run: the same data order (data, batch size,
    shuffling), the same model (module classes and settings, parameter names,
    shapes and dtypes) and the same optimizer (class, and every param group's
    hyperparameters as passed in, before a schedule moves them), schedule, EMA
    and early stopping. Anything else raises :class:`CheckpointError` (a
    ``ValueError``) naming the file and listing each difference (e.g.
    ``optimizer.lr: checkpoint 0.01, now 0.5``), before the model or optimizer
    is touched. ``resume="override"`` continues from the checkpoint's state but
    with this run's settings: the optimizer state (moments, step counts) is
    loaded, then each differing hyperparameter is set to this run's value (a
    schedule still drives what it schedules), the weights are loaded into this
    model, and the overridden differences are listed in
    ``history.config["resume_overrides"]``. Differences no state can cross
    (parameter names or shapes, the optimizer's class or groups, the data
    order) are refused even then. Leftover temporary files of writers killed
    mid-save are deleted at the start.
    ``store``: the run store receiving the configuration and metrics —
    ``True`` (the default store, see :mod:`optimlab.store`), a path, a
    ``RunStore``, or ``False``. ``name`` and ``config`` are recorded with the run.
    Anything else (or a directory, or a read-only ``RunStore``) raises
    ``ValueError`` before training. The store is a record, not the work: when
    it fails (a full disk, a path that cannot be created or opened: any
    ``sqlite3.Error`` or ``OSError``), ``fit`` warns once (``RuntimeWarning``
    naming the file and the error), stops writing to it for this run, marks the
    run ``incomplete`` there if it can, and trains on; the returned history's
    ``store_error`` says why, and ``RunStore.write_history(history)`` records
    the whole run later. A run that an exception ends is marked ``interrupted``.
    ``on_nonfinite``: a NaN/Inf loss or gradient stops the run before the step
    is applied; ``"raise"`` (default) raises :class:`NonFiniteError` (with
    ``.history``), ``"stop"`` returns the history with ``status="nonfinite"``.
    ``callbacks``: objects with any of ``on_step_end(trainer)``,
    ``on_epoch_end(trainer, row)``, ``on_checkpoint(trainer, path)``,
    ``on_fit_end(trainer)`` (once, however the run ends); setting
    ``trainer.stop_training = True`` ends the run.
    ``sharpness_every``: every that many optimizer steps, record the top
    eigenvalue λ_max of the training loss's Hessian on a fixed batch (Lanczos
    iteration on Hessian-vector products) as ``sharpness``, with
    ``edge_of_stability`` = 2/η, in that step's row; each epoch row gets the
    epoch's last measurement (Cohen et al. 2021, "Gradient Descent on Neural
    Networks Typically Occurs at the Edge of Stability"; for Adam-family
    optimizers the bound is on the preconditioned Hessian, Cohen et al. 2022,
    so 2/η is a reference line there). The weights end bit-identical to a run
    without it. A ``SharpnessTracker`` (:mod:`optimlab.train.sharpness`) sets the
    batch, iterations, tolerance and mode. ``ValueError`` before training for a
    value that is not a positive integer or for a model with no trainable
    parameters.
    ``logger``: ``"tensorboard:DIR"``, ``"csv:PATH"``, a logger object
    (:mod:`optimlab.train.loggers`: ``TensorBoardLogger``, ``CSVLogger``) or a list
    of these: every numeric key of the epoch rows and sampled step rows, written at
    each epoch's end against the optimizer step; a resumed run writes again from
    the checkpoint's history (no duplicate rows). ``ValueError`` before training
    for an unknown spec or a path that cannot be written; ``ImportError`` saying
    ``pip install 'optimlab[tensorboard]'`` when TensorBoard is missing.

    ``accumulate``: micro-batches per optimizer step (gradient accumulation; default
    1). Each micro-batch's loss is weighted by its share of the step's samples
    before ``backward()``, so that for a mean-reduced loss ``accumulate=k`` with
    ``batch_size=b`` computes the gradient of one batch of ``k·b`` samples (the
    same samples, the same result to rounding), in the memory of a batch of
    ``b``. When an epoch's batches do not divide by ``k``, its last, shorter
    group still makes a step. Everything counted in steps counts optimizer
    steps: ``history`` rows (one monitor row per step: the group's mean loss,
    the norms of the accumulated gradient), schedules, ``sample_every``,
    ``checkpoint_every`` and the step callbacks; clipping applies to the
    accumulated gradient. Checkpoints are written between groups only, so a
    run killed inside a group redoes that group on resume.
    ``precision``: ``"32"`` (default), ``"bf16"`` or ``"fp16"``: the forward
    pass and loss (training and validation) run under ``torch.autocast`` in
    bfloat16 or float16 (weights, gradients and optimizer state keep their
    dtype). ``"fp16"`` scales the loss with ``torch.amp.GradScaler``; the
    gradients are unscaled before monitoring, clipping and the non-finite
    check; a step the scaler skips because its gradients overflowed (a finite
    loss, loss scale above 1) is no error: it still counts as a step (the
    schedule moves on), and is counted in the epoch rows' ``skipped_steps`` and
    ``history.config["skipped_steps"]`` (the gradient-norm statistics leave it
    out). The scaler's state is in the checkpoint. A precision the device
    cannot run raises ``ValueError``; so does ``"fp16"`` with an optimizer
    whose step takes a closure.
    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA if
    available) or a ``torch.device``; ``None`` (default) trains where the model
    is. The model, the optimizer's state, the batches and a weight EMA given as
    a decay move there (an ``EMA`` object must be built on that device); a
    checkpoint resumes on any device. A device this machine lacks raises
    ``ValueError`` ("CUDA is not available") before anything moves.
    Optimizers with ``requires_closure = True`` (SAM) are stepped as
    ``optimizer.step(closure)`` after the first forward-backward pass (its
    gradient, unclipped, in ``.grad``: what the monitor records); the closure
    zeroes the gradients, runs the step's micro-batches again (all ``k`` with
    accumulation) at the weights the optimizer set, clips, and returns the
    loss. A non-finite loss or gradient in it stops the run with the weights
    put back.

    An optimizer with ``train()``/``eval()`` methods (Schedule-Free: optimlab's or the
    ``schedulefree`` package's) is switched by the loop (:mod:`optimlab.train.modes`):
    ``train()`` at every epoch's start; ``eval()`` (the average x, BatchNorm statistics
    recomputed there) for validation, early stopping, checkpoints, the epoch callbacks
    and the end: ``fit`` returns the model at x with the optimizer in eval mode (call
    ``optimizer.train()`` before training it by hand). Training is bit-identical with or
    without the evaluations and checkpoints in between (the training point is kept aside,
    and saved in the checkpoint as ``"train_model"``).

    At the end :func:`diagnose` runs on the history (``history.diagnoses``) and,
    unless ``quiet``, its findings are printed.
    """
    trainer = Trainer(model, optimizer, loss=loss, batch_size=batch_size, schedule=schedule,
                      schedule_unit=schedule_unit, clip=clip, ema=ema, early_stopping=early_stopping, seed=seed,
                      monitor=monitor, sample_every=sample_every, progress=progress, quiet=quiet,
                      checkpoint=checkpoint, checkpoint_every=checkpoint_every, store=store, name=name,
                      config=config, on_nonfinite=on_nonfinite, callbacks=callbacks,
                      eval_batch_size=eval_batch_size, shuffle=shuffle, accumulate=accumulate, precision=precision,
                      device=device, sharpness_every=sharpness_every, logger=logger)
    return trainer.fit(data, epochs=epochs, val=val, resume=resume)
