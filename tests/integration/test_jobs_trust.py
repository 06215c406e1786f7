"""What a job writes into its run folder cannot break the runner: a status whose numbers SQLite cannot hold,
a metrics file of garbage or of 300 MB, and a worker killed between publishing its outputs and writing its
final status (a run marked failed never has an ``outputs/`` that the app lists as complete).

Workers here are fresh interpreters (kind ``python``, allowed by ``SUBNETVIZ_ALLOW_TEST_JOBS=1``); the jobs are
the functions of this module, or a stand-in process that only sleeps while the test writes its run folder.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from subnetviz.jobs import context, scheduler
from subnetviz.jobs.runner import JobRunner
from subnetviz.report.training import has_curves
from tests.integration.test_runner import _row, _wait_for

ROOT = Path(__file__).resolve().parents[2]
WORKER = [
    sys.executable,
    "-c",
    "import sys; from subnetviz.jobs.worker import main_job; sys.exit(main_job(sys.argv[1]))",
]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # a live "worker" that leaves the folder to us
INT64_MAX = 2**63 - 1
JOBS = "tests.integration.test_jobs_trust"  # the job functions below, as a worker imports them


def huge_total_job(config: dict, ctx) -> None:
    """Test job: reports a total SQLite cannot hold, then waits for a ``go`` file in its run folder."""
    ctx.progress(1, 2**63, loss=0.5)
    deadline = time.time() + 60
    while not (ctx.run_dir / "go").exists() and time.time() < deadline:
        time.sleep(0.05)
    (ctx.out_dir / "done.txt").write_text("ok")


def mask_job(config: dict, ctx) -> None:
    """Test job: writes one file into its outputs, as a mask job writes its mask."""
    (ctx.out_dir / "mask.safetensors").write_text("not really a mask")


def _killed_at_publish(before: bool) -> list[str]:
    """The worker, SIGKILLed right before (``before``) or right after it renames ``outputs.tmp`` to ``outputs``."""
    code = f"""
import os, signal, sys
real = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) != "outputs":
        return real(src, dst, *args, **kwargs)
    if {before!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from subnetviz.jobs.worker import main_job
sys.exit(main_job(sys.argv[1]))
"""
    return [sys.executable, "-c", code]


STARTED: list[int] = []  # the stand-in processes of a test, killed at its end whatever happened


@pytest.fixture(autouse=True)
def allow_test_jobs(monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.chdir(ROOT)
    yield
    while STARTED:
        pid = STARTED.pop()
        if _alive(pid):
            _kill(pid)


def _runner(root, command=WORKER, **kw) -> JobRunner:
    return JobRunner(root, max_concurrent=kw.pop("max_concurrent", 1), command=command, cancel_grace_s=3.0, **kw)


def _sleeper_running(r: JobRunner) -> tuple[str, Path, int]:
    """A run whose live process only sleeps: its id, folder and pid."""
    rid = r.submit({"kind": "python", "target": f"{JOBS}:mask_job"})
    rec = r.get(rid)
    assert rec.status == "running" and rec.pid
    STARTED.append(rec.pid)
    return rid, Path(rec.run_dir), rec.pid


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # a worker leads its own session
    except ProcessLookupError:
        return
    _wait_for(lambda: not _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # our child: reap it, or it stays a zombie
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# --- 1. numbers SQLite cannot hold ------------------------------------------------------------------


def test_a_total_beyond_sqlite_integers_breaks_no_poll(tmp_path):
    """A total of 2**63 raised OverflowError in every poll: no runner could be made, nothing submitted, and the
    row stayed running after its job ended (the worker's own end was lost to the same error)."""
    r = _runner(tmp_path)
    rid = r.submit({"kind": "python", "target": f"{JOBS}:huge_total_job"})
    run_dir = Path(r.get(rid).run_dir)
    _wait_for(lambda: context.read_json(run_dir / "status.json").get("total") == 2**63)
    r.poll()
    assert r.get(rid).total == INT64_MAX and r.get(rid).status == "running"
    JobRunner(tmp_path, command=WORKER)  # a new runner (a server or CLI that starts) polls too
    (run_dir / "go").write_text("")
    _wait_for(lambda: _row(tmp_path, rid)["status"] != "running")  # the worker records its own end: no poll
    row = _row(tmp_path, rid)
    assert (row["status"], row["total"]) == ("succeeded", INT64_MAX), row
    assert "could not record" not in (run_dir / "log.txt").read_text()
    nxt = r.wait(r.submit({"kind": "python", "target": f"{JOBS}:mask_job"}), timeout=60)
    assert nxt.status == "succeeded" and list(r.list_runs()["status"]) == ["succeeded", "succeeded"]


def test_a_status_of_hostile_values_is_checked_before_the_registry(tmp_path):
    """Whatever a job writes into status.json (numbers out of range, NaN, nested objects, a list, an end in the
    year 10**292) reaches the registry checked, and the runs list still reads."""
    r = _runner(tmp_path, command=SLEEPER)
    rid, run_dir, pid = _sleeper_running(r)
    status = run_dir / "status.json"
    status.write_text("[1, 2]")
    r.poll()
    metrics = f'{{"loss": NaN, "big": {10**400}, "method": "x", "deep": {{"a": [1]}}}}'
    status.write_text(f'{{"step": 1e400, "total": -{2**70}, "metrics": {metrics}}}')
    r.poll()
    rec = r.get(rid)
    assert rec.status == "running" and rec.step is None and rec.total == -(2**63)
    assert math.isnan(rec.last_metrics["loss"]) and rec.last_metrics["big"] == math.inf
    assert rec.last_metrics["method"] == "x" and "deep" not in rec.last_metrics
    _kill(pid)
    status.write_text(json.dumps({"state": "failed", "error": ["not", "text"], "ended": 1e300, "step": 2**64}))
    r.poll()
    rec = r.get(rid)
    assert (rec.status, rec.error, rec.step) == ("failed", "['not', 'text']", INT64_MAX)
    assert rec.ended <= time.time() and len(r.list_runs()) == 1


def test_one_run_that_cannot_be_settled_leaves_the_others_polled(tmp_path, monkeypatch):
    """A run whose settling raises is marked failed with a one-line reason; the other runs are still settled."""
    r = _runner(tmp_path, command=SLEEPER, max_concurrent=2)
    bad, bad_dir, bad_pid = _sleeper_running(r)
    good, good_dir, good_pid = _sleeper_running(r)
    real = scheduler.kill_leftovers

    def kill_leftovers(run_dir):
        if Path(run_dir) == bad_dir:
            raise RuntimeError("a broken\nrun folder")
        return real(run_dir)

    monkeypatch.setattr(scheduler, "kill_leftovers", kill_leftovers)
    (bad_dir / "outputs").mkdir()  # what a worker published before it died
    _kill(bad_pid)
    (good_dir / "status.json").write_text(json.dumps({"step": 3, "total": 9}))
    r.poll()
    rec = r.get(bad)
    assert rec.status == "failed" and "RuntimeError: a broken run folder" in rec.error and "\n" not in rec.error
    assert not (bad_dir / "outputs").exists()
    assert (r.get(good).status, r.get(good).step) == ("running", 3)
    _kill(good_pid)


# --- 2. metrics.jsonl -------------------------------------------------------------------------------


def test_metrics_skip_lines_that_are_no_rows(tmp_path):
    """Lines ``5``, ``[1,2]``, ``null`` raised TypeError and a byte 0xff UnicodeDecodeError out of metrics()."""
    r = _runner(tmp_path, command=SLEEPER)
    rid, run_dir, pid = _sleeper_running(r)
    lines = [
        json.dumps({"time": 1, "step": 1, "total": 3, "loss": 0.5}).encode(),
        b"5",
        b"[1,2]",
        b"null",
        b"\xff\xfe{",
        b'{"step": "two", "loss": 1}',  # no number where one is expected: not a row
        b'{"step": NaN, "loss": 1}',
        b"[" * 100_000,  # nested too deep for json
        b'{"time": 2, "step": 2, "total": 3, "loss": null, "method": "m\xff"}',  # a byte that is no UTF-8
        b'{"time": 3, "step": 3, "total": 3, "loss": Infinity, "kept": [1]}',
        b'{"time": 4, "step": 4',  # being written
    ]
    (run_dir / "metrics.jsonl").write_bytes(b"\n".join(lines))
    m = r.metrics(rid)
    assert list(m["step"]) == [1, 2, 3] and m["loss"].iloc[0] == 0.5
    assert m["loss"].iloc[1:].isna().all() and m["kept"].isna().all() and m.attrs["left_out"] is False
    assert m["method"].iloc[1] == "m\ufffd" and has_curves(r, rid)
    _kill(pid)


def test_metrics_read_only_the_end_of_a_large_file(tmp_path, monkeypatch):
    """A 300 MB metrics file was read whole on every 2-second refresh: only its end is read, and the table says
    that earlier rows were left out."""
    monkeypatch.setattr(context, "METRICS_TAIL_BYTES", 4096, raising=False)
    monkeypatch.setattr(context, "METRICS_MAX_ROWS", 10, raising=False)
    r = _runner(tmp_path, command=SLEEPER)
    rid, run_dir, pid = _sleeper_running(r)
    row = {"time": 1.0, "step": 0, "total": 1000, "loss": 0.25}
    with open(run_dir / "metrics.jsonl", "w") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.write("x" * 100_000 + "\n")  # one garbage line, larger than what is read
        for s in range(1, 21):
            fh.write(json.dumps({**row, "step": s}) + "\n")
    m = r.metrics(rid)
    assert list(m["step"]) == list(range(11, 21)) and m.attrs["left_out"] is True
    from subnetviz.report.training import curves_figure

    title = curves_figure(r, [rid], {rid: "run"}).layout.title.text  # the chart says it drew only the end
    assert "only its last rows are drawn" in title
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write("y" * 100_000 + "\n")  # the end itself garbage: nothing read, nothing raised
    m = r.metrics(rid)
    assert len(m) == 0 and list(m.columns) == ["time", "step", "total"] and m.attrs["left_out"] is True
    assert not has_curves(r, rid)
    _kill(pid)


# --- 3. a worker killed between publishing its outputs and its final status -------------------------


def _listed_outputs(root: Path) -> list[str]:
    """What the app lists as finished runs' results (selection.saved_masks, _run_models): runs/*/outputs/**."""
    return sorted(str(p.relative_to(root)) for p in root.glob("*/outputs/**/*") if p.is_file())


@pytest.mark.parametrize("before", [False, True], ids=["after-publish", "before-publish"])
def test_a_worker_killed_at_publishing_leaves_status_and_outputs_consistent(tmp_path, before):
    """Killed right after the rename of outputs.tmp, the run was marked failed while its outputs/ looked complete
    (and the app offered its mask). The final status is now written first: killed before or after the rename,
    the job's work is done and the run is succeeded with its outputs in place."""
    r = _runner(tmp_path, command=_killed_at_publish(before))
    rec = r.wait(r.submit({"kind": "python", "target": f"{JOBS}:mask_job"}), timeout=60)
    run_dir = Path(rec.run_dir)
    assert "succeeded" not in (run_dir / "log.txt").read_text()  # the worker died before its last log line
    assert rec.status == "succeeded", rec.error
    assert (rec.outputs / "mask.safetensors").is_file() and not (run_dir / "outputs.tmp").exists()
    assert _listed_outputs(tmp_path) == [f"{rec.id}/outputs/mask.safetensors"]


def test_outputs_of_a_run_that_did_not_succeed_are_moved_aside(tmp_path):
    """An outputs/ beside a status that is not succeeded (a worker of an older version killed after its rename, a
    Ray task) is moved to outputs.failed when the run is settled: nothing lists it as complete."""
    r = _runner(tmp_path, command=SLEEPER)
    rid, run_dir, pid = _sleeper_running(r)
    (run_dir / "outputs").mkdir()
    (run_dir / "outputs" / "mask.safetensors").write_text("complete-looking")
    (run_dir / "status.json").write_text(json.dumps({"step": 1, "total": 1}))
    _kill(pid)
    r.poll()
    rec = r.get(rid)
    assert rec.status == "failed" and "without a final status" in rec.error
    assert not rec.outputs.exists() and (run_dir / "outputs.failed" / "mask.safetensors").is_file()
    assert _listed_outputs(tmp_path) == []


def test_a_succeeded_status_without_outputs_is_failed(tmp_path):
    """A status that says succeeded beside no outputs at all (removed by the job itself) is no success."""
    r = _runner(tmp_path, command=SLEEPER)
    rid, run_dir, pid = _sleeper_running(r)
    (run_dir / "status.json").write_text(json.dumps({"state": "succeeded", "ended": time.time()}))
    _kill(pid)
    r.poll()
    rec = r.get(rid)
    assert rec.status == "failed" and "no outputs" in rec.error


def test_a_runner_hides_the_outputs_of_runs_that_ended_failed_earlier(tmp_path):
    """Runs marked failed before this fix kept their complete-looking outputs/: a runner that starts (a server,
    the CLI) moves them aside; a succeeded run's stay."""
    r = _runner(tmp_path)
    ok = r.wait(r.submit({"kind": "python", "target": f"{JOBS}:mask_job"}), timeout=60)
    bad = r.wait(r.submit({"kind": "python", "target": "tests.training_fixtures:fail_job"}), timeout=60)
    assert (ok.status, bad.status) == ("succeeded", "failed")
    (bad.outputs).mkdir()
    (bad.outputs / "mask.safetensors").write_text("complete-looking")
    JobRunner(tmp_path, command=WORKER)
    assert not bad.outputs.exists() and (Path(bad.run_dir) / "outputs.failed" / "mask.safetensors").is_file()
    assert _listed_outputs(tmp_path) == [f"{ok.id}/outputs/mask.safetensors"]
