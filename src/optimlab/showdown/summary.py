"""Turn showdown results into the comparison tables and the report."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

from optimlab.report import Report
from optimlab.showdown.recipes import LECTURE, class_label, PLACEHOLDERS

THRESHOLDS = (0.98, 0.99)

# Why a row can fall short of the lecture's number (shown under the table when one does).
BELOW_LECTURE = (
    "Where a row is below the lecture: the lecture names its network only as "
    "Conv2D → MaxPooling → Dropout → Dense and does not give its validation set. This model is exactly "
    "that (one 32-filter convolution, a linear head: 54k parameters, Keras's Glorot-uniform initialisation) "
    "validated on the 10,000 images held out of the training set. The lecture's 0.99+ for Adam is what larger "
    "variants reach (Keras's MNIST example has two convolutions and a 128-unit dense layer), so the lecture "
    "probably used more filters or layers than it names; training on all 60,000 images and validating on the "
    "test set does not close the gap (measured: Adagrad 0.9113, Adadelta 0.7941 after 10 epochs). Its text "
    "cannot tell us more. The order of the rows and the gaps between them are the comparison to read; the "
    "`--beyond` table shows how far tuning moves each row on this model.")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(mean, std=None, digits=4) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _reach(epochs: list[dict], threshold: float) -> tuple[int | None, float | None]:
    elapsed = 0.0
    for row in epochs:
        elapsed += row.get("time_s") or 0.0
        if (row.get("val_acc") or 0.0) >= threshold:
            return row["epoch"], elapsed
    return None, None


def row_stats(runs: list[dict]) -> dict:
    """Mean ± std over seeds of what the tables show, for one row."""
    last = [r["history"]["epochs"][-1] if r["history"]["epochs"] else {} for r in runs]
    stats = {"label": runs[0]["label"], "recipe": runs[0]["recipe"], "seeds": len(runs),
             "val_acc": _mean_std([row.get("val_acc") for row in last]),
             "val_loss": _mean_std([row.get("val_loss") for row in last]),
             "seconds": _mean_std([sum(e.get("time_s") or 0 for e in r["history"]["epochs"]) for r in runs]),
             "gap": _mean_std([(r["eval_train_acc"] - row["val_acc"]) if row.get("val_acc") is not None else None
                               for r, row in zip(runs, last)]),
             "status": sorted({r["history"]["status"] for r in runs})}
    for t in THRESHOLDS:
        reached = [_reach(r["history"]["epochs"], t) for r in runs]
        stats[f"epochs_{t}"] = _mean_std([e for e, _ in reached])
        stats[f"seconds_{t}"] = _mean_std([s for _, s in reached])
        stats[f"reached_{t}"] = sum(e is not None for e, _ in reached)
    best = [min(r["history"]["epochs"], key=lambda e: e.get("val_loss") if e.get("val_loss") is not None else math.inf)
            ["epoch"] for r in runs if r["history"]["epochs"]]
    stats["best_epoch"] = _mean_std(best)
    return stats


def _reach_cell(stats: dict, t: float, kind: str) -> str:
    mean, std = stats[f"{kind}_{t}"]
    if mean is None:
        return "not reached"
    digits = 1
    cell = _fmt(mean, std, digits)
    return cell + (f" ({stats[f'reached_{t}']}/{stats['seeds']} seeds)" if stats[f"reached_{t}"] < stats["seeds"] else "")


def lecture_table(results: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes of the main table (our numbers beside the lecture's)."""
    header = ["Optimizer", "Lecture val acc", "Our val acc", "Lecture val loss", "Our val loss", "Lecture time",
              "Our time (s)", "Epochs to 98%", "Seconds to 98%", "Epochs to 99%", "Seconds to 99%", "Best epoch",
              "Train−val acc gap", "vs lecture"]
    rows, notes = [], []
    for key, runs in results.items():
        s = row_stats(runs)
        lec = LECTURE.get(key)
        acc_mean, acc_std = s["val_acc"]
        verdict = "—"
        if lec and acc_mean is not None:
            margin = acc_std or 0.0
            verdict = "matches or beats" if acc_mean + margin >= lec[1] else "below"
            if verdict == "below":
                notes.append(f"{s['label']}: {acc_mean:.4f} vs the lecture's {lec[1]:.4f} "
                             f"({', '.join(s['status'])}; {s['recipe']}).")
        rows.append([s["label"], f"{lec[1]:.4f}" if lec else "—", _fmt(*s["val_acc"]), f"{lec[2]:.4f}" if lec else "—",
                     _fmt(*s["val_loss"]), f"{lec[3] // 60}:{lec[3] % 60:02d} min" if lec else "—",
                     _fmt(*s["seconds"], digits=1), _reach_cell(s, 0.98, "epochs"), _reach_cell(s, 0.98, "seconds"),
                     _reach_cell(s, 0.99, "epochs"), _reach_cell(s, 0.99, "seconds"), _fmt(*s["best_epoch"], digits=1),
                     _fmt(*s["gap"]), verdict])
    return header, rows, notes


def _row_label(key: str, lecture: dict) -> str:
    """A row's name in the lecture table: its label there, the lecture's, or its key."""
    if lecture.get(key):
        return lecture[key][0]["label"]
    return LECTURE[key][0] if key in LECTURE else class_label(key)


def beyond_table(lecture: dict, beyond: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the second table: each row's recipe beside the same row at the lecture's
    defaults (any row: a lecture row or another optimizer's)."""
    header = ["Lecture row", "Recipe", "Val acc (recipe)", "Val acc (lecture defaults)", "Change", "Val loss",
              "Seconds to 99%", "What"]
    rows = []
    for key, runs in beyond.items():
        s, base = row_stats(runs), row_stats(lecture[key]) if key in lecture else None
        change = (f"{s['val_acc'][0] - base['val_acc'][0]:+.4f}"
                  if base and s["val_acc"][0] is not None and base["val_acc"][0] is not None else "—")
        rows.append([_row_label(key, lecture), s["label"], _fmt(*s["val_acc"]), _fmt(*base["val_acc"]) if base else "—", change,
                     _fmt(*s["val_loss"]), _reach_cell(s, 0.99, "seconds"), s["recipe"]])
    return header, rows


def beyond_notes(lecture: dict, beyond: dict) -> list[str]:
    """What the beyond table leaves out (rows with no known recipe) and what its schedules' names mean."""
    notes = []
    missing = [_row_label(k, lecture) for k in lecture if k not in beyond]
    if missing:
        notes.append(f"No known recipe for {', '.join(missing)}: not in this table "
                     "(optimlab.showdown.BEYOND holds the recipes).")
    used = [name for name in PLACEHOLDERS
            if any(re.search(rf"\b{name}\b", runs[0]["recipe"]) for runs in beyond.values())]
    if used:
        notes.append("In the recipes: " + "; ".join(f"{n} = {PLACEHOLDERS[n]}" for n in used) + ".")
    return notes


def _smooth(values: list, weight: float = 0.9) -> list:
    out, avg = [], None
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        avg = v if avg is None else weight * avg + (1 - weight) * v
        out.append(avg)
    return out


def _series(results: dict, getter) -> dict:
    """One line per row, from the first seed's history (two rows with one label: each named by its key too)."""
    series = {}
    for key, runs in results.items():
        h = runs[0]["history"]
        x, y = getter(h)
        label = runs[0]["label"]
        series[label if label not in series else f"{label} ({key})"] = (x, y)
    return series


def _update_ratio(step: dict) -> float | None:
    ratios = [v for k, v in step.items() if k.startswith("update_ratio/") and v is not None]
    return statistics.fmean(ratios) if ratios else None


def _below(notes: list[str]) -> str:
    return "Below the lecture's accuracy: " + " ".join(notes)


def build_report(results: dict, meta: dict, out: str | Path) -> tuple[Report, str]:
    """Write report.html / report.md / PNGs into ``out``; return the report and the printed table."""
    lecture = results.get("lecture", {})
    header, rows, notes = lecture_table(lecture)
    r = Report(f"Optimizer showdown on {meta['dataset']}")
    r.text(meta["description"])
    r.table("Against the lecture's table", header, rows,
            note=(_below(notes) + " " + BELOW_LECTURE) if notes
            else "Every row matches or beats the lecture (within one std over seeds).")
    printed = _markdown_table(header, rows) + ("\n\n" + _below(notes) if notes else "")
    if "beyond" in results:
        bh, br = beyond_table(lecture, results["beyond"])
        bnotes = " ".join(beyond_notes(lecture, results["beyond"]))
        r.table("Beyond the lecture: the best known recipe per optimizer, same budget", bh, br, note=bnotes)
        printed += "\n\nBeyond the lecture:\n" + _markdown_table(bh, br) + (f"\n\n{bnotes}" if bnotes else "")
    every = {**{k: v for k, v in lecture.items()},
             **{f"beyond-{k}": v for k, v in results.get("beyond", {}).items()}}
    epoch = lambda key: (lambda h: ([e["epoch"] for e in h["epochs"]], [e.get(key) for e in h["epochs"]]))  # noqa: E731
    step = lambda fn: (lambda h: ([s["step"] for s in h["steps"]], fn(h["steps"])))  # noqa: E731
    r.chart("val_acc", "Validation accuracy per epoch", _series(every, epoch("val_acc")), xlabel="epoch", ylabel="accuracy")
    r.chart("val_loss", "Validation loss per epoch", _series(every, epoch("val_loss")), xlabel="epoch",
            ylabel="cross-entropy", log_y=True)
    r.chart("train_loss", "Training loss per step (smoothed)", _series(every, step(lambda s: _smooth([x.get("loss") for x in s]))),
            xlabel="step", ylabel="cross-entropy", log_y=True)
    r.chart("lr", "Learning rate", _series(every, step(lambda s: [x.get("lr") for x in s])), xlabel="step",
            ylabel="learning rate", log_y=True)
    r.chart("grad_norm", "Global gradient norm", _series(every, step(lambda s: [x.get("grad_norm") for x in s])),
            xlabel="step", ylabel="‖g‖", log_y=True)
    r.chart("update_ratio", "Update-to-weight ratio (mean over layers; rule of thumb 1e-3 to 1e-2)",
            _series(every, step(lambda s: [_update_ratio(x) for x in s])), xlabel="step", ylabel="‖Δθ‖/‖θ‖", log_y=True)
    r.write(out)
    return r, printed


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
