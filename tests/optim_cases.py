"""The capability table that drives the optimizer tests: one row per optimizer."""

from __future__ import annotations

import textwrap

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


def stepping_script(optimizer: str, shape: tuple[int, ...], steps: int, report: str) -> str:
    """A child process's script: ``steps`` steps of ``optimlab.optim.<optimizer>`` (lr 0.01) on
    three seeded float64 tensors of ``shape``; then it prints ``report`` (an expression over
    ``opt``, ``_layout``, ``_pointers``) and, on the next line, the parameters' values."""
    return textwrap.dedent(f"""
        import torch, optimlab.optim as oo
        from optimlab.optim import _layout, _pointers
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn({shape!r}, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        opt = oo.{optimizer}(ps, lr=0.01)
        for _ in range({steps}):
            for p in ps:
                p.grad = torch.randn({shape!r}, generator=gen, dtype=torch.float64)
            opt.step()
        print({report})
        print(repr(torch.cat([p.detach().flatten() for p in ps]).tolist()))
    """)


def seed_kernel_cache(dest, skip: tuple[str, ...] = ()) -> None:
    """Copy this process's compiled libraries (kernels, pointer gatherer, layout guards) into
    ``dest``, an ``OPTIMLAB_KERNEL_CACHE`` for a child process, so that the child builds only
    what it is meant to (names starting with any of ``skip`` are left out)."""
    import shutil

    from optimlab.optim import _fused, _layout, _native, _pointers
    _fused.available(), _pointers.available(), _layout.available()  # (built here, if they can be)
    dest.mkdir(parents=True, exist_ok=True)
    try:  # the ones this process loaded (the cache may hold others' too)
        with open("/proc/self/maps") as f:
            loaded = {line.split()[-1].rsplit("/", 1)[-1] for line in f if "optimlab_" in line}
    except OSError:
        loaded = None
    for lib in _native.cache_dir().glob("optimlab_*.so"):
        if not lib.name.startswith(skip) and (loaded is None or lib.name in loaded):
            shutil.copy2(lib, dest / lib.name)
