"""Safetensors headers: parsed and validated (8-byte length + JSON) before any tensor is read, so a
truncated or corrupt file is reported with its name and what is wrong."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from subnetviz.errors import CheckpointError

ST_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorMeta:
    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


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
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {exc}).") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (expected an object).")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in info["data_offsets"])
            dtype = info["dtype"]
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}.") from exc
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated file: tensor {name!r} needs bytes up to {end} of the data section, "
                f"which has {data_len}. Re-download or re-save the checkpoint."
            )
        if dtype not in ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}.")
        if end - start != numel * ST_DTYPES[dtype].itemsize:
            raise CheckpointError(
                f"{path}: corrupt header entry for tensor {name!r}: shape {info.get('shape')} in {dtype} needs "
                f"{numel * ST_DTYPES[dtype].itemsize} bytes, the offsets give {end - start}."
            )
    return header, raw
