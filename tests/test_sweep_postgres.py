"""Many machines, one study: a real PostgreSQL server and two sweep workers against it.

The test starts its own server (Debian's ``postgresql`` package: initdb / pg_ctl) as an
unprivileged user in a temporary directory, on a free port, with its socket in that
directory; it is stopped at the end. Two worker processes run the same ``optimlab sweep
--storage postgresql://...`` command, as two machines would.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.forked import run_forked

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="psycopg2-binary (the 'postgres' extra) is not installed")

BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    if not BINS or not os.path.exists(os.path.join(BINS[-1], "pg_ctl")):
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql; see .ci/system-packages)")
    bin_dir = BINS[-1]
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and runuser is missing")
        as_user = [runuser, "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="optimlab-pg-"))
    base.chmod(0o755)
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", _free_port()
    env = dict(os.environ, LC_ALL="C", LANG="C")

    def pg(*cmd, **kw):
        return subprocess.run([*as_user, *cmd], env=env, capture_output=True, text=True, timeout=120, **kw)

    r = pg(f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "optimlab", "--no-sync", "-E", "UTF8")
    assert r.returncode == 0, r.stderr
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    r = pg(f"{bin_dir}/pg_ctl", "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "-t", "60", "start")
    assert r.returncode == 0, r.stderr + (base / "log").read_text() if (base / "log").exists() else r.stderr
    try:
        yield f"postgresql://optimlab@127.0.0.1:{port}/postgres"
    finally:
        pg(f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _machine(argv: list[str]) -> None:
    from optimlab.cli import main

    raise SystemExit(main(argv))


def test_two_workers_on_postgresql_record_every_trial_once_and_find_the_best(postgres_url, tmp_path):
    from optimlab.sweep.runner import SweepConfig, open_study

    common = ["sweep", "--storage", postgres_url, "--study", "pg", "--dataset", "synthetic", "--n-train", "256",
              "--n-val", "128", "--batch-sizes", "64", "--sampler", "grid", "--optimizers", "adam,momentum,sgd",
              "--lr", "0.0003,0.01,0.1", "--epochs", "2", "--threads", "1", "--quiet"]
    # both start at once: one creates the study, the other joins it
    assert run_forked(_machine, [(common + ["--out", str(tmp_path / f"m{i}")],) for i in range(2)]) == [0, 0]

    cfg = SweepConfig(storage=postgres_url, study="pg", dataset="synthetic", n_train=256, n_val=128,
                      batch_sizes=(64,), sampler="grid", optimizers=("adam", "momentum", "sgd"),
                      lr=(0.0003, 0.01, 0.1), epochs=2, out=str(tmp_path / "m0"))
    study = open_study(cfg)
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 9  # the whole 3 x 3 grid ...
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 9  # ... each point exactly once
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert all(t.user_attrs.get("unused") for t in trials if t.state.name == "FAIL")  # only race leftovers
    # Which worker takes which trial is up to timing (a worker started late may find the grid
    # done); what must hold is that every trial was recorded once, by one of the two workers.
    workers = {t.user_attrs["pid"] for t in finished}
    assert 1 <= len(workers) <= 2
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    # each machine's run store has its own trials' runs, together all of them
    import sqlite3

    run_ids = set()
    for i in range(2):
        with sqlite3.connect(tmp_path / f"m{i}" / "runs.sqlite") as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name='runs'").fetchone():  # a worker may get no trial
                run_ids |= {r[0] for r in conn.execute("SELECT run_id FROM runs")}
    assert {t.user_attrs["run_id"] for t in finished} <= run_ids
    # the report of either machine shows the same best configuration first
    md = (tmp_path / "m0" / "report.md").read_text()
    first = [line for line in md.splitlines() if line.startswith("| ") and "optimizer" not in line][0]
    assert first.split("|")[1].strip() == best.params["optimizer"] and f"#{best.number}" in first
