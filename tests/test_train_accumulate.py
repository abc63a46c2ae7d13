"""Gradient accumulation (``fit(..., accumulate=k)``) and optimizers whose step takes a closure
(SAM), driven by the loop (issue 14, items 1 and 3).

Oracles: the same samples as one big batch (float64, to rounding), and hand-written loops
doing what the docs say fit does (bit for bit). Resumption: stopped in process, and a real
subprocess killed with SIGKILL in the middle of an accumulation group.
"""

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optimlab import optim
from optimlab import schedules as S
from optimlab.optim import SAM
from optimlab.store import RunStore
from optimlab.train import CheckpointError, NonFiniteError, Trainer, checkpoint, fit
from tests.train_synth import blobs, isolated, mlp, same_weights  # noqa: F401 (isolated: autouse fixture)

VOLATILE = {"time_s", "samples_per_s", "val_time_s"}


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def data64(n):
    (x, y), _ = blobs(n=n)
    return x.double(), y


def build(name, seed=0):
    model = mlp(seed=seed).double()
    hyper = {"sgd": dict(lr=0.05, momentum=0.9), "adam": dict(lr=1e-2)}[name]
    return model, optim.create("sgd" if name == "sgd" else "adam", model.parameters(), **hyper)


# ------------------------------------------------------------- the big batch
@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("n", [520, 500], ids=["last-group-one-short-batch", "last-group-16-16-16-4"])
def test_accumulate_4_of_16_is_one_batch_of_64_in_float64(name, n):
    """The same samples in the same steps: 520 = 8 groups of 64 + one of 8; 500 = 7 of 64 + one of
    16+16+16+4 (a 1/k weighting would get that last group wrong, the share of samples does not).
    The cosine schedule and the clipping count and see optimizer steps (9 or 8 per epoch)."""
    x, y = data64(n)
    steps = -(-n // 64)
    runs = {}
    for accumulate, batch in ((1, 64), (4, 16)):
        model, opt = build(name)
        h = fit(model, opt, (x, y), epochs=2, batch_size=batch, accumulate=accumulate, seed=3, clip=0.5,
                schedule=S.CosineAnnealing(opt.param_groups[0]["lr"], period=2 * steps), sample_every=2,
                quiet=True, store=False)
        runs[accumulate] = (model, h)
    (m1, h1), (m4, h4) = runs[1], runs[4]
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(m4.state_dict()[k], v, rtol=1e-12, atol=1e-14)
    assert not same_weights(m1, mlp(seed=0).double())  # they trained
    assert h4.config["accumulate"] == 4 and h1.config["accumulate"] == 1
    assert h4.config["steps_per_epoch"] == h1.config["steps_per_epoch"] == steps
    assert [r["step"] for r in h4.epochs] == [steps, 2 * steps]
    assert [r["samples"] for r in h4.epochs] == [n, n]
    for key in ("train_loss", "train_acc", "grad_norm", "grad_norm_max", "lr"):
        assert h4[key] == pytest.approx(h1[key], rel=1e-12), key
    assert [s["step"] for s in h4.steps] == [s["step"] for s in h1.steps]
    assert [s["loss"] for s in h4.steps] == pytest.approx([s["loss"] for s in h1.steps], rel=1e-12)


def hand_accumulation(model, opt, x, y, batch, k, epochs, seed, clip=None):
    """What the docs say fit does: per group, each micro-batch loss times its share of the group's
    samples, backward, (clip the sum), one step. The order: fit's permutation of (seed, epoch)."""
    from optimlab.clip import clip_grad_norm

    named = list(model.named_parameters())
    for epoch in range(epochs):
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        perm = torch.randperm(len(x), generator=g)
        micro = [perm[i:i + batch] for i in range(0, len(x), batch)]
        for j in range(0, len(micro), k):
            group = micro[j:j + k]
            total = sum(len(idx) for idx in group)
            opt.zero_grad(set_to_none=True)
            for idx in group:
                loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
                (loss * (len(idx) / total) if len(group) > 1 else loss).backward()
            if clip is not None:
                clip_grad_norm(named, clip, nonfinite="keep")
            opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_accumulates_exactly_as_the_hand_written_loop(dtype):
    (x, y), _ = blobs(n=500)
    x = x.to(dtype)
    model, opt = build("adam")
    model.to(dtype)
    fit(model, opt, (x, y), epochs=2, batch_size=16, accumulate=3, seed=4, clip=0.3, quiet=True, store=False)
    ref, ref_opt = build("adam")
    ref.to(dtype)
    hand_accumulation(ref, ref_opt, x, y, 16, 3, 2, 4, clip=0.3)
    assert same_weights(model, ref)


def test_accumulate_larger_than_the_epoch_makes_one_step_per_epoch():
    x, y = data64(100)
    model, opt = build("sgd")
    h = fit(model, opt, (x, y), epochs=2, batch_size=16, accumulate=50, seed=0, quiet=True, store=False)
    assert h.config["steps_per_epoch"] == 1 and [r["step"] for r in h.epochs] == [1, 2]
    big, big_opt = build("sgd")
    fit(big, big_opt, (x, y), epochs=2, batch_size="full", seed=0, quiet=True, store=False)
    for k, v in big.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-12, atol=1e-14)


def test_accumulate_with_a_dataloader_groups_its_batches():
    (x, y), _ = blobs(n=200)
    x = x.double()
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=False)
    model, opt = build("sgd")
    h = fit(model, opt, loader, epochs=1, accumulate=4, seed=0, quiet=True, store=False)
    assert h.config["steps_per_epoch"] == 5 and h.epochs[0]["step"] == 5
    ref, ref_opt = build("sgd")
    fit(ref, ref_opt, DataLoader(TensorDataset(x, y), batch_size=40, shuffle=False), epochs=1, seed=0,
        quiet=True, store=False)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------- counting in steps
class Steps:
    def __init__(self, stop_at=None):
        self.seen, self.stop_at = [], stop_at

    def on_step_end(self, trainer):
        self.seen.append(trainer.step)
        if trainer.step == self.stop_at:
            trainer.stop_training = True


def test_checkpoints_callbacks_and_samples_count_optimizer_steps(tmp_path):
    x, y = data64(512)  # 32 batches of 16 = 8 steps of 4 per epoch
    model, opt = build("sgd")
    saved = []

    class Saves:
        def on_checkpoint(self, trainer, path):
            state = checkpoint.load(path)
            saved.append((state["step"], state["batch"]))

    steps = Steps()
    h = fit(model, opt, (x, y), epochs=2, batch_size=16, accumulate=4, seed=0, sample_every=3, quiet=True,
            store=False, checkpoint=tmp_path / "ck.pt", checkpoint_every=3, callbacks=[steps, Saves()])
    assert steps.seen == list(range(1, 17))
    # every 3 steps (not at an epoch's last step, which the epoch-end checkpoint covers), batch = 4 x step
    assert saved == [(3, 12), (6, 24), (8, 0), (9, 4), (12, 16), (15, 28), (16, 0)]
    assert [s["step"] for s in h.steps] == [3, 6, 8, 11, 14, 16]
    assert [r["steps"] for r in h.epochs] == [8, 8]


def test_early_stopping_and_epoch_schedules_see_the_same_run_as_the_big_batch():
    """Per-epoch schedule and early stopping (on a validation set with wrong labels, whose loss
    goes up as the model learns) are the big batch's, epoch for epoch; steps are optimizer steps."""
    x, y = data64(256)
    runs = []
    for accumulate, batch in ((1, 32), (2, 16)):
        model = mlp(seed=0).double()
        opt = optim.create("sgd", model.parameters(), lr=0.5)
        h = fit(model, opt, {"train": (x, y), "val": (x[:64], (y[:64] + 1) % 3)}, epochs=8, batch_size=batch,
                accumulate=accumulate, schedule=S.ExponentialDecay(0.5, decay_rate=0.5), schedule_unit="epoch",
                early_stopping={"patience": 1, "restore_best": True}, seed=0, quiet=True, store=False)
        runs.append((model, h))
    (m1, h1), (m2, h2) = runs
    assert h2.status == h1.status == "early_stopped" and h2.best_epoch == h1.best_epoch
    assert len(h2.epochs) == len(h1.epochs) < 8
    assert h2["lr"] == h1["lr"] == [0.5 * 0.5 ** e for e in range(len(h1.epochs))]
    assert h2["step"] == h1["step"] == [8 * (e + 1) for e in range(len(h1.epochs))]
    assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-12)
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------- resume
def dropout_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    return model, optim.create("adam", model.parameters(), lr=1e-2)


def train_dropout(model, opt, data=None, **kwargs):
    """3 epochs of 512 samples in batches of 16, 3 per step: 11 steps per epoch (the last of 2)."""
    train_data, val = blobs()
    return fit(model, opt, train_data if data is None else data, val=val, epochs=3, batch_size=16,
               accumulate=3, seed=5, schedule=S.CosineAnnealing(1e-2, period=33), ema=0.9, sample_every=4,
               quiet=True, **kwargs)


@pytest.mark.parametrize("loader", [False, True], ids=["tensors", "dataloader"])
def test_stopped_and_resumed_accumulating_run_is_bit_identical(tmp_path, loader):
    data = DataLoader(TensorDataset(*blobs()[0]), batch_size=16, shuffle=True) if loader else None
    ref_model, opt = dropout_model()
    ref = train_dropout(ref_model, opt, data, store=False)
    path = tmp_path / "ck.pt"
    model, opt = dropout_model()
    stopped = train_dropout(model, opt, data, checkpoint=path, checkpoint_every=4, store=False,
                            callbacks=[Steps(stop_at=18)])
    saved = checkpoint.load(path)
    assert stopped.status == "stopped" and (saved["step"], saved["epoch"], saved["batch"]) == (16, 1, 15)
    model, opt = dropout_model()
    resumed = train_dropout(model, opt, data, checkpoint=path, resume=True, store=False)
    assert resumed.status == "completed" and resumed.config["resumed_from_step"] == 16
    assert same_weights(model, ref_model)
    assert comparable(resumed.epochs) == comparable(ref.epochs)
    assert comparable(resumed.steps) == comparable(ref.steps)


def test_resume_with_another_accumulation_is_refused(tmp_path):
    path = tmp_path / "ck.pt"
    model, opt = dropout_model()
    train_dropout(model, opt, checkpoint=path, store=False)
    model, opt = dropout_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="accumulate"):
        fit(model, opt, blobs()[0], epochs=4, batch_size=16, accumulate=2, seed=5, checkpoint=path, resume=True,
            quiet=True, store=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# a real SIGKILL in the middle of an accumulation group
class PauseInGroup:
    """A forward pre-hook: at the ``at``-th forward pass of training, tell the parent and wait to be killed."""

    def __init__(self, at, send):
        self.count, self.at, self.send = 0, at, send

    def __call__(self, module, args):
        if module.training:
            self.count += 1
            if self.count == self.at:
                self.send(("paused", self.count))
                time.sleep(120)


def _child(ck, out, store, pause_at, conn):
    torch.set_num_threads(1)
    model, opt = dropout_model()
    if pause_at:
        model.register_forward_pre_hook(PauseInGroup(pause_at, conn.send))

    class Report:
        def on_checkpoint(self, trainer, path):
            conn.send(("ckpt", trainer.step))

    history = train_dropout(model, opt, checkpoint=str(ck), checkpoint_every=4, resume=True, store=str(store),
                            callbacks=[Report()])
    torch.save(model.state_dict(), out)
    Path(str(out) + ".json").write_text(history.to_json())


def _start(ck, out, store, pause_at):
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(ck, out, store, pause_at, send), daemon=True)
    proc.start()
    send.close()
    return proc, receive


def test_run_killed_inside_an_accumulation_group_redoes_it_and_resumes_bit_identical(tmp_path):
    ck, out, store = tmp_path / "ck.pt", tmp_path / "final.pt", tmp_path / "runs.sqlite"
    # forward 62 = epoch 2 (11 steps, 32 batches an epoch), batch 30 = the 2nd micro-batch of step 10
    # of that epoch (global step 21), after the checkpoint at step 20 (batch 30 = 3 x 10)
    proc, receive = _start(ck, out, store, pause_at=62)
    seen = []
    try:
        while receive.poll(60):
            kind, value = receive.recv()
            seen.append((kind, value))
            if kind == "paused":
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL, seen
    assert ("ckpt", 20) in seen and ("ckpt", 21) not in seen and not out.exists()
    saved = checkpoint.load(ck)
    assert (saved["step"], saved["epoch"], saved["batch"]) == (20, 1, 27)  # epoch 2, 9 steps = 27 batches done
    proc, receive = _start(ck, out, store, pause_at=None)  # a fresh process redoes the group and goes on
    proc.join(120)
    assert proc.exitcode == 0
    resumed = json.loads(Path(str(out) + ".json").read_text())
    assert resumed["config"]["resumed_from_step"] == 20

    ref_model, opt = dropout_model()  # uninterrupted, in this process (one thread, as the child)
    ref = train_dropout(ref_model, opt, store=False)
    final = torch.load(out, weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in ref_model.state_dict().items())
    assert comparable(resumed["epochs"]) == comparable(json.loads(ref.to_json())["epochs"])
    runs = RunStore(store).runs()
    assert len(runs) == 1 and runs[0]["status"] == "completed" and runs[0]["epochs"] == 3


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_bad_accumulate_is_refused_before_anything_is_written(tmp_path, value):
    model, opt = build("sgd")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"accumulate.*accumulate={value!r}"):
        fit(model, opt, data64(64), accumulate=value, checkpoint=tmp_path / "ck.pt",
            store=tmp_path / "runs.sqlite", quiet=True)
    assert list(tmp_path.iterdir()) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------- SAM: the closure
def hand_sam(model, sam, x, y, batch, k, epochs, seed, clip=None):
    """The loop the SAM docs describe, with fit's data order, accumulation and clipping:
    forward-backward at θ (no clip), then sam.step(closure) where the closure zeroes, redoes
    the group's micro-batches, clips and returns the loss."""
    from optimlab.clip import clip_grad_norm

    named = list(model.named_parameters())
    first_norms = []

    def pass_(group):
        total = sum(len(idx) for idx in group)
        for idx in group:
            loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
            (loss * (len(idx) / total) if len(group) > 1 else loss).backward()
        return loss

    for epoch in range(epochs):
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        perm = torch.randperm(len(x), generator=g)
        micro = [perm[i:i + batch] for i in range(0, len(x), batch)]
        for j in range(0, len(micro), k):
            group = micro[j:j + k]
            sam.zero_grad(set_to_none=True)
            pass_(group)
            first_norms.append(torch.stack([p.grad.norm() for p in model.parameters()]).norm().item())

            def closure(group=group):
                sam.zero_grad(set_to_none=True)
                loss = pass_(group)
                if clip is not None:
                    clip_grad_norm(named, clip, nonfinite="keep")
                return loss

            sam.step(closure)
    return first_norms


@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("clip", [None, 0.2])
def test_fit_drives_sam_exactly_as_the_hand_written_closure_loop(accumulate, clip):
    (x, y), _ = blobs(n=200)
    model = mlp(seed=1)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    h = fit(model, sam, (x, y), epochs=2, batch_size=16, accumulate=accumulate, clip=clip, seed=2,
            sample_every=1, quiet=True, store=False)
    ref = mlp(seed=1)
    ref_sam = SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    norms = hand_sam(ref, ref_sam, x, y, 16, accumulate, 2, 2, clip=clip)
    assert same_weights(model, ref)
    plain = mlp(seed=1)  # and SAM did something: plain SGD ends elsewhere
    fit(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), (x, y), epochs=2, batch_size=16,
        accumulate=accumulate, clip=clip, seed=2, quiet=True, store=False)
    assert not same_weights(model, plain)
    # the monitor records the first-pass gradient (at θ, before clipping)
    assert [s["grad_norm"] for s in h.steps] == pytest.approx(norms, rel=1e-5)


class NaiveClosureOptimizer(torch.optim.Optimizer):
    """A closure optimizer that perturbs the weights and does NOT undo it when the closure raises."""

    requires_closure = True

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure):
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        for p in ps:
            p.add_(p.grad, alpha=1e4)
        with torch.enable_grad():
            closure()
        for p in ps:
            p.sub_(p.grad, alpha=1e4 + self.param_groups[0]["lr"])


def test_nonfinite_second_pass_stops_the_run_with_the_weights_put_back():
    (x, y), _ = blobs(n=64)

    class Explodes(nn.Module):
        """Finite at the start, NaN once the weights move far (in the closure's pass)."""

        def __init__(self):
            super().__init__()
            self.lin = mlp(seed=0)

        def forward(self, inp):
            out = self.lin(inp)
            return out * torch.where(self.lin[0].weight.abs().max() > 2.0, torch.nan, 1.0)

    model = Explodes()
    model.lin[0].weight.data.mul_(0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = NaiveClosureOptimizer(model.parameters())
    with pytest.raises(NonFiniteError, match="closure") as info:
        fit(model, opt, (x, y), epochs=1, batch_size=64, seed=0, quiet=True, store=False)
    assert info.value.step == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sam_with_fp16_is_refused_before_training(tmp_path):
    model = mlp()
    sam = SAM(model.parameters(), "sgd", lr=0.1)
    with pytest.raises(ValueError, match="precision='fp16'.*closure"):
        fit(model, sam, blobs(n=64)[0], precision="fp16", checkpoint=tmp_path / "ck.pt",
            store=tmp_path / "runs.sqlite", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_sam_run_resumes_bit_identical(tmp_path):
    (x, y), _ = blobs(n=256)

    def run(**kwargs):
        model = mlp(seed=2)
        sam = SAM(model.parameters(), "adam", rho=0.1, lr=1e-2)
        h = fit(model, sam, (x, y), epochs=2, batch_size=16, accumulate=2, seed=1, quiet=True, store=False,
                **kwargs)
        return model, h

    ref, _ = run()
    stopped, h = run(checkpoint=tmp_path / "ck.pt", checkpoint_every=3, callbacks=[Steps(stop_at=11)])
    assert h.status == "stopped" and checkpoint.load(tmp_path / "ck.pt")["step"] == 9
    resumed, h = run(checkpoint=tmp_path / "ck.pt", resume=True)
    assert h.config["resumed_from_step"] == 9 and same_weights(resumed, ref)


def test_trainer_exposes_accumulate():
    model, opt = build("sgd")
    trainer = Trainer(model, opt, accumulate=3, store=False, quiet=True)
    assert trainer.accumulate == 3 and trainer.closure_step is False


def test_nonfinite_second_pass_with_optimlabs_sam_stops_with_the_weights_put_back():
    (x, y), _ = blobs(n=64)

    class NanAwayFromStart(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = mlp(seed=0)
            self.start = self.lin[0].weight.detach().clone()

        def forward(self, inp):
            moved = not torch.equal(self.lin[0].weight, self.start)  # SAM's perturbed weights: NaN
            return self.lin(inp) * (torch.nan if moved else 1.0)

    model = NanAwayFromStart()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sam = SAM(model.parameters(), "sgd", rho=0.5, lr=0.1)
    with pytest.raises(NonFiniteError, match="inside SAM.step") as info:
        fit(model, sam, (x, y), epochs=1, batch_size=64, seed=0, quiet=True, store=False)
    assert info.value.step == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sam.state == {} or all(not s for s in sam.state.values())  # the base did not step
