"""Pictures and the command line: PNG, GIF and HTML files are written, valid, and carry the
recorded data; `optimlab landscape` prints the table and reports bad input."""

import json
import re

import numpy as np
import pytest
from matplotlib.image import imread
from PIL import Image

from optimlab import landscape as L
from optimlab.cli import main
from optimlab.landscape import Spec, demos, plots
from optimlab.landscape.html import payload, write_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def comparison():
    return L.compare("rosenbrock", ["sgd", "momentum", "adam", Spec("sgd", lr=0.1, label="too fast")],
                     steps=60)


def test_contour_and_surface_png(tmp_path, comparison):
    both = plots.plot(comparison, tmp_path / "sub" / "both.png", dpi=50)
    contour = plots.plot(comparison, tmp_path / "contour.png", view="contour", dpi=50)
    surface = plots.plot(comparison, tmp_path / "surface.png", view="surface", dpi=50)
    for path in (both, contour, surface):
        assert path.read_bytes()[:8] == PNG_MAGIC
    h, w = imread(both).shape[:2]
    assert w > 1.5 * imread(contour).shape[1], "contour and surface side by side"
    assert comparison["too fast"].diverged, "a diverged path is drawn up to its divergence"
    with pytest.raises(ValueError, match="view="):
        plots.plot(comparison, tmp_path / "x.png", view="side")


def test_log_contours_where_the_function_spans_decades():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    r = L.compare("rosenbrock", ["adam"], steps=3)
    plots.draw_contour(ax, r, resolution=40)
    levels = ax.collections[0].levels
    ratios = levels[1:] / levels[:-1]
    assert np.allclose(ratios, ratios[0]) and ratios[0] > 1.2, "log-spaced levels"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["minimum", "start"] and legend[2].startswith("adam (lr 0.05)")
    fig2 = Figure()
    FigureCanvasAgg(fig2)
    ax2 = fig2.add_subplot()
    plots.draw_contour(ax2, L.compare("saddle", ["sgd"], steps=3), resolution=40)
    lv = ax2.collections[0].levels
    assert np.allclose(np.diff(lv), np.diff(lv)[0]), "linear levels for a function that goes negative"


def test_gif_has_one_frame_per_shown_step(tmp_path, comparison):
    steps = plots.frame_steps(comparison, 7)
    assert steps[0] == 0 and steps[-1] == 60 and len(steps) == len(set(steps)) == 7
    n = plots.animate(comparison, tmp_path / "paths.gif", frames=7, dpi=40, resolution=40)
    with Image.open(tmp_path / "paths.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == n == 7
        first = np.asarray(gif.convert("RGB"))
        gif.seek(6)
        last = np.asarray(gif.convert("RGB"))
    assert first.shape == last.shape and not np.array_equal(first, last)
    assert plots.frame_steps(L.compare("bowl", ["sgd"], steps=3), 50) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="frames"):
        plots.frame_steps(comparison, 0)


def test_demo_overview_sheet_is_small(tmp_path):
    items = [(d.claim, d.run()[0]) for d in list(demos.DEMOS.values())[:2]]
    path = plots.overview(items, tmp_path / "demos.png", columns=2, resolution=40)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.mode == "P"
    assert path.stat().st_size < 200_000


def test_html_page_is_self_contained_and_carries_the_paths(tmp_path, comparison):
    path = write_html(comparison, tmp_path / "page.html", resolution=30)
    text = path.read_text(encoding="utf-8")
    outside_scripts = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    assert text.count("</script>") == 2, "plotly.js and the page's code, both inline"
    assert "src=" not in outside_scripts and "http" not in outside_scripts, "works offline"
    assert len(text) > 1_000_000 and "Plotly.newPlot" in text
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", text, flags=re.S).group(1))
    assert [p["label"] for p in data["paths"]] == [t.label for t in comparison]
    for p, t in zip(data["paths"], comparison):
        np.testing.assert_allclose(p["x"], t.points[:, 0], atol=1e-6)
        np.testing.assert_allclose(p["loss"], t.losses, rtol=1e-6, atol=1e-6)
    assert data["steps"] == 60 and data["minima"] == [[1.0, 1.0]]
    assert len(data["z"]) == 30 and len(data["z"][0]) == 30
    for i in range(len(comparison)):
        assert f"id='toggle-{i}'" in text
    assert 'id="step"' in text and "<table id='results'>" in text
    assert "diverged at step" in text


def test_payload_handles_a_run_with_no_finite_point():
    # a surface undefined at the start (a NaN start point itself is refused by compare)
    undefined = L.TestFunction("undefined", lambda x, y: (x + y) * float("nan"), "no finite value",
                               ((-1.0, -1.0), (1.0, 1.0)), (0.5, 0.5))
    r = L.compare(undefined, ["sgd"], steps=3)
    data = payload(r, resolution=5)
    assert data["paths"][0]["x"] == [] and data["steps"] == 0


def run_cli(args, capsys):
    code = main(["landscape", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_table_png_gif_html_json(tmp_path, capsys):
    code, out, err = run_cli(["--function", "ravine", "--optimizers", "sgd,momentum,torch.Adam",
                              "--steps", "40", "--out", str(tmp_path), "--frames", "4",
                              "--lr", "sgd=0.03,momentum=0.03"], capsys)
    assert code == 0, err
    assert re.search(r"\| optimizer +\| lr +\| lr from +\| final loss", out)
    assert re.search(r"\| sgd +\| 0\.03 +\| given", out) and re.search(r"\| torch.Adam +\| 0\.1 +\| default", out)
    for suffix in ("png", "gif", "html", "md", "json"):
        path = tmp_path / f"ravine.{suffix}"
        assert path.is_file() and path.stat().st_size > 0, suffix
        assert f"wrote {path}" in out
    assert (tmp_path / "ravine.png").read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((tmp_path / "ravine.json").read_text())
    assert [t["label"] for t in saved["trajectories"]] == ["sgd", "momentum", "torch.Adam"]
    assert len(saved["trajectories"][0]["points"]) == 41
    assert (tmp_path / "ravine.md").read_text().startswith("ravine, condition=50: 40 steps")


def test_cli_options(tmp_path, capsys):
    code, out, _ = run_cli(["--function", "bowl", "--optimizers", "sgd,adam", "--steps", "30",
                            "--out", str(tmp_path), "--no-gif", "--no-html", "--tune", "--start=4,0",
                            "--schedule", "cosine", "--noise", "0.01"], capsys)
    assert code == 0
    assert "tuned per optimizer" in out and "outside the plotted domain" in out and "σ=0.01" in out
    assert not (tmp_path / "bowl.gif").exists() and (tmp_path / "bowl.png").exists()
    code, out, _ = run_cli(["--list"], capsys)
    assert code == 0 and "rosenbrock" in out and "--demo ravine" in out


@pytest.mark.parametrize("args, message", [
    (["--function", "rosenbrok"], "unknown test function 'rosenbrok'.*Known: bowl"),
    (["--optimizers", "sgd,adamm"], "unknown optimizer 'adamm'.*Known:"),
    (["--start", "1"], "argument --start: must be X,Y .*'1'"),
    (["--lr", "adam=fast"], "argument --lr: must be a rate .*'fast'"),
    (["--lr", "rmsprop=0.1", "--optimizers", "sgd"], "not among --optimizers"),
    (["--demo", "nope"], "unknown demo 'nope'; known: ravine"),
    (["--steps", "-2"], "argument --steps: must be an integer >= 0, got '-2'"),
])
def test_cli_reports_bad_input(tmp_path, capsys, args, message):
    try:
        code, out, err = run_cli([*args, "--out", str(tmp_path), "--no-gif", "--no-html"], capsys)
    except SystemExit as exit_:  # a malformed option: argparse prints the usage and exits
        code, (out, err) = exit_.code, capsys.readouterr()
    assert code == 2 and re.search(message, err), err
    assert "optimlab landscape: error:" in err and "Traceback" not in err


def test_cli_demo_prints_the_checks(tmp_path, capsys):
    code, out, _ = run_cli(["--demo", "lr", "--out", str(tmp_path), "--no-gif", "--no-html"], capsys)
    assert code == 0
    assert "## lr: A too-large learning rate overshoots, then diverges" in out
    assert out.count("[ok]") == 2 and "yes (step 36)" in out
    assert (tmp_path / "demo-lr.png").is_file()
