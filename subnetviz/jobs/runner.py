"""The job runner: jobs as OS processes, one run folder each, tracked in the SQLite registry.

A run folder ``ROOT/<run_id>/`` holds ``config.json`` (with ``kind``), ``log.txt`` (the process's
stdout and stderr), ``status.json`` (progress; its ``state`` key is written once, at the end),
``metrics.jsonl``, ``outputs.tmp/`` while running and ``outputs/`` once succeeded. A run that
dies mid-way (killed, crashed, machine restarted) is marked failed and its ``outputs.tmp`` is
removed, so partial outputs never look complete.

The queue needs no runner to move: a worker ends by recording its own status and starting the
next queued job (:mod:`subnetviz.jobs.scheduler`). A runner's :meth:`JobRunner.poll` does the
same work, and is what notices a worker that was killed before it could (at the latest when a
runner is made: a server or CLI that starts recovers the runs folder).

The registry is an index, not the record: each run folder holds all its row needs. A registry lost, moved aside
(damaged) or emptied is rebuilt from the run folders beside it when a runner finds it empty, and
:meth:`JobRunner.rescan` (``subnetviz runs --rescan``) registers folders that no row names
(:mod:`subnetviz.jobs.rescan`).

The worker a job runs in is :mod:`subnetviz.jobs.worker`; job kinds and their validation are
:mod:`subnetviz.jobs.kinds`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from subnetviz.errors import ConfigError, JobError
from subnetviz.jobs.context import (
    CANCEL_FILE,
    METRICS_FILE,
    PROGRESS_KEYS,
    STATUS_FILE,
    read_json,
    read_metrics,
    write_json,
)
from subnetviz.jobs.kinds import check_runs_here, validate_job_config
from subnetviz.jobs.registry import (
    COLUMNS,
    Registry,
    RunRecord,
    is_alive,
    is_job_process,
)
from subnetviz.jobs.rescan import adopt_run_folders
from subnetviz.jobs.scheduler import (
    CVD,
    REGISTRY_FILE,
    Launch,
    advance,
    cuda_index,
    default_launch,
    discard_outputs,
    ended_at,
    gpus_wanted,
    job_device,
    kill_leftovers,
    named_gpu,
    progress_of,
    publish_outputs,
    read_policy,
    settle,
    signal_job,
)

if TYPE_CHECKING:  # pandas is imported lazily: the worker process should start fast
    import pandas as pd


def _visible_gpus() -> list[str]:
    """CUDA device ids this process may use (honouring its own ``CUDA_VISIBLE_DEVICES``); [] on CPU."""
    import torch

    n = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


RAY_MAX_CONCURRENT = 16  # Ray jobs running at once (their tasks wait on the cluster's resources)


def _ray_address() -> str | None:
    from subnetviz.jobs.ray_backend import ray_address

    return ray_address()


def _jsonable_path(obj):
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


# --- the runner --------------------------------------------------------------------------------


class JobRunner:
    """Submit, poll, cancel and list jobs under ``root`` (default: ``subnetviz.config.runs_dir()``).

    Backend: local OS processes, or a Ray cluster when ``ray_address`` (default:
    ``SUBNETVIZ_RAY_ADDRESS``) names one (:mod:`subnetviz.jobs.ray_backend`; each job's worker is
    then a thin local proxy of a Ray task, so everything below holds for both).

    ``max_concurrent``: running jobs allowed at once across every runner on this root (default:
    1 on CPU, the number of GPUs with CUDA). ``command``: the worker command, RUN_DIR appended
    (default ``python -m subnetviz job``). ``gpus``: device ids to hand out (default: the visible
    CUDA devices); each job gets one free id as its ``CUDA_VISIBLE_DEVICES`` (recorded as ``gpu``), a multi-process
    training run one per process (``"2,3"``).
    A job is stored with these settings (:attr:`launch`), and is started with them by whoever
    starts it: this runner, another, or the worker of the job before it.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        max_concurrent: int | None = None,
        command: list[str] | None = None,
        *,
        cancel_grace_s: float = 5.0,
        gpus: list[str] | None = None,
        ray_address: str | None = None,
    ):
        if root is None:
            from subnetviz.config import runs_dir

            root = runs_dir()
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.root}: the runs folder cannot be made ({exc.strerror or exc}).") from None
        self.ray_address = ray_address if ray_address is not None else _ray_address()
        if self.ray_address and command is None:  # the Ray backend: Ray hands out CPUs and GPUs
            from subnetviz.jobs.ray_backend import launch_command, require_ray

            require_ray()
            command = launch_command(self.ray_address)
            gpus = [] if gpus is None else gpus
            max_concurrent = RAY_MAX_CONCURRENT if max_concurrent is None else max_concurrent
        self.gpus = list(gpus) if gpus is not None else _visible_gpus()
        if max_concurrent is None:
            max_concurrent = max(1, len(self.gpus))
        if max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1, got {max_concurrent}.")
        self.max_concurrent = int(max_concurrent)
        self.command = list(command) if command else default_launch().command
        self._cuda_visible_devices = os.environ.get(CVD)  # what a job given no GPU sees
        self.cancel_grace_s = cancel_grace_s
        self.registry = Registry(self.root / REGISTRY_FILE)
        # A registry new or empty beside run folders (lost, moved aside as damaged, a 0-byte file): their runs are
        # registered again from the folders, so that no page or verb loses them. The ids, for a caller to say so.
        self.adopted = adopt_run_folders(self.registry, only_when_empty=True)
        self._children: dict[int, subprocess.Popen] = {}  # only to reap our own zombies; never consulted
        self.poll()
        self._hide_outputs_of_unsucceeded()

    def _hide_outputs_of_unsucceeded(self) -> None:
        """Move aside the ``outputs/`` of runs that ended failed or cancelled (:func:`discard_outputs`): a worker of
        an earlier version, killed after it published its outputs but before its final status, left them there
        for the app to list as complete. One check per ended run, when a runner is made.

        A run whose ``status.json`` says it succeeded is no such run: its worker writes that last but the rename of
        its outputs, so they are complete. Its row is what is wrong (a registry rebuilt while it ran in the
        foreground by an earlier version, a cancel that came once it had finished): the row is settled again from
        its folder, as :func:`~subnetviz.jobs.scheduler.settle` would have settled it."""
        for rec in self.registry.rows():
            if rec.status in ("failed", "cancelled") and rec.elsewhere is None and os.path.lexists(rec.outputs):
                run_dir = Path(rec.run_dir)
                status = read_json(run_dir / STATUS_FILE)
                if status.get("state") != "succeeded":
                    discard_outputs(run_dir)
                    continue
                with self.registry.transaction() as con:
                    now = self.registry.get(rec.id, con)
                    if now.status not in ("failed", "cancelled"):
                        continue
                    if publish_outputs(run_dir) is not None:  # (no outputs folder after all: nothing to show)
                        discard_outputs(run_dir)
                        continue
                    started = now.started or ended_at(status.get("started"), 0.0) or None
                    self.registry.update(
                        con, rec.id, status="succeeded", error=None, started=started,
                        ended=ended_at(status.get("ended"), now.ended), **progress_of(status),
                    )  # fmt: skip

    def submit(self, config: dict, name: str | None = None) -> str:
        """Validate ``config`` (a dict with ``kind``), create its run folder, queue it; returns the run id.

        Refused (JobError, one line) while :func:`~subnetviz.config.max_queued_jobs` jobs already wait in this
        folder's queue: each queued job becomes a run folder, a finished training run a full model copy, and
        nothing else bounded what visitors who may launch jobs piled up on the server's disk."""
        from subnetviz.config import max_queued_jobs

        cap = max_queued_jobs()
        try:
            config = json.loads(json.dumps(config, default=_jsonable_path))  # Path objects -> str
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"a job config must be plain JSON (str paths, numbers, lists, dicts): {exc}.") from None
        if name:  # kept in the run folder too: a registry rebuilt from the folders (jobs/rescan.py) names the run
            config["name"] = name
        validate_job_config(config)
        if not self.ray_address:  # (runs here: its processes against this machine, wherever else jobs may go)
            check_runs_here(config)
        self._check_named_gpu(config)
        kind = str(config["kind"])
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"
        run_dir = self.root / run_id
        try:
            run_dir.mkdir()
        except FileExistsError:
            raise JobError(f"run folder {run_dir} already exists; refusing to reuse it.") from None
        except OSError as exc:  # a full or read-only disk: one line, not a bug
            raise JobError(f"{run_dir}: the run folder cannot be made ({exc.strerror or exc}).") from None
        try:
            write_json(run_dir / "config.json", config)
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)  # no row names it: nothing is left behind
            raise JobError(f"{run_dir}: the job's config.json cannot be written ({exc.strerror or exc}).") from None
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
            str(self.registry.folder(run_id)),  # (read back as the registry's folder / id, wherever it is now)
            config,
            launch=self.launch.to_dict(),
        )
        try:
            with self.registry.transaction() as con:  # (counted and inserted in one write transaction: two
                # submits at once cannot both take the last place)
                waiting = con.execute("SELECT COUNT(*) FROM runs WHERE status = 'queued'").fetchone()[0]
                if waiting >= cap:
                    jobs = "1 job waits" if waiting == 1 else f"{waiting} jobs wait"
                    raise JobError(
                        f"Not queued: {jobs} to start in this server's queue already, the most it takes "
                        "(SUBNETVIZ_MAX_QUEUED); launch again once some have started, or cancel some."
                    )
                # (a rebuild from the run folders that ran since the mkdir above registered this new folder: the
                # row is this submit's)
                con.execute("DELETE FROM runs WHERE id = ?", [run_id])
                self.registry.insert(con, rec)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)  # no row names it: the folder goes too
            raise
        self.poll()
        return run_id

    def _check_named_gpu(self, config: dict) -> None:
        """A job that names a GPU (``cuda:N`` as its device, or as ``SUBNETVIZ_DEVICE``) is given that GPU, seen
        as its only one (:func:`~subnetviz.jobs.scheduler.start`): refused here, in one line, when this runner does
        not hand that GPU out, rather than failing once it starts; so is a multi-process run of more processes than
        the GPUs it hands out (each takes one, :func:`~subnetviz.jobs.scheduler.gpus_wanted`). Such a run is never
        given the GPU its device names (each rank trains on ``cuda:LOCAL_RANK``): that GPU is not checked."""
        launch = self.launch
        if not launch.gpus:  # no GPU handed out (CPU, Ray): the job sees what this process sees
            return
        if (n := gpus_wanted(config, launch)) > len(launch.gpus):  # (it would wait for them forever)
            raise JobError(
                f"a {config.get('strategy')} run of {n} processes takes one GPU per process, and this server gives "
                f"jobs {len(launch.gpus)} (GPUs {', '.join(launch.gpus)}); ask for at most {len(launch.gpus)}."
            )
        if n > 1:
            return
        device = job_device(config, launch)
        if cuda_index(device) is not None and (gpu := named_gpu(device, launch)) not in launch.gpus:
            given = ", ".join(launch.gpus)
            raise JobError(
                f"device {device!r} names GPU {gpu if gpu is not None else '(none)'}, which this server does not "
                f"give to jobs (it gives GPUs {given}); choose cuda:0 … cuda:{len(launch.gpus) - 1}, or auto."
            )

    @property
    def launch(self) -> Launch:
        """How this runner starts jobs; stored with each job it queues (whoever starts it, starts it so)."""
        return Launch(
            list(self.command), self.max_concurrent, list(self.gpus), self._cuda_visible_devices, read_policy()
        )

    def rescan(self) -> list[str]:
        """Register the run folders that no registry row names (``subnetviz runs --rescan``:
        :func:`adopt_run_folders`); the ids registered. A registered run is never touched, a running one included."""
        added = adopt_run_folders(self.registry)
        self.poll()
        return added

    def poll(self) -> None:
        """Settle finished or dead runs, read their progress, and start queued runs while slots are free.

        Not needed for the queue to move (each worker advances it when its job ends); needed to
        notice a worker that was killed, and to show progress.
        """
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._children.pop(pid, None)  # another thread (Streamlit sessions share a runner) may race us
        for proc in advance(self.registry, self.launch):
            self._children[proc.pid] = proc

    def cancel(self, run_id: str) -> RunRecord:
        """Stop a queued or running job: cancel flag, SIGTERM to its process group, SIGKILL after a grace period.

        Only this home's run folder gets the flag, and only the job process of that folder is signalled
        (:func:`~subnetviz.jobs.registry.is_job_process`): a copied or moved home's registry names the original
        home's folders and processes. A run of another home is marked cancelled here, nothing else."""
        rec = self.get(run_id)
        if rec.finished:
            raise JobError(f"run {run_id} already {rec.status}; nothing to cancel.")
        if rec.elsewhere is not None:
            with self.registry.transaction() as con:
                if not self.registry.get(run_id, con).finished:
                    self.registry.update(
                        con, run_id, status="cancelled", ended=time.time(), error="cancelled by the user"
                    )
            self.poll()
            return self.get(run_id)
        run_dir = Path(rec.run_dir)
        try:
            (run_dir / CANCEL_FILE).write_text(str(time.time()))
            flagged = True
        except OSError:  # its folder deleted by hand, or a full disk: no flag for its worker to see
            flagged = False
            # So the row says cancelled now, before the signal: a worker stopped without a flag records its run
            # as stopped by a shutdown, not by the user (and a queued run has nothing else to stop).
            with self.registry.transaction() as con:
                if not self.registry.get(run_id, con).finished:
                    self.registry.update(
                        con, run_id, status="cancelled", ended=time.time(), error="cancelled by the user"
                    )
        if rec.status == "running" and is_job_process(rec):
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
        if not flagged and rec.status == "running":  # (its row is cancelled already: stop what it started)
            kill_leftovers(run_dir)
            discard_outputs(run_dir)
        with self.registry.transaction() as con:
            now = self.registry.get(run_id, con)
            if not now.finished:
                if (
                    now.status == "running"
                    and not is_alive(now)
                    and read_json(run_dir / STATUS_FILE).get("state") == "succeeded"
                ):
                    settle(self.registry, con, now)  # it finished before the signal arrived: keep its result
                else:
                    kill_leftovers(run_dir)  # its ranks, in sessions of their own, outlive a signal to its group
                    discard_outputs(run_dir)  # outputs.tmp, and an outputs/ it published but did not record
                    self.registry.update(
                        con, run_id, status="cancelled", ended=time.time(), error="cancelled by the user"
                    )
        self.poll()
        return self.get(run_id)

    def _signal(self, rec: RunRecord, sig: int) -> None:
        signal_job(rec.pid, sig)  # (its group, or an adopted foreground run that leads none: itself)

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
        """The run's ``metrics.jsonl`` as a table: ``time, step, total`` and one column per metric.

        Only its last rows are read (:func:`~subnetviz.jobs.context.read_metrics`): ``attrs["left_out"]`` of
        the table says whether earlier rows were left out. Lines that are no metrics row are skipped.
        """
        import pandas as pd

        rows, left_out = read_metrics(Path(self.get(run_id).run_dir) / METRICS_FILE)
        df = pd.DataFrame(rows)
        for col in PROGRESS_KEYS:
            if col not in df:
                df[col] = pd.Series(dtype="float64")
        df = df[[*PROGRESS_KEYS, *[c for c in df.columns if c not in PROGRESS_KEYS]]]
        df.attrs["left_out"] = left_out
        return df
