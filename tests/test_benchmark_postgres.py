"""Several machines, one benchmark: two processes against one PostgreSQL storage, each with its own
run store, as two machines would run the same ``optimlab benchmark --storage postgresql://...``."""

from __future__ import annotations

import pytest

from tests import benchmark_tiny as tiny
from tests.forked import run_forked
from tests.test_benchmark_runner import _check_complete
from tests.test_sweep_postgres import postgres_url  # noqa: F401  (the fixture: a server of our own)

pytest.importorskip("psycopg2", reason="psycopg2-binary (the 'postgres' extra) is not installed")


def _machine(out: str, storage: str) -> None:
    from optimlab.benchmark.runner import run_benchmark

    run_benchmark(tiny.config(out, storage))


def test_two_machines_share_the_studies_and_their_stores_merge_into_one_report(postgres_url, tmp_path):  # noqa: F811
    from optimlab.benchmark.report import build_report
    from optimlab.store import RunStore

    outs = [str(tmp_path / f"m{i}") for i in range(2)]
    assert run_forked(_machine, [(out, postgres_url) for out in outs]) == [0, 0]
    # every trial ran once, on one machine or the other: merged, the stores hold the whole benchmark
    merged = tiny.config(outs[0], postgres_url)
    db = RunStore(merged.store_path)
    db.merge(tiny.config(outs[1], postgres_url).store_path)
    db.close()
    _check_complete(merged)
    _, text = build_report(merged.store_path, outs[0], benchmark=merged.benchmark_id)
    assert "all 30 runs finished" in text
