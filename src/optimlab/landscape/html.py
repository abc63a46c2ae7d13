"""An interactive, self-contained HTML page of a comparison: contour and 3-D views of the same
paths, a checkbox per optimizer, a step slider and a play button.

plotly.js is embedded inline (from the ``plotly`` package), so the page works offline. The
3-D view needs WebGL; without it the page says so and the contour view still works.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from optimlab.landscape.plots import color, surface_label, surface_values, view_domain
from optimlab.landscape.table import COLUMNS, _cells, rows, title


def plotly_js() -> str:
    """The minified plotly.js shipped in the ``plotly`` Python package."""
    from importlib import resources

    try:
        return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise RuntimeError("the interactive page embeds plotly.js from the 'plotly' package: "
                           "pip install plotly") from None


def _clean(values) -> list:
    """Floats for JSON: non-finite values become null (a gap in a plotly line)."""
    arr = np.asarray(values, dtype=np.float64)
    out = np.where(np.isfinite(arr), arr, np.nan).round(6).tolist()
    if arr.ndim == 1:
        return [None if isinstance(v, float) and math.isnan(v) else v for v in out]
    return [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in out]


def payload(comparison, resolution: int = 80) -> dict:
    """The data the page draws: grid, heights, every path, markers, and the table."""
    f = comparison.function
    X, Y, Z = f.grid(resolution, view_domain(comparison))
    (x0, x1), (y0, y1) = view_domain(comparison)
    paths = []
    for i, t in enumerate(comparison.trajectories):
        pts = t.points
        inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
        h = np.where(inside, surface_values(f, t.losses), np.nan)
        lr = "own" if t.lr is None else f"{t.lr:.3g}"
        paths.append({"label": t.label, "color": color(i), "lr": lr, "status": t.status,
                      "x": _clean(pts[:, 0]), "y": _clean(pts[:, 1]), "h": _clean(h),
                      "loss": _clean(t.losses)})
    return {
        "title": title(comparison), "feature": f.feature, "zlabel": surface_label(f),
        "x": _clean(X[0]), "y": _clean(Y[:, 0]), "z": _clean(surface_values(f, Z)),
        "domain": [[x0, x1], [y0, y1]], "start": list(comparison.start),
        "minima": [list(m) for m in f.minima], "saddles": [list(s) for s in f.saddles],
        "steps": max([len(p["x"]) - 1 for p in paths] + [0]), "paths": paths,
    }


def _table_html(comparison) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>"
                   for r in rows(comparison))
    notes = "".join(f"<li>{html.escape(t.label)}: {html.escape(n)}</li>"
                    for t in comparison.trajectories for n in t.notes())
    return (f"<table id='results'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            + (f"<ul id='notes'>{notes}</ul>" if notes else ""))


def write_html(comparison, path: str | Path, *, resolution: int = 80) -> Path:
    """Write the page to ``path`` (about 5 MB: plotly.js is inline). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(payload(comparison, resolution), separators=(",", ":"), allow_nan=False)
    toggles = "".join(
        f"<label class='toggle'><input type='checkbox' id='toggle-{i}' data-index='{i}' checked>"
        f"<span class='swatch' style='background:{color(i)}'></span>{html.escape(t.label)}</label>"
        for i, t in enumerate(comparison.trajectories))
    page = (_TEMPLATE
            .replace("%TITLE%", html.escape(title(comparison)))
            .replace("%FEATURE%", html.escape(comparison.function.feature))
            .replace("%TOGGLES%", toggles)
            .replace("%TABLE%", _table_html(comparison))
            .replace("%DATA%", data.replace("</", "<\\/"))
            .replace("%PLOTLY%", plotly_js().replace("</script", "<\\/script")))  # last: it is 4.6 MB
    path.write_text(page, encoding="utf-8")
    return path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>%TITLE%</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
 #controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin: .5em 0; }
 .toggle { display: inline-flex; align-items: center; gap: .3em; cursor: pointer; }
 .swatch { display: inline-block; width: 1.4em; height: .35em; }
 #plots { display: flex; flex-wrap: wrap; gap: 1em; }
 .plot { width: 620px; height: 540px; }
 #surface-note { padding: 2em; color: #a00; }
 table { border-collapse: collapse; margin-top: 1em; }
 td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
</style></head>
<body>
<h2>%TITLE%</h2>
<p>%FEATURE%</p>
<div id="controls">%TOGGLES%
 <label>step <input type="range" id="step" min="0" value="0"> <output id="step-value">0</output></label>
 <button id="play" type="button">play</button>
</div>
<div id="plots"><div id="contour" class="plot"></div><div id="surface" class="plot"></div></div>
%TABLE%
<script>%PLOTLY%</script>
<script>
"use strict";
const DATA = %DATA%;
const n = DATA.paths.length;
const stepInput = document.getElementById("step");
const stepValue = document.getElementById("step-value");
const toggles = DATA.paths.map((_, i) => document.getElementById("toggle-" + i));
const pathIdx = DATA.paths.map((_, i) => 1 + i);
const headIdx = DATA.paths.map((_, i) => 1 + n + i);
stepInput.max = DATA.steps;
stepInput.value = DATA.steps;

function webglAvailable() {
  try {
    const canvas = document.createElement("canvas");
    return !!(window.WebGLRenderingContext && (canvas.getContext("webgl") || canvas.getContext("experimental-webgl")));
  } catch (e) { return false; }
}
const has3d = webglAvailable();

function upto(path, k) { return Math.min(k + 1, path.x.length); }

function markers(points, symbol, name) {
  return { type: "scatter", mode: "markers", name: name, x: points.map(p => p[0]), y: points.map(p => p[1]),
           marker: { symbol: symbol, size: 14, color: "gold", line: { color: "black", width: 1 } }, hoverinfo: "x+y+name" };
}

const contourTraces = [{ type: "contour", x: DATA.x, y: DATA.y, z: DATA.z, colorscale: "Viridis", ncontours: 30,
                         colorbar: { title: { text: DATA.zlabel } }, hoverinfo: "x+y+z" }];
DATA.paths.forEach(p => contourTraces.push({ type: "scatter", mode: "lines+markers", name: p.label, x: p.x, y: p.y,
  line: { color: p.color, width: 2 }, marker: { size: 3 }, customdata: p.loss, hovertemplate: p.label + " (%{x:.3f}, %{y:.3f}) f=%{customdata:.4g}<extra></extra>" }));
DATA.paths.forEach(p => { const k = p.x.length - 1; contourTraces.push({ type: "scatter", mode: "markers", name: p.label + " now",
  x: k >= 0 ? [p.x[k]] : [], y: k >= 0 ? [p.y[k]] : [], marker: { size: 11, color: p.color, line: { color: "black", width: 1 } }, hoverinfo: "skip" }); });
contourTraces.push(Object.assign(markers([DATA.start], "square", "start"), { marker: { symbol: "square", size: 11, color: "white", line: { color: "black", width: 1 } } }));
if (DATA.minima.length) contourTraces.push(markers(DATA.minima, "star", "minimum"));
if (DATA.saddles.length) contourTraces.push(markers(DATA.saddles, "x", "saddle"));
const layout2d = { margin: { l: 50, r: 10, t: 30, b: 40 }, showlegend: false, title: { text: "contour" },
                   xaxis: { range: DATA.domain[0], title: { text: "x" } }, yaxis: { range: DATA.domain[1], title: { text: "y" } } };
Plotly.newPlot("contour", contourTraces, layout2d, { displaylogo: false, responsive: true });

if (has3d) {
  const surfaceTraces = [{ type: "surface", x: DATA.x, y: DATA.y, z: DATA.z, colorscale: "Viridis", opacity: 0.8, showscale: false }];
  DATA.paths.forEach(p => surfaceTraces.push({ type: "scatter3d", mode: "lines", name: p.label, x: p.x, y: p.y, z: p.h, line: { color: p.color, width: 5 } }));
  DATA.paths.forEach(p => { const k = p.x.length - 1; surfaceTraces.push({ type: "scatter3d", mode: "markers", name: p.label + " now",
    x: k >= 0 ? [p.x[k]] : [], y: k >= 0 ? [p.y[k]] : [], z: k >= 0 ? [p.h[k]] : [], marker: { size: 4, color: p.color } }); });
  Plotly.newPlot("surface", surfaceTraces, { margin: { l: 0, r: 0, t: 30, b: 0 }, showlegend: false, title: { text: "3-D surface" },
    scene: { xaxis: { title: { text: "x" } }, yaxis: { title: { text: "y" } }, zaxis: { title: { text: DATA.zlabel } } } },
    { displaylogo: false, responsive: true });
} else {
  document.getElementById("surface").innerHTML = "<p id='surface-note'>The 3-D view needs WebGL, which this browser does not provide.</p>";
}

function update() {
  const k = Number(stepInput.value);
  stepValue.textContent = k;
  const visible = toggles.map(t => t.checked);
  const xs = [], ys = [], hs = [], hx = [], hy = [], hh = [];
  DATA.paths.forEach(p => {
    const m = upto(p, k);
    xs.push(p.x.slice(0, m)); ys.push(p.y.slice(0, m)); hs.push(p.h.slice(0, m));
    hx.push(m ? [p.x[m - 1]] : []); hy.push(m ? [p.y[m - 1]] : []); hh.push(m ? [p.h[m - 1]] : []);
  });
  const idx = pathIdx.concat(headIdx);
  Plotly.restyle("contour", { x: xs.concat(hx), y: ys.concat(hy), visible: visible.concat(visible) }, idx);
  if (has3d) Plotly.restyle("surface", { x: xs.concat(hx), y: ys.concat(hy), z: hs.concat(hh), visible: visible.concat(visible) }, idx);
  window.landscapeState = { step: k, visible: visible };
}
stepInput.addEventListener("input", update);
toggles.forEach(t => t.addEventListener("change", update));
let timer = null;
document.getElementById("play").addEventListener("click", () => {
  if (timer) { clearInterval(timer); timer = null; return; }
  if (Number(stepInput.value) >= DATA.steps) stepInput.value = 0;
  timer = setInterval(() => {
    const k = Number(stepInput.value);
    if (k >= DATA.steps) { clearInterval(timer); timer = null; return; }
    stepInput.value = Math.min(DATA.steps, k + Math.max(1, Math.round(DATA.steps / 150)));
    update();
  }, 40);
});
update();
document.body.dataset.ready = "1";
</script>
</body></html>
"""
