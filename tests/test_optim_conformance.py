"""Every implementation of every registered optimizer against its readable rule.

The registry is the list: each class's ``rule`` (plain per-tensor torch code in its module,
the maths written once) is the oracle of the class's every path: the default (which picks
torch's fused kernels or optimlab's single-pass kernels where they are exact), ``foreach=True``,
``foreach=False`` (the single-tensor path) and ``fused=True``, in float64 to 1e-12 relative,
and in float32 loosely (the kernels have float32 code of their own), on CPU and, where
there is one, on CUDA. The hyperparameter variants come from the optimizers' test tables
(``tests/optim_cases.py`` for torch's twins, ``ROWS`` of tests/test_optim_modern.py for the
others, ``CASES`` of tests/test_keras.py for the Keras twins); a registered optimizer with
no row fails :func:`test_every_registered_optimizer_has_a_rule_and_a_row`.

The rule runs inside a real instance with ``_by_rule = True`` (what ``differentiable=True``
runs), so state creation, param groups and step counting are the class's own.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from optimlab.optim import _registry
from optimlab.optim._modern import RealOnly
from tests.optim_cases import CASES, gradient_sequence
from tests.test_keras import CASES as KERAS_CASES
from tests.test_optim_modern import ROWS

#: Registered classes with no rule of their own: they wrap another optimizer, whose rule is checked.
WRAPPERS = {"lookahead", "sam"}
STEPS = 60
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=2e-4, atol=2e-5)}
SHAPES = [(), (7,), (5, 3), (2, 3, 4, 1)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _keras_variants(name: str) -> list[dict]:
    cls_name = _registry.get(name, convention="keras").__name__
    return [h for n, h in KERAS_CASES if n == cls_name]


def _table() -> list[tuple[str, str, type, list[dict], list]]:
    """(convention, name, class, variants, shapes) for every registered optimizer."""
    rows = {r.name: r for r in ROWS}
    table = []
    for convention in ("torch", "keras"):
        for name in _registry.available(convention):
            cls = _registry.get(name, convention=convention)
            if name in WRAPPERS:
                continue
            if convention == "keras":
                variants, shapes = _keras_variants(name), SHAPES
            elif name in CASES:
                variants, shapes = CASES[name][3], SHAPES
            elif name in rows:
                variants, shapes = rows[name].variants, rows[name].shapes
            else:
                variants, shapes = [], SHAPES
            table.append((convention, name, cls, variants, shapes))
    return table


TABLE = _table()
ROWS_BY_NAME = {r.name: r for r in ROWS}


def test_every_registered_optimizer_has_a_rule_and_a_row():
    for convention, name, cls, variants, _ in TABLE:
        assert cls.rule is not None, f"{convention} {name} ({cls.__name__}) declares no readable rule"
        assert variants, f"{convention} {name}: no row of hyperparameter variants in the test tables"
    assert {n for n in _registry.available()} - {n for c, n, *_ in TABLE if c == "torch"} == WRAPPERS


def implementations(cls) -> list[dict]:
    """Every path the constructor can force, and the default."""
    sig = inspect.signature(cls.__init__).parameters
    impls = [{}]
    if "foreach" in sig:
        impls += [{"foreach": True}, {"foreach": False}]
    if "fused" in sig:
        impls.append({"fused": True})
    return impls


def _params(shapes, dtype, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).to(device) for s in shapes]


def _groups(params, hyper):
    """Two groups, the second with half the learning rate (under its torch or Keras name)."""
    key = "learning_rate" if "learning_rate" in hyper else "lr"
    second = {"params": params[2:]}
    if key in hyper:
        second["lr"] = hyper[key] * 0.5
    return [{"params": params[:2]}, second]


def _run(cls, hyper, impl, shapes, dtype, device, by_rule):
    params = _params(shapes, dtype, device)
    opt = cls(_groups(params, hyper), **hyper, **impl)
    opt._by_rule = by_rule
    for t, grads in enumerate(gradient_sequence(STEPS, shapes, dtype)):
        if t == STEPS // 2:
            for g in opt.param_groups:
                g["lr"] = g["lr"] * 0.3
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.to(device)
        opt.step()
    return opt, params


def _cases():
    for convention, name, cls, variants, shapes in TABLE:
        for i, hyper in enumerate(variants):
            for impl in implementations(cls):
                label = ",".join(f"{k}={v}" for k, v in impl.items()) or "default"
                yield pytest.param(cls, hyper, impl, shapes, id=f"{convention}-{name}-{i}-{label}")


CONFORMANCE = list(_cases())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cls,hyper,impl,shapes", CONFORMANCE)
def test_implementation_equals_the_readable_rule(cls, hyper, impl, shapes, dtype, device):
    ours, ours_params = _run(cls, hyper, impl, shapes, dtype, device, by_rule=False)
    rule, rule_params = _run(cls, hyper, {}, shapes, dtype, device, by_rule=True)
    tol = TOL[dtype]
    for a, b in zip(ours_params, rule_params):
        torch.testing.assert_close(a, b, **tol)
    for p, q in zip(ours_params, rule_params):
        s, r = ours.state[p], rule.state[q]
        assert set(s) == set(r), f"state keys differ: {sorted(s)} vs the rule's {sorted(r)}"
        for key, value in r.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(s[key].float() if dtype == torch.float32 else s[key],
                                           value.float() if dtype == torch.float32 else value, **tol,
                                           msg=lambda m, key=key: f"state[{key!r}]: {m}")
    for g, h in zip(ours.param_groups, rule.param_groups):
        assert {k: v for k, v in g.items() if k not in ("params", "foreach", "fused")} == \
               {k: v for k, v in h.items() if k not in ("params", "foreach", "fused")}


def _complex_capable():
    for convention, name, cls, variants, shapes in TABLE:
        if issubclass(cls, RealOnly) or convention == "keras" or not variants or _refuses_complex(cls, variants[-1]):
            continue
        yield pytest.param(cls, variants[-1], id=f"{convention}-{name}")


def _refuses_complex(cls, hyper) -> bool:
    """Classes that refuse complex tensors when the group is added (tested in their own files)."""
    try:
        cls([torch.zeros(2, dtype=torch.complex128)], **hyper)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("cls,hyper", list(_complex_capable()))
def test_complex_parameters_follow_the_rule_on_real_and_imaginary_parts(cls, hyper):
    """Complex tensors reach the rule as real views (torch's convention for complex
    parameters); the default path must agree with it."""
    shapes = [(3,), (2, 2), (4,), (1,)]
    ours, ours_params = _run(cls, hyper, {}, shapes, torch.complex128, "cpu", by_rule=False)
    rule, rule_params = _run(cls, hyper, {}, shapes, torch.complex128, "cpu", by_rule=True)
    for a, b in zip(ours_params, rule_params):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    for p, q in zip(ours_params, rule_params):
        for key, value in rule.state[q].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(ours.state[p][key], value, **TOL[torch.float64])


def test_the_docs_show_the_rules_the_tests_use():
    """docs/rules.md is ``optimlab optimizers --rules-markdown``: the rules' own source."""
    from pathlib import Path

    from optimlab.optim.cli import rules_markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "rules.md"
    assert page.read_text(encoding="utf-8") == rules_markdown() + "\n", \
        "docs/rules.md is stale: optimlab optimizers --rules-markdown > docs/rules.md"


def test_the_cli_prints_a_rule_and_refuses_a_wrapper_or_an_unknown_name(capsys):
    from optimlab.cli import main

    assert main(["optimizers", "--rule", "nag"]) == 0
    out = capsys.readouterr().out
    assert "def sgd_rule(" in out and "optimlab.optim.sgd.NAG" in out
    assert main(["optimizers", "--rule", "adam", "--convention", "keras"]) == 0
    assert "optimlab.optim.keras.adam" in capsys.readouterr().out
    assert main(["optimizers", "--rule", "lookahead"]) == 2
    assert main(["optimizers", "--rule", "adamm"]) == 2
    assert "adam" in capsys.readouterr().err


def test_the_cli_lists_each_optimizers_kernel(capsys):
    """`optimlab optimizers` says what each default step runs (so docs/performance.md's table
    need not be edited for a new optimizer)."""
    from optimlab.cli import main

    assert main(["optimizers"]) == 0
    blocks: dict[str, list[str]] = {}  # name: its block's lines, the wrapped ones joined
    for line in capsys.readouterr().out.splitlines():
        if line and not line[0].isspace():
            name = line.split()[0]
            blocks[name] = [line[len(name):].strip()]
        elif line.strip().startswith(("arguments: ", "default path on CPU: ")):
            blocks[name].append(line.strip())
        else:  # (a wrapped line's continuation)
            blocks[name][-1] += " " + line.strip()
    assert set(blocks) == set(_registry.available())
    titles = {n: b[0] for n, b in blocks.items()}
    arguments = {n: b[1].removeprefix("arguments: ") for n, b in blocks.items()}
    path = {n: b[2] for n, b in blocks.items()}
    assert all(b[1].startswith("arguments: ") and b[2].startswith("default path on CPU: ") and len(b) == 3
               for b in blocks.values())
    assert "optimlab's single-pass kernel 'sgd'" in path["nag"] and "'lion'" in path["lion"]
    assert "two-pass kernel 'lamb'" in path["lamb"] and "two-pass kernel 'lars'" in path["lars"]
    assert "single-tensor" in path["muon"] and "fused" in path["muon_adamw"] and "single-tensor" in path["muon_adamw"]
    assert arguments["lars"].split()[:2] == ["lr", "(required),"] and "lr=0.001" in arguments["adam"]
    assert "foreach=None" in arguments["adam"] and "fused=None" in arguments["adam"]
    assert all("**base_hyper (the base optimizer's hyperparameters)" in arguments[n] for n in ("lookahead", "sam"))
    assert "torch's fused kernel" in path["adam"] and "foreach rule" in path["adafactor"]
    assert "inner optimizer" in path["lookahead"]
    assert not any(t.endswith("::") or "``" in t for t in titles.values()), titles
    assert titles["adamax"].endswith("in place of the second moment.")
    for name in _registry.available():
        k = getattr(_registry.get(name), "kernel", None)
        assert k is None or f"kernel '{k.name}'" in path[name], name


LAZY_GRADIENTS = {  # a gradient whose memory does not hold its values
    "negative view": lambda g: torch._neg_view(g.neg()),   # memory holds −g, the negative bit says so
    "zero tensor": lambda g: torch._efficientzerotensor(g.shape, dtype=g.dtype),  # no memory at all
}


@pytest.mark.parametrize("lazy", list(LAZY_GRADIENTS))
@pytest.mark.parametrize("cls,hyper,impl,shapes", [c for c in CONFORMANCE if "-0-" in c.id])
def test_a_lazy_gradient_gives_what_its_values_give(cls, hyper, impl, shapes, lazy):
    """A kernel reads memory: a lazily negated view (``is_neg()``) or a zero tensor (a null
    pointer) must not reach one. Every path steps as the rule does on the gradient's values."""
    make = LAZY_GRADIENTS[lazy]
    results = []
    for by_rule, lazily in ((False, True), (True, False)):
        params = _params(shapes, torch.float64, "cpu")
        opt = cls(_groups(params, hyper), **hyper, **({} if by_rule else impl))
        opt._by_rule = by_rule
        for grads in gradient_sequence(6, shapes, torch.float64):
            for p, g in zip(params, grads):
                if g is not None:
                    g = make(g)
                    p.grad = g if lazily else g.clone()  # (clone: materialized)
                else:
                    p.grad = None
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("lazy", list(LAZY_GRADIENTS))
@pytest.mark.parametrize("cls,hyper,impl,shapes", [c for c in CONFORMANCE if c.id.endswith("-0-default")])
def test_a_loaded_lazy_state_tensor_steps_as_its_values(cls, hyper, impl, shapes, lazy):
    """A state dict whose tensors are lazy views (torch's load keeps them) loads as their values:
    the in-place multi-tensor ops of the foreach rules refuse negated views and zero tensors."""
    make = LAZY_GRADIENTS[lazy]
    seq = gradient_sequence(6, shapes, torch.float64)
    params = _params(shapes, torch.float64, "cpu")
    opt = cls(_groups(params, hyper), **hyper, **impl)
    for grads in seq[:3]:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    saved = opt.state_dict()

    def entry(v, lazily):
        if not isinstance(v, torch.Tensor):
            return v
        if not lazily or v.dim() == 0 or (lazy == "zero tensor" and v.any()):
            return v.clone()  # (a fresh copy per run: a loaded state's tensors are stepped in place)
        return make(v)

    def copied(lazily):
        return {**saved, "state": {i: {k: entry(v, lazily) for k, v in st.items()}
                                   for i, st in saved["state"].items()}}

    results = []
    for state in (copied(lazily=True), copied(lazily=False)):
        ps = [p.detach().clone() for p in params]
        other = cls(_groups(ps, hyper), **hyper, **impl)
        other.load_state_dict(state)
        for grads in seq[3:]:
            for p, g in zip(ps, grads):
                p.grad = g
            other.step()
        results.append(ps)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


PATHS = {"fused", "foreach", "single-tensor", "rule"}


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_path_for_names_what_the_last_step_ran(convention, name, cls, variants, shapes):
    """After a step, ``path_for`` names one of the documented paths (several joined by "+"),
    for every registered optimizer; None for a group without gradients."""
    params = [p.requires_grad_() for p in _params(shapes, torch.float32, "cpu")]
    opt = cls(_groups(params, variants[0]), **variants[0])
    assert opt.path_for(0) is None
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    for k in range(len(opt.param_groups)):
        path = opt.path_for(k)
        assert path is not None and path and set(path.split("+")) <= PATHS, (name, k, path)


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_a_graph_that_saved_a_parameter_notices_the_step(convention, name, cls, variants, shapes):
    """Every registered optimizer's step bumps each parameter it updates' version counter, as
    an in-place torch op does (kernels write behind autograd's back; torch's own fused ops do
    not bump it), by default and with ``fused=True``: a backward through a graph that saved
    the parameter before the step then refuses to run, as under torch's default."""
    flags = [{}] + ([{"fused": True}] if "fused" in inspect.signature(cls).parameters else [])
    for flag in flags:
        params = [p.requires_grad_() for p in _params(shapes, torch.float32, "cpu")]
        opt = cls(_groups(params, variants[0]), **variants[0], **flag)
        moved_at_all = False
        for _ in range(3):  # (the second step on: the kernels' remembered layouts; ADOPT moves from its second)
            losses = [(p * p).sum() for p in params]  # each saves its parameter
            for p in params:
                p.grad = torch.ones_like(p)
            before = [p.clone() for p in params]
            opt.step()
            for p, b, loss in zip(params, before, losses):
                if not torch.equal(p, b):
                    moved_at_all = True
                    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                        loss.backward()
        assert moved_at_all, (name, flag)


class _Watched(torch.Tensor):
    """A tensor subclass that notes the memory its in-place ops write, as its
    ``__torch_function__`` sees them (the first argument, or each tensor of a foreach op's
    first list), by the address of the storage."""

    written: set[int] = set()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("__") and args:
            first = args[0]
            with torch._C.DisableTorchFunctionSubclass():
                for t in first if isinstance(first, (list, tuple)) else [first]:
                    if isinstance(t, cls):
                        cls.written.add(t.untyped_storage().data_ptr())
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_a_tensor_subclass_sees_every_write_to_its_parameters(convention, name, cls, variants, shapes):
    """Parameters of a tensor subclass are updated through torch ops, which its
    ``__torch_function__`` (or ``__torch_dispatch__``) sees, by default and with ``fused=True``:
    no kernel writes their memory behind its back. torch.optim's default takes its
    single-tensor path for parameters of any type but Tensor and Parameter; so do the torch
    twins here (``path_for``), and the Keras twins their foreach rules. The values are the
    plain tensors' (float32 tolerances: a kernel's square roots may differ by an ulp)."""
    flags = [{}] + ([{"fused": True}] if "fused" in inspect.signature(cls).parameters else [])
    for flag in flags:
        plain = [p.requires_grad_() for p in _params(shapes, torch.float32, "cpu")]
        params = [p.detach().clone().as_subclass(_Watched).requires_grad_() for p in plain]
        opt = cls(_groups(params, variants[0]), **variants[0], **flag)
        ref = cls(_groups(plain, variants[0]), **variants[0], **flag)
        for k in range(3):
            grads = [torch.full_like(p, 0.5 + k) for p in plain]
            for p, q, g in zip(params, plain, grads):
                p.grad, q.grad = g.clone().as_subclass(_Watched), g.clone()
            before = [p.detach().clone() for p in plain]
            _Watched.written.clear()
            opt.step()
            ref.step()
            for i, (p, q, b) in enumerate(zip(params, plain, before)):
                torch.testing.assert_close(p.as_subclass(torch.Tensor), q, **TOL[torch.float32])
                if not torch.equal(q, b):
                    assert p.untyped_storage().data_ptr() in _Watched.written, (name, flag, k, i)
        if convention == "torch" and not flag and name not in ("muon", "muon_adamw"):
            assert set(opt.path_for(0).split("+")) == {"single-tensor"}, (name, opt.path_for(0))


class _WritesSeen(TorchDispatchMode):
    """A dispatch mode that notes the storages every op it sees writes (the arguments its
    schema marks as written), by address."""

    def __init__(self):
        super().__init__()
        self.written: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                for t in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(t, torch.Tensor):
                        self.written.add(t.untyped_storage().data_ptr())
        return func(*args, **kwargs)


class _CallsSeen(TorchFunctionMode):
    """A function mode that notes the storages in-place torch functions (name ending in "_")
    are called on (their first argument, or each tensor of a foreach op's first list)."""

    def __init__(self):
        super().__init__()
        self.written: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("__") and args:
            first = args[0]
            for t in first if isinstance(first, (list, tuple)) else [first]:
                if isinstance(t, torch.Tensor):
                    self.written.add(t.untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", [_WritesSeen, _CallsSeen])
@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_an_active_torch_mode_sees_every_write(convention, name, cls, variants, shapes, mode):
    """Under a TorchDispatchMode or a TorchFunctionMode (a profiler of ops, a tracer), every
    update is made by torch ops the mode sees, by default and with ``fused=True``: no kernel
    writes memory behind its back. (torch's default-device context, ``torch.set_default_device``,
    is a function mode that leaves the kernels on: see test_default_path.py.)"""
    flags = [{}] + ([{"fused": True}] if "fused" in inspect.signature(cls).parameters else [])
    for flag in flags:
        params = [p.requires_grad_() for p in _params(shapes, torch.float32, "cpu")]
        plain = [p.detach().clone().requires_grad_() for p in params]
        opt = cls(_groups(params, variants[0]), **variants[0], **flag)
        ref = cls(_groups(plain, variants[0]), **variants[0], **flag)
        for k in range(3):
            for p, q in zip(params, plain):
                p.grad, q.grad = torch.full_like(p, 0.5 + k), torch.full_like(q, 0.5 + k)
            before = [p.detach().clone() for p in params]
            ref.step()
            with mode() as seen:
                opt.step()
            for i, (p, q, b) in enumerate(zip(params, plain, before)):
                torch.testing.assert_close(p, q, **TOL[torch.float32])
                if not torch.equal(p, b):
                    assert p.untyped_storage().data_ptr() in seen.written, (name, flag, k, i)


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_forward_mode_tangents_follow_the_update(convention, name, cls, variants, shapes):
    """Inside a forward-mode AD level (``torch.autograd.forward_ad``) the update's torch ops
    carry the parameters' tangents along (the step's no_grad does not stop forward AD), by
    default and with ``fused=True``, as on the path that runs the ops one by one: no kernel
    updates the values and leaves the tangents behind."""
    import torch.autograd.forward_ad as fwAD

    sig = inspect.signature(cls).parameters
    forced = {"foreach": True} if "foreach" in sig else {"fused": False} if "fused" in sig else {}
    results, failures = {}, {}
    for flag in [forced, {}] + ([{"fused": True}] if "fused" in sig else []):
        params = [p.requires_grad_() for p in _params(shapes, torch.float64, "cpu")]
        opt = cls(_groups(params, variants[0]), **variants[0], **flag)
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p.detach(), torch.zeros_like(p)) for p in params]
            for group, start in zip(opt.param_groups, (0, 2)):  # (as _groups split them)
                group["params"] = duals[start:start + len(group["params"])]
            try:
                for k in range(3):
                    for d in duals:
                        d.grad = fwAD.make_dual(torch.full_like(d, 0.5 + k), torch.full_like(d, 1.0 + k))
                    opt.step()
            except (RuntimeError, NotImplementedError) as e:  # an op without forward AD (LAMB's, LARS's)
                failures[tuple(flag.items())] = type(e)
                continue
            results[tuple(flag.items())] = [tuple(fwAD.unpack_dual(d)[:2]) for d in duals]
    if failures:  # then every path fails alike, rather than a kernel stepping without the tangents
        assert not results and len(set(failures.values())) == 1, (name, failures, list(results))
        return
    reference = results[tuple(forced.items())]
    if not getattr(ROWS_BY_NAME.get(name), "flat_tangents", False):  # (Lion's sign; ADOPT's clip: Row)
        assert any(t is not None and t.abs().sum() != 0 for _, t in reference), name
    for flag, got in results.items():
        for (v, t), (rv, rt) in zip(got, reference):
            torch.testing.assert_close(v, rv, **TOL[torch.float64])
            torch.testing.assert_close(t, rt, **TOL[torch.float64], equal_nan=True, msg=f"{name} {flag}: tangent")


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_an_inference_tensor_is_refused_outside_inference_mode(convention, name, cls, variants, shapes):
    """A parameter made under ``torch.inference_mode()`` cannot be updated in place outside
    it (torch's default step raises RuntimeError there; a kernel would write it anyway): the
    step refuses it, naming it, before anything changes, also after steps whose layouts
    were remembered; inside inference mode it steps, to the plain tensors' values."""
    flags = [{}] + ([{"fused": True}] if "fused" in inspect.signature(cls).parameters else [])
    for flag in flags:
        params = [p.requires_grad_() for p in _params(shapes, torch.float32, "cpu")]
        opt = cls(_groups(params, variants[0]), **variants[0], **flag)
        for _ in range(2):
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
        with torch.inference_mode():
            frozen = params[-1].detach().clone()
        params[-1].data = frozen  # (now an inference tensor)
        params[-1].grad = torch.ones_like(frozen)
        saved = [p.detach().clone() for p in params]
        state = copy.deepcopy(opt.state_dict())
        with pytest.raises(RuntimeError, match="inference") as err:
            opt.step()
        assert isinstance(err.value, ValueError), (name, err.value)
        assert all(torch.equal(p, s) for p, s in zip(params, saved)), (name, flag)
        _assert_same_state(opt.state_dict(), state, name)
        twin = cls(_groups([p.detach().clone().requires_grad_() for p in params], variants[0]), **variants[0], **flag)
        twin.load_state_dict(state)
        with torch.inference_mode():
            opt.step()
        for p, q in zip(twin.param_groups[0]["params"] + twin.param_groups[1]["params"], params):
            p.grad = torch.ones_like(p)
        twin.step()
        for p, q in zip(twin.param_groups[0]["params"] + twin.param_groups[1]["params"], params):
            torch.testing.assert_close(q, p.detach(), **TOL[torch.float32])


BAD_WRITES = [("lr", "0.1"), ("lr", torch.tensor([0.1, 0.2])), ("lr", None), ("lr", float("nan")), ("lr", -0.1),
              ("betas", (0.9,)), ("lr", KeyError),  # (KeyError: the key deleted)
              ("learning_rate", 0.5)]  # (lr under another name, which the update would not read)


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_a_bad_hyperparameter_written_into_a_group_is_refused_before_anything_changes(
        convention, name, cls, variants, shapes):
    """torch.optim checks hyperparameters at construction only; a value written into
    ``param_groups`` later (by a scheduler, or by hand) that the constructor would refuse is
    refused by the next step, naming the group, before anything changes (the step counters
    moved before a string ``lr`` was silently converted, or a tensor of two elements or a
    ``None`` failed deep in the update). With the value put back, training goes on as an
    optimizer that never saw it: on the first step (state still to be made) and later."""
    for steps_before in (0, 2):
        for key, bad in BAD_WRITES:
            params = [p.requires_grad_() for p in _params(shapes, torch.float32, "cpu")]
            opt = cls(_groups(params, variants[0]), **variants[0])
            if key not in opt.param_groups[1] and key != "learning_rate":
                continue
            for _ in range(steps_before):
                for p in params:
                    p.grad = torch.ones_like(p)
                opt.step()
            for p in params:
                p.grad = torch.full_like(p, 0.5)
            saved = [p.detach().clone() for p in params]
            state = copy.deepcopy(opt.state_dict())
            group = opt.param_groups[1]
            good = group.get(key, KeyError)
            if bad is KeyError:
                del group[key]
            else:
                group[key] = bad
            with pytest.raises(ValueError, match="param group 1") as err:
                opt.step()
            named = {"lr": ("lr", "learning_rate")}.get(key, (key,))  # (Keras's name for its group's lr)
            assert any(n in str(err.value) for n in named), (name, key, bad, err.value)
            assert all(torch.equal(p, s) for p, s in zip(params, saved)), (name, key, bad)
            after = opt.state_dict()
            assert sorted(after["state"]) == sorted(state["state"]), (name, key, bad)
            _assert_same_state(after, state, name)
            if good is KeyError:
                del group[key]
            else:
                group[key] = good
            twin_params = [p.detach().clone().requires_grad_() for p in params]
            twin = cls(_groups(twin_params, variants[0]), **variants[0])
            twin.load_state_dict(state)
            for p in twin_params:
                p.grad = torch.full_like(p, 0.5)
            opt.step()
            twin.step()
            for p, q in zip(params, twin_params):
                assert torch.equal(p, q), (name, key, bad)


TORCH_ROWS = [row for row in TABLE if row[0] == "torch"]  # (Keras's lr and betas are floats: nothing in place)


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TORCH_ROWS, ids=[n for _, n, *_ in TORCH_ROWS])
def test_a_hyperparameter_changed_in_place_is_checked_too(convention, name, cls, variants, shapes):
    """torch's LR schedulers (and optimlab's) ``fill_`` a tensor ``lr`` in place, and a list
    of betas can be edited in place: such values are re-checked at every step (a NaN written
    this way made NaN weights), before anything changes."""
    params = [p.requires_grad_() for p in _params(shapes, torch.float32, "cpu")]
    hyper = dict(variants[0])
    opt = cls(_groups(params, hyper), **hyper)
    group = opt.param_groups[1]
    if convention == "torch" and not isinstance(group["lr"], torch.Tensor):
        group["lr"] = torch.tensor(float(group["lr"]))  # (a tensor lr, where the class takes one)
    if isinstance(group.get("betas"), tuple):
        group["betas"] = list(group["betas"])
    for p in params:
        p.grad = torch.ones_like(p)
    try:
        opt.step()
    except ValueError:  # (this class refuses a tensor lr, as torch's twin does: nothing to mutate)
        group["lr"] = float(group["lr"])
        opt.step()
    edits = [("betas", lambda g: g["betas"].__setitem__(0, 1.0))] if isinstance(group.get("betas"), list) else []
    if isinstance(group["lr"], torch.Tensor):
        edits.append(("lr", lambda g: g["lr"].fill_(float("nan"))))
    assert edits, name
    for key, edit in edits:
        saved, state = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
        good = copy.deepcopy(group[key])
        edit(group)
        with pytest.raises(ValueError, match="param group 1"):
            opt.step()
        assert all(torch.equal(p, s) for p, s in zip(params, saved)), (name, key)
        group[key] = good
        _assert_same_state(opt.state_dict(), state, name)


def _assert_same_state(a, b, name):
    for key in b["state"]:
        for k, v in b["state"][key].items():
            w = a["state"][key][k]
            assert (torch.equal(w, v) if isinstance(v, torch.Tensor) else w == v), (name, key, k)


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_a_wrapper_refuses_an_inference_tensor_before_anything_changes(wrapper):
    import optimlab.optim as oo
    a, b = torch.ones(4, 3, requires_grad=True), torch.ones(3)
    with torch.inference_mode():
        b.data = torch.ones(3)  # (now an inference tensor)
    opt = (oo.Lookahead(oo.Adam([a, b], lr=0.1), k=1) if wrapper == "lookahead"
           else oo.SAM([a, b], oo.SGD, lr=0.1, momentum=0.9))

    def closure():
        opt.zero_grad()
        loss = (a - 2).pow(2).sum()
        loss.backward()
        b.grad = torch.ones(3)
        return loss

    closure()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="inference tensor"):
        opt.step(closure) if wrapper == "sam" else opt.step()
    assert torch.equal(a, torch.ones(4, 3)) and torch.equal(b, torch.ones(3))
    inner = opt.optimizer if wrapper == "lookahead" else opt.base_optimizer
    assert not any(inner.state.values()), inner.state
    assert repr(opt.state_dict()) == repr(before)  # (Lookahead's slow weights too)
    # the user fixes the weights and trains on: as a wrapper that never saw the refused step
    b.data = torch.full((3,), 7.0)  # (a normal tensor again)
    with torch.no_grad():
        a.fill_(5.0)
    if wrapper == "lookahead":
        a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone()
        fresh = oo.Lookahead(oo.Adam([a2, b2], lr=0.1), k=1)
        for _ in range(2):
            closure()
            opt.step()
            a2.grad, b2.grad = a.grad.clone(), torch.ones(3)  # (a2 == a: the same gradient)
            fresh.step()
        assert torch.equal(a, a2) and torch.equal(b, b2)


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_a_wrapper_refuses_a_bad_hyperparameter_written_into_its_groups_before_anything_changes(wrapper):
    """SAM checks its base's groups before it perturbs the weights (the base's own step
    would refuse them only after); Lookahead's inner step refuses before Lookahead moves."""
    import optimlab.optim as oo
    a = torch.ones(4, 3, requires_grad=True)
    opt = (oo.Lookahead(oo.Adam([a], lr=0.1), k=1) if wrapper == "lookahead"
           else oo.SAM([a], oo.SGD, lr=0.1, momentum=0.9))

    def closure():
        opt.zero_grad()
        loss = (a - 2).pow(2).sum()
        loss.backward()
        return loss

    for steps_before in (0, 1):
        for _ in range(steps_before):
            closure()
            opt.step(closure)
        closure()
        saved, before = a.detach().clone(), copy.deepcopy(opt.state_dict())
        opt.param_groups[0]["lr"] = "0.1"
        with pytest.raises(ValueError, match="lr must be a real number"):
            opt.step(closure)
        assert torch.equal(a, saved), wrapper
        opt.param_groups[0]["lr"] = 0.1
        assert repr(opt.state_dict()) == repr(before), wrapper


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_a_wrapper_says_what_its_inner_optimizer_ran(wrapper):
    import optimlab.optim as oo
    p = torch.zeros(4, 3, requires_grad=True)
    opt = (oo.Lookahead(oo.Adam([p], lr=0.1)) if wrapper == "lookahead"
           else oo.SAM([p], oo.SGD, lr=0.1, momentum=0.9))
    assert opt.path_for(0) is None

    def closure():
        opt.zero_grad()
        loss = (p - 1).pow(2).sum()
        loss.backward()
        return loss

    closure()
    opt.step(closure) if wrapper == "sam" else opt.step()
    inner = opt.optimizer if wrapper == "lookahead" else opt.base_optimizer
    assert opt.path_for(0) == inner.path_for(0) == "fused"
    plain = oo.Lookahead(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1))
    assert plain.path_for(0) is None  # (a torch.optim inner optimizer does not say)


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_a_compiled_training_step_runs_the_optimizer_eagerly(convention, name, cls, variants, shapes):
    """``torch.compile`` of a training step that calls ``optimizer.step()`` compiles the model
    and runs the step eagerly (a graph break): the same values as without compiling, and no
    compilation after the first call (tracing into the step recompiled at every step, up to
    dynamo's limit, with a warning)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 3, generator=gen)

    def model_and_optimizer():
        weights = [torch.linspace(-1, 1, 12).reshape(4, 3).requires_grad_()]
        if name != "muon":  # (Muon takes matrices only)
            weights.append(torch.zeros(3, requires_grad=True))
        return weights, cls([{"params": weights}], **variants[0])

    def train_step(weights, opt):
        opt.zero_grad()
        out = x @ weights[0] + (weights[1] if len(weights) > 1 else 0)
        loss = ((out - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(train_step, backend="eager")
    (wa, oa), (wb, ob) = model_and_optimizer(), model_and_optimizer()
    try:
        for k in range(5):
            compiled(wa, oa)
            train_step(wb, ob)
            if k == 1:  # (the first two calls compile: the optimizer's state starts at the first)
                compiled_after_two = counters["frames"]["total"]
        assert counters["frames"]["total"] == compiled_after_two, (name, dict(counters["frames"]))
    finally:
        torch._dynamo.reset()
    for a, b in zip(wa, wb):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


USER_KEYS = {"name": "backbone", "lr_scale": 0.5, "initial_lr": 0.1, "layer_id": 3,  # (timm, schedulers, loggers)
             "weight_decay_mult": 2.0, "lr_mult": 0.1, "frozen": False}  # (near names, not typos)


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_a_groups_own_keys_are_kept_as_torch_keeps_them(convention, name, cls, variants, shapes):
    """Keys the update does not read and no optimizer takes (a group's name, timm's
    ``lr_scale``, a scheduler's ``initial_lr``) are kept through construction,
    ``add_param_group``, steps and the state dict, and change nothing."""
    hyper = variants[0] if variants else {}
    runs = []
    for own in ({}, USER_KEYS):
        params = _params(shapes, torch.float64, "cpu")
        groups = _groups(params, hyper)
        if name == "muon_adamw":  # (its groups say which update they take)
            for group in groups:
                group["use_muon"] = all(p.ndim == 2 for p in group["params"])
        groups[0].update(own)
        later = groups.pop()
        opt = cls(groups, **hyper)
        opt.add_param_group({**later, **own})
        for grads in gradient_sequence(3, shapes, torch.float64):
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        for group in (opt.param_groups, opt.state_dict()["param_groups"]):
            assert all({k: g[k] for k in own} == own for g in group), name
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs)), name


@pytest.mark.parametrize("cls,key,hint", [
    (_registry.get("adam"), "learning_rate", "'lr'"), (_registry.get("adam"), "weight_decy", "'weight_decay'"),
    (_registry.get("adam"), "momentum", None), (_registry.get("sgd"), "betas", None),
    (_registry.get("lion"), "bettas", "'betas'"), (_registry.get("rmsprop"), "lrr", "'lr'"),
    (_registry.get("adamw"), "amsgard", "'amsgrad'"), (_registry.get("adamw"), "nesterov", None)])
def test_a_group_key_meant_for_the_update_that_it_would_not_read_is_refused(cls, key, hint):
    """Another name of one of its keys, a near-miss of one, or another optimizer's
    hyperparameter: refused before anything is added, naming it (torch would ignore it)."""
    opt = cls([torch.zeros(2, requires_grad=True)], lr=0.1)
    for make in (lambda: cls([{"params": [torch.zeros(3, requires_grad=True)], key: 0.9}], lr=0.1),
                 lambda: opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], key: 0.9})):
        with pytest.raises(ValueError, match=f"'{key}'.*does not read") as err:
            make()
        assert hint is None or f"did you mean {hint}" in str(err.value)
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_a_parameters_own_state_keys_load_and_are_kept_as_torch_keeps_them(convention, name, cls, variants, shapes):
    """A key the user (or a tool) put in a parameter's state, which no optimizer uses, goes
    through ``state_dict`` and ``load_state_dict`` untouched and changes nothing; a key of
    another optimizer's state still marks a state_dict of another optimizer (refused)."""
    hyper = variants[0] if variants else {}
    if name == "muon_adamw":
        pytest.skip("its groups need use_muon (its state keys: test_optim_modern)")
    runs = []
    for own in (False, True):
        params = _params(shapes, torch.float64, "cpu")
        opt = cls(_groups(params, hyper), **hyper)
        seq = gradient_sequence(4, shapes, torch.float64)
        for t, grads in enumerate(seq):
            if t == 2:
                if own:
                    for p in params:
                        opt.state[p]["my_note"] = torch.full((3,), 7.0)
                saved = copy.deepcopy(opt.state_dict())
                opt = cls(_groups(params, hyper), **hyper)
                opt.load_state_dict(saved)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        if own:
            assert all(torch.equal(opt.state[p]["my_note"], torch.full((3,), 7.0)) for p in params), name
            assert all("my_note" in s for s in opt.state_dict()["state"].values()), name
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs)), name
    others = sorted(k for k in _registry.get("adam").state_keys if k not in cls.state_keys)
    if others and saved["state"]:
        bad = copy.deepcopy(saved)
        next(iter(bad["state"].values()))[others[0]] = torch.zeros(1)
        with pytest.raises(ValueError, match="another optimizer"):
            cls(_groups(params, hyper), **hyper).load_state_dict(bad)


@pytest.mark.parametrize("convention,name,cls,variants,shapes", TABLE, ids=[f"{c}-{n}" for c, n, *_ in TABLE])
def test_state_made_under_inference_mode_is_refused_outside_it_before_anything_changes(convention, name, cls,
                                                                                       variants, shapes):
    """Steps under ``torch.inference_mode()`` make the state inference tensors, which cannot
    be updated in place outside it (torch's step raises RuntimeError there); a kernel would
    write them anyway. Refused, naming the parameter, with nothing changed."""
    hyper = variants[0] if variants else {}
    if name == "muon_adamw":
        pytest.skip("its groups need use_muon")
    params = _params(shapes, torch.float64, "cpu")
    opt = cls(_groups(params, hyper), **hyper)
    seq = gradient_sequence(4, shapes, torch.float64)
    with torch.inference_mode():
        for grads in seq[:2]:
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.clone()
            opt.step()
    for p, g in zip(params, seq[2]):
        p.grad = None if g is None else g.clone()
    inference = any(isinstance(v, torch.Tensor) and v.is_inference() for s in opt.state.values() for v in s.values())
    before = [p.clone() for p in params]
    if not inference:  # (no state tensors: nothing to refuse)
        opt.step()
        return
    with pytest.raises(RuntimeError, match="inference_mode") as err:
        opt.step()
    assert isinstance(err.value, ValueError) and "params[" in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, params)), name
    opt.state.clear()  # (the remedy the message gives)
    opt.step()


def _hooks_round_trip(make, step):
    """Save a stepped optimizer through state-dict hooks and load it into a fresh one through
    load hooks, as torch 2.13 runs them: state-dict pre-hook, then post-hooks on the finished
    dict (a replacement is returned); load pre-hooks first, on a copy (a converter: what it
    returns is what is loaded), post-hooks after the load. Returns what the hooks saw."""
    opt = make()
    step(opt)
    plain = copy.deepcopy(opt.state_dict())
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("state_dict pre"))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(("state_dict post", sorted(sd))) or {"old": sd})
    saved = copy.deepcopy(opt.state_dict())
    other = make()
    other.register_load_state_dict_pre_hook(lambda o, sd: seen.append(("load pre", sorted(sd))) or sd["old"])
    other.register_load_state_dict_post_hook(lambda o: seen.append(("load post", repr(o.state_dict()))))
    other.load_state_dict(saved)
    _assert_same_state(other.state_dict(), plain, "loaded")
    return seen, plain, repr(other.state_dict())


def _expected_hook_calls(plain, loaded):
    """(The post-hook sees the state as loaded: torch casts a state tensor, NAdam's float32
    ``mu_product`` say, to its parameter's dtype.)"""
    return ["state_dict pre", ("state_dict post", sorted(plain)), ("load pre", ["old"]), ("load post", loaded)]


def test_state_dict_hooks_run_as_torchs_run_in_torch():
    """The oracle of the next test: torch.optim.Adam's hooks, under the same script."""
    p = torch.ones(3, requires_grad=True)

    def step(opt):
        p.grad = torch.full((3,), 0.5)
        opt.step()

    seen, plain, loaded = _hooks_round_trip(lambda: torch.optim.Adam([p], lr=0.1), step)
    assert seen == _expected_hook_calls(plain, loaded)


@pytest.mark.parametrize("convention,name,cls,variants,shapes",
                         TABLE + [("torch", w, None, [], SHAPES) for w in sorted(WRAPPERS)],
                         ids=[f"{c}-{n}" for c, n, *_ in TABLE] + sorted(WRAPPERS))
def test_state_dict_hooks_run_where_torchs_run(convention, name, cls, variants, shapes):
    """Every optimizer (the wrappers too) runs its state-dict and load-state-dict hooks where
    torch does. Before, ``load_state_dict`` checked the raw dict before the pre-hooks ran, so a
    pre-hook converting an old checkpoint never got the chance ("lacks ['exp_avg', ...]"), and
    the wrappers ran none of their own hooks."""
    import optimlab.optim as oo
    hyper = variants[0] if variants else {}
    if name == "muon_adamw":
        pytest.skip("its groups need use_muon")
    params = [p.requires_grad_() for p in _params(shapes, torch.float64, "cpu")]
    if name == "lookahead":
        make = lambda: oo.Lookahead(oo.Adam(params, lr=0.1), k=2)  # noqa: E731
    elif name == "sam":
        make = lambda: oo.SAM(params, oo.SGD, lr=0.1, momentum=0.9)  # noqa: E731
    else:
        make = lambda: cls(_groups(params, hyper), **hyper)  # noqa: E731
    seq = gradient_sequence(3, shapes, torch.float64)

    def step(opt):
        for grads in seq:
            def closure():
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                return torch.zeros(())
            closure()
            opt.step(closure)

    seen, plain, loaded = _hooks_round_trip(make, step)
    assert seen == _expected_hook_calls(plain, loaded), name
