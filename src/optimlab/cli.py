"""The `optimlab` command line.

Each sub-command lives in its own module and is imported only when it runs,
so `optimlab --help` stays fast. A command module provides
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optimlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main(), once the command is known.
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    full = argparse.ArgumentParser(prog=f"optimlab {args.command}", description=COMMANDS[args.command][1])
    module.add_arguments(full)
    argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    rest = argv[argv.index(args.command) + 1:]
    return int(module.run(full.parse_args(rest)) or 0)
