"""The run store: every run's configuration and metrics in one SQLite file.

>>> from optimlab.store import RunStore
>>> store = RunStore()                        # $OPTIMLAB_RUNS, else ~/.local/share/optimlab/runs.sqlite
>>> store.runs()[:1]                          # doctest: +SKIP
>>> store.export("20250101-120000-ab12cd", "run.csv")   # doctest: +SKIP

One file, WAL journal: readers never block the writer, and several processes
may write at once (each write is one short ``BEGIN IMMEDIATE`` transaction;
a busy database is waited for, up to ``timeout`` seconds). Keep the file on a
local disk: SQLite's locking is not reliable over network file systems.

Tables: ``runs`` (one row per run: id, name, status, configuration, final
metrics, why it stopped, diagnoses), ``epochs`` (one row per run and epoch)
and ``steps`` (the sampled per-step rows), metrics as JSON objects. Rows are
keyed by (run, epoch) and (run, step), so a resumed run rewrites the rows it
repeats instead of duplicating them. Command line: ``optimlab runs``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

ENV_VAR = "OPTIMLAB_RUNS"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    host TEXT, pid INTEGER, config TEXT NOT NULL, summary TEXT, stop TEXT, diagnoses TEXT);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, epoch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch INTEGER, data TEXT NOT NULL,
    PRIMARY KEY (run_id, step)) WITHOUT ROWID;
"""

__all__ = ["RunStore", "default_path", "ENV_VAR"]


def default_path() -> Path:
    """``$OPTIMLAB_RUNS``, else ``$XDG_DATA_HOME/optimlab/runs.sqlite`` (``~/.local/share/...``)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "optimlab" / "runs.sqlite"


def _dumps(value) -> str:
    from optimlab.train.history import clean

    return json.dumps(clean(value), separators=(",", ":"), default=str)


class RunStore:
    """A handle on one store file (created on first use). Not shared across ``fork``:
    each process opens its own ``RunStore``."""

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 60.0):
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    # --------------------------------------------------------------- connection
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = NORMAL")
            self._conn, self._pid = conn, os.getpid()
            self._write(lambda c: [c.execute(sql) for sql in SCHEMA.split(";") if sql.strip()])
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def _retry(self, fn):
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _write(self, fn) -> None:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction, retried while the file is busy."""
        conn = self._conn if self._conn is not None and self._pid == os.getpid() else self.conn

        def attempt():
            conn.execute("BEGIN IMMEDIATE")
            try:
                fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        self._retry(attempt)

    # ------------------------------------------------------------------ writing
    def start_run(self, run_id: str, config: dict, *, name: str | None = None) -> str:
        """Create the run (status ``running``), or mark an existing one running again (a resume)."""
        now = time.time()

        def write(c):
            c.execute("INSERT INTO runs (run_id, name, status, created, updated, host, pid, config) "
                      "VALUES (?, ?, 'running', ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET "
                      "status='running', updated=excluded.updated, pid=excluded.pid, host=excluded.host",
                      (run_id, name, now, now, socket.gethostname(), os.getpid(), _dumps(config)))

        self._write(write)
        return run_id

    def log_epoch(self, run_id: str, row: dict, steps: list[dict] = ()) -> None:
        """One epoch's row and its sampled step rows, in one transaction."""
        epoch_data = _dumps(row)
        step_data = [(run_id, int(s["step"]), s.get("epoch"), _dumps(s)) for s in steps]

        def write(c):
            c.execute("INSERT OR REPLACE INTO epochs (run_id, epoch, data) VALUES (?, ?, ?)",
                      (run_id, int(row["epoch"]), epoch_data))
            c.executemany("INSERT OR REPLACE INTO steps (run_id, step, epoch, data) VALUES (?, ?, ?, ?)", step_data)
            c.execute("UPDATE runs SET updated=? WHERE run_id=?", (time.time(), run_id))

        self._write(write)

    def finish_run(self, run_id: str, *, status: str, summary: dict | None = None, stop: dict | None = None,
                   diagnoses: list | None = None) -> None:
        def write(c):
            c.execute("UPDATE runs SET status=?, updated=?, summary=?, stop=?, diagnoses=? WHERE run_id=?",
                      (status, time.time(), _dumps(summary or {}), _dumps(stop) if stop else None,
                       _dumps(diagnoses or []), run_id))

        self._write(write)

    def delete(self, run_id: str) -> None:
        run_id = self.resolve(run_id)

        def write(c):
            for table in ("steps", "epochs", "runs"):
                c.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))

        self._write(write)

    # ------------------------------------------------------------------ reading
    def resolve(self, run_id: str) -> str:
        """The full id of the run whose id is or starts with ``run_id`` (unique prefix)."""
        rows = self.conn.execute("SELECT run_id FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '\\'",
                                 (run_id, run_id.replace("%", "\\%").replace("_", "\\_") + "%")).fetchall()
        ids = sorted({r[0] for r in rows})
        if run_id in ids:
            return run_id
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        raise KeyError(f"run id {run_id!r} is ambiguous: {', '.join(ids[:5])}")

    def runs(self, *, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Every run (newest first): id, name, status, times, config, summary, epoch count."""
        sql = ("SELECT r.run_id, r.name, r.status, r.created, r.updated, r.config, r.summary, r.stop, r.diagnoses, "
               "(SELECT COUNT(*) FROM epochs e WHERE e.run_id = r.run_id) FROM runs r")
        args: list = []
        if status:
            sql += " WHERE r.status = ?"
            args.append(status)
        sql += " ORDER BY r.created DESC, r.run_id DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(int(limit))
        out = []
        for rid, name, st, created, updated, config, summary, stop, diagnoses, n in self.conn.execute(sql, args):
            out.append({"run_id": rid, "name": name, "status": st, "created": created, "updated": updated,
                        "config": json.loads(config), "summary": json.loads(summary) if summary else {},
                        "stop": json.loads(stop) if stop else None,
                        "diagnoses": json.loads(diagnoses) if diagnoses else [], "epochs": n})
        return out

    def run(self, run_id: str) -> dict[str, Any]:
        """One run in full: its ``runs`` entry plus ``epochs`` and ``steps`` rows."""
        run_id = self.resolve(run_id)
        row = next(r for r in self.runs() if r["run_id"] == run_id)
        row["epochs_rows"] = [json.loads(d) for (d,) in self.conn.execute(
            "SELECT data FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,))]
        row["steps_rows"] = [json.loads(d) for (d,) in self.conn.execute(
            "SELECT data FROM steps WHERE run_id=? ORDER BY step", (run_id,))]
        return row

    def history(self, run_id: str):
        """The run as a :class:`optimlab.train.History` (e.g. for ``optimlab.diagnose``)."""
        from optimlab.train.history import History

        r = self.run(run_id)
        return History.from_dict({"run_id": r["run_id"], "status": r["status"], "stop": r["stop"],
                                  "config": r["config"], "epochs": r["epochs_rows"], "steps": r["steps_rows"],
                                  "diagnoses": r["diagnoses"]})

    def count(self, table: str = "runs", run_id: str | None = None) -> int:
        if table not in ("runs", "epochs", "steps"):
            raise ValueError(f"table must be runs, epochs or steps, got {table!r}")
        if run_id is None:
            return self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        return self.conn.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id=?", (run_id,)).fetchone()[0]

    # ------------------------------------------------------------------- export
    def table(self, run_ids: list[str] | None = None, what: str = "epochs") -> list[dict[str, Any]]:
        """Flat rows for export: ``what`` = ``epochs``, ``steps`` or ``runs``; each row carries ``run_id``."""
        if what not in ("epochs", "steps", "runs"):
            raise ValueError(f"what must be epochs, steps or runs, got what={what!r}")
        ids = [self.resolve(r) for r in run_ids] if run_ids else [r["run_id"] for r in reversed(self.runs())]
        rows: list[dict[str, Any]] = []
        for rid in ids:
            r = self.run(rid)
            if what == "runs":
                flat = {"run_id": rid, "name": r["name"], "status": r["status"], "created": r["created"],
                        "epochs": r["epochs"]}
                flat.update({f"config.{k}": v for k, v in r["config"].items()})
                flat.update({f"final.{k}": v for k, v in r["summary"].items()})
                rows.append(flat)
            else:
                rows += [{"run_id": rid, **x} for x in r[f"{what}_rows"]]
        return rows

    def export(self, run_ids: str | list[str] | None, path: str | os.PathLike | None = None, *,
               fmt: str | None = None, what: str = "epochs") -> str:
        """Write runs as CSV (one flat table of ``what``) or JSON (each run in full).

        ``run_ids``: one id, a list, or None for every run. ``fmt``: ``"csv"`` or
        ``"json"`` (default: from the file's suffix, else JSON). Returns the text;
        also writes it to ``path`` when given.
        """
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if fmt is None:
            fmt = "csv" if path is not None and str(path).endswith(".csv") else "json"
        if fmt == "json":
            ids = [self.resolve(r) for r in run_ids] if run_ids else [r["run_id"] for r in reversed(self.runs())]
            text = json.dumps([self.run(r) for r in ids], indent=1, default=str)
        elif fmt == "csv":
            rows = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}
                    for row in self.table(run_ids, what)]
            columns: list[str] = []
            for row in rows:
                columns += [k for k in row if k not in columns]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            text = buf.getvalue()
        else:
            raise ValueError(f"fmt must be 'csv' or 'json', got fmt={fmt!r}")
        if path is not None:
            Path(path).write_text(text)
        return text

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"
