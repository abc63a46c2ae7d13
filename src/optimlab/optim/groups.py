"""Weight-decay parameter groups: decay the weight matrices, exempt the rest."""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

from torch import nn

from optimlab.optim import _validation as check

# Normalisation layers whose affine parameters are exempt, whatever their shape
# (a LayerNorm over (C, H, W) has a 3-D weight). _NormBase covers BatchNorm*, SyncBatchNorm,
# InstanceNorm* and their Lazy forms.
_NORM_TYPES: tuple[type, ...] = tuple(
    t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None),
                nn.LocalResponseNorm, nn.CrossMapLRN2d) if t is not None)
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_GLOB_CHARS = frozenset("*?[")


def param_groups(model: nn.Module, weight_decay: float = 0.01, no_decay: Iterable[str] = (), *,
                 names: bool = True) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a weight-decay group and a no-decay group.

    A parameter is decayed unless one of these holds, for any name under which it appears:

    1. it has fewer than 2 dimensions (biases, norm gains and shifts, scalars);
    2. it belongs to a normalisation layer, by type: ``BatchNorm*``, ``SyncBatchNorm``,
       ``InstanceNorm*``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, or any module class whose
       name ends in ``Norm`` or ``NormNd`` (``LlamaRMSNorm``, ``T5LayerNorm``, ...);
    3. it belongs to an ``nn.Embedding`` or ``nn.EmbeddingBag``;
    4. its dotted name (as in ``model.named_parameters()``) matches a ``no_decay`` pattern: a
       pattern with ``*``, ``?`` or ``[`` is an ``fnmatch`` glob against the whole name
       (case-sensitive, ``"*.pos_embed"``), any other a substring (``"bias"``, ``"cls_token"``).

    Rules 1 and 2 with decaying the ≥2-D weights of Linear and Conv layers are the standard
    AdamW practice (Loshchilov & Hutter 2019; nanoGPT's ``configure_optimizers``: "decay only
    tensors with dim >= 2"; Hugging Face's Trainer exempts biases and LayerNorm weights). Rule
    3 follows minGPT's ``configure_optimizers`` (Karpathy 2020: Embedding in the no-decay
    "blacklist"); nanoGPT and HF decay embeddings, so pass your own groups if you want that.
    A weight tied to an embedding (a GPT's output head) is therefore exempt, as in minGPT.

    Args:
        model: the ``nn.Module`` whose parameters to split.
        weight_decay: λ ≥ 0 for the decay group (the no-decay group gets 0.0).
        no_decay: extra name patterns to exempt (an iterable of non-empty strings, not a bare
            string); each must match at least one parameter name (a typo is an error).
        names: give each group ``param_names`` (the names, as torch ≥ 2.6 keeps them in
            ``optimizer.state_dict()``; every torch and optimlab optimizer accepts them).

    Returns:
        ``[{"params": [...], "param_names": [...], "weight_decay": λ},
        {"params": [...], "param_names": [...], "weight_decay": 0.0}]``, in
        ``named_parameters()`` order, an empty group left out. Tied (shared) parameters appear
        once, under their first name; frozen ones (``requires_grad=False``) not at all. The
        no-decay group's 0.0 means "off" in every optimizer, Keras's twins included (Keras
        AdamW refuses ``None``), so the list works with ``create(name, groups, convention, ...)``
        for any name; decay is then coupled or decoupled as that optimizer does it.

    Raises:
        ValueError: ``model`` not an ``nn.Module`` or without trainable parameters,
            ``weight_decay`` negative or not finite, ``no_decay`` not an iterable of non-empty
            strings or a pattern matching no parameter, ``names`` not a bool.

    >>> groups = param_groups(model, weight_decay=0.1, no_decay=["pos_embed"])  # doctest: +SKIP
    >>> opt = torch.optim.AdamW(groups, lr=3e-4)                                # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check.non_negative("weight_decay", weight_decay)
    check.boolean("names", names)
    patterns = _checked_patterns(no_decay)

    # Every (full name, owning module) of every tensor: shared modules and tied weights included.
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((f"{module_name}.{local}" if module_name else local, module))
    all_names = [n for entries in owners.values() for n, _ in entries]
    unused = [pat for pat in patterns if not any(_matches(pat, n) for n in all_names)]
    if unused:
        example = ", ".join(repr(n) for n in all_names[:3])
        raise ValueError(f"no_decay pattern(s) {unused} match no parameter name; the names look like {example}")

    decay: tuple[list, list] = ([], [])
    exempt: tuple[list, list] = ([], [])
    for name, p in model.named_parameters():  # each tensor once, under its first name
        if not p.requires_grad:
            continue
        skip = p.dim() < 2 or any(_is_norm(m) or isinstance(m, _EMBEDDING_TYPES) for _, m in owners[id(p)]) \
            or any(_matches(pat, n) for n, _ in owners[id(p)] for pat in patterns)
        target = exempt if skip else decay
        target[0].append(p)
        target[1].append(name)
    if not decay[0] and not exempt[0]:
        raise ValueError(f"model ({type(model).__name__}) has no trainable parameters "
                         "(all frozen, or none registered)")
    groups = []
    for (params, group_names), wd in ((decay, float(weight_decay)), (exempt, 0.0)):
        if params:
            group: dict[str, Any] = {"params": params}
            if names:
                group["param_names"] = group_names
            group["weight_decay"] = wd
            groups.append(group)
    return groups


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    cls = type(module).__name__
    return cls.endswith("Norm") or (cls[-2:] in ("1d", "2d", "3d") and cls[:-2].endswith("Norm"))


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) if _GLOB_CHARS & set(pattern) else pattern in name


def _checked_patterns(no_decay: Any) -> list[str]:
    if isinstance(no_decay, (str, bytes)):
        raise ValueError(f"no_decay must be an iterable of name patterns, e.g. [{no_decay!r}], "
                         f"not a bare string: got {no_decay!r}")
    try:
        patterns = list(no_decay)
    except TypeError:
        raise ValueError(f"no_decay must be an iterable of strings, got {no_decay!r}") from None
    for i, pat in enumerate(patterns):
        if not isinstance(pat, str) or not pat:
            raise ValueError(f"no_decay[{i}] must be a non-empty string, got {pat!r} (no_decay={no_decay!r})")
    return patterns


__all__ = ["param_groups"]
