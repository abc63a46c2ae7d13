"""The sweep's report: the best configuration per optimizer, and its plots (HTML + Markdown + PNG)."""

from __future__ import annotations

import math
from pathlib import Path

from optimlab.report import Report

HEADER = ["optimizer", "best val loss", "val acc", "learning rate", "schedule", "batch", "seed", "trial",
          "trials (done / pruned)"]


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def best_table(rows: list[dict], best: list[dict]) -> list[list[str]]:
    table = []
    for b in best:
        mine = [r for r in rows if r["optimizer"] == b["optimizer"]]
        pruned = sum(r["state"] == "PRUNED" for r in mine)
        table.append([b["optimizer"], _fmt(b["value"]), _fmt(b.get("val_acc")), f"{b['lr']:.3g}", b["schedule"],
                      str(b["batch_size"]), str(b["seed"]), f"#{b['number']}", f"{len(mine) - pruned} / {pruned}"])
    done = {b["optimizer"] for b in best}
    for name in sorted({r["optimizer"] for r in rows} - done):  # every trial pruned or diverged
        mine = [r for r in rows if r["optimizer"] == name]
        table.append([name, "—", "—", "—", "—", "—", "—", "—", f"0 / {len(mine)}"])
    return table


def markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    return "\n".join(lines)


def build_report(study, out: str | Path, *, title: str | None = None) -> tuple[dict, str]:
    """Write ``report.html``, ``report.md`` and the PNGs into ``out``; return (paths, the table as Markdown)."""
    from optimlab.sweep.runner import best_per_optimizer, trials_table

    rows = trials_table(study)
    best = best_per_optimizer(study)
    table = best_table(rows, best)
    config = study.user_attrs.get("config", {})
    report = Report(title or f"Sweep {study.study_name!r}")
    n_pruned = sum(r["state"] == "PRUNED" for r in rows)
    report.text(f"{len(rows)} finished trials ({n_pruned} pruned or diverged) of the lectures' CNN on "
                f"{config.get('dataset', '?')}, {config.get('epochs', '?')} epoch(s) each, searched by "
                f"{config.get('sampler', '?')} over optimizer × learning rate × schedule × batch size × seed "
                f"(Optuna study `{study.study_name}`). The score is the best validation loss of a run; "
                f"hopeless runs were pruned from their per-epoch validation loss ({config.get('pruner', '?')} pruner).")
    report.table("Best configuration per optimizer", HEADER, table,
                 note="val acc at the epoch of the best validation loss; trials: completed / pruned")
    by_lr = {}
    for name in sorted({r["optimizer"] for r in rows}):
        points = sorted((r["lr"], r["value"] if r["value"] is not None else r["last_val_loss"])
                        for r in rows if r["optimizer"] == name)
        points = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
        if points:
            by_lr[name] = ([p[0] for p in points], [p[1] for p in points])
    if by_lr:
        report.chart("val_loss_vs_lr", "Validation loss against learning rate, per optimizer", by_lr,
                     xlabel="learning rate", ylabel="validation loss (best epoch; pruned: last)", log_x=True)
    ordered = sorted(rows, key=lambda r: r["number"])
    xs, values, best_so_far, running = [], [], [], math.inf
    for r in ordered:
        v = r["value"] if r["value"] is not None else r["last_val_loss"]
        if r["state"] == "COMPLETE" and r["value"] is not None:
            running = min(running, r["value"])
        xs.append(r["number"])
        values.append(v)
        best_so_far.append(running if math.isfinite(running) else None)
    if xs:
        report.chart("history", "Sweep history: every trial and the best so far",
                     {"trial": (xs, values), "best so far": (xs, best_so_far)},
                     xlabel="trial", ylabel="validation loss")
    all_rows = [[f"#{r['number']}", r["state"].lower(), r["optimizer"], f"{r['lr']:.3g}", r["schedule"],
                 str(r["batch_size"]), str(r["seed"]), _fmt(r["value"]), _fmt(r.get("val_acc")),
                 _fmt(r.get("duration_s"), 1)] for r in ordered]
    report.table("All trials", ["trial", "state", "optimizer", "lr", "schedule", "batch", "seed", "val loss",
                                "val acc", "seconds"], all_rows)
    paths = report.write(out)
    return paths, markdown_table(table)
