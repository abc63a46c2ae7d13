"""Recognise the lectures' training failures in a run's history, and name their remedies.

The lectures' debugging table (lesson 8, "Debugging Training Problems" and
"Monitoring Training"), pattern by pattern:

==========================  =====================================================
loss not decreasing         learning rate too high (overshooting) or too low
                            (stuck); bad initialisation; a bug (check gradient flow)
loss NaN / Inf              gradient explosion (try gradient clipping); numerical
                            instability (check for log(0) or division by zero)
loss decreases then         learning rate too high; overfitting (compare training
increases                   and validation; regularise; stop when it increases)
loss plateaus               learning rate too small; stuck in a local minimum
                            (try momentum); need a better optimizer
gradient norms              should be stable, not exploding (clip, lower the rate)
                            nor vanishing (initialisation, activations, batch norm)
weight updates              should be ~1% of the weight magnitude (1e-3 … 1e-2)
==========================  =====================================================

``diagnose(history)`` reads the per-epoch rows and the sampled per-step rows
of a :class:`~optimlab.train.History` (or of its ``to_dict()``, e.g. from the
run store) and returns one :class:`Diagnosis` per pattern found, most severe
first. An empty list means none of the patterns is there.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Diagnosis", "diagnose", "THRESHOLDS"]

# The numbers behind each verdict (documented, and overridable per call).
THRESHOLDS = {
    "min_points": 4,            # sampled losses needed before judging a trend
    "not_decreasing": 0.05,     # late loss must be 5% below early loss
    "rise": 0.25,               # a rise of 25% of the earlier drop counts as "then increases"
    "overfit": 0.05,            # validation loss 5% above its best while training loss still falls
    "plateau_change": 0.01,     # < 1% change across the last 40% of the run is a plateau ...
    "plateau_level": 0.5,       # ... if the loss is still above half its starting value
    "explode_growth": 100.0,    # gradient norm 100x its early median
    "vanish_ratio": 1e-3,       # one layer's gradient norm 1e-3 of another's
    "vanish_abs": 1e-7,         # every gradient norm below this
    "ratio_high": 1e-1,         # update/weight ratio 10x above the rule of thumb (1e-2)
    "ratio_low": 1e-4,          # ... or 10x below it (1e-3)
}

REMEDY = {
    "clip": "gradient explosion: clip the gradients, fit(..., clip=1.0) (optimlab.clip.clip_grad_norm), "
            "and lower the learning rate",
    "log0": "numerical instability: check for log(0) or division by zero (e.g. take cross-entropy of "
            "logits, not the log of a softmax; add an epsilon to denominators)",
    "lr_range": "learning rate too high (overshooting) or too low (stuck): try 1e-3, 1e-4, 1e-5",
    "init": "bad initialisation: He initialisation for ReLU, Xavier/Glorot for sigmoid/tanh "
            "(optimlab.init.apply(model, 'he_normal'))",
    "bug": "a bug in the code: check the gradient flow (the per-layer gradient norms in the history)",
    "lr_high": "learning rate too high: lower it, or decay it during training with a schedule "
               "(step, exponential or cosine decay; reduce on plateau — optimlab.schedules)",
    "overfit": "overfitting: stop when the validation loss increases (fit(..., early_stopping=patience) "
               "restores the best weights) and regularise (dropout, weight decay / AdamW, more data)",
    "generalise": "an adaptive optimizer that generalises poorly can do better as SGD with Nesterov momentum",
    "lr_low": "learning rate too small: raise it (try 10x), or start higher and decay it with a schedule",
    "momentum": "stuck in a local minimum or on a plateau: add momentum (SGD momentum=0.9, or Nesterov) "
                "to roll through it",
    "optimizer": "a better optimizer: Adam (the lectures' default), or RMSprop",
    "vanish_init": "initialisation: He (ReLU) or Xavier/Glorot (sigmoid, tanh) keeps the signal's scale "
                   "through the layers (optimlab.init)",
    "vanish_act": "activation functions: ReLU instead of sigmoid/tanh, which saturate and pass back tiny gradients",
    "batchnorm": "batch normalization between the layers",
    "ratio_high": "updates too large for the weights: lower the learning rate (updates should be ~1% of "
                  "the weights)",
    "ratio_low": "updates too small to move the weights: raise the learning rate, or use an adaptive "
                 "optimizer (Adam, RMSprop) that scales each parameter's step",
}


@dataclass
class Diagnosis:
    """One recognised pattern: ``code``, a one-line ``title``, the ``evidence``
    from this run, the lectures' ``remedies``, and ``severity``."""

    code: str
    title: str
    evidence: str
    remedies: list[str]
    severity: str = "warning"
    data: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"[{self.severity}] {self.title}: {self.evidence}"]
        lines += [f"    remedy: {r}" for r in self.remedies]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "title": self.title, "evidence": self.evidence,
                "remedies": list(self.remedies), "severity": self.severity, "data": dict(self.data)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Diagnosis:
        return cls(d["code"], d["title"], d["evidence"], list(d["remedies"]), d.get("severity", "warning"),
                   dict(d.get("data", {})))


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _mean(values) -> float:
    return sum(values) / len(values)


def _smooth(values: list[float], parts: int = 10) -> list[float]:
    """Means over at most ``parts`` consecutive chunks of at least 3 values (mini-batch
    losses are noisy); the values themselves when there are fewer than 6."""
    parts = min(parts, len(values) // 3)
    if parts < 2:
        return list(values)
    size = len(values) / parts
    return [_mean(values[int(i * size):int((i + 1) * size)]) for i in range(parts)]


def _get(history, key, default=None):
    return history.get(key, default) if isinstance(history, dict) else getattr(history, key, default)


def _loss_series(history) -> tuple[list[float], str]:
    steps = _get(history, "steps", []) or []
    epochs = _get(history, "epochs", []) or []
    if len(steps) >= 6:
        return _finite(r.get("loss") for r in steps), "steps"
    return _finite(r.get("train_loss") for r in epochs), "epochs"


def _layer_medians(rows: list[dict], prefix: str) -> dict[str, float]:
    out = {}
    for key in {k for r in rows for k in r if k.startswith(prefix)}:
        values = _finite(r.get(key) for r in rows)
        if values:
            out[key[len(prefix):]] = statistics.median(values)
    return out


def diagnose(history, **thresholds) -> list[Diagnosis]:
    """The lectures' failure patterns found in ``history`` (a ``History`` or its dict).

    Keyword arguments override entries of :data:`THRESHOLDS`.
    """
    unknown = set(thresholds) - set(THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown threshold(s) {sorted(unknown)}; known: {', '.join(THRESHOLDS)}")
    t = {**THRESHOLDS, **thresholds}
    found: list[Diagnosis] = []
    steps = _get(history, "steps", []) or []
    epochs = _get(history, "epochs", []) or []
    rows = steps or epochs
    ratios = _layer_medians(rows, "update_ratio/")
    found += _nonfinite(history)
    losses, unit = _loss_series(history)
    trend = _loss_trend(losses, unit, ratios, t)
    found += trend
    found += _overfitting(epochs, t)
    found += _gradients(rows, t)
    found += _update_ratios(ratios, t)
    order = {"error": 0, "warning": 1}
    return sorted(found, key=lambda d: order.get(d.severity, 2))


def _nonfinite(history) -> list[Diagnosis]:
    stop = _get(history, "stop") or {}
    status = _get(history, "status")
    epochs = _get(history, "epochs", []) or []
    bad_epoch = next((r for r in epochs if isinstance(r.get("train_loss"), float)
                      and not math.isfinite(r["train_loss"])), None)
    if status != "nonfinite" and stop.get("reason") != "nonfinite" and bad_epoch is None:
        return []
    if stop.get("reason") == "nonfinite":
        where = f"step {stop.get('step')} (epoch {stop.get('epoch')})"
        layer = stop.get("layer")
        evidence = (f"the loss was {stop.get('loss')} at {where}; "
                    + (f"the first non-finite gradient was in layer {layer!r}" if layer
                       else "no gradient was non-finite"))
    else:
        evidence = f"the training loss of epoch {bad_epoch['epoch']} is {bad_epoch['train_loss']}"
    return [Diagnosis("nonfinite", "loss is NaN/Inf", evidence, [REMEDY["clip"], REMEDY["log0"]],
                      severity="error", data=dict(stop))]


def _loss_trend(losses: list[float], unit: str, ratios: dict[str, float], t) -> list[Diagnosis]:
    if len(losses) < t["min_points"]:
        return []
    s = _smooth(losses)
    k = max(1, len(losses) // 5)
    early, late = _mean(losses[:k]), _mean(losses[-k:])
    low_i = min(range(len(s)), key=s.__getitem__)
    drop, rise = s[0] - s[low_i], s[-1] - s[low_i]
    scale = max(abs(s[0]), 1e-12)
    data = {"early": early, "late": late, "lowest": s[low_i], "points": len(losses), "unit": unit}
    span = f"over {len(losses)} sampled {unit}"
    if drop > 0.1 * scale and low_i < len(s) - 1 and rise > max(t["rise"] * drop, 0.02 * scale):
        return [Diagnosis("loss_increasing", "loss decreases then increases",
                          f"the training loss fell from {s[0]:.4g} to {s[low_i]:.4g}, then rose to {s[-1]:.4g} "
                          f"{span}", [REMEDY["lr_high"], REMEDY["overfit"]], data=data)]
    if late > early * (1 - t["not_decreasing"]) and s[low_i] > early * (1 - 2 * t["not_decreasing"]):
        hint = []
        high = {k: v for k, v in ratios.items() if v > t["ratio_high"]}
        low = {k: v for k, v in ratios.items() if v < t["ratio_low"]}
        if late > early * (1 + t["not_decreasing"]) or high:
            hint = [REMEDY["lr_high"]]
        elif low:
            hint = [REMEDY["lr_low"]]
        verb = "rose" if late > early * (1 + t["not_decreasing"]) else "did not decrease"
        return [Diagnosis("not_decreasing", "loss not decreasing",
                          f"the training loss {verb}: {early:.4g} at the start, {late:.4g} at the end {span}",
                          hint + [REMEDY["lr_range"], REMEDY["init"], REMEDY["bug"]], data=data)]
    n = len(losses)
    if n >= 8:
        tail = losses[int(0.6 * n):]
        half = len(tail) // 2
        a, b = _mean(tail[:half]), _mean(tail[half:])
        level = _mean(tail)
        change = abs(a - b) / max(abs(level), 1e-12)
        if change < t["plateau_change"] and level > t["plateau_level"] * early and level < early * 0.95:
            return [Diagnosis("plateau", "loss plateaus",
                              f"the training loss fell from {early:.4g} but has stalled at {level:.4g} "
                              f"(changing {100 * change:.2g}% over the last {len(tail)} sampled {unit})",
                              [REMEDY["lr_low"], REMEDY["momentum"], REMEDY["optimizer"]],
                              data={**data, "level": level, "change": change})]
    return []


def _overfitting(epochs: list[dict], t) -> list[Diagnosis]:
    val = [(r.get("epoch"), r.get("val_loss"), r.get("train_loss")) for r in epochs]
    val = [(e, v, tr) for e, v, tr in val if isinstance(v, (int, float)) and math.isfinite(v)
           and isinstance(tr, (int, float)) and math.isfinite(tr)]
    if len(val) < 3:
        return []
    best = min(range(len(val)), key=lambda i: val[i][1])
    e_best, v_best, tr_best = val[best]
    e_last, v_last, tr_last = val[-1]
    if best == len(val) - 1 or v_last <= v_best * (1 + t["overfit"]) + 1e-12 or tr_last > tr_best:
        return []
    return [Diagnosis("overfitting", "validation loss decreases then increases (overfitting)",
                      f"validation loss was lowest at epoch {e_best} ({v_best:.4g}) and rose to {v_last:.4g} "
                      f"by epoch {e_last} while the training loss kept falling ({tr_best:.4g} → {tr_last:.4g})",
                      [REMEDY["overfit"], REMEDY["generalise"]],
                      data={"best_epoch": e_best, "best_val_loss": v_best, "last_val_loss": v_last})]


def _gradients(rows: list[dict], t) -> list[Diagnosis]:
    out = []
    norms = _finite(r.get("grad_norm_max", r.get("grad_norm")) for r in rows)
    typical = _finite(r.get("grad_norm") for r in rows)
    if len(norms) >= t["min_points"]:
        k = max(1, len(typical) // 5)
        early = statistics.median(typical[:k])
        peak = max(norms[k:]) if len(norms) > k else max(norms)
        if early > 0 and peak > t["explode_growth"] * early:
            out.append(Diagnosis("exploding_gradients", "exploding gradient norms",
                                 f"the global gradient norm grew from {early:.3g} to {peak:.3g} "
                                 f"({peak / early:.3g}x)", [REMEDY["clip"], REMEDY["vanish_init"], REMEDY["batchnorm"]],
                                 data={"early": early, "peak": peak}))
    layers = _layer_medians(rows, "grad_norm/")
    if len(layers) >= 2:
        lo = min(layers, key=layers.get)
        hi = max(layers, key=layers.get)
        if layers[hi] > 0 and layers[lo] < t["vanish_ratio"] * layers[hi]:
            out.append(Diagnosis("vanishing_gradients", "vanishing gradients",
                                 f"layer {lo!r} gets gradients of norm {layers[lo]:.3g}, "
                                 f"{layers[lo] / layers[hi]:.2g} of layer {hi!r}'s ({layers[hi]:.3g})",
                                 [REMEDY["vanish_init"], REMEDY["vanish_act"], REMEDY["batchnorm"]],
                                 data={"layers": layers, "smallest": lo, "largest": hi}))
            return out
    if typical and max(typical) < t["vanish_abs"]:
        out.append(Diagnosis("vanishing_gradients", "vanishing gradients",
                             f"every gradient norm is below {t['vanish_abs']:g} (largest {max(typical):.3g})",
                             [REMEDY["vanish_init"], REMEDY["vanish_act"], REMEDY["batchnorm"]],
                             data={"largest": max(typical)}))
    return out


def _update_ratios(ratios: dict[str, float], t) -> list[Diagnosis]:
    high = {k: v for k, v in ratios.items() if v > t["ratio_high"]}
    low = {k: v for k, v in ratios.items() if v < t["ratio_low"]}
    out = []
    if high:
        out.append(Diagnosis("update_ratio_high", "weight updates far above the rule of thumb",
                             "median update/weight ratio " + ", ".join(f"{k}: {v:.2g}" for k, v in high.items())
                             + " (rule of thumb: 1e-3 to 1e-2)", [REMEDY["ratio_high"]], data={"layers": high}))
    if low:
        out.append(Diagnosis("update_ratio_low", "weight updates far below the rule of thumb",
                             "median update/weight ratio " + ", ".join(f"{k}: {v:.2g}" for k, v in low.items())
                             + " (rule of thumb: 1e-3 to 1e-2)", [REMEDY["ratio_low"]], data={"layers": low}))
    return out
