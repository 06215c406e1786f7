"""The job system against the third review's failures (/tmp/review/jobs3): a run folder deleted by hand, a healthy
registry on a read-only or full disk, a disk that fills after start-up, a worker stopped by a shutdown, a registry a
newer version added a column to, a device ``cuda:N`` on a runner that gives each job one GPU, and a queue cap
written with non-ASCII digits.

Jobs are real OS processes (``main_job`` in a fresh interpreter) running ``tests.training_fixtures:sleep_job`` or
:func:`record_job` below (kind ``python``, allowed by ``SUBNETVIZ_ALLOW_TEST_JOBS=1``). The registry's errors are
SQLite's own where one can be made without a mount (a read-only connection, a page limit that makes the file
"full"); the two seen only on a mount (SQLITE_CANTOPEN on a read-only one, SQLITE_IOERR_SHMSIZE on a full one) are
planted with the codes the review recorded. Every process started here is stopped by its pid.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from subnetviz.errors import ConfigError, JobError
from subnetviz.jobs.registry import Registry, process_start
from subnetviz.jobs.runner import JobRunner

WORKER = [
    sys.executable,
    "-c",
    "import sys; from subnetviz.jobs.worker import main_job; sys.exit(main_job(sys.argv[1]))",
]
SLEEP = {"kind": "python", "target": "tests.training_fixtures:sleep_job"}
RECORD = {"kind": "python", "target": "tests.integration.test_jobs3_fixes:record_job"}


def record_job(config: dict, ctx) -> None:
    """Test job: writes what it was given (its config's device, its GPU environment) to ``outputs/seen.json``,
    then sleeps ``seconds``."""
    keys = ("CUDA_VISIBLE_DEVICES", "SUBNETVIZ_DEVICE")
    seen = {"config_device": config.get("device"), **{k: os.environ.get(k) for k in keys}}
    (ctx.out_dir / "seen.json").write_text(json.dumps(seen))
    time.sleep(float(config.get("seconds", 0)))


@pytest.fixture(autouse=True)
def allow_test_jobs(monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    for var in ("SUBNETVIZ_DEVICE", "CUDA_VISIBLE_DEVICES", "SUBNETVIZ_MAX_QUEUED"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def started():
    """Run ids to stop at the end (each running one's worker killed by its own pid, then its group)."""
    runs: list[tuple[JobRunner, str]] = []
    yield runs
    for runner, run_id in runs:
        rec = runner.registry.get(run_id)
        if rec.pid and process_start(rec.pid) is not None:
            try:
                os.killpg(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _runner(root, **kw) -> JobRunner:
    kw.setdefault("max_concurrent", 1)
    kw.setdefault("gpus", [])
    return JobRunner(root, command=WORKER, cancel_grace_s=3.0, **kw)


def _wait_for(pred, timeout=30.0):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _row(root: Path, run_id: str) -> sqlite3.Row:
    """The registry row as SQLite holds it (read without the code under test)."""
    con = sqlite3.connect(root / "registry.sqlite")
    try:
        con.row_factory = sqlite3.Row
        return con.execute("SELECT * FROM runs WHERE id = ?", [run_id]).fetchone()
    finally:
        con.close()


def _folders(root: Path) -> set[str]:
    """The run folders under ``root`` (the registry's own -wal and -shm files come and go)."""
    return {p.name for p in root.iterdir() if p.is_dir()}


def _running(r: JobRunner, run_id: str) -> bool:
    r.poll()
    return r.get(run_id).status == "running" and (r.get(run_id).step or 0) >= 1


# --- 1. a run whose folder was deleted by hand ---------------------------------------------------------------------


def test_a_queued_run_whose_folder_was_deleted_is_cancelled(tmp_path, started):
    """Before: JobRunner.cancel wrote the cancel flag into the missing folder first: FileNotFoundError ("This is a
    bug" on the page), the row stayed queued, holding its place in the queue."""
    import shutil

    r = _runner(tmp_path)
    busy = r.submit({**SLEEP, "seconds": 30, "steps": 30})
    started.append((r, busy))
    queued = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    shutil.rmtree(tmp_path / queued)
    rec = r.cancel(queued)
    assert rec.status == "cancelled" and rec.error == "cancelled by the user"
    assert _row(tmp_path, queued)["status"] == "cancelled"
    assert _row(tmp_path, busy)["status"] == "running"  # the running job is left alone
    assert r.cancel(busy).status == "cancelled"


def test_runs_cancel_of_a_deleted_folder_is_done_from_the_cli(tmp_path, started):
    """Before: ``subnetviz runs --cancel ID`` said "cannot complete …/cancel: No such file or directory" and exit 2."""
    import shutil

    home = tmp_path / "home"
    r = _runner(home / "runs")
    busy = r.submit({**SLEEP, "seconds": 30, "steps": 30})
    started.append((r, busy))
    queued = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    shutil.rmtree(home / "runs" / queued)
    env = {**os.environ, "SUBNETVIZ_HOME": str(home), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-m", "subnetviz", "runs", "--cancel", queued], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"cancelled {queued}"
    assert _row(home / "runs", queued)["status"] == "cancelled"
    r.cancel(busy)


def test_a_running_run_whose_folder_was_deleted_is_cancelled_and_its_worker_stopped(tmp_path, started):
    """A job inside a long step (one 30-s step: it writes nothing meanwhile) whose folder was deleted: before, the
    cancel raised and the job ran on; now its row is cancelled and its worker is signalled as for any cancel."""
    import shutil

    r = _runner(tmp_path)
    run = r.submit({**SLEEP, "seconds": 30, "steps": 1})
    started.append((r, run))
    _wait_for(lambda: (r.poll(), r.get(run).status == "running")[1])
    pid = r.get(run).pid
    time.sleep(1.0)  # the worker is inside its job
    shutil.rmtree(tmp_path / run)
    rec = r.cancel(run)
    assert rec.status == "cancelled" and rec.error == "cancelled by the user"
    _wait_for(lambda: process_start(pid) is None, timeout=10)


# --- 2. a healthy registry on a read-only or full disk --------------------------------------------------------------


def _read_only(self):
    con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1, isolation_level=None)
    con.row_factory = sqlite3.Row
    return con


def _tiny_disk(self):
    """A connection whose file may not grow by one page: SQLite's own SQLITE_FULL on the next page it needs."""
    con = sqlite3.connect(self.path, timeout=1, isolation_level=None)
    con.row_factory = sqlite3.Row
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
    return con


def _planted(name: str, text: str):
    def connect(self):
        exc = sqlite3.OperationalError(text)
        exc.sqlite_errorname = name  # as SQLite sets it (the codes the review saw on a real mount)
        raise exc

    return connect


@pytest.mark.parametrize(
    ("connect", "fresh", "advice"),
    [
        (
            _planted("SQLITE_CANTOPEN", "unable to open database file"),
            False,
            "a read-only file system or no permission",
        ),
        (_tiny_disk, True, "the disk is full or failing; free space and try again."),
        (_planted("SQLITE_IOERR_SHMSIZE", "disk I/O error"), False, "the disk is full or failing; free space"),
    ],
    ids=["cantopen", "full", "shm-ioerr"],
)
def test_a_healthy_registry_on_a_read_only_or_full_disk_is_not_to_be_moved_aside(
    tmp_path, monkeypatch, connect, fresh, advice
):
    """Before: every OperationalError but "locked" got "cannot be opened (...); move it aside to start a new one",
    the advice for a damaged file, which orphans every run folder of a healthy registry."""
    path = tmp_path / "runs" / "registry.sqlite"
    if not fresh:
        Registry(path)  # a healthy registry, made before the disk turned read-only or full
    monkeypatch.setattr(Registry, "_connect", connect)
    with pytest.raises(ConfigError) as err:
        Registry(path)
    message = str(err.value)
    assert "move it aside" not in message and "\n" not in message
    assert message.startswith(f"{path}: the job registry cannot be written") and advice in message


def test_a_read_only_registry_is_listed_and_a_submit_says_why_it_is_refused(tmp_path, monkeypatch):
    """SQLite's own SQLITE_READONLY (a read-only connection): listing works; queueing is refused in one line that
    does not say to move the registry aside."""
    r = _runner(tmp_path)
    run = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    r.wait(run, timeout=30)
    before = _folders(tmp_path)
    monkeypatch.setattr(Registry, "_connect", _read_only)
    assert list(_runner(tmp_path).list_runs()["id"]) == [run]
    with pytest.raises(JobError) as err:
        r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    assert str(err.value) == (
        f"{tmp_path / 'registry.sqlite'}: the job registry cannot be written here (attempt to write a readonly "
        "database): a read-only file system or no permission; make its folder writable and try again."
    )
    assert _folders(tmp_path) == before


def test_a_damaged_registry_is_still_to_be_moved_aside(tmp_path):
    path = tmp_path / "runs" / "registry.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"no database here " * 500)
    with pytest.raises(ConfigError, match="the file is damaged; move it aside to start a new one"):
        Registry(path)


# --- 3. a disk that fills after start-up ----------------------------------------------------------------------------


def test_a_submit_the_registry_cannot_hold_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    """A registry that cannot grow (SQLite's own SQLITE_FULL): before, a raw sqlite3.OperationalError ("This is a
    bug" on the Launch buttons)."""
    r = _runner(tmp_path)
    before = _folders(tmp_path)
    monkeypatch.setattr(Registry, "_connect", _tiny_disk)
    with pytest.raises(JobError) as err:
        r.submit({**SLEEP, "seconds": 0.1, "steps": 1, "pad": "x" * 50_000})  # needs new pages
    assert str(err.value) == (
        f"{tmp_path / 'registry.sqlite'}: the job registry cannot be written (database or disk is full): the disk "
        "is full or failing; free space and try again."
    )
    assert _folders(tmp_path) == before


def test_a_config_that_cannot_be_written_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    """Before: the raw OSError, and an empty run folder that no registry row names."""
    from subnetviz.jobs import runner as runner_mod

    r = _runner(tmp_path)
    before = _folders(tmp_path)

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runner_mod, "write_json", full)
    with pytest.raises(JobError) as err:
        r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    assert "config.json cannot be written (No space left on device)" in str(err.value)
    assert "\n" not in str(err.value)
    assert _folders(tmp_path) == before
    assert r.registry.rows() == []


def test_a_poll_on_a_failing_disk_is_one_line(tmp_path, monkeypatch):
    """The Runs view's poll once the disk filled: before, a raw OperationalError ("This is a bug" on the page)."""
    r = _runner(tmp_path)
    monkeypatch.setattr(Registry, "_connect", _planted("SQLITE_IOERR_SHMSIZE", "disk I/O error"))
    with pytest.raises(JobError, match=r"registry\.sqlite: the job registry cannot be written \(disk I/O error\)"):
        r.poll()
    with pytest.raises(JobError, match="the disk is full or failing"):
        r.list_runs()


# --- 4. a worker stopped by a shutdown ------------------------------------------------------------------------------


def _job_processes(root: Path) -> list[int]:
    """Pids of processes marked as a job of ``root`` (the mark every worker carries), this one left out."""
    import psutil

    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("SUBNETVIZ_JOB", "").startswith(str(root)):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def test_a_worker_stopped_by_a_shutdown_starts_nothing_and_is_not_called_cancelled(tmp_path, started):
    """SIGTERM to the worker, as a service stop sends it, with no cancel flag. Before: the run read "cancelled"
    (as if the user asked) and the worker started the queued job, which the stop's SIGKILL then killed: after
    the restart it read "failed … ended without a final status" instead of still waiting."""
    r = _runner(tmp_path)
    a = r.submit({**SLEEP, "seconds": 30, "steps": 30})
    b = r.submit({**SLEEP, "seconds": 0.5, "steps": 1})
    started.extend([(r, a), (r, b)])
    _wait_for(lambda: _running(r, a))
    pid = r.get(a).pid
    os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: process_start(pid) is None, timeout=20)
    row_a, row_b = _row(tmp_path, a), _row(tmp_path, b)  # read as SQLite holds them: no poll in between
    assert row_a["status"] == "failed"
    assert row_a["error"] == (
        "interrupted (SIGTERM) before it finished: the server or machine stopped it, not a user's cancel; "
        "launch it again"
    )
    assert row_b["status"] == "queued" and row_b["pid"] is None
    assert _job_processes(tmp_path) == []
    # the restart: a runner that starts recovers the folder, and the job that waited runs
    r2 = _runner(tmp_path)
    assert r2.wait(b, timeout=30).status == "succeeded"


RAY_PROXY = [  # a Ray job's proxy whose cluster never answers: it waits in connect() until it is signalled
    sys.executable,
    "-c",
    "import sys, time; from subnetviz.jobs import ray_backend; ray_backend.connect = lambda address: time.sleep(60); "
    "sys.exit(ray_backend.run_proxy(sys.argv[1], 'ray://head:10001'))",
]


def test_a_ray_proxy_stopped_by_a_shutdown_starts_nothing_and_is_not_called_cancelled(tmp_path, started):
    """The same rule for a Ray job's proxy: it advanced the queue whatever stopped it, and said "Ray:
    KeyboardInterrupt: signal 15" for a stop."""
    r = JobRunner(tmp_path, command=RAY_PROXY, cancel_grace_s=3.0, max_concurrent=1, gpus=[])
    a = r.submit({**SLEEP, "seconds": 30, "steps": 30})
    b = r.submit({**SLEEP, "seconds": 0.5, "steps": 1})
    started.extend([(r, a), (r, b)])
    _wait_for(lambda: (r.poll() or True) and r.get(a).status == "running" and (tmp_path / a / "log.txt").exists())
    time.sleep(1.0)  # (the proxy's SIGTERM handler set, it waits in connect)
    pid = r.get(a).pid
    os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: process_start(pid) is None, timeout=20)
    row_a, row_b = _row(tmp_path, a), _row(tmp_path, b)
    assert row_a["status"] == "failed"
    assert row_a["error"] == (
        "interrupted (SIGTERM) before it finished: the server or machine stopped it, not a user's cancel; "
        "launch it again"
    )
    assert row_b["status"] == "queued" and row_b["pid"] is None


def test_a_users_cancel_still_reads_cancelled_and_the_queue_moves(tmp_path, started):
    r = _runner(tmp_path)
    a = r.submit({**SLEEP, "seconds": 30, "steps": 30})
    b = r.submit({**SLEEP, "seconds": 0.2, "steps": 1})
    started.extend([(r, a), (r, b)])
    _wait_for(lambda: _running(r, a))
    assert r.cancel(a).status == "cancelled"
    _wait_for(lambda: _row(tmp_path, b)["status"] == "succeeded")  # the worker's end (or the poll) started it


# --- 5. a registry a newer version added a column to ---------------------------------------------------------------


def test_a_registry_with_a_newer_column_is_read(tmp_path, caplog):
    """Before: RunRecord(**row) with the unknown column: TypeError in every listing, poll and worker."""
    r = _runner(tmp_path)
    run = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    r.wait(run, timeout=30)
    con = sqlite3.connect(tmp_path / "registry.sqlite")
    con.execute("ALTER TABLE runs ADD COLUMN priority INTEGER DEFAULT 5")
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    with caplog.at_level("WARNING", logger="subnetviz.jobs.registry"):
        r2 = _runner(tmp_path)
        df = r2.list_runs()
        _runner(tmp_path)  # said once per registry and process
    assert list(df["id"]) == [run] and list(df["status"]) == ["succeeded"]
    said = [m for m in caplog.messages if "newer subnetviz" in m]
    assert len(said) == 1 and "\n" not in said[0]
    # and the next job of this version still runs there
    assert r2.wait(r2.submit({**SLEEP, "seconds": 0.1, "steps": 1}), timeout=30).status == "succeeded"


# --- 6. cuda:N on a runner that gives each job one GPU ---------------------------------------------------------------


def _seen(r: JobRunner, run_id: str) -> dict:
    rec = r.wait(run_id, timeout=30)
    assert rec.status == "succeeded", rec.error
    return json.loads((rec.outputs / "seen.json").read_text())


@pytest.mark.parametrize(
    ("submitter_cvd", "gpus", "wanted"),
    [(None, ["0", "1"], "1"), ("3,5", ["3", "5"], "5")],
    ids=["all-gpus", "submitter-sees-3-and-5"],
)
def test_a_job_naming_a_gpu_gets_it_and_sees_it_as_cuda_0(tmp_path, monkeypatch, started, submitter_cvd, gpus, wanted):
    """A 2-GPU server simulated as the review did (no GPU here: the runner is handed the ids _visible_gpus() gives
    there). Before: the job got the first free GPU by CUDA_VISIBLE_DEVICES and still asked for cuda:1, which a
    process seeing one GPU refuses."""
    if submitter_cvd is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", submitter_cvd)
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cuda:1")  # the server's: "the second GPU I see"
    r = _runner(tmp_path, max_concurrent=2, gpus=gpus)
    by_env = r.submit({**RECORD})
    started.append((r, by_env))
    seen = _seen(r, by_env)
    assert r.get(by_env).gpu == wanted  # not gpus[0], free as well
    assert seen == {"config_device": None, "CUDA_VISIBLE_DEVICES": wanted, "SUBNETVIZ_DEVICE": "cuda:0"}
    monkeypatch.delenv("SUBNETVIZ_DEVICE")
    by_config = r.submit({**RECORD, "device": "cuda:1"})  # a job config's own device (Bigram's, Behaviour's)
    started.append((r, by_config))
    seen = _seen(r, by_config)
    assert r.get(by_config).gpu == wanted
    assert seen == {"config_device": "cuda:0", "CUDA_VISIBLE_DEVICES": wanted, "SUBNETVIZ_DEVICE": None}
    assert json.loads((tmp_path / by_config / "config.json").read_text())["device"] == "cuda:1"  # as submitted
    # inside such a job torch sees one GPU: the device it was given resolves there
    import torch

    from subnetviz.config import resolve_device

    with (
        mock.patch.object(torch.cuda, "is_available", return_value=True),
        mock.patch.object(torch.cuda, "device_count", return_value=1),
    ):
        assert resolve_device(seen["config_device"]) == "cuda:0"
        with pytest.raises(ConfigError):
            resolve_device("cuda:1")  # what it asked for before


def test_a_job_naming_a_busy_gpu_waits_for_it(tmp_path, monkeypatch, started):
    r = _runner(tmp_path, max_concurrent=2, gpus=["0", "1"])
    first = r.submit({**RECORD, "device": "cuda:1", "seconds": 3})
    second = r.submit({**RECORD, "device": "cuda:1"})
    started.extend([(r, first), (r, second)])
    r.poll()
    assert _row(tmp_path, first)["gpu"] == "1" and _row(tmp_path, second)["status"] == "queued"
    assert _seen(r, second)["CUDA_VISIBLE_DEVICES"] == "1"
    assert _row(tmp_path, first)["ended"] <= _row(tmp_path, second)["started"]


def test_a_gpu_the_runner_does_not_give_is_refused_at_submit(tmp_path, monkeypatch):
    r = _runner(tmp_path, max_concurrent=2, gpus=["0", "1"])
    before = _folders(tmp_path)
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cuda:2")
    with pytest.raises(JobError) as err:
        r.submit({**RECORD})
    assert str(err.value) == (
        "device 'cuda:2' names GPU 2, which this server does not give to jobs (it gives GPUs 0, 1); choose cuda:0 … "
        "cuda:1, or auto."
    )
    assert _folders(tmp_path) == before
    assert r.registry.rows() == []


# --- 7. SUBNETVIZ_MAX_QUEUED in digits that are not ASCII -----------------------------------------------------------


@pytest.mark.parametrize("raw", ["²", "٣", "１６"])  # superscript two, Arabic-Indic three, fullwidth 16
def test_a_queue_cap_in_non_ascii_digits_is_the_one_line_config_error(monkeypatch, raw):
    """Before: '²'.isdigit() is True and int('²') a ValueError ("This is a bug" on every Launch button); int()
    took '٣' and '１６' as 3 and 16."""
    from subnetviz.config import max_queued_jobs

    monkeypatch.setenv("SUBNETVIZ_MAX_QUEUED", raw)
    with pytest.raises(ConfigError) as err:
        max_queued_jobs()
    assert str(err.value) == f"SUBNETVIZ_MAX_QUEUED={raw!r}: expected a whole number of jobs >= 1, e.g. 16."


def test_a_cuda_index_in_non_ascii_digits_is_a_config_error():
    import torch

    from subnetviz.config import resolve_device

    with (
        mock.patch.object(torch.cuda, "is_available", return_value=True),
        mock.patch.object(torch.cuda, "device_count", return_value=4),
    ):
        with pytest.raises(ConfigError, match="is not one subnetviz can use"):
            resolve_device("cuda:²")
