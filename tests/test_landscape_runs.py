"""Trajectories: what is recorded is what the optimizer did (checked against plain loops and
torch.optim), runs are reproducible, any kind of optimizer description works, the table has
its columns, and bad input is reported rather than crashing."""

import functools
import math

import numpy as np
import pytest
import torch

import optimlab.optim as oo
from optimlab import landscape as L
from optimlab import schedules as S
from optimlab.landscape import Spec
from optimlab.landscape.trajectory import _score


def rosenbrock_grad(x, y):
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


def test_recorded_path_is_plain_gradient_descent():
    lr, steps = 1e-3, 50
    t = L.run("rosenbrock", Spec("sgd", lr=lr), steps=steps)
    p = np.array(L.get("rosenbrock").start, dtype=np.float64)
    expected = [p.copy()]
    for _ in range(steps):
        p = p - lr * rosenbrock_grad(*p)
        expected.append(p.copy())
    assert t.points.shape == (steps + 1, 2) and t.losses.shape == (steps + 1,)
    np.testing.assert_allclose(t.points, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t.grads, [rosenbrock_grad(*q) for q in expected], rtol=1e-10, atol=1e-12)
    f = L.get("rosenbrock")
    np.testing.assert_allclose(t.losses, [f.value(q) for q in expected], rtol=1e-12)
    assert t.lr == lr and t.lr_from == "given" and t.status == "not converged"


def test_optimlab_and_torch_optimizers_trace_the_same_path():
    torch_adam = L.run("beale", Spec(torch.optim.Adam, lr=0.05), steps=100)
    ours = L.run("beale", Spec("adam", lr=0.05), steps=100)
    by_name = L.run("beale", Spec("torch.Adam", lr=0.05), steps=100)
    np.testing.assert_allclose(ours.points, torch_adam.points, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(by_name.points, torch_adam.points)
    heavy = L.run("ravine", Spec("momentum", lr=0.02), steps=80)
    factory = L.run("ravine", Spec(lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9)), steps=80)
    np.testing.assert_allclose(heavy.points, factory.points, rtol=1e-12, atol=1e-14)
    assert factory.label == "factory" and factory.lr_from == "own" and factory.lr is None


def test_muon_walks_the_plane_as_a_one_by_two_matrix():
    """Muon takes matrices: its point is a 1×2 matrix, and its orthogonalised step is then the
    normalised (momentum) direction, so each step moves about lr whatever the gradient's size."""
    ours = L.run("ravine", Spec("muon", lr=0.1), steps=60)
    theirs = L.run("ravine", Spec("torch.Muon", lr=0.1), steps=60)
    np.testing.assert_allclose(ours.points, theirs.points, rtol=1e-12, atol=1e-14)
    assert ours.points.shape == (61, 2) and ours.losses[-1] < 0.1 * ours.losses[0]
    lengths = ours.step_lengths()
    assert lengths.max() < 0.2 and np.median(lengths) > 0.01  # bounded, not gradient-sized, steps


def test_an_instance_runs_as_a_copy_and_stays_untouched():
    point = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.RMSprop([point], lr=0.05)
    a = L.run("himmelblau", opt, steps=40)
    b = L.run("himmelblau", opt, steps=40)
    np.testing.assert_array_equal(a.points, b.points)
    assert point.tolist() == [0.0, 0.0] and not opt.state, "the original is untouched"
    assert a.label == "RMSprop" and a.lr == 0.05 and a.lr_from == "own"
    np.testing.assert_allclose(a.points, L.run("himmelblau", Spec("rmsprop", lr=0.05), steps=40).points,
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="exactly one floating-point tensor of 2 elements"):
        L.run("bowl", torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1))
    with pytest.raises(ValueError, match="carries its own settings"):
        L.run("bowl", Spec(opt, lr=0.1))


def test_runs_are_reproducible_and_independent_of_their_company():
    names = ["sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"]
    first = L.compare("rosenbrock", names, steps=120, noise=0.5, seed=3)
    again = L.compare("rosenbrock", names, steps=120, noise=0.5, seed=3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.losses, b.losses)
    alone = L.run("rosenbrock", "adam", steps=120, noise=0.5, seed=3)
    np.testing.assert_allclose(alone.points, first["adam"].points, rtol=1e-12, atol=1e-14)
    other_seed = L.run("rosenbrock", "adam", steps=120, noise=0.5, seed=4)
    assert not np.allclose(other_seed.points, alone.points)


def test_noise_is_per_spec_and_the_same_draws_for_everyone():
    r = L.compare("bowl", [Spec("sgd", label="a", noise=0.3), Spec("sgd", label="b", noise=0.3),
                           Spec("sgd", label="clean")], steps=30, seed=1)
    np.testing.assert_array_equal(r["a"].points, r["b"].points)
    assert r["a"].noise == 0.3 and r["clean"].noise == 0.0
    assert not np.allclose(r["a"].points, r["clean"].points)
    # the recorded gradient is the exact one, noise or not
    f = L.get("bowl")
    np.testing.assert_allclose(r["a"].grads, [f.gradient(p) for p in r["a"].points], rtol=1e-12)


def test_schedules_through_the_bridge_and_torch_schedulers():
    lr, steps = 0.1, 20
    cosine = S.CosineAnnealing(lr, period=steps)
    t = L.run("bowl", Spec("sgd", schedule=cosine), steps=steps)
    assert t.lr_from == "schedule" and t.lr == lr
    x = np.array(L.get("bowl").start)
    for k in range(steps):          # on x² + y²: x ← x − η_k · 2x
        x = x - cosine(k) * 2 * x
    np.testing.assert_allclose(t.points[-1], x, rtol=1e-12)

    relative = L.run("bowl", Spec("sgd", lr=lr, schedule=L.schedule_from_lr(
        lambda rate: S.CosineAnnealing(rate, period=steps))), steps=steps)
    np.testing.assert_allclose(relative.points, t.points, rtol=1e-12)

    halving = Spec("sgd", lr=lr, schedule=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=5, gamma=0.5))
    s = L.run("bowl", halving, steps=10)
    x = np.array(L.get("bowl").start)
    for k in range(10):
        x = x - lr * 0.5 ** (k // 5) * 2 * x
    np.testing.assert_allclose(s.points[-1], x, rtol=1e-12)


def test_the_table_has_one_row_per_optimizer_and_the_issue_s_columns():
    r = L.compare("ravine", ["sgd", "momentum", Spec("adam", lr=0.3)], steps=250)
    assert L.COLUMNS == ("optimizer", "lr", "lr from", "final loss", "distance to min", "steps to tol",
                         "diverged", "status")
    rows = r.rows()
    assert [row["optimizer"] for row in rows] == ["sgd", "momentum", "adam"]
    assert all(set(row) == set(L.COLUMNS) for row in rows)
    assert rows[0]["lr from"] == "default" and rows[2]["lr from"] == "given" and rows[2]["lr"] == 0.3
    for row, t in zip(rows, r):
        assert row["final loss"] == t.losses[-1]
        assert row["distance to min"] == pytest.approx(math.hypot(*t.points[-1]))
        assert row["steps to tol"] == int(np.flatnonzero(t.losses <= r.tol)[0])
        assert row["diverged"] is False and row["status"] == "converged"
    text = r.table()
    lines = text.splitlines()
    assert "learning rates not tuned" in lines[0] and "250 steps" in lines[0]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == list(L.COLUMNS)
    assert sum(line.startswith("| ") for line in lines) == 4  # header + 3 rows


def test_divergence_is_detected_reported_and_drawn_up_to_it():
    r = L.compare("bowl", [Spec("sgd", lr=1.1), Spec("sgd", lr=0.1, label="fine")], steps=100)
    bad = r["sgd"]
    # |x_t| = |1 − 2·1.1|^t · |x_0| = 1.2^t · |x_0| passes the radius, 100 × the domain's 3
    radius = 300
    expected = next(t for t in range(100) if 1.2 ** t * math.hypot(-2.5, 2.0) > radius)
    assert bad.diverged and bad.status == "diverged" and bad.diverged_at == expected == 25
    assert len(bad.points) == bad.diverged_at + 1 and np.isfinite(bad.points).all()
    assert r.rows()[0]["diverged"] == 25 and "yes (step 25)" in r.table()
    assert "diverged at step 25" in r.table()
    assert math.isnan(bad.distance) and r["fine"].status == "converged"
    # overflow to inf/nan: the non-finite point is not recorded
    boom = L.run("rosenbrock", Spec("sgd", lr=0.1), steps=50)
    assert boom.diverged and len(boom.points) <= boom.diverged_at + 1
    assert np.isfinite(boom.points).all() and np.isfinite(boom.losses).all()


def test_unbounded_functions_report_escape_not_divergence():
    t = L.run("saddle", Spec("momentum", lr=0.01), steps=300)
    assert t.status == "escaped" and not t.diverged and t.escaped_at is not None
    assert t.steps_to_tol is None and math.isnan(t.distance)


def test_bad_start_points_are_reported_not_fatal():
    r = L.compare("bowl", ["sgd", "adam"], start=(5.0, 0.0), steps=20)
    assert not r["sgd"].start_in_domain and "outside the plotted domain" in r.table()
    for bad in ((float("nan"), 0.0), (1e400, 0.0)):  # not a point: refused, naming it
        with pytest.raises(ValueError, match=r"start must be two finite numbers.*(nan|inf)"):
            L.run("bowl", "adam", start=bad, steps=5)
    with pytest.raises(ValueError, match="start must be two numbers"):
        L.run("bowl", "sgd", start=(1.0,))


def test_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'.*Did you mean 'adam'.*Known:.*rmsprop"):
        L.compare("bowl", ["sgd", "adamm"])
    with pytest.raises(ValueError, match="unknown torch optimizer 'torch.Adamm'.*torch.Adam"):
        L.compare("bowl", ["torch.Adamm"])
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        L.compare("bowl", ["sgd"], steps=-1)
    with pytest.raises(ValueError, match="at least one"):
        L.compare("bowl", [])


def test_labels_are_made_unique_and_zero_steps_record_the_start():
    r = L.compare("bowl", (name for name in ["sgd", "sgd", oo.SGD]), steps=0)  # any iterable
    assert len(L.compare("bowl", torch.optim.Adam, steps=1)) == 1            # or just one
    assert [t.label for t in r] == ["sgd", "sgd #2", "SGD"]
    assert all(len(t.points) == 1 and tuple(t.points[0]) == (-2.5, 2.0) for t in r)


def test_learning_rate_search_keeps_the_best_rate_and_says_so():
    r = L.compare("ravine", ["sgd", "adam", Spec(lambda p: torch.optim.SGD(p, lr=0.01))], steps=250, tune=True)
    assert r.tuned and "tuned per optimizer" in r.table()
    for label in ("sgd", "adam"):
        best, tried = r[label], r.candidates[label]
        assert best.lr_from == "tuned"
        assert sorted(c.lr for c in tried) == pytest.approx(sorted(best.lr / best.lr * c.lr for c in tried))
        assert len(tried) == len(L.TUNE_FACTORS)
        assert all(_score(best) <= _score(c) for c in tried)
        assert best.status == "converged"
    # sgd: the largest stable rate on the grid is best; 2 × 1.2/50 > 2/50 (the stability limit) diverges
    assert r["sgd"].lr == pytest.approx(1.2 / 50)
    assert all(c.diverged == (c.lr > 2 / 50) for c in r.candidates["sgd"])
    assert r["factory"].lr_from == "own", "a factory's own rate is not searched"
    assert "rates tried" in r.table()
