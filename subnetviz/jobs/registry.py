"""The run registry: one SQLite table of runs (WAL mode), shared safely by many processes.

Several Streamlit sessions and a CLI may each hold a :class:`~subnetviz.jobs.runner.JobRunner`
on the same runs folder. Nothing that matters lives in memory: every read opens a fresh
connection, and every read-modify-write happens inside ``BEGIN IMMEDIATE`` (one writer at a
time, readers never blocked thanks to WAL), via :meth:`Registry.transaction`.

Table ``runs``: ``id, kind, name, status, pid, pid_start, created, started, ended, step, total,
last_metrics (JSON), error, run_dir, config (JSON), gpu``; ``status`` is one of :data:`STATUSES`;
times are Unix seconds; ``pid_start`` is the process start time (``/proc/<pid>/stat``) that
tells our process from a later one that reused its pid (:func:`process_start`, :func:`is_alive`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from subnetviz.errors import JobError, suggest

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    pid INTEGER,
    pid_start INTEGER,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    step INTEGER,
    total INTEGER,
    last_metrics TEXT,
    error TEXT,
    run_dir TEXT NOT NULL,
    config TEXT NOT NULL,
    gpu TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created);
"""
_ADDED_COLUMNS = {"gpu": "TEXT"}


@dataclass(frozen=True)
class RunRecord:
    """One row of the registry (``config`` and ``last_metrics`` decoded from JSON)."""

    id: str
    kind: str
    name: str | None
    status: str
    pid: int | None
    pid_start: int | None
    created: float
    started: float | None
    ended: float | None
    step: int | None
    total: int | None
    last_metrics: dict
    error: str | None
    run_dir: str
    config: dict
    gpu: str | None = None  # the CUDA device id the job was given (None on CPU)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def outputs(self) -> Path:
        """Where a succeeded run's results are (absent for any other status)."""
        return Path(self.run_dir) / "outputs"


COLUMNS = [f.name for f in fields(RunRecord)]


def _record(row: sqlite3.Row) -> RunRecord:
    d = dict(row)
    d["last_metrics"] = json.loads(d["last_metrics"]) if d["last_metrics"] else {}
    d["config"] = json.loads(d["config"])
    return RunRecord(**d)


class Registry:
    """The SQLite registry at ``path`` (created with its table on first use)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.transaction() as con:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            have = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
            for col, decl in _ADDED_COLUMNS.items():  # registries made by an older version
                if col not in have:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; 30 s busy timeout for writers.
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on error."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def insert(self, con: sqlite3.Connection, rec: RunRecord) -> None:
        d = {**rec.__dict__, "last_metrics": json.dumps(rec.last_metrics), "config": json.dumps(rec.config)}
        con.execute(
            f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", [d[c] for c in COLUMNS]
        )

    def update(self, con: sqlite3.Connection, run_id: str, **values) -> None:
        bad = [k for k in values if k not in COLUMNS or k == "id"]
        if bad:
            raise ValueError(f"not registry columns: {bad}")
        if "status" in values and values["status"] not in STATUSES:
            raise ValueError(f"status {values['status']!r} not in {STATUSES}")
        if "last_metrics" in values:
            values["last_metrics"] = json.dumps(values["last_metrics"])
        sets = ", ".join(f"{k} = ?" for k in values)
        con.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*values.values(), run_id])

    def rows(self, con: sqlite3.Connection | None = None, *, status: str | None = None) -> list[RunRecord]:
        """All runs (optionally of one status), oldest first."""
        q = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY created, id"
        args = [status] if status else []
        if con is not None:
            return [_record(r) for r in con.execute(q, args)]
        c = self._connect()
        try:
            return [_record(r) for r in c.execute(q, args)]
        finally:
            c.close()

    def get(self, run_id: str, con: sqlite3.Connection | None = None) -> RunRecord:
        c = con or self._connect()
        try:
            row = c.execute("SELECT * FROM runs WHERE id = ?", [run_id]).fetchone()
            if row is None:
                ids = [r[0] for r in c.execute("SELECT id FROM runs")]
                raise JobError(f"no run {run_id!r} in {self.path}.{suggest(run_id, ids)}")
            return _record(row)
        finally:
            if con is None:
                c.close()


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live, non-zombie process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if not Path("/proc/self/stat").exists():  # no procfs (not Linux): fall back to a signal probe
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                return None
            return 0
        return None
    rest = stat[stat.rindex(")") + 2 :].split()  # the fields after "(comm)": state, ppid, ...
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])  # field 22 of proc(5): starttime


def is_alive(rec: RunRecord) -> bool:
    """Is the run's recorded process still running (same pid *and* same start time)?"""
    if rec.pid is None:
        return False
    start = process_start(rec.pid)
    return start is not None and (rec.pid_start in (None, 0) or start == rec.pid_start)
