"""Gradient clipping by global norm and by value — the remedy for exploding
gradients — with explicit handling of non-finite gradients.

Call between ``loss.backward()`` and ``optimizer.step()``::

    norm = clip_grad_norm(model, max_norm=1.0)   # model, named_parameters() or parameters()
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

NONFINITE = ("raise", "zero", "keep")
_EPS = 1e-6  # keeps max_norm / norm finite for a zero norm; torch's clip_grad_norm_ uses the same


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds inf or NaN. ``parameter`` names the first such parameter
    (``None`` when every gradient is finite but their norm overflowed)."""

    def __init__(self, parameter: str | None, norm: float):
        self.parameter, self.norm = parameter, norm
        where = (f"first in parameter {parameter!r}" if parameter is not None
                 else "every gradient is finite but their norm overflowed")
        super().__init__(f"non-finite gradient norm {norm} ({where})")


def named_gradients(parameters) -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` for every parameter that has a gradient.

    ``parameters``: a model, ``model.named_parameters()``, an iterable of
    tensors (named by position, ``"[i]"``), or one tensor.
    """
    if isinstance(parameters, nn.Module):
        pairs = list(parameters.named_parameters())
    elif isinstance(parameters, torch.Tensor):
        pairs = [("[0]", parameters)]
    elif isinstance(parameters, Iterable):
        pairs = []
        for i, item in enumerate(parameters):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                pairs.append(item)
            elif isinstance(item, torch.Tensor):
                pairs.append((f"[{i}]", item))
            else:
                raise ValueError(f"parameters[{i}] must be a tensor or a (name, tensor) pair, got {item!r}")
    else:
        raise ValueError(f"parameters must be a model or an iterable of parameters, got parameters={parameters!r}")
    return [(name, p) for name, p in pairs if p.grad is not None]


def total_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """``‖g‖_p = (Σ_i ‖g_i‖_p^p)^(1/p)`` over all gradients as one vector (``max |g|`` for p = inf)."""
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    per_tensor = [torch.linalg.vector_norm(g, norm_type).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(per_tensor), norm_type)


def _check(name: str, value, *, allow_inf: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and (
        allow_inf or math.isfinite(value))
    if not ok:
        raise ValueError(f"{name} must be a positive number, got {name}={value!r}")
    return float(value)


def _nonfinite(named, norm: torch.Tensor, nonfinite: str) -> bool:
    """Apply the ``nonfinite`` policy; True when the gradients must not be clipped."""
    if torch.isfinite(norm):  # one host sync per call: the price of explicit handling
        return False
    if nonfinite == "raise":
        first = next((name for name, p in named if not torch.isfinite(p.grad).all()), None)
        raise NonFiniteGradientError(first, norm.item())
    if nonfinite == "zero":
        for _, p in named:
            p.grad.zero_()
    return True  # "keep": leave them as they are, the caller skips the step


def _check_policy(nonfinite: str) -> None:
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE)}, got nonfinite={nonfinite!r}")


def clip_grad_norm(parameters, max_norm: float, *, norm_type: float = 2.0,
                   nonfinite: str = "raise") -> torch.Tensor:
    """Rescale all gradients together so their global norm is at most ``max_norm``:
    ``g ← g · min(1, max_norm / (‖g‖ + 1e-6))``. Returns ``‖g‖`` before clipping.

    The direction of the update is kept, only its length is capped.
    Parameters without a gradient are skipped. ``nonfinite`` decides what a
    non-finite norm does: ``"raise"`` a ``NonFiniteGradientError`` naming the
    first offending parameter (names come from a model or
    ``named_parameters()``); ``"zero"`` the gradients; or ``"keep"`` them
    untouched so the caller can test the returned norm and skip the step.
    Same result as ``torch.nn.utils.clip_grad_norm_`` for finite gradients.
    """
    max_norm = _check("max_norm", max_norm)
    norm_type = _check("norm_type", norm_type, allow_inf=True)
    _check_policy(nonfinite)
    named = named_gradients(parameters)
    grads = [p.grad for _, p in named]
    norm = total_norm(grads, norm_type)
    if grads and not _nonfinite(named, norm, nonfinite):
        scale = torch.clamp(max_norm / (norm + _EPS), max=1.0)
        for g in grads:
            g.mul_(scale.to(g.device, g.dtype))
    return norm


def clip_grad_value(parameters, clip_value: float, *, nonfinite: str = "raise") -> torch.Tensor:
    """Clamp every gradient element into ``[−clip_value, clip_value]``.
    Returns the global 2-norm before clipping.

    Unlike norm clipping this can change the update's direction. Non-finite
    gradients are handled as in ``clip_grad_norm`` (clamping alone would turn
    inf into ``±clip_value`` and hide the blow-up).
    """
    clip_value = _check("clip_value", clip_value)
    _check_policy(nonfinite)
    named = named_gradients(parameters)
    grads = [p.grad for _, p in named]
    norm = total_norm(grads)
    if grads and not _nonfinite(named, norm, nonfinite):
        for g in grads:
            g.clamp_(-clip_value, clip_value)
    return norm
