"""Plain, obviously-correct schedule formulas, written straight from the lecture
notes and papers, used as oracles where torch has no counterpart.

Deliberately naive: no shared helpers with optimlab, loops instead of
closed forms where that is clearer.
"""

import math


def step_decay(t, lr0, every, factor):
    """Divide by ``factor`` every ``every`` steps."""
    lr = lr0
    for _ in range(t // every):
        lr /= factor
    return lr


def piecewise_constant(t, boundaries, values):
    """values[0] before boundaries[0], values[1] from boundaries[0], ..."""
    i = 0
    while i < len(boundaries) and t >= boundaries[i]:
        i += 1
    return values[i]


def exponential(t, lr0, r, s, staircase=False):
    """Géron: η(t) = η0 · r^(t/s)."""
    return lr0 * r ** (math.floor(t / s) if staircase else t / s)


def power(t, lr0, s, c):
    """Géron: η(t) = η0 / (1 + t/s)^c."""
    return lr0 / (1 + t / s) ** c


def polynomial(t, lr0, total, p, end=0.0):
    t = min(t, total)
    return (lr0 - end) * (1 - t / total) ** p + end


def linear(t, start, end, steps):
    if t >= steps:
        return end
    return start + (end - start) * t / steps


def cosine(t, lr0, period, floor):
    return floor + 0.5 * (lr0 - floor) * (1 + math.cos(math.pi * t / period))


def cosine_restarts(t, lr0, period, mult, floor):
    """Walk through the periods one by one (SGDR, Loshchilov & Hutter)."""
    start, length = 0, period
    while t >= start + length:
        start += length
        length *= mult
    return cosine(t - start, lr0, length, floor)


def nanogpt_lr(t, lr0, warmup, total, floor, start=0.0):
    """nanoGPT-style get_lr: linear warm-up, cosine to the floor, then the floor."""
    if t < warmup:
        return start + (lr0 - start) * t / warmup
    if t >= total:
        return floor
    progress = (t - warmup) / (total - warmup)
    return floor + 0.5 * (lr0 - floor) * (1 + math.cos(math.pi * progress))
