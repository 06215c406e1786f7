"""The job system against the fifth review's failures (/tmp/review/jobs5): a registry rebuilt from the run folders
while ``train --run-dir HOME/runs/X`` trained in the foreground, and the demo zoo's member runs after a rebuild.

- The rebuild took the foreground run for dead (its process is no queued job's worker): it failed the run ("no final
  status ... launch it again") and deleted its ``outputs.tmp`` mid-training; once the run had finished, the next runner
  moved its model to ``outputs.failed``. The run is now registered running and settles succeeded, its model in place;
  and a runner that finds a run failed (or cancelled) whose ``status.json`` says succeeded settles it again from its
  folder rather than moving its outputs aside (a home an earlier version's rebuild left so).
- The zoo's member runs were renamed by a rebuild (to their training's own name), and ``demo build`` then registered
  all of them a second time. They keep their registry name, and are found again by member and zoo fingerprint,
  in a home built by the earlier version too.

Real processes: ``python -m subnetviz train --run-dir`` on a tiny Llama, the ``runs`` CLI (the rebuild), and job
workers running ``tests.training_fixtures`` jobs. Every process started here is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from subnetviz.jobs.rescan import REBUILT
from subnetviz.jobs.runner import JobRunner
from tests.app_fixtures import add_finished_run
from tests.integration.test_jobs4_fixes import _rows
from tests.integration.test_runner import SLEEP, WORKER
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data, write_half_mask, write_sft_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def allow_test_jobs(monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.chdir(ROOT)
    for var in ("SUBNETVIZ_DEVICE", "CUDA_VISIBLE_DEVICES", "SUBNETVIZ_MAX_QUEUED", "SUBNETVIZ_JOB"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs5")
    base = make_tiny_llama(root / "base")
    data = write_addition_data(root / "data", n=16)
    return {"base": base, "data": data, "mask": write_half_mask(root / "half.safetensors", base)}


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "SUBNETVIZ_HOME": str(home), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "subnetviz", *args], capture_output=True, text=True, env=_env(home), timeout=300
    )


def _wait_for(pred, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert proc is None or proc.poll() is None, f"the process ended first ({proc.returncode})"
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --- 1. a rebuild while `train --run-dir HOME/runs/X` trains in the foreground ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["rebuilt, --run-dir X", "rescanned, --run-dir=X relative to its folder"])
def test_a_foreground_run_dir_is_live_to_a_rebuild_and_keeps_its_model(tiny, tmp_path, how):
    """Before: the rebuild (``runs`` on a new or emptied registry, or ``runs --rescan``) failed the live run with
    "no final status ... launch it again" and deleted its outputs.tmp; the run then succeeded, and the next ``runs``
    moved its model to outputs.failed, leaving the run failed."""
    home = tmp_path / "home"
    root = home / "runs"
    rescan = how.startswith("rescanned")
    if rescan:  # a registry with runs already: `runs` leaves it as it is, `runs --rescan` adds the new folder
        root.mkdir(parents=True)
        add_finished_run(JobRunner(root, max_concurrent=1, gpus=[]), "earlier", "python", "an earlier run")
    cfg = write_sft_config(tiny, tmp_path, steps=200, batch_size=4, name="my foreground run")
    rd = root / "mine"
    arg = ["--run-dir=runs/mine"] if rescan else ["--run-dir", str(rd)]
    with open(tmp_path / "train.out", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "subnetviz", "train", "--config", str(cfg), *arg],
            cwd=home if rescan else ROOT,
            env=_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: (rd / "metrics.jsonl").is_file(), timeout=240, proc=proc)  # it trains
        os.kill(proc.pid, signal.SIGSTOP)  # (held mid-training while the registry is rebuilt)
        try:
            assert (rd / "outputs.tmp").is_dir()
            out = _cli(home, "runs", "--rescan") if rescan else _cli(home, "runs")
            assert out.returncode == 0, out.stderr
            row = _rows(root)["mine"]
            assert (row["status"], row["pid"], row["error"]) == ("running", proc.pid, None), row
            assert row["name"] == "my foreground run"
            assert (rd / "outputs.tmp").is_dir()  # its work in progress is left to it
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(timeout=240) == 0, (tmp_path / "train.out").read_text()[-3000:]
        assert json.loads((rd / "status.json").read_text())["state"] == "succeeded"
        out = _cli(home, "runs")  # the run settles from its folder once its process has ended
        assert out.returncode == 0, out.stderr
        row = _rows(root)["mine"]
        assert (row["status"], row["error"], row["step"], row["total"]) == ("succeeded", None, 200, 200), row
        assert (rd / "outputs" / "model" / "model.safetensors").is_file()
        assert not (rd / "outputs.failed").exists() and not (rd / "outputs.tmp").exists()
        again = _cli(home, "runs")  # a later runner leaves it so
        assert again.returncode == 0 and _rows(root)["mine"]["status"] == "succeeded"
        assert (rd / "outputs" / "model" / "model.safetensors").is_file()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.parametrize("state", [None, "succeeded"])
def test_a_process_that_only_names_a_run_folder_is_not_taken_for_its_run(tmp_path, state):
    """security7: a rebuild took any process whose command line held ``train ... --run-dir X`` (``--r X`` too) for
    run X's, registered the run running under that pid (a succeeded one too), so a visitor's Cancel signalled an
    unrelated process or moved a finished run's outputs aside. Now only the process the folder records as its own
    (``foreground.json``: pid and start) is taken, and never for a run whose status is final."""
    home = tmp_path / "home"
    root = home / "runs"
    rd = root / "mine"
    rd.mkdir(parents=True)
    (rd / "config.json").write_text(json.dumps({"kind": "train", "name": "a run"}))
    if state is not None:
        (rd / "status.json").write_text(json.dumps({"state": state, "ended": time.time()}))
        (rd / "outputs").mkdir()
    mimic = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "train", "--r", str(rd)], start_new_session=True
    )
    try:
        if state is None:  # a folder that records another process (the mimic's pid, another start)
            (rd / "foreground.json").write_text(json.dumps({"pid": mimic.pid, "pid_start": 1.0}))
        out = _cli(home, "runs")
        assert out.returncode == 0, out.stderr
        row = _rows(root)["mine"]
        assert row["pid"] != mimic.pid and row["status"] == (state or "failed"), row
        assert mimic.poll() is None  # untouched
        if state == "succeeded":
            assert (rd / "outputs").is_dir() and not (rd / "outputs.failed").exists()
    finally:
        mimic.kill()
        mimic.wait(timeout=30)


def test_the_process_a_foreground_folder_records_is_taken_while_its_run_is_not_over(tmp_path):
    """The other side: the process the folder records (its pid and start) is the run's, while the run has no final
    status."""
    from subnetviz.jobs.registry import creation_time

    home = tmp_path / "home"
    root = home / "runs"
    rd = root / "mine"
    rd.mkdir(parents=True)
    (rd / "config.json").write_text(json.dumps({"kind": "train", "name": "a run"}))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "train", "--run-dir", str(rd)], start_new_session=True
    )
    try:
        _wait_for(lambda: creation_time(proc.pid) is not None)
        (rd / "foreground.json").write_text(json.dumps({"pid": proc.pid, "pid_start": creation_time(proc.pid)}))
        out = _cli(home, "runs")
        assert out.returncode == 0, out.stderr
        row = _rows(root)["mine"]
        assert (row["status"], row["pid"]) == ("running", proc.pid), row
    finally:
        proc.kill()
        proc.wait(timeout=30)


def starts_a_detached_child(config: dict, ctx) -> None:
    """Test job: starts a process in a session of its own (as ``accelerate launch`` starts a run's ranks), which
    sleeps; its pid in ``child.pid`` of the run folder."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    (ctx.run_dir / "child.pid").write_text(str(child.pid))


def test_what_a_foreground_run_dir_starts_is_marked_as_the_runs(tiny, tmp_path, monkeypatch):
    """What ``train --run-dir`` starts carries its folder as SUBNETVIZ_JOB, as a queued job's processes do, so that a
    runner settling the run (registered by a rebuild) stops what outlived it; the caller's environment is as before.
    Before, nothing it started was marked: a rank left by a killed foreground run trained on unseen."""
    import psutil

    from subnetviz.jobs import worker
    from subnetviz.jobs.scheduler import kill_leftovers

    monkeypatch.setattr(worker, "job_function", lambda config: starts_a_detached_child)
    rd = tmp_path / "runs" / "mine"
    assert worker.main_train(str(write_sft_config(tiny, tmp_path)), run_dir=str(rd)) == 0
    assert "SUBNETVIZ_JOB" not in os.environ
    child = psutil.Process(int((rd / "child.pid").read_text()))
    try:
        assert child.environ().get("SUBNETVIZ_JOB") == str(rd)
        assert kill_leftovers(rd) == 1
        child.wait(timeout=10)
    finally:
        if child.is_running():
            child.kill()


@pytest.mark.parametrize("row_status", ["failed", "cancelled"])
def test_a_runner_settles_a_succeeded_run_its_row_says_ended_otherwise_and_keeps_its_outputs(tmp_path, row_status):
    """A home an earlier version left so (its rebuild failed the live foreground run, which then succeeded; or a
    cancel that came once the job had finished): every runner made there moved the run's complete outputs to
    outputs.failed, whatever its status.json said. Now the row is settled from the folder, and the outputs stay."""
    home = tmp_path / "home"
    root = home / "runs"
    r = JobRunner(root, command=WORKER, max_concurrent=1, gpus=[], cancel_grace_s=3.0)
    done = r.wait(r.submit({**SLEEP, "seconds": 0.2, "steps": 2}, name="a finished run"), timeout=60)
    assert done.status == "succeeded" and (done.outputs / "done.txt").is_file()
    status = json.loads((Path(done.run_dir) / "status.json").read_text())
    con = sqlite3.connect(root / "registry.sqlite")  # the row as that version left it
    error = REBUILT if row_status == "failed" else "cancelled by the user"
    con.execute("UPDATE runs SET status = ?, error = ?, ended = ? WHERE id = ?", [row_status, error, 1.0, done.id])
    con.commit()
    con.close()

    out = _cli(home, "runs")
    assert out.returncode == 0, out.stderr
    row = _rows(root)[done.id]
    assert (row["status"], row["error"], row["step"], row["total"]) == ("succeeded", None, 2, 2), row
    assert row["ended"] == pytest.approx(status["ended"])
    assert (done.outputs / "done.txt").read_text() == "ok"
    assert not (Path(done.run_dir) / "outputs.failed").exists()


# --- 2. the demo zoo's member runs across a rebuild -----------------------------------------------------------------


def _member_rows(root: Path) -> dict[str, tuple[str, str]]:
    """id -> (name, config.json's name) of the zoo's member runs."""
    rows = _rows(root)
    return {
        i: (row["name"], json.loads((root / i / "config.json").read_text()).get("name"))
        for i, row in rows.items()
        if i.startswith("zoo-")
    }


def _lose_registry(root: Path) -> None:
    """The registry moved aside, as the message of a damaged one advises: the next runner rebuilds it."""
    for extra in ("-wal", "-shm"):
        Path(f"{root / 'registry.sqlite'}{extra}").unlink(missing_ok=True)
    (root / "registry.sqlite").rename(root / "registry.sqlite.damaged")


def _as_the_earlier_version_wrote_them(root: Path, zoo) -> None:
    """Member runs as the earlier version registered them: config.json (and the row's config) named as the member's
    training was (``demo-zoo <member>``), not as the registry names the run."""
    con = sqlite3.connect(root / "registry.sqlite")
    for run_id, config in list(con.execute("SELECT id, config FROM runs WHERE id LIKE 'zoo-%'")):
        cfg = json.loads(config)
        trained = json.loads((zoo.member_path(cfg["zoo_member"]) / "train_config.json").read_text())["name"]
        cfg["name"] = trained
        con.execute("UPDATE runs SET config = ? WHERE id = ?", [json.dumps(cfg), run_id])
        (root / run_id / "config.json").write_text(json.dumps(cfg, indent=2))
    con.commit()
    con.close()


@pytest.mark.parametrize("built_by", ["this version", "the earlier version"])
def test_the_zoo_member_runs_keep_their_names_across_a_rebuild_and_are_not_registered_again(
    micro_zoo, tmp_path, built_by
):
    """Before: after a rebuild the member runs were named ``demo-zoo grpo-s0`` ..., and the next ``demo build``
    registered every member again under its registry name (duplicate succeeded runs on the Training page)."""
    from subnetviz.demo import MEMBERS
    from subnetviz.demo.extras import register_member_runs

    home = tmp_path / "home"
    root = home / "runs"
    first = register_member_runs(micro_zoo, JobRunner(root, max_concurrent=1, gpus=[]))
    assert sorted(first) == sorted(m.id for m in MEMBERS)
    names = {run_id: row[0] for run_id, row in _member_rows(root).items()}
    assert all(name.startswith("demo zoo ") for name in names.values()), names
    if built_by == "the earlier version":
        _as_the_earlier_version_wrote_them(root, micro_zoo)
        _lose_registry(root)
        out = _cli(home, "runs")  # rebuilt from folders that lack the registry name
        assert out.returncode == 0 and "registered again" in out.stderr, out.stderr
    else:
        _lose_registry(root)
        out = _cli(home, "runs")
        assert out.returncode == 0 and "registered again" in out.stderr, out.stderr
        assert {i: row[0] for i, row in _member_rows(root).items()} == names  # the rebuild kept each name

    again = register_member_runs(micro_zoo, JobRunner(root, max_concurrent=1, gpus=[]))  # `demo build` again
    assert again == first  # the same runs: none registered a second time
    assert {i: row for i, row in _member_rows(root).items()} == {i: (n, n) for i, n in names.items()}

    _lose_registry(root)  # and a later rebuild keeps the names it has now
    assert _cli(home, "runs").returncode == 0
    assert {i: row for i, row in _member_rows(root).items()} == {i: (n, n) for i, n in names.items()}
    assert register_member_runs(micro_zoo, JobRunner(root, max_concurrent=1, gpus=[])) == first
    assert len(_rows(root)) == len(first)


@pytest.mark.parametrize("order", ["--config last", "--run-dir last"])
def test_cancel_signals_an_adopted_foreground_run_that_leads_no_process_group(tmp_path, order):
    """A ``train --run-dir`` started by a script without job control shares the script's process group: Cancel's
    signal to the group of its pid found none, and the run trained on until its next step saw the cancel flag (the
    page waited out the grace period). The process itself gets the signal now; with its folder not the last
    argument (regressions13) it was no job process to Cancel at all: the row read cancelled, its outputs.tmp was
    deleted, and it trained on."""
    from subnetviz.jobs.registry import creation_time

    home = tmp_path / "home"
    root = home / "runs"
    rd = root / "mine"
    rd.mkdir(parents=True)
    (rd / "config.json").write_text(json.dumps({"kind": "train", "name": "a run"}))
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); time.sleep(120)"
    args = ["--run-dir", str(rd), "--config", "c.json"] if order == "--config last" else ["--run-dir", str(rd)]
    proc = subprocess.Popen([sys.executable, "-c", code, "train", *args])  # (pytest's group)
    try:
        assert os.getpgid(proc.pid) != proc.pid
        _wait_for(lambda: creation_time(proc.pid) is not None)
        (rd / "foreground.json").write_text(json.dumps({"pid": proc.pid, "pid_start": creation_time(proc.pid)}))
        assert _cli(home, "runs").returncode == 0 and _rows(root)["mine"]["status"] == "running"
        runner = JobRunner(root, max_concurrent=1, gpus=[])
        runner.cancel_grace_s = 20.0
        started = time.monotonic()
        assert runner.cancel("mine").status == "cancelled"
        assert proc.wait(timeout=5) == 7 and time.monotonic() - started < 10  # (SIGTERM, not the grace period out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
