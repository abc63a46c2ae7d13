"""`optimlab optimizers`: the optimizers create() knows, with their defaults."""

from __future__ import annotations

import argparse
import inspect

import optimlab.optim as oo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--convention", default="torch", choices=["torch", "keras"])


def run(args: argparse.Namespace) -> int:
    for name in oo.available(args.convention):
        cls = oo.get(name, args.convention)
        sig = inspect.signature(cls.__init__)
        defaults = ", ".join(f"{k}={p.default!r}" for k, p in sig.parameters.items()
                             if p.default is not p.empty and k not in ("foreach", "differentiable", "capturable"))
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<9} {cls.__module__}.{cls.__name__}: {doc}\n          {defaults}")
    return 0
