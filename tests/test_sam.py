"""SAM and ASAM (optimlab.optim.sam) against their twin, pytorch_optimizer.SAM (4.1.0), step for step."""

from __future__ import annotations

import copy
import math
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import optimlab.optim as oo
from optimlab.optim.sam import SAM, SAMByName

po = pytest.importorskip("pytorch_optimizer")
posam = pytest.importorskip("pytorch_optimizer.optimizer.sam")

STEPS = 10
F64 = torch.float64


def mlp(dtype=F64, seed=0, unused=False):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    if unused:  # a parameter the loss never touches: its .grad stays None
        model.register_parameter("unused", nn.Parameter(torch.randn(4, dtype=dtype)))
    return model


def batches(dtype, n=STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g, dtype=dtype), torch.randn(16, 3, generator=g, dtype=dtype))
            for _ in range(n)]


def make_closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss
    return closure


def train(model, opt, data):
    losses = []
    for x, y in data:
        closure = make_closure(model, opt, x, y)
        closure()
        losses.append(opt.step(closure))
    return [p.detach().clone() for p in model.parameters()], losses


def assert_same(ours, theirs, rtol):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=rtol, atol=0)


def _norm_in_param_dtype(param_groups, device=None, *, weight_adaptive=False):
    """pytorch_optimizer.optimizer.utils.gradient.get_global_gradient_norm (4.1.0) with its one
    ``.float()`` removed: the twin sums the squared norms in float32, optimlab in the
    parameters' dtype. Everything else is the twin's code path (foreach norms, square, sum)."""
    grads = []
    for group in param_groups:
        adaptive = weight_adaptive and group.get("adaptive", False)
        for p in group["params"]:
            if p.grad is not None:
                grads.append(p.grad * p.abs() if adaptive else p.grad)
    return torch.stack(torch._foreach_norm(grads)).square_().sum().reshape(1)


@pytest.fixture
def oracle_norm_in_dtype(monkeypatch):
    monkeypatch.setattr(posam, "get_global_gradient_norm", _norm_in_param_dtype)


# (optimlab base, torch base for the twin, hyperparameters)
BASES = {
    "sgd-momentum": (oo.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    "sgd-nesterov-wd": (oo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adam": (oo.Adam, torch.optim.Adam, dict(lr=0.01)),
    "adamw": (oo.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    "sgd-maximize": (oo.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.5, maximize=True)),
}


def _pair(base, adaptive, dtype, unused=False, ours_extra=(), **sam_kw):
    ours_cls, torch_cls, hyper = BASES[base]
    m_ours, m_twin = mlp(dtype, unused=unused), mlp(dtype, unused=unused)
    ours = SAM(m_ours.parameters(), ours_cls, adaptive=adaptive, **sam_kw, **hyper, **dict(ours_extra))
    twin = po.SAM(m_twin.parameters(), torch_cls, adaptive=adaptive, **sam_kw, **hyper)
    return (m_ours, ours), (m_twin, twin)


@pytest.mark.parametrize("adaptive", [False, True], ids=["SAM", "ASAM"])
@pytest.mark.parametrize("base", list(BASES))
def test_float64_matches_the_twin_step_for_step(base, adaptive, oracle_norm_in_dtype):
    (m_ours, ours), (m_twin, twin) = _pair(base, adaptive, F64, rho=0.07)
    data = batches(F64)
    for x, y in data:  # compared after every step, not only at the end
        for model, opt in ((m_ours, ours), (m_twin, twin)):
            closure = make_closure(model, opt, x, y)
            closure()
            opt.step(closure)
        assert_same(list(m_ours.parameters()), list(m_twin.parameters()), rtol=1e-12)
    # and the base optimizers' state (momentum buffers, moments) agrees too
    for p_o, p_t in zip(m_ours.parameters(), m_twin.parameters()):
        for key, value in twin.base_optimizer.state[p_t].items():
            torch.testing.assert_close(ours.state[p_o][key], value, rtol=1e-12, atol=0)


@pytest.mark.parametrize("adaptive", [False, True], ids=["SAM", "ASAM"])
@pytest.mark.parametrize("base", ["sgd-momentum", "adam"])
def test_float32_matches_the_unmodified_twin_exactly(base, adaptive):
    """In float32 the twin's float32 norm is the parameters' dtype: same ops, same bits (the
    base optimizer's foreach path, torch's loop there; its default, a single-pass kernel, to
    test_fused.py's float32 tolerance)."""
    (m_ours, ours), (m_twin, twin) = _pair(base, adaptive, torch.float32, ours_extra=dict(foreach=True))
    data = batches(torch.float32)
    twin_p = train(m_twin, twin, data)[0]
    assert_same(train(m_ours, ours, data)[0], twin_p, rtol=0)
    (m_default, default), _ = _pair(base, adaptive, torch.float32)
    for a, b in zip(train(m_default, default, data)[0], twin_p):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True], ids=["SAM", "ASAM"])
def test_float64_differs_from_the_unmodified_twin_only_by_its_float32_norm(adaptive):
    (m_ours, ours), (m_twin, twin) = _pair("sgd-momentum", adaptive, F64)
    data = batches(F64)
    ours_p, twin_p = train(m_ours, ours, data)[0], train(m_twin, twin, data)[0]
    assert_same(ours_p, twin_p, rtol=1e-6)  # ρ/‖g‖ rounded to float32 there (relative 6e-8 per step)


def test_gradient_centralisation_matches_the_twin(oracle_norm_in_dtype):
    (m_ours, ours), (m_twin, twin) = _pair("sgd-momentum", False, F64, use_gc=True)
    data = batches(F64)
    assert_same(train(m_ours, ours, data)[0], train(m_twin, twin, data)[0], rtol=1e-12)


@pytest.mark.parametrize("adaptive", [False, True], ids=["SAM", "ASAM"])
def test_a_parameter_without_gradient_is_left_alone_as_in_the_twin(adaptive, oracle_norm_in_dtype):
    (m_ours, ours), (m_twin, twin) = _pair("adam", adaptive, F64, unused=True)
    before = m_ours.unused.detach().clone()
    data = batches(F64)
    assert_same(train(m_ours, ours, data)[0], train(m_twin, twin, data)[0], rtol=1e-12)
    assert m_ours.unused.grad is None and torch.equal(m_ours.unused, before)
    assert m_ours.unused not in ours.state or not ours.state[m_ours.unused]


@pytest.mark.parametrize("eta", [0.0, 0.01])
@pytest.mark.parametrize("adaptive", [False, True], ids=["SAM", "ASAM"])
def test_the_closure_sees_the_perturbed_weights_of_the_papers_formula(adaptive, eta):
    """e = ρ·g/(‖g‖ + ε₀) (Foret et al.) or ρ·T²g/(‖Tg‖ + ε₀), T = |θ| + η (Kwon et al.)."""
    model = mlp()
    opt = SAM(model.parameters(), oo.SGD, rho=0.3, adaptive=adaptive, eta=eta, lr=0.1)
    x, y = batches(F64, 1)[0]
    closure = make_closure(model, opt, x, y)
    closure()
    theta = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    t = [th.abs() + eta if adaptive else torch.ones_like(th) for th in theta]
    norm = math.sqrt(sum(float(((ti * g) ** 2).sum()) for ti, g in zip(t, grads))) + 1e-12
    expected = [th + 0.3 * ti * ti * g / norm for th, ti, g in zip(theta, t, grads)]
    seen = []

    def recording():
        seen.extend(p.detach().clone() for p in model.parameters())
        return closure()

    loss = opt.step(recording)
    assert_same(seen, expected, rtol=1e-13)
    # the step returned the closure's loss at θ + e, and θ was restored before the base step
    assert loss.item() == pytest.approx(((torch.func.functional_call(
        model, dict(zip([n for n, _ in model.named_parameters()], expected)), (x,)) - y) ** 2).mean().item())
    perturbed_grads = [p.grad for p in model.parameters()]
    assert_same([p.detach() for p in model.parameters()],
                [th - 0.1 * g for th, g in zip(theta, perturbed_grads)], rtol=1e-14)


def test_eta_zero_asam_is_the_twins_adaptive_sam():
    model = mlp()
    opt = SAM(model.parameters(), oo.SGD, adaptive=True, lr=0.1)
    assert opt.eta == 0.0 and opt.rho == 0.05 and opt.perturb_eps == 1e-12


def test_zero_gradient_gives_no_perturbation_and_no_nan():
    model = mlp()
    opt = SAM(model.parameters(), oo.SGD, rho=0.05, adaptive=True, lr=0.1)
    theta = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    seen = []

    def closure():
        seen.extend(p.detach().clone() for p in model.parameters())
        opt.zero_grad(set_to_none=False)  # the gradient at θ + e is zero as well
        return torch.tensor(0.0)

    opt.step(closure)
    assert_same(seen, theta, rtol=0)
    assert_same([p.detach() for p in model.parameters()], theta, rtol=0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_manual_first_and_second_step_equal_step_with_closure():
    data = batches(F64)
    m1, m2 = mlp(), mlp()
    o1 = SAM(m1.parameters(), oo.SGD, lr=0.1, momentum=0.9)
    o2 = SAM(m2.parameters(), oo.SGD, lr=0.1, momentum=0.9)
    p1 = train(m1, o1, data)[0]
    for x, y in data:
        o2.zero_grad()
        ((m2(x) - y) ** 2).mean().backward()
        o2.first_step(zero_grad=True)
        ((m2(x) - y) ** 2).mean().backward()
        o2.second_step(zero_grad=True)
        assert all(p.grad is None for p in m2.parameters())
    assert_same(p1, [p.detach() for p in m2.parameters()], rtol=0)
    ((m2(x) - y) ** 2).mean().backward()
    o2.first_step()
    with pytest.raises(ValueError, match="already perturbed; call second_step"):
        o2.first_step()


def test_step_without_closure_says_how_to_write_one():
    model = mlp()
    opt = SAM(model.parameters(), oo.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"SAM.step\(\) needs a closure") as err:
        opt.step()
    assert "loss.backward()" in str(err.value) and "optimizer.step(closure)" in str(err.value)
    assert SAM.requires_closure is True and opt.requires_closure is True


def test_step_before_any_backward_is_refused_not_silently_plain_sgd():
    model = mlp()
    opt = SAM(model.parameters(), oo.SGD, lr=0.1)
    x, y = batches(F64, 1)[0]
    theta = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="no parameter has a gradient"):
        opt.step(make_closure(model, opt, x, y))
    assert_same([p.detach() for p in model.parameters()], theta, rtol=0)


def test_a_failing_closure_leaves_the_weights_where_they_were():
    model = mlp()
    opt = SAM(model.parameters(), oo.Adam, lr=0.1)
    x, y = batches(F64, 1)[0]
    make_closure(model, opt, x, y)()
    theta = [p.detach().clone() for p in model.parameters()]

    def broken():
        raise RuntimeError("data loader died")

    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step(broken)
    assert_same([p.detach() for p in model.parameters()], theta, rtol=0)
    assert not opt._saved and all(not s for s in opt.state.values())


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(5, 3, sparse=True).double()
    opt = SAM(emb.parameters(), oo.SGD, lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        opt.step(lambda: None)


@pytest.mark.parametrize("name,value", [
    ("rho", 0), ("rho", 0.0), ("rho", -0.05), ("rho", float("nan")), ("rho", float("inf")), ("rho", "x"),
    ("rho", True), ("perturb_eps", 0.0), ("perturb_eps", -1e-12), ("perturb_eps", float("nan")),
    ("eta", -0.01), ("eta", float("nan")), ("adaptive", "yes"), ("adaptive", 1), ("use_gc", None),
    ("foreach", "no"),
])
def test_bad_hyperparameter_is_refused_with_its_name_and_value(name, value):
    model = mlp()
    with pytest.raises(ValueError) as err:
        SAM(model.parameters(), oo.SGD, lr=0.1, **{name: value})
    assert name in str(err.value) and repr(value) in str(err.value)


def test_bad_base_optimizer_is_refused():
    ps = list(mlp().parameters())
    with pytest.raises(ValueError, match="base_optimizer is required"):
        SAM(ps)
    with pytest.raises(ValueError, match="base_optimizer must be"):
        SAM(ps, 42, lr=0.1)
    with pytest.raises(ValueError, match="unknown optimizer 'sdg'.*'sgd'"):
        SAM(ps, "sdg", lr=0.1)
    with pytest.raises(ValueError, match="needs a closure of its own"):
        SAM(ps, torch.optim.LBFGS)
    with pytest.raises(ValueError, match="needs a closure of its own"):
        SAM(SAM(ps, oo.SGD, lr=0.1))
    with pytest.raises(ValueError, match="cannot wrap itself"):
        SAM(ps, "sam", lr=0.1)
    with pytest.raises(ValueError, match="not a torch.optim.Optimizer"):
        SAM(ps, lambda params, **kw: object())
    with pytest.raises(ValueError, match="already has its parameters.*lr"):
        SAM(oo.SGD(ps, lr=0.1), lr=0.2)
    with pytest.raises(ValueError, match="already has its parameters.*params"):
        SAM(ps, oo.SGD(ps, lr=0.1))
    with pytest.raises(ValueError, match="lrr"):  # the base's own strict check
        SAM(ps, oo.SGD, lrr=0.1)
    with pytest.raises(ValueError, match="rho"):  # SAM's rho is never a group key of the base
        SAM([{"params": ps, "rho": 0.1}], oo.SGD, lr=0.1)


def test_a_built_optimizer_registry_name_or_class_give_the_same_run():
    data = batches(F64)
    runs = []
    for how in ("class", "name", "instance", "instance-positional", "create"):
        model = mlp()
        ps = model.parameters()
        hyper = dict(lr=0.1, momentum=0.9)
        opt = {"class": lambda: SAM(ps, oo.SGD, rho=0.1, **hyper),
               "name": lambda: SAM(ps, "sgd", rho=0.1, **hyper),
               "instance": lambda: SAM(base_optimizer=oo.SGD(ps, **hyper), rho=0.1),
               "instance-positional": lambda: SAM(oo.SGD(ps, **hyper), rho=0.1),
               "create": lambda: oo.create("sam", ps, base="sgd", rho=0.1, **hyper)}[how]()
        runs.append(train(model, opt, data)[0])
    for other in runs[1:]:
        assert_same(other, runs[0], rtol=0)


def test_registry_builds_sam_and_asam_by_name():
    ps = list(mlp().parameters())
    opt = oo.create("sam", ps, base="adamw", rho=0.5, adaptive=True, eta=0.01, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, SAM) and isinstance(opt, SAMByName) and isinstance(opt.base_optimizer, oo.AdamW)
    assert (opt.rho, opt.adaptive, opt.eta) == (0.5, True, 0.01)
    assert opt.param_groups[0]["weight_decay"] == 0.1 and "sam" in oo.available()
    assert oo.get("sam") is SAMByName and "When to choose it" in SAM.__doc__
    with pytest.raises(ValueError, match="base must be the name"):
        oo.create("sam", ps, base=oo.SGD)
    with pytest.raises(ValueError, match="rho"):
        oo.create("sam", ps, rho=float("nan"))


def test_param_groups_state_and_defaults_are_the_bases_so_schedulers_drive_it():
    model = mlp()
    base = oo.SGD([{"params": [model[0].weight, model[0].bias]}, {"params": model[2].parameters(), "lr": 0.5}],
                  lr=0.1, momentum=0.9)
    opt = SAM(base, rho=0.05)
    assert opt.param_groups is base.param_groups and opt.state is base.state and opt.defaults is base.defaults
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batches(F64, 1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        closure = make_closure(model, opt, x, y)
        closure()
        opt.step(closure)
        sched.step()
    assert [g["lr"] for g in base.param_groups] == [0.05, 0.25]
    assert all("momentum_buffer" in base.state[p] for p in model.parameters())
    extra = nn.Parameter(torch.zeros(2, dtype=F64))
    opt.add_param_group({"params": [extra], "lr": 0.01})
    assert base.param_groups[-1]["params"] == [extra]
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_keras_twin_as_base():
    from optimlab.optim import keras as ok

    model = mlp()
    opt = SAM(model.parameters(), ok.Adam, learning_rate=0.01, rho=0.05)
    params, losses = train(model, opt, batches(F64, 3))
    assert all(torch.isfinite(p).all() for p in params) and ok.Adam is type(opt.base_optimizer)
    assert opt.base_optimizer.iterations == 3


def _state_round_trip(make_opt):
    data = batches(F64, 10)
    model = mlp()
    opt = make_opt(model)
    train(model, opt, data[:5])
    saved = copy.deepcopy(opt.state_dict())
    saved_params = copy.deepcopy(model.state_dict())
    expected = train(model, opt, data[5:])[0]
    model2 = mlp(seed=7)
    model2.load_state_dict(saved_params)
    opt2 = make_opt(model2)
    opt2.rho, opt2.adaptive = 123.0, not opt2.adaptive  # restored from the state
    opt2.load_state_dict(saved)
    assert (opt2.rho, opt2.adaptive) == (opt.rho, opt.adaptive)
    assert_same(train(model2, opt2, data[5:])[0], expected, rtol=0)
    return saved, opt2


@pytest.mark.parametrize("adaptive", [False, True], ids=["SAM", "ASAM"])
def test_state_dict_round_trip_resumes_bit_for_bit(adaptive):
    saved, _ = _state_round_trip(
        lambda m: SAM(m.parameters(), oo.Adam, rho=0.1, adaptive=adaptive, eta=0.01, lr=0.01))
    assert saved["sam"] == {"rho": 0.1, "adaptive": adaptive, "perturb_eps": 1e-12, "eta": 0.01, "use_gc": False}
    assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # the base's keys only


def test_state_dict_round_trip_with_a_torch_base():
    _state_round_trip(lambda m: SAM(m.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9))


def test_load_state_dict_refuses_a_foreign_or_bad_state_and_changes_nothing():
    model = mlp()
    opt = SAM(model.parameters(), oo.SGD, lr=0.1, momentum=0.9)
    x, y = batches(F64, 1)[0]
    closure = make_closure(model, opt, x, y)
    closure()
    opt.step(closure)
    good = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="no 'sam' entry"):
        opt.load_state_dict(opt.base_optimizer.state_dict())
    for bad, match in ((dict(rho=-1.0), r"rho must be > 0, got -1.0"), (dict(adaptive="no"), "adaptive"),
                       (dict(colour=1), "unknown key")):
        sd = copy.deepcopy(good)
        sd["sam"].update(bad)
        sd["param_groups"][0]["lr"] = 99.0
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        assert opt.param_groups[0]["lr"] == 0.1 and opt.rho == 0.05 and opt.adaptive is False


def test_deepcopy_and_pickle_keep_settings_and_still_step():
    model = mlp()
    opt = SAM(model.parameters(), oo.SGD, rho=0.2, adaptive=True, lr=0.1)
    clone = copy.deepcopy({"m": model, "o": opt})
    assert clone["o"].rho == 0.2 and clone["o"].adaptive is True
    params_before = [p.detach().clone() for p in clone["m"].parameters()]
    train(clone["m"], clone["o"], batches(F64, 2))
    assert any(not torch.equal(a, b) for a, b in zip(params_before, clone["m"].parameters()))
    assert pickle.loads(pickle.dumps(opt)).rho == 0.2
    assert "rho=0.2" in repr(opt) and "SGD" in repr(opt)
