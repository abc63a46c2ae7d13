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
