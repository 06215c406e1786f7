"""The job runner: jobs as OS processes, one run folder each, tracked in the SQLite registry.

A run folder ``ROOT/<run_id>/`` holds ``config.json`` (with ``kind``), ``log.txt`` (the process's
stdout and stderr), ``status.json`` (progress; its ``state`` key is written once, at the end),
``metrics.jsonl``, ``outputs.tmp/`` while running and ``outputs/`` once succeeded. A run that
dies mid-way (killed, crashed, machine restarted) is marked failed and its ``outputs.tmp`` is
removed, so partial outputs never look complete.

Entry points: :func:`main_job` (the worker: ``python -m subnetviz job RUN_DIR``) and
:func:`main_train` (``python -m subnetviz train --config FILE``, foreground; works under
``accelerate launch``).

Test jobs: with ``SUBNETVIZ_ALLOW_TEST_JOBS=1`` in the environment, ``{"kind": "python",
"target": "module:function"}`` runs any importable job function (the runner tests use
``tests.training_fixtures:sleep_job``). Without that variable the kind is refused.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from subnetviz.errors import ConfigError, JobError, SubnetvizError, suggest
from subnetviz.jobcontext import CANCEL_FILE, JOB_KINDS, METRICS_FILE, STATUS_FILE, JobContext
from subnetviz.training.registry import COLUMNS, TERMINAL, Registry, RunRecord, is_alive, process_start

if TYPE_CHECKING:  # pandas is imported lazily: the worker process should start fast
    import pandas as pd

TEST_KIND = "python"
TEST_ENV = "SUBNETVIZ_ALLOW_TEST_JOBS"
VALIDATORS = {"train": "subnetviz.training.config:validate_config"}


def _import(target: str):
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def job_function(config: dict):
    """The ``function(config, ctx)`` for ``config["kind"]`` (ConfigError for an unknown kind)."""
    kind = config.get("kind")
    if kind == TEST_KIND:
        if os.environ.get(TEST_ENV) != "1":
            raise ConfigError(f"job kind {TEST_KIND!r} is for tests only (set {TEST_ENV}=1).")
        return _import(str(config.get("target", "")))
    if kind not in JOB_KINDS:
        raise ConfigError(
            f"job kind {kind!r} is unknown; expected one of {sorted(JOB_KINDS)}.{suggest(str(kind), JOB_KINDS)}"
        )
    return _import(JOB_KINDS[kind])


def validate_job_config(config: dict) -> None:
    """Check a job config before anything starts, with the kind's own validator when it has one."""
    if not isinstance(config, dict):
        raise ConfigError(f"a job config must be a dict, got {type(config).__name__}.")
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a job config must be plain JSON (str paths, numbers, lists, dicts): {exc}.") from None
    kind = config.get("kind")
    if kind == TEST_KIND:
        job_function(config)
        return
    if kind not in JOB_KINDS:
        job_function(config)  # raises the unknown-kind error
    target = VALIDATORS.get(kind) or JOB_KINDS[kind].split(":")[0] + ":validate_config"
    module, _, func = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise JobError(f"job kind {kind!r} is not available in this installation ({exc}).") from None
    validator = getattr(mod, func, None)
    if validator is not None:
        validator(config)


def _visible_gpus() -> list[str]:
    """CUDA device ids this process may use (honouring its own ``CUDA_VISIBLE_DEVICES``); [] on CPU."""
    import torch

    n = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


def _jsonable_path(obj):
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


# --- the runner --------------------------------------------------------------------------------


class JobRunner:
    """Submit, poll, cancel and list jobs under ``root`` (default: ``subnetviz.config.runs_dir()``).

    ``max_concurrent``: running jobs allowed at once across every runner on this root (default:
    1 on CPU, the number of GPUs with CUDA). ``command``: the worker command, RUN_DIR appended
    (default ``python -m subnetviz job``). ``gpus``: device ids to hand out (default: the visible
    CUDA devices); each job gets one free id as its ``CUDA_VISIBLE_DEVICES`` (recorded as ``gpu``).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        max_concurrent: int | None = None,
        command: list[str] | None = None,
        *,
        cancel_grace_s: float = 5.0,
        gpus: list[str] | None = None,
    ):
        if root is None:
            from subnetviz.config import runs_dir

            root = runs_dir()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.gpus = list(gpus) if gpus is not None else _visible_gpus()
        if max_concurrent is None:
            max_concurrent = max(1, len(self.gpus))
        if max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1, got {max_concurrent}.")
        self.max_concurrent = int(max_concurrent)
        self.command = list(command) if command else [sys.executable, "-m", "subnetviz", "job"]
        self.cancel_grace_s = cancel_grace_s
        self.registry = Registry(self.root / "registry.sqlite")
        self._children: dict[int, subprocess.Popen] = {}  # only to reap our own zombies; never consulted
        self.poll()

    def submit(self, config: dict, name: str | None = None) -> str:
        """Validate ``config`` (a dict with ``kind``), create its run folder, queue it; returns the run id."""
        try:
            config = json.loads(json.dumps(config, default=_jsonable_path))  # Path objects -> str
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"a job config must be plain JSON (str paths, numbers, lists, dicts): {exc}.") from None
        validate_job_config(config)
        kind = str(config["kind"])
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"
        run_dir = self.root / run_id
        try:
            run_dir.mkdir()
        except FileExistsError:
            raise JobError(f"run folder {run_dir} already exists; refusing to reuse it.") from None
        _write_json(run_dir / "config.json", config)
        rec = RunRecord(
            run_id,
            kind,
            name or config.get("name"),
            "queued",
            None,
            None,
            time.time(),
            None,
            None,
            None,
            None,
            {},
            None,
            str(run_dir),
            config,
        )
        with self.registry.transaction() as con:
            self.registry.insert(con, rec)
        self.poll()
        return run_id

    def poll(self) -> None:
        """Reap finished or dead runs, read their progress, and start queued runs while slots are free."""
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._children.pop(pid, None)  # another thread (Streamlit sessions share a runner) may race us
        with self.registry.transaction() as con:
            running = self.registry.rows(con, status="running")
            for rec in running:
                self._refresh(con, rec)
            busy = [r.gpu for r in self.registry.rows(con, status="running")]
            for rec in self.registry.rows(con, status="queued"):
                if len(busy) >= self.max_concurrent:
                    break
                free = [g for g in self.gpus if g not in busy]
                gpu = free[0] if free else None
                self._start(con, rec, gpu)
                busy.append(gpu)

    def _refresh(self, con, rec: RunRecord) -> None:
        run_dir = Path(rec.run_dir)
        status = _read_json(run_dir / STATUS_FILE)
        progress = {k: status[k] for k in ("step", "total") if k in status}
        if "metrics" in status and status["metrics"]:
            progress["last_metrics"] = status["metrics"]
        if is_alive(rec):
            if progress:
                self.registry.update(con, rec.id, **progress)
            return
        state = status.get("state")
        if state in TERMINAL:
            error = status.get("error")
        else:
            state, error = "failed", "the job process ended without a final status (killed or crashed); see log.txt"
        if state != "succeeded":
            shutil.rmtree(run_dir / "outputs.tmp", ignore_errors=True)
        self.registry.update(
            con, rec.id, status=state, error=error, ended=status.get("ended") or time.time(), **progress
        )

    def _start(self, con, rec: RunRecord, gpu: str | None) -> None:
        run_dir = Path(rec.run_dir)
        if not (run_dir / "config.json").is_file():
            self.registry.update(
                con,
                rec.id,
                status="failed",
                ended=time.time(),
                error=f"run folder {run_dir} or its config.json disappeared before the start",
            )
            return
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])  # so the worker imports this very subnetviz
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu  # one GPU per job, so concurrent jobs never share a device
        try:
            with open(run_dir / "log.txt", "ab") as log:
                proc = subprocess.Popen(
                    [*self.command, str(run_dir)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                )
        except OSError as exc:
            self.registry.update(con, rec.id, status="failed", ended=time.time(), error=f"could not start: {exc}")
            return
        self._children[proc.pid] = proc
        self.registry.update(
            con, rec.id, status="running", pid=proc.pid, pid_start=process_start(proc.pid), started=time.time(), gpu=gpu
        )

    def cancel(self, run_id: str) -> RunRecord:
        """Stop a queued or running job: cancel flag, SIGTERM to its process group, SIGKILL after a grace period."""
        rec = self.get(run_id)
        if rec.finished:
            raise JobError(f"run {run_id} already {rec.status}; nothing to cancel.")
        run_dir = Path(rec.run_dir)
        (run_dir / CANCEL_FILE).write_text(str(time.time()))
        if rec.status == "running" and is_alive(rec):
            self._signal(rec, signal.SIGTERM)
            deadline = time.time() + self.cancel_grace_s
            while is_alive(rec) and time.time() < deadline:
                self._reap(rec.pid)
                time.sleep(0.05)
            if is_alive(rec):
                self._signal(rec, signal.SIGKILL)
                while is_alive(rec) and time.time() < deadline + 5:
                    self._reap(rec.pid)
                    time.sleep(0.05)
        with self.registry.transaction() as con:
            now = self.registry.get(run_id, con)
            if not now.finished:
                if (
                    now.status == "running"
                    and not is_alive(now)
                    and _read_json(run_dir / STATUS_FILE).get("state") == "succeeded"
                ):
                    self._refresh(con, now)  # it finished before the signal arrived: keep its result
                else:
                    shutil.rmtree(run_dir / "outputs.tmp", ignore_errors=True)
                    self.registry.update(
                        con, run_id, status="cancelled", ended=time.time(), error="cancelled by the user"
                    )
        self.poll()
        return self.get(run_id)

    def _signal(self, rec: RunRecord, sig: int) -> None:
        try:
            os.killpg(rec.pid, sig)  # the worker leads its own session: pgid == pid
        except ProcessLookupError:
            pass

    def _reap(self, pid: int | None) -> None:
        proc = self._children.get(pid) if pid is not None else None
        if proc is not None and proc.poll() is not None:
            self._children.pop(pid, None)

    def wait(self, run_id: str, timeout: float = 60.0, interval: float = 0.1) -> RunRecord:
        """Poll until ``run_id`` is finished; JobError after ``timeout`` seconds."""
        deadline = time.time() + timeout
        while True:
            self.poll()
            rec = self.get(run_id)
            if rec.finished:
                return rec
            if time.time() > deadline:
                raise JobError(f"run {run_id} still {rec.status} after {timeout:.0f} s.")
            time.sleep(interval)

    def get(self, run_id: str) -> RunRecord:
        return self.registry.get(run_id)

    def list_runs(self) -> pd.DataFrame:
        """One row per run, newest first; columns as :class:`RunRecord` (config and metrics as dicts)."""
        import pandas as pd

        recs = self.registry.rows()
        df = pd.DataFrame([r.__dict__ for r in reversed(recs)], columns=COLUMNS)
        for col in ("created", "started", "ended"):
            df[col] = pd.to_datetime(df[col], unit="s", utc=True)
        return df

    def metrics(self, run_id: str) -> pd.DataFrame:
        """The run's ``metrics.jsonl`` as a table: ``time, step, total`` and one column per metric."""
        import pandas as pd

        path = Path(self.get(run_id).run_dir) / METRICS_FILE
        rows = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line being written right now
        df = pd.DataFrame(rows)
        for col in ("time", "step", "total"):
            if col not in df:
                df[col] = pd.Series(dtype="float64")
        return df[["time", "step", "total", *[c for c in df.columns if c not in ("time", "step", "total")]]]


# --- worker entry points ---------------------------------------------------------------------------


def _finish(ctx: JobContext, state: str, error: str | None = None) -> None:
    status = _read_json(ctx.run_dir / STATUS_FILE)
    status.update(state=state, error=error, ended=time.time())
    _write_json(ctx.run_dir / STATUS_FILE, status)


def main_job(run_dir: str) -> int:
    """The worker: run the job in ``run_dir``; 0 succeeded, 1 failed, 2 cancelled.

    stdout/stderr are already ``log.txt`` (the runner points them there).
    """
    run_dir_p = Path(run_dir)
    ctx = JobContext.for_dir(run_dir_p)

    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run_job_in(run_dir_p, ctx)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_job_in(run_dir_p: Path, ctx: JobContext) -> int:
    try:
        config = json.loads((run_dir_p / "config.json").read_text())
        fn = job_function(config)
        ctx.log(f"job {run_dir_p.name}: kind {config.get('kind')!r}, pid {os.getpid()}")
        fn(config, ctx)
    except BaseException as exc:  # noqa: BLE001 - the worker reports every failure, then exits non-zero
        cancelled = ctx.should_stop()
        if not cancelled:
            traceback.print_exc()
        shutil.rmtree(ctx.out_dir, ignore_errors=True)
        msg = str(exc) if isinstance(exc, SubnetvizError) else f"{type(exc).__name__}: {exc}"
        _finish(ctx, "cancelled" if cancelled else "failed", "cancelled by the user" if cancelled else msg)
        return 2 if cancelled else 1
    if ctx.should_stop():
        shutil.rmtree(ctx.out_dir, ignore_errors=True)
        _finish(ctx, "cancelled", "cancelled by the user")
        return 2
    os.replace(ctx.out_dir, run_dir_p / "outputs")
    _finish(ctx, "succeeded")
    ctx.log(f"job {run_dir_p.name}: succeeded")
    return 0


def main_train(config_path: str, *, run_dir: str | None = None) -> int:
    """Run one training config in the foreground; 0 on success, 1 on a failed run, 2 on a bad config.

    Without ``run_dir`` the model goes to the config's ``output_dir`` (this is the form to use
    under ``accelerate launch``). With ``run_dir`` (a new folder) the run gets a job folder like
    the runner's (config, status, metrics, log on stdout) and the model goes to
    ``run_dir/outputs/model``.
    """
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import train

    try:
        if run_dir is None:
            res = train(TrainConfig.from_file(config_path))
            if res.is_main_process:
                print(json.dumps(res.to_dict(), indent=2))
            return 0
        config = json.loads(Path(config_path).read_text())
        config["kind"] = "train"
        validate_job_config(config)
        rd = Path(run_dir)
        rd.mkdir(parents=True, exist_ok=False)
        _write_json(rd / "config.json", config)
    except (SubnetvizError, FileExistsError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return main_job(str(rd))
