"""optimlab.optim._guards: the compiled layout guards decide as torch's TensorGuards does on
every pair of layouts, refuse to record what they cannot read, and step aside (to
TensorGuards) where they cannot be built."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import torch
from torch.utils._pytree import tree_map

from optimlab.optim import _guards, _layout
from tests.optim_cases import seed_kernel_cache, stepping_script

Guards = _guards.Guards if _guards.Guards in _layout._guards() else None  # (built and self-tested)
needs_guards = pytest.mark.skipif(Guards is None, reason="the layout guards could not be built here")
KW = {"dynamic_dims_sizes": None, "dynamic_dims_strides": None}


def _tensor_guards():
    try:
        from torch._C._dynamo.guards import TensorGuards
    except ImportError:
        return None
    return TensorGuards if _layout._self_test(TensorGuards) else None


TensorGuards = _tensor_guards()


class Plain(torch.Tensor):
    """A Python subclass without __torch_dispatch__ (no Python dispatch key)."""


class Wrapper(torch.Tensor):
    """A __torch_dispatch__ wrapper subclass (Python dispatch key; no real storage)."""

    @staticmethod
    def __new__(cls, inner):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, strides=inner.stride())

    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda t: t.inner if isinstance(t, Wrapper) else t  # noqa: E731
        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))


def _inference():
    with torch.inference_mode():
        return torch.zeros(4, 6)


# Layouts both guard classes record; each is made twice (two distinct tensors of one layout).
RECORDABLE = {
    "float32": lambda: torch.zeros(4, 6),
    "float64": lambda: torch.zeros(4, 6, dtype=torch.float64),
    "int64": lambda: torch.zeros(4, 6, dtype=torch.int64),
    "complex64": lambda: torch.zeros(4, 6, dtype=torch.complex64),
    "conjugate view": lambda: torch.zeros(4, 6, dtype=torch.complex64).conj(),
    "negative view": lambda: torch._neg_view(torch.zeros(4, 6)),
    "zero tensor": lambda: torch._efficientzerotensor(4, 6),
    "transposed": lambda: torch.zeros(6, 4).t(),
    "offset view": lambda: torch.zeros(30)[6:].view(4, 6),
    "broadcast view": lambda: torch.zeros(1, 6).expand(4, 6),
    "flat": lambda: torch.zeros(24),
    "0-dim": lambda: torch.zeros(()),
    "no elements": lambda: torch.zeros(0, 6),
    "channels_last": lambda: torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last),
    "7 dims": lambda: torch.zeros(1, 2, 1, 3, 1, 2, 2),
    "7 dims, other strides": lambda: torch.zeros(1, 2, 1, 3, 1, 2, 2).transpose(1, 5),
    "requires_grad": lambda: torch.zeros(4, 6, requires_grad=True),
    "non-leaf": lambda: torch.zeros(4, 6, requires_grad=True) * 1,
    "Parameter": lambda: torch.nn.Parameter(torch.zeros(4, 6)),
    "frozen Parameter": lambda: torch.nn.Parameter(torch.zeros(4, 6), requires_grad=False),
    "Python subclass": lambda: torch.zeros(4, 6).as_subclass(Plain),
    "inference tensor": _inference,
    "meta": lambda: torch.zeros(4, 6, device="meta"),
}
# Layouts that differ only in what the guards do not compare (storage offset, being a leaf).
SAME = [{"float32", "offset view"}, {"requires_grad", "non-leaf"}]


def _same(a: str, b: str) -> bool:
    return a == b or any({a, b} <= group for group in SAME)


# What the compiled guards do not record (TensorGuards serves them), each also a candidate.
UNRECORDABLE = {
    "sparse": lambda: torch.zeros(4, 6).to_sparse(),
    "sparse CSR": lambda: torch.zeros(4, 6).to_sparse_csr(),
    "mkldnn": lambda: torch.zeros(4, 6).to_mkldnn(),
    "wrapper subclass": lambda: Wrapper(torch.zeros(4, 6)),
    "nested": lambda: torch.nested.nested_tensor([torch.zeros(4), torch.zeros(6)]),
    "jagged nested": lambda: torch.nested.nested_tensor([torch.zeros(4), torch.zeros(6)], layout=torch.jagged),
    "not a tensor": lambda: 0.0,
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (nested and sparse CSR tensors are prototypes: torch says so)
        yield


@needs_guards
def test_the_compiled_guards_serve_by_default_where_a_compiler_is():
    assert _layout._guards()[0] is Guards


@needs_guards
@pytest.mark.skipif(TensorGuards is None, reason="TensorGuards unusable in this torch")
@pytest.mark.parametrize("recorded", list(RECORDABLE))
def test_every_pair_of_layouts_is_decided_as_tensor_guards_decides(recorded):
    """Recorded one layout (beside a fixed tensor), checked against a fresh tensor of every
    layout: the same answer as TensorGuards, which is True exactly for the same layout."""
    anchor = torch.zeros(3)
    ours = Guards(RECORDABLE[recorded](), anchor, **KW)
    torchs = TensorGuards(RECORDABLE[recorded](), anchor, **KW)
    for name, make in {**RECORDABLE, **UNRECORDABLE}.items():
        candidate = make()
        got = ours.check(candidate, anchor)
        assert got == _same(name, recorded), (recorded, name)
        if "nested" not in name:  # (TensorGuards aborts the process on a strided nested tensor)
            assert torchs.check(candidate, anchor) == got, (recorded, name)


@needs_guards
@pytest.mark.parametrize("kind", list(UNRECORDABLE))
def test_what_it_cannot_read_it_refuses_to_record(kind):
    with pytest.raises((ValueError, TypeError)):
        Guards(torch.zeros(3), UNRECORDABLE[kind](), **KW)


@needs_guards
@pytest.mark.parametrize("n", [2, 8, 9, 300])
def test_a_tensor_given_twice_is_refused_wherever_it_repeats(n):
    tensors = [torch.zeros(2) for _ in range(n)]
    with pytest.raises(ValueError, match="twice"):
        Guards(*tensors[:-1], tensors[0], **KW)
    guard = Guards(*tensors, **KW)
    assert guard.check(*[torch.ones(2) for _ in range(n)])
    for i, j in [(0, n - 1), (n // 2, n // 2 - 1), (n - 2, n - 1)]:
        again = [torch.ones(2) for _ in range(n)]
        again[j] = again[i]
        assert not guard.check(*again), (i, j)


@needs_guards
def test_lengths_and_non_tensors_never_match():
    guard = Guards(torch.zeros(3), torch.zeros(4), **KW)
    assert not guard.check(torch.zeros(3))
    assert not guard.check(torch.zeros(3), torch.zeros(4), torch.zeros(4))
    assert not guard.check(torch.zeros(3), None)
    assert not guard.check(torch.zeros(3), [torch.zeros(4)])
    assert Guards(**KW).check() and not Guards(**KW).check(torch.zeros(1))
    with pytest.raises(ValueError, match="dynamic"):
        Guards(torch.zeros(3), dynamic_dims_sizes=[[0]], dynamic_dims_strides=None)


@needs_guards
def test_a_layout_changed_in_place_is_seen():
    """The same tensor objects, changed after recording (resize, set_, requires_grad)."""
    a, b = torch.zeros(4, 6), torch.zeros(5)
    guard = Guards(a, b, **KW)
    assert guard.check(a, b)
    a.resize_(6, 4)
    assert not guard.check(a, b)
    a.resize_(4, 6)
    assert guard.check(a, b)
    a.set_(torch.zeros(6, 4).t())
    assert not guard.check(a, b)
    a.set_(torch.zeros(4, 6))
    b.requires_grad_()
    assert not guard.check(a, b)
    b.data = torch.zeros(5, dtype=torch.float64)
    assert not guard.check(a, b)


@needs_guards
def test_copies_are_the_guard_itself_and_pickling_is_refused():
    """(A copied handle would be freed twice: the process would abort.)"""
    guard = Guards(torch.zeros(2), **KW)
    assert copy.copy(guard) is guard and copy.deepcopy([guard])[0] is guard
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(guard)
    del guard
    assert copy.deepcopy(Guards(torch.zeros(3), **KW)).check(torch.ones(3))


@needs_guards
def test_checks_from_many_threads_agree():
    same = [torch.zeros(7) for _ in range(50)]
    guard = Guards(*same, **KW)
    repeated = same[:-1] + same[:1]
    results, errors = [], []

    def work():
        try:
            for _ in range(300):
                results.append((guard.check(*same), guard.check(*repeated)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(results) == {(True, False)}


@needs_guards
@pytest.mark.skipif(TensorGuards is None, reason="TensorGuards unusable in this torch")
def test_the_memo_takes_tensor_guards_for_what_these_do_not_record(monkeypatch):
    monkeypatch.setattr(_layout, "_guards_classes", (Guards, TensorGuards))
    memo = _layout.Memo()
    memo.put("sparse", [torch.zeros(3), torch.zeros(4).to_sparse()], "s")
    memo.put("dense", [torch.zeros(3), torch.zeros(4)], "d")
    assert type(memo._entries["sparse"][0]) is TensorGuards and type(memo._entries["dense"][0]) is Guards
    assert memo.get("sparse", [torch.ones(3), torch.ones(4).to_sparse()]) == "s"
    assert memo.get("dense", [torch.ones(3), torch.ones(4)]) == "d"
    nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(2)])
    assert memo.get("dense", [torch.ones(3), nested]) is None  # (refused by the key set: no filter needed)
    assert memo.get("sparse", [torch.ones(3), nested]) is None  # (filtered before TensorGuards)


@pytest.mark.parametrize("setting, expected", [("torch", ["TensorGuards"]), ("0", [])])
def test_the_environment_picks_the_guards(setting, expected):
    out = subprocess.run([sys.executable, "-c", "from optimlab.optim import _layout; "
                          "print([c.__name__ for c in _layout._guards()])"], capture_output=True, text=True,
                         check=True, env={**os.environ, "OPTIMLAB_LAYOUT_MEMO": setting})
    assert out.stdout.strip() == repr(expected if TensorGuards is not None else [])


def test_without_a_compiler_tensor_guards_serve_silently(tmp_path):
    script = stepping_script("Adam", (4, 3), 4, "[c.__name__ for c in _layout._guards()]")
    runs = []
    for cxx in ("/bin/false", None):  # (each with this process's libraries, the C++ ones but with a C++ compiler)
        cache = tmp_path / ("no-cxx" if cxx else "cxx")
        seed_kernel_cache(cache, skip=("optimlab_guards_", "optimlab_pointers_") if cxx else ())
        env = {**os.environ, "OPTIMLAB_KERNEL_CACHE": str(cache), "PYTHONWARNINGS": "default"}
        env.pop("CXX", None)
        if cxx:
            env["CXX"] = cxx
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
        runs.append(proc.stdout.splitlines())
        if cxx:
            assert proc.stderr == ""  # (no warning: only slower re-checks)
    names = ["TensorGuards"] if TensorGuards is not None else []
    assert runs[0][0] == repr(names)
    if shutil.which("c++") or shutil.which("g++"):
        assert runs[1][0] == repr(["Guards"] + names)
    assert runs[0][1] == runs[1][1]  # (same steps, bit for bit)


def _run_script(script: str) -> subprocess.CompletedProcess:
    """(A crash must fail the test, not end the test run.)"""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120)


@needs_guards
def test_an_optimizer_reached_again_after_its_cycle_was_finalized_steps_on():
    """gc runs every finalizer of a cyclic garbage set before freeing it; an object's
    ``__del__`` may keep the set alive (PEP 442). The optimizer's remembered layouts must
    still work then (a guard freed by its finalizer made the next step read freed memory)."""
    proc = _run_script("""
        import gc, torch, optimlab.optim as oo
        keep = []
        class Holder:
            def __del__(self):
                keep.append(self)
        p = torch.nn.Parameter(torch.randn(4))
        opt = oo.SGD([p], lr=0.1, momentum=0.9)
        for _ in range(2):
            p.grad = torch.ones(4)
            opt.step()
        h = Holder(); h.opt = opt; opt.holder = h
        del h, opt
        gc.collect()
        opt = keep[0].opt
        for _ in range(2):
            p.grad = torch.ones(4)
            opt.step()
        print("stepped", opt.path_for(0))
    """)
    assert proc.returncode == 0 and "stepped" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


@needs_guards
def test_a_guard_keeps_the_types_it_recorded_alive():
    """A recorded type's address must not be reused by another type while the guard can
    still compare with it (then an object of that other type would be read as a tensor)."""
    import gc
    import weakref

    def make():
        class Sub(torch.Tensor):
            pass
        return Guards(torch.zeros(3).as_subclass(Sub), **KW), weakref.ref(Sub)

    guard, sub = make()
    gc.collect()
    assert sub() is not None and guard.check(torch.ones(3).as_subclass(sub()))
    del guard
    gc.collect()
    assert sub() is None  # (and no leak once the guard is gone)


@needs_guards
def test_an_object_posing_as_a_tensor_is_refused_without_being_read():
    proc = _run_script("""
        import torch
        from optimlab.optim import _guards, _layout
        assert _guards.Guards in _layout._guards()
        class Fake:
            __slots__ = ("x",)
            _cdata = 0
        for args in [(Fake(),), (torch.zeros(2), Fake())]:
            try:
                _guards.Guards(*args)
            except TypeError:
                print("refused")
        print(_guards.Guards(torch.zeros(2)).check(Fake()))
    """)
    assert proc.returncode == 0 and proc.stdout.split() == ["refused", "refused", "False"], (proc.returncode,
                                                                                          proc.stderr[-2000:])
