"""Bad command-line input beyond the catalogue's rows (tests/test_bad_input.py holds the table of
command x bad value): unreachable servers, --debug, bugs keeping their traceback, the argparse types."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from optimlab import cli, cliutil

UNREACHABLE_PG = "postgresql://u:secret@127.0.0.1:1/db"

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


@pytest.mark.parametrize("command", sorted(__import__("optimlab.cli", fromlist=["COMMANDS"]).COMMANDS))
def test_every_commands_help_prints_and_exits_0(command, capsys):
    """argparse formats help texts with %: a bare "10%" in one crashed `optimlab benchmark --help`."""
    from optimlab import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: optimlab {command}")
