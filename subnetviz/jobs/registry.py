"""The run registry: one SQLite table of runs (WAL mode), shared safely by many processes.

Several Streamlit sessions and a CLI may each hold a :class:`~subnetviz.jobs.runner.JobRunner`
on the same runs folder. Nothing that matters lives in memory: every read opens a fresh
connection, and every read-modify-write happens inside ``BEGIN IMMEDIATE`` (one writer at a
time, readers never blocked thanks to WAL), via :meth:`Registry.transaction`.

Table ``runs``: ``id, kind, name, status, pid, pid_start, created, started, ended, step, total,
last_metrics (JSON), error, run_dir, config (JSON), gpu, launch (JSON)``; ``status`` is one of
:data:`STATUSES`; times are Unix seconds. ``pid_start`` is the process's creation time (Unix
seconds, ``psutil.Process.create_time``) that tells our process from a later one that reused its
pid: :func:`is_alive` is the one liveness check of the package. Registries written before schema
version 1 stored it as clock ticks since boot (``/proc/<pid>/stat``); opening one converts them.

A run's folder is always the registry's own folder / its id (:meth:`Registry.folder`); the stored ``run_dir``
is not trusted. A home copied or moved elsewhere (``cp -a``, a new disk) keeps a registry whose rows name the
*original* home's folders: acting on those stopped the original's jobs and wrote into its folders. A row whose
stored folder is another is re-rooted here when this home has the run's folder; else the row is another home's
(:attr:`RunRecord.elsewhere`): never started, signalled or written to, and its error says so.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import psutil

from subnetviz.errors import ConfigError, JobError, suggest

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what an SQLite INTEGER holds
TERMINAL = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    pid INTEGER,
    pid_start REAL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    step INTEGER,
    total INTEGER,
    last_metrics TEXT,
    error TEXT,
    run_dir TEXT NOT NULL,
    config TEXT NOT NULL,
    gpu TEXT,
    launch TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created);
"""
_ADDED_COLUMNS = {"gpu": "TEXT", "launch": "TEXT"}
SCHEMA_VERSION = 1  # PRAGMA user_version; 1: pid_start is a creation time in Unix seconds, not clock ticks
START_TOLERANCE_S = 1.0  # creation times are wall-clock based; allow for clock steps between two reads


@dataclass(frozen=True)
class RunRecord:
    """One row of the registry (``config`` and ``last_metrics`` decoded from JSON)."""

    id: str
    kind: str
    name: str | None
    status: str
    pid: int | None
    pid_start: float | None  # the process's creation time, Unix seconds (None: not recorded)
    created: float
    started: float | None
    ended: float | None
    step: int | None
    total: int | None
    last_metrics: dict
    error: str | None
    run_dir: str
    config: dict
    gpu: str | None = None  # the CUDA device id(s) the job was given ("2", "2,3"; None on CPU; "*": not known)
    launch: dict | None = None  # how to start it: {command, max_concurrent, gpus, cuda_visible_devices, read_env}
    # Not a column: the folder the row names when that is another home's (a registry copied or moved without
    # this run's folder); None for a run of this home. Such a run is never started, signalled or written to.
    elsewhere: str | None = field(default=None, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def outputs(self) -> Path:
        """Where a succeeded run's results are (absent for any other status)."""
        return Path(self.run_dir) / "outputs"


COLUMNS = [f.name for f in fields(RunRecord) if f.name != "elsewhere"]
JOB_ENV = "SUBNETVIZ_JOB"
# a foreground ``train --run-dir``'s own record of its process in the folder it made: ``{"pid", "pid_start"}``
FOREGROUND_FILE = "foreground.json"
"""Set to the run folder in a worker's environment (:func:`subnetviz.jobs.scheduler.start`), which every process
it starts inherits: what tells a run's processes (:func:`job_folder`)."""


def _json_column(text: str | None, default: dict | None) -> dict | None:
    """A JSON object column's value; ``default`` when it is empty or unreadable (one row never breaks a listing)."""
    if not text:
        return default
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return default
    return value if isinstance(value, dict) else default


def _record(row: sqlite3.Row) -> RunRecord:
    # Only the columns this version knows: a newer subnetviz on the same runs folder may have added some.
    d = {k: v for k, v in dict(row).items() if k in COLUMNS}
    d["last_metrics"] = _json_column(d["last_metrics"], {})
    d["config"] = _json_column(d["config"], {})
    d["launch"] = _json_column(d["launch"], None)
    return RunRecord(**d)


def same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Do two paths name one folder (symbolic links and ``..`` resolved; it need not exist)?"""
    return os.path.realpath(a) == os.path.realpath(b)


def elsewhere_note(stored: str, root: Path) -> str:
    """The one line that a run of another home says wherever it is shown."""
    return (
        f"its run folder {stored} is another home's: this home ({root}) has no folder for it (a copied or moved "
        "registry); left alone here"
    )


def placed(rec: RunRecord, root: Path) -> RunRecord:
    """``rec`` with its folder derived from the registry's folder ``root``: always ``root / id``.

    A row whose stored folder is another (a home copied or moved) is this home's copy of the run when ``root /
    id`` is here; else the run is another home's: ``elsewhere`` names its folder, and its error says so."""
    own = root / rec.id
    if rec.run_dir == str(own) or own.is_dir() or same_folder(rec.run_dir, own):
        return replace(rec, run_dir=str(own))
    note = elsewhere_note(rec.run_dir, root)
    error = rec.error if rec.error and rec.error.startswith(note) else f"{note}; {rec.error}" if rec.error else note
    return replace(rec, run_dir=str(own), error=error, elsewhere=rec.run_dir)


def storable(value):
    """``value`` as SQLite can store it: an int clamped into SQLite's int64 range (a job's ``total`` of 2**63
    raised OverflowError in every poll), a NaN or infinite float as NULL; anything else as it is."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return min(max(value, INT64_MIN), INT64_MAX)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another's lock
MOVE_ASIDE = (  # a new registry re-registers the runs from their folders (JobRunner, when it finds it empty)
    "move it aside to start a new one: its runs are then re-read from their run folders beside it."
)


def registry_problem(exc: sqlite3.Error | OSError, path: Path) -> str:
    """What is wrong with the registry at ``path``, and what to do, in one line, told by SQLite's error code
    (``exc.sqlite_errorname``) or the errno. Only a damaged file is to be moved aside: a healthy registry on a
    read-only or full disk, or one another process holds, would lose every run record that way."""
    if isinstance(exc, OSError):
        code, text = exc.errno, exc.strerror or str(exc)
        name = {errno.EROFS: "READONLY", errno.EACCES: "PERM", errno.EPERM: "PERM", errno.ENOSPC: "FULL"}.get(code, "")
        name = "SQLITE_" + name if name else "SQLITE_IOERR" if code == errno.EIO else ""
    else:
        name, text = getattr(exc, "sqlite_errorname", "") or "", str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return (
            f"{path}: the job registry is busy (another process has held it locked for {BUSY_TIMEOUT_S:g} s); "
            "try again."
        )
    if path.is_dir():
        return f"{path}: the job registry cannot be opened (a folder is in its place); {MOVE_ASIDE}"
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH", "SQLITE_CANTOPEN")):
        return (
            f"{path}: the job registry cannot be written here ({text}): a read-only file system or no permission; "
            "make its folder writable and try again."
        )
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        return f"{path}: the job registry cannot be written ({text}): the disk is full or failing; free space and try again."
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or type(exc) is sqlite3.DatabaseError:
        return f"{path}: the job registry cannot be opened ({text}): the file is damaged; {MOVE_ASIDE}"
    return f"{path}: the job registry cannot be used ({text})."


@contextmanager
def _told(path: Path) -> Iterator[None]:
    """Turn SQLite's errors about the file (read-only, full, locked, damaged) into one line naming it. A bug in
    a statement (IntegrityError, ProgrammingError, ...) is left as it is."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise JobError(registry_problem(exc, path)) from None
    except sqlite3.DatabaseError as exc:
        if type(exc) is not sqlite3.DatabaseError:  # (a file that is no database: plain DatabaseError)
            raise
        raise JobError(registry_problem(exc, path)) from None


_NEWER_SAID: set[Path] = set()  # registries already said (once per process) to be of a newer version


class Registry:
    """The SQLite registry at ``path`` (created with its table on first use)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.root = Path(os.path.abspath(self.path.parent))  # the runs folder: a run's folder is root / its id
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(registry_problem(exc, self.path)) from None
        try:
            self._create()
        except JobError as exc:  # (the transaction's one line): a registry that cannot be opened is a setup error
            raise ConfigError(str(exc)) from None

    def _create(self) -> None:
        with self.transaction() as con:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            have = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
            for col, decl in _ADDED_COLUMNS.items():  # registries made by an older version
                if col not in have:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version < 1:
                _ticks_to_create_times(con)
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION and self.path not in _NEWER_SAID:  # its extra columns are left alone
                _NEWER_SAID.add(self.path)
                logging.getLogger(__name__).warning(
                    "%s: written by a newer subnetviz (schema %d, this one knows %d); its new columns are ignored.",
                    self.path,
                    version,
                    SCHEMA_VERSION,
                )

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; 30 s busy timeout for writers.
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on error. The file's own
        troubles (a full or read-only disk, a lock held too long) are one-line JobErrors (:func:`registry_problem`)."""
        with _told(self.path):
            con = self._connect()
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                except BaseException:
                    with suppress(sqlite3.Error):  # (a failing disk may refuse this too: the first error is the news)
                        con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()

    def empty(self) -> bool:
        """Does the registry hold no run at all (new, emptied, or a 0-byte file SQLite took for a new one)?"""
        with _told(self.path):
            c = self._connect()
            try:
                return c.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is None
            finally:
                c.close()

    def folder(self, run_id: str) -> Path:
        """Run ``run_id``'s folder: this registry's folder / the id, whatever folder its row names."""
        return self.root / run_id

    def _placed(self, row: sqlite3.Row) -> RunRecord:
        return placed(_record(row), self.root)

    def insert(self, con: sqlite3.Connection, rec: RunRecord) -> None:
        d = {
            **{k: storable(v) for k, v in rec.__dict__.items()},
            "last_metrics": json.dumps(rec.last_metrics),
            "config": json.dumps(rec.config),
            "launch": json.dumps(rec.launch) if rec.launch is not None else None,
        }
        con.execute(
            f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", [d[c] for c in COLUMNS]
        )

    def update(self, con: sqlite3.Connection, run_id: str, **values) -> None:
        bad = [k for k in values if k not in COLUMNS or k == "id"]
        if bad:
            raise ValueError(f"not registry columns: {bad}")
        if "status" in values and values["status"] not in STATUSES:
            raise ValueError(f"status {values['status']!r} not in {STATUSES}")
        values = {k: storable(v) for k, v in values.items()}
        for col in ("last_metrics", "config", "launch"):
            if col in values and values[col] is not None:
                values[col] = json.dumps(values[col])
        sets = ", ".join(f"{k} = ?" for k in values)
        con.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*values.values(), run_id])

    def rows(self, con: sqlite3.Connection | None = None, *, status: str | None = None) -> list[RunRecord]:
        """All runs (optionally of one status), oldest first."""
        q = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY created, id"
        args = [status] if status else []
        if con is not None:
            return [self._placed(r) for r in con.execute(q, args)]
        with _told(self.path):
            c = self._connect()
            try:
                return [self._placed(r) for r in c.execute(q, args)]
            finally:
                c.close()

    def get(self, run_id: str, con: sqlite3.Connection | None = None) -> RunRecord:
        with _told(self.path):
            c = con or self._connect()
            try:
                row = c.execute("SELECT * FROM runs WHERE id = ?", [run_id]).fetchone()
                if row is None:
                    ids = [r[0] for r in c.execute("SELECT id FROM runs")]
                    raise JobError(f"no run {run_id!r} in {self.path}.{suggest(run_id, ids)}")
                return self._placed(row)
            finally:
                if con is None:
                    c.close()


def _ticks_to_create_times(con: sqlite3.Connection) -> None:
    """Schema 0 -> 1: ``pid_start`` from clock ticks since boot to a creation time in Unix seconds.

    Exact for a process of this boot (the formula psutil uses); after a reboot the old process is
    gone anyway and the converted time matches no process. 0 (no start recorded) stays as is.
    """
    try:
        hz = os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return  # no clock ticks here: old rows keep the pid-only check
    boot = psutil.boot_time()
    con.execute(
        "UPDATE runs SET pid_start = ? + pid_start / CAST(? AS REAL) WHERE pid_start IS NOT NULL AND pid_start != 0",
        (boot, hz),
    )


def _process(pid: int | None) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid is not None and pid > 0 else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def creation_time(pid: int | None) -> float | None:
    """When process ``pid`` was created (Unix seconds), zombie or not; None if there is no such process."""
    try:
        proc = _process(pid)
        return proc.create_time() if proc is not None else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # AccessDenied: not ours (another user's pid)
        return None


def process_start(pid: int | None) -> float | None:
    """The creation time (Unix seconds) of a live, non-zombie process ``pid``, else None."""
    try:
        proc = _process(pid)
        if proc is None or proc.status() == psutil.STATUS_ZOMBIE:  # a zombie has ended, unreaped
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def job_folder(pid: int | None) -> str | None:
    """The run folder process ``pid`` works for (:data:`JOB_ENV` in its environment); None when it names none,
    or the process is gone or not ours to read."""
    try:
        proc = _process(pid)
        return proc.environ().get(JOB_ENV) if proc is not None else None
    except (psutil.Error, OSError):
        return None


def _last_argument_is(pid: int | None, folder: str | os.PathLike) -> bool:
    """Does process ``pid``'s command line end with ``folder``, as every worker's does (the folder it runs)?"""
    try:
        command = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, TypeError):
        return False
    return bool(command) and same_folder(command[-1], folder)


RUN_DIR_OPTION = "--run-dir"  # ``subnetviz train``'s: the folder of a run in the foreground


def foreground_run_dir(command: list[str]) -> str | None:
    """The folder that a ``subnetviz train ... --run-dir FOLDER`` command line names (``--run-dir=FOLDER``, and the
    abbreviations argparse takes, too), as it was typed (relative to the process's folder); None for any other."""
    if "train" not in command:
        return None
    args = command[command.index("train") + 1 :]
    for i, arg in enumerate(args):
        if arg == "--":  # (what follows is no option)
            return None
        option, eq, value = arg.partition("=")
        if len(option) > 2 and RUN_DIR_OPTION.startswith(option):
            return value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return None


def _is_recorded_foreground(pid: int | None, folder: str | os.PathLike) -> bool:
    """Is process ``pid`` the foreground ``train --run-dir`` of ``folder``: the pid its :data:`FOREGROUND_FILE`
    records, whose command line names that folder (:func:`foreground_run_dir`, read from the process's folder)?
    Its recorded start is not compared: this is what is asked when the clock was stepped (:func:`is_alive`)."""
    try:
        record = json.loads((Path(folder) / FOREGROUND_FILE).read_text())
        if not isinstance(record, dict) or record.get("pid") != pid:
            return False
        proc = psutil.Process(pid)
        named = foreground_run_dir(proc.cmdline())
        return named is not None and same_folder(os.path.join(proc.cwd(), named), folder)
    except (psutil.Error, OSError, ValueError, TypeError, RecursionError):
        return False


def is_alive(rec: RunRecord) -> bool:
    """Is the run's recorded process still running: same pid *and* same creation time?

    Creation times are wall-clock based: when the clock is stepped while a job runs (NTP after boot,
    a virtual machine restored or migrated) the same process reports another creation time. Then the
    process is still the run's when its command line ends with the run's folder, as every worker's
    does (:func:`subnetviz.jobs.scheduler.start`), or when it is the run's foreground ``train --run-dir`` (the
    pid its folder's :data:`FOREGROUND_FILE` records, naming the folder by ``--run-dir`` anywhere in its command
    line: a run adopted by a rebuilt registry, :mod:`subnetviz.jobs.rescan`); a later process that reused the pid
    does not.
    A row without a recorded start (None or 0, from a platform that could not tell) is judged by
    its pid alone, as before. A process that is the job of another run folder (:func:`job_folder`) is not
    the run's: in a copied home, the row names the original home's process, working on the original's folder.
    """
    start = process_start(rec.pid)
    if start is None:
        return False
    folder = job_folder(rec.pid)
    if folder is not None and not same_folder(folder, rec.run_dir):
        return False
    if not rec.pid_start or abs(start - rec.pid_start) < START_TOLERANCE_S:
        return True
    return _last_argument_is(rec.pid, rec.run_dir) or _is_recorded_foreground(rec.pid, rec.run_dir)


def is_job_process(rec: RunRecord) -> bool:
    """May ``rec``'s process be signalled? Only when the run is this home's (not :attr:`~RunRecord.elsewhere`),
    its process is alive as recorded (:func:`is_alive`), and that process is the job of this very run folder:
    its :data:`JOB_ENV` or else its last argument (the folder every worker is started with) names it, or the folder
    records it as its foreground ``train --run-dir`` (:data:`FOREGROUND_FILE`: pid and start). A row's pid
    alone never is enough: a copied registry names the original home's processes."""
    if rec.elsewhere is not None or not is_alive(rec):
        return False
    folder = job_folder(rec.pid)
    if folder is not None:
        return same_folder(folder, rec.run_dir)
    # a foreground ``train --run-dir X --config C`` (adopted by a rebuild) ends with its config, not its folder
    return _last_argument_is(rec.pid, rec.run_dir) or _is_recorded_foreground(rec.pid, rec.run_dir)


def working_elsewhere(rec: RunRecord) -> str | None:
    """The other run folder that ``rec``'s recorded process (same pid and creation time) works for, if it does:
    the original of a copied home's run. None otherwise."""
    start = process_start(rec.pid)
    if start is None or (rec.pid_start and abs(start - rec.pid_start) >= START_TOLERANCE_S):
        return None
    folder = job_folder(rec.pid)
    return folder if folder is not None and not same_folder(folder, rec.run_dir) else None
