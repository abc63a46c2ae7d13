"""Where a run trains: ``device=`` for fit, lr_find, the showdown and the sweep (issue 14, item 8).

This machine has no GPU: the CUDA tests skip cleanly here and run where torch sees one. On the
CPU: bad devices are refused before anything is written, ``"auto"`` and ``"cpu"`` give the run
that ``None`` gives bit for bit, a checkpoint is read to the CPU and then placed next to the
run's parameters, and the state mover is checked on torch's ``meta`` device.
"""

import pytest
import torch
from torch import nn

from optimlab import models, optim
from optimlab.ema import EMA
from optimlab.optim.lookahead import Lookahead
from optimlab.train import _device, checkpoint, fit
from tests.train_synth import blobs, isolated, mlp, same_weights  # noqa: F401 (isolated: autouse fixture)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def run(device=None, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    opt = optim.create("adam", model.parameters(), lr=1e-2)
    train, val = blobs()
    h = fit(model, opt, train, val=val, epochs=2, batch_size=32, seed=1, ema=0.9, quiet=True, store=False,
            device=device, **kwargs)
    return model, opt, h


# ------------------------------------------------------------------ resolving
def test_resolve_device():
    assert _device.resolve_device("cpu") == torch.device("cpu")
    assert _device.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert _device.resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")


BAD = [("tpu", "device must be"), ("gpu", "device must be"), ("cuda:x", "device must be"), (3, "device must be"),
       (True, "device must be"), ("meta", "device must be"), ("cuda:99", "no such CUDA device" if CUDA else
                                                              "CUDA is not available")]
if not CUDA:
    BAD += [("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available")]


@pytest.mark.parametrize("value,message", BAD, ids=[repr(v) for v, _ in BAD])
def test_bad_device_is_refused_before_anything_is_written(tmp_path, value, message):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message) as info:
        fit(model, optim.create("adam", model.parameters()), blobs(n=64)[0], device=value,
            checkpoint=tmp_path / "ck.pt", store=tmp_path / "runs.sqlite", quiet=True)
    assert f"device={value!r}" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("value", ["tpu", "cuda:x"] + ([] if CUDA else ["cuda"]))
def test_bad_device_is_refused_by_lr_find_showdown_and_sweep(tmp_path, value):
    from optimlab.lrfind import lr_find
    from optimlab.showdown.runner import ShowdownConfig
    from optimlab.sweep.runner import SweepConfig

    model = mlp()
    with pytest.raises(ValueError, match=f"device={value!r}"):
        lr_find(model, optim.create("sgd", model.parameters()), blobs(n=64)[0], device=value,
                plot=tmp_path / "lr.png")
    with pytest.raises(ValueError, match=f"device={value!r}"):
        ShowdownConfig(out=str(tmp_path / "sd"), device=value)
    with pytest.raises(ValueError, match=f"device={value!r}"):
        SweepConfig(out=str(tmp_path / "sw"), device=value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ on the CPU
@pytest.mark.parametrize("device", ["cpu", "auto", torch.device("cpu")] if not CUDA else ["cpu"])
def test_an_explicit_cpu_device_is_the_default_run(device):
    ref, _, href = run()
    model, _, h = run(device)
    assert same_weights(model, ref)
    assert h.config["device"] == href.config["device"] == "cpu"


def test_resume_reads_the_checkpoint_to_the_cpu_and_places_it_next_to_the_parameters(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"

    class StopAt:
        def on_step_end(self, trainer):
            if trainer.step == 21:
                trainer.stop_training = True

    ref, _, _ = run("cpu")
    run("cpu", checkpoint=path, checkpoint_every=5, callbacks=[StopAt()])
    asked = []
    real = checkpoint.load

    def load(p, map_location="cpu"):
        asked.append(map_location)
        return real(p, map_location=map_location)

    monkeypatch.setattr(checkpoint, "load", load)
    model, opt, h = run("cpu", checkpoint=path, resume=True)
    assert asked == [torch.device("cpu")]
    assert h.config["resumed_from_step"] == 20 and same_weights(model, ref)
    assert all(t.device.type == "cpu" for s in opt.state.values() for t in s.values())


def test_the_state_mover_places_optimizer_state_as_torch_does():
    """Moved to torch's meta device: the moments go with their parameter; Adam's "step" counter
    stays on the CPU (torch keeps it there unless fused/capturable); a Lookahead's slow weights
    and an EMA's shadows move too."""
    model = mlp()
    opt = Lookahead(torch.optim.Adam(model.parameters(), lr=1e-2), k=2)
    ema = EMA(model, decay=0.9)
    x, y = blobs(n=32)[0]
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    meta = torch.device("meta")
    model.to(meta)
    _device.move_optimizer_state(opt, meta)
    _device.move_ema(ema, meta)
    for state in opt.state.values():
        assert state["exp_avg"].device == meta and state["exp_avg_sq"].device == meta
        assert state["step"].device.type == "cpu"
    assert opt.slow and all(s.device == meta for s in opt.slow.values())
    assert all(s.device == meta for s in ema.shadow.values())


def test_fast_dropout_uses_torchs_dropout_off_the_cpu(monkeypatch):
    layer = models.FastDropout(0.25)
    monkeypatch.setattr(models.FastDropout, "mask", lambda self, x: (_ for _ in ()).throw(AssertionError("mask")))
    out = layer(torch.empty(4, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 8)
    with pytest.raises(AssertionError, match="mask"):  # the CPU still takes the byte trick
        layer(torch.ones(4, 8))


def test_showdown_and_sweep_carry_the_device(tmp_path):
    from optimlab.showdown.driver import plan_jobs
    from optimlab.showdown.runner import ShowdownConfig
    from optimlab.sweep.runner import SweepConfig, _spec

    cfg = ShowdownConfig(out=str(tmp_path / "sd"), device="cpu")
    assert cfg.device == "cpu" and cfg.showdown_id == ShowdownConfig(out=str(tmp_path / "sd")).showdown_id
    sweep = SweepConfig(out=str(tmp_path / "sw"), device="auto")
    assert "device" not in _spec(sweep)  # per machine: workers on a GPU and on a CPU share one study
    if CUDA:
        assert plan_jobs(ShowdownConfig(out=str(tmp_path / "sd"), device="cuda"), 4)[0] == 1


def test_lr_find_on_an_explicit_device_leaves_the_model_as_it_was():
    from optimlab.lrfind import lr_find

    model = mlp()
    opt = optim.create("adam", model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_find(model, opt, blobs()[0], num_steps=20, batch_size=32, device="auto")
    assert result.config["device"] == ("cuda:0" if CUDA else "cpu") and len(result.lrs) > 3
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in model.state_dict().items())


# ------------------------------------------------------------------ on a GPU
@needs_cuda
def test_fit_on_cuda_moves_everything_and_learns_as_the_cpu_run_does():
    cpu_model, _, hcpu = run("cpu")
    model, opt, h = run("cuda")
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(t.device.type == "cuda" for s in opt.state.values() for k, t in s.items() if k != "step")
    assert h.config["device"] == "cuda:0"
    assert h["val_loss"][-1] == pytest.approx(hcpu["val_loss"][-1], abs=0.05)


@needs_cuda
@pytest.mark.parametrize("first,then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_resumes_on_another_device(tmp_path, first, then):
    path = tmp_path / "ck.pt"
    run(first, checkpoint=path)  # 2 epochs written
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    opt = optim.create("adam", model.parameters(), lr=1e-2)
    train, val = blobs()
    h = fit(model, opt, train, val=val, epochs=3, batch_size=32, seed=1, ema=0.9, quiet=True, store=False,
            device=then, checkpoint=path, resume=True)
    assert h.config["resumed_from_step"] == 32 and len(h.epochs) == 3
    assert all(p.device.type == then for p in model.parameters())
    assert h["val_loss"][-1] < h["val_loss"][0]


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    _, _, h32 = run("cuda")
    _, _, h = run("cuda", precision=precision)
    assert h["val_loss"][-1] == pytest.approx(h32["val_loss"][-1], abs=0.05)


@needs_cuda
def test_an_ema_built_on_another_device_is_refused():
    model = mlp()
    ema = EMA(model, decay=0.9)
    with pytest.raises(ValueError, match="ema: this EMA was built on cpu"):
        fit(model, optim.create("sgd", model.parameters()), blobs(n=64)[0], ema=ema, device="cuda", quiet=True,
            store=False)
    assert next(model.parameters()).device.type == "cpu"


@needs_cuda
def test_lecture_cnn_trains_on_cuda():
    torch.manual_seed(0)
    model = models.lecture_cnn()
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    h = fit(model, optim.create("adam", model.parameters(), lr=1e-3), (x, y), epochs=2, batch_size=64, seed=0,
            quiet=True, store=False, device="cuda")
    assert h.status == "completed" and model.conv.weight.is_cuda
