"""The optimizers after Adam, each against an independent oracle, step for step.

Oracles: torch.optim (RAdam, Adafactor, Muon), lion-pytorch (Lion), the schedulefree
package's fast and reference classes (Schedule-Free), the papers' algorithms in
tests/reference/modern.py (LAMB, LARS, Lookahead), themselves cross-checked against
pytorch-optimizer. Every run: 120 steps, scalars to 4-D tensors, two param groups, weight
decay on and off, the learning rate cut mid-run, zero and None gradients, float32 and float64.
"""

from __future__ import annotations

import copy
import inspect

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


# ------------------------------------------------------------------ torch twins
# name -> (ours, torch's, shapes, variants); torch's keyword arguments are ours.
TWINS = {
    "radam": (oo.RAdam, torch.optim.RAdam, SHAPES, [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), maximize=True),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.9, 0.9)),  # rectified from step 2
    ]),
    "adafactor": (oo.Adafactor, torch.optim.Adafactor, SHAPES + [(6, 5)], [
        dict(lr=0.01),
        dict(lr=0.05, weight_decay=0.1, beta2_decay=-0.5, eps=(1e-30, 1e-3), d=2.0, maximize=True),
    ]),
    "muon": (oo.Muon, torch.optim.Muon, MATRICES, [
        dict(lr=0.02),
        dict(lr=0.02, weight_decay=0.0, nesterov=False, momentum=0.9, adjust_lr_fn="match_rms_adamw"),
        dict(lr=0.02, ns_steps=3, adjust_lr_fn="original", weight_decay=0.05),
    ]),
}
TWIN_PARAMS = [(n, i) for n, c in TWINS.items() for i in range(len(c[3]))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", TWIN_PARAMS, ids=[f"{n}-{i}" for n, i in TWIN_PARAMS])
def test_matches_torch_twin(name, variant, dtype):
    ours_cls, torch_cls, shapes, variants = TWINS[name]
    hyper = variants[variant]
    grads = gradient_sequence(STEPS, shapes, dtype)
    ps = make_params(dtype, shapes)
    ours = run(ours_cls(two_groups(ps, hyper), **hyper), ps, grads)
    impls = [{}] if name == "muon" else [{"foreach": False}, {"foreach": True}]
    for impl in impls:
        qs = make_params(dtype, shapes)
        theirs = run(torch_cls(two_groups(qs, hyper), **hyper, **impl), qs, grads)
        assert_params_close(ps, qs, TOL[dtype])
        assert_state_close(ours, theirs, TOL[dtype])
        assert all(set(ours.state[p]) == set(theirs.state[q]) for p, q in zip(ps, qs))
    if name != "muon":  # our single-tensor path is the same rule, tensor by tensor
        rs = make_params(dtype, shapes)
        run(ours_cls(two_groups(rs, hyper), **hyper, foreach=False), rs, grads)
        assert_params_close(rs, ps, TOL[dtype])


@pytest.mark.parametrize("name", list(TWINS))
def test_signature_and_defaults_are_torchs(name):
    ours_cls, torch_cls = TWINS[name][:2]
    theirs = inspect.signature(torch_cls.__init__).parameters
    mine = inspect.signature(ours_cls.__init__).parameters
    for key, p in theirs.items():
        assert key in mine, key
        assert mine[key].default == p.default, key
        assert mine[key].kind == p.kind, key
    assert set(mine) - set(theirs) <= {"skip_nonfinite"}


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
def _lion(params, hyper):
    return lion_pytorch.Lion(params, lr=hyper["lr"], betas=hyper.get("betas", (0.9, 0.99)),
                             weight_decay=hyper.get("weight_decay", 0.0))


def _sf(cls):
    def make(params, hyper):
        opt = cls(params, **{k: v for k, v in hyper.items() if k != "maximize"})
        opt.train()
        return opt
    return make


# name -> (ours, [oracle factories], variants, state keys compared)
PACKAGES = {
    "lion": (oo.Lion, [_lion], [
        dict(lr=1e-3),
        dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.5, maximize=True),
    ], ["exp_avg"]),
    "schedulefree_adamw": (oo.ScheduleFreeAdamW, [
        _sf(schedulefree.AdamWScheduleFree), _sf(schedulefree.AdamWScheduleFreeReference)], [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, warmup_steps=20, betas=(0.8, 0.99), maximize=True),
        dict(lr=0.01, weight_decay=0.1, r=1.0, weight_lr_power=1.0),
    ], ["exp_avg_sq", "z"]),
    "schedulefree_sgd": (oo.ScheduleFreeSGD, [
        _sf(schedulefree.SGDScheduleFree), _sf(schedulefree.SGDScheduleFreeReference)], [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.8, weight_decay=0.1, warmup_steps=10, maximize=True),
    ], ["z"]),
}
PACKAGE_PARAMS = [(n, i) for n, c in PACKAGES.items() for i in range(len(c[2]))]
# the package's reference classes store x and y; the fast forms (ours, the package's
# AdamWScheduleFree) recover x from y and z, so they agree to rounding, not bit for bit
REFERENCE_TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", PACKAGE_PARAMS, ids=[f"{n}-{i}" for n, i in PACKAGE_PARAMS])
def test_matches_package_oracle(name, variant, dtype):
    ours_cls, oracles, variants, keys = PACKAGES[name]
    hyper = variants[variant]
    grads = gradient_sequence(STEPS, SHAPES, dtype)
    ps = make_params(dtype)
    ours = run(ours_cls(two_groups(ps, hyper), **hyper), ps, grads)
    for impl in [{"foreach": False}, {}]:
        rs = make_params(dtype)
        run(ours_cls(two_groups(rs, hyper), **hyper, **impl), rs, grads)
        assert_params_close(rs, ps, TOL[dtype])
    for i, make in enumerate(oracles):
        tol = TOL[dtype] if i == 0 else REFERENCE_TOL[dtype]
        qs = make_params(dtype)
        theirs = run(make(two_groups(qs, hyper), hyper), qs, grads, negate=hyper.get("maximize", False))
        assert_params_close(ps, qs, tol)
        assert_state_close(ours, theirs, tol, keys)
        if name.startswith("schedulefree"):
            for g_ours, g_theirs in zip(ours.param_groups, theirs.param_groups):
                for key in ("k", "weight_sum", "lr_max", "scheduled_lr"):
                    assert g_ours[key] == pytest.approx(g_theirs[key], rel=1e-12), key


@pytest.mark.parametrize("name", ["schedulefree_adamw", "schedulefree_sgd"])
def test_schedule_free_eval_gives_the_average_and_train_restores(name):
    ours_cls, oracles, variants, _ = PACKAGES[name]
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
PAPER = {
    "lamb": (oo.LAMB, ref.lamb, [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-8, maximize=True),
        dict(lr=0.01, weight_decay=0.01, bias_correction=False),
    ]),
    "lars": (oo.LARS, ref.lars, [
        dict(lr=1.0),
        dict(lr=2.0, weight_decay=1e-2, momentum=0.8, trust_coefficient=0.01, maximize=True),
        dict(lr=1.0, weight_decay=1e-3, exclude_1d=True),
        dict(lr=1.0, momentum=0.0),
    ]),
}
PAPER_PARAMS = [(n, i) for n, c in PAPER.items() for i in range(len(c[2]))]
PAPER_TOL = {torch.float64: dict(rtol=1e-11, atol=1e-13), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def run_reference(rule, params, grads_seq, groups_hyper, variant="paper", lr_change_at=STEPS // 2):
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
                        rule(params[i], grads[i], states[i], h, variant=variant)
    return states


def group_hypers(hyper):
    second = {**hyper, "lr": hyper["lr"] * 0.5}
    if "weight_decay" in hyper:
        second["weight_decay"] = 0.0
    return [(range(0, 2), hyper), (range(2, len(SHAPES)), second)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,variant", PAPER_PARAMS, ids=[f"{n}-{i}" for n, i in PAPER_PARAMS])
def test_matches_the_papers_algorithm(name, variant, dtype):
    ours_cls, rule, variants = PAPER[name]
    hyper = variants[variant]
    grads = gradient_sequence(STEPS, SHAPES, dtype)
    ps = make_params(dtype)
    run(ours_cls(two_groups(ps, hyper), **hyper), ps, grads)
    theta = [p.detach().clone() for p in make_params(dtype)]
    run_reference(rule, theta, grads, group_hypers(hyper))
    assert_params_close(ps, theta, PAPER_TOL[dtype])
    rs = make_params(dtype)
    run(ours_cls(two_groups(rs, hyper), **hyper, foreach=False), rs, grads)
    assert_params_close(rs, ps, TOL[dtype])


@pytest.mark.parametrize("hyper", [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))])
def test_lamb_reference_cross_checked_with_pytorch_optimizer(hyper):
    grads = gradient_sequence(STEPS, SHAPES, torch.float64)
    qs = make_params(torch.float64)
    theirs = pytorch_optimizer.Lamb(two_groups(qs, hyper), weight_decouple=False, **hyper)
    run(theirs, qs, grads)
    theta = [p.detach().clone() for p in make_params(torch.float64)]
    run_reference(ref.lamb, theta, grads, group_hypers(hyper), variant="pytorch_optimizer")
    assert_params_close(qs, theta, PAPER_TOL[torch.float64])
    paper = [p.detach().clone() for p in make_params(torch.float64)]
    run_reference(ref.lamb, paper, grads, group_hypers(hyper))
    assert (paper[2] - theta[2]).abs().max() > 1e-3  # the departures are real


@pytest.mark.parametrize("hyper", [dict(lr=1.0, weight_decay=1e-2), dict(lr=0.5, momentum=0.5, trust_coefficient=0.02)])
def test_lars_reference_cross_checked_with_pytorch_optimizer(hyper):
    grads = gradient_sequence(STEPS, SHAPES, torch.float64)
    qs = make_params(torch.float64)
    run(pytorch_optimizer.LARS(two_groups(qs, hyper), **hyper), qs, grads)
    theta = [p.detach().clone() for p in make_params(torch.float64)]
    run_reference(ref.lars, theta, grads, group_hypers(hyper), variant="pytorch_optimizer")
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


FACTORIES = {
    "radam": lambda ps: oo.RAdam(ps, lr=0.01, weight_decay=0.1),
    "lion": lambda ps: oo.Lion(ps, lr=1e-3, weight_decay=0.1),
    "lamb": lambda ps: oo.LAMB(ps, lr=0.01, weight_decay=0.01),
    "lars": lambda ps: oo.LARS(ps, lr=1.0, weight_decay=1e-3),
    "adafactor": lambda ps: oo.Adafactor(ps, weight_decay=0.01),
    "muon": lambda ps: oo.Muon(ps, lr=0.02),
    "schedulefree_adamw": lambda ps: oo.ScheduleFreeAdamW(ps, lr=0.01, warmup_steps=3),
    "schedulefree_sgd": lambda ps: oo.ScheduleFreeSGD(ps, lr=0.1),
    "lookahead": lambda ps: oo.Lookahead(oo.RAdam(ps, lr=0.01), k=3),
    "muon_adamw": lambda ps: oo.MuonWithAuxAdamW(ps, lr=0.02),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip_resumes_bit_for_bit(name):
    def params():
        base = _hidden_weights() if name == "muon" else make_params(torch.float64)
        return [p.detach().clone().requires_grad_() for p in base]

    grads = gradient_sequence(20, [tuple(p.shape) for p in params()], torch.float64)
    ps = params()
    opt = FACTORIES[name](ps)
    run(opt, ps, grads[:10], lr_change_at=None)
    saved, saved_params = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in ps]
    run(opt, ps, grads[10:], lr_change_at=None)
    qs = [p.clone().requires_grad_() for p in saved_params]
    opt2 = FACTORIES[name](qs)
    opt2.load_state_dict(saved)
    run(opt2, qs, grads[10:], lr_change_at=None)
    assert_params_close(qs, ps, dict(rtol=0, atol=0))
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("cls", [oo.RAdam, oo.Lion, oo.LAMB, oo.Adafactor, oo.Muon, oo.ScheduleFreeAdamW,
                                 oo.ScheduleFreeSGD, oo.MuonWithAuxAdamW])
def test_unknown_keyword_is_rejected_with_a_suggestion(cls):
    with pytest.raises(oo.UnknownArgumentError, match="'lrr'.*did you mean 'lr'"):
        cls([torch.zeros(2, 2, requires_grad=True)], lrr=0.1)


BAD = [
    (oo.RAdam, dict(betas=(1.0, 0.9)), "betas[0]"), (oo.RAdam, dict(eps=-1.0), "eps"),
    (oo.Lion, dict(lr=-1e-4), "lr"), (oo.Lion, dict(betas=(0.9, 1.5)), "betas[1]"),
    (oo.Lion, dict(weight_decay=float("nan")), "weight_decay"),
    (oo.LAMB, dict(eps=0.0), "eps"), (oo.LAMB, dict(bias_correction="yes"), "bias_correction"),
    (oo.LARS, dict(lr=1.0, trust_coefficient=0.0), "trust_coefficient"),
    (oo.LARS, dict(lr=1.0, momentum=1.0), "momentum"),
    (oo.Adafactor, dict(beta2_decay=0.5), "beta2_decay"), (oo.Adafactor, dict(d=0.5), "d"),
    (oo.Adafactor, dict(eps=(None, -1.0)), "eps[1]"), (oo.Adafactor, dict(eps=1e-3), "eps"),
    (oo.Muon, dict(adjust_lr_fn="fast"), "adjust_lr_fn"), (oo.Muon, dict(ns_steps=100), "ns_steps"),
    (oo.Muon, dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"), (oo.Muon, dict(momentum=-0.1), "momentum"),
    (oo.ScheduleFreeAdamW, dict(betas=(0.0, 0.999)), "betas[0]"),
    (oo.ScheduleFreeAdamW, dict(warmup_steps=2.5), "warmup_steps"),
    (oo.ScheduleFreeSGD, dict(momentum=1.0), "momentum"), (oo.ScheduleFreeSGD, dict(r=-1), "r"),
]


@pytest.mark.parametrize("cls,hyper,name", BAD, ids=[f"{c.__name__}-{n}" for c, _, n in BAD])
def test_invalid_hyperparameter_names_parameter_and_value(cls, hyper, name):
    with pytest.raises(ValueError) as err:
        cls([torch.zeros(2, 2, requires_grad=True)], **hyper)
    bad = next(iter(v for k, v in hyper.items() if k != "lr" or cls is not oo.LARS))
    assert name in str(err.value) and (repr(bad) in str(err.value) or str(bad) in str(err.value))


@pytest.mark.parametrize("cls", [oo.Lion, oo.LAMB, oo.Adafactor, oo.Muon, oo.ScheduleFreeSGD])
def test_complex_parameters_are_rejected_up_front(cls):
    with pytest.raises(ValueError, match="complex"):
        cls([torch.zeros(2, 2, dtype=torch.complex64, requires_grad=True)])


def test_registry_and_docstrings():
    for name in FACTORIES:
        obj = oo.get(name)
        doc = obj.__doc__ or ""
        assert "When to choose" in doc or "Lookahead" in doc, name
    for cls in [oo.RAdam, oo.Lion, oo.LAMB, oo.LARS, oo.Adafactor, oo.Muon, oo.ScheduleFreeAdamW,
                oo.ScheduleFreeSGD, oo.Lookahead]:
        assert "When to choose it" in cls.__doc__ and any(y in cls.__doc__ for y in ("2017", "2018", "2019", "2020",
                                                                                      "2023", "2024")), cls
    ranger = oo.create("lookahead", make_params(torch.float64), base="radam", lr=0.01, k=4)
    assert isinstance(ranger.optimizer, oo.RAdam) and ranger.k == 4
