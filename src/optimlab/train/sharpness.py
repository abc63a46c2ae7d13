"""Sharpness: the top eigenvalue λ_max of the training loss's Hessian, tracked during training.

Cohen et al. (2021), "Gradient Descent on Neural Networks Typically Occurs at the
Edge of Stability" (ICLR 2021): with full-batch gradient descent at learning rate η,
λ_max rises until it reaches 2/η (progressive sharpening) and then hovers there
(the edge of stability), where a quadratic model would diverge. Cohen et al. (2022),
"Adaptive Gradient Methods at the Edge of Stability", show that adaptive methods
(Adam, RMSProp) hover instead at the edge for the *preconditioned* Hessian
P⁻¹H: their plain λ_max is not bounded by 2/η. This module records plain λ_max and
2/η for every optimizer; for the Adam family read 2/η as a reference line only.

* :func:`top_eigenvalue` — λ_max of any loss by Lanczos (or power) iteration on
  Hessian-vector products (double backward), with a tolerance, an iteration cap and
  a warm start.
* :class:`SharpnessTracker` — what ``fit(..., sharpness_every=N)`` runs every N
  optimizer steps, on a fixed batch, without touching the training run.
* :func:`plot_sharpness` — λ_max and 2/η against the step, as a PNG.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TopEigen", "top_eigenvalue", "SharpnessTracker", "tracker", "sharpness_series", "plot_sharpness"]

KEYS = ("sharpness", "edge_of_stability")


class TopEigen(NamedTuple):
    """What :func:`top_eigenvalue` found.

    ``value``: λ_max, the largest (algebraic) eigenvalue of the Hessian, in units of
    the loss per squared parameter unit. ``vector``: its unit eigenvector, one tensor per
    parameter (pass it back as ``init`` to warm-start the next call). ``iterations``:
    the Hessian-vector products used. ``converged``: whether the residual test passed
    within ``iters``. ``residual``: ``‖Hv − λv‖ / ρ`` of the returned pair, ρ the largest
    |eigenvalue| found (= λ_max unless a negative one is larger): an eigenvalue of H lies
    within ``residual·ρ`` of ``value``.
    """

    value: float
    vector: list[torch.Tensor]
    iterations: int
    converged: bool
    residual: float


def _check_int(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")


def top_eigenvalue(loss_fn_or_model: Callable[[], torch.Tensor] | nn.Module,
                   params: Sequence[torch.Tensor] | None = None, *, batch=None, loss=None, iters: int = 20,
                   tol: float = 1e-3, init: Sequence[torch.Tensor] | None = None,
                   generator: torch.Generator | None = None, method: str = "lanczos") -> TopEigen:
    """The largest (algebraic, not largest-magnitude) eigenvalue of the Hessian of a loss.

    ``loss_fn_or_model``: a closure returning the scalar loss (then ``params`` is
    required), or an ``nn.Module`` with ``batch=(inputs, targets)`` and ``loss`` (a
    callable ``(outputs, targets)``, default cross-entropy); ``params`` defaults to the
    module's trainable parameters. The module is used in the mode it is in.
    The loss and its gradient are built once (``torch.autograd.grad(...,
    create_graph=True)``); each iteration is one Hessian-vector product ``Hv`` by
    double backward through that graph (Pearlmutter, 1994), so randomness in the
    forward pass (dropout) is drawn once and the function differentiated is fixed.

    ``method="lanczos"`` (default; Lanczos, 1950, with full reorthogonalization): the
    top eigenvalue of the tridiagonal matrix of the Krylov space built so far, which
    after k products is at least as good as k steps of power iteration (the space
    holds the power iterate) and usually far better; keeps one vector of the
    parameters' size per product (``iters`` of them at most). ``method="power"``
    (von Mises, 1929): ``v ← Hv/‖Hv‖``, with the Rayleigh quotient ``vᵀHv``; it finds
    the eigenvalue of largest *magnitude*, so when that one is negative a second run
    on the shifted ``H − λI`` (positive semi-definite, top eigenvalue ``λ_max − λ``)
    finds λ_max, costing up to ``iters`` more products. Both stop when the residual
    ``‖Hv − λv‖ ≤ tol·ρ`` (ρ: see :class:`TopEigen`), or after ``iters`` products;
    the eigenvalue's error is then at most ``tol·ρ`` and usually far less (it is
    quadratic in the vector's). Cohen et al. (2021) track this largest eigenvalue:
    negative curvature sets no stability limit.

    ``init``: a start vector (e.g. the previous call's ``vector``); default: random from
    ``generator`` (or torch's default generator). A start orthogonal to the top
    eigenvector cannot find it (a random one is not, almost surely). Returns :class:`TopEigen`.

    Raises ``ValueError`` for ``iters`` < 1, a negative or non-finite ``tol``, an
    unknown ``method``, no parameters, parameters that do not require grad, an
    ``init`` of other shapes or zero, a module without ``batch``, or a loss that is
    not a scalar depending on ``params``.
    """
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got method={method!r}")
    _check_int("iters", iters)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got tol={tol!r}")
    if isinstance(loss_fn_or_model, nn.Module):
        model = loss_fn_or_model
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"a model needs batch=(inputs, targets), got batch={batch!r}")
        loss_fn = F.cross_entropy if loss is None else loss
        x, y = batch
        closure = lambda: loss_fn(model(x), y)  # noqa: E731
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
    elif callable(loss_fn_or_model):
        closure = loss_fn_or_model
        if params is None:
            raise ValueError("a loss closure needs params (the tensors to differentiate by)")
    else:
        raise ValueError(f"loss_fn_or_model must be a closure returning the loss or an nn.Module, "
                         f"got {type(loss_fn_or_model).__name__}")
    params = list(params)
    if not params:
        raise ValueError("params is empty: there is nothing to take the Hessian by")
    if not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError("every tensor in params must require grad")
    with torch.enable_grad():
        value = closure()
        if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.requires_grad):
            raise ValueError("the loss must be a scalar tensor that depends on params")
        grads = torch.autograd.grad(value.reshape(()), params, create_graph=True, allow_unused=True)
    live = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    device = params[0].device
    sizes = [p.numel() for p in params]

    def hvp(v: torch.Tensor) -> torch.Tensor:
        if not live:  # the loss is linear in params: H = 0
            return torch.zeros_like(v)
        pieces = v.split(sizes)
        outs = [pieces[i].view_as(g).to(g.dtype) for i, g in live]
        with torch.enable_grad():
            hv = torch.autograd.grad([g for _, g in live], params, grad_outputs=outs, retain_graph=True,
                                     allow_unused=True)
        return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                          for h, p in zip(hv, params)])

    if init is not None:
        init = list(init)
        if len(init) != len(params) or any(a.shape != p.shape for a, p in zip(init, params)):
            raise ValueError("init must hold one tensor of each parameter's shape")
        v = torch.cat([a.detach().reshape(-1).to(device=device, dtype=dtype) for a in init])
    else:
        v = torch.randn(sum(sizes), generator=generator, dtype=dtype,
                        device="cpu" if generator is None else generator.device).to(device)
    if not bool(torch.isfinite(v).all()) or float(v.norm()) == 0.0:
        raise ValueError("init must be finite and not zero")
    v0 = v / v.norm()
    if method == "lanczos":
        lam, v, used, ok, res = _lanczos(hvp, v0, iters, tol)
        vector = [piece.view_as(p).to(p.dtype) for piece, p in zip(v.split(sizes), params)]
        return TopEigen(float(lam), vector, used, bool(ok), float(res))
    lam, v, used, ok, res = _power(hvp, v0, 0.0, iters, tol)
    if lam < 0:  # the dominant eigenvalue is negative: λ_max is the top of H − λI, shifted back
        lam2, v2, used2, ok2, res = _power(hvp, v0, lam, iters, tol)  # v0: unlike v, not ⟂ the target
        used += used2
        lam, v, ok = lam2, v2, ok2 and lam2 >= lam
    vector = [piece.view_as(p).to(p.dtype) for piece, p in zip(v.split(sizes), params)]
    return TopEigen(float(lam), vector, used, bool(ok), float(res))


def _lanczos(hvp, q: torch.Tensor, iters: int, tol: float):
    """Lanczos with full reorthogonalization from the unit vector ``q``; returns the top Ritz
    value, its unit Ritz vector, the products used, convergence and the residual / ρ."""
    basis = torch.empty(iters, q.numel(), dtype=q.dtype, device=q.device)
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(iters):
        basis[j] = q
        w = hvp(q)
        alphas.append(float(torch.dot(q, w)))
        done = basis[:j + 1]
        for _ in range(2):  # twice is enough (Kahan, Parlett): the basis stays orthonormal to rounding
            w = w - done.T @ (done @ w)
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(t)
        rho = max(abs(float(values[0])), abs(float(values[-1])))
        # ‖H y − θ y‖ = β·|last coefficient of the Ritz vector| (exact with an orthonormal basis)
        residual_norm = beta * abs(float(vectors[-1, -1]))
        residual = residual_norm / rho if rho > 0 else (0.0 if residual_norm == 0 else math.inf)
        breakdown = beta <= 1e-12 * max(rho, 1e-300)  # the Krylov space is invariant: its values are exact
        if residual <= tol or breakdown or j + 1 == iters:
            ritz = done.T @ vectors[:, -1].to(q.dtype)
            return float(values[-1]), ritz / ritz.norm(), j + 1, residual <= tol or breakdown, residual
        betas.append(beta)
        q = w / beta
    raise AssertionError("unreachable")


def _power(hvp, v: torch.Tensor, shift: float, iters: int, tol: float):
    """Power iteration on ``H − shift·I`` from the unit vector ``v``; returns the Rayleigh
    quotient of H (shifted back), its vector, the products used, convergence, the residual."""
    lam, residual = 0.0, math.inf
    for k in range(1, iters + 1):
        hv = hvp(v)
        if shift:
            hv = hv - shift * v
        mu = float(torch.dot(v, hv))
        lam = mu + shift
        residual_norm = float((hv - mu * v).norm())  # the same for H and H − shift·I
        scale = max(abs(lam), abs(shift))
        residual = residual_norm / scale if scale > 0 else (0.0 if residual_norm == 0 else math.inf)
        if residual <= tol:
            return lam, v, k, True, residual
        norm = hv.norm()
        if float(norm) == 0.0:  # Hv = shift·v: an exact eigenvector
            return lam, v, k, True, 0.0
        v = hv / norm
    return lam, v, iters, False, residual


# ------------------------------------------------------------------ tracking during fit
class SharpnessTracker:
    """Measures λ_max of the training loss every ``every`` optimizer steps, inside ``fit``.

    A callback (``on_step_end``): ``fit(..., sharpness_every=N)`` makes one with the
    defaults below; pass ``sharpness_every=SharpnessTracker(N, ...)`` for other settings.
    After optimizer step ``s`` with ``s % every == 0``:

    * the loss: the run's loss on a fixed batch — ``sample`` examples (default 256, or all
      of the training set if fewer) drawn without replacement with a generator seeded by
      the run's seed (a DataLoader: its first ``sample`` examples, with the RNG forked);
      the same examples at every measurement, and after a resume;
    * ``mode="train"`` (default): the model as it trains — BatchNorm with the batch's
      statistics, dropout with one fixed mask (a forked RNG seeded by the run's seed),
      so every measurement differentiates the same function of the weights;
      ``mode="eval"``: the network without dropout, BatchNorm with its running statistics;
    * :func:`top_eigenvalue` with ``iters``, ``tol`` and ``method``, warm-started from the previous
      measurement's eigenvector (random from the run's seed at the first, and after a resume:
      later values then agree with an uninterrupted run's to about ``tol``).

    The products run in the parameters' dtype, outside ``fit(precision=...)``'s autocast.
    Nothing of the run changes: every RNG (torch, CUDA, Python, NumPy) is restored, the
    buffers (BatchNorm running statistics) are put back, ``.grad`` is untouched (the
    products use ``torch.autograd.grad``), and the model's train/eval mode is restored —
    a run with tracking ends with the same weights, bit for bit, as one without.

    Recorded in the history: a step row for step ``s`` gets ``sharpness`` (λ_max) and
    ``edge_of_stability`` (2/η, η the learning rate of param group 0 for the next step:
    the stability threshold of gradient descent on a quadratic); the row is the
    monitor's sampled row of that step, or a row of its own. Each epoch row gets the
    epoch's last measurement (absent when the epoch had none). Measurements wait in
    ``history.steps`` as rows of their own until the epoch's end, so a mid-epoch
    checkpoint keeps them. ``last`` holds the last :class:`TopEigen`.

    Raises ``ValueError`` for ``every`` < 1, ``sample`` < 1, a bad ``iters``/``tol``/``method``,
    or a ``mode`` other than ``"train"``/``"eval"``.
    """

    def __init__(self, every: int, *, sample: int = 256, iters: int = 20, tol: float = 1e-3, mode: str = "train",
                 method: str = "lanczos"):
        _check_int("sharpness_every", every)
        _check_int("sample", sample)
        _check_int("iters", iters)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got tol={tol!r}")
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got mode={mode!r}")
        if method not in ("lanczos", "power"):
            raise ValueError(f"method must be 'lanczos' or 'power', got method={method!r}")
        self.every, self.sample, self.iters, self.tol, self.mode = every, sample, iters, float(tol), mode
        self.method = method
        self.last: TopEigen | None = None
        self._batch = None
        self._run = None  # the history being measured: a new fit starts afresh

    def __repr__(self) -> str:
        return (f"SharpnessTracker(every={self.every}, sample={self.sample}, iters={self.iters}, "
                f"tol={self.tol}, mode={self.mode!r}, method={self.method!r})")

    # --------------------------------------------------------------- callback
    def on_step_end(self, trainer) -> None:
        if trainer.step % self.every:
            return
        if self._run is not trainer.history:
            self._run, self._batch, self.last = trainer.history, None, None
        found = self.measure(trainer)
        lr = trainer.optimizer.param_groups[0].get("lr")
        lr = float(lr) if lr is not None else None
        epoch = len(trainer.history.epochs) + 1  # the epochs done are in the history (resumed ones too)
        trainer.history.steps.append({"step": trainer.step, "epoch": epoch, "sharpness": found.value,
                                      "edge_of_stability": 2.0 / lr if lr else None})

    def measure(self, trainer) -> TopEigen:
        """λ_max now, on the fixed batch; leaves the run as it was (see the class doc)."""
        from optimlab.train import checkpoint as ckpt

        model = trainer.model
        params = [p for _, p in trainer.named]
        rng = ckpt.rng_state()
        was_training = model.training
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        try:
            if self._batch is None:
                self._batch = self._fixed_batch(trainer)
            torch.manual_seed(trainer.seed)  # one dropout mask, the same at every measurement
            model.train(self.mode == "train")
            gen = None
            init = self.last.vector if self.last is not None else None
            if init is None:
                gen = torch.Generator().manual_seed(trainer.seed)
            found = top_eigenvalue(model, params, batch=self._batch, loss=trainer.loss_fn, iters=self.iters,
                                   tol=self.tol, init=init, generator=gen, method=self.method)
        finally:
            with torch.no_grad():
                named = dict(model.named_buffers())
                for name, value in buffers.items():
                    named[name].copy_(value)
            model.train(was_training)
            ckpt.set_rng_state(rng)
        self.last = found
        return found

    def _fixed_batch(self, trainer):
        from optimlab.train import _data

        source = trainer.batches
        if isinstance(source, _data.TensorBatches):
            n = min(self.sample, source.n)
            g = torch.Generator().manual_seed(trainer.seed)
            idx = torch.randperm(source.n, generator=g)[:n].sort().values.to(source.x.device)
            return source.x.index_select(0, idx), source.y.index_select(0, idx)
        torch.manual_seed(trainer.seed)  # a shuffling loader draws its order here (RNG restored after)
        xs, ys, have = [], [], 0
        for xb, yb in source.epoch(trainer.seed, 0):
            xs.append(xb)
            ys.append(yb)
            have += len(yb)
            if have >= self.sample:
                break
        return torch.cat(xs)[:self.sample], torch.cat(ys)[:self.sample]

    # --------------------------------------------------------------- rows
    def merge(self, trainer, epoch: int, row: dict[str, Any], step_rows: list[dict[str, Any]]) -> None:
        """At an epoch's end (before its rows are recorded): move this epoch's measurements from
        ``history.steps`` into the monitor's ``step_rows`` (same step: one row) and put the last
        one in the epoch ``row``."""
        steps = trainer.history.steps
        pending = []  # the earlier epochs' measurements were merged at their ends: the rest are this epoch's
        while steps and set(steps[-1]) == {"step", "epoch", *KEYS}:
            pending.append(steps.pop())
        if not pending:
            return
        pending.reverse()
        for m in pending:
            m["epoch"] = epoch
        by_step = {r["step"]: r for r in step_rows}
        for m in pending:
            if m["step"] in by_step:
                by_step[m["step"]].update({k: m[k] for k in KEYS})
            else:
                step_rows.append(m)
        step_rows.sort(key=lambda r: r["step"])
        if row:
            row.update({k: pending[-1][k] for k in KEYS})


def tracker(sharpness_every, model: nn.Module, callbacks=()) -> SharpnessTracker | None:
    """``fit``'s ``sharpness_every``: None → None; a positive integer → a :class:`SharpnessTracker`
    with the defaults; a ``SharpnessTracker`` → itself. ``ValueError`` (before training) for
    anything else, for a model without trainable parameters, and for a tracker passed in
    ``callbacks`` (its measurements must join the rows before they are recorded)."""
    if isinstance(callbacks, (list, tuple)) and any(isinstance(cb, SharpnessTracker) for cb in callbacks):
        raise ValueError("a SharpnessTracker goes in fit(..., sharpness_every=SharpnessTracker(...)), "
                         "not in callbacks")
    if sharpness_every is None:
        return None
    if not isinstance(sharpness_every, SharpnessTracker):
        if isinstance(sharpness_every, bool) or not isinstance(sharpness_every, int) or sharpness_every < 1:
            raise ValueError(f"sharpness_every must be a positive integer (optimizer steps between "
                             f"measurements), a SharpnessTracker or None, got sharpness_every={sharpness_every!r}")
        sharpness_every = SharpnessTracker(sharpness_every)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"sharpness_every={sharpness_every.every} needs a model with trainable parameters; "
                         f"{type(model).__name__} has none (requires_grad is False everywhere)")
    return sharpness_every


# ------------------------------------------------------------------ plot
def sharpness_series(history) -> dict[str, tuple[list[int], list[float]]]:
    """``{"λ_max": (steps, values), "2/η": (steps, values)}`` from a history's step rows
    (a :class:`History` or its ``to_dict()``)."""
    steps = history.steps if hasattr(history, "steps") else history["steps"]
    rows = [r for r in steps if r.get("sharpness") is not None]
    edge = [r for r in rows if r.get("edge_of_stability") is not None]
    return {"λ_max": ([r["step"] for r in rows], [r["sharpness"] for r in rows]),
            "2/η": ([r["step"] for r in edge], [r["edge_of_stability"] for r in edge])}


def sharpness_figure(history):
    """The matplotlib ``Figure`` of :func:`plot_sharpness` (one axis, log y)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = sharpness_series(history)
    if not series["λ_max"][0]:
        raise ValueError("the history has no sharpness measurements: train with fit(..., sharpness_every=N)")
    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    (xs, ys), (xe, ye) = series["λ_max"], series["2/η"]
    ax.plot(xs, ys, label="λ_max (sharpness)", marker="o" if len(xs) <= 30 else None, markersize=3)
    ax.plot(xe, ye, label="2/η (edge of stability)", linestyle="--")
    ax.set_yscale("log")  # λ_max ≤ 0 (early, near a saddle) is not drawn
    ax.set(title="Sharpness against the edge of stability", xlabel="step", ylabel="eigenvalue")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sharpness(history, path: str | os.PathLike) -> Path:
    """Draw λ_max and 2/η against the optimizer step (log y) into the PNG ``path`` (written
    atomically); return the path. Raises ``ValueError`` if the history has no measurements."""
    fig = sharpness_figure(history)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
