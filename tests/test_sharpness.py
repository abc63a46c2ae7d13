"""Sharpness (λ_max of the Hessian): the eigenvalue against exact oracles (known quadratics, a
small MLP's full Hessian), and fit(..., sharpness_every=N): the run undisturbed (bit-identical
weights, .grad, buffers, RNG and mode), the rows, resume, the store, the plot and bad input."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

from optimlab.train import fit
from optimlab.train.sharpness import (SharpnessTracker, plot_sharpness, sharpness_figure, sharpness_series,
                                      top_eigenvalue)
from tests.train_synth import StopAt


def _quadratic(eigenvalues, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), dtype=torch.float64, generator=gen, requires_grad=True)
    return a, x, (lambda: 0.5 * x @ a @ x)


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("eigenvalues, expected", [
    ([5.0, 2.0, 1.0, -0.5, -3.0], 5.0),        # the largest is also the largest in magnitude
    ([2.0, 1.0, -1.0, -7.0], 2.0),             # a negative eigenvalue of larger magnitude: still +2
    ([-1.0, -2.0, -8.0], -1.0),                # negative definite: the largest is -1, not -8
])
def test_quadratic_returns_the_largest_algebraic_eigenvalue(eigenvalues, expected, method):
    a, x, loss = _quadratic(eigenvalues)
    found = top_eigenvalue(loss, [x], iters=20000, tol=1e-10, generator=torch.Generator().manual_seed(1),
                           method=method)
    assert found.converged
    assert found.value == pytest.approx(expected, rel=1e-8)
    assert found.value == pytest.approx(torch.linalg.eigvalsh(a).max().item(), rel=1e-8)
    v = found.vector[0]
    assert v.norm().item() == pytest.approx(1.0, rel=1e-12)
    if len(set(eigenvalues)) == len(eigenvalues) and abs(eigenvalues[0] - eigenvalues[1]) > 0.1:
        torch.testing.assert_close(a @ v, found.value * v, rtol=0, atol=1e-8)  # an eigenvector


def test_a_tiny_gap_is_reported_unconverged_with_an_honest_bound():
    a, x, loss = _quadratic([3.0, 3.0 - 1e-3, 0.1])
    found = top_eigenvalue(loss, [x], iters=300, tol=1e-10, generator=torch.Generator().manual_seed(1),
                           method="power")
    assert not found.converged and found.iterations == 300
    assert 3.0 - 1e-3 <= found.value <= 3.0 + 1e-12
    assert abs(found.value - 3.0) <= found.residual * 3.0  # an eigenvalue lies within residual·ρ
    # Lanczos separates them: a 3-dimensional Krylov space holds every eigenvector
    exact = top_eigenvalue(loss, [x], iters=300, tol=1e-10, generator=torch.Generator().manual_seed(1))
    assert exact.converged and exact.iterations <= 3 and exact.value == pytest.approx(3.0, rel=1e-12)


def test_lanczos_beats_power_iteration_at_the_same_number_of_products():
    eigenvalues = torch.linspace(-1.0, 1.0, 200, dtype=torch.float64).tolist()
    eigenvalues[-1] = 1.05  # a 5% gap: power iteration's error shrinks like 0.95^(2k)
    a, x, loss = _quadratic(eigenvalues)
    errors = {m: abs(top_eigenvalue(loss, [x], iters=15, tol=0.0, method=m,
                                    generator=torch.Generator().manual_seed(3)).value - 1.05)
              for m in ("lanczos", "power")}
    assert errors["lanczos"] < errors["power"] / 10


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_warm_start_from_the_eigenvector_converges_at_once(method):
    a, x, loss = _quadratic([4.0, 1.0, -2.0, 0.5, 3.9, 3.8, 0.1])
    vals, vecs = torch.linalg.eigh(a)
    found = top_eigenvalue(loss, [x], iters=50, tol=1e-10, init=[vecs[:, -1]], method=method)
    assert found.iterations == 1 and found.value == pytest.approx(4.0, rel=1e-12)
    cold = top_eigenvalue(loss, [x], iters=50, tol=1e-10, generator=torch.Generator().manual_seed(0), method=method)
    assert cold.iterations > 3


def _mlp(seed=0, act=nn.Tanh, sizes=(3, 5, 2)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1]), act(), nn.Linear(sizes[1], sizes[2])).double()


def _full_hessian_top(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        pieces = theta.split([s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, pieces, shapes)}
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    h = torch.autograd.functional.hessian(loss, flat)
    return torch.linalg.eigvalsh(h)


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("seed", range(3))
def test_small_mlp_matches_the_full_hessian(seed, method):
    model = _mlp(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=gen)
    spectrum = _full_hessian_top(model, x, y)
    found = top_eigenvalue(model, batch=(x, y), iters=20000 if method == "power" else 24, tol=1e-9,
                           generator=torch.Generator().manual_seed(7), method=method)
    assert found.converged
    assert found.value == pytest.approx(spectrum.max().item(), rel=1e-6)
    assert spectrum.min().item() < 0  # the MLP's Hessian is indefinite: the oracle is not trivial
    assert [p.shape for p in found.vector] == [p.shape for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())  # autograd.grad, not backward


@pytest.mark.parametrize("kwargs, match", [
    (dict(iters=0), "iters=0"),
    (dict(iters=2.5), "iters=2.5"),
    (dict(tol=-1e-3), "tol=-0.001"),
    (dict(tol=float("nan")), "tol=nan"),
    (dict(init=[torch.zeros(2)]), "init must hold"),
    (dict(init=[torch.zeros(3)]), "init must be finite and not zero"),
    (dict(method="arnoldi"), "method='arnoldi'"),
])
def test_bad_input_to_top_eigenvalue(kwargs, match):
    _, x, loss = _quadratic([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=re.escape(match)):
        top_eigenvalue(loss, [x], **kwargs)
    with pytest.raises(ValueError, match="needs params"):
        top_eigenvalue(loss)
    with pytest.raises(ValueError, match="batch=\\(inputs, targets\\)"):
        top_eigenvalue(_mlp())
    with pytest.raises(ValueError, match="params is empty"):
        top_eigenvalue(loss, [])


# ------------------------------------------------------------------ inside fit
def _data(n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = 1 + 2 * torch.randn(n, 6, generator=gen)
    y = (x[:, 0] + x[:, 1] > 2).long() + (x[:, 2] > 1).long()
    return x, y


def _noisy_model(seed=0):
    """BatchNorm (buffers) and dropout (RNG): what a measurement could disturb."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _run(sharpness_every, *, data=None, epochs=2, seed=0, callbacks=(), model=None, store=False, **kwargs):
    model = model or _noisy_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    h = fit(model, opt, data if data is not None else _data(), epochs=epochs, batch_size=16, seed=seed,
            sharpness_every=sharpness_every, callbacks=callbacks, store=store, quiet=True, **kwargs)
    return model, h


def test_tracking_leaves_the_run_bit_identical():
    plain_model, plain = _run(None)
    model, tracked = _run(3)
    assert sum(r.get("sharpness") is not None for r in tracked.steps) == 2 * 13 // 3
    for (name, a), b in zip(plain_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert plain["train_loss"] == tracked["train_loss"]


def test_tracking_with_a_shuffling_dataloader_leaves_the_run_bit_identical():
    x, y = _data()

    def loader():
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)

    plain_model, plain = _run(None, data=loader())
    model, tracked = _run(4, data=loader())
    assert any(r.get("sharpness") is not None for r in tracked.steps)
    assert all(torch.equal(a, b) for a, b in zip(plain_model.state_dict().values(), model.state_dict().values()))


class _Probe:
    """After the tracker (user callbacks run after it): measure again and check nothing moved."""

    def __init__(self, tracker, at, eval_mode=False):
        self.tracker, self.at, self.eval_mode, self.checked = tracker, at, eval_mode, 0

    def on_step_end(self, trainer):
        if trainer.step not in self.at:
            return
        model = trainer.model
        if self.eval_mode:
            model.eval()
        grads = [p.grad.clone() for p in model.parameters()]
        buffers = [b.clone() for b in model.buffers()]
        rng = torch.get_rng_state()
        found = self.tracker.measure(trainer)
        assert math.isfinite(found.value)
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
        assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))
        assert torch.equal(torch.get_rng_state(), rng)
        assert model.training is not self.eval_mode
        model.train()
        self.checked += 1


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("eval_mode", [False, True])
def test_a_measurement_restores_grads_buffers_rng_and_mode(mode, eval_mode):
    probe = _Probe(SharpnessTracker(1, mode=mode), at={2, 7}, eval_mode=eval_mode)
    _run(None, callbacks=[probe])
    assert probe.checked == 2


class _Weights:
    def __init__(self):
        self.at = {}

    def on_step_end(self, trainer):
        self.at[trainer.step] = ({k: v.clone() for k, v in trainer.model.state_dict().items()},
                                 trainer.optimizer.param_groups[0]["lr"])


def test_recorded_values_match_the_full_hessian_at_those_weights():
    from optimlab.schedules import CosineAnnealing

    x, y = _data(n=120)
    model = _mlp(sizes=(6, 5, 3))
    weights = _Weights()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    h = fit(model, opt, (x.double(), y), epochs=3, batch_size=30, seed=3, store=False, quiet=True,
            schedule=CosineAnnealing(0.2, period=12), callbacks=[weights],
            sharpness_every=SharpnessTracker(5, iters=5000, tol=1e-9), sample_every=2)
    measured = [r for r in h.steps if r.get("sharpness") is not None]
    assert [r["step"] for r in measured] == [5, 10]
    for r in measured:
        state, lr = weights.at[r["step"]]
        oracle = _mlp(sizes=(6, 5, 3))
        oracle.load_state_dict(state)
        top = _full_hessian_top(oracle, x.double(), y).max().item()  # 120 ≤ 256: the batch is all the data
        assert r["sharpness"] == pytest.approx(top, rel=1e-6)
        assert r["edge_of_stability"] == 2 / lr  # the learning rate the next step uses
    assert len({lr for _, lr in weights.at.values()}) > 1, "the schedule moves η: 2/η must follow it"


def test_rows_merge_into_the_step_rows_and_the_epoch_rows_and_reach_the_store(tmp_path):
    from optimlab.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    model, h = _run(5, sample_every=4, epochs=3, store=store)
    steps = [r["step"] for r in h.steps]
    assert steps == sorted(set(steps)), "one row per step, in order"
    measured = {r["step"]: r for r in h.steps if "sharpness" in r}
    assert sorted(measured) == list(range(5, 3 * 13 + 1, 5))
    assert "loss" in measured[25] and "loss" not in measured[5]  # step 25 = batch 12 of epoch 2: sampled, merged
    assert set(measured[5]) == {"step", "epoch", "sharpness", "edge_of_stability"}
    for row in h.epochs:
        in_epoch = [r for s, r in measured.items() if r["epoch"] == row["epoch"]]
        assert row["sharpness"] == in_epoch[-1]["sharpness"]
        assert row["edge_of_stability"] == pytest.approx(2 / 0.1)
    assert [r["epoch"] for r in measured.values()] == [(s - 1) // 13 + 1 for s in measured]
    stored = store.history(h.run_id)
    assert [(r["step"], r.get("sharpness")) for r in stored.steps] == [(r["step"], r.get("sharpness")) for r in h.steps]
    assert stored["sharpness"] == h["sharpness"]
    assert "SharpnessTracker(every=5" in h.config["sharpness"]


def test_runs_show_draws_the_stored_sharpness_against_two_over_lr(tmp_path, capsys):
    from optimlab.cli import main
    from optimlab.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    _, h = _run(5, sample_every=4, epochs=2, store=store)
    _, plain = _run(None, epochs=1, store=store)
    png = tmp_path / "sharpness.png"
    assert main(["runs", "--db", str(store.path), "show", h.run_id, "--steps", "--sharpness", str(png)]) == 0
    out = capsys.readouterr().out
    assert "edge_of_stability" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sharpness_series(store.history(h.run_id)) == sharpness_series(h)  # what is drawn is what was recorded
    assert main(["runs", "--db", str(store.path), "show", plain.run_id, "--sharpness", str(tmp_path / "x.png")]) == 2
    assert "no sharpness measurements" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_a_mid_epoch_resume_keeps_the_measurements_before_the_checkpoint(tmp_path):
    tracker = lambda: SharpnessTracker(3, iters=3000, tol=1e-7)  # noqa: E731
    x, y = _data()
    data = (x.double(), y)
    run = lambda **kw: _run(tracker(), model=_noisy_model().double(), data=data, epochs=2,  # noqa: E731
                            checkpoint_every=4, **kw)
    whole_model, whole = run(checkpoint=tmp_path / "a.pt")
    run(checkpoint=tmp_path / "b.pt", callbacks=[StopAt(18)])
    model, resumed = run(checkpoint=tmp_path / "b.pt", resume=True)
    assert resumed.config["resumed_from_step"] == 16  # mid-epoch 2: steps 15 was measured before it
    got = [(r["step"], r["sharpness"]) for r in resumed.steps if "sharpness" in r]
    want = [(r["step"], r["sharpness"]) for r in whole.steps if "sharpness" in r]
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=1e-6)  # a cold start after the resume: equal to the tolerance
    assert all(torch.equal(a, b) for a, b in zip(whole_model.state_dict().values(), model.state_dict().values()))


def test_measured_on_a_fixed_batch_drawn_from_the_seed():
    x, y = _data(n=1000)
    tracker = SharpnessTracker(50)
    _run(tracker, data=(x, y), epochs=1)
    bx, by = tracker._batch
    idx = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:256].sort().values
    assert torch.equal(bx, x[idx]) and torch.equal(by, y[idx])


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "5"])
def test_bad_sharpness_every_raises_before_training(value, tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"sharpness_every={value!r}")):
        fit(_noisy_model(), "sgd", _data(), sharpness_every=value, store=tmp_path / "s.sqlite",
            checkpoint=tmp_path / "c.pt", quiet=True)
    assert not (tmp_path / "s.sqlite").exists() and not (tmp_path / "c.pt").exists()


def test_sharpness_on_a_model_without_trainable_parameters_raises_before_training(tmp_path):
    model = _noisy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="sharpness_every=2 needs a model with trainable parameters; Sequential"):
        fit(model, opt, _data(), sharpness_every=2, store=tmp_path / "s.sqlite", quiet=True)
    assert not (tmp_path / "s.sqlite").exists()
    with pytest.raises(ValueError, match="not in callbacks"):
        fit(_noisy_model(), "sgd", _data(), callbacks=[SharpnessTracker(2)], store=False, quiet=True)
    with pytest.raises(ValueError, match="mode='test'"):
        SharpnessTracker(2, mode="test")


def test_plot_renders_the_history_data(tmp_path):
    _, h = _run(4)
    series = sharpness_series(h)
    measured = [r for r in h.steps if "sharpness" in r]
    assert series["λ_max"] == ([r["step"] for r in measured], [r["sharpness"] for r in measured])
    fig = sharpness_figure(h)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    top, edge = lines["λ_max (sharpness)"], lines["2/η (edge of stability)"]
    assert list(top.get_xdata()) == [r["step"] for r in measured]
    assert list(top.get_ydata()) == [r["sharpness"] for r in measured]
    assert list(edge.get_ydata()) == [r["edge_of_stability"] for r in measured]
    assert ax.get_yscale() == "log"
    path = plot_sharpness(h.to_dict(), tmp_path / "sharpness.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    _, plain = _run(None, epochs=1)
    with pytest.raises(ValueError, match="no sharpness measurements"):
        plot_sharpness(plain, tmp_path / "none.png")
