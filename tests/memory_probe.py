"""Peak anonymous memory of a call, sampled every millisecond, beside what its memory checks asked for: for tests
that run the measured work in a process of their own (``python -c SCRIPT`` with the repository on ``PYTHONPATH``),
after a small run of the same work there has imported the libraries and compiled the kernels. RssAnon, not RSS: a
checkpoint's mapped pages belong to the page cache (reclaimable), and a freed buffer lowers it again, so only a
sampler sees the peak (``VmHWM`` missed freed buffers on these machines)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def anon() -> int:
    """This process's resident anonymous memory, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise OSError("no RssAnon in /proc/self/status")


def checks_asked() -> list[int]:
    """The host bytes each later ``config.require_memory`` call asks for, in order (the check itself still runs)."""
    from subnetviz import config

    asked, real = [], config.require_memory

    def record(what, host_bytes, device="cpu", device_bytes=0):
        asked.append(host_bytes)
        return real(what, host_bytes, device, device_bytes)

    config.require_memory = record
    return asked


def peak_during(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """``(fn(), RssAnon before, the highest RssAnon sampled while it ran)``."""
    peak, stop = [0], []

    def watch():
        while not stop:
            peak[0] = max(peak[0], anon())
            time.sleep(0.001)

    start = peak[0] = anon()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = fn()
    finally:
        stop.append(1)
        watcher.join()
    return out, start, max(peak[0], anon())
