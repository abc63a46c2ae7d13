"""The benchmark's measures on small hand-made inputs (values worked out in the comments), and
against brute force: tunability against every k-subset, profiles against a direct loop."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from optimlab.benchmark import measures as M

NAN = math.nan


def rows(values, key="val_acc", steps=100, time_s=2.0):
    return [{"epoch": i + 1, "step": steps * (i + 1), key: v, "time_s": time_s} for i, v in enumerate(values)]


# --------------------------------------------------------------------------- final_value, steps_to_target
def test_final_value_is_the_last_evaluation():
    assert M.final_value(rows([0.5, 0.7, 0.6]), "val_acc") == 0.6  # the last, not the best
    assert M.final_value(rows([0.5, NAN]), "val_acc") is None  # diverged at the end: no result
    assert M.final_value(rows([0.5, None]), "val_acc") is None
    assert M.final_value([], "val_acc") is None
    assert M.final_value(rows([1.0, 0.5], key="val_loss"), "val_acc") is None
    # a trailing row without the key (e.g. a non-evaluation row) is skipped
    assert M.final_value(rows([0.5, 0.7]) + [{"epoch": 3, "step": 300}], "val_acc") == 0.7


def test_steps_to_target():
    r = rows([0.5, 0.8, 0.9, 0.95], time_s=2.0)
    # max: first value >= 0.9 is the third row: step 300, 3 × 2 s
    assert M.steps_to_target(r, "val_acc", 0.9, "max") == (300, 6.0)
    assert M.steps_to_target(r, "val_acc", 0.8, "max") == (200, 4.0)  # reaching exactly counts
    assert M.steps_to_target(r, "val_acc", 0.99, "max") == (None, None)
    loss = rows([2.0, NAN, 0.9, 0.5], key="val_loss")
    loss[1]["time_s"] = None  # a missing time counts 0
    assert M.steps_to_target(loss, "val_loss", 1.0, "min") == (300, 4.0)  # NaN never reaches
    assert M.steps_to_target([], "val_loss", 1.0, "min") == (None, None)
    with pytest.raises(ValueError, match="mode"):
        M.steps_to_target(r, "val_acc", 0.9, "maximize")


# --------------------------------------------------------------------------- select_best
def test_select_best_by_mode_with_ties_and_failures():
    trials = [{"trial": 0, "val": 0.9}, {"trial": 1, "val": NAN}, {"trial": 2, "val": 0.95},
              {"trial": 3, "val": 0.95}, {"trial": 4, "val": None}, {"trial": 5, "val": math.inf}]
    assert M.select_best(trials, "max")["trial"] == 2  # 0.95 twice: lowest trial number; inf is a failure
    assert M.select_best(trials, "min")["trial"] == 0  # 0.9 is the smallest finite
    assert M.select_best([{"trial": 7, "val": None}, {"trial": 3, "val": NAN}], "min")["trial"] == 3  # all failed
    tie = [{"trial": 5, "val": 1.0, "params": {"lr": 0.1}}, {"trial": 2, "val": 1.0, "params": {"lr": 0.2}}]
    best = M.select_best(tie, "min")
    assert best == {"trial": 2, "val": 1.0, "params": {"lr": 0.2}} and isinstance(best, dict)
    with pytest.raises(ValueError, match="at least one"):
        M.select_best([], "max")
    with pytest.raises(ValueError, match="mode"):
        M.select_best(trials, "best")


# --------------------------------------------------------------------------- mean_ci
def test_mean_ci_student_t():
    # values 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.302652729749464, half = 4.3027 / sqrt(3) = 2.4841
    mean, half, n = M.mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-12)
    # 90 %: t_{0.95, 2} = 2.919985580355516
    assert M.mean_ci([1, 2, 3], level=0.9).half_width == pytest.approx(2.919985580355516 / math.sqrt(3), rel=1e-12)
    # None / NaN left out and counted: 2 used, mean 3, s = sqrt(2), t_{0.975, 1} = 12.706204736174698
    ci = M.mean_ci([2.0, None, NAN, 4.0])
    assert ci.n == 2 and ci.mean == 3.0 and ci.half_width == pytest.approx(12.706204736174698, rel=1e-12)
    assert M.mean_ci([0.7]) == (0.7, None, 1)
    assert M.mean_ci([None, NAN]) == (None, None, 0)
    assert M.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.0, 3)
    with pytest.raises(ValueError, match="level"):
        M.mean_ci([1, 2], level=95)


# --------------------------------------------------------------------------- target
def test_target_better_median_and_its_source():
    # medians: adam 0.92 (of 0.90, 0.92, 0.95), momentum 0.93 (of 0.91, 0.93, 0.99)
    base = {"adam": [0.95, 0.90, 0.92], "momentum": [0.91, 0.99, 0.93]}
    assert M.target(base, "max") == (0.93, "momentum")
    assert M.target(base, "min") == (0.92, "adam")
    # a failed seed counts as worst: adam's median of (0.99, fail, 0.5) = 0.5 (fail is -inf)
    assert M.target({"adam": [0.99, None, 0.5], "momentum": [0.6]}, "max") == (0.6, "momentum")
    # failed on half or more: no finite median, that baseline gives no target
    assert M.target({"adam": [0.99, NAN], "momentum": [0.3, 0.5]}, "max") == (0.4, "momentum")
    assert M.target({"adam": [0.5], "momentum": [0.5]}, "max") == (0.5, "adam")  # tie: first given
    assert M.target({"sgd": [1.0, 2.0]}, "min") == (1.5, "sgd")  # even count: mean of the middle two
    with pytest.raises(ValueError, match="no baseline"):
        M.target({"adam": [None], "momentum": []}, "max")
    with pytest.raises(ValueError, match="no baseline"):
        M.target({}, "max")


def test_median_cost_and_metric_cost():
    assert M.median_cost([300, 100, 200]) == 200
    assert M.median_cost([100, None, 200]) == 200  # not reached = inf: sorted 100, 200, inf
    assert M.median_cost([100, None, None]) == math.inf  # most seeds did not reach
    assert M.median_cost([100, None]) == math.inf  # (100 + inf) / 2
    assert M.median_cost([]) == math.inf
    assert M.metric_cost(0.9, "max") == pytest.approx(0.1) and M.metric_cost(0.3, "min") == 0.3
    assert M.metric_cost(None, "max") is None and M.metric_cost(NAN, "min") is None


# --------------------------------------------------------------------------- tunability
def brute_expected_best(values, k, mode, penalty):
    subsets = list(itertools.combinations(values, k))
    pick = max if mode == "max" else min
    return statistics.fmean(pick(penalty if v is None else v for v in s) for s in subsets)


def test_expected_max_k_by_hand():
    # values 1, 2, 3, 4; k = 2: the six pairs' maxima 2, 3, 4, 3, 4, 4 -> 20 / 6
    assert M.expected_max_k([3, 1, 4, 2], 2, "max") == pytest.approx(20 / 6)
    # minima of the pairs: 1, 1, 1, 2, 2, 3 -> 10 / 6
    assert M.expected_max_k([3, 1, 4, 2], 2, "min") == pytest.approx(10 / 6)
    assert M.expected_max_k([3, 1, 4, 2], 1, "max") == pytest.approx(2.5)  # k = 1: the mean
    assert M.expected_max_k([3, 1, 4, 2], 4, "max") == 4  # k = n: the best
    assert M.tunability_curve([3, 1, 4, 2], "max") == pytest.approx([2.5, 20 / 6, 3.75, 4.0])
    assert M.tunability_curve([], "max") == []


def test_failed_trials_count_as_the_worst_finite_value():
    # 0.9, fail, 0.5: the failure counts as 0.5 -> pairs' maxima 0.9, 0.9, 0.5 -> 2.3 / 3
    assert M.expected_max_k([0.9, None, 0.5], 2, "max") == pytest.approx(2.3 / 3)
    # min mode: the failure counts as the worst finite loss, 2.0 -> k = 1: (1 + 2 + 2) / 3
    assert M.expected_max_k([1.0, NAN, 2.0], 1, "min") == pytest.approx(5 / 3)
    # a stated penalty instead: 0.0 -> k = 1: (0.9 + 0 + 0.5) / 3
    assert M.expected_max_k([0.9, None, 0.5], 1, "max", penalty=0.0) == pytest.approx(1.4 / 3)
    assert M.expected_max_k([None, NAN], 1, "max") is None  # all failed, no penalty: no value
    assert M.tunability_curve([None, NAN], "max") == [None, None]
    assert M.expected_max_k([None, NAN], 2, "max", penalty=0.1) == pytest.approx(0.1)
    for k in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            M.expected_max_k([1, 2, 3], k, "max")


@pytest.mark.parametrize("seed", range(20))
def test_expected_best_matches_enumeration_of_subsets(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    values = [rng.choice([0.1, 0.5, 0.5, rng.random(), rng.random(), None]) for _ in range(n)]  # ties, failures
    mode = rng.choice(M.MODES)
    finite = [v for v in values if v is not None]
    if not finite:
        values[0] = 0.3
        finite = [0.3]
    penalty = min(finite) if mode == "max" else max(finite)
    for k in range(1, n + 1):
        assert M.expected_max_k(values, k, mode) == pytest.approx(brute_expected_best(values, k, mode, penalty),
                                                                  rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------- lr sensitivity
def test_lr_sensitivity_accuracy():
    # best 0.95 at lr 0.01; within 0.01 absolute: 0.945 (lr 0.1) and 0.95 -> span 0.01..0.1: 1 decade
    s = M.lr_sensitivity([(0.1, 0.945), (0.001, 0.80), (0.01, 0.95), (1.0, None), (0.5, NAN)], "max")
    assert s.points == [(0.001, 0.80), (0.01, 0.95), (0.1, 0.945)] and s.failed == 2
    assert (s.best_lr, s.best, s.low, s.high, s.near) == (0.01, 0.95, 0.01, 0.1, 2)
    assert s.decades == pytest.approx(1.0)
    assert M.lr_sensitivity([(0.1, 0.945), (0.01, 0.95)], "max", tol=0.001).decades == 0.0  # only the best


def test_lr_sensitivity_loss_is_relative():
    # best 1.0 at lr 1e-3; 5 % relative: <= 1.05 -> lr 1e-4 (1.04) and 1e-3 -> 1 decade; 1.2 is out
    s = M.lr_sensitivity([(1e-4, 1.04), (1e-3, 1.0), (1e-2, 1.2)], "min")
    assert (s.best_lr, s.low, s.high, s.near) == (1e-3, 1e-4, 1e-3, 2) and s.decades == pytest.approx(1.0)
    s = M.lr_sensitivity([(1e-4, 1.04), (1e-3, 1.0), (1e-2, 1.2)], "min", tol=0.25)  # <= 1.25: 2 decades
    assert s.decades == pytest.approx(2.0)
    # ties in the best: the lowest lr is reported
    assert M.lr_sensitivity([(0.1, 1.0), (0.01, 1.0)], "min").best_lr == 0.01


def test_lr_sensitivity_edge_cases():
    s = M.lr_sensitivity([(0.1, None)], "max")
    assert s == M.LRSensitivity([], 1, None, None, None, None, None, 0)
    assert M.lr_sensitivity([], "min").near == 0
    for lr in (0.0, -1.0, NAN, None):
        with pytest.raises(ValueError, match="learning rate"):
            M.lr_sensitivity([(lr, 0.5)], "max")
    with pytest.raises(ValueError, match="tol"):
        M.lr_sensitivity([(0.1, 0.5)], "max", tol=-1)


# --------------------------------------------------------------------------- performance profiles
def test_performance_ratios_and_profile_by_hand():
    costs = {"a": {"p1": 100, "p2": 300, "p3": None},
             "b": {"p1": 200, "p2": 100, "p3": 50},
             "c": {"p1": math.inf, "p2": 150}}  # c lacks p3: a failure
    # p1: best 100 -> a 1, b 2, c inf; p2: best 100 -> a 3, b 1, c 1.5; p3: best 50 -> b 1, a and c inf
    assert M.performance_ratios(costs) == {"a": {"p1": 1.0, "p2": 3.0, "p3": math.inf},
                                           "b": {"p1": 2.0, "p2": 1.0, "p3": 1.0},
                                           "c": {"p1": math.inf, "p2": 1.5, "p3": math.inf}}
    prof = M.performance_profile(costs, [1.0, 1.5, 2.0, 3.0, 100.0])
    assert prof == {"a": [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3],
                    "b": [2 / 3, 2 / 3, 1.0, 1.0, 1.0],
                    "c": [0.0, 1 / 3, 1 / 3, 1 / 3, 1 / 3]}


def test_performance_profile_edge_cases():
    # a problem nobody solved stays in the denominator; zero best cost: only zeros get ratio 1
    costs = {"a": {"p": 0.0, "q": None}, "b": {"p": 0.1, "q": NAN}}
    assert M.performance_ratios(costs) == {"a": {"p": 1.0, "q": math.inf}, "b": {"p": math.inf, "q": math.inf}}
    assert M.performance_profile(costs, [1.0, 10.0]) == {"a": [0.5, 0.5], "b": [0.0, 0.0]}
    assert M.performance_profile({"a": {}}, [1.0]) == {"a": [0.0]}
    with pytest.raises(ValueError, match=">= 0"):
        M.performance_ratios({"a": {"p": -1.0}})


@pytest.mark.parametrize("seed", range(10))
def test_performance_profile_matches_a_direct_loop(seed):
    rng = random.Random(seed)
    solvers, problems = ["s0", "s1", "s2"], [f"p{i}" for i in range(rng.randint(1, 6))]
    costs = {s: {p: rng.choice([None, rng.randint(1, 5) * 10.0]) for p in problems} for s in solvers}
    taus = M.profile_taus(costs)
    got = M.performance_profile(costs, taus)
    for s in solvers:
        for i, tau in enumerate(taus):
            count = 0
            for p in problems:
                finite = [costs[x][p] for x in solvers if costs[x][p] is not None]
                if costs[s][p] is not None and costs[s][p] / min(finite) <= tau:
                    count += 1
            assert got[s][i] == count / len(problems)


def test_profile_taus_hold_every_ratio():
    costs = {"a": {"p1": 100, "p2": 300}, "b": {"p1": 250, "p2": 100}}  # ratios 1, 3, 2.5, 1
    taus = M.profile_taus(costs, points=5, margin=1.1)
    assert taus[0] == 1.0 and 2.5 in taus and 3.0 in taus and taus == sorted(set(taus))
    assert taus[-1] == pytest.approx(3.3) and len(taus) == 5 + 2  # 1 and 3.3 are grid points already
    assert M.profile_taus({"a": {"p": 1.0}, "b": {"p": 1.0}}, margin=1.0) == [1.0]
    assert M.profile_taus({"a": {"p": None}})[0] == 1.0  # nothing finite: 1 up to the margin
    with pytest.raises(ValueError):
        M.profile_taus(costs, points=1)
