"""optimlab.optim.keras against Keras 3.15 itself, in its corners (issue 14).

* Keras's operation order: every Keras-convention optimizer runs 1,000 steps of constant
  gradients (3.3, and tiny ones down to float32's denormals) beside Keras, in float32, and
  must agree bit for bit at every step (tolerance 0: the same torch operations in the same
  order give the same bits; NaN only where Keras has NaN). Before the fix the twins used
  torch's ``lerp``/``addcmul`` order, and centred RMSprop turned NaN at step 139.
* ``weight_decay=None`` in a param group means no decay, in every twin (AdamW included).
* ``exclude_from_weight_decay`` against Keras's own, by names and by tensors.
* Keras-only constructor arguments are refused with optimlab's equivalent.

Run with ``KERAS_BACKEND=torch``; the tests that need Keras skip without it.
"""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import sys
import warnings

import pytest
import torch

import optimlab.optim.keras as ok

# Keras's torch backend converts through numpy in a way numpy 2 warns about (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

EXACT = dict(rtol=0.0, atol=0.0, equal_nan=True)  # bit for bit, NaN where Keras has NaN


@pytest.fixture(scope="module")
def keras():
    """Keras 3 on the torch backend, imported once (a few seconds)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras", reason="the differential tests need keras==3.15.* (the test extra)")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported with the {keras.backend.backend()} backend; run with KERAS_BACKEND=torch")
    return keras


def keras_run(keras, name, hyper, start, grads):
    """Keras's trajectory (one row per step) of one variable starting at ``start``."""
    variable = keras.Variable(start.numpy())
    opt = getattr(keras.optimizers, name)(**hyper)
    rows = []
    for g in grads:
        opt.apply([g.clone()], [variable])
        rows.append(variable.value.detach().clone())
    return torch.stack(rows)


def optimlab_run(name, hyper, start, grads):
    param = torch.nn.Parameter(start.clone())
    opt = getattr(ok, name)([param], **hyper)
    rows = []
    for g in grads:
        param.grad = g.clone()
        opt.step()
        rows.append(param.detach().clone())
    return torch.stack(rows)


# ------------------------------------------------------------------ Keras's operation order
def test_centered_rmsprop_under_a_constant_gradient_stays_finite_as_in_keras(keras):
    """The issue's case: θ0 = 0, g = 3.3, float32. Keras: −37.657990 after 150 steps; the
    twin with torch's lerp order took √ of a negative number from step 139 (NaN)."""
    start, grads = torch.zeros(1), [torch.full((1,), 3.3)] * 150
    hyper = dict(learning_rate=1e-3, centered=True)
    theirs = keras_run(keras, "RMSprop", hyper, start, grads)
    ours = optimlab_run("RMSprop", hyper, start, grads)
    assert theirs[-1].item() == pytest.approx(-37.657990, abs=5e-6)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, **EXACT)


# Every Keras-convention optimizer and its switches (the defaults unless a switch needs more).
ORDER_CASES = [
    ("SGD", {}),
    ("SGD", dict(momentum=0.9)),
    ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("RMSprop", {}),
    ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(momentum=0.9)),
    ("RMSprop", dict(momentum=0.5, centered=True, weight_decay=0.01)),
    ("Adagrad", {}),
    ("Adadelta", {}),
    ("Adam", {}),
    ("Adam", dict(amsgrad=True)),
    ("AdamW", {}),
    ("Adamax", {}),
    ("Nadam", {}),
]
# (start, gradient) per element, all in one tensor (every rule is elementwise): a constant 3.3
# from 0 (the case) and from 1, and tiny gradients: 1e-20 (g² underflows in float32),
# 1e-38 and 1e-44 (denormal gradients). Repeated to 24 elements so that the vectorised kernels
# run as well as their scalar tails.
ELEMENTS = [(0.0, 3.3), (1.0, -3.3), (0.5, 1e-20), (-0.25, -1e-20), (0.75, 1e-38), (-1.0, 1e-44)]
ORDER_STEPS = 1000


@pytest.mark.parametrize(("name", "hyper"), ORDER_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ORDER_CASES)])
def test_every_step_is_kerass_bit_for_bit_for_constant_and_tiny_gradients(keras, name, hyper):
    start = torch.tensor([s for s, _ in ELEMENTS] * 4, dtype=torch.float32)
    grad = torch.tensor([g for _, g in ELEMENTS] * 4, dtype=torch.float32)
    assert grad[4] != 0 and grad[4].abs() < torch.finfo(torch.float32).tiny  # denormal indeed
    grads = [grad] * ORDER_STEPS
    theirs = keras_run(keras, name, hyper, start, grads)
    ours = optimlab_run(name, hyper, start, grads)
    finite = torch.isfinite(theirs)
    assert finite.any()
    bad = finite & ~torch.isfinite(ours)
    assert not bad.any(), f"{name}({hyper}): not finite at step {int(bad.any(1).nonzero()[0]) + 1} where Keras is"
    torch.testing.assert_close(ours, theirs, **EXACT, msg=lambda m: f"{name}({hyper}): {m}")


# ---------------------------------------------------------------- weight_decay=None in a group
NAMES = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam"]


def _gradients(steps, shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]


def _starts(shapes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


@pytest.mark.parametrize("name", NAMES)
def test_a_group_with_weight_decay_none_gets_no_decay(keras, name):
    """Group 0 says weight_decay=None: it follows a Keras optimizer without decay; group 1
    follows one with weight_decay=0.1 (AdamW's constructor refuses None, as Keras's)."""
    shapes, steps = [(3,), (2, 2)], 20
    grads, starts = _gradients(steps, shapes), _starts(shapes)
    params = [torch.nn.Parameter(s.clone()) for s in starts]
    opt = getattr(ok, name)([{"params": [params[0]], "weight_decay": None},
                             {"params": [params[1]], "weight_decay": 0.1}], learning_rate=0.05)
    variables = [keras.Variable(s.numpy()) for s in starts]
    plain = "Adam" if name == "AdamW" else name  # Keras's AdamW is its Adam with a decay that cannot be None
    keras_opts = [getattr(keras.optimizers, plain)(learning_rate=0.05, weight_decay=None),
                  getattr(keras.optimizers, name)(learning_rate=0.05, weight_decay=0.1)]
    for gs in grads:
        for kopt, v, g in zip(keras_opts, variables, gs):
            kopt.apply([g.clone()], [v])
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    for p, v in zip(params, variables):
        torch.testing.assert_close(p.detach(), v.value.detach(), **EXACT)
    with pytest.raises(ValueError, match="weight_decay must be >= 0, got -0.1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": -0.1})


def test_adamw_constructor_refuses_none_as_keras_and_says_what_to_do(keras):
    with pytest.raises(ValueError, match="weight_decay` must be a float"):
        keras.optimizers.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match=r"AdamW: weight_decay must be a float, got None.*"
                                         r"param group weight_decay=None or call exclude_from_weight_decay\(\)"):
        ok.AdamW([torch.nn.Parameter(torch.zeros(2))], weight_decay=None)


# ---------------------------------------------------------------- exclude_from_weight_decay
DECAY_NAMES = ["dense.kernel", "dense.bias", "norm.gamma", "norm.beta", "out.kernel", "out.bias"]
DECAY_SHAPES = [(3, 2), (2,), (2,), (2,), (2, 1), (1,)]


@pytest.mark.parametrize(("name", "hyper"), [("AdamW", dict(weight_decay=0.1, learning_rate=0.01)),
                                             ("SGD", dict(weight_decay=0.1, learning_rate=0.05, momentum=0.9))])
def test_exclude_from_weight_decay_matches_keras(keras, name, hyper):
    """Excluded by name (``bias``, and ``^norm``: Keras's names are regular expressions) and by
    tensor (out.kernel); dense.kernel alone is decayed. 20 steps, float32, every bit."""
    grads, starts = _gradients(20, DECAY_SHAPES), _starts(DECAY_SHAPES)
    variables = [keras.Variable(s.numpy(), name=n) for s, n in zip(starts, DECAY_NAMES)]
    kopt = getattr(keras.optimizers, name)(**hyper)
    kopt.exclude_from_weight_decay(var_list=[variables[4]], var_names=["bias", "^norm"])
    params = [torch.nn.Parameter(s.clone()) for s in starts]
    opt = getattr(ok, name)(list(zip(DECAY_NAMES, params)), **hyper)  # as model.named_parameters() gives them
    opt.exclude_from_weight_decay(var_list=[params[4]], var_names=["bias", "^norm"])
    for gs in grads:
        kopt.apply([g.clone() for g in gs], variables)
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    assert [kopt._use_weight_decay(v) for v in variables] == [True, False, False, False, False, False]
    for p, v in zip(params, variables):
        torch.testing.assert_close(p.detach(), v.value.detach(), **EXACT)
    # and the exclusion mattered: without it the excluded parameters end elsewhere
    other = [torch.nn.Parameter(s.clone()) for s in starts]
    plain = getattr(ok, name)(other, **hyper)
    for gs in grads:
        for p, g in zip(other, gs):
            p.grad = g.clone()
        plain.step()
    assert torch.equal(other[0], params[0]) and not torch.equal(other[4], params[4])
    assert not torch.equal(other[2], params[2])


def test_exclude_from_weight_decay_with_a_model_and_state():
    """model.named_parameters(); each call replaces the last (Keras); copies keep it; the
    state dict does not (a setting, as in Keras)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    opt = ok.AdamW(model.named_parameters(), learning_rate=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_names=["weight"])
    opt.exclude_from_weight_decay(var_names=["bias"])  # replaces: weights are decayed again
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only the decay moves a parameter
    moved = {n: not torch.equal(p, before[n]) for n, p in model.named_parameters()}
    assert moved == {"0.weight": True, "0.bias": False, "1.weight": True, "1.bias": False}
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone._decayed(clone.param_groups[0], clone.param_groups[0]["params"]) == [
            clone.param_groups[0]["params"][0], clone.param_groups[0]["params"][2]]
    assert "exclu" not in repr(opt.state_dict())


def test_exclude_from_weight_decay_errors_name_the_argument():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = ok.AdamW([a])
    with pytest.raises(ValueError, match=r"var_names=\['bias'\] are matched against parameter names.*"
                                         r"model.named_parameters\(\)"):
        opt.exclude_from_weight_decay(var_names=["bias"])
    with pytest.raises(ValueError, match=r"var_names must be a list of strings, got 'bias'; pass \['bias'\]"):
        opt.exclude_from_weight_decay(var_names="bias")  # Keras would exclude every name with a b, i, a or s
    with pytest.raises(ValueError, match=r"var_list\[0\] \(a tensor of shape \(3,\)\) is not a parameter"):
        opt.exclude_from_weight_decay(var_list=[b])
    with pytest.raises(ValueError, match=r"var_list must be a list of parameters, got one tensor of shape \(2,\)"):
        opt.exclude_from_weight_decay(var_list=a)
    with pytest.raises(ValueError, match=r"var_names=\['\(bias'\] is not a valid regular expression"):
        ok.AdamW([("x", a)]).exclude_from_weight_decay(var_names=["(bias"])
    with pytest.raises(ValueError, match=r"param_names must be a list of 1 strings, one per parameter, "
                                         r"got \['x', 'y'\]"):
        ok.AdamW([{"params": [a], "param_names": ["x", "y"]}])
    a.grad = torch.ones(2)
    opt.step()
    with pytest.raises(ValueError, match=r"can only be configured before the optimizer is built.*iterations=1"):
        opt.exclude_from_weight_decay(var_list=[a])


# ------------------------------------------------------------- Keras-only arguments: what instead
KERAS_ONLY = [  # (keyword, value, what the message must say)
    ("use_ema", True, r"optimlab\.ema\.EMA\(model, decay=0\.99\).*ema\.update\(\).*fit\(\.\.\., ema=0\.99\)"),
    ("ema_momentum", 0.999, r"optimlab\.ema\.EMA\(model, decay=0\.999\).*fit\(\.\.\., ema=0\.999\)"),
    ("ema_overwrite_frequency", 100, r"optimlab\.ema\.EMA.*ema\.copy_to\(\).*every 100 steps"),
    ("loss_scale_factor", 128.0, r"fit\(\.\.\., precision='fp16'\).*torch\.amp\.GradScaler.*loss \* 128\.0"),
    ("gradient_accumulation_steps", 4, r"fit\(\.\.\., accumulate=4\) averages the gradients of 4 micro-batches"),
    ("decay", 1e-4, r"optimlab\.schedules\.PowerDecay\(η, decay_steps=1/0\.0001\)"),
    ("jit_compile", True, r"Keras 3 does not take it either.*drop it"),
    ("name", "adam", r"a torch optimizer has no name"),
]


@pytest.mark.parametrize(("key", "value", "message"), KERAS_ONLY, ids=[f"{k}={v!r}" for k, v, _ in KERAS_ONLY])
@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_keras_only_argument_points_to_optimlabs_equivalent(name, key, value, message):
    with pytest.raises(TypeError, match=rf"{name}\(\) does not take Keras's {key}={value!r}: .*{message}") as err:
        getattr(ok, name)([torch.nn.Parameter(torch.zeros(2))], **{key: value})
    assert "AveragedModel" not in str(err.value)


@pytest.mark.parametrize("key, value", [("use_ema", False), ("ema_overwrite_frequency", None),
                                        ("loss_scale_factor", None), ("gradient_accumulation_steps", None),
                                        ("decay", None)])
def test_kerass_own_off_values_are_accepted_and_change_nothing(key, value):
    """Keras code that spells out a default (use_ema=False) ports unchanged: the step is the same."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    spelled, plain = ok.Adam([a], **{key: value}), ok.Adam([b])
    for opt, p in ((spelled, a), (plain, b)):
        p.grad = torch.full((3,), 0.5)
        opt.step()
    assert torch.equal(a, b)


def test_what_the_messages_name_exists(keras):
    """The equivalents named above exist, with those arguments; the keywords are Keras's."""
    import optimlab.ema
    import optimlab.schedules
    import optimlab.train

    assert callable(optimlab.ema.EMA.update) and callable(optimlab.ema.EMA.copy_to)
    assert {"ema", "accumulate", "precision", "schedule"} <= set(inspect.signature(optimlab.train.fit).parameters)
    schedule = optimlab.schedules.PowerDecay(0.1, decay_steps=1 / 1e-2)
    assert [schedule(t) for t in (0, 10, 100)] == pytest.approx([0.1 / (1 + 1e-2 * t) for t in (0, 10, 100)])
    keras_keywords = set(inspect.signature(keras.optimizers.Adam).parameters)
    assert {k for k, _, _ in KERAS_ONLY} - {"decay", "jit_compile"} <= keras_keywords
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        keras.optimizers.Adam(decay=1e-4)  # Keras 3 only warns
    with pytest.raises(ValueError, match="not recognized"):
        keras.optimizers.Adam(jit_compile=True)
