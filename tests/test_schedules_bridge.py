"""The bridge from a pure schedule to an optimizer's param groups: any
optimizer, per step or per epoch, the end of a finite schedule, and exact
resumption from state_dict."""

import io
from types import SimpleNamespace

import pytest
import torch

from optimlab import schedules as S


def test_drives_anything_with_param_groups():
    groups = [{"lr": 123.0, "momentum": 0.0}, {"lr": 7.0, "betas": (0.5, 0.99)}]
    optimizer = SimpleNamespace(param_groups=groups)
    schedule = S.OneCycle(max_lr=0.4, total_steps=10)
    bridge = S.Scheduler(optimizer, schedule)
    for t in range(10):
        assert groups[0]["lr"] == groups[1]["lr"] == schedule(t)
        assert groups[0]["momentum"] == groups[1]["betas"][0] == schedule.momentum(t)
        assert groups[1]["betas"][1] == 0.99
        bridge.step()


def test_per_epoch_stepping_holds_the_lr_within_an_epoch():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = S.step_decay(0.1, step_size=2, gamma=0.5)
    bridge = S.Scheduler(optimizer, schedule)
    seen = []
    for epoch in range(6):
        for _batch in range(3):
            seen.append((epoch, optimizer.param_groups[0]["lr"]))
            model(torch.randn(4, 2)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        bridge.step()
    assert all(lr == schedule(epoch) for epoch, lr in seen)
    assert sorted({lr for _, lr in seen}, reverse=True) == [0.1, 0.05, 0.025]


def test_finite_schedule_keeps_last_value_at_its_end_then_refuses_to_go_on():
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.0, "momentum": 0.9}])
    schedule = S.OneCycle(max_lr=1.0, total_steps=5, pct_start=0.4)
    bridge = S.Scheduler(optimizer, schedule)
    for _ in range(5):  # one step() after each of the 5 optimizer steps
        bridge.step()
    assert bridge.position == 5
    assert optimizer.param_groups[0]["lr"] == schedule(4)
    with pytest.raises(ValueError, match="position=6"):
        bridge.step()


def test_one_cycle_cycles_a_keras_twins_beta_1_as_torch_cycles_adams_betas():
    """A Keras-convention Adam's group says beta_1 where torch's says betas[0]: the bridge
    cycles it to the values torch's OneCycleLR gives betas[0] (torch's scheduler refuses the
    Keras group: it looks for momentum or betas only)."""
    import optimlab.optim.keras as ok

    keras_adam = ok.Adam(torch.nn.Linear(2, 1).parameters(), learning_rate=0.001)
    torch_adam = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=0.001)
    bridge = S.Scheduler(keras_adam, S.OneCycle(max_lr=0.1, total_steps=20, base_momentum=0.85, max_momentum=0.95))
    theirs = torch.optim.lr_scheduler.OneCycleLR(torch_adam, max_lr=0.1, total_steps=20,
                                                 base_momentum=0.85, max_momentum=0.95)
    for _ in range(19):
        group, twin = keras_adam.param_groups[0], torch_adam.param_groups[0]
        assert group["beta_1"] == pytest.approx(twin["betas"][0], rel=1e-12, abs=0)
        assert group["lr"] == pytest.approx(twin["lr"], rel=1e-12, abs=0)
        torch_adam.step()
        theirs.step()
        bridge.step()
    keras_adam.step()  # (the written values pass the step's checks)


def test_cycling_momentum_on_an_optimizer_without_momentum_is_an_error():
    optimizer = torch.optim.Adagrad(torch.nn.Linear(2, 1).parameters())
    with pytest.raises(ValueError, match="neither 'momentum' nor 'betas'"):
        S.Scheduler(optimizer, S.OneCycle(max_lr=0.1, total_steps=10))
    S.Scheduler(optimizer, S.OneCycle(max_lr=0.1, total_steps=10, cycle_momentum=False))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 25)


def test_one_schedule_per_group_must_match_the_group_count():
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.1}, {"lr": 0.2}])
    with pytest.raises(ValueError, match="one per param group"):
        S.Scheduler(optimizer, [S.Constant(0.1)])


def test_loading_a_position_past_the_end_is_an_error():
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.1}])
    bridge = S.Scheduler(optimizer, S.OneCycle(0.1, total_steps=5, cycle_momentum=False))
    with pytest.raises(ValueError, match="position=7"):
        bridge.load_state_dict({"position": 7})
    with pytest.raises(ValueError, match="position=-1"):
        bridge.load_state_dict({"position": -1})


def test_tensor_lr_is_updated_in_place():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([param], lr=torch.tensor(0.01))
    lr_tensor = optimizer.param_groups[0]["lr"]
    bridge = S.Scheduler(optimizer, S.ExponentialDecay(0.01, 0.5))
    bridge.step()
    assert optimizer.param_groups[0]["lr"] is lr_tensor
    assert lr_tensor.item() == pytest.approx(0.005)


def _train(steps, *, resume_at=None):
    """SGD with 1cycle momentum on a float64 regression; optionally checkpoint
    at ``resume_at`` and continue in freshly built objects."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)

    def build():
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 1).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.0)
        schedule = S.warmup(S.OneCycle(max_lr=0.2, total_steps=40), warmup_steps=5)
        return model, optimizer, S.Scheduler(optimizer, schedule)

    model, optimizer, bridge = build()
    lrs = []
    for t in range(steps):
        if t == resume_at:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": bridge.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer)
            model, optimizer, bridge = build()  # a fresh process, in effect
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            bridge.load_state_dict(saved["scheduler"])
        lrs.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]))
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        bridge.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), lrs


@pytest.mark.parametrize("resume_at", [3, 5, 23, 44])
def test_resumed_run_continues_exactly(resume_at):
    straight, straight_lrs = _train(45)
    resumed, resumed_lrs = _train(45, resume_at=resume_at)
    assert resumed_lrs == straight_lrs
    assert torch.equal(resumed, straight)
    assert len({lr for lr, _ in straight_lrs}) > 40  # the schedule really moved


def _sgd_classes():
    import optimlab.optim
    return {"torch": torch.optim.SGD, "optimlab": optimlab.optim.SGD}


@pytest.mark.parametrize("library", ["torch", "optimlab"])
def test_the_optimizer_uses_the_lr_the_bridge_wrote(library):
    # Plain SGD: θ_{t+1} − θ_t = −η_t · g_t (up to rounding), so the update reveals the lr used.
    param = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = _sgd_classes()[library]([param], lr=123.0)
    schedule = S.warmup_cosine(0.5, total_steps=30, warmup_steps=5, min_lr=0.01)
    bridge = S.Scheduler(optimizer, schedule)
    gen = torch.Generator().manual_seed(0)
    for t in range(40):
        before = param.detach().clone()
        param.grad = torch.randn(4, generator=gen, dtype=torch.float64)
        optimizer.step()
        torch.testing.assert_close(param.detach() - before, -schedule(t) * param.grad, rtol=1e-12, atol=1e-14)
        bridge.step()


def test_cycles_beta1_of_an_optimlab_adam():
    import optimlab.optim
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = optimlab.optim.Adam([param], lr=1.0, betas=(0.9, 0.99))
    schedule = S.OneCycle(max_lr=0.01, total_steps=20)
    bridge = S.Scheduler(optimizer, schedule)
    for t in range(20):
        assert optimizer.param_groups[0]["betas"] == (schedule.momentum(t), 0.99)
        param.grad = torch.ones(2)
        optimizer.step()
        bridge.step()
