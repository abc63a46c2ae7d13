"""Small pieces shared by the post-Adam optimizers."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from optimlab.optim._validation import UnsupportedSettingError


class RealOnly:
    """Mixin for optimizers whose reference defines no complex update: complex tensors are
    rejected when the group is added (an ``UnsupportedSettingError`` naming the tensor: a
    ``ValueError``, and the ``RuntimeError`` torch's Adafactor and Muon raise), not mid-training."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raw = param_group.get("params") if isinstance(param_group, dict) else None
        tensors = [raw] if isinstance(raw, Tensor) else list(raw or [])
        for i, p in enumerate(tensors):
            p = p[1] if isinstance(p, tuple) else p
            if isinstance(p, Tensor) and p.is_complex():
                raise UnsupportedSettingError(f"{type(self).__name__} does not support complex parameters: params[{i}] "
                                 f"of param group {len(self.param_groups)} has dtype {p.dtype}")
        if isinstance(param_group, dict) and raw is not None and not isinstance(raw, Tensor):
            param_group = {**param_group, "params": tensors}  # a generator is consumed once, above
        super().add_param_group(param_group)
