"""The lectures' claims, measured on recorded trajectories. Each demonstration in
docs/landscape.md is a checked :mod:`optimlab.landscape.demos` entry; the extra tests pin down
the limits of the claims (where they stop being true), so the docs say only what holds."""

import re
from pathlib import Path

import numpy as np
import pytest

from optimlab import landscape as L
from optimlab.landscape import Spec, demos
from optimlab.landscape import metrics as M

DOC = Path(__file__).resolve().parents[1] / "docs" / "landscape.md"


@pytest.mark.parametrize("name", list(demos.DEMOS))
def test_every_demonstration_holds_on_the_recorded_numbers(name):
    result, checks = demos.DEMOS[name].run()
    assert checks, name
    failing = [str(c) for c in checks if not c.holds]
    assert not failing, failing


def test_gd_zigzags_across_the_ravine_while_momentum_needs_fewer_steps():
    r = L.compare(L.get("ravine", condition=50), [Spec("sgd", lr=0.039), Spec("momentum", lr=0.039)], steps=300)
    sgd, mom = r["sgd"], r["momentum"]
    dy = np.diff(sgd.points[:60, 1])
    assert np.all(np.sign(dy[1:]) == -np.sign(dy[:-1])), "every step across the ravine reverses"
    assert abs(1 - 0.039 * 50) == pytest.approx(0.95)  # |y| shrinks by only 5% per step
    assert sgd.steps_to_tol is not None and mom.steps_to_tol < sgd.steps_to_tol


def test_at_a_smaller_rate_heavy_momentum_swings_wider_than_gd():
    # The limit of "less zigzag": at η·κ = 1.8 GD's crossing shrinks by 0.8 per step, while
    # μ = 0.9 momentum's oscillation decays only as √0.9 ≈ 0.95: more sideways travel, yet
    # still fewer steps to the tolerance. docs/landscape.md states this caveat.
    r = L.compare(L.get("ravine", condition=50), [Spec("sgd", lr=0.036), Spec("momentum", lr=0.036)], steps=300)
    assert M.travel(r["momentum"], 1) > 2 * M.travel(r["sgd"], 1)
    assert r["momentum"].steps_to_tol < r["sgd"].steps_to_tol


def test_exactly_on_the_ridge_only_noise_leaves_the_saddle():
    r = L.compare("saddle", [Spec("sgd"), Spec("momentum"), Spec("adam"), Spec("rmsprop"),
                             Spec("sgd", noise=0.1, label="noisy")], start=(1.5, 0.0), steps=300)
    for label in ("sgd", "momentum", "adam", "rmsprop"):
        assert np.all(r[label].points[:, 1] == 0), f"{label}: y stays exactly 0 (its gradient is 0)"
    assert M.distance_from(r["sgd"], (0, 0)) < 0.01
    assert abs(r["noisy"].points[-1, 1]) > 1


def test_gd_escape_time_grows_with_closeness_to_the_ridge_adam_s_does_not():
    def leave(traj):  # first step with |y| > 1: off the ridge, on the way down
        return int(np.flatnonzero(np.abs(traj.points[:, 1]) > 1)[0])

    times = {}
    for y0 in (1e-2, 1e-6):
        r = L.compare("saddle", [Spec("sgd", lr=0.05), Spec("adam", lr=0.05)], start=(1.5, y0), steps=400)
        times[y0] = (leave(r["sgd"]), leave(r["adam"]))
    # GD: |y| grows as (1 + 2η)^t, so the time is log(1/y0)/log(1.1): ~2.9x longer for 1e-6
    assert times[1e-6][0] > 2.5 * times[1e-2][0]
    # Adam's normalised steps move y by about η per step whatever y0 is
    assert abs(times[1e-6][1] - times[1e-2][1]) <= 0.2 * times[1e-2][1]


def test_adagrad_step_follows_its_accumulated_gradients():
    lr = 0.05
    t = L.run("plateau", Spec("adagrad", lr=lr), steps=200)
    steps = np.diff(t.points, axis=0)
    accumulated = np.cumsum(t.grads[:-1] ** 2, axis=0)
    expected = -lr * t.grads[:-1] / (np.sqrt(accumulated) + 1e-10)
    np.testing.assert_allclose(steps, expected, rtol=1e-9, atol=1e-14)
    effective = lr / np.sqrt(accumulated[:, 0])
    assert np.all(np.diff(effective) < 0), "AdaGrad's per-coordinate rate only decays"


def test_too_large_a_rate_diverges_exactly_past_the_stability_limit():
    # (x² + 4y²)/2: largest curvature 4, GD is stable iff lr < 2/4.
    f = L.get("ravine", condition=4)
    rates = [0.3, 0.49, 0.51, 0.7]
    r = L.compare(f, [Spec("sgd", lr=lr, label=str(lr)) for lr in rates], steps=400)
    assert [r[str(lr)].diverged for lr in rates] == [False, False, True, True]


def test_the_docs_show_every_demonstration_with_its_command_and_picture():
    text = DOC.read_text(encoding="utf-8")
    for demo in demos.DEMOS.values():
        assert demo.command in text, demo.command
        assert demo.claim in text, demo.claim
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert pictures, "at least one picture"
    for picture in pictures:
        path = DOC.parent / picture
        assert path.is_file() and path.stat().st_size < 200_000, picture


def test_the_docs_python_example_runs(tmp_path, monkeypatch):
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(block) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(block[0], "docs/landscape.md", "exec"), {})
    for name in ("ravine.png", "ravine.gif", "ravine.html"):
        assert (tmp_path / name).stat().st_size > 0
