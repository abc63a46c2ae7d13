"""Muon: momentum orthogonalised by Newton–Schulz, for the 2-D hidden weights of a network,
with AdamW for everything else."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from optimlab.optim import _fused, _rules, _rules_modern
from optimlab.optim import _validation as check
from optimlab.optim._base import Optimizer
from optimlab.optim.adam import adam_rule
from optimlab.optim._modern import RealOnly

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan's quintic: the largest slope at zero


def _ns_coefficients(name: str, value: Any) -> None:
    if (not isinstance(value, (tuple, list)) or len(value) != 3
            or not all(isinstance(c, numbers.Real) and not isinstance(c, bool) and math.isfinite(c) for c in value)):
        raise ValueError(f"{name} must be three finite real numbers (a, b, c), got {value!r}")


def _ns_steps(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 100:
        raise ValueError(f"{name} must be an integer in [0, 100), got {value!r}")


def _adjust_lr_fn(name: str, value: Any) -> None:
    if value not in (None, "original", "match_rms_adamw"):
        raise ValueError(f"{name} must be None, 'original' or 'match_rms_adamw', got {value!r}")


_MUON_CHECKS = {"momentum": check.unit_interval, "nesterov": check.boolean, "ns_coefficients": _ns_coefficients,
                "eps": check.positive, "ns_steps": _ns_steps, "adjust_lr_fn": _adjust_lr_fn}
_NOT_2D = ("Muon orthogonalises 2-D weight matrices only; {where} has a parameter of shape {shape}. "
           "Give biases, norm gains, embeddings and the output head to AdamW: see "
           "optimlab.optim.muon_param_groups and MuonWithAuxAdamW")


def muon_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Muon step on one 2-D weight (Jordan et al. 2024; ``torch.optim.Muon``), in place."""
    lr, wd, mu = float(group["lr"]), group["weight_decay"], group["momentum"]
    B = state["momentum_buffer"]
    B.lerp_(grad, 1 - mu)                                      # B_t = μ·B_{t−1} + (1 − μ)·g_t
    U = grad.lerp(B, mu) if group["nesterov"] else B           # U_t = (1 − μ)·g_t + μ·B_t  (Nesterov), or B_t
    O = _rules_modern.newton_schulz(U, group["ns_coefficients"], group["ns_steps"], group["eps"])  # O_t = NS_k(U_t)
    param.mul_(1 - lr * wd)                                    # θ ← θ(1 − γλ)
    param.sub_(O, alpha=_rules_modern.muon_lr(lr, group["adjust_lr_fn"], param.shape))  # θ_t = θ − γ'·O_t


class Muon(RealOnly, Optimizer):
    r"""Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks";
    Liu et al. 2025, "Muon is Scalable for LLM Training"), a twin of ``torch.optim.Muon``.

    For each 2-D weight θ (n×m), with ``g`` its gradient::

        B_t = lerp(B_{t−1}, g_t, 1 − μ)                       ("momentum_buffer")
        U_t = lerp(g_t, B_t, μ)  (nesterov)   or   B_t
        O_t = NS_k(U_t):  X ← U/max(‖U‖_F, ε);  k times  A = XXᵀ,  X ← aX + (bA + cA²)X
        θ_t = θ_{t−1}·(1 − γλ) − γ'·O_t,   γ' = γ·√max(1, n/m)         ("original")
                                            γ' = 0.2·γ·√max(n, m)       ("match_rms_adamw")

    NS_k runs in bfloat16 (as torch); it maps U = PΣQᵀ to about PS'Qᵀ with S' ≈ 1, i.e. the
    nearest semi-orthogonal matrix: every direction of the update gets the same size.

    Muon is for the hidden layers only: biases, gains, embeddings and the output layer
    need another optimizer. :func:`muon_param_groups` splits a model that way and
    :class:`MuonWithAuxAdamW` runs both halves as one optimizer (one state_dict, one LR
    scheduler); this class, like torch's, rejects parameters that are not 2-D.

    When to choose it: transformer and CNN hidden weights at scale, where it reaches
    AdamW's loss in fewer steps (the NanoGPT and CIFAR-10 speed-runs; Moonlight). The
    Newton–Schulz iteration costs a few matrix products per weight per step.
    """

    registry_name = "muon"  # registered by this (see _registry)
    #: What the default step runs, for ``optimlab optimizers`` (no kernel: not elementwise).
    default_path = "one matrix at a time (Newton–Schulz; path_for: single-tensor)"
    rule = staticmethod(muon_rule)

    hyper_checks = {**_MUON_CHECKS}
    state_keys = frozenset({"momentum_buffer"})

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
                 skip_nonfinite: bool = False):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _require_2d(self, self.param_groups[-1])

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if self._by_rule:
            self._step_by_rule(group, params, grads)
            return
        states = [self.state[p] for p in params]
        for p, s in zip(params, states):
            if not s:
                s.update(self._init_state(p, group))
        _muon_update(group, params, grads, states)
        self._ran.add("single-tensor")  # (one matrix at a time: see path_for)


def _require_2d(opt: torch.optim.Optimizer, group: dict[str, Any]) -> None:
    for p in group["params"]:
        if p.dim() != 2:
            where = f"param group {len(opt.param_groups) - 1}"
            opt.param_groups.pop()
            raise ValueError(_NOT_2D.format(where=where, shape=tuple(p.shape)))


def _muon_update(group, params, grads, states) -> None:
    _rules_modern.muon(params, grads, [s["momentum_buffer"] for s in states], lr=float(group["lr"]),
                       weight_decay=group["weight_decay"], momentum=group["momentum"], nesterov=group["nesterov"],
                       ns_coefficients=group["ns_coefficients"], ns_steps=group["ns_steps"], eps=group["eps"],
                       adjust_lr_fn=group["adjust_lr_fn"])


def muon_param_groups(model: nn.Module, *, exclude: Iterable[str] = (), muon: dict[str, Any] | None = None,
                      adamw: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Split ``model``'s parameters the way Muon is used on real models.

    Muon (``use_muon=True``): the 2-D weights of hidden layers. AdamW (``use_muon=False``):
    everything else: biases and norm gains (< 2-D), convolution kernels (> 2-D), every
    ``nn.Embedding``/``nn.EmbeddingBag`` weight, the output head (the last ``nn.Linear``
    registered in the model), and parameters whose name contains a string in ``exclude``
    (e.g. ``"lm_head"``). Tied weights appear once. ``muon``/``adamw`` add hyperparameters
    to each group. Empty groups are left out.

    >>> opt = MuonWithAuxAdamW(muon_param_groups(model, muon=dict(lr=0.02)))  # doctest: +SKIP
    """
    exclude = tuple(exclude)
    aux_ids = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
               for p in m.parameters(recurse=False)}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        aux_ids |= {id(p) for p in linears[-1].parameters(recurse=False)}
    hidden, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_aux = p.dim() != 2 or id(p) in aux_ids or any(s in name for s in exclude)
        (rest if is_aux else hidden).append(p)
    groups = []
    if hidden:
        groups.append({"params": hidden, "use_muon": True, **(muon or {})})
    if rest:
        groups.append({"params": rest, "use_muon": False, **(adamw or {})})
    return groups


def muon_adamw_rule(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """Muon's rule in the ``use_muon`` groups, AdamW's (:func:`~optimlab.optim.adam.adam_rule`
    with decoupled decay) in the others."""
    if group["use_muon"]:
        muon_rule(param, grad, state, group)
    else:
        adam_rule(param, grad, state, {**group, "decoupled_weight_decay": True, "maximize": False})


class MuonWithAuxAdamW(Optimizer):
    r"""Muon for the hidden 2-D weights and AdamW for the rest, as one optimizer.

    Each param group carries ``use_muon``: True groups take :class:`Muon`'s update with
    Muon's hyperparameters (the keyword defaults below are torch.optim.Muon's); False
    groups take :class:`~optimlab.optim.AdamW`'s, with ``adamw_*`` defaults (torch.optim.AdamW's).
    In a Muon group ``eps`` is the Newton–Schulz guard; in an AdamW group it is Adam's ε.
    A plain list of tensors (or a group without ``use_muon``) is split by shape: 2-D to
    Muon, the rest to AdamW. For a real model use :func:`muon_param_groups`, which also
    sends embeddings and the output head to AdamW (Jordan's recommendation)::

        opt = MuonWithAuxAdamW(muon_param_groups(model, muon=dict(lr=0.02, weight_decay=0.01),
                                                 adamw=dict(lr=3e-4, betas=(0.9, 0.95))))

    Step for step this equals ``Muon(muon_groups)`` plus ``AdamW(adamw_groups)``; a single
    object gives one ``state_dict`` and lets one LR scheduler drive every group.

    When to choose it: to train a whole model with Muon (see :class:`Muon`); the usual
    settings are Muon γ = 0.02 (λ ≈ 0.01) and AdamW γ = 3e-4, β = (0.9, 0.95) for the rest.
    """

    registry_name, registry_aliases = "muon_adamw", ("muon-adamw",)  # registered by this (see _registry)
    #: What the default step runs, for ``optimlab optimizers``.
    default_path = ("Muon's groups one matrix at a time (single-tensor); the AdamW groups torch's fused kernel "
                    "on the CPU, the foreach rule elsewhere")
    rule = staticmethod(muon_adamw_rule)
    default_kernels = "torch"  # the AdamW groups: torch's fused AdamW kernel by default, as AdamW
    torch_fused_ops = ("_fused_adamw_",)  # (called on the CPU only: see _update)

    hyper_checks = {**_MUON_CHECKS, "use_muon": check.boolean, "betas": check.betas, "amsgrad": check.boolean}
    state_keys = frozenset({"momentum_buffer", "step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
                 adamw_lr: float = 1e-3, adamw_betas: tuple[float, float] = (0.9, 0.999), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float = 1e-2, amsgrad: bool = False, foreach: bool | None = None,
                 skip_nonfinite: bool = False):
        self._aux_defaults = dict(lr=adamw_lr, betas=adamw_betas, eps=adamw_eps, weight_decay=adamw_weight_decay)
        # checked here, not only when an AdamW group arrives: a bad value is a constructor error
        for key, check_fn in (("lr", check.non_negative), ("betas", check.betas), ("eps", check.positive),
                              ("weight_decay", check.non_negative)):
            check.named(type(self).__name__, check_fn, f"adamw_{key}", self._aux_defaults[key])
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                        use_muon=True, betas=adamw_betas, amsgrad=amsgrad, foreach=foreach)
        super().__init__(_split_by_shape(params), defaults, skip_nonfinite=skip_nonfinite)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict) and param_group.get("use_muon") is False:
            param_group = {**self._aux_defaults, **param_group}
        elif isinstance(param_group, dict) and "use_muon" not in param_group:
            raise ValueError("a param group of MuonWithAuxAdamW needs use_muon=True or False "
                             "(or pass plain tensors to the constructor to split them by shape)")
        super().add_param_group(param_group)
        if self.param_groups[-1]["use_muon"]:
            _require_2d(self, self.param_groups[-1])
        for p in self.param_groups[-1]["params"]:
            if p.is_complex():
                self.param_groups.pop()
                raise ValueError(f"MuonWithAuxAdamW does not support complex parameters (dtype {p.dtype})")

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        if group["use_muon"]:
            return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}
        state = self._adam_moments(param)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if not group["use_muon"] or self._by_rule:
            super()._step_group(group, params, grads)
            return
        states = [self.state[p] for p in params]
        for p, s in zip(params, states):
            if not s:
                s.update(self._init_state(p, group))
        _muon_update(group, params, grads, states)
        self._ran.add("single-tensor")  # (one matrix at a time: see path_for)

    def _update(self, group, params, grads, states) -> None:  # the AdamW groups: torch's AdamW
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        amsgrad = group["amsgrad"]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        maxes = [s["max_exp_avg_sq"] for s in states] if amsgrad else []
        if self._kernel and params[0].is_cpu and _fused.fits([params, grads, exp_avgs, exp_avg_sqs,
                                                               *([maxes] if amsgrad else [])]):
            step_tensors = [s["step"] for s in states]  # torch's fused CPU AdamW kernel, as AdamW's default
            _fused.increment(step_tensors)
            _fused.mark_written(params)
            torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, maxes, step_tensors, amsgrad=amsgrad,
                                lr=lr, beta1=float(beta1), beta2=float(beta2), weight_decay=group["weight_decay"],
                                eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
            self._kernel_ran = True
            return
        steps = self._advance(states)
        _rules.decoupled_decay(params, lr=lr, weight_decay=group["weight_decay"])
        _rules.adam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                    [s["max_exp_avg_sq"] for s in states] if amsgrad else [], steps, lr=lr,
                    beta1=float(beta1), beta2=float(beta2), eps=group["eps"], amsgrad=amsgrad)


def _split_by_shape(params: Any) -> Any:
    if isinstance(params, Tensor):
        return params  # the base class explains the error
    params = list(params)
    groups = []
    for item in params:
        if isinstance(item, dict) and "use_muon" in item:
            groups.append(item)
            continue
        group = dict(item) if isinstance(item, dict) else {"params": [item]}
        raw = group.pop("params", [])
        tensors = [raw] if isinstance(raw, Tensor) else list(raw)
        two_d = [p for p in tensors if isinstance(p, Tensor) and p.dim() == 2]
        other = [p for p in tensors if not (isinstance(p, Tensor) and p.dim() == 2)]
        groups += [{"params": ps, "use_muon": flag, **group} for ps, flag in ((two_d, True), (other, False)) if ps]
    # consecutive plain tensors become one Muon group and one AdamW group, in that order
    if params and not any(isinstance(i, dict) for i in params):
        groups = [{"params": [p for g in groups if g["use_muon"] == flag for p in g["params"]], "use_muon": flag}
                  for flag in (True, False) if any(g["use_muon"] == flag for g in groups)]
    return groups
