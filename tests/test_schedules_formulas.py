"""Schedules without a torch counterpart, against the plain formulas in
tests/reference/schedules_ref.py; composition; and bad input."""

import importlib.util
import math
from pathlib import Path

import pytest

from optimlab import schedules as S

_spec = importlib.util.spec_from_file_location(
    "schedules_ref", Path(__file__).parent / "reference" / "schedules_ref.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

TOL = 1e-12

# (schedule, reference formula of t, steps)
CLOSED_FORMS = {
    "power-c1": (S.PowerDecay(0.1, decay_steps=20), lambda t: ref.power(t, 0.1, 20, 1.0), 500),
    "power-c0.5": (S.PowerDecay(0.3, decay_steps=7.5, power=0.5), lambda t: ref.power(t, 0.3, 7.5, 0.5), 500),
    "exponential": (S.ExponentialDecay(0.1, 0.1, decay_steps=30),
                    lambda t: ref.exponential(t, 0.1, 0.1, 30), 200),
    "exponential-staircase": (S.ExponentialDecay(0.1, 0.5, decay_steps=30, staircase=True),
                              lambda t: ref.exponential(t, 0.1, 0.5, 30, staircase=True), 200),
    "step-decay-divide-by-10": (S.step_decay(0.1, step_size=10, gamma=0.1),
                                lambda t: ref.step_decay(t, 0.1, 10, 10.0), 50),
    "piecewise": (S.PiecewiseConstant([5, 12, 30], [0.1, 0.05, 0.2, 0.001]),
                  lambda t: ref.piecewise_constant(t, [5, 12, 30], [0.1, 0.05, 0.2, 0.001]), 40),
    "polynomial-end-lr": (S.Polynomial(0.1, decay_steps=50, power=3.0, end_lr=0.01),
                          lambda t: ref.polynomial(t, 0.1, 50, 3.0, 0.01), 80),
    "linear-warmup-from-0": (S.Linear(0.0, 0.1, steps=10), lambda t: ref.linear(t, 0.0, 0.1, 10), 20),
    "cosine-restarts-non-integer-walk": (S.CosineWarmRestarts(1.0, period=4, period_mult=3, min_lr=0.1),
                                         lambda t: ref.cosine_restarts(t, 1.0, 4, 3, 0.1), 600),
    "warmup-cosine-nanogpt": (S.warmup_cosine(0.1, total_steps=100, warmup_steps=10, min_lr=0.01),
                              lambda t: ref.nanogpt_lr(t, 0.1, 10, 100, 0.01), 150),
    "cosine-no-warmup": (S.warmup_cosine(0.1, total_steps=100, min_lr=0.01),
                         lambda t: ref.nanogpt_lr(t, 0.1, 0, 100, 0.01), 150),
    "warmup-then-power": (S.warmup(S.PowerDecay(0.1, 10), warmup_steps=5, start_lr=0.01),
                          lambda t: ref.linear(t, 0.01, 0.1, 5) if t < 5 else ref.power(t - 5, 0.1, 10, 1.0), 60),
}


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_matches_closed_form(name):
    schedule, formula, steps = CLOSED_FORMS[name]
    values = [schedule(t) for t in range(steps)]
    expected = [formula(t) for t in range(steps)]
    assert max(abs(a - b) for a, b in zip(values, expected)) <= TOL
    assert max(values) - min(values) > 1e-3  # not a flat line


def test_power_schedule_halves_after_s_steps_and_drops_fast_then_slowly():
    s = S.PowerDecay(1.0, decay_steps=100)
    assert s(100) == pytest.approx(0.5)
    assert s(0) - s(100) > s(100) - s(200)


def test_cosine_restarts_jump_back_up_at_each_restart():
    s = S.CosineWarmRestarts(0.1, period=10, period_mult=2)
    restarts = [10, 30, 70]  # 10, then 10 + 20, then + 40
    for r in restarts:
        assert s(r) == 0.1 and s(r - 1) < 0.01
        assert s.position(r) == (0, 10 * 2 ** (restarts.index(r) + 1))


def test_sequential_restarts_each_schedule_at_its_boundary():
    s = S.Sequential([S.Constant(0.1), S.ExponentialDecay(0.05, 0.5), S.Constant(0.001)], [3, 6])
    assert [s(t) for t in range(8)] == [0.1, 0.1, 0.1, 0.05, 0.025, 0.0125, 0.001, 0.001]
    assert s.length is None


def test_sequence_ending_in_onecycle_is_finite_and_forwards_momentum():
    cycle = S.OneCycle(max_lr=0.1, total_steps=20)
    s = S.Sequential([S.Constant(0.001), cycle], [5])
    assert s.length == 25 and s.cycles_momentum
    assert s.momentum(2) is None  # the constant phase leaves momentum alone
    assert s(5) == cycle(0) and s.momentum(24) == cycle.momentum(19)
    with pytest.raises(ValueError, match="step=25"):
        s(25)


def test_onecycle_phases_follow_the_lecture():
    # Lecture: rise linearly from η0 to η1 about halfway, back down to η0, then a rapid final drop.
    s = S.OneCycle(max_lr=1.0, total_steps=100, pct_start=0.45, anneal="linear", three_phase=True)
    lr = [s(t) for t in range(100)]
    peak = max(range(100), key=lr.__getitem__)
    assert peak == 44 and lr[peak] == 1.0
    assert lr[88] == pytest.approx(lr[0])  # back to η0 = max_lr / 25 at 2·p·T − 2
    assert lr[99] == pytest.approx(1.0 / 25 / 1e4)
    assert all(a < b for a, b in zip(lr[:44], lr[1:45]))
    assert all(a > b for a, b in zip(lr[44:99], lr[45:100]))
    assert s.momentum(0) == 0.95 and s.momentum(44) == 0.85 and s.momentum(99) == 0.95


@pytest.mark.parametrize("call, argument", [
    (lambda: S.step_decay(0.1, step_size=-3), "step_size=-3"),  # its own names, not ExponentialDecay's
    (lambda: S.step_decay(0.1, step_size=10, gamma=0), "gamma=0"),
    (lambda: S.ExponentialDecay(-0.1, 0.5), "base_lr=-0.1"),
    (lambda: S.PowerDecay(0.1, decay_steps=0), "decay_steps=0"),
    (lambda: S.PowerDecay(0.1, decay_steps=10, power=-1), "power=-1"),
    (lambda: S.CosineAnnealing(0.1, period=-5), "period=-5"),
    (lambda: S.CosineAnnealing(0.1, period=10, min_lr=float("nan")), "min_lr=nan"),
    (lambda: S.CosineWarmRestarts(0.1, period=0), "period=0"),
    (lambda: S.CosineWarmRestarts(0.1, period=5, period_mult=0), "period_mult=0"),
    (lambda: S.Polynomial(0.1, decay_steps=0), "decay_steps=0"),
    (lambda: S.Linear(0.0, 0.1, steps=0), "steps=0"),
    (lambda: S.PiecewiseConstant([10, 5], [0.1, 0.01, 0.001]), r"boundaries=\[10, 5\]"),
    (lambda: S.PiecewiseConstant([5, 5], [0.1, 0.01, 0.001]), r"boundaries=\[5, 5\]"),
    (lambda: S.PiecewiseConstant([5, 10], [0.1, 0.01]), r"values=\[0.1, 0.01\]"),
    (lambda: S.multistep_decay(0.1, [30, 20]), r"milestones=\[30, 20\]"),
    (lambda: S.warmup_cosine(0.1, total_steps=100, warmup_steps=150), "warmup_steps=150"),
    (lambda: S.warmup_cosine(0.1, total_steps=100, warmup_steps=100), "warmup_steps=100"),
    (lambda: S.warmup_cosine(0.1, total_steps=100, min_lr=0.5), "min_lr=0.5"),
    (lambda: S.warmup(S.Constant(0.1), warmup_steps=-1), "warmup_steps=-1"),
    (lambda: S.Sequential([S.Constant(0.1), S.Constant(0.2)], [0]), r"boundaries\[0\]=0"),
    (lambda: S.Sequential([S.Constant(0.1), S.Constant(0.2)], [5, 9]), r"boundaries=\[5, 9\]"),
    (lambda: S.Sequential([S.OneCycle(0.1, total_steps=10), S.Constant(0.2)], [20]), r"boundaries=\[20\]"),
    (lambda: S.OneCycle(0.1, total_steps=0), "total_steps=0"),
    (lambda: S.OneCycle(0.1, total_steps=100, pct_start=1.5), "pct_start=1.5"),
    (lambda: S.OneCycle(0.1, total_steps=3, pct_start=0.3), "pct_start=0.3"),
    (lambda: S.OneCycle(0.1, total_steps=100, anneal="cubic"), "anneal='cubic'"),
    (lambda: S.OneCycle(0.1, total_steps=100, base_momentum=0.9, max_momentum=0.8), "max_momentum=0.8"),
    (lambda: S.Constant(0.1)(-1), "step=-1"),
    (lambda: S.Constant(0.1)(2.5), "step=2.5"),
    (lambda: S.OneCycle(0.1, total_steps=50)(50), "step=50"),
    (lambda: S.OneCycle(0.1, total_steps=50).momentum(60), "step=60"),
])
def test_bad_input_raises_value_error_naming_argument_and_value(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_schedules_are_pure_and_hashable_values():
    a = S.OneCycle(max_lr=0.1, total_steps=100)
    b = S.OneCycle(max_lr=0.1, total_steps=100)
    assert a == b and hash(a) == hash(b)
    assert [a(t) for t in (50, 3, 50)] == [b(50), b(3), b(50)]  # order of calls does not matter
    with pytest.raises(AttributeError):
        a.max_lr = 1.0
    assert math.isclose(a(0), 0.1 / 25)
