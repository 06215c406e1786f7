"""The queue: settle runs whose process ended, and start queued runs while slots are free.

Nothing has to watch the queue. :func:`advance` is called by every runner's poll (pages, the
``runs`` CLI, a server that starts: that is how a killed worker is recovered) *and* by each worker
at the end of its own job (:func:`finish`), so a finished job frees its slot and starts the next
one with no page open. It runs in one ``BEGIN IMMEDIATE`` transaction of the registry: one
advancer at a time, so two workers finishing together never start the same queued run twice, and
the limit counts the running rows of every runner on the root.

A queued run carries its ``launch`` (the worker command, ``max_concurrent``, GPUs and read policy of
the runner that queued it): whoever starts it starts it the same way. The started worker waits for
its row to name it (:func:`wait_claimed`) before it does anything, so a starter that died between
starting a process and committing its row never leaves a second copy of a run working.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from subnetviz.config import RAY_ADDRESS_ENV
from subnetviz.errors import JobError
from subnetviz.jobs.context import STATUS_FILE, read_json
from subnetviz.jobs.registry import (
    INT64_MAX,
    INT64_MIN,
    JOB_ENV,
    TERMINAL,
    Registry,
    RunRecord,
    creation_time,
    is_alive,
    is_job_process,
    same_folder,
    working_elsewhere,
)

REGISTRY_FILE = "registry.sqlite"
CVD = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Launch:
    """How the runner that queued a run starts it (stored with the run as its ``launch``)."""

    command: list[str]  # the worker command; the run folder is appended
    max_concurrent: int  # start only while fewer runs than this are running (every runner counted)
    gpus: list[str]  # device ids to hand out, one per running job
    cuda_visible_devices: str | None = None  # the submitter's own, for a job given no GPU
    # The submitter's read policy (:func:`read_policy`): the job runs under it whoever starts it. None: a run
    # queued by an older version, which runs under its starter's.
    read_env: dict[str, str | None] | None = None

    @classmethod
    def of(cls, rec: RunRecord, default: Launch) -> Launch:
        """``rec``'s launch, or ``default`` for a run queued by an older version (no launch stored)."""
        if not rec.launch:
            return default
        d = rec.launch
        read_env = d.get("read_env")
        if isinstance(read_env, dict):
            read_env = {k: v for k, v in read_env.items() if k in READ_POLICY_ENV and (v is None or isinstance(v, str))}
        else:
            read_env = None
        return cls(
            list(d["command"]), int(d["max_concurrent"]), list(d["gpus"]), d.get("cuda_visible_devices"), read_env
        )

    def to_dict(self) -> dict:
        return asdict(self)


READ_POLICY_ENV = ("SUBNETVIZ_ENFORCE_ROOTS", "SUBNETVIZ_ROOTS", "SUBNETVIZ_DEVICE")


def within_starters(read_env: dict[str, str | None] | None, environ: Mapping[str, str] | None) -> dict | None:
    """The read policy a job runs under: its submitter's (``read_env``, :func:`read_policy`), kept inside its
    starter's where the starter (``environ``, default this process's) enforces roots (a server strangers open): a
    job queued under wider settings (a home copied from a laptop, its jobs queued there) read outside this server's
    roots. Then enforced, its roots those of the submitter's that lie within the starter's (:func:`allowed_roots`;
    the job's home is always one): a job whose inputs lie outside fails, saying so. None (a run queued by an older
    version) runs under its starter's, as before."""
    from subnetviz.config import allowed_roots, home

    starter = os.environ if environ is None else environ
    if read_env is None or starter.get("SUBNETVIZ_ENFORCE_ROOTS") != "1":
        return read_env
    mine = allowed_roots()
    listed = read_env.get("SUBNETVIZ_ROOTS") or ""
    theirs = [Path(p).resolve() for p in listed.split(os.pathsep) if p.strip()]
    kept = [r for r in theirs if any(r == m or m in r.parents for m in mine)]
    kept += [m for m in mine if any(r in m.parents for r in theirs)]  # (a root of mine inside a wider one of theirs)
    roots = os.pathsep.join(dict.fromkeys(str(r) for r in kept)) or str(home())
    return {**read_env, "SUBNETVIZ_ENFORCE_ROOTS": "1", "SUBNETVIZ_ROOTS": roots}


def read_policy() -> dict[str, str | None]:
    """This process's read policy, as a job it queues must run under it: whether the roots are enforced
    (``SUBNETVIZ_ENFORCE_ROOTS``), and the roots as this process resolves them (its home, its
    ``SUBNETVIZ_ROOTS`` or, without them, its HF cache and current folder). A job queued by the app but started
    by ``subnetviz runs`` in a shell ran with the shell's policy: no enforced roots, and the shell's own. The device
    ``auto`` stands for (``SUBNETVIZ_DEVICE``) travels the same way: checked at submit, trained on by the job."""
    from subnetviz.config import allowed_roots

    return {
        "SUBNETVIZ_ENFORCE_ROOTS": os.environ.get("SUBNETVIZ_ENFORCE_ROOTS"),
        "SUBNETVIZ_ROOTS": os.pathsep.join(str(r) for r in allowed_roots()),
        "SUBNETVIZ_DEVICE": os.environ.get("SUBNETVIZ_DEVICE"),
    }


DEVICE_ENV = "SUBNETVIZ_DEVICE"
JOB_GPU_ENV = "SUBNETVIZ_JOB_GPU"
"""Set in a worker's environment to the GPU id it was given (:func:`start`): its only visible GPU, ``cuda:0`` in it."""


def cuda_index(device) -> int | None:
    """N of a device ``cuda:N`` (ASCII digits), else None."""
    if not isinstance(device, str):
        return None
    kind, _, index = device.strip().partition(":")
    return int(index) if kind == "cuda" and index.isascii() and index.isdigit() else None


def job_device(config: dict, launch: Launch) -> str | None:
    """The device a job asks for: its config's ``device`` unless blank or ``auto``, else the ``SUBNETVIZ_DEVICE``
    of its read policy (the starter's own for a run queued by an older version, which carried none)."""
    device = config.get("device")
    if isinstance(device, str) and device.strip() not in ("", "auto"):
        return device.strip()
    env = launch.read_env.get(DEVICE_ENV) if launch.read_env is not None else os.environ.get(DEVICE_ENV)
    return (env or "").strip() or None


def named_gpu(device: str | None, launch: Launch) -> str | None:
    """The GPU id that ``cuda:N`` names as the submitter's torch counts its GPUs: the Nth of the submitter's
    ``CUDA_VISIBLE_DEVICES``, or N when it set none; None when ``device`` names no GPU or the submitter sees no Nth."""
    n = cuda_index(device)
    if n is None:
        return None
    ids = [d.strip() for d in (launch.cuda_visible_devices or "").split(",") if d.strip()]
    if not ids:  # it set none (or hid them all, and its runner was given GPU ids by hand): N is GPU N
        return str(n)
    return ids[n] if n < len(ids) else None


def gpus_wanted(config: dict, launch: Launch) -> int:
    """How many GPUs a job takes: one per process for a multi-process training run (``ddp``, ``fsdp2``, ZeRO) whose
    device is not the CPU, else one. A two-process DDP run was given one GPU, and its launch refused it ("it has 1").

    A device that names one GPU (``SUBNETVIZ_DEVICE=cuda:1``, what ``auto`` stands for on a server) counts as CUDA
    here: such a run takes the device's kind only, each rank training on ``cuda:LOCAL_RANK`` whatever the index
    (:func:`subnetviz.training.sharded.process_device`), so it wants one GPU per process, not the GPU it names."""
    if config.get("kind") != "train" or config.get("strategy", "single") == "single":
        return 1
    n = config.get("num_processes", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 1:
        return 1
    device = job_device(config, launch)
    if device is not None and device.startswith("cpu"):
        return 1
    return n


UNKNOWN_GPUS = "*"
"""A running row's ``gpu`` when which GPUs its process holds is not known: a live run adopted by a registry rebuilt
from the run folders (:mod:`subnetviz.jobs.rescan`) whose environment names none (a ``train --run-dir`` in the
foreground, a job started with no GPU of its own). It counts as holding every GPU a runner hands out
(:func:`advance`): no job is given one until that run ends."""


def held_gpus(gpu: str | None) -> list[str]:
    """The GPU ids a running job holds, from its registry row's ``gpu`` (``"2"``, or ``"2,3"`` for a job given one
    per process; :data:`UNKNOWN_GPUS` when not known)."""
    return [g for g in (gpu or "").split(",") if g]


def as_seen_with_one_gpu(device):
    """A device as a job given one GPU sees it: ``cuda:N`` is that GPU, ``cuda:0`` in the job; others unchanged."""
    return "cuda:0" if cuda_index(device) is not None else device


def default_launch(max_concurrent: int = 1, gpus: list[str] | None = None) -> Launch:
    return Launch(
        [sys.executable, "-m", "subnetviz", "job"], max_concurrent, list(gpus or []), os.environ.get(CVD), read_policy()
    )


# --- settling and starting (inside a registry transaction) ----------------------------------------

OUTPUTS, OUTPUTS_TMP, OUTPUTS_FAILED = "outputs", "outputs.tmp", "outputs.failed"
MAX_METRICS = 100  # metrics kept of a status (the latest ones a page shows)
MAX_TEXT = 2000  # characters kept of a job's error message


def _count(value) -> int | None:
    """A step or total of a job's status as an int SQLite holds (clamped to int64); None if it is no number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    return min(max(value, INT64_MIN), INT64_MAX)


def _metric(value):
    """A latest metric of a status: a float (NaN and infinities kept: JSON text holds them for Python, and a
    NaN loss is news), a short text, or None for what is neither (a list, an object)."""
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def progress_of(status: dict) -> dict:
    """The registry columns a job's ``status.json`` gives while it runs (``step``, ``total``, ``last_metrics``),
    checked: the job writes that file, and what it holds must never reach SQLite unchecked."""
    progress = {k: v for k in ("step", "total") if (v := _count(status.get(k))) is not None}
    metrics = status.get("metrics")
    if isinstance(metrics, dict):
        kept = {str(k)[:200]: m for k, v in list(metrics.items())[:MAX_METRICS] if (m := _metric(v)) is not None}
        if kept:
            progress["last_metrics"] = kept
    return progress


def ended_at(value, default: float | None = None) -> float:
    """When the job says it ended: a time no later than now (with a day's slack for clocks), else ``default``
    (now when None)."""
    now = time.time()
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= now + 86400:
        return now if default is None else default
    return float(value)


def _text(value) -> str | None:
    return None if value is None else (value if isinstance(value, str) else repr(value))[:MAX_TEXT]


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def publish_outputs(run_dir: Path) -> str | None:
    """Make sure a succeeded run's results are in ``outputs/``; the reason it is failed instead, if they cannot be.

    The worker writes its final ``succeeded`` status before it renames ``outputs.tmp`` to ``outputs``: a worker
    killed between the two left a succeeded job whose outputs are complete but not yet in place. The rename is
    done here. A leftover ``outputs.tmp`` beside ``outputs`` (a rank that wrote on) is removed.
    """
    tmp, out = run_dir / OUTPUTS_TMP, run_dir / OUTPUTS
    if tmp.is_dir() and not os.path.lexists(out):
        try:
            os.replace(tmp, out)
        except OSError as exc:
            return f"the job succeeded but its outputs could not be moved into place ({exc.strerror or exc})"
    if not out.is_dir():
        return "the job said it succeeded but left no outputs folder"
    shutil.rmtree(tmp, ignore_errors=True)
    return None


def discard_outputs(run_dir: Path) -> None:
    """A run that did not succeed shows no outputs: ``outputs.tmp`` is removed, and an ``outputs/`` (published by
    a worker killed before it wrote its final status, or by one of an older version) is moved aside to
    ``outputs.failed`` (kept to look at), so nothing that lists ``runs/*/outputs`` offers it as complete."""
    shutil.rmtree(run_dir / OUTPUTS_TMP, ignore_errors=True)
    out = run_dir / OUTPUTS
    if not os.path.lexists(out):
        return
    for n in range(100):
        aside = run_dir / (OUTPUTS_FAILED if n == 0 else f"{OUTPUTS_FAILED}.{n}")
        if not os.path.lexists(aside):
            try:
                os.rename(out, aside)
                return
            except OSError:
                break
    if out.is_symlink() or not out.is_dir():
        out.unlink(missing_ok=True)
    else:
        shutil.rmtree(out, ignore_errors=True)


def settle(registry: Registry, con, rec: RunRecord, *, over: bool = False) -> None:
    """Bring a running row up to date from its run folder.

    While its process lives: progress only. Once it is gone (or ``over``: the worker says its job
    has returned): the final status from ``status.json``, or failed when it left none (killed,
    crashed). A succeeded run gets its outputs put in place (:func:`publish_outputs`); any other status
    removes them (:func:`discard_outputs`), so partial outputs never look complete. What the status
    file holds is checked before it reaches the registry (:func:`progress_of`). A run of another home
    (:attr:`~subnetviz.jobs.registry.RunRecord.elsewhere`) is failed here, its folder and process left alone.
    """
    if rec.elsewhere is not None:
        registry.update(con, rec.id, status="failed", error=one_line(rec.error or "", MAX_TEXT), ended=time.time())
        return
    run_dir = Path(rec.run_dir)
    status = read_json(run_dir / STATUS_FILE)
    progress = progress_of(status)
    if not over and is_alive(rec):
        if progress:
            registry.update(con, rec.id, **progress)
        return
    state = status.get("state")
    if isinstance(state, str) and state in TERMINAL:
        error = _text(status.get("error"))
    elif other := working_elsewhere(rec):  # (a copied home: the row names the original's process)
        state = "failed"
        error = (
            f"its process (pid {rec.pid}) works on {other}, another home's copy of this run: left alone; "
            "launch the job again in this home"
        )
    elif not run_dir.is_dir():  # (no log.txt to send anyone to)
        state, error = "failed", "the job process ended without a final status, and its run folder is gone (deleted)"
    else:
        state, error = "failed", "the job process ended without a final status (killed or crashed); see log.txt"
    kill_leftovers(run_dir)  # its job is over: what it started goes with it (before outputs.tmp is removed)
    if state == "succeeded" and (problem := publish_outputs(run_dir)):
        state, error = "failed", problem
    if state != "succeeded":
        discard_outputs(run_dir)
    registry.update(con, rec.id, status=state, error=error, ended=ended_at(status.get("ended")), **progress)


def abandon(registry: Registry, con, rec: RunRecord, reason: str, *, over: bool = False) -> None:
    """Mark a running row failed with ``reason`` when it could not be settled: its process (unless ``over``:
    the caller is that process, finishing) and what it started are killed, its outputs discarded."""
    run_dir = Path(rec.run_dir)
    steps = [lambda: kill_leftovers(run_dir), lambda: discard_outputs(run_dir)]
    if rec.elsewhere is not None:  # another home's run: nothing of it is touched
        steps = []
    elif not over:
        steps.insert(0, lambda: _stop_worker(rec))
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - what made settling fail may fail here too: the row is marked anyway
            pass
    registry.update(con, rec.id, status="failed", error=one_line(reason, MAX_TEXT), ended=time.time())


def _stop_worker(rec: RunRecord) -> None:
    if is_job_process(rec):
        signal_job(rec.pid, signal.SIGKILL)


def signal_job(pid: int, sig: int) -> None:
    """``sig`` to a job's process group (a queued job's worker leads its own session: pgid == pid), or to the process
    itself where it leads none: a ``train --run-dir`` in the foreground, adopted by a rebuilt registry, started by a
    script without job control (the group signal found no such group; the run trained on). Asked only of a process
    :func:`~subnetviz.jobs.registry.is_job_process` took for the run's."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except OSError:  # (gone meanwhile, or another user's)
        pass


def kill_leftovers(run_dir: Path) -> int:
    """SIGKILL every process still marked as ``run_dir``'s (:data:`JOB_ENV`): a job's ranks run in sessions of
    their own (``accelerate launch``, torch elastic), so a worker killed with SIGKILL (or the OOM killer) left
    them training for a run already marked failed, its slot given to the next job, and writing a model into the
    ``outputs.tmp`` removed for it. Returns how many were killed."""
    import psutil

    mine, killed = os.path.realpath(run_dir), 0  # (the folder as any runner spells it: a home reached by a link)
    try:  # this process and its ancestors (a wrapper that started the worker carries the mark too) are spared
        spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    except psutil.Error:
        spared = {os.getpid()}
    for proc in psutil.process_iter():
        try:
            folder = proc.environ().get(JOB_ENV) if proc.pid not in spared else None
            if folder is not None and (folder == mine or os.path.realpath(folder) == mine):
                proc.kill()
                killed += 1
        except (psutil.Error, OSError):  # gone meanwhile, or another user's
            continue
    return killed


def start(
    registry: Registry, con, rec: RunRecord, launch: Launch, gpu: str | None, environ: Mapping[str, str] | None = None
) -> subprocess.Popen | None:
    """Start ``rec``'s worker (its own session, output to ``log.txt``) and mark it running; None if it failed.
    A run of another home is failed instead: its folder is not this home's to run in.

    ``environ``: the environment to start it from (default: this process's). A worker starting the next job gives
    the one it was started with: a job changes its own process's (a single-process FSDP2 run sets ``RANK``,
    ``WORLD_SIZE``, ``MASTER_PORT``), and the next job must not inherit that."""
    if rec.elsewhere is not None:
        registry.update(con, rec.id, status="failed", ended=time.time(), error=one_line(rec.error or "", MAX_TEXT))
        return None
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
    env = dict(os.environ if environ is None else environ)
    # Where the job's own fan-out goes (the drivers grid, a series): the cluster it runs on. A local
    # worker runs on "this server" even when the server's default cluster is set (a visitor chose it);
    # the Ray proxy names its cluster to the task (ray_backend.main).
    env.pop(RAY_ADDRESS_ENV, None)
    env[JOB_ENV] = str(run_dir)
    pkg_root = str(Path(__file__).resolve().parents[2])  # so the worker imports this very subnetviz
    paths = env["PYTHONPATH"].split(os.pathsep) if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *(p for p in paths if p != pkg_root)])
    # One GPU per job (one per process of a multi-process training run: "2,3"), so concurrent jobs never share a
    # device. A job given none sees what its submitter saw, not the device of the worker that happens to start it.
    want = gpu if gpu is not None else launch.cuda_visible_devices
    if want is None:
        env.pop(CVD, None)
    else:
        env[CVD] = want
    # The read policy the job was submitted under, not the starter's (never wider than what was checked at submit),
    # kept inside the starter's own where it enforces roots.
    for key, value in (within_starters(launch.read_env, environ) or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    # A job given one GPU sees it as cuda:0, whichever it is: a device cuda:N (N, when it named one, picked this
    # GPU in advance()) would name a GPU it cannot see. The worker rewrites its config's device the same way.
    env.pop(JOB_GPU_ENV, None)
    if gpu is not None:
        env[JOB_GPU_ENV] = gpu
        if DEVICE_ENV in env:
            env[DEVICE_ENV] = as_seen_with_one_gpu(env[DEVICE_ENV])
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


def _settle_or_abandon(registry: Registry, con, rec: RunRecord, *, over: bool) -> None:
    try:
        settle(registry, con, rec, over=over)
    except Exception as exc:  # noqa: BLE001 - one run that cannot be settled never stops the others'
        abandon(
            registry, con, rec, f"its status could not be recorded ({type(exc).__name__}: {exc}); stopped", over=over
        )


def advance(
    registry: Registry,
    default: Launch,
    *,
    finished: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[subprocess.Popen]:
    """Settle every running row, then start queued rows (oldest first) while their limit allows.

    ``default``: the launch for queued rows that carry none. ``finished``: the id of the caller's
    own run, whose job has returned (its process is still alive, finishing this). ``environ``: the environment
    to start them from (:func:`start`). Returns the processes started (the caller's children, for it to reap).
    A run whose device names a GPU (``cuda:N``) is given that GPU, and waits for it while another run has it. A
    multi-process training run is given one GPU per process (:func:`gpus_wanted`), and waits until that many are free;
    the GPU its device may name is not its (each rank trains on ``cuda:LOCAL_RANK``). While a running row holds GPUs
    not known (:data:`UNKNOWN_GPUS`) no GPU counts as free: never two jobs on one GPU.
    """
    started = []
    with registry.transaction() as con:
        for rec in registry.rows(con, status="running"):
            _settle_or_abandon(registry, con, rec, over=rec.id == finished)
        running = [r.gpu for r in registry.rows(con, status="running")]
        busy = [g for gpu in running for g in held_gpus(gpu)]
        for rec in registry.rows(con, status="queued"):
            launch = Launch.of(rec, default)
            if len(running) >= launch.max_concurrent:
                break  # first in, first out: a later run never overtakes the head of the queue
            free = [] if UNKNOWN_GPUS in busy else [g for g in launch.gpus if g not in busy]
            device = job_device(rec.config, launch)
            if launch.gpus and (n := gpus_wanted(rec.config, launch)) > 1:
                if len(free) < n:
                    break  # it waits for its GPUs (and, first in first out, so do the runs behind it)
                gpu = ",".join(free[:n])
            elif launch.gpus and not free and launch.max_concurrent <= len(launch.gpus):
                break  # a multi-process run holds the free ones: never two jobs on one GPU the runner hands out
            elif not launch.gpus or cuda_index(device) is None:
                gpu = free[0] if free else None
            elif (named := named_gpu(device, launch)) in launch.gpus:
                if named not in free:
                    break  # it waits for its GPU (and, first in first out, so do the runs behind it)
                gpu = named
            else:  # a GPU its runner does not hand out (refused at submit): it sees what its submitter saw
                gpu = None
            proc = start(registry, con, rec, launch, gpu, environ)
            if proc is not None:
                started.append(proc)
                running.append(gpu)
                busy.extend(held_gpus(gpu))
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
    return registry if rec.elsewhere is None and same_folder(rec.run_dir, run_dir) else None


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


def finish(
    registry: Registry,
    run_id: str,
    *,
    start_next: bool = True,
    failure: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[subprocess.Popen]:
    """The worker's last act: record its own final status (from ``status.json``) and advance the queue.

    Queued runs that carry no launch are started the way this run was. Not ``start_next`` (the worker was
    stopped by a signal that was no user's cancel: the server or machine is shutting down): only its own row is
    settled, and the queued runs stay queued for the next runner's poll, after the restart. ``failure``: why the
    worker could not write its final status (its run folder deleted while it ran, a full disk): its row is failed
    with that, in place of what the folder holds. ``environ``: the environment the worker was started with, to
    start the next jobs from (:func:`start`).
    """
    if failure is not None:
        with registry.transaction() as con:
            own = registry.get(run_id, con)
            if own.status == "running":
                abandon(registry, con, own, failure, over=True)
    if not start_next:
        with registry.transaction() as con:
            own = registry.get(run_id, con)
            if own.status == "running":
                _settle_or_abandon(registry, con, own, over=True)
        return []
    own = registry.get(run_id)
    return advance(registry, Launch.of(own, default_launch()), finished=run_id, environ=environ)
