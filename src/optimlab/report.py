"""Experiment reports: one self-contained HTML page, the same as Markdown, and PNG charts.

A report is a list of blocks (text, tables, charts). ``write(out_dir)`` renders:

- ``report.html`` — tables plus interactive plotly charts; plotly.js is embedded once, so
  the page works offline and can be mailed as one file;
- ``report.md`` — the same tables, with the charts as PNG images beside it;
- ``<chart>.png`` — every chart drawn with matplotlib.

>>> r = Report("Optimizer showdown")                                   # doctest: +SKIP
>>> r.table("Results", ["optimizer", "val acc"], [["adam", "0.99"]])     # doctest: +SKIP
>>> r.chart("val_acc", "Validation accuracy", {"adam": ([1, 2], [0.98, 0.99])},
...         xlabel="epoch", ylabel="accuracy")                          # doctest: +SKIP
>>> r.write("out/")                                                     # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

Series = dict[str, tuple[Sequence[float], Sequence[float]]]


@dataclass
class _Chart:
    key: str
    title: str
    series: Series
    xlabel: str
    ylabel: str
    log_x: bool = False
    log_y: bool = False
    mode: str = "lines"


MODES = ("lines", "markers", "steps")


@dataclass
class Report:
    """An ordered collection of text, tables and charts, rendered by :meth:`write`."""

    title: str
    blocks: list = field(default_factory=list)

    def text(self, markdown: str) -> "Report":
        """A paragraph (plain text with Markdown emphasis / code spans)."""
        self.blocks.append(("text", markdown))
        return self

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[object]],
              note: str = "") -> "Report":
        if any(len(r) != len(header) for r in rows):
            raise ValueError(f"table {title!r}: every row needs {len(header)} cells")
        self.blocks.append(("table", (title, [str(h) for h in header], [[str(c) for c in r] for r in rows], note)))
        return self

    def chart(self, key: str, title: str, series: Series, *, xlabel: str, ylabel: str,
              log_x: bool = False, log_y: bool = False, mode: str = "lines") -> "Report":
        """A chart of ``series`` (name -> (x, y)); ``key`` names its PNG and must be unique.

        ``mode``: ``"lines"`` (points joined; markers too when a series has at most 30 points),
        ``"markers"`` (a scatter, points only) or ``"steps"`` (a right-continuous step function:
        each y holds until the next x, as for a performance profile).
        """
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise ValueError(f"chart key must be letters, digits, '_' or '-', got {key!r}")
        if any(kind == "chart" and block.key == key for kind, block in self.blocks):
            raise ValueError(f"chart key {key!r} is used twice: each chart needs its own (it names the PNG)")
        if mode not in MODES:
            raise ValueError(f"chart mode must be one of {', '.join(MODES)}, got mode={mode!r}")
        self.blocks.append(("chart", _Chart(key, title, series, xlabel, ylabel, log_x, log_y, mode)))
        return self

    # ------------------------------------------------------------------------- render
    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write report.html, report.md and one PNG per chart; return their paths.

        All or nothing: every file is rendered to a temporary name first and only then moved into
        place, so an error while rendering (a chart that cannot be drawn, a full disk) leaves
        ``out_dir`` as it was, and a reader never sees a half-written file.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        staged: list[tuple[Path, Path]] = []
        try:
            for kind, block in self.blocks:
                if kind == "chart":
                    staged.append(_write_png(block, out / f"{block.key}.png.tmp"))
            staged.append(_stage(out / "report.html", self._html()))
            staged.append(_stage(out / "report.md", self._markdown()))
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, final in staged:
            os.replace(tmp, final)
        paths = {block.key: out / f"{block.key}.png" for kind, block in self.blocks if kind == "chart"}
        paths["html"], paths["markdown"] = out / "report.html", out / "report.md"
        return paths

    def _markdown(self) -> str:
        parts = [f"# {self.title}", ""]
        for kind, block in self.blocks:
            if kind == "text":
                parts += [block, ""]
            elif kind == "table":
                title, header, rows, note = block
                parts += [f"## {title}", "", "| " + " | ".join(header) + " |",
                          "|" + "|".join("---" for _ in header) + "|"]
                parts += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                parts += ["", note, ""] if note else [""]
            else:
                parts += [f"## {block.title}", "", f"![{block.title}]({block.key}.png)", ""]
        return "\n".join(parts)

    def _html(self) -> str:
        from plotly.offline import get_plotlyjs

        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, block in self.blocks:
            if kind == "text":
                body.append(f"<p>{_inline_markdown(block)}</p>")
            elif kind == "table":
                title, header, rows, note = block
                cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
                lines = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<h2>{html.escape(title)}</h2><table><thead><tr>{cells}</tr></thead>"
                            f"<tbody>{lines}</tbody></table>"
                            + (f"<p class='note'>{_inline_markdown(note)}</p>" if note else ""))
            else:
                body.append(f"<h2>{html.escape(block.title)}</h2>"
                            f"<div class='chart' id='chart-{block.key}' data-key='{block.key}'></div>")
        charts = {b.key: _plotly_spec(b) for k, b in self.blocks if k == "chart"}
        script = ("const CHARTS = " + json.dumps(charts, allow_nan=False) + ";\n"
                  "for (const [key, spec] of Object.entries(CHARTS)) {\n"
                  "  Plotly.newPlot('chart-' + key, spec.data, spec.layout, {responsive: true});\n}\n")
        return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n"
                f"<script>{get_plotlyjs()}</script></head>\n<body>\n" + "\n".join(body)
                + f"\n<script>{script}</script>\n</body></html>\n")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.chart{width:100%;height:420px}.note{color:#555;font-size:13px}code{background:#f3f3f3;padding:0 3px}"""


def _inline_markdown(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _finite(values: Sequence[float]) -> list[float | None]:
    """JSON has no NaN/inf: a gap in the line says the value was not finite."""
    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]


def _plotly_spec(chart: _Chart) -> dict:
    data = []
    for name, (x, y) in chart.series.items():
        trace = {"type": "scatter", "name": name, "x": _finite(x), "y": _finite(y)}
        if chart.mode == "markers":
            trace["mode"] = "markers"
        elif chart.mode == "steps":
            trace.update(mode="lines", line={"shape": "hv"})
        else:
            trace["mode"] = "lines+markers" if len(x) <= 30 else "lines"
        data.append(trace)
    layout = {"title": {"text": chart.title}, "margin": {"t": 40, "l": 60, "r": 20, "b": 50},
              "xaxis": {"title": {"text": chart.xlabel}, "type": "log" if chart.log_x else "linear"},
              "yaxis": {"title": {"text": chart.ylabel}, "type": "log" if chart.log_y else "linear"},
              "legend": {"orientation": "h"}}
    return {"data": data, "layout": layout}


def _write_png(chart: _Chart, tmp: Path) -> tuple[Path, Path]:
    """Draw ``chart`` into ``tmp`` (``<key>.png.tmp``); return (tmp, the final path)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (x, y) in chart.series.items():
        if chart.mode == "markers":
            ax.plot(list(x), _nan_for_gaps(y), label=name, linestyle="none", marker="o", markersize=4)
        elif chart.mode == "steps":
            ax.plot(list(x), _nan_for_gaps(y), label=name, drawstyle="steps-post")
        else:
            ax.plot(list(x), _nan_for_gaps(y), label=name, marker="o" if len(x) <= 30 else None, markersize=3)
    ax.set(title=chart.title, xlabel=chart.xlabel, ylabel=chart.ylabel)
    if chart.log_x:
        ax.set_xscale("log")
    if chart.log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if chart.series:
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    return tmp, tmp.with_name(tmp.name.removesuffix(".tmp"))


def _nan_for_gaps(values: Sequence[float]) -> list[float]:
    return [v if v is not None else math.nan for v in _finite(values)]


def _stage(path: Path, text: str) -> tuple[Path, Path]:
    """Write ``text`` to ``<path>.tmp``; return (tmp, path) for :meth:`Report.write` to move."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, path
