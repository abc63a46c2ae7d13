"""Schedules written as text, e.g. ``"warmup(cosine(base_lr=0.1, period=900), warmup_steps=100)"``.

Only the names of :data:`FACTORIES` and literal numbers, strings and lists are accepted: the
text is parsed with :mod:`ast`, never evaluated as Python. Used by ``optimlab schedule``, the
showdown's ``--schedule`` and the sweep's schedule templates.
"""

from __future__ import annotations

import ast
import inspect

from optimlab.schedules import _base
from optimlab.schedules.compose import Sequential, warmup, warmup_cosine
from optimlab.schedules.cosine import CosineAnnealing, CosineWarmRestarts
from optimlab.schedules.decay import (Constant, ExponentialDecay, Linear, PiecewiseConstant, Polynomial, PowerDecay,
                                      multistep_decay, step_decay)
from optimlab.schedules.onecycle import OneCycle

__all__ = ["FACTORIES", "parse_schedule"]

# name -> factory; nesting composes (warmup(...), sequential([...], [...]))
FACTORIES = {
    "constant": Constant,
    "piecewise": PiecewiseConstant,
    "step": step_decay,
    "multistep": multistep_decay,
    "exponential": ExponentialDecay,
    "power": PowerDecay,
    "polynomial": Polynomial,
    "linear": Linear,
    "cosine": CosineAnnealing,
    "cosine_restarts": CosineWarmRestarts,
    "onecycle": OneCycle,
    "warmup": warmup,
    "warmup_cosine": warmup_cosine,
    "sequential": Sequential,
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


def parse_schedule(text: str) -> _base.Schedule:
    """Build a schedule from text such as ``"cosine(base_lr=0.1, period=100)"``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse schedule {text!r}; write it as name(arg=value, ...)") from None
    schedule = _evaluate(tree.body)
    if not isinstance(schedule, _base.Schedule):
        raise ValueError(f"{text!r} is not a schedule")
    return schedule
