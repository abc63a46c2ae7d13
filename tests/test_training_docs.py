"""Every ```python block of docs/training.md runs, and its asserts hold.

A block preceded by an HTML comment starting ``<!-- not run`` is illustration only (it trains
on MNIST for minutes, or reads the user's own store); the comment says why.
"""

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"
TEXT = DOC.read_text(encoding="utf-8")
FOUND = [(m.start(), m.group(1)) for m in re.finditer(r"```python\n(.*?)```", TEXT, flags=re.S)]
SKIPPED = [start for start, _ in FOUND if TEXT[:start].rstrip().endswith("-->")
           and TEXT[:start].rstrip().rpartition("<!--")[2].lstrip().startswith("not run")]
BLOCKS = [(TEXT[:start].count("\n") + 1, code) for start, code in FOUND if start not in SKIPPED]


def test_the_doc_has_an_example_per_feature():
    assert len(BLOCKS) >= 17 and len(SKIPPED) <= 2


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line {line}" for line, _ in BLOCKS])
def test_doc_example_runs(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTIMLAB_RUNS", str(tmp_path / "runs.sqlite"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small examples: one thread is faster than two on a busy machine
    try:
        exec(compile(code, f"{DOC.name}:{line}", "exec"), {"__name__": "__doc_example__"})
    finally:
        torch.set_num_threads(threads)
