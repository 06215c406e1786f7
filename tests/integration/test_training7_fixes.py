"""The job system against the training7 review's failures (/tmp/review/training7).

- A multi-process run submitted where ``SUBNETVIZ_DEVICE=cuda:N`` (what ``auto`` stands for on a server) was given
  GPU N alone, and its launch refused it once queued ("it has 1"); where the runner did not hand out GPU N it was
  refused at submit. Each rank trains on ``cuda:LOCAL_RANK`` whatever the index: it now takes one GPU per process.
- A registry rebuilt from the run folders registered the live runs with no GPU, so new jobs were given the GPUs they
  held. A rebuilt row now holds what its process's environment says it was given; a foreground run whose environment
  says nothing holds every GPU until it ends.
- After a clock step, a foreground ``train --run-dir D --config C`` adopted by a rebuild was taken for dead (its last
  argument is not its folder): its row failed and its ``outputs.tmp`` deleted while it trained.

No GPU here: the runner is handed the ids a GPU server's would be (as ``test_gpus_per_process.py`` does), its jobs'
workers write down what they see, and a foreground run is a process whose command line is one (it sleeps). Every
process started here is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from subnetviz.errors import JobError
from subnetviz.jobs.registry import creation_time, is_alive, process_start
from subnetviz.jobs.runner import JobRunner
from subnetviz.jobs.scheduler import UNKNOWN_GPUS, held_gpus
from tests.integration.test_gpus_per_process import SEES, _job, _seen, _status, server, tiny  # noqa: F401

HOLD = "import time; time.sleep(120)"


def _wait_for(pred, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _foreground(rd: Path, args: list[str], *, cwd: Path | None = None, **env: str) -> subprocess.Popen:
    """A process that is ``rd``'s foreground ``train`` as far as anything outside it sees: its command line is
    ``... train ARGS``, and ``rd`` holds its config.json and its foreground.json (its pid and start). Its
    environment: this one's without a GPU setting or a job's mark, plus ``env``."""
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "config.json").write_text(json.dumps({"kind": "train", "name": "fg run"}))
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SUBNETVIZ_DEVICE")}
    base = {k: v for k, v in base.items() if not k.startswith("SUBNETVIZ_JOB")}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, "train", *args], cwd=cwd, env={**base, **env}, start_new_session=True
    )
    # (until its command line reads back: a process just started may show none yet, and a rebuild skip it)
    _wait_for(lambda: "train" in psutil.Process(proc.pid).cmdline())
    (rd / "foreground.json").write_text(json.dumps({"pid": proc.pid, "pid_start": creation_time(proc.pid)}))
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def _kill_workers(runner: JobRunner) -> None:
    for rec in runner.registry.rows():
        if rec.pid and process_start(rec.pid) is not None:
            try:
                os.killpg(rec.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _lose_registry(root: Path) -> None:
    """Move the registry aside (as the damaged-registry message advises): the next runner rebuilds it."""
    reg = root / "registry.sqlite"
    os.rename(reg, root.parent / "registry.aside")
    for suffix in ("-wal", "-shm"):
        Path(str(reg) + suffix).unlink(missing_ok=True)


def _gpu_runner(root: Path) -> JobRunner:
    return JobRunner(root, gpus=["0", "1", "2", "3"], command=[sys.executable, "-c", SEES])


# --- 1. a multi-process run where SUBNETVIZ_DEVICE names one GPU ---------------------------------------------------


def test_a_ddp_run_where_the_device_names_a_gpu_gets_one_gpu_per_process(tiny, server, monkeypatch):  # noqa: F811
    """Before: given GPU 1 alone ("1"), seen as cuda:0; its launch then refused 2 processes on 1 GPU."""
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cuda:1")
    two = server.submit(_job(tiny, strategy="ddp", num_processes=2))
    assert _seen(server, two) == "0,1" and server.registry.get(two).gpu == "0,1"


def test_a_ddp_run_where_the_device_names_a_gpu_not_handed_out_is_queued(tiny, server, monkeypatch):  # noqa: F811
    """Before: refused ("device 'cuda:7' names GPU 7, which this server does not give to jobs"), though its ranks
    never use GPU 7. A single-process run on that device is still refused: it would train on GPU 7."""
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cuda:7")
    three = server.submit(_job(tiny, strategy="fsdp2", num_processes=3))
    assert _seen(server, three) == "0,1,2"
    with pytest.raises(JobError, match="names GPU 7, which this server does not give to jobs"):
        server.submit(_job(tiny))


# --- 2. a rebuilt registry keeps what the live runs hold --------------------------------------------------------------


def test_a_rebuilt_registry_never_hands_out_the_gpus_its_live_workers_hold(tiny, server):  # noqa: F811
    """Before: the rebuilt rows had no gpu, and two new runs were given GPUs 0 and 1,2, held by the live ones."""
    root = Path(server.root)
    two = server.submit(_job(tiny, strategy="ddp", num_processes=2))
    one = server.submit(_job(tiny))
    assert (_seen(server, two), _seen(server, one)) == ("0,1", "2")
    _lose_registry(root)
    rebuilt = _gpu_runner(root)
    try:
        assert sorted(rebuilt.adopted) == sorted([two, one])
        assert (rebuilt.registry.get(two).gpu, rebuilt.registry.get(one).gpu) == ("0,1", "2")
        new_one = rebuilt.submit(_job(tiny))
        new_two = rebuilt.submit(_job(tiny, strategy="ddp", num_processes=2))
        assert _seen(rebuilt, new_one) == "3"
        assert _status(rebuilt, new_two) == "queued"  # no two free GPUs
        held = [g for r in rebuilt.registry.rows(status="running") for g in held_gpus(r.gpu)]
        assert sorted(held) == ["0", "1", "2", "3"]
    finally:
        _kill_workers(rebuilt)


def test_a_rebuilt_registry_leaves_the_gpus_free_of_a_worker_given_none(tiny, server):  # noqa: F811
    """regressions13: a live worker its runner gave no GPU (a Ray job's local proxy, a runner handing out none) was
    rebuilt as holding every GPU ("*"), and a new local job waited beside GPUs 1-3 free."""
    root = Path(server.root)
    gpuless = JobRunner(root, gpus=[], command=[sys.executable, "-c", SEES])
    remote = gpuless.submit(_job(tiny))
    assert _status(gpuless, remote) == "running" and gpuless.registry.get(remote).gpu is None
    local = server.submit(_job(tiny))
    assert _seen(server, local) == "0"
    _lose_registry(root)
    rebuilt = _gpu_runner(root)
    try:
        assert sorted(rebuilt.adopted) == sorted([remote, local])
        assert (rebuilt.registry.get(remote).gpu, rebuilt.registry.get(local).gpu) == (None, "0")
        assert _seen(rebuilt, rebuilt.submit(_job(tiny))) == "1"
    finally:
        _kill_workers(rebuilt)


@pytest.mark.parametrize(
    ("env", "row_gpu", "new_sees"),
    [
        ({}, UNKNOWN_GPUS, None),  # which GPUs it uses is not known: none is handed out while it runs
        ({"CUDA_VISIBLE_DEVICES": "0, 2"}, "0,2", "1"),
        ({"SUBNETVIZ_DEVICE": "cpu"}, None, "0"),  # it trains on the CPU
    ],
)
def test_a_foreground_run_adopted_by_a_rebuild_holds_the_gpus_its_environment_names(
    tiny,  # noqa: F811
    server,  # noqa: F811
    env,
    row_gpu,
    new_sees,
):
    """Before: a foreground run adopted by a rebuild held no GPU: a new job was given GPU 0 beside it, whichever it
    trained on. Once it ends, its GPUs are free again."""
    root = Path(server.root)
    rd = root / "mine"
    fg = _foreground(rd, ["--run-dir", str(rd), "--config", "c.json"], **env)
    try:
        rebuilt = _gpu_runner(root)
        try:
            assert rebuilt.adopted == ["mine"]
            row = rebuilt.registry.get("mine")
            assert (row.status, row.pid, row.gpu) == ("running", fg.pid, row_gpu)
            new = rebuilt.submit(_job(tiny))
            if new_sees is None:
                assert _status(rebuilt, new) == "queued"
                _stop(fg)  # it ends: the GPUs it might have held are free
                rebuilt.poll()
                assert rebuilt.registry.get("mine").status == "failed"
                assert _seen(rebuilt, new) == "0"
            else:
                assert _seen(rebuilt, new) == new_sees
        finally:
            _kill_workers(rebuilt)
    finally:
        _stop(fg)


# --- 3. a clock step while an adopted foreground run trains ---------------------------------------------------------


@pytest.mark.parametrize("how", ["--run-dir D --config C", "--run-dir=mine --config C, relative to its folder"])
def test_an_adopted_foreground_run_lives_through_a_clock_step(tmp_path, monkeypatch, how):
    """Before: once the process's creation time differed from the row's by over 1 s (a clock step), the run counted
    as alive only if its last argument was its folder; ``--config C`` came last, so the next poll failed the run
    and deleted its outputs.tmp while it trained."""
    for var in ("SUBNETVIZ_RAY_ADDRESS", "SUBNETVIZ_RAY_ADDRESSES", "SUBNETVIZ_JOB"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "runs"
    rd = root / "mine"
    if how.startswith("--run-dir D"):
        fg = _foreground(rd, ["--run-dir", str(rd), "--config", "c.json"])
    else:
        fg = _foreground(rd, ["--run-dir=mine", "--config", "c.json"], cwd=root)
    try:
        (rd / "outputs.tmp").mkdir()
        runner = JobRunner(root, gpus=[], command=[sys.executable, "-c", HOLD])
        assert runner.adopted == ["mine"] and runner.registry.get("mine").status == "running"
        with runner.registry.transaction() as con:  # the clock stepped 5 s since the row recorded the start
            runner.registry.update(con, "mine", pid_start=runner.registry.get("mine", con).pid_start - 5.0)
        runner.poll()
        row = runner.registry.get("mine")
        assert (row.status, row.error) == ("running", None)
        assert (rd / "outputs.tmp").is_dir() and fg.poll() is None
        # Only the process the folder records: another that names the folder, after the same step, is not the run's.
        (rd / "foreground.json").write_text(json.dumps({"pid": fg.pid + 100000, "pid_start": 1.0}))
        assert not is_alive(row)
        assert is_alive(replace(row, pid_start=creation_time(fg.pid)))  # (no step: its pid and start suffice)
    finally:
        _stop(fg)
