"""Layout guards compiled against torch's own headers: :class:`._layout.Memo`'s fast re-check.

A remembered layout is re-checked every step, for every parameter, gradient and state
tensor; on a model of many small tensors whose metadata is out of cache (after a forward and
backward pass) torch's ``TensorGuards`` takes about 0.35 µs a tensor. :class:`Guards` does the
same comparison in one C++ loop that reads each tensor's ``c10::TensorImpl`` through torch's
installed headers (``c10/core/TensorImpl.h``; their inline accessors are the ones torch
itself was built with), about half the time cold and a fifth in cache.

What it compares, for each tensor against the one recorded at its place: the Python type;
the dispatch key set (device type, layout, autograd, negative or conjugate view, zero
tensor, inference tensor: the keys a tensor carries); dtype; device and its index;
``requires_grad``; sizes and strides. It refuses a tensor given twice. The type is compared
first, then the key set, before anything else is read, so an object that is not a tensor of
the recorded kind is refused without its memory being read as one.

It records only tensors whose every dispatch key is dense, autograd, in-place-or-view,
autocast, negative, conjugate or zero-tensor (any device): no Python dispatch (subclass wrappers, fake
tensors), functorch, nested, sparse, mkldnn, quantized or functionalized tensor; for those,
:class:`._layout.Memo` uses ``TensorGuards``. The C++ reads a tensor's ``TensorImpl`` pointer
from its Python object (torch's ``THPVariable`` begins with it, after ``PyObject_HEAD``);
recording checks that pointer against ``_cdata`` read through torch's own descriptor (which
refuses any object that is not a tensor) for every tensor, and holds a reference to each
recorded type (so no other type can take its address); on first use
recording must refuse probes of those kinds, and :mod:`._layout`'s self-test (each property
changed on a probe must be refused) must pass. The library is built on first use with the system C++ compiler (about 2 s; cached
beside the kernels, :mod:`._native`) and linked to torch's ``libc10``; where any of it fails
(no compiler, no headers in this torch), ``TensorGuards`` alone serves, as before.
"""

from __future__ import annotations

import array
import ctypes
import os
import sys
import sysconfig
import threading
import warnings

import torch

from optimlab.optim import _native

__all__ = ["Guards", "load"]

_SOURCE = b"""
#include <Python.h>
#include <c10/core/TensorImpl.h>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {
// torch's THPVariable: PyObject_HEAD, then its at::Tensor, which is one TensorImpl pointer.
struct Variable { PyObject_HEAD c10::TensorImpl *impl; };
inline c10::TensorImpl *impl_of(PyObject *o) { return reinterpret_cast<Variable *>(o)->impl; }

struct Entry {
    PyTypeObject *type;
    c10::DispatchKeySet keys;
    c10::Device device;
    caffe2::TypeMeta dtype;
    bool requires_grad;
    int64_t dim;
    size_t at;  // sizes then strides, in Guard::dims
};
struct Guard {
    std::vector<Entry> entries;  // (each type holds a reference: its address cannot be reused)
    std::vector<int64_t> dims;
    ~Guard() {
        for (Entry &e : entries) Py_DECREF((PyObject *)e.type);
    }
};

const char *const kCapsule = "optimlab.guard";

void free_guard(PyObject *capsule) {  // (the capsule's destructor: GIL held)
    delete static_cast<Guard *>(PyCapsule_GetPointer(capsule, kCapsule));
}

bool plain_keys(c10::DispatchKeySet keys) {
    for (c10::DispatchKey k : keys) {
        if (c10::autocast_dispatch_keyset.has(k)) continue;  // (every tensor carries its device's)
        switch (c10::toFunctionalityKey(k)) {
            case c10::DispatchKey::Dense: case c10::DispatchKey::AutogradFunctionality:
            case c10::DispatchKey::ADInplaceOrView: case c10::DispatchKey::Negative:
            case c10::DispatchKey::Conjugate: case c10::DispatchKey::ZeroTensor:
                break;
            default:
                return false;
        }
    }
    return true;
}

// Whether the objects (already known to be distinct tensors' objects, or not) repeat one.
bool repeats(PyObject *const *items, Py_ssize_t n) {
    if (n < 2) return false;
    if (n <= 8) {
        for (Py_ssize_t i = 1; i < n; i++)
            for (Py_ssize_t j = 0; j < i; j++)
                if (items[i] == items[j]) return true;
        return false;
    }
    thread_local std::vector<uintptr_t> table;
    size_t size = 16;
    while (size < 2 * (size_t)n) size *= 2;
    table.assign(size, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        uintptr_t key = (uintptr_t)items[i];
        size_t h = (size_t)((key >> 4) * 0x9E3779B97F4A7C15ull) & (size - 1);
        while (table[h]) {
            if (table[h] == key) return true;
            h = (h + 1) & (size - 1);
        }
        table[h] = key;
    }
    return false;
}
}  // namespace

#define OL_EXPORT extern "C" __attribute__((visibility("default")))

/* A guard recording the tensors of the tuple `tensors`, whose TensorImpl addresses are
   `cdata` (read by the caller through torch's own `_cdata` descriptor, which refuses any
   object that is not a tensor): a capsule that frees it, or None if one is not a tensor of a
   recordable kind, its object does not lead to its TensorImpl, or one repeats. A new
   reference (ctypes.py_object); GIL held (ctypes.PyDLL). */
OL_EXPORT PyObject *ol_guard_new(PyObject *tensors, const uint64_t *cdata) {
    Guard *g = nullptr;
    try {
        if (!PyTuple_Check(tensors)) Py_RETURN_NONE;
        Py_ssize_t n = PyTuple_GET_SIZE(tensors);
        PyObject *const *items = &PyTuple_GET_ITEM(tensors, 0);
        if (repeats(items, n)) Py_RETURN_NONE;
        g = new Guard();
        g->entries.reserve(n);
        for (Py_ssize_t i = 0; i < n; i++) {
            c10::TensorImpl *impl = impl_of(items[i]);
            if ((uint64_t)(uintptr_t)impl != cdata[i] || !plain_keys(impl->key_set())
                    || impl->has_symbolic_sizes_strides() || impl->is_nested()
                    || impl->layout() != c10::kStrided) {
                delete g;
                Py_RETURN_NONE;
            }
            Entry e{Py_TYPE(items[i]), impl->key_set(), impl->device(), impl->dtype(), impl->requires_grad(),
                    impl->dim(), g->dims.size()};
            c10::IntArrayRef sizes = impl->sizes(), strides = impl->strides();
            g->dims.insert(g->dims.end(), sizes.begin(), sizes.end());
            g->dims.insert(g->dims.end(), strides.begin(), strides.end());
            Py_INCREF((PyObject *)e.type);
            g->entries.push_back(e);
        }
        PyObject *capsule = PyCapsule_New(g, kCapsule, free_guard);
        if (!capsule) {
            PyErr_Clear();
            delete g;
            Py_RETURN_NONE;
        }
        return capsule;
    } catch (...) {
        delete g;
        Py_RETURN_NONE;
    }
}

/* 1 if the tuple `tensors` matches the record of the guard in `capsule`, tensor by tensor,
   else 0 (also for anything but a guard's capsule). */
OL_EXPORT int ol_guard_check(PyObject *capsule, PyObject *tensors) {
    if (!PyCapsule_IsValid(capsule, kCapsule)) return 0;
    const Guard *g = static_cast<const Guard *>(PyCapsule_GetPointer(capsule, kCapsule));
    try {
        if (!PyTuple_Check(tensors)) return 0;
        Py_ssize_t n = PyTuple_GET_SIZE(tensors);
        if ((size_t)n != g->entries.size()) return 0;
        PyObject *const *items = &PyTuple_GET_ITEM(tensors, 0);
        const int64_t *dims = g->dims.data();
        for (Py_ssize_t i = 0; i < n; i++) {
            const Entry &e = g->entries[i];
            if (Py_TYPE(items[i]) != e.type) return 0;  // (first: only then is it a tensor's object)
            const c10::TensorImpl *impl = impl_of(items[i]);
            if (impl->key_set() != e.keys || impl->dtype() != e.dtype || impl->dim() != e.dim
                    || impl->device() != e.device)
                return 0;
            c10::IntArrayRef sizes = impl->sizes(), strides = impl->strides();
            size_t bytes = sizeof(int64_t) * (size_t)e.dim;
            if (bytes && (std::memcmp(sizes.data(), dims + e.at, bytes) != 0
                          || std::memcmp(strides.data(), dims + e.at + e.dim, bytes) != 0))
                return 0;
            if (impl->requires_grad() != e.requires_grad) return 0;
        }
        return repeats(items, n) ? 0 : 1;
    } catch (...) {
        return 0;
    }
}

"""

_lock = threading.Lock()
_lib = None  # (new, check, free), once loaded
_tried = False


def _flags(torch_dir: str, include: str) -> list[list[str]]:
    common = ["-O2", "-fPIC", "-shared", "-fvisibility=hidden", f"-I{include}",
              f"-I{os.path.join(torch_dir, 'include')}", "-DNDEBUG"]
    return [common + [std] for std in ("-std=c++20", "-std=c++17")]


def _build():
    torch_dir = os.path.dirname(torch.__file__)
    include = sysconfig.get_paths().get("include")
    lib_dir = os.path.join(torch_dir, "lib")
    if not include or not os.path.exists(os.path.join(include, "Python.h")) \
            or not os.path.exists(os.path.join(torch_dir, "include", "c10", "core", "TensorImpl.h")):
        return None
    path = _native.build(_SOURCE, _native.cache_dir(), prefix="optimlab_guards", language="c++",
                         flag_sets=_flags(torch_dir, include), what="the layout guards",
                         libs=[f"-L{lib_dir}", "-lc10", f"-Wl,-rpath,{lib_dir}"],
                         key_extra=f"{sys.version}\0{include}\0{torch_dir}\0{torch.__version__}\0"
                                   f"{getattr(torch.version, 'git_version', '')}")
    dll = ctypes.PyDLL(str(path))  # (PyDLL: the calls keep the GIL)
    new, check = dll.ol_guard_new, dll.ol_guard_check
    new.argtypes, new.restype = [ctypes.py_object, ctypes.c_void_p], ctypes.py_object
    check.argtypes, check.restype = [ctypes.py_object, ctypes.py_object], ctypes.c_int
    return new, check


def load():
    """:class:`Guards` if its library builds here and refuses to record what it cannot read,
    else None. (:mod:`._layout` then runs its self-test on it, as on ``TensorGuards``.)"""
    global _lib, _tried
    if _tried:
        return Guards if _lib else None
    with _lock:
        if not _tried:
            try:
                _lib = _build()
                if _lib is not None and not _refuses_the_unrecordable():
                    _lib = None
            except Exception:  # noqa: BLE001 - no compiler, no headers, ...: TensorGuards serves
                _lib = None
            finally:
                _tried = True
    return Guards if _lib else None


def _refuses_the_unrecordable() -> bool:
    """Recording refuses the kinds the C++ must never read as plain tensors, and a repeat."""
    t = torch.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (nested tensors are a prototype: torch says so)
        nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    odd = [torch.zeros(3).to_sparse(), nested, 3.0]
    for obj in odd:
        try:
            Guards(t, obj)
        except (ValueError, TypeError):
            continue
        return False
    try:
        Guards(t, t)
    except ValueError:
        return True
    return False


_cdata = torch._C.TensorBase.__dict__["_cdata"].__get__  # (TypeError for anything but a tensor)


class Guards:
    """``TensorGuards``'s interface (``Guards(*tensors)``, ``check(*tensors) -> bool``) over
    the C++ above. Raises ValueError (TypeError for a non-tensor) if a tensor cannot be
    recorded; :class:`._layout.Memo` then uses ``TensorGuards`` for that layout. The record
    lives in a capsule, freed with the last reference to it (never before: a guard reached
    again after its finalizer, in a collected cycle, still works)."""

    __slots__ = ("_capsule",)
    refuses_nested = True  # (its key-set comparison refuses one before reading its sizes)

    def __init__(self, *tensors, dynamic_dims_sizes=None, dynamic_dims_strides=None):
        if dynamic_dims_sizes is not None or dynamic_dims_strides is not None:
            raise ValueError("Guards compares every size and stride: dynamic dims are not supported")
        cdata = array.array("Q", [_cdata(t) for t in tensors])
        capsule = _lib[0](tensors, cdata.buffer_info()[0] if tensors else None)
        if capsule is None:
            raise ValueError("a tensor of a kind these guards do not record, or a tensor given twice")
        self._capsule = capsule

    def check(self, *tensors) -> bool:
        return _lib[1](self._capsule, tensors) == 1

    # Immutable once made: a copy may be the same object; pickling it across processes would
    # be meaningless.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError("layout guards hold addresses in this process: they cannot be pickled")
