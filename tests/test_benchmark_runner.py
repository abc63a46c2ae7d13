"""The benchmark's execution: equal trials for every optimizer (one worker or several), selection on
the validation split only, every run in the store, resume after SIGKILL with no trial lost or run twice."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import benchmark_tiny as tiny
from optimlab.benchmark import runner, space
from optimlab.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def _runs(cfg, status=("completed", "nonfinite")):
    db = RunStore(cfg.store_path, readonly=True)
    try:
        return [r for r in db.runs() if r["config"].get("benchmark") == cfg.benchmark_id
                and r["config"].get("kind") != "benchmark" and r["status"] in status]
    finally:
        db.close()


def _check_complete(cfg):
    """Exactly ``trials`` tuning runs and ``seeds`` confirm runs per workload × optimizer, each once."""
    runs = _runs(cfg)
    keys = collections.Counter((r["config"]["workload"], r["config"]["optimizer"], r["config"]["phase"],
                                r["config"]["trial"], r["config"]["seed"]) for r in runs)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    for w in cfg.workloads:
        for o in cfg.optimizers:
            tune = sorted(k[3] for k in keys if k[:3] == (w, o, "tune"))
            confirm = sorted(k[4] for k in keys if k[:3] == (w, o, "confirm"))
            assert tune == list(range(cfg.trials)), (w, o, tune)
            assert confirm == list(range(1, cfg.seeds + 1)), (w, o, confirm)
    return runs


def _selected(cfg):
    return {(r["config"]["workload"], r["config"]["optimizer"]): (r["config"]["selected_trial"], r["config"]["params"])
            for r in _runs(cfg) if r["config"]["phase"] == "confirm"}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The tiny benchmark run once, in this process (the tests below compare against it)."""
    cfg = tiny.config(tmp_path_factory.mktemp("plain") / "b")
    assert runner.run_benchmark(cfg) == cfg.benchmark_id
    return cfg


def test_every_optimizer_gets_the_same_trials_and_the_selected_setting_is_rerun(plain):
    cfg, bid = plain, plain.benchmark_id
    runs = _check_complete(cfg)
    # the trials are the optimizer's Sobol points, at seed 0, the same points on every workload
    for o in cfg.optimizers:
        points = space.sobol_points(cfg.space(o), cfg.trials, cfg.sampler_seed)
        for r in runs:
            c = r["config"]
            if c["optimizer"] == o and c["phase"] == "tune":
                assert c["params"] == points[c["trial"]] and c["seed"] == 0
    # the confirm runs use the trial with the best final validation metric
    for (w, o), (trial, params) in _selected(cfg).items():
        mode = cfg.workload(w).mode
        tune = {r["config"]["trial"]: r["summary"]["val_metric"] for r in runs
                if r["config"]["workload"] == w and r["config"]["optimizer"] == o and r["config"]["phase"] == "tune"}
        finite = {t: v for t, v in tune.items() if v is not None}
        best = (max if mode == "max" else min)(finite, key=lambda t: (finite[t], -t) if mode == "max" else (finite[t], t))
        assert trial == best
    # every run has its test result beside the validation one, and the benchmark row is complete
    assert all(r["summary"].get("test_metric") is not None for r in runs if r["summary"].get("val_metric") is not None)
    db = RunStore(cfg.store_path, readonly=True)
    meta = db.run(bid)
    db.close()
    assert meta["status"] == "completed" and meta["config"]["trials"] == 3 and meta["summary"]["wall_s"] > 0
    # the same command again runs nothing and changes nothing
    before = len(_runs(cfg, status=("completed", "nonfinite", "running", "dead")))
    runner.run_benchmark(cfg)
    assert len(_runs(cfg, status=("completed", "nonfinite", "running", "dead"))) == before


def test_several_workers_run_the_same_trials_each_once(plain, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores: workers never share one")
    one = plain
    two = tiny.config(tmp_path / "two", workers=2)
    runner.run_benchmark(two)
    _check_complete(two)
    assert one.benchmark_id == two.benchmark_id  # how it ran is not what it is
    # each worker ran on its own core, single-threaded
    cpus = {tuple(r["config"]["cpus"]) for r in _runs(two)}
    assert all(len(c) == 1 for c in cpus) and len(cpus) == 2
    assert _selected(one) == _selected(two)


def test_selection_never_reads_the_test_split(plain, tmp_path, monkeypatch):
    monkeypatch.setitem(tiny.TEST, "shift", 5.0)
    monkeypatch.setitem(tiny.TEST, "flip", True)
    changed = tiny.config(tmp_path / "changed")
    runner.run_benchmark(changed)
    assert _selected(plain) == _selected(changed)
    val = lambda cfg: sorted((r["config"]["workload"], r["config"]["optimizer"], r["config"]["phase"],  # noqa: E731
                              r["config"]["trial"], r["config"]["seed"], r["summary"]["val_metric"]) for r in _runs(cfg))
    assert val(plain) == val(changed)
    test = lambda cfg: sorted(r["summary"]["test_metric"] for r in _runs(cfg))  # noqa: E731
    assert test(plain) != test(changed)  # the test labels did change what the test split says


def test_resume_after_sigkill_loses_no_trial_and_runs_none_twice(tmp_path):
    out = tmp_path / "b"
    cfg = tiny.config(out)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    child = subprocess.Popen([sys.executable, "-c", "import sys; from tests import benchmark_tiny as t; t.main(sys.argv[1])",
                              str(out)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    killed_run = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill it mid-trial: a run past its first evaluation, not finished
            time.sleep(0.2)
            if not Path(cfg.store_path).exists():
                continue
            try:
                running = _runs(cfg, status=("running",))
                done = _runs(cfg)
            except Exception:  # the store is being created
                continue
            mid = [r for r in running if r["epochs"] >= 1]
            if mid and len(done) >= 2:
                killed_run = mid[0]
                os.killpg(child.pid, signal.SIGKILL)
                break
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert killed_run is not None, child.stderr.read().decode()[-2000:]
    assert _runs(cfg, status=("dead",))  # the store knows its process is gone
    runner.run_benchmark(cfg)
    runs = _check_complete(cfg)
    # the killed trial resumed from its checkpoint: its run finished under the same id
    assert killed_run["run_id"] in {r["run_id"] for r in runs}
    assert not list((out / "checkpoints").glob("*.pt"))


def _small(out):
    """One workload, one optimizer, 2 trials and 1 confirm seed: 3 runs of 4 epochs each."""
    return tiny.config(out, workloads=("tiny_regression",), optimizers=("sgd",), trials=2, seeds=1)


def _killed_at(out: str, event: str, nth: int) -> None:
    """Run the small benchmark and SIGKILL this (forked) process right after the ``nth`` ``event``:
    ``log_epoch`` (the store holds an epoch's row), ``save`` (an epoch's checkpoint is on disk),
    ``recorded`` (a run's test result is in the store), ``unlink`` (a trial's checkpoint is deleted)."""
    from optimlab.train import checkpoint

    seen = collections.Counter()

    def after(obj, attr, name, when=lambda *a, **k: True):
        original = getattr(obj, attr)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            if when(*args, **kwargs):
                seen[name] += 1
                if name == event and seen[name] == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(obj, attr, wrapped)

    after(RunStore, "log_epoch", "log_epoch")
    after(checkpoint, "save", "save")
    after(runner, "_record", "recorded")
    after(Path, "unlink", "unlink", lambda self, *a, **k: self.suffix == ".pt")
    runner.run_benchmark(_small(out))
    os._exit(3)  # never killed: the test's kill point was not reached


KILL_POINTS = {  # the second trial's events (the first trial writes 4 epoch rows and 4 checkpoints)
    "store holds the first epoch": ("log_epoch", 5),  # (before the checkpoint, on the old code)
    "checkpoint holds the first epoch": ("save", 5),
    "store holds the last epoch": ("log_epoch", 8),
    "test result recorded": ("recorded", 2),
    "checkpoint deleted, Optuna not told": ("unlink", 2),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_sigkill_at_each_write_of_a_trial_loses_none_runs_none_twice_and_resumes_its_run(tmp_path, point):
    """A kill between any two of a trial's writes (store row, checkpoint, test result, checkpoint
    deletion, Optuna's tell): the next run_benchmark finishes every trial exactly once, a run killed
    past its first evaluation finishes under its own id, and nothing is left dead or on disk."""
    from tests.forked import run_forked

    out = tmp_path / "b"
    cfg = _small(out)
    assert run_forked(_killed_at, [(str(out), *KILL_POINTS[point])]) == [-signal.SIGKILL]
    dead = _runs(cfg, status=("dead",))  # every kill point is past the trial's first checkpoint
    runner.run_benchmark(cfg)
    runs = _check_complete(cfg)
    assert {r["run_id"] for r in dead} <= {r["run_id"] for r in runs}
    assert not _runs(cfg, status=("dead", "running", "stale", "interrupted", "incomplete"))
    assert not list((out / "checkpoints").glob("*.pt"))


def test_the_command_line_runs_a_one_shot_benchmark_and_rebuilds_its_report(tmp_path, capsys):
    from optimlab import cli

    out = tmp_path / "b"
    argv = ["benchmark", "--workloads", "tiny_regression,tiny_blobs", "--optimizers", "adam,sgd", "--one-shot",
            "--seeds", "2", "--fraction", "1", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "all 12 runs finished" in first  # 2 workloads x 2 optimizers x (1 trial + 2 seeds)
    cfg = tiny.config(out, optimizers=("adam", "sgd"), budget="one-shot", trials=1, workers=1, threads=None)
    runs = _check_complete(cfg)
    for r in runs:  # one-shot: the optimizer's defaults, a constant learning rate
        assert r["config"]["params"] == space.defaults(r["config"]["optimizer"])
        assert r["config"]["schedule"] is None
    report = (out / "report.md").read_text()
    assert cli.main(argv + ["--report-only"]) == 0
    assert "all 12 runs finished" in capsys.readouterr().out
    assert (out / "report.md").read_text() == report  # the store alone gives the same report


def _taker(url: str, out: str) -> None:
    import optuna

    from optimlab.sweep.runner import open_storage

    study = optuna.load_study(study_name="race", storage=open_storage(url))
    taken = []
    while (trial := runner._take(study, optuna, url)) is not None or study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        if trial is not None:
            taken.append(trial.number)
            study.tell(trial, 0.0)
    Path(out).write_text(" ".join(map(str, taken)))


def test_workers_racing_for_queued_trials_take_each_exactly_once(tmp_path):
    """Optuna's ask() on SQLite reads a waiting trial and marks it running in two statements:
    four processes asking at once took 161 trials from 150 (10 twice) without the lock."""
    import optuna

    from optimlab.sweep.runner import open_storage
    from tests.forked import run_forked

    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    for i in range(120):
        study.enqueue_trial({}, user_attrs={"queued": True})
    outs = [tmp_path / f"taken{i}.txt" for i in range(4)]
    assert run_forked(_taker, [(url, str(o)) for o in outs]) == [0, 0, 0, 0]
    taken = [int(n) for o in outs for n in o.read_text().split()]
    assert sorted(taken) == sorted(t.number for t in study.get_trials() if t.user_attrs.get("queued"))
    assert len(taken) == len(set(taken)) == 120
