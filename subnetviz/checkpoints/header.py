"""Safetensors headers: parsed and validated (8-byte length + JSON) before any tensor is read, so a
truncated or corrupt file is reported with its name and what is wrong (a Git LFS pointer file as one)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from subnetviz.config import not_a_file, parse_json
from subnetviz.errors import CheckpointError

if TYPE_CHECKING:
    import torch

# safetensors dtype -> (torch dtype name, bytes per entry): validation needs no torch, so reading
# headers (fingerprints, sizes, dtypes) does not import it.
ST_DTYPE_INFO = {
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "I16": ("int16", 2),
    "I32": ("int32", 4),
    "I64": ("int64", 8),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    # E8M0 (an exponent-only byte, 2^(byte − 127), 0xFF NaN: the block scales ``weight_scale_inv`` of
    # FineGrainedFP8Config(scale_fmt="ue8m0"), DeepSeek-V4-style): read as its bytes, which the analysis
    # turns into values as it does MXFP8's uint8 E8M0 scales (exactly, a NaN byte refused by name), so no
    # torch without float8_e8m0fnu is needed
    "F8_E8M0": ("uint8", 1),
}
# safetensors dtypes read as another torch dtype than theirs: TensorMeta.stored, what the file holds
ST_STORED_AS = {"F8_E8M0": "float8_e8m0fnu"}


def __getattr__(name: str):
    """``ST_DTYPES`` (safetensors dtype -> torch dtype), built when first asked for (PEP 562)."""
    if name == "ST_DTYPES":
        import torch

        table = {k: getattr(torch, v) for k, (v, _) in ST_DTYPE_INFO.items()}
        globals()[name] = table
        return table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorMeta:
    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    stored: str | None = None  # set where the file stores another form, read as ``dtype`` (MXFP4 codes)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _count(v) -> bool:
    return type(v) is int and v >= 0  # JSON true / 2.0 are no sizes


# The first line of a Git LFS pointer file: what a clone made without git-lfs holds in place of each weights file
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def check_not_lfs_pointer(path: Path, head: bytes | None = None) -> None:
    """Refuse, in one line that says what it is, a Git LFS pointer file (three lines of text: ``version``, ``oid``,
    ``size``) where a weights file was expected: a repository cloned without git-lfs holds one in place of each
    weights file, which read as a "corrupt or truncated safetensors header" (its first 8 bytes, ``version ``, taken
    as a header length) or "not a readable pickle", sending the user to download it all again. ``head``: the
    file's first bytes where the caller has read them (at least ``len(LFS_POINTER)``), else they are read here."""
    if head is None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(LFS_POINTER))
        except OSError:
            return  # (the reader that follows says what is wrong)
    if head.startswith(LFS_POINTER):
        raise CheckpointError(
            f"{path}: a Git LFS pointer, not the weights (the repository was cloned without git-lfs): run "
            f"`git lfs pull` in {path.parent} (or download the model with `hf download`)."
        )


def read_safetensors_header(path: Path) -> tuple[dict, bytes]:
    """Parse and validate a safetensors header; returns (header dict, raw header bytes).

    What safetensors' own reader checks is checked here too, since tensors are read from a map of the file
    by these offsets, not through safetensors: ``__metadata__`` maps strings to strings, and the tensors'
    bytes, sorted by offset, cover the data section exactly (no tensor reads another's bytes, no bytes
    belong to none)."""
    kind = not_a_file(path)  # (a named pipe would block the open for good)
    if kind:
        raise CheckpointError(f"{path}: {kind}, not a regular file; refused.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes; no header length).")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                check_not_lfs_pointer(path, head + fh.read(len(LFS_POINTER) - 8))
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors header (declares {n} header bytes, file has {size})."
                )
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror}).") from exc
    header = parse_json(raw, f"{path}: corrupt safetensors header", CheckpointError)
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            _check_metadata(path, info)
            continue
        check_utf8(name, f"{path}: tensor name")
        try:
            start, end = info["data_offsets"]
            dtype, shape = info["dtype"], info["shape"]
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}.") from exc
        # sizes and offsets are whole numbers >= 0, as safetensors requires (a shape [-2, -2] would multiply
        # to 4, a negative offset point into the header), checked before any arithmetic on them
        if not (isinstance(shape, list) and all(_count(v) for v in (start, end, *shape)) and start <= end):
            raise CheckpointError(
                f"{path}: corrupt header entry for tensor {name!r}: its shape and data offsets must be whole "
                "numbers >= 0, the offsets in order."
            )
        numel = math.prod(shape)
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated file: tensor {name!r} needs bytes up to {end} of the data section, "
                f"which has {data_len}. Re-download or re-save the checkpoint."
            )
        if not isinstance(dtype, str) or dtype not in ST_DTYPE_INFO:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {str(dtype)[:40]}.")
        itemsize = ST_DTYPE_INFO[dtype][1]
        if end - start != numel * itemsize:
            raise CheckpointError(
                f"{path}: corrupt header entry for tensor {name!r}: shape {info.get('shape')} in {dtype} needs "
                f"{numel * itemsize} bytes, the offsets give {end - start}."
            )
        # A tensor of no entries takes no bytes whatever its other dimensions, yet those still size what is made
        # for it (per-row and per-column counts; int64 shapes in torch and NumPy, which a [0, 2**63] overflows):
        # bounded as a file's bytes bound every other tensor's.
        outer = math.prod(d for d in shape if d)
        if not numel and outer > max(size, _MIN_OUTER):
            raise CheckpointError(
                f"{path}: corrupt header entry for tensor {name!r}: shape {shape} has no entries, yet its other "
                f"dimensions multiply to {outer:,}, more than a file of {size:,} bytes describes. Refused."
            )
        spans.append((start, end, name))
    _check_tiling(path, spans, data_len)
    return header, raw


# The product of a zero-size tensor's other dimensions allowed in a file of fewer bytes (a small test file's [0, 4096])
_MIN_OUTER = 1 << 20


def check_utf8(text: str, what: str, error: type[Exception] = CheckpointError) -> None:
    """Refuse (one line: ``what``, then the text's repr) a string that is no UTF-8 text: JSON's ``"\\udc80"``
    (a lone surrogate) parses into a Python string that every later encoding refuses (pyarrow's tables, a
    safetensors file written of it: a UnicodeEncodeError traceback). safetensors' own reader refuses such a
    header."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = repr(text) if len(text) <= 120 else f"{text[:60]!r}…{text[-20:]!r} ({len(text):,} characters)"
        raise error(
            f"{what} {shown} is not valid UTF-8 text (a lone surrogate escape); refused, as safetensors refuses it."
        ) from None


def _check_metadata(path: Path, meta) -> None:
    """``__metadata__``: absent, null or an object of strings, as safetensors requires (it refuses the file
    otherwise, so transformers would not load it), each key and value UTF-8 text."""
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        what = type(meta).__name__ if not isinstance(meta, dict) else "an object with values other than strings"
        raise CheckpointError(
            f"{path}: corrupt safetensors header: __metadata__ is {what}; safetensors requires strings."
        )
    for key, value in (meta or {}).items():
        check_utf8(key, f"{path}: __metadata__ key")
        check_utf8(value, f"{path}: __metadata__[{key[:40]!r}]")


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """The tensors' byte ranges, in order of offset, follow one another from 0 to the end of the data section,
    as safetensors' own validation requires: a tensor whose offsets overlap another's would be read from that
    tensor's bytes, and bytes in a gap or after the last tensor belong to no tensor."""
    at, prev = 0, None
    for start, end, name in sorted(spans):
        if start < at:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: the data offsets [{start}, {end}] of tensor {name!r} overlap the "
                f"bytes of tensor {prev!r} (up to {at}). Refused, as safetensors refuses it."
            )
        if start > at:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: bytes {at} to {start} of the data section, before tensor "
                f"{name!r}, belong to no tensor. Refused, as safetensors refuses it."
            )
        at, prev = end, name
    if at != data_len:
        raise CheckpointError(
            f"{path}: corrupt safetensors file: {data_len - at:,} bytes after the last tensor's data belong to no "
            "tensor. Refused, as safetensors refuses it."
        )
