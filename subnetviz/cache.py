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
- :func:`atomic_write`: the same for a single file (JSON status, manifests, exports);
- every published entry ends with a manifest (:data:`MANIFEST`: each file's size and sha256, and the
  subnetviz version that wrote it), written last; :meth:`CacheEntry.status` verifies it on read, and a
  corrupt or truncated entry is removed (with a notice, kept until a new copy is published, so that the caller
  that computes it again says it) so that it is computed again, never served;
- :func:`sweep`: temporary folders left by a killed writer are removed at start;
- :func:`enforce_limit`: the analyses over ``SUBNETVIZ_CACHE_GB`` are removed, least recently used first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KEY_LENGTH = 24  # hex digits of sha256
MANIFEST = ".manifest.json"
HASH_LIMIT = 256 << 20  # files above this are verified by size only (a 7B model's packed masks: ~1 GB)


_UMASK = os.umask(0o022)  # the process' umask (read by setting it; put back at once, at import)
os.umask(_UMASK)


def _tmp_name(target: Path, tag: str = "tmp") -> Path:
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}-{time.monotonic_ns()}")


def longest_tmp_name(name: str) -> int:
    """The most bytes :func:`_tmp_name` makes of a file called ``name``: a pid of up to 7 digits (Linux's
    largest is 4194304) and a clock of up to 20 (a 64-bit count of nanoseconds). A name the file system takes
    may still be too long once these are added, and the failure would then name the temporary file."""
    return len(f".{name}.tmp-{4194304}-{2**64}".encode("utf-8", "surrogateescape"))


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


def stat_identity(st: os.stat_result) -> str:
    """What tells one file's contents from another's without reading them: inode, size, mtime and ctime. Size and
    mtime alone matched two files whose mtime was copied (cp -p, rsync -a, an archive's whole seconds); the ctime
    cannot be set by hand, so a file rewritten in place with its old mtime put back reads as new too."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def file_stamp(path: str | os.PathLike | None) -> str:
    """A cheap fingerprint of a file (resolved path and :func:`stat_identity`) without reading it.

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
        return f"{resolved}:{stat_identity(st)}"
    parts = [str(resolved)]
    for child in sorted(resolved.iterdir()):
        try:
            cst = child.stat()  # follows symlinks (the Hugging Face cache's snapshot files)
        except OSError:
            continue
        if not child.is_dir():
            parts.append(f"{child.name}:{stat_identity(cst)}")
    # (a file name that is not UTF-8, as an archive from elsewhere may extract, is stamped by its bytes)
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:KEY_LENGTH]


@contextmanager
def atomic_folder(target: str | os.PathLike, *, replace: bool = True, exclusive: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on normal exit it becomes ``target``.

    ``replace``: an existing ``target`` is replaced (moved aside, then removed). With
    ``replace=False`` an existing ``target`` wins and the new folder is discarded: the way to
    publish a cache entry that a concurrent identical computation may have published first.
    ``exclusive`` (with ``replace=False``): ``target`` is taken only while it is absent or an empty folder,
    in one rename; otherwise FileExistsError, the new folder discarded (a user's output that another run wrote
    meanwhile is neither replaced nor silently kept as if it were this one's).
    On an exception the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    tmp.mkdir()
    try:
        yield tmp
        if exclusive and not replace:
            try:
                os.rename(tmp, target)  # over nothing or an empty folder only (POSIX), atomically
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) or (target.exists() and not target.is_dir()):
                    raise FileExistsError(errno.EEXIST, "taken meanwhile", str(target)) from None
                raise
            return
        if target.exists():
            if not replace:
                return  # published by someone else meanwhile: theirs is the same result
            old = _tmp_name(target, "old")
            try:
                os.replace(target, old)
                os.replace(tmp, target)
            finally:
                # the old one removed once the new one is in place, else put back: an interrupt (Ctrl-C, SIGTERM)
                # between the two renames removed the old one and left nothing at ``target``
                if os.path.lexists(old) and not os.path.lexists(target):
                    os.replace(old, target)
                elif old.is_dir() and not old.is_symlink():
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


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (``safetensors.save_file``);
    on normal exit it is renamed over ``path``, on an exception removed: readers never see half a file."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        # as any new file of this process: safetensors writes 0600, so a shared result folder's masks were
        # unreadable to the others who could read every other file in it
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        # the failure is the one to say: removing the temporary file can fail too (a read-only file system
        # refuses even removing one that was never made), and that error replaced it
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file renamed over it: readers see
    the old file or the new one, never half of it."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return Path(path)


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file standing where ``path``'s folder, or a folder above it, should be (``afile/r.html`` with
    ``afile`` a file), else None: said as that, not as a missing folder or mkdir's "File exists"."""
    for folder in Path(path).parents:
        if folder.exists():
            return None if folder.is_dir() else folder
        if folder.is_symlink():  # a link to nothing: neither a folder nor creatable
            return folder
    return None


def file_digest(path: str | os.PathLike) -> str:
    """The sha256 of a file (hex), read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike) -> Path:
    """Record every file under ``folder`` (relative path, size, sha256 up to :data:`HASH_LIMIT`) and the
    version that wrote them, as the folder's last file."""
    from subnetviz.version import version_info

    folder = Path(folder)
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        size = f.stat().st_size
        files[f.relative_to(folder).as_posix()] = {
            "size": size,
            "sha256": file_digest(f) if size <= HASH_LIMIT else None,
        }
    return atomic_write(folder / MANIFEST, json.dumps({"files": files, **version_info()}, indent=1))


def add_to_manifest(folder: str | os.PathLike) -> Path | None:
    """List in ``folder``'s manifest the files put there after it was written (`analyze` adds its subspaces beside
    an analysis copied with its manifest): each one's size and sha256, the files listed as they were recorded.
    A manifest that cannot be read is written anew; None where the folder has none."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return write_manifest(folder)
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = f.relative_to(folder).as_posix()
        if rel not in files:
            size = f.stat().st_size
            files[rel] = {"size": size, "sha256": file_digest(f) if size <= HASH_LIMIT else None}
    return atomic_write(folder / MANIFEST, json.dumps({**manifest, "files": files}, indent=1))


def verify_manifest(folder: str | os.PathLike, only=None) -> str | None:
    """``None`` when every file the manifest lists is there with its size and hash, else what is wrong.
    ``only``: check just these relative paths (those the manifest lists), e.g. the files a reader opens."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        if only is not None:
            files = {rel: files[rel] for rel in only if rel in files}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "no readable manifest (an interrupted or older write)"
    for rel, want in files.items():
        f = folder / rel
        try:
            size = f.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != want["size"]:
            return f"{rel} has {size:,} bytes, {want['size']:,} were written"
        try:  # (the folder can be removed between the two: evicted by another process, or moved aside as damaged)
            digest = file_digest(f) if want.get("sha256") else None
        except OSError:
            return f"{rel} is missing"
        if digest is not None and digest != want["sha256"]:
            return f"{rel} does not hold what was written (sha256 differs)"
    return None


def read_json(path: str | os.PathLike, default=None):
    """A JSON file's content, or ``default`` when it is missing, unreadable or not JSON (a status or
    state file that a killed writer never wrote)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


# The columns of the CSVs this package writes that hold names or other text: a model's label, a tensor's name or
# key, a token, a mask or experiment name, a drivers grid's factor value. Read as text whatever they look like:
# pandas infers a column's type from its values, so labels 100 and 200 (step-numbered checkpoint folders) came
# back as the integers 100 and 200 and matched no label "100", and "007" and "7" became one model 7.
TEXT_COLUMNS = frozenset(
    {
        "model", "label", "a", "b", "members", "key", "name", "group", "block", "module", "param", "shape",
        "dtype", "stored_as", "expert", "method", "note", "experiment", "mask", "side", "order", "token",
        "domain", "router", "factor", "value", "algorithm", "precision", "optimizer", "data",
    }
)  # fmt: skip


def read_frame(path: str | os.PathLike, **kwargs):
    """A CSV this package wrote (``DataFrame.to_csv``), read back as written: only an empty field is
    missing, as ``to_csv`` writes NaN. pandas' default also reads "NA", "None", "null", "nan" and a dozen
    more as missing: a model labelled "NA" vanished from its own analysis, a token "None" from its prompt.
    The :data:`TEXT_COLUMNS` present are read as text (``str``; an empty field stays missing); a ``dtype``
    given here is added to that and wins for its columns."""
    import pandas as pd

    dtype = {c: str for c in TEXT_COLUMNS}  # (a column not in the file is not looked for)
    given = kwargs.pop("dtype", None)
    if given is not None and not isinstance(given, dict):  # one dtype for every column: as asked
        dtype = given
    else:
        dtype.update(given or {})
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=dtype, **kwargs)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = None) -> Path:
    """``obj`` as JSON through :func:`atomic_write` (paths and other objects as their ``str``)."""
    return atomic_write(path, json.dumps(obj, indent=indent, default=str) + ("\n" if indent else ""))


@dataclass(frozen=True)
class CacheEntry:
    """One cached result: a folder that exists only once it is complete, with a manifest written last."""

    kind: str
    key: str
    folder: Path

    def status(self) -> tuple[bool, str | None]:
        """``(ready, notice)``: ready when the folder exists and its manifest verifies. A corrupt entry is
        removed and reported in ``notice``, so the caller computes it again instead of serving it.

        The entry is marked used (:func:`touch`) before it is verified, so that :func:`enforce_limit` in another
        process keeps it while it is hashed and then read. An entry that vanishes meanwhile (evicted, or removed as
        damaged by another reader) is a plain miss; one replaced meanwhile by a new copy (another process computed it
        again) is verified again.

        The notice of a removal is kept (in this process) until a new copy is published: a miss reports it again, so
        the caller that computes it says it, though a check before it (:attr:`ready`, an ``is_cached``) removed the
        entry. (Dropped there, the page that computed it again said nothing.)"""
        for _ in range(2):
            before = _identity(self.folder)
            if before is None or not self.folder.is_dir():
                return False, self.notice
            touch(self.folder)
            problem = verify_manifest(self.folder)
            now = _identity(self.folder)
            if now is None:
                return False, self.notice  # gone while it was verified
            if now != before:
                continue  # another copy took its place while it was verified: verify that one
            if problem is None:
                self._keep(None)  # (a sound copy is here: what was said of an earlier one is over)
                return True, None
            aside = _tmp_name(self.folder, "corrupt")
            try:
                os.replace(self.folder, aside)
            except OSError:
                return False, self.notice  # another reader removed it first, or it was evicted
            if _identity(aside) != now:  # a new copy took the name just before the move: put it back
                with contextlib.suppress(OSError):
                    os.rename(aside, self.folder)
                return False, None
            shutil.rmtree(aside, ignore_errors=True)
            notice = f"the cached {self.kind} result {self.key} was damaged ({problem}); computed again"
            self._keep(notice)
            return False, notice
        return False, None  # replaced twice while verified: computed again, the copy there wins at publish

    @property
    def ready(self) -> bool:
        """Whether the entry is here and sound (:meth:`status`; a damaged one is removed, its notice kept)."""
        return self.status()[0]

    @property
    def notice(self) -> str | None:
        """What :meth:`status` said when it removed this entry as damaged, until a new copy is published."""
        with _DAMAGED_LOCK:
            return _DAMAGED.get(str(self.folder))

    def _keep(self, notice: str | None) -> None:
        with _DAMAGED_LOCK:
            if notice is None:
                _DAMAGED.pop(str(self.folder), None)
            else:
                _DAMAGED[str(self.folder)] = notice

    @contextmanager
    def publish(self, *, replace: bool = False) -> Iterator[Path]:
        """Write the result into the yielded folder; it appears as :attr:`folder` when the block ends,
        with its manifest written last. An entry already there wins (a concurrent identical computation),
        unless ``replace`` (a result computed again because the one there is out of date).

        The cache's size limit (``SUBNETVIZ_CACHE_GB``) is read first: a bad value is refused before anything is
        written (read after the rename, it failed the command yet left the entry published)."""
        from subnetviz.config import cache_dir, cache_limit_bytes

        root = cache_dir().resolve()
        # (None: not a folder under the cache, e.g. one a user named, such as analyze --out)
        limit = cache_limit_bytes() if root in self.folder.resolve().parents else None
        with atomic_folder(self.folder, replace=replace) as tmp:
            yield tmp
            write_manifest(tmp)
        self._keep(None)  # (a new copy: the damage of the old one has been said by whoever computed it)
        if limit is not None:
            enforce_limit(root, limit, keep=self.folder)


_DAMAGED: dict[str, str] = {}  # entry folder -> the notice of its removal as damaged, until a new copy is published
_DAMAGED_LOCK = threading.Lock()


def _identity(folder: Path) -> tuple[int, int] | None:
    """Which folder is at ``folder`` now (device and inode), None when nothing is (without following a link)."""
    try:
        st = folder.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


USED = ".used"  # an entry's last use: this file's mtime (not in its manifest)
EVICTABLE = ("updates", "subspaces", "behavior", "bigram")  # analyses a page computes again when asked
EVICT_GRACE_S = 600.0  # an entry used this recently is kept, over the limit or not


def touch(folder: str | os.PathLike) -> None:
    """Mark a cache entry as used now (for :func:`enforce_limit`), at most once a minute."""
    used = Path(folder) / USED
    try:
        if time.time() - used.stat().st_mtime < 60:
            return
    except OSError:
        pass
    try:
        used.touch()
    except OSError:
        pass  # a read-only cache: nothing is evicted from it either


def _size_and_use(folder: Path) -> tuple[int, float]:
    """An entry's bytes (its manifest's sizes) and last use (its :data:`USED` stamp, else its manifest's)."""
    try:
        manifest = folder / MANIFEST
        files = json.loads(manifest.read_text())["files"]
        size = sum(int(f["size"]) for f in files.values()) + manifest.stat().st_size
        written = manifest.stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):
        size, written = _bytes_under(folder), 0.0
    try:
        return size, max(written, (folder / USED).stat().st_mtime)
    except OSError:
        return size, written


def _bytes_under(folder: Path) -> int:
    """The bytes of the files under ``folder``, those that vanish while counted (another process evicting it) left
    out."""
    total = 0
    for dirpath, _, names in os.walk(folder):  # (os.walk skips a folder that vanishes; Path.rglob raised)
        for name in names:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(dirpath, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def enforce_limit(root: str | os.PathLike, limit: float, *, keep: str | os.PathLike | None = None) -> list[Path]:
    """Remove the least recently used analyses (:data:`EVICTABLE` kinds under ``root``) until they take at most
    ``limit`` bytes; never ``keep`` (the entry just written) nor one used in the last :data:`EVICT_GRACE_S`. On a
    shared server every distinct URL may publish an entry, and nothing else ever removed one. Returns what was
    removed. A page holding a removed analysis in memory computes it again (``ui.update_analysis``)."""
    root, now = Path(root), time.time()
    entries = []
    for kind in EVICTABLE:
        try:
            folders = [f for f in (root / kind).iterdir() if f.is_dir() and not f.name.startswith(".")]
        except OSError:
            continue
        entries += [(*_size_and_use(f), f) for f in folders]
    total = sum(size for size, _, _ in entries)
    removed: list[Path] = []
    keep = Path(keep).resolve() if keep is not None else None
    for size, used, folder in sorted(entries, key=lambda e: e[1]):
        if total <= limit:
            break
        if folder.resolve() == keep or now - used < EVICT_GRACE_S:
            continue
        if time.time() - _size_and_use(folder)[1] < EVICT_GRACE_S:
            continue  # a reader marked it used since it was listed (CacheEntry.status touches before verifying)
        aside = _tmp_name(folder, "old")
        try:
            os.replace(folder, aside)  # gone at once for readers; another process evicting it first is fine
        except OSError:
            continue
        shutil.rmtree(aside, ignore_errors=True)
        total -= size
        removed.append(folder)
    return removed


def writer_gone(pid: int) -> bool:
    """Has the writer of a leftover named with ``pid`` ended? Only where no process has the pid, or the one that has
    it has ended unreaped (a zombie: nothing it holds is written any more). A live process holding the pid keeps the
    leftover, whatever it is: it may be the writer in a PID namespace other than ours (every container's server is
    PID 1, and a second container sharing the cache saw its own, later PID 1 "reuse" the first one's pid: its live
    folder was swept), and a creation time cannot tell (psutil forms it from the wall clock, which a clock step
    moves). So a killed PID 1's leftovers wait for :func:`sweep`'s age rule."""
    import psutil

    from subnetviz.jobs.registry import creation_time, process_start

    if process_start(pid) is not None:
        return False
    return creation_time(pid) is not None or not psutil.pid_exists(pid)  # a zombie, or no such process


def sweep_beside(target: str | os.PathLike) -> list[Path]:
    """What a killed writer of ``target`` (an output a user named) left beside it: its temporary folder or file
    (``.NAME.tmp-PID-…``) is removed, and the earlier result it had moved aside to replace (``.NAME.old-PID-…``)
    is put back where it was if ``target`` is missing (killed between the two renames), else removed; only for
    writers whose process is gone (:func:`writer_gone`). Only ``target``'s own siblings are looked at. Returns what
    was removed.

    There is no age rule here, unlike :func:`sweep`: a live writer may leave its folder untouched for hours
    (``analyze --subspaces`` holds the analysis it copied while the subspaces are computed)."""
    import glob

    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.glob(f".{glob.escape(target.name)}.*"):
        tag, _, rest = p.name[len(target.name) + 2 :].partition("-")
        pid = rest.split("-", 1)[0]
        if tag not in ("tmp", "old") or not (pid.isascii() and pid.isdigit()):
            continue
        try:
            if not writer_gone(int(pid)):
                continue
        except OSError:
            continue  # (removed meanwhile)
        if tag == "old" and not target.exists() and not target.is_symlink():
            os.replace(p, target)  # the earlier result, back in its place
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def sweep(root: str | os.PathLike, *, older_than_s: float = 3600.0) -> list[Path]:
    """Remove the temporary folders and files (``.NAME.tmp-PID-…``, ``.old-``, ``.corrupt-``) that a
    killed writer left under ``root``: those whose writer process is gone (:func:`writer_gone`), or unchanged for
    ``older_than_s``. Returns what was removed."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    now = time.time()
    for p in root.rglob(".*"):
        parts = p.name.rsplit(".", 1)[-1].split("-")
        if (
            len(parts) < 3
            or parts[0] not in ("tmp", "old", "corrupt")
            or not (parts[1].isascii() and parts[1].isdigit())
        ):
            continue
        try:
            st = p.lstat()
            # (the age from its last change, not its st_mtime: a copy gives a live writer's folder its source's)
            stale = writer_gone(int(parts[1])) or now - st.st_ctime > older_than_s
        except OSError:
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def entry(kind: str, key: str, *, root: str | os.PathLike | None = None) -> CacheEntry:
    """The cache entry ``key`` of ``kind``: ``cache_dir()/<kind>/<key>`` (or ``root/<key>`` when given)."""
    if root is None:
        from subnetviz.config import cache_dir

        folder = cache_dir() / kind / key
    else:
        folder = Path(root) / key
    return CacheEntry(kind, key, folder)
