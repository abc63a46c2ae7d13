"""The comparison table: one row per optimizer, as dicts or as a Markdown table."""

from __future__ import annotations

import math
from typing import Any

COLUMNS = ("optimizer", "lr", "lr from", "final loss", "distance to min", "steps to tol",
           "diverged", "status")


def rows(comparison) -> list[dict[str, Any]]:
    """One dict per trajectory with the keys of :data:`COLUMNS` (raw values, not strings)."""
    out = []
    for t in comparison.trajectories:
        out.append({
            "optimizer": t.label, "lr": t.lr, "lr from": t.lr_from, "final loss": t.final_loss,
            "distance to min": t.distance, "steps to tol": t.steps_to_tol,
            "diverged": t.diverged_at if t.diverged else False, "status": t.status,
        })
    return out


def _num(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _cells(row: dict[str, Any]) -> list[str]:
    diverged = row["diverged"]
    return [row["optimizer"], _num(row["lr"], 3), row["lr from"], _num(row["final loss"]),
            _num(row["distance to min"]),
            "—" if row["steps to tol"] is None else str(row["steps to tol"]),
            "no" if diverged is False else f"yes (step {diverged})", row["status"]]


def markdown(header: list[str], lines: list[list[str]]) -> str:
    """A Markdown table with padded columns."""
    table = [header, *lines]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in table]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def title(comparison) -> str:
    f = comparison.function
    settings = "".join(f", {k}={v:g}" for k, v in f.params.items())
    tol = "—" if comparison.tol is None or f.min_value is None else f"{comparison.tol:g}"
    rates = "tuned per optimizer (grid search)" if comparison.tuned else "not tuned (defaults or given)"
    noise = f"; gradient noise σ={comparison.noise:g} (seed {comparison.seed})" if comparison.noise else ""
    return (f"{f.name}{settings}: {comparison.steps} steps from ({comparison.start[0]:g}, "
            f"{comparison.start[1]:g}); tolerance on f − f*: {tol}; learning rates {rates}{noise}")


def format_table(comparison) -> str:
    """Title line, the table, then notes (divergence, start outside the domain, the lr search)."""
    text = [title(comparison), "", markdown(list(COLUMNS), [_cells(r) for r in rows(comparison)])]
    notes = [f"- {t.label}: {n}" for t in comparison.trajectories for n in t.notes()]
    for label, cands in comparison.candidates.items():
        tried = ", ".join(f"{c.lr:.3g} ({c.status}{'' if c.steps_to_tol is None else f' in {c.steps_to_tol}'})"
                          for c in cands)
        notes.append(f"- {label}: rates tried {tried}")
    if notes:
        text += ["", *notes]
    return "\n".join(text)
