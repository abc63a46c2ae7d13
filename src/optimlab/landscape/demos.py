"""Ready-made demonstrations of the lectures' claims, each checked on the recorded numbers.

``optimlab landscape --demo NAME --out DIR`` runs one (``all`` runs every one), draws it and
prints each check with the numbers measured; the tests run the same checks, so the pictures
in docs/landscape.md cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from optimlab.landscape import metrics as M
from optimlab.landscape.specs import Spec
from optimlab.landscape.trajectory import Comparison, compare


@dataclass(frozen=True)
class Check:
    """One measured statement: what is claimed, the numbers, whether they bear it out."""

    text: str
    measured: str
    holds: bool

    def __str__(self) -> str:
        return f"[{'ok' if self.holds else 'FAILS'}] {self.text}: {self.measured}"


@dataclass(frozen=True)
class Demo:
    name: str
    claim: str
    function: str
    optimizers: tuple
    steps: int
    checks: Callable[[Comparison], list[Check]]
    start: tuple[float, float] | None = None
    settings: dict = field(default_factory=dict)

    def run(self) -> tuple[Comparison, list[Check]]:
        from optimlab.landscape import functions as F
        result = compare(F.get(self.function, **self.settings), list(self.optimizers),
                         steps=self.steps, start=self.start)
        return result, self.checks(result)

    @property
    def command(self) -> str:
        return f"optimlab landscape --demo {self.name} --out landscape-demos"


def _ravine(r: Comparison) -> list[Check]:
    sgd, heavy, light = r["sgd"], r["momentum"], r["momentum μ=0.5"]
    n = sgd.steps_to_tol
    flips = M.step_sign_changes(sgd, axis=1, until=100)
    cross = {t.label: M.crossings(t, until=t.steps_to_tol) for t in (sgd, heavy, light)}
    side = {t.label: M.travel(t, 1) for t in (sgd, heavy, light)}
    return [
        Check("SGD zigzags: its step across the ravine (y) reverses at every update",
              f"{flips} reversals in its first 100 steps", flips == 99),
        Check("momentum (μ=0.9 and μ=0.5) reaches the tolerance in fewer steps than SGD at the same lr",
              f"SGD {n}, momentum {heavy.steps_to_tol}, μ=0.5 {light.steps_to_tol}",
              None not in (n, heavy.steps_to_tol, light.steps_to_tol)
              and heavy.steps_to_tol < n and light.steps_to_tol < n),
        Check("momentum crosses the ravine's floor (y = 0) less than half as often as SGD on its way "
              "to the tolerance", ", ".join(f"{k} {v}" for k, v in cross.items()),
              max(cross[heavy.label], cross[light.label]) < cross[sgd.label] / 2),
        Check("and travels less sideways: the velocity averages the alternating gradients across "
              "the ravine while it accumulates along the floor",
              "sideways travel: " + ", ".join(f"{k} {v:.1f}" for k, v in side.items()),
              max(side[heavy.label], side[light.label]) < side[sgd.label]),
    ]


def _nag(r: Comparison) -> list[Check]:
    mom, nag = r["momentum"], r["nag"]
    o_m, o_n = M.overshoot(mom, (0, 0)), M.overshoot(nag, (0, 0))
    return [
        Check("NAG overshoots the minimum less than momentum (same lr and μ)",
              f"overshoot past the minimum: momentum {o_m:.2f}, NAG {o_n:.2f}", 0 < o_n < o_m),
        Check("and settles sooner", f"steps to tolerance: momentum {mom.steps_to_tol}, NAG {nag.steps_to_tol}",
              None not in (mom.steps_to_tol, nag.steps_to_tol) and nag.steps_to_tol < mom.steps_to_tol),
    ]


def _adagrad(r: Comparison) -> list[Check]:
    ada, rms = r["adagrad"], r["rmsprop"]
    early, late = M.mean_step(ada, first=10), M.mean_step(ada, last=50)
    rms_early = M.mean_step(rms, first=10)
    return [
        Check("on a constant slope AdaGrad's steps shrink (its accumulated squared gradients only grow)",
              f"AdaGrad mean step: first 10 updates {early:.4f}, last 50 {late:.4f}", late < early / 4),
        Check("so AdaGrad stalls on the plateau while RMSprop reaches the minimum",
              f"final distance to the minimum: AdaGrad {ada.distance:.2f}, RMSprop {rms.distance:.4f} "
              f"(RMSprop reached the tolerance at step {rms.steps_to_tol}; first 10 steps {rms_early:.3f} each)",
              ada.distance > 1 and rms.steps_to_tol is not None),
    ]


def _saddle(r: Comparison) -> list[Check]:
    gd = r["sgd"]
    escapers = [r[k] for k in ("momentum", "sgd + noise", "adam", "rmsprop")]
    far = {t.label: M.distance_from(t, (0, 0)) for t in escapers}
    return [
        Check("plain GD stays at the saddle: it ends near (0, 0) with a vanishing gradient",
              f"distance {M.distance_from(gd, (0, 0)):.3f}, |∇f| {gd.grad_norms[-1]:.2g}",
              M.distance_from(gd, (0, 0)) < 0.1 and gd.grad_norms[-1] < 0.2),
        Check("momentum, gradient noise (mini-batch), Adam and RMSprop leave it",
              ", ".join(f"{k} {v:.3g}" for k, v in far.items()) + " from the saddle",
              all(v > 1 for v in far.values())),
    ]


def _lr(r: Comparison) -> list[Check]:
    ok, edge, big = r["sgd lr=0.2"], r["sgd lr=0.45"], r["sgd lr=0.55"]
    flips = M.step_sign_changes(edge, axis=1, until=20)
    return [
        Check("on (x² + 4y²)/2 (largest curvature 4) gradient descent converges for lr < 2/4; "
              "close to the limit it overshoots the valley floor at every step",
              f"lr 0.2: {ok.status} in {ok.steps_to_tol}; lr 0.45: {edge.status} in {edge.steps_to_tol}, "
              f"{flips} reversals across y in its first 20 steps",
              ok.status == edge.status == "converged" and flips == 19
              and M.step_sign_changes(ok, axis=1, until=20) == 0),
        Check("a too-large learning rate (0.55) diverges, reported with its step",
              f"lr 0.55: {big.status} at step {big.diverged_at}, last loss {big.final_loss:.3g}",
              big.diverged and big.final_loss > 1e4),
    ]


def _plateau(r: Comparison) -> list[Check]:
    gd, mom, adam = r["sgd"], r["momentum"], r["adam"]
    return [
        Check("gradient descent crawls on a plateau (slope 0.02)",
              f"SGD moved {M.travel(gd, 0) + M.travel(gd, 1):.2f} in {gd.steps} steps, "
              f"final distance {gd.distance:.2f}", gd.distance > 3),
        Check("momentum builds up speed and Adam rescales the small gradient: both reach the well",
              f"steps to tolerance: momentum {mom.steps_to_tol}, Adam {adam.steps_to_tol}",
              mom.steps_to_tol is not None and adam.steps_to_tol is not None),
    ]


DEMOS: dict[str, Demo] = {d.name: d for d in [
    Demo("ravine", "Momentum crosses a ravine with less zigzag than SGD and reaches its floor sooner",
         "ravine", (Spec("sgd", lr=0.039), Spec("momentum", lr=0.039),
                    Spec("momentum", lr=0.039, momentum=0.5, label="momentum μ=0.5")),
         steps=200, checks=_ravine, settings={"condition": 50}),
    Demo("nag", "NAG overshoots less than momentum", "ravine",
         (Spec("momentum", lr=0.024), Spec("nag", lr=0.024)), steps=150, checks=_nag,
         settings={"condition": 50}),
    Demo("adagrad", "AdaGrad's learning rate decays until it stalls, while RMSprop keeps moving",
         "plateau", (Spec("adagrad", lr=0.05), Spec("rmsprop", lr=0.05)), steps=300, checks=_adagrad),
    Demo("saddle", "Momentum or mini-batch noise escapes a saddle point that plain GD stays on",
         "saddle", (Spec("sgd", lr=0.01), Spec("momentum", lr=0.01),
                    Spec("sgd", lr=0.01, noise=0.1, label="sgd + noise"), Spec("adam", lr=0.01),
                    Spec("rmsprop", lr=0.01)),
         steps=300, checks=_saddle, start=(1.5, 1e-4)),
    Demo("lr", "A too-large learning rate overshoots, then diverges", "ravine",
         tuple(Spec("sgd", lr=lr, label=f"sgd lr={lr}") for lr in (0.2, 0.45, 0.55)), steps=60,
         checks=_lr, settings={"condition": 4}),
    Demo("plateau", "Gradient descent slows to a crawl on a plateau; momentum and Adam cross it",
         "plateau", (Spec("sgd"), Spec("momentum"), Spec("adam")), steps=300, checks=_plateau),
]}


def get(name: str) -> Demo:
    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; known: {', '.join(DEMOS)}, all")
    return DEMOS[name]
