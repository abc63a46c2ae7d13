"""Weight EMA: the update formula, warm-up, the evaluation swap, state_dict,
and the proof on a noisy quadratic that the average ends nearer the optimum."""

import io

import pytest
import torch
from torch import nn

from optimlab.ema import EMA


def test_update_follows_the_formula_over_a_sequence_of_weights():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6, dtype=torch.float64))
    ema = EMA([p], decay=0.9)
    expected = p.detach().clone()
    for _ in range(25):
        with torch.no_grad():
            p.add_(torch.randn(6, dtype=torch.float64))
        ema.update()
        expected = 0.9 * expected + 0.1 * p.detach()
    torch.testing.assert_close(ema.shadow["[0]"], expected, rtol=1e-12, atol=1e-12)
    assert ema.num_updates == 25


def test_warmup_decay_rule_and_its_effect():
    ema = EMA([nn.Parameter(torch.zeros(1))], decay=0.99, warmup=True)
    decays = []
    for n in range(1000):
        decays.append(ema.current_decay())
        assert decays[-1] == min(0.99, (1 + n) / (10 + n))
        ema.update()
    assert decays[0] == 0.1 and decays[-1] == 0.99

    # The weights jump from 0 to 1: with warm-up the average forgets the start far sooner.
    for warmup in (False, True):
        p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        ema = EMA([p], decay=0.99, warmup=warmup)
        with torch.no_grad():
            p.fill_(1.0)
        for _ in range(20):
            ema.update()
        if warmup:
            assert ema.shadow["[0]"].item() > 0.6
        else:
            assert ema.shadow["[0]"].item() == pytest.approx(1 - 0.99 ** 20, rel=1e-12)


def test_average_parameters_swaps_in_and_back_out_even_on_error():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    raw = [p.detach().clone() for p in model.parameters()]
    tensors = [p for p in model.parameters()]

    with ema.average_parameters():
        for (name, p), r in zip(model.named_parameters(), raw):
            assert torch.equal(p, ema.shadow[name]) and not torch.equal(p, r)
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))

    with pytest.raises(RuntimeError, match="boom"), ema.average_parameters():
        raise RuntimeError("boom")
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))
    assert all(a is b for a, b in zip(model.parameters(), tensors)), "swapped in place"


def _noisy_quadratic_run(seed, steps, ema_decay=0.99, *, checkpoint_at=None):
    """SGD on ½‖θ − θ*‖² with noisy gradients; returns (θ*, raw θ, EMA weights)."""
    gen = torch.Generator().manual_seed(seed)
    dim = 50
    optimum = torch.randn(dim, generator=gen, dtype=torch.float64)
    model = nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(5 * torch.randn(1, dim, generator=gen, dtype=torch.float64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = EMA(model, decay=ema_decay, warmup=True)
    for step in range(steps):
        if step == checkpoint_at:
            buffer = io.BytesIO()
            torch.save(ema.state_dict(), buffer)
            buffer.seek(0)
            ema = EMA(model, decay=ema_decay, warmup=True)
            ema.load_state_dict(torch.load(buffer))
        optimizer.zero_grad()
        w = model.weight.view(-1)
        noise = torch.randn(dim, generator=gen, dtype=torch.float64)
        (0.5 * (w - optimum).pow(2).sum() + (noise * w).sum()).backward()  # grad = θ − θ* + ξ
        optimizer.step()
        ema.update()
    with ema.average_parameters():
        averaged = model.weight.detach().view(-1).clone()
    return optimum, model.weight.detach().view(-1).clone(), averaged


@pytest.mark.parametrize("seed", range(3))
def test_ema_weights_end_closer_to_the_optimum_than_raw_weights(seed):
    optimum, raw, averaged = _noisy_quadratic_run(seed, steps=800)
    raw_error = (raw - optimum).norm().item()
    ema_error = (averaged - optimum).norm().item()
    # Raw SGD jitters at a noise floor of ~sqrt(dim · lr/(2 − lr)); the average is several times closer.
    assert raw_error > 1.0
    assert ema_error < 0.5 * raw_error


def test_state_dict_resumes_exactly():
    _, raw_a, ema_a = _noisy_quadratic_run(0, steps=300)
    _, raw_b, ema_b = _noisy_quadratic_run(0, steps=300, checkpoint_at=137)
    assert torch.equal(raw_a, raw_b) and torch.equal(ema_a, ema_b)


def test_load_state_dict_rejects_a_different_model():
    ema = EMA(nn.Linear(3, 2), decay=0.9)
    with pytest.raises(ValueError, match="missing=\\['bias'\\]"):
        EMA(nn.Linear(3, 2), decay=0.9).load_state_dict(
            {**ema.state_dict(), "shadow": {"weight": ema.shadow["weight"]}})
    with pytest.raises(ValueError, match="shadow\\['weight'\\] has shape \\(2, 3\\)"):
        EMA(nn.Linear(4, 2), decay=0.9).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="num_updates=-3"):
        EMA(nn.Linear(3, 2)).load_state_dict({**ema.state_dict(), "num_updates": -3})


@pytest.mark.parametrize("kwargs, argument", [
    (dict(decay=1.0), "decay=1.0"),
    (dict(decay=-0.1), "decay=-0.1"),
    (dict(decay=float("nan")), "decay=nan"),
])
def test_bad_input_raises_value_error_naming_argument_and_value(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        EMA(nn.Linear(2, 2), **kwargs)
    with pytest.raises(ValueError, match="no floating-point parameters"):
        EMA(nn.ReLU())


# ------------------------------------------------------------------ buffers (BatchNorm)
def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _train_steps(model, steps, hook, seed=1):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = 2 + 3 * torch.randn(32, 4, generator=gen)  # far from BatchNorm's initial statistics
        y = torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        hook()


def test_buffers_average_matches_torch_averaged_model_with_use_buffers():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = _bn_model()
    ema = EMA(model, decay=0.9, buffers="average")
    oracle = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    oracle.update_parameters(model)  # its first update copies the model: EMA starts from a copy too

    def both():
        ema.update()
        oracle.update_parameters(model)

    _train_steps(model, 30, both)
    for name, p in oracle.module.named_parameters():
        torch.testing.assert_close(ema.shadow[name], p.detach(), rtol=1e-6, atol=1e-7)
    for name in ("1.running_mean", "1.running_var"):
        expected = dict(oracle.module.named_buffers())[name]
        torch.testing.assert_close(ema.buffer_shadow[name], expected, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(ema.buffer_shadow[name], dict(model.named_buffers())[name]), "averaged, not live"
    assert set(ema.buffer_shadow) == {"1.running_mean", "1.running_var"}  # num_batches_tracked is an integer


def test_average_parameters_swaps_buffers_in_and_restores_them():
    model = _bn_model()
    ema = EMA(model, decay=0.8)  # default: buffers="average"
    _train_steps(model, 5, ema.update)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.average_parameters():
        state = model.state_dict()
        for name in ("1.running_mean", "1.running_var"):
            assert torch.equal(state[name], ema.buffer_shadow[name])
        assert torch.equal(state["1.num_batches_tracked"], live["1.num_batches_tracked"])
        model.train()
        model(torch.randn(16, 4))  # a train-mode forward inside moves the running statistics...
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())  # ...and is undone
    with pytest.raises(RuntimeError, match="boom"), ema.average_parameters():
        raise RuntimeError("boom")
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())


def test_buffers_copy_uses_the_live_statistics_and_restores_them():
    model = _bn_model()
    ema = EMA(model, decay=0.8, buffers="copy")
    _train_steps(model, 5, ema.update)
    assert ema.buffer_shadow == {}
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.average_parameters():
        state = model.state_dict()
        for name, value in state.items():
            if "running" in name or "num_batches" in name:
                assert torch.equal(value, live[name])   # the model's current statistics
            else:
                assert torch.equal(value, ema.shadow[name])
        assert not torch.equal(state["3.weight"], live["3.weight"])  # the averaged weights are in
        torch.optim.swa_utils.update_bn([torch.randn(16, 4)], model)  # recompute at the averaged weights
        assert not torch.equal(model.state_dict()["1.running_mean"], live["1.running_mean"])
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())


def test_state_dict_keeps_buffer_averages_and_validates_them():
    model = _bn_model()
    ema = EMA(model, decay=0.8)
    _train_steps(model, 4, ema.update)
    state = ema.state_dict()
    assert state["buffers"] == "average" and set(state["buffer_shadow"]) == {"1.running_mean", "1.running_var"}
    fresh = EMA(_bn_model(), decay=0.8)
    fresh.load_state_dict(state)
    for name in state["buffer_shadow"]:
        assert torch.equal(fresh.buffer_shadow[name], ema.buffer_shadow[name])

    wrong = {**state, "buffer_shadow": {"1.running_mean": state["buffer_shadow"]["1.running_mean"]}}
    before = {k: v.clone() for k, v in fresh.shadow.items()}
    with pytest.raises(ValueError, match=r"buffer_shadow does not match the model: missing=\['1.running_var'\]"):
        EMA(_bn_model(), decay=0.8).load_state_dict(wrong)
    bad_shape = {**state, "buffer_shadow": {**state["buffer_shadow"], "1.running_var": torch.ones(5)}}
    with pytest.raises(ValueError, match=r"buffer_shadow\['1.running_var'\] has shape \(5,\), the model's is \(8,\)"):
        fresh.load_state_dict(bad_shape)
    assert all(torch.equal(v, before[k]) for k, v in fresh.shadow.items()), "nothing changed on refusal"


def test_a_state_without_buffer_averages_still_loads_and_starts_them_from_the_model():
    model = _bn_model()
    ema = EMA(model, decay=0.8)
    _train_steps(model, 4, ema.update)
    old = {k: v for k, v in ema.state_dict().items() if k not in ("buffers", "buffer_shadow")}  # older optimlab
    other = _bn_model()
    _train_steps(other, 3, lambda: None, seed=5)
    loaded = EMA(other, decay=0.8)
    loaded.load_state_dict(old)
    assert loaded.num_updates == 4
    for name, p in loaded.shadow.items():
        assert torch.equal(p, ema.shadow[name])
    with loaded.average_parameters():  # the buffers' average starts from the model's at the next use
        assert torch.equal(other.state_dict()["1.running_mean"], dict(other.named_buffers())["1.running_mean"])
        assert torch.equal(loaded.buffer_shadow["1.running_mean"], dict(other.named_buffers())["1.running_mean"])


def test_bad_buffers_mode_raises_naming_it():
    with pytest.raises(ValueError, match="buffers='sometimes'"):
        EMA(nn.Linear(2, 2), buffers="sometimes")
    with pytest.raises(ValueError, match="buffers=None"):
        EMA(nn.Linear(2, 2), buffers=None)


def test_fit_validates_a_batchnorm_model_at_the_averaged_weights_and_buffers():
    import copy

    from optimlab.train import _data, fit

    gen = torch.Generator().manual_seed(0)
    x = 2 + 3 * torch.randn(256, 4, generator=gen)
    y = (x[:, 0] > 2).long() + (x[:, 1] > 2).long()
    xv = 2 + 3 * torch.randn(128, 4, generator=gen)
    yv = (xv[:, 0] > 2).long() + (xv[:, 1] > 2).long()
    model = _bn_model()
    ema = EMA(model, decay=0.9, buffers="average")
    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), val=(xv, yv), epochs=2,
                  batch_size=32, ema=ema, seed=0, store=False, quiet=True)

    averaged = copy.deepcopy(model)
    averaged.load_state_dict({**model.state_dict(), **ema.shadow, **ema.buffer_shadow})
    loss, acc = _data.evaluate(averaged, (xv, yv), nn.functional.cross_entropy)
    assert history.last["val_loss"] == loss and history.last["val_acc"] == acc
    live_loss, _ = _data.evaluate(model, (xv, yv), nn.functional.cross_entropy)
    assert live_loss != loss  # the check can fail: raw weights and statistics give another loss
