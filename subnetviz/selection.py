"""What the shared sidebar selects, without Streamlit: zoo members and finished runs as choices,
choice resolution under the allowed roots, uploaded masks, and the saved masks the app can see.

:mod:`subnetviz.ui` draws the widgets; everything here is plain Python, usable from tests and the CLI.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from subnetviz import config
from subnetviz.cache import file_digest, file_stamp
from subnetviz.errors import PathNotAllowedError

PRECISIONS = ["stored", "bf16", "fp32", "fp16"]


@dataclass(frozen=True)
class Workspace:
    """What the sidebar selected: paths are resolved and checked against the allowed roots."""

    base: str | None
    base_label: str
    finetuned: tuple[tuple[str, str], ...]  # (label, path)
    masks: tuple[tuple[str, str], ...]  # (label, path) of saved mask files
    precision: str | None  # None = stored dtype
    device: str
    zoo_root: str | None
    # (label, path, why) of finetunes refused (no path: a choice outside the roots) or that cannot be read
    left_out: tuple[tuple[str, str, str], ...] = ()

    @property
    def labels(self) -> list[str]:
        return [lab for lab, _ in self.finetuned]

    @property
    def paths(self) -> list[str]:
        return [p for _, p in self.finetuned]


def zoo_members(z) -> dict[str, str]:
    """Choice id -> absolute path: zoo members (base first), the zoo's series, then finished training runs."""
    out: dict[str, str] = {}
    if z is not None:
        out.update({m.id: str(m.path) for m in z.members})
        out.update({f"grpo-s0@{step}": str(path) for step, path in z.series})
    out.update(_run_models(str(config.runs_dir()), listing_stamp())[0])
    return out


def _mtime(path: str | os.PathLike) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def listing_stamp() -> tuple:
    """What the sidebar's lists of runs and masks depend on, from stat calls only (no walk, no read):
    the runs folder, each run's folder and its ``outputs/`` (a job renames ``outputs.tmp`` to ``outputs``
    when it finishes, which moves its run folder's mtime), the zoo's masks folder and the uploads."""
    runs = config.runs_dir()
    folders = [runs, config.zoo_dir() / "masks", config.home() / "uploads"]
    try:
        with os.scandir(runs) as it:
            folders += sorted(p for e in it for p in (e.path, os.path.join(e.path, "outputs")))
    except OSError:
        pass
    stamp = tuple((str(f), _mtime(f)) for f in folders)
    now = time.time_ns()
    # A change in the same clock tick as the listing leaves the mtime as it was (coarse file-system clocks):
    # while a folder changed in the last 2 s its stamp is this instant, so the listing is made again.
    return stamp + ((now,) if any(now - m < 2 * 10**9 for _, m in stamp) else ())


@functools.lru_cache(maxsize=4)
def _run_models(runs: str, stamp: tuple) -> tuple[dict[str, str], tuple[str, ...]]:
    """Finished runs' models, but not a zoo member's registered run: its model links to the member's folder,
    which the list holds already under the member's name; and the models left out for a path that is not UTF-8
    text (:func:`unlisted`)."""
    found = sorted(Path(runs).glob("*/outputs/model/config.json"))  # only complete runs have outputs/
    models = [model.parent for model in found if not in_zoo(model.parent)]
    listed = {f"run {model.parts[-3]}": str(model) for model in models if _utf8(model)}
    return listed, tuple(escaped_path(model) for model in models if not _utf8(model))


def _utf8(path: Path) -> bool:
    """Whether ``path`` is UTF-8 text. A file name of other bytes (``m\\xff.safetensors``, copied in from an archive
    made on a Latin-1 system) reaches Python as a lone surrogate escape, which Streamlit's widgets (their options
    are protobuf strings) and pyarrow's tables refuse: one such name among a list's options was the bug notice on
    every page's sidebar."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped_path(path: str | os.PathLike) -> str:
    """``path`` as the app shows it (:func:`~subnetviz.config.display_path`), a byte that is not UTF-8 written as
    its escape (``uploads/m\\xff.safetensors``): text any widget or table takes."""
    shown = config.display_path(path)
    try:
        return shown.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # (a surrogate no file name decodes to)
        return shown.encode("utf-8", "backslashreplace").decode("utf-8")


def unlisted() -> tuple[str, ...]:
    """The saved masks and finished runs' models the sidebar's lists leave out because their paths are not UTF-8
    text (:func:`_utf8`), each shown with its bytes escaped (:func:`escaped_path`): renamed, they are listed."""
    runs = _run_models(str(config.runs_dir()), listing_stamp())[1]
    return _saved_masks(str(config.home()), listing_stamp())[1] + runs


def in_zoo(path: str | os.PathLike) -> bool:
    """Whether ``path`` resolves into the demo zoo's folder: the model of a run the demo build registers for
    a member's training is a link to that member, which the lists hold already under the member's name."""
    return os.path.realpath(path).startswith(os.path.realpath(config.zoo_dir()) + os.sep)


def current_zoo():
    """The demo zoo (None while it is not built), read again when its manifest's stamp moves, and at least
    every 30 s (a member's folder deleted by hand leaves the manifest as it was)."""
    from subnetviz.demo import MANIFEST

    root = config.zoo_dir()
    return _zoo(str(root), file_stamp(root / MANIFEST), int(time.time() // 30))


@functools.lru_cache(maxsize=4)
def _zoo(root: str, stamp: str, period: int):
    from subnetviz.demo import load_zoo, zoo_is_built

    return load_zoo(Path(root)) if zoo_is_built(Path(root)) else None


def label_of(choice: str, members: dict[str, str]) -> str:
    """A zoo member's id, a hub id as given, else the label the library gives the checkpoint
    (:func:`~subnetviz.checkpoints.sources.checkpoint_label`: a snapshot folder by its repository,
    ``…/dpo/model.safetensors`` as ``dpo``)."""
    from subnetviz.checkpoints.sources import checkpoint_label

    if choice in members or _hub_id(choice):  # (the library would ask the file system about ``org/name`` first)
        return choice
    return checkpoint_label(choice)


def resolve_choice(choice: str, members: dict[str, str]) -> str:
    """A zoo member id, a path under the allowed roots, or a cached hub id -> a path/id to open.

    A path is checked with its symlinks resolved (where the files really are must lie under the roots) but
    returned as given, made absolute: a Hugging Face snapshot's ``model.safetensors`` or index resolves to a
    suffix-less ``blobs/<sha256>`` file (not a checkpoint file, and no shards beside it). Every file the
    checkpoint reader opens is checked again, resolved (:func:`~subnetviz.config.check_readable`).

    The roots are checked before anything asks whether a path exists, so a path outside them is refused in the
    same words whether it names a file or not (a relative ``views/../../etc/shadow`` was ``stat``-ed first, and
    the two messages told a visitor which server paths exist). A hub id is refused where the Hugging Face cache
    lies outside the roots, before the cache is looked at (its listing named the ids and revisions it holds)."""
    from subnetviz.checkpoints.sources import check_hub_cache

    if choice in members:
        return members[choice]
    config.check_name(choice)
    if _hub_id(choice):
        check_hub_cache(choice)  # (the readers' one line, the same for every id)
        return choice  # resolved only through the local HF cache when opened
    p = Path(choice).expanduser()
    try:
        config.check_allowed(p)
    except PathNotAllowedError:
        if p.is_absolute() or choice.startswith("~"):
            raise
        raise PathNotAllowedError(  # (a stale zoo id or run in a shared link reads so too)
            f"{choice}: no zoo member, finished run or hub id of that name here, and as a path it lies outside "
            "the folders this server may read (its owner adds folders with SUBNETVIZ_ROOTS)."
        ) from None
    return str(p if p.is_absolute() else Path.cwd() / p)


def _hub_id(choice: str) -> bool:
    """Whether a choice that is no zoo member is read as a hub id, as the checkpoint readers read one
    (:func:`~subnetviz.checkpoints.sources.reads_as_hub_id`: a repository id the hub could hold, no path of that
    name, and while the roots are enforced whether one exists is asked only under them). One rule with the readers, so what is checked here is what they
    open: a choice let through as a hub id was opened as a folder outside the roots where the two rules differed."""
    from subnetviz.checkpoints.sources import reads_as_hub_id

    return reads_as_hub_id(choice)


def finetune_misfit(base: str, finetune: str) -> str | None:
    """Why ``finetune`` cannot be compared with ``base`` tensor by tensor, in one line; None when it can.

    Decided from the headers, as the update analysis pairs them: tensor names and shapes aligned
    (:func:`~subnetviz.checkpoints.align.align`), an adapter planned onto the base as it is merged there. A finetune
    of another architecture (a GPT-2 beside a Llama base) raised in the workspace's update analysis, and every page
    drew nothing for the finetunes that fit. Errors other than a misfit (a memory refusal) are raised: they hold for
    now, not for these files."""
    from subnetviz.checkpoints import align, open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from subnetviz.errors import AlignmentError, CheckpointError

    ck_base = open_checkpoint(base)
    try:
        align([ck_base, open_finetune(finetune, ck_base)])
    except (AlignmentError, CheckpointError) as exc:
        return str(exc)
    return None


def uploads_dir() -> Path:
    path = config.home() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


MAX_UPLOAD_MB = 200
"""Largest mask upload taken (also ``server.maxUploadSize`` in .streamlit/config.toml, so Streamlit
refuses a larger file before buffering it). ``SUBNETVIZ_MAX_UPLOAD_MB`` lowers or raises it."""


def max_upload_bytes() -> int:
    """``SUBNETVIZ_MAX_UPLOAD_MB`` in bytes; ValueError where it is no positive finite number of megabytes (-3 started
    a server whose uploads took 1 MB, refused above 0 bytes by the app)."""
    mb = float(os.environ.get("SUBNETVIZ_MAX_UPLOAD_MB", MAX_UPLOAD_MB))
    if not (mb > 0 and math.isfinite(mb)):
        raise ValueError(mb)
    return int(mb * (1 << 20))


DIGEST_HEX = 32
"""Hex digits of a SHA-256 in a stored mask's name: 128 bits. Eight (32 bits, before) let an uploader find, in
minutes, a file whose hash began as a colleague's released mask did and upload it first: the colleague's upload
was then "the same bytes uploaded before", the planted masks. Masks stored under 8-digit names stay listed."""


def stored_mask_path(name: str, digest: str) -> Path:
    """Where the uploads folder keeps a mask that came as ``name`` with content hash ``digest`` (hex):
    ``<name's stem, normalised>-<32 hex>.safetensors``. Two sources whose names normalise alike never
    replace each other; the same content under the same name is stored once. The stem loses its leading dots
    (``.hidden.safetensors`` is stored as ``hidden-…``, ``.safetensors`` as ``mask-…``): a stored name never looks
    like a writer's temporary, which the listing of saved masks skips (an upload named so was stored, never listed)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in _stem_and_suffix(name)[0])[:80].lstrip(".")
    return uploads_dir() / f"{stem or 'mask'}-{digest[:DIGEST_HEX]}.safetensors"


def _stem_and_suffix(name: str) -> tuple[str, str]:
    """The stem and suffix of a file named ``name``, a leading dot taken as the start of a suffix: ``.safetensors``
    is a name of no stem with that suffix (pathlib reads it as a hidden file of no suffix), ``.x.pt`` is ``.x`` and
    ``.pt``."""
    shown = Path("_" + Path(name).name)
    return shown.stem[1:], shown.suffix


UPLOAD_DIGEST_KEY = "upload_sha256"
"""The provenance entry of a stored upload holding the SHA-256 of the bytes uploaded: an upload finds the
stored file of the same bytes by it, never by the name alone."""


def _stored_upload_of(target: Path, digest: str) -> bool:
    """Whether ``target`` (a stored mask) exists and was stored from an upload of SHA-256 ``digest``, as its
    provenance records (a file that records another, or none, is written again)."""
    if not target.is_file():
        return False
    return mask_info(str(target), file_stamp(target)).get(UPLOAD_DIGEST_KEY) == digest


def kept_mask(path: str | os.PathLike, name: str) -> str:
    """``path``, or for a mask inside the analysis cache (an update mask), its copy among the stored masks
    (:func:`stored_mask_path`, named ``name``): a run queued with it may start hours later, and the cache removes
    analyses over its size limit. The copy keeps the mask's provenance, and the run names a file that stays."""
    from subnetviz.cache import atomic_path

    src = Path(path)
    if config.cache_dir().resolve() not in src.resolve().parents:
        return str(path)
    digest = file_digest(src)
    kept = stored_mask_path(name, digest)
    if not kept.is_file() or file_digest(kept) != digest:  # kept only where its bytes are the mask's
        with atomic_path(kept) as tmp:
            shutil.copyfile(src, tmp)
    return str(kept)


UPLOAD_SUFFIXES = (".safetensors", ".pt", ".pth", ".npz", ".pickle", ".pkl")


Wait = Callable[[float | None], None]
"""A hook told, with the seconds waited so far, that storing an upload waits for another computation on this server
(:func:`memory_turn`): at once and then about every second, and with None once it goes on. A page shows it; a page's
hook may raise to stop the wait (Streamlit stops a script that is left or rerun at its next message)."""

WAIT_TICK_S = 1.0
"""Seconds between two calls of a :data:`Wait` hook."""


@contextlib.contextmanager
def memory_turn(wait: Wait | None = None) -> Iterator[None]:
    """:data:`~subnetviz.config.MEMORY_LOCK` held for the block: the memory check of what is stored, then what it
    holds, never beside another such check or a computation that holds whole models (two checks at once each passed
    against the same free memory). Taken at once when free; else ``wait`` is told until it is (an upload waited,
    minutes and without a word, behind another visitor's Behaviour run). Without ``wait`` (the CLI: one process)
    it simply waits."""
    lock = config.MEMORY_LOCK
    if not lock.acquire(blocking=False):
        if wait is None:
            lock.acquire()
        else:
            start = time.monotonic()
            wait(0.0)
            while not lock.acquire(timeout=WAIT_TICK_S):
                wait(time.monotonic() - start)
            try:
                wait(None)
            except BaseException:
                lock.release()
                raise
    try:
        yield
    finally:
        lock.release()


def save_upload(name: str, data: bytes | BinaryIO, *, wait: Wait | None = None) -> Path:
    """Store an uploaded mask: safetensors as is (validated by reading it), a ``torch.save`` file read with
    ``weights_only``, a NumPy ``.npz`` (no pickles), a released bigram pickle converted through the restricted unpickler
    (:func:`subnetviz.masks.import_mask`). Returns the stored safetensors path.

    The upload is copied to disk in chunks, refused past :func:`max_upload_bytes`, inside the uploads
    folder (a root); the stored name carries 128 bits of the content hash (``my_mask-<32 hex>.safetensors``), so
    two uploads whose names normalise alike never replace each other, and the same file uploaded twice is
    stored once: a stored file is taken for the upload only where its provenance records the upload's whole
    SHA-256 (:data:`UPLOAD_DIGEST_KEY`).

    The masks are read, checked and stored bit-packed (a bit per entry: as bool tensors a bit-packed upload held 8
    bytes per byte of it, and counting them 64), under :data:`~subnetviz.config.MEMORY_LOCK` (:func:`memory_turn`,
    which tells ``wait`` while another computation holds it): each upload's memory check sees what the one before it
    holds. The stored uploads may take :func:`~subnetviz.config.uploads_limit_bytes` together; past it an upload is
    refused (nothing stored is removed).
    """
    from subnetviz.errors import ConfigError, MaskError

    if not name.lower().endswith(UPLOAD_SUFFIXES):  # (as the browser's file filter and the CLI's mask import)
        raise MaskError(
            f"{name}: upload a mask as .safetensors, a torch.save .pt / .pth, a NumPy .npz or a released bigram .pickle."
        )
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        cap = max_upload_bytes()
    except (ValueError, OverflowError):  # (a server started past the start-up check: one line on the upload)
        raise ConfigError(
            f"SUBNETVIZ_MAX_UPLOAD_MB={os.environ.get('SUBNETVIZ_MAX_UPLOAD_MB')!r}: not a number of megabytes above 0."
        ) from None
    digest, size = hashlib.sha256(), 0
    _check_uploads_room(name, 0)  # a full folder refuses before the file is copied
    # Written inside a temporary folder named as the cache names its temporaries (``.upload.tmp-PID-…``): a server
    # killed mid-upload leaves it to the start's sweep (cache.sweep), and no listing of the uploads' masks sees the
    # half file. The file inside keeps the upload's suffix, lower-cased, which tells a pickle (import_mask).
    work = Path(tempfile.mkdtemp(prefix=f".upload.tmp-{os.getpid()}-", dir=uploads_dir()))
    src = work / f"upload{_stem_and_suffix(name)[1].lower()}"
    try:
        with open(src, "xb") as out:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > cap:
                    raise MaskError(
                        f"{name}: larger than the {cap >> 20} MB uploads may have (SUBNETVIZ_MAX_UPLOAD_MB)."
                    )
                digest.update(chunk)
                out.write(chunk)
        with memory_turn(wait):  # its memory check, then what it holds, one upload (or computation) at a time
            return _store_upload(name, src, digest.hexdigest())
    except MaskError as exc:  # the readers name the file they read, here a temporary one: name the upload
        text = str(exc)
        if text.startswith(str(src)):
            text = name + text[len(str(src)) :]
        raise type(exc)(text if text.startswith(f"{name}: ") else f"{name}: {text}") from None
    except ConfigError as exc:  # a memory refusal names the temporary file's name ("The mask upload.pt needs …")
        raise ConfigError(str(exc).replace(f" {src.name} ", f" {name} ", 1)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _store_upload(name: str, src: Path, full: str) -> Path:
    """The upload copied to ``src`` (SHA-256 ``full``), read bit-packed and stored (:func:`save_upload`)."""
    from subnetviz.masks import import_mask, save_mask_set, stored_bytes

    ms = import_mask(src, packed=True)  # the format told by the content, not by the name
    if ms.metadata.get("source") == str(src):  # an importer records the file it read: the temporary copy
        ms.metadata["source"] = f"upload {name}"
    target = stored_mask_path(name, full)
    if _stored_upload_of(target, full):
        return target  # the same bytes uploaded before (under this name): nothing to write
    ms.metadata.setdefault("source", f"upload {name}")
    ms.metadata[UPLOAD_DIGEST_KEY] = full  # (replacing whatever the uploaded file's own provenance said)
    # every byte the file will hold, before any is written: its header's provenance as well as its bits (the bits
    # alone were counted, and a 117 KB upload of a long text stored 30 MB past the limit)
    _check_uploads_room(name, stored_bytes(ms))
    return save_mask_set(target, ms)


def uploads_bytes() -> int:
    """Bytes the uploaded masks stored in the uploads folder take: the files whose provenance records an upload
    (:data:`UPLOAD_DIGEST_KEY`). The folder also keeps copies of update masks that training runs were launched with
    (:func:`kept_mask`) and imported released pickles (:func:`import_released`): those are not uploads, and counted
    they refused every upload once two training launches had kept an 8B model's update masks. Not the temporaries
    of uploads under way either (a folder, ``.upload.tmp-…``: not a file).

    A file whose name begins with a dot is counted too, though the saved-mask listing skips it: an older version
    stored an upload named ``.x.safetensors`` under such a name, and uploads named so filled the disk past the limit.
    Counted rather than listed, which is the safer of the two: it takes room whatever its name, while a dot name can
    also be a writer's temporary (``.NAME.tmp-…``, counted here only while its header is whole and says upload),
    which must never be offered for a link to name. No stored name begins with a dot now (:func:`stored_mask_path`);
    the operator frees an old one's room by removing it (``ls -a``)."""
    total = 0
    with os.scandir(uploads_dir()) as it:
        for e in it:
            try:
                if e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    if _is_upload(e.path, (st.st_ino, st.st_size, st.st_mtime_ns)):
                        total += st.st_size
            except OSError:  # (removed meanwhile)
                pass
    return total


@functools.lru_cache(maxsize=4096)
def _is_upload(path: str, stamp: tuple) -> bool:
    """Whether the stored mask ``path`` was stored from an upload, as its provenance (safetensors header only) says;
    ``stamp`` (inode, size, mtime) reads a rewritten file again, so an upload check reads no header twice. An upload
    stored before the digest was recorded says so by its source alone (``upload <name>``): counted too."""
    meta = _provenance(path)
    return UPLOAD_DIGEST_KEY in meta or str(meta.get("source", "")).startswith("upload ")


def _check_uploads_room(name: str, adding: int) -> None:
    """Refuse the upload ``name`` when the stored uploads with its ``adding`` bytes would take more than
    :func:`~subnetviz.config.uploads_limit_bytes`: one line saying what they take and who can free room. Nothing
    stored is removed to make room (a saved mask may be what a visitor's link or a queued run names)."""
    from subnetviz.errors import MaskError

    limit, used = config.uploads_limit_bytes(), uploads_bytes()
    if used + adding > limit or used >= limit:
        needs = f", and this one needs {config.gib(adding)}" if adding else ""
        raise MaskError(
            f"{name}: not stored: the uploaded masks on this server take {config.gib(used)} of the "
            f"{config.gib(limit)} they may (SUBNETVIZ_UPLOADS_GB){needs}; ask whoever runs the server to remove "
            "some or raise the limit."
        )


def import_released(path: str, model: str, *, wait: Wait | None = None) -> Path:
    """A released bigram-subnetwork pickle at ``path`` (on the server, inside the roots) converted for the
    checkpoint ``model`` and stored among the uploads (:func:`stored_mask_path`: a second pickle of the same
    name, from another folder or for another model, is kept beside the first, never over it); the stored path.
    Converted under :func:`memory_turn`, which tells ``wait`` while another computation holds the memory lock.
    """
    from subnetviz.bigram.maskable import save_released_mask
    from subnetviz.errors import MaskError

    src = config.check_allowed(path)
    if kind := config.not_a_file(src):  # (a named pipe blocked the hash below; said as what it is, not "no such")
        raise MaskError(f"{config.display_path(src)}: {kind}, not a regular file; refused.")
    if not src.is_file():
        raise MaskError(f"{config.display_path(src)}: no such pickle.")
    digest = hashlib.sha256(f"{file_digest(src)}\0{model}".encode()).hexdigest()  # the pickle, for this model
    # (128 bits of it in the name: an upload, whose name carries its own bytes' hash, cannot take this name)
    target = stored_mask_path(src.name, digest)
    if target.exists():
        return target
    with memory_turn(wait):  # its memory checks, then what it holds, one at a time (as uploads are)
        return save_released_mask(src, model, target)


def saved_masks() -> dict[str, str]:
    """Mask files the app can see: the zoo's, finished runs' outputs, and uploads.

    Listed again only when :func:`listing_stamp` moves, so a rerun of the sidebar walks no folder.
    """
    return dict(_saved_masks(str(config.home()), listing_stamp())[0])


@functools.lru_cache(maxsize=4)
def _saved_masks(home: str, stamp: tuple) -> tuple[dict[str, str], tuple[str, ...]]:
    """label -> path of the mask files the app can see, and those left out for a path that is not UTF-8 text."""
    found: dict[str, str] = {}
    unlisted_paths: list[str] = []  # (shown escaped: :func:`unlisted`)
    roots = [config.zoo_dir() / "masks", uploads_dir()]
    for root in roots:
        if root.is_dir():
            for f in sorted(root.glob("*.safetensors")):
                if f.name.startswith("."):  # (pathlib's * matches dot files: a writer's temporary ones)
                    continue
                if _utf8(f):
                    found[f"{root.name}/{f.stem}"] = str(f)
                else:
                    unlisted_paths.append(escaped_path(f))
    runs = config.runs_dir()
    for f in sorted(runs.glob("*/outputs/**/*.safetensors")):
        rel = f.relative_to(runs)
        if f.name.startswith("model") or "checkpoint" in f.parts[-2] or any(p.startswith(".") for p in rel.parts):
            continue  # (a model's weights, a checkpoint's, or a file or folder a writer has not finished)
        if not _utf8(f):
            unlisted_paths.append(escaped_path(f))
            continue
        label = f"run {rel.parts[0]}/{'/'.join(rel.parts[2:])[:-12]}"
        if f.name == "mask.safetensors":  # a bigram-mask job: say what it is
            info = mask_info(str(f), file_stamp(f))
            if info.get("target"):
                lam = info.get("lambda")
                label = f"{info['target']} mask λ={lam if lam is None else format(lam, 'g')} · {rel.parts[0]}"
        elif f.name.startswith("task"):  # a continual-learning run's task mask (files count tasks from 0)
            label = _task_mask_label(mask_info(str(f), file_stamp(f)), rel.parts[0]) or label
        found[label] = str(f)
    return found, tuple(unlisted_paths)


def _task_mask_label(info: dict, run: str) -> str | None:
    """A continual-learning task mask named as its charts name it: method, task counted from 1, density and
    seed (from the file's own metadata; None where it has none)."""
    try:
        task, density, seed, method = int(info["task"]), float(info["density"]), int(info["seed"]), str(info["method"])
    except (KeyError, TypeError, ValueError):
        return None
    return f"{method} task {task + 1} mask (d={density:g}, seed {seed}) · {run}"


def mask_info(path: str, stamp: str) -> dict:
    """A mask file's provenance (its safetensors header only; no tensor is read); ``stamp``:
    :func:`~subnetviz.cache.file_stamp` of ``path``, so a rewritten file is read again. {} for a file this
    process may not read (:func:`~subnetviz.config.check_readable`), asked on every call: the header read is
    memoised, the roots are not (a run card read the provenance of a mask outside the server's roots, whose
    density it was refused)."""
    if not _readable(path):
        return {}
    return _header_info(path, stamp)


@functools.lru_cache(maxsize=256)
def _header_info(path: str, stamp: str) -> dict:
    return _provenance(path)


def _readable(path: str) -> bool:
    try:
        config.check_readable(path)
    except PathNotAllowedError:
        return False
    return True


def _provenance(path: str) -> dict:
    """A mask file's provenance read from its safetensors header; {} where it cannot be read, or may not be read
    here (outside the roots, a folder or a named pipe: :func:`~subnetviz.config.check_readable`, as for every
    other read)."""
    from safetensors import SafetensorError, safe_open

    from subnetviz.config import parse_json
    from subnetviz.errors import MaskError

    if not _readable(path):
        return {}
    try:
        with safe_open(path, framework="np") as f:
            return parse_json((f.metadata() or {}).get("subnetviz", "{}"), path, MaskError, text=True)
    except (OSError, ValueError, SafetensorError, MaskError):  # unreadable: a plain label; opening it says why
        return {}
