"""Schedule-Free optimizers in the loop: fit, early stopping, checkpoints, lr_find and the
showdown evaluate at the average x (``optimizer.eval()``), train at y (``optimizer.train()``).

Oracle: the ``schedulefree`` package (1.4.1), used as its README prescribes — ``train()``
before training, ``eval()`` before evaluating — in a plain loop over the same batches, and
``torch.optim.swa_utils.update_bn`` for BatchNorm statistics at x.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optimlab import lr_find
from optimlab import optim as oo
from optimlab.train import EarlyStopping, fit
from optimlab.train import checkpoint as ckpt
from optimlab.train._data import TensorBatches
from optimlab.train.modes import BN_BATCHES, has_modes, mode
from tests.train_synth import blobs, isolated, mlp, same_weights  # noqa: F401 (isolated: autouse fixture)

schedulefree = pytest.importorskip("schedulefree")

# the new user: a 10-32-3 MLP on 600 points, lr 0.05, 2 epochs of batch 32
TRAIN, VAL = blobs(n=600, n_val=200, dim=10, noise=1.0)
QUIET = {"quiet": True, "store": False}

OPTIMIZERS = {
    "optimlab.ScheduleFreeAdamW": lambda ps: oo.ScheduleFreeAdamW(ps, lr=0.05),
    "optimlab.ScheduleFreeSGD": lambda ps: oo.ScheduleFreeSGD(ps, lr=0.5),
    "schedulefree.AdamWScheduleFree": lambda ps: schedulefree.AdamWScheduleFree(ps, lr=0.05),
    "schedulefree.SGDScheduleFree": lambda ps: schedulefree.SGDScheduleFree(ps, lr=0.5),
}
PACKAGE_TWIN = {"optimlab.ScheduleFreeAdamW": "schedulefree.AdamWScheduleFree",
                "optimlab.ScheduleFreeSGD": "schedulefree.SGDScheduleFree"}


def bn_mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(32, 3))


def by_hand(model, optimizer, epochs, batch_size=32, seed=0, train=TRAIN, end_in_eval=True):
    """The schedulefree README's loop: train() before the steps, eval() at the end, over fit's batches."""
    optimizer.train()
    batches = TensorBatches(train, batch_size)
    for epoch in range(epochs):
        model.train()
        for xb, yb in batches.epoch(seed, epoch):
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if end_in_eval:
        optimizer.eval()
    return model


@torch.no_grad()
def val_loss(model, data=VAL):
    was = model.training
    model.eval()
    try:
        return F.cross_entropy(model(data[0]), data[1]).item()
    finally:
        model.train(was)


# ------------------------------------------------------------------ the case
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_val_loss_is_the_loss_at_the_averaged_weights(name):
    model = mlp(dim=10, hidden=32, classes=3)
    opt = OPTIMIZERS[name](model.parameters())
    h = fit(model, opt, TRAIN, val=VAL, epochs=2, batch_size=32, seed=0, **QUIET)

    ref_model = mlp(dim=10, hidden=32, classes=3)
    ref_opt = OPTIMIZERS[name](ref_model.parameters())
    by_hand(ref_model, ref_opt, epochs=2)
    # the evaluations in between did not move the training: fit's x is the plain loop's, bit for bit
    assert same_weights(model, ref_model)
    assert mode(opt) == "eval" and h.config["optimizer_modes"]["batchnorm_recomputed_batches"] is None
    at_x = val_loss(ref_model)
    assert h["val_loss"][-1] == pytest.approx(at_x, rel=1e-6, abs=1e-7)
    ref_opt.train()
    at_y = val_loss(ref_model)  # what fit reported before: the loss at the training point
    assert abs(at_y - at_x) > 1e-3
    if name in PACKAGE_TWIN:  # optimlab's twin against the package itself (equal to rounding)
        pkg_model = mlp(dim=10, hidden=32, classes=3)
        by_hand(pkg_model, OPTIMIZERS[PACKAGE_TWIN[name]](pkg_model.parameters()), epochs=2)
        assert h["val_loss"][-1] == pytest.approx(val_loss(pkg_model), rel=1e-4)


def test_training_continues_from_y_after_fit_and_a_step_in_eval_mode_raises():
    model = mlp(dim=10)
    opt = oo.ScheduleFreeAdamW(model.parameters(), lr=0.05)
    fit(model, opt, TRAIN, epochs=1, seed=0, **QUIET)
    assert mode(opt) == "eval"
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    h = fit(model, opt, TRAIN, val=VAL, epochs=1, seed=1, **QUIET)  # fit switches back itself
    assert mode(opt) == "eval" and h["val_loss"][-1] == pytest.approx(val_loss(model), rel=1e-6)


def test_other_optimizers_are_untouched():
    model = mlp(dim=10)
    opt = oo.create("adam", model.parameters(), lr=1e-2)
    assert not has_modes(opt) and mode(opt) is None
    h = fit(model, opt, TRAIN, val=VAL, epochs=1, seed=0, **QUIET)
    assert "optimizer_modes" not in h.config


def test_ema_with_a_schedule_free_optimizer_is_refused():
    model = mlp(dim=10)
    with pytest.raises(ValueError, match="ema cannot be combined with ScheduleFreeAdamW"):
        fit(model, oo.ScheduleFreeAdamW(model.parameters()), TRAIN, ema=0.99, epochs=1, **QUIET)
    with pytest.raises(ValueError, match="ema cannot be combined with AdamWScheduleFree"):
        fit(model, schedulefree.AdamWScheduleFree(model.parameters()), TRAIN, ema=0.99, epochs=1, **QUIET)


# ------------------------------------------------------------------ early stopping
@pytest.mark.parametrize("name", ["optimlab.ScheduleFreeAdamW", "schedulefree.AdamWScheduleFree"])
def test_early_stopping_keeps_and_restores_the_eval_mode_weights(name):
    model = mlp(dim=10)
    opt = OPTIMIZERS[name](model.parameters())
    # no later epoch can improve by 1e9: epoch 1 is the best, epoch 2 stops the run
    h = fit(model, opt, TRAIN, val=VAL, epochs=5, seed=0,
            early_stopping=EarlyStopping(patience=1, min_delta=1e9), **QUIET)
    assert h.status == "early_stopped" and h.best_epoch == 1 and len(h.epochs) == 2
    ref = mlp(dim=10)
    by_hand(ref, OPTIMIZERS[name](ref.parameters()), epochs=1)  # x after epoch 1
    assert same_weights(model, ref)
    assert h["val_loss"][0] == pytest.approx(val_loss(model), rel=1e-6, abs=1e-7)
    assert mode(opt) == "eval"


# ------------------------------------------------------------------ checkpoints
class Crash(Exception):
    pass


class CrashAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.step == self.step:
            raise Crash


@pytest.mark.parametrize("name", ["optimlab.ScheduleFreeAdamW", "optimlab.ScheduleFreeSGD",
                                  "schedulefree.AdamWScheduleFree"])
@pytest.mark.parametrize("every, crash", [(5, 13), (None, 25)])  # resume mid-epoch / at an epoch's end
def test_resume_is_bit_identical_and_the_checkpoint_holds_x(tmp_path, name, every, crash):
    def run(path, callbacks=(), resume=False):
        model = bn_mlp(dropout=0.2)  # BatchNorm statistics and dropout's RNG must come back exactly too
        opt = OPTIMIZERS[name](model.parameters())
        h = fit(model, opt, TRAIN, val=VAL, epochs=3, batch_size=32, seed=0, checkpoint=path,
                checkpoint_every=every, callbacks=callbacks, resume=resume, **QUIET)
        return model, opt, h

    whole, whole_opt, h = run(tmp_path / "a.pt")
    with pytest.raises(Crash):
        run(tmp_path / "b.pt", callbacks=[CrashAt(crash)])
    resumed, resumed_opt, h2 = run(tmp_path / "b.pt", resume=True)
    assert h2.config["resumed_from_step"] == (10 if every else 19)
    assert same_weights(whole, resumed)
    assert h2["val_loss"] == h["val_loss"] and h2["train_loss"] == h["train_loss"]
    a, b = whole_opt.state_dict(), resumed_opt.state_dict()
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])

    # the checkpoint's model is the evaluation model x (BatchNorm recomputed there) ...
    state = ckpt.load(tmp_path / "a.pt")
    assert same_weights_dict(state["model"], whole.state_dict())
    assert all(not g["train_mode"] for g in state["optimizer"]["param_groups"])
    # ... and train_model the exact training point: the uninterrupted run by hand, never switched
    ref = bn_mlp(dropout=0.2)
    ref_opt = OPTIMIZERS[name](ref.parameters())
    torch.manual_seed(0)  # fit seeds torch (dropout) before its first epoch
    by_hand(ref, ref_opt, epochs=3, end_in_eval=False)
    assert same_weights_dict(state["train_model"], ref.state_dict())


def same_weights_dict(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_training_point_is_refused(tmp_path):
    model = mlp(dim=10)
    fit(model, oo.ScheduleFreeSGD(model.parameters(), lr=0.5), TRAIN, epochs=1, seed=0,
        checkpoint=tmp_path / "c.pt", **QUIET)
    state = ckpt.load(tmp_path / "c.pt")
    state["train_model"].pop("0.weight")
    ckpt.save(state, tmp_path / "c.pt")
    model = mlp(dim=10)
    with pytest.raises(ckpt.CheckpointError, match="'train_model'"):
        fit(model, oo.ScheduleFreeSGD(model.parameters(), lr=0.5), TRAIN, epochs=2, seed=0,
            checkpoint=tmp_path / "c.pt", resume=True, **QUIET)


# ------------------------------------------------------------------ BatchNorm
@pytest.mark.parametrize("batch_size, used", [(8, BN_BATCHES), (32, 19)])  # 75 / 19 batches an epoch
def test_batchnorm_statistics_are_recomputed_at_x_as_update_bn_does(batch_size, used):
    model = bn_mlp()
    opt = oo.ScheduleFreeAdamW(model.parameters(), lr=0.05)
    h = fit(model, opt, TRAIN, val=VAL, epochs=2, batch_size=batch_size, seed=0, **QUIET)
    assert h.config["optimizer_modes"]["batchnorm_recomputed_batches"] == used

    ref = bn_mlp()
    ref_opt = oo.ScheduleFreeAdamW(ref.parameters(), lr=0.05)
    by_hand(ref, ref_opt, epochs=2, batch_size=batch_size)
    trained_stats = ref[1].running_mean.clone()
    inputs = [xb for xb, _ in itertools.islice(TensorBatches(TRAIN, batch_size).epoch(0, 1), BN_BATCHES)]
    assert len(inputs) == used
    torch.optim.swa_utils.update_bn(inputs, ref)
    assert same_weights(model, ref)  # x, and BatchNorm's statistics at x (running mean, var, count)
    assert not torch.allclose(trained_stats, ref[1].running_mean)  # the recompute changed them
    assert h["val_loss"][-1] == pytest.approx(val_loss(ref), rel=1e-6)
    assert all(m.training for m in model.modules())  # fit leaves the module modes as they were


# ------------------------------------------------------------------ lr_find
@pytest.mark.parametrize("start", ["fresh", "trained", "evaluating"])
@pytest.mark.parametrize("name", ["optimlab.ScheduleFreeAdamW", "schedulefree.AdamWScheduleFree"])
def test_lr_find_leaves_the_optimizer_in_the_mode_it_found(name, start):
    model = mlp(dim=10)
    opt = OPTIMIZERS[name](model.parameters())
    if start != "fresh":
        by_hand(model, opt, epochs=1)  # ends in eval mode
        if start == "trained":
            opt.train()
    found = mode(opt)
    weights = copy.deepcopy(model.state_dict())
    sd = copy.deepcopy(opt.state_dict())
    result = lr_find(model, opt, TRAIN, num_steps=20, batch_size=32, start_lr=1e-4, end_lr=1.0)
    assert len(result.lrs) > 5  # the ramp trained (a step in eval mode would have raised)
    assert mode(opt) == found
    assert same_weights_dict(model.state_dict(), weights)
    now = opt.state_dict()
    # (lr_find's restore adds torch's default 'differentiable': False to optimlab's groups; not a mode)
    assert [{k: v for k, v in g.items() if k != "differentiable"} for g in now["param_groups"]] == sd["param_groups"]
    assert all(torch.equal(sd["state"][i][k], now["state"][i][k]) for i in sd["state"] for k in sd["state"][i])


# ------------------------------------------------------------------ showdown
def test_showdown_scores_a_schedule_free_row_at_x(tmp_path, monkeypatch):
    from optimlab import data, models
    from optimlab.showdown import ShowdownConfig, run_showdown
    from optimlab.train import _data
    from tests.test_showdown import tiny_dataset

    monkeypatch.setattr(data, "load", lambda name, **kw: tiny_dataset())
    made = []
    create = oo.create
    monkeypatch.setattr(oo, "create", lambda *a, **kw: made.append(create(*a, **kw)) or made[-1])
    built = []
    cnn = models.lecture_cnn
    monkeypatch.setattr(models, "lecture_cnn", lambda *a, **kw: built.append(cnn(*a, **kw)) or built[-1])
    cfg = ShowdownConfig(optimizers=("schedulefree_adamw",), epochs=1, batch_size=32, seeds=1,
                         out=str(tmp_path / "sd"), checkpoint_every=3, jobs=1)
    row = run_showdown(cfg, quiet=True)["lecture"]["schedulefree_adamw"][0]
    model, opt = built[-1], made[-1]
    assert isinstance(opt, oo.ScheduleFreeAdamW) and mode(opt) == "eval"
    ds = tiny_dataset()
    at_x = _data.evaluate(model, ds.val, F.cross_entropy)[0]
    assert row["history"]["epochs"][-1]["val_loss"] == pytest.approx(at_x, rel=1e-6)
    opt.train()
    assert abs(_data.evaluate(model, ds.val, F.cross_entropy)[0] - at_x) > 1e-4  # y would score otherwise
