"""The default path (``fused=None``, ``foreach=None``) is the fastest exact one.

On dense float32/float64 CPU tensors it is the single-pass kernel (torch's fused kernels for
Adagrad, Adam and AdamW; optimlab's C kernels for SGD, Momentum, NAG, RMSprop, Adadelta,
Adamax and NAdam), proved here by spying on the kernels' entry points and by
``optimizer.path_for(group)``; wherever a kernel cannot serve (sparse, complex, float16,
mixed dtypes, ``foreach=True``, ``fused=False``, kernels off or failing to build) the
foreach or single-tensor path runs, silently, and every result still matches torch.optim
(within test_fused.py's tolerances where a kernel ran). No timings are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import optimlab.optim as oo
from optimlab.optim import _fused

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
#: test_fused.py's tolerances for a kernel against the foreach rule
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-5, atol=1e-6)}

#: name: (optimlab class, its hyperparameters, torch class, torch's, kernel entry point)
CASES = {
    "SGD": (oo.SGD, dict(lr=0.1, weight_decay=0.01), torch.optim.SGD, dict(lr=0.1, weight_decay=0.01),
            (_fused, "launch")),
    "Momentum": (oo.Momentum, dict(lr=0.1), torch.optim.SGD, dict(lr=0.1, momentum=0.9), (_fused, "launch")),
    "NAG": (oo.NAG, dict(lr=0.1), torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True),
            (_fused, "launch")),
    "Adagrad": (oo.Adagrad, dict(lr=0.1), torch.optim.Adagrad, dict(lr=0.1), (torch, "_fused_adagrad_")),
    "Adam": (oo.Adam, dict(lr=0.01), torch.optim.Adam, dict(lr=0.01), (torch, "_fused_adam_")),
    "AdamW": (oo.AdamW, dict(lr=0.01), torch.optim.AdamW, dict(lr=0.01), (torch, "_fused_adamw_")),
    "RMSprop": (oo.RMSprop, dict(lr=0.01, momentum=0.5, centered=True), torch.optim.RMSprop,
                dict(lr=0.01, momentum=0.5, centered=True), (_fused, "rmsprop")),
    "Adadelta": (oo.Adadelta, dict(), torch.optim.Adadelta, dict(), (_fused, "adadelta")),
    "Adamax": (oo.Adamax, dict(), torch.optim.Adamax, dict(), (_fused, "adamax")),
    "NAdam": (oo.NAdam, dict(), torch.optim.NAdam, dict(), (_fused, "nadam")),
}
NAMES = list(CASES)
SHAPES = [(7, 5), (11,), (), (3, 4, 2)]

needs_kernels = pytest.mark.skipif(not _fused.available(), reason="fused kernels unavailable (no C compiler)")


@pytest.fixture
def calls(monkeypatch):
    """Count the calls of every kernel entry point (torch's fused ops, optimlab's kernels that
    did the update)."""
    counts: dict[str, int] = {}
    for _, _, _, _, (owner, attr) in CASES.values():
        real = getattr(owner, attr)
        if getattr(real, "_spy", False):
            continue

        def wrapper(*args, _real=real, _attr=attr, **kwargs):
            out = _real(*args, **kwargs)
            if out is not False:
                counts[_attr] = counts.get(_attr, 0) + 1
            return out

        wrapper._spy = True
        monkeypatch.setattr(owner, attr, wrapper)
    return counts


def tensors(dtype, shapes=SHAPES, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device) for s in shapes]


def run(make, start, grad_seq):
    """``make(params)`` stepped over ``grad_seq`` from ``start``; the parameters and the optimizer."""
    params = [t.clone().requires_grad_() for t in start]
    opt = make(params)
    for k, grads in enumerate(grad_seq):
        if k == len(grad_seq) // 2:
            for g in opt.param_groups:
                g["lr"] = g["lr"] * 0.5
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return params, opt


def twins(name, dtype, ours_extra=(), shapes=SHAPES, device="cpu"):
    cls, hyper, tcls, thyper, _ = CASES[name]
    start = tensors(dtype, shapes, seed=1, device=device)
    grad_seq = [tensors(dtype, shapes, seed=10 + k, device=device) for k in range(STEPS)]
    pa, oa = run(lambda ps: cls(ps, **hyper, **dict(ours_extra)), start, grad_seq)
    pb, ob = run(lambda ps: tcls(ps, **thyper), start, grad_seq)
    return pa, oa, pb, ob


def assert_params_close(pa, pb, **tol):
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)


# --------------------------------------------------------------------- the kernels run
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_default_is_the_kernel_on_cpu(name, dtype, calls):
    pa, oa, pb, _ = twins(name, dtype)
    entry = CASES[name][4][1]
    assert calls.get(entry) == STEPS, (name, calls)
    assert oa.path_for(oa.param_groups[0]) == "fused" and oa.path_for(0) == "fused"
    assert_params_close(pa, pb, **TOL[dtype])


@needs_kernels
def test_plain_sgd_default_is_its_one_pass_form():
    start, grads = tensors(torch.float32), [tensors(torch.float32, seed=3)]
    pa, oa = run(lambda ps: oo.SGD(ps, lr=0.1), start, grads)
    pb, _ = run(lambda ps: torch.optim.SGD(ps, lr=0.1), start, grads)
    assert oa.path_for(0) == "fused"  # the generated kernel: one fma, as torch's single-tensor SGD
    assert_params_close(pa, pb, rtol=0, atol=0)


@needs_kernels
def test_two_groups_each_take_the_kernel(calls):
    start = tensors(torch.float32)
    params = [t.clone().requires_grad_() for t in start]
    opt = oo.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    for p, g in zip(params, tensors(torch.float32, seed=4)):
        p.grad = g
    opt.step()
    assert calls["_fused_adam_"] == 2 and [opt.path_for(g) for g in opt.param_groups] == ["fused", "fused"]


def test_path_for_before_a_step_and_for_a_foreign_group():
    opt = oo.Adam([torch.zeros(2, requires_grad=True)])
    assert opt.path_for(0) is None
    with pytest.raises(ValueError, match="not a param group"):
        opt.path_for({"params": []})


# ------------------------------------------------------------------------ fall-backs
@pytest.mark.parametrize("extra,path", [(dict(foreach=True), "foreach"), (dict(fused=False), "foreach"),
                                        (dict(foreach=False), "single-tensor")],
                         ids=["foreach=True", "fused=False", "foreach=False"])
@pytest.mark.parametrize("name", NAMES)
def test_explicit_flags_keep_their_path(name, extra, path, calls):
    pa, oa, pb, _ = twins(name, torch.float32, extra)
    assert not calls and oa.path_for(0) == path
    assert_params_close(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_complex_falls_back(name, calls):
    pa, oa, pb, _ = twins(name, torch.complex64)
    assert not calls and oa.path_for(0) == "foreach"
    assert_params_close(pa, pb, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_falls_back(name, dtype, calls):
    cls, hyper, tcls, thyper, _ = CASES[name]
    start = tensors(dtype, seed=1)
    grad_seq = [tensors(dtype, seed=10 + k) for k in range(STEPS)]
    pa, oa = run(lambda ps: cls(ps, **hyper), start, grad_seq)
    pb, _ = run(lambda ps: tcls(ps, **thyper, foreach=True), start, grad_seq)
    assert not calls and oa.path_for(0) == "foreach"
    assert_params_close(pa, pb)  # against torch's foreach form, assert_close's tolerance for the dtype


@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtypes_in_one_group_fall_back(name, calls):
    cls, hyper, tcls, thyper, _ = CASES[name]
    start = tensors(torch.float32)
    start[1] = start[1].double()
    grad_seq = [tensors(torch.float32, seed=10 + k) for k in range(STEPS)]
    for grads in grad_seq:
        grads[1] = grads[1].double()
    pa, oa = run(lambda ps: cls(ps, **hyper), start, grad_seq)
    pb, _ = run(lambda ps: tcls(ps, **thyper), start, grad_seq)
    assert not calls and oa.path_for(0) == "foreach"
    assert_params_close(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["SGD", "Momentum", "Adagrad"])
def test_sparse_gradients_fall_back(name, calls):
    cls, hyper, tcls, thyper, _ = CASES[name]
    hyper, thyper = {**hyper, "weight_decay": 0}, {**thyper, "weight_decay": 0}
    results = []
    for make in (lambda ps: cls(ps, **hyper), lambda ps: tcls(ps, **thyper)):
        emb = torch.nn.Embedding(10, 3, sparse=True)
        with torch.no_grad():
            emb.weight.copy_(torch.arange(30, dtype=torch.float32).reshape(10, 3) / 30)
        opt = make(emb.parameters())
        for k in range(STEPS):
            opt.zero_grad()
            emb(torch.tensor([k % 10, (3 * k) % 10, 1])).pow(2).sum().backward()
            opt.step()
        results.append((emb.weight.detach(), opt))
    assert not calls and results[0][1].path_for(0) == "single-tensor"
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)


def test_non_contiguous_state_falls_back_silently(recwarn):
    """A tensor the kernel's checks refuse (here a hand-made transposed state): the foreach rule."""
    p = torch.randn(4, 3, dtype=torch.float64).requires_grad_()
    opt = oo.RMSprop([p], lr=0.01)
    p.grad = torch.randn(4, 3, dtype=torch.float64)
    opt.step()
    opt.state[p]["square_avg"] = opt.state[p]["square_avg"].t().contiguous().t()
    opt.step()
    assert opt.path_for(0) == "foreach" and not [w for w in recwarn if "optimlab" in str(w.message)]


# ------------------------------------------------------- no kernels: off, or no compiler
_CHILD = textwrap.dedent("""
    import json, warnings
    import torch
    import optimlab.optim as oo
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, cls, tcls in [("Adam", oo.Adam, torch.optim.Adam), ("RMSprop", oo.RMSprop, torch.optim.RMSprop),
                                ("NAdam", oo.NAdam, torch.optim.NAdam), ("SGD", oo.Momentum, None)]:
            gen = torch.Generator().manual_seed(0)
            start = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
            grads = [[torch.randn(t.shape, generator=gen) for t in start] for _ in range(5)]
            ends = []
            for make in (lambda ps: cls(ps, lr=0.01), lambda ps: (tcls or torch.optim.SGD)(
                    ps, lr=0.01, **({} if tcls else {"momentum": 0.9}))):
                ps = [t.clone().requires_grad_() for t in start]
                opt = make(ps)
                for gs in grads:
                    for p, g in zip(ps, gs):
                        p.grad = g.clone()
                    opt.step()
                ends.append((ps, opt))
            (ours, opt), (theirs, _) = ends
            out[name] = dict(path=opt.path_for(0), diff=max(float((a - b).abs().max()) for a, b in zip(ours, theirs)))
    out["warnings"] = [str(w.message) for w in caught if "optimlab" in str(w.message)]
    print(json.dumps(out))
""")


def _child(tmp_path, **env):
    full = {**os.environ, "OPTIMLAB_KERNEL_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), **env}
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernels_off_default_falls_back_silently(tmp_path):
    out = _child(tmp_path, OPTIMLAB_FUSED_KERNELS="0")
    assert out["warnings"] == []
    assert out["RMSprop"]["path"] == out["NAdam"]["path"] == "foreach"
    assert out["Adam"]["path"] == "fused"  # torch's kernels need no compiler
    # SGD's default falls back to its foreach rule, still torch's default bit for bit (torch's
    # fused SGD, which needs no compiler either, rounds differently: only with fused=True)
    assert out["SGD"]["path"] == "foreach" and out["SGD"]["diff"] == 0, out["SGD"]
    assert all(out[n]["diff"] < 1e-6 for n in ("Adam", "RMSprop", "NAdam", "SGD")), out
    # no kernel built (the layout guards, which every path's re-checks use, may be)
    built = list((tmp_path / "cache").iterdir()) if (tmp_path / "cache").exists() else []
    assert all(f.name.startswith("optimlab_guards_") for f in built), built


def test_failing_compiler_default_falls_back_with_at_most_one_warning(tmp_path):
    out = _child(tmp_path, CC="/bin/false")
    assert len(out["warnings"]) <= 1 and all("unavailable" in w for w in out["warnings"]), out["warnings"]
    assert out["RMSprop"]["path"] == out["NAdam"]["path"] == "foreach"
    assert out["SGD"]["path"] == "foreach" and out["SGD"]["diff"] == 0, out["SGD"]
    assert all(out[n]["diff"] < 1e-6 for n in ("Adam", "RMSprop", "NAdam", "SGD")), out


@needs_kernels
def test_kernels_built_at_most_once_per_process(monkeypatch, tmp_path):
    monkeypatch.setattr(_fused, "_lib", None)
    monkeypatch.setattr(_fused, "_failed", False)
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(tmp_path))
    builds = []
    real = _fused._build
    monkeypatch.setattr(_fused, "_build", lambda *a: builds.append(a) or real(*a))
    for name in ("RMSprop", "Adam", "NAdam", "Adamax", "RMSprop"):
        twins(name, torch.float32)
    assert len(builds) == 1 and len(list(tmp_path.glob("optimlab_kernels_*.so"))) == 1


# ------------------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("name", ["SGD", "Momentum", "Adam", "AdamW", "Adagrad"])
def test_cuda_default_is_torchs_fused_kernel(name):
    cls, hyper, tcls, thyper, _ = CASES[name]
    start = tensors(torch.float32, device="cuda")
    grad_seq = [tensors(torch.float32, seed=10 + k, device="cuda") for k in range(STEPS)]
    pa, oa = run(lambda ps: cls(ps, **hyper), start, grad_seq)
    pb, _ = run(lambda ps: tcls(ps, **thyper, fused=True), start, grad_seq)
    assert oa.path_for(0) == "fused"
    assert_params_close(pa, pb, **TOL[torch.float32])


@cuda
@pytest.mark.parametrize("name", ["RMSprop", "NAdam"])
def test_cuda_without_a_torch_kernel_is_foreach(name):
    pa, oa, pb, _ = twins(name, torch.float32, device="cuda")
    assert oa.path_for(0) == "foreach"
    assert_params_close(pa, pb, **TOL[torch.float32])


@needs_kernels
def test_the_default_device_context_keeps_the_kernels():
    """``torch.set_default_device`` keeps a TorchFunctionMode on for good; it does not watch
    updates, so the kernels stay on (any other active torch mode turns them off: see
    test_optim_conformance.py)."""
    p = torch.zeros(5, 3, requires_grad=True)
    opt = oo.RMSprop([p], lr=0.1)
    assert torch._C._len_torch_function_stack() == 0
    torch.set_default_device("cpu")
    try:
        assert torch._C._len_torch_function_stack() == 1
        p.grad = torch.ones_like(p)
        opt.step()
    finally:
        torch.set_default_device(None)  # (pops the context)
    assert torch._C._len_torch_function_stack() == 0
    assert opt.path_for(0) == "fused"


def test_off_the_cpu_the_default_asks_only_for_the_kernels_torch_registers_there(monkeypatch):
    """torch's device list names CUDA for every fused optimizer, but a build may lack one op's
    kernel there (Adagrad's came later than Adam's): the default then takes the foreach rule."""
    from types import SimpleNamespace

    from optimlab.optim import _base
    torch_kernels = [oo.get(n) for n in oo.available() if getattr(oo.get(n), "default_kernels", None) == "torch"]
    assert {c.__name__ for c in torch_kernels} >= {"SGD", "Adam", "AdamW", "Adagrad"}
    for cls in torch_kernels:  # each names real torch ops, with the CPU kernels the CPU path calls
        assert cls.torch_fused_ops and all(callable(getattr(torch, op)) for op in cls.torch_fused_ops), cls
        assert _base._torch_has_kernels(cls.torch_fused_ops, "cpu"), cls
    on_cuda = [SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)]

    def wants(cls, registered):
        monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key",
                            lambda op, key: key == "CUDA" and op in registered)
        _base._torch_has_kernels.cache_clear()
        opt = cls([torch.zeros(2, requires_grad=True)], lr=0.1)
        return opt._wants_kernel(opt.param_groups[0], on_cuda, True, False)

    try:
        every = {f"aten::{op}" for cls in torch_kernels for op in cls.torch_fused_ops}
        assert all(wants(cls, every) for cls in torch_kernels)
        assert wants(oo.Adam, every - {"aten::_fused_adagrad_"})
        assert not wants(oo.Adagrad, every - {"aten::_fused_adagrad_"})
        assert not wants(oo.Adam, every - {"aten::_fused_adamw_"})  # (AdamW's kernel serves Adam's groups too)
    finally:
        _base._torch_has_kernels.cache_clear()
