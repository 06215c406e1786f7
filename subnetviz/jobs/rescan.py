"""A job registry rebuilt from its run folders.

The registry is an index, not the record: each run folder holds all its row needs (``config.json`` as queued,
``status.json`` as its worker last wrote it). A registry lost, moved aside as damaged, or emptied is rebuilt from the
run folders beside it when a runner finds it empty (:class:`~subnetviz.jobs.runner.JobRunner`), and
``subnetviz runs --rescan`` registers folders that no row names (a registry restored from an older copy):
:func:`adopt_run_folders`. A run whose process still works in its folder is registered running, left to it: a
queued job's worker, or a ``subnetviz train --run-dir`` in the foreground (:func:`_workers`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import psutil

from subnetviz.jobs.context import CANCEL_FILE, STATUS_FILE, read_json
from subnetviz.jobs.registry import (
    FOREGROUND_FILE,
    JOB_ENV,
    TERMINAL,
    Registry,
    RunRecord,
    creation_time,
    foreground_run_dir,
    process_start,
    same_folder,
)
from subnetviz.jobs.scheduler import (
    CVD,
    DEVICE_ENV,
    JOB_GPU_ENV,
    MAX_TEXT,
    UNKNOWN_GPUS,
    discard_outputs,
    ended_at,
    kill_leftovers,
    progress_of,
    publish_outputs,
)

REBUILT = (
    "no final status in its run folder when the registry was rebuilt from the run folders (it was queued, or its "
    "worker was stopped or crashed); launch it again"
)


def _run_folders(root: Path) -> list[Path]:
    """The folders of ``root`` holding a ``config.json`` (runs), by name. A name SQLite cannot hold as text (bytes
    that are not UTF-8) is left out."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    found = []
    for p in entries:
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            continue
        if not p.name.startswith(".") and (p / "config.json").is_file():
            found.append(p)
    return found


def _recorded_by(folder: Path, pid: int) -> bool:
    """Whether ``folder`` is the run folder that process ``pid`` made as a foreground ``train --run-dir``: its
    :data:`~subnetviz.jobs.registry.FOREGROUND_FILE` names that pid and that process's start (a pid reused since
    starts later). A command line alone proves nothing: any process may name any folder in it."""
    record = read_json(folder / FOREGROUND_FILE)
    start = process_start(pid)
    return (
        record.get("pid") == pid
        and isinstance(record.get("pid_start"), (int, float))
        and start is not None
        and abs(float(record["pid_start"]) - start) < 1e-3
    )


def _held_gpus(env: dict[str, str]) -> str | None:
    """The GPUs a live run's process holds, from its environment: the ids a starter gave it
    (:data:`~subnetviz.jobs.scheduler.JOB_GPU_ENV`), else its ``CUDA_VISIBLE_DEVICES`` (a worker of an older version,
    a foreground run started with it set); None (none) when that hides every GPU, for a queued job's worker given
    none, or where the process trains on the CPU (``SUBNETVIZ_DEVICE=cpu``, a foreground run); else :data:`~subnetviz.jobs.scheduler.UNKNOWN_GPUS`: it may use
    any, so none is handed out while it runs."""
    given = env.get(JOB_GPU_ENV) or env.get(CVD)
    if given is None and env.get(JOB_ENV) is not None:  # a queued job's worker its runner gave no GPU (a Ray job's
        return None  # proxy, a runner handing out none): recorded as "*", it held every GPU and stalled the queue
    if given is None:
        return None if (env.get(DEVICE_ENV) or "").strip().startswith("cpu") else UNKNOWN_GPUS
    return ",".join(g.strip() for g in given.split(",") if g.strip()) or None


def _workers(folders: list[Path]) -> dict[str, tuple[int, str | None]]:
    """The live workers of ``folders``: real folder -> (pid, the GPUs it holds, :func:`_held_gpus`; a registry
    rebuilt while it runs must not hand them out again). A queued job's worker carries its folder as its
    :data:`~subnetviz.jobs.registry.JOB_ENV` and ends its command line with it, as every starter starts one (the
    oldest, a wrapper's own, when there are several; never a rank it launched, whose command names no folder). A
    ``train --run-dir FOLDER`` in the foreground (:func:`~subnetviz.jobs.worker.main_train`), which no starter
    started, names its folder in its command line only: its environment is its shell's (the mark it sets reaches
    only what it starts), so it is found by its command line, the folder read from the process's own folder."""
    wanted = {os.path.realpath(f) for f in folders}
    found: dict[str, tuple[float, int, str | None]] = {}
    for proc in psutil.process_iter():
        try:
            env, command = proc.environ(), proc.cmdline()
            marked = env.get(JOB_ENV)
            if marked is not None:  # a job's worker, or a process its job started
                real = os.path.realpath(marked)
                if not (command and same_folder(command[-1], real)):
                    continue
            elif (named := foreground_run_dir(command)) is not None:
                real = os.path.realpath(os.path.join(proc.cwd(), named))
                if real in wanted and not _recorded_by(Path(real), proc.pid):
                    continue  # (another process that names the folder: a script's own --run-dir, a mimic)
            else:
                continue
            if real not in wanted or (start := process_start(proc.pid)) is None:
                continue
            if real not in found or start < found[real][0]:
                found[real] = (start, proc.pid, _held_gpus(env))
        except (psutil.Error, OSError, ValueError):  # gone meanwhile, or another user's
            continue
    return {folder: (pid, gpu) for folder, (_, pid, gpu) in found.items()}


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _rebuilt(folder: Path, worker: tuple[int, str | None] | None) -> RunRecord | None:
    """The registry row of the run in ``folder`` from what the folder holds; None when it is no job's folder (its
    ``config.json`` names no kind). A run whose worker lives (``worker``: its pid and the GPUs it holds) is running,
    left to it, with those GPUs as its ``gpu``; one that ended
    gets its final status, or is failed (:data:`REBUILT`) with none; a cancel flag without one reads cancelled.
    Its outputs are published or discarded as :func:`~subnetviz.jobs.scheduler.settle` does."""
    config = read_json(folder / "config.json")
    kind, name = config.get("kind"), config.get("name")
    if not isinstance(kind, str) or not kind.strip():
        return None
    status = read_json(folder / STATUS_FILE)
    heard = [t for f in ("config.json", STATUS_FILE, "log.txt") if (t := _mtime(folder / f)) is not None]
    created, last = min(heard, default=time.time()), max(heard, default=time.time())
    rec = RunRecord(
        folder.name, kind, name if isinstance(name, str) else None, "failed", None, None, created,
        None, None, None, None, {}, None, str(folder), config,
    )  # fmt: skip
    rec = replace(rec, **progress_of(status))
    state = status.get("state")
    if worker is not None and not (isinstance(state, str) and state in TERMINAL):  # (a run that ended is not its)
        pid, gpu = worker
        start = creation_time(pid)
        return replace(rec, status="running", pid=pid, pid_start=start, started=start, gpu=gpu)
    error = status.get("error")
    if isinstance(state, str) and state in TERMINAL:
        error = None if error is None else (error if isinstance(error, str) else repr(error))[:MAX_TEXT]
        if state == "succeeded" and (problem := publish_outputs(folder)):
            state, error = "failed", problem
    else:
        if (folder / "log.txt").exists():  # it was started: what its worker launched goes with it
            kill_leftovers(folder)
        state, error = (
            ("cancelled", "cancelled by the user") if (folder / CANCEL_FILE).exists() else ("failed", REBUILT)
        )
    if state != "succeeded":
        discard_outputs(folder)
    started = ended_at(status.get("started"), 0.0) or None  # (when its worker started, as it recorded; else unknown)
    return replace(rec, status=state, error=error, started=started, ended=ended_at(status.get("ended"), last))


def adopt_run_folders(
    registry: Registry, *, only_when_empty: bool = False, names: Collection[str] | None = None
) -> list[str]:
    """Register the run folders beside ``registry`` that no row names (a registry lost, moved aside, emptied or
    restored from an older copy), each from its ``config.json`` and ``status.json`` (:func:`_rebuilt`); its id is
    its folder's name. A run already registered is never touched. ``only_when_empty``: only when the registry
    holds no run at all; ``names``: only the folders of those names (a ``train --run-dir`` that has ended). Returns
    the ids registered, oldest first."""
    if only_when_empty and not registry.empty():
        return []
    folders = [f for f in _run_folders(registry.root) if names is None or f.name in names]
    if not folders:
        return []
    added = []
    with registry.transaction() as con:  # (one at a time: two runners finding it empty never register a run twice)
        have = {row[0] for row in con.execute("SELECT id FROM runs")}
        if only_when_empty and have:
            return []
        new = [f for f in folders if f.name not in have]
        workers = _workers(new) if new else {}
        for rec in sorted(filter(None, (_rebuilt(f, workers.get(os.path.realpath(f))) for f in new)), key=_age):
            registry.insert(con, rec)
            added.append(rec.id)
    return added


def _age(rec: RunRecord) -> tuple[float, str]:
    return rec.created, rec.id
