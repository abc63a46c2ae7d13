"""`optimlab sweep`: search optimizer × learning rate × schedule × batch size × seed with Optuna."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from optimlab.cliutil import device as cliutil_device
from optimlab.cliutil import (
    CommandError, check_storage_reachable, float_list, int_list, name_list, output_dir, positive_int, storage_url,
)


class Rates(NamedTuple):
    text: str
    values: tuple[float, ...]
    is_range: bool  # LOW:HIGH rather than a comma list


def _floats(text: str) -> Rates:
    """``--lr``: LOW:HIGH or a comma list, every rate a finite number > 0."""
    is_range = ":" in text
    return Rates(text, float_list(text, sep=":" if is_range else ","), is_range)


def _schedules(text: str) -> tuple[str, ...]:
    """Comma-separated, but only at the top level: a template's own commas stay inside it."""
    items, depth, current = [], 0, []
    for ch in text:
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    items.append("".join(current).strip())
    if not any(items) or not all(items):
        raise argparse.ArgumentTypeError(f"must list schedules separated by commas, got {text!r}")
    return tuple(items)


def _study_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a non-empty name, got {text!r}")
    return text


def _sqlite_file(url: str) -> Path:
    from sqlalchemy.engine import make_url

    return Path(make_url(url).database)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", default="sweep", type=_study_name,
                        help="the study's name: the same name continues it")
    parser.add_argument("--storage", default=None, type=storage_url,
                        help="Optuna storage URL. Default: sqlite:///<out>/sweep.db (one machine). Many machines: "
                             "postgresql://user:password@host:5432/db, the same command started on each")
    parser.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--trials", type=positive_int, default=20,
                        help="trials in the whole study, all workers together")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid"])
    parser.add_argument("--optimizers", default="adam,momentum,sgd", type=name_list,
                        help="comma-separated optimizer names")
    parser.add_argument("--lr", default="1e-4:1", type=_floats,
                        help="learning rates: LOW:HIGH (log scale; tpe/random) or a comma list (grid)")
    parser.add_argument("--schedules", default="constant", type=_schedules,
                        help="comma-separated: constant, cosine, onecycle, step, or a schedule written with LR "
                             "and TOTAL, e.g. \"cosine(base_lr=LR, period=TOTAL)\"")
    parser.add_argument("--batch-sizes", default="64", type=int_list(1), help="comma-separated batch sizes")
    parser.add_argument("--seeds", default="0", type=int_list(0), help="comma-separated seeds")
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "synthetic"])
    parser.add_argument("--n-train", type=positive_int, default=None, help="use only the first N training images")
    parser.add_argument("--n-val", type=positive_int, default=None, help="use only the first N validation images")
    parser.add_argument("--pruner", default="median", choices=["median", "none"])
    parser.add_argument("--convention", default="torch", choices=["keras", "torch"])
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per worker (default: cores / workers)")
    parser.add_argument("--out", default="sweep", type=output_dir,
                        help="output directory: report, run store, checkpoints")
    parser.add_argument("--device", default="cpu", type=cliutil_device,
                        help="cpu, cuda, cuda:N or auto: where every trial trains (default: cpu)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the study, run nothing")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    import os

    from optimlab import optim
    from optimlab.sweep.report import build_report
    from optimlab.sweep.runner import SweepConfig, open_study, run_sweep

    # Every check comes before the study, the store or the output directory is created.
    lr = args.lr.values
    if args.sampler != "grid":
        if not args.lr.is_range or len(lr) != 2:
            raise CommandError(f"--lr {args.lr.text!r}: --sampler {args.sampler} takes a range LOW:HIGH "
                               f"(a comma list is for --sampler grid)")
        if not lr[0] < lr[1]:
            raise CommandError(f"--lr {args.lr.text!r}: LOW must be below HIGH")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    cfg = SweepConfig(study=args.study, storage=args.storage, out=args.out, optimizers=args.optimizers,
                      lr=lr, schedules=args.schedules, batch_sizes=args.batch_sizes, seeds=args.seeds,
                      sampler=args.sampler, trials=args.trials, epochs=args.epochs, dataset=args.dataset,
                      n_train=args.n_train, n_val=args.n_val, pruner=args.pruner, convention=args.convention,
                      threads=threads, device=args.device)
    for name in cfg.optimizers:
        optim.get(name, cfg.convention)
    if args.report_only and cfg.storage_url.startswith("sqlite:") and not _sqlite_file(cfg.storage_url).exists():
        raise CommandError(f"--report-only: no study database at {_sqlite_file(cfg.storage_url)}")
    check_storage_reachable(cfg.storage_url)
    try:
        if not args.report_only:
            run_sweep(cfg, workers=args.workers, quiet=args.quiet)
        study = open_study(cfg)
    except KeyError as err:
        raise CommandError(str(err.args[0] if err.args else err)) from None
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue the study", file=sys.stderr)
        return 130
    _, table = build_report(study, args.out)
    print(table)
    print(f"\nreport: {Path(args.out) / 'report.html'} (and report.md); study {cfg.study!r} in {cfg.storage_url}",
          file=sys.stderr)
    return 0
