"""The sweep's engine: an Optuna study, one training run per trial, workers that share it.

Every worker (a process started by ``--workers N`` here, or the same command
started on another machine against the same ``--storage``) runs the same
loop on the shared study: ``ask`` a configuration, train it with
:func:`optimlab.fit` (metrics into the run store), report the validation loss
after every epoch (the pruner may stop it), ``tell`` the result. Optuna's
storage is the only coordination: SQLite for one machine, PostgreSQL (or any
SQLAlchemy URL) for many.

Interrupted and restarted, a sweep continues the same study: finished trials
are kept and never run again; a trial that was running when its worker died
is marked failed and its configuration is queued again once (the retry
resumes from the trial's checkpoint when the same machine has it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEDULES = {  # preset name -> schedule text (LR: the trial's rate, TOTAL: its number of steps)
    "constant": None,
    "cosine": "cosine(base_lr=LR, period=TOTAL)",
    "onecycle": "onecycle(max_lr=LR, total_steps=TOTAL)",
    "step": "step(base_lr=LR, step_size=EPOCH, gamma=0.5)",
}
FINISHED = ("COMPLETE", "PRUNED")
DATASETS = ("synthetic", "mnist", "fashion-mnist")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")


def check_storage_url(url: str) -> str:
    """``url`` if it is an SQLAlchemy URL of a database Optuna can use (SQLite, PostgreSQL, MySQL);
    a ``ValueError`` naming it otherwise. Nothing is opened."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError) as err:
        raise ValueError(f"storage must be a database URL such as sqlite:///sweep.db or "
                         f"postgresql://user:pass@host/db, got storage={url!r} ({err})") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise ValueError(f"storage must be an sqlite://, postgresql:// or mysql:// URL, got storage={url!r}")
    if backend != "sqlite" and not parsed.host:
        raise ValueError(f"storage names no host: got storage={url!r} (expected {backend}://user:pass@host/db)")
    return url


@dataclass
class SweepConfig:
    """Everything that defines a sweep (the study's identity is ``study``)."""

    study: str = "sweep"
    storage: str | None = None  # default: sqlite:///<out>/sweep.db
    out: str = "sweep"
    optimizers: tuple[str, ...] = ("adam", "momentum", "sgd")
    lr: tuple[float, ...] = (1e-4, 1.0)  # (low, high) searched on a log scale, or a list for the grid
    schedules: tuple[str, ...] = ("constant",)
    batch_sizes: tuple[int, ...] = (64,)
    seeds: tuple[int, ...] = (0,)
    sampler: str = "tpe"  # tpe | random | grid
    trials: int = 20
    epochs: int = 2
    dataset: str = "synthetic"
    n_train: int | None = None
    n_val: int | None = None
    pruner: str = "median"  # median | none
    convention: str = "torch"
    sampler_seed: int | None = 0
    store: str | None = None  # the run store; default: <out>/runs.sqlite
    threads: int = 1  # torch threads per worker
    device: str | None = None  # cpu, cuda, cuda:N, auto; None: the CPU (fit's device=); not part of the study

    def __post_init__(self):
        self.optimizers = tuple(self.optimizers)
        self.lr = tuple(float(v) for v in self.lr)
        self.schedules, self.batch_sizes, self.seeds = tuple(self.schedules), tuple(self.batch_sizes), tuple(self.seeds)
        if self.sampler not in ("tpe", "random", "grid"):
            raise ValueError(f"sampler must be tpe, random or grid, got {self.sampler!r}")
        if self.pruner not in ("median", "none"):
            raise ValueError(f"pruner must be median or none, got {self.pruner!r}")
        if not self.optimizers:
            raise ValueError("optimizers must name at least one optimizer, got ()")
        if self.convention not in ("torch", "keras"):
            raise ValueError(f"convention must be 'torch' or 'keras', got convention={self.convention!r}")
        from optimlab import optim

        for name in self.optimizers:
            optim.get(name, self.convention)  # an unknown name: the registry's error, with a suggestion
        if not self.lr or any(not (v > 0 and math.isfinite(v)) for v in self.lr):
            raise ValueError(f"lr: learning rates must be positive and finite, got lr={self.lr}")
        if self.sampler != "grid" and len(self.lr) != 2:
            raise ValueError(f"lr: for tpe / random sampling give the learning-rate range as (low, high), got lr={self.lr}")
        if self.sampler != "grid" and not self.lr[0] < self.lr[1]:
            raise ValueError(f"lr: the learning-rate range needs low < high, got lr={self.lr}")
        for name in ("trials", "epochs", "threads"):
            _check_int(name, getattr(self, name), 1)
        for name in ("n_train", "n_val"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.sampler_seed is not None:
            _check_int("sampler_seed", self.sampler_seed, 0)
        if not self.batch_sizes or not self.seeds:
            raise ValueError(f"batch_sizes and seeds must not be empty, got batch_sizes={self.batch_sizes}, "
                             f"seeds={self.seeds}")
        for value in self.batch_sizes:
            _check_int("batch_sizes", value, 1)
        for value in self.seeds:
            _check_int("seeds", value, 0)
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got dataset={self.dataset!r}")
        if self.storage is not None:
            check_storage_url(self.storage)
        if self.device is not None:
            from optimlab.train._device import resolve_device

            resolve_device(self.device)  # "CUDA is not available" here, before the study is opened
        for s in self.schedules:
            schedule_text(s, 0.1, 100, 10)  # a bad schedule fails before any training

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'sweep.db'}"

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store else Path(self.out) / "runs.sqlite"

    def grid(self) -> dict[str, list]:
        return {"optimizer": list(self.optimizers), "lr": list(self.lr), "schedule": list(self.schedules),
                "batch_size": list(self.batch_sizes), "seed": list(self.seeds)}

    def total(self) -> int:
        if self.sampler == "grid":
            n = 1
            for values in self.grid().values():
                n *= len(values)
            return min(n, self.trials)
        return self.trials


def schedule_text(name: str, lr: float, total: int, epoch_steps: int):
    """The schedule for a preset name or a template (LR, TOTAL, EPOCH), or None for constant."""
    from optimlab.schedules.parse import parse_schedule

    text = SCHEDULES.get(name, name)
    if text is None:
        return None
    text = text.replace("TOTAL", str(total + 1)).replace("EPOCH", str(max(1, epoch_steps))).replace("LR", repr(lr))
    return parse_schedule(text)


# --------------------------------------------------------------------------- storage and study
def storage(cfg: SweepConfig):
    return open_storage(cfg.storage_url)


def open_storage(url: str):
    """Optuna's RDB storage for ``url``: SQLite in WAL mode (its directory created), or a
    server database (PostgreSQL, MySQL) whose tables concurrent first workers may race to create."""
    import optuna

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        import sqlalchemy

        store = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})

        def pragmas(conn, _record):  # WAL: readers never block the writer; NORMAL: no fsync per commit
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")

        sqlalchemy.event.listen(store.engine, "connect", pragmas)
        store.engine.dispose()  # connections made from now on get the pragmas
        return store
    import random

    import sqlalchemy.exc

    # Workers started at once on an empty database all try to create Optuna's tables; the
    # losers fail on a duplicate (type, table or version row): once the winner is done, retry.
    for attempt in range(8):
        try:
            return optuna.storages.RDBStorage(_driver(url), engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            if attempt == 7:
                raise
            time.sleep(0.5 + random.random())


@contextlib.contextmanager
def ask_lock(url: str):
    """Hold while taking a queued trial (``study.ask()``) from an SQLite study: Optuna reads the
    waiting trial and marks it running in two statements, which SQLite does not lock together,
    so two processes asking at once could both take the same trial. An exclusive ``flock`` on
    a file beside the database makes the two steps one. Server databases (PostgreSQL) lock the
    row themselves (``SELECT ... FOR UPDATE``): nothing to do."""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(url[len("sqlite:///"):]).with_suffix(".ask-lock")
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _driver(url: str) -> str:
    """``postgresql://`` names no driver and SQLAlchemy 2.1 then wants psycopg 3: use whichever
    of psycopg / psycopg2 is installed (the ``postgres`` extra brings psycopg2-binary)."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            rest = url[len(prefix):]
            if importlib.util.find_spec("psycopg") is not None:
                return "postgresql+psycopg://" + rest
            if importlib.util.find_spec("psycopg2") is not None:
                return "postgresql+psycopg2://" + rest
            raise ValueError(f"{url.split('@')[-1]}: PostgreSQL needs a driver: pip install 'optimlab[postgres]'")
    return url


def _sampler(cfg: SweepConfig):
    import optuna

    seed = cfg.sampler_seed
    if cfg.sampler in ("grid", "random"):  # the grid is a queue of enqueued trials (see open_study)
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(2, cfg.trials // 3)))


def _pruner(cfg: SweepConfig):
    import optuna

    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def _spec(cfg: SweepConfig) -> dict:
    keep = {k: v for k, v in asdict(cfg).items()
            if k not in ("storage", "out", "store", "threads", "trials", "device")}  # per machine, not the study
    return json.loads(json.dumps(keep))


def open_study(cfg: SweepConfig, *, seed_offset: int = 0, wait: float = 120.0):
    """Create the study (exactly one process succeeds, and queues the grid) or load it and
    check that it was started with the same settings."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampling = cfg
    if seed_offset and cfg.sampler_seed is not None:  # workers draw different random streams
        sampling = SweepConfig(**{**asdict(cfg), "sampler_seed": cfg.sampler_seed + seed_offset})
    kwargs = dict(study_name=cfg.study, storage=storage(cfg), sampler=_sampler(sampling), pruner=_pruner(cfg))
    spec = _spec(cfg)
    try:
        study = optuna.create_study(direction="minimize", **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
    else:
        study.set_user_attr("config", spec)
        if cfg.sampler == "grid":
            import itertools
            import random

            grid = cfg.grid()
            points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
            random.Random(cfg.sampler_seed).shuffle(points)
            for params in points[:cfg.total()]:
                study.enqueue_trial(params, user_attrs={"queued": True})
        study.set_user_attr("ready", True)
    if cfg.sampler_seed is not None and study.trials:  # a restarted worker must not replay earlier draws
        again = SweepConfig(**{**asdict(sampling), "sampler_seed": sampling.sampler_seed + 7919 * len(study.trials)})
        study.sampler = _sampler(again)
    deadline = time.monotonic() + wait
    while not study.user_attrs.get("ready"):  # another process is creating it right now
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {cfg.study!r} exists but its creator never finished setting it up")
        time.sleep(0.2)
    saved = study.user_attrs.get("config")
    if saved != spec:
        changed = sorted(k for k in spec if spec[k] != saved.get(k))
        raise ValueError(f"study {cfg.study!r} in {cfg.storage_url} was started with other settings "
                         f"({', '.join(changed)} differ): use the same options, or another --study name")
    return study


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale(study, url: str) -> int:
    """Trials left RUNNING by a dead worker of this machine: mark them failed and queue their
    configuration again (once). Returns how many were re-queued. ``url``: the study's storage;
    on SQLite the look, the tell and the enqueue happen under :func:`ask_lock`, so that workers
    recovering at the same moment queue each trial once (each read the trial RUNNING, and SQLite
    let both tell it failed: two retries of one trial)."""
    import optuna

    host, requeued = socket.gethostname(), 0
    S = optuna.trial.TrialState
    stale = [t for t in study.get_trials(deepcopy=False, states=(S.RUNNING,))
             if t.user_attrs.get("host") == host and not _alive(int(t.user_attrs.get("pid", -1)))]
    if not stale:
        return 0
    with ask_lock(url):
        running = {t.number for t in study.get_trials(deepcopy=False, states=(S.RUNNING,))}  # read again, locked
        for t in stale:
            if t.number not in running:  # another worker recovered it
                continue
            try:
                study.tell(t.number, state=S.FAIL)
            except Exception:  # another worker got there first (a server database's own lock)
                continue
            origin = t.user_attrs.get("origin", t.number)
            kept = {k: v for k, v in t.user_attrs.items() if k not in ("host", "pid")}  # what the trial was given
            study.enqueue_trial(t.params, user_attrs={**kept, "origin": origin, "retry_of": t.number,
                                                      "queued": True})
            requeued += 1
    return requeued


def _counted(study) -> int:
    import optuna

    S = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING)))


# --------------------------------------------------------------------------- one trial
class _Reporter:
    """Trainer callback: the validation loss of every epoch to Optuna; prune when told to."""

    def __init__(self, trial):
        self.trial, self.pruned, self.reported = trial, False, set()

    def on_epoch_end(self, trainer, row):
        value = row.get("val_loss")
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), int(row["epoch"]))
        self.reported.add(int(row["epoch"]))
        if self.trial.should_prune():
            self.pruned = True
            trainer.stop_training = True


def run_trial(cfg: SweepConfig, trial, data) -> tuple[str, float | None]:
    """Train the trial's configuration; return (state, value) for ``study.tell``."""
    import torch

    import optimlab
    from optimlab import models, optim

    if cfg.sampler == "grid":
        params = {k: trial.suggest_categorical(k, v) for k, v in cfg.grid().items()}
    else:
        params = {"optimizer": trial.suggest_categorical("optimizer", list(cfg.optimizers)),
                  "lr": trial.suggest_float("lr", cfg.lr[0], cfg.lr[1], log=True),
                  "schedule": trial.suggest_categorical("schedule", list(cfg.schedules)),
                  "batch_size": trial.suggest_categorical("batch_size", list(cfg.batch_sizes)),
                  "seed": trial.suggest_categorical("seed", list(cfg.seeds))}
    origin = trial.user_attrs.get("origin", trial.number)
    trial.set_user_attr("origin", origin)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    n_train = len(data["train"][1])
    steps = math.ceil(n_train / min(params["batch_size"], n_train))
    schedule_total = steps * cfg.epochs
    torch.manual_seed(params["seed"])
    model = models.lecture_cnn()
    opt = optim.create(params["optimizer"], model.parameters(), cfg.convention, lr=params["lr"])
    schedule = schedule_text(params["schedule"], params["lr"], schedule_total, steps)
    checkpoint = _checkpoint(cfg, origin)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    reporter = _Reporter(trial)
    history = optimlab.fit(model, opt, data, epochs=cfg.epochs, batch_size=params["batch_size"], schedule=schedule,
                           seed=params["seed"], store=str(cfg.store_path), name=f"{cfg.study}#{origin}",
                           config={"sweep": cfg.study, "trial": trial.number, "origin": origin, **params},
                           callbacks=[reporter], quiet=True, on_nonfinite="stop", checkpoint=checkpoint,
                           resume=True, device=cfg.device)
    rows = [r for r in history.epochs if r.get("val_loss") is not None and not r.get("partial")]
    for r in rows:  # a resumed run reports the epochs done before the interruption too (idempotent)
        if int(r["epoch"]) not in reporter.reported:
            trial.report(float(r["val_loss"]), int(r["epoch"]))
    best = min(rows, key=lambda r: r["val_loss"]) if rows else None
    trial.set_user_attr("run_id", history.run_id)
    trial.set_user_attr("status", history.status)
    trial.set_user_attr("epochs", len(history.epochs))
    if best is not None:
        trial.set_user_attr("val_acc", best.get("val_acc"))
        trial.set_user_attr("best_epoch", best["epoch"])
    if history.status == "nonfinite":
        return "PRUNED", None
    if reporter.pruned:
        return "PRUNED", None
    if best is None:
        return "FAIL", None
    return "COMPLETE", float(best["val_loss"])


def _checkpoint(cfg: SweepConfig, origin: int) -> Path:
    """The checkpoint of the trial first numbered ``origin`` (its retries resume from it)."""
    return Path(cfg.out) / "checkpoints" / f"{cfg.study}-{origin}.pt"


def worker(cfg: SweepConfig, index: int = 0, *, quiet: bool = True) -> int:
    """One worker's loop on the shared study; returns the number of trials it ran."""
    import optuna
    import torch

    from optimlab.sweep.data import load_dataset

    torch.set_num_threads(cfg.threads)
    study = open_study(cfg, seed_offset=index)
    recover_stale(study, cfg.storage_url)
    data = load_dataset(cfg.dataset, n_train=cfg.n_train, n_val=cfg.n_val)
    total, ran = cfg.total(), 0
    S = optuna.trial.TrialState
    while True:
        waiting = study.get_trials(deepcopy=False, states=(S.WAITING,))
        if not waiting and (cfg.sampler == "grid" or _counted(study) >= total):
            break
        with ask_lock(cfg.storage_url):
            trial = study.ask()
        if cfg.sampler == "grid" and not trial.user_attrs.get("queued"):
            # another worker took the last queued point between our look and our ask
            trial.set_user_attr("unused", True)
            _tell(study, trial, None, S.FAIL)
            break
        try:
            state, value = run_trial(cfg, trial, data)
        except KeyboardInterrupt:
            _tell(study, trial, None, S.FAIL)
            origin = trial.user_attrs.get("origin", trial.number)
            study.enqueue_trial(trial.params, user_attrs={"origin": origin, "retry_of": trial.number,
                                                          "queued": True})
            raise
        except Exception:
            _tell(study, trial, None, S.FAIL)
            raise
        _tell(study, trial, value if state == "COMPLETE" else None, getattr(S, state))
        # Only now, with the result in the study: a worker killed before the tell leaves the trial
        # RUNNING, and its retry resumes from this checkpoint (deleted first, it trained afresh).
        _checkpoint(cfg, trial.user_attrs.get("origin", trial.number)).unlink(missing_ok=True)
        ran += 1
        if not quiet:
            shown = f"{value:.4f}" if value is not None else state.lower()
            print(f"[worker {index}] trial {trial.number}: {trial.params} -> {shown}", file=sys.stderr, flush=True)
    return ran


def _tell(study, trial, value, state) -> None:
    """``study.tell``; GridSampler calls ``study.stop()`` when its grid is used up, which only
    ``optimize`` may do; the result is stored before that (optuna's ``tell`` sets it in a
    ``finally``), so the complaint is dropped."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _worker_entry(cfg_dict: dict, index: int, quiet: bool) -> None:
    worker(SweepConfig(**cfg_dict), index, quiet=quiet)


def run_sweep(cfg: SweepConfig, *, workers: int = 1, quiet: bool = True) -> None:
    """Run the sweep to ``cfg.trials`` trials with ``workers`` processes sharing the study."""
    open_study(cfg)  # create it (and check its settings) once, before the workers race for it
    if workers <= 1:
        worker(cfg, 0, quiet=quiet)
        return
    on_gpu = cfg.device is not None and cfg.device != "cpu"  # CUDA cannot be used in a forked child
    run_workers(_worker_entry, [(asdict(cfg), i, quiet) for i in range(workers)], "sweep", spawn=on_gpu)


def run_workers(target, args: list[tuple], what: str, *, spawn: bool = False) -> None:
    """Run ``target(*a)`` for every ``a`` in ``args`` in worker processes (forked on Linux, else
    spawned) and wait for all; a ``RuntimeError`` naming the workers that failed. On Ctrl-C the
    workers (which get it too) are given 30 s to put their trials back."""
    import multiprocessing as mp

    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # torch's first optimizer imports dynamo: once, here
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") and not spawn else "spawn")
    procs = [ctx.Process(target=target, args=a, name=f"{what}-worker-{i}") for i, a in enumerate(args)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=30)
        raise
    failed = [p.name for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{what} workers failed: {', '.join(failed)} (see their messages above)")


def trials_table(study) -> list[dict[str, Any]]:
    """Every finished trial as a flat dict (params, value, state, user attributes)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in FINISHED:
            continue
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "last_val_loss": last,
                     **t.params, **{k: v for k, v in t.user_attrs.items() if k not in ("host", "pid")},
                     "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None})
    return rows


def best_per_optimizer(study) -> list[dict[str, Any]]:
    best: dict[str, dict] = {}
    for row in trials_table(study):
        if row["state"] != "COMPLETE":
            continue
        cur = best.get(row["optimizer"])
        if cur is None or row["value"] < cur["value"]:
            best[row["optimizer"]] = row
    return sorted(best.values(), key=lambda r: r["value"])
