"""optimlab.optim.param_groups: which parameters are decayed, and that every optimizer takes the groups."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import optimlab.optim as oo
from optimlab.optim import param_groups

F64 = torch.float64


class ScaleNorm(nn.Module):
    """A user's own normalisation layer with a 2-D gain: exempt by its class name."""

    def __init__(self, shape):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(shape))

    def forward(self, x):
        return self.gain * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.pos = nn.Parameter(torch.randn(1, 4, 6) * 0.1)  # 3-D: decayed unless no_decay says so
        self.ln = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 6)
        self.rms = nn.RMSNorm(6)
        self.scale = ScaleNorm((4, 6))
        self.shared_a = nn.Linear(6, 6)
        self.shared_b = self.shared_a  # one module under two names
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight  # tied to the embedding (a GPT's output head)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.ln3 = nn.LayerNorm((3, 2))  # a 2-D norm weight: exempt by type, not by shape

    def forward(self, tokens, img):
        h = self.ln(self.emb(tokens) + self.pos)
        h = self.scale(self.rms(self.fc(h)))
        h = self.frozen(self.shared_b(torch.tanh(self.shared_a(h))))
        c = self.bn(self.conv(img))  # (B, 3, 4, 4)
        c = self.ln3(c[..., :2].mean(dim=2))  # (B, 3, 2)
        return self.head(h).square().mean() + c.square().mean()


DECAY = ["pos", "fc.weight", "shared_a.weight", "conv.weight"]
NO_DECAY = ["emb.weight", "ln.weight", "ln.bias", "fc.bias", "rms.weight", "scale.gain", "shared_a.bias",
            "conv.bias", "bn.weight", "bn.bias", "ln3.weight", "ln3.bias"]


def net(seed=0, dtype=F64):
    torch.manual_seed(seed)
    return Net().to(dtype)


def batch(seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10, (5, 4), generator=g), torch.randn(5, 1, 6, 6, generator=g, dtype=dtype)


def names_of(groups):
    return [g["param_names"] for g in groups]


def test_which_names_land_in_which_group():
    model = net()
    groups = param_groups(model, weight_decay=0.1)
    assert names_of(groups) == [DECAY, NO_DECAY]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    by_name = dict(model.named_parameters())
    for group in groups:
        assert group["params"] == [by_name[n] for n in group["param_names"]]
        assert set(group) == {"params", "param_names", "weight_decay"}
    # the tied head and the shared module's second name appear nowhere; the frozen layer neither
    every = [n for g in groups for n in g["param_names"]]
    assert len(every) == len(set(every)) == len(DECAY) + len(NO_DECAY)
    assert not any(n.startswith(("head.", "shared_b.", "frozen.")) for n in every)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))


def test_no_decay_patterns_substrings_and_globs():
    model = net()
    assert names_of(param_groups(model, 0.1, no_decay=["pos"]))[0] == ["fc.weight", "shared_a.weight",
                                                                         "conv.weight"]
    assert names_of(param_groups(model, 0.1, no_decay=["*.weight"])) == [["pos"], NO_DECAY[:1] + [
        "ln.weight", "ln.bias", "fc.weight", "fc.bias", "rms.weight", "scale.gain", "shared_a.weight",
        "shared_a.bias", "conv.weight", "conv.bias", "bn.weight", "bn.bias", "ln3.weight", "ln3.bias"]]
    # a glob matches the whole name; a substring anywhere ("fc" is also in no other name)
    assert names_of(param_groups(model, 0.1, no_decay=["c?nv.*"]))[0] == ["pos", "fc.weight", "shared_a.weight"]
    # a pattern matching a shared module's second name exempts the tensor (listed under its first)
    assert names_of(param_groups(model, 0.1, no_decay=["shared_b"]))[0] == ["pos", "fc.weight", "conv.weight"]
    # patterns are case-sensitive
    with pytest.raises(ValueError, match=r"no_decay pattern\(s\) \['POS'\] match no parameter name"):
        param_groups(model, 0.1, no_decay=["POS"])


def test_empty_groups_are_left_out_and_names_can_be_dropped():
    only_norms = nn.Sequential(nn.LayerNorm(4), nn.BatchNorm1d(4))
    groups = param_groups(only_norms, weight_decay=0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    lin = nn.Linear(3, 3, bias=False)
    assert [g["weight_decay"] for g in param_groups(lin, 0.2)] == [0.2]
    plain = param_groups(net(), 0.1, names=False)
    assert all(set(g) == {"params", "weight_decay"} for g in plain)


def _loss_step(model, opt, seed=1):
    tokens, img = batch(seed)
    opt.zero_grad()
    loss = model(tokens, img)
    loss.backward()
    return loss


# optimlab's foreach path and torch's: bit for bit; optimlab's default (torch's fused kernel):
# to test_fused.py's float32 tolerance
@pytest.mark.parametrize("opt_cls,extra,tol", [(oo.AdamW, dict(foreach=True), dict(rtol=0, atol=0)),
                                              (oo.AdamW, dict(), dict(rtol=1e-5, atol=1e-6)),
                                              (torch.optim.AdamW, dict(), dict(rtol=0, atol=0))],
                         ids=["AdamW-foreach", "AdamW-default", "torch-AdamW"])
def test_adamw_on_the_groups_equals_torch_adamw_on_groups_built_by_hand(opt_cls, extra, tol):
    ours, theirs = net(), net()
    opt = opt_cls(param_groups(ours, weight_decay=0.1), lr=0.01, **extra)
    named = dict(theirs.named_parameters())
    by_hand = [{"params": [named[n] for n in DECAY], "weight_decay": 0.1},
               {"params": [named[n] for n in NO_DECAY], "weight_decay": 0.0}]
    ref = torch.optim.AdamW(by_hand, lr=0.01)
    for step in range(3):
        for model, o in ((ours, opt), (theirs, ref)):
            _loss_step(model, o, seed=step)
            o.step()
    for (n, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(a, b, **tol, msg=n)
    if opt_cls is torch.optim.AdamW:  # torch keeps the names in its state_dict
        assert opt.state_dict()["param_groups"][0]["param_names"] == DECAY


def _build(name, convention, groups):
    if convention == "keras":
        return oo.create(name, groups, "keras", learning_rate=0.01)
    return oo.create(name, groups, lr=0.01)


def _one_step(name, convention, wd):
    model = net()
    opt = _build(name, convention, param_groups(model, weight_decay=wd))
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):  # a second step only if the first moved nothing (ADOPT's initialises v)
        loss = _loss_step(model, opt)
        if getattr(opt, "requires_closure", False):
            opt.step(lambda: _loss_step(model, opt))
        else:
            opt.step()
        assert torch.isfinite(loss)
        if any(not torch.equal(a, p) for a, p in zip(start, model.parameters())):
            break
    named = dict(model.named_parameters())
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert {n: decay_of[id(named[n])] for n in DECAY + NO_DECAY} == {**dict.fromkeys(DECAY, wd),
                                                                       **dict.fromkeys(NO_DECAY, 0.0)}
    return named


REGISTERED = [("torch", n) for n in oo.available("torch")] + [("keras", n) for n in oo.available("keras")]


@pytest.mark.parametrize("convention,name", REGISTERED, ids=[f"{c}-{n}" for c, n in REGISTERED])
def test_every_registered_optimizer_takes_the_groups_and_decays_only_the_first(convention, name):
    if name == "muon":  # Muon proper orthogonalises matrices only and says where the rest goes
        with pytest.raises(ValueError, match="muon_param_groups"):
            _build(name, convention, param_groups(net(), 0.1))
        return
    with_decay, without = _one_step(name, convention, 0.5), _one_step(name, convention, 0.0)
    for n in NO_DECAY:
        assert torch.equal(with_decay[n], without[n]), f"{convention} {name}: {n} was decayed"
    assert any(not torch.equal(with_decay[n], without[n]) for n in DECAY), f"{convention} {name}: no decay"


def test_keras_adamw_takes_the_no_decay_group():
    model = net()
    opt = oo.create("adamw", param_groups(model, weight_decay=0.004), "keras", learning_rate=0.001)
    _loss_step(model, opt)
    opt.step()
    assert [g["weight_decay"] for g in opt.param_groups] == [0.004, 0.0]


def test_state_dict_round_trip_with_named_groups():
    model = net()
    opt = oo.AdamW(param_groups(model, weight_decay=0.1), lr=0.01)
    _loss_step(model, opt)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert [g["param_names"] for g in saved["param_groups"]] == [DECAY, NO_DECAY]
    model2 = net()
    opt2 = oo.AdamW(param_groups(model2, weight_decay=0.1), lr=0.01)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[1]["param_names"] == NO_DECAY and opt2.param_groups[1]["weight_decay"] == 0.0


def test_sam_on_the_groups():
    model = net()
    opt = oo.SAM(param_groups(model, weight_decay=0.1), oo.SGD, rho=0.05, lr=0.1, momentum=0.9)
    _loss_step(model, opt)
    opt.step(lambda: _loss_step(model, opt))
    assert [g["param_names"] for g in opt.param_groups] == [DECAY, NO_DECAY]


@pytest.mark.parametrize("kwargs,names", [
    (dict(weight_decay=-0.1), ("weight_decay", "-0.1")),
    (dict(weight_decay=float("nan")), ("weight_decay", "nan")),
    (dict(weight_decay=float("inf")), ("weight_decay", "inf")),
    (dict(weight_decay="0.1"), ("weight_decay", "'0.1'")),
    (dict(weight_decay=True), ("weight_decay", "True")),
    (dict(no_decay="bias"), ("no_decay", "'bias'")),
    (dict(no_decay=5), ("no_decay", "5")),
    (dict(no_decay=[b"bias"]), ("no_decay[0]", "b'bias'")),
    (dict(no_decay=["bias", None]), ("no_decay[1]", "None")),
    (dict(no_decay=[""]), ("no_decay[0]", "''")),
    (dict(no_decay=["bais"]), ("no_decay", "'bais'")),
    (dict(names="yes"), ("names", "'yes'")),
])
def test_bad_input_is_refused_naming_it(kwargs, names):
    with pytest.raises(ValueError) as err:
        param_groups(net(), **kwargs)
    for n in names:
        assert n in str(err.value), str(err.value)


@pytest.mark.parametrize("model", [list(nn.Linear(2, 2).parameters()), torch.zeros(2), None, "model"],
                         ids=["param-list", "tensor", "None", "str"])
def test_a_non_module_is_refused(model):
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        param_groups(model, 0.1)


def test_a_model_with_nothing_to_train_is_refused():
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(nn.Linear(2, 2).requires_grad_(False), 0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(nn.ReLU(), 0.1)
