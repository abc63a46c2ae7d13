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
metrics, why it stopped, diagnoses, and the writing process), ``epochs`` (one
row per run and epoch) and ``steps`` (the sampled per-step rows), metrics as
JSON objects. Rows are keyed by (run, epoch) and (run, step), so a resumed run
rewrites the rows it repeats instead of duplicating them. Command line:
``optimlab runs``.

Writing: the store is a record of the work, not the work. ``fit`` turns a
store failure (a full disk, a path that cannot be created or opened) into one
``RuntimeWarning`` naming the file and the error, skips the run's later store
writes, marks the run ``incomplete`` if the file still takes that, and trains
on; the returned history's ``store_error`` says why, and
:meth:`RunStore.write_history` records the whole run later (as a resumed run
does by itself). A ``store`` argument of the wrong type is a ``ValueError``
before training.

Reading: ``RunStore(path, readonly=True)`` (``optimlab runs``, ``optimlab
report``) never creates or changes the database: a missing file is a
``FileNotFoundError`` naming it, and nothing is written. Next to a WAL database
SQLite may create its ``-wal``/``-shm`` coordination files, which reading
consistently while a run is being written needs; where it cannot (read-only
media), no one can be writing either, and the file is read as it stands.

Statuses: ``running``, then how the run ended (``completed``,
``early_stopped``, ``nonfinite``, ``stopped``), or ``interrupted`` (an
exception ended ``fit``) or ``incomplete`` (the store failed during the run).
A killed process cannot say so: its run stays ``running`` in the file, and
:meth:`RunStore.runs` tells on reading (nothing is rewritten): ``dead`` when the
run's process was on this host (same boot, same pid namespace) and is gone,
or its pid now belongs to another process (the recorded start time differs);
``stale`` when it cannot be checked (another host) and the run has not
written for ``stale_after`` seconds (a day); otherwise ``running``. The status
written is kept as ``stored_status``. Resuming the run marks it ``running``
again.
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

from optimlab.jsonsafe import clean

ENV_VAR = "OPTIMLAB_RUNS"
RUNNING, INCOMPLETE, INTERRUPTED, DEAD, STALE = "running", "incomplete", "interrupted", "dead", "stale"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    host TEXT, pid INTEGER, config TEXT NOT NULL, summary TEXT, stop TEXT, diagnoses TEXT, proc TEXT);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, epoch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch INTEGER, data TEXT NOT NULL,
    PRIMARY KEY (run_id, step)) WITHOUT ROWID;
"""

__all__ = ["RunStore", "default_path", "ENV_VAR", "INCOMPLETE", "INTERRUPTED", "DEAD", "STALE"]


def default_path() -> Path:
    """``$OPTIMLAB_RUNS``, else ``$XDG_DATA_HOME/optimlab/runs.sqlite`` (``~/.local/share/...``)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "optimlab" / "runs.sqlite"


def _dumps(value) -> str:
    return json.dumps(clean(value), separators=(",", ":"), default=str)


# ------------------------------------------------------------- whose run is it
def _boot_and_namespace() -> tuple[str, str] | None:
    """This machine's boot and this process's pid namespace (Linux): pids compare only within both."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip(), os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, from /proc); None when there is none."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_bytes()
        return stat.rsplit(b")", 1)[1].split()[19].decode()  # field 22; the name before ")" may hold spaces
    except (OSError, IndexError, ValueError):
        return None


def _this_process() -> str | None:
    """``"boot-id pid-namespace start-time"`` of this process (a reused pid has another start time);
    None where /proc does not tell."""
    where, start = _boot_and_namespace(), _start_time(os.getpid())
    return None if where is None or start is None else " ".join((*where, start))


def _pid_exists(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _is_dead(host: str | None, pid: int | None, proc: str | None) -> bool | None:
    """Whether the process that wrote a ``running`` row is gone: True, False, or None (cannot tell)."""
    if host != socket.gethostname() or not pid:
        return None
    if proc:
        parts = proc.split(" ")
        if len(parts) != 3 or tuple(parts[:2]) != _boot_and_namespace():
            return None  # another boot or another container that shares the host name
        start = _start_time(pid)
        if start is None:  # gone, or hidden by /proc's hidepid: ask the kernel
            return not _pid_exists(pid)
        return start != parts[2]
    return not _pid_exists(pid)  # written without a start time: a reused pid looks alive


def _open_error(err: sqlite3.Error, path: Path) -> sqlite3.Error:
    """The same error, naming the store file (SQLite's messages do not)."""
    new = type(err)(f"run store {path}: {err}")
    for attr in ("sqlite_errorcode", "sqlite_errorname"):
        if hasattr(err, attr):
            setattr(new, attr, getattr(err, attr))
    return new


def _create_schema(c: sqlite3.Connection) -> None:
    for sql in SCHEMA.split(";"):
        if sql.strip():
            c.execute(sql)
    if "proc" not in {row[1] for row in c.execute("PRAGMA table_info(runs)")}:
        c.execute("ALTER TABLE runs ADD COLUMN proc TEXT")  # a store written before dead-run detection


class RunStore:
    """A handle on one store file. Not shared across ``fork``: each process opens its own ``RunStore``.

    ``path``: the file (default :func:`default_path`); created with its directory
    on the first write. ``readonly=True``: for reading only: the file must exist
    (``FileNotFoundError`` naming it on the first read) and is never changed;
    writing raises ``PermissionError``. ``timeout``: seconds to wait for a busy
    file. ``stale_after``: seconds without a write after which a ``running`` run
    whose process cannot be checked reads as ``stale``. A path that is not a
    path (or names a directory), a non-positive ``timeout`` or ``stale_after``
    raises ``ValueError`` here, before anything is opened.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 60.0, readonly: bool = False,
                 stale_after: float = 24 * 3600.0):
        if path is not None and (not isinstance(path, (str, os.PathLike)) or str(path) == ""):
            raise ValueError(f"path must be a file path or None (the default store), got path={path!r}")
        for key, value in (("timeout", timeout), ("stale_after", stale_after)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{key} must be a positive number of seconds, got {key}={value!r}")
        if not isinstance(readonly, bool):
            raise ValueError(f"readonly must be True or False, got readonly={readonly!r}")
        self.path = Path(path).expanduser() if path is not None else default_path()
        if os.path.isdir(self.path):
            raise ValueError(f"path must be the store file, not a directory: {str(self.path)!r}")
        self.timeout, self.readonly, self.stale_after = timeout, readonly, float(stale_after)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._columns: set[str] = set()

    # --------------------------------------------------------------- connection
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            conn = self._open_readonly() if self.readonly else self._open()
            self._columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = NORMAL")
            self._transaction(conn, _create_schema)
        except sqlite3.Error as err:
            conn.close()
            raise _open_error(err, self.path) from err
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no run store at {self.path}")
        uri = self.path.absolute().as_uri() + "?mode=ro"
        try:
            return self._connect_readonly(uri)
        except sqlite3.Error as err:
            # A WAL reader needs the -shm index, which SQLite cannot create on read-only media;
            # there no one can be writing either, so the file as it stands is the whole store.
            # (With a -wal file present, committed rows may still be in it: then it is an error.)
            name = getattr(err, "sqlite_errorname", "")
            if (not isinstance(err, sqlite3.OperationalError) or Path(f"{self.path}-wal").exists()
                    or not name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN"))):
                raise _open_error(err, self.path) from err
        try:
            return self._connect_readonly(uri + "&immutable=1")
        except sqlite3.Error as err:
            raise _open_error(err, self.path) from err

    def _connect_readonly(self, uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            tables = {r[0] for r in self._retry(lambda: conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall())}
        except BaseException:
            conn.close()
            raise
        if not {"runs", "epochs", "steps"} <= tables:
            conn.close()
            raise sqlite3.DatabaseError("not an optimlab run store (no runs, epochs and steps tables)")
        return conn

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

    def _transaction(self, conn: sqlite3.Connection, fn) -> None:
        def attempt():
            conn.execute("BEGIN IMMEDIATE")
            try:
                fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
                    conn.execute("ROLLBACK")
                raise

        self._retry(attempt)

    def _write(self, fn) -> None:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction, retried while the file is busy."""
        if self.readonly:
            raise PermissionError(f"the run store {self.path} was opened read-only (RunStore(..., readonly=True))")
        self._transaction(self._conn if self._conn is not None and self._pid == os.getpid() else self.conn, fn)

    # ------------------------------------------------------------------ writing
    def start_run(self, run_id: str, config: dict, *, name: str | None = None) -> str:
        """Create the run (status ``running``), or mark an existing one running again (a resume)."""
        now = time.time()

        def write(c):
            c.execute("INSERT INTO runs (run_id, name, status, created, updated, host, pid, proc, config) "
                      "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET "
                      "status='running', updated=excluded.updated, pid=excluded.pid, host=excluded.host, "
                      "proc=excluded.proc",
                      (run_id, name, now, now, socket.gethostname(), os.getpid(), _this_process(), _dumps(config)))

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

    def write_history(self, history, *, name: str | None = None) -> str:
        """Record a whole run from its :class:`~optimlab.train.History` (or its ``to_dict()``) in one
        transaction, as ``fit`` would have: configuration, status, epochs, sampled steps, final
        metrics, why it stopped, diagnoses. Whatever the store held for the run is replaced (its
        ``created`` time is kept). For a run ``fit`` could not record (``history.store_error``), or
        to copy a run into another store. ``name``: default ``history.config["name"]``.

        Returns the run id. Raises ``ValueError`` naming the problem when ``history`` lacks a
        run id, a configuration, or epoch/step numbers, before anything is written; a store
        that cannot be written raises its ``sqlite3.Error``/``OSError`` and keeps what it had.
        """
        d = history.to_dict() if hasattr(history, "to_dict") else history
        if not isinstance(d, dict):
            raise ValueError(f"history must be a History or its to_dict(), got {type(history).__name__}")
        run_id, config, status = d.get("run_id"), d.get("config"), d.get("status", RUNNING)
        epochs, steps = d.get("epochs") or [], d.get("steps") or []
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"history has no run id (run_id={run_id!r}): a run needs one to be stored")
        if not isinstance(config, dict):
            raise ValueError(f"history {run_id} has no configuration dict (config={config!r})")
        if not isinstance(status, str) or not status:
            raise ValueError(f"history {run_id} has no status (status={status!r})")
        for key, rows in (("epoch", epochs), ("step", steps)):
            bad = next((r for r in rows if not isinstance(r, dict) or isinstance(r.get(key), bool)
                        or not isinstance(r.get(key), int)), None)
            if bad is not None:
                raise ValueError(f"history {run_id}: every {key}s row needs an integer {key!r}, got {bad!r}")
        if name is None:
            name = config.get("name")
        ended = status != RUNNING  # a live run's row has no summary, stop or diagnoses yet
        summary = _dumps(epochs[-1] if epochs else {}) if ended else None
        stop = _dumps(d["stop"]) if ended and d.get("stop") else None
        diagnoses = _dumps(d.get("diagnoses") or []) if ended else None
        epoch_rows = [(run_id, r["epoch"], _dumps(r)) for r in epochs]
        step_rows = [(run_id, r["step"], r.get("epoch"), _dumps(r)) for r in steps]
        now = time.time()

        def write(c):
            c.execute("INSERT INTO runs (run_id, name, status, created, updated, host, pid, proc, config, summary, "
                      "stop, diagnoses) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE "
                      "SET name=excluded.name, status=excluded.status, updated=excluded.updated, "
                      "host=excluded.host, pid=excluded.pid, proc=excluded.proc, config=excluded.config, "
                      "summary=excluded.summary, stop=excluded.stop, diagnoses=excluded.diagnoses",
                      (run_id, name, status, now, now, socket.gethostname(), os.getpid(), _this_process(),
                       _dumps(config), summary, stop, diagnoses))
            for table in ("epochs", "steps"):
                c.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            c.executemany("INSERT OR REPLACE INTO epochs (run_id, epoch, data) VALUES (?, ?, ?)", epoch_rows)
            c.executemany("INSERT OR REPLACE INTO steps (run_id, step, epoch, data) VALUES (?, ?, ?, ?)", step_rows)

        self._write(write)
        return run_id

    def merge(self, other: str | os.PathLike) -> dict[str, int]:
        """Copy the runs of the store file ``other`` into this one (several machines' stores into one,
        e.g. for a benchmark's report). A run this store lacks is copied with its epoch and step
        rows; a run both hold is taken from whichever wrote it last (``updated``); ``other`` is
        opened read-only and never changed. One transaction: all or nothing.

        Returns ``{"added": n, "updated": n, "kept": n}``. Errors: ``FileNotFoundError`` for a
        missing ``other``, ``sqlite3.DatabaseError`` for a file that is not a run store,
        ``ValueError`` when ``other`` is this store.
        """
        source = RunStore(other, readonly=True)
        if source.path.resolve() == self.path.resolve():
            raise ValueError(f"cannot merge the store {str(self.path)!r} into itself")
        try:
            src = source.conn
            cols = [c for c in ("run_id", "name", "status", "created", "updated", "host", "pid", "config",
                                "summary", "stop", "diagnoses", "proc") if c in source._columns or c == "proc"]
            theirs = {r[0]: r[1] for r in src.execute("SELECT run_id, updated FROM runs")}
            mine = {r[0]: r[1] for r in self.conn.execute("SELECT run_id, updated FROM runs")}
            take = [rid for rid, updated in theirs.items() if rid not in mine or updated > mine[rid]]
            select = ", ".join(c if c in source._columns else "NULL" for c in cols)
            rows = {rid: src.execute(f"SELECT {select} FROM runs WHERE run_id = ?", (rid,)).fetchone() for rid in take}
            epochs = {rid: src.execute("SELECT run_id, epoch, data FROM epochs WHERE run_id = ?", (rid,)).fetchall()
                      for rid in take}
            steps = {rid: src.execute("SELECT run_id, step, epoch, data FROM steps WHERE run_id = ?", (rid,)).fetchall()
                     for rid in take}
        finally:
            source.close()

        def write(c):
            for rid in take:
                c.execute("DELETE FROM epochs WHERE run_id = ?", (rid,))
                c.execute("DELETE FROM steps WHERE run_id = ?", (rid,))
                c.execute(f"INSERT OR REPLACE INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                          rows[rid])
                c.executemany("INSERT INTO epochs (run_id, epoch, data) VALUES (?, ?, ?)", epochs[rid])
                c.executemany("INSERT INTO steps (run_id, step, epoch, data) VALUES (?, ?, ?, ?)", steps[rid])

        if take:
            self._write(write)
        added = sum(rid not in mine for rid in take)
        return {"added": added, "updated": len(take) - added, "kept": len(theirs) - len(take)}

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

    def runs(self, *, status: str | None = None, limit: int | None = None,
             name: str | None = None) -> list[dict[str, Any]]:
        """Every run (newest first): id, name, status, times, config, summary, epoch count, host, pid.

        ``status`` is read as the module describes: a ``running`` row whose process is known
        to be gone reads ``dead``, one that cannot be checked and has not written for
        ``stale_after`` seconds reads ``stale``; ``stored_status`` is what the file says.
        ``status=``: only runs with this (read) status; ``limit``: at most this many;
        ``name=``: only runs of exactly this name.
        """
        conn = self.conn  # opening the file learns its columns
        proc_column = "r.proc" if "proc" in self._columns else "NULL"  # a store from before dead-run detection
        sql = ("SELECT r.run_id, r.name, r.status, r.created, r.updated, r.config, r.summary, r.stop, r.diagnoses, "
               f"(SELECT COUNT(*) FROM epochs e WHERE e.run_id = r.run_id), r.host, r.pid, {proc_column} FROM runs r")
        args: list = []
        derived = status in (RUNNING, DEAD, STALE)  # decided on reading: filtered and limited below
        where = []
        if status:
            where.append("r.status = ?")
            args.append(RUNNING if derived else status)
        if name is not None:
            where.append("r.name = ?")
            args.append(name)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.created DESC, r.run_id DESC"
        if limit and not derived:
            sql += " LIMIT ?"
            args.append(int(limit))
        out = []
        now = time.time()
        for row in conn.execute(sql, args):
            rid, name, st, created, updated, config, summary, stop, diagnoses, n, host, pid, proc = row
            shown = st
            if st == RUNNING:
                dead = _is_dead(host, pid, proc)
                shown = DEAD if dead else STALE if dead is None and now - updated > self.stale_after else RUNNING
            if derived and shown != status:
                continue
            out.append({"run_id": rid, "name": name, "status": shown, "stored_status": st, "created": created,
                        "updated": updated, "config": json.loads(config),
                        "summary": json.loads(summary) if summary else {},
                        "stop": json.loads(stop) if stop else None,
                        "diagnoses": json.loads(diagnoses) if diagnoses else [], "epochs": n,
                        "host": host, "pid": pid})
            if derived and limit and len(out) >= limit:
                break
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
