"""Mask sets: one bool tensor per parameter name, stored as safetensors with provenance.

A mask set is ``name -> torch.bool tensor`` (True = the parameter belongs to the subnetwork)
plus metadata (source checkpoints, method, tolerance, density...). On disk it is a
``.safetensors`` file whose tensors are bit-packed ``uint8`` (numpy ``packbits``, big bit order)
with each tensor's shape in ``__metadata__`` under ``shape:<name>``, and the provenance as JSON
under ``subnetviz``. Plain ``bool``/``uint8`` 0-1 tensors (unpacked) are read as well.

The released bigram-subnetwork pickles are imported through :func:`import_bigram_pickle`, a
restricted unpickler that admits only numpy arrays, dicts and strings; ``torch.save`` files through
:func:`import_torch_masks` (``weights_only``); a NumPy ``.npz`` through :func:`import_npz_masks`
(``allow_pickle=False``); :func:`import_mask` tells the formats apart by content.
"""

from __future__ import annotations

import _compat_pickle
import json
import math
import operator
import os
import pickle
import re
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from subnetviz.cache import atomic_path
from subnetviz.config import check_readable, not_a_file, parse_json, require_memory
from subnetviz.errors import ConfigError, MaskError, SubnetvizError, UnsafePickleError, suggest
from subnetviz.pickles import (  # noqa: F401 - re-exported: the mask importers' home before the split
    _ZIP_MAGIC,
    MAX_PICKLE_DEPTH,
    PICKLE_CAP_BYTES,
    check_torch_file,
    encoded_bound,
    pickle_budget,
    scan_pickle,
)

FORMAT = "subnetviz-mask/1"


@dataclass
class MaskSet:
    """``masks``: name -> bool tensor (shape of the parameter); ``metadata``: provenance (JSON-able)."""

    masks: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        if isinstance(self.masks, PackedMasks):
            return sum(math.prod(self.masks.packed(k)[1]) for k in self.masks)
        return sum(m.numel() for m in self.masks.values())

    @property
    def count(self) -> int:
        """Number of parameters inside the mask (bit-packed masks counted packed). ``count_nonzero``, not ``sum``:
        the sum of a bool tensor first copies it to int64, 8 bytes per entry (1.5 GiB for 2·10⁸ entries)."""
        if isinstance(self.masks, PackedMasks):
            return self.masks.count()
        return int(sum(int(torch.count_nonzero(m)) for m in self.masks.values()))

    @property
    def density(self) -> float:
        n = self.numel
        return self.count / n if n else 0.0

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if isinstance(self.masks, PackedMasks):
            return {k: tuple(self.masks.packed(k)[1]) for k in self.masks}
        return {k: tuple(v.shape) for k, v in self.masks.items()}


_INTEGERS = (torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_bool(name: str, t: torch.Tensor, where: str, floats: bool = False) -> torch.Tensor:
    """``t`` as a bool mask: bool as is; integers (and floats, for files other tools wrote: the RL-subnetwork
    code keeps its masks as bf16 0/1) only where every entry is exactly 0 or 1; anything else refused,
    naming the tensor."""
    if t.layout != torch.strided:
        raise MaskError(f"{where}: mask {name!r} is a {t.layout} tensor; expected a dense one.")
    if t.dtype == torch.bool:
        return t
    if t.dtype in _INTEGERS or (floats and t.dtype.is_floating_point):
        binary = (t == 0) | (t == 1)  # NaN is neither
        if not bool(binary.all()):
            bad = t.reshape(-1)[~binary.reshape(-1)][0].item()
            raise MaskError(f"{where}: mask {name!r} has values outside {{0, 1}} (dtype {t.dtype}, e.g. {bad}).")
        return t != 0
    also = "integers or floats" if floats else "integers"
    raise MaskError(f"{where}: mask {name!r} has dtype {t.dtype}; expected bool (or 0/1 {also}).")


def save_mask_set(path: str | os.PathLike, mask_set: MaskSet) -> Path:
    """Write ``mask_set`` bit-packed to ``path`` atomically (temporary file, then rename)."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, str] = {"format": FORMAT}
    packed = mask_set.masks if isinstance(mask_set.masks, PackedMasks) else None
    for name in mask_set.masks:
        if packed is not None:  # already bit-packed: written as is, never unpacked
            tensors[name], shape = packed.packed(name)
        else:
            m = _check_bool(name, mask_set.masks[name], str(path))
            tensors[name], shape = np.packbits(m.detach().cpu().numpy().reshape(-1)), tuple(m.shape)
        meta[f"shape:{name}"] = _shape_text(shape)
    meta["subnetviz"] = _provenance_text(mask_set)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except SafetensorError as exc:  # safetensors' own, not an OSError: it ended in a traceback
            raise _write_failure(path, exc) from None
    return path


def _shape_text(shape: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in shape)


def _provenance_text(mask_set: MaskSet) -> str:
    """The provenance :func:`save_mask_set` writes under ``subnetviz``: the metadata, with the counts."""
    info = dict(mask_set.metadata)
    info.setdefault("density", mask_set.density)
    info.setdefault("count", mask_set.count)
    info.setdefault("numel", mask_set.numel)
    return json.dumps(_escaped_info(info), default=str)


def stored_bytes(mask_set: MaskSet) -> int:
    """The size of the file :func:`save_mask_set` writes for ``mask_set``, worked out before anything is written
    or packed: the packed bits, and the header, whose metadata (the provenance, as JSON) may be far larger than the
    bits (an upload of 117 KB whose text entry, deflated, held 30 MB stored 30 MB; its bits alone were counted
    against the uploads' room). The header as safetensors writes it: compact JSON, text as UTF-8, the tensors laid
    out by name, padded to 8 bytes."""
    packed = mask_set.masks if isinstance(mask_set.masks, PackedMasks) else None
    sizes, meta = {}, {"format": FORMAT}
    for name in mask_set.masks:
        if packed is not None:
            bits, shape = packed.packed(name)
            sizes[name] = bits.nbytes
        else:
            m = mask_set.masks[name]
            sizes[name], shape = (m.numel() + 7) // 8, tuple(m.shape)
        meta[f"shape:{name}"] = _shape_text(shape)
    meta["subnetviz"] = _provenance_text(mask_set)
    header: dict = {"__metadata__": meta}
    offset = 0
    for name in sorted(sizes):
        header[name] = {"dtype": "U8", "shape": [sizes[name]], "data_offsets": [offset, offset + sizes[name]]}
        offset += sizes[name]
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return 8 + len(text) + (-len(text) % 8) + offset


def _escaped_info(info: dict) -> dict:
    """A mask's provenance with its keys and text values as UTF-8 text
    (:func:`~subnetviz.checkpoints.sources.escaped`): a path it names (``source``, ``model_path``) may hold a byte
    of a folder's name that is not UTF-8, which JSON would keep as ``"\\udcff"``, refused by a JSON reader."""
    from subnetviz.checkpoints.sources import escaped

    return {escaped(str(k)): escaped(v) if isinstance(v, str) else v for k, v in info.items()}


def _write_failure(path: Path, exc: Exception) -> Exception:
    """A failed safetensors write as the error the callers handle: the system's (a folder without permission, a
    full or read-only disk) as an OSError naming ``path``, not the temporary file safetensors names (the command
    line says it in one line, under ``--out`` when it was writing a result); anything else as a MaskError."""
    text = str(exc)
    io = re.search(r"I/O error: .*?\(os error (\d+)\)", text)
    if io:
        code = int(io.group(1))
        return OSError(code, os.strerror(code), str(path))
    return MaskError(f"{path}: cannot write the mask file ({text}).")


def shareable_bytes(path: str | os.PathLike) -> bytes:
    """A mask file's bytes for a visitor to download: the same tensors, with every absolute server path in
    its header's metadata (the provenance: base, finetune, run folder) shown relative to its root, as the
    pages show them (:func:`~subnetviz.config.redact_value`). The tensors' bytes are copied as they are."""
    raw = check_readable(path, what="mask file").read_bytes()
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
    except (struct.error, ValueError) as exc:
        raise MaskError(f"{path}: not a safetensors mask file ({exc}).") from None
    meta = header.get("__metadata__") or {}
    clean = {k: _shareable_entry(v) if isinstance(v, str) else v for k, v in meta.items()}
    if clean == meta:
        return raw
    header["__metadata__"] = clean
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def _shareable_entry(text: str) -> str:
    """One metadata entry as a visitor may see it. The provenance (``subnetviz``) is JSON: its fields are read,
    each path shown whole (redacting the JSON text as free text kept everything after a space in a path), and
    written back; the entry is kept as it is when nothing in it changes. Any other entry is one value."""
    from subnetviz.config import redact_value

    try:
        value = json.loads(text)
    except ValueError:  # not JSON: free text
        return redact_value(text)
    if not isinstance(value, dict | list):
        return redact_value(text)
    clean = redact_value(value)
    return text if clean == value else json.dumps(clean, default=str)


def _check_file(path: Path, missing: str) -> None:
    """MaskError for a mask file ``path`` that is something other than a regular file (links followed): a named pipe
    or a device named as what it is, never opened (a pipe blocks its reader, a device reads without end), not
    ``missing`` ("no such mask file"), which sent its sender looking for a file that is there; ``missing`` where
    nothing is."""
    kind = not_a_file(path)
    if kind:
        raise MaskError(f"{path}: {kind}, not a regular file; refused.")
    if not path.is_file():
        raise MaskError(f"{path}: {missing}.")


def load_mask_set(path: str | os.PathLike, *, packed: bool = False) -> MaskSet:
    """Read a mask set written by :func:`save_mask_set` (or plain bool/uint8 safetensors).

    ``packed``: held bit-packed (:class:`PackedMasks`, 1 bit per parameter; a plain tensor is packed as it is
    read), for what counts or overlaps masks and never needs them as bool tensors. Either way the memory the
    result will hold is compared with what is available before anything is read (``config.require_memory``):
    a 7B model's mask is 7 GB as bool tensors."""
    path = Path(path)
    _check_file(path, "no such mask file")
    check_readable(path)
    try:  # torch, not NumPy: a bf16 0/1 mask has no NumPy dtype
        with _safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            require_memory(f"The mask {path.name}", _held_bytes(f, meta, packed))
            out: Mapping = PackedMasks() if packed else {}
            for name in f.keys():  # one tensor read at a time
                _add(out, name, f.get_tensor(name), meta, path)
    except (MaskError, ConfigError):
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise _not_safetensors(path, exc) from exc
    if "subnetviz" not in meta:  # another tool's file: its own header entries are its provenance
        return MaskSet(out, _foreign_provenance(meta, path))
    try:
        info = parse_json(
            meta["subnetviz"], str(path), MaskError, text=True
        )  # (no lone surrogate: every table refused it)
    except MaskError:  # provenance only: the masks themselves were read
        info = {}
    return MaskSet(out, info)


@contextmanager
def _safe_open(path: Path, framework: str) -> Iterator:
    """safetensors' ``safe_open`` of ``path`` (checked readable already), by a name it takes: its torch reader
    refuses a path that is not UTF-8 text ("Path … is not valid UTF-8": a mask saved in a folder named with a
    Latin-1 byte, ``dir\\xff``), so such a file is named by a descriptor opened on it
    (:func:`~subnetviz.checkpoints.sources.utf8_name`)."""
    from safetensors import safe_open

    from subnetviz.checkpoints.sources import utf8_name

    with utf8_name(path) as name, safe_open(name, framework=framework) as f:
        yield f


def _foreign_provenance(meta: Mapping[str, str], path: Path) -> dict:
    """The provenance of a safetensors mask another tool wrote, as the ``.pt`` and ``.npz`` importers keep theirs:
    what file it is, then the header's own entries (``base_model``, ``method``, ...; its ``method`` wins), but for
    the layout ones (safetensors' ``format``, this app's ``shape:<name>``) and the counts the app works out itself
    from the masks when it stores them (:data:`_COUNTED`)."""
    info: dict = {"method": "safetensors file", "source": str(path)}
    own = {k: v for k, v in meta.items() if k != "format" and not k.startswith("shape:") and k not in _COUNTED}
    info.update(bounded_texts(dict(sorted(own.items()))))  # (by name: a header's entries come in any order)
    return info


_COUNTED = ("density", "count", "numel")  # written by save_mask_set from the masks themselves

# The longest text entry a mask file another tool wrote brings into the provenance this app keeps (a model's name, a
# method, a note), and all of them together: each is written into every copy stored, and read with the list of
# masks. A NumPy .npz's 0-d string of 30 million characters, deflated to 117 KB, was stored as a 30 MB file.
METADATA_TEXT_LIMIT = 4096
METADATA_TOTAL_LIMIT = 64 * 2**10
LEFT_OUT_KEY = "metadata_left_out"  # where the provenance says which of the file's texts it left out


def bounded_texts(texts: Mapping[str, str]) -> dict[str, str]:
    """The text entries ``texts`` of a mask file (name -> text), as the provenance keeps them: each of at most
    :data:`METADATA_TEXT_LIMIT` characters (its name too), all of them within :data:`METADATA_TOTAL_LIMIT` (the
    first, in the order given); the others left out, named under :data:`LEFT_OUT_KEY` (the longest first) with
    their lengths."""
    kept, left, total = {}, [], 0
    for key, text in texts.items():
        n = len(key) + len(text)
        if max(len(key), len(text)) > METADATA_TEXT_LIMIT or total + n > METADATA_TOTAL_LIMIT:
            left.append((n, key))
            continue
        kept[key], total = text, total + n
    if left:
        left.sort(key=lambda e: -e[0])  # (the longest named first)
        shown = ", ".join(f"{key[:40]!r} ({len(texts[key]):,} characters)" for _, key in left[:5])
        more = f" and {len(left) - 5:,} more" if len(left) > 5 else ""
        kept[LEFT_OUT_KEY] = (
            f"{shown}{more}: longer than {METADATA_TEXT_LIMIT:,} characters, or past "
            f"{METADATA_TOTAL_LIMIT:,} in all; left out"
        )
    return kept


def mask_file_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of each mask in a safetensors mask file, from its header alone (no value read): a bit-packed
    mask's ``shape:<name>`` metadata, else the stored tensor's shape. MaskError, as :func:`load_mask_set` gives
    it, for a file that is not a readable safetensors mask, or a packed mask whose stored bytes (their shape and
    type, which safetensors matches with the header's data offsets) do not hold the entries of its ``shape:``
    (the Training form queued a run that failed in the worker as it read the mask)."""
    path = Path(path)
    _check_file(path, "no such mask file")
    check_readable(path)
    try:
        with _safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            out = {}
            for name in f.keys():
                packed, stored = meta.get(f"shape:{name}"), f.get_slice(name)
                if packed is None:
                    out[name] = tuple(stored.get_shape())
                    continue
                dtype, count = stored.get_dtype(), math.prod(stored.get_shape())
                out[name] = _packed_shape(
                    packed, name, path, dtype == "U8", count, _SAFETENSORS_DTYPES.get(dtype, dtype)
                )
            return out
    except MaskError:
        raise
    except Exception as exc:  # safetensors' own errors for a corrupt header; shape metadata that is no numbers
        raise _not_safetensors(path, exc) from None


def _not_safetensors(path: Path, exc: Exception) -> MaskError:
    """The refusal of a mask file safetensors cannot read: a file of another format that :func:`import_mask` reads
    (a torch.save file given to training read "header too large", after the model had loaded) is named as what it
    is, with the command that converts it (:func:`convert_hint`); anything else with safetensors' own words."""
    try:
        kind = other_mask_format(path)
        with open(path, "rb") as fh:
            cut = _cut_in_header(path, fh.read(9))
    except (OSError, SubnetvizError):  # (read a moment ago: its own words then)
        kind = cut = None
    if cut:
        return MaskError(cut)
    if kind is not None:
        return MaskError(f"{path}: {kind}, not a safetensors mask file; {convert_hint(path)}.")
    return MaskError(f"{path}: not a readable safetensors mask file ({exc}).")


def other_mask_format(path: str | os.PathLike) -> str | None:
    """What the mask file at ``path`` is when :func:`import_mask` reads it as another format than safetensors, told
    by its first bytes as it tells them: "a torch.save file", "a NumPy .npz file" or "a pickle" (a released bigram
    mask); None for a safetensors file, and for one that no reader takes (reading it says why). It reads the first
    bytes (and a zip archive's list of records) of a file :func:`~subnetviz.config.check_readable` admits: that
    refusal, and an OSError of the read, are raised."""
    path = check_readable(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == _ZIP_MAGIC:
        return "a NumPy .npz file" if is_npz(path) else "a torch.save file"
    if len(head) == 9 and head[8:9] == b"{":
        return None  # a safetensors header, whole or cut (its length may begin with 0x80, as a pickle does)
    return "a pickle" if head[:1] == b"\x80" else None


def convert_hint(path: str | os.PathLike) -> str:
    """The command that writes a mask file of another format as the safetensors file the training and mask readers
    take (``mask import``, beside it: ``m.pt`` -> ``m.safetensors``), as a clause of a message."""
    import shlex

    src = Path(path)
    dst = src.with_suffix(".safetensors")
    if dst == src:  # (a torch.save file named .safetensors)
        dst = src.with_name(f"{src.stem}-converted.safetensors")
    command = f"subnetviz mask import {shlex.quote(str(src))} {shlex.quote(str(dst))}"
    return f"convert it with `{command}`, then name that file instead"


_SAFETENSORS_DTYPES = {"U8": "torch.uint8", "I8": "torch.int8", "BOOL": "torch.bool"}  # as a loaded tensor names them


def _add(out, name: str, t: torch.Tensor, meta: Mapping[str, str], path: Path) -> None:
    """Put a stored tensor into ``out`` (a dict of bool tensors, or :class:`PackedMasks`)."""
    shape_s = meta.get(f"shape:{name}")
    if shape_s is not None:
        shape = _packed_shape(shape_s, name, path, t.dtype == torch.uint8, t.numel(), str(t.dtype))
        bits = t.reshape(-1).numpy()
        if isinstance(out, PackedMasks):
            out.add_bits(name, _cleared_padding(bits, math.prod(shape)), shape)
        else:
            out[name] = _unpacked(bits, shape)
    else:
        m = _check_bool(name, t.contiguous(), str(path), floats=True)
        if isinstance(out, PackedMasks):
            out.add(name, m)
        else:
            out[name] = m


def packed_bytes(path: str | os.PathLike) -> int:
    """What :func:`load_mask_set` (``packed=True``) holds for the file at ``path``, from its header alone; 0 for a
    file that is no readable mask (its load says why)."""
    try:
        with _safe_open(check_readable(path), "pt") as f:
            return _held_bytes(f, f.metadata() or {}, True)
    except Exception:
        return 0


def _held_bytes(f, meta: Mapping[str, str], packed: bool) -> int:
    """What :func:`load_mask_set` will hold, from the header: each tensor's entries (a byte each as bool, a bit
    packed), and beside them the largest stored tensor read at once with what converting it makes: unpacking
    bits (np.unpackbits' bytes, then their bool copy), or checking a plain tensor that is not bool to be 0/1
    (:data:`CHECK_BYTES`)."""
    held = largest = 0
    for name in f.keys():
        stored = f.get_slice(name)
        n_stored = math.prod(stored.get_shape())
        shape_s = meta.get(f"shape:{name}")
        try:
            n = math.prod(int(d) for d in shape_s.split(",") if d.strip()) if shape_s is not None else n_stored
        except ValueError:
            n = 0
        if shape_s is not None and (n + 7) // 8 != n_stored:
            n = 0  # a shape its bytes do not hold: refused by name as it is read
        item = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4}.get(
            stored.get_dtype(), 8
        )
        held += (n + 7) // 8 if packed else n
        if shape_s is not None:  # bits: kept as read when packed, else unpacked
            beside = 0 if packed else 2 * n
        else:
            beside = 0 if stored.get_dtype() == "BOOL" else CHECK_BYTES * n
        largest = max(largest, n_stored * item + beside)
    return held + largest


CHECK_BYTES = 3
"""Bytes per entry that checking a tensor other than bool to be 0/1 makes beside it (:func:`_check_bool`: ``t == 0``,
``t == 1`` and their ``|`` at once)."""


def _conversion_bytes(tensors, packed: bool) -> int:
    """What converting ``tensors`` (``(entries, bytes copied before the check, whether bool)`` each, read already)
    to masks holds beyond them, a tensor at a time: each mask kept (a bit per entry packed, a byte as bool), and
    beside them the largest one's copy and its 0/1 check (:data:`CHECK_BYTES`; none for a bool tensor)."""
    held = largest = 0
    for n, copied, is_bool in tensors:
        held += (n + 7) // 8 if packed else n
        largest = max(largest, copied + (0 if is_bool else CHECK_BYTES * n))
    return held + largest


def _kept(out, name: str, m: torch.Tensor) -> None:
    """Put a checked bool mask into ``out``: a dict as it is, :class:`PackedMasks` bit-packed."""
    if isinstance(out, PackedMasks):
        out.add(name, m)
    else:
        out[name] = m


def _cleared_padding(bits: np.ndarray, n: int) -> np.ndarray:
    """``bits`` with the bits past the ``n`` entries (np.packbits pads the last byte with zeros; a file from
    elsewhere may not) set to zero, so a count of set bits counts entries."""
    if n % 8 and len(bits) and bits[-1] & (0xFF >> (n % 8)):
        bits = bits.copy()
        bits[-1] &= (0xFF << (8 - n % 8)) & 0xFF
    return bits


def _packed_shape(text: str, name: str, path: Path, uint8: bool, count: int, dtype: str) -> tuple[int, ...]:
    """The ``shape:<name>`` metadata of a packed mask (non-negative integers, comma-separated), once the mask's
    stored values (``count`` of ``dtype``; ``uint8`` whether that is uint8) are the ceil(entries / 8) bytes it
    needs. Sizes are Python ints: NumPy's product of 4294967296,4294967296 wraps to 0, which 0 bytes would
    match. A mask of no entries whose other dimensions multiply beyond what its file could describe is refused
    too, as checkpoint headers refuse such a tensor (it would overflow NumPy's and torch's int64 shapes)."""
    try:
        shape = tuple(int(s) for s in text.split(",") if s.strip() != "")
    except ValueError:
        shape = None
    if shape is None or any(d < 0 for d in shape):
        raise MaskError(
            f"{path}: packed mask {name!r} has shape {text!r} in its metadata; expected non-negative integers."
        )
    n = math.prod(shape)
    if not uint8 or count != (n + 7) // 8:
        raise MaskError(
            f"{path}: packed mask {name!r} has {count} values of {dtype}; expected {(n + 7) // 8:,} uint8 bytes "
            f"for shape {shape}."
        )
    outer = math.prod(d for d in shape if d)
    if not n and outer > max(8 * path.stat().st_size, 1 << 20):
        raise MaskError(
            f"{path}: packed mask {name!r} has shape {shape}: no entries, yet its other dimensions multiply to "
            f"{outer:,}, more than its file describes."
        )
    return shape


def _unpacked(bits: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """A bool mask of ``shape`` from its bits (np.packbits order; their number checked by :func:`_packed_shape`)."""
    return torch.from_numpy(np.unpackbits(bits, count=math.prod(shape)).astype(bool).reshape(shape))


def validate_mask_set(
    mask_set: MaskSet, shapes: Mapping[str, tuple[int, ...]], *, where: str = "mask", require_all: bool = False
) -> None:
    """Refuse a mask whose names or shapes do not fit ``shapes`` (name -> parameter shape).

    Every mask name must exist in ``shapes`` with the same shape; with ``require_all`` every
    parameter must also be covered.
    """
    problems: list[str] = []
    for name, m in mask_set.masks.items():
        _check_bool(name, m, where)
        if name not in shapes:
            problems.append(f"{name!r} is not a parameter of the model.{suggest(name, shapes)}")
        elif tuple(m.shape) != tuple(shapes[name]):
            problems.append(f"{name!r} has shape {tuple(m.shape)}; the model's parameter has {tuple(shapes[name])}.")
    if require_all:
        missing = [n for n in shapes if n not in mask_set.masks]
        if missing:
            problems.append(f"{len(missing)} parameters have no mask, e.g. {missing[:3]}.")
    if problems:  # (each problem a sentence of its own: joined by "; " they read ".; ")
        head = " ".join(problems[:5])
        more = f" And {len(problems) - 5} more." if len(problems) > 5 else ""
        raise MaskError(f"{where} does not fit the model: {head}{more}")


def mask_shape(masks: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    """The shape of ``masks[name]``, a bit-packed set's without unpacking it."""
    if isinstance(masks, PackedMasks):
        return tuple(masks.packed(name)[1])
    return tuple(masks[name].shape)


def renamed_masks(masks: Mapping[str, torch.Tensor], to: Mapping[str, str]) -> Mapping[str, torch.Tensor]:
    """``masks`` keyed by ``to`` (a mask's name -> its new name; names ``to`` leaves out are dropped), in the order
    of ``to``'s targets. Names sent to one target are merged (OR): a tied output head's entries into its
    embedding's. The tensors are shared, not copied, but where merged; a bit-packed set stays packed (merged
    bit by bit). The shapes merged must agree (the caller says which tensors they are)."""
    packed = isinstance(masks, PackedMasks)
    out = PackedMasks() if packed else {}
    for name, target in to.items():
        if target not in out:
            if packed:
                out.add_bits(target, *masks.packed(name))
            else:
                out[target] = masks[name]
        elif packed:
            bits, shape = out.packed(target)
            out.add_bits(target, np.bitwise_or(bits, masks.packed(name)[0]), shape)
        else:
            out[target] = out[target].to(torch.bool) | masks[name].to(torch.bool)
    return out


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what a released bigram-subnetwork pickle needs: numpy arrays, dicts, strings —
    and allocates nothing beyond ``budget`` bytes in all.

    Every admitted callable that can allocate is wrapped: its size is checked against what is left
    of the budget *before* it runs. A 300-byte pickle calling ``bytes(10**10)`` (or ``ndarray`` with
    a huge shape, or a scalar of a giant void dtype) is refused instead of exhausting memory.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # Protocol 5 (Python >= 3.8 with protocol=5, the default from 3.14) pickles contiguous
        # arrays as _frombuffer(bytes, dtype, shape, order); protocol <= 2 pickles their bytes as
        # _codecs.encode(str, "latin1"). Neither can build anything but an array or bytes.
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("builtins", "bytes"),
        ("builtins", "dict"),
        ("collections", "OrderedDict"),
    }

    def __init__(self, file, budget: int):
        super().__init__(file)
        self.left = budget
        self._array = self._ndarray_class()

    def _spend(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or nbytes > self.left:
            raise UnsafePickleError(
                f"pickle asks to allocate {nbytes:,} bytes for {what}, more than its size allows "
                f"({self.left:,} bytes left of the budget). Refused before allocating."
            )
        self.left -= nbytes

    def find_class(self, module: str, name: str):
        # Protocol <= 2 names Python 2 modules (__builtin__.bytes); map them as pickle itself does.
        # The keys are Python 2 names only, so the mapping never changes a Python 3 name.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(
                f"pickle asks for {module}.{name}; only numpy arrays, dicts and strings are admitted. Refused."
            )
        real = super().find_class(module, name)
        guard = {
            "bytes": self._bytes,
            "ndarray": self._array,
            "dtype": self._dtype,
            "_reconstruct": self._reconstruct(real),
            "scalar": self._scalar(real),
            "_frombuffer": self._frombuffer(real),
            "encode": self._encode(real),
            "dict": self._dict(real),
            "OrderedDict": self._dict(real),
        }
        return guard.get(name, real)

    def _bytes(self, *args):
        self._spend(_bytes_built(args[0], args[1] if len(args) > 1 else None) if args else 0, "bytes")
        return bytes(*args)

    def _dict(self, real):
        def build(*args, **kwargs):  # a dict (or OrderedDict) of an iterable's items: ~64 bytes an entry
            self._spend(64 * len(args[0]) if args and hasattr(args[0], "__len__") else 0, "a dict")
            return real(*args, **kwargs)

        return build

    def _dtype(self, *args, **kwargs):
        dt = np.dtype(*args, **kwargs)
        if dt.itemsize > self.left:
            self._spend(dt.itemsize, f"one element of dtype {dt}")
        return dt

    def _ndarray_class(self):
        unpickler = self

        class _Array(np.ndarray):
            """``numpy.ndarray`` as a pickle sees it: creating one is charged to the budget, and so is the
            state BUILD gives it (``__setstate__`` allocates the array it describes and copies its bytes in:
            numpy's own pickles rebuild an empty array and fill it so, and one bytes object in the memo could
            fill a thousand arrays)."""

            def __new__(cls, shape=(), dtype=float, *args, **kwargs):
                dt = np.dtype(dtype)
                unpickler._spend(int(np.prod(shape, dtype=np.float64)) * dt.itemsize, f"an array of shape {shape}")
                return np.ndarray.__new__(cls, shape, dt, *args, **kwargs)

            def __setstate__(self, state):
                # (version, shape, dtype, is_fortran, data) or, from old numpy, the same without the version
                if isinstance(state, tuple) and len(state) in (4, 5):
                    shape, dtype = state[-4], state[-3]
                    size = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
                    unpickler._spend(size, f"an array of shape {shape}")
                return np.ndarray.__setstate__(self, state)

        return _Array

    def _reconstruct(self, real):
        def reconstruct(subtype, shape, dtype):
            if not (isinstance(subtype, type) and issubclass(subtype, np.ndarray)):
                raise UnsafePickleError(f"pickle asks to rebuild a {subtype!r} as an array. Refused.")
            # numpy's own pickles rebuild an empty (0,) array, then fill it with bytes from the file (BUILD: the
            # array's __setstate__, charged there)
            self._spend(int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize, "an array")
            return real(self._array, shape, dtype)

        return reconstruct

    def _scalar(self, real):
        def scalar(dtype, *args):
            self._spend(np.dtype(dtype).itemsize, f"a scalar of dtype {dtype}")
            return real(dtype, *args)

        return scalar

    def _frombuffer(self, real):
        def frombuffer(buf, dtype, shape, order):
            self._spend(int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize, f"an array of shape {shape}")
            return real(buf, dtype, shape, order)

        return frombuffer

    def _encode(self, real):
        def encode(obj, *args):
            codec = args[0] if args else "utf-8"
            if isinstance(obj, str):
                self._spend(encoded_bound(len(obj), codec, text=True), "encoded text")
            else:  # bytes, or an array: its buffer (hex_codec writes two bytes for each)
                self._spend(encoded_bound(_buffer_bytes(obj), codec, text=False), "encoded bytes")
            return real(obj, *args)

        return encode


def _buffer_bytes(obj) -> int:
    """The bytes of ``obj``'s buffer (an array's, a bytes'), without copying them: what a copy of it makes."""
    try:
        with memoryview(obj) as view:
            return view.nbytes
    except TypeError:
        raise UnsafePickleError(f"pickle asks to copy the bytes of a {type(obj).__name__}. Refused.") from None


def _bytes_built(obj, encoding) -> int:
    """What ``bytes(obj[, encoding])`` builds, known before the call: a number as the count of zero bytes (a
    NumPy integer too), an array's or a bytes' buffer as a copy of its bytes, a text as its encoding, a list
    as a byte per item; the most of those that apply (a NumPy scalar has a buffer and is a number)."""
    if isinstance(obj, str):
        return encoded_bound(len(obj), encoding, text=True)
    sizes = []
    try:
        sizes.append(operator.index(obj))
    except TypeError:
        pass
    try:
        sizes.append(_buffer_bytes(obj))
    except UnsafePickleError:
        pass
    if not sizes and hasattr(obj, "__len__"):
        sizes.append(len(obj))
    if not sizes:
        raise UnsafePickleError(f"pickle asks for the bytes of a {type(obj).__name__}. Refused.")
    return max(sizes)


def import_bigram_pickle(path: str | os.PathLike, *, packed: bool = False) -> MaskSet:
    """Convert a released ``subnetwork_dict_lambda*.pickle`` into a :class:`MaskSet`.

    The file holds ``{param_name: numpy bool array, 'orig_model_name': str}``. ``packed``: the masks held
    bit-packed (:class:`PackedMasks`), each packed as it is converted. What the unpickling may allocate (its
    budget) and then what the conversion holds are compared with the memory available first.
    """
    path = Path(path)
    _check_file(path, "no such pickle")
    check_readable(path)
    size = path.stat().st_size  # its own bytes, read into objects, and what it may build from them (its budget)
    require_memory(f"The pickle {path.name}", size + pickle_budget(size))
    try:
        with open(path, "rb") as fh:
            scan_pickle(fh, pickle_budget(path.stat().st_size), str(path))
            fh.seek(0)
            obj = _RestrictedUnpickler(fh, pickle_budget(path.stat().st_size)).load()
    except UnsafePickleError as exc:
        raise exc if str(exc).startswith(str(path)) else UnsafePickleError(f"{path}: {exc}") from None
    except RecursionError:
        raise UnsafePickleError(f"{path}: the pickle nests objects too deep to read. Refused.") from None
    except Exception as exc:
        raise MaskError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(obj, dict):
        raise MaskError(f"{path}: expected a dict of masks, found {type(obj).__name__}.")
    # Each entry is copied below: their bytes, counted per entry (one array in the pickle's memo may be the value
    # of a thousand entries, built and charged once), against what a pickle of this size holds, before any copy
    budget = pickle_budget(path.stat().st_size)
    held = sum(v.nbytes for k, v in obj.items() if k != "orig_model_name" and isinstance(v, np.ndarray))
    if held > budget:
        raise UnsafePickleError(
            f"{path}: its entries hold {held:,} bytes of arrays, more than a pickle of its size holds ({budget:,}; "
            "entries share arrays). Refused before copying."
        )
    meta: dict = {"method": "bigram-subnetwork (released pickle)", "source": str(path)}
    arrays = [v for k, v in obj.items() if k != "orig_model_name" and isinstance(v, np.ndarray)]
    require_memory(
        f"The pickle {path.name}", _conversion_bytes(((a.size, a.nbytes, a.dtype.kind == "b") for a in arrays), packed)
    )
    masks: Mapping = PackedMasks() if packed else {}
    for key, value in obj.items():
        if key == "orig_model_name":
            meta.update(bounded_texts({"orig_model_name": str(value)}))
            continue
        if not isinstance(value, np.ndarray):
            raise MaskError(f"{path}: entry {key!r} is {type(value).__name__}, expected a numpy array.")
        if value.dtype.kind not in "biuf" or value.dtype.itemsize > 8:  # objects, strings, bytes: no mask, no torch
            raise MaskError(
                f"{path}: entry {key!r} is a numpy array of dtype {value.dtype}; expected bool (or 0/1 integers)."
            )
        _check_name(str(key), path)
        arr = np.array(value, order="C")  # a writable copy: a protocol-5 array is a read-only view of bytes
        _kept(masks, str(key), _check_bool(str(key), torch.from_numpy(arr), str(path)))
    if not masks:
        raise MaskError(f"{path}: the pickle holds no masks.")
    return MaskSet(masks, meta)


def _check_name(text: str, path: Path) -> None:
    """A mask's name that is UTF-8 text: a pickle's ``"\\udc80"`` makes a Python string that writing the stored
    safetensors file refuses (a UnicodeEncodeError traceback)."""
    from subnetviz.checkpoints.header import check_utf8

    check_utf8(text, f"{path}: entry", MaskError)


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a torch.save file from before PyTorch 1.6


def import_torch_masks(path: str | os.PathLike, *, packed: bool = False) -> MaskSet:
    """A mask file written by ``torch.save``: a dict ``{parameter name: tensor}`` (bool, or 0/1 of any dtype;
    one wrapping dict such as ``{"masks": {...}}`` is looked through; string values are kept as metadata).

    Read by ``torch.load(weights_only=True)`` (tensors, dicts, lists, numbers and strings; nothing in the file
    runs), after :func:`check_torch_file` (records stored uncompressed, each inside the file; the one pickle
    torch will unpickle walked first). Only the zip format of PyTorch >= 1.6 is read. ``packed``: the masks held
    bit-packed (:class:`PackedMasks`), each packed as it is checked. What loading holds (the file's records, stored
    uncompressed) and then what the conversion holds are compared with the memory available first."""
    path = Path(path)
    _check_file(path, "no such mask file")
    check_readable(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != _ZIP_MAGIC:
            raise MaskError(f"{path}: not a readable torch.save file (not a zip archive).")
    from subnetviz.checkpoints.sources import utf8_name

    with utf8_name(path) as name:  # (torch's zip reader takes a name only as UTF-8 text: a folder ``dir\\xff``)
        try:
            check_torch_file(name)
        except MaskError as exc:  # (named as given, not by the descriptor)
            raise type(exc)(str(exc).replace(name, str(path))) from None
    require_memory(f"The mask {path.name}", size)
    try:  # from a file object: torch.load reads a path named *.safetensors as safetensors
        with open(path, "rb") as fh:
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        asked = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch names what the pickle asked for
        what = f" (it asks for {asked.group(1)})" if asked else ""
        raise UnsafePickleError(
            f"{path}: holds objects other than tensors, dicts, lists, numbers and strings{what}. "
            "Refused; nothing in it was run."
        ) from None
    except Exception as exc:
        raise MaskError(f"{path}: not a readable torch.save file ({type(exc).__name__}: {exc}).") from None
    while isinstance(obj, Mapping) and len(obj) == 1 and isinstance(next(iter(obj.values())), Mapping):
        obj = next(iter(obj.values()))  # {"masks": {...}} or {"state_dict": {...}}
    if not isinstance(obj, Mapping):
        raise MaskError(f"{path}: expected a dict of masks (name -> tensor), found {type(obj).__name__}.")
    _check_torch_sizes(obj, pickle_budget(size), path)
    tensors = [t for t in obj.values() if isinstance(t, torch.Tensor)]
    # (a view that is not contiguous is copied as it is packed: counted as a copy before the check)
    conversion = ((t.numel(), 0 if t.is_contiguous() else t.numel(), t.dtype == torch.bool) for t in tensors)
    require_memory(f"The mask {path.name}", _conversion_bytes(conversion, packed))
    meta: dict = {"method": "torch.save file", "source": str(path)}
    masks: Mapping = PackedMasks() if packed else {}
    texts: dict[str, str] = {}
    for key, value in obj.items():
        _check_name(str(key), path)
        if isinstance(value, str):
            texts[str(key)] = value
        elif isinstance(value, torch.Tensor):
            _kept(masks, str(key), _check_bool(str(key), value, str(path), floats=True))
        else:
            raise MaskError(f"{path}: entry {key!r} is {type(value).__name__}, expected a tensor.")
    if not masks:
        raise MaskError(f"{path}: the file holds no masks.")
    meta.update(bounded_texts(texts))
    return MaskSet(masks, meta)


def is_npz(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a NumPy ``.npz`` archive: a zip archive whose records are all ``.npy`` arrays (a
    ``torch.save`` file holds a ``data.pkl`` record besides its tensors)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def import_npz_masks(path: str | os.PathLike, *, packed: bool = False) -> MaskSet:
    """A NumPy ``.npz`` of masks (``np.savez`` / ``np.savez_compressed`` of arrays keyed by tensor name: bool, or
    integers or floats that are exactly 0/1; a 0-d string array is kept as metadata).

    Read by ``np.load(allow_pickle=False)``: an array of Python objects, the one kind that would unpickle, is
    refused. Each array's header is read first, and the sizes the arrays declare must fit in their records and
    in the memory available before any array is read (a few bytes of header may declare a terabyte). ``packed``:
    the masks held bit-packed (:class:`PackedMasks`), each packed as it is read."""
    import zipfile
    import zlib

    path = Path(path)
    _check_file(path, "no such mask file")
    check_readable(path)
    size = path.stat().st_size
    meta: dict = {"method": "NumPy .npz file", "source": str(path)}
    masks: Mapping = PackedMasks() if packed else {}
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = []  # (entries, bytes read, whether bool) of each array, read one at a time
            for info in zf.infolist():
                if info.header_offset + info.compress_size > size:
                    raise MaskError(f"{path}: record {info.filename!r} runs past the end of the file (truncated?).")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
                    shape, _, dtype = (read_header or np.lib.format.read_array_header_2_0)(fh)
                if dtype.hasobject:
                    raise UnsafePickleError(
                        f"{path}: array {info.filename[:-4]!r} holds Python objects (pickled). Refused; nothing in "
                        "it was read."
                    )
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size:
                    raise MaskError(
                        f"{path}: array {info.filename[:-4]!r} declares {nbytes:,} bytes, its record holds "
                        f"{info.file_size:,}. Refused before allocating."
                    )
                arrays.append((math.prod(shape), nbytes, dtype.kind == "b"))
            require_memory(f"The mask {path.name}", _conversion_bytes(arrays, packed))
        texts: dict[str, str] = {}
        with np.load(path, allow_pickle=False) as npz:
            for name in npz.files:
                _check_name(name, path)
                arr = npz[name]
                if arr.dtype.kind in "US" and arr.ndim == 0:
                    texts[name] = str(arr.item())
                    continue
                if arr.dtype.kind not in "biuf":
                    raise MaskError(f"{path}: mask {name!r} has dtype {arr.dtype}; expected bool (or 0/1 numbers).")
                native = arr.astype(arr.dtype.newbyteorder("="), order="C", copy=False)  # (0-d stays 0-d)
                _kept(masks, name, _check_bool(name, torch.from_numpy(native), str(path), floats=True))
    except (MaskError, ConfigError):
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, TypeError) as exc:
        raise MaskError(f"{path}: not a readable NumPy .npz file ({type(exc).__name__}: {exc}).") from None
    if not masks:
        raise MaskError(f"{path}: the file holds no masks.")
    meta.update(bounded_texts(texts))
    return MaskSet(masks, meta)


def _check_torch_sizes(obj: Mapping, budget: int, path: Path) -> None:
    """Refuse, before any conversion allocates, tensors bigger than the file's bytes: a view with stride 0 or
    overlapping rows makes 10^12 entries of one stored byte, and many tensors may share one storage."""
    from subnetviz.checkpoints.sources import fits_its_storage

    total = 0
    for key, t in obj.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.layout != torch.strided:
            raise MaskError(f"{path}: mask {key!r} is a {t.layout} tensor; expected a dense one.")
        if t.device.type == "meta":  # map_location="cpu" gives it no data: counting or packing it raised
            raise MaskError(
                f"{path}: mask {key!r} is a meta tensor (shapes only, no values: saved from a model built without "
                "weights)."
            )
        if t.device.type != "cpu":
            raise MaskError(f"{path}: mask {key!r} is on device {t.device}; expected a tensor with its values.")
        if not fits_its_storage(t):
            raise MaskError(
                f"{path}: mask {key!r} of shape {tuple(t.shape)} is a view larger than the bytes it is stored in "
                "(expanded or overlapping). Refused before allocating."
            )
        total += t.numel()
    if total > budget:
        raise MaskError(
            f"{path}: its masks have {total:,} entries, more than a file of its size holds ({budget:,}: tensors "
            "share storage). Refused before allocating."
        )


def import_mask(path: str | os.PathLike, *, packed: bool = False) -> MaskSet:
    """A mask file in any format the app reads, told by its content (and a pickle also by its name): a NumPy
    ``.npz`` or a ``torch.save`` file (zip archives, told apart by their records), a released bigram-subnetwork
    pickle, else safetensors (this app's, or plain bool / 0-1 tensors). ``packed``: the masks held bit-packed
    (:class:`PackedMasks`), each packed as it is read and checked, as storing them (:func:`save_mask_set`) needs:
    as bool tensors a bit-packed file held 8 bytes per byte of it."""
    path = Path(path)
    if path.is_dir():
        raise MaskError(f"{path}: a folder, not a mask file.")
    _check_file(path, "no such mask file")
    check_readable(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04":  # a zip archive: NumPy's .npz, else torch.save's format
        return import_npz_masks(path, packed=packed) if is_npz(path) else import_torch_masks(path, packed=packed)
    if head[:4] == b"PK\x05\x06":  # a zip archive of no records begins with its end: np.savez() of no arrays
        raise MaskError(f"{path}: an empty zip archive: it holds no arrays, so no masks.")
    # safetensors: a little-endian header length, then the header's "{" (its first byte is 0x80 for a header of
    # 128 + 256·k bytes, as a pickle's PROTO opcode is: 1 file in 256 was read as a pickle and refused)
    n = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and n <= path.stat().st_size - 8:
        return _some_masks(load_mask_set(path, packed=packed), path)
    if cut := _cut_in_header(path, head):  # (before the pickle test: such a file's first byte may be 0x80)
        raise MaskError(cut)
    if head[:1] == b"\x80" or path.suffix.lower() in (".pickle", ".pkl"):  # PROTO (protocol >= 2), or the name
        if _legacy_torch(path):
            raise MaskError(
                f"{path}: a torch.save file in the format of PyTorch before 1.6, which is not read; "
                "load it there and save it again with a current PyTorch (or as safetensors)."
            )
        return import_bigram_pickle(path, packed=packed)
    if path.suffix.lower() in _ZIP_FORMATS:  # no format's magic: refused in the words of the format the name gives
        what = "it is empty" if path.stat().st_size == 0 else "it is no zip archive"
        raise MaskError(f"{path}: not {_ZIP_FORMATS[path.suffix.lower()]} ({what}), nor a safetensors or pickle mask.")
    return _some_masks(load_mask_set(path, packed=packed), path)


# The formats whose files are zip archives, by suffix: a .pt of text was refused as "not a readable safetensors mask
# file (Error while deserializing header …)", a format its sender did not use and a parser's detail.
_ZIP_FORMATS = {".pt": "a torch.save file", ".pth": "a torch.save file", ".npz": "a NumPy .npz file"}


def _cut_in_header(path: Path, head: bytes) -> str | None:
    """Why ``path`` reads as a safetensors file cut inside its header (an interrupted copy or upload), where it does
    (``head``: its first 9 bytes): its 9th byte is the header's "{" but the header length in the first 8 runs past
    the file's end, or a file named .safetensors ends before its header begins; else None. Such a file whose header
    length begins with 0x80 (128 + 256·k bytes) was read as a pickle: "unsupported pickle protocol: 8"."""
    size = path.stat().st_size
    n = int.from_bytes(head[:8], "little")
    named = path.suffix.lower() == ".safetensors"
    if not ((head[8:9] == b"{" and n > size - 8) or (named and 0 < size < 9)):
        return None
    length = f"header length {n:,} bytes" if len(head) >= 8 else "its 8-byte header length cut short"
    return (
        f"{path}: not a readable safetensors mask file: a truncated safetensors file ({length}, file {size:,} "
        "bytes); copy or upload the whole file again."
    )


def _some_masks(ms: MaskSet, path: Path) -> MaskSet:
    """``ms``, refused when it holds no tensor, as a torch.save file or pickle of no masks is: a safetensors file
    of metadata alone was stored as a mask (listed with 0 tensors, density 0)."""
    if not ms.masks:
        raise MaskError(f"{path}: the file holds no masks.")
    return ms


def _legacy_torch(path: Path) -> bool:
    """Whether ``path`` starts with the magic number of the old torch.save format (read as a plain int; a
    bigram pickle's dict stops at the first array past the 1 KiB budget)."""
    try:
        with open(path, "rb") as fh:
            scan_pickle(fh, pickle_budget(path.stat().st_size), str(path))  # (a deep key crashed the hash)
            fh.seek(0)
            return _RestrictedUnpickler(fh, 1 << 10).load() == _TORCH_LEGACY_MAGIC
    except Exception:  # noqa: BLE001 - anything else is simply not that format
        return False


def load_mask_tensor(path: str | os.PathLike, name: str) -> torch.Tensor:
    """One tensor of a mask file, without reading the others (drill-down views)."""
    path = Path(path)
    check_readable(path)
    try:
        with _safe_open(path, "np") as f:
            meta = f.metadata() or {}
            if name not in f.keys():
                raise MaskError(f"{path}: no mask for {name!r}.{suggest(name, f.keys())}")
            arr = f.get_tensor(name)
    except MaskError:
        raise
    except Exception as exc:
        raise MaskError(f"{path}: not a readable safetensors mask file ({exc}).") from exc
    shape_s = meta.get(f"shape:{name}")
    if shape_s is None:
        return _check_bool(name, torch.from_numpy(np.ascontiguousarray(arr)), str(path))
    shape = _packed_shape(shape_s, name, path, arr.dtype == np.uint8, arr.size, str(arr.dtype))
    return _unpacked(arr.reshape(-1), shape)


class PackedMasks(Mapping):
    """name -> bool tensor, held bit-packed (1 bit per parameter) and unpacked on access.

    The update pass of a 7B model produces 7 G mask entries per finetuned model: as bool tensors
    that is 7 GB each, packed it is 0.9 GB. Reading an entry unpacks that one tensor only.
    """

    def __init__(self):
        self._bits: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}

    def add(self, name: str, mask: torch.Tensor) -> None:
        m = mask.detach().cpu()
        self._bits[name] = (np.packbits(m.numpy().reshape(-1)), tuple(m.shape))

    def add_bits(self, name: str, bits: np.ndarray, shape: tuple[int, ...]) -> None:
        """A mask already packed (np.packbits order, ceil(numel / 8) bytes), as the update pass writes it."""
        n = math.prod(shape)
        if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8,):
            raise MaskError(f"{name}: {bits.dtype} {bits.shape} is not {n} packed bits.")
        self._bits[name] = (bits, tuple(shape))

    def __getitem__(self, name: str) -> torch.Tensor:
        bits, shape = self._bits[name]
        return _unpacked(bits, shape)

    def __iter__(self):
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def packed(self, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
        return self._bits[name]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b, _ in self._bits.values())

    def subset(self, names) -> PackedMasks:
        """The masks of ``names`` (in that order), the same bits, nothing unpacked or copied."""
        out = PackedMasks()
        out._bits = {n: self._bits[n] for n in names}
        return out

    def count(self) -> int:
        """Set bits over every mask, counted packed (a byte's set bits from a table), a block at a time. The
        bits past each mask's entries are zero (np.packbits pads with zeros; a file's are cleared as read)."""
        total = 0
        for bits, _ in self._bits.values():
            for i in range(0, len(bits), 1 << 24):
                total += int(_POPCOUNT[bits[i : i + (1 << 24)]].sum(dtype=np.int64))
        return total


_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.uint8)
