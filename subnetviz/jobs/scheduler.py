"""The queue: settle runs whose process ended, and start queued runs while slots are free.

Nothing has to watch the queue. :func:`advance` is called by every runner's poll (pages, the
``runs`` CLI, a server that starts: that is how a killed worker is recovered) *and* by each worker
at the end of its own job (:func:`finish`), so a finished job frees its slot and starts the next
one with no page open. It runs in one ``BEGIN IMMEDIATE`` transaction of the registry: one
advancer at a time, so two workers finishing together never start the same queued run twice, and
the limit counts the running rows of every runner on the root.

A queued run carries its ``launch`` (the worker command, ``max_concurrent`` and GPUs of the
runner that queued it): whoever starts it starts it the same way. The started worker waits for
its row to name it (:func:`wait_claimed`) before it does anything, so a starter that died between
starting a process and committing its row never leaves a second copy of a run working.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from subnetviz.config import RAY_ADDRESS_ENV
from subnetviz.errors import JobError
from subnetviz.jobs.context import STATUS_FILE, read_json
from subnetviz.jobs.registry import TERMINAL, Registry, RunRecord, creation_time, is_alive

REGISTRY_FILE = "registry.sqlite"
CVD = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Launch:
    """How the runner that queued a run starts it (stored with the run as its ``launch``)."""

    command: list[str]  # the worker command; the run folder is appended
    max_concurrent: int  # start only while fewer runs than this are running (every runner counted)
    gpus: list[str]  # device ids to hand out, one per running job
    cuda_visible_devices: str | None = None  # the submitter's own, for a job given no GPU

    @classmethod
    def of(cls, rec: RunRecord, default: Launch) -> Launch:
        """``rec``'s launch, or ``default`` for a run queued by an older version (no launch stored)."""
        if not rec.launch:
            return default
        d = rec.launch
        return cls(list(d["command"]), int(d["max_concurrent"]), list(d["gpus"]), d.get("cuda_visible_devices"))

    def to_dict(self) -> dict:
        return asdict(self)


def default_launch(max_concurrent: int = 1, gpus: list[str] | None = None) -> Launch:
    return Launch([sys.executable, "-m", "subnetviz", "job"], max_concurrent, list(gpus or []), os.environ.get(CVD))


# --- settling and starting (inside a registry transaction) ----------------------------------------


def settle(registry: Registry, con, rec: RunRecord, *, over: bool = False) -> None:
    """Bring a running row up to date from its run folder.

    While its process lives: progress only. Once it is gone (or ``over``: the worker says its job
    has returned): the final status from ``status.json``, or failed when it left none (killed,
    crashed); any status but succeeded removes ``outputs.tmp``, so partial outputs never look complete.
    """
    run_dir = Path(rec.run_dir)
    status = read_json(run_dir / STATUS_FILE)
    progress = {k: status[k] for k in ("step", "total") if k in status}
    if status.get("metrics"):
        progress["last_metrics"] = status["metrics"]
    if not over and is_alive(rec):
        if progress:
            registry.update(con, rec.id, **progress)
        return
    state = status.get("state")
    if state in TERMINAL:
        error = status.get("error")
    else:
        state, error = "failed", "the job process ended without a final status (killed or crashed); see log.txt"
    kill_leftovers(run_dir)  # its job is over: what it started goes with it (before outputs.tmp is removed)
    if state != "succeeded":
        shutil.rmtree(run_dir / "outputs.tmp", ignore_errors=True)
    registry.update(con, rec.id, status=state, error=error, ended=status.get("ended") or time.time(), **progress)


JOB_ENV = "SUBNETVIZ_JOB"
"""Set to the run folder in a worker's environment (:func:`start`), which every process it starts inherits."""


def kill_leftovers(run_dir: Path) -> int:
    """SIGKILL every process still marked as ``run_dir``'s (:data:`JOB_ENV`): a job's ranks run in sessions of
    their own (``accelerate launch``, torch elastic), so a worker killed with SIGKILL (or the OOM killer) left
    them training for a run already marked failed, its slot given to the next job, and writing a model into the
    ``outputs.tmp`` removed for it. Returns how many were killed."""
    import psutil

    mine, killed = str(run_dir), 0
    try:  # this process and its ancestors (a wrapper that started the worker carries the mark too) are spared
        spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    except psutil.Error:
        spared = {os.getpid()}
    for proc in psutil.process_iter():
        try:
            if proc.pid not in spared and proc.environ().get(JOB_ENV) == mine:
                proc.kill()
                killed += 1
        except (psutil.Error, OSError):  # gone meanwhile, or another user's
            continue
    return killed


def start(registry: Registry, con, rec: RunRecord, launch: Launch, gpu: str | None) -> subprocess.Popen | None:
    """Start ``rec``'s worker (its own session, output to ``log.txt``) and mark it running; None if it failed."""
    run_dir = Path(rec.run_dir)
    if not (run_dir / "config.json").is_file():
        registry.update(
            con,
            rec.id,
            status="failed",
            ended=time.time(),
            error=f"run folder {run_dir} or its config.json disappeared before the start",
        )
        return None
    env = dict(os.environ)
    # Where the job's own fan-out goes (the drivers grid, a series): the cluster it runs on. A local
    # worker runs on "this server" even when the server's default cluster is set (a visitor chose it);
    # the Ray proxy names its cluster to the task (ray_backend.main).
    env.pop(RAY_ADDRESS_ENV, None)
    env[JOB_ENV] = str(run_dir)
    pkg_root = str(Path(__file__).resolve().parents[2])  # so the worker imports this very subnetviz
    paths = env["PYTHONPATH"].split(os.pathsep) if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *(p for p in paths if p != pkg_root)])
    # One GPU per job, so concurrent jobs never share a device. A job given none sees what its
    # submitter saw, not the device of the worker that happens to start it.
    want = gpu if gpu is not None else launch.cuda_visible_devices
    if want is None:
        env.pop(CVD, None)
    else:
        env[CVD] = want
    try:
        with open(run_dir / "log.txt", "ab") as log:
            proc = subprocess.Popen(
                [*launch.command, str(run_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
    except OSError as exc:
        registry.update(con, rec.id, status="failed", ended=time.time(), error=f"could not start: {exc}")
        return None
    registry.update(
        con,
        rec.id,
        status="running",
        pid=proc.pid,
        pid_start=creation_time(proc.pid),
        started=time.time(),
        gpu=gpu,
    )
    return proc


def advance(registry: Registry, default: Launch, *, finished: str | None = None) -> list[subprocess.Popen]:
    """Settle every running row, then start queued rows (oldest first) while their limit allows.

    ``default``: the launch for queued rows that carry none. ``finished``: the id of the caller's
    own run, whose job has returned (its process is still alive, finishing this). Returns the
    processes started (the caller's children, for it to reap).
    """
    started = []
    with registry.transaction() as con:
        for rec in registry.rows(con, status="running"):
            settle(registry, con, rec, over=rec.id == finished)
        busy = [r.gpu for r in registry.rows(con, status="running")]
        for rec in registry.rows(con, status="queued"):
            launch = Launch.of(rec, default)
            if len(busy) >= launch.max_concurrent:
                break  # first in, first out: a later run never overtakes the head of the queue
            free = [g for g in launch.gpus if g not in busy]
            gpu = free[0] if free else None
            proc = start(registry, con, rec, launch, gpu)
            if proc is not None:
                started.append(proc)
                busy.append(gpu)
    return started


# --- the worker's side ---------------------------------------------------------------------------


def registry_of(run_dir: Path) -> Registry | None:
    """The registry that holds the run in ``run_dir`` (``run_dir/../registry.sqlite``), else None.

    None for a run folder made outside a runner (``python -m subnetviz train --run-dir``).
    """
    path = run_dir.parent / REGISTRY_FILE
    if not path.is_file():
        return None
    registry = Registry(path)
    try:
        rec = registry.get(run_dir.name)
    except JobError:  # a folder next to the runs, not one of them
        return None
    return registry if Path(rec.run_dir).resolve() == run_dir.resolve() else None


def wait_claimed(registry: Registry, run_id: str, timeout: float = 30.0) -> bool:
    """Wait until the starter has committed ``run_id`` as running under this process (or a parent:
    the worker command may be a wrapper); False if another process holds it, it is no longer
    queued or running, or the claim did not come within ``timeout`` seconds (the starter died)."""
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}
    deadline = time.monotonic() + timeout
    while True:
        rec = registry.get(run_id)
        if rec.status != "queued":
            return rec.status == "running" and rec.pid in mine
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def finish(registry: Registry, run_id: str) -> list[subprocess.Popen]:
    """The worker's last act: record its own final status (from ``status.json``) and advance the queue.

    Queued runs that carry no launch are started the way this run was.
    """
    own = registry.get(run_id)
    return advance(registry, Launch.of(own, default_launch()), finished=run_id)
