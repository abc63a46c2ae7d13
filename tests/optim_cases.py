"""The capability table that drives the optimizer tests: one row per optimizer."""

from __future__ import annotations

import torch

import optimlab.optim as oo

# name -> (our class, torch twin, torch kwargs fixed by our class, list of hyperparameter variants)
CASES = {
    "sgd": (oo.SGD, torch.optim.SGD, {}, [
        dict(lr=0.05),
        dict(lr=0.05, maximize=True),
        dict(lr=0.05, weight_decay=0.01),
        dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True, weight_decay=0.01),
    ]),
    "momentum": (oo.Momentum, torch.optim.SGD, {"momentum": 0.9}, [dict(lr=0.05), dict(lr=0.05, weight_decay=0.1)]),
    "nag": (oo.NAG, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, [dict(lr=0.05)]),
    "adagrad": (oo.Adagrad, torch.optim.Adagrad, {}, [
        dict(lr=0.1),
        dict(lr=0.1, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.1, maximize=True),
    ]),
    "rmsprop": (oo.RMSprop, torch.optim.RMSprop, {}, [
        dict(lr=0.01),
        dict(lr=0.01, momentum=0.8, weight_decay=0.05),
        dict(lr=0.01, centered=True, momentum=0.5, alpha=0.9, maximize=True),
    ]),
    "adadelta": (oo.Adadelta, torch.optim.Adadelta, {}, [dict(), dict(lr=0.5, rho=0.8, weight_decay=0.1)]),
    "adam": (oo.Adam, torch.optim.Adam, {}, [
        dict(lr=0.01),
        dict(lr=0.01, amsgrad=True, weight_decay=0.1, betas=(0.8, 0.99)),
        dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1, maximize=True),
    ]),
    "adamw": (oo.AdamW, torch.optim.AdamW, {}, [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.3)]),
    "adamax": (oo.Adamax, torch.optim.Adamax, {}, [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, maximize=True)]),
    "nadam": (oo.NAdam, torch.optim.NAdam, {}, [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    ]),
}

SHAPES = [(), (7,), (5, 3), (2, 3, 4, 1)]


def torch_kwargs(name: str, hyper: dict) -> dict:
    return {**CASES[name][2], **hyper}


def gradient_sequence(steps: int, shapes, dtype, seed: int = 0):
    """Per step, one gradient per parameter: mostly random, sometimes zero, sometimes None."""
    gen = torch.Generator().manual_seed(seed)
    seq = []
    for t in range(steps):
        grads = []
        for i, shape in enumerate(shapes):
            if i == 1 and t % 7 == 3:
                grads.append(None)  # skipped: no state change, no step increment
            elif i == 2 and t % 5 == 2:
                grads.append(torch.zeros(shape, dtype=dtype))  # not skipped: moments still decay
            else:
                grads.append(torch.randn(shape, generator=gen, dtype=dtype))
        seq.append(grads)
    return seq
