"""The pages' update analyses and checkpoint series on a Ray cluster, when one is configured.

:func:`cached_analysis` and :func:`checkpoint_series` are what the app calls for every analysis
that reads checkpoints (update sparsity, spectra, the overlap page's masks, a series and its
per-step analyses; :mod:`subnetviz.jobs.cluster_pages` does the same for the Bigram and Behaviour
pages and the overlap of mask files). The cluster is ``address``: the visitor's choice among the
ones the server's owner named (:func:`subnetviz.config.ray_clusters`; ``""`` = this process), or
None for the server's default, ``SUBNETVIZ_RAY_ADDRESS``. Without a cluster they are
:func:`subnetviz.analysis.updates.cached_analysis` and
:func:`subnetviz.analysis.series.checkpoint_series`, in this process, and Ray is never imported.

With it, the work runs on the cluster and this process only waits:

- An update analysis is looked up in the same on-disk cache entry as the local one (same key);
  on a miss a driver process (``python -m subnetviz.jobs.cluster``) connects to the cluster, fans
  the analysis out per (base, finetune) pair (:func:`subnetviz.jobs.fanout.analysis_fanout`),
  merges it and publishes the entry exactly as the local path would; this process then reads it
  back as it reads a cache hit. A series fans out by groups of tensors
  (:func:`~subnetviz.jobs.fanout.series_fanout`). Either way the result equals the local one bit
  for bit, and the memo above (``subnetviz.ui``) keys it as the local one.
- The driver is a child process, not this one: a Ray driver whose cluster vanishes ends its
  process, which must never be the web server; it also bounds every wait. Its progress (tasks
  done) reaches the page's progress bar; a page that stops waiting (a rerun) kills it, and Ray
  then cancels its tasks.
- Failures are :class:`~subnetviz.errors.JobError` messages for the page's main area: a cluster
  that does not answer within ``SUBNETVIZ_RAY_CONNECT_TIMEOUT`` seconds (default 10), a driver
  that does not connect, an analysis that takes longer than ``SUBNETVIZ_RAY_TIMEOUT`` (default
  3600). A checkpoint error on a worker is raised as itself.

Checkpoints must be readable by the workers at the same paths (a shared file system), as for jobs.
"""

from __future__ import annotations

import math
import os
import pickle
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from subnetviz.analysis.updates import SpectraOptions
from subnetviz.errors import JobError, SubnetvizError

CONNECT_TIMEOUT_ENV = "SUBNETVIZ_RAY_CONNECT_TIMEOUT"
TIMEOUT_ENV = "SUBNETVIZ_RAY_TIMEOUT"
DRIVER_START_S = 60.0  # the driver's own start (imports, ray.init) on top of the connect timeout


def _seconds(env: str, default: float) -> float:
    try:
        value = float(os.environ.get(env) or default)
    except ValueError:
        raise JobError(f"{env} must be a number of seconds, got {os.environ[env]!r}.") from None
    return value if math.isfinite(value) and value > 0 else default  # (inf: an OverflowError in the socket call)


def resolve_address(address: str | None) -> str | None:
    """The cluster to use: ``address``; None: the server's default (``SUBNETVIZ_RAY_ADDRESS``); ``""``:
    none, this process (a visitor who chose "this server", :func:`subnetviz.config.ray_clusters`)."""
    from subnetviz.jobs.ray_backend import ray_address

    return ray_address() if address is None else (address or None)


def shown(address: str) -> str:
    """How a page names a cluster: by the name its owner gave it (``SUBNETVIZ_RAY_ADDRESSES``
    ``name=host:port``: the address stays on the server), else by its address."""
    from subnetviz.config import ray_clusters
    from subnetviz.errors import ConfigError

    try:
        names = [n for n, a in ray_clusters().items() if a == address and n != address]
    except ConfigError:
        names = []
    return f"'{names[0]}'" if names else address


def probe(address: str, timeout: float | None = None) -> None:
    """Raise a :class:`JobError` unless something accepts a TCP connection at the cluster's head
    (``host:port``, ``ray://host:port``) within ``timeout`` seconds; other forms (``auto``) pass."""
    timeout = timeout or _seconds(CONNECT_TIMEOUT_ENV, 10.0)
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise JobError(
            f"No Ray cluster answers at {shown(address)} ({exc.strerror or type(exc).__name__}, waited up to "
            f"{timeout:g} s). Start it, or choose another place to compute (the sidebar's Compute settings; "
            "the server's SUBNETVIZ_RAY_ADDRESS)."
        ) from None


# --- what the pages call --------------------------------------------------------------------------
def cached_analysis(
    base: str,
    finetuned: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    options=None,
    spectra: SpectraOptions | None = SpectraOptions(enabled=False),
    device: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
    cache_root: str | os.PathLike | None = None,
    address: str | None = None,
):
    """:func:`subnetviz.analysis.updates.cached_analysis`, computed on the Ray cluster at ``address``
    (default ``SUBNETVIZ_RAY_ADDRESS``; ``""`` or none: in this process) on a cache miss."""
    from subnetviz import cache as _cache
    from subnetviz.analysis import updates
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    options = options if options is not None else SparsityOptions()
    kw = dict(labels=labels, options=options, spectra=spectra, device=device, progress=progress)
    address = resolve_address(address)
    if not address:
        return updates.cached_analysis(base, finetuned, cache_root=cache_root, **kw)
    # the local path's lookup (updates.cached_analysis), its compute step replaced by the cluster's
    ck_base = open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]
    used: set[str] = set()
    labels = list(labels) if labels else [updates._label_for(c.spec, used) for c in cks]
    ent = _cache.entry("updates", updates.cache_key(ck_base, cks, labels, options, spectra), root=cache_root)
    hit, notice = ent.status()  # a damaged entry is removed here and computed again
    if not hit:
        request = {
            "base": base,
            "finetuned": list(finetuned),
            "labels": labels,
            "options": options,
            "spectra": spectra,
            "device": device,
            "folder": str(ent.folder),
        }
        drive("updates", request, address, progress, len(finetuned))
    result = updates.read_analysis(ent.folder)
    result.cached = hit
    if notice:
        result.notes = [notice, *result.notes]
    return result


def checkpoint_series(
    checkpoints: Sequence[str],
    steps: Sequence[int] | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    tensors: Collection[str] | None = None,
    address: str | None = None,
):
    """:func:`subnetviz.analysis.series.checkpoint_series`, fanned out on the Ray cluster at
    ``address`` (default ``SUBNETVIZ_RAY_ADDRESS``; ``""`` or none: in this process)."""
    from subnetviz.analysis import series

    address = resolve_address(address)
    n = len(checkpoints)
    bad_steps = steps is not None and (len(steps) != n or any(steps[i] <= steps[i - 1] for i in range(1, n)))
    if not address or tensors is not None or n < 2 or bad_steps:
        return series.checkpoint_series(checkpoints, steps, progress=progress, tensors=tensors)  # or its error
    request = {"paths": [str(p) for p in checkpoints], "steps": list(steps) if steps is not None else list(range(n))}
    return drive("series", request, address, progress, None)


# --- the driver process ---------------------------------------------------------------------------
def drive(kind: str, request: dict, address: str, progress, total: int | None, module: str | None = None):
    """Run ``kind`` (``updates``, ``series``) in a driver process connected to ``address``; its result.
    ``module``: a module whose ``run_kind(request, ray_kw)`` runs ``kind`` in the driver instead
    (:mod:`subnetviz.jobs.cluster_pages`: ``bigram``, ``behavior``, ``overlap``).

    Bounded: the head must answer first (:func:`probe`), the driver must connect within the
    connect timeout plus its start, and the work must end within ``SUBNETVIZ_RAY_TIMEOUT``.
    """
    import torch

    from subnetviz.jobs.ray_backend import _PKG_ROOT

    probe(address)
    where = f"on the Ray cluster at {shown(address)}"
    if progress and total:
        progress(0, total, f"starting {where}")
    connect_s = _seconds(CONNECT_TIMEOUT_ENV, 10.0) + DRIVER_START_S
    connect_by = time.monotonic() + connect_s
    deadline = time.monotonic() + _seconds(TIMEOUT_ENV, 3600.0)
    tmp = Path(tempfile.mkdtemp(prefix="subnetviz-ray-"))  # private (0700): the request and result pickles
    request = {**request, "kind": kind, "address": address, "threads": torch.get_num_threads(), "module": module}
    (tmp / "request.pkl").write_bytes(pickle.dumps(request))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_PKG_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "subnetviz.jobs.cluster", str(tmp)]
    with open(tmp / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        connected, done = False, None
        while proc.poll() is None or not lines.empty():
            try:
                line = lines.get(timeout=0.2).decode(errors="replace").split()
            except queue.Empty:
                line = []
            if line == ["connected"]:
                connected = True
            elif (
                len(line) == 3
                and line[0] == "done"
                and (line[1] + line[2]).isascii()
                and line[1].isdigit()
                and line[2].isdigit()
            ):
                done = f"{line[1]} of {line[2]} tasks done"
                if progress:
                    progress(int(line[1]), int(line[2]), f"tasks done {where}")  # other output is a library's
            now = time.monotonic()
            if not connected and now > connect_by and proc.poll() is None:
                raise JobError(f"Could not connect to the Ray cluster at {shown(address)} within {connect_s:g} s.")
            if now > deadline and proc.poll() is None:
                raise JobError(
                    f"The analysis {where} did not finish within {_seconds(TIMEOUT_ENV, 3600.0):g} s "
                    f"({done or 'no task done yet: is every node of the cluster alive and free?'})."
                )
        return _outcome(tmp, proc.returncode, where)
    finally:
        if proc.poll() is None:  # given up on, or this page stopped waiting: Ray cancels its tasks
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _outcome(tmp: Path, code: int, where: str):
    try:
        status, value = pickle.loads((tmp / "result.pkl").read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError):
        last = (tmp / "log.txt").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise JobError(f"The Ray driver {where} ended with code {code}: {last[0]}") from None
    if status == "ok":
        return value
    if isinstance(value, SubnetvizError):
        raise value
    raise JobError(f"The analysis {where} failed: {value}")


def _run(request: dict):
    """In the driver: the request's work on the cluster (its progress on stdout)."""
    from subnetviz.jobs import fanout
    from subnetviz.jobs.ray_backend import connect

    connect(request["address"])
    print("connected", flush=True)
    ray_kw = {
        "address": request["address"],
        "threads": request["threads"],
        "progress": lambda done, total: print("done", done, total, flush=True),
        "timeout": None,  # the server bounds the whole driver
    }
    if request.get("module"):  # another module's kind (cluster_pages): its run_kind, by name (no import cycle)
        import importlib

        return importlib.import_module(request["module"]).run_kind(request, ray_kw)
    if request["kind"] == "series":
        import ray

        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return fanout.series_fanout(request["paths"], request["steps"], workers=workers, **ray_kw)
    from subnetviz.analysis.updates import _write_files
    from subnetviz.cache import CacheEntry

    t0 = time.perf_counter()
    r = request
    analysis = fanout.analysis_fanout(
        r["base"], r["finetuned"], r["labels"], r["options"], r["spectra"], r["device"], **ray_kw
    )
    analysis.seconds = time.perf_counter() - t0
    with CacheEntry("updates", Path(r["folder"]).name, Path(r["folder"])).publish() as folder:
        _write_files(analysis, folder, {"base": r["base"], "finetuned": r["finetuned"]})
    return None


def main(argv: list[str] | None = None) -> int:
    tmp = Path((argv or sys.argv[1:])[0])
    try:
        result = ("ok", _run(pickle.loads((tmp / "request.pkl").read_bytes())))
    except SubnetvizError as exc:
        result = ("error", exc)
    except Exception as exc:  # noqa: BLE001 - reported to the page as one line, details in the log
        import traceback

        traceback.print_exc()
        exc = getattr(exc, "cause", None) or exc  # a Ray task's error: the worker's exception
        text = str(exc).strip().splitlines()
        result = ("error", f"{type(exc).__name__}: {text[0] if text else ''}")
    from subnetviz.cache import atomic_write

    atomic_write(tmp / "result.pkl", pickle.dumps(result))
    return 0 if result[0] == "ok" else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # At once, without Ray's shutdown of this driver (seconds): the cluster reclaims the workers of a
    # driver that is gone, as it does when the server kills one it stopped waiting for.
    os._exit(code)
