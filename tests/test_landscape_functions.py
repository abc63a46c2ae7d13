"""The 2-D test functions: known minima are minima (zero gradient, right value, positive
curvature), saddles are saddles, every function is differentiable by torch autograd."""

import math

import numpy as np
import pytest
import torch

from optimlab import landscape as L
from optimlab.landscape import functions as F

NAMES = L.available()


def hessian(f, point):
    p = torch.tensor(point, dtype=torch.float64)
    return torch.autograd.functional.hessian(lambda v: f(v[0], v[1]), p).numpy()


def test_the_issue_s_functions_are_all_there():
    assert set(NAMES) == {"bowl", "ravine", "rosenbrock", "beale", "saddle", "monkey_saddle",
                          "himmelblau", "rastrigin", "plateau"}


@pytest.mark.parametrize("name", NAMES)
def test_minima_have_zero_gradient_the_stated_value_and_positive_curvature(name):
    f = L.get(name)
    for m in f.minima:
        assert np.linalg.norm(f.gradient(m)) < 1e-9, (name, m, f.gradient(m))
        assert f.value(m) == pytest.approx(f.min_value, abs=1e-12)
        assert np.linalg.eigvalsh(hessian(f, m)).min() > 0, (name, m)
    if f.bounded_below:
        # the global minimum value is not beaten anywhere on a fine grid of the domain
        _, _, Z = f.grid(301)
        assert Z.min() >= f.min_value - 1e-12
    else:
        assert f.minima == () and f.min_value is None


def test_himmelblau_has_four_global_minima():
    f = L.get("himmelblau")
    assert len(f.minima) == 4
    assert len({(round(x, 3), round(y, 3)) for x, y in f.minima}) == 4


@pytest.mark.parametrize("name", ["saddle", "monkey_saddle"])
def test_saddles_are_stationary_but_not_minima(name):
    f = L.get(name)
    (s,) = f.saddles
    assert np.linalg.norm(f.gradient(s)) == 0
    eig = np.linalg.eigvalsh(hessian(f, s))
    if name == "saddle":
        assert eig.min() < 0 < eig.max()          # x² − y²: curvature +2 and −2
    else:
        assert np.allclose(eig, 0)                 # monkey saddle: degenerate, flat to second order
        assert f.value((-0.1, 0)) < 0 < f.value((0.1, 0))  # yet it descends from the origin


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_by_autograd_matching_finite_differences(name):
    f = L.get(name)
    rng = np.random.default_rng(0)
    (x0, x1), (y0, y1) = f.domain
    for _ in range(3):
        x = torch.tensor(rng.uniform(x0, x1), dtype=torch.float64, requires_grad=True)
        y = torch.tensor(rng.uniform(y0, y1), dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(f.fn, (x, y))
        assert torch.autograd.gradgradcheck(f.fn, (x, y))


@pytest.mark.parametrize("name", NAMES)
def test_start_lies_in_the_domain_away_from_the_answer(name):
    f = L.get(name)
    assert f.in_domain(f.start)
    value = f.value(f.start)
    assert math.isfinite(value)
    if f.bounded_below:
        assert value - f.min_value > 10 * f.tol
        assert f.nearest_minimum(f.start)[1] > 0.5


def test_functions_broadcast_over_grids():
    f = L.get("rosenbrock")
    X, Y, Z = f.grid(7)
    assert X.shape == Y.shape == Z.shape == (7, 7)
    assert Z[3, 5] == pytest.approx(f.value((X[3, 5], Y[3, 5])))
    assert X[0, 0] == -2 and X[0, -1] == 2 and Y[0, 0] == -1 and Y[-1, 0] == 3


def test_ravine_condition_number_is_settable():
    f = L.get("ravine", condition=200)
    eig = np.linalg.eigvalsh(hessian(f, (0.0, 0.0)))
    assert eig.max() / eig.min() == pytest.approx(200)
    assert f.params == {"condition": 200.0} and "200" in f.feature
    assert f.lr_gd * 200 < 2, "the default gradient-descent rate is stable"
    with pytest.raises(ValueError, match="condition=0.5"):
        L.get("ravine", condition=0.5)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="Did you mean 'rosenbrock'.*Known: bowl, ravine, rosenbrock"):
        L.get("rosenbrok")
    with pytest.raises(ValueError, match="takes no settings"):
        L.get("bowl", condition=3)
    assert L.get("Monkey-Saddle").name == "monkey_saddle"
    f = L.get("bowl")
    assert L.get(f) is f


def test_nearest_minimum():
    f = L.get("himmelblau")
    m, d = f.nearest_minimum((-3.7, -3.2))
    assert m == F.HIMMELBLAU_MINIMA[2] and d < 0.2
    assert L.get("saddle").nearest_minimum((1, 1)) == (None, pytest.approx(float("nan"), nan_ok=True))
