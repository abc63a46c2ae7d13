"""Bad command-line input: every command refuses it before doing anything.

Each row runs ``optimlab.cli.main`` in-process in an empty directory (with the
run store and the data cache pointed into it) and checks: exit status 2, the
offending value quoted on stderr, no traceback, and not one file created.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from optimlab import cli, cliutil

UNREACHABLE_PG = "postgresql://u:secret@127.0.0.1:1/db"

# (command line, text that must appear on stderr). In the sandbox, "afile" is a
# plain file, "notastore" a text file that is no database, "adir" a directory.
CASES = [
    # the top level
    ([], "COMMAND is required"),
    (["--bogus-flag"], "--bogus-flag"),
    (["--bogus-flag", "optimizers"], "--bogus-flag"),
    (["nope"], "'nope'"),
    # optimizers
    (["optimizers", "--convention", "jax"], "'jax'"),
    (["optimizers", "--bogus"], "--bogus"),
    # showdown
    (["showdown", "--optimizers", "nope"], "'nope'"),
    (["showdown", "--optimizers", "adam,nope"], "'nope'"),
    (["showdown", "--optimizers", "adam,,sgd"], "'adam,,sgd'"),
    (["showdown", "--optimizers", ""], "--optimizers"),
    (["showdown", "--epochs", "0"], "'0'"),
    (["showdown", "--epochs", "-1"], "'-1'"),
    (["showdown", "--epochs", "ten"], "'ten'"),
    (["showdown", "--batch-size", "0"], "'0'"),
    (["showdown", "--seeds", "0"], "'0'"),
    (["showdown", "--jobs", "0"], "'0'"),
    (["showdown", "--dataset", "cifar"], "'cifar'"),
    (["showdown", "--out", "afile"], "'afile'"),
    (["showdown", "--out", "afile/sub"], "afile"),
    (["showdown", "--schedule", "bogus(1)"], "'bogus'"),
    (["showdown", "--schedule", "cosine(base_lr=0.1, period=0)"], "period=0"),
    (["showdown", "--bogus-flag"], "--bogus-flag"),
    # report
    (["report", "sd-1", "--store", "missing.sqlite"], "'missing.sqlite'"),
    (["report", "sd-1", "--store", "adir"], "'adir'"),
    (["report", "sd-1", "--store", "notastore"], "'notastore'"),
    (["report", "sd-1", "--store", "notastore", "--out", "afile"], "'afile'"),
    (["report", "sd-1"], "--store"),
    # data
    (["data"], "ACTION"),
    (["data", "bogus"], "'bogus'"),
    (["data", "fetch", "nope", "--no-download"], "'nope'"),
    (["data", "info", "nope", "--no-download"], "'nope'"),
    (["data", "fetch", "mnist", "--cache-dir", "afile"], "'afile'"),
    (["data", "fetch", "mnist", "--cache-dir", "afile/cache"], "afile"),
    (["data", "info", "mnist", "--cache-dir", "afile/cache"], "afile"),
    (["data", "fetch", "mnist", "--data-dir", "missing"], "'missing'"),
    (["data", "info", "mnist", "--data-dir", "afile"], "'afile'"),
    # schedule
    (["schedule", "cosine(base_lr=0.1, period=0)"], "period=0"),
    (["schedule", "cosine(base_lr=0.1, period=10, min_lr=0.5)"], "min_lr=0.5"),
    (["schedule", "exponential(base_lr=0.1, decay_rate=1e400)"], "decay_rate=inf"),
    (["schedule", "nope(1)"], "'nope'"),
    (["schedule", "exponential(base_lr=0.1, decay_rate=2.0)", "--steps", "2000"], "from step 1028"),
    (["schedule", "__import__('os')"], "'__import__'"),
    (["schedule", "cosine(base_lr=0.1,"], "cosine(base_lr=0.1,"),
    (["schedule", "cosine(base_lr=0.1, period=10)", "--steps", "0"], "'0'"),
    (["schedule", "cosine(base_lr=0.1, period=10)", "-o", "afile/x.png"], "afile"),
    (["schedule", "cosine(base_lr=0.1, period=10)", "-o", "adir"], "'adir'"),
    # landscape: 2-D functions
    (["landscape", "--start", "1e400,1"], "1e400"),
    (["landscape", "--start=nan,1"], "nan"),
    (["landscape", "--start", "1"], "'1'"),
    (["landscape", "--start", "1,2,3"], "'1,2,3'"),
    (["landscape", "--steps", "-1"], "'-1'"),
    (["landscape", "--frames", "0"], "'0'"),
    (["landscape", "--function", "nope"], "'nope'"),
    (["landscape", "--function", "ravine", "--condition", "0.5"], "condition=0.5"),
    (["landscape", "--condition", "inf"], "'inf'"),
    (["landscape", "--optimizers", "nope"], "'nope'"),
    (["landscape", "--optimizers", "sgd,,adam"], "'sgd,,adam'"),
    (["landscape", "--optimizers", "torch.Nope"], "'torch.Nope'"),
    (["landscape", "--lr", "fast"], "'fast'"),
    (["landscape", "--lr", "sgd=-1"], "'-1'"),
    (["landscape", "--optimizers", "sgd", "--lr", "adam=0.1"], "'adam'"),
    (["landscape", "--tol", "0"], "'0'"),
    (["landscape", "--noise", "-1"], "'-1'"),
    (["landscape", "--seed", "-1"], "'-1'"),
    (["landscape", "--schedule", "linear"], "'linear'"),
    (["landscape", "--out", "afile"], "'afile'"),
    # landscape: demos
    (["landscape", "--demo", "nope"], "'nope'"),
    (["landscape", "--demo", "ravine", "--out", "afile"], "'afile'"),
    (["landscape", "--demo", "ravine", "--network", "cnn"], "--demo"),
    # landscape: networks (all refused before the data is loaded)
    (["landscape", "--network", "rnn"], "'rnn'"),
    (["landscape", "--network", "cnn", "--epochs", "-1"], "'-1'"),
    (["landscape", "--network", "cnn", "--epochs", "0"], "'0'"),
    (["landscape", "--network", "cnn", "--train-size", "0"], "'0'"),
    (["landscape", "--network", "cnn", "--eval-size", "-5"], "'-5'"),
    (["landscape", "--network", "cnn", "--resolution", "1"], "'1'"),
    (["landscape", "--network", "cnn", "--pca-resolution", "0"], "'0'"),
    (["landscape", "--network", "cnn", "--span", "0"], "'0'"),
    (["landscape", "--network", "cnn", "--optimizers", "torch.Adam"], "'torch.Adam'"),
    (["landscape", "--network", "mlp", "--optimizers", "nope"], "'nope'"),
    (["landscape", "--network", "cnn", "--dataset", "cifar"], "'cifar'"),
    # runs
    (["runs"], "ACTION"),
    (["runs", "bogus"], "'bogus'"),
    (["runs", "--db", "adir", "list"], "'adir'"),
    (["runs", "--db", "notastore", "list"], "notastore"),
    (["runs", "--db", "notastore", "show", "abc"], "notastore"),
    (["runs", "--db", "notastore", "export"], "notastore"),
    (["runs", "list", "--limit", "0"], "'0'"),
    (["runs", "list", "--limit", "-3"], "'-3'"),
    (["runs", "list", "--status", "nope"], "'nope'"),
    (["runs", "show"], "run"),
    (["runs", "export", "-f", "xml"], "'xml'"),
    (["runs", "export", "-o", "afile/x.csv"], "afile"),
    (["runs", "export", "-o", "adir"], "'adir'"),
    # lr-find: every check before the data is loaded
    (["lr-find", "--steps", "2"], "'2'"),
    (["lr-find", "--steps", "2.5"], "'2.5'"),
    (["lr-find", "--start-lr", "0"], "'0'"),
    (["lr-find", "--start-lr=-1e-5"], "'-1e-5'"),  # argparse takes "-1e-5" alone for an option
    (["lr-find", "--end-lr", "inf"], "'inf'"),
    (["lr-find", "--end-lr", "1e400"], "'1e400'"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "--end-lr 0.1"),
    (["lr-find", "--batch-size", "0"], "'0'"),
    (["lr-find", "--seed", "-1"], "'-1'"),
    (["lr-find", "--dataset", "cifar"], "'cifar'"),
    (["lr-find", "--optimizer", "nope"], "'nope'"),
    (["lr-find", "--hyper", "momentum"], "'momentum'"),
    (["lr-find", "--hyper", "=0.9"], "'=0.9'"),
    (["lr-find", "--hyper", "bogus=1"], "'bogus'"),
    (["lr-find", "--hyper", "lr=0.1"], "lr=0.1"),
    (["lr-find", "--optimizer", "sgd", "--hyper", "momentum=-1"], "-1"),
    (["lr-find", "--optimizer", "sgd", "--hyper", "momentum=fast"], "'fast'"),
    (["lr-find", "-o", "afile/x.png"], "afile"),
    (["lr-find", "-o", "adir"], "'adir'"),
    (["lr-find", "--json", "afile/x.json"], "afile"),
    # sweep: every check before the study, the store or the output directory exists
    (["sweep", "--storage", "notaurl"], "'notaurl'"),
    (["sweep", "--storage", "sqlite://"], "'sqlite://'"),
    (["sweep", "--storage", "sqlite:///:memory:"], "'sqlite:///:memory:'"),
    (["sweep", "--storage", "sqlite:///afile/x.db"], "afile"),
    (["sweep", "--storage", "http://example.com/db"], "'http'"),
    (["sweep", "--storage", "postgresql://u@host:port/db"], "postgresql://u@host:port/db"),
    (["sweep", "--storage", "postgresql://u@host"], "postgresql://u@host"),
    (["sweep", "--storage", UNREACHABLE_PG], "127.0.0.1:1"),
    (["sweep", "--batch-sizes", "0"], "'0'"),
    (["sweep", "--batch-sizes", "64,0"], "'64,0'"),
    (["sweep", "--batch-sizes", "64,,32"], "'64,,32'"),
    (["sweep", "--batch-sizes", "big"], "'big'"),
    (["sweep", "--seeds", "-1"], "'-1'"),
    (["sweep", "--n-train", "-5"], "'-5'"),
    (["sweep", "--n-train", "0"], "'0'"),
    (["sweep", "--n-val", "0"], "'0'"),
    (["sweep", "--workers", "0"], "'0'"),
    (["sweep", "--threads", "0"], "'0'"),
    (["sweep", "--trials", "0"], "'0'"),
    (["sweep", "--epochs", "0"], "'0'"),
    (["sweep", "--lr", "1:0.1"], "'1:0.1'"),
    (["sweep", "--lr", "0:1"], "'0'"),
    (["sweep", "--lr", "1e-4:inf"], "'inf'"),
    (["sweep", "--lr", "1e-3,1e-2"], "'1e-3,1e-2'"),
    (["sweep", "--sampler", "grid", "--lr", "0.1,-1"], "'-1'"),
    (["sweep", "--sampler", "bayes"], "'bayes'"),
    (["sweep", "--optimizers", "nope"], "'nope'"),
    (["sweep", "--optimizers", "adam,", "--sampler", "grid"], "'adam,'"),
    (["sweep", "--schedules", "bogus(1)"], "'bogus'"),
    (["sweep", "--schedules", "cosine(base_lr=LR, period=0)"], "period=0"),
    (["sweep", "--study", ""], "''"),
    (["sweep", "--out", "afile"], "'afile'"),
    (["sweep", "--report-only"], "sweep.db"),
]


def case_id(case):
    argv, _ = case
    return " ".join(argv)[:80] or "(no command)"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An empty working directory holding only the fixtures' files; the run store and the data
    cache point into it, so anything a command writes would show up here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTIMLAB_RUNS", str(tmp_path / "store" / "runs.sqlite"))
    monkeypatch.setenv("OPTIMLAB_DATA", str(tmp_path / "cache"))
    (tmp_path / "afile").write_text("a plain file\n")
    (tmp_path / "notastore").write_text("not a database\n")
    (tmp_path / "adir").mkdir()
    return tmp_path


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in root.rglob("*")}


def run_main(argv, capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, needle", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_exits_2_naming_the_value_with_nothing_written(argv, needle, sandbox, capsys):
    before = tree(sandbox)
    code, out, err = run_main(argv, capsys)
    assert code == 2, (out, err)
    assert needle in err, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "error" in err
    assert tree(sandbox) == before  # no output dir, no store, no study, no cache


def test_unreachable_postgres_is_named_without_its_password(sandbox, capsys):
    code, _, err = run_main(["sweep", "--storage", UNREACHABLE_PG, "--dataset", "synthetic"], capsys)
    assert code == 2 and "cannot connect" in err and "127.0.0.1:1" in err
    assert "secret" not in err


def test_debug_shows_the_traceback_of_a_validation_error(sandbox):
    with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
        cli.main(["--debug", "showdown", "--optimizers", "nope"])
    assert tree(sandbox) == {"afile": 13, "notastore": 15, "adir": -1}


def test_only_validation_errors_are_caught_a_bug_keeps_its_traceback(monkeypatch, sandbox):
    import optimlab.optim.cli as command

    def broken(args):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(command, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["optimizers"])


def test_help_and_good_input_still_work(sandbox, capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "--debug" in out and "sweep" in out
    code, out, _ = run_main(["schedule", "--list"], capsys)
    assert code == 0 and "cosine" in out and tree(sandbox) == {"afile": 13, "notastore": 15, "adir": -1}
    code, _, err = run_main(["schedule", "cosine(base_lr=0.1, period=10)", "--steps", "20", "-o", "plots/lr.png"],
                            capsys)
    assert code == 0, err
    assert (sandbox / "plots" / "lr.png").stat().st_size > 1000  # the sandbox does see what a command writes


def test_sweep_schedule_templates_keep_their_own_commas(sandbox, capsys):
    # a template with commas is one schedule; "nope" then fails, after the schedules parsed
    code, _, err = run_main(["sweep", "--schedules", "cosine(base_lr=LR, period=TOTAL),onecycle",
                             "--optimizers", "nope"], capsys)
    assert code == 2 and "unknown optimizer 'nope'" in err


def test_bogus_top_level_flag_in_a_real_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "optimlab", "--bogus-flag"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "OPTIMLAB_RUNS": str(tmp_path / "runs.sqlite")})
    assert proc.returncode == 2
    assert "--bogus-flag" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the shared types
@pytest.mark.parametrize("parse, text", [
    (cliutil.positive_int, "0"), (cliutil.positive_int, "1.0"), (cliutil.non_negative_int, "-1"),
    (cliutil.int_at_least(3), "2"), (cliutil.finite_float, "inf"), (cliutil.finite_float, "1e400"),
    (cliutil.finite_float, "nan"), (cliutil.positive_float, "0"), (cliutil.positive_float, "-0.0"),
    (cliutil.non_negative_float, "-1e-300"), (cliutil.int_list(1), "1,0"), (cliutil.int_list(1), ""),
    (cliutil.name_list, " , "), (cliutil.storage_url, "sqlite:///"),
])
def test_types_refuse_naming_the_value(parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        parse(text)


@pytest.mark.parametrize("parse, text, value", [
    (cliutil.positive_int, "7", 7), (cliutil.non_negative_int, "0", 0), (cliutil.finite_float, "-2.5", -2.5),
    (cliutil.positive_float, "1e-300", 1e-300), (cliutil.int_list(0), "0, 3", (0, 3)),
    (cliutil.name_list, "adam, sgd", ("adam", "sgd")),
    (cliutil.storage_url, "postgresql://u:p@db.example:5432/optuna", "postgresql://u:p@db.example:5432/optuna"),
    (cliutil.storage_url, "postgresql:///optuna", "postgresql:///optuna"),  # the local socket
])
def test_types_accept_good_values(parse, text, value):
    assert parse(text) == value


def test_output_checks_create_nothing_and_catch_an_unwritable_directory(tmp_path, monkeypatch):
    assert cliutil.output_dir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert cliutil.output_file(str(tmp_path / "c" / "x.png")) == str(tmp_path / "c" / "x.png")
    assert list(tmp_path.iterdir()) == []

    def read_only(*args, **kwargs):  # as on read-only media (root ignores permission bits)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cliutil.tempfile, "mkstemp", read_only)
    with pytest.raises(argparse.ArgumentTypeError, match="Read-only file system"):
        cliutil.output_dir(str(tmp_path / "out"))
    with pytest.raises(argparse.ArgumentTypeError, match="Read-only file system"):
        cliutil.storage_url(f"sqlite:///{tmp_path}/sweep.db")


def test_run_list_statuses_cover_the_training_statuses():
    from optimlab.store.cli import STATUSES
    from optimlab.train import history

    assert {history.RUNNING, history.COMPLETED, history.EARLY_STOPPED, history.NONFINITE,
            history.STOPPED} <= set(STATUSES)
