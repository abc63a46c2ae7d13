r"""A pytest plugin that runs PyTorch's own optimizer tests against optimlab's twins.

PyTorch's ``test/test_optim.py`` (class ``TestOptimRenewed``) is not installed with the wheel.
Take it from a PyTorch checkout of the installed version, remove its three imports of sibling
test modules (``from optim.test_optim import ...``, ``optim.test_lrscheduler``,
``optim.test_swa_utils``: not importable outside PyTorch's tree), install ``expecttest`` (which
``torch.testing._internal`` needs; pytest comes with the test extra) and run, from this
repository's root::

    KERAS_BACKEND=torch PYTHONPATH=. .venv/bin/python -m pytest -p tests.torch_suite \
        path/to/test_optim.py -k "TestOptimRenewed and cpu" -q

Before the test file is collected, every ``torch.optim.NAME`` that optimlab twins is replaced by
``optimlab.optim.NAME``, in ``torch.optim``, in ``torch.testing._internal.common_optimizers`` and
in the ``optim_cls`` of each ``OptimizerInfo`` of its ``optim_db``; tests of optimizers optimlab
does not twin are deselected. A class is a twin when it subclasses ``torch.optim.Optimizer`` and
its constructor takes every parameter of torch's under the same name, position and default
(optimlab-only keywords with defaults, such as ``skip_nonfinite``, are allowed):
:func:`twin_problems`. ``tests/test_optim_torch_contract.py`` checks that every twin passes it.

What to expect (torch 2.13, the test file of pytorch commit c96bc81b): 252 tests of the 11
twins; 144 pass, 88 skip (CUDA), 20 fail. 9 of those fail with torch's own classes too (that
file predates torch 2.13's Muon and Adafactor); the other 11 are ``test_errors``, one per
optimizer, which stops at the first input whose message is not torch's wording, and expects
torch's warning for a parameter given twice, which optimlab refuses (both deliberate:
docs/conventions.md, section 6).
"""

from __future__ import annotations

import inspect
import re

import torch

import optimlab.optim as oo

_P = inspect.Parameter


def twin_problems(torch_cls: type, cls: object) -> list[str]:
    """Why ``cls`` cannot stand in for ``torch_cls`` wherever torch's tests build it ([]: it can)."""
    if not isinstance(cls, type) or not issubclass(cls, torch.optim.Optimizer) or cls is torch_cls:
        return ["not an optimizer class of its own"]
    theirs = list(inspect.signature(torch_cls.__init__).parameters.values())
    ours = inspect.signature(cls.__init__).parameters
    order = list(ours.values())
    problems = []
    for i, tp in enumerate(theirs):
        if tp.name == "self":
            continue
        cp = ours.get(tp.name)
        if cp is None:
            problems.append(f"no parameter {tp.name!r}")
            continue
        if tp.default is not _P.empty and cp.default != tp.default:
            problems.append(f"{tp.name}: default {cp.default!r}, torch's {tp.default!r}")
        if tp.kind == _P.POSITIONAL_OR_KEYWORD and (cp.kind != _P.POSITIONAL_OR_KEYWORD or order.index(cp) != i):
            problems.append(f"{tp.name!r} is not positional at index {i}")
        elif tp.kind == _P.KEYWORD_ONLY and cp.kind not in (_P.KEYWORD_ONLY, _P.POSITIONAL_OR_KEYWORD):
            problems.append(f"{tp.name!r} cannot be passed by keyword")
    names = {tp.name for tp in theirs}
    problems += [f"a required parameter of its own, {cp.name!r}" for cp in order
                 if cp.name not in names and cp.default is _P.empty
                 and cp.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)]
    return problems


def twins() -> dict[str, tuple[type, type]]:
    """``{name: (torch's class, optimlab's class)}`` for every torch optimizer optimlab twins."""
    out = {}
    for name in dir(torch.optim):
        theirs = getattr(torch.optim, name)
        if isinstance(theirs, type) and issubclass(theirs, torch.optim.Optimizer) and theirs is not torch.optim.Optimizer:
            ours = getattr(oo, name, None)
            if ours is not None and not twin_problems(theirs, ours):
                out[name] = (theirs, ours)
    return out


PATCHED: dict[str, tuple[type, type]] = {}


def pytest_configure(config):
    import torch.testing._internal.common_optimizers as co

    PATCHED.update(twins())
    for name, (theirs, ours) in PATCHED.items():
        setattr(torch.optim, name, ours)
        if getattr(co, name, None) is theirs:
            setattr(co, name, ours)
    for info in co.optim_db:
        pair = PATCHED.get(info.optim_cls.__name__)
        if pair is not None and info.optim_cls is pair[0]:
            info.optim_cls = pair[1]


def pytest_report_header(config):
    return ["optimlab twins patched in: " + ", ".join(sorted(PATCHED))]


def pytest_collection_modifyitems(session, config, items):
    """Keep the tests of patched optimizers (names like test_<what>_<Optimizer>_cpu_<dtype>)."""
    pattern = re.compile(r"_(" + "|".join(sorted(PATCHED, key=len, reverse=True)) + r")_(cpu|cuda)")
    keep = [item for item in items if pattern.search(item.name)]
    drop = [item for item in items if not pattern.search(item.name)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
