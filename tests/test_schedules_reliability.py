"""Schedules at the edges of the float range, their state_dicts, and bound relations.

The oracle for the decays is Python's ``decimal`` at 60 digits, rounded to a
float once at the end: it has no intermediate overflow or underflow.
"""

import decimal
import math
import sys

import pytest
import torch
from torch.optim import lr_scheduler as tls

from optimlab import schedules as S

D = decimal.Decimal
CTX = decimal.Context(prec=60, Emax=10**6, Emin=-10**6)
REL = 1e-12  # the log-space path loses a few ulps per unit of |log(value)|; far below this


def exact_exponential(base, rate, step, decay_steps, staircase=False):
    exponent = D(step // decay_steps) if staircase else CTX.divide(D(step), D(decay_steps))
    return float(CTX.multiply(D(base), CTX.power(D(rate), exponent)))


def exact_power(base, step, decay_steps, power):
    ratio = CTX.add(D(1), CTX.divide(D(step), D(decay_steps)))
    return float(CTX.divide(D(base), CTX.power(ratio, D(power))))


def same(value, exact):
    if exact == 0.0 or math.isinf(exact):
        return value == exact
    return math.isclose(value, exact, rel_tol=REL, abs_tol=0.0)


# (base_lr, decay_rate, decay_steps, step): rate**(t/s) leaves the float range, the rate does not
EXPONENTIAL_EDGES = [
    (1e-300, 10.0, 1, 600),          # 10**600 overflows; the rate is 1e300
    (1e-300, 10.0, 3, 1800),         # the same through a fractional exponent
    (1e-300, 1.5, 7, 12600),         # 1.5**1800 overflows; the rate is about 8e16
    (1e300, 0.1, 1, 400),            # 0.1**400 underflows to 0; the rate is 1e-100
    (1e300, 0.3, 4, 2410),           # 0.3**602.5 is subnormal (few digits left); the rate is about 1e-15
    (1e-10, 2.0, 1, 1100),           # 2**1100 overflows; the rate is about 1.4e321 > max: inf
    (1.0, 0.5, 1, 5000),             # truly below the smallest float: 0
    (0.1, 1.0001, 1, 10**7),         # rate just above 1, a very long run: inf, not OverflowError
    (0.0, 10.0, 1, 1000),            # a zero rate stays zero
]


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("base, rate, decay_steps, step", EXPONENTIAL_EDGES)
def test_exponential_decay_is_exact_where_the_power_alone_leaves_the_float_range(base, rate, decay_steps, step,
                                                                                  staircase):
    schedule = S.ExponentialDecay(base, rate, decay_steps=decay_steps, staircase=staircase)
    exact = exact_exponential(base, rate, step, decay_steps, staircase)
    value = schedule(step)
    assert same(value, exact), (value, exact)


def test_exponential_decay_is_unchanged_bit_for_bit_where_nothing_overflows():
    # the torch ExponentialLR / StepLR and Keras ExponentialDecay twin tests rely on these exact bits
    for base, rate, s in [(0.1, 0.1, 30), (1.0, 0.93, 1), (0.05, 0.5, 7), (0.3, 1.07, 5)]:
        for staircase in (False, True):
            schedule = S.ExponentialDecay(base, rate, decay_steps=s, staircase=staircase)
            for t in range(0, 400, 7):
                p = t // s if staircase else t / s
                assert schedule(t) == base * rate ** p
                assert same(schedule(t), exact_exponential(base, rate, t, s, staircase))


def test_growth_past_the_float_range_is_inf_and_the_smallest_rates_are_kept():
    grow = S.ExponentialDecay(1.0, 2.0)
    assert grow(1023) == 2.0 ** 1023 and grow(1024) == math.inf
    tiny = S.ExponentialDecay(sys.float_info.min, 2.0)
    assert tiny(1000) == sys.float_info.min * 2.0 ** 1000  # ≈ 2.4e-6: no overflow on the way
    assert S.ExponentialDecay(1e300, 1e-10, staircase=True, decay_steps=2)(80) == pytest.approx(1e-100, rel=REL)


def test_plotting_past_the_float_range_is_refused_before_anything_is_drawn(tmp_path):
    with pytest.raises(ValueError, match=r"from step 1028 \(lr=inf\).*steps=2000"):
        S.plot(S.ExponentialDecay(0.1, 2.0), tmp_path / "lr.png", steps=2000)
    assert list(tmp_path.iterdir()) == []


def test_growing_exponential_matches_torch_exponential_lr():
    """gamma > 1 is legitimate (torch and Keras accept it): ours equals torch's values."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.01)
    twin = tls.ExponentialLR(optimizer, gamma=1.05)
    ours = S.ExponentialDecay(0.01, 1.05)
    for t in range(300):
        assert math.isclose(optimizer.param_groups[0]["lr"], ours(t), rel_tol=1e-12)
        optimizer.step()
        twin.step()


@pytest.mark.parametrize("base, decay_steps, power, step", [
    (0.1, 1.0, 400.0, 10**6),          # (1e6)**400 overflows; the rate is 0 (below the float range)
    (1e300, 1.0, 60.0, 10**6),         # 1e360 overflows; the rate is 1e-60
    (1e300, 1e-300, 1.0, 10**9),       # t/s overflows to inf; the rate is about 1e-9
    (0.5, 20.0, 1.0, 10**12),          # inverse time decay, a very long run
    (0.1, 0.5, 1e3, 7),
])
def test_power_decay_is_exact_where_the_denominator_overflows(base, decay_steps, power, step):
    value = S.PowerDecay(base, decay_steps=decay_steps, power=power)(step)
    assert same(value, exact_power(base, step, decay_steps, power)), value


def test_polynomial_with_a_huge_power_stays_between_its_ends():
    s = S.Polynomial(0.1, decay_steps=100, power=1e6, end_lr=0.001)
    values = [s(t) for t in range(150)]
    assert values[0] == 0.1 and all(0.001 <= v <= 0.1 for v in values) and values[1] == pytest.approx(0.001)


def test_cosine_restarts_with_fast_growing_periods_stay_in_range():
    s = S.CosineWarmRestarts(0.1, period=3, period_mult=1000, min_lr=0.001)
    for step in (0, 2, 3, 3002, 3003, 10**12, 10**30):
        assert 0.001 <= s(step) <= 0.1


def test_multistep_decay_keeps_finite_values_and_refuses_overflow():
    s = S.multistep_decay(1e-300, [10, 20], gamma=1e200)
    assert s(25) == pytest.approx(1e100, rel=REL)
    with pytest.raises(ValueError, match=r"base_lr=0\.1.*gamma=1e\+200"):
        S.multistep_decay(0.1, [10, 20], gamma=1e200)


def test_onecycle_refuses_a_divisor_that_sends_the_cycle_to_infinity():
    with pytest.raises(ValueError, match=r"max_lr=1e\+300.*div_factor=1e-10"):
        S.OneCycle(1e300, total_steps=100, div_factor=1e-10)


# --------------------------------------------------------------------------- state_dicts
def bridge():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = S.Scheduler(optimizer, S.ExponentialDecay(0.1, 0.5))
    scheduler.step()
    scheduler.step()
    return optimizer, scheduler


@pytest.mark.parametrize("state, message", [
    ({}, r"missing \['position'\]"),
    ({"position": 1, "epoch": 3}, r"unexpected \['epoch'\]"),
    ({"last_epoch": 1}, r"missing \['position'\], unexpected \['last_epoch'\]"),
    ([("position", 1)], "got list"),
    ({"position": -1}, "position=-1"),
    ({"position": 1.5}, "position=1.5"),
])
def test_scheduler_load_state_dict_refuses_bad_states_and_changes_nothing(state, message):
    optimizer, scheduler = bridge()
    with pytest.raises(ValueError, match=message):
        scheduler.load_state_dict(state)
    assert scheduler.position == 2 and optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** 2


def test_scheduler_state_round_trips():
    optimizer, scheduler = bridge()
    scheduler.load_state_dict({"position": 5})
    assert optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** 5
    assert scheduler.state_dict() == {"position": 5}


def plateau():
    param = torch.nn.Parameter(torch.zeros(2))
    p = S.ReduceOnPlateau(torch.optim.SGD([param], lr=1.0), patience=1, cooldown=2)
    for metric in (1.0, 0.5, 0.6):
        p.step(metric)
    return p


GOOD_PLATEAU = {"best": 0.25, "num_bad_steps": 1, "cooldown_counter": 0, "steps": 9}


@pytest.mark.parametrize("change, message", [
    ({"best": None}, r"missing \['best'\]"),
    ({"patience": 3}, r"unexpected \['patience'\]"),
    ({"best": float("nan")}, "best=nan"),
    ({"best": "low"}, "best='low'"),
    ({"steps": -2}, "steps=-2"),
    ({"cooldown_counter": 0.5}, "cooldown_counter=0.5"),
])
def test_plateau_load_state_dict_refuses_bad_states_and_changes_nothing(change, message):
    p = plateau()
    before = p.state_dict()
    state = {**GOOD_PLATEAU, **change}
    if change.get("best", 0) is None:
        del state["best"]
    with pytest.raises(ValueError, match=message):
        p.load_state_dict(state)
    assert p.state_dict() == before  # not half loaded


def test_plateau_state_round_trips_including_an_infinite_best():
    p = plateau()
    p.load_state_dict(GOOD_PLATEAU)
    assert p.state_dict() == GOOD_PLATEAU
    p.load_state_dict({**GOOD_PLATEAU, "best": math.inf})
    assert p.best == math.inf


# --------------------------------------------------------------------------- bound relations
@pytest.mark.parametrize("call", [
    lambda: S.CosineAnnealing(0.1, period=10, min_lr=0.5),
    lambda: S.CosineWarmRestarts(0.1, period=10, min_lr=0.5),
    lambda: S.warmup_cosine(0.1, total_steps=100, warmup_steps=10, min_lr=0.5),
])
def test_a_floor_above_the_peak_is_refused_the_same_way_everywhere(call):
    with pytest.raises(ValueError, match=r"min_lr must be <= base_lr, got min_lr=0\.5, base_lr=0\.1"):
        call()


def test_onecycle_momentum_bounds_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"base_momentum must be <= max_momentum, got base_momentum=0\.9, "
                                         r"max_momentum=0\.8"):
        S.OneCycle(0.1, total_steps=100, base_momentum=0.9, max_momentum=0.8)


def test_increasing_schedules_and_equal_bounds_stay_legitimate():
    assert S.Linear(0.0, 0.1, steps=10)(10) == 0.1                       # linear warm-up
    assert S.warmup(S.Constant(0.1), warmup_steps=5, start_lr=0.0)(5) == 0.1
    rising = S.Polynomial(0.001, decay_steps=10, end_lr=0.1)                # Keras's PolynomialDecay allows it
    assert rising(0) == pytest.approx(0.001) and rising(10) == pytest.approx(0.1)
    assert S.step_decay(0.1, step_size=2, gamma=2.0)(4) == pytest.approx(0.4)  # torch's StepLR allows gamma > 1
    assert S.CosineAnnealing(0.1, period=10, min_lr=0.1)(5) == pytest.approx(0.1)  # flat, not inverted
    assert S.warmup_cosine(0.1, total_steps=20, warmup_steps=5, min_lr=0.1)(15) == pytest.approx(0.1)
    assert S.OneCycle(0.1, total_steps=100, base_momentum=0.9, max_momentum=0.9).momentum(50) == 0.9
