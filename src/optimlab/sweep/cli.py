"""`optimlab sweep`: search optimizer × learning rate × schedule × batch size × seed with Optuna."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    sep = ":" if ":" in text else ","
    return tuple(float(v) for v in text.split(sep) if v.strip())


def _list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", default="sweep", help="the study's name: the same name continues it")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL. Default: sqlite:///<out>/sweep.db (one machine). Many machines: "
                             "postgresql://user:password@host:5432/db, the same command started on each")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--trials", type=int, default=20, help="trials in the whole study, all workers together")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid"])
    parser.add_argument("--optimizers", default="adam,momentum,sgd", help="comma-separated optimizer names")
    parser.add_argument("--lr", default="1e-4:1",
                        help="learning rates: LOW:HIGH (log scale; tpe/random) or a comma list (grid)")
    parser.add_argument("--schedules", default="constant",
                        help="comma-separated: constant, cosine, onecycle, step, or a schedule written with LR "
                             "and TOTAL, e.g. \"cosine(base_lr=LR, period=TOTAL)\"")
    parser.add_argument("--batch-sizes", default="64", help="comma-separated batch sizes")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "synthetic"])
    parser.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--n-val", type=int, default=None, help="use only the first N validation images")
    parser.add_argument("--pruner", default="median", choices=["median", "none"])
    parser.add_argument("--convention", default="torch", choices=["keras", "torch"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    parser.add_argument("--out", default="sweep", help="output directory: report, run store, checkpoints")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the study, run nothing")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    import os

    from optimlab.sweep.report import build_report
    from optimlab.sweep.runner import SweepConfig, open_study, run_sweep

    if args.sampler != "grid" and "," in args.lr:
        print("optimlab sweep: --lr a,b,c is for --sampler grid; give LOW:HIGH for tpe/random", file=sys.stderr)
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    try:
        cfg = SweepConfig(study=args.study, storage=args.storage, out=args.out, optimizers=_list(args.optimizers),
                          lr=_floats(args.lr), schedules=_list(args.schedules),
                          batch_sizes=tuple(int(v) for v in _list(args.batch_sizes)),
                          seeds=tuple(int(v) for v in _list(args.seeds)), sampler=args.sampler, trials=args.trials,
                          epochs=args.epochs, dataset=args.dataset, n_train=args.n_train, n_val=args.n_val,
                          pruner=args.pruner, convention=args.convention, threads=threads)
        from optimlab import optim

        for name in cfg.optimizers:
            optim.get(name, cfg.convention)
        if not args.report_only:
            run_sweep(cfg, workers=args.workers, quiet=args.quiet)
        study = open_study(cfg)
    except (ValueError, KeyError) as err:
        print(f"optimlab sweep: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue the study", file=sys.stderr)
        return 130
    _, table = build_report(study, args.out)
    print(table)
    print(f"\nreport: {Path(args.out) / 'report.html'} (and report.md); study {cfg.study!r} in {cfg.storage_url}",
          file=sys.stderr)
    return 0
