"""Every schedule with a torch.optim.lr_scheduler counterpart, over a full run,
against the values torch actually writes into a real optimizer's param
groups (its schedulers are recursive), to 1e-12 in float64.

Two param groups with different base learning rates check per-group driving.
"""

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as tls

from optimlab import schedules as S

BASE_LRS = (1.0, 0.05)
TOL = 1e-12


def make_optimizer(kind):
    params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)) for _ in BASE_LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, BASE_LRS)]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=0.1, betas=(0.9, 0.999))
    raise AssertionError(kind)


def snapshot(optimizer):
    """lr, momentum (SGD) or beta1 (Adam), and beta2 of every group."""
    row = []
    for g in optimizer.param_groups:
        m = g["betas"][0] if "betas" in g else g.get("momentum", np.nan)
        beta2 = g["betas"][1] if "betas" in g else np.nan
        row += [float(g["lr"]), float(m), float(beta2)]
    return row


def run(optimizer, advance, steps):
    """The values in the groups before each of ``steps`` real optimizer steps."""
    rows = []
    for _ in range(steps):
        rows.append(snapshot(optimizer))
        for g in optimizer.param_groups:
            for p in g["params"]:
                p.grad = torch.ones_like(p)
        optimizer.step()
        advance()
    return np.array(rows)


def compare(torch_factory, ours_factory, steps, kind="sgd"):
    opt_t = make_optimizer(kind)
    sched_t = torch_factory(opt_t)
    expected = run(opt_t, sched_t.step, steps)

    opt_o = make_optimizer(kind)
    bridge = S.Scheduler(opt_o, [ours_factory(lr) for lr in BASE_LRS])
    actual = run(opt_o, bridge.step, steps)

    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL)
    # Guard against a vacuous pass: the learning rate must actually move.
    assert np.ptp(expected[:, 0]) > 1e-3
    return expected


CASES = {
    "StepLR": (lambda o: tls.StepLR(o, step_size=7, gamma=0.5),
               lambda lr: S.step_decay(lr, step_size=7, gamma=0.5), 60),
    "MultiStepLR": (lambda o: tls.MultiStepLR(o, milestones=[10, 25, 26, 40], gamma=0.3),
                    lambda lr: S.multistep_decay(lr, [10, 25, 26, 40], gamma=0.3), 60),
    "ExponentialLR": (lambda o: tls.ExponentialLR(o, gamma=0.93),
                      lambda lr: S.ExponentialDecay(lr, decay_rate=0.93), 100),
    "ExponentialLR-as-continuous-r^(t/s)": (
        lambda o: tls.ExponentialLR(o, gamma=0.1 ** (1 / 20)),
        lambda lr: S.ExponentialDecay(lr, decay_rate=0.1, decay_steps=20), 100),
    "StepLR-as-staircase-exponential": (
        lambda o: tls.StepLR(o, step_size=20, gamma=0.1),
        lambda lr: S.ExponentialDecay(lr, decay_rate=0.1, decay_steps=20, staircase=True), 100),
    # 100 steps = 3.3 periods: torch's cosine is not clamped and rises again after T_max.
    "CosineAnnealingLR": (lambda o: tls.CosineAnnealingLR(o, T_max=30, eta_min=0.001),
                          lambda lr: S.CosineAnnealing(lr, period=30, min_lr=0.001), 100),
    "CosineAnnealingWarmRestarts-T_mult1": (
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=9, T_mult=1, eta_min=0.002),
        lambda lr: S.CosineWarmRestarts(lr, period=9, period_mult=1, min_lr=0.002), 60),
    "CosineAnnealingWarmRestarts-T_mult2": (
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.0),
        lambda lr: S.CosineWarmRestarts(lr, period=3, period_mult=2), 200),
    "CosineAnnealingWarmRestarts-T_mult3": (
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=3, eta_min=0.01),
        lambda lr: S.CosineWarmRestarts(lr, period=2, period_mult=3, min_lr=0.01), 200),
    "LinearLR": (lambda o: tls.LinearLR(o, start_factor=0.25, end_factor=0.8, total_iters=12),
                 lambda lr: S.Linear(lr * 0.25, lr * 0.8, steps=12), 40),
    "PolynomialLR": (lambda o: tls.PolynomialLR(o, total_iters=40, power=2.0),
                     lambda lr: S.Polynomial(lr, decay_steps=40, power=2.0), 60),
    "PolynomialLR-p0.5": (lambda o: tls.PolynomialLR(o, total_iters=25, power=0.5),
                          lambda lr: S.Polynomial(lr, decay_steps=25, power=0.5), 30),
    "SequentialLR-warmup-cosine": (
        lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=0.1, total_iters=8),
                                       tls.CosineAnnealingLR(o, T_max=50, eta_min=0.003)], milestones=[8]),
        lambda lr: S.warmup(S.CosineAnnealing(lr, period=50, min_lr=0.003), warmup_steps=8, start_lr=0.1 * lr),
        58),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_scheduler_over_a_full_run(name):
    torch_factory, ours_factory, steps = CASES[name]
    compare(torch_factory, ours_factory, steps)


def onecycle_pair(**kw):
    max_lrs = [2 * lr for lr in BASE_LRS]
    ours_kw = dict(kw)
    if "anneal_strategy" in ours_kw:
        ours_kw["anneal"] = ours_kw.pop("anneal_strategy")
    total = kw.pop("total_steps")
    ours_kw.pop("total_steps")
    torch_factory = lambda o: tls.OneCycleLR(o, max_lr=max_lrs, total_steps=total, **kw)  # noqa: E731
    ours_factory = lambda lr: S.OneCycle(max_lr=2 * lr, total_steps=total, **ours_kw)  # noqa: E731
    return torch_factory, ours_factory, total


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("kw", [
    dict(total_steps=100),
    dict(total_steps=100, anneal_strategy="linear", pct_start=0.25),
    dict(total_steps=97, three_phase=True, pct_start=0.4, anneal_strategy="linear"),
    dict(total_steps=120, three_phase=True, div_factor=10.0, final_div_factor=100.0,
         base_momentum=0.8, max_momentum=0.9),
], ids=["cos", "linear", "three-phase-linear", "three-phase-cos-custom"])
def test_onecycle_matches_torch_including_momentum(kind, kw):
    torch_factory, ours_factory, total = onecycle_pair(**kw)
    expected = compare(torch_factory, ours_factory, total, kind=kind)
    momentum = expected[:, 1]
    assert np.ptp(momentum) > 0.05, "momentum (SGD) / beta1 (Adam) must be cycled"
    # Cycled inversely: momentum is lowest where the lr peaks.
    assert np.argmin(momentum) == np.argmax(expected[:, 0])
    if kind == "adam":
        assert np.all(expected[:, 2] == 0.999), "beta2 must be left alone"


def test_onecycle_without_momentum_cycling_leaves_momentum_alone():
    opt = make_optimizer("sgd")
    bridge = S.Scheduler(opt, S.OneCycle(max_lr=0.1, total_steps=50, cycle_momentum=False))
    rows = run(opt, bridge.step, 50)
    assert np.all(rows[:, 1] == 0.9)
    assert np.ptp(rows[:, 0]) > 0.05


def test_pure_function_equals_what_the_bridge_writes():
    schedule = S.OneCycle(max_lr=0.3, total_steps=40, three_phase=True)
    opt = make_optimizer("adam")
    rows = run(opt, S.Scheduler(opt, schedule).step, 40)
    assert rows[:, 0].tolist() == [schedule(t) for t in range(40)]
    assert rows[:, 1].tolist() == [schedule.momentum(t) for t in range(40)]
