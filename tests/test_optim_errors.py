"""Bad input gets a clear ValueError naming the parameter and value, and loses nothing."""

from __future__ import annotations

import math

import pytest
import torch

import optimlab.optim as oo
from tests.optim_cases import CASES


def p(*shape):
    return torch.zeros(*shape, requires_grad=True)


BAD_HYPER = [
    ("sgd", dict(lr=-0.1), "lr"), ("sgd", dict(lr=math.nan), "lr"), ("sgd", dict(lr=math.inf), "lr"),
    ("sgd", dict(momentum=-0.5), "momentum"), ("sgd", dict(weight_decay=-1e-4), "weight_decay"),
    ("sgd", dict(nesterov=True), "nesterov"), ("sgd", dict(momentum=0.9, nesterov=True, dampening=0.1), "nesterov"),
    ("sgd", dict(lr="0.1"), "lr"), ("sgd", dict(nesterov="yes"), "nesterov"),
    ("adam", dict(betas=(1.0, 0.999)), "betas[0]"), ("adam", dict(betas=(0.9, -0.1)), "betas[1]"),
    ("adam", dict(betas=0.9), "betas"), ("adam", dict(eps=0.0), "eps"), ("adam", dict(eps=-1e-8), "eps"),
    ("adam", dict(amsgrad=1), "amsgrad"), ("adamw", dict(weight_decay=-0.01), "weight_decay"),
    ("rmsprop", dict(alpha=1.0), "alpha"), ("rmsprop", dict(momentum=-1), "momentum"),
    ("adadelta", dict(rho=1.5), "rho"), ("adagrad", dict(lr_decay=-1), "lr_decay"),
    ("adagrad", dict(initial_accumulator_value=-0.1), "initial_accumulator_value"),
    ("nadam", dict(momentum_decay=-1), "momentum_decay"), ("adamax", dict(betas=(0.9, 1.2)), "betas[1]"),
    ("adam", dict(differentiable="yes"), "differentiable"), ("adam", dict(differentiable=True, fused=True), "differentiable"),
    ("rmsprop", dict(capturable=True), "capturable"),
    ("adam", dict(skip_nonfinite="no"), "skip_nonfinite"),
]


@pytest.mark.parametrize("name,hyper,param_name", BAD_HYPER)
def test_invalid_hyperparameter_names_parameter_and_value(name, hyper, param_name):
    cls = CASES[name][0]
    kwargs = {"lr": 0.1, **hyper} if name in ("momentum", "nag") else hyper
    with pytest.raises(ValueError) as err:
        cls([p(3)], **kwargs)
    message = str(err.value)
    assert param_name in message
    bad_value = next(iter(hyper.values()))
    assert repr(bad_value) in message or str(bad_value) in message


def test_invalid_hyperparameter_in_a_param_group_is_rejected_before_adding():
    opt = oo.Adam([p(2)], lr=0.1)
    with pytest.raises(ValueError, match=r"lr must be >= 0, got -1"):
        opt.add_param_group({"params": [p(3)], "lr": -1})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="does not read"):
        opt.add_param_group({"params": [p(3)], "momentum": 0.9})


@pytest.mark.parametrize("name", list(CASES))
def test_unknown_keyword_is_rejected_with_a_suggestion(name):
    cls = CASES[name][0]
    with pytest.raises(oo.UnknownArgumentError, match="'lrr'.*did you mean 'lr'"):
        cls([p(3)], lrr=0.1)


def test_keras_keyword_on_a_torch_optimizer_names_the_torch_one():
    with pytest.raises(ValueError, match="'learning_rate'.*did you mean 'lr'"):
        oo.Adam([p(3)], learning_rate=1e-3)
    with pytest.raises(TypeError, match="'beta_1'.*did you mean 'betas'"):
        oo.Adam([p(3)], beta_1=0.9)
    with pytest.raises(ValueError, match="'rho'.*did you mean 'alpha'"):
        oo.RMSprop([p(3)], rho=0.9)


def test_empty_duplicate_and_integer_parameters():
    with pytest.raises(ValueError, match="empty parameter list"):
        oo.Adam([])
    with pytest.raises(ValueError, match="empty parameter list"):
        oo.SGD(iter([]))
    x = p(3)
    with pytest.raises(ValueError, match="given twice"):
        oo.Adam([x, x])
    with pytest.raises(ValueError, match="more than one|shares parameters"):
        oo.Adam([{"params": [x]}, {"params": [x]}])
    with pytest.raises(ValueError, match="dtype torch.int64"):
        oo.SGD([torch.zeros(3, dtype=torch.int64)], lr=0.1)
    with pytest.raises(ValueError, match="single tensor"):
        oo.SGD(x, lr=0.1)


def test_sparse_gradients_rejected_where_unsupported_before_any_change():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    before = emb.weight.detach().clone()
    opt = oo.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight, before) and not opt.state


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="Did you mean 'adam'.*Known: adadelta, adafactor, adagrad, adam, adamax"):
        oo.create("adamm", [p(2)])
    assert {"sgd", "momentum", "nag", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "adamax",
            "nadam"} <= set(oo.available())
    assert isinstance(oo.create("nag", [p(2)], lr=0.1), oo.NAG)
    assert oo.create("nesterov", [p(2)], lr=0.1).param_groups[0]["nesterov"] is True
    assert oo.Nadam is oo.NAdam
