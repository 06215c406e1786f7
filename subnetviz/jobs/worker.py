"""Worker entry points: :func:`main_job` (``python -m subnetviz job RUN_DIR``, started by the runner
as its own OS process) and :func:`main_train` (``python -m subnetviz train --config FILE``, in the
foreground; works under ``accelerate launch``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from contextlib import suppress
from pathlib import Path

from subnetviz.config import cache_limit_bytes
from subnetviz.errors import SubnetvizError
from subnetviz.jobs.context import STATUS_FILE, JobContext, read_json, write_json
from subnetviz.jobs.kinds import job_function, validate_job_config
from subnetviz.jobs.registry import FOREGROUND_FILE, JOB_ENV, Registry, creation_time
from subnetviz.jobs.scheduler import (
    JOB_GPU_ENV,
    MAX_TEXT,
    as_seen_with_one_gpu,
    finish,
    one_line,
    registry_of,
    wait_claimed,
)
from subnetviz.text import terminal_text
from subnetviz.version import version_info

CACHE_KINDS = ("continual",)  # the job kinds that publish their result to the analysis cache (SUBNETVIZ_CACHE_GB)


class Interrupted(KeyboardInterrupt):
    """A signal (SIGTERM) raised as KeyboardInterrupt, so that it ends a run as Ctrl-C does (its work folders
    removed, launched ranks stopped); ``signum`` gives the exit status, 128 + signum as the shell reports it."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = int(signum)


def signal_of(exc: KeyboardInterrupt) -> int:
    """The signal behind an interruption: :class:`Interrupted`'s, a ``KeyboardInterrupt("signal N")`` of the Ray
    worker's own handler, else SIGINT (Ctrl-C)."""
    if isinstance(exc, Interrupted):
        return exc.signum
    m = re.fullmatch(r"signal (\d+)", str(exc))
    return int(m.group(1)) if m else int(signal.SIGINT)


def complete_after_interrupt(where: str | os.PathLike) -> str:
    """The line for a Ctrl-C or SIGTERM that arrived after the command's result was put in place at ``where``: it
    stopped only what the command prints after that (a summary), and the result is complete (the command then ends
    with the status it would have ended with, not 130 / 143: a script that took those for "nothing was written" ran
    the command again, which failed on the folder already there)."""
    said = f"interrupted after the result was written: {os.fspath(where)} is complete"
    return f"{said}; only what was to be printed after it was cut short."


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


class StatusNotWritten(OSError):
    """A run's final status could not be written (its run folder deleted while it ran, a full disk); ``state`` and
    ``error``: what it would have said."""

    def __init__(self, exc: OSError, state: str, error: str | None):
        super().__init__(exc.errno, exc.strerror or str(exc), exc.filename)
        self.state, self.error = state, error


def _finish(ctx: JobContext, state: str, error: str | None = None) -> None:
    status = read_json(ctx.run_dir / STATUS_FILE)
    # ("started": the worker's own start, so that a registry rebuilt from the run folders has it too)
    status.update(state=state, error=error, ended=time.time(), started=creation_time(os.getpid()), **version_info())
    try:
        write_json(ctx.run_dir / STATUS_FILE, status)
    except OSError as exc:
        raise StatusNotWritten(exc, state, error) from exc


def unrecorded(run_dir: Path, exc: OSError) -> str:
    """The one line a run gets when its worker could not write its final status (``exc``)."""
    if not run_dir.is_dir():
        return "its run folder was deleted while it ran"
    why = f"its final status could not be written in its run folder ({exc.strerror or exc})"
    if isinstance(exc, StatusNotWritten) and exc.state == "failed" and exc.error:
        why += f"; the job had failed: {exc.error}"
    return one_line(f"{why}; launch it again", MAX_TEXT)


def main_job(run_dir: str) -> int:
    """The worker: run the job in ``run_dir``; 0 succeeded, 1 failed, 2 cancelled, 3 not this
    process's to run (its registry row names another process, or was never committed, or no job folder),
    128 + the signal when a signal other than a cancel interrupted it (130 Ctrl-C, 143 SIGTERM).

    stdout/stderr are already ``log.txt`` (the runner points them there). A run of a registry
    first waits for its row to name this process; at the end it records its own final status and
    starts the next queued runs (:func:`~subnetviz.jobs.scheduler.finish`), so the queue advances
    with no page or CLI polling it.
    """
    run_dir_p = Path(run_dir)
    environ = dict(os.environ)  # as this process was started: the next job starts from it, not from what this one set
    if not (run_dir_p / "config.json").is_file():  # (the folder was made, then a traceback)
        print(f"error: {run_dir}: no job folder here (it holds no config.json); nothing to run.", file=sys.stderr)
        return 3
    registry = registry_of(run_dir_p)
    if registry is not None and not wait_claimed(registry, run_dir_p.name):
        print(f"job {run_dir_p.name}: its registry row does not name this process ({os.getpid()}); not running it")
        return 3
    ctx = JobContext.for_dir(run_dir_p)
    working = True

    def _terminate(signum, frame):
        if working:  # once the job has returned, a late SIGTERM must not cut the bookkeeping short
            raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, _terminate)
    failure = None
    try:
        try:
            code = _run_job_in(run_dir_p, ctx, queued=registry is not None)
        except OSError as exc:  # its end could not be written in its folder: the registry row is told instead
            code, failure = 1, unrecorded(run_dir_p, exc)
            with suppress(OSError):  # (the log may be on the full disk, or deleted with the folder)
                print(f"error: job {run_dir_p.name}: {failure}", flush=True)
        working = False
        if registry is not None:
            # Stopped by a signal with no cancel flag: no user's cancel (that writes the flag first) but the
            # server or machine stopping, which signals every process it has: the next job is not started, to be
            # killed in turn at the end of the stop; the queue stays as it is for the runner after the restart.
            shutdown = code > 128 and not ctx.should_stop()
            _advance_queue(registry, run_dir_p.name, ctx, start_next=not shutdown, failure=failure, environ=environ)
        elif failure is not None:  # train --run-dir in the foreground: said on its terminal
            print(f"error: {run_dir}: {failure}", file=sys.stderr)
        return code
    except KeyboardInterrupt:  # Ctrl-C after the job's own handling (its end's bookkeeping)
        if (run_dir_p / "outputs").is_dir():  # the succeeded run's outputs in place (moved there in one rename)
            print(complete_after_interrupt(run_dir_p / "outputs"), file=sys.stderr, flush=True)
            return 0
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _advance_queue(
    registry: Registry,
    run_id: str,
    ctx: JobContext,
    *,
    start_next: bool = True,
    failure: str | None = None,
    environ: dict[str, str] | None = None,
) -> None:
    """Record the run's end in the registry and start the next jobs (:func:`~subnetviz.jobs.scheduler.finish`);
    ``failure``: why its final status is not in its folder; ``environ``: the environment to start them from."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # the next job may get this GPU while this process is still exiting
    try:
        finish(registry, run_id, start_next=start_next, failure=failure, environ=environ)
    except Exception as exc:  # noqa: BLE001 - the status is in status.json: a poll settles it
        with suppress(OSError):
            ctx.log(f"job {run_id}: could not record the end in the registry or start the next job: {exc!r}")


def _run_job_in(run_dir_p: Path, ctx: JobContext, *, queued: bool = False) -> int:
    """Run the job; its final status in ``status.json``. ``queued``: a runner's job, which a user cancels with
    the cancel flag, so a signal without one stopped it for another reason (a shutdown): failed, not cancelled."""
    try:
        config = json.loads((run_dir_p / "config.json").read_text())
        if os.environ.get(JOB_GPU_ENV) and isinstance(config, dict) and "device" in config:
            # given one GPU (the one its cuda:N named): it is cuda:0 here (scheduler.start)
            config["device"] = as_seen_with_one_gpu(config["device"])
        fn = job_function(config)
        if isinstance(config, dict) and config.get("kind") in CACHE_KINDS:  # a bad limit said before the work
            cache_limit_bytes()
        ctx.log(f"job {run_dir_p.name}: kind {config.get('kind')!r}, pid {os.getpid()}")
        fn(config, ctx)
    except BaseException as exc:  # noqa: BLE001 - the worker reports every failure, then exits non-zero
        cancelled = ctx.should_stop()
        interrupted = isinstance(exc, KeyboardInterrupt) and not cancelled  # Ctrl-C or SIGTERM: no bug
        if isinstance(exc, SubnetvizError) and not cancelled:  # what a user gave: one line, as the CLI says it
            print(f"error: {terminal_text(exc)}", flush=True)
        elif not cancelled and not interrupted:  # a bug: the traceback, for its report
            traceback.print_exc()
        shutil.rmtree(ctx.out_dir, ignore_errors=True)
        if interrupted:
            signum = signal_of(exc)
            if queued:  # not the user's (a cancel writes the flag first): the page must not say they asked for it
                _finish(
                    ctx,
                    "failed",
                    f"interrupted ({_signal_name(signum)}) before it finished: the server or machine stopped it, not "
                    "a user's cancel; launch it again",
                )
            else:  # train --run-dir in the foreground: Ctrl-C or kill is its user's own way to stop it
                _finish(ctx, "cancelled", f"interrupted ({_signal_name(signum)}) before it finished")
            return 128 + signum
        msg = str(exc) if isinstance(exc, SubnetvizError) else f"{type(exc).__name__}: {exc}"
        _finish(ctx, "cancelled" if cancelled else "failed", "cancelled by the user" if cancelled else msg)
        return 2 if cancelled else 1
    if ctx.should_stop():
        shutil.rmtree(ctx.out_dir, ignore_errors=True)
        _finish(ctx, "cancelled", "cancelled by the user")
        return 2
    # The final status first (written atomically), then the outputs: a worker killed between the two leaves a
    # succeeded status whose outputs settle() moves into place. The other order left a run marked failed whose
    # outputs/ looked complete, and the app listed them.
    _finish(ctx, "succeeded")
    try:
        os.replace(ctx.out_dir, run_dir_p / "outputs")
    except OSError as exc:
        _finish(ctx, "failed", f"its outputs could not be moved into place ({exc.strerror or exc})")
        shutil.rmtree(ctx.out_dir, ignore_errors=True)  # (after the status: a succeeded one must not meet a part)
        print(
            f"error: job {run_dir_p.name}: its outputs could not be moved into place: {terminal_text(exc)}", flush=True
        )
        return 1
    ctx.log(f"job {run_dir_p.name}: succeeded")
    return 0


def main_train(config_path: str, *, run_dir: str | None = None) -> int:
    """Run one training config in the foreground; 0 on success, 1 on a failed run, 2 on a bad config, 130 / 143
    when Ctrl-C / SIGTERM stopped it (one line on stderr; with ``run_dir`` the run is recorded as cancelled). A
    Ctrl-C / SIGTERM that arrives once the model is in place (``output_dir``, ``run_dir/outputs``) stopped only what
    is printed after it: the line says the model is complete and where (:func:`complete_after_interrupt`), exit 0.

    Without ``run_dir`` the model goes to the config's ``output_dir`` (this is the form to use
    under ``accelerate launch``). With ``run_dir`` (a new folder) the run gets a job folder like
    the runner's (config, status, metrics, log on stdout) and the model goes to
    ``run_dir/outputs/model``.
    """
    try:
        if run_dir is None:
            return _train_in_foreground(config_path)
        from subnetviz.training.config import TrainConfig, read_config_json

        config = read_config_json(config_path, f"--config {config_path}")  # (one line for any file it cannot read)
        if not isinstance(config, dict):
            raise SubnetvizError(f"{config_path}: a JSON {type(config).__name__}, not a training config object.")
        if config.get("kind", "train") != "train":  # another job kind's config: refused by its kind, as without it
            TrainConfig.from_dict(config)
        config["kind"] = "train"
        validate_job_config(config)
        rd = Path(run_dir)
        try:
            rd.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise SubnetvizError(f"--run-dir {run_dir}: already there; a run folder must be new.") from None
        except OSError as exc:
            raise SubnetvizError(f"--run-dir {run_dir}: cannot be made ({exc.strerror or exc}).") from None
        write_json(rd / "config.json", config)
        # this process, in the folder it made: a registry rebuilt while it runs takes it for the run's process only
        # where it is this very process (its pid and start), never another that names the folder (rescan._workers)
        write_json(rd / FOREGROUND_FILE, {"pid": os.getpid(), "pid_start": creation_time(os.getpid())})
    except (SubnetvizError, FileExistsError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {terminal_text(exc)}", file=sys.stderr)
        return 2
    except RecursionError:  # json.loads of a config nested 100,000 deep
        print(f"error: {config_path}: JSON nested too deep to be a training config.", file=sys.stderr)
        return 2
    # Marked as the run's, as a queued job's worker is (scheduler.start): what it starts (a launch's ranks) carries
    # the mark, for a runner to stop once the run is over. (This process's own mark is not seen from outside: a
    # registry rebuilt from the run folders knows it by its --run-dir, rescan._workers.) Set for the run only: a
    # caller in this process (a test, a notebook) starts its later processes unmarked.
    before = os.environ.get(JOB_ENV)
    os.environ[JOB_ENV] = os.path.abspath(rd)
    try:
        code = main_job(str(rd))
    finally:
        if before is None:
            os.environ.pop(JOB_ENV, None)
        else:
            os.environ[JOB_ENV] = before
    if code > 128:  # interrupted: its status says so; one line here, as the run without --run-dir says it
        print(
            f"interrupted ({_signal_name(code - 128)}): the run in {run_dir} is recorded as cancelled; no model "
            "was written.",
            file=sys.stderr,
        )
    return code


def _train_in_foreground(config_path: str) -> int:
    """``train --config`` without ``--run-dir``: the model goes to the config's ``output_dir``. In the process
    a user started (not a launched rank), SIGTERM ends the run as Ctrl-C does: the launched ranks stopped, the
    work folders removed, one line, exit status 143 (130 for Ctrl-C). One that arrives once the model is published
    (until its summary is printed) says the model is complete in ``output_dir``, exit status 0.

    The model was published by this run where ``output_dir``, absent when the run started (the config's check refuses
    one that is there), now holds ``train_summary.json``: the run renames its finished folder, summary included, to
    ``output_dir`` in one step, and refuses to start beside a live run writing the same ``output_dir``."""
    from subnetviz.training import sharded
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import SUMMARY_FILE, launch_and_train, train

    rank = sharded.launched()
    previous = None if rank else signal.signal(signal.SIGTERM, _raise_interrupted)
    fresh = None  # output_dir, where it was not there when the run started
    try:
        cfg = TrainConfig.from_file(config_path)
        if isinstance(cfg.output_dir, str) and cfg.output_dir and not os.path.lexists(cfg.output_dir):
            fresh = Path(cfg.output_dir)
        if sharded.needs_launch(cfg.strategy):  # start cfg.num_processes processes running this same verb
            import tempfile

            with tempfile.TemporaryDirectory(prefix="subnetviz-launch-") as folder:
                res = launch_and_train(cfg, Path(folder))
        else:
            ctx = None
            if os.environ.get(sharded.RUN_DIR_ENV):  # a rank of a launched job: report into its run folder
                rd = Path(os.environ[sharded.RUN_DIR_ENV])
                ctx = JobContext(rd, rd / "outputs.tmp")
            res = train(cfg, ctx)
        if res.is_main_process:
            print(json.dumps(res.to_dict(), indent=2))
    except KeyboardInterrupt as exc:
        if rank:
            return 128 + signal_of(exc)
        # (the process that launched the ranks says it, once)
        if fresh is not None and (fresh / SUMMARY_FILE).is_file():  # published: only the summary's print was cut
            print(complete_after_interrupt(fresh), file=sys.stderr, flush=True)
            return 0
        print("interrupted: nothing was written.", file=sys.stderr, flush=True)
        return 128 + signal_of(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if rank:  # one rank of a launched run, done: leave without the teardown
        sharded.exit_rank(0)
    return 0
