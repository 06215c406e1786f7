"""One zoo build at a time per folder: an OS file lock (``filelock``) on ``root/.build.lock``.

The operating system releases the lock when its process ends, however it ends, so a build that
crashed or was killed never leaves a stale lock behind, and a recycled pid cannot look alive. A
second build (another process, or another thread of the app) is refused at once with the
owner's pid, which the owner writes beside the lock for that message only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from subnetviz.errors import JobError

LOCK = ".build.lock"
OWNER = LOCK + ".pid"  # the holder's pid, for the refusal message


@contextmanager
def build_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the build lock of ``root`` for the block; :class:`JobError` while another build holds it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        owner = _owner(root)
        raise JobError(
            f"{root}: a demo zoo build is already running{f' (pid {owner})' if owner else ''}, holding {root / LOCK}. "
            "Wait for it to finish."
        ) from None
    try:
        (root / OWNER).write_text(str(os.getpid()))
        yield
    finally:
        (root / OWNER).unlink(missing_ok=True)
        lock.release()


def _owner(root: Path) -> int | None:
    try:
        return int((root / OWNER).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
