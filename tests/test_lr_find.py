"""The learning-rate range test: state restored bit for bit, a suggestion that trains, 100x that fails."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

import optimlab
from optimlab import models, optim
from optimlab.lrfind import LRFinderResult, lr_find
from optimlab.sweep.data import synthetic
from tests.train_synth import isolated  # noqa: F401  (one thread, private run store)


@pytest.fixture(scope="module")
def digits():
    return synthetic(1024, 512, seed=0)


def _cnn(seed=0):
    torch.manual_seed(seed)
    return models.lecture_cnn()


def test_exported_lazily_from_the_package():
    assert optimlab.lr_find is lr_find


def test_everything_is_restored_bit_for_bit(digits):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.BatchNorm1d(32),
                                torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 10))
    opt = optim.create("adam", model.parameters(), lr=1e-3)
    x, y = digits["train"]
    for _ in range(3):  # an optimizer with state, gradients present
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
        opt.step()
    model.eval()
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_grads = [p.grad.clone() for p in model.parameters()]
    before_opt = json.dumps({"groups": opt.state_dict()["param_groups"]})
    before_state = {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()

    result = lr_find(model, opt, digits, num_steps=40, end_lr=1.0, batch_size=32)
    assert len(result.lrs) > 10

    for k, v in model.state_dict().items():
        assert torch.equal(v, before_model[k]), k
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before_grads))
    assert not model.training and not any(m.training for m in model.modules())
    assert json.dumps({"groups": opt.state_dict()["param_groups"]}) == before_opt
    after_state = opt.state_dict()["state"]
    assert after_state.keys() == before_state.keys()
    for i, s in before_state.items():
        for k, v in s.items():
            assert torch.equal(after_state[i][k], v), (i, k)
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:2], rng[2][1:2]))
    # the optimizer still drives the same tensors: a step after the test equals a step without it
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], model.parameters()))


@pytest.mark.parametrize("name, hyper", [("adam", {}), ("sgd", {"momentum": 0.9})])
def test_suggestion_trains_and_100x_diverges_on_the_lecture_cnn(digits, name, hyper, tmp_path):
    model = _cnn()
    result = lr_find(model, optim.create(name, model.parameters(), **hyper), digits, start_lr=1e-6, end_lr=10,
                     num_steps=100, batch_size=32, plot=tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 10_000
    s = result.suggestion
    assert s is not None and result.lrs[0] < s < result.minimum
    assert math.isclose(result.min_over_10, result.minimum / 10)

    def one_epoch(lr):
        m = _cnn()
        h = optimlab.fit(m, optim.create(name, m.parameters(), lr=lr, **hyper), digits, epochs=1, batch_size=32,
                         seed=0, store=False, quiet=True, monitor=False, on_nonfinite="stop")
        return h

    good = one_epoch(s)
    assert good.status == "completed" and good.last["val_acc"] > 0.9, (s, good.last)
    bad = one_epoch(100 * s)
    failed = bad.status == "nonfinite" or (bad.last["val_acc"] < 0.3 and bad.last["val_loss"] > 2.0)
    assert failed, (100 * s, bad.status, bad.last)


def test_stops_on_divergence_before_the_end(digits):
    model = _cnn()
    result = lr_find(model, optim.create("sgd", model.parameters(), momentum=0.9), digits, start_lr=1e-4,
                     end_lr=1e4, num_steps=120, batch_size=32, smooth=0.9)
    assert result.stop in ("diverged", "nonfinite")
    assert len(result.lrs) < 120 and result.diverged_at > result.lrs[-1]
    assert all(math.isfinite(v) for v in result.smoothed)
    assert "suggestion" in repr(result) and isinstance(result, LRFinderResult)


def test_optimizer_by_name_cycles_small_data_and_validates(digits):
    model = _cnn()
    small = (digits["train"][0][:64], digits["train"][1][:64])
    result = lr_find(model, "adam", small, num_steps=12, batch_size=32, skip_start=0, skip_end=0)
    assert len(result.lrs) == 12 or result.stop != "end"
    with pytest.raises(ValueError, match="end_lr"):
        lr_find(model, "adam", small, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="num_steps"):
        lr_find(model, "adam", small, num_steps=1)


def test_cli_writes_the_plot_and_json(tmp_path, capsys):
    from optimlab.cli import main

    png, out = tmp_path / "lr.png", tmp_path / "lr.json"
    code = main(["lr-find", "--dataset", "synthetic", "--optimizer", "sgd", "--hyper", "momentum=0.9",
                 "--steps", "30", "--batch-size", "32", "-o", str(png), "--json", str(out)])
    assert code == 0
    assert png.stat().st_size > 10_000
    data = json.loads(out.read_text())
    assert len(data["lrs"]) == len(data["smoothed"]) > 0 and data["suggestion"] > 0
    assert "suggested learning rate" in capsys.readouterr().out
