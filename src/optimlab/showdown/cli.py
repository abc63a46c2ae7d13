"""`optimlab showdown` and `optimlab report`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from optimlab.cliutil import device, name_list, output_dir, positive_int
from optimlab.showdown.recipes import LECTURE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--optimizers", default=",".join(LECTURE), type=name_list,
                        help="comma-separated rows: the lecture's (adam, rmsprop, momentum, sgd, adagrad, "
                             "adadelta) or any name of `optimlab optimizers` (default: the lecture's six)")
    parser.add_argument("--convention", default="keras", choices=["keras", "torch"],
                        help="whose default hyperparameters (the lecture used Keras's)")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--seeds", type=positive_int, default=1, help="seeds per row (mean ± std when > 1)")
    parser.add_argument("--schedule", default=None,
                        help='a schedule for every lecture row, e.g. "onecycle(max_lr=0.01, total_steps=TOTAL)" '
                             "(TOTAL = the run's steps + 1, WARMUP = 5%% of them; see `optimlab schedule --list`)")
    parser.add_argument("--beyond", action="store_true",
                        help="also run the best known recipe per optimizer (a second table; the report "
                             "names the optimizers it has no recipe for)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one epoch of a few hundred batches")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="runs trained side by side in separate processes (default: one per CPU core; "
                             "1 = one after another in this process)")
    parser.add_argument("--device", default="cpu", type=device,
                        help="cpu, cuda, cuda:N or auto (default: cpu); on CUDA runs go one at a time unless --jobs")
    parser.add_argument("--out", default="showdown", type=output_dir,
                        help="output directory (report, runs, checkpoints)")
    parser.add_argument("--quiet", action="store_true")


def _description(cfg, source: str, split: str) -> str:
    budget = "a quick smoke run (one epoch of 300 batches)" if cfg.quick else f"{cfg.epochs} epochs"
    return (f"The lecture's CNN (Conv2D 32 3×3 ReLU → MaxPool 2×2 → Dropout 0.25 → Dense 10) on {cfg.dataset} "
            f"({source}; {split}), {budget}, batch {cfg.batch_size}, {cfg.seeds} seed(s), optimizers at "
            f"{cfg.convention}'s defaults{'' if cfg.convention == 'torch' else ' as in the lecture'}, "
            f"{cfg.convention}'s initialisation ({'Glorot uniform, zero biases' if cfg.convention == 'keras' else 'torch.nn defaults'}). "
            f"Times are this machine's; the lecture's are its own. Showdown id `{cfg.showdown_id}`.")


def _check_row(name: str) -> None:
    """A row is a lecture row or any registered optimizer, of either convention."""
    import difflib

    from optimlab.optim import available

    known = sorted(set(LECTURE) | set(available("torch")) | set(available("keras")))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"--optimizers: unknown optimizer {name!r}.{hint} Known: {', '.join(known)}")


def run(args: argparse.Namespace) -> int:
    from optimlab.showdown.driver import run_showdown
    from optimlab.showdown.recipes import fill_schedule
    from optimlab.showdown.runner import ShowdownConfig
    from optimlab.showdown.summary import build_report

    # Everything is checked here, before run_showdown creates the output directory.
    names = tuple(n.lower() for n in args.optimizers)
    for n in names:
        if n not in LECTURE:
            _check_row(n)  # an unknown name fails before any training, listing the known ones
    if args.schedule is not None:
        try:
            fill_schedule(args.schedule, 99)
        except ValueError as err:
            raise ValueError(f"--schedule {args.schedule!r}: {err}") from None
    cfg = ShowdownConfig(dataset=args.dataset, optimizers=names, convention=args.convention, epochs=args.epochs,
                         batch_size=args.batch_size, seeds=args.seeds, schedule=args.schedule, quick=args.quick,
                         beyond=args.beyond, out=args.out, jobs=args.jobs, device=args.device)
    try:
        results = run_showdown(cfg, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to resume (finished runs are kept in {cfg.out}/runs)",
              file=sys.stderr)
        return 130
    meta = json.loads((Path(cfg.out) / "showdown.json").read_text())
    _, printed = build_report(results, {"dataset": cfg.dataset,
                                        "description": _description(cfg, meta["source"], meta["split"])}, cfg.out)
    print(printed)
    print(f"\nreport: {Path(cfg.out) / 'report.html'} (and report.md)", file=sys.stderr)
    return 0
