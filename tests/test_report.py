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


def test_chart_modes_markers_and_steps(tmp_path):
    r = Report("modes")
    r.chart("scatter", "LR sensitivity", {"adam": ([1e-3, 1e-2, 1e-1], [0.9, 0.95, 0.5])},
            xlabel="lr", ylabel="acc", log_x=True, mode="markers")
    r.chart("profile", "Performance profile", {"adam": ([1, 2, 4], [0.5, 0.5, 1.0])},
            xlabel="τ", ylabel="ρ", log_x=True, mode="steps")
    r.chart("plain", "Lines", {"adam": ([1, 2], [1, 2])}, xlabel="x", ylabel="y")
    specs = {b.key: _plotly(b) for k, b in r.blocks if k == "chart"}
    assert specs["scatter"]["data"][0]["mode"] == "markers"
    assert specs["profile"]["data"][0]["mode"] == "lines" and specs["profile"]["data"][0]["line"] == {"shape": "hv"}
    assert specs["plain"]["data"][0]["mode"] == "lines+markers" and "line" not in specs["plain"]["data"][0]
    paths = r.write(tmp_path)
    assert all(paths[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for k in ("scatter", "profile", "plain"))
    with pytest.raises(ValueError, match="chart mode"):
        r.chart("x", "t", {}, xlabel="x", ylabel="y", mode="bars")
    with pytest.raises(ValueError, match="used twice"):
        r.chart("plain", "again", {}, xlabel="x", ylabel="y")


def _plotly(block):
    from optimlab.report import _plotly_spec

    return _plotly_spec(block)


def test_write_is_all_or_nothing(tmp_path, monkeypatch):
    """A chart that cannot be drawn leaves the previous report as it was, and no temporary files."""
    import optimlab.report as R

    out = tmp_path / "out"
    sample_report().write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = R._write_png

    def broken(chart, tmp):
        if chart.key == "loss":
            raise RuntimeError("cannot draw")
        return real(chart, tmp)

    monkeypatch.setattr(R, "_write_png", broken)
    changed = sample_report().text("a new paragraph")
    with pytest.raises(RuntimeError, match="cannot draw"):
        changed.write(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
