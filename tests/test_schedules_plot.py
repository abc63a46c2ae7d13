"""plot() renders a PNG whose layout and data match the schedules; the
`optimlab schedule` command writes one from text specs."""

import numpy as np
import pytest
from matplotlib.image import imread

from optimlab import schedules as S
from optimlab.cli import main
from optimlab.schedules.parse import parse_schedule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_png_side_by_side_with_momentum_row(tmp_path):
    one_cycle = S.OneCycle(max_lr=0.1, total_steps=200)
    cosine = S.CosineAnnealing(0.1, period=150)
    path = tmp_path / "out" / "lr.png"
    tables = S.plot({"1cycle": one_cycle, "cosine": cosine}, path)

    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = imread(path).shape[:2]
    # steps defaulted to the finite schedule's length; the data is the schedules'.
    assert tables["1cycle"]["lr"].tolist() == [one_cycle(t) for t in range(200)]
    assert tables["1cycle"]["momentum"].tolist() == [one_cycle.momentum(t) for t in range(200)]
    assert tables["cosine"]["lr"].tolist() == [cosine(t) for t in range(200)]
    assert tables["cosine"]["momentum"] is None

    single = tmp_path / "single.png"
    S.plot(cosine, single, steps=50)
    h1, w1 = imread(single).shape[:2]
    assert width == 2 * w1, "two schedules side by side, one column each"
    assert height > 1.5 * h1, "a second (momentum) row below the lr row"


def test_table_stops_at_the_end_of_a_finite_schedule():
    table = S.schedule_table(S.OneCycle(0.1, total_steps=30), steps=100)
    assert len(table["step"]) == len(table["lr"]) == 30
    assert np.all(np.isfinite(table["momentum"]))


def test_composed_schedule_momentum_has_gaps_where_not_cycled():
    s = S.Sequential([S.Constant(0.01), S.OneCycle(0.1, total_steps=10)], [5])
    momentum = S.schedule_table(s, 15)["momentum"]
    assert np.isnan(momentum[:5]).all() and np.isfinite(momentum[5:]).all()


def test_plot_needs_steps_for_infinite_schedules(tmp_path):
    with pytest.raises(ValueError, match="steps=None"):
        S.plot([S.Constant(0.1)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="steps=0"):
        S.plot([S.Constant(0.1)], tmp_path / "x.png", steps=0)
    with pytest.raises(ValueError, match="schedules=\\[\\]"):
        S.plot([], tmp_path / "x.png", steps=5)


def test_parse_schedule_builds_nested_schedules():
    s = parse_schedule("warmup(cosine(base_lr=0.1, period=90), warmup_steps=10, start_lr=0.001)")
    assert s == S.warmup(S.CosineAnnealing(0.1, 90), warmup_steps=10, start_lr=0.001)
    assert parse_schedule("piecewise([10, 20], [0.1, 0.01, 0.001])")(15) == 0.01


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "unknown schedule '__import__'"),
    ("__import__('os').system('true')", "not a schedule or a literal"),
    ("cosine(base_lr=0.1, period=x)", "not a schedule or a literal"),
    ("cosine(base_lr=0.1, period=-5)", "period=-5"),
    ("cosine(lr=0.1, period=5)", "unexpected keyword"),
    ("cosine(", "cannot parse"),
    ("[1, 2]", "is not a schedule"),
])
def test_parse_schedule_rejects_bad_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_cli_command_writes_png(tmp_path, capsys):
    out = tmp_path / "cli.png"
    code = main(["schedule", "onecycle(max_lr=0.1, total_steps=100)",
                 "step(base_lr=0.1, step_size=30, gamma=0.1)", "-o", str(out), "--steps", "120"])
    assert code == 0 and out.read_bytes()[:8] == PNG_MAGIC
    assert str(out) in capsys.readouterr().out

    assert main(["schedule", "cosine(base_lr=0.1, period=0)", "-o", str(tmp_path / "bad.png")]) == 2
    assert "period=0" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()

    assert main(["schedule", "--list"]) == 0
    assert "onecycle(max_lr" in capsys.readouterr().out
