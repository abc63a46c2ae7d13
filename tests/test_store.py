"""The run store: one SQLite file in WAL mode, runs written by fit, parallel
writers from several processes losing no rows, CSV/JSON export, and the
``optimlab runs`` command line."""

import csv
import io
import json
import multiprocessing
import sqlite3

import pytest

from optimlab import cli, optim
from optimlab.store import RunStore, default_path
from optimlab.train import fit
from tests.train_synth import blobs, isolated, mlp  # noqa: F401 (isolated: autouse fixture)

TRAIN, VAL = blobs(n=256, n_val=128)


def test_default_path_follows_the_environment(tmp_path, monkeypatch):
    assert default_path() == tmp_path / "runs.sqlite"  # set by the isolated fixture
    monkeypatch.delenv("OPTIMLAB_RUNS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "optimlab" / "runs.sqlite"


def test_fit_records_config_epochs_sampled_steps_and_diagnoses(tmp_path):
    model = mlp()
    h = fit(model, optim.create("sgd", model.parameters(), lr=1e-6), TRAIN, val=VAL, epochs=2, batch_size=32,
            seed=3, quiet=True, name="too-low", config={"note": "lr too low on purpose"})  # default store
    store = RunStore()
    assert store.path == tmp_path / "runs.sqlite"
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    run = store.run(h.run_id)
    assert run["name"] == "too-low" and run["status"] == "completed" and run["epochs"] == 2
    assert run["config"]["optimizer"] == "SGD" and run["config"]["hyper"]["lr"] == 1e-6
    assert run["config"]["seed"] == 3 and run["config"]["note"] == "lr too low on purpose"
    assert [e["train_loss"] for e in run["epochs_rows"]] == h["train_loss"]
    assert [s["step"] for s in run["steps_rows"]] == [s["step"] for s in h.steps]
    assert run["summary"]["val_acc"] == h.last["val_acc"]
    assert [d["code"] for d in run["diagnoses"]] == [d.code for d in h.diagnoses] != []
    stored = store.history(h.run_id[:10])  # a unique prefix is enough
    assert stored.epochs == h.epochs and stored.steps == h.steps
    from optimlab import diagnose

    assert [d.code for d in diagnose(stored)] == [d.code for d in h.diagnoses]


def test_store_false_writes_nothing(tmp_path):
    model = mlp()
    fit(model, "sgd", TRAIN, epochs=1, quiet=True, store=False)
    assert not (tmp_path / "runs.sqlite").exists()


def test_nonfinite_run_is_stored_with_its_stop(tmp_path):
    model = mlp()
    h = fit(model, optim.create("sgd", model.parameters(), lr=1e4), TRAIN, epochs=2, batch_size=32, seed=0,
            quiet=True, on_nonfinite="stop", store=tmp_path / "other.sqlite")
    run = RunStore(tmp_path / "other.sqlite").run(h.run_id)
    assert run["status"] == "nonfinite" and run["stop"]["step"] == h.stop["step"]
    assert run["diagnoses"][0]["code"] == "nonfinite"


def _writer(path, worker, epochs, steps_per_epoch):
    store = RunStore(path, timeout=120)
    run_id = f"run-{worker}"
    store.start_run(run_id, {"worker": worker})
    for e in range(1, epochs + 1):
        rows = [{"step": (e - 1) * steps_per_epoch + s, "epoch": e, "loss": 1.0 / s}
                for s in range(1, steps_per_epoch + 1)]
        store.log_epoch(run_id, {"epoch": e, "train_loss": 1.0 / e}, rows)
    store.finish_run(run_id, status="completed", summary={"epochs": epochs})


def test_parallel_writers_lose_no_rows(tmp_path):
    path = tmp_path / "shared.sqlite"
    workers, epochs, steps = 6, 40, 5
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w, epochs, steps)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    store = RunStore(path)
    assert store.count("runs") == workers
    assert store.count("epochs") == workers * epochs
    assert store.count("steps") == workers * epochs * steps
    assert {r["status"] for r in store.runs()} == {"completed"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_rewriting_an_epoch_replaces_it_and_ids_resolve(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    store.start_run("20250101-000000-aaaaaa", {"a": 1})
    store.start_run("20250101-000000-aaabbb", {"a": 2})
    store.log_epoch("20250101-000000-aaaaaa", {"epoch": 1, "train_loss": 2.0}, [{"step": 3, "loss": 2.0}])
    store.log_epoch("20250101-000000-aaaaaa", {"epoch": 1, "train_loss": 1.0}, [{"step": 3, "loss": 1.0}])
    assert store.count("epochs") == 1 and store.run("20250101-000000-aaaaaa")["epochs_rows"][0]["train_loss"] == 1.0
    assert store.resolve("20250101-000000-aaaa") == "20250101-000000-aaaaaa"
    with pytest.raises(KeyError, match="ambiguous"):
        store.resolve("20250101-000000-aaa")
    with pytest.raises(KeyError, match="no run"):
        store.resolve("nope")
    store.delete("20250101-000000-aaab")
    assert [r["run_id"] for r in store.runs()] == ["20250101-000000-aaaaaa"]


def _two_runs(path):
    ids = []
    for lr in (1e-2, 1e-3):
        model = mlp()
        h = fit(model, optim.create("adam", model.parameters(), lr=lr), TRAIN, val=VAL, epochs=2, batch_size=64,
                seed=0, quiet=True, store=path)
        ids.append(h.run_id)
    return ids


def test_export_csv_and_json(tmp_path):
    path = tmp_path / "s.sqlite"
    ids = _two_runs(path)
    store = RunStore(path)
    text = store.export(None, tmp_path / "all.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert (tmp_path / "all.csv").read_text() == text
    assert [r["run_id"] for r in rows] == [ids[0]] * 2 + [ids[1]] * 2
    assert {"epoch", "train_loss", "val_acc", "grad_norm", "lr"} <= set(rows[0])
    steps = list(csv.DictReader(io.StringIO(store.export(ids[1], fmt="csv", what="steps"))))
    assert {r["run_id"] for r in steps} == {ids[1]} and "update_ratio/0" in steps[0]
    runs = list(csv.DictReader(io.StringIO(store.export(ids, fmt="csv", what="runs"))))
    assert [r["config.hyper"] for r in runs][0].startswith("{") and runs[1]["final.epoch"] == "2"
    data = json.loads(store.export(ids[0], tmp_path / "one.json"))
    assert data[0]["run_id"] == ids[0] and len(data[0]["epochs_rows"]) == 2
    with pytest.raises(ValueError, match="fmt"):
        store.export(ids, fmt="xml")


def test_cli_list_show_export(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    ids = _two_runs(path)
    assert cli.main(["runs", "--db", str(path), "list"]) == 0
    out = capsys.readouterr().out
    assert ids[0] in out and ids[1] in out and "Adam" in out and "val_acc" in out
    assert cli.main(["runs", "--db", str(path), "show", ids[0][:-2], "--steps"]) == 0
    out = capsys.readouterr().out
    assert f"run {ids[0]}" in out and "optimizer: Adam" in out and "samples_per_s" in out and "momentum" in out
    assert cli.main(["runs", "--db", str(path), "export", "-o", str(tmp_path / "x.csv")]) == 0
    assert len(list(csv.DictReader((tmp_path / "x.csv").open()))) == 4
    assert cli.main(["runs", "--db", str(path), "export", ids[1], "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["run_id"] == ids[1]
    assert cli.main(["runs", "--db", str(path), "show", "missing"]) == 2
    assert "no run 'missing'" in capsys.readouterr().err
    assert cli.main(["runs", "--db", str(tmp_path / "none.sqlite"), "list"]) == 2  # readers create nothing
    assert f"no run store at {tmp_path / 'none.sqlite'}" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()


def test_merge_copies_missing_runs_keeps_the_newer_copy_and_never_changes_the_source(tmp_path):
    import time

    a, b = RunStore(tmp_path / "a.sqlite"), RunStore(tmp_path / "b.sqlite")
    a.start_run("shared", {"v": "old"}, name="shared")
    a.log_epoch("shared", {"epoch": 1, "step": 3}, [{"step": 1, "epoch": 1}, {"step": 2, "epoch": 1}])
    a.start_run("only-a", {"v": 1})
    a.finish_run("only-a", status="completed", summary={"val_loss": 0.5})
    time.sleep(0.01)
    b.start_run("shared", {"v": "new"}, name="shared")  # written later: b's copy is the newer
    b.log_epoch("shared", {"epoch": 1, "step": 7})
    b.start_run("only-b", {"v": 2})
    a.close()
    source = (tmp_path / "a.sqlite").read_bytes()
    assert b.merge(tmp_path / "a.sqlite") == {"added": 1, "updated": 0, "kept": 1}
    assert (tmp_path / "a.sqlite").read_bytes() == source
    runs = {r["run_id"]: r for r in b.runs()}
    assert set(runs) == {"shared", "only-a", "only-b"}
    assert runs["only-a"]["summary"] == {"val_loss": 0.5} and runs["only-a"]["stored_status"] == "completed"
    assert b.run("shared")["epochs_rows"] == [{"epoch": 1, "step": 7}]  # the newer copy, not a mixture
    # merged the other way, a's older copy of "shared" gives way to b's
    c = RunStore(tmp_path / "c.sqlite")
    c.merge(tmp_path / "a.sqlite")
    assert c.run("shared")["steps_rows"] == [{"step": 1, "epoch": 1}, {"step": 2, "epoch": 1}]
    b.close()
    assert c.merge(tmp_path / "b.sqlite") == {"added": 1, "updated": 1, "kept": 1}
    assert c.run("shared")["epochs_rows"] == [{"epoch": 1, "step": 7}] and c.run("shared")["steps_rows"] == []
    with pytest.raises(ValueError, match="into itself"):
        c.merge(tmp_path / "c.sqlite")
    with pytest.raises(FileNotFoundError, match="nothere"):
        c.merge(tmp_path / "nothere.sqlite")
