"""Checkpoints: atomic writes, safe loads, and exact resumption — in process,
and for a real subprocess killed with SIGKILL in the middle of an epoch."""

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from optimlab.store import RunStore
from optimlab.train import checkpoint, fit
from tests import train_resume_child as child
from tests.train_synth import StopAt, blobs, isolated, same_weights  # noqa: F401 (isolated: autouse fixture)

VOLATILE = {"time_s", "samples_per_s", "val_time_s"}


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def reference():
    model, opt = child.build()
    return model, child.train(model, opt, store=False)


# ------------------------------------------------------------------ the file
def test_save_is_atomic_and_leaves_the_old_checkpoint_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    checkpoint.save({"step": 1, "w": torch.ones(3)}, path)

    def torn_write(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_write)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save({"step": 2, "w": torch.zeros(3)}, path)
    assert checkpoint.load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temporary file left behind


def test_load_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Path("/")}, path)  # any object that needs unpickling code
    with pytest.raises(Exception, match="[Ww]eights only"):
        checkpoint.load(path)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = checkpoint.rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    checkpoint.set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_checkpoint_holds_everything_needed(tmp_path):
    model, opt = child.build()
    child.train(model, opt, checkpoint=tmp_path / "ck.pt", store=False)
    saved = checkpoint.load(tmp_path / "ck.pt")
    assert {"model", "optimizer", "scheduler", "ema", "rng", "epoch", "batch", "step", "seed", "history",
            "monitor"} <= set(saved)
    assert (saved["epoch"], saved["batch"], saved["step"]) == (3, 0, 48)
    assert saved["scheduler"] == {"position": 48} and saved["ema"]["num_updates"] == 48
    assert saved["optimizer"]["state"][0]["exp_avg"].shape == (32, 20)


# ------------------------------------------------------------- exact resume
@pytest.mark.parametrize("loader", [False, True], ids=["tensors", "dataloader"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, loader):
    data = DataLoader(TensorDataset(*blobs()[0]), batch_size=32, shuffle=True) if loader else None
    ref_model, ref = reference() if not loader else (None, None)
    if loader:
        ref_model, opt = child.build()
        ref = child.train(ref_model, opt, data, store=False)
    path = tmp_path / "ck.pt"
    model, opt = child.build()
    stopped = child.train(model, opt, data, checkpoint=path, checkpoint_every=3, store=False,
                          callbacks=[StopAt(23)])  # last checkpoint at step 21: steps 22-23 are lost
    assert stopped.status == "stopped" and checkpoint.load(path)["step"] == 21
    assert checkpoint.load(path)["batch"] == 5  # mid-epoch (epoch 2, batch 6 next)
    model, opt = child.build()
    resumed = child.train(model, opt, data, checkpoint=path, resume=True, store=False)
    assert resumed.status == "completed" and resumed.config["resumed_from_step"] == 21
    assert same_weights(model, ref_model)
    assert comparable(resumed.epochs) == comparable(ref.epochs)
    assert comparable(resumed.steps) == comparable(ref.steps)


def test_resume_without_checkpoint_starts_fresh_and_mismatch_is_refused(tmp_path):
    path = tmp_path / "ck.pt"
    model, opt = child.build()
    h = child.train(model, opt, checkpoint=path, resume=True, store=False)  # nothing to resume: fresh run
    assert h.status == "completed" and "resumed_from_step" not in h.config
    model, opt = child.build()
    with pytest.raises(ValueError, match="same data and batch size"):
        fit(model, opt, blobs()[0], batch_size=64, epochs=1, checkpoint=path, resume=True, quiet=True,
            store=False)


# ----------------------------------------------------- a real SIGKILL
def _child(ck, out, store, conn):
    child.main(str(ck), str(out), str(store), send=conn.send)


def _start(ck, out, store):
    """The child run in a new process, forked from this one (torch is already imported
    here, so the child starts in milliseconds instead of seconds)."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(ck, out, store, send), daemon=True)
    proc.start()
    send.close()
    return proc, receive


def test_run_killed_with_sigkill_mid_epoch_resumes_bit_identical(tmp_path):
    ck, out, store = tmp_path / "ck.pt", tmp_path / "final.pt", tmp_path / "runs.sqlite"
    proc, receive = _start(ck, out, store)
    seen = []
    try:
        while receive.poll(60):
            step = receive.recv()
            seen.append(step)
            if step > 16 and step % 16:  # a mid-epoch checkpoint in epoch 2: kill the process now
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL, seen
    assert not out.exists()
    saved = checkpoint.load(ck)
    assert saved["batch"] > 0 and 16 < saved["step"] < 48  # the run died mid-epoch, in epoch 2 or 3
    proc, receive = _start(ck, out, store)  # a fresh process resumes from the checkpoint
    proc.join(120)
    assert proc.exitcode == 0
    resumed = json.loads(Path(str(out) + ".json").read_text())
    assert resumed["config"]["resumed_from_step"] == saved["step"]

    ref_model, ref = reference()  # uninterrupted, in this process (one thread, as the child)
    final = torch.load(out, weights_only=True)
    assert final.keys() == ref_model.state_dict().keys()
    assert all(torch.equal(final[k], v) for k, v in ref_model.state_dict().items())
    assert comparable(resumed["epochs"]) == comparable(json.loads(ref.to_json())["epochs"])

    runs = RunStore(store).runs()  # one run in the store, each epoch once, status completed
    assert len(runs) == 1 and runs[0]["status"] == "completed" and runs[0]["epochs"] == 3
    assert RunStore(store).count("steps") == len(ref.steps)

