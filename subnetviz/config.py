"""Settings read from ``SUBNETVIZ_*`` environment variables, in this one place.

- ``SUBNETVIZ_HOME``: where the demo zoo, the run registry and the analysis cache live
  (default: the user's cache dir, e.g. ``~/.cache/subnetviz``).
- ``SUBNETVIZ_ROOTS``: ``os.pathsep``-separated folders the app may read checkpoints and masks
  from, besides ``SUBNETVIZ_HOME`` (default: the Hugging Face cache and the current directory). The CLI
  and the library are not restricted; the app is, because shared dashboards are reachable by others.
- ``SUBNETVIZ_ENFORCE_ROOTS``: ``1`` makes every file read (after resolving symlinks and shard
  index entries) lie under the roots; the app sets it for itself and the jobs it starts.
- ``SUBNETVIZ_DEVICE``: the device that ``auto`` means in the analyses (the CLI's ``--device`` default, the
  sidebar's *Device → auto* and the library's defaults, all resolved by :func:`resolve_device`): ``cpu``, ``cuda``,
  ``cuda:N`` or ``mps``; unset or ``auto``: CUDA when present. A device that is not there is refused in one line
  naming the variable, as ``--device`` is. (Training runs pick their device themselves.)
- ``SUBNETVIZ_RAY_ADDRESS``: the Ray cluster that jobs and the pages' analyses use by default
  (:mod:`subnetviz.jobs.ray_backend`); ``SUBNETVIZ_RAY_ADDRESSES``: the other clusters a visitor
  may choose in the app's sidebar (:func:`ray_clusters`). A visitor never types an address.
- ``SUBNETVIZ_CACHE_GB``: the size of the analyses the cache keeps (default 20; the least recently used go first).
- ``SUBNETVIZ_UPLOADS_GB``: the size the stored uploaded masks may take together (default 2): past it an upload
  is refused in one line; nothing stored is removed (:func:`uploads_limit_bytes`).
- ``SUBNETVIZ_MAX_QUEUED``: jobs that may wait in a server's queue, not yet started (default 16): past it a launch
  is refused in one line (:func:`max_queued_jobs`).
"""

from __future__ import annotations

import math
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from platformdirs import user_cache_dir

from subnetviz.errors import PathNotAllowedError


def home() -> Path:
    """The subnetviz home folder (created on first use). One that cannot be made is a one-line
    :class:`~subnetviz.errors.ConfigError` naming ``SUBNETVIZ_HOME`` (a file there read "cannot complete PATH: File
    exists", naming no variable)."""
    from subnetviz.errors import ConfigError

    path = home_path()
    env = os.environ.get("SUBNETVIZ_HOME")
    what = f"SUBNETVIZ_HOME={env}" if env else f"subnetviz's home {path} (set SUBNETVIZ_HOME to choose another)"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: a file, not a folder; set SUBNETVIZ_HOME to a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot create the folder ({exc.strerror or exc}); give a folder you can write."
        ) from None
    return path.resolve()


def home_path() -> Path:
    """Where :func:`home` is, without creating it (``demo path`` only prints a folder)."""
    env = os.environ.get("SUBNETVIZ_HOME")
    return (Path(env).expanduser() if env else Path(user_cache_dir("subnetviz"))).resolve()


def zoo_dir() -> Path:
    return home() / "zoo"


def runs_dir() -> Path:
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache, where ``hf download`` and transformers put models: ``HF_HUB_CACHE``, else
    the legacy ``HUGGINGFACE_HUB_CACHE``, else ``hub`` in ``HF_HOME`` or ``$XDG_CACHE_HOME/huggingface`` or
    ``~/.cache/huggingface``; ``~`` and ``$VAR`` expanded. These are ``huggingface_hub.constants``' rules, applied
    to the environment as it is now (the constants are fixed when huggingface_hub is imported; a cluster's
    ``XDG_CACHE_HOME=/scratch/.cache`` was ignored, and the models ``hf download`` put there were "not cached")."""

    legacy = os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(_hf_home(), "hub")
    return Path(_expand(os.environ.get("HF_HUB_CACHE") or legacy))


def hf_datasets_dir() -> Path:
    """The local Hugging Face datasets cache (``hf:`` corpora and prompt sets are read from it, never downloaded):
    ``HF_DATASETS_CACHE``, else ``datasets`` in the Hugging Face home (:func:`hf_cache_dir`'s), as ``datasets.config``
    forms it, applied to the environment as it is now."""
    return Path(_expand(os.environ.get("HF_DATASETS_CACHE") or os.path.join(_hf_home(), "datasets")))


def _expand(value: str) -> str:
    return os.path.expandvars(os.path.expanduser(value))


def _hf_home() -> str:
    """``HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``; expanded."""
    return _expand(
        os.environ.get("HF_HOME")
        or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
        )
    )


def allowed_roots() -> list[Path]:
    """``SUBNETVIZ_HOME`` (the server's own runs, uploads, cache and demo zoo: always), then the folders of
    ``SUBNETVIZ_ROOTS``, or by default the Hugging Face hub and datasets caches and the current directory (without
    the datasets cache, ``hf:`` corpora were refused by every server, a laptop's ``make app`` too). (The home was
    left out when ``SUBNETVIZ_ROOTS`` was set: a job then trained to the end and failed reading its own model.)"""
    env = os.environ.get("SUBNETVIZ_ROOTS")
    if env:
        roots = [home(), *(Path(p).expanduser() for p in env.split(os.pathsep) if p.strip())]
    else:
        roots = [home(), hf_cache_dir(), hf_datasets_dir(), Path.cwd()]
    return list(dict.fromkeys(r.resolve() for r in roots))


def worker_env(prefixes: tuple[str, ...] = ("SUBNETVIZ_",)) -> dict[str, str]:
    """This process's variables of ``prefixes`` for work it sends to a Ray cluster, with the read roots as this
    process resolves them (``SUBNETVIZ_ROOTS``). Without it a worker worked them out itself: its own current
    directory (``/`` for a head started there) became a root, and enforced roots stopped nothing on it."""
    env = {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
    env["SUBNETVIZ_ROOTS"] = os.pathsep.join(str(r) for r in allowed_roots())
    return env


def enforce_roots() -> bool:
    """Whether every file read must lie under :func:`allowed_roots` (``SUBNETVIZ_ENFORCE_ROOTS=1``).

    The web app sets it at start, so its page runs and every job it launches (child processes
    inherit it) read only under the roots; the CLI and the library are not restricted unless the
    user sets it.
    """
    return os.environ.get("SUBNETVIZ_ENFORCE_ROOTS") == "1"


def _root_of(resolved: Path) -> Path | None:
    # The deepest root wins: the HF cache inside SUBNETVIZ_HOME is named as the HF cache.
    inside = [r for r in allowed_roots() if resolved == r or r in resolved.parents]
    return max(inside, key=lambda r: len(r.parts), default=None)


def _resolve(path: str | os.PathLike, what: str | None = None) -> Path:
    """``path`` expanded and with symlinks resolved; PathNotAllowedError, one line (``what`` names the path
    there), for a path that names no file: one with a NUL byte (a URL's ``%00``: the OS takes none, Python
    raises ValueError) or a loop of symbolic links (``ln -s model.safetensors model.safetensors``: Path.resolve
    raises RuntimeError) or a name longer than file systems take (a URL's 300 letters: ENAMETOOLONG, which
    ``Path.exists`` raises), which would otherwise end in a traceback."""
    try:
        p = Path(path).expanduser()
        if _too_long(p):
            problem = f"a name longer than file systems take ({NAME_MAX} bytes a folder or file, {PATH_MAX} in all)"
        else:
            return (p if p.is_absolute() else Path.cwd() / p).resolve()
    except ValueError:
        problem = "a path with a NUL byte, which names no file"
    except RuntimeError:
        problem = "a loop of symbolic links (it leads back to itself)"
    except OSError as exc:
        problem = f"cannot be resolved ({exc.strerror or exc})"
    raise PathNotAllowedError(f"{what or _shown(path)}: {problem}; refused.")


NAME_MAX, PATH_MAX = 255, 4096  # bytes of one path component, and of a whole path (Linux)


def _too_long(p: Path) -> bool:
    return len(os.fsencode(p)) >= PATH_MAX or any(len(os.fsencode(part)) > NAME_MAX for part in p.parts)


def check_name(path: str | os.PathLike) -> None:
    """Refuse (PathNotAllowedError, one line) a name that no file can have: too long, or with a NUL byte. For a
    name that may be a hub id too, before anything asks the file system about it."""
    _resolve(path)


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` names something (following links); False, never an error, for a name no file can have
    (too long, a NUL byte), where ``Path.exists`` raises."""
    return os.path.exists(path)


_full_paths = False  # this process names paths as they were given (full_paths), not as visitors see them


@contextmanager
def full_paths() -> Iterator[None]:
    """Within it, the messages of this process name a path as it was given, ``~`` expanded
    (``/data/run2/final``), not as a web visitor may see it (:func:`display_path`: ``…/final``). The command
    line's ``main()`` runs its verbs inside it, for the user at the terminal, who must tell two inputs named
    alike apart. A flag of this process alone, restored on leaving, never an environment variable: no process it
    starts inherits it (a job's worker, a launched rank), the app never enters it, and under enforced roots
    (``SUBNETVIZ_ENFORCE_ROOTS=1``: the app and every job it queues, whoever starts them) paths stay redacted
    whatever it says. Redacting is the default."""
    global _full_paths
    before, _full_paths = _full_paths, True
    try:
        yield
    finally:
        _full_paths = before


def _redacting() -> bool:
    return not _full_paths or enforce_roots()


def _shown(path: str | os.PathLike) -> str:
    """A path that :func:`_resolve` refused, as a visitor may see it: its last component (the whole of a
    relative one), a NUL byte written as ``\\0``. Inside :func:`full_paths`, the whole path (``~`` expanded)."""
    text = os.fspath(path)
    text = text if isinstance(text, str) else os.fsdecode(text)
    if _redacting():
        name, limit = (text if not text.startswith(("/", "~")) else "…/" + text.rstrip("/").rpartition("/")[2]), 80
    else:
        name, limit = os.path.expanduser(text), 1000  # (a name no file system takes, 5,000 letters: shortened)
    if len(name) > limit:  # a URL's 300 letters, shortened
        name = f"{name[: limit // 2]}…{name[-limit // 4 :]} ({len(text):,} characters)"
    return name.replace("\0", "\\0")


def display_path(path: str | os.PathLike) -> str:
    """How a visitor sees a server path: relative to its root (``zoo/base``, named after the root's
    folder), or only its last component when it lies outside every root — never the absolute path.
    The root is found from the path with its symlinks resolved (where the file really is), but the path is
    shown as given where it lies under that root: a Hugging Face snapshot's ``model.safetensors`` is a link to a
    ``blobs/<sha256>`` file, which no one would recognise in a message. A file of a hub snapshot outside every
    root is named by its repository and commit (``acme/tiny-base@2222222/model.safetensors``).
    Never raises: it also writes the messages that refuse a path (one with a NUL byte is shown escaped).
    Inside :func:`full_paths` (the command line), the path as given, ``~`` expanded."""
    if not _redacting():
        return _shown(path)
    try:
        resolved = _resolve(path)
    except PathNotAllowedError:
        return _shown(path)
    p = Path(path).expanduser()
    root = _root_of(resolved)
    if root is None:
        snap = hub_snapshot_of(p)
        if snap is not None:
            repo, commit, rest = snap
            return f"{repo}@{commit[:7]}" + (f"/{rest}" if rest else "") + " (hub cache)"
        return f"…/{p.name}" if p.is_absolute() else str(path)
    rel = _under(root, p, resolved)
    return root.name if rel == Path(".") else f"{root.name}/{rel.as_posix()}"


def _under(root: Path, given: Path, resolved: Path) -> Path:
    """``given`` relative to ``root``: the path as given (made absolute), else with only its folder resolved (a
    root reached through a link), else the resolved path, whichever first lies under ``root``."""
    absolute = given if given.is_absolute() else Path.cwd() / given
    candidates = [absolute]
    try:
        candidates.append(absolute.parent.resolve() / absolute.name)
    except (OSError, RuntimeError, ValueError):
        pass
    for c in candidates:
        if ".." not in c.parts and (c == root or root in c.parents):
            return c.relative_to(root)
    return resolved.relative_to(root)


# A path inside a Hugging Face hub cache: models--ORG--NAME/snapshots/<commit>/<file in the repository>
_HUB_SNAPSHOT = re.compile(r"^(?:models|datasets|spaces)--(?P<repo>.+)$")


def hub_snapshot_of(path: str | os.PathLike) -> tuple[str, str, str] | None:
    """``(repo id, commit, path inside the snapshot)`` where ``path`` (as given, its links not followed) lies in a
    Hugging Face hub cache's ``models--ORG--NAME/snapshots/<commit>/`` folder, else None."""
    parts = Path(path).expanduser().parts
    for i in range(len(parts) - 2):
        m = _HUB_SNAPSHOT.match(parts[i])
        if m and parts[i + 1] == "snapshots" and parts[i + 2] not in ("", ".", ".."):
            return m.group("repo").replace("--", "/"), parts[i + 2], "/".join(parts[i + 3 :])
    return None


# not inside URLs (://), tags (</b>) or a path shown already ("…/name", "zoo/base", "ckpts/(old)/model",
# "x/'q'/m": a quote after a name), nor floor division ("j // 16"). A component may hold brackets and quotes
# ("ckpts/(old)/model", "x/<y"): a path runs to a space, a comma, a colon, a semicolon, a "|", a backtick or a closing
# tag, and :func:`_path_end` gives back what closes the text around it. (It stopped at the first bracket or quote:
# "…/ckpts/(old)/model" read "main/ckpts(old)…/model", its "/" lost.)
_ABS_PATH = re.compile(r"(?<![\w.~:/<>…-])/(?!/)(?:(?!</)[^\s`,;:|])+")
# a "/" after a closing bracket or a quote that follows a name ("(old)/model", "x/'q'/m"): inside a path shown
# already only where its word has a "/" before it ("ckpts/(old)/model"); "[Errno 2]/srv/x", "b'/srv/x'" (a bytes
# file name as OSError writes it) and "u'/srv/x'" are absolute paths
_AFTER_NAME = re.compile(r"(?:[)\]}]|[\w.~/<>…)\]}-]['\"’”])$")
_CLOSERS = {")": "(", "]": "[", "}": "{", ">": "<"}
_TRAILING = ".'\"’”/"  # after a path: the end of a sentence, a closing quote, a folder's "/" (Path drops it)


def _path_end(match: str) -> int:
    """Where the path ends in ``match`` (an :data:`_ABS_PATH` match): before its trailing punctuation, quotes and
    "/", and before a closing bracket that no bracket of the path opens ("(see /srv/x)", "['/srv/x']")."""
    end, count = len(match), {c: match.count(c) for c in (*_CLOSERS, *_CLOSERS.values())}
    while end > 1:
        last = match[end - 1]
        opener = _CLOSERS.get(last)
        if last not in _TRAILING and (opener is None or count[last] <= count[opener]):
            break
        end -= 1
        count[last] = count.get(last, 0) - 1
    return end


def _redacted_path(match: str) -> str:
    end = _path_end(match)
    if end <= 1:  # ("/)", "/.": no path)
        return match
    return display_path(match[:end]) + match[end:]  # (what follows the path: punctuation only, shown as it is)


def redact(text: str) -> str:
    """``text`` with every absolute path shown as :func:`display_path` shows it (error messages to visitors)."""

    def one(m: re.Match) -> str:
        before = text[max(0, m.start() - 4096) : m.start()]  # (bounded: a long log's every path rescanned it)
        if _AFTER_NAME.search(before[-2:]) and "/" in re.split(r"\s", before)[-1]:
            return m.group(0)  # (a component of a path shown already)
        return _redacted_path(m.group(0))

    return _ABS_PATH.sub(one, text)


def redact_value(value):
    """``value`` (JSON-like: dicts, lists, strings) as visitors may see it. A string that is itself an absolute
    path (a provenance field: base, finetune, run folder) is shown whole by :func:`display_path`; any other string
    is free text, its paths found by :func:`redact`. (Run over a path, ``redact`` stops at a space:
    "/home/alice smith/ckpt-7/base" was shown as "…/alice smith/ckpt-7/base".)"""
    if isinstance(value, str):
        single = os.path.isabs(value) and "\n" not in value  # (a note that starts with a path is text)
        return display_path(value) if single else redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


# Folders under a root that are never read: a checkout's .streamlit/ holds secrets.toml (the OIDC cookie and client
# secrets), .git/ its history and remotes (a clone's config may hold a token). The app's folder is a default root.
PRIVATE_FOLDERS = frozenset({".git", ".streamlit"})


# ... but a clone's weights stored by git-annex (model.safetensors -> .git/annex/objects/…) or kept by git-lfs
# (.git/lfs/objects/…) are a model's files, not its history or remotes.
_CONTENT_STORES = (("annex", "objects"), ("lfs", "objects"))


def _private(root: Path, resolved: Path) -> bool:
    """Whether ``resolved`` lies in a :data:`PRIVATE_FOLDERS` folder below ``root`` (case ignored: a
    case-insensitive file system opens ``.Streamlit/`` as ``.streamlit/``), other than a .git folder's store of
    file contents (:data:`_CONTENT_STORES`)."""
    parts = [part.lower() for part in resolved.relative_to(root).parts]
    return any(
        part in PRIVATE_FOLDERS and not (part == ".git" and _content_store(parts[i + 1 :]))
        for i, part in enumerate(parts)
    )


def _content_store(below: list[str]) -> bool:
    """Whether the parts ``below`` a .git folder lead into its store of file contents: ``annex/objects/…`` or
    ``lfs/objects/…``, directly or in a submodule's git folder (``modules/<name>/…``, names of several parts and
    nested submodules included)."""
    return any(
        tuple(below[i : i + 2]) in _CONTENT_STORES and (i == 0 or below[0] == "modules") for i in range(len(below))
    )


def _not_readable(shown: str) -> PathNotAllowedError:
    # (the same words whether anything is there or not: said before the file system is asked)
    return PathNotAllowedError(f"{shown}: not readable (this server never reads files in .git or .streamlit folders).")


def check_allowed(path: str | os.PathLike) -> Path:
    """Resolve ``path`` (symlinks included) and refuse it unless it lies under an allowed root, and not in a
    :data:`PRIVATE_FOLDERS` folder below that root."""
    resolved = _resolve(path)
    root = _root_of(resolved)
    shown = path if not Path(path).expanduser().is_absolute() else display_path(path)
    if root is not None:
        if _private(root, resolved):
            raise _not_readable(str(shown))
        return resolved
    raise PathNotAllowedError(
        f"{shown}: outside the folders this server may read (its owner adds folders with SUBNETVIZ_ROOTS)."
    )


def check_readable(path: str | os.PathLike, *, what: str | None = None) -> Path:
    """The one gate before a file is opened: ``path`` with symlinks resolved, refused when roots are
    enforced (:func:`enforce_roots`) and the file itself lies outside them or in a :data:`PRIVATE_FOLDERS` folder
    below its root, and refused when something other than a regular file is there (:func:`not_a_file`). ``what``
    says how the file was reached (e.g. "model.safetensors in zoo/base"), for the message. A path where nothing is
    passes: its reader says so."""
    resolved = _resolve(path, what)
    if enforce_roots():
        root = _root_of(resolved)
        if root is None:
            raise PathNotAllowedError(
                f"{what or display_path(path)}: leads outside the folders this server may read; refused."
            )
        if _private(root, resolved):
            raise _not_readable(what or display_path(path))
    kind = not_a_file(resolved)
    if kind:
        raise PathNotAllowedError(f"{what or display_path(path)}: {kind}, not a regular file; refused.")
    return resolved


_SPECIAL_FILES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_a_file(path: str | os.PathLike) -> str | None:
    """What is at ``path`` (links followed) when it is not a regular file: "a named pipe (FIFO)", "a folder", a
    socket or a device; None for a regular file or nothing there. Opening a named pipe waits for a writer that
    never comes (a page's thread, or ``analyze``, hung for good), and a device reads without end; asked with
    ``stat``, which opens nothing."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _SPECIAL_FILES if test(mode)), "a special file")


# The largest JSON file a checkpoint or mask brings: a shard index of the largest released models (DeepSeek-V3's
# names ~92 000 tensors) is about 9 MB; configs and adapter configs are kilobytes.
JSON_FILE_LIMIT = 64 * 2**20


def parse_json(raw: str | bytes, where: str, error: type[Exception], *, obj: bool = True, text: bool = False):
    """JSON text someone else wrote, parsed; ``error`` (a :class:`~subnetviz.errors.SubnetvizError` class)
    with ``where`` in its message for text that is not JSON, not UTF-8, nested too deeply for the parser
    (``[[[[…`` raises RecursionError, which no ``except JSONDecodeError`` catches), holding an integer of more
    digits than Python converts (a plain ValueError, which no ``except JSONDecodeError`` catches either) or,
    with ``obj``, not an object.

    With ``text`` (what :func:`read_json` always asks), also refused: a key or string that is not UTF-8 text.
    JSON's ``"\\udcff"`` is valid JSON and parses into a lone surrogate, which every later encoding refuses (a
    pyarrow table of a config's ``architectures``: the Workspace page's bug notice). The safetensors header reader
    asks for no such check: it names a bad tensor name or metadata entry itself
    (:func:`~subnetviz.checkpoints.header.check_utf8`)."""
    import json
    import sys

    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # (one line, a JSONL record: its column, not "line 1" or, with its newline, "line 2" beside the file's line)
        why = exc
        if isinstance(exc, json.JSONDecodeError) and "\n" not in (line := exc.doc.rstrip("\r\n")):
            why = f"{exc.msg} " + ("at the end of the line" if exc.pos >= len(line) else f"at column {exc.pos + 1}")
        raise error(f"{where}: not valid JSON ({why}).") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to read.") from None
    except ValueError:  # int("1" * 5000): CPython's limit on the digits of an integer read from text
        raise error(
            f"{where}: holds a number of more than {sys.get_int_max_str_digits():,} digits, which no checkpoint or "
            "mask file needs. Refused."
        ) from None
    if obj and not isinstance(value, dict):
        raise error(f"{where}: expected a JSON object, found {type(value).__name__}.")
    if text and _may_hold_surrogates(raw) and (bad := _lone_surrogate(value)):
        at, shown = bad
        raise error(f"{where}: {at} {shown} is not valid UTF-8 text (a lone surrogate escape); refused.")
    return value


# A lone surrogate reaches a parsed string only as JSON's escape \uD800 to \uDFFF (UTF-8 bytes decode to none)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _may_hold_surrogates(raw: str | bytes) -> bool:
    """Whether the JSON text ``raw`` may parse into a string holding a lone surrogate: only where it holds the
    escape of one, or (text given as ``str``) a surrogate itself. A cheap test before the walk of every string."""
    if isinstance(raw, bytes | bytearray):
        return _SURROGATE_ESCAPE_BYTES.search(raw) is not None
    return _SURROGATE_ESCAPE.search(raw) is not None or not _utf8(raw)


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate(value) -> tuple[str, str] | None:
    """The first key or string in the parsed JSON ``value`` that is not UTF-8 text: where it lies (``value at
    ['architectures'][0]``, ``key in ['weight_map']``) and the string as Python writes it (escaped); None if
    there is none. Walked with a stack, not recursion: the parser accepts nesting deeper than a recursive walk."""
    stack = [(value, "")]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            if not _utf8(v):
                return f"value at {at}" if at else "the value", _text_shown(v)
        elif isinstance(v, dict):
            for k in v:
                if not _utf8(k):
                    return f"key in {at}" if at else "key", _text_shown(k)
            stack.extend((x, f"{at}[{_text_shown(k)}]") for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None


def _text_shown(s: str) -> str:
    """``s`` as Python writes it (a surrogate as ``\\udcff``), its middle cut when long."""
    return repr(s) if len(s) <= 120 else f"{s[:60]!r}…{s[-20:]!r} ({len(s):,} characters)"


def read_json(path: str | os.PathLike, error: type[Exception], *, what: str | None = None, obj: bool = True):
    """A JSON file that came with a checkpoint or mask: through :func:`check_readable`, its size checked
    against :data:`JSON_FILE_LIMIT` before anything is read, parsed by :func:`parse_json`."""
    where = what or display_path(path)
    resolved = check_readable(path, what=what)
    try:
        with open(resolved, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(JSON_FILE_LIMIT + 1) if size <= JSON_FILE_LIMIT else b""
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror or exc}).") from None
    if size > JSON_FILE_LIMIT or len(raw) > JSON_FILE_LIMIT:
        raise error(
            f"{where}: {max(size, len(raw)):,} bytes, more than a checkpoint's JSON file holds "
            f"({JSON_FILE_LIMIT:,}); refused before reading."
        )
    return parse_json(raw, where, error, obj=obj, text=True)


LOCAL_COMPUTE = "this server"
"""The sidebar's name for computing in the server's own process (no cluster)."""
RAY_ADDRESS_ENV = "SUBNETVIZ_RAY_ADDRESS"  # the default cluster (jobs.ray_backend.ray_address)
_CLUSTER_ADDRESS = re.compile(r"(ray://)?([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}|auto")


def ray_clusters() -> dict[str, str]:
    """Where a visitor may have the pages compute: choice name -> Ray address (``""``: this server's
    process), the default first.

    The operator names every address; a visitor only picks one of these names (the app keeps the name,
    never an address, in the URL), so a shared dashboard never connects to a host its owner did not list.

    - ``SUBNETVIZ_RAY_ADDRESS`` (``host:port``): the default cluster.
    - ``SUBNETVIZ_RAY_ADDRESSES``: more, comma-separated, each ``address`` or ``name=address``
      (``gpu-lab=10.0.0.5:6379``: shown as ``gpu-lab``, the address stays on the server; naming the
      default's address names the default); the entry ``local`` offers this server's process.
    - This server is offered when ``SUBNETVIZ_RAY_ADDRESS`` is unset (then it is the default) or the
      list names ``local``: with a default cluster, a visitor cannot move the work onto the web server
      unless its owner allows it.
    """
    from subnetviz.errors import ConfigError

    default = (os.environ.get(RAY_ADDRESS_ENV) or "").strip()
    named: dict[str, str] = {}
    for e in (e.strip() for e in (os.environ.get("SUBNETVIZ_RAY_ADDRESSES") or "").split(",")):
        if not e or e == "local":
            named.update({LOCAL_COMPUTE: ""} if e else {})
            continue
        name, _, address = (x.strip() for x in e.rpartition("=")) if "=" in e else ("", "", e)
        if not _CLUSTER_ADDRESS.fullmatch(address) or name == LOCAL_COMPUTE or ("=" in e and not name):
            raise ConfigError(
                f"SUBNETVIZ_RAY_ADDRESSES: {e!r} is not 'host:port' or 'name=host:port' (or 'local'); "
                "entries are separated by commas."
            )
        if named.get(name or address, address) != address:
            raise ConfigError(f"SUBNETVIZ_RAY_ADDRESSES names {name!r} twice, for two addresses.")
        if name and name == default and address != default:  # (it replaced the default under its own name)
            raise ConfigError(
                f"SUBNETVIZ_RAY_ADDRESSES: {e!r} names another address after the default cluster {default!r}; "
                "give it a name of its own."
            )
        named[name or address] = address
    if not default:
        return {LOCAL_COMPUTE: "", **named}
    first = next((n for n, a in named.items() if a == default), default)
    return {first: default, **{n: a for n, a in named.items() if a != default}}


MEMORY_USABLE = 0.8
"""Share of the machine's available memory (of a GPU's free memory) one computation may plan to hold."""


CGROUP_BOUND = "the memory limit of this container or job (cgroup)"
"""What a refusal names where the control group's limit leaves less than the machine has (it said "this machine
has 1.2 GiB available" on a 64 GiB machine, and sent the user looking for the memory in the wrong place)."""


def available_memory_bytes() -> int:
    """The memory this process may still take: MemAvailable from /proc/meminfo (Linux; else free physical pages
    from ``os.sysconf``), or less where its control group's memory limit leaves less (a container started with
    ``--memory``, a Slurm job's ``--mem``: /proc/meminfo shows the whole machine's, and the kernel kills the
    process at the group's limit without a word; see :func:`cgroup_headroom`)."""
    have = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if have is None:
        have = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    room = cgroup_headroom()
    return have if room is None else min(have, room)


def cgroup_headroom(proc_cgroup: str | os.PathLike = "/proc/self/cgroup", root: str | os.PathLike = "/sys/fs/cgroup"):
    """Bytes left under the tightest memory limit of this process's control group and the groups above it
    (cgroup v2's ``memory.max``, v1's ``memory.limit_in_bytes``), counting its file-backed page cache as free:
    usage less ``active_file`` and ``inactive_file`` (v1's ``total_`` ones), as MemAvailable does, since the kernel
    reclaims those pages before an out-of-memory kill. Model files read twice sit on the active list; shared memory
    and anonymous pages (on the anon lists, not in these counts) stay used. None where no limit applies or none can
    be read. A container with its own cgroup namespace sees its group as the mount's root, one without it a path
    that is not mounted: every level of the path that exists is read."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 (unified): memory.max, memory.current
            mount, files = Path(root), ("memory.max", "memory.current", ("active_file", "inactive_file"))
            if not (mount / "cgroup.controllers").is_file():
                mount = Path(root) / "unified"  # a hybrid layout mounts v2 here (usually without memory)
        elif "memory" in controllers.split(","):
            mount, files = (
                Path(root) / "memory",
                ("memory.limit_in_bytes", "memory.usage_in_bytes", ("total_active_file", "total_inactive_file")),
            )
        else:
            continue
        rel = Path(path.lstrip("/"))
        for level in {mount / p for p in [rel, *rel.parents]}:
            room = _cgroup_level_headroom(level, *files)
            if room is not None:
                best = room if best is None else min(best, room)
    return best


def _cgroup_level_headroom(level: Path, limit_file: str, usage_file: str, file_keys: tuple[str, ...]) -> int | None:
    """One group's limit less its usage, its file-backed page cache (``file_keys`` of memory.stat) counted as free;
    None without a limit."""
    try:
        limit = (level / limit_file).read_text().strip()
        usage = int((level / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # v1 writes "no limit" as ~2**63
        return None
    cache = 0
    try:
        for stat in (level / "memory.stat").read_text().splitlines():
            key, _, value = stat.partition(" ")
            if key in file_keys and value.strip().isdigit():
                cache += int(value)
    except OSError:
        pass
    return max(int(limit) - max(usage - cache, 0), 0)


def require_memory(what: str, host_bytes: int, device: str = "cpu", device_bytes: int = 0) -> None:
    """Refuse before anything is loaded when ``what`` would hold more than :data:`MEMORY_USABLE` of the memory
    available: ``host_bytes`` of this machine's, and on a CUDA ``device`` ``device_bytes`` of its free memory.
    A page's computation runs in the server's process, which an out-of-memory kill would take down with
    every visitor's session; a job would die without saying why. ConfigError with both figures."""
    from subnetviz.errors import ConfigError

    short = _host_shortfall(host_bytes)
    if short:
        raise ConfigError(
            f"{what} {short}. Refused before loading: use a machine (or a Ray cluster under 'Compute on') with "
            "more memory, or a GPU" + (", or raise that limit." if CGROUP_BOUND in short else ".")
        )
    short = _device_shortfall(device, device_bytes)
    if short:
        raise ConfigError(f"{what} {short}. Refused before loading: use a larger GPU, or the CPU.")


MEMORY_LOCK = threading.RLock()
"""Held, in this process, by work that compares what it will hold with the memory available and then allocates it
(storing an uploaded mask; the app's computations that load whole models or plan their memory): two visitors'
checks at once each passed against the same free memory, then together held more than it. Reentrant: such work
may start another in its thread."""


def gib(n: float) -> str:
    """Bytes for people: "1.25 GiB", "300.0 MiB"."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def memory_shortfall(host_bytes: int, device: str = "cpu", device_bytes: int = 0) -> str | None:
    """What is short when ``host_bytes`` of this machine's memory (and on a CUDA ``device`` ``device_bytes`` of
    its free memory) are over :data:`MEMORY_USABLE` of what is available: "needs about 7.70 GiB of memory;
    this machine has 6.00 GiB available (80 % of it usable)", or None when both fit."""
    return _host_shortfall(host_bytes) or _device_shortfall(device, device_bytes)


def _host_shortfall(host_bytes: int) -> str | None:
    have = available_memory_bytes()
    if host_bytes <= MEMORY_USABLE * have:
        return None
    room = cgroup_headroom()  # (read again: what bounds it is said, not only how much)
    where = f"{CGROUP_BOUND} leaves" if room is not None and room <= have else "this machine has"
    return f"needs about {gib(host_bytes)} of memory; {where} {gib(have)} available ({MEMORY_USABLE:.0%} of it usable)"


def _device_shortfall(device: str, device_bytes: int) -> str | None:
    if not device_bytes or not str(device).startswith("cuda"):
        return None
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    if device_bytes <= MEMORY_USABLE * free:
        return None
    return (
        f"needs about {gib(device_bytes)} of GPU memory; {device} has {gib(free)} free "
        f"({MEMORY_USABLE:.0%} of it usable)"
    )


CONFIRM_ABOVE_S = 60.0
"""Seconds of estimated work above which a page asks before it decomposes every matrix (viewers may not start it)."""


def confirm_above_seconds() -> float:
    """``SUBNETVIZ_CONFIRM_ABOVE_S`` (default :data:`CONFIRM_ABOVE_S`): the estimated seconds of spectra or
    subspace work above which a page asks before starting it, and refuses it to viewers who may not launch
    jobs (:func:`subnetviz.ui.confirm_heavy`). ``0`` asks before any; ``inf`` never asks."""
    from subnetviz.errors import ConfigError

    raw = (os.environ.get("SUBNETVIZ_CONFIRM_ABOVE_S") or "").strip()
    if not raw:
        return CONFIRM_ABOVE_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0:  # also NaN
        raise ConfigError(f"SUBNETVIZ_CONFIRM_ABOVE_S={raw!r}: expected a number of seconds >= 0 (or 'inf'), e.g. 60.")
    return value


CACHE_LIMIT_GB = 20.0
"""Gigabytes the analyses in the cache may take before the least recently used are removed."""


def cache_limit_bytes() -> float:
    """``SUBNETVIZ_CACHE_GB`` (default :data:`CACHE_LIMIT_GB`; ``inf``: no limit): the size of the analyses kept
    in the cache (:func:`subnetviz.cache.enforce_limit`). Each distinct URL of a shared server may publish one
    (another order of the finetunes, another precision or tolerance), hundreds of MB for a large model."""
    return _gigabytes("SUBNETVIZ_CACHE_GB", CACHE_LIMIT_GB)


def _gigabytes(name: str, default: float) -> float:
    """Bytes of the environment variable ``name``, a number of gigabytes > 0 or ``inf`` (``default`` when unset
    or blank); anything else is refused in one line naming it."""
    from subnetviz.errors import ConfigError

    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default * 2**30
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0:  # also NaN
        raise ConfigError(f"{name}={raw!r}: expected a number of gigabytes > 0 (or 'inf'), e.g. {default:g}.")
    return value * 2**30


UPLOADS_LIMIT_GB = 2.0
"""Gigabytes the stored uploaded masks may take together before a new upload is refused."""


def uploads_limit_bytes() -> float:
    """``SUBNETVIZ_UPLOADS_GB`` (default :data:`UPLOADS_LIMIT_GB`; ``inf``: no limit): the size the uploaded masks
    stored in the uploads folder may take together (kept update-mask copies and imported pickles there are not
    counted). Past it an upload is refused in one line, and nothing stored is removed
    (a saved mask may be the one a visitor's link or a queued run names); the server's operator frees room."""
    return _gigabytes("SUBNETVIZ_UPLOADS_GB", UPLOADS_LIMIT_GB)


MAX_QUEUED = 16
"""Jobs that may wait in a server's queue (queued, not yet started) before a new one is refused."""


def max_queued_jobs() -> int:
    """``SUBNETVIZ_MAX_QUEUED`` (default :data:`MAX_QUEUED`): the jobs that may wait in the queue of a runs folder
    (a server's) before :meth:`~subnetviz.jobs.runner.JobRunner.submit` refuses another. Each queued job becomes a
    run folder, a finished training run a full model copy: the queue bounds what visitors who may launch can pile
    up."""
    from subnetviz.errors import ConfigError

    raw = (os.environ.get("SUBNETVIZ_MAX_QUEUED") or "").strip()
    if not raw:
        return MAX_QUEUED
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:  # ('²'.isdigit(), but int() refuses it)
        raise ConfigError(f"SUBNETVIZ_MAX_QUEUED={raw!r}: expected a whole number of jobs >= 1, e.g. 16.")
    return int(raw)


def check_settings() -> None:
    """Every ``SUBNETVIZ_*`` setting the server reads while it serves, read once: ``subnetviz app`` calls it before
    the server starts, so a bad value is refused in one line at start-up (naming the variable), not on the first
    page that publishes an analysis, stores an upload or queues a job. ``SUBNETVIZ_DEVICE`` is checked only when it
    is set (the check imports torch)."""
    cache_limit_bytes()
    uploads_limit_bytes()
    max_queued_jobs()
    confirm_above_seconds()
    ray_clusters()
    if default_device() != "auto":
        resolve_device("auto")


def default_device() -> str:
    """``SUBNETVIZ_DEVICE`` (blank: ``auto``): the device ``auto`` stands for."""
    return (os.environ.get("SUBNETVIZ_DEVICE") or "").strip() or "auto"


def resolve_device(device: str | None = None) -> str:
    """The torch device of a device choice: ``auto`` (and None or blank) -> ``SUBNETVIZ_DEVICE`` when it names one,
    else ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked to be
    there. A device that is not there, or no device, is a one-line :class:`~subnetviz.errors.ConfigError` (naming
    the variable where it came from it)."""
    import torch

    from subnetviz.errors import ConfigError

    device = device or "auto"
    if device == "auto" and default_device() != "auto":
        env = default_device()
        try:
            return resolve_device(env)
        except ConfigError as exc:  # (its advice "use 'cpu' or 'auto'" would be circular here: 'auto' is env)
            reason = str(exc).split("; use ")[0].rstrip(".")
            raise ConfigError(
                f"SUBNETVIZ_DEVICE={env!r} (the device 'auto' stands for): {reason}; "
                "set it to cpu, or unset it for CUDA when present."
            ) from None
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isascii() and index.isdigit())):
        raise ConfigError(f"device {device!r} is not one subnetviz can use; expected auto, cpu, cuda or cuda:N.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU; use 'cpu' or 'auto'.")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 …).")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but torch sees no Apple GPU; use 'cpu' or 'auto'.")
    return device
