"""Kernel descriptions, and the generator that turns them into single-pass C loops.

A *description* is a small Python function over symbolic operands, written like the
foreach rule it speeds up, one element at a time::

    @kernel("lion", arrays=("param", "grad", "exp_avg"), hyper=("lr", "beta1", "beta2", "weight_decay", "decay_factor"),
            flags={"maximize": "maximize", "decay": lambda h: h["weight_decay"] != 0})
    def lion_kernel(x, *, maximize, decay):
        g = -x.grad if maximize else x.grad
        p = x.param * x.decay_factor if decay else x.param     # θ(1 − γλ), computed by the caller
        update = fma(g, 1 - x.beta1, x.exp_avg * x.beta1)
        x.param = fma(sign(update), -x.lr, p)
        x.exp_avg = fma(g, 1 - x.beta2, x.exp_avg * x.beta2)

Operands (``x.<name>``):

* **arrays** (``arrays=``): the parameter, its gradient, state tensors, all of the parameter's
  dtype (float32 or float64). Reading one gives its value before the step; assigning one
  stores the new value (read back, it gives the new value). ``grad`` is read-only. Arrays a
  flag switches off are simply not touched, and then not passed to the kernel;
* **hyperparameters** (``hyper=``): numbers of the param group, the same for every tensor;
* **per-tensor inputs** (``per_tensor=``): one number per tensor (its step count, ...).

Arithmetic on hyperparameters and per-tensor inputs (``1 - x.beta1``, ``-x.lr / (1 - x.beta1
** x.step)``) is done *by Python in double precision* before the kernel runs, exactly as the
foreach rules compute their scalars; where such a number meets an array it is rounded to
the array's dtype, as torch rounds a Python scalar. Arithmetic on arrays is done in the
array's dtype, one IEEE operation per operator, in the order written (the generated C is
compiled with ``-ffp-contract=off``); :func:`fma` is a multiply-add rounded as torch's CPU ops
round ``add(alpha=)``, ``addcmul``, ``lerp`` and ``sub(alpha=)``: once (fused) where torch's build
fuses them (its AVX2 and AVX-512 kernels), else the product and then the sum (its x86 DEFAULT
capability); :mod:`._fused` asks torch's ops which before it builds the library.
Primitives: ``+ - * /``, unary ``-``, ``abs()``, :func:`fma`, :func:`sqrt`, :func:`lerp`
(torch's convention), :func:`maximum`, :func:`minimum`, :func:`clamp`, :func:`sign`,
:func:`where`, comparisons (``<``, ``>``, ...) and ``& | ~`` on their results.

**Flags** (``flags=``, from the hyperparameters; ``tensor_flags=``, from each tensor's
per-tensor inputs) are Python booleans: the description branches on them with ``if``, and
the generator traces it once per combination, each trace becoming its own branch-free,
vectorisable C loop (a *variant*). Tensors whose tensor flags differ go to different variants.

The same description runs in Python on torch tensors (:meth:`Kernel.evaluate`): the
operands are then tensors and floats and the primitives torch's ops, so a test can check the
description itself in float64 against the optimizer's foreach rule. The generator
(:class:`Library`) emits every variant of every description for float32 and float64, the
table of variants (whose index is the id Python passes), and, per variant, the Python
functions that pack the double-precision numbers by name into the ``h`` (per call) and
``ts`` (per tensor) arrays the C loop reads: nothing is kept in step by hand.

``sqrt`` is special: torch's CPU ``sqrt`` (MKL's vector square root in torch's wheels) is not
always correctly rounded. By default a kernel uses the C library's (correctly rounded, inline:
the fastest loop), within an ulp of torch's per square root. A description marked
``torch_sqrt=True`` (one that must be bit-identical with torch's ops) calls torch's routine on
blocks of elements instead: its loop is generated as stages separated by those calls, the
values a later stage needs kept in small stack buffers (cache-resident), so each array is
still read from and written to memory once.

Per-tensor reductions (:func:`norm`, :func:`reduce_sum`; LAMB's and LARS's trust ratios) make a
two-pass kernel: the generator splits the body into what the reductions need (the first pass,
which also stores what does not depend on them, and sums the reductions per tensor in double,
in a fixed order), the per-tensor numbers computed from the sums (once per tensor, between the
passes) and the rest (the second pass, which reads back what the first stored).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import inspect
import itertools
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["kernel", "Kernel", "Library", "decay_on", "torch_grad", "decoupled_param", "KERAS_DECAY", "keras_param", "Scalar", "Value", "fma", "sqrt", "lerp", "maximum", "minimum",
           "clamp", "sign", "where", "norm", "reduce_sum"]

_NUMBER = (int, float)


# ============================================================== the scalar domain (double)
class Scalar:
    """A number known when the kernel is called: a hyperparameter, a per-tensor input, or
    arithmetic on them. Computed by Python in double precision (generated code, the same
    operators in the same order), then rounded to the arrays' dtype where it meets them."""

    __slots__ = ("op", "args", "key")

    def __init__(self, op: str, *args: Any):
        self.op, self.args = op, args
        if op in ("hyper", "tensor"):
            self.key = (op, args[0])
        else:
            self.key = (op,) + tuple(a.key if isinstance(a, Scalar) else _const_key(a) for a in args)

    def __bool__(self):
        raise TypeError("a kernel's hyperparameters have no value while it is traced: branch with a flag "
                        "(flags=...) or choose with where(...)")

    def __hash__(self):
        return hash(self.key)

    # arithmetic: Python's, on doubles
    def _bin(self, op, other, swap=False):
        if isinstance(other, (Scalar,) + _NUMBER) and not isinstance(other, bool):
            return Scalar(op, other, self) if swap else Scalar(op, self, other)
        return NotImplemented

    def __add__(self, o): return self._bin("+", o)
    def __radd__(self, o): return self._bin("+", o, True)
    def __sub__(self, o): return self._bin("-", o)
    def __rsub__(self, o): return self._bin("-", o, True)
    def __mul__(self, o): return self._bin("*", o)
    def __rmul__(self, o): return self._bin("*", o, True)
    def __truediv__(self, o): return self._bin("/", o)
    def __rtruediv__(self, o): return self._bin("/", o, True)
    def __pow__(self, o): return self._bin("**", o)
    def __rpow__(self, o): return self._bin("**", o, True)
    def __lt__(self, o): return self._bin("<", o)
    def __le__(self, o): return self._bin("<=", o)
    def __gt__(self, o): return self._bin(">", o)
    def __ge__(self, o): return self._bin(">=", o)
    def __neg__(self): return Scalar("neg", self)
    def __pos__(self): return self
    def __abs__(self): return Scalar("abs", self)

    def leaves(self, kind: str) -> set[str]:
        """Names of the ``kind`` ("hyper" or "tensor") inputs this number depends on."""
        if self.op == kind:
            return {self.args[0]}
        out: set[str] = set()
        for a in self.args:
            if isinstance(a, Scalar):
                out |= a.leaves(kind)
        return out

    def python(self) -> str:
        """This number as a Python expression over ``h`` (hyperparameters) and ``t`` (per-tensor inputs)."""
        op, a = self.op, self.args
        if op == "hyper":
            return f"h[{a[0]!r}]"
        if op == "tensor":
            return f"t[{a[0]!r}]"
        if op in _SCALAR_BINARY or op in _SCALAR_COMPARE:
            return f"({_py(a[0])} {op} {_py(a[1])})"
        if op == "neg":
            return f"(-{_py(a[0])})"
        if op == "abs":
            return f"abs({_py(a[0])})"
        if op == "sqrt":
            return f"_sqrt({_py(a[0])})"
        if op in ("min", "max"):
            return f"{op}({_py(a[0])}, {_py(a[1])})"
        if op == "select":
            return f"({_py(a[1])} if {_py(a[0])} else {_py(a[2])})"
        raise AssertionError(op)

    def __repr__(self):
        return self.python().replace("h[", "").replace("t[", "").replace("']", "").replace("'", "")


_SCALAR_BINARY = ("+", "-", "*", "/", "**")
_SCALAR_COMPARE = ("<", "<=", ">", ">=")


def _const_key(v):
    if isinstance(v, bool) or not isinstance(v, _NUMBER):
        raise TypeError(f"a kernel operand must be a number, a hyperparameter or an array, got {v!r}")
    return ("const", type(v).__name__, repr(v))


def _py(v) -> str:
    if isinstance(v, Scalar):
        return v.python()
    if isinstance(v, float) and not math.isfinite(v):
        return f"float({repr(v)!r})"
    return repr(v)


# =============================================================== the array domain (dtype T)
class _Trace(threading.local):
    nodes: dict | None = None


_trace = _Trace()


class Value:
    """One element of an array expression while a description is traced (a node of the
    loop body). ``kind`` is "T" (the arrays' dtype) or "bool" (a comparison)."""

    __slots__ = ("op", "args", "kind", "id", "__weakref__")

    def __new__(cls, op: str, *args: Any, kind: str = "T"):
        nodes = _trace.nodes
        if nodes is None:
            raise RuntimeError("array expressions exist only while a kernel description is traced")
        key = (op, kind) + tuple(a.key if isinstance(a, Scalar) else (id(a) if isinstance(a, Value) else a)
                                 for a in args)
        found = nodes.get(key)
        if found is not None:
            return found  # the same expression: one node (common subexpressions are computed once)
        self = object.__new__(cls)
        self.op, self.args, self.kind, self.id = op, args, kind, len(nodes)
        nodes[key] = self
        return self

    def __bool__(self):
        raise TypeError("an array element has no value while the kernel is traced: branch with a flag "
                        "(flags=...) or choose with where(...)")

    __hash__ = object.__hash__

    def _bin(self, op, other, swap=False, kind="T"):
        if not isinstance(other, (Value, Scalar) + _NUMBER) or isinstance(other, bool):
            return NotImplemented
        a, b = (_wrap(other), self) if swap else (self, _wrap(other))
        if kind == "bool" or op in ("&", "|"):
            return Value(op, a, b, kind="bool")
        return Value(op, _as_number(a), _as_number(b))

    def __add__(self, o): return self._bin("+", o)
    def __radd__(self, o): return self._bin("+", o, True)
    def __sub__(self, o): return self._bin("-", o)
    def __rsub__(self, o): return self._bin("-", o, True)
    def __mul__(self, o): return self._bin("*", o)
    def __rmul__(self, o): return self._bin("*", o, True)
    def __truediv__(self, o): return self._bin("/", o)
    def __rtruediv__(self, o): return self._bin("/", o, True)
    def __lt__(self, o): return self._bin("<", o, kind="bool")
    def __le__(self, o): return self._bin("<=", o, kind="bool")
    def __gt__(self, o): return self._bin(">", o, kind="bool")
    def __ge__(self, o): return self._bin(">=", o, kind="bool")
    def __and__(self, o): return self._bin("&", o)
    def __or__(self, o): return self._bin("|", o)
    def __invert__(self): return Value("!", _as_bool(self), kind="bool")
    def __neg__(self): return Value("neg", _as_number(self))
    def __pos__(self): return self
    def __abs__(self): return Value("abs", _as_number(self))


def _wrap(x) -> Value:
    """A Value for an operand: a Scalar or a number becomes a parameter of the loop."""
    if isinstance(x, Value):
        return x
    if isinstance(x, Scalar):
        return Value("param", x, kind="bool" if x.op in _SCALAR_COMPARE else "T")
    if isinstance(x, bool):
        raise TypeError("use a flag, not a Python bool, inside a kernel expression")
    if isinstance(x, _NUMBER):
        return Value("const", float(x))
    raise TypeError(f"not a kernel operand: {x!r}")


def _as_number(v: Value) -> Value:
    if v.kind != "T":
        raise TypeError("a comparison is not a number: use where(condition, a, b)")
    return v


def _as_bool(v: Value) -> Value:
    if v.kind != "bool":
        raise TypeError("expected a comparison (a < b, ...)")
    return v


def _symbolic(*xs) -> bool:
    return any(isinstance(x, Value) for x in xs)


def _tensor(*xs) -> bool:
    return any(isinstance(x, Tensor) for x in xs)


# ------------------------------------------------------------------------- primitives
def fma(a, b, c):
    """``a·b + c`` as torch's CPU ops round it: once (a fused multiply-add) where torch's build
    fuses, else twice (see the module's docstring). In Python on tensors: ``a*b + c``."""
    if _symbolic(a, b, c):
        return Value("fma", *(_as_number(_wrap(x)) for x in (a, b, c)))
    if isinstance(a, Scalar) or isinstance(b, Scalar) or isinstance(c, Scalar):
        raise TypeError("fma of hyperparameters: write a * b + c (computed in double by Python)")
    return a * b + c


def sqrt(x):
    """Square root: in a kernel the C library's (correctly rounded), or, in a description marked
    ``torch_sqrt``, torch's own CPU routine (bit for bit with torch.sqrt); in double by Python for
    hyperparameters (``math.sqrt``; write ``x ** 0.5`` for Python's pow)."""
    if isinstance(x, Value):
        return Value("sqrt", _as_number(x))
    if isinstance(x, Tensor):
        return torch.sqrt(x)
    if isinstance(x, Scalar):
        return Scalar("sqrt", x)
    return math.sqrt(x)


def lerp(a, b, weight):
    """torch's ``lerp(a, b, w)``: ``a + w·(b − a)`` for ``|w| < 0.5``, else ``b − (1 − w)·(b − a)``,
    each one fused multiply-add (torch's vectorised kernel); ``weight`` is a number or a
    hyperparameter expression, not an array."""
    if _symbolic(a, b):
        if isinstance(weight, Value):
            raise TypeError("lerp's weight must be a number or a hyperparameter expression")
        return Value("lerp", _as_number(_wrap(a)), _as_number(_wrap(b)), _wrap(weight))
    if _tensor(a, b):
        if not isinstance(a, Tensor):
            a = torch.full_like(b, a)
        return torch.lerp(a, b, weight)
    raise TypeError("lerp of hyperparameters: write the arithmetic out")


def maximum(a, b):
    """torch.maximum: the larger, NaN if either is NaN."""
    if _symbolic(a, b):
        return Value("max", _as_number(_wrap(a)), _as_number(_wrap(b)))
    if _tensor(a, b):
        return _torch_binary(torch.maximum, a, b)
    if isinstance(a, Scalar) or isinstance(b, Scalar):
        return Scalar("max", a, b)
    return max(a, b)


def minimum(a, b):
    """torch.minimum: the smaller, NaN if either is NaN."""
    if _symbolic(a, b):
        return Value("min", _as_number(_wrap(a)), _as_number(_wrap(b)))
    if _tensor(a, b):
        return _torch_binary(torch.minimum, a, b)
    if isinstance(a, Scalar) or isinstance(b, Scalar):
        return Scalar("min", a, b)
    return min(a, b)


def clamp(x, low=None, high=None):
    """torch.clamp: ``minimum(maximum(x, low), high)`` (NaN stays NaN)."""
    if low is not None:
        x = maximum(x, low)
    if high is not None:
        x = minimum(x, high)
    return x


def sign(x):
    """torch.sign: −1, 0 or 1 (0 for ±0 and NaN)."""
    if isinstance(x, Value):
        return Value("sign", _as_number(x))
    if isinstance(x, Tensor):
        return torch.sign(x)
    raise TypeError("sign of a hyperparameter: compute it outside the description")


def where(condition, a, b):
    """``a`` where ``condition`` holds, else ``b`` (elementwise for a comparison of arrays; for a
    comparison of hyperparameters, one choice for the whole tensor)."""
    if _symbolic(condition, a, b):
        return Value("where", _as_bool(_wrap(condition)), _as_number(_wrap(a)), _as_number(_wrap(b)))
    if isinstance(condition, Tensor):
        return torch.where(condition, a, b)
    if isinstance(condition, Scalar):
        return Scalar("select", condition, a, b)
    return a if condition else b


def norm(x):
    """The Euclidean norm of ``x`` over the whole tensor: one number per tensor (accumulated in
    double, in a fixed order whatever the threads, then rounded to the dtype), usable in the
    rest of the body. A body with reductions becomes two passes over memory (see
    :class:`Variant`). In Python on tensors: ``torch.linalg.vector_norm``."""
    if isinstance(x, Value):
        return Value("norm", _as_number(x))
    if isinstance(x, Tensor):
        return torch.linalg.vector_norm(x)
    raise TypeError("norm of a hyperparameter")


def reduce_sum(x):
    """The sum of ``x`` over the whole tensor (as :func:`norm`: accumulated in double)."""
    if isinstance(x, Value):
        return Value("rsum", _as_number(x))
    if isinstance(x, Tensor):
        return x.sum()
    raise TypeError("reduce_sum of a hyperparameter")


def _torch_binary(fn, a, b):
    if not isinstance(a, Tensor):
        a = torch.full_like(b, a)
    if not isinstance(b, Tensor):
        b = torch.full_like(a, b)
    return fn(a, b)


# ================================================================== descriptions
FlagSpec = Any  # str (a boolean hyperparameter) or a function of the hyperparameters


@dataclass
class Kernel:
    """A kernel description (see the module's docstring); made by :func:`kernel`."""

    name: str
    body: Callable
    arrays: tuple[str, ...]
    hyper: tuple[str, ...]
    per_tensor: tuple[str, ...] = ()
    flags: dict[str, FlagSpec] = field(default_factory=dict)
    tensor_flags: dict[str, Callable[[Mapping[str, float]], bool]] = field(default_factory=dict)
    read_only: tuple[str, ...] = ("grad",)
    #: Square roots by torch's own routine (bit for bit with torch.sqrt; the loop is then staged
    #: around block calls of it, which costs time) rather than the C library's (correctly
    #: rounded, inline: the fastest loop, within an ulp of torch's).
    torch_sqrt: bool = False
    doc: str = ""

    def __post_init__(self):
        params = [p for p in inspect.signature(self.body).parameters.values()][1:]
        names = [p.name for p in params]
        if sorted(names) != sorted([*self.flags, *self.tensor_flags]):
            raise TypeError(f"kernel {self.name}: the description takes the flags {names} as keywords, "
                            f"but declares {[*self.flags, *self.tensor_flags]}")
        clash = set(self.arrays) & set(self.hyper) | set(self.arrays) & set(self.per_tensor) \
            | set(self.hyper) & set(self.per_tensor)
        if clash:
            raise TypeError(f"kernel {self.name}: {sorted(clash)} declared twice")

    # -------------------------------------------------------------------- flags
    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(self.flags) + tuple(self.tensor_flags)

    def group_flags(self, hyper: Mapping[str, Any]) -> tuple[bool, ...]:
        return tuple(bool(hyper[spec]) if isinstance(spec, str) else bool(spec(hyper))
                     for spec in self.flags.values())

    def tensor_flag_values(self, inputs: Mapping[str, float]) -> tuple[bool, ...]:
        return tuple(bool(fn(inputs)) for fn in self.tensor_flags.values())

    def combinations(self) -> list[tuple[bool, ...]]:
        return list(itertools.product((False, True), repeat=len(self.flag_names)))

    # ------------------------------------------------------------------ tracing
    def trace(self, flags: tuple[bool, ...]) -> "Variant":
        """The loop body for one combination of flags."""
        nodes: dict = {}
        _trace.nodes = nodes
        try:
            x = _TraceOperands(self)
            self.body(x, **dict(zip(self.flag_names, flags)))
        finally:
            _trace.nodes = None
        return Variant(self, flags, x._loaded, x._stored)

    # --------------------------------------------------------------- evaluation
    def evaluate(self, arrays: Mapping[str, Sequence[Tensor]], hyper: Mapping[str, Any],
                 per_tensor: Mapping[str, Sequence[float]] | None = None) -> None:
        """Run the description in Python on torch tensors (in place, tensor by tensor): the
        description's own maths, for tests (use float64)."""
        per_tensor = per_tensor or {}
        n = len(arrays["param"])
        gflags = self.group_flags(hyper)
        for i in range(n):
            inputs = {k: float(v[i]) for k, v in per_tensor.items()}
            flags = gflags + self.tensor_flag_values(inputs)
            x = _EvalOperands(self, {k: v[i] for k, v in arrays.items() if len(v)}, hyper, inputs)
            self.body(x, **dict(zip(self.flag_names, flags)))
            x._write_back()


def kernel(name: str | None = None, *, arrays: Sequence[str], hyper: Sequence[str] = (),
           per_tensor: Sequence[str] = (), flags: Mapping[str, FlagSpec] | None = None,
           tensor_flags: Mapping[str, Callable] | None = None, torch_sqrt: bool = False) -> Callable[[Callable], Kernel]:
    """Decorator: a description function becomes a :class:`Kernel`."""

    def make(body: Callable) -> Kernel:
        return Kernel(name or body.__name__, body, tuple(arrays), tuple(hyper), tuple(per_tensor),
                      dict(flags or {}), dict(tensor_flags or {}), torch_sqrt=torch_sqrt,
                      doc=inspect.getdoc(body) or "")

    return make


# ------------------------------------------------- conventions the descriptions share
# Each optimizer's description sits in its module, beside its readable rule, and is its
# class's ``kernel``; :func:`optimlab.optim._fused.kernels` collects them. These helpers
# write the conventions several of them share.
#
# torch's conventions: ``maximize`` negates the gradient (exactly); L2 weight decay is
# ``g ← fma(θ, λ, g)`` (torch's ``add(g, θ, alpha=λ)``); decoupled decay is ``θ ← θ·(1 − γλ)``;
# ``addcmul(v, g, g, value=c)`` is ``fma(c·g, g, v)``, ``addcdiv(θ, a, b, value=c)`` is
# ``θ + c·a/b``, ``add(a, b, alpha=c)`` is ``fma(b, c, a)``.
def decay_on(h) -> bool:
    """The ``decay`` flag of the torch-convention descriptions: weight decay is on."""
    return h["weight_decay"] != 0


def torch_grad(x, maximize: bool, l2: bool):
    """The gradient a torch rule sees: negated if maximizing, plus λθ for L2 weight decay
    (:func:`optimlab.optim._rules.effective_grads`)."""
    g = -x.grad if maximize else x.grad
    return fma(x.param, x.weight_decay, g) if l2 else g


def decoupled_param(x, decay: bool):
    """θ·(1 − γλ) (decoupled weight decay, as ``torch._foreach_mul_(params, 1 − lr·wd)``); the
    factor is the hyperparameter ``decay_factor``, which the caller computes with
    :func:`optimlab.optim._rules.decay_factor` (in a tensor lr's dtype, as torch)."""
    return x.param * x.decay_factor if decay else x.param


# Keras's conventions: the Keras twins' descriptions transcribe optimlab.optim.keras._rules
# (Keras 3's torch backend, operation by operation: a multiply and an add where torch's rules
# have lerp/addcmul), bit for bit with Keras (square roots: torch's, ``torch_sqrt=True``). Each
# first applies Keras's decoupled weight decay θ ← θ·(1 − λη) (the base class's step, folded
# into the kernel): the per-tensor input ``decay`` is that factor (1.0 for a tensor excluded
# from decay: an exact no-op). ``lr`` is Keras's learning rate as the rule uses it (cast to the
# variable's dtype where Keras casts it); the scalars Keras computes in the variable's dtype
# come from keras._rules' helpers.
KERAS_DECAY = {"decay": lambda h: bool(h["weight_decay"])}


def keras_param(x, decay: bool):
    """θ·factor (Keras's decoupled decay, per tensor) where ``decay`` is on, else θ."""
    return x.param * x.decay if decay else x.param


class _TraceOperands:
    def __init__(self, k: Kernel):
        object.__setattr__(self, "_k", k)
        object.__setattr__(self, "_current", {})
        object.__setattr__(self, "_loaded", [])
        object.__setattr__(self, "_stored", {})

    def __getattr__(self, name):
        k = self._k
        if name in k.arrays:
            v = self._current.get(name)
            if v is None:
                v = self._current[name] = Value("load", name)
                self._loaded.append(name)
            return v
        if name in k.hyper:
            return Scalar("hyper", name)
        if name in k.per_tensor:
            return Scalar("tensor", name)
        raise AttributeError(f"kernel {k.name} declares no operand {name!r} "
                             f"(arrays {k.arrays}, hyper {k.hyper}, per_tensor {k.per_tensor})")

    def __setattr__(self, name, value):
        k = self._k
        if name not in k.arrays:
            raise AttributeError(f"kernel {k.name}: only arrays can be assigned, not {name!r}")
        if name in k.read_only:
            raise AttributeError(f"kernel {k.name}: {name} is read-only")
        v = _as_number(_wrap(value))
        self._current[name] = v
        self._stored[name] = v


class _EvalOperands:
    def __init__(self, k: Kernel, arrays: Mapping[str, Tensor], hyper: Mapping[str, Any],
                 inputs: Mapping[str, float]):
        object.__setattr__(self, "_k", k)
        object.__setattr__(self, "_arrays", dict(arrays))
        object.__setattr__(self, "_current", {})
        object.__setattr__(self, "_hyper", hyper)
        object.__setattr__(self, "_inputs", inputs)

    def __getattr__(self, name):
        k = self._k
        if name in k.arrays:
            if name in self._current:
                return self._current[name]
            if name not in self._arrays:
                raise AttributeError(f"kernel {k.name}: array {name!r} not given")
            return self._arrays[name]
        if name in k.hyper:
            return self._hyper[name]
        if name in k.per_tensor:
            return self._inputs[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        k = self._k
        if name not in k.arrays or name in k.read_only:
            raise AttributeError(f"kernel {k.name}: cannot assign {name!r}")
        ref = self._arrays[name]
        self._current[name] = value if isinstance(value, Tensor) else torch.full_like(ref, value)

    def _write_back(self):
        for name, value in self._current.items():
            self._arrays[name].copy_(value)


# ======================================================================= variants
_LEAVES = ("load", "param", "const", "mid")
_REDUCTIONS = ("norm", "rsum")


def _topological(roots: Sequence[Value]) -> list[Value]:
    seen: set[int] = set()
    out: list[Value] = []

    def visit(v: Value):
        if v.id in seen:
            return
        seen.add(v.id)
        for a in v.args:
            if isinstance(a, Value):
                visit(a)
        out.append(v)

    for r in roots:
        visit(r)
    return out


@dataclass
class _Pass:
    """One loop over the elements: its nodes, the arrays it stores, and (first pass of a
    two-pass kernel) the per-tensor reductions it accumulates or (second pass) the per-tensor
    numbers computed between the passes (``mid`` nodes) it reads."""

    order: list[Value]
    stored: dict[str, Value]
    reductions: list[Value] = field(default_factory=list)


@dataclass
class Variant:
    """One traced combination of flags: the loop body, the arrays it reads and writes (in the
    description's order: the order of the pointers the kernel takes) and its scalar slots.

    A body with per-tensor reductions (:func:`norm`, :func:`reduce_sum`) becomes two passes:
    the first computes what the reductions need (and stores what does not depend on them),
    accumulating the reductions per tensor; between the passes the per-tensor numbers that
    depend on them (``between``) are computed once per tensor; the second pass recomputes what
    it needs, reading back what the first stored, and stores the rest."""

    kernel: Kernel
    flags: tuple[bool, ...]
    loaded: list[str]
    stored: dict[str, Value]
    id: int = -1

    def __post_init__(self):
        used = set(self.loaded) | set(self.stored)
        self.arrays = [a for a in self.kernel.arrays if a in used]
        roots = [self.stored[a] for a in self.kernel.arrays if a in self.stored]  # deterministic order
        order = _topological(roots)
        self.order = order
        hyper_slots: dict[tuple, Scalar] = {}
        tensor_slots: dict[tuple, Scalar] = {}
        for v in order:
            if v.op == "param":
                s = v.args[0]
                (tensor_slots if s.leaves("tensor") else hyper_slots).setdefault(s.key, s)
        self.hyper_slots = list(hyper_slots.values())
        self.tensor_slots = list(tensor_slots.values())
        used_inputs = set().union(*(s.leaves("tensor") for s in self.tensor_slots))
        self.tensor_inputs = [n for n in self.kernel.per_tensor if n in used_inputs]
        self.uses_sqrt = any(v.op == "sqrt" for v in order)
        self.reductions = [n for n in order if n.op in _REDUCTIONS]
        if not self.reductions:
            self.passes = [_Pass(order, {a: self.stored[a] for a in self.kernel.arrays if a in self.stored})]
            self.between, self.mids = [], []
        else:
            self._split(order)

    def _split(self, order: list[Value]) -> None:
        post: set[int] = set()  # depends on a reduction
        elem: set[int] = set()  # depends on an array element (not through a reduction)
        for n in order:
            vargs = [a for a in n.args if isinstance(a, Value)]
            if n.op in _REDUCTIONS:
                if any(a.id in post for a in vargs):
                    raise TypeError(f"kernel {self.kernel.name}: a reduction of something that depends on a "
                                    "reduction (three passes) is not supported")
                post.add(n.id)
                continue
            if n.op == "load" or any(a.id in elem for a in vargs):
                elem.add(n.id)
            if any(a.id in post for a in vargs):
                post.add(n.id)
        names = [a for a in self.kernel.arrays if a in self.stored]
        first = {a: self.stored[a] for a in names if self.stored[a].id not in post}
        second = {a: self.stored[a] for a in names if self.stored[a].id in post}
        self.between = [n for n in order if n.id in post and n.id not in elem]
        pass1 = _Pass(_topological(list(first.values()) + [r.args[0] for r in self.reductions]), first,
                      self.reductions)
        # the second pass: what depends on the reductions, recomputed from the first pass's
        # results (read back from the arrays it stored) and the per-tensor numbers between
        stored_as = {v.id: a for a, v in first.items()}
        mids: list[Value] = []
        nodes: dict = {}
        memo: dict[int, Value] = {}
        _trace.nodes = nodes
        try:
            def clone(n: Value) -> Value:
                if n.id in memo:
                    return memo[n.id]
                if n.id in post and n.id not in elem:
                    if n not in mids:
                        mids.append(n)
                    out = Value("mid", mids.index(n), kind=n.kind)
                elif n.id in stored_as:
                    out = Value("load", stored_as[n.id])  # the first pass stored it: read it back
                elif n.op == "load":
                    if n.args[0] in first:
                        raise TypeError(f"kernel {self.kernel.name}: after its reductions the body needs the "
                                        f"old value of {n.args[0]!r}, which the first pass overwrites")
                    out = Value("load", n.args[0])
                elif n.op in ("param", "const"):
                    out = Value(n.op, *n.args, kind=n.kind)
                else:
                    out = Value(n.op, *[clone(a) if isinstance(a, Value) else a for a in n.args], kind=n.kind)
                memo[n.id] = out
                return out

            second_c = {a: clone(v) for a, v in second.items()}
        finally:
            _trace.nodes = None
        self.mids = mids
        self.passes = [pass1, _Pass(_topological(list(second_c.values())), second_c)]

    @property
    def flag_dict(self) -> dict[str, bool]:
        return dict(zip(self.kernel.flag_names, self.flags))

    # ----------------------------------------------------------- Python packing
    def packers(self) -> tuple[Callable, Callable | None]:
        """(hyper -> list of h values, per-tensor inputs -> list of ts values) for this variant,
        generated from its slots (the same Python operators as the description's)."""
        def compile_list(slots, args):
            src = f"lambda {args}: [" + ", ".join(s.python() for s in slots) + "]"
            return eval(src, {"_sqrt": math.sqrt, "abs": abs, "min": min, "max": max})  # noqa: S307 - our own source

        hyper_fn = compile_list(self.hyper_slots, "h")
        tensor_fn = compile_list(self.tensor_slots, "h, t") if self.tensor_slots else None
        return hyper_fn, tensor_fn

    @functools.cached_property
    def packers_cached(self) -> tuple[Callable, Callable | None]:
        return self.packers()

    # ------------------------------------------------------------------ C code
    def c_source(self, ctype: str, suffix: str) -> str:
        """This variant's C functions for one dtype: the loop (``<name>_<suffix>``), and for a
        two-pass kernel the reduction pass (``_r``) and the per-tensor numbers between (``_m``)."""
        if not self.reductions:
            return _CEmitter(self, self.passes[0], ctype, suffix, self.c_name).emit()
        return "\n".join([_CEmitter(self, self.passes[0], ctype, suffix, self.c_name + "_r").emit(),
                          self._between_source(ctype, suffix),
                          _CEmitter(self, self.passes[1], ctype, suffix, self.c_name).emit()])

    def _between_source(self, ctype: str, suffix: str) -> str:
        em = _CEmitter(self, _Pass([], {}), ctype, suffix, self.c_name + "_m")
        lines = [f"static void {self.c_name}_m_{suffix}(const double *sums, const double *h, const double *ts, "
                 "double *mid) {", "    (void)h; (void)ts;"]
        lines += em.slot_lines()
        for n in self.between:  # in the dtype, from the sums (double): norm = sqrt(sum), rounded once
            if n.op in _REDUCTIONS:
                i = self.reductions.index(n)
                value = f"sqrt(sums[{i}])" if n.op == "norm" else f"sums[{i}]"
                lines.append(f"    const {ctype} v{n.id} = ({ctype}){value};")
            else:
                ctype_n = "int" if n.kind == "bool" else ctype
                lines.append(f"    const {ctype_n} v{n.id} = {em.expr(n, em.plain_ref)};")
        for i, n in enumerate(self.mids):
            lines.append(f"    mid[{i}] = (double)v{n.id};")
        lines.append("}")
        return "\n".join(lines)

    @property
    def c_name(self) -> str:
        return f"olk_{self.id}_{self.kernel.name}"

    def table_entry(self) -> str:
        name = self.c_name
        if not self.reductions:
            return f"{{{len(self.arrays)}, {name}_f32, {name}_f64, 0, 0, NULL, NULL, NULL, NULL}}"
        return (f"{{{len(self.arrays)}, {name}_f32, {name}_f64, {len(self.reductions)}, {len(self.mids)}, "
                f"{name}_r_f32, {name}_r_f64, {name}_m_f32, {name}_m_f64}}")


# (fma: the runtime's macro, fused or not as torch's build rounds a multiply-add)
_C_MATH = {"float": dict(fma="OL_FMA_f32", fabs="fabsf", sqrt="sqrtf", suffix="f32"),
           "double": dict(fma="OL_FMA_f64", fabs="fabs", sqrt="sqrt", suffix="f64")}


class _CEmitter:
    """Writes one pass of a variant for one dtype: a single loop, or, with square roots (torch's)
    or reductions, a loop over blocks whose stages are separated by calls of the square-root
    routine, followed (reductions) by the accumulation of the block's reduction operands."""

    def __init__(self, variant: Variant, pass_: _Pass, ctype: str, suffix: str, name: str):
        self.v, self.p, self.T, self.sfx, self.name = variant, pass_, ctype, suffix, name
        self.m = _C_MATH[ctype]
        self.staged_sqrt = variant.kernel.torch_sqrt  # else inline: the C library's sqrt
        order = pass_.order
        reduced = [r.args[0] for r in pass_.reductions]
        stage: dict[int, int] = {}
        for node in order:
            s = 0
            for a in node.args:
                if isinstance(a, Value):
                    s = max(s, stage[a.id])
            stage[node.id] = s + 1 if node.op == "sqrt" and self.staged_sqrt else s
        for node in order:
            if node.op in _LEAVES:
                stage[node.id] = 0  # available in every stage (re-read, or hoisted)
        self.nstages = 1 + max((stage[n.id] for n in order), default=0)
        final = self.nstages - 1
        # as late as possible (but for the square roots' boundaries): fewer values to buffer
        consumers: dict[int, list[Value]] = {}
        for node in order:
            for a in node.args:
                if isinstance(a, Value):
                    consumers.setdefault(a.id, []).append(node)
        late_ids = {val.id for val in pass_.stored.values()} | {r.id for r in reduced}
        for node in reversed(order):
            if node.op in _LEAVES or node.op == "sqrt":
                continue
            late = [stage[c.id] - 1 if c.op == "sqrt" else stage[c.id] for c in consumers.get(node.id, [])]
            if node.id in late_ids:
                late.append(final)
            stage[node.id] = max(stage[node.id], min(late))
        self.stage = stage
        # the stage where each array is stored: after its value exists and after its last load
        last_load: dict[str, int] = {}
        for node in order:
            for a in node.args:
                if isinstance(a, Value) and a.op == "load":
                    last_load[a.args[0]] = max(last_load.get(a.args[0], 0), stage[node.id])
        self.store_stage = {name: max(stage[val.id], last_load.get(name, 0)) for name, val in pass_.stored.items()}
        # values computed in one stage and used in a later one travel through block buffers
        self.buffered: set[int] = set()
        for node in order:
            if node.op in _LEAVES:
                continue
            for a in node.args:
                if isinstance(a, Value) and a.op not in _LEAVES and stage[a.id] < stage[node.id] and node.op != "sqrt":
                    self.buffered.add(a.id)
        for name, val in pass_.stored.items():
            if val.op not in _LEAVES and stage[val.id] < self.store_stage[name]:
                self.buffered.add(val.id)
        for node in reduced:
            if node.op not in _LEAVES and stage[node.id] < final:
                self.buffered.add(node.id)
        self.sqrts = [n for n in order if n.op == "sqrt"] if self.staged_sqrt else []
        self.blocked = bool(self.sqrts or pass_.reductions)
        self.mid_index = {n.id: n.args[0] for n in order if n.op == "mid"}

    # names
    def ref(self, node: Value, cur_stage: int) -> str:
        if node.op == "param":
            return self.slot_name(node)
        if node.op == "const":
            return _c_literal(node.args[0], self.T)
        if node.op == "mid":
            return f"m{node.args[0]}"
        if node.op == "load":
            return f"l{node.id}"
        if (node.op == "sqrt" and self.staged_sqrt) or (node.id in self.buffered and self.stage[node.id] < cur_stage):
            return f"b{node.id}[k]"
        return f"v{node.id}"

    def plain_ref(self, node: Value) -> str:
        if node.op == "param":
            return self.slot_name(node)
        if node.op == "const":
            return _c_literal(node.args[0], self.T)
        return f"v{node.id}"

    def slot_name(self, node: Value) -> str:
        s = node.args[0]
        hk = [x.key for x in self.v.hyper_slots]
        if s.key in hk:
            return f"sh{hk.index(s.key)}"
        return f"st{[x.key for x in self.v.tensor_slots].index(s.key)}"

    def expr(self, node: Value, r) -> str:
        op, a = node.op, node.args
        T, m = self.T, self.m
        if op in ("+", "-", "*", "/", "<", "<=", ">", ">=", "&", "|"):
            return f"{r(a[0])} {op} {r(a[1])}"
        if op == "!":
            return f"!{r(a[0])}"
        if op == "neg":
            return f"-{r(a[0])}"
        if op == "abs":
            return f"{m['fabs']}({r(a[0])})"
        if op == "sqrt":  # (inline: the C library's, correctly rounded)
            return f"{m['sqrt']}({r(a[0])})"
        if op == "fma":
            return f"{m['fma']}({r(a[0])}, {r(a[1])}, {r(a[2])})"
        if op == "lerp":  # torch's lerp_vec: fmadd(small ? w : w − 1, b − a, small ? a : b)
            w = a[2].id
            return f"{m['fma']}(lc{w}, {r(a[1])} - {r(a[0])}, ls{w} ? {r(a[0])} : {r(a[1])})"
        if op == "max":  # NaN if either is (x's when x is), else the larger (x on a tie): one select,
            x, y = r(a[0]), r(a[1])  # which vectorises where a short-circuit || does not
            return f"(({x} < {y}) | ({y} != {y})) ? {y} : {x}"
        if op == "min":
            x, y = r(a[0]), r(a[1])
            return f"(({y} < {x}) | ({y} != {y})) ? {y} : {x}"
        if op == "sign":
            x = r(a[0])
            return f"({T})(({x} > ({T})0) - ({x} < ({T})0))"
        if op == "where":
            return f"{r(a[0])} ? {r(a[1])} : {r(a[2])}"
        raise AssertionError(op)

    def slot_lines(self) -> list[str]:
        v, T = self.v, self.T
        lines = []
        for i, s in enumerate(v.hyper_slots):
            if s.op in _SCALAR_COMPARE:
                lines.append(f"    const int sh{i} = h[{i}] != 0; /* {s!r} */")
            else:
                lines.append(f"    const {T} sh{i} = ({T})h[{i}]; /* {s!r} */")
        for i, s in enumerate(v.tensor_slots):
            if s.op in _SCALAR_COMPARE:
                lines.append(f"    const int st{i} = ts[{i}] != 0; /* {s!r} */")
            else:
                lines.append(f"    const {T} st{i} = ({T})ts[{i}]; /* {s!r} */")
        if v.hyper_slots or v.tensor_slots:
            lines.append("    " + " ".join(f"(void){n};" for n in
                                           [f"sh{i}" for i in range(len(v.hyper_slots))]
                                           + [f"st{i}" for i in range(len(v.tensor_slots))]))
        return lines

    def emit(self) -> str:
        v, p, T = self.v, self.p, self.T
        last = "double *acc" if p.reductions else "const double *mid"
        lines = [f"/* {v.kernel.name}: {', '.join(f'{k}={int(b)}' for k, b in v.flag_dict.items()) or 'no flags'}"
                 + (" (reduction pass)" if p.reductions else " (after the reductions)" if v.reductions else "") + " */",
                 f"static void {self.name}_{self.sfx}(char *const *a, int64_t cnt, const double *h, const double *ts, "
                 f"{last}) {{",
                 "    (void)h; (void)ts;" + ("" if p.reductions else " (void)mid;")]
        for i, name in enumerate(v.arrays):
            const = "const " if name not in p.stored else ""
            lines.append(f"    {const}{T} *restrict const p_{name} = ({const}{T} *)a[{i}]; (void)p_{name};")
        lines += self.slot_lines()
        for idx in sorted(set(self.mid_index.values())):
            mnode = v.mids[idx]
            if mnode.kind == "bool":
                lines.append(f"    const int m{idx} = mid[{idx}] != 0;")
            else:
                lines.append(f"    const {T} m{idx} = ({T})mid[{idx}];")
        done_lerp: set[int] = set()
        for node in p.order:
            if node.op == "lerp" and node.args[2].id not in done_lerp:
                w, key = self.ref(node.args[2], 0), node.args[2].id
                done_lerp.add(key)
                lines.append(f"    const int ls{key} = {self.m['fabs']}({w}) < ({T})0.5;")
                lines.append(f"    const {T} lc{key} = ls{key} ? {w} : {w} - ({T})1;")
        nred = len(p.reductions)
        for i in range(nred):
            lines.append(f"    double acc{i}[8] = {{0, 0, 0, 0, 0, 0, 0, 0}};")
        if self.blocked:
            lines.append("    for (int64_t j0 = 0; j0 < cnt; j0 += OL_BLOCK) {")
            lines.append("        const int64_t m = cnt - j0 < OL_BLOCK ? cnt - j0 : OL_BLOCK;")
            bufs = [f"b{i}[OL_BLOCK]" for i in sorted(self.buffered | {n.id for n in self.sqrts})]
            bufs += [f"r{i}[OL_BLOCK]" for i in range(nred)]
            if bufs:
                lines.append(f"        {T} " + ", ".join(bufs) + ";")
            ind = "        "
        else:
            ind = "    "
        for st in range(self.nstages):
            lines.append(f"{ind}#pragma GCC ivdep")
            if self.blocked:
                lines.append(f"{ind}for (int64_t k = 0; k < m; k++) {{")
                lines.append(f"{ind}    const int64_t j = j0 + k;")
            else:
                lines.append(f"{ind}for (int64_t j = 0; j < cnt; j++) {{")
            lines.extend(f"{ind}    {line}" for line in self.stage_body(st))
            lines.append(f"{ind}}}")
            for node in self.sqrts:
                if self.stage[node.id] == st + 1:
                    lines.append(f"{ind}OL_SQRT_{self.sfx}(m, b{node.id});")
        for i, r in enumerate(p.reductions):
            sq = r.op == "norm"
            term = (lambda e: f"(double){e} * (double){e}") if sq else (lambda e: f"(double){e}")
            lines.append(f"{ind}{{")
            lines.append(f"{ind}    int64_t k = 0;")
            lines.append(f"{ind}    for (; k + 8 <= m; k += 8) {{")
            for lane in range(8):
                lines.append(f"{ind}        acc{i}[{lane}] += {term(f'r{i}[k + {lane}]')};")
            lines.append(f"{ind}    }}")
            lines.append(f"{ind}    for (; k < m; k++) acc{i}[k & 7] += {term(f'r{i}[k]')};")
            lines.append(f"{ind}}}")
        if self.blocked:
            lines.append("    }")
        for i in range(nred):
            lines.append(f"    acc[{i}] = ((acc{i}[0] + acc{i}[1]) + (acc{i}[2] + acc{i}[3])) + "
                         f"((acc{i}[4] + acc{i}[5]) + (acc{i}[6] + acc{i}[7]));")
        lines.append("}")
        return "\n".join(lines)

    def stage_body(self, st: int) -> list[str]:
        p, T = self.p, self.T
        out: list[str] = []
        needed_loads: list[Value] = []
        inline = _LEAVES + (("sqrt",) if self.staged_sqrt else ())
        computed = [n for n in p.order if n.op not in inline and self.stage[n.id] == st]
        stores = [(name, val) for name, val in p.stored.items() if self.store_stage[name] == st]
        final = st == self.nstages - 1
        reduced = [r.args[0] for r in p.reductions] if final else []
        seen_load: set[int] = set()

        def note(x):
            if isinstance(x, Value) and x.op == "load" and x.id not in seen_load:
                seen_load.add(x.id)
                needed_loads.append(x)

        for n in computed:
            for x in n.args:
                note(x)
        for node in self.sqrts:
            if self.stage[node.id] == st + 1:
                for x in node.args:
                    note(x)
        for _, val in stores:
            note(val)
        for val in reduced:
            note(val)
        for ld in needed_loads:
            out.append(f"const {T} l{ld.id} = p_{ld.args[0]}[j];")
        r = lambda a: self.ref(a, st)  # noqa: E731
        for n in computed:
            ctype = "int" if n.kind == "bool" else T
            out.append(f"const {ctype} v{n.id} = {self.expr(n, r)};")
            if n.id in self.buffered:
                out.append(f"b{n.id}[k] = v{n.id};")
        for node in self.sqrts:
            if self.stage[node.id] == st + 1:
                out.append(f"b{node.id}[k] = {self.ref(node.args[0], st)};")
        for name, val in stores:
            out.append(f"p_{name}[j] = {self.ref(val, st)};")
        for i, val in enumerate(reduced):
            out.append(f"r{i}[k] = {self.ref(val, st)};")
        return out


def _c_literal(x: float, ctype: str) -> str:
    if math.isnan(x):
        return f"(({ctype})NAN)"
    if math.isinf(x):
        return f"(({ctype}){'-' if x < 0 else ''}INFINITY)"
    return f"(({ctype}){float(x).hex()})"


# ======================================================================== library
class Library:
    """Every variant of every description: the C source of the kernel library (the
    hand-written runtime with the generated loops and their table spliced in), each variant's
    id (its index in that table) and its Python packers."""

    MARKER = "/* @generated-kernels@ */"

    def __init__(self, kernels: Sequence[Kernel], runtime: str):
        gc_was_on = gc.isenabled()
        gc.disable()  # thousands of small acyclic objects: the collector's passes would dominate
        try:
            self._generate(kernels, runtime)
        finally:
            if gc_was_on:
                gc.enable()

    def _generate(self, kernels: Sequence[Kernel], runtime: str) -> None:
        self.kernels = list(kernels)
        names = [k.name for k in self.kernels]
        if len(set(names)) != len(names):
            raise ValueError(f"two kernels share a name: {names}")
        self.variants: list[Variant] = []
        self._by_flags: dict[tuple[str, tuple[bool, ...]], Variant] = {}
        for k in self.kernels:
            for flags in k.combinations():
                var = k.trace(flags)
                var.id = len(self.variants)
                self.variants.append(var)
                self._by_flags[k.name, flags] = var
        if self.MARKER not in runtime:
            raise ValueError("the runtime source has no place for the generated kernels")
        body = self._generated()
        source = runtime.replace(self.MARKER, body)
        self.signature = hashlib.sha256(source.encode()).hexdigest()[:32]
        self.source = source + f'\nOL_EXPORT const char *ol_signature(void) {{ return "{self.signature}"; }}\n'

    def variant(self, kernel: Kernel, flags: tuple[bool, ...]) -> Variant:
        return self._by_flags[kernel.name, flags]

    def has(self, kernel: Kernel) -> bool:
        """Whether this library was generated from ``kernel`` (this very description)."""
        return self.by_name.get(kernel.name) is kernel

    @functools.cached_property
    def by_name(self) -> dict[str, Kernel]:
        return {k.name: k for k in self.kernels}

    @functools.cached_property
    def max_arrays(self) -> int:
        return max((len(v.arrays) for v in self.variants), default=1)

    def _generated(self) -> str:
        out = ["/* ---- generated by optimlab.optim._kernelgen from the optimizers' kernel descriptions: do not edit ---- */",
               f"#define OL_MAX_ARRAYS {self.max_arrays}"]
        for v in self.variants:
            for ctype in ("float", "double"):
                out.append(v.c_source(ctype, _C_MATH[ctype]["suffix"]))
        out.append("static const ol_variant ol_variants[] = {")
        for v in self.variants:
            out.append(f"    {v.table_entry()}, /* {v.id} */")
        out.append("};")
        out.append(f"#define OL_NVARIANTS {len(self.variants)}")
        return "\n".join(out) + "\n"
