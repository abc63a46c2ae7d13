"""Adafactor: second moments factored into row and column statistics (sub-linear memory)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optimlab.optim import _rules, _rules_modern
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer, TEMPORARY_CHUNK
from optimlab.optim._modern import RealOnly


def _non_positive(name: str, value: Any) -> None:
    if check._as_float(name, value) > 0:
        raise ValueError(f"{name} must be <= 0, got {value!r}")


def _eps_pair(name: str, value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (eps1 or None, eps2), got {value!r}")
    try:
        if value[0] is not None:
            check.non_negative(f"{name}[0]", value[0])
        check.non_negative(f"{name}[1]", value[1])
    except ValueError as err:
        raise ValueError(f"{err} ({name}={value!r})") from None


def _at_least_one(name: str, value: Any) -> None:
    if check._as_float(name, value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def adafactor_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Adafactor step on one tensor (Shazeer & Stern 2018, Algorithms 4 and 5, with
    relative step and update clipping), in place, as ``torch.optim.Adafactor``."""
    state["step"] += 1
    t = state["step"].item()
    lr, wd, d = float(group["lr"]), group["weight_decay"], group["d"]
    eps1, eps2 = group["eps"]
    if eps1 is None:
        eps1 = torch.finfo(param.dtype).eps

    def rms(x: Tensor) -> float:                               # RMS(x) = ‖x‖/√n
        return x.norm().item() / x.numel() ** 0.5

    g = -grad if group["maximize"] else grad
    beta2_t = 1 - t ** group["beta2_decay"]                    # β̂2_t = 1 − t^τ
    rho_t = min(lr, 1 / t**0.5)                                # ρ_t = min(γ, 1/√t)
    alpha_t = max(eps2, rms(param)) * rho_t                    # α_t = max(ε2, RMS(θ_{t−1}))·ρ_t
    if wd != 0:
        param.mul_(1 - lr * wd)                                # θ ← θ(1 − γλ)
    if param.dim() > 1:                                        # factored over the last two dims (n×m)
        R, C = state["row_var"], state["col_var"]
        R.lerp_((g * g).mean(dim=-1, keepdim=True), 1 - beta2_t)  # R_t = β̂2·R + (1 − β̂2)·mean_cols(g²)  (n×1)
        C.lerp_((g * g).mean(dim=-2, keepdim=True), 1 - beta2_t)  # C_t = β̂2·C + (1 − β̂2)·mean_rows(g²)  (1×m)
        v_hat = R * C / R.mean(dim=-2, keepdim=True).clamp(min=eps1)  # V̂_t = R_t·C_t / max(mean(R_t), ε1)
    else:
        v_hat = state["variance"]
        v_hat.lerp_(g * g, 1 - beta2_t)                        # V̂_t = β̂2·V̂_{t−1} + (1 − β̂2)·g²
    U = g * v_hat.clamp(min=eps1 * eps1).rsqrt()               # U_t = g / max(√V̂_t, ε1)  (as torch)
    param.sub_(alpha_t * U / max(1.0, rms(U) / d))             # θ_t = θ − α_t·U_t / max(1, RMS(U_t)/d)


class Adafactor(RealOnly, Optimizer):
    r"""Adafactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost"), a twin of ``torch.optim.Adafactor`` (torch's reading of the paper).

    With ``g`` the gradient (negated if ``maximize``), τ = ``beta2_decay``::

        β̂2_t = 1 − t^τ,   ρ_t = min(γ, 1/√t),   α_t = max(ε2, RMS(θ_{t−1}))·ρ_t
        θ ← θ·(1 − γλ)
        ≥ 2-D (factored over the last two dims, n×m):
            R_t = β̂2_t·R_{t−1} + (1 − β̂2_t)·mean_cols(g²)        (n×1: "row_var")
            C_t = β̂2_t·C_{t−1} + (1 − β̂2_t)·mean_rows(g²)        (1×m: "col_var")
            V̂_t = R_t·C_t / max(mean(R_t), ε1)
        else:  V̂_t = β̂2_t·V̂_{t−1} + (1 − β̂2_t)·g²               ("variance")
        U_t = g / max(√V̂_t, ε1),   θ_t = θ − α_t · U_t / max(1, RMS(U_t)/d)

    ε1 = None means the dtype's machine epsilon. The step is relative to the parameter's
    RMS and clipped in RMS, so there is no first moment and no learning rate to tune
    (γ only caps ρ_t and scales the weight decay).

    Memory: an n×m matrix keeps n + m numbers of state instead of Adam's 2nm.

    When to choose it: when optimizer memory is the constraint (large embedding or
    transformer matrices: T5 was trained with it). Tensors of more than two dimensions
    are factored over their last two, so stacks of matrices save memory too.
    """

    registry_name = "adafactor"  # registered by this (see _registry)
    rule = staticmethod(adafactor_rule)

    chunk_elements = TEMPORARY_CHUNK  # temporaries reused from the heap (see Optimizer)
    hyper_checks = {"beta2_decay": _non_positive, "eps": _eps_pair, "d": _at_least_one}
    state_keys = frozenset({"step", "row_var", "col_var", "variance"})

    def __init__(self, params: Any, lr: float | Tensor = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False, skip_nonfinite: bool = False):
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self._new_step()}
        if param.dim() > 1:
            state["row_var"] = param.new_zeros((*param.shape[:-1], 1))   # mean of g² over the last dim
            state["col_var"] = param.new_zeros((*param.shape[:-2], 1, param.shape[-1]))  # ... over dim −2
        else:
            state["variance"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _update(self, group, params, grads, states) -> None:
        steps = self._advance(states)
        grads = _rules.effective_grads(params, grads, maximize=group["maximize"], weight_decay=0)
        eps1, eps2 = group["eps"]
        _rules_modern.adafactor(params, grads, [s.get("row_var") for s in states],
                                [s.get("col_var") for s in states], [s.get("variance") for s in states], steps,
                                lr=float(group["lr"]), beta2_decay=group["beta2_decay"], eps1=eps1, eps2=eps2,
                                d=group["d"], weight_decay=group["weight_decay"])

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        """As the base, with a message naming the factored moments' own shapes."""
        params = {i: p for g_saved, g in zip(state_dict["param_groups"], self.param_groups)
                  if isinstance(g_saved, dict) for i, p in zip(g_saved.get("params", ()), g["params"])}
        for index, st in state_dict["state"].items():
            param = params.get(index)
            if param is None or not isinstance(st, dict):
                continue  # the base explains
            for key, expected in (("row_var", (*param.shape[:-1], 1)),
                                  ("col_var", (*param.shape[:-2], 1, param.shape[-1] if param.dim() else 1))):
                value = st.get(key)
                if isinstance(value, Tensor) and (param.dim() < 2 or tuple(value.shape) != expected):
                    raise ValueError(f"state[{index}][{key!r}] has shape {tuple(value.shape)} but a parameter "
                                     f"of shape {tuple(param.shape)} needs {expected if param.dim() > 1 else 'none'}")
        super()._check_loadable(state_dict)
