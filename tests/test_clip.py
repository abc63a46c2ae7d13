"""Gradient clipping: torch as the oracle for finite gradients, exact
post-conditions, skipping of missing gradients, explicit non-finite handling,
and the lecture's point that clipping tames an exploding run."""

import math

import pytest
import torch
from torch import nn

from optimlab.clip import NonFiniteGradientError, clip_grad_norm, clip_grad_value


def params_with_grads(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    params = [nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=g, dtype=torch.float64)
    return params


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clips / does not clip
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = params_with_grads(), params_with_grads()
    norm = clip_grad_norm(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type, foreach=False)
    torch.testing.assert_close(norm, expected, rtol=1e-12, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)


def test_clip_grad_norm_caps_length_and_keeps_direction():
    params = params_with_grads(scale=10.0)
    before = flat(p.grad for p in params).clone()
    norm = clip_grad_norm(params, max_norm=2.0)
    after = flat(p.grad for p in params)
    assert norm.item() == pytest.approx(before.norm().item(), rel=1e-12)  # the norm *before* clipping
    assert after.norm().item() == pytest.approx(2.0, rel=1e-6)
    assert torch.nn.functional.cosine_similarity(before, after, dim=0).item() == pytest.approx(1.0, abs=1e-12)

    small = params_with_grads(scale=1e-3)
    untouched = [p.grad.clone() for p in small]
    clip_grad_norm(small, max_norm=2.0)
    assert all(torch.equal(p.grad, u) for p, u in zip(small, untouched))


def test_parameters_without_grad_are_skipped():
    params = params_with_grads()
    params[1].grad = None
    expected = flat(p.grad for p in params if p.grad is not None).norm()
    norm = clip_grad_norm(params, max_norm=0.1)
    assert norm.item() == pytest.approx(expected.item(), rel=1e-12)
    assert params[1].grad is None

    nothing = [nn.Parameter(torch.zeros(3))]
    assert clip_grad_norm(nothing, 1.0).item() == 0.0 and nothing[0].grad is None
    assert clip_grad_value(nothing, 1.0).item() == 0.0


def test_clip_grad_value_matches_torch_and_returns_norm_before():
    ours, theirs = params_with_grads(scale=2.0), params_with_grads(scale=2.0)
    before = flat(p.grad for p in ours).norm()
    norm = clip_grad_value(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    assert norm.item() == pytest.approx(before.item(), rel=1e-12)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)
    assert max(p.grad.abs().max().item() for p in ours) == 0.7


def model_with_bad_grads(bad):
    """A 3-layer model whose gradient entries named in ``bad`` hold inf/NaN."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 2))
    for name, p in model.named_parameters():
        p.grad = torch.ones_like(p)
        if name in bad:
            p.grad.view(-1)[1] = bad[name]
    return model


@pytest.mark.parametrize("clip", [lambda ps, **kw: clip_grad_norm(ps, 1.0, **kw),
                                  lambda ps, **kw: clip_grad_value(ps, 0.5, **kw)], ids=["norm", "value"])
def test_nonfinite_raise_names_the_first_offending_parameter(clip):
    model = model_with_bad_grads({"2.bias": math.nan, "3.weight": math.inf})
    with pytest.raises(NonFiniteGradientError, match="'2.bias'") as caught:
        clip(model)
    assert caught.value.parameter == "2.bias" and math.isnan(caught.value.norm)
    with pytest.raises(NonFiniteGradientError, match="'3.weight'"):
        clip(model_with_bad_grads({"3.weight": math.inf}).named_parameters())
    with pytest.raises(NonFiniteGradientError, match=r"'\[3\]'"):  # plain tensors: named by position
        clip(list(model_with_bad_grads({"2.bias": -math.inf}).parameters()))


def test_nonfinite_zero_and_keep():
    model = model_with_bad_grads({"0.weight": math.inf})
    norm = clip_grad_norm(model, 1.0, nonfinite="zero")
    assert norm.item() == math.inf
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())

    model = model_with_bad_grads({"0.weight": math.nan})
    norm = clip_grad_value(model, 0.5, nonfinite="keep")
    assert math.isnan(norm.item())
    grad = model[0].weight.grad.view(-1)
    assert math.isnan(grad[1].item()) and grad[0].item() == 1.0  # untouched, not clamped


def test_overflowing_norm_of_finite_gradients_is_reported_as_such():
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 1e30)  # finite float32 values whose squares overflow
    with pytest.raises(NonFiniteGradientError, match="overflowed") as caught:
        clip_grad_norm([p], 1.0)
    assert caught.value.parameter is None


def test_clipping_tames_an_exploding_run():
    # Gradient descent on x^4 from x = 10 with lr 0.1: the gradient 4x^3 = 4000 overshoots and blows up.
    def run(clip):
        x = nn.Parameter(torch.tensor([10.0], dtype=torch.float64))
        opt = torch.optim.SGD([x], lr=0.1)
        for _ in range(300):
            opt.zero_grad()
            (x ** 4).sum().backward()
            if clip:
                clip_grad_norm([x], max_norm=1.0)
            opt.step()
        return x.item()

    assert not math.isfinite(run(clip=False))
    assert abs(run(clip=True)) < 1.0


@pytest.mark.parametrize("call, argument", [
    (lambda ps: clip_grad_norm(ps, 0.0), "max_norm=0.0"),
    (lambda ps: clip_grad_norm(ps, -1), "max_norm=-1"),
    (lambda ps: clip_grad_norm(ps, math.nan), "max_norm=nan"),
    (lambda ps: clip_grad_norm(ps, 1.0, norm_type=0), "norm_type=0"),
    (lambda ps: clip_grad_norm(ps, 1.0, nonfinite="ignore"), "nonfinite='ignore'"),
    (lambda ps: clip_grad_value(ps, -0.5), "clip_value=-0.5"),
    (lambda ps: clip_grad_norm(5, 1.0), "parameters=5"),
    (lambda ps: clip_grad_norm(["w"], 1.0), r"parameters\[0\]"),
])
def test_bad_input_raises_value_error_naming_argument_and_value(call, argument):
    with pytest.raises(ValueError, match=argument):
        call(params_with_grads())
