"""optimlab sweep on Optuna with SQLite: workers sharing one study, pruning, resuming, the report."""

from __future__ import annotations

import os
import signal
import sqlite3
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

optuna = pytest.importorskip("optuna")

from optimlab.sweep.runner import SweepConfig, open_study, run_sweep, trials_table  # noqa: E402

SMALL = ["--dataset", "synthetic", "--n-train", "256", "--n-val", "128", "--batch-sizes", "64", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    """Workers are forked from this process (a fresh interpreter would pay its imports again):
    one torch thread, so that no OpenMP pool is in flight across a fork."""
    monkeypatch.setenv("OPTIMLAB_RUNS", str(tmp_path / "default-store.sqlite"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _finished(study):
    S = optuna.trial.TrialState
    return study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED))


def _store_runs(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT run_id, status FROM runs").fetchall())


def test_two_workers_share_the_study_every_trial_once_with_the_report(tmp_path, capsys):
    out = tmp_path / "sw"
    from optimlab.cli import main

    code = main(["sweep", *SMALL, "--workers", "2", "--trials", "6", "--sampler", "grid", "--optimizers",
                 "adam,momentum", "--lr", "0.003,0.03,0.0001", "--epochs", "2", "--threads", "1", "--out", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    cfg = SweepConfig(out=str(out), sampler="grid", optimizers=("adam", "momentum"), lr=(0.003, 0.03, 0.0001),
                      batch_sizes=(64,), epochs=2, dataset="synthetic", n_train=256, n_val=128, trials=6)
    study = open_study(cfg)
    done = _finished(study)
    assert len(done) == 6
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6  # every grid point exactly once
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both workers took trials
    runs = _store_runs(out / "runs.sqlite")
    assert {t.user_attrs["run_id"] for t in done} <= set(runs)  # every trial's metrics in the run store
    best = min((t for t in done if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert study.best_trial.number == best.number
    # the table: one row per optimizer, the best first
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| optimizer") and len(lines) == 3
    assert lines[1].split("|")[1].strip() == best.params["optimizer"] and f"#{best.number}" in lines[1]
    for name in ("report.html", "report.md", "val_loss_vs_lr.png", "history.png"):
        assert (out / name).stat().st_size > 1000, name
    html = (out / "report.html").read_text()
    assert "Best configuration per optimizer" in html and "Validation loss against learning rate" in html


def test_pruning_stops_hopeless_trials_from_the_validation_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMLAB_RUNS", str(tmp_path / "unused.sqlite"))
    cfg = SweepConfig(out=str(tmp_path), sampler="random", optimizers=("momentum",), lr=(1e-6, 100.0), epochs=3,
                      dataset="synthetic", n_train=256, n_val=128, batch_sizes=(64,), trials=6)
    study = open_study(cfg)
    for lr in (0.03, 0.05, 0.02, 1e-6, 2e-6, 20.0):  # three good, two far too small, one far too large
        study.enqueue_trial({"optimizer": "momentum", "lr": lr, "schedule": "constant", "batch_size": 64, "seed": 0})
    run_sweep(cfg)
    rows = {round(r["lr"], 8): r for r in trials_table(open_study(cfg))}
    assert len(rows) == 6
    for lr in (0.03, 0.05, 0.02):
        assert rows[lr]["state"] == "COMPLETE" and rows[lr]["epochs"] == 3
    for lr in (1e-6, 2e-6):
        assert rows[lr]["state"] == "PRUNED" and rows[lr]["epochs"] < 3, rows[lr]
    assert rows[20.0]["state"] == "PRUNED" and rows[20.0]["status"] in ("nonfinite", "stopped")


def _sweep_that_hangs_in_trial_2(cfg, flag: Path) -> None:
    """The sweep, in a forked child that stops in the middle of trial 2 (after its first epoch),
    to be killed there."""
    from optimlab.sweep import runner

    original = runner._Reporter.on_epoch_end

    def on_epoch_end(self, trainer, row):
        original(self, trainer, row)
        if self.trial.number == 2 and row["epoch"] == 1:
            flag.touch()
            time.sleep(600)

    runner._Reporter.on_epoch_end = on_epoch_end
    run_sweep(cfg)


def test_interrupted_sweep_continues_the_same_study(tmp_path):
    out = tmp_path / "sw"
    cfg = SweepConfig(out=str(out), sampler="random", optimizers=("adam", "momentum"), lr=(0.005, 0.05),
                      batch_sizes=(64,), epochs=3, dataset="synthetic", n_train=512, n_val=128, trials=4,
                      pruner="none")
    open_study(cfg)
    flag = tmp_path / "third-trial-mid-run"
    proc = mp.get_context("fork").Process(target=_sweep_that_hangs_in_trial_2, args=(cfg, flag))
    proc.start()
    deadline = time.monotonic() + 180
    try:
        while not flag.exists():  # trial 2 has finished (and checkpointed) its first epoch
            assert proc.is_alive() and time.monotonic() < deadline, "the sweep did not get to trial 2"
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no clean-up at all
        proc.join()
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'sweep.db'}")
    before = {t.number: (t.params, t.value, t.datetime_complete) for t in study.get_trials() if t.state.name == "COMPLETE"}
    killed = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert len(killed) == 1 and len(before) >= 2
    assert (out / "checkpoints" / f"sweep-{killed[0].number}.pt").exists()

    run_sweep(cfg)  # the same sweep again
    study = open_study(cfg)
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4
    for number, kept in before.items():  # nothing lost, nothing run again
        t = trials[number]
        assert (t.params, t.value, t.datetime_complete) == kept
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 4
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [killed[0].number]
    retry = [t for t in finished if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retry) == 1 and retry[0].params == killed[0].params
    # the retry resumed the interrupted run from its checkpoint: same run in the store, completed
    runs = _store_runs(out / "runs.sqlite")
    assert retry[0].user_attrs["run_id"] in runs and runs[retry[0].user_attrs["run_id"]] == "completed"
    assert all(runs[t.user_attrs["run_id"]] == "completed" for t in finished)
    assert len(runs) == 4


def _sweep_killed_after_a_trial_checkpoint_is_deleted(cfg) -> None:
    """The sweep, in a forked child that SIGKILLs itself right after deleting the first
    trial's checkpoint (on the old code, before Optuna was told the trial's result)."""
    original = Path.unlink

    def unlink(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.suffix == ".pt":
            os.kill(os.getpid(), signal.SIGKILL)

    Path.unlink = unlink
    run_sweep(cfg)


def test_a_kill_as_a_trial_finishes_runs_it_neither_twice_nor_afresh(tmp_path):
    """A worker killed once its trial's result is in but before the trial's checkpoint is gone:
    the next sweep trains nothing of that trial again (the old order deleted the checkpoint first,
    and a kill before Optuna's tell left the trial RUNNING and its retry trained afresh, a second
    run of the same trial in the store)."""
    out = tmp_path / "sw"
    cfg = SweepConfig(out=str(out), sampler="random", optimizers=("momentum",), lr=(0.005, 0.05),
                      batch_sizes=(64,), epochs=2, dataset="synthetic", n_train=256, n_val=128, trials=2,
                      pruner="none")
    open_study(cfg)
    proc = mp.get_context("fork").Process(target=_sweep_killed_after_a_trial_checkpoint_is_deleted, args=(cfg,))
    proc.start()
    proc.join(300)
    assert proc.exitcode == -signal.SIGKILL
    run_sweep(cfg)
    trials = open_study(cfg).get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2 and not [t for t in trials if t.state.name != "COMPLETE"]
    runs = _store_runs(out / "runs.sqlite")
    assert sorted(runs) == sorted(t.user_attrs["run_id"] for t in finished)  # one run per trial
    assert set(runs.values()) == {"completed"}
    assert not list((out / "checkpoints").glob("*.pt"))


def _recover_at_once(url: str, barrier) -> None:
    from optimlab.sweep.runner import recover_stale

    study = optuna.load_study(study_name="stale", storage=url)
    barrier.wait()
    recover_stale(study, url)


def test_workers_recovering_at_once_queue_each_dead_trial_once(tmp_path):
    """Three workers start at the same moment on a study with four trials of a dead worker: each
    trial is retried once (without a lock each worker read them RUNNING and both tells passed on
    SQLite: two retries of one trial, a trial trained twice)."""
    import socket

    url = f"sqlite:///{tmp_path / 'stale.db'}"
    study = optuna.create_study(study_name="stale", storage=url)
    for _ in range(4):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0)})
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", 2**22 + 12345)  # (above Linux's pid_max default: no such process)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_recover_at_once, args=(url, barrier)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    trials = optuna.load_study(study_name="stale", storage=url).get_trials()
    retries = sorted(t.user_attrs["retry_of"] for t in trials if t.state.name == "WAITING")
    assert retries == [0, 1, 2, 3]
    assert [t.state.name for t in trials[:4]] == ["FAIL"] * 4


def test_settings_of_an_existing_study_are_checked(tmp_path):
    cfg = SweepConfig(out=str(tmp_path), dataset="synthetic", epochs=1)
    open_study(cfg)
    with pytest.raises(ValueError, match="epochs"):
        open_study(SweepConfig(out=str(tmp_path), dataset="synthetic", epochs=2))
    with pytest.raises(ValueError, match=r"lr: .*range as \(low, high\)"):
        SweepConfig(lr=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError):
        SweepConfig(schedules=("nonsense(1)",))


def test_sweep_report_renders_in_a_browser(tmp_path):
    from tests.browser import CHROMIUM, render

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/system-packages installs it)")
    from optimlab.sweep.report import build_report

    cfg = SweepConfig(out=str(tmp_path / "sw"), sampler="random", optimizers=("adam", "momentum"), lr=(1e-3, 0.1),
                      epochs=1, dataset="synthetic", n_train=128, n_val=64, batch_sizes=(64,), trials=3)
    run_sweep(cfg)
    paths, table = build_report(open_study(cfg), cfg.out)
    dom, console = render(paths["html"], tmp_path)
    assert console == []
    assert dom.count('class="main-svg"') >= 2  # both charts drawn
    assert "Best configuration per optimizer" in dom and table.count("\n") >= 2
