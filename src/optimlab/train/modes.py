"""Optimizers with a training and an evaluation mode (Schedule-Free), in the loop.

A Schedule-Free optimizer (Defazio et al. 2024; ``optimlab.optim.ScheduleFreeAdamW`` /
``ScheduleFreeSGD`` and the ``schedulefree`` package's optimizers) keeps two points: the
gradient point y, which the parameters hold while training, and the average x, which is
the model to evaluate. ``optimizer.eval()`` puts x in the parameters, ``optimizer.train()``
puts y back; both are idempotent, and a step in eval mode raises. The package's
optimizers record the mode per param group (``group["train_mode"]``), its
``ScheduleFreeWrapper`` in an attribute ``optimizer.train_mode``; optimlab's twins do as
the package's optimizers (and, unlike them, start in train mode).

Any optimizer with callable ``train`` and ``eval`` methods is treated so (duck typing,
as Lightning does), not only optimlab's classes. :class:`ModeSwitch` is what
``optimlab.train.fit`` does with one:

* ``optimizer.train()`` at the start of every epoch (the package's optimizers start in
  eval mode, and a finished ``fit`` leaves them there);
* ``optimizer.eval()`` at the end of every epoch, before the validation, the
  early-stopping snapshot, the checkpoint and the epoch callbacks, and at the end of
  ``fit`` (which returns the model at x, the optimizer in eval mode);
* while in eval mode, the exact training-point state (the model's ``state_dict`` at y)
  is kept aside and copied back by the next ``train()``. The switch is an interpolation
  in floating point and ``train()`` after ``eval()`` does not give y back bit for bit
  (about 1 ulp off); copying it back makes a run with evaluations, checkpoints or a
  resume in between train exactly as one without them.
* BatchNorm: the running statistics gathered during training belong to y. After
  ``optimizer.eval()`` they are recomputed at x over the first :data:`BN_BATCHES`
  training batches of the epoch just trained (its order; fewer if the epoch is shorter),
  exactly as ``torch.optim.swa_utils.update_bn`` does over those batches (statistics
  reset, ``momentum=None``: the plain mean over the batches, the modules in train mode,
  no gradients). The RNG states are put back afterwards (a Dropout or a shuffling
  DataLoader draws from them), and the training-point statistics are restored with the
  weights by ``train()``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BN_BATCHES", "has_modes", "mode", "recompute_bn", "ModeSwitch", "ema_refusal"]

#: batches run forward at the evaluation weights to recompute BatchNorm statistics
#: (the ``schedulefree`` README's example uses 50)
BN_BATCHES = 50


def has_modes(optimizer: Any) -> bool:
    """Whether ``optimizer`` has callable ``train()`` and ``eval()`` (a Schedule-Free optimizer)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def mode(optimizer: Any) -> str | None:
    """``"train"``, ``"eval"``, or None (no modes, or param groups in different modes).

    Reads the ``train_mode`` attribute (``schedulefree.ScheduleFreeWrapper``) or else every
    param group's ``"train_mode"`` (optimlab's and the package's optimizers)."""
    if not has_modes(optimizer):
        return None
    flag = getattr(optimizer, "train_mode", None)
    if not isinstance(flag, bool):
        flags = {g.get("train_mode") for g in optimizer.param_groups}
        flag = flags.pop() if len(flags) == 1 else None
    return None if not isinstance(flag, bool) else ("train" if flag else "eval")


def mode_attributes(optimizer: Any) -> dict[str, Any]:
    """The mode the optimizer keeps outside its ``state_dict`` (the wrapper's ``train_mode``
    attribute); :func:`set_mode_attributes` puts it back after ``load_state_dict``."""
    flag = getattr(optimizer, "train_mode", None) if has_modes(optimizer) else None
    return {"train_mode": flag} if isinstance(flag, bool) else {}


def set_mode_attributes(optimizer: Any, attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        setattr(optimizer, key, value)


def ema_refusal(optimizer: Any) -> str | None:
    """Why ``fit(..., ema=...)`` refuses this optimizer (None if it does not)."""
    if not has_modes(optimizer):
        return None
    return (f"ema cannot be combined with {type(optimizer).__name__}: a Schedule-Free optimizer already "
            "averages its iterates and fit evaluates at that average (optimizer.eval()); an EMA of the "
            "parameters would average the training point y instead. Use one of them: drop ema=, or use "
            "an optimizer without train()/eval() modes")


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def recompute_bn(model: nn.Module, batches: Iterable, limit: int = BN_BATCHES) -> int:
    """Recompute every BatchNorm's running statistics at the current weights from the inputs of
    the first ``limit`` ``(x, y)`` batches, as ``torch.optim.swa_utils.update_bn`` does; return the
    number of batches used (0, touching nothing, when the model has no BatchNorm)."""
    bns = batchnorms(model)
    if not bns:
        return 0
    momenta = {m: m.momentum for m in bns}
    modes = [(m, m.training) for m in model.modules()]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # the cumulative mean of the batch statistics
    model.train()
    used = 0
    try:
        for batch in itertools.islice(batches, limit):
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            used += 1
    finally:
        for m in bns:
            m.momentum = momenta[m]
        for m, training in modes:
            m.training = training
    return used


class ModeSwitch:
    """The trainer's handle on an optimizer's modes; does nothing for one without them.

    ``batches(epoch)`` gives the training batches of epoch ``epoch`` (for BatchNorm)."""

    def __init__(self, model: nn.Module, optimizer: Any,
                 batches: Callable[[int], Iterable] | None = None, bn_batches: int = BN_BATCHES):
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.active = has_modes(optimizer)
        self.bn_batches = bn_batches
        self.epoch = 0
        self.train_state: dict[str, torch.Tensor] | None = None  # the exact training point, while evaluating
        self.bn_used: int | None = None  # batches of the last BatchNorm recompute (None: not done)

    def describe(self, batches_per_epoch: int | None = None) -> dict[str, Any]:
        """For the run's config: what the loop does with the modes ({} when nothing);
        ``batchnorm_recomputed_batches`` is None when the model has no BatchNorm."""
        if not self.active:
            return {}
        used = None
        if batchnorms(self.model):
            used = self.bn_batches if batches_per_epoch is None else min(self.bn_batches, batches_per_epoch)
        return {"optimizer_modes": {
            "evaluated_at": "optimizer.eval() (the average x): validation, early stopping, checkpoints, the end",
            "batchnorm_recomputed_batches": used}}

    @property
    def evaluating(self) -> bool:
        return self.train_state is not None

    def to_train(self, epoch: int | None = None) -> None:
        """``optimizer.train()``, then the exact training point back if one was kept aside."""
        if epoch is not None:
            self.epoch = epoch
        if not self.active:
            return
        self.optimizer.train()
        if self.train_state is not None:
            with torch.no_grad():
                for key, tensor in self.model.state_dict().items():
                    tensor.copy_(self.train_state[key])
            self.train_state = None

    def to_eval(self) -> None:
        """Keep the training point aside, ``optimizer.eval()``, recompute BatchNorm statistics."""
        if not self.active or self.train_state is not None:
            return
        kept = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optimizer.eval()
        if self.batches is not None and batchnorms(self.model):
            from optimlab.train import checkpoint as ckpt

            rng = ckpt.rng_state()
            try:
                self.bn_used = recompute_bn(self.model, self.batches(self.epoch), self.bn_batches)
            finally:
                ckpt.set_rng_state(rng)
        self.train_state = kept

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Eval mode for the block (if not in it already), the exact training point after."""
        was = self.evaluating
        self.to_eval()
        try:
            yield
        finally:
            if not was:
                self.to_train()

    def resume(self, train_state: dict[str, torch.Tensor] | None) -> None:
        """After a checkpoint's eval-mode weights were loaded: its training point, for ``to_train``."""
        if self.active and train_state is not None:
            self.train_state = {k: v.detach().clone() for k, v in train_state.items()}
