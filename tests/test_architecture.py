"""The shape of the code: no import cycles, and the layers import downwards only.

Imports are read from the source (module level and inside functions alike: a lazy import
still ties two modules together), so these tests need nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
           for p in SRC.rglob("*.py")}


def _owner(name: str) -> str | None:
    """The optimlab module (or package) an imported name belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        found |= {_owner(n) for n in names if n.startswith("optimlab")} - {None, module}
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_graph_was_read():
    assert len(GRAPH) > 80 and "optimlab.optim._base" in GRAPH["optimlab.optim.adam"]


def test_no_import_cycles():
    assert _cycles() == []


def test_optim_and_schedules_import_nothing_above_them():
    above = ("optimlab.train", "optimlab.store", "optimlab.showdown", "optimlab.sweep", "optimlab.landscape",
             "optimlab.cli", "optimlab.report", "optimlab.lrfind", "optimlab.distributed")
    for module, imported in GRAPH.items():
        if module.startswith(("optimlab.optim", "optimlab.schedules")) and not module.endswith(".cli"):
            assert not [i for i in imported if i.startswith(above)], (module, imported)


def test_the_loop_records_into_the_store_not_the_other_way():
    """data -> train -> store -> report: the training history does not import the store."""
    assert not [i for i in GRAPH["optimlab.train.history"] if i.startswith("optimlab.store")]
    assert not [i for i in GRAPH["optimlab.jsonsafe"] if i.startswith(("optimlab.train", "optimlab.store"))]
