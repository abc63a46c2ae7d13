"""optimlab's torch twins keep torch.optim's contract where torch's own tests hold them to it.

torch is the oracle throughout: each case runs torch.optim's class and optimlab's on the same
input. (1) Where torch raises, optimlab raises an instance of torch's exception type (its own
classes derive from both that type and ValueError, optimlab's input-error contract). (2)
``fused=True`` on a device without fused kernels ("meta") is refused as torch refuses it.
(3) GradScaler's protocol for fused optimizers (``_step_supports_amp_scaling``; the
``grad_scale`` and ``found_inf`` attributes it sets for the step) gives torch's parameters
and state, bit for bit, an overflowing step included.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import optimlab.optim as oo

TWINS = ["SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "RMSprop", "Adadelta"]
TORCH_FUSED = ["SGD", "Adam", "AdamW", "Adagrad"]  # the classes torch.optim has fused kernels for
HAS_BETAS = {"Adam", "AdamW", "Adamax", "NAdam", "RAdam"}


def _param():
    return torch.zeros(3, requires_grad=True)


def _outcome(make):
    """The exception ``make()`` raises (None if it raises nothing)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make()
    except Exception as err:  # noqa: BLE001 - the type is the point
        return err
    return None


def _construct_and_step(cls, params, **kwargs):
    opt = cls(params, **kwargs)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    opt.step()


CASES = {
    "a single tensor as params": lambda cls: cls(_param()),
    "None as params": lambda cls: cls(None),
    "a number as params": lambda cls: cls(3),
    "an empty params list": lambda cls: cls([]),
    "a group without 'params'": lambda cls: cls([{"lr": 0.1}]),
    "add_param_group without 'params'": lambda cls: cls([_param()]).add_param_group({"lr": 0.1}),
    "add_param_group with a list": lambda cls: cls([_param()]).add_param_group([_param()]),
    "a non-tensor in params": lambda cls: cls([_param(), 1.0]),
    "a string lr": lambda cls: cls([_param()], lr="0.1"),
    "a negative lr, params None (torch checks hyperparameters first)": lambda cls: cls(None, lr=-1.0),
    "a 2-element tensor lr": lambda cls: cls([_param()], lr=torch.tensor([0.1, 0.1])),
    "a tensor lr with foreach=True": lambda cls: _construct_and_step(cls, [_param()], lr=torch.tensor(0.01),
                                                                     foreach=True),
    "a tensor lr with foreach=False": lambda cls: _construct_and_step(cls, [_param()], lr=torch.tensor(0.01),
                                                                      foreach=False),
    "a tensor lr by default": lambda cls: _construct_and_step(cls, [_param()], lr=torch.tensor(0.01)),
}
FUSED_CASES = {
    "fused=True and foreach=True": lambda cls: cls([_param()], fused=True, foreach=True),
    "fused=True and differentiable=True": lambda cls: cls([_param()], fused=True, differentiable=True),
    "a tensor lr with fused=True": lambda cls: _construct_and_step(cls, [_param()], lr=torch.tensor(0.01),
                                                                   fused=True),
}
BETAS_CASES = {
    "tensor betas with foreach=True": lambda cls: _construct_and_step(
        cls, [_param()], betas=(torch.tensor(0.9), torch.tensor(0.999)), foreach=True),
    "tensor betas by default": lambda cls: _construct_and_step(
        cls, [_param()], betas=(torch.tensor(0.9), torch.tensor(0.999))),
    "one tensor beta, one number": lambda cls: cls([_param()], betas=(torch.tensor(0.9), 0.999)),
    "betas a number": lambda cls: cls([_param()], betas=0.9),
}
#: What optimlab refuses though torch.optim takes it (docs/conventions.md, section 6).
STRICTER = {"one tensor beta, one number": {"Adamax", "NAdam", "RAdam"}}
#: Where torch.optim fails in the middle of its foreach step (no check refuses it first) and
#: optimlab steps (docs/conventions.md, section 6): no contract to keep.
TORCH_FAILS_MIDSTEP = {"tensor betas with foreach=True": {"Adamax", "NAdam", "RAdam"}}


def _table():
    for case in CASES:
        for name in TWINS:
            yield case, name, CASES[case]
    for case in FUSED_CASES:
        for name in TORCH_FUSED:
            yield case, name, FUSED_CASES[case]
    for case in BETAS_CASES:
        for name in sorted(HAS_BETAS):
            yield case, name, BETAS_CASES[case]


@pytest.mark.parametrize("case,name,make", [pytest.param(c, n, m, id=f"{n}-{c}") for c, n, m in _table()])
def test_errors_are_instances_of_torchs(case, name, make):
    expected = _outcome(lambda: make(getattr(torch.optim, name)))
    got = _outcome(lambda: make(getattr(oo, name)))
    if name in TORCH_FAILS_MIDSTEP.get(case, ()):
        assert expected is not None and got is None
        return
    if expected is None:
        assert got is None or name in STRICTER.get(case, ()), f"torch takes it; optimlab raised {got!r}"
        return
    assert got is not None, f"torch raises {type(expected).__name__} ({expected}); optimlab takes it"
    assert isinstance(got, type(expected)), (f"torch raises {type(expected).__name__} ({expected}); "
                                             f"optimlab {type(got).__name__} ({got})")
    assert isinstance(got, ValueError), f"optimlab's input errors are ValueErrors, got {type(got).__name__}"


def test_messages_name_the_parameter():
    with pytest.raises(TypeError, match="single tensor"):
        oo.Adam(_param())
    with pytest.raises(KeyError) as err:
        oo.SGD([{"lr": 0.1}])
    assert "'params'" in str(err.value) and not str(err.value).startswith('"')
    with pytest.raises(ValueError, match=r"lr as a tensor .*foreach=True"):
        oo.Adam([_param()], lr=torch.tensor(0.01), foreach=True)
    with pytest.raises(ValueError, match=r"betas\[0\] as a tensor .*foreach=True"):
        oo.AdamW([_param()], betas=(torch.tensor(0.9), torch.tensor(0.999)), foreach=True)
    with pytest.raises(RuntimeError, match="fused=True and foreach=True"):
        oo.SGD([_param()], fused=True, foreach=True)


# --------------------------------------------------------------------- fused on "meta"
@pytest.mark.parametrize("name", TWINS)
def test_fused_on_meta_is_refused_as_torch_refuses_it(name):
    def run(cls):
        p = torch.empty(3, device="meta", requires_grad=True)
        kwargs = {} if name == "RAdam" else {"fused": True}  # (RAdam has no fused option, in either)
        opt = cls([p], lr=0.1, **({"momentum": 0.9} if name == "SGD" else {}), **kwargs)
        p.grad = torch.empty(3, device="meta")
        opt.step()
        return opt

    expected = _outcome(lambda: run(getattr(torch.optim, name)))
    got = _outcome(lambda: run(getattr(oo, name)))
    if name == "RAdam":
        assert expected is None and got is None
        return
    if name not in TORCH_FUSED:  # torch has no fused= there; optimlab refuses as torch's fused classes
        assert isinstance(expected, TypeError)
        expected = RuntimeError()
    assert isinstance(got, type(expected)) and isinstance(got, ValueError), repr(got)
    assert "fused=True" in str(got) and "meta" in str(got)


@pytest.mark.parametrize("name", TORCH_FUSED)
def test_fused_complex_parameters_step_where_torch_refuses_them(name):
    """A listed difference (docs/conventions.md, section 6): torch's fused optimizers refuse
    complex parameters; optimlab's step them on the foreach rules
    (test_optim_reliability.test_complex_parameters_with_fused_match_torch: the values)."""
    def run(cls):
        p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
        opt = cls([p], lr=0.1, fused=True)
        p.grad = torch.ones_like(p)
        opt.step()

    assert isinstance(_outcome(lambda: run(getattr(torch.optim, name))), RuntimeError)
    assert _outcome(lambda: run(getattr(oo, name))) is None


# ------------------------------------------------------------- GradScaler's protocol
@pytest.mark.parametrize("name", TWINS)
@pytest.mark.parametrize("fused", [True, False, None])
def test_step_supports_amp_scaling_as_torch(name, fused):
    kwargs = {} if fused is None or name == "RAdam" else {"fused": fused}  # (RAdam: no fused=)
    try:
        reference = getattr(torch.optim, name)([_param()], **kwargs)
    except TypeError:  # torch's class has no fused=: GradScaler unscales for it, as for optimlab's kernels
        reference = getattr(torch.optim, name)([_param()])
    ours = getattr(oo, name)([_param()], **kwargs)
    assert (getattr(ours, "_step_supports_amp_scaling", False)
            == getattr(reference, "_step_supports_amp_scaling", False))


AMP_SETTINGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1)),
]


def _train_with_scaler(cls, hyper, dtype, inf_steps, steps=6):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=gen, dtype=dtype).requires_grad_(),
              torch.randn(5, generator=gen, dtype=dtype).requires_grad_()]
    data = [[torch.randn(p.shape, generator=gen, dtype=dtype) for p in params] for _ in range(steps)]
    opt = cls(params, fused=True, **hyper)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
    history = []
    for t in range(steps):
        opt.zero_grad()
        loss = sum((p * x).sum() + (p * p * x).sum() for p, x in zip(params, data[t]))
        scaler.scale(loss).backward()
        if t in inf_steps:
            params[0].grad[1, 2] = float("inf")
        scaler.step(opt)
        scaler.update()
        history.append(([p.detach().clone() for p in params], [p.grad.clone() for p in params],
                        scaler.get_scale()))
    return history, opt


def _state_tensors(opt):
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in sorted(opt.state.get(p, {}).items()):
                out.append((key, value))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,hyper", AMP_SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(AMP_SETTINGS)])
def test_grad_scaler_steps_match_torchs_fused_optimizer_bit_for_bit(name, hyper, dtype):
    """GradScaler on the CPU, an inf gradient on steps 2 and 3 (the step is skipped: the
    parameters, the state and the step counters do not move; the scale backs off): torch's
    fused kernels get grad_scale and found_inf in both, so every tensor is equal, bit for bit."""
    inf_steps = {2, 3}
    expected, ref_opt = _train_with_scaler(getattr(torch.optim, name), hyper, dtype, inf_steps)
    got, opt = _train_with_scaler(getattr(oo, name), hyper, dtype, inf_steps)
    assert getattr(opt, "_step_supports_amp_scaling", False)
    for t, ((ep, eg, es), (gp, gg, gs)) in enumerate(zip(expected, got)):
        assert es == gs, f"step {t}: scale {gs} != torch's {es}"
        for a, b in zip(ep + eg, gp + gg):
            assert torch.equal(a, b), f"step {t}: {b} != torch's {a}"
    ref_state, state = _state_tensors(ref_opt), _state_tensors(opt)
    assert [k for k, _ in ref_state] == [k for k, _ in state]
    for (key, a), (_, b) in zip(ref_state, state):
        assert torch.equal(a, b) and a.dtype == b.dtype, f"state {key!r}: {b} != torch's {a}"
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")  # GradScaler removed them


@pytest.mark.parametrize("name,hyper", AMP_SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(AMP_SETTINGS)])
def test_grad_scaler_on_the_fallback_path_unscales_and_skips_as_the_kernel(name, hyper):
    """fused=True where the kernel cannot take a tensor (a gradient in another memory order
    than its parameter falls back to the multi-tensor rule): the same protocol, applied in
    Python. Compared with torch's fused optimizer on contiguous gradients, to rounding."""
    def run(cls, transpose):
        p = torch.linspace(-1, 1, 12).reshape(4, 3).requires_grad_()
        opt = cls([p], fused=True, **hyper)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
        for t in range(4):
            opt.zero_grad()
            scaler.scale(torch.ones(()))  # (GradScaler starts its scale tensor here)
            g = torch.linspace(0.5, 2.0, 12).reshape(3, 4) * (1 + t) * scaler.get_scale()
            if t == 2:
                g[0, 0] = float("inf")
            p.grad = g.t() if transpose else g.t().contiguous()
            scaler.step(opt)
            scaler.update()
        return p.detach(), opt

    expected, _ = run(getattr(torch.optim, name), transpose=False)
    got, opt = run(getattr(oo, name), transpose=True)
    assert opt.path_for(0) != "fused"
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_every_torch_twin_takes_torchs_constructor_as_torchs_own_tests_build_it():
    """tests/torch_suite.py runs PyTorch's TestOptimRenewed with these classes patched in; a
    class whose signature drifted from torch's would silently drop out of that run."""
    from tests.torch_suite import twin_problems, twins

    expected = {"SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam",
                "Adafactor", "Muon"}
    for name in expected:
        assert twin_problems(getattr(torch.optim, name), getattr(oo, name)) == [], name
    assert set(twins()) == expected
