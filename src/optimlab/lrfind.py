"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates", section 3.3).

The lectures' hardest practical question is the learning rate: "too small:
slow convergence; too large: may overshoot or diverge". The range test answers
it in a few hundred batches instead of a grid of full runs:

* train from the current weights while the rate grows exponentially from a tiny
  ``start_lr`` to a large ``end_lr`` (one rate per batch);
* smooth the loss (exponential moving average with bias correction);
* stop as soon as the smoothed loss exceeds ``diverge`` times its minimum, or a
  loss or gradient turns NaN/Inf;
* suggest a rate: the **steepest descent** of the smoothed loss against
  log(rate), taken before the minimum; also reported: the rate of the
  **minimum / 10** (the other classic rule).

Afterwards the model (parameters, buffers, gradients, train/eval mode), the
optimizer (state and hyperparameters) and the RNGs (torch, ``random``, numpy,
CUDA) are exactly as before, bit for bit: the test is an experiment on the
side, not a training run. An optimizer with ``train()``/``eval()`` modes
(Schedule-Free) is put in train mode for the ramp and left in the mode it was found in.

>>> from optimlab import lr_find, models, optim
>>> model = models.lecture_cnn()                                      # doctest: +SKIP
>>> result = lr_find(model, optim.create("adam", model.parameters()), data)   # doctest: +SKIP
>>> result.suggestion, result.min_over_10                             # doctest: +SKIP
>>> result.plot("lr_find.png")                                        # doctest: +SKIP

Command line: ``optimlab lr-find --optimizer adam``. (The module is ``optimlab.lrfind`` so that
``optimlab.lr_find`` stays the function even after the module is imported.)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optimlab.train.modes import has_modes, mode_attributes, set_mode_attributes

__all__ = ["lr_find", "LRFinderResult"]


@dataclass
class LRFinderResult:
    """What :func:`lr_find` measured and concluded.

    ``lrs``, ``losses`` (raw batch losses) and ``smoothed``: one entry per batch
    tried (the batch that diverged excluded). ``suggestion``: the steepest
    descent of the smoothed loss; ``minimum``: the rate at the smoothed loss's
    minimum; ``min_over_10``: ``minimum / 10``. ``stop``: ``"diverged"``,
    ``"nonfinite"`` or ``"end"`` (``end_lr`` reached); ``diverged_at``: the rate
    at which it stopped (None for ``"end"``).
    """

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    steepest_index: int | None = None
    minimum: float | None = None
    min_index: int | None = None
    min_over_10: float | None = None
    stop: str = "end"
    diverged_at: float | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from optimlab.train.history import clean

        return clean({k: getattr(self, k) for k in self.__dataclass_fields__})

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Loss against rate (log axis): raw and smoothed, the suggestion and minimum / 10 marked."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        ax.plot(self.lrs, self.losses, color="0.75", lw=0.8, label="batch loss")
        ax.plot(self.lrs, self.smoothed, color="C0", lw=1.8, label="smoothed loss")
        if self.suggestion is not None:
            y = self.smoothed[self.steepest_index]
            ax.axvline(self.suggestion, color="C3", ls="--", lw=1)
            ax.plot([self.suggestion], [y], "o", color="C3", label=f"suggestion (steepest) {self.suggestion:.2g}")
        if self.min_over_10 is not None:
            ax.axvline(self.min_over_10, color="C2", ls=":", lw=1, label=f"minimum / 10 = {self.min_over_10:.2g}")
        if self.diverged_at is not None:
            ax.axvline(self.diverged_at, color="0.3", ls="-.", lw=0.8, label=f"stopped ({self.stop}) {self.diverged_at:.2g}")
        ax.set_xscale("log")
        finite = [v for v in self.smoothed if math.isfinite(v)]
        if finite:  # keep the interesting part in view: the early, flat losses set the ceiling
            low, high = min(finite), max(finite[: max(1, len(finite) // 10)] + [finite[0]])
            pad = 0.1 * (high - low or 1.0)
            ax.set_ylim(low - pad, max(high, low) + 3 * pad)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title(title or "Learning-rate range test")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path

    def __repr__(self) -> str:
        fmt = lambda v: "None" if v is None else f"{v:.3g}"  # noqa: E731
        return (f"LRFinderResult(suggestion={fmt(self.suggestion)}, min_over_10={fmt(self.min_over_10)}, "
                f"steps={len(self.lrs)}, stop={self.stop!r})")


# --------------------------------------------------------------------------- snapshot
def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from optimlab.train import checkpoint as ckpt

    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()},
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "rng": ckpt.rng_state(),
        "optimizer_mode": mode_attributes(optimizer),  # a mode kept outside the state_dict (train/eval)
    }


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, snap: dict[str, Any]) -> None:
    from optimlab.train import checkpoint as ckpt

    with torch.no_grad():
        state = model.state_dict(keep_vars=True)
        for k, v in snap["model"].items():
            state[k].copy_(v)  # in place: references to the parameters stay valid
    for p, g in zip(model.parameters(), snap["grads"]):
        p.grad = g
    for m, mode in zip(model.modules(), snap["modes"]):
        m.training = mode
    # load_state_dict keeps the tensors it is given: hand it a private copy
    optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
    set_mode_attributes(optimizer, snap["optimizer_mode"])  # group modes came back with the state_dict
    ckpt.set_rng_state(snap["rng"])


# --------------------------------------------------------------------------- analysis
def _suggest(lrs: list[float], smoothed: list[float], skip_start: int, skip_end: int):
    """(index of the steepest descent before the minimum, index of the minimum)."""
    n = len(smoothed)
    if n < 3:
        return None, (min(range(n), key=smoothed.__getitem__) if n else None)
    lo = min(skip_start, max(0, n - 3))
    hi = max(lo + 2, n - skip_end)
    idx_min = min(range(lo, hi), key=smoothed.__getitem__)
    end = max(idx_min, lo + 1)
    logs = [math.log(v) for v in lrs]
    best, best_slope = None, math.inf
    for i in range(lo, end + 1):
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        slope = (smoothed[b] - smoothed[a]) / (logs[b] - logs[a])
        if slope < best_slope:
            best, best_slope = i, slope
    return best, idx_min


# --------------------------------------------------------------------------- the test
def lr_find(model: nn.Module, optimizer, data, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 200, batch_size: int = 64, loss=None, smooth: float = 0.98,
            diverge: float = 4.0, seed: int = 0, skip_start: int = 10, skip_end: int = 5,
            plot: str | Path | None = None, quiet: bool = True, device=None) -> LRFinderResult:
    """Run the learning-rate range test; return an :class:`LRFinderResult`.

    ``model``, ``optimizer``, ``data``, ``batch_size`` and ``loss`` are as in
    :func:`optimlab.fit` (``optimizer`` may be a name for ``optimlab.optim.create``;
    ``data`` tensors ``(x, y)``, a dataset with ``.train``, a dict or a DataLoader;
    the data is cycled if it has fewer than ``num_steps`` batches). The rate of
    every parameter group goes from ``start_lr`` to ``end_lr`` geometrically over
    ``num_steps`` batches. ``smooth``: the EMA factor of the loss; ``diverge``:
    stop when the smoothed loss exceeds ``diverge`` × its minimum. ``seed``: the
    batch order (the RNGs are restored afterwards anyway). ``skip_start`` /
    ``skip_end``: points ignored by the suggestion at either end. ``plot``: a PNG
    path to write the curve to. ``device``: where to run the test (``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, ``"auto"``; None: where the model is), as in :func:`optimlab.fit`; the
    model and the optimizer's state go back to their device afterwards. A device this
    machine lacks raises ``ValueError`` before anything runs.
    Model, optimizer and RNG state are restored exactly when it returns (or raises).
    """
    from optimlab.train import _data, _device
    from optimlab.train.loop import _loss, model_and_optimizer

    optimizer = model_and_optimizer(model, optimizer)
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a positive number, got {name}={value!r}")
    if not end_lr > start_lr:
        raise ValueError(f"end_lr must be larger than start_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 3:
        raise ValueError(f"num_steps must be an integer >= 3, got num_steps={num_steps!r}")
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got smooth={smooth!r}")
    if not diverge > 1:
        raise ValueError(f"diverge must be > 1, got diverge={diverge!r}")
    loss_fn, loss_name = _loss(loss)
    train, _ = _data.split_data(data, None)
    home = next(model.parameters()).device
    device = home if device is None else _device.resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    source = _data.batches(train, batch_size, shuffle=True, device=device)

    result = LRFinderResult(config={"start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps,
                                    "batch_size": batch_size, "smooth": smooth, "diverge": diverge, "seed": seed,
                                    "loss": loss_name, "optimizer": type(optimizer).__name__,
                                    "model": type(model).__name__, "device": str(device)})
    snap = _snapshot(model, optimizer)
    try:
        if device != home:
            _device.move(model, optimizer, None, device)
        model.train()
        if has_modes(optimizer):  # Schedule-Free: the ramp trains at y; the mode found is restored after
            optimizer.train()
        ratio = (end_lr / start_lr) ** (1.0 / (num_steps - 1))
        avg, best = 0.0, math.inf
        step, epoch = 0, 0
        while step < num_steps:
            got = False
            for xb, yb in source.epoch(seed, epoch):
                got = True
                lr = start_lr * ratio ** step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                out = model(xb)
                value = loss_fn(out, yb)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                raw = float(value.detach())
                grads_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
                if not (math.isfinite(raw) and grads_ok):
                    result.stop, result.diverged_at = "nonfinite", lr
                    break
                optimizer.step()
                avg = smooth * avg + (1 - smooth) * raw
                smoothed = avg / (1 - smooth ** (step + 1))
                if step > 0 and smoothed > diverge * best:
                    result.stop, result.diverged_at = "diverged", lr
                    break
                best = min(best, smoothed)
                result.lrs.append(lr)
                result.losses.append(raw)
                result.smoothed.append(smoothed)
                step += 1
                if step >= num_steps:
                    break
            if result.stop != "end" or not got:
                break
            epoch += 1
    finally:
        if device != home:
            model.to(home)  # then the snapshot's optimizer state is loaded next to the parameters again
        _restore(model, optimizer, snap)

    i_steep, i_min = _suggest(result.lrs, result.smoothed, skip_start, skip_end)
    if i_steep is not None:
        result.suggestion, result.steepest_index = result.lrs[i_steep], i_steep
    if i_min is not None:
        result.minimum, result.min_index = result.lrs[i_min], i_min
        result.min_over_10 = result.minimum / 10
    if plot is not None:
        result.plot(plot)
    if not quiet:
        print(_summary(result))
    return result


def _summary(r: LRFinderResult) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    lines = [f"range test: {len(r.lrs)} batches, rate {fmt(r.lrs[0] if r.lrs else None)} → "
             f"{fmt(r.lrs[-1] if r.lrs else None)}, stopped: {r.stop}"
             + (f" at {fmt(r.diverged_at)}" if r.diverged_at else ""),
             f"suggested learning rate (steepest descent): {fmt(r.suggestion)}",
             f"minimum of the smoothed loss at {fmt(r.minimum)}; minimum / 10 = {fmt(r.min_over_10)}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from optimlab.cliutil import device, int_at_least, non_negative_int, output_file, positive_float, positive_int

    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "synthetic"],
                        help="training data (synthetic: a small generated digit-like set, no download)")
    parser.add_argument("--optimizer", default="adam", help="any name of `optimlab optimizers` (default: adam)")
    parser.add_argument("--convention", default="torch", choices=["keras", "torch"],
                        help="whose default hyperparameters the optimizer starts from")
    parser.add_argument("--hyper", action="append", default=[], metavar="KEY=VALUE",
                        help="an optimizer hyperparameter other than lr, e.g. --hyper momentum=0.9 (repeatable)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--steps", type=int_at_least(3), default=200, help="batches in the ramp (default: %(default)s)")
    parser.add_argument("--start-lr", type=positive_float, default=1e-7)
    parser.add_argument("--end-lr", type=positive_float, default=10.0)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="model initialisation and batch order")
    parser.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:N or auto (default: cpu)")
    # default None: the default file name is checked in run(), only when it is used
    parser.add_argument("-o", "--out", default=None, type=output_file,
                        help=f"PNG of loss against rate (default: {DEFAULT_OUT})")
    parser.add_argument("--json", default=None, type=output_file,
                        help="also write the curve and the suggestion as JSON here")


DEFAULT_OUT = "lr_find.png"


def parse_hyper(items: list[str]) -> dict[str, Any]:
    """``["momentum=0.9", "nesterov=true", "betas=(0.9, 0.99)"]`` → a dict of Python values."""
    import ast

    hyper = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"a hyperparameter is KEY=VALUE, got --hyper {item!r}")
        text = text.strip()
        lowered = {"true": "True", "false": "False", "none": "None"}.get(text.lower(), text)
        try:
            hyper[key.strip()] = ast.literal_eval(lowered)
        except (ValueError, SyntaxError):
            hyper[key.strip()] = text
    return hyper


def _check_hyper(cls, hyper: dict[str, Any]) -> None:
    """Unknown keys fail here, by name, rather than as a TypeError from the constructor."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [k for k in params if k not in ("self", "params")]
    for key in hyper:
        if key not in known:
            raise ValueError(f"--hyper {key}=...: {cls.__name__} has no hyperparameter {key!r}; "
                             f"known: {', '.join(known)}")
    if "lr" in hyper:
        raise ValueError(f"--hyper lr={hyper['lr']!r}: the range test sets the rate; use --start-lr / --end-lr")


def run(args: argparse.Namespace) -> int:
    import json

    from optimlab import data as D, models, optim
    from optimlab.cliutil import check, output_file
    from optimlab.sweep.data import load_dataset

    # Every check, including building the optimizer, comes before the data is loaded or anything written.
    out = args.out or check("--out", output_file, DEFAULT_OUT)
    if not args.end_lr > args.start_lr:
        raise ValueError(f"--end-lr must be larger than --start-lr, got --start-lr {args.start_lr:g} "
                         f"--end-lr {args.end_lr:g}")
    hyper = parse_hyper(args.hyper)
    cls = optim.get(args.optimizer, args.convention)
    _check_hyper(cls, hyper)
    torch.manual_seed(args.seed)
    model = models.lecture_cnn()
    try:
        opt = optim.create(args.optimizer, model.parameters(), args.convention, **hyper)
    except TypeError as err:  # a value of the wrong kind, e.g. --hyper momentum=fast
        raise ValueError(f"--hyper {' '.join(args.hyper)}: {err}") from None
    try:
        data = load_dataset(args.dataset)
    except D.DataError as err:  # no source had the files: not bad input, so status 1 as in `optimlab data`
        print(f"optimlab lr-find: error: cannot load {args.dataset}:\n{err}", file=sys.stderr)
        return 1
    result = lr_find(model, opt, data, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps,
                     batch_size=args.batch_size, seed=args.seed, device=args.device)
    result.plot(out, title=f"Range test: {args.optimizer} on {args.dataset}, batch {args.batch_size}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
    print(_summary(result))
    print(f"plot: {out}", file=sys.stderr)
    return 0
