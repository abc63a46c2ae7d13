"""docs/benchmark.md's workload and preset tables are the code's declarations (generated here, compared)."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmark.md"


def workloads_table() -> str:
    from optimlab.benchmark import workloads as W

    lines = ["| workload | what | metric | batch | steps | evaluated every | source |", "|---|---|---|---|---|---|---|"]
    for name in W.BUILTINS:  # not the workloads other tests register
        w = W.get(name)
        metric = f"{w.metric} ({'higher' if w.mode == 'max' else 'lower'} is better)"
        lines.append(f"| `{name}` | {w.title} | {metric} | {w.batch_size} | {w.steps} | {w.eval_every} | {w.source} |")
    return "\n".join(lines)


def presets_table() -> str:
    from optimlab.benchmark.config import PRESETS

    lines = ["| preset | optimizers | workloads | trials | seeds | share of each budget | workers |",
             "|---|---|---|---|---|---|---|"]
    for name, p in PRESETS.items():
        lines.append(f"| `{name}` | {', '.join(p.optimizers)} | {', '.join(p.workloads) if p.workloads else 'all'} "
                     f"| {p.trials} | {p.seeds} | {p.fraction:g} | {'one per core' if p.all_cores else '1'} |")
    return "\n".join(lines)


def test_the_docs_tables_are_the_declarations():
    text = DOC.read_text()
    assert workloads_table() in text, "docs/benchmark.md's workload table is out of date:\n" + workloads_table()
    assert presets_table() in text, "docs/benchmark.md's preset table is out of date:\n" + presets_table()


def test_the_docs_example_registers_a_workload_and_benchmarks_it(tmp_path, monkeypatch):
    import re

    from optimlab.benchmark import workloads as W

    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        W.WORKLOADS.pop("my_regression", None)
    assert "all 8 runs finished" in namespace["table"]
    assert (tmp_path / "my-benchmark" / "report.html").exists()
