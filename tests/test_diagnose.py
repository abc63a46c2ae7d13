"""optimlab.diagnose: each of the lectures' failure patterns, recognised on a
real (tiny) run built to fail that way, with the lectures' remedy named; and
no false alarm on a healthy run."""

import math

import pytest
import torch
from torch import nn

import optimlab
from optimlab import optim
from optimlab import schedules as S
from optimlab.train import NonFiniteError, checkpoint, diagnose, fit
from optimlab.train.diagnostics import THRESHOLDS
from tests.train_synth import blobs, isolated, mlp  # noqa: F401 (isolated: autouse fixture)

TRAIN, VAL = blobs()


def run(model, opt, data=TRAIN, **kw):
    kw = {"val": VAL, "epochs": 3, "batch_size": 32, "seed": 0, "quiet": True, "store": False, **kw}
    return fit(model, opt, data, **kw)


def codes(history):
    return [d.code for d in history.diagnoses]


def remedies(history, code):
    return " ".join(r for d in history.diagnoses if d.code == code for r in d.remedies)


def test_healthy_run_has_no_diagnosis():
    model = mlp()
    h = run(model, optim.create("adam", model.parameters(), lr=1e-2), epochs=4)
    assert h.status == "completed" and h.last["val_acc"] > 0.85
    assert h.diagnoses == [] and diagnose(h) == []


def test_lr_too_low_loss_not_decreasing_and_tiny_updates():
    model = mlp()
    h = run(model, optim.create("sgd", model.parameters(), lr=1e-6))
    assert codes(h)[:1] == ["not_decreasing"] and "update_ratio_low" in codes(h)
    text = remedies(h, "not_decreasing")
    assert "too low" in text and "initialisation" in text and "gradient flow" in text
    assert "raise the learning rate" in remedies(h, "update_ratio_low")


def test_rising_lr_decreases_then_increases_and_gradients_explode():
    model = mlp()
    rising = S.ExponentialDecay(0.01, decay_rate=10.0, decay_steps=16)  # x10 every epoch
    h = run(model, optim.create("sgd", model.parameters(), lr=0.01), epochs=4, schedule=rising,
            on_nonfinite="stop")
    assert "loss_increasing" in codes(h) and "exploding_gradients" in codes(h)
    assert "learning rate too high" in remedies(h, "loss_increasing")
    assert "clip" in remedies(h, "exploding_gradients")
    assert "update_ratio_high" in codes(h) and "lower the learning rate" in remedies(h, "update_ratio_high")


def test_plateau_when_the_learning_rate_collapses():
    model = mlp()
    collapse = S.PiecewiseConstant([10], [0.2, 1e-7])  # learns for 10 steps, then barely moves
    h = run(model, optim.create("sgd", model.parameters(), lr=0.2), epochs=5, schedule=collapse)
    assert "plateau" in codes(h), [str(d) for d in h.diagnoses]
    text = remedies(h, "plateau")
    assert "too small" in text and "momentum" in text and "Adam" in text


def test_overfitting_validation_rises_while_training_falls():
    train, val = blobs(n=24, n_val=256, noise=3.0)  # 24 noisy examples, a wide net
    model = mlp(hidden=256)
    h = fit(model, optim.create("adam", model.parameters(), lr=1e-2), train, val=val, epochs=25,
            batch_size="full", seed=0, quiet=True, store=False)
    assert "overfitting" in codes(h)
    assert "early_stopping" in remedies(h, "overfitting") and "Nesterov" in remedies(h, "overfitting")
    d = next(d for d in h.diagnoses if d.code == "overfitting")
    assert d.data["best_epoch"] < 25 and d.data["last_val_loss"] > d.data["best_val_loss"]


def test_vanishing_gradients_in_a_deep_sigmoid_net():
    model = mlp(depth=10, act=nn.Sigmoid)
    h = run(model, optim.create("sgd", model.parameters(), lr=0.1), epochs=2)
    assert "vanishing_gradients" in codes(h)
    d = next(d for d in h.diagnoses if d.code == "vanishing_gradients")
    assert d.data["smallest"] == "0" and d.data["largest"] == "20"  # the first layer starves
    text = remedies(h, "vanishing_gradients")
    assert "He" in text and "ReLU" in text and "batch normalization" in text


def test_nan_loss_stops_at_once_naming_step_and_layer_and_keeps_last_good_checkpoint(tmp_path):
    model = mlp()
    path = tmp_path / "ckpt.pt"
    opt = optim.create("sgd", model.parameters(), lr=1e4)
    with pytest.raises(NonFiniteError) as info:
        run(model, opt, checkpoint=path, checkpoint_every=2)
    err = info.value
    assert err.step == 7 and err.epoch == 1 and err.layer == "0" and err.parameters[0] == "0.weight"
    assert "step 7" in str(err) and "'0'" in str(err) and str(path) in str(err) and "clip" in str(err)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied
    saved = checkpoint.load(path)
    assert saved["step"] == 6 and err.checkpoint == str(path)  # last good state, not overwritten
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    h = err.history
    assert h.status == "nonfinite" and h.stop["step"] == 7 and codes(h)[0] == "nonfinite"
    assert "clip" in remedies(h, "nonfinite") and "log(0)" in remedies(h, "nonfinite")
    assert h.diagnoses[0].severity == "error"


class Log(nn.Module):
    def forward(self, x):
        return torch.log(torch.relu(x))  # log(0) = -inf for every negative input


def test_log_of_zero_names_the_first_layer_with_a_nonfinite_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 8), Log(), nn.Linear(8, 3))
    model[0].requires_grad_(False)  # frozen: the first trainable layer is "2"
    opt = optim.create("sgd", model[2].parameters(), lr=0.1)
    h = run(model, opt, on_nonfinite="stop")
    assert h.status == "nonfinite" and h.stop["step"] == 1 and h.stop["layer"] == "2"
    assert h.epochs == [] and "log(0)" in remedies(h, "nonfinite")


def test_update_ratio_far_above_the_rule_of_thumb():
    model = mlp()
    h = run(model, optim.create("sgd", model.parameters(), lr=3.0), epochs=2, on_nonfinite="stop")
    assert "update_ratio_high" in codes(h)
    assert all(v > THRESHOLDS["ratio_high"] for v in
               next(d for d in h.diagnoses if d.code == "update_ratio_high").data["layers"].values())


def test_diagnose_reads_dicts_and_stored_histories_and_thresholds():
    model = mlp()
    h = run(model, optim.create("sgd", model.parameters(), lr=1e-6))
    again = optimlab.diagnose(h.to_dict())
    assert [d.code for d in again] == codes(h)
    assert [d.to_dict() for d in again] == [d.to_dict() for d in h.diagnoses]
    # raising the bar for "decreasing" to 0.0001% turns the verdict off
    assert "not_decreasing" not in [d.code for d in diagnose(h, not_decreasing=-1.0)]
    with pytest.raises(ValueError, match="unknown threshold"):
        diagnose(h, steepness=3)
    assert "remedy:" in str(h.diagnoses[0])


def test_nonfinite_epoch_loss_without_stop_record_is_diagnosed():
    history = {"epochs": [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": math.inf}], "steps": []}
    assert [d.code for d in diagnose(history)][:1] == ["nonfinite"]
