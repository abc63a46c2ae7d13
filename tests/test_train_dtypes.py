"""fit, its monitor, diagnostics, EMA and checkpoints on float64, bfloat16 and float16 models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import optimlab.optim as oo
from optimlab.ema import EMA
from optimlab.train import fit

DTYPES = [torch.float64, torch.bfloat16, torch.float16]


def model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def data(dtype, n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x.to(dtype), y


def run(dtype, epochs, tmp_path, **kwargs):
    m = model(dtype)
    x, y = data(dtype)
    opt = oo.SGD(m.parameters(), lr=0.1, momentum=0.9)
    h = fit(m, opt, (x, y), val=(x[:64], y[:64]), epochs=epochs, batch_size=64, seed=0, store=False, quiet=True,
            ema=0.9, sample_every=2, **kwargs)
    return m, h


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fit_trains_and_monitors_every_dtype(dtype, tmp_path):
    m, h = run(dtype, 2, tmp_path, checkpoint=tmp_path / "c.pt")
    assert all(p.dtype == dtype for p in m.parameters())
    ref_m, ref = run(torch.float32, 2, tmp_path)
    # the same run in float32 is the oracle; the tolerance is the dtype's resolution over 8 steps
    tol = {torch.float64: 1e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    for key in ("train_loss", "val_loss", "grad_norm", "update_ratio/0", "update_ratio/2"):
        got, want = h.epochs[-1][key], ref.epochs[-1][key]
        assert math.isfinite(got) and abs(got - want) <= tol * max(1.0, abs(want)), (key, got, want)
    assert h.steps and all(math.isfinite(s["update_ratio/0"]) for s in h.steps)
    assert isinstance(h.diagnoses, list)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_resume_is_bit_identical_for_every_dtype(dtype, tmp_path):
    whole, _ = run(dtype, 3, tmp_path, checkpoint=tmp_path / "whole.pt")
    run(dtype, 1, tmp_path, checkpoint=tmp_path / "part.pt")
    resumed, h = run(dtype, 3, tmp_path, checkpoint=tmp_path / "part.pt", resume=True)
    assert len(h.epochs) == 3
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert a.dtype == b.dtype == dtype
        assert torch.equal(a, b)


def test_monitor_norms_of_float16_gradients_do_not_overflow(tmp_path):
    """A float16 gradient of norm > 65504 is finite: the monitor must not call it inf."""
    m = nn.Linear(200, 1).half()
    with torch.no_grad():
        m.weight.fill_(0.01)
        m.bias.zero_()
    # out = 80, each weight gradient 2·80·40 = 6400 (finite), their norm 6400·√200 ≈ 90510 (not)
    x = torch.full((8, 200), 40.0, dtype=torch.float16)
    y = torch.zeros(8, 1, dtype=torch.float16)
    h = fit(m, oo.SGD(m.parameters(), lr=0.0), (x, y), loss="mse", epochs=1, batch_size=8, store=False,
            quiet=True, on_nonfinite="raise")
    grad_norm = h.epochs[-1]["grad_norm"]
    assert 65504 < grad_norm < math.inf


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_ema_of_16bit_weights_averages_in_float32(dtype):
    """decay 0.999 on bfloat16 weights: each update moves the average by 1e-3·Δθ, far below
    bfloat16's resolution; a float32 shadow keeps it (oracle: the same EMA on float32 weights)."""
    w = nn.Parameter(torch.ones(4, dtype=dtype))
    w32 = nn.Parameter(torch.ones(4))
    ema, ema32 = EMA([w], decay=0.999), EMA([w32], decay=0.999)
    with torch.no_grad():
        for t in range(50):
            w.add_(0.5)
            w32.copy_(w.float())
            ema.update()
            ema32.update()
    assert ema.shadow["[0]"].dtype == torch.float32
    assert torch.allclose(ema.shadow["[0]"], ema32.shadow["[0]"], rtol=1e-6)
    assert ema.shadow["[0]"][0] > 1.5  # a bfloat16 shadow would still read 1.0
