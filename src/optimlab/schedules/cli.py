"""``optimlab schedule``: plot learning-rate schedules to a PNG.

Each schedule is written as a call, e.g.::

    optimlab schedule "onecycle(max_lr=0.1, total_steps=1000)" \\
        "warmup(cosine(base_lr=0.1, period=900), warmup_steps=100)" -o lr.png

Only the names below and literal numbers/strings/lists are accepted: the
text is parsed, never evaluated as Python.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys

from optimlab import schedules as S
from optimlab.cliutil import check, output_file, positive_int

# name -> factory; nesting composes (warmup(...), sequential([...], [...]))
FACTORIES = {
    "constant": S.Constant,
    "piecewise": S.PiecewiseConstant,
    "step": S.step_decay,
    "multistep": S.multistep_decay,
    "exponential": S.ExponentialDecay,
    "power": S.PowerDecay,
    "polynomial": S.Polynomial,
    "linear": S.Linear,
    "cosine": S.CosineAnnealing,
    "cosine_restarts": S.CosineWarmRestarts,
    "onecycle": S.OneCycle,
    "warmup": S.warmup,
    "warmup_cosine": S.warmup_cosine,
    "sequential": S.Sequential,
}


def _signature(name: str) -> str:
    signature = inspect.signature(FACTORIES[name]).replace(return_annotation=inspect.Signature.empty)
    return f"{name}{signature}".replace("'", "")


def _evaluate(node: ast.AST):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id not in FACTORIES:
            raise ValueError(f"unknown schedule {node.func.id!r}; known: {', '.join(FACTORIES)}")
        args = [_evaluate(a) for a in node.args]
        kwargs = {k.arg: _evaluate(k.value) for k in node.keywords}
        try:
            return FACTORIES[node.func.id](*args, **kwargs)
        except TypeError as error:  # wrong argument names: say which signature applies
            raise ValueError(f"{_signature(node.func.id)}: {error}") from None
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_evaluate(e) for e in node.elts]
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"not a schedule or a literal: {ast.unparse(node)!r}") from None


def parse_schedule(text: str) -> S.Schedule:
    """Build a schedule from text such as ``"cosine(base_lr=0.1, period=100)"``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse schedule {text!r}; write it as name(arg=value, ...)") from None
    schedule = _evaluate(tree.body)
    if not isinstance(schedule, S.Schedule):
        raise ValueError(f"{text!r} is not a schedule")
    return schedule


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
