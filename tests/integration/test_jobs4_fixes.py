"""The job system against the fourth review's failures (/tmp/review/jobs4): a registry damaged, emptied or lost beside
intact run folders, a run folder deleted (or a disk full) while its job runs, a failed run's error cut short by
``subnetviz runs``, and a worker that started the next job with the torch-distributed variables its own job set.

Jobs are real OS processes (``main_job`` in a fresh interpreter) running ``tests.training_fixtures`` jobs or the
jobs below (kind ``python``, allowed by ``SUBNETVIZ_ALLOW_TEST_JOBS=1``). Every process started here is stopped by
its pid.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from subnetviz.errors import ConfigError, SubnetvizError
from subnetviz.jobs.registry import Registry, process_start
from subnetviz.jobs.rescan import REBUILT, adopt_run_folders
from subnetviz.jobs.runner import JobRunner
from tests.integration.test_jobs3_fixes import _wait_for

WORKER = [
    sys.executable,
    "-c",
    "import sys; from subnetviz.jobs.worker import main_job; sys.exit(main_job(sys.argv[1]))",
]
FULL_DISK_WORKER = [  # a worker whose disk is full when it writes its final status
    sys.executable,
    "-c",
    "import sys; from tests.integration.test_jobs4_fixes import full_disk_worker; sys.exit(full_disk_worker(sys.argv[1]))",
]
SLEEP = {"kind": "python", "target": "tests.training_fixtures:sleep_job"}
FAIL = {"kind": "python", "target": "tests.training_fixtures:fail_job"}
LONG_ERROR = {"kind": "python", "target": "tests.integration.test_jobs4_fixes:long_error_job"}
SETS_WORLD = {"kind": "python", "target": "tests.integration.test_jobs4_fixes:sets_world_job"}
RECORDS_ENV = {"kind": "python", "target": "tests.integration.test_jobs4_fixes:records_env_job"}
WORLD_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
THE_LONG_ERROR = (
    "corpus zoo: 1 sequence(s) of 2 tokens once tokenised; at least 10 are needed to train a mask — give a longer "
    "corpus, or a shorter sequence length, in /somewhere/quite/long/data/corpus.jsonl"
)


def full_disk_worker(run_dir: str) -> int:
    """The worker, on a disk that is full when it writes the final status (as ``atomic_write`` raises there)."""
    from subnetviz.jobs import worker

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    worker.write_json = full
    return worker.main_job(run_dir)


def long_error_job(config: dict, ctx) -> None:
    """Test job: refuses its input with a reason longer than a table cell."""
    raise SubnetvizError(THE_LONG_ERROR)


def sets_world_job(config: dict, ctx) -> None:
    """Test job: sets the variables a single-process FSDP2 run sets in its own process
    (``training.sharded.init_world``), then sleeps ``seconds``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29555", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    time.sleep(float(config.get("seconds", 0)))


def records_env_job(config: dict, ctx) -> None:
    """Test job: writes the torch-distributed variables it was started with to ``outputs/env.json``."""
    (ctx.out_dir / "env.json").write_text(json.dumps({k: os.environ.get(k) for k in WORLD_ENV}))


@pytest.fixture(autouse=True)
def allow_test_jobs(monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    for var in ("SUBNETVIZ_DEVICE", "CUDA_VISIBLE_DEVICES", "SUBNETVIZ_MAX_QUEUED", *WORLD_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def started():
    """Run ids to stop at the end (each running one's worker killed by its own pid, then its group)."""
    runs: list[tuple[JobRunner, str]] = []
    yield runs
    for runner, run_id in runs:
        try:
            rec = runner.registry.get(run_id)
        except SubnetvizError:
            continue
        if rec.pid and process_start(rec.pid) is not None:
            try:
                os.killpg(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _runner(root, command=WORKER, **kw) -> JobRunner:
    kw.setdefault("max_concurrent", 1)
    kw.setdefault("gpus", [])
    return JobRunner(root, command=command, cancel_grace_s=3.0, **kw)


def _rows(root: Path) -> dict[str, dict]:
    """The registry's rows as SQLite holds them (read without the code under test), by id."""
    con = sqlite3.connect(root / "registry.sqlite")
    try:
        con.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in con.execute("SELECT * FROM runs")}
    finally:
        con.close()


def _row(root: Path, run_id: str) -> dict | None:
    return _rows(root).get(run_id)


def _running(r: JobRunner, run_id: str) -> bool:
    r.poll()
    return r.get(run_id).status == "running" and (r.get(run_id).step or 0) >= 1


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SUBNETVIZ_HOME": str(home), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "subnetviz", *args], capture_output=True, text=True, env=env)


def _lose_registry(root: Path, how: str) -> None:
    """The registry as the review found it: emptied (a 0-byte file), or damaged and then moved aside as advised."""
    path = root / "registry.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    if how == "zero-bytes":
        path.write_bytes(b"")
    else:
        path.write_bytes(path.read_bytes()[:8192])  # a copy cut short
        with pytest.raises(ConfigError) as err:
            Registry(path)
        assert "the file is damaged; move it aside to start a new one: its runs are then re-read from their run " in (
            str(err.value)
        )
        path.rename(root / "registry.sqlite.damaged")


# --- 1. a registry damaged, emptied or lost beside intact run folders ------------------------------------------------

KEPT = ("kind", "name", "status", "error", "step", "total", "last_metrics", "config", "run_dir")


@pytest.mark.parametrize("how", ["zero-bytes", "damaged-then-moved-aside"])
def test_a_lost_registry_is_rebuilt_from_the_run_folders(tmp_path, started, how):
    """Before: after moving a damaged registry aside, or with a 0-byte one, ``runs`` said "no runs" (rc 0) and every
    page lost every run, although each folder held its config, status and outputs."""
    home = tmp_path / "home"
    root = home / "runs"
    r = _runner(root)
    # (its config padded, so that the registry is longer than the 8 KiB a damaged copy keeps)
    ok = r.submit({**SLEEP, "seconds": 0.2, "steps": 2, "name": "short one", "pad": "x" * 20_000})
    bad = r.submit({**FAIL})
    busy = r.submit({**SLEEP, "seconds": 300, "steps": 300})
    started.append((r, busy))
    _wait_for(lambda: _row(root, bad)["status"] == "failed")
    queued = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    _wait_for(lambda: _running(r, busy))
    r.cancel(queued)
    r.cancel(busy)
    r.wait(ok, timeout=30)
    before = _rows(root)
    assert [before[i]["status"] for i in (ok, bad, queued, busy)] == ["succeeded", "failed", "cancelled", "cancelled"]

    _lose_registry(root, how)
    out = _cli(home, "runs")
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stderr.splitlines() if line.strip()]
    assert notes == [
        f"note: {root / 'registry.sqlite'}: the job registry was new or empty; {len(before)} run(s) were registered "
        f"again from their folders in {root}."
    ]
    after = _rows(root)
    assert set(after) == set(before)  # ids are the folder names
    for run_id, row in before.items():
        # (a cancel records no progress: the folder's is the later one)
        kept = [k for k in KEPT if run_id != busy or k not in ("step", "last_metrics")]
        assert {k: after[run_id][k] for k in kept} == {k: row[k] for k in kept}, run_id
    assert after[ok]["name"] == "short one"
    assert abs(after[ok]["ended"] - before[ok]["ended"]) < 1e-3
    assert abs(after[ok]["started"] - before[ok]["started"]) < 2.0  # the worker's start, as it recorded it
    assert (root / ok / "outputs" / "done.txt").is_file()
    listed = out.stdout.splitlines()
    assert sum(ok in line for line in listed) == 1 and sum(bad in line for line in listed) == 1
    again = _cli(home, "runs")  # said once: the registry is whole again
    assert again.returncode == 0 and again.stderr.strip() == ""


def test_a_run_whose_worker_lives_is_registered_running_and_finishes_a_queued_one_is_failed(tmp_path, started):
    """The registry lost while a job runs and another waits: the running one is left to its worker, which records its
    end as usual; the queued one (a folder with a config only, its launch lost with its row) is failed, saying why."""
    r = _runner(tmp_path)
    a = r.submit({**SLEEP, "seconds": 4, "steps": 4})
    q = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    started.extend([(r, a), (r, q)])
    _wait_for(lambda: _running(r, a))
    pid = r.get(a).pid
    for name in ("registry.sqlite", "registry.sqlite-wal", "registry.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    r2 = _runner(tmp_path)
    assert sorted(r2.adopted) == sorted([a, q])
    rec = r2.get(a)
    assert (rec.status, rec.pid) == ("running", pid)
    assert r2.get(q).status == "failed" and r2.get(q).error == REBUILT
    assert r2.wait(a, timeout=30).status == "succeeded"
    assert not (tmp_path / q / "log.txt").exists()  # never started


def test_rescan_registers_only_the_folders_no_row_names(tmp_path, started):
    """A registry restored from an older copy lacks the newest runs: ``runs --rescan`` registers those, leaving every
    registered run (a running one included) as it is, and never twice."""
    home = tmp_path / "home"
    root = home / "runs"
    r = _runner(root)
    done = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    r.wait(done, timeout=30)
    busy = r.submit({**SLEEP, "seconds": 300, "steps": 300})
    started.append((r, busy))
    _wait_for(lambda: _running(r, busy))
    kept = _row(root, busy)
    con = sqlite3.connect(root / "registry.sqlite")
    con.execute("DELETE FROM runs WHERE id = ?", [done])
    con.commit()
    con.close()

    out = _cli(home, "runs", "--rescan")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"registered 1 run folder(s) that the registry did not name: {done}"
    rows = _rows(root)
    assert rows[done]["status"] == "succeeded" and rows[busy]["status"] == "running"
    assert {k: v for k, v in rows[busy].items() if k not in ("step", "last_metrics")} == {
        k: v for k, v in kept.items() if k not in ("step", "last_metrics")
    }
    again = _cli(home, "runs", "--rescan")
    assert again.stdout.strip() == f"every run folder in {root} is in the registry; nothing to register"
    assert len(_rows(root)) == 2
    r.cancel(busy)


def test_a_submit_meeting_a_rebuild_keeps_its_run(tmp_path, monkeypatch, started):
    """A rebuild that runs between a submit's new folder and its row registers that folder (no status yet: failed);
    the submit's own row replaces it, where its insert failed on the id (IntegrityError)."""
    from subnetviz.jobs import runner as runner_mod

    r = _runner(tmp_path)
    real = runner_mod.write_json
    seen = []

    def write_then_rebuild(path, obj):
        real(path, obj)
        seen.extend(adopt_run_folders(r.registry))

    monkeypatch.setattr(runner_mod, "write_json", write_then_rebuild)
    run = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    started.append((r, run))
    assert seen == [run]
    assert r.wait(run, timeout=30).status == "succeeded"
    assert len(_rows(tmp_path)) == 1


def test_folders_that_are_no_run_are_not_registered(tmp_path):
    """A model folder (its config.json names no kind), a hidden folder, and a name that is not UTF-8 (SQLite would
    refuse it as text) are left out; a run folder beside them is registered."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "config.json").write_text(json.dumps({"kind": "train"}))
    bad = os.fsencode(tmp_path) + b"/run-\xff"
    os.mkdir(bad)
    with open(bad + b"/config.json", "w") as fh:
        fh.write(json.dumps({"kind": "train"}))
    (tmp_path / "run-ok").mkdir()
    (tmp_path / "run-ok" / "config.json").write_text(json.dumps({"kind": "bigram_mask"}))
    r = _runner(tmp_path)
    assert r.adopted == ["run-ok"]
    rec = r.get("run-ok")
    assert (rec.status, rec.error, rec.kind) == ("failed", REBUILT, "bigram_mask")


# --- 3. a run folder deleted, or a disk full, while its job runs -----------------------------------------------------


def test_a_run_whose_folder_is_deleted_is_failed_and_the_next_job_starts(tmp_path, started):
    """Before: the worker died with a traceback writing its final status into the missing folder; the row stayed
    running with a dead pid and the queued job waited until a page or ``runs`` polled."""
    r = _runner(tmp_path)
    a = r.submit({**SLEEP, "seconds": 20, "steps": 20})
    b = r.submit({**SLEEP, "seconds": 0.5, "steps": 2})
    started.extend([(r, a), (r, b)])
    _wait_for(lambda: _running(r, a))
    shutil.rmtree(tmp_path / a)
    # no poll from here on: the worker itself records its end and starts the next job
    _wait_for(lambda: _row(tmp_path, b)["status"] == "succeeded", timeout=40)
    row = _row(tmp_path, a)
    assert row["status"] == "failed"
    assert row["error"] == "its run folder was deleted while it ran"


def test_a_final_status_the_full_disk_refuses_is_recorded_in_the_registry_and_the_next_job_starts(tmp_path, started):
    r = JobRunner(tmp_path, max_concurrent=1, gpus=[], command=FULL_DISK_WORKER, cancel_grace_s=3.0)
    a = r.submit({**FAIL})
    b = _runner(tmp_path).submit({**SLEEP, "seconds": 0.1, "steps": 1})  # (queued with the usual worker)
    started.extend([(r, a), (r, b)])
    _wait_for(lambda: _row(tmp_path, b)["status"] == "succeeded", timeout=40)
    row = _row(tmp_path, a)
    assert row["status"] == "failed"
    assert row["error"] == (
        "its final status could not be written in its run folder (No space left on device); the job had failed: "
        "ValueError: planned failure; launch it again"
    )
    assert not (tmp_path / a / "outputs.tmp").exists() and not (tmp_path / a / "outputs").exists()


def gone_ray_proxy(run_dir: str) -> int:
    """The Ray proxy of a run whose folder is deleted while it runs there (Ray then fails: its task lost)."""
    from subnetviz.jobs import ray_backend

    def connect(address):
        shutil.rmtree(run_dir)
        raise ConnectionError("the job's task was lost")

    ray_backend.connect = connect
    return ray_backend.run_proxy(run_dir, "127.0.0.1:1")


def test_a_ray_run_whose_folder_is_deleted_is_failed_and_the_next_job_starts(tmp_path, started):
    """The Ray proxy wrote its final status into the missing folder as the local worker did: it died with a
    traceback and started nothing."""
    proxy = [
        sys.executable,
        "-c",
        "import sys; from tests.integration.test_jobs4_fixes import gone_ray_proxy; sys.exit(gone_ray_proxy(sys.argv[1]))",
    ]
    r = JobRunner(tmp_path, max_concurrent=1, gpus=[], command=proxy, cancel_grace_s=3.0)
    a = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    b = _runner(tmp_path).submit({**SLEEP, "seconds": 0.1, "steps": 1})  # (queued with the usual worker)
    started.extend([(r, a), (r, b)])
    _wait_for(lambda: _row(tmp_path, b)["status"] == "succeeded", timeout=40)
    row = _row(tmp_path, a)
    assert row["status"] == "failed" and row["error"] == "its run folder was deleted while it ran"


def test_a_killed_run_whose_folder_is_gone_does_not_send_anyone_to_its_log(tmp_path, started):
    """A worker killed (SIGKILL, the OOM killer) and its folder deleted: the poll that notices said "see log.txt",
    which went with the folder."""
    r = _runner(tmp_path)
    a = r.submit({**SLEEP, "seconds": 30, "steps": 1})
    started.append((r, a))
    _wait_for(lambda: (r.poll(), r.get(a).status == "running")[1])
    pid = r.get(a).pid
    os.killpg(pid, signal.SIGKILL)
    _wait_for(lambda: process_start(pid) is None, timeout=10)
    shutil.rmtree(tmp_path / a)
    r.poll()
    rec = r.get(a)
    assert rec.status == "failed" and "log.txt" not in rec.error
    assert rec.error == "the job process ended without a final status, and its run folder is gone (deleted)"


# --- 4. a failed run's error in full -------------------------------------------------------------------------------


def test_runs_prints_a_failed_runs_error_in_full_under_its_row(tmp_path, started):
    """Before: every cell cut at 60 characters ("… the job process ended without a final status (killed or c...");
    the whole reason was only in status.json."""
    home = tmp_path / "home"
    r = _runner(home / "runs")
    long_name = "a name longer than any table cell should be, so that it is cut in the listing: " + "n" * 40
    failed = r.submit({**LONG_ERROR}, name=long_name)
    assert r.wait(failed, timeout=30).status == "failed"
    ok = r.submit({**SLEEP, "seconds": 0.1, "steps": 1})
    r.wait(ok, timeout=30)
    out = _cli(home, "runs")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if failed in line)
    assert lines[row + 1] == f"    error: {THE_LONG_ERROR}"
    assert long_name not in out.stdout and long_name[:50] in lines[row]  # the name is still cut
    after_ok = lines[next(i for i, line in enumerate(lines) if ok in line) + 1 :]
    assert not after_ok or not after_ok[0].startswith("    error:")  # a succeeded run has no error line
    assert "--rescan" in _cli(home, "runs", "--help").stdout


# --- 5. the environment a worker starts the next job with ----------------------------------------------------------


def test_the_next_job_does_not_inherit_what_the_job_before_set_in_its_worker(tmp_path, started):
    """A single-process FSDP2 run sets RANK, WORLD_SIZE, MASTER_PORT ... in its worker's environment; the worker then
    started the next queued job with them (a job that thinks it is rank 0 of a launched world)."""
    r = _runner(tmp_path)
    a = r.submit({**SETS_WORLD, "seconds": 1.5})
    b = r.submit({**RECORDS_ENV})
    started.extend([(r, a), (r, b)])
    # no poll from here on: a's worker starts b
    _wait_for(lambda: _row(tmp_path, b)["status"] in ("succeeded", "failed"), timeout=40)
    assert _row(tmp_path, a)["status"] == "succeeded" and _row(tmp_path, b)["status"] == "succeeded"
    seen = json.loads((tmp_path / b / "outputs" / "env.json").read_text())
    assert seen == dict.fromkeys(WORLD_ENV)
