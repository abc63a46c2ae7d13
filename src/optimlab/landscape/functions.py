"""Two-dimensional test functions, each written in torch so any torch optimizer runs on it.

Every function knows its minima (or says it has none), a plotting domain, a default start
point chosen to show its feature, and two default learning rates: ``lr_gd`` for the
methods whose step scales with the gradient (SGD, momentum, NAG) and ``lr_adaptive`` for
the ones that normalise it (AdaGrad, RMSprop, Adam, ...).

>>> f = get("rosenbrock")
>>> f.minima, f.start
(((1.0, 1.0),), (-1.5, 2.0))
>>> float(f(torch.tensor(1.0), torch.tensor(1.0)))
0.0
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

Point = tuple[float, float]


@dataclass(frozen=True)
class TestFunction:
    """A 2-D function ``f(x, y)`` on tensors (broadcasting, differentiable) and what it shows."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    feature: str
    domain: tuple[Point, Point]          # ((x_min, x_max), (y_min, y_max)) of the pictures
    start: Point                         # default start point
    minima: tuple[Point, ...] = ()       # global minima; () when unbounded below
    min_value: float | None = 0.0        # f at the global minima; None when unbounded below
    saddles: tuple[Point, ...] = ()      # saddle points worth marking
    log_contours: bool = False           # values span decades: log-spaced contours, log surface
    lr_gd: float = 0.01
    lr_adaptive: float = 0.01
    tol: float = 1e-3                    # default tolerance on f − f*
    params: dict = field(default_factory=dict)  # the settings it was built with (e.g. condition)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.fn(x, y)

    @property
    def bounded_below(self) -> bool:
        return self.min_value is not None

    def value(self, point) -> float:
        """``f`` at one point, in float64."""
        x, y = torch.as_tensor(point, dtype=torch.float64).unbind()
        return float(self.fn(x, y))

    def gradient(self, point) -> np.ndarray:
        """``∇f`` at one point by torch autograd, in float64."""
        p = torch.tensor([float(point[0]), float(point[1])], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(self.fn(*p.unbind()), p)
        return g.numpy()

    def grid(self, resolution: int = 100, domain: tuple[Point, Point] | None = None):
        """``(X, Y, Z)`` numpy arrays of ``f`` on a ``resolution`` × ``resolution`` grid."""
        (x0, x1), (y0, y1) = domain or self.domain
        xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
        ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
        X, Y = torch.meshgrid(xs, ys, indexing="xy")
        with torch.no_grad():
            Z = self.fn(X, Y)
        return X.numpy(), Y.numpy(), Z.numpy()

    def nearest_minimum(self, point) -> tuple[Point | None, float]:
        """The closest global minimum to ``point`` and its distance (``None, nan`` if none)."""
        if not self.minima:
            return None, math.nan
        p = np.asarray(point, dtype=np.float64)
        dists = [float(np.hypot(*(p - np.asarray(m)))) for m in self.minima]
        i = int(np.argmin(dists))
        return self.minima[i], dists[i]

    def in_domain(self, point) -> bool:
        (x0, x1), (y0, y1) = self.domain
        return bool(x0 <= point[0] <= x1 and y0 <= point[1] <= y1)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"TestFunction({self.name!r}{extra})"


# ------------------------------------------------------------------------------ the functions
def bowl() -> TestFunction:
    return TestFunction(
        "bowl", lambda x, y: x**2 + y**2,
        "convex bowl: every method reaches the single minimum; a learning rate above 1 diverges",
        domain=((-3.0, 3.0), (-3.0, 3.0)), start=(-2.5, 2.0), minima=((0.0, 0.0),),
        lr_gd=0.1, lr_adaptive=0.1)


def ravine(condition: float = 50.0) -> TestFunction:
    """``(x² + κ·y²)/2``: an elongated valley along x, ``κ`` times steeper across (y)."""
    k = float(condition)
    if not (k >= 1 and math.isfinite(k)):
        raise ValueError(f"condition must be a finite number >= 1, got condition={condition!r}")
    return TestFunction(
        "ravine", lambda x, y: 0.5 * (x**2 + k * y**2),
        f"ill-conditioned quadratic (condition number {k:g}): gradient descent zigzags across "
        "the steep direction while crawling along the floor; momentum damps the zigzag",
        domain=((-10.0, 10.0), (-2.5, 2.5)), start=(-9.0, 1.5), minima=((0.0, 0.0),),
        lr_gd=1.2 / k, lr_adaptive=0.1, params={"condition": k})


def rosenbrock() -> TestFunction:
    return TestFunction(
        "rosenbrock", lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
        "curved narrow valley: reaching the valley is easy, following its curved floor is slow",
        domain=((-2.0, 2.0), (-1.0, 3.0)), start=(-1.5, 2.0), minima=((1.0, 1.0),),
        log_contours=True, lr_gd=1e-3, lr_adaptive=0.05)


def beale() -> TestFunction:
    return TestFunction(
        "beale",
        lambda x, y: (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2,
        "flat valleys and steep sharp edges in the corners: step sizes must adapt",
        domain=((-4.5, 4.5), (-4.5, 4.5)), start=(1.0, 1.5), minima=((3.0, 0.5),),
        log_contours=True, lr_gd=1e-3, lr_adaptive=0.05)


def saddle() -> TestFunction:
    return TestFunction(
        "saddle", lambda x, y: x**2 - y**2,
        "saddle point x² − y²: zero gradient at the origin, a minimum along x and a maximum "
        "along y; starting near the ridge y = 0, gradient descent lingers at the saddle",
        domain=((-2.0, 2.0), (-2.0, 2.0)), start=(1.5, 1e-4), min_value=None,
        saddles=((0.0, 0.0),), lr_gd=0.01, lr_adaptive=0.01)


def monkey_saddle() -> TestFunction:
    return TestFunction(
        "monkey_saddle", lambda x, y: x**3 - 3 * x * y**2,
        "monkey saddle x³ − 3xy²: three valleys meet at a flat (degenerate) saddle whose "
        "gradient vanishes quadratically",
        domain=((-2.0, 2.0), (-2.0, 2.0)), start=(1.5, 0.05), min_value=None,
        saddles=((0.0, 0.0),), lr_gd=0.01, lr_adaptive=0.01)


HIMMELBLAU_MINIMA = ((3.0, 2.0), (-2.805118086952745, 3.131312518250573),
                     (-3.779310253377747, -3.283185991286170), (3.584428340330492, -1.848126526964404))


def himmelblau() -> TestFunction:
    return TestFunction(
        "himmelblau", lambda x, y: (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2,
        "four global minima: which one an optimizer reaches depends on its path",
        domain=((-5.0, 5.0), (-5.0, 5.0)), start=(-0.3, -0.9), minima=HIMMELBLAU_MINIMA,
        log_contours=True, lr_gd=5e-3, lr_adaptive=0.05)


def rastrigin() -> TestFunction:
    two_pi = 2 * math.pi
    return TestFunction(
        "rastrigin",
        lambda x, y: 20 + x**2 - 10 * torch.cos(two_pi * x) + y**2 - 10 * torch.cos(two_pi * y),
        "many local minima on a grid around one global minimum: gradient methods stop in the "
        "nearest basin unless momentum or a large step carries them over the bumps",
        domain=((-5.12, 5.12), (-5.12, 5.12)), start=(3.3, 2.4), minima=((0.0, 0.0),),
        lr_gd=1e-3, lr_adaptive=0.05, tol=1e-2)


def plateau() -> TestFunction:
    """A narrow well in a wide, almost flat plain whose slope is 0.02 towards the well."""
    return TestFunction(
        "plateau",
        lambda x, y: 1 - torch.exp(-(x**2 + y**2)) + 0.02 * (torch.sqrt(1 + x**2 + y**2) - 1),
        "plateau: far from the well the slope is only 0.02, so gradient descent crawls; "
        "momentum builds up speed and adaptive methods rescale the small gradient",
        domain=((-6.0, 6.0), (-6.0, 6.0)), start=(4.5, 3.5), minima=((0.0, 0.0),),
        lr_gd=0.3, lr_adaptive=0.05)


FUNCTIONS: dict[str, Callable[..., TestFunction]] = {
    "bowl": bowl, "ravine": ravine, "rosenbrock": rosenbrock, "beale": beale, "saddle": saddle,
    "monkey_saddle": monkey_saddle, "himmelblau": himmelblau, "rastrigin": rastrigin,
    "plateau": plateau,
}


def available() -> list[str]:
    """The names :func:`get` accepts."""
    return list(FUNCTIONS)


def get(name: str | TestFunction, **settings) -> TestFunction:
    """The test function called ``name`` (``-`` and ``_`` alike), built with ``settings``
    (only ``ravine`` takes one: ``condition``). A :class:`TestFunction` passes through."""
    if isinstance(name, TestFunction):
        if settings:
            raise ValueError(f"settings {sorted(settings)} given with a ready-made {name!r}")
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in FUNCTIONS:
        close = difflib.get_close_matches(key, FUNCTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown test function {name!r}.{hint} Known: {', '.join(FUNCTIONS)}")
    try:
        return FUNCTIONS[key](**settings)
    except TypeError:
        raise ValueError(f"{key} takes no settings {sorted(settings)}") from None
