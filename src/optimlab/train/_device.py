"""Where a run trains (``device=``) and in which precision (``precision=``).

Devices. ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device``, or ``"auto"``
(CUDA when it is available, else the CPU) — :func:`resolve_device`. Moving a run
(:func:`move`) moves the model (the same ``Parameter`` objects, so an optimizer
built on them stays valid), every tensor of the optimizer's state (as torch's
``Optimizer.load_state_dict`` places them: next to its parameter, except a
``"step"`` counter, which stays where it is unless the group is ``fused`` or
``capturable``), a Lookahead's slow weights, and an EMA's shadows.

Precision. ``"32"``: full precision (float32 where the model is float32).
``"bf16"`` / ``"fp16"``: ``torch.autocast(device_type, dtype)`` around the
forward pass and the loss (the weights, gradients and optimizer state stay in
the parameters' dtype, usually float32: mixed precision). ``"fp16"`` also scales
the loss (``torch.amp.GradScaler``), since float16 gradients underflow.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` this machine has.

    ``"auto"`` → ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. Raises
    ``ValueError`` naming ``name`` and the value for anything else than a CPU or CUDA
    device (``"tpu"``, ``"cuda:x"``), for CUDA when it is not available ("CUDA is not
    available"), and for a CUDA index past the last device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise ValueError(f"{name} must be 'cpu', 'cuda', 'cuda:N', 'auto' or a torch.device, "
                         f"got {name}={device!r}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be 'cpu', 'cuda', 'cuda:N', 'auto' or a torch.device, "
                         f"got {name}={device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r}: CUDA is not available on this machine "
                             "(torch.cuda.is_available() is False); use device='cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r}: there is no such CUDA device "
                             f"({torch.cuda.device_count()} visible)")
    return resolved


def check_precision(precision, device: torch.device) -> str:
    """``precision`` if it is ``"32"``, ``"bf16"`` or ``"fp16"`` and ``device`` runs it under
    autocast (fp16 also needs a ``GradScaler`` for the device); else ``ValueError``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of '32', 'bf16' or 'fp16', got precision={precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return precision
    kind = device.type
    problem = None
    if not torch.amp.autocast_mode.is_autocast_available(kind):
        problem = f"torch has no autocast for {kind!r} devices"
    elif kind == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        problem = "this GPU does not support bfloat16"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unsupported dtype warns and disables autocast
            with torch.autocast(kind, dtype=dtype):
                supported = torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == dtype
        if not supported:
            problem = f"torch {torch.__version__} has no {dtype} autocast on {kind!r}"
        elif dtype is torch.float16:
            try:
                torch.amp.GradScaler(kind)
            except Exception as err:  # an older torch: GradScaler for CUDA only
                problem = f"torch {torch.__version__} has no GradScaler for {kind!r} ({err})"
    if problem:
        raise ValueError(f"precision={precision!r} is not supported on device {str(device)!r}: {problem}; "
                         "use precision='32'" + (" or 'bf16'" if dtype is torch.float16 else ""))
    return precision


def slow_precision(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` will be slow on ``device`` (a CPU without native bfloat16/float16
    arithmetic, where oneDNN is bypassed for torch's slow reference kernels), or None."""
    dtype = PRECISIONS[precision]
    if dtype is None or device.type != "cpu":
        return None
    try:
        native = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if dtype is torch.bfloat16
                  else torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return None
    if native:
        return None
    native = "bfloat16 (AVX512-BF16 or AMX)" if dtype is torch.bfloat16 else "float16 (AVX512-FP16 or AMX-FP16)"
    return (f"precision={precision!r} on this CPU ({torch.backends.cpu.get_cpu_capability()}, without native "
            f"{native}) runs convolutions and matrix products in torch's slow fallback kernels: an epoch of the "
            "lecture CNN took about 8x as long as with precision='32' (docs/training.md). Mixed precision "
            "saves time on GPUs and recent CPUs; here, use precision='32'")


def autocast(precision: str, device: torch.device):
    """A function returning a fresh context for one forward pass: ``torch.autocast`` for
    ``"bf16"``/``"fp16"``, nothing for ``"32"``."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    kind = device.type
    return lambda: torch.autocast(kind, dtype=dtype)


def grad_scaler(precision: str, device: torch.device):
    """A ``torch.amp.GradScaler`` for ``"fp16"`` (its defaults: initial scale 2**16, halved
    on an overflow, doubled after 2000 steps without one), None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


# ------------------------------------------------------------------- moving
def model_device(model: torch.nn.Module) -> torch.device | None:
    p = next(model.parameters(), None)
    return None if p is None else p.device


def _move_value(value, device: torch.device, keep: bool):
    if isinstance(value, torch.Tensor):
        return value if keep else value.to(device)
    if isinstance(value, dict):
        return {k: _move_value(v, device, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_move_value(v, device, keep) for v in value]
    if isinstance(value, tuple):
        return tuple(_move_value(v, device, keep) for v in value)
    return value


def move_optimizer_state(optimizer: Any, device: torch.device) -> None:
    """Every state tensor of ``optimizer`` to ``device`` (see the module's doc for ``"step"``);
    recurses into a wrapped optimizer (``.optimizer``) and a Lookahead's slow weights."""
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
        move_optimizer_state(inner, device)
    else:
        policy = {}
        for group in optimizer.param_groups:
            special = bool(group.get("fused")) or bool(group.get("capturable"))
            for p in group["params"]:
                policy[p] = special
        for p, state in optimizer.state.items():
            if not isinstance(state, dict):
                continue
            for key, value in list(state.items()):
                keep = key == "step" and not policy.get(p, False)
                state[key] = _move_value(value, device, keep)
    slow = getattr(optimizer, "slow", None)
    if isinstance(slow, dict):
        for p, value in list(slow.items()):
            if isinstance(value, torch.Tensor):
                slow[p] = value.to(device)


def move_ema(ema, device: torch.device) -> None:
    """An ``optimlab.ema.EMA``'s shadow weights to ``device``."""
    if ema is None:
        return
    for name, value in list(ema.shadow.items()):
        ema.shadow[name] = value.to(device)


def move(model: torch.nn.Module, optimizer, ema, device: torch.device) -> None:
    """Model, optimizer state and EMA shadows to ``device`` (nothing moves that is there)."""
    model.to(device)
    move_optimizer_state(optimizer, device)
    move_ema(ema, device)
