"""Checkpoints that cannot be trusted are refused, resumes notice what changed, and the
temporary files of killed writers are cleaned up (issue 15, faults 3, 6 and 7)."""

import copy
import multiprocessing
import os
import pickle
import random
import signal
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from optimlab import optim
from optimlab import schedules as S
from optimlab.train import CheckpointError, checkpoint, fit
from tests.train_synth import StopAt, blobs, isolated, mlp, same_weights  # noqa: F401 (isolated: autouse fixture)

DATA = blobs()[0]  # 512 samples: 16 steps per epoch of 32


def build(lr=1e-2, act=nn.ReLU, hidden=32, name="adam", **hyper):
    model = mlp(hidden=hidden, act=act)
    return model, optim.create(name, model.parameters(), lr=lr, **hyper)


def run(model, opt, path, epochs=1, **kwargs):
    return fit(model, opt, DATA, epochs=epochs, batch_size=32, seed=3, checkpoint=path, quiet=True, store=False,
               **kwargs)


def written(tmp_path, **build_kwargs):
    """A checkpoint after one epoch (16 steps) of Adam."""
    path = tmp_path / "ck.pt"
    run(*build(**build_kwargs), path)
    return path


def state_of(model, opt):
    return copy.deepcopy((model.state_dict(), opt.state_dict()))


def same_state(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_state, a, b))
    return a == b


def refused(path, model, opt, match, **kwargs) -> CheckpointError:
    """Resuming from ``path`` raises CheckpointError naming it, and leaves model and optimizer as they were."""
    before = state_of(model, opt)
    with pytest.raises(CheckpointError, match=match) as info:
        run(model, opt, path, epochs=2, resume=kwargs.pop("resume", True), **kwargs)
    assert info.value.path == str(path) and repr(str(path)) in str(info.value)
    assert same_state(state_of(model, opt), before)
    return info.value


# ------------------------------------------------------------ fault 3: verification
def entry_data(path, name_end):
    """(offset, size) of the archive entry whose name ends with ``name_end``."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(name_end))
    fields = struct.unpack("<IHHHHHIIIHH", raw[info.header_offset:info.header_offset + 30])
    return info.header_offset + 30 + fields[9] + fields[10], info.file_size


def weight_entry(path, key):
    """The archive entry holding the storage of ``model[key]`` (found by its bytes)."""
    target = checkpoint.load(path)["model"][key].numpy().tobytes()
    with zipfile.ZipFile(path) as z:
        names = [i.filename for i in z.infolist() if "/data/" in i.filename and z.read(i) == target]
    assert len(names) == 1
    return names[0].partition("/")[2]


def corrupt(path, case):
    raw = path.read_bytes()
    if case == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("epoch: 3\nloss: 0.1\n")
    elif case == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif case == "flipped weight byte":
        start, size = entry_data(path, weight_entry(path, "0.weight"))
        assert size == 32 * 20 * 4
        data = bytearray(raw)
        data[start + 1001] ^= 0x10
        path.write_bytes(bytes(data))
        stored = torch.load(path, weights_only=True)["model"]["0.weight"]  # torch alone loads it, silently wrong
        assert not torch.equal(stored, torch.frombuffer(bytearray(raw[start:start + size]), dtype=torch.float32)
                               .view(32, 20))
    elif case == "missing key":
        state = checkpoint.load(path)
        del state["rng"]
        checkpoint.save(state, path)
    elif case == "directory":
        path.unlink()
        path.mkdir()


CASES = {"truncated": "truncated or damaged", "empty": "empty", "text": "not a checkpoint",
         "random bytes": "not a checkpoint", "flipped weight byte": "corrupt: the archive entry .*data/",
         "missing key": "lacks 'rng'", "directory": "directory"}


@pytest.mark.parametrize("case", CASES)
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, case):
    path = written(tmp_path)
    corrupt(path, case)
    model, opt = build()
    run(model, opt, None, epochs=1)  # the model and optimizer have state of their own to keep
    err = refused(path, model, opt, CASES[case], schedule=S.CosineAnnealing(0.05, period=32))
    assert ("Pass a file path" if case == "directory" else "resume=False") in str(err)  # says what to do
    assert opt.param_groups[0]["lr"] == 1e-2  # not the schedule's first value either


def test_every_flipped_byte_is_refused_or_harmless(tmp_path):
    """Bytes across the file, and every byte of the archive directory's first entry and of its
    end (where a flipped flag or size makes the zip reader fail in its own ways)."""
    path = written(tmp_path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        directory = z.start_dir
    original = checkpoint.load(path)
    damaged = tmp_path / "damaged.pt"
    outcomes = {"refused": 0, "identical": 0}
    for i in sorted({*range(0, len(raw), len(raw) // 150), *range(directory, directory + 100),
                     *range(len(raw) - 100, len(raw))}):
        data = bytearray(raw)
        data[i] ^= 0x01
        damaged.write_bytes(bytes(data))
        try:
            loaded = checkpoint.load(damaged)
        except CheckpointError as err:
            assert err.path == str(damaged)
            outcomes["refused"] += 1
            continue
        assert same_state(loaded, original), f"byte {i} changed the checkpoint silently"
        outcomes["identical"] += 1  # e.g. a timestamp or the alignment padding of the archive
    assert outcomes["refused"] > 2 * outcomes["identical"]


def test_load_refuses_what_the_weights_only_loader_refuses(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Path("/")}, path)  # an object that needs unpickling code
    with pytest.raises(CheckpointError, match="weights only loader refused") as info:
        checkpoint.load(path)
    assert "weights_only=False" not in str(info.value)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        checkpoint.load(path)


def test_save_writes_crcs_even_when_torch_is_told_not_to(tmp_path):
    path = tmp_path / "ck.pt"
    torch.serialization.set_crc32_options(False)
    try:
        checkpoint.save({"w": torch.ones(3)}, path)
        torch.save({"w": torch.ones(3)}, tmp_path / "plain.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(checkpoint.load(path)["w"], torch.ones(3))
    with pytest.raises(CheckpointError, match="without CRC-32s"):
        checkpoint.load(tmp_path / "plain.pt")


def test_checkpoint_error_survives_pickling():
    err = CheckpointError("/x/ck.pt", "it does not fit", "Do this.", ["a: 1, now 2"])
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.problem, back.remedy, back.differences, str(back)) == \
           (err.path, err.problem, err.remedy, err.differences, str(err))
    assert isinstance(back, ValueError)


# ------------------------------------------------------------ fault 6: what changed
def test_changed_hyperparameters_are_refused_listing_each(tmp_path):
    path = written(tmp_path)
    model, opt = build(lr=0.5, weight_decay=0.1)
    err = refused(path, model, opt, "other settings")
    assert "optimizer.lr: checkpoint 0.01, now 0.5" in err.differences
    assert "optimizer.weight_decay: checkpoint 0, now 0.1" in err.differences
    assert len(err.differences) == 2 and "resume='override'" in str(err)


def test_override_continues_with_the_new_learning_rate(tmp_path):
    path = written(tmp_path)
    model, opt = build(lr=0.5)
    h = run(model, opt, path, epochs=2, resume="override")
    assert h.status == "completed" and h.config["resumed_from_step"] == 16
    assert h.config["resume_overrides"] == ["optimizer.lr: checkpoint 0.01, now 0.5"]
    assert opt.param_groups[0]["lr"] == 0.5 and h.epochs[1]["lr"] == 0.5
    assert all(int(s["step"]) == 32 for s in opt.state.values())  # Adam's moments were carried over

    class Raise:  # the same run uninterrupted, its learning rate raised after epoch 1
        def on_epoch_end(self, trainer, row):
            trainer.optimizer.param_groups[0]["lr"] = 0.5

    ref_model, ref_opt = build()
    run(ref_model, ref_opt, tmp_path / "ref.pt", epochs=2, callbacks=[Raise()])
    assert same_weights(model, ref_model)


def test_override_gives_a_torch_lr_scheduler_the_new_base(tmp_path):
    def lambda_lr(lr):
        model, opt = build(lr=lr)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))

    path = tmp_path / "ck.pt"
    model, opt, sched = lambda_lr(1e-2)
    run(model, opt, path, schedule=sched)
    model, opt, sched = lambda_lr(0.5)
    refused(path, model, opt, "optimizer.lr: checkpoint 0.01, now 0.5", schedule=sched)
    run(model, opt, path, epochs=2, schedule=sched, resume="override")
    assert sched.base_lrs == [0.5] and opt.param_groups[0]["lr"] == pytest.approx(0.5 / 33)


def test_other_architecture_with_the_same_shapes_is_refused(tmp_path):
    path = written(tmp_path, act=nn.Tanh)
    model, opt = build(act=nn.ReLU)
    err = refused(path, model, opt, "other settings")
    assert err.differences == ["model: '1' is Tanh() in the checkpoint, ReLU() now"]
    h = run(model, opt, path, epochs=1, resume="override")  # the checkpoint's weights in the ReLU model
    assert h.config["resume_overrides"] == err.differences
    assert same_state(model.state_dict(), checkpoint.load(path)["model"])


@pytest.mark.parametrize("change, difference", [
    ({"hidden": 16}, "model: '0.weight' has shape (32, 20) in the checkpoint, (16, 20) now"),
    ({"name": "sgd"}, "optimizer: checkpoint Adam, now SGD"),
])
def test_unloadable_differences_are_refused_even_with_override(tmp_path, change, difference):
    path = written(tmp_path)
    model, opt = build(**change)
    err = refused(path, model, opt, "does not fit this run", resume="override")
    assert difference in err.differences


def test_changed_schedule_is_refused_and_a_failed_override_changes_nothing(tmp_path):
    path = tmp_path / "ck.pt"
    run(*build(), path, schedule=S.OneCycle(0.1, 100))
    model, opt = build()
    err = refused(path, model, opt, "other settings", schedule=S.OneCycle(0.1, 10))
    assert [d.split(":")[0] for d in err.differences] == ["schedule"]
    # the checkpoint is 16 steps into its schedule: a 10-step one cannot take that position
    refused(path, model, opt, "could not be loaded", schedule=S.OneCycle(0.1, 10), resume="override")


def test_a_schedule_moving_the_learning_rate_is_not_a_change(tmp_path):
    """A torch LR scheduler built before fit: the lr it moved is not compared, the one it started from is."""
    def step_lr():
        model, opt = build()
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)

    ref_model, ref_opt, sched = step_lr()
    run(ref_model, ref_opt, tmp_path / "ref.pt", epochs=2, schedule=sched)
    path = tmp_path / "ck.pt"
    model, opt, sched = step_lr()
    run(model, opt, path, epochs=2, schedule=sched, checkpoint_every=4, callbacks=[StopAt(22)])
    assert checkpoint.load(path)["step"] == 20
    model, opt, sched = step_lr()
    h = run(model, opt, path, epochs=2, schedule=sched, resume=True)
    assert h.status == "completed" and "resume_overrides" not in h.config
    assert same_weights(model, ref_model)


def test_resume_must_be_true_false_or_override(tmp_path):
    model, opt = build()
    with pytest.raises(ValueError, match="resume must be True, False or 'override', got resume='yes'"):
        run(model, opt, tmp_path / "ck.pt", resume="yes")
    assert not (tmp_path / "ck.pt").exists()


def test_format_1_checkpoint_resumes_with_a_warning(tmp_path):
    path = written(tmp_path)
    state = checkpoint.load(path)
    for key in ("model_structure", "optimizer_config", "setup"):
        del state[key]
    state["format"] = "optimlab.checkpoint/1"
    checkpoint.save(state, path)
    model, opt = build()
    with pytest.warns(UserWarning, match="format 1"):
        h = run(model, opt, path, epochs=2, resume=True)
    assert h.status == "completed" and checkpoint.load(path)["format"] == "optimlab.checkpoint/2"


# ------------------------------------------------------------ fault 7: leftovers
def _writer(path, conn):
    """Save a checkpoint, stopping half-way through the write until killed."""
    def stuck(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        conn.send(os.getpid())
        time.sleep(600)

    torch.save = stuck
    checkpoint.save({"w": torch.ones(3)}, path)


def start_writer(path):
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_writer, args=(path, send), daemon=True)
    proc.start()
    send.close()
    assert receive.poll(60), "the writer did not start"
    assert receive.recv() == proc.pid
    return proc


def temps(path, pid):
    return sorted(path.parent.glob(f".{path.name}.{pid}-*.tmp"))


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    path = tmp_path / "ck.pt"
    live = start_writer(path)  # first: a writer starting later would clean up after the dead one itself
    try:
        dead = start_writer(path)
        os.kill(dead.pid, signal.SIGKILL)
        dead.join(60)
        [left] = temps(path, dead.pid)
        [writing] = temps(path, live.pid)
        tag = left.name.split(".")[3]  # PID-HOST
        others = [tmp_path / f".other.pt.{tag}.abcdefgh.tmp",            # another checkpoint's
                  tmp_path / f".ck.pt.{dead.pid}-00000000.abcdefgh.tmp",  # a writer on another host
                  tmp_path / "notes.txt", tmp_path / ".ck.pt.abcdefgh.tmp"]  # unmarked, but recent
        for other in others:
            other.write_bytes(b"x")
        h = run(*build(), path)
        assert h.status == "completed"
        assert not left.exists()
        assert writing.exists() and writing.read_bytes().startswith(b"PK")  # the live writer's file is untouched
        assert all(other.exists() for other in others)
    finally:
        live.kill()
        live.join(60)


def test_unmarked_leftovers_are_removed_once_old(tmp_path):
    path = tmp_path / "ck.pt"
    old, recent = tmp_path / ".ck.pt.abc_1234.tmp", tmp_path / ".ck.pt.xyz_5678.tmp"
    for f in (old, recent):
        f.write_bytes(b"x")
    then = time.time() - checkpoint.LEGACY_TEMP_AGE_S - 60
    os.utime(old, (then, then))
    checkpoint.save({"w": torch.ones(3)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [recent.name, "ck.pt"]
