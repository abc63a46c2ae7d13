"""The benchmark's report, built from the run store alone.

>>> from optimlab.benchmark.report import build_report
>>> report, summary = build_report("bench/runs.sqlite", "bench/")   # doctest: +SKIP

Sections: what was run (and what is missing), the protocol (search spaces, workloads), per
workload the results table (test and validation means with 95% Student-t intervals over the
confirm seeds, steps- and seconds-to-target against an AlgoPerf-style target), tunability
(Sivaprasad et al. 2020), learning-rate sensitivity, performance profiles (Dolan & Moré 2002)
and convergence curves. The numbers come from :mod:`optimlab.benchmark.measures`; the runs
from :mod:`optimlab.benchmark.results`.
"""

from __future__ import annotations

import math
import re
import statistics

from optimlab.benchmark import measures as M
from optimlab.benchmark.results import BASELINES, Benchmark, load, metric_key, profile_costs, workload_table
from optimlab.report import Report

PROFILE_HELP = (
    "How to read a performance profile (Dolan & Moré 2002): each workload is one problem; an "
    "optimizer's cost on it is divided by the best optimizer's cost there, giving a ratio τ ≥ 1 "
    "(1: it was the best). The curve ρ(τ) is the fraction of workloads on which the optimizer's "
    "ratio is at most τ. Read ρ(1) as the share of workloads it won (ties count for each), the "
    "height at the right edge as the share it finished at all (did not diverge, reached the target), "
    "and the τ where a curve reaches a height as how far behind the best it is there. Higher and "
    "further left is better. Costs: median steps to reach the target over the confirm seeds (a seed "
    "that never reached it counts as infinite, so the median is infinite when half the seeds or more "
    "did not reach it); and the median final test cost over the seeds: the loss for loss workloads, "
    "1 − accuracy (the error) for accuracy workloads.")

TUNABILITY_HELP = (
    "**Tunability** (Sivaprasad et al. 2020, *Optimizer benchmarking needs to account for hyperparameter "
    "tuning*): the expected best final validation result of k tuning trials drawn at random, without "
    "replacement, from the trials that were run, computed exactly over every k-subset. At k = 1 it is the "
    "average trial (what one untuned try gives); at the full budget it is the best trial. An optimizer whose "
    "curve rises early is easy to tune. A diverged trial counts as the worst finished trial of its optimizer.")


def build_report(store_path, out_dir, benchmark: str | None = None) -> tuple[Report, str]:
    """Build the report of benchmark ``benchmark`` (its id; None: the newest benchmark in the store)
    from the run store at ``store_path`` (read-only: the file is not changed) and write
    ``report.html`` (self-contained, interactive plotly charts), ``report.md`` and one PNG per chart
    into ``out_dir``; every file is written whole or not at all. An unfinished benchmark is
    reported with the runs that exist and says what is missing.

    Returns ``(report, summary)``: the :class:`~optimlab.report.Report` and a Markdown summary to
    print (completeness and the per-workload tables). Raises ``ValueError`` naming the store when
    it holds no benchmark or not ``benchmark``; ``FileNotFoundError`` when there is no store.
    """
    bm = load(store_path, benchmark)
    keys = _Keys()
    r = Report(f"Optimizer benchmark {bm.bid}")
    printed = [_what_was_run(r, bm)]
    printed.append(_summary(r, bm))
    _protocol(r, bm)
    for w in bm.workloads:
        printed.append(_workload(r, bm, w))
    r.text(TUNABILITY_HELP)
    for w in bm.workloads:
        _tunability(r, bm, w, keys)
    _lr_sensitivity(r, bm, keys)
    _profiles(r, bm, keys)
    r.text("**Convergence**: the validation metric at every evaluation of each optimizer's first confirm seed "
           "(the selected setting), with the workload's target.")
    for w in bm.workloads:
        _convergence(r, bm, w, keys)
    r.write(out_dir)
    return r, "\n\n".join(printed)


# --------------------------------------------------------------------------- formatting
class _Keys:
    """Unique, filesystem-safe chart keys (they name the PNGs)."""

    def __init__(self):
        self.used: set[str] = set()

    def __call__(self, *parts: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]+", "-", "-".join(parts)).strip("-") or "chart"
        key, i = base, 2
        while key in self.used:
            key, i = f"{base}-{i}", i + 1
        self.used.add(key)
        return key


def _num(v, digits: int = 4) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _text(v) -> str:
    return "—" if v is None or v == "" else str(v)


def _ci(ci: M.Interval) -> str:
    if ci.mean is None:
        return "—"
    return _num(ci.mean) + (f" ± {_num(ci.half_width, 2)}" if ci.half_width is not None else "") + f" (n={ci.n})"


def _params(params: dict) -> str:
    return ", ".join(f"{k}={_num(v, 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
                     for k, v in params.items()) or "—"


def _duration(seconds) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d} ({seconds:.0f} s)"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _metric_name(w: dict) -> str:
    return "accuracy" if w.get("metric") == "accuracy" else "loss"


# --------------------------------------------------------------------------- 1. what was run
def _what_was_run(r: Report, bm: Benchmark) -> str:
    c, m = bm.config, bm.config.get("machine", {})
    W, O, T, S = len(bm.workloads), len(bm.optimizers), int(c.get("trials") or 0), len(bm.seeds)
    expected, done = W * O * (T + S), len(bm.runs)
    loads = [x.load for x in bm.runs if x.load is not None]
    end_load = bm.summary.get("load")
    compute = sum(x.wall_s or 0.0 for x in bm.runs)
    hosts: dict[str, int] = {}
    for x in bm.runs:
        hosts[x.host or "?"] = hosts.get(x.host or "?", 0) + 1
    facts = [
        ("Benchmark", bm.bid), ("Run store", str(bm.store)), ("Preset", _text(c.get("preset"))),
        ("Budget", _text(c.get("budget"))),
        ("Share of each workload's declared step budget run", _text(c.get("fraction"))
         + " (the workloads table below gives the steps run)"),
        ("Trials per optimizer and workload", str(T)),
        ("Seeds of the selected setting", ", ".join(map(str, bm.seeds)) or "—"),
        ("Sampler", _text(c.get("sampler"))), ("Learning-rate schedule (tuned trials)", _text(c.get("schedule"))),
        ("CPU", f"{_text(m.get('cpu'))} ({_text(m.get('cores'))} cores) on {_text(m.get('host'))}"),
        ("Platform", f"{_text(m.get('platform'))}, torch {_text(m.get('torch'))}"),
        ("Workers × threads per worker", f"{_text(m.get('workers'))} × {_text(m.get('threads_per_worker'))}"),
        ("Load average at the end (1, 5, 15 min)", ", ".join(_num(x, 3) for x in end_load) if end_load else "—"),
        ("1-minute load when runs started (median, max)",
         f"{statistics.median(loads):.2f}, {max(loads):.2f}" if loads else "—"),
        ("Wall time (invocations that ran to the end)", _duration(bm.summary.get("wall_s"))
         if bm.summary.get("wall_s") is not None else "— (the benchmark has not finished)"),
        ("Elapsed, first run started to last run finished", _duration(bm.span)),
        ("Training time, all runs", _duration(compute)),
        ("Hosts that ran the runs (runs)", ", ".join(f"{h} ({n})" for h, n in sorted(hosts.items())) or "—"),
        ("Status", f"{bm.status}: {done} of {expected} runs finished "
                   f"({W} workloads × {O} optimizers × ({T} trials + {S} seeds))"
                   + (f"; left out: {bm.unfinished} run{'' if bm.unfinished == 1 else 's'} that did not finish "
                      "(killed, or still running; a killed trial is run again)" if bm.unfinished else "")
                   + (f"; {bm.duplicates} duplicate run{'' if bm.duplicates == 1 else 's'} of the same trial and "
                      "seed (e.g. merged stores of two independent runs): the newest kept" if bm.duplicates else "")),
    ]
    missing = []
    for w in bm.workloads:
        for o in bm.optimizers:
            t, s = len(bm.of(w["name"], o, "tune")), len(bm.of(w["name"], o, "confirm"))
            if t < T or s < S:
                missing.append([w["name"], o, f"{t}/{T}", f"{s}/{S}"])
    r.text(f"What was run: {W} workloads, {O} optimizers, {T} tuning trials each and the selected setting "
           f"re-run on {S} seeds. Every number below is read from the run store.")
    r.table("What was run", ["", "value"], [list(f) for f in facts])
    if missing:
        r.table("Missing runs: this benchmark is incomplete",
                ["workload", "optimizer", "tuning trials", "confirm seeds"], missing, note=f"{expected - done} runs missing. The results below use the runs that exist.")
        status = f"**Incomplete**: {done} of {expected} runs finished; {expected - done} missing."
    else:
        status = f"Complete: all {expected} runs finished."
    r.text(status)
    return f"Benchmark {bm.bid}: {status}"


# --------------------------------------------------------------------------- 2. the protocol
def _protocol(r: Report, bm: Benchmark) -> None:
    rows = []
    for o in bm.optimizers:
        for p in bm.config.get("spaces", {}).get(o, []):
            log = p.get("log", False)
            rows.append([o, p.get("name", "?"), f"{_num(p.get('low'), 6)} … {_num(p.get('high'), 6)}",
                         "log" if log else "linear", _num(p.get("default"), 3)])
    r.table("Search spaces", ["optimizer", "parameter", "range", "scale", "default"], rows,
            note="Each optimizer's trials are quasi-random (Sobol) points of its own space; the same number for every "
                 "optimizer.")
    rows = [[w["name"], _brief(w.get("model")), _brief(w.get("data")), _metric_name(w),
             "higher is better" if w.get("mode") == "max" else "lower is better", _text(w.get("batch_size")),
             _text(w.get("steps")), f"every {w.get('eval_every', '—')} steps", _text(w.get("source")),
             _num(w.get("optimum")) if w.get("optimum") is not None else "—"] for w in bm.workloads]
    r.table("Workloads", ["workload", "model", "data", "metric", "direction", "batch", "steps", "evaluated",
                          "source", "optimum"], rows)


def _brief(d) -> str:
    if not isinstance(d, dict):
        return "—" if d is None else str(d)
    for key in ("kind", "name", "type", "arch"):
        if key in d:
            rest = [f"{k}={v}" for k, v in d.items() if k != key and isinstance(v, (int, float, str))]
            return f"{d[key]}" + (f" ({', '.join(rest)})" if rest else "")
    return ", ".join(f"{k}={v}" for k, v in d.items() if isinstance(v, (int, float, str))) or "—"


# --------------------------------------------------------------------------- 3. per workload
def _workload(r: Report, bm: Benchmark, w: dict) -> str:
    rows, tgt = workload_table(bm, w)
    name = _metric_name(w)
    header = ["optimizer", "selected setting (tuning trial)", f"test {name} (95% CI)", f"val {name} (95% CI)",
              "steps to target", "seconds to target", "diverged seeds"]
    table = []
    for row in rows:
        setting = _params(row.params) + (f" (trial {row.trial})" if row.trial is not None else "")
        if not row.confirmed and row.trial is not None:
            setting += ", not re-run yet"
        if tgt is None or not row.seeds:
            steps = secs = "—"
        else:
            reached = f"{row.reached}/{row.seeds} seeds reached"
            steps = (f"{row.median_steps:g} ({reached})" if math.isfinite(row.median_steps)
                     else f"median not reached ({reached})")
            secs = f"{row.median_seconds:.3g} s" if math.isfinite(row.median_seconds) else "—"
        table.append([row.optimizer, setting, _ci(row.test), _ci(row.val), steps, secs,
                      f"{row.diverged}/{row.seeds}" if row.seeds else "—"])
    note = _target_note(w, tgt, bm.optimizers) + (" Sorted by the mean test result, best first. Steps and seconds: medians over the "
                                   "confirm seeds, a seed that did not reach the target counting as never.")
    title = f"{w.get('title') or w['name']} ({w['name']})"
    if w.get("description"):
        r.text(f"**{title}**: {w['description']}")
    r.table(f"Results: {title}", header, table, note=note)
    return f"## {title}\n\n{_markdown_table(header, table)}\n\n{_target_note(w, tgt, bm.optimizers)}"


def _summary(r: Report, bm: Benchmark) -> str:
    """One line per optimizer: its mean test result on every workload, with its rank there."""
    tables = {w["name"]: workload_table(bm, w)[0] for w in bm.workloads}
    header = ["optimizer"] + [f"{w['name']} test {_metric_name(w)}" for w in bm.workloads] + ["mean rank"]
    lines = []
    for o in bm.optimizers:
        cells, ranks = [], []
        for w in bm.workloads:
            ranked = [row for row in tables[w["name"]] if row.test.mean is not None]
            mine = next((row for row in ranked if row.optimizer == o), None)
            if mine is None:
                cells.append("—")
                continue
            rank = ranked.index(mine) + 1  # the table is sorted best first
            ranks.append(rank)
            cells.append(f"{_num(mine.test.mean)} ({rank})")
        mean_rank = sum(ranks) / len(ranks) if ranks else math.inf
        lines.append((mean_rank, [o, *cells, f"{mean_rank:.1f}" if ranks else "—"]))
    rows = [cells for _, cells in sorted(lines, key=lambda x: x[0])]
    note = ("The mean test result over the confirm seeds of the setting selected on the validation split, and in "
            "brackets the optimizer's rank on that workload (1 = best); sorted by the mean rank.")
    r.table("Summary across workloads", header, rows, note=note)
    return f"## Summary across workloads\n\n{_markdown_table(header, rows)}\n\n{note}"


def _target_note(w: dict, tgt, optimizers) -> str:
    if tgt is None:
        return "Target: none yet (no confirm run finished with a result)."
    op = "≥" if w["mode"] == "max" else "≤"
    present = [b for b in BASELINES if b in optimizers]
    where = (f"the median final validation {_metric_name(w)} of tuned {tgt.source}'s confirm seeds"
             + (f", the better of {' and '.join(present)}" if len(present) > 1 else "") if tgt.from_baselines else
             f"the best median final validation {_metric_name(w)} over all optimizers ({tgt.source}), since neither "
             f"{' nor '.join(BASELINES)} has one")
    return f"Target: validation {_metric_name(w)} {op} {tgt.value:.6g}, {where} (AlgoPerf's rule)."


# --------------------------------------------------------------------------- 4. tunability
def _tunability(r: Report, bm: Benchmark, w: dict, keys: _Keys) -> None:
    series = {}
    for o in bm.optimizers:
        vals = [x.val for x in bm.of(w["name"], o, "tune")]
        if vals:
            series[o] = (list(range(1, len(vals) + 1)), M.tunability_curve(vals, w["mode"]))
    r.chart(keys("tunability", w["name"]), f"Tunability on {w['name']}: expected best validation {_metric_name(w)} "
            f"after k trials", series, xlabel="trials k", ylabel=f"expected best val {_metric_name(w)}")


# --------------------------------------------------------------------------- 5. learning rate
def _lr_sensitivity(r: Report, bm: Benchmark, keys: _Keys) -> None:
    table = []
    for w in bm.workloads:
        series = {}
        for o in bm.optimizers:
            pairs = [(x.params["lr"], x.val) for x in bm.of(w["name"], o, "tune") if _positive(x.params.get("lr"))]
            if not pairs:
                continue
            s = M.lr_sensitivity(pairs, w["mode"])
            series[o] = ([p[0] for p in s.points], [p[1] for p in s.points])
            table.append([w["name"], o, _num(s.best_lr, 3), _num(s.best),
                          f"{_num(s.low, 3)} … {_num(s.high, 3)}" if s.low is not None else "—",
                          f"{s.decades:.2f}" if s.decades is not None else "—",
                          f"{s.near}/{len(s.points)}", str(s.failed)])
        r.chart(keys("lr", w["name"]), f"Learning-rate sensitivity on {w['name']}: final validation "
                f"{_metric_name(w)} of every tuning trial", series, xlabel="learning rate",
                ylabel=f"val {_metric_name(w)}", log_x=True, mode="markers")
    r.table("Learning-rate sensitivity", ["workload", "optimizer", "best lr", "best val", "near-best lr range",
                                          "width (decades)", "near-best / finished trials", "diverged trials"], table,
            note="Near-best: within 0.01 (absolute) of the best accuracy, or within 5% of the best loss. The width is "
                 "log10(high / low) of the near-best trials' learning rates; wider is easier to tune. The other "
                 "hyperparameters vary between trials too.")


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


# --------------------------------------------------------------------------- 6. performance profiles
def _profiles(r: Report, bm: Benchmark, keys: _Keys) -> None:
    steps, test = profile_costs(bm)
    r.text(PROFILE_HELP)
    for label, costs in (("steps to target", steps), ("final test cost", test)):
        if not any(costs.values()):
            r.text(f"Performance profile on {label}: no workload has the runs for it yet.")
            continue
        taus = M.profile_taus(costs)
        prof = M.performance_profile(costs, taus)
        r.chart(keys("profile", label), f"Performance profile: {label}", {o: (taus, prof[o]) for o in costs},
                xlabel="τ (ratio to the best optimizer)", ylabel="ρ(τ): fraction of workloads", log_x=True,
                mode="steps")
        ratios = M.performance_ratios(costs)
        problems = sorted({p for per in costs.values() for p in per})
        rows = [[o, *(_ratio(ratios[o][p]) for p in problems),
                 f"{sum(v == 1.0 for v in ratios[o].values())}/{len(problems)}",
                 f"{sum(math.isfinite(v) for v in ratios[o].values())}/{len(problems)}"] for o in costs]
        r.table(f"Performance ratios: {label}", ["optimizer", *problems, "best (ρ(1))", "solved (finite cost)"], rows)


def _ratio(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "failed"


# --------------------------------------------------------------------------- 7. convergence
def _convergence(r: Report, bm: Benchmark, w: dict, keys: _Keys) -> None:
    key, series, tgt = metric_key(w), {}, workload_table(bm, w)[1]
    for o in bm.optimizers:
        confirm = sorted(bm.of(w["name"], o, "confirm"), key=lambda x: x.seed)
        if confirm and confirm[0].rows:
            rows = confirm[0].rows
            series[f"{o} (seed {confirm[0].seed})"] = ([e.get("step") for e in rows], [e.get(key) for e in rows])
    steps = [x for xs, _ in series.values() for x in xs if x is not None]
    if tgt is not None and steps:
        series[f"target ({tgt.source})"] = ([min(steps), max(steps)], [tgt.value, tgt.value])
    r.chart(keys("convergence", w["name"]), f"Convergence on {w['name']}: validation {_metric_name(w)}, first confirm "
            "seed", series, xlabel="optimizer steps", ylabel=f"val {_metric_name(w)}",
            log_y=w.get("mode") == "min" and _all_positive(series))


def _all_positive(series: dict) -> bool:
    ys = [y for _, yy in series.values() for y in yy if y is not None]
    return bool(ys) and all(isinstance(y, (int, float)) and y > 0 for y in ys)
