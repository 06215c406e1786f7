"""Checkpoints: one lazy, per-tensor source over any way a model is stored, and name alignment.

:func:`open_checkpoint` accepts a Hugging Face model folder (single or sharded safetensors with
``model.safetensors.index.json``), a single ``.safetensors`` file, an index json, a hub id resolved
*only* through the local Hugging Face cache, or legacy ``.bin``/``.pt`` files (read through
``torch.load(weights_only=True)``, never unpickled freely).

Safetensors headers are parsed here (8-byte length + JSON) so that a truncated or corrupt file is
reported with its name and what is wrong before any tensor is read; tensors are then read one at
a time through ``safetensors.safe_open`` (memory-mapped). :func:`align` pairs the tensors of two or
more checkpoints by name and reports everything it cannot pair: nothing is silently skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from subnetviz.errors import AlignmentError, CheckpointError, NotCachedError, suggest
from subnetviz.naming import NameTable, detect_family, strip_prefix

ST_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
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


class Checkpoint:
    """A lazy per-tensor view of one checkpoint. Nothing is loaded until :meth:`get` is called."""

    def __init__(self, spec: str, files: list[Path], root: Path | None, config: dict | None):
        self.spec = spec
        self.files = files
        self.root = root
        self.config = config or {}
        self._meta: dict[str, TensorMeta] = {}
        self._raw_headers: list[bytes] = []
        self._legacy: dict[Path, dict[str, torch.Tensor]] = {}
        for f in files:
            if f.suffix == ".safetensors":
                header, raw = read_safetensors_header(f)
                self._raw_headers.append(raw)
                for name, info in header.items():
                    if name == "__metadata__":
                        continue
                    self._meta[name] = TensorMeta(name, f, ST_DTYPES[info["dtype"]], tuple(info["shape"]))
            else:
                sd = _load_legacy(f)
                self._legacy[f] = sd
                self._raw_headers.append(
                    json.dumps({k: [str(v.dtype), list(v.shape)] for k, v in sd.items()}, sort_keys=True).encode()
                )
                for name, t in sd.items():
                    self._meta[name] = TensorMeta(name, f, t.dtype, tuple(t.shape))
        if not self._meta:
            raise CheckpointError(f"{spec}: the checkpoint holds no tensors.")
        self._handles: dict[Path, object] = {}

    # --- what is in it -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._meta)

    def meta(self, name: str) -> TensorMeta:
        try:
            return self._meta[name]
        except KeyError:
            raise CheckpointError(f"{self.spec}: no tensor {name!r}.{suggest(name, self._meta)}") from None

    @property
    def num_params(self) -> int:
        return sum(m.numel for m in self._meta.values())

    @property
    def dtypes(self) -> dict[str, int]:
        """Stored dtype -> number of parameters in that dtype (from the headers)."""
        out: dict[str, int] = {}
        for m in self._meta.values():
            key = str(m.dtype).replace("torch.", "")
            out[key] = out.get(key, 0) + m.numel
        return out

    @cached_property
    def names_table(self) -> NameTable:
        mt = self.config.get("model_type")
        fam = detect_family(mt, self.names)
        heads = self.config.get("num_attention_heads") or self.config.get("n_head")
        return NameTable(fam, heads, mt)

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", self.config.get("model_type") == "gpt2"))

    @property
    def architecture(self) -> str:
        arch = self.config.get("architectures") or []
        return arch[0] if arch else (self.names_table.family or "unknown")

    @cached_property
    def fingerprint(self) -> str:
        """A cheap cache key: hash of every file's header, size and mtime (no tensor data read)."""
        h = hashlib.sha256()
        for f, raw in zip(self.files, self._raw_headers, strict=True):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
            h.update(raw)
        return h.hexdigest()[:16]

    # --- reading ---------------------------------------------------------------------------------
    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor, in its stored dtype, on ``device``."""
        m = self.meta(name)
        if m.file in self._legacy:
            return self._legacy[m.file][name].to(device)
        handle = self._handles.get(m.file)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = safe_open(str(m.file), framework="pt")
            except Exception as exc:  # safetensors' own error types for files that changed under us
                raise CheckpointError(f"{m.file}: cannot open ({exc}).") from exc
            self._handles[m.file] = handle
        try:
            t = handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"{m.file}: cannot read tensor {name!r} ({exc}).") from exc
        return t.to(device) if str(device) != "cpu" else t

    def close(self) -> None:
        self._handles.clear()

    def __repr__(self) -> str:
        return f"Checkpoint({self.spec!r}, {len(self._meta)} tensors, {self.num_params:,} params)"


def _load_legacy(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # pre-zipfile torch.save format: readable, just not mappable
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but tensors; RuntimeError for corrupt zips
        raise CheckpointError(
            f"{path}: refused or unreadable legacy checkpoint ({type(exc).__name__}: {str(exc)[:200]}). "
            "Only plain tensor state dicts are read (torch.load weights_only=True)."
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors.")
    return obj


def _folder_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return _index_files(index)
    # A trainer's checkpoint folder also holds optimizer.pt, scheduler.pt, rng_state.pth and
    # sometimes other .safetensors files (masks, adapters): the model's own file wins when present.
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    st = sorted(folder.glob("*.safetensors"))
    if st:
        return st
    bin_index = folder / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        return _index_files(bin_index)
    legacy = sorted(folder.glob("pytorch_model*.bin")) or sorted(folder.glob("*.pt"))
    if legacy:
        return legacy
    raise CheckpointError(
        f"{folder}: no weights found (expected *.safetensors, model.safetensors.index.json or pytorch_model*.bin)."
    )


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid shard index ({exc}).") from exc
    files = sorted({index.parent / f for f in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard(s) listed but missing: {', '.join(missing[:5])}.")
    return files


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve_hub_id(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of a cached hub model. Never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from subnetviz.config import hf_cache_dir

    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=str(hf_cache_dir()))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise NotCachedError(
            f"{repo_id}: not in the local Hugging Face cache ({hf_cache_dir()}). subnetviz never downloads; "
            f"fetch it first, e.g. `huggingface-cli download {repo_id}`, or give a local folder."
        ) from exc
    return Path(path)


def open_checkpoint(spec: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint lazily from a folder, a file, an index json or a cached hub id."""
    s = str(spec)
    path = Path(s).expanduser()
    root: Path | None
    if path.is_dir():
        root, files = path, _folder_files(path)
    elif path.is_file():
        root = path.parent
        if path.name.endswith(".index.json"):
            files = _index_files(path)
        elif path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            files = [path]
        else:
            raise CheckpointError(f"{path}: not a checkpoint file (expected .safetensors, .bin, .pt or an index json).")
    elif _looks_like_hub_id(s) and not path.exists():
        root = resolve_hub_id(s)
        files = _folder_files(root)
    else:
        raise CheckpointError(f"{s}: no such file or folder (and not a hub id of the form org/name).")
    config = None
    cfg_path = root / "config.json" if root else None
    if cfg_path and cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            config = None
    return Checkpoint(s, files, root, config)


# --- alignment -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlignedTensor:
    """One tensor present in every checkpoint of an alignment.

    ``names[i]`` is its name in checkpoint ``i``; ``rows`` is set when the vocabulary was resized
    (only the first ``rows`` rows are shared and compared; ``extra_rows[i]`` are beyond them).
    """

    key: str
    names: tuple[str, ...]
    shape: tuple[int, ...]
    rows: int | None = None
    extra_rows: tuple[int, ...] = ()


@dataclass
class Alignment:
    checkpoints: list[Checkpoint]
    tensors: list[AlignedTensor]
    only_in: dict[int, list[str]] = field(default_factory=dict)  # checkpoint index -> names only there
    notes: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """Human-readable lines: everything not compared one-to-one, and why."""
        lines = list(self.notes)
        for i, names in self.only_in.items():
            if names:
                lines.append(f"{len(names)} tensor(s) only in {self.checkpoints[i].spec}: {', '.join(names[:8])}"
                             + (" ..." if len(names) > 8 else ""))
        for t in self.tensors:
            if t.rows is not None:
                lines.append(f"{t.key}: vocabulary resized; compared the {t.rows} shared rows, "
                             f"extra rows per checkpoint: {list(t.extra_rows)}")
        return lines

    def __iter__(self) -> Iterator[AlignedTensor]:
        return iter(self.tensors)


def _is_vocab_tensor(table: NameTable, name: str) -> bool:
    return table.describe(name).module in ("embed", "lm_head")


def align(checkpoints: Sequence[Checkpoint]) -> Alignment:
    """Pair tensors across checkpoints by name (``model.``-style prefixes ignored).

    Tied ``lm_head`` weights are counted once (with the embedding); resized vocabularies compare
    the shared rows; tensors missing on any side are listed in ``only_in``. A shape that differs in
    anything but the vocabulary rows raises :class:`AlignmentError` naming the tensor.
    """
    if len(checkpoints) < 2:
        raise AlignmentError("align needs at least two checkpoints.")
    keyed: list[dict[str, str]] = []
    notes: list[str] = []
    for ck in checkpoints:
        m: dict[str, str] = {}
        for n in ck.names:
            m.setdefault(strip_prefix(n), n)
        keyed.append(m)
    # Tied embeddings: a head stored in a model that ties it is the embedding (HF ties it on load),
    # whether one side or every side stored the copy; counting it would count the embedding twice.
    for i, ck in enumerate(checkpoints):
        for head in ("lm_head.weight", "embed_out.weight", "cls.predictions.decoder.weight"):
            if head in keyed[i] and ck.tied_embeddings:
                notes.append(f"{ck.spec}: {head} is tied to the input embedding; counted once (as the embedding).")
                del keyed[i][head]
    common = [k for k in keyed[0] if all(k in km for km in keyed[1:])]
    only_in = {i: sorted(km[k] for k in km if not all(k in o for o in keyed)) for i, km in enumerate(keyed)}
    table = checkpoints[0].names_table
    tensors: list[AlignedTensor] = []
    for key in common:
        names = tuple(km[key] for km in keyed)
        shapes = [ck.meta(n).shape for ck, n in zip(checkpoints, names, strict=True)]
        if all(s == shapes[0] for s in shapes):
            tensors.append(AlignedTensor(key, names, shapes[0]))
            continue
        same_tail = all(len(s) == len(shapes[0]) and s[1:] == shapes[0][1:] for s in shapes)
        if same_tail and _is_vocab_tensor(table, names[0]):
            rows = min(s[0] for s in shapes)
            tensors.append(AlignedTensor(key, names, (rows, *shapes[0][1:]), rows, tuple(s[0] - rows for s in shapes)))
            continue
        found = ", ".join(f"{ck.spec}: {tuple(s)}" for ck, s in zip(checkpoints, shapes, strict=True))
        raise AlignmentError(
            f"tensor {names[0]!r} has different shapes ({found}); only vocabulary rows may differ. "
            "Are these checkpoints of the same architecture?"
        )
    if not tensors:
        raise AlignmentError(
            "no tensor names in common between " + " and ".join(ck.spec for ck in checkpoints)
            + f" (e.g. {checkpoints[0].names[:2]} vs {checkpoints[1].names[:2]})."
        )
    return Alignment(list(checkpoints), tensors, only_in, notes)


def read_aligned(ck: Checkpoint, t: AlignedTensor, i: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Tensor ``t`` of checkpoint ``ck`` (position ``i`` in the alignment), shared rows only."""
    x = ck.get(t.names[i], device)
    return x[: t.rows] if t.rows is not None else x
