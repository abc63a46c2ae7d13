"""Each optimizer against its torch.optim twin, step for step (its readable rule: test_optim_conformance.py)."""

from __future__ import annotations

import pytest
import torch

import optimlab.optim as oo
from optimlab.optim import SGD
from tests.optim_cases import CASES, SHAPES, gradient_sequence, torch_kwargs

STEPS = 120
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-5, atol=1e-6)}
PARAMS = [(name, i) for name, case in CASES.items() for i in range(len(case[3]))]


def make_params(dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def two_groups(params, hyper):
    """Two groups: the second with its own learning rate (and no weight decay)."""
    second = {"params": params[2:], "lr": hyper.get("lr", 1.0) * 0.5}
    if "weight_decay" in hyper:
        second["weight_decay"] = 0.0
    return [{"params": params[:2]}, second]


def run(factory, params, grads_seq, lr_change_at=STEPS // 2):
    opt = factory(params)
    for t, grads in enumerate(grads_seq):
        if t == lr_change_at:
            for g in opt.param_groups:
                g["lr"] *= 0.3
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
    return opt


def assert_same_state(ours, theirs, tol):
    for p_ours, p_theirs in zip([p for g in ours.param_groups for p in g["params"]],
                                [p for g in theirs.param_groups for p in g["params"]]):
        torch.testing.assert_close(p_ours, p_theirs, **tol)
        s_ours, s_theirs = ours.state[p_ours], theirs.state[p_theirs]
        assert set(s_ours) == set(s_theirs)
        for key in s_theirs:
            if isinstance(s_theirs[key], torch.Tensor):
                torch.testing.assert_close(s_ours[key], s_theirs[key].to(s_ours[key].dtype), **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", PARAMS, ids=[f"{n}-{i}" for n, i in PARAMS])
def test_matches_torch_twin(name, variant, dtype):
    ours_cls, torch_cls, _, variants = CASES[name]
    hyper = variants[variant]
    grads = gradient_sequence(STEPS, SHAPES, dtype)
    ours = run(lambda ps: ours_cls(two_groups(ps, hyper), **hyper), make_params(dtype), grads)
    for impl in ({"foreach": False}, {"foreach": True}):
        theirs = run(lambda ps: torch_cls(two_groups(ps, hyper), **torch_kwargs(name, hyper), **impl),
                     make_params(dtype), grads)
        assert_same_state(ours, theirs, TOL[dtype])
    # Our single-tensor path is the same rule applied tensor by tensor.
    single = run(lambda ps: ours_cls(two_groups(ps, hyper), **hyper, foreach=False), make_params(dtype), grads)
    assert_same_state(single, ours, TOL[dtype])


#: Where torch's own single-tensor and foreach paths give different bits, the one optimlab's
#: foreach rule (so its foreach=True and foreach=False) reproduces: torch's foreach=True or False.
#: Half precision: torch's two paths differ for most optimizers there (its in-place multi-tensor
#: ops round a Python scalar to the dtype, its single-tensor ops do not), and optimlab's rule,
#: being torch's foreach form, gives its foreach path's bits, but for NAdam (its single-tensor
#: form: its single-tensor path's bits, as in float32 and float64).
TORCH_PATH_WHERE_TORCHS_DIFFER = {"nadam": False, "radam": True}
HALF = {torch.float16: "f16", torch.bfloat16: "bf16"}


def _bits(opt):
    params = [p for g in opt.param_groups for p in g["params"]]
    tensors = [p.detach().clone() for p in params] + [
        v.detach() for p in params for k, v in sorted(opt.state[p].items()) if isinstance(v, torch.Tensor)]
    return [(t.dtype, t.shape, t.reshape(-1).contiguous().view(torch.uint8).clone()) for t in tensors]  # (NaN too)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *HALF], ids=["f64", "f32", *HALF.values()])
@pytest.mark.parametrize("name,variant", PARAMS, ids=[f"{n}-{i}" for n, i in PARAMS])
def test_each_forced_path_gives_one_of_torchs_paths_bits(name, variant, dtype):
    """``foreach=True`` and ``foreach=False`` (optimlab's foreach rule, one tensor at a time)
    give torch's bits: both of torch's paths' where those agree (every twin but two in float32
    and float64), else the one of :data:`TORCH_PATH_WHERE_TORCHS_DIFFER` (torch's RAdam orders
    its step differently on its two paths, NAdam its step sizes; in half precision the foreach
    path's for every twin but NAdam). Compared bit for bit, NaN included. (Before, Adagrad with
    weight decay or maximize, and NAdam in float16, gave neither path's bits.)"""
    ours_cls, torch_cls, _, variants = CASES[name]
    hyper = variants[variant]
    grads = gradient_sequence(40, SHAPES, dtype)
    theirs = {impl: _bits(run(lambda ps: torch_cls(two_groups(ps, hyper), **torch_kwargs(name, hyper), foreach=impl),
                               make_params(dtype), grads, lr_change_at=20)) for impl in (False, True)}
    same = lambda a, b: len(a) == len(b) and all(  # noqa: E731
        x[:2] == y[:2] and torch.equal(x[2], y[2]) for x, y in zip(a, b))
    torch_agrees = same(theirs[False], theirs[True])
    if dtype in HALF:
        expected = {False, True} if torch_agrees else {TORCH_PATH_WHERE_TORCHS_DIFFER.get(name, True)}
    else:
        assert torch_agrees == (name not in TORCH_PATH_WHERE_TORCHS_DIFFER)
        expected = {False, True} if torch_agrees else {TORCH_PATH_WHERE_TORCHS_DIFFER[name]}
    for impl in (False, True):
        ours = _bits(run(lambda ps: ours_cls(two_groups(ps, hyper), **hyper, foreach=impl), make_params(dtype), grads,
                         lr_change_at=20))
        matched = {k for k, v in theirs.items() if same(ours, v)}
        assert matched == expected, (name, hyper, impl, matched)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam", "adamw"])
def test_fused_torch_kernels_match_foreach(name):
    ours_cls, _, _, variants = CASES[name]
    for hyper in variants:
        grads = gradient_sequence(60, SHAPES, torch.float32)
        a = run(lambda ps: ours_cls(ps, **hyper), make_params(torch.float32), grads)
        b = run(lambda ps: ours_cls(ps, **hyper, fused=True), make_params(torch.float32), grads)
        assert_same_state(a, b, TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam", "adamw"])
def test_fused_path_is_torchs_fused_kernel_exactly(name, dtype):
    """Our fused path calls torch's fused CPU kernels directly (and counts steps in C):
    bit-identical to torch's fused optimizer, two groups and an lr change included."""
    ours_cls, torch_cls, _, variants = CASES[name]
    for hyper in variants:
        grads = gradient_sequence(60, SHAPES, dtype)
        ours = run(lambda ps: ours_cls(two_groups(ps, hyper), **hyper, fused=True), make_params(dtype), grads)
        theirs = run(lambda ps: torch_cls(two_groups(ps, hyper), **torch_kwargs(name, hyper), fused=True),
                     make_params(dtype), grads)
        assert_same_state(ours, theirs, dict(rtol=0, atol=0))


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_momentum_buffer_starts_for_a_parameter_added_mid_run(nesterov):
    gen = torch.Generator().manual_seed(4)
    grads = [[torch.randn(3, generator=gen), torch.randn(2, 2, generator=gen)] for _ in range(8)]
    finals = []
    for fused in (False, True):
        a, b = torch.ones(3, requires_grad=True), torch.ones(2, 2, requires_grad=True)
        opt = SGD([a], lr=0.1, momentum=0.9, nesterov=nesterov, fused=fused)
        for t, (ga, gb) in enumerate(grads):
            if t == 3:
                opt.add_param_group({"params": [b]})
            a.grad, b.grad = ga.clone(), gb.clone()
            opt.step()
        finals.append((a.detach().clone(), b.detach().clone(), opt.state[b]["momentum_buffer"].clone()))
    for x, y in zip(*finals):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_complex_parameters_follow_torch():
    for name in ["sgd", "adam", "rmsprop", "adagrad", "nadam", "adamax", "adadelta"]:
        ours_cls, torch_cls, _, variants = CASES[name]
        hyper = variants[-1]
        gen = torch.Generator().manual_seed(0)
        init = torch.randn(4, 3, dtype=torch.complex128, generator=gen)
        a, b = init.clone().requires_grad_(), init.clone().requires_grad_()
        oa, ob = ours_cls([a], **hyper), torch_cls([b], **torch_kwargs(name, hyper))
        for _ in range(20):
            g = torch.randn(4, 3, dtype=torch.complex128, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
            oa.step()
            ob.step()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _with_tensor_lr(hyper: dict, default_lr: float) -> dict:
    return {**hyper, "lr": torch.tensor(float(hyper.get("lr", default_lr)))}  # float32, as users make it


# (RAdam's twin is tested with the post-Adam optimizers; its tensor lr here)
TENSOR_LR_CASES = {**CASES, "radam": (oo.RAdam, torch.optim.RAdam, {}, [
    dict(lr=0.01), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)])}
TENSOR_LR_PARAMS = [(name, i) for name, case in TENSOR_LR_CASES.items() for i in range(len(case[3]))]


@pytest.mark.parametrize("name,variant", TENSOR_LR_PARAMS, ids=[f"{n}-{i}" for n, i in TENSOR_LR_PARAMS])
def test_a_tensor_lr_steps_as_one_of_torchs_paths(name, variant):
    """A float32 tensor ``lr`` on float64 parameters: torch's paths compute with it in
    different precisions (its single-tensor path keeps it a float32 tensor in its arithmetic,
    its fused kernels read it as a double), so they disagree by float32 roundings, ~1e-9
    here. Each of optimlab's paths that takes a tensor lr agrees with one of torch's to the
    float64 tolerance (1e-12: the last bits, as everywhere; not a float32 rounding apart)."""
    ours_cls, torch_cls, _, variants = TENSOR_LR_CASES[name]
    default_lr = torch_cls.__init__.__defaults__[0]
    grads = gradient_sequence(20, SHAPES, torch.float64)
    theirs = []
    for impl in ({"foreach": False}, {"foreach": True}, {"fused": True}):
        hyper = _with_tensor_lr(variants[variant], default_lr)
        try:
            opt = run(lambda ps: torch_cls(two_groups(ps, hyper), **TENSOR_LR_CASES[name][2], **hyper, **impl),
                      make_params(torch.float64), grads, lr_change_at=10)
        except (RuntimeError, ValueError, TypeError):  # (a path torch refuses with these settings)
            continue
        theirs.append([p.detach() for g in opt.param_groups for p in g["params"]])
    assert theirs
    ran = 0
    for impl in ({}, {"foreach": True}, {"foreach": False}):
        hyper = _with_tensor_lr(variants[variant], default_lr)
        try:
            opt = run(lambda ps: ours_cls(two_groups(ps, hyper), **hyper, **impl), make_params(torch.float64), grads,
                      lr_change_at=10)
        except ValueError:  # (refused as torch refuses it: Adam's foreach with a tensor lr)
            continue
        ran += 1
        ours = [p.detach() for g in opt.param_groups for p in g["params"]]
        matches = [all(torch.allclose(a, b, **TOL[torch.float64]) for a, b in zip(ours, t)) for t in theirs]
        assert any(matches), (impl, [max(float((a - b).abs().max()) for a, b in zip(ours, t)) for t in theirs])
    assert ran >= 2
