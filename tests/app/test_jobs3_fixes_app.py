"""The Training page against the third job-system review (/tmp/review/jobs3): Cancel on a run whose folder was
deleted by hand, the Runs view once the registry's disk fails after start-up, and a Launch whose run folder cannot
be written. Each is one line on the page (never "Something went wrong … This is a bug"), and what the registry and
the runs folder then hold is read back directly."""

import errno
import os
import shutil
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.app_fixtures import app_roots, open_page

pytestmark = pytest.mark.slow

WORKER = [
    sys.executable,
    "-c",
    "import sys; from subnetviz.jobs.worker import main_job; sys.exit(main_job(sys.argv[1]))",
]
SLEEP = {"kind": "python", "target": "tests.training_fixtures:sleep_job"}


def _texts(at, kind: str) -> list[str]:
    return [e.value.replace("\\", "").replace("\u200b", "") for e in getattr(at.main, kind)]


@pytest.fixture
def own_home(app_env, monkeypatch, tmp_path):
    """A home over the test zoo with a runs folder of its own; test jobs allowed."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "zoo").symlink_to((Path(app_env) / "zoo").resolve(), target_is_directory=True)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", app_roots(home))
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    return home


@pytest.fixture
def busy(own_home):
    """A runner on the home's runs folder with one 60-s job running (stopped by its pid afterwards)."""
    from subnetviz.jobs.runner import JobRunner

    r = JobRunner(own_home / "runs", max_concurrent=1, command=WORKER, gpus=[], cancel_grace_s=3.0)
    run = r.submit({**SLEEP, "seconds": 60, "steps": 60})
    pid = r.get(run).pid  # (read now: a test may leave the registry unreadable until its monkeypatch is undone)
    yield r, run
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _status(root: Path, run_id: str) -> str:
    con = sqlite3.connect(root / "registry.sqlite")
    try:
        return con.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()[0]
    finally:
        con.close()


def test_cancel_of_a_run_whose_folder_was_deleted(own_home, busy, monkeypatch):
    """Before: "Something went wrong inside subnetviz (FileNotFoundError). This is a bug" and the run stayed queued."""
    import streamlit as st

    # AppTest runs the page's live fragment as part of a whole-page run, where st.rerun(scope="fragment") is
    # refused; served, the Cancel button reruns its fragment. Here it reruns the page.
    rerun = st.rerun
    monkeypatch.setattr(st, "rerun", lambda *args, scope="app", **kwargs: rerun(*args, **kwargs))
    r, running = busy
    queued = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    shutil.rmtree(own_home / "runs" / queued)
    at = open_page("training", tr_view="Runs", tr_run=queued)
    next(b for b in at.button if b.key == f"cancel-{queued}").click().run()
    assert not _texts(at, "error") and not at.exception, _texts(at, "error")
    assert _status(own_home / "runs", queued) == "cancelled"
    assert _status(own_home / "runs", running) == "running"


def test_the_runs_view_on_a_failing_disk_is_one_line(own_home, busy, monkeypatch):
    """The disk fills while a job runs, after the page opened its registry (SQLITE_IOERR_SHMSIZE, the code a full
    tmpfs gave in the review). Before: "Something went wrong inside subnetviz (OperationalError). This is a bug"."""
    from subnetviz.jobs.registry import Registry

    at = open_page("training", tr_view="Runs")
    assert not at.exception and not _texts(at, "error")

    def failing(self):
        exc = sqlite3.OperationalError("disk I/O error")
        exc.sqlite_errorname = "SQLITE_IOERR_SHMSIZE"
        raise exc

    monkeypatch.setattr(Registry, "_connect", failing)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = _texts(at, "error")
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert (
        "registry.sqlite: the job registry cannot be written (disk I/O error): the disk is full or failing"
        in (errors[0])
    )
    assert "move it aside" not in errors[0] and "Something went wrong" not in errors[0]


def test_a_launch_on_a_full_disk_is_one_line_and_leaves_no_folder(own_home, monkeypatch):
    """Before: "Something went wrong inside subnetviz (OSError). This is a bug", and an empty run folder that no
    registry row names."""
    from subnetviz.jobs import runner as runner_mod

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runner_mod, "write_json", full)
    at = open_page("training")
    next(b for b in at.button if b.label == "Launch run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = _texts(at, "error")
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].endswith("config.json cannot be written (No space left on device).")
    assert [p.name for p in (own_home / "runs").iterdir() if p.is_dir()] == []
    con = sqlite3.connect(own_home / "runs" / "registry.sqlite")
    try:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    finally:
        con.close()
