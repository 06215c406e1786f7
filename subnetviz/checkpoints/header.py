"""Safetensors headers: parsed and validated (8-byte length + JSON) before any tensor is read, so a
truncated or corrupt file is reported with its name and what is wrong."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from subnetviz.config import parse_json
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
}


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


def read_safetensors_header(path: Path) -> tuple[dict, bytes]:
    """Parse and validate a safetensors header; returns (header dict, raw header bytes)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes; no header length).")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors header (declares {n} header bytes, file has {size})."
                )
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror}).") from exc
    header = parse_json(raw, f"{path}: corrupt safetensors header", CheckpointError)
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
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
    return header, raw
