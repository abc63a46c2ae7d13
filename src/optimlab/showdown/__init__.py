"""The optimizer showdown: the lectures' MNIST table reproduced on real data, then beaten.

``optimlab showdown`` trains the lecture's CNN with each optimizer (Keras's defaults, as
the lecture), prints our numbers beside the lecture's, and writes an HTML/Markdown report.
"""

from optimlab.showdown.recipes import BEYOND, LECTURE, Recipe, lecture_recipe
from optimlab.showdown.driver import run_showdown
from optimlab.showdown.runner import ShowdownConfig
from optimlab.showdown.summary import build_report, lecture_table, row_stats

__all__ = ["BEYOND", "LECTURE", "Recipe", "ShowdownConfig", "build_report", "lecture_recipe", "lecture_table",
           "row_stats", "run_showdown"]
