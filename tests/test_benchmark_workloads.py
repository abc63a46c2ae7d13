"""optimlab.benchmark.workloads: the built-in workloads (models, verified data, budgets, metrics),
the noisy quadratic's and the VAE's formulas, StepBatches (and fit resuming through it bit for
bit), scaled budgets and the registry.

The image workloads need MNIST / Fashion-MNIST already on the machine (cache, Debian package):
without them those tests skip, saying so; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optimlab import optim
from optimlab.benchmark import nets
from optimlab.benchmark import workloads as W
from optimlab.train import _data, checkpoint, fit
from tests.train_synth import StopAt, blobs, isolated, same_weights  # noqa: F401 (isolated: autouse fixture)

BUILT_INS = ["mnist_cnn", "mnist_logreg", "fmnist_mlp", "fmnist_2c2d", "mnist_vae", "quadratic_deep"]
VOLATILE = {"time_s", "samples_per_s", "val_time_s"}


@functools.cache
def _have(dataset: str) -> bool:
    from optimlab import data

    try:
        data.fetch(dataset, download=False)
    except data.DataError:
        return False
    return True


def _data_of(w: W.Workload) -> dict:
    dataset = getattr(w.data, "dataset", None)
    if dataset is not None and not _have(dataset):
        pytest.skip(f"{dataset} is not on this machine (optimlab data fetch {dataset})")
    return w.data()


def _head(pair, n):
    return pair[0][:n], pair[1][:n]


# ------------------------------------------------------------- the built-ins
def test_the_built_ins_in_their_order():
    assert W.names()[:len(BUILT_INS)] == BUILT_INS
    assert list(W.WORKLOADS) == W.names()
    kinds = {(w.metric, w.mode) for w in map(W.get, BUILT_INS)}
    assert kinds == {("accuracy", "max"), ("loss", "min")}
    for name in BUILT_INS:
        w = W.get(name)
        assert 64 <= w.batch_size <= 128 and w.evaluations >= 8 and w.steps % w.eval_every == 0
        assert w.title and w.description and w.source


@pytest.mark.parametrize("name", BUILT_INS)
def test_describe_is_json_safe_deterministic_and_needs_no_data(name):
    w = W.get(name)
    state, loads = torch.random.get_rng_state(), W._images.cache_info().misses
    d = w.describe()
    assert torch.equal(torch.random.get_rng_state(), state)  # building the model left the caller's RNG alone
    assert W._images.cache_info().misses == loads  # nothing was loaded
    assert json.loads(json.dumps(d)) == d == w.describe()
    fields = {f.name for f in dataclasses.fields(W.Workload)}
    assert set(d) == fields
    assert d["loss"] in ("cross_entropy", "optimlab.benchmark.workloads.mean_output")
    torch.manual_seed(0)
    model = w.model()
    assert d["model"]["class"] == type(model).__name__
    assert d["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert {"train", "val", "test", "source"} <= set(d["data"])
    assert pickle.loads(pickle.dumps(w)).describe() == d  # workers can receive a workload


@pytest.mark.parametrize("name", BUILT_INS)
def test_data_splits_are_as_declared(name):
    w = W.get(name)
    splits = _data_of(w)
    declared = w.describe()["data"]
    assert set(splits) == {"train", "val", "test"}
    for split, (x, y) in splits.items():
        assert len(x) == len(y) == declared[split]
        assert list(x.shape[1:]) == declared["shape"] and x.dtype == torch.float32
        if w.metric == "accuracy" or isinstance(w.data, W.ImageData):
            assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert w.data()["train"][0] is splits["train"][0]  # memoised


@pytest.mark.parametrize("name", BUILT_INS)
def test_a_few_steps_of_fit_run_and_move_the_metric_its_way(name):
    """Untrained: a classifier is near chance. After 40 steps of Adam (through w.batches, as the
    benchmark trains) the metric has moved in the direction ``mode`` says is better."""
    w = W.get(name)
    splits = _data_of(w)
    val = _head(splits["val"], 512)
    torch.manual_seed(0)
    model = w.model()
    before = w.evaluate(model, val)
    if w.metric == "accuracy":
        assert before["accuracy"] < 0.3
    model.train()
    opt = optim.create("adam", model.parameters(), lr=1e-3)
    h = fit(model, opt, {"train": StepBatchesOf(w, splits["train"], 20), "val": val}, epochs=2,
            batch_size=w.batch_size, loss=w.loss, seed=0, quiet=True, store=False)
    assert h.status == "completed" and [r["step"] for r in h.epochs] == [20, 40]
    assert math.isfinite(h.epochs[-1]["val_loss"])
    mode = model.training
    after = w.evaluate(model, val)
    assert model.training is mode  # evaluate restores the mode
    assert math.isfinite(after["metric"]) and after["loss"] == pytest.approx(h.epochs[-1]["val_loss"], rel=1e-6)
    assert (after["metric"] > before["metric"]) if w.mode == "max" else (after["metric"] < before["metric"])


def StepBatchesOf(w, train, chunk):  # noqa: N802 (reads as the class it builds)
    return W.StepBatches(train, w.batch_size, chunk)


def test_batches_are_the_budget_in_evaluation_chunks():
    w = W.get("quadratic_deep")
    train = w.data()["train"]
    sb = w.batches(train)
    assert isinstance(sb, W.StepBatches) and (len(sb), sb.batch_size, sb.n) == (w.eval_every, w.batch_size, 10_000)
    assert sb.x is train[0]
    assert w.batches(train, device="cpu").x.device.type == "cpu"


def test_evaluate_restores_the_mode_and_refuses_bad_splits():
    w = W.get("quadratic_deep")
    model = w.model().train()
    out = w.evaluate(model, "val")
    assert model.training and out["accuracy"] is None and out["metric"] == out["loss"]
    with pytest.raises(ValueError, match="split must be one of"):
        w.evaluate(model, "validation")
    clf = dataclasses.replace(w, name="q_acc", metric="accuracy", mode="max")
    with pytest.raises(ValueError, match="not class scores"):
        clf.evaluate(model, "val")


# ------------------------------------------------------------- the quadratic
def test_quadratic_hessian_has_the_declared_spectrum():
    q, eigenvalues = nets.deep_quadratic_hessian(100, seed=42)
    assert q.shape == (100, 100) and torch.equal(q, q.T)
    assert int(((eigenvalues >= 0) & (eigenvalues <= 1)).sum()) == 90
    assert int(((eigenvalues >= 30) & (eigenvalues <= 60)).sum()) == 10
    assert torch.allclose(torch.linalg.eigvalsh(q), eigenvalues.sort().values, atol=1e-10)
    model = W.get("quadratic_deep").model()
    held = model.hessian
    assert held.dtype == torch.float32 and torch.equal(held, held.T) and torch.equal(held, q.float())
    assert torch.equal(model.theta.detach(), torch.ones(100))  # DeepOBS starts from ones


def test_quadratic_optimum_is_half_the_trace_from_the_eigenvalues():
    w = W.get("quadratic_deep")
    _, eigenvalues = nets.deep_quadratic_hessian(100, seed=42)
    assert w.optimum == pytest.approx(0.5 * float(eigenvalues.sum()), rel=1e-6)
    assert w.optimum == pytest.approx(0.5 * float(w.model().hessian.double().trace()), rel=1e-9)
    model = w.model()
    with torch.no_grad():
        model.theta.zero_()
    big = torch.randn(200_000, 100, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert float(model(big).double().mean()) == pytest.approx(w.optimum, rel=0.01)
    assert w.evaluate(model, "test")["loss"] == pytest.approx(w.optimum, rel=0.05)  # a finite sample
    with torch.no_grad():
        model.theta.fill_(1.0)
    assert w.evaluate(model, "test")["loss"] > 1.5 * w.optimum  # the start is far worse than the optimum


def test_quadratic_loss_is_the_formula():
    model = W.get("quadratic_deep").model()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.theta.copy_(torch.randn(100, generator=g))
    x = torch.randn(6, 100, generator=g)
    q = model.hessian.double()
    d = model.theta.detach().double() - x.double()
    direct = torch.stack([0.5 * d[i] @ q @ d[i] for i in range(6)])
    out = model(x)
    assert out.shape == (6,)
    assert torch.allclose(out.double(), direct, rtol=1e-5)


# -------------------------------------------------------------------- the VAE
def test_vae_negative_elbo_is_bce_plus_analytic_kl():
    torch.manual_seed(0)
    model = nets.VAE(784, 32, 8)
    x = torch.rand(5, 1, 28, 28)
    eps = torch.randn(5, 8)
    out = model(x, eps)
    flat = x.flatten(1)
    with torch.no_grad():
        mu, logvar = model.encoder(flat).chunk(2, dim=1)
        sigma = torch.exp(0.5 * logvar)
        p = torch.sigmoid(model.decoder(mu + sigma * eps)).double()
        nll = -(flat * p.log() + (1 - flat) * (1 - p).log()).sum(1)
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                               torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert out.shape == (5,)
    assert torch.allclose(out.double(), nll + kl.double(), rtol=1e-5)
    assert W.mean_output(out, torch.zeros(5)) == out.mean()


def test_vae_evaluates_with_fixed_noise_and_trains_with_the_global_rng():
    torch.manual_seed(0)
    model = nets.VAE(784, 32, 8, eval_seed=4)
    x = torch.rand(5, 1, 28, 28)
    model.eval()
    fixed = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(model(x), model(x)) and torch.equal(model(x), model(x, fixed))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    assert torch.equal(a, model(x)) and not torch.equal(a, model(x))


# --------------------------------------------------------------- StepBatches
def _stream(n, batch_size, seed, passes):
    out = []
    for p in range(passes):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + p))
        out += [perm[i * batch_size:(i + 1) * batch_size] for i in range(n // batch_size)]
    return out


def test_step_batches_epochs_are_slices_of_the_stream():
    n, b, chunk, seed = 50, 8, 4, 3  # 6 batches per pass (2 examples dropped): epochs straddle passes
    x = torch.arange(n).float().unsqueeze(1)
    sb = W.StepBatches((x, torch.arange(n)), b, chunk)
    assert (len(sb), sb.n, sb.batch_size, sb.shuffle) == (chunk, n, b, True)
    assert _data.batches(sb, 32) is sb  # fit takes it as it is
    stream = _stream(n, b, seed, 5)
    for e in range(7):
        got = list(sb.epoch(seed, e))
        assert len(got) == chunk
        for k, (xb, yb) in enumerate(got):
            assert torch.equal(yb, stream[e * chunk + k]) and torch.equal(xb[:, 0].long(), yb)
        for start in range(chunk):
            tail = list(sb.epoch(seed, e, start))
            assert len(tail) == chunk - start
            assert all(torch.equal(a[1], c[1]) for a, c in zip(tail, got[start:]))
    fresh = W.StepBatches((x, torch.arange(n)), b, chunk)  # no state: any epoch from (seed, epoch) alone
    assert torch.equal(next(fresh.epoch(seed, 6, 2))[1], stream[26])


def test_step_batches_visit_every_example_once_per_pass():
    n, b = 48, 8
    sb = W.StepBatches((torch.zeros(n, 2), torch.arange(n)), b, 5)
    ys = torch.cat([yb for e in range(6) for _, yb in sb.epoch(0, e)])  # 30 batches: 5 passes
    for p in range(5):
        assert sorted(ys[p * n:(p + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(ys[:n], ys[n:2 * n])  # each pass is shuffled anew
    other = torch.cat([yb for _, yb in sb.epoch(1, 0)])
    assert not torch.equal(other, ys[:len(other)])  # another seed, another order
    ragged = W.StepBatches((torch.zeros(50, 2), torch.arange(50)), b, 6)  # one pass, 2 examples dropped
    seen = torch.cat([yb for _, yb in ragged.epoch(0, 0)])
    assert len(seen) == 48 == len(set(seen.tolist()))
    assert all(len(yb) == b for e in range(3) for _, yb in ragged.epoch(0, e))


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 11}, "larger than the training set"),
    ({"chunk": 0}, "chunk must be a positive integer"),
    ({"chunk": 2.0}, "chunk must be a positive integer"),
    ({"train": (torch.zeros(10), torch.zeros(9))}, "equal length"),
    ({"train": torch.zeros(10)}, "train must be"),
])
def test_step_batches_refuse_bad_arguments(kwargs, match):
    args = {"train": (torch.zeros(10, 2), torch.zeros(10)), "batch_size": 4, "chunk": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        W.StepBatches(args["train"], args["batch_size"], args["chunk"])


def _resume_run(**kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    opt = optim.create("adam", model.parameters(), lr=1e-2)
    train, val = blobs(200, 64)
    # 12 batches of 16 per pass, "epochs" of 5: epoch 2 is stream batches 10-14, across a pass boundary
    h = fit(model, opt, {"train": W.StepBatches(train, 16, 5), "val": val}, epochs=6, batch_size=16, seed=5,
            sample_every=2, quiet=True, store=False, **kwargs)
    return model, h


def test_fit_through_step_batches_resumes_mid_epoch_bit_for_bit(tmp_path):
    ref_model, ref = _resume_run()
    assert [r["step"] for r in ref.epochs] == [5, 10, 15, 20, 25, 30]
    path = tmp_path / "ck.pt"
    _, stopped = _resume_run(checkpoint=path, checkpoint_every=4, callbacks=[StopAt(14)])
    saved = checkpoint.load(path)
    assert stopped.status == "stopped" and (saved["step"], saved["epoch"], saved["batch"]) == (12, 2, 2)
    model, resumed = _resume_run(checkpoint=path, resume=True)
    assert resumed.status == "completed" and resumed.config["resumed_from_step"] == 12
    assert same_weights(model, ref_model)

    def comparable(rows):
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]

    assert comparable(resumed.epochs) == comparable(ref.epochs)
    assert comparable(resumed.steps) == comparable(ref.steps)


# ------------------------------------------------------------------- budgets
@pytest.mark.parametrize("name", BUILT_INS)
def test_scaled_keeps_a_whole_number_of_evaluations(name):
    w = W.get(name)
    assert w.scaled(1) is w and w.scaled(1.0) is w
    for fraction in (1e-9, 1e-4, 0.001, 0.01, 0.05, 0.1, 1 / 3, 0.5, 0.77, 0.999):
        s = w.scaled(fraction)
        assert s.steps % s.eval_every == 0 and s.evaluations >= 1
        target = max(1, round(w.steps * fraction))
        if target >= 2:
            assert s.evaluations >= 2
        assert abs(s.steps - target) <= s.eval_every
        assert (s.name, s.batch_size, s.metric) == (w.name, w.batch_size, w.metric)
        assert s.describe()["steps"] == s.steps
    half = w.scaled(0.5)
    assert half.evaluations == w.evaluations and abs(half.steps - w.steps / 2) < half.eval_every


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, float("nan"), True, "0.5", None])
def test_scaled_refuses_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match="fraction must be a number in"):
        W.get("quadratic_deep").scaled(fraction)


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("field, value, match", [
    ("name", "mnist-cnn", "name must be"),
    ("name", "1abc", "name must be"),
    ("name", "", "name must be"),
    ("metric", "acc", "metric must be one of .*metric='acc'"),
    ("mode", "maximize", "mode must be one of .*mode='maximize'"),
    ("steps", 0, "steps must be a positive integer, got steps=0"),
    ("steps", 10.0, "steps must be a positive integer, got steps=10.0"),
    ("eval_every", -1, "eval_every must be a positive integer, got eval_every=-1"),
    ("batch_size", True, "batch_size must be a positive integer, got batch_size=True"),
    ("steps", 1001, "steps must be a multiple of eval_every, got steps=1001, eval_every=200"),
    ("loss", "hinge", "loss must be one of"),
    ("loss", 3, "loss must be a name or a callable"),
    ("model", None, "model must be a callable"),
    ("data", {}, "data must be a callable"),
    ("optimum", float("inf"), "optimum must be a finite number"),
    ("title", None, "title must be a string"),
])
def test_workload_fields_are_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(W.get("quadratic_deep"), **{field: value})


# ------------------------------------------------------------------ registry
def _tiny_data():
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return {"train": (x[:24], y[:24]), "val": (x[24:32], y[24:32]), "test": (x[32:], y[32:])}


def _tiny_model():
    return nn.Linear(3, 2)


def test_register_and_get(monkeypatch):
    monkeypatch.setattr(W, "WORKLOADS", dict(W.WORKLOADS))
    mine = W.Workload(name="tiny", title="Tiny", description="a user's problem", model=_tiny_model,
                      data=_tiny_data, loss="cross_entropy", metric="accuracy", mode="max", batch_size=8,
                      steps=12, eval_every=3)
    assert W.register(mine) is mine and W.get("tiny") is mine and W.names()[-1] == "tiny"
    with pytest.raises(ValueError, match="'tiny' is already registered; pass replace=True"):
        W.register(dataclasses.replace(mine, title="Other"))
    other = W.register(dataclasses.replace(mine, title="Other"), replace=True)
    assert W.get("tiny") is other
    with pytest.raises(ValueError, match="needs a Workload"):
        W.register("tiny")
    d = other.describe()  # plain functions: the data are loaded to be described
    assert d["data"] == {"train": 24, "val": 8, "test": 8, "shape": [3],
                         "source": "tests.test_benchmark_workloads._tiny_data"}
    assert d["model"] == {"class": "Linear", "parameters": 8,
                          "factory": "tests.test_benchmark_workloads._tiny_model"}


def test_get_suggests_the_nearest_name():
    with pytest.raises(ValueError) as err:
        W.get("mnist_cnnn")
    message = str(err.value)
    assert message.startswith("unknown workload 'mnist_cnnn'; did you mean 'mnist_cnn'")
    assert "known: " + ", ".join(BUILT_INS) in message
    with pytest.raises(ValueError, match="unknown workload 'zzz'; known: mnist_cnn"):
        W.get("zzz")


def test_fit_takes_any_batch_source_unchanged():
    class Source:
        n, batch_size, shuffle = 8, 4, False

        def __len__(self):
            return 2

        def epoch(self, seed, epoch, start=0):
            x = torch.arange(8.0).view(8, 1)
            for i in range(start, 2):
                yield x[4 * i:4 * i + 4], x[4 * i:4 * i + 4]

    source = Source()
    assert _data.batches(source, 32) is source
    assert _data.is_batch_source(source) and not _data.is_batch_source((torch.zeros(2), torch.zeros(2)))
    model = nn.Linear(1, 1)
    h = fit(model, optim.create("sgd", model.parameters(), lr=0.01), source, epochs=2, loss="mse",
            quiet=True, store=False)
    assert h.status == "completed" and h.epochs[-1]["step"] == 4
    assert F.mse_loss(model(torch.ones(1, 1)), torch.ones(1, 1)).isfinite()
