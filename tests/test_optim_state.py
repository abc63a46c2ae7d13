"""State I/O, non-finite gradients, and working wherever a torch optimizer works."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

import optimlab.optim as oo
from tests.optim_cases import CASES, torch_kwargs


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    return model, x, y


def train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def build(name, params):
    cls, _, _, variants = CASES[name]
    return cls(params, **variants[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_round_trip_resumes_exactly(name, tmp_path):
    model, x, y = model_and_data()
    opt = build(name, model.parameters())
    train(model, opt, x, y, 5)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    train(model, opt, x, y, 5)

    resumed, _, _ = model_and_data()
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    opt2 = build(name, resumed.parameters())
    opt2.load_state_dict(ckpt["opt"])
    train(resumed, opt2, x, y, 5)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_resume_across_a_process_restart(tmp_path):
    """A checkpoint written by another process resumes to the uninterrupted result."""
    root = str(__import__("pathlib").Path(__file__).parents[1])
    script = textwrap.dedent(f"""
        import sys, torch, optimlab.optim as oo
        sys.path.insert(0, {root!r})
        from tests.test_optim_state import model_and_data, train
        model, x, y = model_and_data()
        opt = oo.NAdam(model.parameters(), lr=0.01)
        train(model, opt, x, y, 7)
        torch.save({{"m": model.state_dict(), "o": opt.state_dict()}}, sys.argv[1])
    """)
    ckpt = tmp_path / "ck.pt"
    subprocess.run([sys.executable, "-c", script, str(ckpt)], check=True)
    resumed, x, y = model_and_data()
    opt = oo.NAdam(resumed.parameters(), lr=0.01)
    saved = torch.load(ckpt, weights_only=True)
    resumed.load_state_dict(saved["m"])
    opt.load_state_dict(saved["o"])
    train(resumed, opt, x, y, 6)
    model, x, y = model_and_data()
    train(model, oo.NAdam(model.parameters(), lr=0.01), x, y, 13)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_states_interchange_with_torch_twin():
    model, x, y = model_and_data()
    theirs = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    train(model, theirs, x, y, 3)
    ours = oo.Adam(model.parameters(), lr=0.01, amsgrad=True)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    twin = copy.deepcopy(model)
    theirs2 = torch.optim.Adam(twin.parameters(), lr=0.01, amsgrad=True)
    theirs2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    train(model, ours, x, y, 4)
    train(twin, theirs2, x, y, 4)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_loading_a_foreign_or_misshapen_state_fails_before_any_change():
    model, x, y = model_and_data()
    sgd = oo.SGD(model.parameters(), lr=0.1, momentum=0.9)
    adam = oo.Adam(model.parameters(), lr=0.1)
    train(model, sgd, x, y, 2)
    train(model, adam, x, y, 2)
    before = copy.deepcopy(adam.state_dict())
    with pytest.raises(ValueError, match="lacks.*saved by an SGD, not by Adam"):
        adam.load_state_dict(sgd.state_dict())
    edited = copy.deepcopy(sgd.state_dict())
    del edited["param_groups"][0]["lr"]  # (saved by an SGD: an SGD refuses it as incomplete, not as foreign)
    with pytest.raises(ValueError, match=r"lacks \['lr'\].*saved by an SGD and is incomplete"):
        oo.SGD(model.parameters(), lr=0.1, momentum=0.9).load_state_dict(edited)
    bad = copy.deepcopy(adam.state_dict())
    bad["state"][0]["exp_avg"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape \(3, 3\)"):
        adam.load_state_dict(bad)
    bad = copy.deepcopy(adam.state_dict())
    bad["state"][1]["momentum_buffer"] = torch.zeros_like(bad["state"][1]["exp_avg"])
    with pytest.raises(ValueError, match="another optimizer"):
        adam.load_state_dict(bad)
    bad = copy.deepcopy(adam.state_dict())
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr must be >= 0, got -1.0"):
        adam.load_state_dict(bad)
    with pytest.raises(ValueError, match="param groups"):
        adam.load_state_dict({"state": {}, "param_groups": []})
    after = adam.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, st in before["state"].items():
        for k, v in st.items():
            assert torch.equal(after["state"][i][k], v)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", list(CASES))
def test_skip_nonfinite_skips_the_whole_step(name, bad):
    model, x, y = model_and_data()
    cls, _, _, variants = CASES[name]
    opt = cls(model.parameters(), **variants[-1], skip_nonfinite=True)
    train(model, opt, x, y, 2)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    next(iter(model.parameters())).grad[0, 0] = bad  # one bad entry in the first tensor
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    after = opt.state_dict()
    for i, st in state["state"].items():
        for k, v in st.items():
            assert torch.equal(after["state"][i][k], v), (i, k)
    assert opt.skipped_steps == 1 and after["optimlab"]["skipped_steps"] == 1
    train(model, opt, x, y, 1)  # a finite step afterwards proceeds
    assert not all(torch.equal(a, b) for a, b in zip(params, model.parameters()))


def test_pickle_and_deepcopy_keep_the_nonfinite_policy_and_count():
    import pickle

    p = torch.ones(3, requires_grad=True)
    opt = oo.Adam([p], lr=0.1, skip_nonfinite=True)
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    opt.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.skip_nonfinite is True and clone.skipped_steps == 1
    opt.load_state_dict(opt.state_dict())
    assert opt.skip_nonfinite is True and opt.skipped_steps == 1


def test_without_skip_nonfinite_a_nan_gradient_propagates_like_torch():
    p = torch.ones(3, requires_grad=True)
    opt = oo.Adam([p], lr=0.1)
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    opt.step()
    assert torch.isnan(p[1]) and torch.isfinite(p[0]) and opt.skipped_steps == 0


def test_torch_lr_schedulers_drive_our_optimizers_like_torch_ones():
    for name in ["sgd", "adam", "rmsprop"]:
        cls, tcls, _, variants = CASES[name]
        results = []  # optimlab's foreach path, torch's default, optimlab's default (its fused kernels)
        for make in (lambda ps: cls(ps, **variants[-1], foreach=True),
                     lambda ps: tcls(ps, **torch_kwargs(name, variants[-1])),
                     lambda ps: cls(ps, **variants[-1])):
            model, x, y = model_and_data()
            opt = make(model.parameters())
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
            lrs = []
            for _ in range(20):
                train(model, opt, x, y, 1)
                sched.step()
                lrs.append(opt.param_groups[0]["lr"])
            results.append((lrs, [p.detach().clone() for p in model.parameters()]))
        assert results[0][0] == results[1][0] == results[2][0]
        for a, b in zip(results[0][1], results[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(results[2][1], results[1][1]):  # the kernels: test_fused.py's float32 tolerance
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_scaler_and_closure():
    model, x, y = model_and_data()
    twin = copy.deepcopy(model)
    ours, theirs = oo.Adam(model.parameters(), lr=0.01), torch.optim.Adam(twin.parameters(), lr=0.01)
    for m, opt in ((model, ours), (twin, theirs)):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for _ in range(5):
            opt.zero_grad()
            scaler.scale(torch.nn.functional.mse_loss(m(x), y)).backward()
            scaler.step(opt)
            scaler.update()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    opt = oo.SGD(model.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    second = opt.step(closure)
    assert first.item() > second.item()


@pytest.mark.parametrize("maximize", [False, True])
def test_sparse_adagrad_and_sgd_match_torch(maximize):
    for ours_cls, tcls, kw in [(oo.Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01)),
                               (oo.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9))]:
        torch.manual_seed(0)
        emb = torch.nn.Embedding(20, 4, sparse=True)
        twin = copy.deepcopy(emb)
        o1, o2 = ours_cls(emb.parameters(), maximize=maximize, **kw), tcls(twin.parameters(), maximize=maximize, **kw)
        for t in range(15):
            idx = torch.randint(0, 20, (6,))
            for e, o in ((emb, o1), (twin, o2)):
                o.zero_grad()
                e(idx).pow(2).sum().backward()
                o.step()
        torch.testing.assert_close(emb.weight, twin.weight, rtol=1e-6, atol=1e-7)
        untouched = [i for i in range(20) if o1.state[emb.weight].get("sum") is not None
                     and torch.all(o1.state[emb.weight]["sum"][i] == 0)]
        for i in untouched:  # rows never looked up keep their initial value
            assert torch.equal(emb.weight[i], copy.deepcopy(twin.weight[i]))


def test_momentum_conventions_agree_at_constant_lr_and_differ_after_a_change():
    """The lectures' two momentum forms: ``v ← γv + η∇, w ← w − v`` and torch's ``b ← μb + g, w ← w − ηb``.

    The first is Keras's SGD rule (its velocity is −v: ``v ← μ·v − η·g, w ← w + v``), run here
    on its own; it holds η as Keras's float32 variable, so torch's side is given the same number."""
    from optimlab.optim.keras import as_keras_lr
    from optimlab.optim.keras.sgd import sgd_rule

    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(40)]
    lr0, lr1 = as_keras_lr(0.1), as_keras_lr(0.01)

    def run(change_at):
        w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        opt = oo.Momentum([w], lr=lr0, momentum=0.9)
        v_w, lr = torch.zeros(5, dtype=torch.float64), lr0
        state = {"momentum": torch.zeros(5, dtype=torch.float64)}
        for t, g in enumerate(grads):
            if t == change_at:
                lr = opt.param_groups[0]["lr"] = lr1
            w.grad = g.clone()
            opt.step()
            sgd_rule(v_w, g, state, {"lr": lr, "momentum": 0.9, "nesterov": False})
        return w.detach(), v_w

    torch_form, lecture_form = run(change_at=None)
    torch.testing.assert_close(torch_form, lecture_form, rtol=1e-12, atol=1e-12)
    torch_form, lecture_form = run(change_at=20)
    assert (torch_form - lecture_form).abs().max() > 1e-2


def test_adagrad_starts_each_groups_accumulator_from_its_own_group():
    """A deliberate difference (docs/conventions.md, section 6): torch 2.13 starts every group's
    accumulator at the constructor's initial_accumulator_value; optimlab uses the group's own."""
    import optimlab.optim as oo

    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    groups = lambda: [{"params": [a]}, {"params": [b], "initial_accumulator_value": 0.5}]  # noqa: E731
    ours = oo.Adagrad(groups(), lr=0.1, initial_accumulator_value=0.1)
    theirs = torch.optim.Adagrad(groups(), lr=0.1, initial_accumulator_value=0.1)
    assert torch.equal(ours.state[a]["sum"], torch.full((2,), 0.1))
    assert torch.equal(ours.state[b]["sum"], torch.full((2,), 0.5))
    assert torch.equal(theirs.state[b]["sum"], torch.full((2,), 0.1))  # torch's constructor value
    assert theirs.param_groups[1]["initial_accumulator_value"] == 0.5   # though its group says 0.5
