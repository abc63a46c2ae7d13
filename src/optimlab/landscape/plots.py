"""Pictures of a :class:`~optimlab.landscape.trajectory.Comparison`: contour with every path,
3-D surface, and a GIF of the paths moving together.

Rendering uses matplotlib's Agg canvas directly (no GUI, no global pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")  # matplotlib's tab10, shared with the HTML page


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def view_domain(comparison) -> tuple[tuple[float, float], tuple[float, float]]:
    """The function's domain, widened to hold the start point if that lies outside it."""
    (x0, x1), (y0, y1) = comparison.function.domain
    sx, sy = comparison.start
    if math.isfinite(sx) and math.isfinite(sy) and not comparison.function.in_domain((sx, sy)):
        pad_x, pad_y = 0.05 * (x1 - x0), 0.05 * (y1 - y0)
        x0, x1 = min(x0, sx - pad_x), max(x1, sx + pad_x)
        y0, y1 = min(y0, sy - pad_y), max(y1, sy + pad_y)
    return (x0, x1), (y0, y1)


def surface_values(function, values: np.ndarray) -> np.ndarray:
    """Heights drawn: ``log10(1 + f − f*)`` for functions spanning decades, else ``f``."""
    values = np.asarray(values, dtype=np.float64)
    if function.log_contours:
        return np.log10(1.0 + np.maximum(values - function.min_value, 0.0))
    return values


def surface_label(function) -> str:
    return "log10(1 + f − f*)" if function.log_contours else "f(x, y)"


def grid(comparison, resolution: int):
    return comparison.function.grid(resolution, view_domain(comparison))


def draw_contour(ax, comparison, *, resolution: int = 150, legend: bool = True, paths: bool = True):
    """Filled contours (log-spaced where the function needs them), minima, saddles, start and
    every path. Returns the line artists of the paths (for animation)."""
    from matplotlib.colors import LogNorm

    f = comparison.function
    X, Y, Z = grid(comparison, resolution)
    if f.log_contours:
        gap = np.maximum(Z - f.min_value, 0.0)
        top = float(np.nanmax(gap))
        levels = np.logspace(math.log10(top) - 5, math.log10(top), 26)
        ax.contourf(X, Y, gap, levels=levels, norm=LogNorm(levels[0], levels[-1]), cmap="viridis",
                    extend="min", alpha=0.85)
        ax.contour(X, Y, gap, levels=levels[::2], colors="white", linewidths=0.4, alpha=0.5)
    else:
        levels = np.linspace(float(np.nanmin(Z)), float(np.nanmax(Z)), 26)
        ax.contourf(X, Y, Z, levels=levels, cmap="viridis", alpha=0.85)
        ax.contour(X, Y, Z, levels=levels[::2], colors="white", linewidths=0.4, alpha=0.5)
    if f.minima:
        mx, my = zip(*f.minima)
        ax.plot(mx, my, "*", color="gold", markeredgecolor="black", markersize=14, zorder=5,
                label="minimum" if len(f.minima) == 1 else "minima")
    if f.saddles:
        sx, sy = zip(*f.saddles)
        ax.plot(sx, sy, "X", color="white", markeredgecolor="black", markersize=10, zorder=5, label="saddle")
    ax.plot(*comparison.start, "s", color="white", markeredgecolor="black", markersize=8, zorder=6,
            label="start")
    lines = []
    for i, t in enumerate(comparison.trajectories):
        label = f"{t.label} (lr {t.lr:.3g})" if t.lr is not None else t.label
        if t.status in ("diverged", "escaped"):
            label += f", {t.status} at {t.stopped_at}"
        data = (t.points[:, 0], t.points[:, 1]) if paths else ([], [])
        (line,) = ax.plot(*data, "-", color=color(i), lw=1.6, marker=".", markersize=3, label=label, zorder=4)
        lines.append(line)
        if paths and len(t.points):
            ax.plot(*t.points[-1], "x" if t.diverged else "o", color=color(i), markeredgecolor="black",
                    markersize=7, zorder=7)
    (x0, x1), (y0, y1) = view_domain(comparison)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if legend:
        ax.legend(loc="best", fontsize=7, framealpha=0.85)
    return lines


def draw_surface(ax, comparison, *, resolution: int = 60) -> None:
    """The 3-D surface with each path drawn on it (points outside the view are left out)."""
    f = comparison.function
    X, Y, Z = grid(comparison, resolution)
    H = surface_values(f, Z)
    ax.plot_surface(X, Y, H, cmap="viridis", alpha=0.6, linewidth=0, antialiased=False,
                    rcount=resolution, ccount=resolution)
    (x0, x1), (y0, y1) = view_domain(comparison)
    for i, t in enumerate(comparison.trajectories):
        if not len(t.points):
            continue
        inside = ((t.points[:, 0] >= x0) & (t.points[:, 0] <= x1) & (t.points[:, 1] >= y0)
                  & (t.points[:, 1] <= y1))
        h = np.where(inside, surface_values(f, t.losses), np.nan)
        ax.plot(t.points[:, 0], t.points[:, 1], h, color=color(i), lw=2, zorder=10)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel(surface_label(f))
    ax.view_init(elev=35, azim=-60)


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(comparison) -> str:
    f = comparison.function
    settings = "".join(f", {k}={v:g}" for k, v in f.params.items())
    rates = "tuned" if comparison.tuned else "not tuned"
    return f"{f.name}{settings}: {comparison.steps} steps, learning rates {rates}"


def plot(comparison, path: str | Path, *, view: str = "both", resolution: int = 150,
         dpi: int = 100, title: str | None = None) -> Path:
    """Write a PNG: the contour plot with every path (``view="contour"``), the 3-D surface
    (``"surface"``) or both side by side (``"both"``, the default). Returns the path."""
    if view not in ("both", "contour", "surface"):
        raise ValueError(f"view must be 'both', 'contour' or 'surface', got view={view!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure((13, 5.6) if view == "both" else (7, 5.6))
    if view in ("both", "contour"):
        draw_contour(fig.add_subplot(1, 2 if view == "both" else 1, 1), comparison, resolution=resolution)
    if view in ("both", "surface"):
        ax = fig.add_subplot(1, 2 if view == "both" else 1, 2 if view == "both" else 1, projection="3d")
        draw_surface(ax, comparison, resolution=min(resolution, 80))
    fig.suptitle(title or _title(comparison), fontsize=11)
    fig.savefig(path, dpi=dpi)
    return path


def frame_steps(comparison, frames: int) -> list[int]:
    """The steps shown by an animation of ``frames`` frames (distinct, first and last included)."""
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got frames={frames!r}")
    longest = max((len(t.points) for t in comparison.trajectories), default=1)
    return sorted({int(round(v)) for v in np.linspace(0, max(longest - 1, 0), frames)})


def animate(comparison, path: str | Path, *, frames: int = 60, fps: int = 12, dpi: int = 72,
            resolution: int = 120) -> int:
    """Write a GIF of the paths moving together, step by step; returns the number of frames.

    The contour background is drawn once and the paths blitted on top of it per frame.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = frame_steps(comparison, frames)
    fig = _figure((6.4, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    lines = draw_contour(ax, comparison, resolution=resolution, paths=False)
    ax.set_title(_title(comparison), fontsize=9)
    heads = [ax.plot([], [], "o", color=line.get_color(), markeredgecolor="black", markersize=7,
                     zorder=8)[0] for line in lines]
    counter = ax.text(0.02, 0.02, "", transform=ax.transAxes, fontsize=10, zorder=9,
                      bbox=dict(boxstyle="round", facecolor="white", alpha=0.85))
    canvas = fig.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    images = []
    for k in steps:
        canvas.restore_region(background)
        for t, line, head in zip(comparison.trajectories, lines, heads):
            shown = t.points[:k + 1]
            line.set_data(shown[:, 0], shown[:, 1])
            head.set_data(shown[-1:, 0], shown[-1:, 1])
            ax.draw_artist(line)
            ax.draw_artist(head)
        counter.set_text(f"step {k} / {comparison.steps}")
        ax.draw_artist(counter)
        rgba = np.asarray(canvas.buffer_rgba())
        images.append(Image.fromarray(rgba[..., :3].copy()).quantize(colors=96, method=Image.Quantize.MEDIANCUT))
    durations = [int(1000 / fps)] * len(images)
    durations[-1] = 1500  # hold the final frame
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0,
                   optimize=False, disposal=1)
    return len(images)


def overview(items, path: str | Path, *, columns: int = 3, dpi: int = 72, resolution: int = 100,
             palette: bool = True) -> Path:
    """One contour panel per ``(title, comparison)`` in a grid: the docs' demonstration sheet.
    ``palette``: save as a 256-colour PNG (a third of the size)."""
    import textwrap

    items = list(items)
    rows = math.ceil(len(items) / columns)
    fig = _figure((4.8 * columns, 4.6 * rows))
    for i, (heading, comparison) in enumerate(items):
        ax = fig.add_subplot(rows, columns, i + 1)
        draw_contour(ax, comparison, resolution=resolution)
        ax.set_title(textwrap.fill(heading, 52), fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if palette:
        from PIL import Image
        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    return path
