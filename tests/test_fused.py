"""``fused=True`` on RMSprop, Adadelta, Adamax and NAdam: the single-pass C kernels.

Each variant runs >= 100 steps with fused=True beside the foreach path (and, in
float64, beside the plain reference rule of tests/reference) on identical gradient
sequences, and compares parameters and every state tensor. The kernels compute the rule's
operations in its order; the one systematic difference is sqrt, correctly rounded here but
computed by MKL (within an ulp) on torch's foreach path, hence a tolerance, not equality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

import optimlab.optim as oo
from optimlab.optim import _fused
from tests.optim_cases import seed_kernel_cache

STEPS = 100
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-5, atol=1e-6)}
REF_TOL = dict(rtol=1e-10, atol=1e-12)
# 0-dim, empty, odd sizes (test_threads_split_anywhere splits small tensors across threads).
SHAPES = [(), (0,), (7,), (5, 3), (2, 3, 4, 1), (33, 65)]

VARIANTS = {
    "rmsprop": (oo.RMSprop, [
        dict(lr=0.01),
        dict(lr=0.01, centered=True),
        dict(lr=0.01, momentum=0.8, weight_decay=0.05),
        dict(lr=0.01, centered=True, momentum=0.5, alpha=0.9, maximize=True, weight_decay=0.01),
        dict(lr=0.01, centered=True, alpha=0.4),  # lerp weight 1 − α >= 0.5: torch's other branch
    ]),
    "adadelta": (oo.Adadelta, [
        dict(),
        dict(lr=0.5, rho=0.8, weight_decay=0.1, maximize=True),
    ]),
    "adamax": (oo.Adamax, [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, maximize=True),
        dict(lr=0.01, betas=(0.3, 0.9)),
    ]),
    "nadam": (oo.NAdam, [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
        dict(lr=0.01, betas=(0.4, 0.99), maximize=True),
    ]),
}
CASES = [(name, i) for name, (_, variants) in VARIANTS.items() for i in range(len(variants))]
IDS = [f"{name}-{i}" for name, i in CASES]


def make_params(dtype, shapes=SHAPES, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def gradients(steps, shapes, dtype, seed=0):
    """Per step one gradient per parameter: mostly random, sometimes zero, sometimes None."""
    gen = torch.Generator().manual_seed(seed)
    seq = []
    for t in range(steps):
        grads = []
        for i, shape in enumerate(shapes):
            if i == 2 and t % 7 == 3:
                grads.append(None)
            elif i == 3 and t % 5 == 2:
                grads.append(torch.zeros(shape, dtype=dtype))
            else:
                grads.append(torch.randn(shape, generator=gen, dtype=dtype))
        seq.append(grads)
    return seq


def group_hypers(hyper):
    """Two param groups; the second with half the learning rate and no weight decay."""
    second = {"lr": hyper.get("lr", 1.0) * 0.5}
    if "weight_decay" in hyper:
        second["weight_decay"] = 0.0
    return {}, second


def build(cls, params, hyper, **extra):
    first, second = group_hypers(hyper)
    half = len(params) // 2
    return cls([{"params": params[:half], **first}, {"params": params[half:], **second}], **hyper, **extra)


def run(cls, hyper, dtype, grads_seq, shapes=SHAPES, **extra):
    params = make_params(dtype, shapes)
    opt = build(cls, params, hyper, **extra)
    for t, grads in enumerate(grads_seq):
        if t == len(grads_seq) // 2:
            for g in opt.param_groups:
                g["lr"] *= 0.3
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
    return params, opt


def assert_same(params_a, opt_a, params_b, opt_b, tol):
    for pa, pb in zip(params_a, params_b):
        torch.testing.assert_close(pa.detach(), pb.detach(), **tol)
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert set(sa) == set(sb)
        for key, value in sb.items():
            torch.testing.assert_close(sa[key], value, **tol)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch's own kernels on one thread: the results do not depend on it, and on a busy
    2-core machine MKL's threaded sqrt can take milliseconds per tiny tensor. The kernels'
    own threading is exercised by test_threads_split_anywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def spy(monkeypatch):
    """Count the fused kernels' calls that did the update (returned True)."""
    calls = {"done": 0, "declined": 0}
    for name in VARIANTS:
        real = getattr(_fused, name)

        def wrapper(*args, _real=real, **kwargs):
            ok = _real(*args, **kwargs)
            calls["done" if ok else "declined"] += 1
            return ok

        monkeypatch.setattr(_fused, name, wrapper)
    return calls


needs_kernels = pytest.mark.skipif(not _fused.available(), reason="fused kernels unavailable (no C compiler)")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_fused_matches_foreach(name, variant, dtype, spy):
    cls, variants = VARIANTS[name]
    hyper = variants[variant]
    grads = gradients(STEPS, SHAPES, dtype)
    pa, oa = run(cls, hyper, dtype, grads, foreach=True)  # (the default runs the kernels too)
    assert spy["done"] == 0
    pb, ob = run(cls, hyper, dtype, grads, fused=True)
    assert spy["done"] == 2 * STEPS and spy["declined"] == 0  # two groups, every step fused
    assert_same(pb, ob, pa, oa, TOL[dtype])


@needs_kernels
@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_fused_matches_the_readable_rule(name, variant, spy):
    """The kernels on odd shapes (0-dim, empty, 33×65) against the class's readable rule."""
    cls, variants = VARIANTS[name]
    hyper = variants[variant]
    shapes = SHAPES[:-1]
    grads_seq = gradients(STEPS, shapes, torch.float64, seed=3)
    params = make_params(torch.float64, shapes)
    opt = build(cls, params, hyper, fused=True)
    ref_params = make_params(torch.float64, shapes)
    ref = build(cls, ref_params, hyper)
    ref._by_rule = True
    for grads in grads_seq:
        for p, q, g in zip(params, ref_params, grads):
            p.grad = q.grad = None if g is None else g.clone()
        opt.step()
        ref.step()
    assert spy["done"] == 2 * STEPS
    for p, theta in zip(params, ref_params):
        torch.testing.assert_close(p.detach(), theta.detach(), **REF_TOL)


@needs_kernels
@pytest.mark.parametrize("name", list(VARIANTS))
def test_threads_split_anywhere(name, monkeypatch):
    """Force the element space to be split across more threads than cores, at arbitrary
    points inside and between tensors: identical to the one-thread result."""
    cls, variants = VARIANTS[name]
    hyper = variants[-1]
    shapes = [(), (3,), (129,), (0,), (64, 3), (1000,), (5,)]
    grads = gradients(12, shapes, torch.float32)
    single = run(cls, hyper, torch.float32, grads, shapes, fused=True)
    monkeypatch.setattr(_fused, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(_fused, "CHUNK_ELEMENTS", 37)  # chunks end anywhere, in and between tensors
    for n in (2, 3, 7):
        torch.set_num_threads(n)
        split = run(cls, hyper, torch.float32, grads, shapes, fused=True)
        assert_same(split[0], split[1], single[0], single[1], dict(rtol=0, atol=0))


@needs_kernels
@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradients_are_not_modified(name):
    cls, variants = VARIANTS[name]
    hyper = {**variants[1], "weight_decay": 0.1, "maximize": True}
    params = make_params(torch.float32)
    opt = cls(params, **hyper, fused=True)
    grads = gradients(1, SHAPES, torch.float32)[0]
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()
    opt.step()
    for p, g in zip(params, grads):
        if g is not None:
            assert torch.equal(p.grad, g)


@needs_kernels
@pytest.mark.parametrize("name", list(VARIANTS))
def test_autograd_sees_the_in_place_update(name, spy):
    """As with torch's in-place ops, a graph that saved a parameter notices the update."""
    cls, variants = VARIANTS[name]
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = cls([p], **variants[0], fused=True)
    loss = (p * p).sum()  # saves p for backward
    p.grad = torch.ones(5, dtype=torch.float64)
    opt.step()
    assert spy["done"] == 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_unsupported_tensors_fall_back(name, spy):
    """bf16, float16 and non-contiguous tensors: the kernel declines (returns False) and the
    foreach rule runs: the result equals fused=False exactly."""
    cls, variants = VARIANTS[name]
    hyper = variants[1]
    for dtype in (torch.bfloat16, torch.float16):
        grads = gradients(10, SHAPES[:-1], dtype)
        pa, oa = run(cls, hyper, dtype, grads, SHAPES[:-1])
        pb, ob = run(cls, hyper, dtype, grads, SHAPES[:-1], fused=True)
        assert_same(pb, ob, pa, oa, dict(rtol=0, atol=0))
    assert spy["done"] == 0 and spy["declined"] == 2 * 2 * 10

    def transposed():
        base = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        return [base.t().requires_grad_()]  # a non-contiguous leaf

    results = []
    for fused in (False, True):
        (p,) = transposed()
        opt = cls([p], **hyper, fused=fused)
        for t in range(10):
            p.grad = torch.full((4, 6), 0.1 * (t + 1), dtype=torch.float64)
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    assert spy["declined"] == 2 * 2 * 10 + 10


@needs_kernels
def test_advance_steps_is_torchs_increment():
    steps = [torch.tensor(float(t)) for t in (0, 1, 16777216, 41)] + [torch.tensor(7.0, dtype=torch.float64)]
    expected = [s.clone() for s in steps]
    torch._foreach_add_(expected, 1)
    versions = [s._version for s in steps]
    values = _fused.advance_steps(steps)
    assert values == [e.item() for e in expected]  # 2**24 + 1 rounds to 2**24 in float32, as torch
    assert all(torch.equal(s, e) and s.dtype == e.dtype for s, e in zip(steps, expected))
    assert all(s._version > v for s, v in zip(steps, versions))
    for bad in ([torch.zeros(2)], [torch.tensor(1.0, dtype=torch.float16)]):
        before = [b.clone() for b in bad]
        assert _fused.advance_steps(bad) is None
        assert all(torch.equal(b, c) for b, c in zip(bad, before))


def test_kernel_functions_decline_bf16():
    p = torch.zeros(3, dtype=torch.bfloat16)
    z = [torch.zeros_like(p)]
    assert _fused.adamax(params=[p], grads=z, exp_avgs=z, exp_infs=z, steps=[1.0], lr=0.1, beta1=0.9,
                         beta2=0.99, eps=1e-8, maximize=False, weight_decay=0) is False
    assert _fused.rmsprop(params=[p], grads=z, square_avgs=z, grad_avgs=[], momentum_buffers=[], lr=0.1,
                          alpha=0.99, eps=1e-8, momentum=0, centered=False, maximize=False,
                          weight_decay=0) is False
    assert _fused.adadelta(params=[p], grads=z, square_avgs=z, acc_deltas=z, lr=1.0, rho=0.9, eps=1e-6,
                           maximize=False, weight_decay=0) is False
    mu = [torch.ones(())]
    assert _fused.nadam(params=[p], grads=z, exp_avgs=z, exp_avg_sqs=z, mu_products=mu, steps=[1.0],
                        lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, momentum_decay=4e-3, maximize=False,
                        weight_decay=0) is False
    assert mu[0].item() == 1.0  # declined before touching the μ-product


@needs_kernels
def test_complex_parameters(spy):
    for name, (cls, variants) in VARIANTS.items():
        hyper = variants[-1]
        shapes = [(4, 3), (5,)]
        grads = [[g.to(torch.complex128) * (1 + 0.5j) for g in step] for step in
                 gradients(20, shapes, torch.float64)]
        pa, oa = run(cls, hyper, torch.complex128, grads, shapes)
        pb, ob = run(cls, hyper, torch.complex128, grads, shapes, fused=True)
        assert_same(pb, ob, pa, oa, TOL[torch.float64])
    assert spy["done"] > 0 and spy["declined"] == 0


def test_no_compiler_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(_fused, "_lib", None)
    monkeypatch.setattr(_fused, "_failed", False)
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    cls, variants = VARIANTS["adamax"]
    grads = gradients(5, SHAPES, torch.float32)
    with pytest.warns(RuntimeWarning, match="fused CPU kernels unavailable") as record:
        pb, ob = run(cls, variants[1], torch.float32, grads, fused=True)
    assert len([w for w in record if "fused CPU kernels" in str(w.message)]) == 1
    pa, oa = run(cls, variants[1], torch.float32, grads)
    assert_same(pb, ob, pa, oa, dict(rtol=0, atol=0))
    assert _fused.available() is False


@needs_kernels
def test_fresh_build_is_cached(monkeypatch, tmp_path):
    """A cold build takes about a second and lands atomically in the cache; the next load
    only opens it."""
    monkeypatch.setattr(_fused, "_lib", None)
    monkeypatch.setattr(_fused, "_failed", False)
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(tmp_path))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _fused.available()
    cold = time.perf_counter() - start
    built = [f.name for f in tmp_path.iterdir()]
    assert len(built) == 1 and built[0].endswith(".so"), built  # no temporary left behind
    monkeypatch.setattr(_fused, "_lib", None)
    start = time.perf_counter()
    assert _fused.available()
    warm = time.perf_counter() - start
    assert warm < 0.5 and warm < cold, (cold, warm)


@needs_kernels
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_thread_pool_survives_fork(monkeypatch):
    monkeypatch.setattr(_fused, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(_fused, "CHUNK_ELEMENTS", 512)
    torch.set_num_threads(2)
    cls, variants = VARIANTS["adadelta"]
    run(cls, variants[0], torch.float32, gradients(2, SHAPES, torch.float32), fused=True)  # pool up
    pid = os.fork()
    if pid == 0:  # child: the pool's threads did not survive the fork; it must start afresh
        code = 1
        try:
            p = torch.ones(5000)
            z = [torch.zeros(5000)]
            ok = _fused.adadelta(params=[p], grads=[torch.ones(5000)], square_avgs=z,
                                 acc_deltas=[torch.zeros(5000)], lr=1.0, rho=0.9, eps=1e-6,
                                 maximize=False, weight_decay=0)
            code = 0 if ok and bool((p < 1).all()) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("a fused step in a forked child hung")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


_THREADS_CHILD = """
import json, torch, optimlab.optim as oo
from optimlab.optim import _fused
torch.set_num_threads(2)
gen = torch.Generator().manual_seed(5)
params = [torch.randn(s, generator=gen).requires_grad_() for s in ((300, 700), (7,), (90000,))]
opt = oo.RMSprop(params, lr=0.01, momentum=0.5, centered=True)
for _ in range(4):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
print(json.dumps({"openmp": _fused._load().ol_openmp(), "runtimes": len(_fused._gomp_paths()),
                  "path": opt.path_for(0), "values": [float(p.double().sum()) for p in params]}))
"""


@needs_kernels
def test_kernels_share_torchs_openmp_threads_or_keep_their_pool(tmp_path):
    """Where torch runs on libgomp and the compiler is GCC, the kernels run on torch's own
    OpenMP threads (one runtime in the process); OPTIMLAB_KERNEL_OPENMP=0 keeps the pthread
    pool. The results are the same bits either way."""
    out = {}
    seed_kernel_cache(tmp_path)  # (this process's libraries: a child builds only the other thread setting's)
    for setting in ("1", "0"):
        env = {**os.environ, "OPTIMLAB_KERNEL_OPENMP": setting, "OPTIMLAB_KERNEL_CACHE": str(tmp_path)}
        proc = subprocess.run([sys.executable, "-c", _THREADS_CHILD], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["0"]["openmp"] == 0
    assert out["1"]["openmp"] == (1 if _fused._openmp_flags() else 0)
    assert out["1"]["runtimes"] <= 1 and out["0"]["path"] == out["1"]["path"] == "fused"
    assert out["0"]["values"] == out["1"]["values"]
