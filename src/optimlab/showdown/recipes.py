"""What the showdown runs: the lecture's six rows, and the best known recipe for each.

The lecture (seeds/004) trained a Conv2D → MaxPool → Dropout → Dense network on MNIST for
10 epochs at batch size 64 with Keras's default optimizers and reported this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

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


@dataclass(frozen=True)
class Recipe:
    """How to build one row's optimizer (and schedule) for a model and a step budget."""

    key: str
    label: str
    optimizer: str
    convention: str
    hyper: dict[str, Any] = field(default_factory=dict)
    schedule: Callable[[int], schedules.Schedule] | None = None  # total steps -> schedule
    describe: str = ""

    def build(self, params, total_steps: int):
        opt = oo.create(self.optimizer, params, convention=self.convention, **self.hyper)
        return opt, (self.schedule(total_steps) if self.schedule else None)


def lecture_recipe(key: str, convention: str = "keras") -> Recipe:
    """The lecture's row ``key`` at the library defaults of ``convention`` ("keras" as the lecture)."""
    label = LECTURE[key][0] if key in LECTURE else key
    if key == "momentum":
        return Recipe(key, label, "sgd", convention, {"momentum": 0.9}, describe=f"SGD(momentum=0.9), {convention} defaults")
    if convention == "keras" and key not in oo.available("keras"):
        convention = "torch"  # optimizers Keras lacks run at torch's defaults
    if key == "muon":  # Muon takes 2-D weights: the dense layer; the conv and biases go to AdamW
        return Recipe(key, "Muon (+AdamW)", "muon_adamw", "torch", {},
                      describe="Muon for the dense weight, AdamW for the conv and biases, torch defaults")
    hyper = {"lr": 0.1} if key == "lars" else {}
    return Recipe(key, label, key, convention, hyper, describe=f"{key}, {convention} defaults")


def _warmup_cosine(lr: float, warmup_fraction: float = 0.05):
    return lambda total: schedules.warmup_cosine(base_lr=lr, total_steps=total + 1,
                                                 warmup_steps=max(1, int(warmup_fraction * total)))


def _one_cycle(max_lr: float, momentum: bool = True):
    return lambda total: schedules.OneCycle(max_lr=max_lr, total_steps=total + 1, cycle_momentum=momentum)


# The best known recipe per lecture row, within the same epoch budget.
BEYOND = {
    "adam": Recipe("adam", "AdamW + warm-up + cosine", "adamw", "torch", {"lr": 3e-3, "weight_decay": 1e-2},
                   _warmup_cosine(3e-3), "AdamW(lr=3e-3, wd=1e-2), 5% linear warm-up, cosine to 0"),
    "rmsprop": Recipe("rmsprop", "RMSprop + warm-up + cosine", "rmsprop", "torch", {"lr": 1e-3},
                      _warmup_cosine(1e-3), "RMSprop(lr=1e-3, alpha=0.99), 5% warm-up, cosine to 0"),
    "momentum": Recipe("momentum", "SGD + Nesterov + 1cycle", "nag", "torch", {"lr": 0.1},
                       _one_cycle(0.1), "NAG, 1cycle max_lr=0.1, momentum cycled 0.95→0.85→0.95"),
    "sgd": Recipe("sgd", "SGD + 1cycle", "sgd", "torch", {"lr": 0.2}, _one_cycle(0.2, momentum=False),
                  "SGD (no momentum), 1cycle max_lr=0.2"),
    "adagrad": Recipe("adagrad", "Adagrad, lr 0.01", "adagrad", "torch", {"lr": 1e-2},
                      describe="torch's default rate: Keras's 1e-3 shrinks too fast for 10 epochs"),
    "adadelta": Recipe("adadelta", "Adadelta, lr 1.0", "adadelta", "torch", {"lr": 1.0},
                       describe="the paper's (and torch's) rate 1.0: Keras's 1e-3 barely moves"),
}
