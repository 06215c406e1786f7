"""A server strangers open (ninth review, stranger9).

1. A job queued in a home under wider read settings (a home copied from a laptop: no enforcement, its roots the HF
   cache and the laptop's folders) ran with them when a server enforcing narrower roots started it: strace showed it
   reading the zoo of another home. A starter that enforces roots now keeps the job inside its own: enforced, its
   roots those of the submitter's within the starter's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tests.unit.test_cli_review import ENV_DUMP


def _started_env(tmp_path, monkeypatch, submit_env: dict, start_env: dict) -> dict:
    """The read policy a job saw: queued by a runner under ``submit_env``, started by one under ``start_env``."""
    from subnetviz.jobs.registry import creation_time
    from subnetviz.jobs.runner import JobRunner

    home = tmp_path / "home"
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    for key in ("SUBNETVIZ_ENFORCE_ROOTS", "SUBNETVIZ_ROOTS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in submit_env.items():
        monkeypatch.setenv(key, value)
    laptop = JobRunner(home / "runs", max_concurrent=1, command=[sys.executable, "-c", ENV_DUMP])
    busy = laptop.submit({"kind": "python", "target": "tests.training_fixtures:sleep_job"})
    with laptop.registry.transaction() as con:  # (its one slot taken: the next job waits in the queue)
        laptop.registry.update(con, busy, status="running", pid=os.getpid(), pid_start=creation_time(os.getpid()))
    queued = laptop.submit({"kind": "python", "target": "tests.training_fixtures:sleep_job"})
    assert laptop.get(queued).status == "queued"
    with laptop.registry.transaction() as con:
        laptop.registry.update(con, busy, status="failed", ended=time.time())
    for key in submit_env:
        monkeypatch.delenv(key)
    for key, value in start_env.items():
        monkeypatch.setenv(key, value)
    server = JobRunner(home / "runs", max_concurrent=1, command=[sys.executable, "-c", ENV_DUMP])
    server.poll()
    env_file = Path(server.get(queued).run_dir) / "env.json"
    deadline = time.time() + 30
    while not env_file.is_file() or not env_file.read_text():
        assert time.time() < deadline, "the queued job did not start"
        time.sleep(0.1)
    return json.loads(env_file.read_text())


def test_a_job_queued_under_wider_roots_runs_inside_the_enforcing_starters(tmp_path, monkeypatch):
    wide, narrow = tmp_path / "laptop", tmp_path / "laptop" / "shared"
    narrow.mkdir(parents=True)
    env = _started_env(
        tmp_path,
        monkeypatch,
        {"SUBNETVIZ_ROOTS": str(wide)},  # the laptop: no enforcement, a wide root
        {"SUBNETVIZ_ENFORCE_ROOTS": "1", "SUBNETVIZ_ROOTS": str(narrow)},  # the shared server
    )
    assert env["SUBNETVIZ_ENFORCE_ROOTS"] == "1"
    roots = env["SUBNETVIZ_ROOTS"].split(os.pathsep)
    assert str(narrow.resolve()) in roots and str(wide.resolve()) not in roots


def test_a_job_queued_under_narrower_roots_keeps_them(tmp_path, monkeypatch):
    wide, narrow, other = tmp_path / "srv", tmp_path / "srv" / "data", tmp_path / "elsewhere"
    narrow.mkdir(parents=True)
    other.mkdir()
    env = _started_env(
        tmp_path,
        monkeypatch,
        {"SUBNETVIZ_ENFORCE_ROOTS": "1", "SUBNETVIZ_ROOTS": os.pathsep.join([str(narrow), str(other)])},
        {"SUBNETVIZ_ENFORCE_ROOTS": "1", "SUBNETVIZ_ROOTS": str(wide)},
    )
    roots = env["SUBNETVIZ_ROOTS"].split(os.pathsep)
    assert env["SUBNETVIZ_ENFORCE_ROOTS"] == "1"
    assert str(narrow.resolve()) in roots and str(wide.resolve()) not in roots and str(other.resolve()) not in roots


def test_a_starter_that_enforces_nothing_runs_the_submitters_policy(tmp_path, monkeypatch):
    app = tmp_path / "app"
    app.mkdir()
    env = _started_env(
        tmp_path, monkeypatch, {"SUBNETVIZ_ENFORCE_ROOTS": "1", "SUBNETVIZ_ROOTS": str(app)}, {"SUBNETVIZ_ROOTS": "/"}
    )
    assert env["SUBNETVIZ_ENFORCE_ROOTS"] == "1" and str(app.resolve()) in env["SUBNETVIZ_ROOTS"].split(os.pathsep)
