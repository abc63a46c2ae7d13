"""Mixed precision in fit (``precision="32" | "bf16" | "fp16"``, issue 14 item 2), on the CPU:
torch 2.13 has CPU autocast for bfloat16 and float16 and ``GradScaler("cpu")``.

Oracles: the float32 run (bf16 reaches its validation loss), and a hand-written
``torch.autocast`` + ``GradScaler`` loop (fp16 bit for bit, with the steps it skips).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optimlab import optim
from optimlab.train import CheckpointError, NonFiniteError, Trainer, checkpoint, fit
from tests.train_synth import blobs, isolated, mlp, same_weights  # noqa: F401 (isolated: autouse fixture)

VOLATILE = {"time_s", "samples_per_s", "val_time_s"}
# this machine's CPU has no native bf16/fp16: fit warns so at every mixed-precision run (tested below)
pytestmark = pytest.mark.filterwarnings("ignore:precision=.*slow fallback kernels:RuntimeWarning")

# bf16 against fp32 after 5 epochs (Adam 3e-3, batch 64, 2048 noisy blob samples): measured
# |difference| <= 0.0003 over seeds 0-2 (val loss ~0.18); the test allows 0.01.
BF16_VAL_LOSS_TOLERANCE = 0.01


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


class Steps:
    def __init__(self, stop_at=None):
        self.stop_at = stop_at

    def on_step_end(self, trainer):
        if trainer.step == self.stop_at:
            trainer.stop_training = True


class Dtypes:
    """A forward hook recording the dtype of a layer's output."""

    def __init__(self, module):
        self.seen = set()
        module.register_forward_hook(lambda m, args, out: self.seen.add(out.dtype))


# ------------------------------------------------------------------ bf16
@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_reaches_the_fp32_validation_loss(seed):
    train, val = blobs(n=2048, n_val=512, noise=0.5)
    runs = {}
    for precision in ("32", "bf16"):
        model = mlp(seed=seed, hidden=64)
        dtypes = Dtypes(model[0])
        h = fit(model, optim.create("adam", model.parameters(), lr=3e-3), train, val=val, epochs=5, batch_size=64,
                seed=seed, quiet=True, store=False, precision=precision)
        runs[precision] = (model, h, dtypes.seen)
    (m32, h32, d32), (m16, h16, d16) = runs["32"], runs["bf16"]
    assert d32 == {torch.float32} and d16 == {torch.bfloat16}  # training and validation ran under autocast
    assert m16[0].weight.dtype == torch.float32  # mixed: the weights stay float32
    assert not same_weights(m32, m16)
    assert h32["val_loss"][-1] < 0.5 * h32["val_loss"][0]  # it learned
    assert abs(h16["val_loss"][-1] - h32["val_loss"][-1]) <= BF16_VAL_LOSS_TOLERANCE
    assert h16.config["precision"] == "bf16" and "skipped_steps" not in h16.epochs[-1]


def test_bf16_run_resumes_bit_identical(tmp_path):
    train, val = blobs()

    def run(**kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
        h = fit(model, optim.create("adam", model.parameters(), lr=1e-2), train, val=val, epochs=2, batch_size=32,
                seed=3, ema=0.9, precision="bf16", quiet=True, store=False, **kwargs)
        return model, h

    ref, href = run()
    _, stopped = run(checkpoint=tmp_path / "ck.pt", checkpoint_every=5, callbacks=[Steps(stop_at=22)])
    assert stopped.status == "stopped" and checkpoint.load(tmp_path / "ck.pt")["step"] == 20
    resumed, h = run(checkpoint=tmp_path / "ck.pt", resume=True)
    assert h.config["resumed_from_step"] == 20 and same_weights(resumed, ref)
    assert comparable(h.epochs) == comparable(href.epochs)


# ------------------------------------------------------------------ fp16
def hand_fp16(model, opt, x, y, batch, epochs, seed, init_scale):
    """The torch AMP recipe with fit's data order; returns the steps skipped (the scale went down)
    in each epoch."""
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    skipped = []
    for epoch in range(epochs):
        skipped.append(0)
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped[-1] += scaler.get_scale() < scale
    return skipped


def fp16_trainer(init_scale=2.0**40, **kwargs):
    model = mlp(seed=0)
    trainer = Trainer(model, optim.create("adam", model.parameters(), lr=1e-2), batch_size=32, seed=2,
                      precision="fp16", quiet=True, store=False, sample_every=1, **kwargs)
    # a loss scale of 2**40 overflows float16 (max 65504) in the backward pass: the scaler halves it
    # at every overflow, skipping that step, until the gradients fit
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return model, trainer


def test_fp16_overflows_are_skipped_counted_and_match_the_amp_recipe():
    (x, y), _ = blobs()
    model, trainer = fp16_trainer()
    h = trainer.fit((x, y), epochs=2)
    ref = mlp(seed=0)
    per_epoch = hand_fp16(ref, optim.create("adam", ref.parameters(), lr=1e-2), x, y, 32, 2, 2, 2.0**40)
    skipped = sum(per_epoch)
    assert per_epoch == [16, 6]  # 2**40 halved 22 times, to 2**18, where float16 holds the gradients
    assert same_weights(model, ref)
    assert h.status == "completed"
    assert [r["skipped_steps"] for r in h.epochs] == per_epoch
    assert h.config["skipped_steps"] == skipped and h.config["precision"] == "fp16"
    assert [r["step"] for r in h.epochs] == [16, 32]  # a skipped step is still a step
    # skipped steps are left out of the gradient-norm statistics (they are inf there)
    assert h.epochs[0]["grad_norm"] is None and h.epochs[0]["grad_norm_max"] is None  # all 16 skipped
    assert 0 < h.epochs[1]["grad_norm"] <= h.epochs[1]["grad_norm_max"] < 1e3  # the 10 applied steps
    assert h.epochs[0]["train_loss"] > 0 and h.epochs[0]["samples"] == 512  # the batches were seen
    assert all(s["grad_norm"] is None for s in h.steps[:skipped])
    assert all(s["grad_norm"] is not None for s in h.steps[skipped:])
    assert trainer.scaler.get_scale() == 2.0**18


def test_fp16_run_resumes_bit_identical_with_the_scaler_state(tmp_path):
    (x, y), val = blobs()
    _, ref_trainer = fp16_trainer()
    ref_model = ref_trainer.model
    href = ref_trainer.fit({"train": (x, y), "val": val}, epochs=2)
    path = tmp_path / "ck.pt"
    _, trainer = fp16_trainer(checkpoint=path, checkpoint_every=5, callbacks=[Steps(stop_at=27)])
    trainer.fit({"train": (x, y), "val": val}, epochs=2)
    saved = checkpoint.load(path)
    assert saved["step"] == 25 and saved["scaler"]["scale"] < 2.0**40  # mid-epoch 2, after the skips
    model, trainer = fp16_trainer(checkpoint=path)
    h = trainer.fit({"train": (x, y), "val": val}, epochs=2, resume=True)
    assert h.config["resumed_from_step"] == 25 and same_weights(model, ref_model)
    assert comparable(h.epochs) == comparable(href.epochs)
    assert trainer.scaler.state_dict() == ref_trainer.scaler.state_dict()


def test_fp16_forward_overflow_is_not_skipped_but_stops_the_run():
    """A non-finite loss is no loss-scaling overflow: the scaler cannot help, the run stops."""
    (x, y), _ = blobs(n=64)
    model = nn.Sequential(nn.Linear(20, 8), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.fill_(1e3)  # x @ W in float16: |outputs| ~ 1e4 .. 1e5, then 1e5 * 8 > 65504
        model[1].weight.fill_(10.0)
    with pytest.raises(NonFiniteError, match="step 1 ") as info:
        fit(model, optim.create("sgd", model.parameters(), lr=0.1), (x, y), batch_size=64, precision="fp16",
            quiet=True, store=False)
    assert info.value.history.config.get("skipped_steps") == 0


class SqrtAtZero(nn.Module):
    """A finite loss whose gradient is infinite at every scale: d sqrt(|w|)/dw at w = 0."""

    def __init__(self):
        super().__init__()
        self.lin = mlp(seed=0)
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.lin(x) + torch.sqrt(self.w.abs())


def test_fp16_gradient_nonfinite_even_unscaled_stops_the_run_after_the_scale_reaches_1():
    (x, y), _ = blobs(n=1024)
    model = SqrtAtZero()
    with pytest.raises(NonFiniteError, match="'w'") as info:
        fit(model, optim.create("sgd", model.parameters(), lr=0.1), (x, y), batch_size=32, precision="fp16",
            quiet=True, store=False)
    # 2**16 halves 16 times to 1 (16 skipped steps); at scale 1 the 17th step stops the run
    assert info.value.step == 17
    assert info.value.history.config["skipped_steps"] == 16


# ------------------------------------------------------------------ bad input and checkpoints
@pytest.mark.parametrize("value", ["16", "fp32", "BF16", "float16", 16, 32, None])
def test_unknown_precision_is_refused_before_anything_is_written(tmp_path, value):
    model = mlp()
    with pytest.raises(ValueError, match=f"precision must be one of .*precision={value!r}"):
        fit(model, optim.create("sgd", model.parameters(), lr=0.1), blobs(n=64)[0], precision=value,
            checkpoint=tmp_path / "ck.pt", store=tmp_path / "runs.sqlite", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_precision_on_the_device_is_refused(monkeypatch, tmp_path):
    """Where torch lacks float16 autocast for the device (older torch on a CPU), fp16 is refused."""
    import optimlab.train._device as dev

    real = torch.amp.autocast_mode.is_autocast_available
    monkeypatch.setattr(torch.amp.autocast_mode, "is_autocast_available", lambda kind: False)
    with pytest.raises(ValueError, match="precision='fp16' is not supported on device 'cpu'"):
        dev.check_precision("fp16", torch.device("cpu"))
    model = mlp()
    with pytest.raises(ValueError, match="precision='bf16' is not supported"):
        fit(model, optim.create("sgd", model.parameters(), lr=0.1), blobs(n=64)[0], precision="bf16",
            checkpoint=tmp_path / "ck.pt", store=tmp_path / "runs.sqlite", quiet=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch.amp.autocast_mode, "is_autocast_available", real)
    assert dev.check_precision("fp16", torch.device("cpu")) == "fp16"  # torch 2.13 has it


def test_another_precision_is_a_difference_a_resume_lists(tmp_path):
    path = tmp_path / "ck.pt"
    model = mlp()
    fit(model, optim.create("adam", model.parameters(), lr=1e-2), blobs()[0], batch_size=32, seed=1,
        precision="bf16", checkpoint=path, quiet=True, store=False)
    model = mlp()
    opt = optim.create("adam", model.parameters(), lr=1e-2)
    with pytest.raises(CheckpointError, match="precision: checkpoint 'bf16', now '32'"):
        fit(model, opt, blobs()[0], epochs=2, batch_size=32, seed=1, checkpoint=path, resume=True, quiet=True,
            store=False)
    h = fit(model, opt, blobs()[0], epochs=2, batch_size=32, seed=1, checkpoint=path, resume="override",
            quiet=True, store=False)
    assert h.config["resume_overrides"] == ["precision: checkpoint 'bf16', now '32'"]


def test_a_damaged_scaler_state_is_refused(tmp_path):
    path = tmp_path / "ck.pt"
    _, trainer = fp16_trainer(checkpoint=path)
    trainer.fit(blobs()[0], epochs=1)
    state = checkpoint.load(path)
    del state["scaler"]["_growth_tracker"]
    checkpoint.save(state, path)
    _, trainer = fp16_trainer(checkpoint=path)
    with pytest.raises(CheckpointError, match="'scaler'.*_growth_tracker"):
        trainer.fit(blobs()[0], epochs=2, resume=True)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fit_warns_where_the_cpu_has_no_native_half_precision(precision):
    """The warning follows torch's own probe of the CPU (this machine: AVX2, none)."""
    native = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if precision == "bf16"
              else torch.ops.mkldnn._is_mkldnn_fp16_supported())
    model = mlp()
    with pytest.warns(RuntimeWarning, match="slow fallback kernels") if not native else _no_warning():
        fit(model, optim.create("sgd", model.parameters(), lr=0.1), blobs(n=64)[0], precision=precision,
            quiet=True, store=False)
    with _no_warning():
        fit(model, optim.create("sgd", model.parameters(), lr=0.1), blobs(n=64)[0], quiet=True, store=False)


def _no_warning():
    import warnings
    from contextlib import contextmanager

    @contextmanager
    def check():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            yield
        assert not [w for w in seen if "slow fallback" in str(w.message)]

    return check()
