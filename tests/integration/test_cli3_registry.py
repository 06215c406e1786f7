"""A copied or moved home's job registry acts on that home only (CLI review 3, finding 1).

The registry stored each run's absolute folder, so in a home copied with ``cp -a`` (a backup, a move to another
disk) ``runs --cancel`` wrote the cancel flag into the original home's folder and signalled its job, ``runs``
started the original's queued runs in the original's folders, and a moved home's queued runs failed with "run folder
missing". A run's folder is now the registry's folder / its id. Jobs here are real worker processes
(``tests.training_fixtures:sleep_job``, kind ``python``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import psutil
import pytest

from subnetviz.errors import JobError
from subnetviz.jobs.registry import process_start
from subnetviz.jobs.runner import JobRunner
from tests.zoo_fixtures import micro_zoo  # noqa: F401

WORKER = [sys.executable, "-m", "subnetviz", "job"]  # the CLI's own worker command (RUN_DIR appended)
QUIET = {"kind": "python", "target": "tests.training_fixtures:sleep_job", "seconds": 120, "steps": 1}  # no writes
SHORT = {"kind": "python", "target": "tests.training_fixtures:sleep_job", "seconds": 0.2, "steps": 2}


@pytest.fixture(autouse=True)
def allow_test_jobs(monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])


def _runner(root: Path, *, polls: bool = True, monkeypatch=None) -> JobRunner:
    if not polls:  # a runner that only does what it is asked (its constructor polls too)
        monkeypatch.setattr(JobRunner, "poll", lambda self: None)
    return JobRunner(root, max_concurrent=1, command=WORKER, cancel_grace_s=3.0, gpus=[])


def _wait_for(pred, timeout=60.0):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _listing(home: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``home`` with its modification time and size (links not followed)."""
    out = {}
    for folder, dirs, files in os.walk(home):
        for name in [*dirs, *files]:
            st = os.lstat(Path(folder) / name)
            out[str(Path(folder, name).relative_to(home))] = (st.st_mtime_ns, st.st_size)
    return out


def _row(root: Path, run_id: str) -> dict:
    con = sqlite3.connect(f"file:{root / 'registry.sqlite'}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return dict(con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
    finally:
        con.close()


@pytest.fixture
def home_a(tmp_path):
    """Home A: a job running (quietly: it writes nothing until it ends) and one queued behind it."""
    root = tmp_path / "hA" / "runs"
    r = _runner(root)
    run = r.submit(QUIET, name="long run in A")
    queued = r.submit(SHORT, name="queued in A")
    rec = r.get(run)
    _wait_for(lambda: "pid" in (Path(rec.run_dir) / "log.txt").read_text())  # its last write before it sleeps
    rec = r.get(run)
    assert rec.status == "running" and r.get(queued).status == "queued"
    yield root, r, rec, queued
    if r.get(run).status == "running":
        r.cancel(run)


def _alive_in(rec, folder: Path) -> bool:
    """Is the run's process alive, and still the worker of ``folder``?"""
    if process_start(rec.pid) is None:
        return False
    return Path(psutil.Process(rec.pid).cmdline()[-1]) == folder


def test_cancel_in_a_copied_home_neither_signals_nor_writes_the_original(home_a, tmp_path, monkeypatch):
    root_a, _, rec, queued = home_a
    shutil.copytree(root_a.parent, tmp_path / "hB", symlinks=True)  # cp -a
    root_b = tmp_path / "hB" / "runs"
    before = _listing(root_a.parent)
    b = _runner(root_b, polls=False, monkeypatch=monkeypatch)  # the row still says running when cancel comes
    assert b.get(rec.id).run_dir == str(root_b / rec.id) and b.get(rec.id).outputs == root_b / rec.id / "outputs"
    out = b.cancel(rec.id)
    assert out.status == "cancelled"
    assert (root_b / rec.id / "cancel").is_file()  # the flag went into this home's copy of the run
    time.sleep(0.5)  # (a signal or a flag would have ended it by now)
    assert _alive_in(rec, root_a / rec.id), "the original home's job was stopped"
    assert _listing(root_a.parent) == before, "a file of the original home changed"
    assert _row(root_a, rec.id)["status"] == "running" and _row(root_a, queued)["status"] == "queued"


def test_polling_a_copied_home_starts_its_own_copy_and_leaves_the_original(home_a, tmp_path):
    root_a, _, rec, queued = home_a
    shutil.copytree(root_a.parent, tmp_path / "hB", symlinks=True)
    root_b = tmp_path / "hB" / "runs"
    before = _listing(root_a.parent)
    b = _runner(root_b)  # polls: settles the copied running row, starts the copied queued one
    done = b.wait(queued, timeout=60)
    assert done.status == "succeeded", (done.error, (root_b / queued / "log.txt").read_text()[-2000:])
    assert done.run_dir == str(root_b / queued) and (done.outputs / "done.txt").read_text() == "ok"
    copied = b.get(rec.id)
    assert copied.status == "failed" and str(root_a / rec.id) in copied.error and "left alone" in copied.error
    with pytest.raises(JobError, match="already failed"):
        b.cancel(rec.id)
    assert _alive_in(rec, root_a / rec.id)
    assert _listing(root_a.parent) == before, "a file of the original home changed"
    assert _row(root_a, queued)["status"] == "queued"


def test_a_registry_copied_without_its_run_folders_leaves_those_runs_alone(home_a, tmp_path, monkeypatch):
    """Rows whose folder is not in this home (only the registry copied): shown as another home's, never started,
    signalled or written to; cancelling one only marks it cancelled here."""
    root_a, _, rec, queued = home_a
    root_b = tmp_path / "hB" / "runs"
    root_b.mkdir(parents=True)
    shutil.copy2(root_a / "registry.sqlite", root_b / "registry.sqlite")
    before = _listing(root_a.parent)
    with monkeypatch.context() as m:
        b = _runner(root_b, polls=False, monkeypatch=m)
        for rid in (rec.id, queued):
            seen = b.get(rid)
            assert seen.elsewhere == str(root_a / rid) and seen.run_dir == str(root_b / rid)
            assert seen.error.startswith(f"its run folder {root_a / rid} is another home's")
        assert b.cancel(rec.id).status == "cancelled"
    b.poll()  # (polling again) the queued one is failed, not started in the original's folder
    q = b.get(queued)
    assert q.status == "failed" and "another home's" in q.error and q.pid is None
    assert "another home's" in b.list_runs().set_index("id").loc[rec.id, "error"]
    assert _alive_in(rec, root_a / rec.id)
    assert _listing(root_a.parent) == before and not (root_b / rec.id).exists()


def test_a_moved_homes_queued_runs_start_from_its_new_folder(tmp_path, monkeypatch):
    root_a = tmp_path / "hA" / "runs"
    with monkeypatch.context() as m:
        a = _runner(root_a, polls=False, monkeypatch=m)  # queue two, start none
        ids = [a.submit(SHORT, name=f"q{i}") for i in range(2)]
    assert all(_row(root_a, i)["status"] == "queued" for i in ids)
    shutil.move(tmp_path / "hA", tmp_path / "hB")  # a real move: the old folders are gone
    root_b = tmp_path / "hB" / "runs"
    b = _runner(root_b)
    for rid in ids:
        rec = b.wait(rid, timeout=60)
        assert rec.status == "succeeded", (rec.error, (root_b / rid / "log.txt").read_text()[-2000:])
        assert rec.run_dir == str(root_b / rid) and (rec.outputs / "done.txt").read_text() == "ok"
    assert not (tmp_path / "hA").exists()


def test_a_copied_homes_finished_runs_show_their_own_outputs(tmp_path):
    root_a = tmp_path / "hA" / "runs"
    a = _runner(root_a)
    rid = a.submit(SHORT)
    assert a.wait(rid, timeout=60).status == "succeeded"
    shutil.copytree(tmp_path / "hA", tmp_path / "hB", symlinks=True)
    (root_a / rid / "outputs" / "done.txt").write_text("the original's")
    b = _runner(tmp_path / "hB" / "runs")
    rec = b.get(rid)
    assert rec.outputs == tmp_path / "hB" / "runs" / rid / "outputs" and (rec.outputs / "done.txt").read_text() == "ok"
    assert list(b.list_runs()["run_dir"]) == [str(tmp_path / "hB" / "runs" / rid)]
    assert b.metrics(rid)["step"].tolist() == [1, 2]


@pytest.mark.slow
def test_a_moved_demo_homes_member_runs_show_its_own_zoo_models(micro_zoo, tmp_path):  # noqa: F811
    """The zoo's finetunes are registered as runs whose outputs/model links to the zoo's model: a link into the same
    home is relative, so a moved home's runs show its own zoo's models."""
    from subnetviz.demo.build import build_zoo

    shutil.copytree(micro_zoo.root, tmp_path / "hA" / "zoo")
    zoo = build_zoo(tmp_path / "hA" / "zoo", preset="micro", extras=True, runs_root=tmp_path / "hA" / "runs",
                    background=False)  # fmt: skip
    members = {m: (rid, zoo.member_path(m).relative_to(zoo.root)) for m, rid in zoo.manifest.extras.member_runs.items()}
    shutil.move(tmp_path / "hA", tmp_path / "hB")
    b = JobRunner(tmp_path / "hB" / "runs", max_concurrent=1, gpus=[])
    for member, (rid, path) in members.items():
        model = b.get(rid).outputs / "model"
        assert model.is_dir() and model.resolve() == (tmp_path / "hB" / "zoo" / path).resolve(), member
