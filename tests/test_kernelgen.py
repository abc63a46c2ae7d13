"""The kernel generator (optimlab.optim._kernelgen) and the kernels it makes from the
optimizers' descriptions (each class's ``kernel``, beside its rule; ``_fused.kernels()``).
The table is the conformance test's (every registered optimizer that declares a kernel, with
three of its variants), so an optimizer with a kernel needs no row of its own here.

* the generator: variant ids, array order and the packing of scalars come from the
  description (a description with its scalars and arrays declared in another order, its
  expression written in another order, gives the same bits); a library built from other
  descriptions is refused; descriptions that cannot be traced are refused with a message;
* each description, run in Python on float64 tensors (``Kernel.evaluate``, wired in place of
  the C call, so with the very arguments the optimizer passes), against the optimizer's foreach
  path to 1e-12;
* each kernel against the foreach path over many steps, every flag branch, float64 and
  float32: bit for bit where its square roots are torch's (or it has none), else 1e-12 / 1e-5;
* the default (``fused=None``) runs the kernel; ``fused=False``/``foreach=True`` do not; odd
  dtypes, complex, non-contiguous state fall back silently; Keras twins take a kernel by
  default only where it is Keras's update bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import optimlab.optim as oo
import optimlab.optim.keras as ok
from optimlab.optim import _fused, _kernelgen
from optimlab.optim._kernelgen import fma, kernel, lerp, maximum
from tests.optim_cases import seed_kernel_cache
from tests.test_optim_conformance import TABLE as CONFORMANCE_TABLE

ROOT = Path(__file__).resolve().parents[1]
needs_kernels = pytest.mark.skipif(not _fused.available(), reason="fused kernels unavailable (no C compiler)")
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-5, atol=1e-6)}
SHAPES = [(), (7,), (5, 3), (2, 3, 4, 1), (1500,), (0,)]  # 1500 > a block: the staged loops' seams
STEPS = 60


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- tables
@dataclasses.dataclass
class Case:
    """An optimizer with a kernel of its own, from the conformance test's table (the registry
    and the optimizers' test rows): its class and (at most three of) its variants."""
    cls: type
    variants: list[dict]
    keras: bool = False
    train: bool = False       # Schedule-Free: train mode
    torch_half: bool = False  # fused=True is torch's fused kernel (it has float16/bfloat16 forms), and
                              # the default the generated one

    @property
    def kernel(self):
        return self.cls.kernel

    @property
    def exact(self) -> bool:
        """Bit for bit with the foreach path: no reduction, and no square root or torch's."""
        variants = [v for v in _fused.library().variants if v.kernel is self.kernel]
        return not any(v.reductions for v in variants) and (
            not any(v.uses_sqrt for v in variants) or (self.kernel.torch_sqrt and _fused.sqrt_is_torchs()))

    @property
    def kernel_impl(self) -> dict:
        """The constructor setting that runs the generated kernel."""
        return {} if self.torch_half else {"fused": True}


def _cases() -> dict[str, Case]:
    """Every class that declares a kernel in its own body (SGD's serves Momentum and NAG):
    adding an optimizer with a kernel adds its row here by itself."""
    cases = {}
    for convention, _, cls, variants, _ in CONFORMANCE_TABLE:
        k = cls.__dict__.get("kernel")
        if k is None or not variants:  # (no row: the conformance test's own check says so, by name)
            continue
        picked = [variants[i] for i in sorted({0, len(variants) // 2, len(variants) - 1})]
        cases[k.name] = Case(cls, picked, keras=convention == "keras", train=hasattr(cls, "train"),
                             torch_half=cls.default_kernels == "torch")
    return cases


CASES = _cases()
PARAMS = [(name, i) for name, case in CASES.items() for i in range(len(case.variants))]
IDS = [f"{name}-{i}" for name, i in PARAMS]


def test_every_description_has_a_case():
    assert {k.name for k in _fused.kernels()} == set(CASES)


def make_params(dtype, shapes=SHAPES, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


def two_groups(params, hyper, keras):
    key = "learning_rate" if keras else "lr"
    lr = hyper.get(key, 0.01)
    second = {"params": params[3:], "lr": lr * 0.5}
    if keras and hyper.get("weight_decay"):
        second["weight_decay"] = None  # a group without decay: the kernel's per-tensor factor 1.0
    elif "weight_decay" in hyper:
        second["weight_decay"] = 0.0
    return [{"params": params[:3]}, second]


def run(name, hyper, dtype, steps=STEPS, shapes=SHAPES, **impl):
    case = CASES[name]
    params = make_params(dtype, shapes)
    opt = case.cls(two_groups(params, hyper, case.keras), **hyper, **impl)
    if case.train:
        opt.train()
    gen = torch.Generator().manual_seed(0)
    paths = set()
    for t in range(steps):
        if t == steps // 2:
            for g in opt.param_groups:
                g["lr"] *= 0.3
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            p.grad = None if (i == 2 and t % 7 == 3) else (torch.zeros_like(g) if i == 1 and t % 5 == 2 else g)
        opt.step()
        paths.update(opt.path_for(g) for g in opt.param_groups)
    return params, opt, paths


def assert_same(a, oa, b, ob, tol=None):
    for x, y in zip(a, b):
        if tol is None:
            assert torch.equal(x, y), (x - y).abs().max()
        else:
            torch.testing.assert_close(x, y, **tol)
        for key, value in ob.state[y].items():
            if isinstance(value, torch.Tensor):
                if tol is None:
                    assert torch.equal(oa.state[x][key], value), key
                else:
                    torch.testing.assert_close(oa.state[x][key], value, **tol)


# ------------------------------------------------------------------- kernel vs foreach
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", PARAMS, ids=IDS)
def test_kernel_matches_the_foreach_path(name, variant, dtype):
    case = CASES[name]
    hyper = case.variants[variant]
    pa, oa, paths_a = run(name, hyper, dtype, **case.kernel_impl)
    pb, ob, paths_b = run(name, hyper, dtype, fused=False) if case.keras else run(name, hyper, dtype, foreach=True)
    assert paths_a == {"fused"} and paths_b == {case.cls.unfused_path}
    assert_same(pa, oa, pb, ob, None if case.exact else TOL[dtype])


@needs_kernels
@pytest.mark.parametrize("name,variant", PARAMS, ids=IDS)
def test_the_default_is_the_kernel(name, variant):
    case = CASES[name]
    hyper = case.variants[variant]
    pa, oa, paths = run(name, hyper, torch.float32, steps=3)
    assert paths == {"fused"}, paths


# -------------------------------------------------------- the descriptions themselves
@needs_kernels
@pytest.mark.parametrize("name,variant", PARAMS, ids=IDS)
def test_description_in_python_matches_the_foreach_path(name, variant, monkeypatch):
    """Each description run by Python on float64 tensors (Kernel.evaluate) where the optimizer
    calls its kernel, with the arguments it passes: the description's maths is the rule's."""
    evaluated = []

    def prepare(kernel, arrays, hyper, per_tensor=None, *, exact=False):
        def ready(more=None):
            kernel.evaluate(arrays, hyper, {**(per_tensor or {}), **(more or {})})
            evaluated.append(kernel.name)
            return True
        return ready

    monkeypatch.setattr(_fused, "prepare", prepare)
    case = CASES[name]
    hyper = case.variants[variant]
    pa, oa, paths = run(name, hyper, torch.float64, **case.kernel_impl)
    assert set(evaluated) == {name} and paths == {"fused"}
    monkeypatch.undo()
    pb, ob, _ = run(name, hyper, torch.float64, fused=False) if case.keras else run(name, hyper, torch.float64,
                                                                                      foreach=True)
    assert_same(pa, oa, pb, ob, TOL[torch.float64])


# ------------------------------------------------------------------------ the generator
def test_variant_ids_are_the_table_index_and_every_flag_combination_has_one():
    lib = _fused.library()
    assert [v.id for v in lib.variants] == list(range(len(lib.variants)))
    for k in _fused.kernels():
        combos = k.combinations()
        assert len(combos) == 2 ** len(k.flag_names)
        assert {lib.variant(k, c).id for c in combos} == {v.id for v in lib.variants if v.kernel is k}
    assert f"#define OL_NVARIANTS {len(lib.variants)}" in lib.source
    table = lib.source[lib.source.index("ol_variants[] = {"):]
    assert all(f"{{{len(v.arrays)}, {v.c_name}_f32, {v.c_name}_f64, " in table for v in lib.variants)


def test_arrays_and_scalars_are_packed_by_name():
    """A variant's arrays are the description's, in its declared order, as far as the flags use
    them; its scalars are what the body computes from the hyperparameters, by Python."""
    var = _fused.library().variant(oo.RMSprop.kernel, (False, False, True, False))  # centred only
    assert var.arrays == ["param", "grad", "square_avg", "grad_avg"]
    pack_h, pack_ts = var.packers()
    assert pack_ts is None
    h = dict(lr=0.5, alpha=0.75, eps=1e-8, momentum=0.0, weight_decay=0.0)
    values = dict(zip([repr(s) for s in var.hyper_slots], pack_h(h)))
    assert values == {"(1 - alpha)": 0.25, "alpha": 0.75, "eps": 1e-8, "(-lr)": -0.5}
    adamax = _fused.library().variant(oo.Adamax.kernel, (False, False))
    _, pack_ts = adamax.packers()
    assert adamax.tensor_inputs == ["step"]
    assert pack_ts(dict(lr=0.1, beta1=0.5), dict(step=2.0)) == [-0.1 / (1 - 0.5**2.0)]


@kernel(arrays=("exp_inf", "grad", "param", "exp_avg"), hyper=("weight_decay", "eps", "beta2", "beta1", "lr"),
        per_tensor=("step",), flags={"decay": lambda h: h["weight_decay"] != 0, "maximize": "maximize"})
def adamax_reordered(x, *, decay, maximize):
    """:func:`_kernel_oo.Adamax.kernel` with everything declared, and independent lines written, in
    another order."""
    g = -x.grad if maximize else x.grad
    g = fma(x.param, x.weight_decay, g) if decay else g
    u = maximum(x.exp_inf * x.beta2, abs(g) + x.eps)
    x.exp_inf = u
    m = lerp(x.exp_avg, g, 1 - x.beta1)
    x.exp_avg = m
    x.param = x.param + -x.lr / (1 - x.beta1**x.step) * m / u


@needs_kernels
def test_a_reordered_description_gives_the_same_bits(monkeypatch, tmp_path):
    """The order of arrays, scalars and flags (hence of pointers, of h[] and of the variant
    table) is the generator's business: a library with the reordered description first gives
    the original's results bit for bit."""
    monkeypatch.setenv("OPTIMLAB_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(_fused, "kernels", lambda: [adamax_reordered, oo.Adamax.kernel])
    for attr in ("_library", "_lib"):
        monkeypatch.setattr(_fused, attr, None)
    monkeypatch.setattr(_fused, "_failed", False)
    assert _fused.available() and len(_fused.library().variants) == 8
    assert _fused.library().variant(adamax_reordered, (False, False)).id == 0
    results = []
    for k in (oo.Adamax.kernel, adamax_reordered):
        gen = torch.Generator().manual_seed(3)
        p, m, u = (torch.randn(1000, generator=gen, dtype=torch.float64) for _ in range(3))
        u = u.abs()
        for t in range(1, 6):
            g = torch.randn(1000, generator=gen, dtype=torch.float64)
            assert _fused.launch(k, dict(param=[p], grad=[g], exp_avg=[m], exp_inf=[u]),
                                 dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, maximize=True),
                                 dict(step=[float(t)]))
        results.append((p, m, u))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_kernels
def test_a_library_of_other_descriptions_is_refused(tmp_path):
    """The signature compiled into the library is checked when it is loaded."""
    lib = _fused.library()
    other = _kernelgen.Library([adamax_reordered], _fused._RUNTIME.read_text(encoding="utf-8"))
    path = _fused._build(other.source.encode(), tmp_path)
    with pytest.raises(RuntimeError, match="not the library of these kernel descriptions"):
        _fused._open(path, lib)
    assert other.signature != lib.signature


def test_descriptions_that_cannot_be_traced_are_refused():
    @kernel(arrays=("param", "grad"), hyper=("lr",))
    def branchy(x):
        if x.lr > 0:  # a value known only when the kernel runs
            x.param = x.param - x.grad

    with pytest.raises(TypeError, match="flag"):
        branchy.trace(())

    @kernel(arrays=("param", "grad"), hyper=("lr",))
    def writes_grad(x):
        x.grad = x.param

    with pytest.raises(AttributeError, match="read-only"):
        writes_grad.trace(())

    @kernel(arrays=("param", "grad"))
    def unknown(x):
        x.param = x.param * x.beta

    with pytest.raises(AttributeError, match="no operand 'beta'"):
        unknown.trace(())

    with pytest.raises(TypeError, match="flags"):
        kernel(arrays=("param",), flags={"maximize": "maximize"})(lambda x: None)


def test_the_generated_loop_reads_like_its_description():
    """One loop, fused multiply-adds where the description has fma, each scalar named by the
    expression Python computes it with."""
    var = _fused.library().variant(oo.Lion.kernel, (False, True))  # decay, not maximize
    c = var.c_source("float", "f32")
    assert c.count("for (int64_t j = 0; j < cnt; j++)") == 1 and c.count("OL_FMA_f32(") == 3 and "sqrt" not in c
    assert "/* decay_factor */" in c and "/* (-lr) */" in c
    staged = _fused.library().variant(ok.Adam.kernel, (False, False)).c_source("double", "f64")
    assert "OL_SQRT_f64(m, b" in staged and "for (int64_t j0 = 0; j0 < cnt; j0 += OL_BLOCK)" in staged


@needs_kernels
def test_keras_decay_exclusions_are_per_tensor_factors():
    """Keras's decoupled decay folded into the kernel: an excluded tensor's factor is 1.0."""
    results = []
    for fused in (None, False):
        params = make_params(torch.float64)
        opt = ok.AdamW(params, learning_rate=0.01, weight_decay=0.1, fused=fused)
        opt.exclude_from_weight_decay(var_list=[params[1], params[4]])
        gen = torch.Generator().manual_seed(0)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            opt.step()
        results.append((params, opt.path_for(0)))
    assert [r[1] for r in results] == ["fused", "foreach"]
    for a, b in zip(results[0][0], results[1][0]):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------- threading
@needs_kernels
@pytest.mark.parametrize("name", ["adopt", "keras_adam", "radam", "lamb", "lars"])
def test_threads_split_anywhere(name, monkeypatch):
    """Chunks ending anywhere, in and between tensors and blocks, on more threads than cores:
    the one-thread result, bit for bit (staged and inline square roots; and the reductions of
    the two-pass kernels, whose per-tensor sums do not depend on the threads)."""
    case = CASES[name]
    # (not global_clipnorm: its norm over all tensors is torch's, whose sums follow the threads)
    hyper = next(v for v in reversed(case.variants) if "global_clipnorm" not in v)
    shapes = [(), (3,), (1029,), (0,), (64, 3), (40000,), (5,)]
    single = run(name, hyper, torch.float32, steps=8, shapes=shapes, **CASES[name].kernel_impl)
    monkeypatch.setattr(_fused, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(_fused, "CHUNK_ELEMENTS", 37)
    for n in (2, 3):
        torch.set_num_threads(n)
        split = run(name, hyper, torch.float32, steps=8, shapes=shapes, **CASES[name].kernel_impl)
        assert_same(split[0], split[1], single[0], single[1])


TWO_PASS = [name for name, case in CASES.items()
            if any(v.reductions for v in _fused.library().variants if v.kernel is case.kernel)]


@needs_kernels
@pytest.mark.parametrize("name", TWO_PASS)
def test_two_pass_batches_give_the_same_bits(name, monkeypatch):
    """A two-pass kernel takes its tensors in batches of about TWO_PASS_BYTES (both passes per
    batch): each tensor alone, a few together, all at once, on one thread or three, the same bits."""
    case = CASES[name]
    hyper = next(v for v in reversed(case.variants) if "global_clipnorm" not in v)
    shapes = [(), (3,), (1029,), (0,), (64, 3), (40000,), (5,), (300, 7)]
    results = []
    for batch, threads in [(1 << 62, 1), (0, 1), (4 * 1029 * 4, 1), (50000, 3), (0, 3)]:
        monkeypatch.setattr(_fused, "TWO_PASS_BYTES", batch)
        monkeypatch.setattr(_fused, "PARALLEL_MIN_ELEMENTS", 0)
        torch.set_num_threads(threads)
        results.append(run(name, hyper, torch.float32, steps=6, shapes=shapes, **case.kernel_impl))
    assert results[0][2] == {"fused"}
    for other in results[1:]:
        assert_same(other[0], other[1], results[0][0], results[0][1])


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.cls.chunk_elements is not None])
def test_a_kernel_step_is_one_call_and_the_foreach_rule_goes_in_chunks(name, monkeypatch):
    """Optimizers whose foreach rule runs in chunks (its temporaries reused from the heap) give
    their kernel all tensors at once, and chunk again where the kernels are unavailable."""
    case = CASES[name]
    shapes = [(40,), (30, 2), (25,), (70,)]
    monkeypatch.setattr(case.cls, "chunk_elements", 64)
    calls = []
    original = case.cls._update
    monkeypatch.setattr(case.cls, "_update", lambda self, g, ps, *a: calls.append(len(ps)) or original(self, g, ps, *a))
    _, opt, paths = run(name, case.variants[0], torch.float32, steps=1, shapes=shapes, **case.kernel_impl)
    if _fused.available():
        assert paths == {"fused"} and calls == [len(g["params"]) for g in opt.param_groups]
    calls.clear()
    monkeypatch.setattr(_fused, "_failed", True)
    monkeypatch.setattr(_fused, "_lib", None)
    _, opt, paths = run(name, case.variants[0], torch.float32, steps=1, shapes=shapes, **case.kernel_impl)
    assert paths == {"foreach"} and len(calls) > len(opt.param_groups) and sum(calls) == len(shapes)


# ------------------------------------------------------------------------- fall-backs
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.keras])
def test_explicit_flags_keep_the_foreach_path(name):
    case = CASES[name]
    for impl in (dict(foreach=True), dict(fused=False)):
        _, _, paths = run(name, case.variants[0], torch.float32, steps=2, **impl)
        assert paths == {case.cls.unfused_path}


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.keras])
def test_keras_fused_false_keeps_the_foreach_path(name):
    _, _, paths = run(name, CASES[name].variants[-1], torch.float32, steps=2, fused=False)
    assert paths == {"foreach"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", list(CASES))
def test_half_precision_falls_back_silently(name, dtype, recwarn):
    case = CASES[name]
    hyper = case.variants[-1]
    for impl in (dict(), dict(fused=True)):
        pa, _, paths = run(name, hyper, dtype, steps=4, shapes=SHAPES[:4], **impl)
        assert paths == ({"fused"} if impl and case.torch_half else {case.cls.unfused_path}), paths
    if case.torch_half:
        pa, _, _ = run(name, hyper, dtype, steps=4, shapes=SHAPES[:4])
    pb, _, _ = run(name, hyper, dtype, steps=4, shapes=SHAPES[:4], fused=False)
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
    assert not [w for w in recwarn if "optimlab" in str(w.message)]


@needs_kernels
@pytest.mark.parametrize("name", ["radam", "rmsprop", "nadam"])
def test_complex_parameters_run_the_kernel_on_real_views(name):
    case = CASES[name]
    hyper = case.variants[-1]
    shapes = [(4, 3), (5,)]
    results = []
    for impl in (dict(fused=True), dict(foreach=True)):  # (the default keeps complex tensors on foreach)
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen, dtype=torch.complex128).requires_grad_() for s in shapes]
        opt = case.cls(params, **hyper, **impl)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.complex128)
            opt.step()
        results.append((params, opt.path_for(0)))
    assert results[0][1] == "fused" and results[1][1] == "foreach"
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@needs_kernels
@pytest.mark.parametrize("name", ["lion", "adopt", "schedule_free_adamw", "keras_adam"])
def test_a_state_the_kernel_cannot_take_falls_back_silently(name, recwarn):
    """A hand-made transposed state tensor: the kernel declines, the foreach rule runs."""
    case = CASES[name]
    p = torch.randn(4, 3, dtype=torch.float64).requires_grad_()
    opt = case.cls([p], **case.variants[0])
    if case.train:
        opt.train()
    for _ in range(2):
        p.grad = torch.randn(4, 3, dtype=torch.float64)
        opt.step()
    assert opt.path_for(0) == "fused"
    key = next(k for k, v in opt.state[p].items() if isinstance(v, torch.Tensor) and v.shape == p.shape)
    opt.state[p][key] = opt.state[p][key].t().contiguous().t()
    p.grad = torch.randn(4, 3, dtype=torch.float64)
    opt.step()
    assert opt.path_for(0) == case.cls.unfused_path and not [w for w in recwarn if "optimlab" in str(w.message)]


@needs_kernels
def test_keras_default_takes_a_kernel_only_where_it_is_bit_exact(monkeypatch):
    """Where the kernels' square root is not torch's, the Keras twins that take square roots
    keep Keras's foreach update by default (fused=True still runs the kernel); SGD has none."""
    monkeypatch.setattr(_fused, "_sqrt_exact", False)
    for name, expected in (("keras_adam", "foreach"), ("keras_rmsprop", "foreach"), ("keras_sgd", "fused")):
        _, _, paths = run(name, CASES[name].variants[-1], torch.float32, steps=2)
        assert paths == {expected}, name
    _, _, paths = run("keras_adam", CASES["keras_adam"].variants[-1], torch.float32, steps=2, fused=True)
    assert paths == {"fused"}


_CHILD = textwrap.dedent("""
    import json, torch
    import optimlab.optim as oo, optimlab.optim.keras as ok
    from optimlab.optim import _fused
    out = {"torch_sqrt": _fused.sqrt_is_torchs()}
    for name, make in [("keras.Adam", lambda ps: ok.Adam(ps)), ("keras.SGD", lambda ps: ok.SGD(ps, momentum=0.9)),
                       ("RMSprop", lambda ps: oo.RMSprop(ps)), ("ADOPT", lambda ps: oo.ADOPT(ps))]:
        p = torch.ones(100, requires_grad=True)
        opt = make([p])
        for _ in range(2):
            p.grad = torch.linspace(-1, 1, 100)
            opt.step()
        out[name] = opt.path_for(0)
    print(json.dumps(out))
""")


@needs_kernels
def test_ieee_square_roots_on_request(tmp_path):
    """OPTIMLAB_KERNEL_SQRT=ieee: the C library's square root; kernels that must be torch's bit
    for bit (Keras's, by default) step aside where they take square roots."""
    seed_kernel_cache(tmp_path)  # (the choice of square root is made at load: the same library)
    env = {**os.environ, "OPTIMLAB_KERNEL_CACHE": str(tmp_path), "OPTIMLAB_KERNEL_SQRT": "ieee",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["torch_sqrt"]
    assert out["keras.Adam"] == "foreach" and out["keras.SGD"] == "fused" and out["RMSprop"] == "fused"
    assert out["ADOPT"] == "fused"  # (its kernel, as RMSprop's, never needed torch's square root)


_OTHER_ROUNDING_CHILD = textwrap.dedent("""
    import json, torch
    from optimlab.optim import _fused
    from tests.test_kernelgen import CASES, assert_same, run
    torch.set_num_threads(1)
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "fused": _fused.torch_fuses_multiply_adds(),
           "checked": []}
    shapes = [(7,), (1500,), (5, 3), (1031,)]
    for name, case in CASES.items():
        if not case.exact:
            continue
        for dtype in (torch.float32, torch.float64):
            hyper = case.variants[-1]
            pa, oa, paths = run(name, hyper, dtype, steps=12, shapes=shapes, **case.kernel_impl)
            pb, ob, _ = run(name, hyper, dtype, steps=12, shapes=shapes,
                            **({"fused": False} if case.keras else {"foreach": True}))
            assert paths == {"fused"}, (name, paths)
            assert_same(pa, oa, pb, ob)
        out["checked"].append(name)
    for kw in ({}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}):
        a = torch.randn(1003, dtype=torch.float32, generator=torch.Generator().manual_seed(3))
        pa, pb = a.clone().requires_grad_(), a.clone().requires_grad_()
        oa, ob = torch.optim.SGD([pa], lr=0.1, **kw), __import__("optimlab.optim").optim.SGD([pb], lr=0.1, **kw)
        for t in range(10):
            g = torch.randn(1003, generator=torch.Generator().manual_seed(t))
            pa.grad, pb.grad = g.clone(), g.clone()
            oa.step(), ob.step()
        assert torch.equal(pa, pb), kw
    print(json.dumps(out))
""")


@needs_kernels
def test_multiply_adds_are_rounded_as_torchs_build_rounds_them(tmp_path):
    """torch's DEFAULT CPU capability (x86 without AVX2, or ATEN_CPU_CAPABILITY=default) rounds
    a·b + c twice, its AVX2/AVX-512 kernels once: the kernels follow what torch's ops do, so
    every kernel that claims bits keeps them (against its foreach path, and SGD against
    torch.optim.SGD) at torch's DEFAULT capability too. (Before, the kernels always fused:
    SGD was up to 2e-6 relative off torch's, every twin but Adagrad off Keras's.)"""
    seed_kernel_cache(tmp_path, skip=("optimlab_kernels",))  # (the kernels it must build; not the rest)
    env = {**os.environ, "OPTIMLAB_KERNEL_CACHE": str(tmp_path), "ATEN_CPU_CAPABILITY": "default",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _OTHER_ROUNDING_CHILD], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["capability"] == "DEFAULT" and out["fused"] is False
    assert {"sgd", "adamax", "keras_sgd", "keras_adam", "keras_rmsprop"} <= set(out["checked"])
    here = torch.backends.cpu.get_cpu_capability()
    assert _fused.torch_fuses_multiply_adds() is (here in ("AVX2", "AVX512")) or here not in ("DEFAULT", "AVX2",
                                                                                                 "AVX512")


_NO_COMPILER_CHILD = textwrap.dedent("""
    import json, warnings, torch
    import optimlab.optim as oo, optimlab.optim.keras as ok
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, make in [("Lion", lambda ps, **k: oo.Lion(ps, lr=1e-3, **k)), ("ADOPT", lambda ps, **k: oo.ADOPT(ps, **k)),
                           ("LAMB", lambda ps, **k: oo.LAMB(ps, **k)), ("keras.Adam", lambda ps, **k: ok.Adam(ps, **k))]:
            ends = []
            for impl in ({}, {"fused": True}, {"fused": False}):
                p = torch.linspace(-1, 1, 50).requires_grad_()
                opt = make([p], **impl)
                for t in range(3):
                    p.grad = torch.linspace(-1, 1, 50) * (t + 1)
                    opt.step()
                ends.append((p.detach().clone(), opt.path_for(0)))
            out[name] = dict(paths=[e[1] for e in ends], same=all(torch.equal(e[0], ends[2][0]) for e in ends))
    out["warnings"] = [str(w.message) for w in caught if "optimlab" in str(w.message)]
    print(json.dumps(out))
""")


def test_no_compiler_falls_back_with_one_warning(tmp_path):
    """A compiler that fails: every path is the foreach one (fused=True included), the results
    are the foreach path's, and the failure is reported once."""
    env = {**os.environ, "OPTIMLAB_KERNEL_CACHE": str(tmp_path), "CC": "/bin/false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _NO_COMPILER_CHILD], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out.pop("warnings")) == 1
    for name, result in out.items():  # (ADOPT has no multi-tensor rule: its rule runs per tensor)
        cls = ok.Adam if name == "keras.Adam" else getattr(oo, name)
        assert result == dict(paths=[cls.unfused_path] * 3, same=True), name
