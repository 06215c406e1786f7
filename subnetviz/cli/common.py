"""What every subcommand shares: torch's thread count, a progress bar on stderr, the ``--out`` check, and the
publishing of a result folder or file that never replaces what appeared there meanwhile."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from subnetviz.errors import SubnetvizError


def threads() -> None:
    # A 2-core laptop or CI box: torch's default thread count thrashes under load.
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))


def progress_bar(desc: str, unit: str = "tensor"):
    """A progress callback ``(step, total, what)`` drawing a bar on stderr; ``unit`` names what a step is (a
    tensor read, an experiment run on a model, a point of a grid)."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(step: int, total: int, what: str) -> None:
        bar.total = total
        bar.n = step
        bar.set_postfix_str(what[-40:], refresh=False)
        bar.refresh()
        if step >= total:
            bar.close()

    return update


def check_out(out: str, overwrite: bool, inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """An output folder the command may write: new, empty, or (with ``--overwrite``) replaced atomically
    once the new result is complete — never a user's folder deleted, never a file taken for a folder. Replacing
    a folder removes everything in it, so one that holds an input (``inputs``: the checkpoints, masks, prompts
    read), subnetviz's home, the working folder or the user's home is refused, whatever ``--overwrite`` says."""
    from subnetviz.cache import sweep_beside

    path = Path(out).expanduser()
    sweep_beside(path)  # what a killed earlier run into this --out left beside it
    if path.is_symlink() and not path.exists():
        raise SubnetvizError(f"--out {out}: a link to nothing (its target is gone); choose a folder.")
    if path.exists() and not path.is_dir():
        raise SubnetvizError(f"--out {out}: a file is there, not a folder; choose a folder name.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SubnetvizError(
            f"--out {out}: the folder exists and is not empty; choose a new folder, or pass --overwrite to replace it."
        )
    held = _held(path, inputs)
    if held:
        raise SubnetvizError(
            f"--out {out}: the folder holds {held}; replacing it would delete that. Choose a folder of its own."
        )
    _writable_beside(path, out)
    return path


def _writable_beside(path: Path, out: str) -> None:
    """Whether a folder can be made beside ``path`` (where the result is written before it takes ``path``'s
    place): a read-only file system, a parent that is a file or a folder without permission is said now, not
    after the whole analysis."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=path.parent))
    except OSError as exc:
        raise SubnetvizError(f"--out {out}: cannot write there ({exc.strerror or exc}).") from None


def _held(path: Path, inputs: Sequence[str | os.PathLike | None]) -> str | None:
    """What replacing ``path`` would delete that is not an earlier result: an input, or a folder a user keeps
    (described), else None."""
    from subnetviz.config import home

    real = Path(os.path.realpath(path))
    if real == Path(real.anchor):
        return "the whole file system"
    kept = [(p, f"the input {i}") for i in inputs if i for p in _read_from(i)] + [
        (home(), "subnetviz's home (SUBNETVIZ_HOME)"),
        (Path.cwd(), "the working folder"),
        (Path.home(), "your home folder"),
    ]
    for p, what in kept:
        q = Path(os.path.realpath(Path(p).expanduser()))
        if q == real or real in q.parents:
            return what
    return None


def _read_from(spec: str | os.PathLike) -> list[str | os.PathLike]:
    """Where an input is read from: the path itself, and for a hub id its snapshot in the local Hugging Face cache
    and the files its links point at (the cache's ``blobs``), as the checkpoint readers resolve it (hub id or path
    as they decide: :func:`~subnetviz.checkpoints.sources.reads_as_hub_id`). An id not in the cache is only its own
    string (it is refused later)."""
    from subnetviz.checkpoints.sources import reads_as_hub_id, resolve_hub_id

    s = os.fspath(spec)
    if not reads_as_hub_id(s):
        return [spec]
    try:
        snapshot = resolve_hub_id(s)
    except SubnetvizError:
        return [spec]
    blobs = [os.path.realpath(f) for f in snapshot.rglob("*") if f.is_symlink()]
    return [spec, snapshot, *blobs]


@contextmanager
def publish(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` once the block ends: replacing an earlier result
    with ``overwrite``, else only if ``out`` is still absent or empty then (a run writing the same ``--out``
    meanwhile is not replaced: this one fails, saying so). Errors name ``--out``, not the temporary folder.
    A result holding a manifest (an analysis) has the files written beside it listed there too
    (:func:`~subnetviz.cache.add_to_manifest`: `analyze`'s subspaces, which `report` reads)."""
    from subnetviz.cache import add_to_manifest, atomic_folder

    try:
        with atomic_folder(out, replace=overwrite, exclusive=not overwrite) as tmp:
            yield tmp
            add_to_manifest(tmp)
    except FileExistsError:
        raise SubnetvizError(
            f"--out {out}: another result was written there while this one ran; this one was not written (pass "
            "--overwrite to replace it)."
        ) from None
    except shutil.Error as exc:  # a copy that failed file by file: its message is the list of every file's failure
        raise SubnetvizError(f"--out {out}: cannot write the result ({_first_failure(exc)}).") from None
    except OSError as exc:
        raise SubnetvizError(f"--out {out}: cannot write the result ({exc.strerror or exc}).") from None


def _first_failure(exc: shutil.Error) -> str:
    """The first file's failure of a :class:`shutil.Error` (``copytree`` gathers a ``(source, target, reason)``
    per file, each reason an OSError's text naming the temporary folder): its system error, and how many more."""
    failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    if not failures:
        return str(exc)
    reason = str(failures[0][-1]) if isinstance(failures[0], tuple | list) else str(failures[0])
    code = re.match(r"\[Errno (\d+)\]", reason)
    said = os.strerror(int(code.group(1))) if code else reason
    more = len(failures) - 1
    return said + (f"; {more} more file(s) failed too" if more else "")


@contextmanager
def publish_file(out: Path, overwrite: bool, option: str = "--out") -> Iterator[Path]:
    """A temporary file name for a writer (in a folder beside ``out``); once the block ends the file written there
    becomes ``out``: with ``overwrite`` replacing what is there (one rename), else only if nothing is at ``out``
    then (``os.link``, which refuses an existing name in the same step): a file another run or a user put there
    while this one built its result is not replaced, and this one fails saying so. The temporary file is gone
    afterwards, whatever happened; errors name ``out`` (after ``option``, the argument that gave it), not it.

    The file is written inside a temporary folder beside ``out`` named as :func:`~subnetviz.cache.sweep_beside`
    knows it (``.NAME.tmp-PID-…``), with the writer's own temporary files (``atomic_path``) inside it: what a
    killed run left there is removed by the next run to ``out``, which sweeps first."""
    import tempfile

    from subnetviz.cache import sweep_beside

    where = f"{option} {out}" if option else str(out)
    sweep_beside(out)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(out)) from None
    tmp = work / out.name
    # the names a writer's message may give: the file, or its own temporary file beside it (atomic_path)
    named = re.compile(
        re.escape(f"{tmp.parent}{os.sep}") + rf"(\.{re.escape(out.name)}\.tmp-\d+-\d+|{re.escape(out.name)})"
    )
    try:
        try:
            yield tmp
        except SubnetvizError as exc:  # the writer's message names the file it wrote: the temporary one
            if str(work) in str(exc):
                raise SubnetvizError(named.sub(lambda _: str(out), str(exc))) from None
            raise
        except OSError as exc:  # (the command line says it in one line: "cannot complete OUT: ...")
            if exc.filename is not None and str(work) in str(exc.filename):
                raise OSError(exc.errno, exc.strerror, str(out)) from None
            raise
        if overwrite:
            os.replace(tmp, out)
            return
        try:
            _link_new(tmp, out)
        except FileExistsError:
            raise SubnetvizError(
                f"{where}: another file was written there while this one was made; this one was not written "
                "(pass --overwrite to replace it)."
            ) from None
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(out)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _link_new(tmp: Path, out: Path) -> None:
    """Give the file ``tmp`` the name ``out`` only if no file has that name (FileExistsError otherwise): a hard
    link, or on a file system without them (EPERM, ENOTSUP, EMLINK) a copy into a file created exclusively."""
    try:
        os.link(tmp, out, follow_symlinks=False)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(tmp, "rb") as src, os.fdopen(fd, "wb") as dst:
            fd = -1
            shutil.copyfileobj(src, dst)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        out.unlink(missing_ok=True)  # (this run made it: half a file never stays)
        raise
