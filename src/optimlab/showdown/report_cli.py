"""`optimlab report SHOWDOWN_ID`: rebuild a showdown's report from the run store."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from optimlab.cliutil import CommandError, check, existing_file, output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("showdown_id", help="the showdown id printed in its report (sd-xxxxxxxx)")
    parser.add_argument("--store", required=True, type=existing_file,
                        help="the run store file (e.g. showdown/runs.sqlite)")
    parser.add_argument("--out", default=None, type=output_dir, help="where to write the report (default: report-<id>)")


def run(args: argparse.Namespace) -> int:
    from optimlab.showdown.summary import build_report
    from optimlab.store import RunStore

    store = RunStore(args.store, readonly=True)  # a reader: creates and changes nothing
    try:
        runs = store.runs()
    except sqlite3.DatabaseError as err:  # a file that is not a run store
        raise CommandError(f"--store {args.store!r}: {err}") from None
    # per row, the runs of its latest recipe (an edited recipe's rows trained again under the same
    # showdown id), and per seed the latest run
    latest: dict = {}
    for r in sorted(runs, key=lambda r: r["created"]):
        cfg = r["config"]
        if cfg.get("showdown") != args.showdown_id:
            continue
        row = latest.setdefault((cfg["table"], cfg["row"]), {"fingerprint": None, "seeds": {}})
        if cfg.get("fingerprint") != row["fingerprint"]:
            row.update(fingerprint=cfg.get("fingerprint"), seeds={})
        row["seeds"][cfg["seed"]] = r
    results: dict = {}
    for (table, key), row in latest.items():
        for seed in sorted(row["seeds"]):
            r = row["seeds"][seed]
            cfg, history = r["config"], store.history(r["run_id"])
            results.setdefault(table, {}).setdefault(key, []).append({
                "label": cfg["label"], "recipe": cfg["recipe"], "seed": seed, "run_id": r["run_id"],
                "eval_train_acc": r["summary"].get("eval_train_acc", float("nan")),
                "history": json.loads(history.to_json())})
    if not results:
        raise CommandError(f"no showdown {args.showdown_id!r} in {args.store}")
    dataset = next(iter(next(iter(results.values())).values()))[0]["history"]["config"].get("dataset", "mnist")
    out = args.out or check("--out", output_dir, f"report-{args.showdown_id}")
    _, printed = build_report(results, {"dataset": dataset, "description":
                                        f"Rebuilt from the run store {args.store} (showdown `{args.showdown_id}`)."}, out)
    print(printed)
    print(f"\nreport: {Path(out) / 'report.html'}", file=sys.stderr)
    return 0
