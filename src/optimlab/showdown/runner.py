"""One showdown run (a row × seed): its recipe, its key, training it; the config of a showdown.

:mod:`optimlab.showdown.driver` runs them all (here or in :mod:`optimlab.showdown.parallel`'s
worker processes); both import this module, which imports neither.

Each finished run's history is written to ``<out>/runs/<key>.json``; a run in progress
checkpoints to ``<out>/checkpoints/<key>.pt``. Run the same command again after an
interruption: finished runs are read back, the interrupted one resumes from its checkpoint.
A run's key holds its recipe's fingerprint (:meth:`Recipe.fingerprint`): after a recipe is
edited its row trains afresh (neither read back nor resumed from the old recipe's checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from optimlab import init, models
from optimlab.showdown.recipes import BEYOND, LECTURE, Recipe, fill_schedule, lecture_recipe

QUICK_BATCHES = 300  # --quick: a few hundred batches per run


@dataclass
class ShowdownConfig:
    dataset: str = "mnist"
    optimizers: tuple[str, ...] = tuple(LECTURE)
    convention: str = "keras"
    epochs: int = 10
    batch_size: int = 64
    seeds: int = 1
    schedule: str | None = None
    quick: bool = False
    beyond: bool = False
    out: str = "showdown"
    store: str | None = None  # run store file; default: <out>/runs.sqlite
    checkpoint_every: int = 200  # steps between mid-epoch checkpoints
    jobs: int | None = None  # runs in parallel processes; None: one per core (see driver.plan_jobs)
    device: str | None = None  # cpu, cuda, cuda:N, auto; None: the CPU (fit's device=); not in showdown_id

    def __post_init__(self):
        for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1), ("seeds", self.seeds, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
        if self.convention not in ("keras", "torch"):
            raise ValueError(f"convention must be 'keras' or 'torch', got {self.convention!r}")
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise ValueError(f"jobs must be an integer >= 1 (or None for one per core), got {self.jobs!r}")
        if not self.optimizers:
            raise ValueError("optimizers must name at least one optimizer")
        from optimlab import optim
        from optimlab.data import DATASETS

        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got dataset={self.dataset!r}")
        for key in self.optimizers:
            recipe = lecture_recipe(key, self.convention)
            optim.get(recipe.optimizer, recipe.convention)  # unknown: the registry's error, with a suggestion
        tables = recipes(self)  # a bad --schedule fails here
        _check_recipes([r for rows in tables.values() for r in rows])  # as a row that cannot train the CNN
        if self.device is not None:
            from optimlab.train._device import resolve_device

            resolve_device(self.device)  # "CUDA is not available" here, before any data or training
        if self.checkpoint_every is not None and (isinstance(self.checkpoint_every, bool)
                                                  or not isinstance(self.checkpoint_every, int)
                                                  or self.checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be an integer >= 1, got {self.checkpoint_every!r}")

    @property
    def showdown_id(self) -> str:
        """Stable for the same experiment, so a re-run finds its finished runs."""
        keys = ("dataset", "optimizers", "convention", "epochs", "batch_size", "schedule", "quick")
        setup = {k: getattr(self, k) for k in keys}
        setup["initialisation"] = "keras" if self.convention == "keras" else "torch"
        blob = json.dumps(setup, sort_keys=True, default=list)
        return "sd-" + hashlib.sha1(blob.encode()).hexdigest()[:8]


def recipes(cfg: ShowdownConfig) -> dict[str, list[Recipe]]:
    """The tables to run: "lecture" always, "beyond" when asked for (the rows with a recipe in
    :data:`BEYOND`; the report names the others)."""
    tables = {"lecture": [lecture_recipe(k, cfg.convention) for k in cfg.optimizers]}
    if cfg.schedule:
        fill_schedule(cfg.schedule, 99)  # a bad --schedule fails before any training
        tables["lecture"] = [replace(r, schedule=cfg.schedule) for r in tables["lecture"]]
    if cfg.beyond:
        tables["beyond"] = [BEYOND[k] for k in cfg.optimizers if k in BEYOND]
    return tables


def _atomic_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _subsets(cfg: ShowdownConfig):
    from optimlab import data

    ds = data.load(cfg.dataset)
    (x, y), (xv, yv) = ds.train, ds.val
    if cfg.quick:
        n = QUICK_BATCHES * cfg.batch_size
        x, y, xv, yv = x[:n], y[:n], xv[:2000], yv[:2000]
    return ds, (x, y), (xv, yv)


@torch.no_grad()
def _accuracy(model, x, y, batch: int = 256) -> tuple[float, float]:
    model.eval()
    device = next(model.parameters()).device
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch].to(device), y[i:i + batch].to(device)
        out = model(xb)
        loss += torch.nn.functional.cross_entropy(out, yb, reduction="sum").item()
        correct += int((out.argmax(1) == yb).sum())
    return loss / len(x), correct / len(x)


def _record_eval(store: str, run_id: str | None, loss: float, acc: float) -> None:
    """Keep the end-of-run training accuracy (eval mode) with the run, for `optimlab report`.
    The store is a record: if it fails, this warns and the showdown goes on (its JSON keeps the result)."""
    import sqlite3
    import warnings

    from optimlab.store import RunStore

    if run_id is None:
        return
    db = RunStore(store)
    try:
        run = db.run(run_id)
        db.finish_run(run_id, status=run["stored_status"], summary={**run["summary"], "eval_train_loss": loss,
                                                                     "eval_train_acc": acc},
                      stop=run["stop"], diagnoses=run["diagnoses"])
    except (sqlite3.Error, OSError, KeyError) as err:
        warnings.warn(f"run store {db.path}: could not add the evaluation to run {run_id} ({err})", RuntimeWarning,
                      stacklevel=2)
    finally:
        db.close()


def run_one(cfg: ShowdownConfig, table: str, recipe: Recipe, seed: int, train, val, source: str, *,
            quiet: bool = False, callbacks=()) -> dict:
    """Train one row × seed (resuming from its checkpoint if there is one); write and return its result."""
    from optimlab.train import fit

    out = Path(cfg.out)
    key = run_key(table, recipe, seed)
    store = cfg.store or str(out / "runs.sqlite")
    steps_per_epoch = -(-len(train[0]) // cfg.batch_size)
    epochs = 1 if cfg.quick else cfg.epochs
    torch.manual_seed(seed)
    model = models.lecture_cnn()
    if cfg.convention == "keras":  # Keras's Conv2D and Dense defaults: glorot_uniform kernels, zero biases
        init.apply(model, "glorot_uniform", zero_bias=True)
    optimizer, schedule = recipe.build(model.parameters(), steps_per_epoch * epochs)
    history = fit(model, optimizer, {"train": train, "val": val}, epochs=epochs,
                  batch_size=cfg.batch_size, schedule=schedule, seed=seed,
                  checkpoint=out / "checkpoints" / f"{key}.pt", checkpoint_every=cfg.checkpoint_every, resume=True,
                  callbacks=callbacks, device=cfg.device,
                  store=store, name=f"{cfg.showdown_id}/{key}", on_nonfinite="stop", quiet=quiet,
                  config={"showdown": cfg.showdown_id, "table": table, "row": recipe.key,
                          "label": recipe.label, "recipe": recipe.text(), "fingerprint": recipe.fingerprint(),
                          "seed": seed,
                          "dataset": cfg.dataset, "source": source})
    sample = slice(0, min(10000, len(train[0])))
    train_loss, train_acc = _accuracy(model, train[0][sample], train[1][sample])
    result = {"showdown_id": cfg.showdown_id, "table": table, "row": recipe.key, "label": recipe.label,
              "recipe": recipe.text(), "fingerprint": recipe.fingerprint(), "seed": seed, "run_id": history.run_id,
              "eval_train_loss": train_loss, "eval_train_acc": train_acc,
              "history": json.loads(history.to_json())}
    _record_eval(store, history.run_id, train_loss, train_acc)
    _atomic_json(out / "runs" / f"{key}.json", result)
    (out / "checkpoints" / f"{key}.pt").unlink(missing_ok=True)
    return result


def _check_recipes(rows, total_steps: int = 1000) -> None:
    """Build every row's optimizer on a throwaway model: a bad row fails here, before any training."""
    for recipe in rows:
        try:
            recipe.build(models.lecture_cnn().parameters(), total_steps)
        except (ValueError, TypeError) as err:
            raise ValueError(f"row {recipe.key!r} ({recipe.text()}) cannot train the lecture's CNN: {err}") from None


def run_key(table: str, recipe: Recipe, seed: int) -> str:
    """``<table>-<row>-<recipe fingerprint>-s<seed>``: names the run's result, checkpoint and store entry."""
    return f"{table}-{recipe.key}-{recipe.fingerprint()}-s{seed}"


def _finished(cfg: ShowdownConfig, key: str) -> dict | None:
    done = Path(cfg.out) / "runs" / f"{key}.json"
    if done.exists():
        result = json.loads(done.read_text())
        if result.get("showdown_id") == cfg.showdown_id:
            return result
    return None
