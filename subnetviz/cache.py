"""One versioned on-disk cache, one atomic publish.

Every result that is worth keeping between runs (update analyses, bigram-page analyses,
continual-learning runs) is a folder under :func:`subnetviz.config.cache_dir` named by one key
scheme:

- :func:`cache_key` ``(kind, version, **parts)``: a hash of the result's kind, a format ``version``
  the owner bumps whenever the code would produce different results or files, and ``parts``: the
  inputs' fingerprints (:func:`file_stamp`, ``Checkpoint.fingerprint``) and every parameter;
- :func:`entry` ``(kind, key)``: the :class:`CacheEntry` whose folder holds it;
- :meth:`CacheEntry.publish` / :func:`atomic_folder`: the folder is written under a temporary name
  and renamed when complete, so a reader (the app, a colleague, the next run) sees either nothing
  or the whole result, never a half-written one that looks complete;
- :func:`atomic_write`: the same for a single file (JSON status, manifests, exports).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KEY_LENGTH = 24  # hex digits of sha256


def _tmp_name(target: Path, tag: str = "tmp") -> Path:
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}-{time.monotonic_ns()}")


def _jsonable(obj):
    """``json.dumps`` default for key parts: dataclasses, paths and sets have one canonical form."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if hasattr(obj, "item") and callable(obj.item):  # NumPy / torch scalars
        return obj.item()
    # A part without a stable text form (an object's repr holds its address) would make a key that
    # never hits again: a bug in the caller, so say so instead of hashing str(obj).
    raise TypeError(f"cache key part of type {type(obj).__name__} has no canonical JSON form")


def cache_key(kind: str, version: int, **parts) -> str:
    """The key of a result: sha256 of ``kind``, ``version`` and ``parts`` (canonical JSON, sorted keys).

    ``parts`` are the inputs' fingerprints and the parameters; any change to one of them, or a
    bumped ``version``, gives a new key, so a cached result is never stale.
    """
    payload = json.dumps({"kind": kind, "version": int(version), "parts": parts}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def file_stamp(path: str | os.PathLike | None) -> str:
    """A cheap fingerprint of a file (resolved path, size, mtime_ns) without reading it.

    For a folder: the folder's path and the stamp of every file directly inside it (a model
    folder's weights, config and tokenizer), so a file rewritten in place changes the stamp even
    when the folder's own mtime does not. ``None`` -> ``"-"``; a missing path stamps as missing.
    """
    if path is None:
        return "-"
    p = Path(path).expanduser()
    try:
        resolved = p.resolve()
        st = resolved.stat()
    except OSError:
        return f"{p}:missing"
    if not resolved.is_dir():
        return f"{resolved}:{st.st_size}:{st.st_mtime_ns}"
    parts = [str(resolved)]
    for child in sorted(resolved.iterdir()):
        try:
            cst = child.stat()  # follows symlinks (the Hugging Face cache's snapshot files)
        except OSError:
            continue
        if not child.is_dir():
            parts.append(f"{child.name}:{cst.st_size}:{cst.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:KEY_LENGTH]


@contextmanager
def atomic_folder(target: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on normal exit it becomes ``target``.

    ``replace``: an existing ``target`` is replaced (moved aside, then removed). With
    ``replace=False`` an existing ``target`` wins and the new folder is discarded: the way to
    publish a cache entry that a concurrent identical computation may have published first.
    On an exception the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            if not replace:
                return  # published by someone else meanwhile: theirs is the same result
            old = _tmp_name(target, "old")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            finally:
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if replace or not target.exists():
                    raise  # not the lost race of a cache publish
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file renamed over it: readers see
    the old file or the new one, never half of it."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class CacheEntry:
    """One cached result: a folder that exists only once it is complete."""

    kind: str
    key: str
    folder: Path

    @property
    def ready(self) -> bool:
        return self.folder.is_dir()

    @contextmanager
    def publish(self) -> Iterator[Path]:
        """Write the result into the yielded folder; it appears as :attr:`folder` when the block ends."""
        with atomic_folder(self.folder, replace=False) as tmp:
            yield tmp


def entry(kind: str, key: str, *, root: str | os.PathLike | None = None) -> CacheEntry:
    """The cache entry ``key`` of ``kind``: ``cache_dir()/<kind>/<key>`` (or ``root/<key>`` when given)."""
    if root is None:
        from subnetviz.config import cache_dir

        folder = cache_dir() / kind / key
    else:
        folder = Path(root) / key
    return CacheEntry(kind, key, folder)
