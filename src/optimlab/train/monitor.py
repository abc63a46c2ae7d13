"""What a practitioner must watch, measured cheaply during training.

Every step: the loss, the accuracy on the batch, and the gradient norm of
every parameter (one ``torch._foreach_norm`` call), kept as tensors: nothing
is read back to Python except one finiteness check of ``loss + Σ norms``
(non-finite iff the loss or any gradient is). Every ``sample_every`` steps
(and on the epoch's last step): the learning rate and momentum in use and the
update-to-weight ratio ``‖Δθ‖ / ‖θ‖`` of each layer, which needs a copy of
the weights before the step. Per-layer values combine a layer's parameters
(weight and bias) into one norm. Everything is turned into numbers once, at
the end of the epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def layer_name(param_name: str) -> str:
    """``"features.0.weight"`` → ``"features.0"``; a top-level parameter names itself."""
    return param_name.rpartition(".")[0] or param_name


def hyper_in_use(optimizer) -> tuple[float | None, float | None]:
    """The learning rate and momentum (SGD ``momentum``, or Adam-style ``betas[0]``) of group 0."""
    group = optimizer.param_groups[0]
    lr = group.get("lr")
    lr = float(lr) if lr is not None else None
    if "momentum" in group:
        momentum = float(group["momentum"])
    elif "betas" in group:
        momentum = float(group["betas"][0])
    else:
        momentum = None
    return lr, momentum


def first_nonfinite(named: list[tuple[str, nn.Parameter]]) -> tuple[str | None, list[str]]:
    """The first parameter (in model order) whose gradient holds inf/NaN, and all such parameters."""
    bad = [name for name, p in named if p.grad is not None and not bool(torch.isfinite(_dense(p.grad)).all())]
    return (bad[0] if bad else None), bad


_LOW_PRECISION = {torch.float16, torch.bfloat16}


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def _dense(grad: torch.Tensor) -> torch.Tensor:
    return grad.coalesce().values() if grad.is_sparse else grad


class Monitor:
    """Per-step and per-epoch statistics of one model and optimizer."""

    def __init__(self, model: nn.Module, optimizer, *, sample_every: int = 10, enabled: bool = True,
                 count_skipped: bool = False):
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError("the model has no trainable parameters")
        self.params = [p for _, p in self.named]
        self.optimizer = optimizer
        self.enabled = enabled
        self.sample_every = sample_every
        self.count_skipped = count_skipped  # fp16: epoch rows say how many steps the loss scaler skipped
        self.layers: list[str] = []
        index: list[int] = []
        for name, _ in self.named:
            layer = layer_name(name)
            if layer not in self.layers:
                self.layers.append(layer)
            index.append(self.layers.index(layer))
        device = self.params[0].device
        # Norms of 16-bit tensors are accumulated and returned in float32 (a float16 norm overflows
        # at 65504); a model mixing 16-bit with other dtypes takes the per-tensor path.
        dtypes = {p.dtype for p in self.params}
        self._norm_kwargs = {"dtype": torch.float32} if dtypes <= _LOW_PRECISION else {}
        self._mixed = len(dtypes) > 1
        self._onehot = torch.zeros(len(self.params), len(self.layers), dtype=torch.float64, device=device)
        self._onehot[torch.arange(len(index)), torch.tensor(index)] = 1.0
        self._zero = torch.zeros((), device=device)
        self.start_epoch()

    # ------------------------------------------------------------------ per step
    def start_epoch(self, steps: int = 0, saved: dict[str, Any] | None = None) -> None:
        """Fresh buffers for an epoch of ``steps`` steps (they grow if it runs longer), or the
        buffers of a resumed epoch from :meth:`state`.

        Per-step values are written into these preallocated tensors, not kept as new small
        tensors: thousands of live small allocations would split the heap's free blocks,
        and every step's big tensors would then come from fresh, page-faulted memory.
        """
        self.n = 0                              # steps recorded this epoch
        self.sizes: list[int] = []              # batch sizes
        self.samples: list[dict[str, Any]] = []
        self.classify: bool | None = None       # accuracy is recorded when outputs are class scores
        self.skipped = 0                        # steps the fp16 loss scaler skipped (mark_skipped)
        self._alloc(max(steps, 1))
        if saved:
            n = len(saved["sizes"])
            self._alloc(max(steps, n, 1))
            self.n, self.sizes = n, list(saved["sizes"])
            self.losses[:n] = saved["losses"].to(self.losses)
            if saved["norms"].numel():
                self.norms[:n] = saved["norms"].to(self.norms)
            if saved["correct"].numel():
                self.correct[:n] = saved["correct"].to(self.correct)
                self.classify = True
            self.samples = [dict(s) for s in saved["samples"]]
            self.skipped = int(saved.get("skipped", 0))

    def _alloc(self, capacity: int, keep: int = 0) -> None:
        device, p = self._zero.device, len(self.params)
        losses = torch.zeros(capacity, dtype=torch.float64, device=device)  # exact for any loss dtype
        norms = torch.zeros(capacity, p if self.enabled else 0, dtype=torch.float64, device=device)
        correct = torch.zeros(capacity, dtype=torch.int64, device=device)
        if keep:
            losses[:keep], norms[:keep], correct[:keep] = self.losses[:keep], self.norms[:keep], self.correct[:keep]
        self.losses, self.norms, self.correct = losses, norms, correct

    def drop_last(self) -> None:
        """Forget the last recorded step (one whose loss or gradient was non-finite)."""
        self.n -= 1
        self.sizes.pop()

    def is_sample(self, batch: int, last: int) -> bool:
        return self.enabled and ((batch + 1) % self.sample_every == 0 or batch == last)

    def after_backward(self, loss: torch.Tensor, out, target, *, micro: bool = False) -> torch.Tensor:
        """Record the step's loss, accuracy and gradient norms; return ``loss + Σ norms``
        (finite iff the loss and every gradient are). ``micro=True``: the step accumulated
        several micro-batches, ``out`` and ``target`` are their lists and ``loss`` their
        sample-weighted mean; the step counts as one, of all their samples."""
        outs, targets = (out, target) if micro else ((out,), (target,))
        i = self.n
        if i == len(self.losses):
            self._alloc(2 * i, keep=i)
        self.n = i + 1
        self.sizes.append(sum(len(t) for t in targets))
        loss = loss.detach()
        self.losses[i] = loss
        if self.classify is None:
            self.classify = outs[0].dim() == 2 and targets[0].dim() == 1 and not targets[0].is_floating_point()
        if self.classify:
            if micro:
                self.correct[i] = sum((o.detach().argmax(1) == t).sum() for o, t in zip(outs, targets))
            else:
                self.correct[i] = (out.detach().argmax(1) == target).sum()
        if not self.enabled:
            return loss
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        row = self.norms[i]
        row.copy_(self._norms(grads))
        return loss + row.sum()

    def _norms(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The 2-norm of each tensor, as one float64 vector (any mix of dtypes, dense or sparse)."""
        if not self._mixed:
            try:
                return torch.stack(torch._foreach_norm(tensors, 2, **self._norm_kwargs)).double()
            except (RuntimeError, NotImplementedError):  # e.g. sparse gradients (nn.Embedding(sparse=True))
                pass
        return torch.stack([torch.linalg.vector_norm(_dense(t), dtype=torch.float64) for t in tensors])

    def mark_skipped(self) -> None:
        """The last recorded step was not applied (the fp16 loss scaler found inf/NaN gradients
        at its scale): count it; its gradient norms (NaN from now on) are left out of the
        gradient-norm statistics. Its loss and accuracy stay (the batch was seen)."""
        self.skipped += 1
        if self.enabled:
            self.norms[self.n - 1] = math.nan

    def running(self) -> tuple[float, float | None]:
        """Mean loss and accuracy of the epoch so far (reads back to Python: for the progress bar)."""
        n = self.n
        sizes = sum(self.sizes)
        acc = float(self.correct[:n].sum()) / sizes if self.classify and sizes else None
        return float(self.losses[:n].mean()) if n else math.nan, acc

    def snapshot(self) -> list[torch.Tensor]:
        """The weights before a sampled step (for the update-to-weight ratio)."""
        return [p.detach().clone() for p in self.params]

    def after_step(self, before: list[torch.Tensor], step: int, epoch: int, batch: int) -> None:
        """Close the window ending at this (sampled) step: per-layer update ratios and the hyperparameters."""
        now = [p.detach() for p in self.params]
        delta = self._norms(torch._foreach_sub(now, before)) ** 2
        weight = self._norms(before) ** 2
        lr, momentum = hyper_in_use(self.optimizer)
        layers = (torch.stack([delta, weight]) @ self._onehot).tolist()  # [[Δ² per layer], [θ² per layer]]
        self.samples.append({"step": step, "epoch": epoch, "batch": batch, "lr": lr, "momentum": momentum,
                             "delta_sq": layers[0], "weight_sq": layers[1]})

    # ----------------------------------------------------------------- per epoch
    def state(self) -> dict[str, Any]:
        """The epoch so far, as checkpoint-safe tensors and lists."""
        n = self.n
        return {"losses": self.losses[:n].clone(), "norms": self.norms[:n].clone(),
                "correct": self.correct[:n].clone() if self.classify else torch.zeros(0, dtype=torch.int64),
                "sizes": list(self.sizes), "samples": [dict(s) for s in self.samples], "skipped": self.skipped}

    def summarize(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(epoch_row, step_rows)`` for the epoch just finished (one read-back to Python)."""
        n = self.n
        if not n:
            return {}, []
        sizes = torch.tensor(self.sizes, dtype=torch.float64)
        losses = self.losses[:n].double().cpu()
        row: dict[str, Any] = {"steps": n, "samples": int(sizes.sum()),
                               "train_loss": float((losses * sizes).sum() / sizes.sum())}
        if self.classify:
            row["train_acc"] = float(self.correct[:n].sum()) / row["samples"]
        if self.count_skipped:
            row["skipped_steps"] = self.skipped
        steps: list[dict[str, Any]] = []
        if not self.enabled:
            return row, steps
        norms = self.norms[:n].double().cpu()                                # (steps, params)
        per_layer = ((norms ** 2) @ self._onehot.cpu()).sqrt()        # (steps, layers)
        total = norms.norm(dim=1)                                            # (steps,)
        kept = ~torch.isnan(total)  # steps the fp16 loss scaler skipped (mark_skipped) are left out
        row["grad_norm"] = _mean(total[kept])
        row["grad_norm_max"] = float(total[kept].max()) if kept.any() else None
        for j, layer in enumerate(self.layers):
            row[f"grad_norm/{layer}"] = _mean(per_layer[kept, j])
        ratios = []
        start = 0
        for s in self.samples:
            end = s["batch"] + 1
            window = slice(start, end)
            start = end
            ok = kept[window]
            w_sq, d_sq = s["weight_sq"], s["delta_sq"]
            ratio = [math.sqrt(d) / math.sqrt(w) if w > 0 else None for d, w in zip(d_sq, w_sq)]
            ratios.append(ratio)
            out = {"step": s["step"], "epoch": s["epoch"],
                   "loss": float((losses[window] * sizes[window]).sum() / sizes[window].sum()),
                   "grad_norm": _mean(total[window][ok]),
                   "grad_norm_max": float(total[window][ok].max()) if ok.any() else None,
                   "lr": s["lr"], "momentum": s["momentum"]}
            for j, layer in enumerate(self.layers):
                out[f"grad_norm/{layer}"] = _mean(per_layer[window, j][ok])
                out[f"update_ratio/{layer}"] = ratio[j]
                out[f"weight_norm/{layer}"] = math.sqrt(w_sq[j])
            steps.append(out)
        for j, layer in enumerate(self.layers):
            values = [r[j] for r in ratios if r[j] is not None and math.isfinite(r[j])]
            row[f"update_ratio/{layer}"] = (sum(values) / len(values)) if values else None
        return row, steps
