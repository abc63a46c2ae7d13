"""Single-pass CPU kernels, generated from the optimizers' kernel descriptions.

The elementwise optimizers torch has no fused CPU kernel for (RMSprop, Adadelta, Adamax,
NAdam, RAdam, Lion, ADOPT, Schedule-Free AdamW and SGD, LAMB, LARS and the Keras-convention
twins) land here with ``fused=True`` and by default (``fused=None``, ``foreach=None``: see
``Optimizer._wants_kernel``; the Keras twins: ``KerasOptimizer._wants_kernel_here``) on
float32/float64 CPU tensors. Their foreach rules make one pass over memory per arithmetic
operation; these loops make one pass in all (LAMB and LARS two: their per-tensor norms
first), reading each operand once and writing each result once, and split the elements over
``torch.get_num_threads()`` threads.

Where the loops come from: each optimizer's kernel is a *description*
(each optimizer class's ``kernel``, beside its rule, in the language of :mod:`._kernelgen`; :func:`kernels`); :class:`._kernelgen.Library`
traces every description once per combination of its flags and emits a C loop for each
(a *variant*), for float32 and float64, with the table that dispatches them, into the
hand-written runtime ``_kernel_runtime.c`` (threads, chunking, step counters). A variant's id
is its index in that table, and the numbers its loop reads (``h`` per call, ``ts`` per
tensor) are packed by name by functions generated from the same trace: no id, constant or
formula is kept in step by hand between Python and C. :func:`launch` runs a description.

The arithmetic is the rule's, operation by operation, in the tensor's dtype (scalars
computed in double here, rounded to the dtype in C, as torch does; fused multiply-adds
exactly where torch's vectorised kernels use them): a kernel without square roots matches
the foreach path bit for bit. Square roots are the C library's (correctly rounded; torch's
CPU ``sqrt``, MKL's vector routine in torch's wheels, is not always, so these kernels agree
with the foreach path to an ulp or two per step), except in the descriptions marked
``torch_sqrt`` (the Keras twins, which must be Keras bit for bit), which call torch's own
routine on blocks of elements: found in libtorch and checked against ``torch.sqrt`` when the
library loads (:func:`sqrt_is_torchs`); where that check fails they use the C library's and
decline calls that ask for ``exact`` results.

Building: on the first step that uses them (any default CPU step of the optimizers above,
and of torch-kernel ones, whose step counters advance here) the generated source is
compiled with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``; a few seconds)
into ``$OPTIMLAB_KERNEL_CACHE`` or ``$XDG_CACHE_HOME/optimlab/kernels`` (default
``~/.cache/optimlab/kernels``), named by a hash of the source, the flags and the CPU, and
written atomically (concurrent processes each build and rename; one wins, all load a
complete file); later processes load it in milliseconds (and check, through a signature
compiled into it, that it is the library of these descriptions). A process builds or loads
at most once (under a lock); a failure is remembered, so it is not retried step after step.
``OPTIMLAB_FUSED_KERNELS=0`` turns the kernels off; ``OPTIMLAB_KERNEL_SQRT=ieee`` makes
them use the C library's (correctly rounded) square root. :func:`available` builds ahead of time.

:func:`launch` (and the wrappers below) perform the complete update, maximize and weight
decay included, and return True; they return False, having changed nothing, when no kernel
applies (a dtype other than float32/float64, any tensor that differs from its parameter in
dtype, device, layout, number of elements or memory order, no C compiler, ...): the caller
then runs the foreach rule. The first failure to build is reported with one warning.
:func:`fits` makes the same checks for torch's fused kernels, which trust their inputs as
these do.
"""

from __future__ import annotations

import array
import ctypes
import operator
import os
import subprocess
import sys
import threading
import warnings
from itertools import chain
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from optimlab.optim import _layout, _native, _pointers
from optimlab.optim._kernelgen import Kernel, Library
from optimlab.optim._rules import nadam_momentum

__all__ = ["launch", "prepare", "rmsprop", "adadelta", "adamax", "nadam", "advance_steps", "increment",
           "available", "fits", "library", "sqrt_is_torchs"]

#: Below this many elements in a call, one thread: waking a second costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 16
#: Elements per unit of work a thread takes (a multiple of 16: whole cache lines).
CHUNK_ELEMENTS = 1 << 15
#: A two-pass kernel (LAMB's, LARS's: per-tensor norms, then the update) takes consecutive
#: tensors of about this many bytes (all its arrays) at a time, both passes each, so that the
#: second pass reads from cache what the first read from memory (a larger tensor goes alone).
TWO_PASS_BYTES = 8 << 20

_RUNTIME = Path(__file__).with_name("_kernel_runtime.c")
_CFLAGS = ["-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic", "-ffp-contract=off",
           "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-fvisibility=hidden",
           "-pthread"]
_NATIVE = ["-march=native"]
#: The mode torch passes to MKL's vector maths (VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE).
_VML_MODE = 0x2 | 0x140000 | 0x100

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed = False
_sqrt_exact = False
_library: Library | None = None
_DTYPES = {torch.float32: 0, torch.float64: 1}


def kernels() -> list[Kernel]:
    """Every optimizer's kernel description: the ``kernel`` each registered optimizer class
    declares in its own body (subclasses inherit it), in the order of their names (a
    variant's id is its index in the library's table). Looking them up through the registry
    imports every optimlab optimizer module first, so the set, and the compiled library, do
    not depend on what the caller imported; a class registered after the library is built
    keeps its foreach rule.

    Raises ValueError where two different descriptions share a name."""
    from optimlab.optim import _registry  # (lazily: the optimizer modules import this one)

    found: dict[str, Kernel] = {}
    for convention in ("torch", "keras"):
        for name in _registry.available(convention):
            cls = _registry.get(name, convention=convention)
            for klass in getattr(cls, "__mro__", ()):
                k = klass.__dict__.get("kernel")
                if k is not None and found.setdefault(k.name, k) is not k:
                    raise ValueError(f"two kernel descriptions are named {k.name!r} ({klass.__qualname__}'s "
                                     "and another)")
    return [found[name] for name in sorted(found)]


def library() -> Library:
    """The generated kernel library (every variant of every description in :func:`kernels`,
    its C source and its table), built once per process."""
    global _library
    lib = _library
    if lib is None:
        with _lock:
            if _library is None:
                _library = Library(kernels(), _RUNTIME.read_text(encoding="utf-8"))
            lib = _library
    return lib


def _named(name: str) -> Kernel:
    return library().by_name[name]


# --------------------------------------------------------------------------- building
def _compiler() -> str | None:
    return _native.compiler("c")


def _gomp_paths() -> set[str]:
    """The libgomp files mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return {line.split()[-1] for line in maps if "/libgomp" in line}
    except OSError:
        return set()


def _openmp_flags() -> list[str]:
    """``["-fopenmp"]`` where the kernels can run on torch's own OpenMP threads: torch's
    parallel backend is OpenMP, its libgomp is loaded (the loader then gives the kernel
    library that same runtime, by soname) and the compiler is GCC (clang's -fopenmp would
    bring a second runtime, libomp). Two thread pools fight for the cores (torch's OpenMP
    workers spin after each parallel region), which cost the kernels most of their second
    thread. Otherwise (or ``OPTIMLAB_KERNEL_OPENMP=0``): [], the runtime's own pthread pool."""
    if os.environ.get("OPTIMLAB_KERNEL_OPENMP", "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info() or not _gomp_paths():
        return []
    cc = _compiler()
    try:
        version = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError, AttributeError):
        return []
    if "clang" in version.lower() or "Free Software Foundation" not in version:
        return []
    return ["-fopenmp"]


def _build(source: bytes, cache: Path, threads: Sequence[str] = ()) -> Path:
    """Compile (or find in the cache) the kernel library; raise RuntimeError on failure.
    ``threads``: extra flags choosing the kernels' threads (``-fopenmp``: :func:`_openmp_flags`)."""
    muladd = [f"-DOL_FUSED_MULADD={int(_fused_muladd_or_raise())}"]
    # -march=native where the compiler takes it, else portable
    return _native.build(source, cache, prefix="optimlab_kernels", language="c", libs=["-lm"],
                         flag_sets=[_CFLAGS + extra + muladd + list(threads) for extra in (_NATIVE, [])],
                         key_extra=_native.cpu_fingerprint(), what="the fused kernels")


#: Elements per probe of :func:`torch_fuses_multiply_adds`: whole vectorised steps of torch's
#: loops (up to 2 × 16 floats), then a scalar tail.
_MULADD_PROBE = 93
_muladd: list[bool | None] = []
_muladd_lock = threading.Lock()  # (not _lock: _load holds that one while it builds)


def torch_fuses_multiply_adds() -> bool | None:
    """How torch's CPU ops round ``a·b + c`` in this process: True if once (a fused
    multiply-add: its AVX2 and AVX-512 kernels), False if the product and then the sum (its x86
    DEFAULT capability: no FMA instructions, or ``ATEN_CPU_CAPABILITY=default``), None if
    neither holds for every op, dtype and element (then no kernel can follow them).

    Asked of the ops the descriptions' :func:`~._kernelgen.fma` stands for (``add(alpha=)``,
    ``addcmul``, ``lerp`` on both sides of its weight switch), float32 and float64, on fixed
    inputs where the two roundings differ, against both: the exact result rounded once
    (:class:`fractions.Fraction`) and torch's separate multiply and add. Computed once."""
    if not _muladd:
        with _muladd_lock:
            if not _muladd:
                with torch.inference_mode():
                    _muladd.append(_ask_torch_muladd())
    return _muladd[0]


def _fused_muladd_or_raise() -> bool:
    fused = torch_fuses_multiply_adds()
    if fused is None:
        raise RuntimeError("torch's CPU ops round a multiply-add neither always once nor always twice here, "
                           "so no kernel can reproduce them")
    return fused


def _ask_torch_muladd() -> bool | None:
    from fractions import Fraction

    def once(x: Tensor, y: Tensor, z: Tensor) -> Tensor:  # x·y + z, rounded once to the dtype
        exact = [Fraction(p) * Fraction(q) + Fraction(r) for p, q, r in zip(x.tolist(), y.tolist(), z.tolist())]
        return torch.tensor([_nearest(e, x.dtype) for e in exact], dtype=x.dtype)

    verdicts = set()
    rng = np.random.default_rng(20261201)
    for dtype in (torch.float32, torch.float64):
        a, b, c = (torch.from_numpy(rng.standard_normal(_MULADD_PROBE)).to(dtype) for _ in range(3))
        s = b[0].item()
        cases = [(torch.add(c, a, alpha=s), a, torch.full_like(a, s), c),  # c + s·a
                 (torch.addcmul(c, a, b), a, b, c)]                         # c + a·b
        for w in (0.3, 0.7):  # torch's lerp: fma(w, b − a, a) below 0.5, fma(w − 1, b − a, b) from it
            w = torch.tensor(w, dtype=dtype)  # (torch takes the weight in the dtype)
            coef, base = (w, a) if w < 0.5 else (w - 1, b)
            cases.append((torch.lerp(a, b, w.item()), coef.expand_as(a), b - a, base))
        for got, x, y, z in cases:
            fused, twice = torch.equal(got, once(x, y, z)), torch.equal(got, x * y + z)
            if fused == twice:  # (both cannot be: the inputs were chosen where they differ)
                return None
            verdicts.add(fused)
    return verdicts.pop() if len(verdicts) == 1 else None


def _nearest(value, dtype: torch.dtype) -> float:
    """The ``dtype`` number nearest to the rational ``value`` (ties to even), as a float."""
    d = float(value)  # (the nearest double: Fraction's division rounds correctly)
    if dtype == torch.float64:
        return d
    f = np.float32(d)  # (rounding the double again may miss by a tie: settle it exactly)
    candidates = (np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf)))
    return float(min(candidates, key=lambda v: (abs(type(value)(float(v)) - value), int(v.view(np.uint32)) & 1)))


def _open_built(source: bytes, threads: list[str], expected: Library) -> ctypes.CDLL:
    path = _build(source, _native.cache_dir(), threads)
    try:
        return _open(path, expected)
    except OSError:  # a damaged cache entry: build it again, once
        path.unlink(missing_ok=True)
        return _open(_build(source, _native.cache_dir(), threads), expected)


def _open(path: Path, expected: Library) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.ol_signature.restype = ctypes.c_char_p
    if lib.ol_signature().decode() != expected.signature:
        raise RuntimeError(f"{path} is not the library of these kernel descriptions")
    lib.ol_step.argtypes = [i32, i32, i32, i64, i64, vp, vp, vp, i32, vp, i64]
    lib.ol_step.restype = i32
    lib.ol_advance.argtypes = [i64, vp, vp, vp]
    lib.ol_advance.restype = None
    lib.ol_scale.argtypes = [i64, vp, vp, vp, vp]
    lib.ol_scale.restype = None
    lib.ol_set_sqrt.argtypes = [vp, vp, i64, vp]
    lib.ol_set_sqrt.restype = None
    lib.ol_sqrt.argtypes = [i32, i64, vp]
    lib.ol_sqrt.restype = None
    lib.ol_variant_count.restype = i32
    lib.ol_openmp.restype = i32
    lib.ol_fused_muladd.restype = i32
    if bool(lib.ol_fused_muladd()) != _fused_muladd_or_raise():
        raise RuntimeError(f"{path} rounds multiply-adds otherwise than torch's ops here")
    if lib.ol_variant_count() != len(expected.variants):
        raise RuntimeError(f"{path} has another table of kernels than these descriptions")
    return lib


def _torch_sqrt_routines() -> tuple[int, int, int | None] | None:
    """Addresses of the vector square roots torch's CPU ``sqrt`` calls (MKL's, exported by
    libtorch_cpu in torch's wheels) and of MKL's per-thread thread count setter, or None
    where there are none."""
    lib_dir = Path(torch.__file__).resolve().parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = lib_dir / name
        if not path.exists():
            continue
        try:
            torch_lib = ctypes.CDLL(str(path))  # already loaded by torch: the same handle
        except OSError:
            return None
        fs, fd = getattr(torch_lib, "VMSSQRT_", None), getattr(torch_lib, "VMDSQRT_", None)
        serial = getattr(torch_lib, "MKL_Set_Num_Threads_Local", None)  # (int) -> int, by value
        if fs is None or fd is None:
            return None
        address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        return address(fs), address(fd), (address(serial) if serial is not None else None)
    return None


def _sqrt_matches_torch(lib: ctypes.CDLL, serial: int | None = None) -> bool:
    """Whether the kernels' square root gives torch.sqrt's bits (float32 and float64, on
    values of every magnitude, in runs of every length the blocks make). ``serial``: MKL's
    per-thread thread count setter, to keep torch's sqrt here from starting MKL's OpenMP team
    (which would make a forked child's next threaded torch op hang)."""
    if serial is None:
        return _sqrt_check(lib)
    setter = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(serial)
    previous = setter(1)
    try:
        return _sqrt_check(lib)
    finally:
        setter(previous)


def _sqrt_check(lib: ctypes.CDLL) -> bool:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(5000) * 10, np.exp(rng.standard_normal(3000) * 30),
                             [0.0, 1e-40, 1e-310, np.inf, 4.0, 2.0]])
    for is_double, dtype in enumerate((torch.float32, torch.float64)):
        with np.errstate(over="ignore"):  # (float32: the largest values become inf)
            x = torch.from_numpy(values.astype(np.float64 if is_double else np.float32))
        # torch.sqrt in pieces below its parallel grain: on this thread (serial, see above)
        expected = torch.cat([torch.sqrt(piece) for piece in x.split(1024)])
        got = x.clone()
        lib.ol_sqrt(is_double, got.numel(), got.data_ptr())
        if not torch.equal(got, expected):
            return False
    return True


def _use_torch_sqrt(lib: ctypes.CDLL) -> bool:
    """Point the kernels' square root at torch's routine if it reproduces torch.sqrt, else at
    the C library's; True if the kernels' square roots are torch's, bit for bit."""
    routines = _torch_sqrt_routines()
    serial = routines[2] if routines is not None else None
    if routines is not None and os.environ.get("OPTIMLAB_KERNEL_SQRT", "").strip().lower() != "ieee":
        lib.ol_set_sqrt(routines[0], routines[1], _VML_MODE, serial)
        if _sqrt_matches_torch(lib, serial):
            return True
    lib.ol_set_sqrt(None, None, 0, None)
    return _sqrt_matches_torch(lib, serial)


def _load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None (after one warning) if it cannot be."""
    global _lib, _failed, _sqrt_exact
    if _lib is not None or _failed:
        return _lib
    if os.environ.get("OPTIMLAB_FUSED_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        with _lock:
            _failed = True
        return None
    generated = library()
    with _lock:
        if _lib is not None or _failed:
            return _lib
        try:
            if sys.byteorder != "little" or ctypes.sizeof(ctypes.c_void_p) != 8:
                raise RuntimeError("the kernels need a 64-bit little-endian platform")
            source = generated.source.encode()
            lib = None
            threads = _openmp_flags()
            if threads:  # torch's OpenMP threads, if the library gets torch's runtime (else the pool)
                runtimes = _gomp_paths()
                try:
                    lib = _open_built(source, threads, generated)
                except (OSError, RuntimeError):
                    lib = None
                if lib is not None and (not lib.ol_openmp() or _gomp_paths() != runtimes):
                    lib = None  # (a second runtime came with it: left loaded, unused)
            if lib is None:
                lib = _open_built(source, [], generated)
            _sqrt_exact = _use_torch_sqrt(lib)
        except Exception as err:  # noqa: BLE001 - any failure means: fall back, say so once
            _failed = True
            warnings.warn(f"optimlab: fused CPU kernels unavailable; the optimizers that use optimlab's "
                          f"single-pass kernels (SGD, Momentum, NAG, RMSprop, Adadelta, Adamax, NAdam, ...; "
                          f"fused=True, and the default) fall back to the foreach path ({err})", RuntimeWarning,
                          stacklevel=4)
            return None
        _lib = lib
        return lib


def available() -> bool:
    """Build (or load) the kernels now; True if ``fused=True`` will use them."""
    return _load() is not None


def unavailable() -> bool:
    """True once the kernels are known to be unavailable (switched off, or failed to build);
    False before the first attempt, and where they loaded."""
    return _failed


def sqrt_is_torchs() -> bool:
    """True if the kernels are built and their square roots are torch.sqrt's, bit for bit
    (then every kernel matches its foreach rule exactly)."""
    return _load() is not None and _sqrt_exact


# ------------------------------------------------------------------------- marshalling
def _address(buf: array.array) -> int:
    return buf.buffer_info()[0]


_contiguous = Tensor.is_contiguous
_numel = Tensor.numel
_stride = Tensor.stride
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_shape_of = operator.attrgetter("shape")
_is_cpu = operator.attrgetter("is_cpu")
_is_neg = Tensor.is_neg
_is_zerotensor = Tensor._is_zerotensor
_increment_version = torch._C._increment_version  # (a list: one C call; graph.increment_version wraps it)
#: The only tensor types a kernel takes, and the parameter types the default path sends to
#: one (others step one tensor at a time, as torch.optim's default: its
#: ``_foreach_supported_types``): a kernel writes memory behind the back of a subclass's
#: ``__torch_function__``/``__torch_dispatch__``, which must see the update. (The remembered
#: layouts compare Python types, so a hit is of these types too.)
PLAIN_TYPES = frozenset({Tensor, torch.nn.Parameter})
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._len_torch_function_stack


def _forward_ad_on() -> bool:
    """Whether a forward-mode AD level is active (``torch.autograd.forward_ad.dual_level``):
    tensors may carry tangents, which no fused kernel, ours or torch's, updates."""
    return _forward_ad._current_level >= 0


def _modes_watching() -> bool:
    """Whether a TorchDispatchMode (a profiler of ops, fake tensors, a tracer), a
    TorchFunctionMode other than torch's default-device context (``torch.set_default_device``
    keeps one on) or a forward-mode AD level (tensors may carry tangents, which torch's ops
    update and a kernel would leave behind) is active: each must see every update, which a
    kernel makes behind its back."""
    if _dispatch_modes() or _forward_ad_on():
        return True
    n = _function_modes()
    if not n:
        return False
    from torch.utils._device import DeviceContext  # (rarely reached)
    return any(not isinstance(torch._C._get_function_stack_at(i), DeviceContext) for i in range(n))


#: Layouts :func:`_matching_numels` accepted, re-checked in one call (see :mod:`._layout`).
_checked = _layout.Memo(64)
#: The dtypes torch's fused CPU kernels (SGD, Adam, AdamW, Adagrad) take.
TORCH_FUSED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def _dense(t: Tensor) -> bool:
    """No gaps and no overlaps: some order of the dimensions is contiguous (e.g. channels_last)."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _matching_numels(lists: Sequence[Sequence[Tensor]], dtypes) -> tuple[array.array, int] | None:
    """The parameters' numbers of elements (as C's int64 array, with their sum) if every
    tensor in ``lists`` ([params, grads, *state lists]) can go to an elementwise kernel beside
    its parameter; else None.

    Each tensor must be a plain Tensor or Parameter (:data:`PLAIN_TYPES`), of the first
    parameter's dtype (one of ``dtypes``) and device, have its own parameter's shape (a state
    reshaped to the same number of elements fails torch's ops: it must not pass here), and be
    laid out as it: all contiguous (the usual
    case), or each with its parameter's shape and strides over dense memory (channels_last).
    A kernel then touches exactly numel elements from each data pointer and pairs them
    correctly. Sparse layouts fail here (``is_contiguous()`` is False or raises; so does
    ``stride()``); mkldnn's opaque tensors have no data pointer (see :func:`_gather`). A
    gradient set through ``p.grad.data = ...`` can have any dtype and a state tensor any
    form, so nothing is taken on trust; each property is one C-level pass over a list, as
    these run every step. Lazily negated views (``is_neg()``, whose memory holds −x) and
    zero tensors (no memory: a null data pointer) fail too. A layout that passed is remembered
    (:class:`._layout.Memo`): the next step's tensors, usually of the same layouts, are then
    re-checked in one C++ call instead.
    """
    params = lists[0]
    if not params:
        return array.array("q"), 0
    # The key picks the remembered layout to compare with; the lists' lengths are in it, as
    # the comparison is of the lists chained. Parameters and gradients that the caller's
    # checks vouched for (see _layout) are not compared again: only the state.
    token = _layout.vouched(lists)
    if token is not None:
        key = (id(dtypes), token, *map(len, lists))
        flat = list(chain.from_iterable(lists[2:]))
    else:
        key = (id(dtypes), id(params[0]), *map(len, lists))
        flat = list(chain.from_iterable(lists))
    sizes = _checked.get(key, flat)
    if sizes is not None:
        return sizes
    p0 = params[0]
    dtype, on_cpu = p0.dtype, p0.is_cpu
    if dtype not in dtypes:
        return None
    try:
        numels = list(map(_numel, params))
        shapes = list(map(_shape_of, params))
        contiguous = True
        for lst in lists:
            if (len(lst) != len(params) or not set(map(type, lst)) <= PLAIN_TYPES
                    or set(map(_dtype_of, lst)) != {dtype}
                    or list(map(_numel, lst)) != numels or list(map(_shape_of, lst)) != shapes
                    or not (all(map(_is_cpu, lst)) if on_cpu else set(map(_device_of, lst)) == {p0.device})):
                return None
            contiguous = contiguous and all(map(_contiguous, lst))
            if any(map(_is_neg, lst)) or any(map(_is_zerotensor, lst)):
                return None
        if not contiguous:  # the same strides as the parameter, over memory without gaps
            strides = list(map(_stride, params))
            if not all(map(_dense, params)) or any(list(map(_stride, lst)) != strides for lst in lists):
                return None
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):  # not a plain tensor
        return None
    sizes = array.array("q", numels), sum(numels)  # (remembered with the layout: C reads it, never writes)
    _checked.put(key, flat, sizes)
    return sizes


def fits(lists: Sequence[Sequence[Tensor]]) -> bool:
    """True if ``lists`` ([params, grads, *state lists]) can go to torch's fused kernels.

    Their CPU kernels trust the caller as ours do (a short state tensor is read and written
    out of bounds; a transposed gradient is read in memory order), so the same checks as
    :func:`_gather`, with torch's dtypes (an mkldnn tensor, which only a hand-edited state
    could hold, makes torch's kernel raise); and none under forward-mode AD (torch's fused
    ops drop the tangents). False: use the foreach rule.
    """
    return not _forward_ad_on() and _matching_numels(lists, TORCH_FUSED_DTYPES) is not None


def _gather(lists: Sequence[Sequence[Tensor]]):
    """Pointers and sizes for the kernel, or None if some tensor does not fit it.

    ``lists`` is [params, grads, *state lists]; every tensor is checked as
    :func:`_matching_numels` says, with float32 or float64 as the dtype, on the CPU; None
    too under a torch mode or forward AD level that must see the update (:func:`_modes_watching`).
    """
    if not lists[0] or not lists[0][0].is_cpu or _modes_watching():
        return None
    sizes = _matching_numels(lists, _DTYPES)
    if sizes is None:
        return None
    addresses = _pointers.gather(lists)
    if addresses is None:  # sparse, mkldnn, ...: no data pointer
        return None
    return addresses, sizes[0], _DTYPES[lists[0][0].dtype], sizes[1]


def _threads(total: int) -> int:
    return 1 if total < PARALLEL_MIN_ELEMENTS else max(1, torch.get_num_threads())


def _per_tensor(steps: Sequence[float], fn) -> array.array:
    """fn(t) for each tensor's step, as doubles (steps are usually all equal: one call)."""
    if steps and steps.count(steps[0]) == len(steps):
        return array.array("d", [fn(steps[0])]) * len(steps)
    cache: dict[float, float] = {}
    out = array.array("d")
    for t in steps:
        v = cache.get(t)
        if v is None:
            v = cache[t] = fn(t)
        out.append(v)
    return out


def _run(kind: int, gathered, h: array.array, ts: array.array | None, nts: int,
         params: Sequence[Tensor]) -> bool:
    """One C call: variant ``kind`` over the tensors ``gathered`` describes."""
    lib = _load()
    if lib is None:
        return False
    ptrs, numels, is_double, total = gathered
    ts_address = _address(ts) if ts is not None and len(ts) else None
    # The parameters change behind autograd's back: bump their version counters, as an
    # in-place torch op does, so a graph that saved them notices. (Before the write: their
    # metadata is still in cache; a bump without a change, should the call fail, is harmless.)
    _increment_version(params)
    rc = lib.ol_step(kind, is_double, _threads(total), CHUNK_ELEMENTS, len(numels), _address(numels),
                     _address(ptrs), ts_address, nts, _address(h) if len(h) else None, TWO_PASS_BYTES)
    if rc != 0:
        raise RuntimeError(f"optimlab fused kernel {kind} failed with code {rc}")
    return True


def _scalar_pointers(tensors: Sequence[Tensor]):
    """Pointers and dtype flags of one-element float32/float64 strided CPU plain tensors (step
    counters, NAdam's μ-products, each in its own dtype), or None if one is anything else
    (``data_ptr()`` raises for the other layouts)."""
    if _modes_watching():
        return None
    try:
        kinds = list(map(_DTYPES.get, map(_dtype_of, tensors)))
        if (None in kinds or set(map(_numel, tensors)) - {1} or not all(map(_is_cpu, tensors))
                or not set(map(type, tensors)) <= PLAIN_TYPES):
            return None
        addresses = _pointers.gather((tensors,))
        return None if addresses is None else (addresses, array.array("i", kinds))
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):  # e.g. a plain number
        return None


# ----------------------------------------------------------------------------- kernels
def advance_steps(steps: Sequence[Tensor]) -> list[float] | None:
    """``torch._foreach_add_(steps, 1)`` then each ``.item()``, in one C call.

    For the 0-dim float32/float64 CPU step counters; the arithmetic is torch's (t + 1 in
    the counter's dtype). torch's per-tensor dispatch costs ~2 µs a counter, a noticeable
    share of a fused step over many small tensors. Returns None (nothing changed) when the
    kernels are unavailable or a counter does not qualify: then use the torch ops.
    """
    lib = _load()
    if lib is None:
        return None
    scalars = _scalar_pointers(steps)
    if scalars is None:
        return None
    ptrs, is_double = scalars
    n = len(steps)
    out = array.array("d", [0.0]) * n
    _increment_version(steps)
    lib.ol_advance(n, _address(ptrs), _address(is_double), _address(out))
    return out.tolist()


def mark_written(params: Sequence[Tensor]) -> None:
    """Bump the version counters of ``params``, as an in-place torch op does, for a kernel
    that writes them behind autograd's back: then a backward through a graph that saved one
    of them before the step raises instead of silently using the new values. Ours do it in
    :func:`_run`; torch's fused optimizer ops (``torch._fused_adam_``, ``_fused_adamw_``,
    ``_fused_adagrad_``, ``_fused_sgd_``; torch 2.13, any device) do not, so their callers
    here call this."""
    _increment_version(params)


def increment(steps: Sequence[Tensor]) -> None:
    """``torch._foreach_add_(steps, 1)``, in one C call where :func:`advance_steps` applies."""
    if advance_steps(steps) is None:
        torch._foreach_add_(steps, 1)


def scale_scalars(tensors: Sequence[Tensor], factors: Sequence[float], pointers=None) -> list[float]:
    """``torch._foreach_mul_(tensors, factors)`` on 0-dim float32/float64 CPU tensors (each in
    its own dtype) and their new values, in one C call; the caller has checked them with
    :func:`_scalar_pointers` (``pointers``)."""
    lib = _load()
    ptrs, is_double = pointers if pointers is not None else _scalar_pointers(tensors)
    n = len(tensors)
    out = array.array("d", [0.0]) * n
    factors = factors if isinstance(factors, array.array) else array.array("d", factors)  # (kept alive)
    _increment_version(tensors)
    lib.ol_scale(n, _address(ptrs), _address(is_double), _address(factors), _address(out))
    return out.tolist()


# ------------------------------------------------------------------------- launching
class Launch:
    """A kernel call checked and ready (:func:`prepare`): every tensor fits; calling it runs
    the kernel with the per-tensor inputs given then (merged with those given to prepare)."""

    __slots__ = ("kernel", "hyper", "parts", "per_tensor", "params")

    def __init__(self, kernel: Kernel, hyper, parts, per_tensor, params):
        self.kernel, self.hyper, self.parts, self.per_tensor, self.params = kernel, hyper, parts, per_tensor, params

    def __call__(self, per_tensor: Mapping[str, Sequence[float]] | None = None) -> bool:
        inputs = {**self.per_tensor, **(per_tensor or {})}
        for variant, indices, gathered, params in self.parts:
            pack_h, pack_ts = variant.packers_cached
            h = array.array("d", pack_h(self.hyper))
            ts = None
            if pack_ts is not None:
                ts = _pack_per_tensor(pack_ts, self.hyper, inputs, indices, len(params), variant.tensor_inputs)
            if not _run(variant.id, gathered, h, ts, len(variant.tensor_slots), params):
                return False
        return True


def _pack_per_tensor(pack, hyper, inputs, indices, n, names) -> array.array:
    """The ``ts`` array: ``pack(hyper, t)`` for each tensor's inputs ``t`` (usually all equal:
    one evaluation)."""
    columns = [inputs[name] if indices is None else [inputs[name][i] for i in indices] for name in names]
    if all(len(c) == n for c in columns) and all(c.count(c[0]) == n for c in columns if n):
        if not n:
            return array.array("d")
        return array.array("d", pack(hyper, {name: c[0] for name, c in zip(names, columns)})) * n
    out = array.array("d")
    cache: dict[tuple, list[float]] = {}
    for row in zip(*columns):
        values = cache.get(row)
        if values is None:
            values = cache[row] = pack(hyper, dict(zip(names, row)))
        out.extend(values)
    return out


def prepare(kernel: Kernel, arrays: Mapping[str, Sequence[Tensor]], hyper: Mapping[str, Any],
            per_tensor: Mapping[str, Sequence[float]] | None = None, *, exact: bool = False) -> Launch | None:
    """Check that ``kernel`` can run on these tensors; a :class:`Launch` if so, else None
    (nothing changed). ``arrays``: the description's arrays by name (lists of tensors, one per
    parameter; an array the flags do not use may be missing or empty); ``hyper``: its
    hyperparameters and whatever its flags read, by name; ``per_tensor``: its per-tensor
    inputs by name (one number per parameter; tensor flags are decided from these). ``exact``:
    only where the kernel is bit-identical to the foreach ops (its square roots torch's)."""
    if _load() is None:
        return None
    params = arrays["param"]
    per_tensor = dict(per_tensor or {})
    if not params:
        return Launch(kernel, hyper, [], per_tensor, [])
    lib = library()
    if not lib.has(kernel):  # (a class defined after the library was built: its foreach rule)
        return None
    flags = kernel.group_flags(hyper)
    if kernel.tensor_flags:
        groups: dict[tuple[bool, ...], list[int]] = {}
        names = [n for n in kernel.per_tensor if n in per_tensor]
        columns = [per_tensor[name] for name in names]
        n = len(params)
        if all(len(c) == n and c.count(c[0]) == n for c in columns):  # the usual case: one evaluation
            groups[kernel.tensor_flag_values({name: c[0] for name, c in zip(names, columns)})] = list(range(n))
        else:
            for i in range(n):
                tf = kernel.tensor_flag_values({name: c[i] for name, c in zip(names, columns)})
                groups.setdefault(tf, []).append(i)
        split = [(flags + tf, idx if len(groups) > 1 else None) for tf, idx in groups.items()]
    else:
        split = [(flags, None)]
    parts = []
    for all_flags, indices in split:
        variant = lib.variant(kernel, all_flags)
        if exact and variant.uses_sqrt and not (kernel.torch_sqrt and _sqrt_exact):
            return None
        lists = []
        for name in variant.arrays:
            given = arrays.get(name)
            if given is None or len(given) != len(params):
                raise ValueError(f"kernel {kernel.name} (flags {variant.flag_dict}) needs the array {name!r} "
                                 f"for each of the {len(params)} parameters")
            lists.append(given if indices is None else [given[i] for i in indices])
        gathered = _gather(lists)
        if gathered is None:
            return None
        parts.append((variant, indices, gathered, lists[0]))
    return Launch(kernel, hyper, parts, per_tensor, params)


def launch(kernel: Kernel, arrays: Mapping[str, Sequence[Tensor]], hyper: Mapping[str, Any],
           per_tensor: Mapping[str, Sequence[float]] | None = None, *, exact: bool = False) -> bool:
    """Run ``kernel`` (an optimizer's description, see :func:`kernels`) on these tensors: True if it did
    the update, False (nothing changed) if it cannot serve them. See :func:`prepare`."""
    ready = prepare(kernel, arrays, hyper, per_tensor, exact=exact)
    return ready is not None and ready()


# ------------------------------------------------------------------------ the kernels
def rmsprop(*, params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor],
            grad_avgs: list[Tensor], momentum_buffers: list[Tensor], lr: float, alpha: float,
            eps: float, momentum: float, centered: bool, maximize: bool, weight_decay: float) -> bool:
    """:func:`_rules.rmsprop` after :func:`_rules.effective_grads`, in one pass."""
    return launch(_named("rmsprop"), dict(param=params, grad=grads, square_avg=square_avgs, grad_avg=grad_avgs,
                                      momentum_buffer=momentum_buffers),
                  dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered, maximize=maximize,
                       weight_decay=weight_decay))


def adadelta(*, params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor],
             acc_deltas: list[Tensor], lr: float, rho: float, eps: float, maximize: bool,
             weight_decay: float) -> bool:
    """:func:`_rules.adadelta` after :func:`_rules.effective_grads`, in one pass."""
    return launch(_named("adadelta"), dict(param=params, grad=grads, square_avg=square_avgs, acc_delta=acc_deltas),
                  dict(lr=lr, rho=rho, eps=eps, maximize=maximize, weight_decay=weight_decay))


def adamax(*, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_infs: list[Tensor],
           steps: Sequence[float], lr: float, beta1: float, beta2: float, eps: float, maximize: bool,
           weight_decay: float) -> bool:
    """:func:`_rules.adamax` after :func:`_rules.effective_grads`, in one pass."""
    return launch(_named("adamax"), dict(param=params, grad=grads, exp_avg=exp_avgs, exp_inf=exp_infs),
                  dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, maximize=maximize, weight_decay=weight_decay),
                  dict(step=steps))


def nadam(*, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
          mu_products: list[Tensor], steps: Sequence[float], lr: float, beta1: float, beta2: float,
          eps: float, momentum_decay: float, maximize: bool, weight_decay: float,
          decoupled: bool = False, decay_factor: float | None = None) -> bool:
    """:func:`_rules.nadam` after :func:`_rules.effective_grads` (or, ``decoupled``,
    :func:`_rules.decoupled_decay`), in one pass; ``mu_products`` are updated in place."""
    if len(mu_products) != len(params):
        return False
    ready = prepare(_named("nadam"), dict(param=params, grad=grads, exp_avg=exp_avgs, exp_avg_sq=exp_avg_sqs),
                    dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, maximize=maximize, weight_decay=weight_decay,
                         decay_factor=1 - lr * weight_decay if decay_factor is None else decay_factor,
                         decoupled_weight_decay=decoupled))
    if ready is None:
        return False
    mu = _scalar_pointers(mu_products)  # in their own dtype, not necessarily the params'
    if mu is None:
        return False
    steps = list(steps)
    mus = _per_tensor(steps, lambda t: nadam_momentum(beta1, t, momentum_decay))
    mu_nexts = _per_tensor(steps, lambda t: nadam_momentum(beta1, t + 1, momentum_decay))
    products = scale_scalars(mu_products, mus, mu)  # Π ← Π·μ_t, as torch._foreach_mul_
    return ready(dict(step=steps, mu=mus.tolist(), mu_next=mu_nexts.tolist(), mu_product=products))
