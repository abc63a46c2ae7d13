"""A benchmark's runs read back from the run store, and the numbers the report shows.

:func:`load` reads the store read-only (nothing is written) into a :class:`Benchmark`: the
benchmark's meta run and its finished training runs, one per (workload, optimizer, phase,
trial, seed), the newest where a killed trial was run again. Runs still running, dead,
stale, interrupted or incomplete are left out (and counted). :func:`workload_table` and
:func:`profile_costs` turn those runs into the per-workload results with
:mod:`optimlab.benchmark.measures`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from optimlab.benchmark import measures as M

FINISHED = ("completed", "nonfinite", "early_stopped", "stopped")
BASELINES = ("adam", "momentum")  # the runner's names for tuned Adam and tuned SGD with momentum


@dataclass
class Run:
    """One finished training run of the benchmark (a tuning trial or a confirm re-run).
    ``val``/``test``: final validation / test metric, None when the run diverged."""

    run_id: str
    workload: str
    optimizer: str
    phase: str
    trial: int
    seed: int
    params: dict
    status: str
    val: float | None
    test: float | None
    wall_s: float | None
    load: float | None  # 1-minute load average when the run started
    selected_trial: int | None = None
    host: str | None = None
    rows: list = field(default_factory=list)  # epoch rows (partial epochs left out)


@dataclass
class Benchmark:
    """The meta run's configuration (``config``), status and summary, and the finished runs."""

    bid: str
    store: Path
    config: dict
    status: str
    summary: dict
    runs: list[Run]
    unfinished: int  # runs of this benchmark left out: running, dead, stale, interrupted, incomplete
    duplicates: int = 0  # finished runs of a trial and seed already read (the newest is kept)
    span: float | None = None  # seconds from the first run's start to the last finished run's last write

    @property
    def workloads(self) -> list[dict]:
        return list(self.config.get("workloads", []))

    @property
    def optimizers(self) -> list[str]:
        return list(self.config.get("optimizers", []))

    @property
    def seeds(self) -> list[int]:
        seeds = self.config.get("seeds", [])
        return list(range(1, seeds + 1)) if isinstance(seeds, int) else list(seeds)

    def of(self, workload: str, optimizer: str, phase: str) -> list[Run]:
        """The runs of one cell and phase, by trial then seed."""
        return sorted((r for r in self.runs if (r.workload, r.optimizer, r.phase) == (workload, optimizer, phase)),
                      key=lambda r: (r.trial, r.seed))


def metric_key(workload: dict) -> str:
    """The epoch rows' key for the workload's validation metric."""
    return "val_acc" if workload.get("metric") == "accuracy" else "val_loss"


def _float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _epochs(store, run_ids: list[str]) -> dict[str, list[dict]]:
    """Every run's epoch rows in a few queries (``RunStore.run`` per run re-reads every run)."""
    out: dict[str, list[dict]] = {r: [] for r in run_ids}
    for i in range(0, len(run_ids), 500):
        chunk = run_ids[i:i + 500]
        sql = f"SELECT run_id, data FROM epochs WHERE run_id IN ({','.join('?' * len(chunk))}) ORDER BY run_id, epoch"
        for rid, data in store.conn.execute(sql, chunk):
            out[rid].append(json.loads(data))
    return out


def load(store_path, benchmark: str | None = None) -> Benchmark:
    """Read benchmark ``benchmark`` (its id, ``bm-...``; None: the newest benchmark) from the run
    store at ``store_path``, read-only. Raises ``FileNotFoundError`` for a missing store and
    ``ValueError`` naming the store when it holds no benchmark, or not the one asked for."""
    from optimlab.store import RunStore

    store = RunStore(store_path, readonly=True)
    try:
        every = store.runs()  # newest first
        metas = [r for r in every if r["name"] == "benchmark" and r["config"].get("kind") == "benchmark"]
        if not metas:
            raise ValueError(f"no benchmark in the run store {store.path}")
        if benchmark is None:
            meta = metas[0]
        else:
            meta = next((m for m in metas if benchmark in (m["run_id"], m["config"].get("benchmark"))), None)
            if meta is None:
                known = ", ".join(m["run_id"] for m in metas)
                raise ValueError(f"no benchmark {benchmark!r} in the run store {store.path} (it holds: {known})")
        bid = meta["config"].get("benchmark", meta["run_id"])
        config = meta["config"]
        keys = {w["name"]: metric_key(w) for w in config.get("workloads", [])}
        optimizers = config.get("optimizers", [])
        mine = [r for r in every if r["run_id"] != meta["run_id"] and r["config"].get("benchmark") == bid
                and r["config"].get("workload") in keys and r["config"].get("optimizer") in optimizers]
        finished, seen, duplicates = [], set(), 0
        for r in mine:
            if r["status"] not in FINISHED:
                continue
            c = r["config"]
            key = (c["workload"], c["optimizer"], c.get("phase"), c.get("trial"), c.get("seed"))
            if key not in seen:  # newest first: a trial run again keeps its newest finished run
                seen.add(key)
                finished.append(r)
            else:
                duplicates += 1
        rows = _epochs(store, [r["run_id"] for r in finished])
        runs = [_run(r, [e for e in rows[r["run_id"]] if not e.get("partial")], keys[r["config"]["workload"]])
                for r in finished]
        unfinished = sum(r["status"] not in FINISHED for r in mine)
        span = (max(r["updated"] for r in finished) - min(r["created"] for r in mine)) if finished else None
        return Benchmark(bid, store.path, config, meta["status"], meta["summary"], runs, unfinished, duplicates, span)
    finally:
        store.close()


def _run(r: dict, rows: list[dict], key: str) -> Run:
    c, s = r["config"], r["summary"]
    if r["status"] == "nonfinite":
        val = test = None  # diverged: a finished, worst-possible result
    else:
        val = _float(s["val_metric"]) if "val_metric" in s else M.final_value(rows, key)
        test = _float(s.get("test_metric"))
    load = c.get("load") or [None]
    return Run(r["run_id"], c["workload"], c["optimizer"], c.get("phase", "tune"), int(c.get("trial", 0)),
               int(c.get("seed", 0)), dict(c.get("params") or {}), r["status"], val, test, _float(s.get("wall_s")),
               _float(load[0]), c.get("selected_trial"), r.get("host"), rows)


# --------------------------------------------------------------------------- per-workload results
@dataclass
class Row:
    """One optimizer's line in a workload's table."""

    optimizer: str
    params: dict
    trial: int | None  # the selected tuning trial
    confirmed: bool  # False: selected from the tuning trials, not re-run yet
    test: M.Interval
    val: M.Interval
    diverged: int
    seeds: int
    steps: list  # steps-to-target per confirm seed (None: not reached)
    seconds: list

    @property
    def median_steps(self) -> float:
        return M.median_cost(self.steps)

    @property
    def median_seconds(self) -> float:
        return M.median_cost(self.seconds)

    @property
    def reached(self) -> int:
        return sum(s is not None for s in self.steps)


@dataclass
class Target:
    value: float
    source: str  # the optimizer whose median it is
    from_baselines: bool  # False: no baseline had a finite median; the best of all optimizers


def workload_target(bm: Benchmark, w: dict) -> Target | None:
    """AlgoPerf's target for workload ``w`` from the confirm runs (:func:`measures.target`): the
    better median of tuned ``adam`` and ``momentum``; without either, the best median of all."""
    vals = {o: [r.val for r in bm.of(w["name"], o, "confirm")] for o in bm.optimizers}
    base = {o: vals[o] for o in BASELINES if vals.get(o)}
    for pool, from_baselines in ((base, True), ({o: v for o, v in vals.items() if v}, False)):
        try:
            value, source = M.target(pool, w["mode"])
        except ValueError:
            continue
        return Target(value, source, from_baselines)
    return None


def workload_table(bm: Benchmark, w: dict) -> tuple[list[Row], Target | None]:
    """The rows of workload ``w``'s table, best test result first, and its target."""
    tgt, mode, key = workload_target(bm, w), w["mode"], metric_key(w)
    rows = []
    for o in bm.optimizers:
        confirm, tune = bm.of(w["name"], o, "confirm"), bm.of(w["name"], o, "tune")
        if confirm:
            first = confirm[0]
            params, trial = first.params, first.selected_trial if first.selected_trial is not None else first.trial
        elif tune:
            best = M.select_best([{"trial": r.trial, "val": r.val, "params": r.params} for r in tune], mode)
            params, trial = best["params"], best["trial"]
        else:
            params, trial = {}, None
        reach = [M.steps_to_target(r.rows, key, tgt.value, mode) if tgt else (None, None) for r in confirm]
        rows.append(Row(o, params, trial, bool(confirm), M.mean_ci([r.test for r in confirm]),
                        M.mean_ci([r.val for r in confirm]), sum(r.val is None for r in confirm), len(confirm),
                        [s for s, _ in reach], [t for _, t in reach]))
    sign = 1 if mode == "max" else -1
    rows.sort(key=lambda r: (r.test.mean is None, -sign * (r.test.mean or 0.0), r.optimizer))
    return rows, tgt


def profile_costs(bm: Benchmark) -> tuple[dict, dict]:
    """Costs for the two performance profiles, optimizer -> workload -> cost: the median
    steps-to-target over the confirm seeds (not reached = inf; workloads with a target only),
    and the median final test cost (:func:`measures.metric_cost`: loss, or 1 - accuracy;
    a diverged seed = inf; workloads with confirm runs only)."""
    steps: dict = {o: {} for o in bm.optimizers}
    test: dict = {o: {} for o in bm.optimizers}
    for w in bm.workloads:
        rows, tgt = workload_table(bm, w)
        confirmed = [r for r in rows if r.seeds]
        for r in rows:
            if tgt is not None:
                steps[r.optimizer][w["name"]] = r.median_steps if r.seeds else None
            if confirmed:
                runs = bm.of(w["name"], r.optimizer, "confirm")
                test[r.optimizer][w["name"]] = M.median_cost([M.metric_cost(x.test, w["mode"]) for x in runs])
    return steps, test
