"""Job runner + registry: real OS processes, killed and cancelled ones, restarts, the queue.

Jobs here are ``tests.training_fixtures:sleep_job`` / ``fail_job`` (kind ``python``, allowed by
``SUBNETVIZ_ALLOW_TEST_JOBS=1``), run through ``main_job`` in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from subnetviz.errors import ConfigError, JobError
from subnetviz.jobs.registry import process_start
from subnetviz.jobs.runner import JobRunner
from subnetviz.jobs.worker import main_train

WORKER = [
    sys.executable,
    "-c",
    "import sys; from subnetviz.jobs.worker import main_job; sys.exit(main_job(sys.argv[1]))",
]
SLEEP = {"kind": "python", "target": "tests.training_fixtures:sleep_job"}


@pytest.fixture(autouse=True)
def allow_test_jobs(monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])


def _runner(root, **kw) -> JobRunner:
    return JobRunner(root, max_concurrent=kw.pop("max_concurrent", 1), command=WORKER, cancel_grace_s=3.0, **kw)


def _wait_for(pred, timeout=30.0):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _row(root: Path, run_id: str) -> dict:
    """The run's registry row, read straight from SQLite (no runner, so nothing polls)."""
    con = sqlite3.connect(root / "registry.sqlite")
    try:
        con.row_factory = sqlite3.Row
        return dict(con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
    finally:
        con.close()


def _wait_running(runner, run_id):
    def started():
        runner.poll()
        rec = runner.get(run_id)
        return rec.status == "running" and (Path(rec.run_dir) / "status.json").exists()

    _wait_for(started)
    return runner.get(run_id)


def test_submit_runs_to_success_with_outputs_and_metrics(tmp_path):
    r = _runner(tmp_path)
    rid = r.submit({**SLEEP, "seconds": 0.2, "steps": 4}, name="nap")
    rec = r.wait(rid, timeout=60)
    assert rec.status == "succeeded", (rec.error, (Path(rec.run_dir) / "log.txt").read_text())
    assert (rec.outputs / "done.txt").read_text() == "ok" and not (Path(rec.run_dir) / "outputs.tmp").exists()
    assert (rec.step, rec.total, rec.name) == (4, 4, "nap")
    m = r.metrics(rid)
    assert list(m["step"]) == [1, 2, 3, 4] and m["loss"].iloc[-1] == pytest.approx(0.25)
    runs = r.list_runs()
    assert list(runs["id"]) == [rid] and runs["status"].iloc[0] == "succeeded"
    assert json.loads((Path(rec.run_dir) / "config.json").read_text())["target"] == SLEEP["target"]


def test_failing_job_is_failed_with_its_error_and_no_outputs(tmp_path):
    r = _runner(tmp_path)
    rec = r.wait(r.submit({"kind": "python", "target": "tests.training_fixtures:fail_job"}), timeout=60)
    assert rec.status == "failed" and rec.error == "ValueError: planned failure"
    assert not rec.outputs.exists() and not (Path(rec.run_dir) / "outputs.tmp").exists()
    assert "planned failure" in (Path(rec.run_dir) / "log.txt").read_text()


def test_a_job_refusing_its_input_says_it_in_one_line(tmp_path, capsys):
    """A MaskError (what the user gave) printed a full traceback into the log, and ``train --run-dir`` showed
    it; a bug (ValueError above) keeps its traceback."""
    r = _runner(tmp_path)
    rec = r.wait(r.submit({"kind": "python", "target": "tests.training_fixtures:refused_job"}), timeout=60)
    log = (Path(rec.run_dir) / "log.txt").read_text()
    assert rec.status == "failed" and rec.error.startswith("mask m.safetensors does not fit")
    assert "error: mask m.safetensors does not fit the model" in log and "Traceback" not in log


def test_the_job_verb_on_a_folder_that_is_no_job(tmp_path, capsys):
    """``subnetviz job /nonexistent`` made that folder, then a FileNotFoundError traceback."""
    from subnetviz.jobs.worker import main_job

    assert main_job(str(tmp_path / "nowhere")) == 3
    assert not (tmp_path / "nowhere").exists() and "no job folder here" in capsys.readouterr().err


def test_train_run_dir_errors_name_the_option_and_the_file(tmp_path, capsys):
    """'[Errno 2] ... nonexist.json' and a bare JSON error named neither the option nor (for the JSON) the file."""
    from subnetviz.jobs.worker import main_train

    assert main_train(str(tmp_path / "nonexist.json"), run_dir=str(tmp_path / "rd")) == 2
    assert "--config " in (err := capsys.readouterr().err) and "nonexist.json: No such file" in err
    (tmp_path / "bad.json").write_text("{not json")
    assert main_train(str(tmp_path / "bad.json"), run_dir=str(tmp_path / "rd")) == 2
    assert "bad.json: not JSON" in capsys.readouterr().err


def test_a_busy_registry_is_not_called_broken(tmp_path, monkeypatch):
    """Another process holding the write lock past the timeout: the message said to move the registry aside,
    which on a healthy registry loses every run record."""
    import sqlite3

    from subnetviz.jobs import registry as reg

    path = tmp_path / "runs" / "registry.sqlite"
    reg.Registry(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(reg, "BUSY_TIMEOUT_S", 0.2)
    try:
        with pytest.raises(ConfigError, match="the job registry is busy") as err:
            reg.Registry(path)
        assert "move it aside" not in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_killed_job_is_failed_and_partial_outputs_removed(tmp_path):
    r = _runner(tmp_path)
    rid = r.submit({**SLEEP, "seconds": 60, "steps": 600})
    rec = _wait_running(r, rid)
    assert (Path(rec.run_dir) / "outputs.tmp").is_dir()
    os.killpg(rec.pid, signal.SIGKILL)
    rec = r.wait(rid, timeout=30)
    assert rec.status == "failed" and "without a final status" in rec.error
    assert not (Path(rec.run_dir) / "outputs.tmp").exists() and not rec.outputs.exists()


@pytest.mark.parametrize("end", ["killed", "cancelled"])
def test_a_jobs_processes_in_sessions_of_their_own_end_with_it(tmp_path, end):
    """A DDP job's ranks run in sessions of their own: with its worker killed (SIGKILL, the OOM killer) they
    trained on for a run already failed, its slot given away, writing a model into the removed outputs.tmp."""
    r = _runner(tmp_path)
    rid = r.submit({"kind": "python", "target": "tests.training_fixtures:detached_child_job"})
    rec = _wait_running(r, rid)
    pid_file = Path(rec.run_dir) / "child.pid"
    _wait_for(pid_file.exists)
    child = int(pid_file.read_text())
    assert process_start(child) is not None
    try:
        if end == "killed":
            os.killpg(rec.pid, signal.SIGKILL)  # the worker's group: the child's session is another
            rec = r.wait(rid, timeout=30)
        else:
            rec = r.cancel(rid)
        assert rec.status == ("failed" if end == "killed" else "cancelled")
        _wait_for(lambda: process_start(child) is None or _zombie(child), timeout=10)
        time.sleep(1.5)  # it wrote twice a second, making the folder again: nothing reappears
        assert not (Path(rec.run_dir) / "outputs.tmp").exists()
    finally:
        if process_start(child) is not None:  # (a failure leaves no process behind)
            os.kill(child, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_registry_survives_restart_and_dead_runs_are_failed(tmp_path):
    a = _runner(tmp_path)
    done = a.wait(a.submit({**SLEEP, "seconds": 0.1, "steps": 1}), timeout=60)
    rid = a.submit({**SLEEP, "seconds": 60, "steps": 600})
    rec = _wait_running(a, rid)
    os.killpg(rec.pid, signal.SIGKILL)
    _wait_for(lambda: process_start(rec.pid) is None)
    del a  # the first runner goes away without noticing the death
    b = _runner(tmp_path)  # a new runner (another session, a restarted server) on the same root
    assert b.get(done.id).status == "succeeded"
    assert b.get(rid).status == "failed"
    # A row claiming to run under a live pid that is not our process (pid reused) is failed too.
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        con.execute("UPDATE runs SET status='running', pid=?, pid_start=? WHERE id=?", (os.getpid(), 1, done.id))
    b.poll()
    assert b.get(done.id).status == "succeeded"  # its status.json still says it succeeded
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        con.execute("UPDATE runs SET status='running', pid=?, pid_start=? WHERE id=?", (os.getpid(), 1, rid))
    b.poll()
    assert b.get(rid).status == "failed"
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrency_limit_queues_second_job_across_runners(tmp_path):
    a, b = _runner(tmp_path), _runner(tmp_path)
    first = a.submit({**SLEEP, "seconds": 1.5, "steps": 3})
    second = b.submit({**SLEEP, "seconds": 0.1, "steps": 1})  # another runner on the same registry
    assert a.get(first).status == "running" and b.get(second).status == "queued"
    rec2 = b.wait(second, timeout=60)
    rec1 = a.get(first)
    assert rec1.status == rec2.status == "succeeded"
    # the second started only once the first was done (the first's worker wrote its end time before the
    # queue was advanced, so no slack: an overlap of any length fails)
    assert rec2.started >= rec1.ended


def test_threads_and_runners_share_one_registry_safely(tmp_path):
    """Streamlit sessions share a runner across threads; a CLI holds another. The limit holds for all."""
    from concurrent.futures import ThreadPoolExecutor

    a, b = _runner(tmp_path), _runner(tmp_path)

    def submit_and_poll(i):
        r = a if i % 2 else b
        rid = r.submit({**SLEEP, "seconds": 0.2, "steps": 2})
        for _ in range(5):
            r.poll()
        return rid

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(submit_and_poll, range(4)))
    recs = sorted((a.wait(i, timeout=60) for i in ids), key=lambda r: r.started)
    assert all(r.status == "succeeded" for r in recs)
    for prev, nxt in zip(recs, recs[1:], strict=False):
        assert nxt.started >= prev.ended  # max_concurrent=1: runs never overlapped


def test_queue_advances_with_nobody_polling(tmp_path):
    """No page open, no CLI: a job that ends records its own status and starts the next queued one."""
    r = _runner(tmp_path)
    first = r.submit({**SLEEP, "seconds": 1.0, "steps": 2})
    second = r.submit({**SLEEP, "seconds": 0.2, "steps": 2})
    assert (_row(tmp_path, first)["status"], _row(tmp_path, second)["status"]) == ("running", "queued")
    # From here on nothing calls poll/wait/cancel: only the workers write to the registry.
    _wait_for(lambda: _row(tmp_path, second)["status"] not in ("queued", "running"), timeout=60)
    a, b = _row(tmp_path, first), _row(tmp_path, second)
    assert a["status"] == "succeeded", (a["error"], (Path(a["run_dir"]) / "log.txt").read_text()[-2000:])
    assert b["status"] == "succeeded", (b["error"], (Path(b["run_dir"]) / "log.txt").read_text()[-2000:])
    assert b["started"] >= a["ended"]  # max_concurrent=1: started only once the first had ended
    assert b["pid"] != a["pid"] and (b["step"], b["total"]) == (2, 2)
    assert (Path(b["run_dir"]) / "outputs" / "done.txt").read_text() == "ok"


def test_restart_fails_killed_runs_and_starts_the_queue(tmp_path):
    """A SIGKILLed worker cannot record its end; the next runner to start (a restarted server, the
    runs CLI) fails it, removes its partial outputs and starts the queued run, which then ends on its own."""
    a = _runner(tmp_path)
    dead = a.submit({**SLEEP, "seconds": 60, "steps": 600})
    queued = a.submit({**SLEEP, "seconds": 0.2, "steps": 2})
    rec = _wait_running(a, dead)
    os.killpg(rec.pid, signal.SIGKILL)
    _wait_for(lambda: process_start(rec.pid) is None)
    del a  # the server goes away without noticing
    assert (_row(tmp_path, dead)["status"], _row(tmp_path, queued)["status"]) == ("running", "queued")
    assert (Path(rec.run_dir) / "outputs.tmp").is_dir()
    b = _runner(tmp_path)
    now = b.get(dead)
    assert now.status == "failed" and "without a final status" in now.error
    assert not (Path(rec.run_dir) / "outputs.tmp").exists() and not now.outputs.exists()
    assert b.get(queued).status in ("running", "succeeded")  # started by the restart (it may be quick)
    _wait_for(lambda: _row(tmp_path, queued)["status"] not in ("queued", "running"), timeout=60)  # no poll
    assert _row(tmp_path, queued)["status"] == "succeeded" and _row(tmp_path, queued)["started"] >= now.ended


def test_a_clock_step_does_not_fail_a_running_job(tmp_path):
    """The wall clock stepped while a job runs (NTP, a restored virtual machine: the process's creation
    time reads 7 s later than when it was recorded): the job is still running, keeps its partial
    outputs and ends as it would; a row whose pid now belongs to another process is failed as before."""
    a = _runner(tmp_path)
    rid = a.submit({**SLEEP, "seconds": 1.5, "steps": 3})
    rec = _wait_running(a, rid)
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        con.execute("UPDATE runs SET pid_start = pid_start - 7 WHERE id = ?", (rid,))
    b = _runner(tmp_path)  # a restarted server settles the row
    assert b.get(rid).status == "running" and (Path(rec.run_dir) / "outputs.tmp").is_dir()
    assert b.wait(rid, timeout=60).status == "succeeded"
    other = b.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    b.wait(other, timeout=60)
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:  # the test process: same pid, not this run
        con.execute("UPDATE runs SET status='running', pid=?, pid_start=1 WHERE id=?", (os.getpid(), rid))
        con.execute("UPDATE runs SET status='running', pid=?, pid_start=1 WHERE id=?", (os.getpid(), other))
    (Path(rec.run_dir) / "status.json").unlink()
    b.poll()
    assert b.get(rid).status == "failed" and b.get(other).status == "succeeded"


def test_concurrent_advances_start_each_queued_run_once(tmp_path, monkeypatch):
    """Workers finishing together each advance the queue; the registry's write lock lets only one
    of them start a given queued run, and the limit holds."""
    import threading
    from collections import Counter

    from subnetviz.jobs.scheduler import advance

    r = JobRunner(tmp_path, max_concurrent=2, command=[sys.executable, "-c", "pass"], gpus=[])
    monkeypatch.setattr(r, "poll", lambda: None)  # keep every submitted run queued
    ids = [r.submit({**SLEEP, "seconds": 0.1, "steps": 1}) for _ in range(4)]
    assert {_row(tmp_path, i)["status"] for i in ids} == {"queued"}
    barrier, started, lock = threading.Barrier(8), [], threading.Lock()

    def advancer():
        barrier.wait()
        procs = advance(r.registry, r.launch)
        with lock:
            started.extend(procs)

    threads = [threading.Thread(target=advancer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = [_row(tmp_path, i) for i in ids]
    assert sum(row["status"] == "running" for row in rows) <= 2  # the limit held
    while any(_row(tmp_path, i)["status"] == "queued" for i in ids):  # the rest, once slots free up
        for p in started:
            p.wait()
        started.extend(advance(r.registry, r.launch))
    for p in started:
        p.wait()
    assert Counter(Path(p.args[-1]).name for p in started) == dict.fromkeys(ids, 1)  # each exactly once


def test_a_second_copy_of_a_started_run_does_not_run_it(tmp_path, capsys):
    """A worker whose registry row names another process (a duplicate start) exits without touching the run."""
    from subnetviz.jobs.worker import main_job

    r = _runner(tmp_path)
    rid = r.submit({**SLEEP, "seconds": 0.5, "steps": 2})
    rec = _wait_running(r, rid)
    assert main_job(rec.run_dir) == 3
    assert "does not name this process" in capsys.readouterr().out
    done = r.wait(rid, timeout=60)
    assert done.status == "succeeded" and done.pid == rec.pid


def test_each_concurrent_job_gets_its_own_gpu(tmp_path):
    r = _runner(tmp_path, max_concurrent=2, gpus=["3", "5"])
    ids = [r.submit({**SLEEP, "seconds": 1.0, "steps": 2}) for _ in range(3)]
    assert [r.get(i).gpu for i in ids] == ["3", "5", None] and r.get(ids[2]).status == "queued"
    recs = [r.wait(i, timeout=60) for i in ids]
    assert [(rec.outputs / "gpu.txt").read_text() for rec in recs[:2]] == ["3", "5"]
    assert recs[2].gpu in ("3", "5") and (recs[2].outputs / "gpu.txt").read_text() == recs[2].gpu


def test_registry_adds_columns_to_an_older_table(tmp_path):
    from subnetviz.jobs.registry import Registry

    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        con.execute(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, status TEXT NOT NULL, "
            "pid INTEGER, pid_start INTEGER, created REAL NOT NULL, started REAL, ended REAL, step INTEGER, "
            "total INTEGER, last_metrics TEXT, error TEXT, run_dir TEXT NOT NULL, config TEXT NOT NULL)"
        )
        con.execute(
            "INSERT INTO runs (id, kind, status, created, run_dir, config) VALUES "
            "('old', 'train', 'succeeded', 1.0, '/x', '{}')"
        )
    reg = Registry(tmp_path / "registry.sqlite")
    assert reg.get("old").gpu is None and reg.get("old").status == "succeeded"


def test_liveness_is_pid_and_creation_time_and_old_tick_rows_are_converted(tmp_path):
    """psutil's creation time tells our process from a later one reusing its pid; a registry
    written before schema 1 (pid_start in clock ticks since boot) is converted on opening."""
    import subprocess

    import psutil

    from subnetviz.jobs.registry import Registry, is_alive

    me = psutil.Process()
    hz = os.sysconf("SC_CLK_TCK")
    ticks = round((me.create_time() - psutil.boot_time()) * hz)  # what /proc/<pid>/stat said
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: no such process any more
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        con.execute(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, status TEXT NOT NULL, "
            "pid INTEGER, pid_start INTEGER, created REAL NOT NULL, started REAL, ended REAL, step INTEGER, "
            "total INTEGER, last_metrics TEXT, error TEXT, run_dir TEXT NOT NULL, config TEXT NOT NULL)"
        )
        rows = {
            "mine": (os.getpid(), ticks),
            "reused": (os.getpid(), ticks - 100 * hz),
            "unknown": (os.getpid(), None),
            "gone": (gone.pid, ticks),
        }
        for rid, (pid, start) in rows.items():
            con.execute(
                "INSERT INTO runs (id, kind, status, pid, pid_start, created, run_dir, config) "
                "VALUES (?, 'train', 'running', ?, ?, 1.0, '/x', '{}')",
                (rid, pid, start),
            )
    reg = Registry(tmp_path / "registry.sqlite")
    assert reg.get("mine").pid_start == pytest.approx(me.create_time(), abs=0.05)
    assert is_alive(reg.get("mine"))
    assert not is_alive(reg.get("reused"))  # our pid, but the row's process was created 100 s earlier
    assert is_alive(reg.get("unknown"))  # no start recorded: judged by the pid alone, as before
    assert not is_alive(reg.get("gone"))
    assert Registry(tmp_path / "registry.sqlite").get("mine").pid_start == reg.get("mine").pid_start  # once only
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE)
    assert process_start(zombie.pid) is None  # ended, not yet reaped by its parent: not alive
    zombie.wait()


def test_cancel_running_and_queued(tmp_path):
    r = _runner(tmp_path)
    run = r.submit({**SLEEP, "seconds": 60, "steps": 600})
    queued = r.submit({**SLEEP, "seconds": 60, "steps": 600})
    rec = _wait_running(r, run)
    assert r.get(queued).status == "queued"
    assert r.cancel(queued).status == "cancelled"
    out = r.cancel(run)
    assert out.status == "cancelled" and process_start(rec.pid) is None
    assert not (Path(rec.run_dir) / "outputs.tmp").exists() and not out.outputs.exists()
    assert r.get(queued).started is None
    with pytest.raises(JobError, match="already cancelled"):
        r.cancel(run)


@pytest.mark.slow
def test_default_worker_command_is_python_m_subnetviz_job(tmp_path):
    r = JobRunner(tmp_path, max_concurrent=1)
    assert r.command[1:] == ["-m", "subnetviz", "job"]
    rec = r.wait(r.submit({**SLEEP, "seconds": 0.1, "steps": 1, "note": tmp_path / "x"}), timeout=60)
    assert rec.status == "succeeded", (Path(rec.run_dir) / "log.txt").read_text()[-2000:]
    assert rec.config["note"] == str(tmp_path / "x")  # Path values are stored as strings


def test_bad_configs_are_refused_before_anything_starts(tmp_path, monkeypatch):
    r = _runner(tmp_path)
    with pytest.raises(ConfigError, match="plain JSON"):
        r.submit({**SLEEP, "x": object()})
    with pytest.raises(ConfigError, match="job kind 'trian' is unknown.*Did you mean 'train'"):
        r.submit({"kind": "trian"})
    with pytest.raises(ConfigError, match="training config: .*algorithm 'ppo' is unknown"):
        r.submit({"kind": "train", "algorithm": "ppo", "base": str(tmp_path), "data": str(tmp_path / "x.jsonl")})
    monkeypatch.delenv("SUBNETVIZ_ALLOW_TEST_JOBS")
    with pytest.raises(ConfigError, match="for tests only"):
        r.submit(SLEEP)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []
    assert r.list_runs().empty
    with pytest.raises(JobError, match="no run"):
        r.get("nope")


@pytest.mark.slow
def test_train_job_through_runner_and_main_train(tmp_path):
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_addition_data

    base = make_tiny_llama(tmp_path / "base")
    data = write_addition_data(tmp_path / "data")
    cfg = {
        "algorithm": "sft",
        "base": str(base),
        "data": str(data["sft"]),
        "steps": 3,
        "learning_rate": 1e-2,
        "batch_size": 8,
        "eval_data": str(data["eval"]),
    }
    r = _runner(tmp_path / "runs")
    rec = r.wait(r.submit({"kind": "train", **cfg}), timeout=120)
    assert rec.status == "succeeded", (Path(rec.run_dir) / "log.txt").read_text()[-3000:]
    assert (rec.outputs / "model" / "model.safetensors").is_file()
    summary = json.loads((rec.outputs / "summary.json").read_text())
    assert summary["steps_done"] == 3 and summary["output_dir"] == str(rec.outputs / "model")
    assert list(r.metrics(rec.id)["step"])[:3] == [1, 2, 3] and "loss" in r.metrics(rec.id)
    assert "accuracy" in rec.last_metrics
    # The foreground CLI form: output_dir from the config; refuses an existing output_dir.
    cfile = tmp_path / "c.json"
    cfg.pop("eval_data")
    cfile.write_text(json.dumps({**cfg, "output_dir": str(tmp_path / "fg")}))
    assert main_train(str(cfile)) == 0 and (tmp_path / "fg" / "train_summary.json").is_file()
    assert main_train(str(cfile)) == 2
    assert main_train(str(cfile), run_dir=str(tmp_path / "fg-run")) == 0
    assert (tmp_path / "fg-run" / "outputs" / "model" / "config.json").is_file()


@pytest.mark.parametrize("what", ["not sqlite", "a folder"])
def test_a_registry_that_cannot_be_opened_is_one_line(tmp_path, what):
    """A registry file that is no SQLite database (or a folder in its place) ended in sqlite3's traceback."""
    from subnetviz.jobs.registry import Registry

    path = tmp_path / "runs" / "registry.sqlite"
    path.parent.mkdir()
    if what == "a folder":
        path.mkdir()
    else:
        path.write_bytes(b"this is no database " * 100)
    with pytest.raises(ConfigError, match="the job registry cannot be opened") as err:
        Registry(path)
    assert "\n" not in str(err.value)


def test_a_worker_spares_the_wrapper_that_started_it(tmp_path):
    """The worker command may be a wrapper that starts the worker (its registry row names the wrapper): it
    carries the job's mark too, and the worker ending its job killed it, whatever it had left to do."""
    import subprocess

    root = str(Path(__file__).resolve().parents[2])
    worker = (
        "import sys; from pathlib import Path; from subnetviz.jobs.scheduler import kill_leftovers; "
        "print(kill_leftovers(Path(sys.argv[1])))"
    )
    wrapper = (
        "import subprocess, sys; "
        f"out = subprocess.run([sys.executable, '-c', {worker!r}, sys.argv[1]], capture_output=True, text=True); "
        "open(sys.argv[2], 'w').write('survived ' + out.stdout.strip())"
    )
    env = {**os.environ, "SUBNETVIZ_JOB": str(tmp_path / "run"), "PYTHONPATH": root}
    subprocess.run([sys.executable, "-c", wrapper, str(tmp_path / "run"), str(tmp_path / "done")], env=env, timeout=60)
    assert (tmp_path / "done").read_text() == "survived 0"
