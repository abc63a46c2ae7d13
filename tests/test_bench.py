"""The benchmark scripts run, and the state table measures what each optimizer keeps."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optimlab.optim as oo

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_state_table_covers_every_optimizer_with_measured_bytes():
    out = run("modern_step.py", "--state-only")
    rows = {(m[1], m[2]): float(m[3]) for m in re.finditer(r"^(torch|keras)\s+(\S+)\s+([\d.]+)", out, re.M)}
    assert {name for conv, name in rows if conv == "torch"} == set(oo.available())
    assert {name for conv, name in rows if conv == "keras"} == set(oo.available("keras"))
    # two float32 tensors per parameter (plus 0-dim counters), one, none, or factored
    assert 8.0 <= rows["torch", "adam"] < 8.01 and rows["keras", "adam"] == 8.0
    assert rows["torch", "sgd"] == 0.0 and rows["torch", "lion"] == 4.0
    assert rows["torch", "lookahead"] == 12.0  # Adam's two buffers and the slow weights
    assert rows["torch", "adafactor"] < 0.2  # row and column statistics instead of a full second moment


def test_step_benchmarks_run_in_quick_mode():
    out = run("optim_step.py", "--quick", "--only", "Adam,RMSprop", "--case", "small")
    assert re.search(r"^Adam\s+28\s", out, re.M) and re.search(r"^RMSprop\s+20\s", out, re.M)
    out = run("modern_step.py", "--quick", "--only", "Lion", "--case", "small")
    assert re.search(r"^Lion\s+20\s", out, re.M)
