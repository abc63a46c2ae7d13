"""The report writer: HTML (checked in a real browser), Markdown and PNG charts."""

from __future__ import annotations

import math

import pytest

from optimlab.report import Report
from tests.browser import needs_chromium, render


def sample_report() -> Report:
    r = Report("Showdown <test>")
    r.text("Trained with `adam` and **sgd**.")
    r.table("Results", ["optimizer", "val acc"], [["adam", "0.99"], ["sgd", "0.97"]], note="mean of 2 seeds")
    r.chart("val_acc", "Validation accuracy", {"adam": ([1, 2, 3], [0.9, 0.95, 0.99]),
                                               "sgd": ([1, 2, 3], [0.8, math.nan, 0.97])},
            xlabel="epoch", ylabel="accuracy")
    r.chart("loss", "Training loss", {"adam": (list(range(100)), [1 / (i + 1) for i in range(100)])},
            xlabel="step", ylabel="loss", log_y=True)
    return r


def test_writes_markdown_html_and_pngs(tmp_path):
    paths = sample_report().write(tmp_path)
    md = paths["markdown"].read_text()
    assert "| adam | 0.99 |" in md and "![Validation accuracy](val_acc.png)" in md
    for key in ("val_acc", "loss"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert "Showdown &lt;test&gt;" in page and "<code>adam</code>" in page
    assert "cdn" not in page.lower().split("<script>")[0]  # no external resources: works offline
    assert "NaN" not in page.split("const CHARTS")[1]  # a non-finite value becomes a gap


def test_bad_input_is_rejected():
    r = Report("x")
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        r.table("t", ["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="chart key"):
        r.chart("bad key!", "t", {}, xlabel="x", ylabel="y")


@needs_chromium
def test_page_renders_its_charts_without_console_errors(tmp_path):
    paths = sample_report().write(tmp_path / "out")
    dom, errors = render(paths["html"], tmp_path)
    assert errors == []
    assert dom.count("class=\"main-svg\"") >= 2  # plotly drew both charts
    assert "Results" in dom and "0.97" in dom
