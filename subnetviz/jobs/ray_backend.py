"""The Ray backend: jobs run on a Ray cluster's workers, tracked exactly like local jobs.

Chosen when ``SUBNETVIZ_RAY_ADDRESS`` names a cluster (``host:port`` of its head, as for
``ray.init(address=...)``), or in the app when a visitor chose one of the clusters the server's owner
named (``JobRunner(ray_address=...)``, one runner per backend over the same registry; each run keeps
the launch it was queued with); otherwise jobs are local OS processes and Ray is never imported.

How a job runs (one design, so the registry, run folders, logs, progress, cancel and recovery are
the local backend's own):

- The queue starts, as for every job, a local worker process; with this backend its command is
  ``python -m subnetviz.jobs.ray_backend --address ADDR RUN_DIR`` (:func:`main`). That process is
  the registry row's pid: it waits for its claim, submits the job to Ray as a task with declared
  resources (:func:`job_resources`: CPUs, GPUs), waits for it, and ends like a local worker by
  advancing the queue. It is a thin proxy; the work happens on a Ray worker.
- The Ray task runs the job in a child process of its own (``--remote``: the local worker's body,
  same status file, same ``outputs.tmp`` -> ``outputs`` rename), its output appended to the run's
  ``log.txt``, progress to ``status.json`` / ``metrics.jsonl``: run folders live on a file system
  that the server and the cluster share.
- Cancel: the runner writes the cancel flag (the job stops politely) and signals the proxy,
  which cancels the Ray task; the task kills its child after a grace period. A proxy that dies
  (server restart) is marked failed by the next poll, as a dead local worker is; Ray then kills
  the task it owned, and the child dies with it (``PR_SET_PDEATHSIG``).

Fan-out of multi-checkpoint work (a series, N-model overlap, the drivers grid) over Ray tasks,
merged to the local result: :mod:`subnetviz.jobs.fanout`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from subnetviz.config import RAY_ADDRESS_ENV
from subnetviz.errors import ConfigError, JobError

CANCEL_GRACE_S = 5.0
_PKG_ROOT = str(Path(__file__).resolve().parents[2])


def ray_address() -> str | None:
    """The cluster named by ``SUBNETVIZ_RAY_ADDRESS`` (None: the local backend)."""
    return os.environ.get(RAY_ADDRESS_ENV) or None


def require_ray():
    """Import ray, or say how to install it."""
    try:
        import ray
    except ImportError:
        raise JobError(
            f"{RAY_ADDRESS_ENV} is set but Ray is not installed: pip install -r requirements-ray.txt "
            "(or unset it to run jobs as local processes)."
        ) from None
    return ray


def launch_command(address: str) -> list[str]:
    """The worker command of a job queued for Ray (the scheduler appends the run folder)."""
    return [sys.executable, "-m", "subnetviz.jobs.ray_backend", "--address", address]


def connect(address: str):
    """Connect this process to the cluster at ``address`` as a driver that can import subnetviz."""
    ray = require_ray()
    if not ray.is_initialized():
        paths = [_PKG_ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
        loopback = address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
        if loopback:  # as local_head's processes: 127.0.0.1 stays 127.0.0.1 (Ray would swap in the machine IP)
            _loopback_only(ray)
        ray.init(
            address=address,
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
            logging_level="ERROR",
            log_to_driver=False,
            # a head on loopback (local_head): this driver is on that node, at 127.0.0.1 too
            **({"_node_ip_address": "127.0.0.1"} if loopback else {}),
        )
    return ray


def _loopback_only(ray) -> None:
    """Ray's "no cluster" switch in this process: its node address is 127.0.0.1, not the machine's IP.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import; this process may have
    imported ray already, so the constant is set as well as the variable (for its children)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def job_resources(config: dict) -> dict:
    """Ray resources a job declares: ``num_gpus`` from the config (default 0); CPUs: a multi-process
    training run's ``num_processes`` when it runs on CPU, else 1."""
    gpus = config.get("num_gpus", 0)
    if not isinstance(gpus, int | float) or isinstance(gpus, bool) or gpus < 0:
        raise ConfigError(f"num_gpus must be a number >= 0, got {gpus!r}.")
    cpus = 1
    if config.get("kind") == "train" and config.get("strategy", "single") != "single" and not gpus:
        cpus = int(config.get("num_processes", 1))
    return {"num_cpus": cpus, "num_gpus": gpus}


# --- on the Ray worker ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_on_worker(run_dir: str, env: dict) -> int:
    """The body of the Ray task: the job in a child process; returns its exit code."""
    from subnetviz.jobs.context import CANCEL_FILE

    rd = Path(run_dir)
    child_env = {**os.environ, **env}
    child_env["PYTHONPATH"] = os.pathsep.join(
        [_PKG_ROOT, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    with open(rd / "log.txt", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "subnetviz.jobs.ray_backend", "--remote", str(rd)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    cancelled_at = None
    try:
        while proc.poll() is None:
            if (rd / CANCEL_FILE).exists():
                cancelled_at = cancelled_at or time.time()
                if time.time() - cancelled_at > CANCEL_GRACE_S:
                    os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
    except BaseException:  # the task was cancelled: the job goes with it
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=CANCEL_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode


def _remote_job(run_dir: str) -> int:
    """``--remote``: run the job in ``run_dir`` here (final status and outputs, like a local worker)."""
    from subnetviz.jobs.context import JobContext
    from subnetviz.jobs.worker import _run_job_in

    ctx = JobContext.for_dir(run_dir)

    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    return _run_job_in(Path(run_dir), ctx)


# --- the proxy on the server's machine ------------------------------------------------------------


def run_proxy(run_dir: str, address: str) -> int:
    """The registry's worker for a Ray job: claim, submit, wait, record, advance the queue."""
    from subnetviz.jobs.context import JobContext, read_json, write_json
    from subnetviz.jobs.scheduler import registry_of, wait_claimed
    from subnetviz.jobs.worker import _advance_queue, _finish, unrecorded

    rd = Path(run_dir)
    registry = registry_of(rd)
    if registry is not None and not wait_claimed(registry, rd.name):
        print(f"job {rd.name}: its registry row does not name this process ({os.getpid()}); not running it")
        return 3
    ctx = JobContext.for_dir(rd)
    config = read_json(rd / "config.json")
    code = 1
    ref = None
    ray = None
    shutdown = False
    failure = None  # why the run's final status is not in its folder (deleted while it ran, a full disk)

    def _terminate(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        ray = connect(address)
        res = job_resources(config)
        from subnetviz.config import worker_env

        env = worker_env(("SUBNETVIZ_", "HF_", "TRANSFORMERS_", "OMP_"))  # with the read roots as resolved here
        env[RAY_ADDRESS_ENV] = address  # the job's own fan-out (drivers grid, series) stays on its cluster
        from subnetviz.jobs import ray_backend  # by reference: this file may be running as __main__

        task = ray.remote(ray_backend.run_on_worker).options(**res, max_retries=0, name=f"subnetviz-job-{rd.name}")
        ctx.log(f"job {rd.name}: submitted to Ray at {address} with {json.dumps(res)}")
        ref = task.remote(str(rd), env)
        code = int(ray.get(ref))
    except BaseException as exc:  # noqa: BLE001 - a proxy reports every failure in the run's status
        # a signal with no cancel flag is no user's cancel but the server or machine stopping (it signals every
        # process it has): failed, said so, and the next job is not started here, to be killed in turn
        shutdown = isinstance(exc, KeyboardInterrupt) and not ctx.should_stop()
        if ref is not None and ray is not None:
            try:
                ray.cancel(ref)
                ray.wait([ref], timeout=CANCEL_GRACE_S + 5)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        if read_json(rd / "status.json").get("state") is None:
            cancelled = ctx.should_stop()
            why = (
                "cancelled by the user"
                if cancelled
                else f"interrupted ({exc or 'SIGINT'}) before it finished: the server or machine stopped it, not a user's "
                "cancel; launch it again"
                if shutdown
                else f"Ray: {type(exc).__name__}: {exc}"
            )
            try:
                _finish(ctx, "cancelled" if cancelled else "failed", why)
            except OSError as err:  # (as the local worker: the registry row is told, and the queue moves on)
                failure = unrecorded(rd, err)
        code = 2 if ctx.should_stop() else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failure is None and read_json(rd / "status.json").get("state") is None:  # the job died without a word
        status = read_json(rd / "status.json")
        status.update(state="failed", error=f"the job process on Ray ended with code {code} and no final status")
        try:
            write_json(rd / "status.json", status)
        except OSError as err:
            failure = unrecorded(rd, err)
    if registry is not None:
        _advance_queue(registry, rd.name, ctx, start_next=not shutdown, failure=failure)
    return code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_head(num_cpus: int = 2, timeout: float = 90.0) -> Iterator[str]:
    """A Ray head on 127.0.0.1 for tests and benchmarks; yields its address, then kills it.

    ``ray start --head --block`` runs in a session of its own (every Ray process it starts stays
    in it), so the end kills exactly that session, never another Ray on the machine.
    """
    require_ray()
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = _free_port()
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        "0",
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
        "--dashboard-port",
        str(_free_port()),
        "--ray-client-server-port",
        str(_free_port()),
        "--temp-dir",
        temp,
    ]
    # `ray start` replaces a loopback --node-ip-address by the machine's IP (resolve_ip_for_localhost)
    # unless Ray's own "no cluster" switch is set: with it, every Ray process of this head (and the
    # workers it starts) takes 127.0.0.1 as the node's address, so nothing advertises the machine IP.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    address = f"127.0.0.1:{port}"
    with open(Path(temp) / "head.log", "wb") as log:
        head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.time() + timeout
        probe = (
            f"import ray; ray.init(address='{address}', logging_level='ERROR', _node_ip_address='127.0.0.1'); "
            "assert [n['NodeManagerAddress'] for n in ray.nodes()] == ['127.0.0.1'], ray.nodes()"
        )
        while subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=timeout, env=env).returncode:
            if head.poll() is not None or time.time() > deadline:
                raise JobError("the Ray head did not start:\n" + (Path(temp) / "head.log").read_text()[-3000:])
            time.sleep(1)
        yield address
    finally:
        # This process may be a driver of the head (series_fanout connects it): disconnect first. A
        # driver whose head vanishes quick-exits with status 1 a while later, with no Python cleanup —
        # it took a whole pytest session down at a random later test.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m subnetviz.jobs.ray_backend", description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="the Ray cluster (proxy mode)")
    ap.add_argument("--remote", action="store_true", help="run the job here (inside a Ray task)")
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    if args.remote:
        return _remote_job(args.run_dir)
    if not args.address:
        ap.error("--address is required (or --remote)")
    return run_proxy(args.run_dir, args.address)


if __name__ == "__main__":
    sys.exit(main())
