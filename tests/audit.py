"""What the code under test opens, lists (and, asked for, stats) under given folders: one audit hook
(``sys.addaudithook``) for the process, recording only while a test watches. Shared by the tests that prove a
stranger's input reads nothing outside the allowed roots."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

SEEN: list[tuple[str, str]] = []  # (event, path) recorded while WATCH is not empty
WATCH: list[Path] = []  # the folders (resolved) whose every open / listing is recorded
EVENTS = ("open", "os.listdir", "os.scandir", "glob.glob")


def note(event: str, target) -> None:
    """Record ``event`` on ``target`` (a path; a file descriptor is not one) when it lies under a watched folder."""
    if not WATCH or target is None or isinstance(target, int):
        return
    path = os.path.abspath(os.fsdecode(target))
    if any(path == str(w) or path.startswith(str(w) + os.sep) for w in WATCH):
        SEEN.append((event, path))


def _audit(event: str, args: tuple) -> None:
    if event in EVENTS and args:
        note(event, args[0])


sys.addaudithook(_audit)  # (hooks stay for the process: it records nothing while no test watches)
_STAT = os.stat


def _stat(path, *args, **kwargs):
    """``os.stat``, noting the path unless pathlib's ``resolve`` asks (the roots check resolves a path's links, and
    its answer reads the same whether anything is there). Python 3.11 has no audit event for a stat."""
    caller = sys._getframe(1)
    asked_by_resolve = caller.f_back is not None and caller.f_back.f_code.co_name == "resolve"
    if not (caller.f_code.co_name == "stat" and asked_by_resolve):
        note("stat", path)
    return _STAT(path, *args, **kwargs)


@contextlib.contextmanager
def watching(*folders: Path, monkeypatch=None) -> Iterator[list[tuple[str, str]]]:
    """What is opened or listed under ``folders`` (their paths resolved) inside the block; with ``monkeypatch``,
    what is stat-ed too (``os.stat`` wrapped for the block)."""
    SEEN.clear()
    WATCH[:] = [f.resolve() for f in folders]
    if monkeypatch is not None:
        monkeypatch.setattr(os, "stat", _stat)
    try:
        yield SEEN
    finally:
        if monkeypatch is not None:
            monkeypatch.setattr(os, "stat", _STAT)
        WATCH.clear()
