"""``optimlab runs list | show RUN | export [RUN ...] | merge FILE ...``: look into the run store;
merge other machines' stores into it."""

from __future__ import annotations

import argparse
import datetime
import sqlite3
import sys

from optimlab.cliutil import CommandError, not_a_directory, output_file, positive_int
from optimlab.store import ENV_VAR, RunStore, default_path

# the run statuses of optimlab.train.history (RUNNING, COMPLETED, ...); a test keeps the two in step
STATUSES = ("running", "completed", "early_stopped", "nonfinite", "stopped",
            "interrupted", "incomplete", "dead", "stale")  # the last four: see optimlab.store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, type=not_a_directory,
                        help=f"the store file (default: ${ENV_VAR}, else {default_path()})")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    db_here = argparse.ArgumentParser(add_help=False)  # --db also after the action: runs list --db FILE
    db_here.add_argument("--db", default=argparse.SUPPRESS, type=not_a_directory, help="the store file")
    ls = sub.add_parser("list", help="one line per run, newest first", parents=[db_here])
    ls.add_argument("--status", choices=STATUSES, help="only runs with this status")
    ls.add_argument("--limit", type=positive_int, default=None, help="at most this many runs")
    show = sub.add_parser("show", help="a run's configuration, epochs and diagnoses", parents=[db_here])
    show.add_argument("run", help="run id (or a unique prefix of it)")
    show.add_argument("--steps", action="store_true", help="also print the sampled per-step rows")
    show.add_argument("--sharpness", default=None, type=output_file, metavar="PNG",
                      help="draw the run's top Hessian eigenvalue against 2/lr, the edge of stability "
                           "(a run trained with fit(sharpness_every=N)), into this PNG")
    ex = sub.add_parser("export", help="write runs as CSV or JSON", parents=[db_here])
    ex.add_argument("runs", nargs="*", help="run ids or prefixes (default: every run)")
    ex.add_argument("-f", "--format", choices=["csv", "json"], default=None,
                    help="default: from the output file's suffix, else json")
    ex.add_argument("--what", choices=["epochs", "steps", "runs"], default="epochs",
                    help="for CSV: which table to flatten (default: epochs)")
    ex.add_argument("-o", "--output", default=None, type=output_file, help="file to write (default: standard output)")
    mg = sub.add_parser("merge", help="copy the runs of other store files into this one (e.g. several "
                                      "machines' benchmark runs); the newer copy of a run wins", parents=[db_here])
    mg.add_argument("sources", nargs="+", type=not_a_directory, help="store files to copy from (never changed)")


def _num(value, fmt=".4f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def run(args: argparse.Namespace) -> int:
    if args.action == "merge":
        return _merge(args)
    # Readers open read-only: nothing is created (not even for a missing file) or changed.
    store = RunStore(args.db, readonly=True) if args.db else RunStore(readonly=True)
    if not store.path.exists():
        print(f"optimlab runs: error: no run store at {store.path}", file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            return _list(store, args)
        if args.action == "show":
            return _show(store, args)
        text = store.export(args.runs or None, args.output, fmt=args.format, what=args.what)
        if args.output is None:
            sys.stdout.write(text)
        else:
            print(f"wrote {args.output}", file=sys.stderr)
        return 0
    except KeyError as err:
        print(f"optimlab runs: error: {err.args[0]}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as err:  # e.g. --db names a file that is not a run store
        raise CommandError(f"--db {str(store.path)!r}: {err}") from None


def _merge(args) -> int:
    from pathlib import Path

    for source in args.sources:  # every source checked before the target is created or changed
        if not Path(source).is_file():
            raise CommandError(f"no run store at {source}")
        probe = RunStore(source, readonly=True)
        try:
            probe.conn
        except sqlite3.DatabaseError as err:
            raise CommandError(f"{source!r}: {err}") from None
        finally:
            probe.close()
    store = RunStore(args.db) if args.db else RunStore()
    if any(Path(s).resolve() == store.path.resolve() for s in args.sources):
        raise CommandError(f"cannot merge the store {str(store.path)!r} into itself")
    for source in args.sources:
        counts = store.merge(source)
        print(f"{source}: {counts['added']} run(s) added, {counts['updated']} updated, {counts['kept']} already "
              f"here", file=sys.stderr)
    return 0


def _lr(config: dict):
    """The run's learning rate: what a sweep or benchmark trial was given (a warm-up starts the
    optimizer's own ``lr`` at 0), else the optimizer's at the start."""
    for source in (config.get("params") or {}, config):
        if isinstance(source.get("lr"), (int, float)):
            return source["lr"]
    return (config.get("hyper") or {}).get("lr")


def _list(store: RunStore, args) -> int:
    runs = store.runs(status=args.status, limit=args.limit)
    rows = []
    for r in runs:
        c, s = r["config"], r["summary"]
        rows.append([r["run_id"], _when(r["created"]), r["name"] or "-", r["status"], str(r["epochs"]),
                     c.get("model", "-"), c.get("optimizer", "-"), _num(_lr(c), "g"),
                     _num(s.get("train_loss")), _num(s.get("val_loss")), _num(s.get("val_acc")),
                     str(len(r["diagnoses"]))])
    print(_table(["run", "created", "name", "status", "epochs", "model", "optimizer", "lr", "train_loss",
                  "val_loss", "val_acc", "diagnoses"], rows))
    print(f"{len(rows)} run(s) in {store.path}", file=sys.stderr)
    return 0


def _show(store: RunStore, args) -> int:
    r = store.run(store.resolve(args.run))
    print(f"run {r['run_id']}  ({r['status']}, created {_when(r['created'])})")
    for key, value in r["config"].items():
        print(f"  {key}: {value}")
    if r["stop"]:
        print(f"stopped: {r['stop'].get('message') or r['stop']}")
    cols = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_norm", "time_s",
            "samples_per_s"]
    rows = [[_num(e.get(k), "g" if k in ("lr", "epoch", "step") else ".4f") for k in cols]
            for e in r["epochs_rows"]]
    if rows:
        print(_table(cols, rows))
    if args.steps and r["steps_rows"]:
        keys = ["step", "epoch", "loss", "grad_norm", "lr", "momentum"]
        if any("sharpness" in s for s in r["steps_rows"]):
            keys += ["sharpness", "edge_of_stability"]
        print(_table(keys, [[_num(s.get(k), "g" if k in ("step", "epoch", "lr", "momentum", "sharpness",
                                                         "edge_of_stability") else ".4f")
                             for k in keys] for s in r["steps_rows"]]))
    for d in r["diagnoses"]:
        print(f"[{d['severity']}] {d['title']}: {d['evidence']}")
        for remedy in d["remedies"]:
            print(f"    remedy: {remedy}")
    if args.sharpness:
        from optimlab.train.sharpness import plot_sharpness

        try:
            plot_sharpness(store.history(r["run_id"]), args.sharpness)
        except ValueError as err:  # no measurements in this run
            raise CommandError(f"--sharpness: run {r['run_id']}: {err}") from None
        print(f"wrote {args.sharpness}", file=sys.stderr)
    return 0
