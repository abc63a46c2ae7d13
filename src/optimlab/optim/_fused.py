"""Single-pass CPU kernels for the optimizers torch has no fused kernel for.

RMSprop, Adadelta, Adamax and NAdam land here with ``fused=True`` and by default (``fused=None``,
``foreach=None``: see ``Optimizer._wants_kernel``) on float32/float64 CPU tensors. The foreach rules in
:mod:`optimlab.optim._rules` make one pass over memory per arithmetic operation; the C
loops in ``_kernels.c`` make one pass in all, reading each operand once and writing each
result once, and split the elements over ``torch.get_num_threads()`` threads.

The arithmetic is the rule's, operation by operation, in the tensor's dtype (scalars
computed in double here, rounded to the dtype in C, as torch does; fused multiply-adds
exactly where torch's vectorised kernels use them), so the fused path agrees with the
foreach path to within an ulp or two per step.

Building: on the first step that uses them (any default CPU step of the optimizers above,
and of torch-kernel ones, whose step counters advance here) ``_kernels.c`` is compiled with
the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``; about a second) into
``$OPTIMLAB_KERNEL_CACHE`` or ``$XDG_CACHE_HOME/optimlab/kernels`` (default
``~/.cache/optimlab/kernels``), named by a hash of the source, the flags and the CPU, and
written atomically (concurrent processes each build and rename; one wins, all load a
complete file); later processes load it in milliseconds. A process builds or loads at most
once (under a lock); a failure is remembered, so it is not retried step after step. ``OPTIMLAB_FUSED_KERNELS=0``
turns the kernels off. :func:`available` builds ahead of time.

Each public function performs the complete update, maximize and weight decay included, and
returns True; it returns False, having changed nothing, when no kernel applies (a dtype
other than float32/float64, any tensor that differs from its parameter in dtype, device,
layout, number of elements or memory order, no C compiler, ...): the caller then runs the
foreach rule. The first failure to build is reported with one warning. :func:`fits` makes
the same checks for torch's fused kernels, which trust their inputs as these do.
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import operator
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.graph import increment_version as _increment_version

from optimlab.optim._rules import nadam_momentum

__all__ = ["rmsprop", "adadelta", "adamax", "nadam", "advance_steps", "increment", "available", "fits"]

# Kernel ids and flags: keep in sync with _kernels.c.
_K_RMSPROP, _K_ADADELTA, _K_ADAMAX, _K_NADAM = 0, 1, 2, 3
_F_MAXIMIZE, _F_WD, _F_CENTERED, _F_MOMENTUM, _F_DECOUPLED = 1, 2, 4, 8, 16

#: Below this many elements in a call, one thread: waking a second costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 16
#: Elements per unit of work a thread takes (a multiple of 16: whole cache lines).
CHUNK_ELEMENTS = 1 << 15

_SOURCE = Path(__file__).with_name("_kernels.c")
_CFLAGS = ["-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic", "-ffp-contract=off",
           "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-fvisibility=hidden",
           "-pthread"]
_NATIVE = ["-march=native"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed = False
_DTYPES = {torch.float32: 0, torch.float64: 1}


# --------------------------------------------------------------------------- building
def _cache_dir() -> Path:
    explicit = os.environ.get("OPTIMLAB_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "optimlab" / "kernels"


def _cpu_fingerprint() -> str:
    """What -march=native depends on: the machine and its CPU's feature flags."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features", "model name", "vendor_id", "cpu family", "model"):
                    parts.append(line.strip())
                elif not line.strip() and len(parts) > 2:
                    break  # the first CPU describes them all
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return cc
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _private_tmp() -> Path | None:
    """A per-user directory under the system temp dir, if it is (or can be) ours alone."""
    if not hasattr(os, "getuid"):
        return None
    path = Path(tempfile.gettempdir()) / f"optimlab-kernels-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    return path if st.st_uid == os.getuid() and not st.st_mode & 0o022 else None


def _build(source: bytes, cache: Path) -> Path:
    """Compile (or find in the cache) the shared library; raise RuntimeError on failure."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC or install gcc)")
    errors = []
    for extra in (_NATIVE, []):  # -march=native where the compiler takes it, else portable
        flags = _CFLAGS + extra
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cc.encode(),
                                         _cpu_fingerprint().encode()])).hexdigest()[:24]
        name = f"optimlab_kernels_{key}.so"
        for directory in (cache, None):  # an unwritable cache: a private temporary one
            directory = directory or _private_tmp()
            if directory is None:
                continue
            target = directory / name
            if target.exists():
                return target
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".so")
            except OSError as err:
                errors.append(f"{directory}: {err}")
                continue
            os.close(fd)
            try:
                proc = subprocess.run([*cc.split(), *flags, "-x", "c", "-o", tmp, str(_SOURCE), "-lm"],
                                      capture_output=True, text=True, timeout=120)
                if proc.returncode == 0:
                    os.replace(tmp, target)  # atomic: a concurrent process sees all or nothing
                    return target
                errors.append(f"{cc} {' '.join(flags)}: {proc.stderr.strip()[-2000:]}")
            except (OSError, subprocess.SubprocessError) as err:
                errors.append(f"{cc}: {err}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            break  # the directory was fine, the compiler was not: try other flags
    raise RuntimeError("compiling the fused kernels failed:\n" + "\n".join(errors))


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, i32, i64, dbl = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    lib.ol_step.argtypes = [i32, i32, i32, i32, i64, i64, vp, vp, vp, i32, vp]
    lib.ol_step.restype = i32
    lib.ol_nadam_scalars.argtypes = [i64, vp, vp, vp, vp, vp, dbl, vp]
    lib.ol_nadam_scalars.restype = None
    lib.ol_advance.argtypes = [i64, vp, vp, vp]
    lib.ol_advance.restype = None
    lib.ol_version.restype = i32
    if lib.ol_version() != 3:
        raise RuntimeError(f"{path} is not this version's kernel library")
    return lib


def _load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None (after one warning) if it cannot be."""
    global _lib, _failed
    if _lib is not None or _failed:
        return _lib
    with _lock:
        if _lib is not None or _failed:
            return _lib
        if os.environ.get("OPTIMLAB_FUSED_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
            _failed = True
            return None
        try:
            if sys.byteorder != "little" or ctypes.sizeof(ctypes.c_void_p) != 8:
                raise RuntimeError("the kernels need a 64-bit little-endian platform")
            source = _SOURCE.read_bytes()
            path = _build(source, _cache_dir())
            try:
                lib = _open(path)
            except OSError:  # a damaged cache entry: build it again, once
                path.unlink(missing_ok=True)
                lib = _open(_build(source, _cache_dir()))
        except Exception as err:  # noqa: BLE001 - any failure means: fall back, say so once
            _failed = True
            warnings.warn(f"optimlab: fused CPU kernels unavailable; RMSprop, Adadelta, Adamax and NAdam "
                          f"(fused=True, and the default) fall back to the foreach path ({err})",
                          RuntimeWarning, stacklevel=4)
            return None
        _lib = lib
        return lib


def available() -> bool:
    """Build (or load) the kernels now; True if ``fused=True`` will use them."""
    return _load() is not None


# ------------------------------------------------------------------------- marshalling
def _address(buf: array.array) -> int:
    return buf.buffer_info()[0]


_contiguous = Tensor.is_contiguous
_numel = Tensor.numel
_data_ptr = Tensor.data_ptr
_stride = Tensor.stride
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_shape_of = operator.attrgetter("shape")
_is_cpu = operator.attrgetter("is_cpu")
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


def _matching_numels(lists: Sequence[Sequence[Tensor]], dtypes) -> list[int] | None:
    """The parameters' numbers of elements if every tensor in ``lists`` ([params, grads,
    *state lists]) can go to an elementwise kernel beside its parameter; else None.

    Each tensor must be of the first parameter's dtype (one of ``dtypes``) and device, have
    its own parameter's number of elements, and be laid out as it: all contiguous (the usual
    case), or each with its parameter's shape and strides over dense memory (channels_last).
    A kernel then touches exactly numel elements from each data pointer and pairs them
    correctly. Sparse layouts fail here (``is_contiguous()`` is False or raises; so does
    ``stride()``); mkldnn's opaque tensors have no data pointer (see :func:`_gather`). A
    gradient set through ``p.grad.data = ...`` can have any dtype and a state tensor any
    form, so nothing is taken on trust; each property is one C-level pass over a list, as
    these run every step.
    """
    params = lists[0]
    if not params:
        return []
    p0 = params[0]
    dtype, on_cpu = p0.dtype, p0.is_cpu
    if dtype not in dtypes:
        return None
    try:
        numels = list(map(_numel, params))
        contiguous = True
        for lst in lists:
            if (len(lst) != len(params) or set(map(_dtype_of, lst)) != {dtype}
                    or list(map(_numel, lst)) != numels
                    or not (all(map(_is_cpu, lst)) if on_cpu else set(map(_device_of, lst)) == {p0.device})):
                return None
            contiguous = contiguous and all(map(_contiguous, lst))
        if not contiguous:  # the same strides as the parameter, over memory without gaps
            shapes, strides = list(map(_shape_of, params)), list(map(_stride, params))
            if not all(map(_dense, params)) or any(
                    list(map(_shape_of, lst)) != shapes or list(map(_stride, lst)) != strides for lst in lists):
                return None
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):  # not a plain tensor
        return None
    return numels


def fits(lists: Sequence[Sequence[Tensor]]) -> bool:
    """True if ``lists`` ([params, grads, *state lists]) can go to torch's fused kernels.

    Their CPU kernels trust the caller as ours do (a short state tensor is read and written
    out of bounds; a transposed gradient is read in memory order), so the same checks as
    :func:`_gather`, with torch's dtypes (an mkldnn tensor, which only a hand-edited state
    could hold, makes torch's kernel raise). False: use the foreach rule.
    """
    return _matching_numels(lists, TORCH_FUSED_DTYPES) is not None


def _gather(lists: Sequence[Sequence[Tensor]]):
    """Pointers and sizes for the kernel, or None if some tensor does not fit it.

    ``lists`` is [params, grads, *state lists]; every tensor is checked as
    :func:`_matching_numels` says, with float32 or float64 as the dtype, on the CPU.
    """
    if not lists[0] or not lists[0][0].is_cpu:  # (torch's kernels take other devices' tensors)
        return None
    numels = _matching_numels(lists, _DTYPES)
    if numels is None:
        return None
    try:
        addresses = list(map(_data_ptr, lists[0]))  # (array("Q", list) is faster than from map)
        for lst in lists[1:]:
            addresses += map(_data_ptr, lst)
    except (RuntimeError, NotImplementedError):  # sparse, mkldnn, ...: no data pointer
        return None
    return array.array("Q", addresses), array.array("q", numels), _DTYPES[lists[0][0].dtype], sum(numels)


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


def _run(kind: int, lists, flags: int, hyper: list[float], per_tensor: array.array | None = None,
         nts: int = 0, gathered=None, params: Sequence[Tensor] = ()) -> bool:
    lib = _load()
    if lib is None:
        return False
    if gathered is None:
        gathered = _gather(lists)
        if gathered is None:
            return False
        params = lists[0]
    ptrs, numels, is_double, total = gathered
    h = array.array("d", hyper)
    ts = _address(per_tensor) if per_tensor is not None and len(per_tensor) else None
    rc = lib.ol_step(kind, is_double, flags, _threads(total), CHUNK_ELEMENTS, len(numels), _address(numels),
                     _address(ptrs), ts, nts, _address(h))
    if rc != 0:
        raise RuntimeError(f"optimlab fused kernel {kind} failed with code {rc}")
    # The parameters changed behind autograd's back: bump their version counters, as an
    # in-place torch op would, so a graph that saved them notices.
    _increment_version(params)
    return True


def _common_flags(maximize: bool, weight_decay: float) -> int:
    return (_F_MAXIMIZE if maximize else 0) | (_F_WD if weight_decay != 0 else 0)


def _scalar_pointers(tensors: Sequence[Tensor]):
    """Pointers and dtype flags of one-element float32/float64 strided CPU tensors (step
    counters, NAdam's μ-products, each in its own dtype), or None if one is anything else
    (``data_ptr()`` raises for the other layouts)."""
    try:
        kinds = list(map(_DTYPES.get, map(_dtype_of, tensors)))
        if None in kinds or set(map(_numel, tensors)) - {1} or not all(map(_is_cpu, tensors)):
            return None
        return array.array("Q", list(map(_data_ptr, tensors))), array.array("i", kinds)
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
    lib.ol_advance(n, _address(ptrs), _address(is_double), _address(out))
    _increment_version(steps)
    return out.tolist()


def increment(steps: Sequence[Tensor]) -> None:
    """``torch._foreach_add_(steps, 1)``, in one C call where :func:`advance_steps` applies."""
    if advance_steps(steps) is None:
        torch._foreach_add_(steps, 1)


def rmsprop(*, params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor],
            grad_avgs: list[Tensor], momentum_buffers: list[Tensor], lr: float, alpha: float,
            eps: float, momentum: float, centered: bool, maximize: bool, weight_decay: float) -> bool:
    """:func:`_rules.rmsprop` after :func:`_rules.effective_grads`, in one pass."""
    if not params:
        return True
    flags = _common_flags(maximize, weight_decay)
    lists = [params, grads, square_avgs]
    if centered:
        flags |= _F_CENTERED
        lists.append(grad_avgs)
    if momentum > 0:
        flags |= _F_MOMENTUM
        lists.append(momentum_buffers)
    hyper = [lr, alpha, eps, momentum, weight_decay, 1 - alpha, -1.0 if maximize else 1.0]
    return _run(_K_RMSPROP, lists, flags, hyper)


def adadelta(*, params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor],
             acc_deltas: list[Tensor], lr: float, rho: float, eps: float, maximize: bool,
             weight_decay: float) -> bool:
    """:func:`_rules.adadelta` after :func:`_rules.effective_grads`, in one pass."""
    if not params:
        return True
    hyper = [lr, rho, eps, weight_decay, 1 - rho, -1.0 if maximize else 1.0]
    return _run(_K_ADADELTA, [params, grads, square_avgs, acc_deltas],
                _common_flags(maximize, weight_decay), hyper)


def adamax(*, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_infs: list[Tensor],
           steps: Sequence[float], lr: float, beta1: float, beta2: float, eps: float, maximize: bool,
           weight_decay: float) -> bool:
    """:func:`_rules.adamax` after :func:`_rules.effective_grads`, in one pass."""
    if not params:
        return True
    step_sizes = _per_tensor(steps, lambda t: -lr / (1 - beta1**t))
    hyper = [beta2, eps, weight_decay, 1 - beta1, -1.0 if maximize else 1.0]
    return _run(_K_ADAMAX, [params, grads, exp_avgs, exp_infs], _common_flags(maximize, weight_decay),
                hyper, step_sizes, 1)


def nadam(*, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
          mu_products: list[Tensor], steps: Sequence[float], lr: float, beta1: float, beta2: float,
          eps: float, momentum_decay: float, maximize: bool, weight_decay: float,
          decoupled: bool = False) -> bool:
    """:func:`_rules.nadam` after :func:`_rules.effective_grads` (or, ``decoupled``,
    :func:`_rules.decoupled_decay`), in one pass; ``mu_products`` are updated in place."""
    if not params:
        return True
    lib = _load()
    if lib is None:
        return False
    gathered = _gather([params, grads, exp_avgs, exp_avg_sqs])
    if gathered is None or len(mu_products) != len(params):
        return False
    mu = _scalar_pointers(mu_products)  # in their own dtype, not necessarily the params'
    if mu is None:
        return False
    mu_ptrs, mu_is_double = mu
    n = len(params)
    mus = _per_tensor(steps, lambda t: nadam_momentum(beta1, t, momentum_decay))
    mu_nexts = _per_tensor(steps, lambda t: nadam_momentum(beta1, t + 1, momentum_decay))
    bc2 = _per_tensor(steps, lambda t: 1 - beta2**t)
    scalars = array.array("d", [0.0]) * (3 * n)
    lib.ol_nadam_scalars(n, _address(mu_ptrs), _address(mu_is_double), _address(mus),
                         _address(mu_nexts), _address(bc2), lr, _address(scalars))
    flags = _common_flags(maximize, weight_decay) | (_F_DECOUPLED if decoupled else 0)
    hyper = [beta2, eps, weight_decay, 1 - beta1, 1 - beta2, 1 - lr * weight_decay,
             -1.0 if maximize else 1.0]
    return _run(_K_NADAM, None, flags, hyper, scalars, 3, gathered=gathered, params=params)
