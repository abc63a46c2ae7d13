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
        on_nonfinite: str = "raise", callbacks=(), eval_batch_size: int = 256, shuffle: bool = True) -> History:
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
    uses the averaged weights.
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
    ``on_epoch_end(trainer, row)``, ``on_checkpoint(trainer, path)``; setting
    ``trainer.stop_training = True`` ends the run.

    At the end :func:`diagnose` runs on the history (``history.diagnoses``) and,
    unless ``quiet``, its findings are printed.
    """
    trainer = Trainer(model, optimizer, loss=loss, batch_size=batch_size, schedule=schedule,
                      schedule_unit=schedule_unit, clip=clip, ema=ema, early_stopping=early_stopping, seed=seed,
                      monitor=monitor, sample_every=sample_every, progress=progress, quiet=quiet,
                      checkpoint=checkpoint, checkpoint_every=checkpoint_every, store=store, name=name,
                      config=config, on_nonfinite=on_nonfinite, callbacks=callbacks,
                      eval_batch_size=eval_batch_size, shuffle=shuffle)
    return trainer.fit(data, epochs=epochs, val=val, resume=resume)
