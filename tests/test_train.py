"""optimlab.train.fit: the three batch regimes, index slicing and DataLoaders,
determinism, early stopping, schedules, clipping, EMA, monitoring values
checked against hand computations, the progress display and quiet mode."""

import math
import multiprocessing
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import optimlab
from optimlab import optim
from optimlab import schedules as S
from optimlab.train import EarlyStopping, History, Trainer, diagnose, fit
from optimlab.train._data import TensorBatches
from tests.train_synth import blobs, isolated, mlp, same_weights  # noqa: F401 (isolated: autouse fixture)

TRAIN, VAL = blobs()
QUIET = {"quiet": True, "store": False}


def adam(model, lr=1e-2):
    return optim.create("adam", model.parameters(), lr=lr)


@pytest.mark.parametrize("batch_size, steps", [("full", 1), (1, 128), (32, 4), (100, 2)])
def test_batch_regimes(batch_size, steps):
    model = mlp()
    small = (TRAIN[0][:128], TRAIN[1][:128])
    h = fit(model, adam(model), small, epochs=2, batch_size=batch_size, seed=0, **QUIET)
    assert [r["steps"] for r in h.epochs] == [steps, steps] and h.last["step"] == 2 * steps
    assert all(r["samples"] == 128 for r in h.epochs)
    assert h.config["steps_per_epoch"] == steps and h.config["batch_size"] == batch_size


def test_tensors_are_sliced_by_index_never_fetched_per_sample(monkeypatch):
    def no_per_sample(self, i):
        raise AssertionError("per-sample __getitem__ was called")

    monkeypatch.setattr(TensorDataset, "__getitem__", no_per_sample)
    model = mlp()
    h = fit(model, adam(model), TensorDataset(*TRAIN), val=TensorDataset(*VAL), epochs=1, batch_size=32,
            seed=0, **QUIET)
    assert h.last["val_acc"] > 0.5
    batches = TensorBatches(TRAIN, 32)
    perm = batches.order(seed=3, epoch=1)
    first = next(batches.epoch(seed=3, epoch=1))
    assert torch.equal(first[0], TRAIN[0][perm[:32]]) and sorted(perm.tolist()) == list(range(512))


def test_same_seed_same_weights_bit_for_bit_different_seed_differs():
    runs = []
    for seed in (7, 7, 8):
        model = mlp(hidden=16)
        model.insert(1, torch.nn.Dropout(0.3))  # the model's own randomness follows the seed too
        fit(model, adam(model), TRAIN, val=VAL, epochs=2, batch_size=16, seed=seed, **QUIET)
        runs.append(model)
    assert same_weights(runs[0], runs[1]) and not same_weights(runs[0], runs[2])


def test_dataloader_is_accepted_and_deterministic_with_a_seed():
    models = []
    for _ in range(2):
        model = mlp()
        loader = DataLoader(TensorDataset(*TRAIN), batch_size=64, shuffle=True)
        h = fit(model, adam(model), loader, val=DataLoader(TensorDataset(*VAL), batch_size=100),
                epochs=2, seed=1, **QUIET)
        models.append(model)
        assert h.last["steps"] == 8 and h.last["val_acc"] > 0.7
    assert same_weights(*models)


def test_data_forms_dataset_dict_and_optimizer_by_name():
    class DS:  # the shape of optimlab.data.Dataset
        train, val = TRAIN, VAL

    model = mlp()
    h1 = fit(model, "adam", DS(), epochs=1, batch_size=64, seed=0, **QUIET)
    assert h1.config["optimizer"] == "Adam" and h1.last["val_loss"] is not None
    h2 = fit(mlp(), "sgd", {"train": TRAIN, "val": VAL}, epochs=1, seed=0, **QUIET)
    assert "val_acc" in h2.last
    with pytest.raises(ValueError, match="a data dict needs"):
        fit(mlp(), "sgd", {"training": TRAIN}, **QUIET)


def test_early_stopping_stops_and_restores_the_best_weights():
    train, val = blobs(n=24, n_val=256, noise=3.0)  # overfits after a few epochs
    model = mlp(hidden=256)
    best = {}

    class Spy:
        def on_epoch_end(self, trainer, row):
            if row["val_loss"] == min(r["val_loss"] for r in trainer.history.epochs):
                best.update({k: v.clone() for k, v in model.state_dict().items()})

    h = fit(model, adam(model), train, val=val, epochs=50, batch_size="full", seed=0,
            early_stopping=3, callbacks=[Spy()], **QUIET)
    assert h.status == "early_stopped" and h.stop["reason"] == "early_stopping"
    assert len(h.epochs) == h.best_epoch + 3 < 50
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in best)
    val_loss = F.cross_entropy(model(val[0]), val[1]).item()
    assert val_loss == pytest.approx(min(h["val_loss"]), rel=1e-6)


def test_early_stopping_arguments():
    es = EarlyStopping.coerce({"patience": 2, "min_delta": 0.1})
    assert es.patience == 2 and EarlyStopping.coerce(None) is None
    assert [es.update(v, i, dict) for i, v in enumerate([1.0, 0.95, 0.5, 0.45, 0.44], 1)] == \
        [False, False, False, False, True]
    assert es.best == 0.5 and es.best_epoch == 3
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(-1)
    with pytest.raises(ValueError, match="early_stopping"):
        EarlyStopping.coerce("soon")


def test_schedule_per_step_drives_the_lr_in_use():
    model = mlp()
    cycle = S.OneCycle(max_lr=0.05, total_steps=32)
    opt = optim.create("sgd", model.parameters(), lr=0.05, momentum=0.9)
    h = fit(model, opt, TRAIN, epochs=2, batch_size=32, seed=0, schedule=cycle, sample_every=1, **QUIET)
    assert [r["lr"] for r in h.steps] == [cycle(t) for t in range(32)]
    assert [r["momentum"] for r in h.steps] == [cycle.momentum(t) for t in range(32)]
    assert h.epochs[0]["lr"] == cycle(15)


def test_schedule_per_epoch_and_reduce_on_plateau():
    model = mlp()
    opt = optim.create("sgd", model.parameters(), lr=0.1)
    h = fit(model, opt, TRAIN, epochs=3, seed=0, schedule=S.step_decay(0.1, 1, 0.5), schedule_unit="epoch",
            **QUIET)
    assert [r["lr"] for r in h.epochs] == [0.1, 0.05, 0.025]
    model = mlp()
    opt = optim.create("sgd", model.parameters(), lr=1e-3)
    plateau = S.ReduceOnPlateau(opt, patience=0, factor=0.5, threshold=0.9)  # asks for -90% per epoch
    h = fit(model, opt, TRAIN, val=VAL, epochs=3, seed=0, schedule=plateau, **QUIET)
    assert [r["lr"] for r in h.epochs] == [1e-3, 1e-3, 5e-4] and opt.param_groups[0]["lr"] == 2.5e-4
    with pytest.raises(ValueError, match="another optimizer"):
        fit(model, adam(model), TRAIN, schedule=S.ReduceOnPlateau(adam(mlp())), **QUIET)


def test_clip_caps_the_update_and_the_monitor_sees_the_unclipped_norm():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = optim.create("sgd", model.parameters(), lr=1.0)
    h = fit(model, opt, TRAIN, epochs=1, batch_size="full", seed=0, clip=0.01, **QUIET)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert step == pytest.approx(0.01, rel=1e-4) and h.last["grad_norm"] > 0.1
    h = fit(model, optim.create("sgd", model.parameters(), lr=1.0), TRAIN, epochs=1, batch_size="full",
            clip={"value": 1e-4}, seed=0, **QUIET)
    assert h.config["clip"] == "{'value': 0.0001}"
    with pytest.raises(ValueError, match="max_norm"):
        fit(model, opt, TRAIN, clip=-1.0, **QUIET)


def test_ema_weights_are_used_for_validation():
    model = mlp()
    h = fit(model, adam(model), TRAIN, val=VAL, epochs=2, batch_size=32, seed=0, ema=0.9, **QUIET)
    assert "EMA(decay=0.9" in h.config["ema"] and h.last["val_acc"] > 0.7


def test_monitoring_values_match_hand_computation():
    model = mlp()
    x, y = TRAIN
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    weights = [p.detach().clone() for p in model.parameters()]
    opt = optim.create("sgd", model.parameters(), lr=0.5)
    h = fit(model, opt, TRAIN, val=VAL, epochs=1, batch_size="full", seed=0, **QUIET)
    row, step = h.epochs[0], h.steps[0]
    assert row["train_loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert row["grad_norm"] == pytest.approx(torch.cat([g.flatten() for g in grads]).norm().item(), rel=1e-5)
    for layer, (iw, ib) in (("0", (0, 1)), ("2", (2, 3))):
        g = torch.cat([grads[iw].flatten(), grads[ib].flatten()]).norm().item()
        w = torch.cat([weights[iw].flatten(), weights[ib].flatten()]).norm().item()
        assert row[f"grad_norm/{layer}"] == pytest.approx(g, rel=1e-5)
        assert step[f"update_ratio/{layer}"] == pytest.approx(0.5 * g / w, rel=1e-4)
        assert step[f"weight_norm/{layer}"] == pytest.approx(w, rel=1e-6)
    assert row["lr"] == 0.5 and row["momentum"] == 0.0 and row["time_s"] > 0 and row["samples_per_s"] > 0
    assert row["val_acc"] == pytest.approx((model(VAL[0]).argmax(1) == VAL[1]).float().mean().item())
    expected = {"epoch", "step", "steps", "samples", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                "momentum", "grad_norm", "grad_norm_max", "time_s", "samples_per_s", "val_time_s"}
    assert expected <= set(row)


def test_step_rows_are_sampled_windows():
    model = mlp()
    h = fit(model, adam(model), TRAIN, epochs=2, batch_size=32, seed=0, sample_every=5, **QUIET)
    assert [r["step"] for r in h.steps] == [5, 10, 15, 16, 21, 26, 31, 32]
    assert h.step_series("epoch") == [1, 1, 1, 1, 2, 2, 2, 2]
    # the epoch's train loss is the sample-weighted mean of the step windows
    windows = [5, 5, 5, 1]
    mean = sum(w * r["loss"] for w, r in zip(windows, h.steps[:4])) / 16
    assert mean == pytest.approx(h.epochs[0]["train_loss"], rel=1e-6)
    assert h["train_loss"] == [r["train_loss"] for r in h.epochs]
    with pytest.raises(KeyError, match="no epoch metric"):
        h["bogus"]


def test_monitor_off_still_trains_and_checks_the_loss():
    model = mlp()
    h = fit(model, adam(model), TRAIN, epochs=1, seed=0, monitor=False, **QUIET)
    assert "grad_norm" not in h.last and h.steps == [] and h.last["train_acc"] > 0.5


def test_regression_loss_without_accuracy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g)
    model = torch.nn.Linear(5, 1)
    h = fit(model, optim.create("sgd", model.parameters(), lr=0.1), (x, y), val=(x, y), loss="mse",
            epochs=5, batch_size=32, seed=0, **QUIET)
    assert h.last["val_acc"] is None and "train_acc" not in h.last and h.last["train_loss"] < 0.05


def test_progress_lines_quiet_and_bar(capsys):
    model = mlp()
    fit(model, adam(model), TRAIN, val=VAL, epochs=2, seed=0, store=False, quiet=True)
    assert capsys.readouterr().err == ""
    fit(model, adam(model), TRAIN, val=VAL, epochs=2, seed=0, store=False, progress=False)
    err = capsys.readouterr().err
    assert "epoch 1/2: loss" in err and "val_acc" in err and "samples/s" in err
    fit(model, adam(model), TRAIN, val=VAL, epochs=2, seed=0, store=False, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2: loss" in err and "epoch 2/2: loss" in err and "epochs" in err


def test_invalid_arguments_are_named():
    model = mlp()
    for kwargs, match in [({"batch_size": 0}, "batch_size"), ({"batch_size": "half"}, "batch_size"),
                          ({"epochs": 0}, "epochs"), ({"seed": -1}, "seed"), ({"loss": "hinge"}, "loss"),
                          ({"on_nonfinite": "ignore"}, "on_nonfinite"), ({"sample_every": 0}, "sample_every"),
                          ({"checkpoint_every": 5}, "checkpoint path"), ({"schedule_unit": "batch"}, "schedule_unit"),
                          ({"ema": "yes"}, "ema"), ({"store": 3}, "store"), ({"schedule": 0.1}, "schedule")]:
        with pytest.raises(ValueError, match=match):
            fit(model, adam(model), TRAIN, **{**QUIET, **kwargs})
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(model, object())
    with pytest.raises(ValueError, match="inputs and targets"):
        fit(model, adam(model), (TRAIN[0], TRAIN[1][:10]), **QUIET)


def test_history_round_trip():
    model = mlp()
    h = fit(model, "sgd", TRAIN, val=VAL, epochs=2, seed=0, **QUIET)
    again = History.from_dict(h.to_dict())
    assert again.to_dict() == h.to_dict() and math.isfinite(again.last["val_loss"])
    assert "History(run_id=" in repr(h) and h.to_json().startswith("{")


def _fresh_import(conn):
    for name in [m for m in sys.modules if m == "optimlab" or m.startswith("optimlab.")]:
        del sys.modules[name]
    import optimlab as fresh

    light = "optimlab.train" not in sys.modules and "optimlab.store" not in sys.modules
    conn.send((light, fresh.fit.__module__, fresh.diagnose.__module__))


def test_import_optimlab_stays_light_and_exports_fit_lazily():
    # in a process forked from this one (torch already loaded), import optimlab afresh
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_fresh_import, args=(send,))
    proc.start()
    assert receive.poll(60)
    assert receive.recv() == (True, "optimlab.train", "optimlab.train.diagnostics")
    proc.join(60)
    assert optimlab.fit is fit and optimlab.diagnose is diagnose


def test_sparse_gradients_are_monitored():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8, sparse=True), torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.randint(0, 50, (64, 2))
    y = torch.randint(0, 3, (64,))
    opt = optim.create("sgd", model.parameters(), lr=0.1)
    h = fit(model, opt, (x, y), epochs=2, batch_size=16, seed=0, **QUIET)
    assert h.last["grad_norm/0"] > 0 and h.status == "completed"
