"""The bad-input catalogue: invalid values for every public constructor and every command, one table.

Each row names a call (a Python call, or an ``optimlab`` command line), the invalid value given
to one of its parameters, the error expected and what its message must name. Every row runs in
a sandbox directory (the run store, the data cache and the kernel cache point inside it; it
holds only ``afile``, a plain file, ``notastore``, a text file, and ``adir``, a directory) and
checks that nothing in it changed: a refused call writes nothing.

Python rows raise ``error`` (a ``ValueError`` unless said otherwise) naming the parameter and
the value. Command rows exit with status 2, name the value on stderr and print no traceback.

The table is ``ALL_ROWS``: the hand-written ``ROWS`` (the interesting values of each parameter:
out of range, wrong choice, nonsense combinations), the command lines ``CLI_CASES``, and
``generated_rows()``, which gives NaN and a string to every numeric parameter of every registered
optimizer and schedule, found by reading their signatures (a new optimizer is covered the day it
is registered).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import optimlab.optim as oo
from optimlab import schedules as sc


@dataclass(frozen=True)
class Bad:
    """One invalid call: ``call(sandbox)`` must raise ``error`` whose message contains ``names``;
    a command row (``argv`` set) must exit 2 with ``names`` on stderr."""
    id: str
    call: Callable[[Path], Any] | None
    names: tuple[str, ...]
    error: type[BaseException] = ValueError
    tags: tuple[str, ...] = field(default=())
    argv: tuple[str, ...] | None = None


# ----------------------------------------------------------------------------- fixtures
def params(*shape):
    return [torch.zeros(*(shape or (3, 2)), requires_grad=True)]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def data(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def fit_with(tmp: Path, **kwargs):
    """``fit`` with a checkpoint and a run store in ``tmp``: a refused call must create neither."""
    from optimlab.train import fit

    model = kwargs.pop("model", None) or mlp()
    opt = kwargs.pop("optimizer", None) or oo.SGD(model.parameters(), lr=0.1)
    base = dict(epochs=1, batch_size=8, checkpoint=tmp / "run.pt", store=tmp / "runs.sqlite", quiet=True)
    return fit(model, opt, data(), **{**base, **kwargs})


def _fit_sam_fp16(tmp: Path):
    model = mlp()
    return fit_with(tmp, model=model, optimizer=oo.SAM(model.parameters(), "sgd", lr=0.1), precision="fp16")


def lr_find_with(tmp: Path, **kwargs):
    from optimlab.lrfind import lr_find

    model = mlp()
    return lr_find(model, oo.SGD(model.parameters(), lr=0.1), data(), plot=tmp / "lr.png", quiet=True, **kwargs)


def required_args(sig: inspect.Signature, skip=("params", "optimizer")) -> dict[str, Any]:
    """A valid value for each required argument (sizes and steps: 100; rates: 0.1)."""
    out = {}
    for k, p in sig.parameters.items():
        if p.default is p.empty and k not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            out[k] = {"boundaries": (10,), "values": (0.1, 0.01), "milestones": (10, 20)}.get(
                k, 100 if any(s in k for s in ("steps", "period", "size")) else 0.1)
    return out


# ------------------------------------------------------------------ hand-written rows
def _opt(name, convention="torch", **hyper):
    return lambda tmp: oo.create(name, params(), convention, **hyper)


def _sched(cls, **kwargs):
    return lambda tmp: cls(**kwargs)


def _ema(**kwargs):
    from optimlab.ema import EMA

    return lambda tmp: EMA(mlp(), **kwargs)


def _stopping(**kwargs):
    from optimlab.train import EarlyStopping

    return lambda tmp: EarlyStopping(**kwargs)


def _clip(fn, *args, **kwargs):
    from optimlab import clip

    def call(tmp):
        model = mlp()
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        return getattr(clip, fn)(model, *args, **kwargs)
    return call


def _init(*args, **kwargs):
    from optimlab import init

    return lambda tmp: init.apply(mlp(), *args, **kwargs)


def _sam_step_without_closure():
    ps = params()
    opt = oo.SAM(ps, "sgd", lr=0.1)
    ps[0].grad = torch.ones_like(ps[0])
    opt.step()


def _lookahead(**kwargs):
    return lambda tmp: oo.Lookahead(oo.SGD(params(), lr=0.1), **kwargs)


def _set(make, attribute, value):
    """Assign ``value`` to a setting of the object ``make()`` builds: refused where it is written
    (the object keeps its old value: :func:`test_a_refused_setting_keeps_its_value`)."""
    def call(tmp):
        setattr(make(), attribute, value)
    return call


def _made(kind):
    return {"lookahead": lambda: oo.Lookahead(oo.SGD(params(), lr=0.1)),
            "sam": lambda: oo.SAM(params(), "sgd", lr=0.1),
            "keras": lambda: oo.create("adam", params(), "keras", clipnorm=1.0),
            "adam": lambda: oo.Adam(params()),
            "ema": lambda: __import__("optimlab.ema", fromlist=["EMA"]).EMA(mlp())}[kind]


SETTINGS = [  # (object, setting, bad value, what the message names)
    ("lookahead", "k", 0, ("Lookahead:", "k", "0")),
    ("lookahead", "k", 2.5, ("Lookahead:", "k", "2.5")),
    ("lookahead", "alpha", 2.0, ("Lookahead:", "alpha", "(0, 1]", "2.0")),
    ("lookahead", "alpha", "x", ("Lookahead:", "alpha", "'x'")),
    ("sam", "rho", -1.0, ("SAM:", "rho", "-1.0")),
    ("sam", "rho", math.nan, ("SAM:", "rho", "nan")),
    ("sam", "adaptive", 1, ("SAM:", "adaptive", "1")),
    ("sam", "use_gc", "no", ("SAM:", "use_gc", "'no'")),
    ("sam", "perturb_eps", 0.0, ("SAM:", "perturb_eps", "0.0")),
    ("sam", "eta", -0.1, ("SAM:", "eta", "-0.1")),
    ("keras", "clipnorm", -1.0, ("Adam:", "clipnorm", "-1.0")),
    ("keras", "clipvalue", 1.0, ("Adam:", "only one of", "clipnorm=1.0", "clipvalue=1.0")),
    ("keras", "global_clipnorm", "1", ("Adam:", "global_clipnorm", "'1'")),
    ("adam", "skip_nonfinite", "yes", ("Adam:", "skip_nonfinite", "'yes'")),
    ("ema", "decay", 1.0, ("decay", "[0, 1)", "1.0")),
    ("ema", "decay", "0.9", ("decay", "'0.9'")),
    ("ema", "warmup", "yes", ("warmup", "'yes'")),
]


def _landscape(**kwargs):
    from optimlab import landscape

    return lambda tmp: landscape.compare(kwargs.pop("function", "rosenbrock"), kwargs.pop("optimizers", ["sgd"]),
                                         **kwargs)


def _sweep(**kwargs):
    from optimlab.sweep import SweepConfig

    return lambda tmp: SweepConfig(**{"out": str(tmp / "sweep"), **kwargs})


def _benchmark(**kwargs):
    from optimlab.benchmark import BenchmarkConfig

    return lambda tmp: BenchmarkConfig(**{"out": str(tmp / "benchmark"), **kwargs})


def _workload(**kwargs):
    from optimlab.benchmark import workloads as W

    base = {f.name: getattr(W.get("quadratic_deep"), f.name) for f in dataclasses.fields(W.Workload)}
    return lambda tmp: W.Workload(**{**base, "name": "mine", **kwargs})


def _showdown(**kwargs):
    from optimlab.showdown import ShowdownConfig

    return lambda tmp: ShowdownConfig(**{"out": str(tmp / "showdown"), **kwargs})


def _lecture_cnn(**kwargs):
    from optimlab.models import lecture_cnn

    return lambda tmp: lecture_cnn(**kwargs)


def _scheduler(schedule):
    return lambda tmp: sc.Scheduler(oo.SGD(params(), lr=0.1), schedule)


def _plateau(**kwargs):
    return lambda tmp: sc.ReduceOnPlateau(oo.SGD(params(), lr=0.1), **kwargs)


NAN, INF = math.nan, math.inf
UNREACHABLE_PG = "postgresql://u:secret@127.0.0.1:1/db"  # nothing listens on port 1

ROWS: list[Bad] = [
    # optimizers (torch conventions): ranges and kinds beyond NaN/strings (generated below)
    Bad("sgd lr<0", _opt("sgd", lr=-0.1), ("lr", "-0.1")),
    Bad("sgd lr=inf", _opt("sgd", lr=INF), ("lr", "inf")),
    Bad("sgd momentum<0", _opt("sgd", momentum=-0.5), ("momentum", "-0.5")),
    Bad("sgd nesterov without momentum", _opt("sgd", nesterov=True), ("nesterov",)),
    Bad("adam betas[0]=1", _opt("adam", betas=(1.0, 0.999)), ("betas[0]", "1.0")),
    Bad("adam betas scalar", _opt("adam", betas=0.9), ("betas", "0.9")),
    Bad("adam eps=0", _opt("adam", eps=0.0), ("eps", "0.0")),
    Bad("adam amsgrad=1", _opt("adam", amsgrad=1), ("amsgrad", "1")),
    Bad("adamw weight_decay<0", _opt("adamw", weight_decay=-0.01), ("weight_decay", "-0.01")),
    Bad("rmsprop alpha=1", _opt("rmsprop", alpha=1.0), ("alpha", "1.0")),
    Bad("adadelta rho>1", _opt("adadelta", rho=1.5), ("rho", "1.5")),
    Bad("adagrad lr_decay<0", _opt("adagrad", lr_decay=-1), ("lr_decay", "-1")),
    Bad("nadam momentum_decay<0", _opt("nadam", momentum_decay=-1), ("momentum_decay", "-1")),
    Bad("adamax betas[1]>1", _opt("adamax", betas=(0.9, 1.2)), ("betas[1]", "1.2")),
    Bad("lion betas[1]=1", _opt("lion", betas=(0.9, 1.0)), ("betas[1]", "1.0")),
    Bad("lars trust_coefficient<0", _opt("lars", lr=0.1, trust_coefficient=-1.0), ("trust_coefficient", "-1.0")),
    Bad("muon ns_steps=-1", _opt("muon", ns_steps=-1), ("ns_steps", "-1")),
    Bad("muon adjust_lr_fn", _opt("muon", adjust_lr_fn="fast"), ("adjust_lr_fn", "'fast'")),
    Bad("muon_adamw adamw_lr<0", _opt("muon_adamw", adamw_lr=-1.0), ("adamw_lr", "-1.0")),
    Bad("sf_adamw warmup_steps<0", _opt("schedulefree_adamw", warmup_steps=-1), ("warmup_steps", "-1")),
    Bad("adam unknown keyword", _opt("adam", lrr=0.1), ("lrr", "'lr'"), error=TypeError),
    Bad("create unknown name", lambda tmp: oo.create("adamm", params()), ("adamm", "adam")),
    Bad("create unknown convention", lambda tmp: oo.create("adam", params(), "jax"), ("convention", "'jax'")),
    Bad("adam empty params", lambda tmp: oo.Adam([]), ("empty parameter list",)),
    Bad("adam integer param", lambda tmp: oo.Adam([torch.zeros(3, dtype=torch.long)]), ("torch.int64",)),
    Bad("adam group lr<0", lambda tmp: oo.Adam([{"params": params(), "lr": -1.0}]), ("lr", "-1.0")),
    Bad("param_groups weight_decay<0", lambda tmp: oo.param_groups(mlp(), weight_decay=-1.0), ("weight_decay", "-1.0")),
    Bad("param_groups weight_decay nan", lambda tmp: oo.param_groups(mlp(), weight_decay=NAN),
        ("weight_decay", "nan")),
    Bad("param_groups no_decay string", lambda tmp: oo.param_groups(mlp(), no_decay="bias"), ("no_decay", "'bias'")),
    Bad("param_groups no_decay unmatched", lambda tmp: oo.param_groups(mlp(), no_decay=["lm_head"]),
        ("no_decay", "lm_head")),
    Bad("param_groups model", lambda tmp: oo.param_groups(params(), weight_decay=0.1), ("model",)),
    Bad("sam rho=0", lambda tmp: oo.SAM(params(), "sgd", rho=0.0, lr=0.1), ("rho", "0.0")),
    Bad("sam base name", lambda tmp: oo.SAM(params(), "adamm", lr=0.1), ("adamm", "adam")),
    Bad("sam no base", lambda tmp: oo.SAM(params(), None), ("base_optimizer",)),
    Bad("sam step without closure", lambda tmp: _sam_step_without_closure(), ("closure",)),
    Bad("lookahead k=0", _lookahead(k=0), ("Lookahead:", "k", "0")),
    Bad("lookahead alpha=0", _lookahead(alpha=0.0), ("Lookahead:", "alpha", "0.0")),
    Bad("lookahead alpha=2", _lookahead(alpha=2), ("Lookahead:", "alpha", "(0, 1]", "2")),
    Bad("lookahead k string", _lookahead(k="5"), ("Lookahead:", "k", "'5'")),
    *(Bad(f"{kind} setting {attribute}={value!r}", _set(_made(kind), attribute, value), names)
      for kind, attribute, value, names in SETTINGS),
    # optimizers (Keras conventions)
    Bad("keras adam beta_1=1", _opt("adam", "keras", beta_1=1.0), ("beta_1", "1.0")),
    Bad("keras sgd momentum>1", _opt("sgd", "keras", momentum=1.5), ("momentum", "1.5")),
    Bad("keras rmsprop rho<0", _opt("rmsprop", "keras", rho=-0.1), ("rho", "-0.1")),
    Bad("keras adam clipnorm<0", _opt("adam", "keras", clipnorm=-1.0), ("clipnorm", "-1.0")),
    Bad("keras adam two clips", _opt("adam", "keras", clipnorm=1.0, clipvalue=1.0), ("clipnorm", "clipvalue")),
    Bad("keras adamw weight_decay<0", _opt("adamw", "keras", weight_decay=-0.1), ("weight_decay", "-0.1")),
    # schedules
    Bad("exponential decay_rate<=0", _sched(sc.ExponentialDecay, base_lr=0.1, decay_rate=0.0), ("decay_rate", "0.0")),
    Bad("exponential decay_steps=0", _sched(sc.ExponentialDecay, base_lr=0.1, decay_rate=0.9, decay_steps=0),
        ("decay_steps", "0")),
    Bad("constant lr<0", _sched(sc.Constant, value=-1.0), ("value", "-1.0")),
    Bad("piecewise unsorted", _sched(sc.PiecewiseConstant, boundaries=(20, 10), values=(0.1, 0.01, 0.001)),
        ("boundaries", "20, 10")),
    Bad("piecewise lengths", _sched(sc.PiecewiseConstant, boundaries=(10,), values=(0.1,)), ("values",)),
    Bad("polynomial decay_steps=0", _sched(sc.Polynomial, base_lr=0.1, decay_steps=0), ("decay_steps", "0")),
    Bad("linear steps=0", _sched(sc.Linear, start_lr=0.1, end_lr=0.0, steps=0), ("steps", "0")),
    Bad("cosine period=0", _sched(sc.CosineAnnealing, base_lr=0.1, period=0), ("period", "0")),
    Bad("warm restarts period_mult=0", _sched(sc.CosineWarmRestarts, base_lr=0.1, period=10, period_mult=0),
        ("period_mult", "0")),
    Bad("onecycle pct_start=1.5", _sched(sc.OneCycle, max_lr=0.1, total_steps=100, pct_start=1.5),
        ("pct_start", "1.5")),
    Bad("onecycle anneal", _sched(sc.OneCycle, max_lr=0.1, total_steps=100, anneal="cubic"), ("anneal", "'cubic'")),
    Bad("warmup_cosine warmup>total", _sched(sc.warmup_cosine, base_lr=0.1, total_steps=10, warmup_steps=20),
        ("warmup_steps", "20")),
    Bad("warmup_cosine min_lr>base_lr", _sched(sc.warmup_cosine, base_lr=0.1, total_steps=100, min_lr=0.5),
        ("min_lr", "0.5")),
    Bad("scheduler not a schedule", _scheduler("cosine"), ("schedule", "'cosine'")),
    Bad("plateau factor=1", _plateau(factor=1.0), ("factor", "1.0")),
    Bad("plateau mode", _plateau(mode="lowest"), ("mode", "'lowest'")),
    Bad("plateau patience<0", _plateau(patience=-1), ("patience", "-1")),
    # training utilities
    Bad("ema decay=1", _ema(decay=1.0), ("decay", "1.0")),
    Bad("ema decay nan", _ema(decay=NAN), ("decay", "nan")),
    Bad("ema warmup string", _ema(warmup="yes"), ("warmup", "'yes'")),
    Bad("early stopping patience<0", _stopping(patience=-1), ("patience", "-1")),
    Bad("early stopping mode", _stopping(mode="lowest"), ("mode", "'lowest'")),
    Bad("early stopping min_delta<0", _stopping(min_delta=-0.1), ("min_delta", "-0.1")),
    Bad("clip_grad_norm max_norm<0", _clip("clip_grad_norm", -1.0), ("max_norm", "-1.0")),
    Bad("clip_grad_norm nonfinite", _clip("clip_grad_norm", 1.0, nonfinite="ignore"), ("nonfinite", "'ignore'")),
    Bad("clip_grad_value nan", _clip("clip_grad_value", NAN), ("clip_value", "nan")),
    Bad("init scheme", _init("xavier_magic"), ("scheme", "'xavier_magic'")),
    Bad("init normal std<0", _init("normal", std=-1.0), ("std", "-1.0")),
    Bad("lecture_cnn dropout=1.5", _lecture_cnn(dropout=1.5), ("dropout", "1.5")),
    Bad("lecture_cnn filters=0", _lecture_cnn(filters=0), ("filters", "0")),
    # fit: every argument checked before the first batch, no checkpoint, no run row
    Bad("fit epochs=0", lambda tmp: fit_with(tmp, epochs=0), ("epochs", "0")),
    Bad("fit batch_size=0", lambda tmp: fit_with(tmp, batch_size=0), ("batch_size", "0")),
    Bad("fit batch_size text", lambda tmp: fit_with(tmp, batch_size="many"), ("batch_size", "'many'")),
    Bad("fit loss name", lambda tmp: fit_with(tmp, loss="hinge"), ("loss", "'hinge'")),
    Bad("fit schedule_unit", lambda tmp: fit_with(tmp, schedule_unit="batch"), ("schedule_unit", "'batch'")),
    Bad("fit on_nonfinite", lambda tmp: fit_with(tmp, on_nonfinite="ignore"), ("on_nonfinite", "'ignore'")),
    Bad("fit seed<0", lambda tmp: fit_with(tmp, seed=-1), ("seed", "-1")),
    Bad("fit checkpoint_every=0", lambda tmp: fit_with(tmp, checkpoint_every=0), ("checkpoint_every", "0")),
    Bad("fit sample_every=0", lambda tmp: fit_with(tmp, sample_every=0), ("sample_every", "0")),
    Bad("fit clip<0", lambda tmp: fit_with(tmp, clip=-1.0), ("max_norm", "-1.0")),
    Bad("fit clip dict", lambda tmp: fit_with(tmp, clip={"max": 1.0}), ("clip", "'max'")),
    Bad("fit ema=1", lambda tmp: fit_with(tmp, ema=1.0), ("decay", "1.0")),
    Bad("fit early_stopping", lambda tmp: fit_with(tmp, early_stopping="soon"), ("early_stopping", "'soon'")),
    Bad("fit store type", lambda tmp: fit_with(tmp, store=3), ("store", "3")),
    Bad("fit schedule type", lambda tmp: fit_with(tmp, schedule="cosine"), ("schedule", "'cosine'")),
    Bad("fit optimizer name", lambda tmp: fit_with(tmp, optimizer="adamm"), ("adamm",)),
    Bad("fit model type", lambda tmp: __import__("optimlab.train").train.fit("model", "adam", data()),
        ("model", "str")),
    Bad("fit data shape", lambda tmp: fit_with(tmp, data=None) if False else __import__("optimlab.train").train.fit(
        mlp(), "sgd", (torch.zeros(8, 4), torch.zeros(7, dtype=torch.long)), store=tmp / "runs.sqlite",
        checkpoint=tmp / "run.pt", quiet=True), ("8", "7")),
    Bad("fit accumulate=0", lambda tmp: fit_with(tmp, accumulate=0), ("accumulate", "0")),
    Bad("fit accumulate float", lambda tmp: fit_with(tmp, accumulate=1.5), ("accumulate", "1.5")),
    Bad("fit accumulate bool", lambda tmp: fit_with(tmp, accumulate=True), ("accumulate", "True")),
    Bad("fit precision name", lambda tmp: fit_with(tmp, precision="16"), ("precision", "'16'")),
    Bad("fit precision int", lambda tmp: fit_with(tmp, precision=32), ("precision", "32")),
    Bad("fit device", lambda tmp: fit_with(tmp, device="tpu"), ("device", "'tpu'")),
    Bad("fit sharpness_every=0", lambda tmp: fit_with(tmp, sharpness_every=0), ("sharpness_every", "0")),
    Bad("fit logger spec", lambda tmp: fit_with(tmp, logger="wandb:run"), ("logger", "wandb:run")),
    Bad("fit logger dir under a file", lambda tmp: fit_with(tmp, logger="csv:afile/log.csv"), ("afile",)),
    Bad("fit sam with fp16", lambda tmp: _fit_sam_fp16(tmp), ("fp16",)),
    # the learning-rate finder
    Bad("lr_find device", lambda tmp: lr_find_with(tmp, device="tpu"), ("device", "'tpu'")),
    Bad("lr_find start_lr<=0", lambda tmp: lr_find_with(tmp, start_lr=0.0), ("start_lr", "0.0")),
    Bad("lr_find end<start", lambda tmp: lr_find_with(tmp, start_lr=1.0, end_lr=0.1), ("end_lr", "0.1")),
    Bad("lr_find num_steps=2", lambda tmp: lr_find_with(tmp, num_steps=2), ("num_steps", "2")),
    Bad("lr_find smooth=1", lambda tmp: lr_find_with(tmp, smooth=1.0), ("smooth", "1.0")),
    Bad("lr_find diverge=1", lambda tmp: lr_find_with(tmp, diverge=1.0), ("diverge", "1.0")),
    # the landscape lab
    Bad("landscape function", _landscape(function="banana"), ("banana",)),
    Bad("landscape steps<0", _landscape(steps=-1), ("steps", "-1")),
    Bad("landscape noise<0", _landscape(noise=-0.1), ("noise", "-0.1")),
    Bad("landscape start", _landscape(start=(1.0,)), ("start", "(1.0,)")),
    Bad("landscape start inf", _landscape(start=(INF, 0.0)), ("start", "inf")),
    Bad("landscape optimizer", _landscape(optimizers=["adamm"]), ("adamm",)),
    Bad("landscape no optimizers", _landscape(optimizers=[]), ("optimizers",)),
    Bad("landscape tol<0", _landscape(tol=-1.0), ("tol", "-1.0")),
    Bad("landscape radius nan", _landscape(radius=NAN), ("radius", "nan")),
    Bad("landscape seed<0", _landscape(seed=-3), ("seed", "-3")),
    Bad("landscape tune", _landscape(tune=[0.0]), ("tune", "[0.0]")),
    # sweeps and the showdown: configurations refused before a study or a file exists
    Bad("sweep trials=0", _sweep(trials=0), ("trials", "0")),
    Bad("sweep epochs=0", _sweep(epochs=0), ("epochs", "0")),
    Bad("sweep batch_sizes 0", _sweep(batch_sizes=(0,)), ("batch_sizes", "0")),
    Bad("sweep lr bounds", _sweep(lr=(1.0, 0.1)), ("lr", "(1.0, 0.1)")),
    Bad("sweep lr<=0", _sweep(lr=(0.0, 0.1)), ("lr", "0.0")),
    Bad("sweep optimizer", _sweep(optimizers=("adamm",)), ("adamm",)),
    Bad("sweep schedule", _sweep(schedules=("cosinus",)), ("cosinus",)),
    Bad("sweep n_train<0", _sweep(n_train=-5), ("n_train", "-5")),
    Bad("sweep storage", _sweep(storage="not a url"), ("storage", "'not a url'")),
    Bad("sweep storage scheme", _sweep(storage="redis://host/0"), ("storage", "redis://host/0")),
    Bad("sweep storage no host", _sweep(storage="postgresql:///db"), ("storage", "postgresql:///db")),
    Bad("sweep n_train=0", _sweep(n_train=0), ("n_train", "0")),
    Bad("sweep threads=0", _sweep(threads=0), ("threads", "0")),
    Bad("sweep trials text", _sweep(trials="10"), ("trials", "'10'")),
    Bad("sweep seeds<0", _sweep(seeds=(-1,)), ("seeds", "-1")),
    Bad("sweep dataset", _sweep(dataset="cifar"), ("dataset", "cifar")),
    Bad("sweep sampler", _sweep(sampler="bayes"), ("sampler", "bayes")),
    Bad("sweep pruner", _sweep(pruner="hyperband"), ("pruner", "hyperband")),
    Bad("sweep convention", _sweep(convention="jax"), ("convention", "'jax'")),
    Bad("showdown epochs=0", _showdown(epochs=0), ("epochs", "0")),
    Bad("showdown convention", _showdown(convention="jax"), ("convention", "'jax'")),
    Bad("showdown jobs=0", _showdown(jobs=0), ("jobs", "0")),
    Bad("showdown optimizer", _showdown(optimizers=("nope",)), ("nope",)),
    Bad("showdown dataset", _showdown(dataset="cifar"), ("dataset", "cifar")),
    Bad("showdown seeds=0", _showdown(seeds=0), ("seeds", "0")),
    Bad("showdown batch_size bool", _showdown(batch_size=True), ("batch_size", "True")),
    Bad("showdown checkpoint_every=0", _showdown(checkpoint_every=0), ("checkpoint_every", "0")),
    Bad("showdown device", _showdown(device="tpu"), ("device", "'tpu'")),
    Bad("sweep device", _sweep(device="tpu"), ("device", "'tpu'")),
    # the benchmark: refused before any study, store or file exists
    Bad("benchmark trials=0", _benchmark(trials=0), ("trials", "0")),
    Bad("benchmark seeds=0", _benchmark(seeds=0), ("seeds", "0")),
    Bad("benchmark optimizer", _benchmark(optimizers=("adamm",)), ("adamm", "adam")),
    Bad("benchmark workload", _benchmark(workloads=("mnist_cnnn",)), ("mnist_cnnn", "mnist_cnn")),
    Bad("benchmark log bound 0", _benchmark(spaces={"adam": {"lr": (0.0, 0.1)}}), ("adam.lr", "low=0.0")),
    Bad("benchmark log bound <0", _benchmark(spaces={"lion": {"weight_decay": (-1e-3, 0.1)}}),
        ("lion.weight_decay", "-0.001")),
    Bad("benchmark bounds reversed", _benchmark(spaces={"adam": {"beta1": (0.99, 0.9)}}), ("adam.beta1", "0.99")),
    Bad("benchmark space param", _benchmark(spaces={"adam": {"momentum": (0.5, 0.9)}}), ("momentum", "adam")),
    Bad("benchmark space optimizer", _benchmark(optimizers=("adam",), spaces={"sgd": {"lr": (0.1, 1.0)}}),
        ("'sgd'",)),
    Bad("benchmark storage", _benchmark(storage="not a url"), ("storage", "'not a url'")),
    Bad("benchmark budget", _benchmark(budget="two-shot"), ("budget", "'two-shot'")),
    Bad("benchmark fraction=0", _benchmark(fraction=0), ("fraction", "0")),
    Bad("benchmark fraction nan", _benchmark(fraction=float("nan")), ("fraction", "nan")),
    Bad("benchmark workers", _benchmark(workers=999), ("workers", "999")),
    Bad("benchmark threads", _benchmark(threads=0), ("threads", "0")),
    Bad("benchmark optimizer cannot train", lambda tmp: __import__("optimlab.benchmark.runner", fromlist=["x"])
        .run_benchmark(__import__("optimlab.benchmark", fromlist=["x"]).BenchmarkConfig(
            workloads=("quadratic_deep",), optimizers=("adam", "muon"), out=str(tmp / "b"))),
        ("'muon'", "'quadratic_deep'")),
    Bad("benchmark duplicate", _benchmark(optimizers=("adam", "adam")), ("optimizers", "'adam'")),
    Bad("benchmark preset", lambda tmp: __import__("optimlab.benchmark", fromlist=["x"]).BenchmarkConfig.from_preset(
        "huge"), ("preset", "'huge'")),
    Bad("benchmark workload mode", _workload(mode="up"), ("mode", "'up'")),
    Bad("benchmark workload metric", _workload(metric="f1"), ("metric", "'f1'")),
    Bad("benchmark workload steps", _workload(steps=0), ("steps", "0")),
    Bad("benchmark workload cadence", _workload(steps=100, eval_every=30), ("eval_every", "30")),
    Bad("benchmark workload duplicate", lambda tmp: __import__("optimlab.benchmark.workloads", fromlist=["x"]).register(
        __import__("optimlab.benchmark.workloads", fromlist=["x"]).get("mnist_cnn")), ("mnist_cnn",)),
]


# (command line, text that must appear on stderr). In the sandbox, "afile" is a
# plain file, "notastore" a text file that is no database, "adir" a directory.
CLI_CASES = [
    # the top level
    ([], "COMMAND is required"),
    (["--bogus-flag"], "--bogus-flag"),
    (["--bogus-flag", "optimizers"], "--bogus-flag"),
    (["nope"], "'nope'"),
    # optimizers
    (["optimizers", "--convention", "jax"], "'jax'"),
    (["optimizers", "--bogus"], "--bogus"),
    # showdown
    (["showdown", "--optimizers", "nope"], "'nope'"),
    (["showdown", "--optimizers", "adam,nope"], "'nope'"),
    (["showdown", "--optimizers", "adam,,sgd"], "'adam,,sgd'"),
    (["showdown", "--optimizers", ""], "--optimizers"),
    (["showdown", "--epochs", "0"], "'0'"),
    (["showdown", "--epochs", "-1"], "'-1'"),
    (["showdown", "--epochs", "ten"], "'ten'"),
    (["showdown", "--batch-size", "0"], "'0'"),
    (["showdown", "--seeds", "0"], "'0'"),
    (["showdown", "--jobs", "0"], "'0'"),
    (["showdown", "--dataset", "cifar"], "'cifar'"),
    (["showdown", "--out", "afile"], "'afile'"),
    (["showdown", "--out", "afile/sub"], "afile"),
    (["showdown", "--schedule", "bogus(1)"], "'bogus'"),
    (["showdown", "--schedule", "cosine(base_lr=0.1, period=0)"], "period=0"),
    (["showdown", "--bogus-flag"], "--bogus-flag"),
    # report
    (["report", "sd-1", "--store", "missing.sqlite"], "'missing.sqlite'"),
    (["report", "sd-1", "--store", "adir"], "'adir'"),
    (["report", "sd-1", "--store", "notastore"], "'notastore'"),
    (["report", "sd-1", "--store", "notastore", "--out", "afile"], "'afile'"),
    (["report", "sd-1"], "--store"),
    # data
    (["data"], "ACTION"),
    (["data", "bogus"], "'bogus'"),
    (["data", "fetch", "nope", "--no-download"], "'nope'"),
    (["data", "info", "nope", "--no-download"], "'nope'"),
    (["data", "fetch", "mnist", "--cache-dir", "afile"], "'afile'"),
    (["data", "fetch", "mnist", "--cache-dir", "afile/cache"], "afile"),
    (["data", "info", "mnist", "--cache-dir", "afile/cache"], "afile"),
    (["data", "fetch", "mnist", "--data-dir", "missing"], "'missing'"),
    (["data", "info", "mnist", "--data-dir", "afile"], "'afile'"),
    # schedule
    (["schedule", "cosine(base_lr=0.1, period=0)"], "period=0"),
    (["schedule", "cosine(base_lr=0.1, period=10, min_lr=0.5)"], "min_lr=0.5"),
    (["schedule", "exponential(base_lr=0.1, decay_rate=1e400)"], "decay_rate=inf"),
    (["schedule", "nope(1)"], "'nope'"),
    (["schedule", "exponential(base_lr=0.1, decay_rate=2.0)", "--steps", "2000"], "from step 1028"),
    (["schedule", "__import__('os')"], "'__import__'"),
    (["schedule", "cosine(base_lr=0.1,"], "cosine(base_lr=0.1,"),
    (["schedule", "cosine(base_lr=0.1, period=10)", "--steps", "0"], "'0'"),
    (["schedule", "cosine(base_lr=0.1, period=10)", "-o", "afile/x.png"], "afile"),
    (["schedule", "cosine(base_lr=0.1, period=10)", "-o", "adir"], "'adir'"),
    # landscape: 2-D functions
    (["landscape", "--start", "1e400,1"], "1e400"),
    (["landscape", "--start=nan,1"], "nan"),
    (["landscape", "--start", "1"], "'1'"),
    (["landscape", "--start", "1,2,3"], "'1,2,3'"),
    (["landscape", "--steps", "-1"], "'-1'"),
    (["landscape", "--frames", "0"], "'0'"),
    (["landscape", "--function", "nope"], "'nope'"),
    (["landscape", "--function", "ravine", "--condition", "0.5"], "condition=0.5"),
    (["landscape", "--condition", "inf"], "'inf'"),
    (["landscape", "--optimizers", "nope"], "'nope'"),
    (["landscape", "--optimizers", "sgd,,adam"], "'sgd,,adam'"),
    (["landscape", "--optimizers", "torch.Nope"], "'torch.Nope'"),
    (["landscape", "--lr", "fast"], "'fast'"),
    (["landscape", "--lr", "sgd=-1"], "'-1'"),
    (["landscape", "--optimizers", "sgd", "--lr", "adam=0.1"], "'adam'"),
    (["landscape", "--tol", "0"], "'0'"),
    (["landscape", "--noise", "-1"], "'-1'"),
    (["landscape", "--seed", "-1"], "'-1'"),
    (["landscape", "--schedule", "linear"], "'linear'"),
    (["landscape", "--out", "afile"], "'afile'"),
    # landscape: demos
    (["landscape", "--demo", "nope"], "'nope'"),
    (["landscape", "--demo", "ravine", "--out", "afile"], "'afile'"),
    (["landscape", "--demo", "ravine", "--network", "cnn"], "--demo"),
    # landscape: networks (all refused before the data is loaded)
    (["landscape", "--network", "rnn"], "'rnn'"),
    (["landscape", "--network", "cnn", "--epochs", "-1"], "'-1'"),
    (["landscape", "--network", "cnn", "--epochs", "0"], "'0'"),
    (["landscape", "--network", "cnn", "--train-size", "0"], "'0'"),
    (["landscape", "--network", "cnn", "--eval-size", "-5"], "'-5'"),
    (["landscape", "--network", "cnn", "--resolution", "1"], "'1'"),
    (["landscape", "--network", "cnn", "--pca-resolution", "0"], "'0'"),
    (["landscape", "--network", "cnn", "--span", "0"], "'0'"),
    (["landscape", "--network", "cnn", "--optimizers", "torch.Adam"], "'torch.Adam'"),
    (["landscape", "--network", "mlp", "--optimizers", "nope"], "'nope'"),
    (["landscape", "--network", "cnn", "--dataset", "cifar"], "'cifar'"),
    # runs
    (["runs"], "ACTION"),
    (["runs", "bogus"], "'bogus'"),
    (["runs", "--db", "adir", "list"], "'adir'"),
    (["runs", "--db", "notastore", "list"], "notastore"),
    (["runs", "--db", "notastore", "show", "abc"], "notastore"),
    (["runs", "--db", "notastore", "export"], "notastore"),
    (["runs", "list", "--limit", "0"], "'0'"),
    (["runs", "merge", "nothere.sqlite"], "nothere.sqlite"),
    (["runs", "merge", "notastore"], "notastore"),
    (["runs", "merge", "adir"], "'adir'"),
    (["runs", "--db", "afile/x.sqlite", "merge", "notastore"], "afile"),
    (["runs", "list", "--limit", "-3"], "'-3'"),
    (["runs", "list", "--status", "nope"], "'nope'"),
    (["runs", "show"], "run"),
    (["runs", "export", "-f", "xml"], "'xml'"),
    (["runs", "export", "-o", "afile/x.csv"], "afile"),
    (["runs", "export", "-o", "adir"], "'adir'"),
    # lr-find: every check before the data is loaded
    (["lr-find", "--steps", "2"], "'2'"),
    (["lr-find", "--steps", "2.5"], "'2.5'"),
    (["lr-find", "--start-lr", "0"], "'0'"),
    (["lr-find", "--start-lr=-1e-5"], "'-1e-5'"),  # argparse takes "-1e-5" alone for an option
    (["lr-find", "--end-lr", "inf"], "'inf'"),
    (["lr-find", "--end-lr", "1e400"], "'1e400'"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "--end-lr 0.1"),
    (["lr-find", "--batch-size", "0"], "'0'"),
    (["lr-find", "--seed", "-1"], "'-1'"),
    (["lr-find", "--dataset", "cifar"], "'cifar'"),
    (["lr-find", "--optimizer", "nope"], "'nope'"),
    (["lr-find", "--hyper", "momentum"], "'momentum'"),
    (["lr-find", "--hyper", "=0.9"], "'=0.9'"),
    (["lr-find", "--hyper", "bogus=1"], "'bogus'"),
    (["lr-find", "--hyper", "lr=0.1"], "lr=0.1"),
    (["lr-find", "--optimizer", "sgd", "--hyper", "momentum=-1"], "-1"),
    (["lr-find", "--optimizer", "sgd", "--hyper", "momentum=fast"], "'fast'"),
    (["lr-find", "-o", "afile/x.png"], "afile"),
    (["lr-find", "-o", "adir"], "'adir'"),
    (["lr-find", "--json", "afile/x.json"], "afile"),
    # benchmark: every check before a study, the store or the output directory exists
    (["benchmark", "--optimizers", "adamm"], "'adamm'"),
    (["benchmark", "--workloads", "mnist_cnnn"], "'mnist_cnnn'"),
    (["benchmark", "--trials", "0"], "'0'"),
    (["benchmark", "--workloads", "quadratic_deep", "--optimizers", "sgd,muon"], "'muon'"),
    (["benchmark", "--seeds", "0"], "'0'"),
    (["benchmark", "--space", "adam.lr=0:0.1"], "adam.lr"),
    (["benchmark", "--space", "adam.lr=-1:0.1"], "-1"),
    (["benchmark", "--space", "adam.lr"], "'adam.lr'"),
    (["benchmark", "--space", "adam.nope=1:2"], "'nope'"),
    (["benchmark", "--storage", "notaurl"], "'notaurl'"),
    (["benchmark", "--storage", "postgresql:///db"], "postgresql:///db"),
    (["benchmark", "--out", "afile/x"], "afile"),
    (["benchmark", "--out", "afile"], "afile"),
    (["benchmark", "--workers", "0"], "'0'"),
    (["benchmark", "--workers", "999"], "999"),
    (["benchmark", "--fraction", "0"], "'0'"),
    (["benchmark", "--fraction", "1.5"], "'1.5'"),
    (["benchmark", "--preset", "huge"], "'huge'"),
    (["benchmark", "--report-only", "--out", "adir"], "adir"),
    # sweep: every check before the study, the store or the output directory exists
    (["sweep", "--storage", "notaurl"], "'notaurl'"),
    (["sweep", "--storage", "sqlite://"], "'sqlite://'"),
    (["sweep", "--storage", "sqlite:///:memory:"], "'sqlite:///:memory:'"),
    (["sweep", "--storage", "sqlite:///afile/x.db"], "afile"),
    (["sweep", "--storage", "http://example.com/db"], "'http'"),
    (["sweep", "--storage", "postgresql://u@host:port/db"], "postgresql://u@host:port/db"),
    (["sweep", "--storage", "postgresql://u@host"], "postgresql://u@host"),
    (["sweep", "--storage", UNREACHABLE_PG], "127.0.0.1:1"),
    (["sweep", "--batch-sizes", "0"], "'0'"),
    (["sweep", "--batch-sizes", "64,0"], "'64,0'"),
    (["sweep", "--batch-sizes", "64,,32"], "'64,,32'"),
    (["sweep", "--batch-sizes", "big"], "'big'"),
    (["sweep", "--seeds", "-1"], "'-1'"),
    (["sweep", "--n-train", "-5"], "'-5'"),
    (["sweep", "--n-train", "0"], "'0'"),
    (["sweep", "--n-val", "0"], "'0'"),
    (["sweep", "--workers", "0"], "'0'"),
    (["sweep", "--threads", "0"], "'0'"),
    (["sweep", "--trials", "0"], "'0'"),
    (["sweep", "--epochs", "0"], "'0'"),
    (["sweep", "--lr", "1:0.1"], "'1:0.1'"),
    (["sweep", "--lr", "0:1"], "'0'"),
    (["sweep", "--lr", "1e-4:inf"], "'inf'"),
    (["sweep", "--lr", "1e-3,1e-2"], "'1e-3,1e-2'"),
    (["sweep", "--sampler", "grid", "--lr", "0.1,-1"], "'-1'"),
    (["sweep", "--sampler", "bayes"], "'bayes'"),
    (["sweep", "--optimizers", "nope"], "'nope'"),
    (["sweep", "--optimizers", "adam,", "--sampler", "grid"], "'adam,'"),
    (["sweep", "--schedules", "bogus(1)"], "'bogus'"),
    (["sweep", "--schedules", "cosine(base_lr=LR, period=0)"], "period=0"),
    (["sweep", "--study", ""], "''"),
    (["sweep", "--out", "afile"], "'afile'"),
    (["sweep", "--device", "tpu"], "'tpu'"),
    (["showdown", "--device", "tpu"], "'tpu'"),
    (["lr-find", "--device", "quantum"], "'quantum'"),
    (["sweep", "--report-only"], "sweep.db"),
]



CLI_ROWS = [Bad("optimlab " + (" ".join(argv)[:80] or "(no command)"), None, (needle,), SystemExit,
                tags=("cli",), argv=tuple(argv)) for argv, needle in CLI_CASES]


# ------------------------------------------------------------------- generated rows
def _numeric_parameters(fn) -> list[tuple[str, Any]]:
    """(name, default) for the parameters that take a number or a tuple of numbers."""
    out = []
    for name, p in inspect.signature(fn).parameters.items():
        d = p.default
        if isinstance(d, bool):
            continue
        if isinstance(d, (int, float)) or (isinstance(d, tuple) and d
                                           and all(isinstance(x, (int, float)) for x in d if x is not None)):
            out.append((name, d))
    return out


def generated_rows() -> list[Bad]:
    """NaN and a string in every numeric parameter of every registered optimizer and schedule."""
    rows = []
    for convention in ("torch", "keras"):
        for name in oo.available(convention):
            cls = oo.get(name, convention)
            base = required_args(inspect.signature(cls))
            for pname, default in _numeric_parameters(cls):
                for bad in (NAN, "x"):
                    value = tuple(bad if i == 0 else x for i, x in enumerate(default)) if isinstance(default, tuple) else bad
                    rows.append(Bad(f"{convention} {name} {pname}={value!r}",
                                    (lambda c, kw: lambda tmp: c(params(), **kw))(cls, {**base, pname: value}),
                                    (pname, repr(bad)), tags=("generated",)))
    schedules = [getattr(sc, n) for n in sc.__all__
                 if n not in ("Schedule", "Scheduler", "ReduceOnPlateau", "plot", "schedule_table", "Sequential", "warmup")]
    for fn in schedules:
        base = required_args(inspect.signature(fn))
        for pname, _ in _numeric_parameters(fn) + [(k, v) for k, v in base.items() if isinstance(v, (int, float))]:
            for bad in (NAN, INF, "x"):
                rows.append(Bad(f"schedule {fn.__name__} {pname}={bad!r}",
                                (lambda f, kw: lambda tmp: f(**kw))(fn, {**base, pname: bad}),
                                (pname, repr(bad) if isinstance(bad, str) else str(bad)), tags=("generated",)))
    return _dedupe(rows)


def _dedupe(rows: list[Bad]) -> list[Bad]:
    seen, out = set(), []
    for r in rows:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out


ALL_ROWS = _dedupe(ROWS + CLI_ROWS + generated_rows())


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """The working directory: the fixtures' three entries, and the run store, data cache and
    kernel cache pointed inside it, so anything a call writes shows up here."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("OPTIMLAB_RUNS", str(work / "store" / "runs.sqlite"))
    monkeypatch.setenv("OPTIMLAB_DATA", str(work / "cache"))
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(work / "kernels"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    (work / "afile").write_text("a plain file\n")
    (work / "notastore").write_text("not a database\n")
    (work / "adir").mkdir()
    return work


@pytest.mark.parametrize("row", ALL_ROWS, ids=[r.id for r in ALL_ROWS])
def test_bad_value_is_refused_with_its_name_and_nothing_is_written(row, sandbox, capsys):
    from optimlab import cli

    before = _tree(sandbox)
    if row.argv is not None:
        try:
            code = cli.main(list(row.argv))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        out, message = capsys.readouterr()
        assert code == 2, (row.id, out, message)
        assert "error" in message and "Traceback" not in message + out
    else:
        with pytest.raises(row.error) as err:
            row.call(sandbox)
        message = str(err.value)
        assert "Traceback" not in message
    for name in row.names:
        assert name in message, f"{row.id}: the message does not name {name!r}: {message}"
    assert _tree(sandbox) == before, f"{row.id}: files were written: {set(_tree(sandbox)) - set(before)}"


@pytest.mark.parametrize("kind,attribute,value,names", SETTINGS, ids=[f"{k}-{a}-{v!r}" for k, a, v, _ in SETTINGS])
def test_a_refused_setting_keeps_its_value(kind, attribute, value, names):
    """A setting kept as an attribute (Lookahead's k, SAM's rho, a Keras twin's clipping, any
    optimizer's skip_nonfinite) is checked on every assignment, not only by the constructor:
    a bad value written mid-training is refused where it is written and the old one stays;
    a good one is taken, and survives a pickle (deepcopy, torch.save) and a state_dict load,
    also into a fresh object (a Keras twin's clipping and skip_nonfinite were lost there)."""
    import copy
    import io

    obj = _made(kind)()
    old = getattr(obj, attribute)
    with pytest.raises(ValueError) as err:
        setattr(obj, attribute, value)
    assert all(n in str(err.value) for n in names), err.value
    assert getattr(obj, attribute) == old
    good = {"k": 3, "alpha": 0.25, "rho": 0.2, "adaptive": True, "use_gc": True, "perturb_eps": 1e-9, "eta": 0.01,
            "clipnorm": 2.0, "clipvalue": None, "global_clipnorm": None, "skip_nonfinite": True, "decay": 0.5,
            "warmup": True}[attribute]
    setattr(obj, attribute, good)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(obj), torch.load(buffer, weights_only=False)):
        assert getattr(twin, attribute) == good
        with pytest.raises(ValueError):
            setattr(twin, attribute, value)
    obj.load_state_dict(obj.state_dict())
    assert getattr(obj, attribute) == good
    fresh = _made(kind)()  # (a resumed run: the state brings the setting back)
    fresh.load_state_dict(obj.state_dict())
    assert getattr(fresh, attribute) == good


def test_the_catalogue_covers_every_public_constructor():
    """Every optimizer, schedule and training utility in the public API has a row."""
    import optimlab.optim.keras as ok

    ids = " ".join(r.id for r in ALL_ROWS)
    for name in oo.available("torch"):
        assert f"torch {name} " in ids
    for name in oo.available("keras"):
        assert f"keras {name} " in ids
    for name in sc.__all__:
        if name not in ("Schedule", "plot", "schedule_table", "Sequential", "warmup"):
            assert name.lower() in ids.lower() or {"Scheduler": "scheduler", "ReduceOnPlateau": "plateau",
                                                    "PiecewiseConstant": "piecewise",
                                                    "CosineAnnealing": "cosine"}.get(name, "?") in ids, name
    for token in ("ema", "early stopping", "clip_grad_norm", "clip_grad_value", "init", "lecture_cnn", "fit",
                  "lr_find", "landscape", "sweep", "showdown", "lookahead", "param_groups", "sam"):
        assert token in ids, token
    assert len(ok.__all__) > 2
    from optimlab.cli import COMMANDS

    commands = {r.argv[0] for r in ALL_ROWS if r.argv}
    assert set(COMMANDS) <= commands, set(COMMANDS) - commands
    assert len(ALL_ROWS) >= 600


# ------------------------------------------- every optimizer's numeric keywords at 0 and 1
# SAM and Lookahead wrap another optimizer: their rho (a radius) and alpha (an interpolation) are
# not rates of an update, and SAM steps only with a closure; their rows are above.
WRAPPERS = ("sam", "lookahead")
REGISTERED = [(c, n) for c in ("torch", "keras") for n in oo.available(c) if n not in WRAPPERS]


def _numeric_keywords(cls) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [n for n, p in sig.parameters.items() if n not in ("self", "params")
            and isinstance(p.default, (int, float)) and not isinstance(p.default, bool)]


def _required(cls) -> dict[str, float]:
    """A rate for a keyword without a default (LARS's, SGD with momentum's ``lr``)."""
    sig = inspect.signature(cls.__init__).parameters
    return {n: 0.01 for n, p in sig.items() if n not in ("self", "params") and p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _boundary_params(name):
    torch.manual_seed(0)
    w, b = (nn.Parameter(torch.randn(4, 3, dtype=torch.float64)), nn.Parameter(torch.randn(5, dtype=torch.float64)))
    if name == "muon":
        return [w], [w]
    if name == "muon_adamw":
        return [{"params": [w], "use_muon": True}, {"params": [b], "use_muon": False}], [w, b]
    return [w, b], [w, b]


@pytest.mark.parametrize(("convention", "name"), REGISTERED)
def test_a_value_taken_at_0_or_1_never_steps_to_nan_or_inf(convention, name):
    """Every numeric keyword of every registered optimizer, alone and in pairs, at 0 and at 1:
    the constructor refuses the values (ValueError) or three steps stay finite, the first on
    a zero gradient and the others on gradients with zeros in them. (It found Keras's
    ``epsilon=0``: 0/0 wherever the second moment is 0.)"""
    cls = oo.get(name, convention)
    keywords = _numeric_keywords(cls)
    assert keywords, name
    required = _required(cls)
    tried = 0
    for k in (1, 2):
        for combo in itertools.combinations(keywords, k):
            for values in itertools.product((0.0, 1.0), repeat=k):
                hyper = {**required, **dict(zip(combo, values))}
                groups, ps = _boundary_params(name)
                try:
                    opt = oo.create(name, groups, convention, **hyper)
                except ValueError:
                    continue
                tried += 1
                gen = torch.Generator().manual_seed(1)
                for t in range(3):
                    for p in ps:
                        g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                        g.view(-1)[:2] = 0.0
                        p.grad = torch.zeros_like(p) if t == 0 else g
                    if hasattr(opt, "train"):  # (Schedule-Free: steps in train mode)
                        opt.train()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # (Muon's notes on small matrices)
                        opt.step()
                bad = [p for p in ps if not torch.isfinite(p).all()]
                assert not bad, f"{convention} {name}({hyper}) took the values and stepped to {bad[0].detach()}"
    assert tried, name


@pytest.mark.parametrize(("convention", "name"), REGISTERED)
def test_a_zero_epsilon_and_a_rate_of_1_are_refused_by_name(convention, name):
    """ε = 0 divides by zero wherever a second moment is zero, and a decay rate of 1 is an
    average that never moves: every optimizer refuses both, naming the keyword and the value
    (torch.optim and Keras take ε = 0; torch's Adadelta and Keras's RMSprop and Adadelta take
    ρ = 1). Momentum is not a decay rate here: torch's SGD takes any μ >= 0, as torch does."""
    cls = oo.get(name, convention)
    sig = inspect.signature(cls.__init__).parameters
    cases = [(n, 0.0, "0.0") for n in ("eps", "epsilon") if isinstance(sig.get(n) and sig[n].default, float)]
    cases += [(n, 1.0, "1.0") for n in ("rho", "alpha", "beta_1", "beta_2") if n in sig]
    if "betas" in sig:
        cases += [("betas", (0.9, 1.0), "1.0"), ("betas", (1.0, 0.999), "1.0")]
    for keyword, value, shown in cases:
        groups, _ = _boundary_params(name)
        with pytest.raises(ValueError, match=rf"{keyword}.*{re.escape(shown)}"):
            oo.create(name, groups, convention, **{**_required(cls), keyword: value})


@pytest.mark.parametrize("name", [n for c, n in REGISTERED if c == "torch" and "step" in oo.get(n).state_keys])
def test_a_loaded_step_count_must_be_a_whole_number_of_zero_or_more(name):
    """A state dict whose ``step`` is negative, NaN, infinite or fractional is refused by
    ``load_state_dict``, naming the entry and the value, and the optimizer keeps its state
    (it loaded, and the next step's bias corrections were NaN). The Keras twins' ``iterations``
    is checked the same way (``tests/test_keras.py``)."""
    cls = oo.get(name)
    groups, ps = _boundary_params(name)
    opt = oo.create(name, groups, **_required(cls))
    for p in ps:
        p.grad = torch.ones_like(p)
    if hasattr(opt, "train"):
        opt.train()
    opt.step()
    saved = opt.state_dict()
    index = next(i for i, st in saved["state"].items() if "step" in st)
    for bad in (-3.0, math.nan, math.inf, 2.5):
        corrupt = {**saved, "state": {**saved["state"], index: {**saved["state"][index], "step": torch.tensor(bad)}}}
        before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[ps[index]].items()}
        with pytest.raises(ValueError, match=rf"state\[{index}\]\['step'\].*{re.escape(repr(bad))}"):
            opt.load_state_dict(corrupt)
        after = opt.state[ps[index]]
        assert all(torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k]
                   for k, v in before.items()), (name, bad)
    good = {**saved, "state": {**saved["state"], index: {**saved["state"][index], "step": torch.tensor(7.0)}}}
    opt.load_state_dict(good)  # a whole number >= 0, as a tensor or a number
    opt.load_state_dict({**saved, "state": {**saved["state"], index: {**saved["state"][index], "step": 7}}})


def test_a_loaded_nadam_mu_product_must_be_in_0_1():
    opt = oo.NAdam([nn.Parameter(torch.ones(3))])
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    for bad in (-0.5, 1.5, math.nan):
        corrupt = {**saved, "state": {0: {**saved["state"][0], "mu_product": torch.tensor(bad)}}}
        with pytest.raises(ValueError, match=rf"mu_product.*{re.escape(repr(bad))}"):
            opt.load_state_dict(corrupt)
