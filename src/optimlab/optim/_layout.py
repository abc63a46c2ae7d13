"""Cheap re-checks of tensor layouts already checked in full.

Every step, the kernels' callers check each tensor they hand to C (dtype, device, number of
elements, strides, no lazy negation, real storage): a few Python-level passes per property
over every list, about 1 µs per parameter, which on models of many small tensors costs as
much as the update itself. A step's tensors almost always have the layouts of the last
step's, so a :class:`Memo` remembers a layout that passed the full checks, with what they
concluded, and re-checks a new step's tensors against it in one C++ call. It compares each
tensor's Python type, dispatch keys (device type, layout, sparse, mkldnn, negative or conjugate
view, zero tensor, inference tensor), dtype, device index, ``requires_grad``, sizes and strides
with the remembered ones, and refuses a tensor given twice. A match means the full checks would
pass again with the same result; anything else falls back to them. The full checks stay the only
way a layout is accepted.

Two classes do the comparing, the first that records a layout serving it: optimlab's own
:class:`._guards.Guards`, compiled on first use against torch's headers (plain strided tensors of
any device), then ``torch._C._dynamo.guards.TensorGuards``, the check torch.compile runs on every
call of a compiled function (every other kind; about twice as slow; it aborts the process on a
nested tensor, so those are filtered out before it). Both are used only if they pass a self-test
here on first use (each property above, changed on a probe, must make them refuse).
``OPTIMLAB_LAYOUT_MEMO=torch`` uses ``TensorGuards`` alone, ``=0`` neither.

Two levels check the same tensors in a step: ``Optimizer.step`` its parameters and gradients,
then a kernel's caller those and the state. The first *vouches* (:func:`vouch`) for the two
lists it matched, naming the remembered layout; the second then compares only the state
tensors, under a key that includes that name (:func:`vouched`): the parameters and gradients
have the layouts they had when the second level last checked all of them in full.
"""

from __future__ import annotations

import operator
import os
import threading
from collections import OrderedDict
from typing import Any, Hashable, Sequence

import torch
from torch import Tensor

_is_nested = operator.attrgetter("is_nested")
_KW = {"dynamic_dims_sizes": None, "dynamic_dims_strides": None}  # all sizes and strides static
_guards_classes: tuple | None = None  # usable guard classes, preferred first (None: not tested yet)


def _self_test(cls) -> bool:
    """Whether ``cls`` accepts the same layout and refuses each kind of difference."""
    base = torch.zeros(3, 4)
    guard = cls(base, torch.zeros(()), **_KW)
    same = torch.ones(3, 4)
    different = [
        torch.zeros(3, 4, dtype=torch.float64), torch.zeros(4, 3).t(), torch.zeros(2, 4),
        torch.zeros(3, 4, device="meta"), torch._neg_view(torch.zeros(3, 4)),
        torch._efficientzerotensor(3, 4), torch.zeros(3, 4).to_sparse(), torch.zeros(3, 4, requires_grad=True),
        torch.nn.Parameter(torch.zeros(3, 4), requires_grad=False),
    ]
    if not guard.check(same, torch.ones(())) or guard.check(same, same):
        return False
    return not any(guard.check(t, torch.ones(())) for t in different)


def _guards() -> tuple:
    """The usable guard classes, preferred first: :class:`._guards.Guards` (compiled against
    torch's headers), then ``TensorGuards``. ``OPTIMLAB_LAYOUT_MEMO=0`` turns re-checks off,
    ``=torch`` uses ``TensorGuards`` alone."""
    global _guards_classes
    if _guards_classes is None:
        found = []
        setting = os.environ.get("OPTIMLAB_LAYOUT_MEMO", "1").strip().lower()
        if setting not in ("0", "false", "no", "off"):
            if setting != "torch":
                try:
                    from optimlab.optim import _guards as native
                    if native.load() is not None and _self_test(native.Guards):
                        found.append(native.Guards)
                except Exception:  # (not built here: TensorGuards alone)
                    pass
            try:
                from torch._C._dynamo.guards import TensorGuards
                if _self_test(TensorGuards):
                    found.append(TensorGuards)
            except Exception:  # absent or changed in this torch
                pass
        _guards_classes = tuple(found)
    return _guards_classes


def available() -> bool:
    """Whether re-checks are on (off: ``OPTIMLAB_LAYOUT_MEMO=0``, or a torch without a usable
    ``TensorGuards``); every caller works the same without them, only slower."""
    return bool(_guards())


class Memo:
    """Layouts that passed a caller's full checks, with what the checks concluded.

    ``get(key, tensors)`` returns the value remembered under ``key`` if ``tensors`` have
    exactly the remembered layouts (see the module's docstring), else None; ``put`` remembers
    a new one. The key only picks which remembered layout to compare with (say, a param
    group); correctness never depends on it. At most ``size`` keys are kept (oldest out).
    """

    __slots__ = ("_entries", "_size", "_lock")

    def __init__(self, size: int = 32):
        self._entries: OrderedDict[Hashable, tuple[Any, int, Any, bool]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()  # (put's three steps; optimizers may step in several threads)

    def get(self, key: Hashable, tensors: Sequence[Tensor], maybe_nested: Sequence[Tensor] | None = None) -> Any:
        """``maybe_nested``: the tensors that could be nested where ``tensors`` are otherwise
        laid out as remembered (default: all; gradients of non-nested parameters cannot be)."""
        entry = self._entries.get(key)
        if entry is None or entry[1] != len(tensors):
            return None
        if not tensors:
            return entry[2]
        try:
            # (a strided nested tensor has no sizes: the guard would abort the process)
            if entry[3] and any(map(_is_nested, tensors if maybe_nested is None else maybe_nested)):
                return None
            return entry[2] if entry[0].check(*tensors) else None
        except Exception:  # (a non-tensor where a tensor was: not the same layout)
            return None

    def put(self, key: Hashable, tensors: Sequence[Tensor], value: Any) -> None:
        guard = cls = None
        for cls in _guards():
            try:
                guard = cls(*tensors, **_KW) if tensors else None
                break
            except Exception:  # (a kind the first does not record: the next)
                cls = None
        if cls is None:
            return
        # (TensorGuards aborts the process on a nested tensor: get filters those out before it)
        filter_nested = not getattr(cls, "refuses_nested", False)
        with self._lock:
            self._entries[key] = (guard, len(tensors), value, filter_nested)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class _Vouched(threading.local):
    lists: tuple | None = None


_vouched = _Vouched()


def vouch(params: list[Tensor], grads: list[Tensor], token: Hashable | None) -> tuple | None:
    """Say, for this thread, that ``params`` and ``grads`` (lists the caller made and does not
    change until :func:`unvouch`) have just matched the layouts remembered as ``token``, a
    name that no other layout ever has (say, a fresh ``object()`` per remembered layout);
    ``token`` None vouches for nothing. Returns what was vouched for before, for
    :func:`unvouch` (an optimizer inside another's step)."""
    before, _vouched.lists = _vouched.lists, (None if token is None else (params, grads, token))
    return before


def unvouch(before: tuple | None = None) -> None:
    _vouched.lists = before


def vouched(lists: Sequence[Sequence[Tensor]]) -> Hashable | None:
    """The token vouched for if ``lists`` starts with the very lists vouched for, else None."""
    v = _vouched.lists
    if v is not None and len(lists) > 1 and lists[0] is v[0] and lists[1] is v[1]:
        return v[2]
    return None
