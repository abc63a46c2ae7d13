"""The `optimlab` command line.

Each sub-command lives in its own module and is imported only when it runs,
so `optimlab --help` stays fast. A command module provides
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from optimlab.cliutil import CommandError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "optimizers": ("optimlab.optim.cli", "list the optimizers and their defaults"),
    "showdown": ("optimlab.showdown.cli", "the lectures' MNIST optimizer comparison, reproduced, with a report"),
    "report": ("optimlab.showdown.report_cli", "rebuild a showdown's report from the run store"),
    "data": ("optimlab.data.cli", "fetch, verify and cache MNIST / Fashion-MNIST; show what is there"),
    "schedule": ("optimlab.schedules.cli", "plot learning-rate schedules to a PNG"),
    "landscape": ("optimlab.landscape.cli", "optimizers on 2-D test functions and real networks' loss surfaces"),
    "runs": ("optimlab.store.cli", "list, show and export the runs in the run store"),
    "lr-find": ("optimlab.lrfind", "the learning-rate range test: loss against rate, a suggested rate"),
    "sweep": ("optimlab.sweep.cli", "search optimizer x lr x schedule x batch x seed with Optuna (SQLite or PostgreSQL)"),
    "benchmark": ("optimlab.benchmark.cli", "a fair optimizer comparison on several workloads: equal tuning budgets, "
                  "seeds, test results, time-to-target, tunability, performance profiles"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimlab", description=__doc__.splitlines()[0],
        epilog="Bad input is reported as 'optimlab COMMAND: error: ...' with exit status 2, "
               "before anything runs or is written.")
    parser.add_argument("--debug", action="store_true",
                        help="on an input error, show the Python traceback too (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main(), once the command is known.
    return parser


def _command_index(argv: list[str]) -> int:
    """Position of the command: the first argument that is not a top-level option
    (the top level has no option that takes a value)."""
    return next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (argparse exits with 2 on a malformed option)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    at = _command_index(argv)
    # Strict parse of what precedes the command: an unknown option there is an error, not ignored.
    top = parser.parse_args(argv[:at + 1])
    if top.command is None:
        # Like git: no command is a usage error; the help lists the commands.
        parser.print_help(sys.stderr)
        print("\noptimlab: error: a COMMAND is required", file=sys.stderr)
        return 2
    module = importlib.import_module(top._module)
    full = argparse.ArgumentParser(prog=f"optimlab {top.command}", description=COMMANDS[top.command][1])
    module.add_arguments(full)
    args = full.parse_args(argv[at + 1:])
    try:
        return int(module.run(args) or 0)
    except (CommandError, ValueError) as err:
        # The commands' own checks of their input; any other exception is a bug and keeps its traceback.
        if top.debug:
            raise
        print(f"optimlab {top.command}: error: {err}", file=sys.stderr)
        return 2
