"""What the showdown runs: the lecture's six rows, and the best known recipe for each.

The lecture (seeds/004) trained a Conv2D → MaxPool → Dropout → Dense network on MNIST for
10 epochs at batch size 64 with Keras's default optimizers and reported this table.

A recipe is data: an optimizer's name, a convention, hyperparameters and a schedule written
as text (:func:`optimlab.schedules.parse.parse_schedule`'s language). Its
:meth:`Recipe.fingerprint` is a digest of those, and is part of each run's key: a recipe
edited here trains again, an unchanged one is read back from the finished run.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

import optimlab.optim as oo
from optimlab import schedules

# row key -> (label, val acc, val loss, total time in seconds) as printed by the lecture
LECTURE = {
    "adam": ("Adam", 0.9908, 0.0297, 7 * 60 + 20),
    "rmsprop": ("RMSprop", 0.9857, 0.0501, 10 * 60 + 1),
    "momentum": ("SGD w/ Momentum", 0.9697, 0.1008, 7 * 60 + 4),
    "sgd": ("SGD", 0.9693, 0.1040, 6 * 60 + 42),
    "adagrad": ("Adagrad", 0.9286, 0.2519, 7 * 60 + 33),
    "adadelta": ("Adadelta", 0.8375, 0.9026, 8 * 60 + 2),
}

#: Names a schedule text (and a string hyperparameter value) may use, filled in for each run.
PLACEHOLDERS = {
    "TOTAL": "the run's steps + 1 (a schedule's length: each step and the value after the last)",
    "WARMUP": "5% of the run's steps, at least 1",
    "LR": "the recipe's learning rate (its lr or learning_rate)",
}
_PLACEHOLDER = re.compile(r"\b(?:" + "|".join(PLACEHOLDERS) + r")\b")


def placeholder_values(total_steps: int, lr: Any = None) -> dict[str, Any]:
    values = {"TOTAL": total_steps + 1, "WARMUP": max(1, int(0.05 * total_steps))}
    if lr is not None and not isinstance(lr, str):
        values["LR"] = lr
    return values


def fill_schedule(text: str, total_steps: int, lr: Any = None) -> schedules.Schedule:
    """The schedule ``text`` describes for a run of ``total_steps`` steps (see :data:`PLACEHOLDERS`)."""
    from optimlab.schedules.parse import parse_schedule

    values = placeholder_values(total_steps, lr)

    def value(match: re.Match) -> str:
        name = match.group(0)
        if name not in values:
            raise ValueError(f"schedule {text!r} uses {name} ({PLACEHOLDERS[name]}), which this recipe does not set")
        return repr(values[name])

    return parse_schedule(_PLACEHOLDER.sub(value, text))


def _normal_text(text: str | None) -> str | None:
    """A schedule text in one spelling (``3e-3`` and ``0.003``, spaces): what the fingerprint hashes."""
    if text is None:
        return None
    try:
        return ast.unparse(ast.parse(text.strip(), mode="eval"))
    except SyntaxError:
        return text.strip()


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) or value not in PLACEHOLDERS else value


@dataclass(frozen=True)
class Recipe:
    """How to build one row's optimizer (and schedule) for a model and a step budget.

    ``schedule`` is a schedule text such as ``"onecycle(max_lr=LR, total_steps=TOTAL)"``
    (see :data:`PLACEHOLDERS`); a string hyperparameter equal to a placeholder's name
    (``{"warmup_steps": "WARMUP"}``) is filled in the same way. ``describe`` says why, in
    words; what the recipe is comes from the data (:meth:`spec`).
    """

    key: str
    label: str
    optimizer: str
    convention: str
    hyper: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    describe: str = ""

    @property
    def lr(self) -> Any:
        return self.hyper.get("lr", self.hyper.get("learning_rate"))

    def hyper_at(self, total_steps: int) -> dict[str, Any]:
        values = placeholder_values(total_steps, self.lr)
        return {k: values.get(v, v) if isinstance(v, str) else v for k, v in self.hyper.items()}

    def schedule_at(self, total_steps: int) -> schedules.Schedule | None:
        return fill_schedule(self.schedule, total_steps, self.lr) if self.schedule else None

    def build(self, params, total_steps: int):
        opt = oo.create(self.optimizer, params, convention=self.convention, **self.hyper_at(total_steps))
        return opt, self.schedule_at(total_steps)

    def fingerprint(self) -> str:
        """A digest of what trains (optimizer, convention, hyperparameters, schedule text), not of
        the label or the description: the same recipe gives the same fingerprint in any process."""
        data = {"optimizer": self.optimizer.lower(), "convention": self.convention, "hyper": self.hyper,
                "schedule": _normal_text(self.schedule)}
        blob = json.dumps(data, sort_keys=True, default=repr)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    def spec(self) -> str:
        """The recipe's data in words, e.g. "adamw(lr=0.003), torch's defaults otherwise, schedule ..."."""
        args = ", ".join(f"{k}={_show(v)}" for k, v in self.hyper.items())
        text = (f"{self.optimizer}({args}), {self.convention}'s defaults otherwise" if args
                else f"{self.optimizer} at {self.convention}'s defaults")
        return text + (f", schedule {self.schedule}" if self.schedule else "")

    def text(self) -> str:
        """What the report shows: the data, then why."""
        return self.spec() + (f" — {self.describe}" if self.describe else "")


def class_label(key: str) -> str:
    """A row outside the lecture's six is named after its class (``lion`` -> ``Lion``)."""
    try:
        return oo.get(key).__name__
    except ValueError:
        return key


def lecture_recipe(key: str, convention: str = "keras") -> Recipe:
    """The lecture's row ``key`` at the library defaults of ``convention`` ("keras" as the lecture).

    ``key`` is a lecture row or any name of :func:`optimlab.optim.available`; every one of
    them builds on the lecture's CNN (the rows whose optimizer needs more than the defaults
    say so below).
    """
    label = LECTURE[key][0] if key in LECTURE else class_label(key)
    if key == "momentum":
        return Recipe(key, label, "sgd", convention, {"momentum": 0.9})
    if key == "nag" and convention == "keras":  # Keras's NAG: its SGD with nesterov=True
        return Recipe(key, "SGD w/ Nesterov", "sgd", convention, {"momentum": 0.9, "nesterov": True})
    if convention == "keras" and key not in oo.available("keras"):
        convention = "torch"  # optimizers Keras lacks run at torch's defaults
    if key == "nag":  # torch's NAG has no default rate: torch.optim.SGD's
        return Recipe(key, "SGD w/ Nesterov", "nag", convention, {"lr": 1e-3},
                      describe="torch.optim.SGD's default rate (NAG has none)")
    if key == "muon":  # Muon takes 2-D weights: the dense layer; the conv and biases go to AdamW
        return Recipe(key, "Muon (+AdamW)", "muon_adamw", "torch", {},
                      describe="Muon for the dense weight, AdamW for the conv and biases")
    if key == "lookahead":
        return Recipe(key, label, key, convention, {"base": "adam"}, describe="Lookahead around Adam (its default)")
    if key == "sam":
        return Recipe(key, label, key, convention, {"base": "sgd"},
                      describe="SAM around SGD (its default); two gradients per step")
    hyper = {"lr": 0.1} if key == "lars" else {}
    return Recipe(key, label, key, convention, hyper)


_WARMUP_COSINE = "warmup_cosine(base_lr=LR, total_steps=TOTAL, warmup_steps=WARMUP)"
_COSINE = "cosine(base_lr=LR, period=TOTAL)"
_ONE_CYCLE = "onecycle(max_lr=LR, total_steps=TOTAL)"

# The best known recipe per row, within the same epoch budget: the lecture's six, and more.
BEYOND = {
    "adam": Recipe("adam", "AdamW + warm-up + cosine", "adamw", "torch", {"lr": 3e-3, "weight_decay": 1e-2},
                   _WARMUP_COSINE, "decoupled weight decay (Loshchilov & Hutter 2019), 5% linear warm-up, cosine to 0"),
    "rmsprop": Recipe("rmsprop", "RMSprop + warm-up + cosine", "rmsprop", "torch", {"lr": 1e-3},
                      _WARMUP_COSINE, "5% linear warm-up, cosine to 0"),
    "momentum": Recipe("momentum", "SGD + Nesterov + 1cycle", "nag", "torch", {"lr": 0.1},
                       _ONE_CYCLE, "1cycle (Smith 2018), momentum cycled 0.95→0.85→0.95"),
    "sgd": Recipe("sgd", "SGD + 1cycle", "sgd", "torch", {"lr": 0.2},
                  "onecycle(max_lr=LR, total_steps=TOTAL, cycle_momentum=False)", "1cycle, no momentum"),
    "adagrad": Recipe("adagrad", "Adagrad, lr 0.01", "adagrad", "torch", {"lr": 1e-2},
                      describe="torch's default rate: Keras's 1e-3 shrinks too fast for 10 epochs"),
    "adadelta": Recipe("adadelta", "Adadelta, lr 1.0", "adadelta", "torch", {"lr": 1.0},
                       describe="the paper's (and torch's) rate 1.0: Keras's 1e-3 barely moves"),
    # rows beyond the lecture's six (`--optimizers adamw,lion,... --beyond`)
    "adamw": Recipe("adamw", "AdamW + warm-up + cosine", "adamw", "torch", {"lr": 3e-3, "weight_decay": 1e-2},
                    _WARMUP_COSINE, "the Adam row's recipe"),
    "nadam": Recipe("nadam", "NAdamW + warm-up + cosine", "nadam", "torch",
                    {"lr": 2e-3, "weight_decay": 1e-2, "decoupled_weight_decay": True}, _WARMUP_COSINE,
                    "Dozat's (2016) rate 2e-3, decoupled weight decay, 5% linear warm-up, cosine to 0"),
    "adamax": Recipe("adamax", "Adamax + warm-up + cosine", "adamax", "torch", {"lr": 2e-3}, _WARMUP_COSINE,
                     "Kingma & Ba's (2015) rate for Adamax, 5% linear warm-up, cosine to 0"),
    "radam": Recipe("radam", "RAdamW + cosine", "radam", "torch",
                    {"lr": 3e-3, "weight_decay": 1e-2, "decoupled_weight_decay": True}, _COSINE,
                    "the AdamW recipe without the warm-up: RAdam's rectifier does its job (Liu et al. 2020)"),
    "lion": Recipe("lion", "Lion + warm-up + cosine", "lion", "torch", {"lr": 3e-4, "weight_decay": 0.1},
                   _WARMUP_COSINE, "the AdamW recipe's rate ÷10 and weight decay ×10, as Chen et al. (2023) advise "
                                   "(the same lr·wd), 5% linear warm-up, cosine to 0"),
    "schedulefree_adamw": Recipe("schedulefree_adamw", "Schedule-Free AdamW + warm-up", "schedulefree_adamw", "torch",
                                 {"lr": 2.5e-3, "warmup_steps": "WARMUP"},
                                 describe="no schedule; its own 5% warm-up, which Defazio et al. (2024) recommend"),
}
BEYOND["nag"] = replace(BEYOND["momentum"], key="nag")
