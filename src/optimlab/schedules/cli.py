"""``optimlab schedule``: plot learning-rate schedules to a PNG.

Each schedule is written as a call, e.g.::

    optimlab schedule "onecycle(max_lr=0.1, total_steps=1000)" \\
        "warmup(cosine(base_lr=0.1, period=900), warmup_steps=100)" -o lr.png

Only the names below and literal numbers/strings/lists are accepted: the
text is parsed, never evaluated as Python.
"""

from __future__ import annotations

import argparse
import sys

from optimlab import schedules as S
from optimlab.cliutil import check, output_file, positive_int
from optimlab.schedules.parse import FACTORIES, _signature, parse_schedule  # noqa: F401  (parse_schedule: re-exported)

DEFAULT_OUT = "schedules.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schedules", nargs="*", metavar="SCHEDULE",
                        help='a schedule written as a call, e.g. "cosine(base_lr=0.1, period=100)"')
    # default None, not the file name: argparse would check the default even for --list
    parser.add_argument("-o", "--out", default=None, type=output_file, help=f"PNG to write (default: {DEFAULT_OUT})")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="steps to plot (default: the longest finite schedule's length)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--log", action="store_true", help="logarithmic learning-rate axis")
    parser.add_argument("--list", action="store_true", help="list the schedule names and their arguments")


def run(args: argparse.Namespace) -> int:
    if args.list or not args.schedules:
        for name in FACTORIES:
            print(_signature(name))
        return 0
    out = args.out or check("--out", output_file, DEFAULT_OUT)
    try:
        named = {text: parse_schedule(text) for text in args.schedules}
        S.plot(named, out, steps=args.steps, title=args.title, log_lr=args.log)
    except ValueError as error:
        print(f"optimlab schedule: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
