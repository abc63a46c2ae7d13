"""Reduce-on-plateau against torch's ReduceLROnPlateau on noisy metric
sequences, for every mode / threshold mode, with cooldown and floors; state
save/restore; bad input."""

import itertools

import numpy as np
import pytest
import torch

from optimlab import schedules as S

BASE_LRS = (1.0, 0.3)


def optimizer():
    params = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in BASE_LRS]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, BASE_LRS)])


def metric_sequence(mode, seed, steps=120):
    """A loss-like curve that improves, then plateaus with noise (negated-ish for max mode)."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    loss = 0.5 + np.exp(-t / 15) + 0.01 * rng.standard_normal(steps)
    return loss if mode == "min" else 2.0 - loss  # accuracy-like: rises, stays positive


CONFIGS = [
    dict(mode=mode, threshold_mode=tm, threshold=thr, patience=patience, cooldown=cooldown,
         factor=0.5, min_lr=min_lr)
    for mode, (tm, thr), patience, cooldown, min_lr in itertools.product(
        ("min", "max"), (("rel", 1e-3), ("abs", 5e-3)), (0, 3), (0, 2), (0.0, [0.05, 0.02]))
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_matches_torch_reduce_lr_on_plateau(config):
    opt_t, opt_o = optimizer(), optimizer()
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_t, **config)
    ours = S.ReduceOnPlateau(opt_o, **config)
    expected, actual = [], []
    for metric in metric_sequence(config["mode"], seed=CONFIGS.index(config)):
        reference.step(metric)
        ours.step(metric)
        expected.append([g["lr"] for g in opt_t.param_groups])
        actual.append(ours.get_last_lr())
        assert (ours.best, ours.num_bad_steps, ours.cooldown_counter) == \
            (reference.best, reference.num_bad_epochs, reference.cooldown_counter)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
    cuts = np.sum(np.diff(np.array(expected)[:, 0]) < 0)
    assert cuts >= 2, "the sequence must exercise real reductions"
    if config["min_lr"]:
        assert actual[-1] == [0.05, 0.02], "the floor per group is reached and held"


def test_patience_counts_non_improving_steps_before_the_cut():
    # Lecture: halve the lr when the validation loss stops decreasing for `patience` epochs.
    opt = optimizer()
    plateau = S.ReduceOnPlateau(opt, factor=0.5, patience=5)
    assert plateau.step(1.0) is False  # the first value is the baseline
    for _ in range(5):
        assert plateau.step(1.0) is False  # patience: 5 bad epochs are tolerated
    assert plateau.step(1.0) is True  # the 6th is not
    assert plateau.get_last_lr() == [0.5, 0.15]
    assert plateau.step(0.5) is False and plateau.best == 0.5


def test_state_dict_resumes_exactly():
    metrics = metric_sequence("min", seed=3)
    config = dict(factor=0.3, patience=2, cooldown=1, threshold=1e-3, min_lr=1e-3)

    opt = optimizer()
    straight = S.ReduceOnPlateau(opt, **config)
    for m in metrics:
        straight.step(m)

    opt_a = optimizer()
    first = S.ReduceOnPlateau(opt_a, **config)
    for m in metrics[:57]:
        first.step(m)
    saved_opt, saved = opt_a.state_dict(), first.state_dict()
    opt_b = optimizer()
    opt_b.load_state_dict(saved_opt)
    second = S.ReduceOnPlateau(opt_b, **config)
    second.load_state_dict(saved)
    for m in metrics[57:]:
        second.step(m)
    assert second.get_last_lr() == straight.get_last_lr()
    assert second.state_dict() == straight.state_dict()
    assert straight.get_last_lr()[0] < 0.1  # it did reduce along the way


def test_drives_any_optimizer_through_param_groups():
    from types import SimpleNamespace
    groups = [{"lr": 0.1}]
    plateau = S.ReduceOnPlateau(SimpleNamespace(param_groups=groups), mode="max", patience=0, factor=0.1)
    plateau.step(0.9)
    plateau.step(0.8)
    assert groups[0]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(factor=1.0), "factor=1.0"),
    (dict(factor=2), "factor=2"),
    (dict(factor=0.0), "factor=0.0"),
    (dict(patience=-1), "patience=-1"),
    (dict(patience=1.5), "patience=1.5"),
    (dict(cooldown=-2), "cooldown=-2"),
    (dict(threshold=-0.1), "threshold=-0.1"),
    (dict(mode="mean"), "mode='mean'"),
    (dict(threshold_mode="pct"), "threshold_mode='pct'"),
    (dict(min_lr=-1e-3), "min_lr=-0.001"),
    (dict(min_lr=[0.1]), r"min_lr=\[0.1\]"),
])
def test_bad_input_raises_value_error_naming_argument_and_value(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        S.ReduceOnPlateau(optimizer(), **kwargs)
