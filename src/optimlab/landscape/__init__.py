"""The landscape lab: watch optimizers move on loss surfaces, analytic and real.

>>> from optimlab import landscape
>>> result = landscape.compare("rosenbrock", ["sgd", "momentum", "adam"], steps=300)
>>> print(result.table())                                         # doctest: +SKIP
>>> landscape.plot(result, "rosenbrock.png")                      # doctest: +SKIP
>>> landscape.animate(result, "rosenbrock.gif")                   # doctest: +SKIP
>>> landscape.write_html(result, "rosenbrock.html")               # doctest: +SKIP

Submodules: ``functions`` (the test functions), ``specs`` (how optimizers are described),
``trajectory`` (runs), ``table``, ``metrics``, ``plots``, ``html``, ``demos`` (the lectures'
claims, checked), ``network`` and ``network_study`` (real networks' loss surfaces).
See docs/landscape.md.
"""

from optimlab.landscape import demos
from optimlab.landscape.functions import FUNCTIONS, TestFunction, available, get
from optimlab.landscape.html import write_html
from optimlab.landscape.plots import animate, overview, plot
from optimlab.landscape.specs import Spec, schedule_from_lr
from optimlab.landscape.table import COLUMNS
from optimlab.landscape.trajectory import TUNE_FACTORS, Comparison, Trajectory, compare, run

__all__ = [
    "FUNCTIONS", "TestFunction", "available", "get", "Spec", "schedule_from_lr", "COLUMNS",
    "TUNE_FACTORS", "Comparison", "Trajectory", "compare", "run", "plot", "animate", "overview",
    "write_html", "demos",
]
