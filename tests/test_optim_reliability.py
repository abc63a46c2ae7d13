"""Reliability of the optimizer core (issue 15, faults 1 and 2), with torch.optim as the oracle.

Fault 1: the fused paths (our C kernels and torch's fused kernels, which trust their
inputs) must never get a tensor that differs from its parameter in dtype, device, layout,
size or memory order. A gradient set through ``p.grad.data = ...`` may have any dtype: the
step then does what torch.optim's default (single-tensor) path does on the same gradient,
op for op, or, where torch.optim fails on it too, refuses before anything changes.

Fault 2: whatever torch.optim X loads (its own state dicts, from torch >= 1.12: group keys
added since, steps stored as numbers), optimlab X loads, and then steps as torch does.
Incomplete states are refused at load_state_dict, with nothing changed.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import optimlab.optim as oo
import optimlab.optim.keras as ok
from optimlab.optim import _fused
from optimlab.optim._base import GradientMismatchError
from tests.optim_cases import CASES as BASE_CASES

# name -> (our class, torch twin, torch kwargs fixed by our class, hyperparameter variants)
CASES = {**BASE_CASES, "radam": (oo.RAdam, torch.optim.RAdam, {}, [
    dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)])}
FUSED = ["sgd", "momentum", "nag", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "adamax", "nadam"]
VARIANTS = [(name, i) for name, case in CASES.items() for i in range(len(case[3]))]
VARIANT_IDS = [f"{name}-{i}" for name, i in VARIANTS]
OTHER_DTYPES = [(torch.float32, torch.float16), (torch.float32, torch.bfloat16), (torch.float32, torch.float64),
                (torch.float64, torch.float16), (torch.float64, torch.float32)]
OTHER_DTYPE_IDS = [f"{str(p)[6:]}-param-{str(g)[6:]}-grad" for p, g in OTHER_DTYPES]
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-7), torch.float64: dict(rtol=1e-12, atol=1e-14)}
needs_kernels = pytest.mark.skipif(not _fused.available(), reason="fused kernels unavailable (no C compiler)")


def modes(name):
    """The implementations of ``name`` to try: default (foreach), for-loop and fused."""
    return [dict(), dict(foreach=False)] + ([dict(fused=True)] if name in FUSED else [])


def ours_of(name, variant, params, **extra):
    cls, _, _, variants = CASES[name]
    return cls(params, **variants[variant], **extra)


def twin_of(name, variant, params):
    """torch.optim's twin on its default CPU path (the single-tensor loop): the reference."""
    _, twin, fixed, variants = CASES[name]
    return twin(params, **fixed, **variants[variant], foreach=False)


def snapshot(opt, params):
    return copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]


def assert_unchanged(opt, params, before):
    state, values = before
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for i, st in state["state"].items():
        assert now["state"][i].keys() == st.keys()
        for key, value in st.items():
            assert torch.equal(now["state"][i][key], value) if isinstance(value, torch.Tensor) \
                else now["state"][i][key] == value
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)


def assert_same_as_torch(ours, our_params, theirs, their_params, exact=True, **tol):
    for p, q in zip(our_params, their_params):
        if exact:
            assert torch.equal(p.detach(), q.detach()), (p, q)
        else:
            torch.testing.assert_close(p.detach(), q.detach(), **tol)
        mine, reference = ours.state[p], theirs.state[q]
        assert set(mine) == set(reference)
        for key, value in reference.items():
            if isinstance(value, torch.Tensor):
                assert mine[key].dtype == value.dtype, key
                if exact:
                    assert torch.equal(mine[key], value), key
                else:
                    torch.testing.assert_close(mine[key], value, **tol)


def set_grad(p, g):
    """A gradient in whatever dtype or layout ``g`` has, the way that escapes torch's checks."""
    p.grad = torch.zeros_like(p)
    p.grad.data = g


def two_params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=gen, dtype=dtype).requires_grad_(),
            torch.randn(12, generator=gen, dtype=dtype).requires_grad_()]


# ------------------------------------------------------------------ fault 1: gradients
@pytest.mark.parametrize("pdtype,gdtype", OTHER_DTYPES, ids=OTHER_DTYPE_IDS)
@pytest.mark.parametrize("name,variant", VARIANTS, ids=VARIANT_IDS)
def test_gradient_in_another_dtype_steps_as_torch_or_is_refused_untouched(name, variant, pdtype, gdtype):
    """The 12-element case: torch.optim X (its default, single-tensor path) on the same
    gradients is the oracle. Where it steps, every implementation of ours gives its
    parameters and state bit for bit (dtypes included: torch's SGD keeps a float16 buffer);
    where it fails, ours raises GradientMismatchError having changed nothing."""
    gen = torch.Generator().manual_seed(7)
    steps = [[torch.randn(4, 3, generator=gen).to(gdtype), torch.randn(12, generator=gen).to(pdtype)]
             for _ in range(4)]  # the first parameter's gradient in another dtype, the second's not
    theirs_params = two_params(pdtype)
    theirs = twin_of(name, variant, theirs_params)
    torch_error = None
    try:
        for grads in steps:
            for p, g in zip(theirs_params, grads):
                set_grad(p, g.clone())
            theirs.step()
    except RuntimeError as err:
        torch_error = err
    for extra in modes(name):
        params = two_params(pdtype)
        ours = ours_of(name, variant, params, **extra)
        if torch_error is not None:
            for p, g in zip(params, steps[0]):  # one ordinary step first: state exists
                p.grad = g.to(pdtype)
            ours.step()
            before = snapshot(ours, params)
            for p, g in zip(params, steps[1]):
                set_grad(p, g.clone())
            with pytest.raises(GradientMismatchError, match=rf"dtype {gdtype} was set on a parameter of "
                                                            rf"dtype {pdtype} \(params\[0\] of param group 0.*"
                                                            rf"torch.optim's update fails on it too"):
                ours.step()
            assert_unchanged(ours, params, before)
            continue
        for grads in steps:
            for p, g in zip(params, grads):
                set_grad(p, g.clone())
            ours.step()
        # the tensor whose gradient is in another dtype takes torch's own update: bit for bit;
        # the other takes ours (foreach, fused): torch's to rounding
        assert_same_as_torch(ours, params[:1], theirs, theirs_params[:1])
        assert_same_as_torch(ours, params[1:], theirs, theirs_params[1:], exact=False, **TOL[pdtype])


@needs_kernels
def test_huge_float16_gradient_does_not_crash():
    """The reported crash: a float16 gradient of 4,000,000 elements set through .data on a
    float32 parameter, fused=True. It ran off the end of the float16 buffer (SIGSEGV); now
    the step matches torch.optim or is refused, and the kernel entry points decline such
    tensors themselves. In a subprocess, so that a crash fails this test, not pytest."""
    root = str(Path(__file__).resolve().parents[1])
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {root!r})
        import torch, optimlab.optim as oo
        from optimlab.optim import _fused
        from optimlab.optim._base import GradientMismatchError
        n = 4_000_000
        half = torch.linspace(-1, 1, n).to(torch.float16)
        for name in ("RMSprop", "Adadelta", "Adamax", "NAdam", "SGD", "Adagrad", "Adam", "AdamW"):
            hyper = dict(lr=0.01, momentum=0.9) if name == "SGD" else dict(lr=0.01)
            results = []
            for opt_cls, extra in ((getattr(oo, name), dict(fused=True)),
                                   (getattr(torch.optim, name), dict(foreach=False))):
                p = torch.linspace(1, 2, n).requires_grad_()
                opt = opt_cls([p], **hyper, **extra)
                p.grad = torch.zeros(n)
                p.grad.data = half.clone()
                try:
                    opt.step(); opt.step()
                    results.append(p.detach())
                except GradientMismatchError:
                    results.append("refused")
                except RuntimeError:
                    results.append("torch fails")
            ours, theirs = results
            if isinstance(ours, str):
                print(name, ours, theirs)
            else:
                print(name, "equal" if isinstance(theirs, torch.Tensor) and torch.equal(ours, theirs) else "DIFFERENT")
        z = torch.zeros(n)
        ok = _fused.rmsprop(params=[z], grads=[half], square_avgs=[torch.zeros(n)], grad_avgs=[], momentum_buffers=[],
                            lr=0.1, alpha=0.9, eps=1e-8, momentum=0, centered=False, maximize=False, weight_decay=0)
        print("kernel", ok, bool(z.eq(0).all()))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines == {"RMSprop": "equal", "Adadelta": "equal", "SGD": "equal", "Adagrad": "equal",
                     "Adamax": "refused torch fails", "NAdam": "refused torch fails",
                     "Adam": "refused torch fails", "AdamW": "refused torch fails",
                     "kernel": "False True"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,variant", VARIANTS, ids=VARIANT_IDS)
def test_non_contiguous_gradient_matches_torch(name, variant, dtype):
    """A transposed gradient (set through .data): torch's fused CPU kernels read it in memory
    order (a wrong step), ours need contiguous memory; every path must give torch's result."""
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(3, 4, generator=gen, dtype=dtype).t() for _ in range(4)]
    reference_params = two_params(dtype)[:1]
    reference = twin_of(name, variant, reference_params)
    for g in grads:
        set_grad(reference_params[0], g)
        reference.step()
    for extra in modes(name):
        params = two_params(dtype)[:1]
        ours = ours_of(name, variant, params, **extra)
        for g in grads:
            set_grad(params[0], g)
            assert not params[0].grad.is_contiguous()
            ours.step()
        assert_same_as_torch(ours, params, reference, reference_params, exact=False, **TOL[dtype])


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_of_another_size_is_refused_untouched(name):
    for extra in modes(name):
        params = two_params(torch.float32)
        opt = ours_of(name, 0, params, **extra)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        before = snapshot(opt, params)
        params[0].grad = torch.ones_like(params[0])
        params[1].grad.data = torch.ones(5)  # 12 elements expected
        with pytest.raises(GradientMismatchError, match=r"shape \(5,\) was set on a parameter of shape \(12,\) "
                                                        r"\(params\[1\] of param group 0\)"):
            opt.step()
        assert_unchanged(opt, params, before)


@pytest.mark.parametrize("name", list(CASES))
def test_refusal_in_a_later_group_leaves_earlier_groups_untouched(name):
    """The gradients of every group are checked before any group steps."""
    cls, _, _, variants = CASES[name]
    q = torch.zeros(12, requires_grad=True)
    twin = twin_of(name, 0, [q])
    set_grad(q, torch.ones(12, dtype=torch.float16))
    try:
        twin.step()
        torch_fails = False
    except RuntimeError:
        torch_fails = True
    params = two_params(torch.float32)
    opt = cls([{"params": params[:1]}, {"params": params[1:]}], **variants[0])
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    before = snapshot(opt, params)
    params[0].grad = torch.full_like(params[0], 0.5)
    set_grad(params[1], torch.ones(12, dtype=torch.float16))
    if torch_fails:
        with pytest.raises(GradientMismatchError, match=r"params\[0\] of param group 1"):
            opt.step()
        assert_unchanged(opt, params, before)
    else:
        opt.step()  # (the values: test_gradient_in_another_dtype_...)
        assert not torch.equal(params[0].detach(), before[1][0])
        assert not torch.equal(params[1].detach(), before[1][1])


@pytest.mark.parametrize("name", ["sgd", "momentum", "adagrad", "adam", "adamw", "rmsprop", "adadelta",
                                  "adamax", "nadam"])
def test_complex_parameters_with_fused_match_torch(name):
    """torch's fused kernels have no complex form (they raised NotImplementedError after the
    step counters had moved): fused=True steps complex tensors on the foreach rules."""
    cls, twin, fixed, variants = CASES[name]
    gen = torch.Generator().manual_seed(11)
    grads = [torch.randn(4, 3, dtype=torch.complex64, generator=gen) for _ in range(5)]
    start = torch.randn(4, 3, dtype=torch.complex64, generator=gen)
    p, q = start.clone().requires_grad_(), start.clone().requires_grad_()
    ours, theirs = cls([p], **variants[-1], fused=True), twin([q], **fixed, **variants[-1], foreach=False)
    for g in grads:
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert_same_as_torch(ours, [p], theirs, [q], exact=False, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["momentum", "adagrad", "adam", "rmsprop", "nadam"])
def test_channels_last_tensors(name, monkeypatch):
    """Tensors that share their parameter's strides over dense memory (channels_last) stay on
    the fused path; a gradient laid out differently goes to the foreach rule. Both: torch's result."""
    cls, twin, fixed, variants = CASES[name]
    calls = []
    for kernel in ("_fused_sgd_", "_fused_adam_", "_fused_adagrad_"):
        real = getattr(torch, kernel)
        monkeypatch.setattr(torch, kernel, lambda *a, _real=real, **k: (calls.append(1), _real(*a, **k))[1])
    real_run = _fused._run

    def counted_run(*args, **kwargs):  # (declines count for nothing)
        done = real_run(*args, **kwargs)
        calls.extend([1] if done else [])
        return done

    monkeypatch.setattr(_fused, "_run", counted_run)
    kernels_run = name in ("momentum", "adagrad", "adam") or _fused.available()  # torch's, or ours if built
    gen = torch.Generator().manual_seed(5)
    start = torch.randn(2, 3, 4, 5, generator=gen)
    grads = [torch.randn(2, 3, 4, 5, generator=gen) for _ in range(4)]
    for grad_format, expect_fused in ((torch.channels_last, True), (torch.contiguous_format, False)):
        p = start.clone().to(memory_format=torch.channels_last).requires_grad_()
        q = start.clone().requires_grad_()
        ours, theirs = cls([p], **variants[0], fused=True), twin([q], **fixed, **variants[0], foreach=False)
        calls.clear()
        for g in grads:
            p.grad = g.contiguous(memory_format=grad_format)
            q.grad = g.clone()
            ours.step()
            theirs.step()
        assert bool(calls) == (expect_fused and kernels_run)
        assert_same_as_torch(ours, [p], theirs, [q], exact=False, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------ fault 1: the kernel boundary
def _rmsprop(params, grads, squares):
    return _fused.rmsprop(params=params, grads=grads, square_avgs=squares, grad_avgs=[], momentum_buffers=[],
                          lr=0.1, alpha=0.9, eps=1e-8, momentum=0, centered=False, maximize=False, weight_decay=0)


def _adamax(params, grads, states):
    return _fused.adamax(params=params, grads=grads, exp_avgs=states, exp_infs=[torch.ones_like(p) for p in params],
                         steps=[1.0] * len(params), lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, maximize=False,
                         weight_decay=0)


def _nadam(params, grads, states):
    return _fused.nadam(params=params, grads=grads, exp_avgs=states, exp_avg_sqs=[torch.zeros_like(p) for p in params],
                        mu_products=[torch.ones(()) for _ in params], steps=[1.0] * len(params), lr=0.1,
                        beta1=0.9, beta2=0.99, eps=1e-8, momentum_decay=4e-3, maximize=False, weight_decay=0)


def _adadelta(params, grads, states):
    return _fused.adadelta(params=params, grads=grads, square_avgs=states,
                           acc_deltas=[torch.zeros_like(p) for p in params], lr=1.0, rho=0.9, eps=1e-6,
                           maximize=False, weight_decay=0)


BAD_TENSORS = {  # (name, makes a tensor standing beside a float32 parameter of shape (4, 6))
    "float16": lambda: torch.ones(4, 6, dtype=torch.float16),
    "float64": lambda: torch.ones(4, 6, dtype=torch.float64),
    "fewer elements": lambda: torch.ones(3, 6),
    "0-dim": lambda: torch.ones(()),
    "transposed": lambda: torch.ones(6, 4).t(),
    "expanded": lambda: torch.ones(1, 6).expand(4, 6),
    "sparse": lambda: torch.ones(4, 6).to_sparse(),
    "sparse csr": lambda: torch.ones(4, 6).to_sparse_csr(),
    "mkldnn": lambda: torch.ones(4, 6).to_mkldnn(),
    "meta": lambda: torch.ones(4, 6, device="meta"),
    "negative view": lambda: torch._neg_view(torch.ones(4, 6)),  # memory holds −x
    "zero tensor": lambda: torch._efficientzerotensor(4, 6),     # no memory (a null pointer)
}


@needs_kernels
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("kernel", [_rmsprop, _adamax, _nadam, _adadelta],
                         ids=["rmsprop", "adamax", "nadam", "adadelta"])
@pytest.mark.parametrize("bad", list(BAD_TENSORS))
@pytest.mark.parametrize("position", ["grad", "state"])
def test_kernels_decline_a_tensor_unlike_its_parameter(kernel, bad, position):
    """Called directly (no step to vouch for anything), each entry point checks every tensor
    it would hand to C against its parameter, and declines (returns False, nothing written)."""
    params = [torch.zeros(2, 2), torch.zeros(4, 6)]
    grads = [torch.ones(2, 2), torch.ones(4, 6)]
    states = [torch.zeros(2, 2), torch.zeros(4, 6)]
    (grads if position == "grad" else states)[1] = BAD_TENSORS[bad]()
    assert kernel(params, grads, states) is False
    assert all(p.eq(0).all() for p in params)
    assert kernel([torch.zeros(2, 2), torch.zeros(4, 6)], [torch.ones(2, 2), torch.ones(4, 6)],
                  [torch.zeros(2, 2), torch.zeros(4, 6)]) is True  # the same call with good tensors runs


@needs_kernels
@pytest.mark.parametrize("kernel", [_rmsprop, _adamax, _nadam, _adadelta],
                         ids=["rmsprop", "adamax", "nadam", "adadelta"])
def test_kernels_decline_tensors_off_the_cpu(kernel):
    meta = [torch.zeros(4, 6, device="meta")]
    assert kernel(meta, [torch.ones(4, 6, device="meta")], [torch.zeros(4, 6, device="meta")]) is False


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("bad", [b for b in BAD_TENSORS if b != "mkldnn"])
def test_torch_fused_kernels_get_only_tensors_like_their_parameter(bad):
    params, grads = [torch.zeros(2, 2), torch.zeros(4, 6)], [torch.ones(2, 2), torch.ones(4, 6)]
    states = [torch.zeros(2, 2), torch.zeros(4, 6)]
    assert _fused.fits([params, grads, states])
    states[1] = BAD_TENSORS[bad]()
    assert not _fused.fits([params, grads, states])
    assert not _fused.fits([params, [grads[0], BAD_TENSORS[bad]()], [torch.zeros(2, 2), torch.zeros(4, 6)]])


@pytest.mark.parametrize("name", ["momentum", "adagrad", "adam", "rmsprop", "adadelta", "adamax", "nadam"])
def test_a_hand_edited_short_state_tensor_is_never_run_off(name):
    """A state tensor replaced by hand with a shorter one: fused=True does not hand it to a
    kernel (whose loop would read and write past its end); the foreach rule's error is torch's."""
    cls, _, _, variants = CASES[name]
    p = torch.zeros(4000, requires_grad=True)
    opt = cls([p], **variants[0], fused=True)
    p.grad = torch.ones(4000)
    opt.step()
    key = next(k for k, v in opt.state[p].items() if isinstance(v, torch.Tensor) and v.shape == p.shape)
    opt.state[p][key] = torch.zeros(1)
    with pytest.raises(RuntimeError):
        opt.step()


@needs_kernels
def test_step_counters_and_mu_products_are_checked_before_the_c_call():
    assert _fused.advance_steps([torch.tensor(1.0), 2.0]) is None  # a plain number
    sparse = torch.tensor([1.0]).to_sparse()
    assert _fused.advance_steps([torch.tensor(1.0), sparse]) is None
    assert _fused.advance_steps([torch.tensor(1.0), torch.tensor(1.0, device="meta")]) is None
    ok_steps = [torch.tensor(1.0), torch.tensor([2.0], dtype=torch.float64)]
    assert _fused.advance_steps(ok_steps) == [2.0, 3.0]


# --------------------------------------------------------------- fault 2: loading states
LEGACY_KEYS = {  # group keys torch.optim X's __setstate__ fills in (added since torch 1.12)
    "sgd": ["nesterov", "maximize", "foreach", "differentiable", "fused"],
    "adagrad": ["foreach", "maximize", "differentiable", "fused"],
    "rmsprop": ["momentum", "centered", "foreach", "maximize", "differentiable", "capturable"],
    "adadelta": ["foreach", "maximize", "differentiable", "capturable"],
    "adam": ["amsgrad", "maximize", "foreach", "capturable", "differentiable", "decoupled_weight_decay", "fused"],
    "adamax": ["foreach", "maximize", "differentiable", "capturable"],
    "nadam": ["maximize", "foreach", "capturable", "differentiable", "decoupled_weight_decay"],
    "radam": ["foreach", "maximize", "differentiable", "decoupled_weight_decay", "capturable"],
}
LEGACY_KEYS.update(momentum=LEGACY_KEYS["sgd"], nag=LEGACY_KEYS["sgd"], adamw=LEGACY_KEYS["adam"])


def older(state_dict, name, number):
    """``state_dict`` as an older torch wrote it: the newer group keys absent (where the
    values are the defaults), counters stored as Python numbers (``number``: float or int)."""
    sd = copy.deepcopy(state_dict)
    for group in sd["param_groups"]:
        for key in LEGACY_KEYS[name]:
            if key in group and not (key in ("nesterov", "amsgrad", "momentum", "centered", "maximize",
                                             "decoupled_weight_decay") and group[key]):
                del group[key]  # an older torch had no such key: the behaviour was the default one
    for st in sd["state"].values():
        for key in ("step", "mu_product"):
            if isinstance(st.get(key), torch.Tensor):
                st[key] = number(st[key].item()) if key == "step" else st[key].item()
    return sd


@pytest.mark.parametrize("fmt", ["current", "float-steps", "int-steps"])
@pytest.mark.parametrize("name,variant", VARIANTS, ids=VARIANT_IDS)
def test_torch_state_dict_loads_and_steps_like_torch(name, variant, fmt):
    cls, twin, fixed, variants = CASES[name]
    gen = torch.Generator().manual_seed(2)
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in ((4, 3), (12,))] for _ in range(7)]
    source_params = two_params(torch.float64)
    source = twin(source_params, **fixed, **variants[variant])
    for step in grads[:3]:
        for p, g in zip(source_params, step):
            p.grad = g
        source.step()
    saved = source.state_dict()
    if fmt != "current":
        saved = older(saved, name, float if fmt == "float-steps" else int)
    start = [p.detach().clone() for p in source_params]
    ours_params = [s.clone().requires_grad_() for s in start]
    their_params = [s.clone().requires_grad_() for s in start]
    ours = cls(ours_params, **variants[variant])
    theirs = twin(their_params, **fixed, **variants[variant])
    theirs.load_state_dict(copy.deepcopy(saved))
    ours.load_state_dict(copy.deepcopy(saved))
    for mine, reference in zip(ours.param_groups, theirs.param_groups):
        assert set(mine) >= set(reference) and set(mine) >= set(ours.defaults)
        for key, value in reference.items():  # torch's SGD defaults "fused" to False, ours to None
            if key == "params":
                assert all(map(torch.equal, mine[key], value))
            else:
                assert bool(mine[key]) == bool(value) if key in ("fused", "foreach") else mine[key] == value, key
    for step in grads[3:]:
        for p, q, g in zip(ours_params, their_params, step):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert_same_as_torch(ours, ours_params, theirs, their_params, exact=False, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("fmt", ["current", "older"])
@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
def test_post_adam_twins_load_torch_state_dicts(name, fmt):
    """torch.optim.Adafactor and torch.optim.Muon state dicts (float64, 2-D weights), as
    written and with "foreach" absent and numbers for steps (Adafactor's __setstate__)."""
    gen = torch.Generator().manual_seed(9)
    shapes = [(4, 3), (5, 6)]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(6)]
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    source_params = [s.clone().requires_grad_() for s in start]
    source = getattr(torch.optim, name)(source_params, lr=0.01)
    for step in grads[:3]:
        for p, g in zip(source_params, step):
            p.grad = g
        source.step()
    saved = copy.deepcopy(source.state_dict())
    if fmt == "older":
        for group in saved["param_groups"]:
            group.pop("foreach", None)
        for st in saved["state"].values():
            if "step" in st:
                st["step"] = st["step"].item()
    ours_params = [p.detach().clone().requires_grad_() for p in source_params]
    their_params = [p.detach().clone().requires_grad_() for p in source_params]
    ours, theirs = getattr(oo, name)(ours_params, lr=0.01), getattr(torch.optim, name)(their_params, lr=0.01)
    ours.load_state_dict(copy.deepcopy(saved))
    theirs.load_state_dict(copy.deepcopy(saved))
    for step in grads[3:]:
        for p, q, g in zip(ours_params, their_params, step):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert_same_as_torch(ours, ours_params, theirs, their_params, exact=False, **TOL[torch.float64])


@pytest.mark.parametrize("fused", [None, True])
def test_adamw_loading_an_adam_state_decouples_its_weight_decay_as_torch(fused):
    gen = torch.Generator().manual_seed(4)
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in ((4, 3), (12,))] for _ in range(5)]
    source_params = two_params(torch.float64)
    adam = torch.optim.Adam(source_params, lr=0.01, weight_decay=0.5)  # L2, not decoupled
    for step in grads[:2]:
        for p, g in zip(source_params, step):
            p.grad = g
        adam.step()
    saved = adam.state_dict()
    assert saved["param_groups"][0]["decoupled_weight_decay"] is False
    ours_params = [p.detach().clone().requires_grad_() for p in source_params]
    their_params = [p.detach().clone().requires_grad_() for p in source_params]
    ours, theirs = oo.AdamW(ours_params, fused=fused), torch.optim.AdamW(their_params, fused=fused)
    ours.load_state_dict(copy.deepcopy(saved))
    theirs.load_state_dict(copy.deepcopy(saved))
    assert ours.param_groups[0]["decoupled_weight_decay"] is True
    assert theirs.param_groups[0]["decoupled_weight_decay"] is True
    for step in grads[2:]:
        for p, q, g in zip(ours_params, their_params, step):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert_same_as_torch(ours, ours_params, theirs, their_params, exact=False, rtol=1e-13, atol=1e-15)


OWN = {  # every optimlab optimizer with a state dict of its own (name -> constructor)
    "lion": lambda ps: oo.Lion(ps, lr=0.01, weight_decay=0.1),
    "lamb": lambda ps: oo.LAMB(ps, lr=0.01),
    "lars": lambda ps: oo.LARS(ps, lr=0.1, weight_decay=0.01),
    "adafactor": lambda ps: oo.Adafactor(ps),
    "muon": lambda ps: oo.Muon(ps[:1]),
    "muon_adamw": lambda ps: oo.MuonWithAuxAdamW(ps),
    "schedulefree_adamw": lambda ps: oo.ScheduleFreeAdamW(ps, lr=0.01),
    "schedulefree_sgd": lambda ps: oo.ScheduleFreeSGD(ps, lr=0.1),
    **{name: (lambda ps, _c=case: _c[0](ps, **_c[3][-1])) for name, case in CASES.items()},
}


@pytest.mark.parametrize("name", list(OWN))
def test_own_older_state_dict_resumes_exactly(name):
    """An optimlab state dict with the defaulted group keys absent and numbers for counters
    (as an older version, or torch, writes them) resumes to the uninterrupted run."""
    make = OWN[name]
    gen = torch.Generator().manual_seed(6)
    grads = [[torch.randn(4, 3, generator=gen), torch.randn(12, generator=gen)] for _ in range(6)]

    def run(opt, params, steps):
        for step in steps:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()

    params = two_params(torch.float32)
    opt = make(params)
    run(opt, params, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        for key, default in {**opt.load_defaults, "foreach": None, "fused": None}.items():
            if group.get(key, "absent") == default:
                del group[key]
    for st in saved["state"].values():
        for key in opt.scalar_state_keys:
            if isinstance(st.get(key), torch.Tensor):
                st[key] = st[key].item()
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = make(resumed_params)
    resumed.load_state_dict(saved)
    run(opt, params, grads[3:])
    run(resumed, resumed_params, grads[3:])
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
    assert resumed.param_groups == [{**g, "params": q["params"]} for g, q in
                                    zip(opt.param_groups, resumed.param_groups)]


def _stepped_adam():
    params = two_params(torch.float32)
    opt = oo.Adam(params, lr=0.01, amsgrad=True)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt, params


INCOMPLETE = {  # what is wrong -> (edit of Adam's state dict, message)
    "lacks exp_avg_sq": (lambda sd: sd["state"][1].pop("exp_avg_sq"),
                         r"the state of parameter 1 lacks \['exp_avg_sq'\]"),
    "lacks step": (lambda sd: sd["state"][0].pop("step"), r"the state of parameter 0 lacks \['step'\]"),
    "group lacks lr": (lambda sd: sd["param_groups"][0].pop("lr"),
                       r"param group 0 of the state lacks \['lr'\], which have no default"),
    "group lacks betas and eps": (lambda sd: [sd["param_groups"][0].pop(k) for k in ("betas", "eps")],
                                  r"lacks \['betas', 'eps'\]"),
    "0-dim moment": (lambda sd: sd["state"][0].__setitem__("exp_avg", torch.zeros(())),
                     r"state\[0\]\['exp_avg'\] has shape \(\) but the parameter has shape \(4, 3\)"),
    "step of 3 elements": (lambda sd: sd["state"][0].__setitem__("step", torch.ones(3)),
                           r"state\[0\]\['step'\] must be a number or a one-element real tensor, got a tensor "
                           r"of shape \(3,\)"),
    "step None": (lambda sd: sd["state"][0].__setitem__("step", None), r"state\[0\]\['step'\] must be a number"),
    "moment None": (lambda sd: sd["state"][0].__setitem__("exp_avg", None),
                    r"state\[0\]\['exp_avg'\] must be a dense tensor, got None"),
    "sparse moment": (lambda sd: sd["state"][1].__setitem__("exp_avg", torch.zeros(12).to_sparse()),
                      r"state\[1\]\['exp_avg'\] must be a dense tensor, got layout torch.sparse_coo"),
    "state not a dict": (lambda sd: sd["state"].__setitem__(0, [1.0]), r"the state of parameter 0 must be a dict"),
    "group not a dict": (lambda sd: sd["param_groups"].__setitem__(0, "lr=0.1"),
                         r"param group 0 of the state must be a dict with a 'params' list"),
    "lr invalid": (lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0), r"lr must be >= 0, got -1.0"),
}


@pytest.mark.parametrize("what", list(INCOMPLETE))
def test_incomplete_state_is_refused_before_any_change(what):
    opt, params = _stepped_adam()
    bad = copy.deepcopy(opt.state_dict())
    edit, message = INCOMPLETE[what]
    edit(bad)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, before)
    if what in ("lacks exp_avg_sq", "group lacks lr", "0-dim moment"):  # torch loads it and fails later
        twin = torch.optim.Adam(two_params(torch.float32), lr=0.01, amsgrad=True)
        twin.load_state_dict(bad)
        for p in twin.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        with pytest.raises((KeyError, RuntimeError)):
            twin.step()


@pytest.mark.parametrize("name", ["momentum", "adagrad", "rmsprop", "adam", "nadam"])
def test_loaded_state_in_another_dtype_is_cast_as_torch_does(name):
    """torch's load casts a real parameter's state tensors to its dtype (not the counters):
    a float16 moment in the state dict steps as in torch, on the fused path too."""
    cls, twin, fixed, variants = CASES[name]
    params = two_params(torch.float32)
    source = twin(params, **fixed, **variants[-1])
    for p in params:
        p.grad = torch.ones_like(p)
    source.step()
    saved = copy.deepcopy(source.state_dict())
    for st in saved["state"].values():
        for key, value in st.items():
            if isinstance(value, torch.Tensor) and value.dim():
                st[key] = value.half()
    ours_params = [p.detach().clone().requires_grad_() for p in params]
    their_params = [p.detach().clone().requires_grad_() for p in params]
    ours, theirs = cls(ours_params, **variants[-1], fused=True), twin(their_params, **fixed, **variants[-1])
    ours.load_state_dict(copy.deepcopy(saved))
    theirs.load_state_dict(copy.deepcopy(saved))
    gen = torch.Generator().manual_seed(8)
    for _ in range(3):
        for p, q in zip(ours_params, their_params):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    # (torch's state dict says fused=None: after the load, ours runs its default, the kernel,
    # as with fused=True: test_fused.py's float32 tolerance for a kernel against a loop)
    assert_same_as_torch(ours, ours_params, theirs, their_params, exact=False, rtol=1e-5, atol=1e-6)


def test_sgd_state_with_a_none_buffer_loads_like_torch():
    """torch < 2 saved SGD's momentum buffer as None before its first use."""
    saved = {"state": {0: {"momentum_buffer": None}},
             "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0, "params": [0]}]}
    p, q = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    ours, theirs = oo.SGD([p], lr=0.5), torch.optim.SGD([q], lr=0.5)
    ours.load_state_dict(copy.deepcopy(saved))
    theirs.load_state_dict(copy.deepcopy(saved))
    for t in range(3):
        p.grad, q.grad = torch.full((3,), t + 1.0), torch.full((3,), t + 1.0)
        ours.step()
        theirs.step()
    assert torch.equal(p, q) and torch.equal(ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"])


def test_nadam_state_lacking_momentum_decay_is_refused():
    p = torch.zeros(3, requires_grad=True)
    theirs = torch.optim.NAdam([p])
    p.grad = torch.ones(3)
    theirs.step()
    saved = theirs.state_dict()
    del saved["param_groups"][0]["momentum_decay"]  # torch's __setstate__ has no default for it
    ours = oo.NAdam([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=r"lacks \['momentum_decay'\], which have no default"):
        ours.load_state_dict(saved)


def test_complex_parameter_state_of_another_dtype_is_refused():
    """torch's load casts a real parameter's state to its dtype, not a complex one's."""
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    opt = oo.Adam([p])
    p.grad = torch.ones(3, dtype=torch.complex64)
    opt.step()
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][0]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has dtype torch.float32 but the parameter "
                                         r"has dtype torch.complex64"):
        opt.load_state_dict(bad)


def test_optional_state_may_be_missing_and_is_then_made():
    """Entries the update creates on demand (AMSGrad's maximum, RMSprop's buffers) may be absent."""
    params = two_params(torch.float64)
    opt = oo.Adam(params, lr=0.01)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0]["amsgrad"] = True
    again = oo.Adam(two_params(torch.float64), lr=0.01)
    again.load_state_dict(saved)
    for p in again.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    again.step()
    assert all("max_exp_avg_sq" in again.state[p] for p in again.param_groups[0]["params"])


def _keras_adam():
    params = two_params(torch.float32)
    opt = ok.Adam(params, amsgrad=True)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt, params


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd["state"][0].pop("velocity"), r"the state of parameter 0 lacks \['velocity'\]"),
    (lambda sd: sd["param_groups"][0].pop("beta_1"), r"param group 0 of the state lacks \['beta_1'\]"),
    (lambda sd: sd["param_groups"][0].pop("amsgrad"), r"param group 0 of the state lacks \['amsgrad'\]"),
    (lambda sd: sd["state"][1].__setitem__("momentum", torch.zeros(())), r"state\[1\]\['momentum'\] has shape \(\)"),
    (lambda sd: sd["optimlab"].pop("iterations"), r"iteration counter must be an int >= 0, got None"),
], ids=["lacks velocity", "group lacks beta_1", "group lacks amsgrad", "0-dim momentum", "no iterations"])
def test_keras_partial_state_is_refused_before_any_change(edit, message):
    opt, params = _keras_adam()
    bad = copy.deepcopy(opt.state_dict())
    edit(bad)
    before = snapshot(opt, params)
    iterations = opt.iterations
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, before)
    assert opt.iterations == iterations


def test_keras_state_without_optional_slot_loads():
    opt, params = _keras_adam()
    saved = copy.deepcopy(opt.state_dict())
    for st in saved["state"].values():
        del st["velocity_hat"]  # made on first use, as when amsgrad is switched on mid-run
    again = ok.Adam(two_params(torch.float32), amsgrad=True)
    again.load_state_dict(saved)
    assert again.iterations == 1


@pytest.mark.parametrize("make", [lambda ps: oo.SGD(ps, lr=0.1, momentum=0.9), lambda ps: oo.Momentum(ps, lr=0.1),
                                  lambda ps: oo.NAG(ps, lr=0.1)], ids=["SGD", "Momentum", "NAG"])
@pytest.mark.parametrize("via", ["as is", "state_dict", "pickle"])
def test_a_sparse_momentum_buffer_meeting_a_dense_gradient_is_refused_before_anything_changes(make, via):
    """A sparse gradient starts a sparse buffer (as torch's); a later dense gradient cannot be
    added to it: torch.optim.SGD fails part-way (another parameter already stepped, its
    momentum counted). Here: ValueError naming the parameter, nothing changed."""
    import pickle
    import warnings
    gen = torch.Generator().manual_seed(0)
    c, a = torch.randn(4, generator=gen, requires_grad=True), torch.randn(6, 3, generator=gen, requires_grad=True)
    opt = make([c, a])
    c.grad = torch.randn(4, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's sparse invariant-check notice)
        a.grad = torch.sparse_coo_tensor(torch.tensor([[0, 2, 2]]), torch.randn(3, 3, generator=gen), (6, 3))
    opt.step()
    if via == "state_dict":
        saved = opt.state_dict()
        opt = make([c, a])
        opt.load_state_dict(saved)
    elif via == "pickle":
        opt = pickle.loads(pickle.dumps(opt))
        c, a = opt.param_groups[0]["params"]
    c.grad, a.grad = torch.randn(4, generator=gen), torch.randn(6, 3, generator=gen)
    before = [c.detach().clone(), a.detach().clone(), opt.state[c]["momentum_buffer"].clone()]
    with pytest.raises(RuntimeError, match=r"params\[1\] of param group 0 has a sparse momentum buffer") as err:
        opt.step()  # (torch raises a RuntimeError here: optimlab's is one too, and a ValueError)
    assert isinstance(err.value, ValueError)
    after = [c.detach(), a.detach(), opt.state[c]["momentum_buffer"]]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    opt.state[a]["momentum_buffer"] = opt.state[a]["momentum_buffer"].to_dense()
    opt.step()  # (the remedy the message gives)
    assert not torch.equal(before[0], c.detach())


def test_a_state_with_sparse_momentum_buffers_saves_loads_and_continues_as_torchs():
    """Sparse gradients throughout (an nn.Embedding(sparse=True)): the buffers are sparse, as
    torch's; a state_dict saved mid-run loads (torch's too) and the run goes on as torch's."""
    import warnings
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(8, 3, dtype=torch.float64, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grads = [torch.sparse_coo_tensor(torch.randint(0, 8, (1, 4), generator=gen),
                                         torch.randn(4, 3, dtype=torch.float64, generator=gen), (8, 3))
                 for _ in range(6)]
    ends = []
    for cls in (oo.SGD, torch.optim.SGD):
        p = start.clone().requires_grad_()
        opt = cls([p], lr=0.1, momentum=0.9)
        for t, g in enumerate(grads):
            if t == 3:
                saved = copy.deepcopy(opt.state_dict())
                assert saved["state"][0]["momentum_buffer"].is_sparse
                opt = cls([p], lr=0.1, momentum=0.9)
                opt.load_state_dict(saved)
            p.grad = g
            opt.step()
        ends.append(p.detach())
    assert torch.equal(*ends)
