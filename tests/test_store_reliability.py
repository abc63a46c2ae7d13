"""The run store as a record that never costs the work: a store that fails (a full
disk, a path that cannot be created) warns once and training goes on, and the run
can be written later; readers open read-only and create nothing, even on a
read-only directory; a run whose process was killed reads ``dead``."""

import contextlib
import io
import multiprocessing
import os
import shutil
import signal
import sqlite3
import tempfile
import time
import warnings

import pytest
import torch

from optimlab import cli, optim
from optimlab.jsonsafe import clean
from optimlab.store import RunStore, _this_process
from optimlab.train import fit
from optimlab.train.history import clean as history_clean
from tests.train_synth import blobs, isolated, mlp, same_weights  # noqa: F401 (isolated: autouse fixture)

TRAIN, VAL = blobs(n=256, n_val=128)


def _fit(store, *, epochs=3, callbacks=(), batch_size=32, **kwargs):
    model = mlp()
    opt = optim.create("sgd", model.parameters(), lr=kwargs.pop("lr", 0.05))
    return fit(model, opt, TRAIN, val=VAL, epochs=epochs, batch_size=batch_size, seed=0, quiet=True, store=store,
               callbacks=callbacks, **kwargs)


def _store_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "run store" in str(w.message)]


class _FillDisk:
    """After epoch ``after``, the store's file may not grow by one page: SQLite's own
    "database or disk is full" on the next write that needs room. With ``batch_size=8``
    an epoch writes 32 sampled step rows, more than a page's free space: it needs room."""

    def __init__(self, store, after):
        self.store, self.after = store, after

    def on_epoch_end(self, trainer, row):
        if row["epoch"] == self.after:
            pages = self.store.conn.execute("PRAGMA page_count").fetchone()[0]
            self.store.conn.execute(f"PRAGMA max_page_count = {pages}")


def _comparable(run):
    """A stored run without the times of its writing."""
    return {k: v for k, v in run.items() if k not in ("created", "updated")}


# ------------------------------------------------------------------ fault 4
def test_a_full_disk_warns_once_training_goes_on_and_the_run_is_written_later(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        h = _fit(store, callbacks=[_FillDisk(store, after=1)], batch_size=8)
    [warning] = _store_warnings(record)  # once, though epochs 2 and 3 and the finish were not stored
    assert str(path) in str(warning.message) and "database or disk is full" in str(warning.message)
    assert h.status == "completed" and len(h.epochs) == 3 and h.diagnoses is not None
    assert "log_epoch" in h.store_error and "database or disk is full" in h.store_error

    reader = RunStore(path, readonly=True)
    [run] = reader.runs()
    assert run["run_id"] == h.run_id and run["epochs"] == 1
    assert run["status"] == "incomplete" and run["stop"]["reason"] == "store_error"  # not left 'running'

    store.conn.execute("PRAGMA max_page_count = 1073741823")  # room again
    assert store.write_history(h) == h.run_id
    run = RunStore(path, readonly=True).run(h.run_id)
    assert run["status"] == run["stored_status"] == "completed" and run["epochs"] == 3
    assert run["epochs_rows"] == clean(h.epochs) and run["steps_rows"] == clean(h.steps)
    assert run["summary"] == clean(h.last) and run["config"] == h.config
    assert [d["code"] for d in run["diagnoses"]] == [d.code for d in h.diagnoses]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("how", ["completed", "nonfinite"])
def test_write_history_stores_what_fit_would_have_stored(tmp_path, how):
    if how == "completed":
        h = _fit(tmp_path / "fit.sqlite", early_stopping=1)
    else:
        h = _fit(tmp_path / "fit.sqlite", lr=1e4, on_nonfinite="stop")
    assert h.status == how and h.store_error is None
    copy = RunStore(tmp_path / "copy.sqlite")
    copy.write_history(h)
    assert _comparable(copy.run(h.run_id)) == _comparable(RunStore(tmp_path / "fit.sqlite").run(h.run_id))
    copy.write_history(h)  # again: the run is replaced, not doubled
    assert copy.count("epochs") == len(h.epochs) and copy.count("steps") == len(h.steps)


def test_write_history_checks_its_input_before_writing(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    h = _fit(False, epochs=1)
    for change, match in [({"run_id": None}, "no run id"), ({"config": "x"}, "configuration"),
                          ({"status": ""}, "no status"), ({"epochs": [{"loss": 1.0}]}, "integer 'epoch'"),
                          ({"steps": [{"step": "3"}]}, "integer 'step'")]:
        with pytest.raises(ValueError, match=match):
            store.write_history({**h.to_dict(), **change})
    with pytest.raises(ValueError, match="History"):
        store.write_history([h])
    assert not (tmp_path / "s.sqlite").exists()


def test_a_store_that_cannot_be_created_warns_and_training_goes_on(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    path = tmp_path / "a-file" / "runs.sqlite"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        h = _fit(path, epochs=2)
    [warning] = _store_warnings(record)
    assert str(path) in str(warning.message) and "start_run" in h.store_error
    assert h.status == "completed" and len(h.epochs) == 2
    assert (tmp_path / "a-file").read_text() == "not a directory"


def test_a_store_of_the_wrong_kind_is_refused_before_training(tmp_path):
    RunStore(tmp_path / "r.sqlite").start_run("x", {})
    for store, match in [(3, "store=3"), (tmp_path, "not a directory"), ("", "path=''"),
                         (RunStore(tmp_path / "r.sqlite", readonly=True), "read-only")]:
        model, before = mlp(), mlp()
        with pytest.raises(ValueError, match=match):
            fit(model, "sgd", TRAIN, epochs=1, quiet=True, store=store)
        assert same_weights(model, before)  # nothing trained
    for kwargs, match in [({"timeout": 0}, "timeout=0"), ({"readonly": "yes"}, "readonly='yes'"),
                          ({"stale_after": -1}, "stale_after=-1")]:
        with pytest.raises(ValueError, match=match):
            RunStore(tmp_path / "r.sqlite", **kwargs)


class _Boom:
    def on_epoch_end(self, trainer, row):
        if row["epoch"] == 2:
            raise RuntimeError("out of memory")


def test_a_run_an_exception_ends_is_marked_interrupted(tmp_path):
    with pytest.raises(RuntimeError, match="out of memory"):
        _fit(tmp_path / "s.sqlite", callbacks=[_Boom()])
    [run] = RunStore(tmp_path / "s.sqlite", readonly=True).runs()
    assert run["status"] == "interrupted" and run["epochs"] == 2
    assert run["stop"] == {"reason": "exception", "error": "RuntimeError: out of memory"}


class _FillDiskAtOnce:
    def __init__(self, store):
        self.store = store

    def on_step_end(self, trainer):
        if trainer.step == 1:
            pages = self.store.conn.execute("PRAGMA page_count").fetchone()[0]
            self.store.conn.execute(f"PRAGMA max_page_count = {pages}")

    def on_epoch_end(self, trainer, row):
        trainer.stop_training = True  # the "crash" after the first epoch's checkpoint


def test_a_resumed_run_records_again_what_the_store_missed(tmp_path):
    path, ck = tmp_path / "runs.sqlite", tmp_path / "ck.pt"
    store = RunStore(path)
    with pytest.warns(RuntimeWarning, match="database or disk is full"):
        first = _fit(store, checkpoint=ck, callbacks=[_FillDiskAtOnce(store)], batch_size=8)
    assert first.store_error and RunStore(path, readonly=True).runs()[0]["epochs"] == 0
    h = _fit(path, checkpoint=ck, resume=True, batch_size=8)  # a fresh handle: the disk has room again
    assert h.store_error is None and h.run_id == first.run_id and len(h.epochs) == 3
    run = RunStore(path, readonly=True).run(h.run_id)
    assert run["status"] == "completed" and run["epochs_rows"] == clean(h.epochs)
    assert run["steps_rows"] == clean(h.steps)


def test_the_store_never_holds_an_epoch_the_checkpoint_lacks(tmp_path, monkeypatch):
    """fit writes an epoch's checkpoint before the epoch's store row: a process killed between the
    two resumes from that epoch under the same run id. (The other order left the store showing
    the first epoch with no checkpoint on disk: the resume started afresh under a new id.)"""
    from optimlab.train import checkpoint

    ck, seen, log_epoch = tmp_path / "ck.pt", [], RunStore.log_epoch

    def logged(self, run_id, row, steps=()):
        seen.append((row["epoch"], checkpoint.load(ck)["epoch"] if ck.exists() else None))
        return log_epoch(self, run_id, row, steps)

    monkeypatch.setattr(RunStore, "log_epoch", logged)
    _fit(tmp_path / "s.sqlite", checkpoint=ck)
    assert seen == [(1, 1), (2, 2), (3, 3)]


def test_clean_lives_below_train():
    assert history_clean is clean  # optimlab.train.history.clean still works for its users
    assert clean({"a": (1, float("nan"))}) == {"a": [1, None]}


# ------------------------------------------------------------------ fault 5
def _snapshot(path):
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns, st.st_size


def test_readers_create_and_change_nothing(tmp_path, capsys):
    missing = tmp_path / "sub" / "none.sqlite"
    with pytest.raises(FileNotFoundError, match=f"no run store at {missing}"):
        RunStore(missing, readonly=True).runs()
    for action in (["list"], ["show", "x"], ["export"]):
        assert cli.main(["runs", "--db", str(missing), *action]) == 2
        assert f"no run store at {missing}" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()

    path = tmp_path / "runs.sqlite"
    h = _fit(path, epochs=2)
    RunStore(path).close()
    before = _snapshot(path)
    reader = RunStore(path, readonly=True)
    assert reader.runs()[0]["run_id"] == h.run_id and reader.run(h.run_id[:12])["epochs"] == 2
    assert reader.history(h.run_id).epochs == clean(h.epochs)
    assert reader.export(None, fmt="csv").count(h.run_id) == 2 and reader.count("steps") == len(h.steps)
    assert cli.main(["runs", "--db", str(path), "list"]) == 0 and h.run_id in capsys.readouterr().out
    with pytest.raises(PermissionError, match="read-only"):
        reader.start_run("other", {})
    with pytest.raises(PermissionError, match="read-only"):
        reader.delete(h.run_id)
    reader.close()
    assert _snapshot(path) == before
    assert not (tmp_path / "runs.sqlite-journal").exists()


def test_a_reader_names_a_file_that_is_not_a_run_store(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all " * 100)
    for path, match in [(other, "not an optimlab run store"), (text, "not a database")]:
        before = _snapshot(path)
        with pytest.raises(sqlite3.DatabaseError, match=match) as err:
            RunStore(path, readonly=True).runs()
        assert str(path) in str(err.value) and _snapshot(path) == before


OLD_SCHEMA = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, host TEXT, pid INTEGER, config TEXT NOT NULL, summary TEXT, stop TEXT, diagnoses TEXT);
CREATE TABLE epochs (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)) WITHOUT ROWID;
CREATE TABLE steps (run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch INTEGER, data TEXT NOT NULL,
    PRIMARY KEY (run_id, step)) WITHOUT ROWID;
INSERT INTO runs VALUES ('old', NULL, 'completed', 1.0, 1.0, 'h', 1, '{"a":1}', '{}', NULL, '[]');
"""


def test_a_store_from_before_dead_run_detection_reads_and_upgrades(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    before = _snapshot(path)
    assert [r["status"] for r in RunStore(path, readonly=True).runs()] == ["completed"]
    assert _snapshot(path) == before  # a reader does not upgrade it
    store = RunStore(path)
    store.start_run("new", {"b": 2})
    assert {r["run_id"]: r["status"] for r in store.runs()} == {"old": "completed", "new": "running"}


def _read_as_another_user(path, send):
    try:
        if os.geteuid() == 0:  # root ignores permission bits: read as nobody
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        out = {}
        try:
            RunStore(path).runs()  # the old way: switching to WAL and creating the schema
            out["writable_open"] = "worked"
        except sqlite3.Error as err:
            out["writable_open"] = str(err)
        reader = RunStore(path, readonly=True)
        out["runs"] = [(r["run_id"], r["status"], r["epochs"]) for r in reader.runs()]
        out["csv"] = reader.export(None, fmt="csv", what="runs")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            out["cli"] = cli.main(["runs", "--db", str(path), "list"])
        out["cli_out"] = buf.getvalue()
        out["files"] = sorted(os.listdir(os.path.dirname(path)))
        send.send(out)
    except BaseException as err:  # noqa: BLE001 (reported to the test)
        send.send({"error": repr(err)})
    finally:
        os._exit(0)


@pytest.fixture
def read_only_dir():
    """A directory the test process's readers cannot write (as root: a child reads as nobody)."""
    base = tempfile.mkdtemp(prefix="optimlab-ro-")  # not under pytest's 0700 tmp_path: nobody must reach it
    os.chmod(base, 0o755)
    yield base
    os.chmod(base, 0o755)
    shutil.rmtree(base)


def test_a_store_on_a_read_only_directory_can_be_read(read_only_dir):
    path = os.path.join(read_only_dir, "runs.sqlite")
    h = _fit(path, epochs=2)
    # fit closed the store it opened: the last writer gone, no -wal/-shm, and the reader cannot create them
    assert sorted(os.listdir(read_only_dir)) == ["runs.sqlite"]
    os.chmod(path, 0o444)
    os.chmod(read_only_dir, 0o555)
    import optimlab.store.cli  # noqa: F401  (imported before the fork)

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_read_as_another_user, args=(path, send))
    proc.start()
    send.close()
    assert receive.poll(120)
    out = receive.recv()
    proc.join(60)
    assert "error" not in out, out
    assert out["writable_open"] != "worked", "the directory is not read-only for the reader"
    assert out["runs"] == [(h.run_id, "completed", 2)]
    assert h.run_id in out["csv"] and "config.optimizer" in out["csv"]
    assert out["cli"] == 0 and h.run_id in out["cli_out"] and "completed" in out["cli_out"]
    assert out["files"] == ["runs.sqlite"]


# ------------------------------------------------------------------ fault 7
class _Hang:
    def __init__(self, send):
        self.send = send

    def on_step_end(self, trainer):
        self.send.send(trainer.history.run_id)
        while True:  # killed here, long before the run's first checkpoint or epoch
            time.sleep(1)


def _train_and_hang(path, send):
    try:
        _fit(path, callbacks=[_Hang(send)])
    finally:
        os._exit(1)


def test_a_killed_run_reads_dead_and_a_live_one_running(tmp_path):
    path = tmp_path / "runs.sqlite"
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    threads = torch.get_num_threads()
    proc = ctx.Process(target=_train_and_hang, args=(path, send))
    proc.start()
    send.close()
    try:
        assert receive.poll(120), "the child did not start its run"
        killed = receive.recv()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL and torch.get_num_threads() == threads
    store = RunStore(path)
    store.start_run("live", {"here": True})  # this process: alive

    reader = RunStore(path, readonly=True)
    status = {r["run_id"]: (r["status"], r["stored_status"]) for r in reader.runs()}
    assert status == {killed: ("dead", "running"), "live": ("running", "running")}
    assert [r["run_id"] for r in reader.runs(status="dead")] == [killed]
    assert [r["run_id"] for r in reader.runs(status="running")] == ["live"]
    assert reader.run(killed)["status"] == "dead" and reader.history(killed).status == "dead"

    store.start_run(killed, {})  # resuming marks it running again (in this live process)
    assert {r["run_id"]: r["status"] for r in reader.runs()} == {killed: "running", "live": "running"}


def test_pid_reuse_and_other_hosts_are_not_mistaken_for_live_runs(tmp_path):
    me = _this_process()
    if me is None:
        pytest.skip("no /proc here: liveness falls back to the pid alone")
    store = RunStore(tmp_path / "runs.sqlite")
    for run_id in ("reused", "elsewhere-old", "elsewhere-new", "unchecked"):
        store.start_run(run_id, {})
    boot, ns, start = me.split(" ")
    old = time.time() - 3 * 24 * 3600
    with sqlite3.connect(store.path) as conn:
        # this process's pid, but another process's start time: the pid was reused
        conn.execute("UPDATE runs SET proc=? WHERE run_id='reused'", (f"{boot} {ns} {int(start) - 1}",))
        conn.execute("UPDATE runs SET host='elsewhere', updated=? WHERE run_id='elsewhere-old'", (old,))
        conn.execute("UPDATE runs SET host='elsewhere' WHERE run_id='elsewhere-new'")
        # same host name, another pid namespace (a container): cannot be checked, and quiet for days
        conn.execute("UPDATE runs SET proc=?, updated=? WHERE run_id='unchecked'", (f"{boot} pid:[1] {start}", old))
    status = {r["run_id"]: r["status"] for r in RunStore(store.path, readonly=True).runs()}
    assert status == {"reused": "dead", "elsewhere-old": "stale", "elsewhere-new": "running", "unchecked": "stale"}
    assert {r["run_id"] for r in RunStore(store.path, readonly=True, stale_after=1e9).runs(status="running")} \
        == {"elsewhere-old", "elsewhere-new", "unchecked"}
