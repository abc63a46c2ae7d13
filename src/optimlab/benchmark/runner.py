"""Running a benchmark on Optuna: one study per workload × optimizer × phase, workers that share them.

Phases. ``tune``: created with exactly ``trials`` queued trials, the optimizer's Sobol points
(or its defaults for ``one-shot``), all at seed 0; ``confirm``: created by whichever worker
first finds the tuning finished, with one queued trial per seed 1..``seeds`` at the setting
selected on the validation split (:func:`optimlab.benchmark.measures.select_best`).

Workers (``workers`` processes here, or the same command on other machines against one
``storage``) only ever take queued trials, so every optimizer gets exactly the same number
of trials however many workers run; a worker that takes a trial another took first marks
its own ``unused`` and moves on. Each worker is pinned to its own cores
(``os.sched_setaffinity``) with a fixed torch thread count: workers never share a core.

Every training run goes into the run store (``fit(..., store=)``) with the test split's
result added afterwards; the report is built from the store alone. A run checkpoints after
every evaluation; a worker killed mid-trial leaves the trial ``RUNNING``: the next start on
this machine marks it failed and queues the same trial again (same number, same setting,
same seed), which resumes from the checkpoint, so no trial is lost or counted twice.
The order of the writes makes every kill point safe: ``fit`` writes an epoch's checkpoint
before the epoch's store row (a run the store shows past an evaluation resumes under its
id); a trial's checkpoint is deleted only after its test result is in the store, and a
re-queued trial the store already holds finished and recorded is not trained again (a kill
between deleting the checkpoint and telling Optuna). A kill before a run's first evaluation
leaves its row ``dead`` (nothing to resume) and the trial starts afresh under a new id.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path

from optimlab.benchmark.config import BenchmarkConfig

PHASES = ("tune", "confirm")


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def machine(cfg: BenchmarkConfig) -> dict:
    """What the report states about where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torch

    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu, "cores": len(_cores()),
            "torch": torch.__version__, "python": platform.python_version(), "workers": cfg.workers,
            "threads_per_worker": cfg.threads_per_worker}


def study_name(bid: str, workload: str, optimizer: str, phase: str) -> str:
    return f"{bid}:{workload}:{optimizer}:{phase}"


def _quiet_optuna():
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _create(storage, name: str, fill) -> object:
    """Create study ``name`` and queue its trials (``fill(study)``) — exactly one process
    succeeds — or load it and wait until its creator has finished queueing."""
    optuna = _quiet_optuna()
    sampler = optuna.samplers.RandomSampler(seed=0)  # never used: every trial is queued
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    else:
        fill(study)
        study.set_user_attr("ready", True)
    deadline = time.monotonic() + 120
    while not study.user_attrs.get("ready"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {name!r} exists but its creator never finished queueing its trials")
        time.sleep(0.2)
    return study


def _load(storage, name: str):
    optuna = _quiet_optuna()
    try:
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler(seed=0))
    except KeyError:
        return None
    return study if study.user_attrs.get("ready") else None


def tune_points(cfg: BenchmarkConfig, optimizer: str) -> list[dict]:
    """The settings every workload tunes ``optimizer`` over (the same points on every workload)."""
    from optimlab.benchmark import space

    if cfg.budget == "one-shot":
        return [space.defaults(optimizer)]
    return space.sobol_points(cfg.space(optimizer), cfg.trials, cfg.sampler_seed)


def open_tune_studies(cfg: BenchmarkConfig, storage) -> dict[tuple[str, str], object]:
    """Every tuning study of the benchmark (created with its queued trials on first use)."""
    bid, studies = cfg.benchmark_id, {}
    for o in cfg.optimizers:
        points = tune_points(cfg, o)

        def fill(study, points=points):
            for number, point in enumerate(points):
                study.enqueue_trial({}, user_attrs={"queued": True, "origin": number, "point": point, "seed": 0})

        for w in cfg.workloads:
            studies[(w, o)] = _create(storage, study_name(bid, w, o, "tune"), fill)
    return studies


def _finished(study) -> list:
    """The study's finished trials, one per origin (a retried trial counts once)."""
    optuna = _quiet_optuna()
    S = optuna.trial.TrialState
    done = {}
    for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED)):
        done.setdefault(t.user_attrs.get("origin", t.number), t)
    return list(done.values())


def _open_confirm(cfg: BenchmarkConfig, storage, tune, workload: str, optimizer: str):
    """The confirm study once tuning is finished (creating it, with the selected setting), else None."""
    from optimlab.benchmark import measures

    name = study_name(cfg.benchmark_id, workload, optimizer, "confirm")
    study = _load(storage, name)
    if study is not None:
        return study
    finished = _finished(tune)
    if len(finished) < cfg.trials:
        return None
    mode = cfg.workload(workload).mode
    trials = [{"trial": t.user_attrs["origin"], "val": t.user_attrs.get("val"), "point": t.user_attrs["point"]}
              for t in finished]
    best = measures.select_best(trials, mode)

    def fill(study):
        for seed in range(1, cfg.seeds + 1):
            study.enqueue_trial({}, user_attrs={"queued": True, "origin": seed - 1, "point": best["point"],
                                                "seed": seed, "selected_trial": best["trial"]})

    return _create(storage, name, fill)


# --------------------------------------------------------------------------- one training run
def _record(store: str, run_id: str | None, extra: dict) -> None:
    """Add the test result and timing to the run's summary in the store."""
    from optimlab.store import RunStore

    if run_id is None:
        return
    db = RunStore(store)
    try:
        run = db.run(run_id)
        db.finish_run(run_id, status=run["stored_status"], summary={**run["summary"], **extra},
                      stop=run["stop"], diagnoses=run["diagnoses"])
    finally:
        db.close()


def _recorded(store: str, name: str) -> dict | None:
    """The newest finished run named ``name`` whose test result :func:`_record` added, else None."""
    from optimlab.benchmark.results import FINISHED
    from optimlab.store import RunStore

    if not Path(store).is_file():
        return None
    db = RunStore(store, readonly=True)
    try:
        return next((r for r in db.runs(name=name) if r["status"] in FINISHED and "val_metric" in r["summary"]),
                    None)
    finally:
        db.close()


def run_job(cfg: BenchmarkConfig, workload: str, optimizer: str, phase: str, trial: int, point: dict, seed: int,
            *, selected_trial: int | None = None, cpus=()) -> float | None:
    """Train one setting on one workload (resuming from its checkpoint); return the final
    validation metric (None when the run diverged). A trial whose run the store already holds
    finished, with its test result, is not trained again: its worker was killed after recording
    it (and deleting its checkpoint) but before telling Optuna, which queued the trial again."""
    import torch

    from optimlab.benchmark import space
    from optimlab.train import fit

    bid = cfg.benchmark_id
    tag = f"{workload}-{optimizer}-{phase}{trial}-s{seed}"
    ckpt = Path(cfg.out) / "checkpoints" / f"{bid}-{tag}.pt"
    done = _recorded(cfg.store_path, f"{bid}/{tag}")
    if done is not None:
        ckpt.unlink(missing_ok=True)
        return done["summary"]["val_metric"]
    w = cfg.workload(workload)
    splits = w.data()
    torch.manual_seed(seed)
    model = w.model()
    opt, schedule = space.build(optimizer, point, model.parameters(), w.steps, one_shot=cfg.budget == "one-shot")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    load = list(os.getloadavg())
    started = time.perf_counter()
    config = {"benchmark": bid, "workload": workload, "optimizer": optimizer, "phase": phase, "trial": trial,
              "params": point, "seed": seed, "threads": torch.get_num_threads(), "cpus": list(cpus), "load": load}
    if selected_trial is not None:
        config["selected_trial"] = selected_trial
    history = fit(model, opt, {"train": w.batches(splits["train"]), "val": splits["val"]},
                  epochs=w.steps // w.eval_every, batch_size=w.batch_size, loss=w.loss, schedule=schedule,
                  seed=seed, checkpoint=ckpt, resume=True, on_nonfinite="stop", quiet=True,
                  store=cfg.store_path, name=f"{bid}/{tag}", config=config)
    key = "val_acc" if w.metric == "accuracy" else "val_loss"
    rows = [r for r in history.epochs if not r.get("partial")]
    val = rows[-1].get(key) if rows and history.status != "nonfinite" else None
    val = float(val) if val is not None and math.isfinite(val) else None
    test = w.evaluate(model, splits["test"]) if val is not None else {"loss": None, "accuracy": None, "metric": None}
    _record(cfg.store_path, history.run_id, {
        "val_metric": val, "test_metric": test["metric"], "test_loss": test["loss"],
        "test_accuracy": test["accuracy"], "wall_s": time.perf_counter() - started, "load_end": list(os.getloadavg())})
    ckpt.unlink(missing_ok=True)
    return val


# --------------------------------------------------------------------------- workers
def _take(study, optuna, url: str):
    """A queued trial of ``study`` for this worker, or None when none is waiting."""
    from optimlab.sweep.runner import ask_lock

    S = optuna.trial.TrialState
    if not study.get_trials(deepcopy=False, states=(S.WAITING,)):
        return None
    with ask_lock(url):  # one taker at a time: SQLite would let two take the same trial
        trial = study.ask()
    if not trial.user_attrs.get("queued"):  # another worker took the last queued trial first
        trial.set_user_attr("unused", True)
        study.tell(trial, state=S.FAIL)
        return None
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    return trial


def _run_trial(cfg, study, trial, workload, optimizer, phase, cpus, quiet, optuna) -> None:
    S = optuna.trial.TrialState
    a = trial.user_attrs
    try:
        val = run_job(cfg, workload, optimizer, phase, a["origin"], a["point"], a["seed"],
                      selected_trial=a.get("selected_trial"), cpus=cpus)
    except BaseException:
        study.tell(trial, state=S.FAIL)
        study.enqueue_trial({}, user_attrs={**{k: v for k, v in a.items() if k not in ("host", "pid")},
                                            "retry_of": trial.number, "queued": True})
        raise
    trial.set_user_attr("val", val)
    if val is None:
        study.tell(trial, state=S.PRUNED)  # diverged: a finished, worst-possible trial
    else:
        study.tell(trial, val)
    if not quiet:
        shown = f"{val:.4g}" if val is not None else "diverged"
        print(f"[{workload} · {optimizer} · {phase} {a['origin']} · seed {a['seed']}] {shown}",
              file=sys.stderr, flush=True)


def worker(cfg: BenchmarkConfig, index: int = 0, *, quiet: bool = True, cpus=None, poll: float = 1.0) -> int:
    """One worker's loop over every study until the benchmark is done; returns the trials it ran."""
    import torch

    from optimlab.sweep.runner import open_storage, recover_stale

    optuna = _quiet_optuna()
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(cfg.threads_per_worker)
    storage = open_storage(cfg.storage_url)
    tune = open_tune_studies(cfg, storage)
    pairs = list(tune)
    pairs = pairs[index % len(pairs):] + pairs[:index % len(pairs)]  # workers start on different pairs
    confirm: dict = {}
    for study in tune.values():
        recover_stale(study, cfg.storage_url)
    ran = 0
    while True:
        took, open_work = False, False
        for phase in PHASES:
            for w, o in pairs:
                if phase == "tune":
                    study = tune[(w, o)]
                else:
                    if (w, o) not in confirm:
                        found = _open_confirm(cfg, storage, tune[(w, o)], w, o)
                        if found is None:
                            open_work = True
                            continue
                        confirm[(w, o)] = found
                        recover_stale(found, cfg.storage_url)
                    study = confirm[(w, o)]
                if len(_finished(study)) < (cfg.trials if phase == "tune" else cfg.seeds):
                    open_work = True
                trial = _take(study, optuna, cfg.storage_url)
                if trial is not None:
                    _run_trial(cfg, study, trial, w, o, phase, cpus or (), quiet, optuna)
                    ran, took = ran + 1, True
                    break
            if took:
                break
        if took:
            continue
        if not open_work:
            return ran
        for study in [*tune.values(), *confirm.values()]:  # others are running what is left
            recover_stale(study, cfg.storage_url)
        time.sleep(poll)


def _worker_entry(cfg_dict: dict, index: int, quiet: bool, cpus) -> None:
    worker(BenchmarkConfig(**cfg_dict), index, quiet=quiet, cpus=cpus)


def _meta(cfg: BenchmarkConfig) -> dict:
    return {"kind": "benchmark", "benchmark": cfg.benchmark_id, "preset": cfg.preset, **cfg.protocol(),
            "machine": machine(cfg)}


def check_buildable(cfg: BenchmarkConfig) -> None:
    """Build every optimizer on every workload's model (at its defaults, and at its first Sobol
    point): an optimizer that cannot train a workload (Muon on a model without 2-D weights, ...)
    is a ``ValueError`` naming both, before anything is written. The caller's RNG is untouched."""
    import torch

    from optimlab.benchmark import space

    with torch.random.fork_rng(devices=[]):
        for name in cfg.workloads:
            w = cfg.workload(name)
            model = w.model()
            for o in cfg.optimizers:
                for point in (space.defaults(o), *tune_points(cfg, o)[:1]):
                    try:
                        space.build(o, point, model.parameters(), w.steps, one_shot=cfg.budget == "one-shot")
                    except (ValueError, TypeError) as err:
                        raise ValueError(f"optimizer {o!r} cannot train workload {name!r} "
                                         f"(with {point}): {err}") from None


def start(cfg: BenchmarkConfig) -> str:
    """Record the benchmark in the run store and create its tuning studies; returns its id."""
    from optimlab.store import RunStore
    from optimlab.sweep.runner import open_storage

    bid = cfg.benchmark_id
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    db = RunStore(cfg.store_path)
    try:
        if not any(r["run_id"] == bid for r in db.runs()):
            db.start_run(bid, _meta(cfg), name="benchmark")
    finally:
        db.close()
    open_tune_studies(cfg, open_storage(cfg.storage_url))
    return bid


def finish(cfg: BenchmarkConfig, wall_s: float) -> None:
    from optimlab.store import RunStore

    db = RunStore(cfg.store_path)
    try:
        run = db.run(cfg.benchmark_id)
        wall = float(run["summary"].get("wall_s") or 0.0) + wall_s  # a resumed benchmark adds its time
        db.finish_run(cfg.benchmark_id, status="completed",
                      summary={"wall_s": wall, "load": list(os.getloadavg()), "machine": machine(cfg)})
    finally:
        db.close()


def run_benchmark(cfg: BenchmarkConfig, *, quiet: bool = True) -> str:
    """Run every trial and confirm run left (``cfg.workers`` processes, each on its own cores);
    returns the benchmark id. Interrupted, the same call continues where it stopped."""
    started = time.perf_counter()
    check_buildable(cfg)
    bid = start(cfg)
    cores, t = _cores(), cfg.threads_per_worker
    slots = [cores[i * t:(i + 1) * t] for i in range(cfg.workers)]
    if cfg.workers == 1:  # here, in this process: its cores and threads are put back afterwards
        import torch

        affinity, threads = _cores(), torch.get_num_threads()
        try:
            worker(cfg, 0, quiet=quiet, cpus=slots[0])
        finally:
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, affinity)
            torch.set_num_threads(threads)
    else:
        from optimlab.sweep.runner import run_workers

        run_workers(_worker_entry, [(cfg.as_dict(), i, quiet, slots[i]) for i in range(cfg.workers)], "benchmark")
    finish(cfg, time.perf_counter() - started)
    return bid


def progress(cfg: BenchmarkConfig) -> dict:
    """``{"expected": n, "finished": n}`` trials and confirm runs, read from the Optuna storage."""
    from optimlab.sweep.runner import open_storage

    storage = open_storage(cfg.storage_url)
    bid, done = cfg.benchmark_id, 0
    for w in cfg.workloads:
        for o in cfg.optimizers:
            for phase in PHASES:
                study = _load(storage, study_name(bid, w, o, phase))
                done += len(_finished(study)) if study is not None else 0
    return {"expected": len(cfg.workloads) * len(cfg.optimizers) * (cfg.trials + cfg.seeds), "finished": done}


def dumps(cfg: BenchmarkConfig) -> str:
    return json.dumps(cfg.protocol(), indent=1, default=str)
