"""`optimlab benchmark`: a fair optimizer comparison on several workloads, with its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optimlab.cliutil import CommandError, check_storage_reachable, name_list, output_dir, positive_int, storage_url


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _space(text: str) -> tuple[str, str, tuple[float, float]]:
    """``OPTIMIZER.PARAM=LOW:HIGH``."""
    try:
        target, bounds = text.split("=", 1)
        optimizer, param = target.split(".", 1)
        low, high = (float(v) for v in bounds.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be OPTIMIZER.PARAM=LOW:HIGH (e.g. adam.lr=1e-5:1e-1), "
                                         f"got {text!r}") from None
    return optimizer.strip(), param.strip(), (low, high)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from optimlab.benchmark.config import PRESETS

    parser.add_argument("--preset", default="laptop", choices=list(PRESETS),
                        help=("; ".join(f"{k}: {p.description}" for k, p in PRESETS.items())
                              + " (default laptop)").replace("%", "%%"))  # argparse formats help with %
    parser.add_argument("--workloads", type=name_list, default=None,
                        help="comma-separated workload names (default: the preset's; `--list` shows them)")
    parser.add_argument("--optimizers", type=name_list, default=None, help="comma-separated optimizer names")
    parser.add_argument("--trials", type=positive_int, default=None, help="trials per optimizer and workload")
    parser.add_argument("--one-shot", action="store_true",
                        help="the one-shot budget: each optimizer once at its defaults, constant learning rate")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help="seeds the selected setting is re-run on (the test results' sample)")
    parser.add_argument("--fraction", type=_fraction, default=None,
                        help="share of each workload's declared step budget to run, in (0, 1]")
    parser.add_argument("--space", type=_space, action="append", default=[], metavar="OPT.PARAM=LOW:HIGH",
                        help="replace one search-space range, e.g. adam.lr=1e-5:1e-1 (repeatable)")
    parser.add_argument("--sampler-seed", type=int, default=None, help="the Sobol sampler's scrambling seed")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="worker processes on this machine, each on its own cores (default: one per core, "
                             "one for --preset quick)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per worker (default: cores / workers)")
    parser.add_argument("--storage", type=storage_url, default=None,
                        help="Optuna storage URL. Default sqlite:///<out>/benchmark.db. Several machines: "
                             "postgresql://user:password@host/db, the same command on each")
    parser.add_argument("--out", type=output_dir, default="benchmark", help="output directory (default benchmark)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the run store")
    parser.add_argument("--list", action="store_true", help="list the workloads and search spaces, run nothing")
    parser.add_argument("--quiet", action="store_true")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _listing(cfg) -> str:
    lines = [f"Workloads (at the {cfg.preset} preset's share of each declared budget, {cfg.fraction:g}):"]
    for name in cfg.workloads:
        w = cfg.workload(name)
        lines.append(f"  {name:<16} {w.title}: {w.metric} ({w.mode}), batch {w.batch_size}, {w.steps} steps, "
                     f"evaluated every {w.eval_every}")
    lines.append("Search spaces (log: log-uniform):")
    for o in cfg.optimizers:
        cells = [f"{p.name} {p.low:g}..{p.high:g}{' log' if p.log else ''}" for p in cfg.space(o)]
        lines.append(f"  {o:<20} " + ", ".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from optimlab.benchmark.config import BenchmarkConfig
    from optimlab.benchmark.report import build_report
    from optimlab.benchmark.runner import run_benchmark

    spaces: dict = {}
    for optimizer, param, bounds in args.space:
        spaces.setdefault(optimizer, {})[param] = bounds
    cfg = BenchmarkConfig.from_preset(
        args.preset, workloads=args.workloads, optimizers=args.optimizers, trials=args.trials,
        budget="one-shot" if args.one_shot else None, seeds=args.seeds, fraction=args.fraction,
        sampler_seed=args.sampler_seed, out=args.out, storage=args.storage, workers=args.workers,
        threads=args.threads, spaces=spaces or None)
    if args.list:
        print(_listing(cfg))
        return 0
    if args.report_only and not Path(cfg.store_path).exists():
        raise CommandError(f"--report-only: no run store at {cfg.store_path}")
    if args.storage:
        check_storage_reachable(cfg.storage_url)
    bid = cfg.benchmark_id
    if not args.report_only:
        from optimlab.benchmark.runner import check_buildable

        check_buildable(cfg)  # an optimizer that cannot train a workload: said before anything is written
        if not args.quiet:
            print(f"benchmark {bid} (preset {cfg.preset}): {_count(len(cfg.workloads), 'workload')} x "
                  f"{_count(len(cfg.optimizers), 'optimizer')}, {_count(cfg.trials, 'trial')} + "
                  f"{_count(cfg.seeds, 'seed')} each, {_count(cfg.workers, 'worker')} x "
                  f"{_count(cfg.threads_per_worker, 'thread')}", file=sys.stderr)
        try:
            run_benchmark(cfg, quiet=args.quiet)
        except KeyboardInterrupt:
            print("\ninterrupted: run the same command again to continue", file=sys.stderr)
            return 130
    _, table = build_report(cfg.store_path, cfg.out, benchmark=bid)
    print(table)
    print(f"\nreport: {Path(cfg.out) / 'report.html'} (and report.md); benchmark {bid} in {cfg.store_path}",
          file=sys.stderr)
    return 0
