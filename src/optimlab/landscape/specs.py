"""Which optimizer runs, at what learning rate, under which schedule: :class:`Spec`.

An optimizer can be given as

* a name from :func:`optimlab.optim.available` (``"adam"``), or ``"torch.Adam"`` for torch's own;
* a class (``torch.optim.Adam``, ``optimlab.optim.NAG``);
* a factory ``params -> optimizer`` (``lambda p: torch.optim.SGD(p, lr=0.01)``);
* an optimizer instance over one 2-element tensor (a deep copy runs; the original is untouched);
* a :class:`Spec` wrapping any of these with a learning rate, label, schedule, noise or
  hyperparameters: ``Spec("momentum", lr=0.01, momentum=0.5, label="momentum 0.5")``.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import optimlab.optim as oo

# Step scales with the gradient: the function's lr_gd fits. Anything else normalises the
# gradient (a step of about lr per coordinate): lr_adaptive fits. Adadelta keeps its own 1.0.
GD_FAMILY = frozenset({"sgd", "momentum", "nag", "lars", "schedulefreesgd"})
OWN_DEFAULT_LR = {"adadelta": 1.0}
# Optimizers of matrices: their point is a 1×2 matrix (Muon's orthogonalised step is then the
# normalised gradient direction), the same two coordinates.
MATRIX_ONLY = frozenset({"muon"})


@dataclass
class Spec:
    """One contender: an optimizer (name, class, factory or instance) and how to run it.

    ``lr``: the learning rate (``None``: the test function's default for this kind of
    optimizer, or the factory's/instance's own). ``schedule``: an
    :class:`optimlab.schedules.Schedule` (absolute rates, driven through the schedules
    bridge) or a callable ``optimizer -> scheduler`` with ``.step()`` (torch's
    ``lr_scheduler`` classes via ``functools.partial``). ``noise``: the standard deviation
    of Gaussian noise added to each gradient coordinate (a stand-in for mini-batch noise;
    ``None``: the run's setting). ``hyper``: further keyword arguments for the optimizer.
    """

    optimizer: Any
    lr: float | None = None
    label: str | None = None
    schedule: Any = None
    noise: float | None = None
    hyper: dict[str, Any] = field(default_factory=dict)

    def __init__(self, optimizer: Any, lr: float | None = None, *, label: str | None = None,
                 schedule: Any = None, noise: float | None = None, **hyper: Any):
        if isinstance(optimizer, Spec):
            raise ValueError("Spec(Spec(...)): pass the inner optimizer instead")
        self.optimizer, self.lr, self.label = optimizer, lr, label
        self.schedule, self.noise, self.hyper = schedule, noise, hyper
        if lr is not None and not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"lr must be a number >= 0, got lr={lr!r}")
        if noise is not None and not (isinstance(noise, (int, float)) and noise >= 0):
            raise ValueError(f"noise must be a number >= 0, got noise={noise!r}")


@dataclass
class Contender:
    """A :class:`Spec` resolved: how to build the optimizer on a list of param groups."""

    label: str
    kind: str                       # the optimizer's lower-case class or registry name
    build: Callable[[list], torch.optim.Optimizer] | None
    lr: float | None                # None: the factory's / instance's own rate
    lr_from: str                    # "given", "default", "own", "schedule" (set to "tuned" later)
    schedule: Any
    noise: float | None
    instance: torch.optim.Optimizer | None = None

    @property
    def tunable(self) -> bool:
        return self.build is not None and self.lr is not None and not _is_schedule(self.schedule)


def _torch_class(name: str) -> type[torch.optim.Optimizer]:
    cls_name = name.split(".")[-1]
    cls = getattr(torch.optim, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        known = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                 and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"]
        close = difflib.get_close_matches(cls_name, known, n=1)
        hint = f" Did you mean 'torch.{close[0]}'?" if close else ""
        raise ValueError(f"unknown torch optimizer {name!r}.{hint} Known: "
                         + ", ".join(f"torch.{n}" for n in known))
    return cls


def _class_for(name: str) -> tuple[str, Callable]:
    if name.lower().startswith("torch."):
        cls = _torch_class(name)
        return cls.__name__.lower(), cls
    try:
        cls = oo.get(name)
    except ValueError as error:
        raise ValueError(f"{error} (or torch's: 'torch.SGD', 'torch.Adam', ...)") from None
    return getattr(cls, "__name__", name).lower(), cls


def _default_lr(kind: str, function) -> float:
    if kind in OWN_DEFAULT_LR:
        return OWN_DEFAULT_LR[kind]
    return function.lr_gd if kind in GD_FAMILY else function.lr_adaptive


def resolve(spec: Any, function) -> Contender:
    """Turn any accepted optimizer description into a :class:`Contender` for ``function``."""
    s = spec if isinstance(spec, Spec) else Spec(spec)
    opt, hyper = s.optimizer, dict(s.hyper)
    given = s.lr is not None
    if isinstance(opt, str):
        kind, cls = _class_for(opt.strip())
        label = s.label or opt.strip()
    elif isinstance(opt, type) and issubclass(opt, torch.optim.Optimizer):
        kind, cls = opt.__name__.lower(), opt
        label = s.label or opt.__name__
    elif isinstance(opt, torch.optim.Optimizer):
        params = [p for g in opt.param_groups for p in g["params"]]
        if len(params) != 1 or params[0].numel() != 2 or not params[0].is_floating_point():
            shapes = [tuple(p.shape) for p in params]
            raise ValueError(f"an optimizer instance must hold exactly one floating-point tensor of "
                             f"2 elements (the point), got shapes {shapes}")
        if hyper or given:
            raise ValueError("an optimizer instance carries its own settings; "
                             "pass lr and hyperparameters when building it")
        return Contender(s.label or type(opt).__name__, type(opt).__name__.lower(), None, None, "own",
                         s.schedule, s.noise, instance=opt)
    elif callable(opt):
        label = s.label or getattr(opt, "__name__", type(opt).__name__)
        if label == "<lambda>":
            label = "factory"
        if hyper:
            raise ValueError("hyperparameters cannot be passed to a factory; bind them inside it")

        def build(groups, _factory=opt):
            return _factory(groups)
        lr = float(s.lr) if given else None
        return Contender(label, "factory", build, lr, "given" if given else "own", s.schedule, s.noise)
    else:
        raise ValueError(f"an optimizer must be a name, a torch.optim.Optimizer class, a factory "
                         f"or an instance; got {opt!r}")

    lr = float(s.lr) if given else _default_lr(kind, function)
    lr_from = "given" if given else "default"
    if _is_schedule(s.schedule):
        lr, lr_from = float(s.schedule(0)), "schedule"

    def build(groups, _cls=cls, _hyper=hyper, _lr=lr):
        return _cls(groups, lr=_lr, **_hyper)
    return Contender(label, kind, build, lr, lr_from, s.schedule, s.noise)


def _is_schedule(schedule: Any) -> bool:
    from optimlab.schedules import Schedule
    return isinstance(schedule, Schedule)


def copy_instance(optimizer: torch.optim.Optimizer) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    """A deep copy of an optimizer over one point, and that copy's point tensor."""
    clone = copy.deepcopy(optimizer)
    return clone, clone.param_groups[0]["params"][0]


def attach_schedule(optimizer: torch.optim.Optimizer, schedule: Any):
    """The object whose ``step()`` advances ``schedule`` on ``optimizer`` (``None`` if none)."""
    if schedule is None:
        return None
    from optimlab.schedules import Schedule, Scheduler
    if isinstance(schedule, Schedule):
        return Scheduler(optimizer, schedule)
    if callable(schedule):
        scheduler = schedule(optimizer)
        if not hasattr(scheduler, "step"):
            raise ValueError(f"schedule factory returned {scheduler!r}, which has no step()")
        return scheduler
    raise ValueError(f"schedule must be an optimlab Schedule or a callable optimizer -> scheduler, "
                     f"got {schedule!r}")


def unique_labels(contenders: list[Contender]) -> None:
    """Make labels unique in place (``adam``, ``adam #2``, ...)."""
    seen: dict[str, int] = {}
    for c in contenders:
        n = seen.get(c.label, 0) + 1
        seen[c.label] = n
        if n > 1:
            c.label = f"{c.label} #{n}"


def schedule_from_lr(make: Callable[[float], Any]) -> Callable[[torch.optim.Optimizer], Any]:
    """A ``schedule`` for :class:`Spec` built from each param group's own rate:
    ``Spec("adam", schedule=schedule_from_lr(lambda lr: CosineAnnealing(lr, period=300)))``.
    Works with the learning-rate search (every candidate rate gets its own schedule)."""
    def attach(optimizer: torch.optim.Optimizer):
        from optimlab.schedules import Scheduler
        return Scheduler(optimizer, [make(float(g["lr"])) for g in optimizer.param_groups])
    return attach
