"""The optimizers after Adam, each against an independent oracle, step for step.

One row of ``ROWS`` per optimizer drives every generic test here (oracle, state_dict round
trip, unknown keywords, bad hyperparameters, complex tensors, registry and docstring); adding
an optimizer is adding its row (docs/contributing.md).

Oracles: torch.optim (RAdam, Adafactor, Muon), lion-pytorch (Lion), the schedulefree
package's fast and reference classes (Schedule-Free), pytorch-optimizer (ADOPT), the papers'
algorithms (LAMB, LARS: their modules' readable rules, cross-checked against pytorch-optimizer
through the package's documented departures in tests/reference/modern.py; Lookahead: the
paper's loop there). Every run: 120 steps, scalars to 4-D tensors, two param groups, weight
decay on and off, the learning rate cut mid-run, zero and None gradients, float32 and float64.
"""

from __future__ import annotations

import re
import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from torch import nn

import optimlab.optim as oo
from tests.optim_cases import SHAPES, gradient_sequence
from tests.reference import modern as ref

lion_pytorch = pytest.importorskip("lion_pytorch")
schedulefree = pytest.importorskip("schedulefree")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

STEPS = 120


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and fair to a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-5, atol=1e-6)}
MATRICES = [(5, 3), (3, 7), (4, 4), (6, 2)]  # Muon takes 2-D weights only


def make_params(dtype, shapes=SHAPES, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def two_groups(params, hyper):
    """Two groups: the second with half the learning rate and no weight decay."""
    second = {"params": params[2:], "lr": hyper.get("lr", 1e-3) * 0.5}
    if "weight_decay" in hyper:
        second["weight_decay"] = 0.0
    return [{"params": params[:2]}, second]


def run(opt, params, grads_seq, *, negate=False, lr_change_at=STEPS // 2):
    for t, grads in enumerate(grads_seq):
        if t == lr_change_at:
            for g in opt.param_groups:
                g["lr"] *= 0.3
        for p, g in zip(params, grads):
            p.grad = None if g is None else (-g if negate else g).clone()
        opt.step()
    return opt


def assert_params_close(ours, theirs, tol):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)


def assert_state_close(ours, theirs, tol, keys=None):
    for p, q in zip([p for g in ours.param_groups for p in g["params"]],
                    [p for g in theirs.param_groups for p in g["params"]]):
        s, t = ours.state[p], theirs.state[q]
        for key in keys if keys is not None else t:
            if isinstance(t[key], torch.Tensor):
                torch.testing.assert_close(s[key], t[key].to(s[key].dtype), **tol)


# ------------------------------------------------------------------------ the table
def _lion(params, hyper):
    return lion_pytorch.Lion(params, lr=hyper["lr"], betas=hyper.get("betas", (0.9, 0.99)),
                             weight_decay=hyper.get("weight_decay", 0.0))


def _sf(cls):
    def make(params, hyper):
        opt = cls(params, **{k: v for k, v in hyper.items() if k != "maximize"})
        opt.train()
        return opt
    return make


def _adopt(params, hyper):
    """pytorch_optimizer.ADOPT under our keyword names (``maximize``: the test negates the gradients)."""
    names = {"decoupled_weight_decay": "weight_decouple"}
    kw = {names.get(k, k): v for k, v in hyper.items() if k not in ("maximize", "clip_exponent")}
    if "clip_exponent" in hyper:
        e = hyper["clip_exponent"]
        kw["clip_lambda"] = None if e is None else (lambda step: step ** e)
    return pytorch_optimizer.ADOPT(params, **kw)


def class_rule(cls):
    """``cls.rule`` (the module's readable rule) as a reference rule ``(theta, g, state, h)``:
    its group is the class's defaults updated with ``h``, its state starts as the class's."""
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def rule(theta, g, state, h):
        group = {**defaults, **h}
        if not state:
            state.update(cls([torch.zeros(1, dtype=theta.dtype)], lr=h["lr"])._init_state(theta, group))
        cls.rule(theta, g, state, group)
    return rule


def _adopt_rule(param, grad, state, h):
    from optimlab.optim.adopt import adopt_rule

    state.setdefault("exp_avg", torch.zeros_like(param))
    state.setdefault("exp_avg_sq", torch.zeros_like(param))
    state["step"] = state.get("step", 0) + 1
    beta1, beta2 = h.get("betas", (0.9, 0.9999))
    adopt_rule(param, grad, state["exp_avg"], state["exp_avg_sq"], state["step"], lr=h["lr"], beta1=beta1,
               beta2=beta2, eps=h.get("eps", 1e-6), weight_decay=h.get("weight_decay", 0.0),
               decoupled_weight_decay=h.get("decoupled_weight_decay", False),
               clip_exponent=h.get("clip_exponent", 0.25), maximize=h.get("maximize", False))


@dataclass
class Row:
    """One optimizer: what it is checked against, with which settings, and what it can do.

    oracle: "torch" (``oracles[0]`` is torch.optim's class, same keywords), "package" (factories
    ``(params, hyper) -> optimizer`` of independent packages, fed negated gradients for
    ``maximize``), "paper" (``oracles[0]`` a per-tensor reference rule from tests/reference),
    or None (tested by hand further down). The papers' algorithms are the modules' readable
    rules (``class_rule``), cross-checked against a package further down."""

    name: str                                   # its registry name
    cls: type
    oracle: str | None = None
    oracles: list = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    tol: dict | None = None                     # dtype -> assert_close tolerance (None: TOL)
    shapes: list = field(default_factory=lambda: list(SHAPES))
    state_keys: list[str] | None = None         # state compared with the oracle (None: all of the oracle's)
    make: Callable | None = None                # params -> a configured optimizer (state_dict round trip)
    bad: list[tuple[dict, str]] = field(default_factory=list)  # (hyper, the name its error must give)
    complex_rejected: bool = False              # complex tensors refused when the group is added
    single_tensor_path: bool = True             # foreach=False is checked against the default path
    per_group_step: bool = False                # the oracle counts steps per group: no None gradients
    group_keys: tuple[str, ...] = ()            # group entries compared with the oracle's
    rule: Callable | None = None                # the readable per-tensor rule; the class must equal it bit for bit
    still_at_step_1: bool = False               # step 1 only fills the state (ADOPT)
    flat_tangents: bool = False                 # the update's derivative in the gradient is 0 there (a sign, a clip)
    documented: bool = True                     # "When to choose it" and the paper's year in the docstring

    def params(self, dtype):
        return make_params(dtype, self.shapes)


ROWS = [
    Row("radam", oo.RAdam, "torch", [torch.optim.RAdam], [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), maximize=True),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.9, 0.9)),  # rectified from step 2
    ], make=lambda ps: oo.RAdam(ps, lr=0.01, weight_decay=0.1),
        bad=[(dict(betas=(1.0, 0.9)), "betas[0]"), (dict(eps=-1.0), "eps")]),
    Row("adafactor", oo.Adafactor, "torch", [torch.optim.Adafactor], [
        dict(lr=0.01),
        dict(lr=0.05, weight_decay=0.1, beta2_decay=-0.5, eps=(1e-30, 1e-3), d=2.0, maximize=True),
    ], shapes=SHAPES + [(6, 5)], make=lambda ps: oo.Adafactor(ps, weight_decay=0.01), complex_rejected=True,
        bad=[(dict(beta2_decay=0.5), "beta2_decay"), (dict(d=0.5), "d"), (dict(eps=(None, -1.0)), "eps[1]"),
             (dict(eps=1e-3), "eps")]),
    Row("muon", oo.Muon, "torch", [torch.optim.Muon], [
        dict(lr=0.02),
        dict(lr=0.02, weight_decay=0.0, nesterov=False, momentum=0.9, adjust_lr_fn="match_rms_adamw"),
        dict(lr=0.02, ns_steps=3, adjust_lr_fn="original", weight_decay=0.05),
    ], shapes=MATRICES, make=lambda ps: oo.Muon(ps, lr=0.02), complex_rejected=True, single_tensor_path=False,
        bad=[(dict(adjust_lr_fn="fast"), "adjust_lr_fn"), (dict(ns_steps=100), "ns_steps"),
             (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"), (dict(momentum=-0.1), "momentum")]),
    Row("lion", oo.Lion, "package", [_lion], flat_tangents=True, variants=[
        dict(lr=1e-3),
        dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.5, maximize=True),
    ], state_keys=["exp_avg"], make=lambda ps: oo.Lion(ps, lr=1e-3, weight_decay=0.1), complex_rejected=True,
        bad=[(dict(lr=-1e-4), "lr"), (dict(betas=(0.9, 1.5)), "betas[1]"),
             (dict(weight_decay=float("nan")), "weight_decay")]),
    Row("schedulefree_adamw", oo.ScheduleFreeAdamW, "package", [
        _sf(schedulefree.AdamWScheduleFree), _sf(schedulefree.AdamWScheduleFreeReference)], [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, warmup_steps=20, betas=(0.8, 0.99), maximize=True),
        dict(lr=0.01, weight_decay=0.1, r=1.0, weight_lr_power=1.0),
    ], state_keys=["exp_avg_sq", "z"], group_keys=("k", "weight_sum", "lr_max", "scheduled_lr"),
        make=lambda ps: oo.ScheduleFreeAdamW(ps, lr=0.01, warmup_steps=3),
        bad=[(dict(betas=(0.0, 0.999)), "betas[0]"), (dict(warmup_steps=2.5), "warmup_steps")]),
    Row("schedulefree_sgd", oo.ScheduleFreeSGD, "package", [
        _sf(schedulefree.SGDScheduleFree), _sf(schedulefree.SGDScheduleFreeReference)], [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.8, weight_decay=0.1, warmup_steps=10, maximize=True),
    ], state_keys=["z"], group_keys=("k", "weight_sum", "lr_max", "scheduled_lr"),
        make=lambda ps: oo.ScheduleFreeSGD(ps, lr=0.1), complex_rejected=True,
        bad=[(dict(momentum=1.0), "momentum"), (dict(r=-1), "r")]),
    Row("lamb", oo.LAMB, "paper", [class_rule(oo.LAMB)], [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-8, maximize=True),
        dict(lr=0.01, weight_decay=0.01, bias_correction=False),
    ], make=lambda ps: oo.LAMB(ps, lr=0.01, weight_decay=0.01), complex_rejected=True,
        bad=[(dict(eps=0.0), "eps"), (dict(bias_correction="yes"), "bias_correction")]),
    Row("lars", oo.LARS, "paper", [class_rule(oo.LARS)], [
        dict(lr=1.0),
        dict(lr=2.0, weight_decay=1e-2, momentum=0.8, trust_coefficient=0.01, maximize=True),
        dict(lr=1.0, weight_decay=1e-3, exclude_1d=True),
        dict(lr=1.0, momentum=0.0),
    ], make=lambda ps: oo.LARS(ps, lr=1.0, weight_decay=1e-3),
        bad=[(dict(lr=1.0, trust_coefficient=0.0), "trust_coefficient"), (dict(lr=1.0, momentum=1.0), "momentum")]),
    Row("adopt", oo.ADOPT, "package", [_adopt], flat_tangents=True, variants=[
        dict(lr=1e-3),
        dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
        dict(lr=1e-2, weight_decay=0.05, eps=1e-3, clip_exponent=None),
    ], state_keys=["exp_avg", "exp_avg_sq"], per_group_step=True, rule=_adopt_rule, still_at_step_1=True,
        make=lambda ps: oo.ADOPT(ps, lr=1e-2, weight_decay=0.1), complex_rejected=True,
        bad=[(dict(betas=(0.9, 1.0)), "betas[1]"), (dict(eps=0.0), "eps"), (dict(lr=-1.0), "lr"),
             (dict(weight_decay=-0.1), "weight_decay"), (dict(clip_exponent=-1.0), "clip_exponent")]),
    # no oracle row: checked by hand below (Lookahead against the paper's loop; Muon + AdamW against torch's pair)
    Row("lookahead", oo.Lookahead, make=lambda ps: oo.Lookahead(oo.RAdam(ps, lr=0.01), k=3)),
    Row("muon_adamw", oo.MuonWithAuxAdamW, None, [], [  # its oracle: Muon + AdamW, tested by hand below
        dict(lr=0.02),
        dict(lr=0.02, nesterov=False, weight_decay=0.05, adamw_lr=3e-3, adamw_betas=(0.8, 0.99), amsgrad=True),
    ], shapes=[(4, 3), (5,), (3, 3), (2,)], make=lambda ps: oo.MuonWithAuxAdamW(ps, lr=0.02), documented=False),
]
BY_NAME = {row.name: row for row in ROWS}
# registered elsewhere-tested names: torch/Keras twins (tests/optim_cases.py) and SAM (tests/test_sam.py)
NOT_IN_TABLE = {"sam"}


def rows(oracle=None, **capability):
    return [r for r in ROWS if (oracle is None or r.oracle == oracle)
            and all(getattr(r, k) == v for k, v in capability.items())]


def variant_ids(oracle):
    return [(r.name, i) for r in rows(oracle) for i in range(len(r.variants))]


def oracle_grads(row, steps, dtype):
    """The shared gradient sequence; for an oracle that counts steps per group, None
    gradients become zero gradients (a step for every tensor of the group)."""
    seq = gradient_sequence(steps, row.shapes, dtype)
    if row.per_group_step:
        seq = [[torch.zeros(s, dtype=dtype) if g is None else g for g, s in zip(grads, row.shapes)] for grads in seq]
    return seq


def test_every_registered_optimizer_has_a_row():
    from tests.optim_cases import CASES

    missing = set(oo.available()) - set(BY_NAME) - set(CASES) - NOT_IN_TABLE
    assert not missing, f"registered optimizers without a row in ROWS: {sorted(missing)}"
    for row in ROWS:
        assert oo.get(row.name) is row.cls or issubclass(oo.get(row.name), row.cls), row.name


# ------------------------------------------------------------------ torch twins
TWIN_PARAMS = variant_ids("torch")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", TWIN_PARAMS, ids=[f"{n}-{i}" for n, i in TWIN_PARAMS])
def test_matches_torch_twin(name, variant, dtype):
    row = BY_NAME[name]
    ours_cls, torch_cls, shapes, hyper = row.cls, row.oracles[0], row.shapes, row.variants[variant]
    grads = gradient_sequence(STEPS, shapes, dtype)
    ps = make_params(dtype, shapes)
    ours = run(ours_cls(two_groups(ps, hyper), **hyper), ps, grads)
    impls = [{"foreach": False}, {"foreach": True}] if row.single_tensor_path else [{}]
    for impl in impls:
        qs = make_params(dtype, shapes)
        theirs = run(torch_cls(two_groups(qs, hyper), **hyper, **impl), qs, grads)
        assert_params_close(ps, qs, (row.tol or TOL)[dtype])
        assert_state_close(ours, theirs, (row.tol or TOL)[dtype])
        assert all(set(ours.state[p]) == set(theirs.state[q]) for p, q in zip(ps, qs))
    if row.single_tensor_path:  # our single-tensor path is the same rule, tensor by tensor
        rs = make_params(dtype, shapes)
        run(ours_cls(two_groups(rs, hyper), **hyper, foreach=False), rs, grads)
        assert_params_close(rs, ps, TOL[dtype])


@pytest.mark.parametrize("name", [r.name for r in rows("torch")])
def test_signature_and_defaults_are_torchs(name):
    ours_cls, torch_cls = BY_NAME[name].cls, BY_NAME[name].oracles[0]
    theirs = inspect.signature(torch_cls.__init__).parameters
    mine = inspect.signature(ours_cls.__init__).parameters
    for key, p in theirs.items():
        assert key in mine, key
        assert mine[key].default == p.default, key
        assert mine[key].kind == p.kind, key
    assert set(mine) - set(theirs) <= {"skip_nonfinite", "fused"}  # (optimlab's: fused=True, the single-pass kernel)


def test_complex_radam_follows_torch():
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(4, 3, dtype=torch.complex128, generator=gen)
    a, b = init.clone().requires_grad_(), init.clone().requires_grad_()
    oa, ob = oo.RAdam([a], lr=0.01, weight_decay=0.1), torch.optim.RAdam([b], lr=0.01, weight_decay=0.1)
    for _ in range(20):
        a.grad = torch.randn(4, 3, dtype=torch.complex128, generator=gen)
        b.grad = a.grad.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# --------------------------------------------------- package oracles (test-only)
PACKAGE_PARAMS = variant_ids("package")
# the package's reference classes store x and y; the fast forms (ours, the package's
# AdamWScheduleFree) recover x from y and z, so they agree to rounding, not bit for bit
REFERENCE_TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", PACKAGE_PARAMS, ids=[f"{n}-{i}" for n, i in PACKAGE_PARAMS])
def test_matches_package_oracle(name, variant, dtype):
    row = BY_NAME[name]
    ours_cls, oracles, hyper, keys = row.cls, row.oracles, row.variants[variant], row.state_keys
    grads = oracle_grads(row, STEPS, dtype)
    ps = row.params(dtype)
    ours = run(ours_cls(two_groups(ps, hyper), **hyper), ps, grads)
    for impl in [{"foreach": False}, {}]:
        rs = row.params(dtype)
        run(ours_cls(two_groups(rs, hyper), **hyper, **impl), rs, grads)
        assert_params_close(rs, ps, TOL[dtype])
    for i, make in enumerate(oracles):
        tol = (row.tol or TOL)[dtype] if i == 0 else REFERENCE_TOL[dtype]
        qs = row.params(dtype)
        theirs = run(make(two_groups(qs, hyper), hyper), qs, grads, negate=hyper.get("maximize", False))
        assert_params_close(ps, qs, tol)
        assert_state_close(ours, theirs, tol, keys)
        for g_ours, g_theirs in zip(ours.param_groups, theirs.param_groups):
            for key in row.group_keys:
                assert g_ours[key] == pytest.approx(g_theirs[key], rel=1e-12), key


@pytest.mark.parametrize("name", [r.name for r in ROWS if r.rule is not None])
def test_class_is_its_readable_rule(name):
    """The class against its module's plain per-tensor rule, float64, two groups, None gradients:
    its single-tensor path is that rule, bit for bit; its default (the kernel, whose square root
    is the C library's, not torch's MKL routine) within TOL."""
    row = BY_NAME[name]
    for hyper in row.variants:
        grads = gradient_sequence(40, row.shapes, torch.float64)
        for impl, tol in [({"foreach": False}, dict(rtol=0, atol=0)), ({}, TOL[torch.float64])]:
            ps = row.params(torch.float64)
            run(row.cls(two_groups(ps, hyper), **hyper, **impl), ps, grads, lr_change_at=20)
            theta = [p.detach().clone() for p in row.params(torch.float64)]
            run_reference(row.rule, theta, grads, group_hypers(hyper), lr_change_at=20)
            assert_params_close(ps, theta, tol)


@pytest.mark.parametrize("name", [r.name for r in ROWS if r.still_at_step_1])
def test_the_first_step_only_fills_the_state(name):
    """ADOPT-style: step 1 stores v = g² and leaves the parameters where they are (as the oracle)."""
    row = BY_NAME[name]
    hyper = {k: v for k, v in row.variants[0].items() if k != "weight_decay"}
    ps = row.params(torch.float64)
    before = [p.detach().clone() for p in ps]
    grads = gradient_sequence(2, row.shapes, torch.float64)
    grads = [[torch.ones(s, dtype=torch.float64) if g is None else g for g, s in zip(gs, row.shapes)] for gs in grads]
    opt = run(row.cls(ps, **hyper), ps, grads[:1], lr_change_at=None)
    assert_params_close(ps, before, dict(rtol=0, atol=0))
    for p, g in zip(ps, grads[0]):
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], g * g, rtol=0, atol=0)
    run(opt, ps, grads[1:], lr_change_at=None)
    assert all(not torch.equal(p, b) for p, b, g in zip(ps, before, grads[1]) if g.abs().sum() > 0)


@pytest.mark.parametrize("name", ["schedulefree_adamw", "schedulefree_sgd"])
def test_schedule_free_eval_gives_the_average_and_train_restores(name):
    ours_cls, oracles, variants = BY_NAME[name].cls, BY_NAME[name].oracles, BY_NAME[name].variants
    hyper = variants[-1]
    grads = gradient_sequence(40, SHAPES, torch.float64)
    ps, qs = make_params(torch.float64), make_params(torch.float64)
    ours = run(ours_cls(ps, **hyper), ps, grads, lr_change_at=None)
    reference = run(oracles[1](qs, hyper), qs, grads, negate=hyper.get("maximize", False), lr_change_at=None)
    y = [p.detach().clone() for p in ps]
    ours.eval()
    reference.eval()
    assert_params_close(ps, qs, REFERENCE_TOL[torch.float64])  # x, the average
    assert not torch.allclose(ps[2], y[2])
    with pytest.raises(RuntimeError, match="eval mode.*train"):
        ours.step()
    ours.eval()  # idempotent
    ours.train()
    assert_params_close(ps, y, REFERENCE_TOL[torch.float64])


def test_schedule_free_state_dict_loads_into_the_package_and_back():
    grads = gradient_sequence(30, SHAPES, torch.float64)
    ps, qs = make_params(torch.float64), make_params(torch.float64)
    ours = run(oo.ScheduleFreeAdamW(ps, lr=0.01, weight_decay=0.1), ps, grads[:15], lr_change_at=None)
    theirs = schedulefree.AdamWScheduleFree(qs, lr=0.01, weight_decay=0.1)
    with torch.no_grad():
        for p, q in zip(ps, qs):
            q.copy_(p)
    theirs.load_state_dict(copy.deepcopy({k: v for k, v in ours.state_dict().items() if k != "optimlab"}))
    theirs.param_groups[0]["foreach"] = True
    run(ours, ps, grads[15:], lr_change_at=None)
    run(theirs, qs, grads[15:], lr_change_at=None)
    assert_params_close(ps, qs, TOL[torch.float64])


# ------------------------------------------------------------- LAMB and LARS
PAPER_PARAMS = variant_ids("paper")
PAPER_TOL = {torch.float64: dict(rtol=1e-11, atol=1e-13), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def run_reference(rule, params, grads_seq, groups_hyper, lr_change_at=STEPS // 2):
    """The reference rule on each tensor; group ``i`` of ``groups_hyper`` holds tensors ``ids``."""
    states = [{} for _ in params]
    hypers = [dict(h) for _, h in groups_hyper]
    for t, grads in enumerate(grads_seq):
        if t == lr_change_at:
            for h in hypers:
                h["lr"] *= 0.3
        for (ids, _), h in zip(groups_hyper, hypers):
            h["group_step"] = t + 1
            for i in ids:
                if grads[i] is not None:
                    with torch.no_grad():
                        rule(params[i], grads[i], states[i], h)
    return states


def group_hypers(hyper):
    second = {**hyper, "lr": hyper["lr"] * 0.5}
    if "weight_decay" in hyper:
        second["weight_decay"] = 0.0
    return [(range(0, 2), hyper), (range(2, len(SHAPES)), second)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", PAPER_PARAMS, ids=[f"{n}-{i}" for n, i in PAPER_PARAMS])
def test_matches_the_papers_algorithm(name, variant, dtype):
    row = BY_NAME[name]
    ours_cls, rule, hyper = row.cls, row.oracles[0], row.variants[variant]
    grads = gradient_sequence(STEPS, SHAPES, dtype)
    ps = make_params(dtype)
    run(ours_cls(two_groups(ps, hyper), **hyper), ps, grads)
    theta = [p.detach().clone() for p in make_params(dtype)]
    run_reference(rule, theta, grads, group_hypers(hyper))
    assert_params_close(ps, theta, (row.tol or PAPER_TOL)[dtype])
    rs = make_params(dtype)
    run(ours_cls(two_groups(rs, hyper), **hyper, foreach=False), rs, grads)
    assert_params_close(rs, ps, TOL[dtype])


@pytest.mark.parametrize("hyper", [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))])
def test_lamb_reference_cross_checked_with_pytorch_optimizer(hyper):
    """pytorch-optimizer's Lamb is the paper's algorithm (``LAMB.rule``) with the departures
    ``ref.lamb_pytorch_optimizer`` transcribes, and they are real."""
    grads = gradient_sequence(STEPS, SHAPES, torch.float64)
    qs = make_params(torch.float64)
    theirs = pytorch_optimizer.Lamb(two_groups(qs, hyper), weight_decouple=False, **hyper)
    run(theirs, qs, grads)
    theta = [p.detach().clone() for p in make_params(torch.float64)]
    run_reference(ref.lamb_pytorch_optimizer, theta, grads, group_hypers(hyper))
    assert_params_close(qs, theta, PAPER_TOL[torch.float64])
    paper = [p.detach().clone() for p in make_params(torch.float64)]
    run_reference(class_rule(oo.LAMB), paper, grads, group_hypers(hyper))
    assert (paper[2] - theta[2]).abs().max() > 1e-3  # the departures are real


@pytest.mark.parametrize("hyper", [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), maximize=True)])
def test_the_lamb_class_is_pytorch_optimizers_lamb_with_its_departures_undone(hyper):
    """The library's LAMB against the independent package, directly (its row's oracle is the
    class's own rule). pytorch-optimizer's Lamb (``weight_decouple=False``) is the paper's
    update without bias corrections but for a step size γ/(1 − β1ᵗ), with ‖θ‖ clamped at 10
    and ε added to ‖r‖ in the trust ratio. Undone: our ``bias_correction=False`` with γ/(1 − β1ᵗ)
    written into the group at each step, the package's clamp lifted, and ε = 1e-12, so that
    ‖r‖ + ε is ‖r‖ to float64's precision."""
    hyper = {**hyper, "eps": 1e-12}
    beta1 = hyper.get("betas", (0.9, 0.999))[0]
    grads = gradient_sequence(STEPS, SHAPES, torch.float64)
    ps, qs = make_params(torch.float64), make_params(torch.float64)
    ours = oo.LAMB(two_groups(ps, hyper), **hyper, bias_correction=False)
    theirs = pytorch_optimizer.Lamb(two_groups(qs, hyper), weight_decouple=False, **hyper)
    theirs.clamp = math.inf
    rates = [group["lr"] for group in ours.param_groups]
    for t, step_grads in enumerate(grads, start=1):
        for group, rate in zip(ours.param_groups, rates):
            group["lr"] = rate / (1 - beta1**t)
        for p, q, g in zip(ps, qs, step_grads):
            p.grad = q.grad = None if g is None else g.clone()
        if any(g is None for g in step_grads):  # (the package counts steps per group: zeros instead)
            for p, q, g in zip(ps, qs, step_grads):
                if g is None:
                    p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
        ours.step()
        theirs.step()
    assert_params_close(ps, qs, dict(rtol=1e-9, atol=1e-12))


@pytest.mark.parametrize("hyper", [dict(lr=1.0, weight_decay=1e-2), dict(lr=0.5, momentum=0.5, trust_coefficient=0.02)])
def test_lars_reference_cross_checked_with_pytorch_optimizer(hyper):
    grads = gradient_sequence(STEPS, SHAPES, torch.float64)
    qs = make_params(torch.float64)
    run(pytorch_optimizer.LARS(two_groups(qs, hyper), **hyper), qs, grads)
    theta = [p.detach().clone() for p in make_params(torch.float64)]
    run_reference(ref.lars_pytorch_optimizer, theta, grads, group_hypers(hyper))
    assert_params_close(qs, theta, PAPER_TOL[torch.float64])
    # under a constant rate the package is the paper's rule with exclude_1d (b = v/γ)
    ps, qs = make_params(torch.float64), make_params(torch.float64)
    run(oo.LARS(two_groups(ps, hyper), **hyper, exclude_1d=True), ps, grads, lr_change_at=None)
    run(pytorch_optimizer.LARS(two_groups(qs, hyper), **hyper), qs, grads, lr_change_at=None)
    assert_params_close(ps, qs, PAPER_TOL[torch.float64])


# ------------------------------------------------------------------------ Lookahead
def test_lookahead_matches_the_papers_loop_and_pytorch_optimizer():
    grads = gradient_sequence(STEPS, SHAPES, torch.float64)
    ps = make_params(torch.float64)
    run(oo.Lookahead(oo.SGD(ps, lr=0.05, momentum=0.9), k=5, alpha=0.5), ps, grads, lr_change_at=None)
    expected = ref.lookahead_sgd([p.detach().clone() for p in make_params(torch.float64)], grads,
                                 lr=0.05, momentum=0.9, k=5, alpha=0.5)
    assert_params_close(ps, expected, TOL[torch.float64])
    qs = make_params(torch.float64)
    run(pytorch_optimizer.Lookahead(torch.optim.SGD(qs, lr=0.05, momentum=0.9), k=5, alpha=0.5), qs, grads,
        lr_change_at=None)
    assert_params_close(ps, qs, TOL[torch.float64])


def test_lookahead_state_dict_resumes_exactly_and_schedulers_drive_the_inner_rate():
    grads = gradient_sequence(40, SHAPES, torch.float64)

    def make(params):
        opt = oo.Lookahead(oo.Adam(two_groups(params, dict(lr=0.01)), lr=0.01), k=6, alpha=0.8)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)

    ps = make_params(torch.float64)
    opt, sched = make(ps)
    for t, g in enumerate(grads):
        if t == 17:
            saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), sched.state_dict()
            saved_params = [p.detach().clone() for p in ps]
        for p, gi in zip(ps, g):
            p.grad = gi
        opt.step()
        sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**4)
    assert set(saved_opt) >= {"state", "param_groups", "lookahead"} and saved_opt["lookahead"]["slow"]
    qs = [p.clone().requires_grad_() for p in saved_params]
    opt2, sched2 = make(qs)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    for g in grads[17:]:
        for q, gi in zip(qs, g):
            q.grad = gi
        opt2.step()
        sched2.step()
    assert_params_close(qs, ps, dict(rtol=0, atol=0))
    bad = copy.deepcopy(saved_opt)
    bad["lookahead"]["slow"][0] = torch.zeros(9)
    with pytest.raises(ValueError, match="slow weight 0 has shape"):
        opt2.load_state_dict(bad)
    with pytest.raises(ValueError, match="not saved by a Lookahead"):
        opt2.load_state_dict(opt2.optimizer.state_dict())


def test_lookahead_validates_and_skips_what_the_inner_optimizer_skipped():
    p = torch.zeros(3, requires_grad=True)
    for bad, msg in [(dict(k=0), "k must be"), (dict(alpha=1.5), "alpha"), (dict(alpha=0.0), "alpha")]:
        with pytest.raises(ValueError, match=msg):
            oo.Lookahead(oo.SGD([p], lr=0.1), **bad)
    with pytest.raises(ValueError, match="wraps a torch.optim.Optimizer"):
        oo.Lookahead([p])
    opt = oo.Lookahead(oo.SGD([p], lr=0.1, skip_nonfinite=True), k=2)
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    opt.step()
    assert opt.fast_steps == 0 and torch.equal(p, torch.zeros(3))


# ----------------------------------------------------------------------------- Muon
class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.body = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 6, bias=False))
        self.head = nn.Linear(6, 11)

    def forward(self, tokens):
        return self.head(self.body(self.embed(tokens)))


def test_muon_param_groups_split_hidden_weights_from_embeddings_heads_and_biases():
    model = TinyLM().double()
    muon_group, adamw_group = oo.muon_param_groups(model, muon=dict(lr=0.02), adamw=dict(lr=3e-3))
    assert muon_group["use_muon"] and not adamw_group["use_muon"] and muon_group["lr"] == 0.02
    assert {id(p) for p in muon_group["params"]} == {id(model.body[0].weight), id(model.body[3].weight)}
    assert len(adamw_group["params"]) == len(list(model.parameters())) - 2
    only_first = oo.muon_param_groups(model, exclude=["body.3"])[0]["params"]
    assert [id(p) for p in only_first] == [id(model.body[0].weight)]


def test_muon_with_aux_adamw_equals_torch_muon_plus_torch_adamw_on_a_model():
    torch.manual_seed(0)
    model = TinyLM().double()
    twin = copy.deepcopy(model)
    opt = oo.MuonWithAuxAdamW(oo.muon_param_groups(model, muon=dict(lr=0.02), adamw=dict(lr=3e-3)))
    tm, ta = oo.muon_param_groups(twin)
    t_muon = torch.optim.Muon(tm["params"], lr=0.02)
    t_adamw = torch.optim.AdamW(ta["params"], lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=60) for o in (t_muon, t_adamw)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        tokens = torch.randint(0, 11, (4, 5), generator=gen)
        for m in (model, twin):
            m.zero_grad()
            m(tokens).logsumexp(-1).mean().backward()
        for o in (opt, t_muon, t_adamw, sched, *scheds):
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    state = opt.state_dict()
    again = oo.MuonWithAuxAdamW(oo.muon_param_groups(model))
    again.load_state_dict(state)
    assert again.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_muon_with_aux_adamw_splits_plain_tensors_by_shape():
    ps = make_params(torch.float64, SHAPES + [(4, 4)])
    opt = oo.create("muon_adamw", ps, lr=0.02, adamw_lr=1e-3)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    assert [p.dim() for p in opt.param_groups[0]["params"]] == [2, 2]
    assert opt.param_groups[1]["lr"] == 1e-3 and opt.param_groups[1]["eps"] == 1e-8
    with pytest.raises(ValueError, match="use_muon"):
        opt.add_param_group({"params": [torch.zeros(2, 2, requires_grad=True)]})
    with pytest.raises(ValueError, match=r"2-D weight matrices only.*shape \(3,\)"):
        oo.MuonWithAuxAdamW([{"params": [torch.zeros(3, requires_grad=True)], "use_muon": True}])


def test_newton_schulz_orthogonalises():
    from optimlab.optim._rules_modern import newton_schulz

    g = torch.randn(32, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = torch.linalg.svdvals(newton_schulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).double())
    assert 0.5 < s.min() and s.max() < 1.3  # Jordan's quintic: singular values near 1, not exactly 1


# --------------------------------------------------------------------------- Adafactor
def test_adafactor_state_is_sublinear_in_the_matrix_size():
    for shape in [(256, 512), (8, 64, 32)]:
        p = torch.zeros(shape, requires_grad=True)
        opt = oo.Adafactor([p])
        p.grad = torch.randn(shape)
        opt.step()
        numel = sum(t.numel() for t in opt.state[p].values())
        rows, cols = shape[-2:]
        lead = p.numel() // (rows * cols)
        assert numel == lead * (rows + cols) + 1  # + the step counter
        assert numel < p.numel() / 20
    v = torch.zeros(100, requires_grad=True)
    opt = oo.Adafactor([v])
    v.grad = torch.randn(100)
    opt.step()
    assert opt.state[v]["variance"].shape == (100,)  # vectors: one full second moment


def test_adafactor_state_dict_checks_factored_shapes():
    p = torch.zeros(4, 6, requires_grad=True)
    opt = oo.Adafactor([p])
    p.grad = torch.ones(4, 6)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    fresh = oo.Adafactor([torch.zeros(4, 6, requires_grad=True)])
    fresh.load_state_dict(sd)
    sd["state"][0]["row_var"] = torch.zeros(6, 1)
    with pytest.raises(ValueError, match=r"row_var.*\(6, 1\).*needs \(4, 1\)"):
        fresh.load_state_dict(sd)


# --------------------------------------------------------------- common contract
def _hidden_weights():
    return [torch.randn(4, 3, dtype=torch.float64).requires_grad_(), torch.randn(3, 3, dtype=torch.float64).requires_grad_()]


@pytest.mark.parametrize("name", [r.name for r in ROWS if r.make is not None])
def test_state_dict_round_trip_resumes_bit_for_bit(name):
    def params():
        base = _hidden_weights() if BY_NAME[name].shapes == MATRICES else make_params(torch.float64)
        return [p.detach().clone().requires_grad_() for p in base]

    grads = gradient_sequence(20, [tuple(p.shape) for p in params()], torch.float64)
    ps = params()
    opt = BY_NAME[name].make(ps)
    run(opt, ps, grads[:10], lr_change_at=None)
    saved, saved_params = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in ps]
    run(opt, ps, grads[10:], lr_change_at=None)
    qs = [p.clone().requires_grad_() for p in saved_params]
    opt2 = BY_NAME[name].make(qs)
    opt2.load_state_dict(saved)
    run(opt2, qs, grads[10:], lr_change_at=None)
    assert_params_close(qs, ps, dict(rtol=0, atol=0))
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("cls", [r.cls for r in ROWS if issubclass(r.cls, oo.Optimizer)],
                         ids=[r.name for r in ROWS if issubclass(r.cls, oo.Optimizer)])
def test_unknown_keyword_is_rejected_with_a_suggestion(cls):
    with pytest.raises(oo.UnknownArgumentError, match="'lrr'.*did you mean 'lr'"):
        cls([torch.zeros(2, 2, requires_grad=True)], lrr=0.1)


BAD = [(r.cls, hyper, name) for r in ROWS for hyper, name in r.bad]


@pytest.mark.parametrize("cls,hyper,name", BAD, ids=[f"{c.__name__}-{n}" for c, _, n in BAD])
def test_invalid_hyperparameter_names_parameter_and_value(cls, hyper, name):
    with pytest.raises(ValueError) as err:
        cls([torch.zeros(2, 2, requires_grad=True)], **hyper)
    bad = next(iter(v for k, v in hyper.items() if k != "lr" or cls is not oo.LARS))
    assert name in str(err.value) and (repr(bad) in str(err.value) or str(bad) in str(err.value))


@pytest.mark.parametrize("cls", [r.cls for r in rows(complex_rejected=True)])
def test_complex_parameters_are_rejected_up_front(cls):
    with pytest.raises(ValueError, match="complex"):
        cls([torch.zeros(2, 2, dtype=torch.complex64, requires_grad=True)])


def test_registry_and_docstrings():
    for row in ROWS:
        obj = oo.get(row.name)
        doc = obj.__doc__ or ""
        assert "When to choose" in doc or "Lookahead" in doc, row.name
    for cls in [r.cls for r in rows(documented=True)]:
        # the source: a paper's year (19xx or 20xx) in the docstring
        assert "When to choose it" in cls.__doc__ and re.search(r"\b(19|20)\d\d\b", cls.__doc__), cls
    ranger = oo.create("lookahead", make_params(torch.float64), base="radam", lr=0.01, k=4)
    assert isinstance(ranger.optimizer, oo.RAdam) and ranger.k == 4


def test_adopt_without_its_kernel_says_it_runs_its_rule_per_tensor():
    """ADOPT has no multi-tensor rule: ``foreach=True``, ``fused=False`` and ``foreach=False``
    all run ``adopt_rule`` one tensor at a time, and ``path_for`` says so, not "foreach"."""
    for impl in (dict(foreach=True), dict(fused=False), dict(foreach=False), dict()):
        p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        opt = oo.ADOPT([p], **impl)
        p.grad = torch.randn(4, 3, dtype=torch.float64)
        opt.step()
        assert opt.path_for(0) == ("fused" if not impl else "single-tensor"), impl
