"""Data pointers of many tensors in one C call.

A kernel call needs every tensor's data pointer, each step. ``map(Tensor.data_ptr, ...)``
costs about 95 ns a tensor in Python, 40 µs a step on a model of 200 parameters (params and
gradients), and far more when the tensors' metadata is out of cache (after a forward and
backward pass): each call's misses wait for the previous ones. :func:`gather` reads them in
one loop in C++: about 10 ns a tensor in cache.

The loop calls the function torch exports for its compiled CPU wrappers
(``torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr``: a tensor's Python
object to ``Tensor.data_ptr()``, so storage offset included; it throws for a non-tensor or a
tensor without storage, which the loop catches). The tiny library is compiled with the
system C++ compiler and Python's headers on first use (under a second), cached beside the
kernels (:mod:`._native`), and used only if it gives ``data_ptr()``'s values on probe
tensors (every layout the kernels take, views with offsets) and refuses the ones without
storage; otherwise (no compiler or headers, a torch without that function)
:func:`gather` returns what Python's ``data_ptr()`` gives, so callers see no difference
but speed. ``OPTIMLAB_POINTERS=python`` forces the Python loop.
"""

from __future__ import annotations

import array
import ctypes
import os
import sys
import sysconfig
import threading
from typing import Sequence

import torch
from torch import Tensor

from optimlab.optim import _native

__all__ = ["gather", "available"]

_SOURCE = b"""
#include <Python.h>
#include <stdint.h>

typedef void *(*data_ptr_fn)(PyObject *);

/* out[k] = data pointer of the k-th tensor of the lists (list or tuple objects) in `lists`
   (a tuple), in order. Returns how many were written, or -1: one is not a tensor with
   storage (torch's function threw), -2: an item of `lists` is neither a list nor a tuple,
   -3: more tensors than `capacity`. Called with the GIL held (ctypes.PyDLL). */
extern "C" __attribute__((visibility("default")))
int64_t ol_gather(PyObject *lists, uint64_t *out, int64_t capacity, data_ptr_fn data_ptr) {
    int64_t k = 0;
    try {
        Py_ssize_t n_lists = PyTuple_GET_SIZE(lists);
        for (Py_ssize_t i = 0; i < n_lists; i++) {
            PyObject *seq = PyTuple_GET_ITEM(lists, i);
            if (!PyList_Check(seq) && !PyTuple_Check(seq)) return -2;
            Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
            if (k + n > capacity) return -3;
            PyObject **items = PySequence_Fast_ITEMS(seq);
            for (Py_ssize_t j = 0; j < n; j++) out[k++] = (uint64_t)(uintptr_t)data_ptr(items[j]);
        }
    } catch (...) {
        return -1;
    }
    return k;
}
"""
_FLAGS = ["-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-std=c++11"]

_lock = threading.Lock()
_fn = None  # the C function, once loaded and tested
_data_ptr_fn: int | None = None
_tried = False
_data_ptr = Tensor.data_ptr


def _python_gather(lists: Sequence[Sequence[Tensor]]) -> array.array | None:
    try:
        addresses = list(map(_data_ptr, lists[0]))  # (array("Q", list) is faster than from map)
        for lst in lists[1:]:
            addresses += map(_data_ptr, lst)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):  # no storage; not a tensor
        return None
    return array.array("Q", addresses)


def _probes() -> tuple[list[Tensor], list[object]]:
    """Tensors of every layout a kernel takes (their pointers must be data_ptr()'s), and
    objects that have no data pointer (each must be refused)."""
    base = torch.arange(24, dtype=torch.float32)
    good = [base, torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64)), base[5:], base.view(4, 6)[1:, 2:],
            torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last), torch.zeros(()), torch.zeros(0),
            torch.zeros(3, dtype=torch.float16)]
    bad = [torch.zeros(3).to_sparse(), 3.0, None, [torch.zeros(2)]]
    return good, bad


def _load():
    """The tested C function, built on first use; None where it cannot be used."""
    global _fn, _data_ptr_fn, _tried
    if _tried:
        return _fn
    with _lock:
        if _tried:
            return _fn
        try:
            if os.environ.get("OPTIMLAB_POINTERS", "").strip().lower() == "python":
                return None
            address = getattr(getattr(torch._C, "_dynamo", None) and torch._C._dynamo.guards,
                              "_torchinductor_pyobject_tensor_data_ptr", None)
            include = sysconfig.get_paths().get("include")
            if not isinstance(address, int) or not address or not include \
                    or not os.path.exists(os.path.join(include, "Python.h")):
                return None
            path = _native.build(_SOURCE, _native.cache_dir(), prefix="optimlab_pointers", language="c++",
                                 flag_sets=[_FLAGS + [f"-I{include}"]], what="the pointer gatherer",
                                 key_extra=f"{sys.version}\0{include}\0{torch.__version__}")
            fn = ctypes.PyDLL(str(path)).ol_gather  # (PyDLL: the call keeps the GIL)
            fn.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
            fn.restype = ctypes.c_int64
            if _works(fn, address):
                _fn, _data_ptr_fn = fn, address
        except Exception:  # noqa: BLE001 - no compiler, no headers, ...: Python's loop, as fast as before
            pass
        finally:
            _tried = True
        return _fn


def _works(fn, address: int) -> bool:
    good, bad = _probes()
    out = array.array("Q", bytes(8 * (len(good) + 1)))
    if fn((good, tuple(good[:1])), out.buffer_info()[0], len(out), address) != len(good) + 1:
        return False
    if list(out) != [t.data_ptr() for t in good] + [good[0].data_ptr()]:
        return False
    if fn((good, good), out.buffer_info()[0], len(out), address) != -3 or fn((iter(good),), out.buffer_info()[0],
                                                                             len(out), address) != -2:
        return False
    return all(fn(([obj],), out.buffer_info()[0], len(out), address) == -1 for obj in bad)


def available() -> bool:
    """Whether :func:`gather` reads pointers in C (else in Python: same values, slower)."""
    return _load() is not None


def gather(lists: Sequence[Sequence[Tensor]]) -> array.array | None:
    """The data pointers (``Tensor.data_ptr()``) of every tensor in ``lists``, list after
    list, as a C array of uint64; None if one has none (sparse, mkldnn, a meta or
    storage-less tensor, not a tensor)."""
    fn = _fn if _tried else _load()
    if fn is None:
        return _python_gather(lists)
    n = sum(map(len, lists))
    out = array.array("Q", bytes(8 * n))
    rc = fn(lists if type(lists) is tuple else tuple(lists), out.buffer_info()[0], n, _data_ptr_fn)
    if rc == n:
        return out
    return None if rc == -1 else _python_gather(lists)
