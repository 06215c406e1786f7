"""What every subcommand shares: torch's thread count, a progress bar on stderr, the ``--out`` check, the
publishing of a result folder or file that never replaces what appeared there meanwhile (and the record that it was
published, for a signal that arrives after it), and the record of a Ctrl-C that a library swallowed (nothing is
published after one)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from subnetviz.errors import SubnetvizError
from subnetviz.text import terminal_text


def shown(text: object) -> str:
    """``text`` as the command line prints it (:func:`~subnetviz.text.terminal_text`: control characters escaped)."""
    return terminal_text(text)


def shown_cells(frame):
    """A table with every text cell :func:`shown` (model labels, experiment names, a run's error), to print."""
    return frame.map(lambda v: shown(v) if isinstance(v, str) else v)


def refuse_blank(command: str, arguments: Sequence[tuple[str, str | Sequence[str] | None]]) -> None:
    """Empty or blank path arguments of ``command`` (``(name, value or values)`` pairs; None: not given), refused
    in one line before any work. An empty one is the working folder to every reader (``Path("")`` is ``.``):
    ``analyze BASE "$FT"`` with ``FT`` unset compared the working folder, and failed only after the whole
    analysis, on a model with no name, leaving that entry in the cache."""
    for name, value in arguments:
        values = [value] if isinstance(value, str) else list(value or ())
        for i, v in enumerate(values):
            if v.strip():
                continue
            which = f"{name} #{i + 1}" if len(values) > 1 else name
            what = "an empty argument" if not v else "a blank argument, only whitespace,"
            raise SubnetvizError(f"{command}: {which} is {what} (an unset shell variable?); nothing was read.")


def threads() -> None:
    """torch's CPU threads from ``OMP_NUM_THREADS`` (default 1: on a 2-core laptop or CI box torch's own default
    thrashes under load)."""
    import torch

    torch.set_num_threads(thread_count(os.environ.get("OMP_NUM_THREADS")))


def thread_count(raw: str | None) -> int:
    """The thread count of an ``OMP_NUM_THREADS`` value: its first number (OpenMP's nested form ``4,2`` gives 4, as
    OpenMP reads the outer level); 1 for none, and for a value that is no count of at least 1 (``0``, ``abc``),
    with a note on stderr: the variable is the environment's, and a traceback for it stopped every command."""
    text = (raw or "").split(",")[0].strip()
    if not text:
        return 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        print(f"note: OMP_NUM_THREADS={raw!r} is not a thread count of at least 1; using 1 thread.", file=sys.stderr)
        return 1
    return value


# Ctrl-C, recorded when it arrives (:func:`watch_interrupts`): a library may swallow the KeyboardInterrupt (numba
# compiling inside an LLVM callback, where Python prints it and drops it), and a run that went on was published.
_INTERRUPTED = threading.Event()


@contextmanager
def watch_interrupts() -> Iterator[None]:
    """While the block runs, Ctrl-C is recorded before it is raised as KeyboardInterrupt (as Python's own handler
    raises it), and one raised inside a C callback, which Python can only print and drop, is recorded without its
    traceback. :func:`interrupted` then says it; progress steps and publishing raise it again. Only where Ctrl-C has
    Python's default handler, in the main thread (a background job started with SIGINT ignored keeps ignoring it)."""
    import signal

    _INTERRUPTED.clear()
    hook = sys.unraisablehook

    def unraisable(info) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            _INTERRUPTED.set()
            return
        hook(info)

    def on_sigint(signum, frame) -> None:
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = hook
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM (``kill PID``, ``timeout``, a batch system's stop) ends the command as Ctrl-C
    does, as ``train`` handles it: raised as :class:`~subnetviz.jobs.worker.Interrupted`, so the command's own
    clean-up runs (its work folders removed, a child process it waits on stopped: ``subprocess.run`` kills it) and
    the command line says it in one line with exit status 143. (Python's default ended the process at once: the
    ``experiment drivers`` grid's PPO child ran on, orphaned, and its work folders stayed in the temp folder.) Only
    in the main thread; the handler found is put back after."""
    import signal

    from subnetviz.jobs.worker import Interrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted() -> bool:
    """Whether Ctrl-C arrived while :func:`watch_interrupts` watched (whether or not its KeyboardInterrupt reached
    the command)."""
    return _INTERRUPTED.is_set()


# The result this command put in place (:func:`publish`, :func:`publish_file`): a Ctrl-C or SIGTERM that arrives after it
# stopped only what the command prints after it (the summary table, the 'wrote' line), and the command line says so
# (:func:`published`). Its "identity" is set just before the rename: the temporary result's (device, inode), so a signal
# between the rename and "done" is told by the inode the published path has then (a rename or hard link keeps it).
_PUBLISHED: dict = {}


def forget_published() -> None:
    """A new command: nothing of it is published yet."""
    _PUBLISHED.clear()


def _expect_published(path: Path, tmp: Path, status: int, error: str | None) -> None:
    """``tmp`` is about to become ``path`` (one rename or link); ``status`` and ``error``: the exit status and the
    line the command ends with once it is (:func:`published`)."""
    _PUBLISHED.update(path=path, identity=_identity(tmp), status=status, error=error, done=False)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def published() -> tuple[Path, int, str | None] | None:
    """The result this command has put in place, as ``(path, exit status, error line or None)`` (the status and
    line the command ends with: 1 and the grid's failed points for ``experiment drivers``), else None: nothing
    published yet, or its publishing failed."""
    if not _PUBLISHED:
        return None
    path, identity = _PUBLISHED["path"], _PUBLISHED["identity"]
    if _PUBLISHED["done"] or (identity is not None and _identity(path) == identity):
        return path, _PUBLISHED["status"], _PUBLISHED["error"]
    return None


def raise_if_interrupted() -> None:
    """KeyboardInterrupt again where a Ctrl-C arrived and was swallowed: the run stops at its next step and
    publishes nothing."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def quiet_libraries() -> None:
    """No progress bars or deprecation warnings of the libraries under the command's own bar (as ``demo build``
    does): loading and saving each model drew transformers' bars, tokenizing datasets' bars, with cursor-up escapes,
    and TRL's trainers warned of ``is_gradient_checkpointing`` per run: 24 kB of stderr for ``experiment drivers
    --preset micro``, the command's one bar hard to find in it. The environment variables reach the processes a
    command starts (a PPO run's child); a library already imported is told directly."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # (transformers' bars follow huggingface_hub's)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging  # (these commands load it anyway)

    hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:  # (else it reads the variable when it is imported)
        sys.modules["datasets"].disable_progress_bars()
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def progress_bar(desc: str, unit: str = "tensor"):
    """A progress callback ``(step, total, what)`` drawing a bar on stderr; ``unit`` names what a step is (a
    tensor read, an experiment run on a model, a point of a grid). The bar is drawn from the first step: work that
    never reports one (an analysis served from the cache) left an empty bar open, and the next line on stderr
    ("cached: served from …") was written after it, on its line, and the bar drawn again at exit."""
    from tqdm import tqdm

    bars = []

    def update(step: int, total: int, what: str) -> None:
        raise_if_interrupted()  # a Ctrl-C a library swallowed stops the run here
        if not bars:
            bars.append(tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True))
        bar = bars[0]
        bar.total = total
        bar.n = step
        bar.set_postfix_str(shown(what[-40:]), refresh=False)  # (a tensor's name: a checkpoint's text)
        bar.refresh()
        if step >= total:
            bar.close()

    return update


def check_out(out: str, overwrite: bool, inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """An output folder the command may write: new, empty, or (with ``--overwrite``) replaced atomically
    once the new result is complete — never a user's folder deleted, never a file taken for a folder. Replacing
    a folder removes everything in it, so one that holds an input (``inputs``: the checkpoints, masks, prompts
    read, and the files their folders link to), subnetviz's home, the working folder or the user's home is
    refused, whatever ``--overwrite`` says.

    ``--out`` that is a link (``results -> /scratch/me/results``) stands for the folder it points to: that folder is
    returned, checked and later replaced, and the link stays. (The result was renamed over the link itself: a
    link to an empty folder failed with "Not a directory" after the whole run, one to a full folder was replaced
    by a folder of its own.) No folder is created here: a command that then fails on its input leaves none."""
    from subnetviz.cache import sweep_beside

    path = Path(out).expanduser()
    if path.is_symlink() and not path.exists():
        raise SubnetvizError(f"--out {out}: a link to nothing (its target is gone); choose a folder.")
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    sweep_beside(path)  # what a killed earlier run into this --out left beside it
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
    check_name_length(path, f"--out {out}")
    _writable_beside(path, out)
    return path


def check_name_length(path: Path, where: str) -> None:
    """``path``'s name no longer than the file system takes once it is made a temporary name (the result is written
    as ``.NAME.tmp-PID-CLOCK`` beside ``path``, :func:`~subnetviz.cache.longest_tmp_name`, then renamed to it): said
    before any work, in one line after ``where`` (the argument as given). A name the file system takes (``mkdir``,
    ``touch``) but within those 27 to 54 bytes of its limit failed with "File name too long" only once the whole
    analysis, or the whole training grid, had run."""
    from subnetviz.cache import longest_tmp_name

    size = len(os.fsencode(path.name))
    spare = name_max(path) - (longest_tmp_name(path.name) - size)
    if size > spare:
        raise SubnetvizError(
            f"{where}: its name is {size} bytes long; at most {spare} bytes here (the result is first written under "
            "a temporary name made from it). Choose a shorter name."
        )


def name_max(path: Path) -> int:
    """The longest file name (bytes) the file system of ``path``'s nearest existing folder takes: 255 on most, less
    on some (eCryptfs' 143)."""
    from subnetviz.config import NAME_MAX

    there = next((p for p in path.parents if p.is_dir()), Path(path.anchor or "."))
    try:
        limit = os.pathconf(there, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # (no pathconf, or the file system does not say)
        return NAME_MAX
    return limit if limit and limit > 0 else NAME_MAX


def _writable_beside(path: Path, out: str) -> None:
    """Whether a folder can be made beside ``path`` (where the result is written before it takes ``path``'s
    place): a read-only file system, a parent that is a file or a folder without permission is said now, not
    after the whole analysis. Missing parents are not created (publishing makes them): the probe is made in the
    nearest folder that exists, where they would be made."""
    import tempfile

    from subnetviz.cache import file_in_the_way

    blocked = file_in_the_way(path)
    if blocked is not None:
        raise SubnetvizError(f"--out {out}: cannot write there ({blocked} is a file, not a folder).")
    there = next((p for p in path.parents if p.is_dir()), Path(path.anchor or "."))
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=there))
    except OSError as exc:
        raise SubnetvizError(f"--out {out}: cannot write there ({exc.strerror or exc}).") from None


def _held(path: Path, inputs: Sequence[str | os.PathLike | None]) -> str | None:
    """What replacing ``path`` would delete that is not an earlier result: an input, or a folder a user keeps
    (described), else None."""
    from subnetviz.config import home

    real = Path(os.path.realpath(path))
    if real == Path(real.anchor):
        return "the whole file system"
    kept = [
        (p, f"the input {i}" if n == 0 else f"{os.path.realpath(p)}, which the input {i} reads")
        for i in inputs
        if i
        for n, p in enumerate(_read_from(i))
    ] + [
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
    string (it is refused later). For a local path also what the readers open through links: each entry of a
    folder (config, tokenizer, weights: a folder of links into another one read that one's files) and the weight
    files of a checkpoint (an index's shards in sub-folders); the caller resolves every link."""
    from subnetviz.checkpoints.sources import reads_as_hub_id, resolve_hub_id

    s = os.fspath(spec)
    if not reads_as_hub_id(s):
        return [spec, *_opened_through(Path(s).expanduser())]
    try:
        snapshot = resolve_hub_id(s)
    except SubnetvizError:
        return [spec]
    blobs = [os.path.realpath(f) for f in snapshot.rglob("*") if f.is_symlink()]
    return [spec, snapshot, *blobs]


def _opened_through(path: Path) -> list[Path]:
    """The files a reader of local input ``path`` opens besides ``path`` itself: the links among a folder's entries
    (its own level: config, tokenizer and weight files; an index json's folder's) and the weight files the
    checkpoint reader picks (:func:`~subnetviz.checkpoints.sources.checkpoint_files`: an index's shards, also in
    sub-folders; none where ``path`` is no checkpoint, such as a prompt file or a mask). A folder's own files need
    no listing: ``--out`` inside it is allowed, ``--out`` that holds it is refused for the folder itself."""
    from subnetviz.checkpoints.sources import checkpoint_files

    folder = path if path.is_dir() else path.parent if path.name.endswith(".json") and path.is_file() else None
    found: list[Path] = []
    if folder is not None:
        try:
            found += [Path(e.path) for e in os.scandir(folder) if e.is_symlink()]  # (the others lie in it)
        except OSError:
            pass
    try:
        found += checkpoint_files(path)[0]
    except (SubnetvizError, OSError):
        pass
    return found


@contextmanager
def publish(out: Path, overwrite: bool, *, status: int = 0, error: str | None = None) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` once the block ends: replacing an earlier result
    with ``overwrite``, else only if ``out`` is still absent or empty then (a run writing the same ``--out``
    meanwhile is not replaced: this one fails, saying so). Errors name ``--out``, not the temporary folder.
    A result holding a manifest (an analysis) has the files written beside it listed there too
    (:func:`~subnetviz.cache.add_to_manifest`: `analyze`'s subspaces, which `report` reads). Once it is in place it
    is recorded (:func:`published`), with ``status`` and ``error``: the exit status and error line the command ends
    with, said too when a signal stops what it prints after."""
    from subnetviz.cache import add_to_manifest, atomic_folder

    try:
        with atomic_folder(out, replace=overwrite, exclusive=not overwrite) as tmp:
            yield tmp
            add_to_manifest(tmp)
            raise_if_interrupted()  # a Ctrl-C a library swallowed: nothing is published
            _expect_published(out, tmp, status, error)
        _PUBLISHED["done"] = True
    except FileExistsError:
        raise SubnetvizError(
            f"--out {out}: another result was written there while this one ran; this one was not written (pass "
            "--overwrite to replace it)."
        ) from None
    except shutil.Error as exc:  # a copy that failed file by file: its message is the list of every file's failure
        raise SubnetvizError(f"--out {out}: cannot write the result ({_first_failure(exc)}).") from None
    except OSError as exc:
        raise SubnetvizError(f"--out {out}: cannot write the result ({exc.strerror or exc}).") from None
    except UnicodeEncodeError as exc:
        if not _names_bytes(out, exc):
            raise
        from subnetviz.checkpoints.sources import escaped

        raise SubnetvizError(
            f"--out {escaped(str(out))}: a byte of the folder's name is not UTF-8 text, and a writer of the result "
            "takes only such names; nothing was written. Choose a folder whose name is UTF-8 text."
        ) from None


def _names_bytes(out: Path, exc: UnicodeEncodeError) -> bool:
    """Whether ``exc`` is a writer refusing the path of ``out``'s folder (or of the temporary folder beside it)
    because a byte of it is not UTF-8 (a lone surrogate escape in Python: pyarrow's Parquet writer encodes the
    path it is given as strict UTF-8), not some other text that failed to encode."""
    folder = os.path.abspath(out.parent)
    bad = str(exc.object)[exc.start : exc.end]
    return "surrogates" in str(exc.reason) and (bad in out.name or bad in folder)


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


def file_target(path: Path, where: str) -> Path:
    """The file a command writes for output ``path`` (``report --out``, ``mask import``'s DST): a link stands for the
    file it points to, which is replaced, and the link stays, as a ``--out DIR`` that is a link stands for its folder
    (:func:`check_out`). (``--overwrite`` renamed the new file over the link itself: ``latest.html -> reports/…``
    became a file of its own and its target stayed stale.) A link to nothing is refused, in one line after
    ``where`` (the argument as given), as ``check_out`` refuses one: it read "a file is already there"."""
    if not path.is_symlink():
        return path
    if not path.exists():
        raise SubnetvizError(f"{where}: a link to nothing (its target is gone); choose a file name.")
    return Path(os.path.realpath(path))


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
        raise_if_interrupted()  # a Ctrl-C a library swallowed: nothing is published
        _expect_published(out, tmp, 0, None)
        if overwrite:
            os.replace(tmp, out)
            _PUBLISHED["done"] = True
            return
        try:
            _link_new(tmp, out)
            _PUBLISHED["done"] = True
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
