"""optimlab.optim._layout: a remembered layout is re-checked in one call, and whatever differs
from it (each property the kernels rely on) sends the step back to the full checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import optimlab.optim as oo
from optimlab.optim import _fused, _layout

needs_memo = pytest.mark.skipif(not _layout.available(), reason="TensorGuards unusable in this torch")
GUARDS = {cls.__name__: cls for cls in _layout._guards()}  # optimlab's compiled ones, torch's TensorGuards


@pytest.fixture(params=sorted(GUARDS) or [None])
def guard_class(request, monkeypatch):
    """Each usable guard class in turn, as the only one the memo uses."""
    if request.param is None:
        pytest.skip("no usable guard class in this torch")
    monkeypatch.setattr(_layout, "_guards_classes", (GUARDS[request.param],))
    return GUARDS[request.param]

CHANGES = {  # a tensor standing where a float32 (4, 6) contiguous tensor was remembered
    "dtype": lambda: torch.zeros(4, 6, dtype=torch.float64),
    "transposed": lambda: torch.zeros(6, 4).t(),
    "shape": lambda: torch.zeros(24),
    "fewer elements": lambda: torch.zeros(3, 6),
    "device": lambda: torch.zeros(4, 6, device="meta"),
    "negative view": lambda: torch._neg_view(torch.zeros(4, 6)),
    "zero tensor": lambda: torch._efficientzerotensor(4, 6),
    "sparse": lambda: torch.zeros(4, 6).to_sparse(),
    "mkldnn": lambda: torch.zeros(4, 6).to_mkldnn(),
    "requires_grad": lambda: torch.zeros(4, 6, requires_grad=True),
    "nested": lambda: torch.nested.nested_tensor([torch.zeros(4), torch.zeros(6)]),
    "not a tensor": lambda: 0.0,
}


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("change", list(CHANGES))
def test_memo_refuses_every_change_and_keeps_the_same_layout(change, guard_class):
    memo = _layout.Memo()
    memo.put("k", [torch.zeros(3), torch.zeros(4, 6)], "checked")
    assert memo.get("k", [torch.ones(3), torch.ones(4, 6)]) == "checked"
    assert memo.get("k", [torch.ones(3), CHANGES[change]()]) is None
    assert memo.get("other", [torch.ones(3), torch.ones(4, 6)]) is None
    shared = torch.ones(3)
    assert memo.get("k", [shared, shared]) is None  # a tensor given twice


def test_memo_is_bounded_and_holds_no_tensor(guard_class):
    import weakref
    memo = _layout.Memo(size=2)
    t = torch.zeros(5)
    ref = weakref.ref(t)
    for k in range(3):
        memo.put(k, [t], k)
    assert memo.get(0, [torch.ones(5)]) is None and memo.get(2, [torch.ones(5)]) == 2
    del t
    assert ref() is None


def test_switched_off_by_the_environment():
    script = textwrap.dedent("""
        import torch, optimlab.optim as oo
        from optimlab.optim import _layout
        p = torch.zeros(4, requires_grad=True)
        opt = oo.RMSprop([p], lr=0.1)
        for _ in range(3):
            p.grad = torch.ones(4)
            opt.step()
        print(_layout.available(), opt.path_for(0))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OPTIMLAB_LAYOUT_MEMO": "0"}).stdout.split()
    assert out[0] == "False" and out[1] == ("fused" if _fused.available() else "foreach")


BETWEEN_STEPS = {  # what changes after steps whose layouts were remembered
    "transposed gradient": lambda p, opt, key: setattr(p.grad, "data", p.grad.t().contiguous().t()),
    "negative-view gradient": lambda p, opt, key: setattr(p, "grad", torch._neg_view(p.grad.neg())),
    "zero-tensor gradient": lambda p, opt, key: setattr(p, "grad", torch._efficientzerotensor(p.shape, dtype=p.dtype)),
    "transposed parameter": lambda p, opt, key: setattr(p, "data", p.data.t().contiguous().t()),
    "transposed state": lambda p, opt, key: opt.state[p].__setitem__(key, opt.state[p][key].t().contiguous().t()),
    "state of fewer elements": lambda p, opt, key: opt.state[p].__setitem__(key, opt.state[p][key][:2]),
    "state reshaped": lambda p, opt, key: opt.state[p].__setitem__(key, opt.state[p][key].reshape(3, 5)),
}
OPTIMIZERS = {"Momentum": (oo.Momentum, "momentum_buffer"), "RMSprop": (oo.RMSprop, "square_avg"),
              "Adam": (oo.Adam, "exp_avg"), "Lion": (oo.Lion, "exp_avg")}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("change", list(BETWEEN_STEPS))
def test_a_change_after_remembered_steps_is_seen(name, change):
    """Steps of one layout (remembered), then one tensor changes: the step still equals the
    readable rule's, or is refused before anything changes (a state of the wrong size)."""
    cls, key = OPTIMIZERS[name]
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(5)]
    runs = []
    for by_rule in (False, True):
        p = start.clone().requires_grad_()
        opt = cls([p], lr=0.01)
        opt._by_rule = by_rule
        for k, g in enumerate(grads):
            p.grad = g.clone()
            if k == 3:
                BETWEEN_STEPS[change](p, opt, key)
            try:
                opt.step()
            except (ValueError, RuntimeError) as e:
                runs.append(("refused", type(e)))
                break
        else:
            runs.append(p.detach())
    if change in ("state of fewer elements", "state reshaped"):  # (torch's ops fail on both)
        assert runs[0][0] == "refused" and runs[1][0] == "refused"  # (the kernel ran on a reshaped one)
    else:
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-12, atol=1e-14)


@needs_memo
def test_lists_of_other_lengths_are_not_taken_for_a_remembered_layout():
    """Chained, [params, grads, a, b] of 2+2+1+3 tensors look like 2+2+2+2 tensors of one
    shape: the remembered check must not take one for the other (a kernel would read past b)."""
    ps, gs = [torch.zeros(4) for _ in range(2)], [torch.zeros(4) for _ in range(2)]
    even = [ps, gs, [torch.zeros(4) for _ in range(2)], [torch.zeros(4) for _ in range(2)]]
    assert _fused.fits(even)
    uneven = [ps, gs, [torch.zeros(4)], [torch.zeros(4) for _ in range(3)]]
    assert not _fused.fits(uneven)


def _checks_seen(opt, steps=3):
    """For each check of a kernel's tensors in ``opt``'s last step, whether its parameters
    and gradients came vouched for (see _layout.vouch)."""
    seen = []
    original = _fused._matching_numels

    def spy(lists, dtypes):
        seen.append(_layout.vouched(lists) is not None)
        return original(lists, dtypes)

    _fused._matching_numels = spy
    try:
        for _ in range(steps):
            seen.clear()
            opt.step()
    finally:
        _fused._matching_numels = original
    return seen


@needs_memo
@pytest.mark.parametrize("cls", [oo.SGD, oo.Momentum, oo.RMSprop, oo.Adam])
def test_a_kernel_compares_only_the_state_of_a_checked_step(cls):
    ps = [torch.zeros(3, 4, requires_grad=True), torch.zeros(5, requires_grad=True)]
    for p in ps:
        p.grad = torch.ones_like(p)
    opt = cls(ps, lr=0.1)
    assert _checks_seen(opt) == [True]
    assert _layout.vouched([ps, [p.grad for p in ps]]) is None  # (nothing left vouched after the step)


@needs_memo
def test_an_inner_optimizer_step_leaves_the_outer_vouch_in_place():
    outer = [torch.zeros(3)], [torch.zeros(3)]
    before = _layout.vouch(*outer, object())
    try:
        p = torch.zeros(3, requires_grad=True)
        p.grad = torch.ones(3)
        oo.Momentum([p], lr=0.1).step()
        assert _layout.vouched(list(outer)) is not None
    finally:
        _layout.unvouch(before)


def test_a_vouch_is_for_its_own_thread():
    import threading
    lists = [torch.zeros(3)], [torch.zeros(3)]
    before = _layout.vouch(*lists, object())
    try:
        other = []
        t = threading.Thread(target=lambda: other.append(_layout.vouched(list(lists))))
        t.start()
        t.join()
        assert other == [None] and _layout.vouched(list(lists)) is not None
    finally:
        _layout.unvouch(before)
