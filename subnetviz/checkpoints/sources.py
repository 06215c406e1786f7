"""Checkpoint sources: one lazy, per-tensor view over any way a model is stored.

:func:`open_checkpoint` accepts a Hugging Face model folder (single or sharded safetensors with
``model.safetensors.index.json``), a single ``.safetensors`` file, an index json, a hub id resolved
*only* through the local Hugging Face cache, or legacy ``.bin``/``.pt`` files (read through
``torch.load(weights_only=True)``, never unpickled freely). Tensors are read one at a time as views
of the safetensors file mapped copy-on-write (:meth:`Checkpoint.get`: one map per file, its header
checked again when mapped), or through ``safetensors.safe_open`` where the data is not aligned.
An MXFP4 checkpoint (gpt-oss) lists its experts as the bf16 tensors transformers loads, dequantised
when read (:mod:`~subnetviz.checkpoints.mxfp4`). Quantized weights stored as packed codes are listed as their
codes in the weight's own name and shape (with their scales laid out like it), computed when read:
compressed-tensors' packed integers (:mod:`~subnetviz.checkpoints.ct_packed`), bitsandbytes' 4-bit
(:mod:`~subnetviz.checkpoints.bnb4`), AWQ's (:mod:`~subnetviz.checkpoints.awq`) and NVFP4
(:mod:`~subnetviz.checkpoints.nvfp4`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import mmap
import os
import pickle
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import safe_open  # (no torch: safetensors imports it only for its torch helpers)

from subnetviz.cache import stat_identity
from subnetviz.checkpoints import awq as _awq
from subnetviz.checkpoints import bnb4 as _bnb4
from subnetviz.checkpoints import ct_packed as _ct_packed
from subnetviz.checkpoints import header as _header
from subnetviz.checkpoints import mxfp4 as _mxfp4
from subnetviz.checkpoints import nvfp4 as _nvfp4
from subnetviz.checkpoints.families import json_type, tie_word_embeddings
from subnetviz.checkpoints.header import TensorMeta, read_safetensors_header
from subnetviz.checkpoints.naming import TIED_HEADS, NameTable, check_config, strip_prefix
from subnetviz.config import check_allowed, check_readable, display_path, enforce_roots, hf_cache_dir, read_json
from subnetviz.errors import CheckpointError, NotCachedError, PathNotAllowedError, SubnetvizError, suggest
from subnetviz.text import _SURROGATE, escaped  # noqa: F401 - escaped: imported from here by many modules

if TYPE_CHECKING:  # torch is imported where tensors are read: locating files and fingerprints need none
    import torch


BESIDE_INPUT_EMBEDDING = re.compile(r"(^|\.)(embed_tokens_per_layer|altup_projections|altup_unembed_projections)\.")
"""Names of tables filed as embeddings beside the input embedding that no output head is tied to (Gemma-3n's and
Gemma-4's per-layer embedding, Gemma-3n's AltUp projections): :attr:`Checkpoint.input_embedding` leaves them out.
Only these: a
model with other tables beside its word embedding (BERT's position and token-type embeddings) may have no head at
all (a classifier), and its embedding was never taken for one; it still is not."""


def _module_of(name: str) -> str:
    """The module a parameter belongs to, by its name: ``model.embed_tokens.weight`` -> ``embed_tokens``."""
    parts = name.rsplit(".", 2)
    return parts[-2] if len(parts) > 1 else ""


class Checkpoint:
    """A lazy per-tensor view of one checkpoint. Nothing is loaded until :meth:`get` is called."""

    def __init__(
        self, spec: str, files: list[Path], root: Path | None, config: dict | None, notes: list[str] | None = None
    ):
        self.spec = spec
        self.source = spec  # what a record names it by (open_checkpoint: a hub id with its commit)
        self.files = files
        self.root = root
        self.config = config or {}
        self._config_text = _config_text(self.config)  # (the config as read: fingerprinted)
        self._meta: dict[str, TensorMeta] = {}
        self._raw_headers: list[bytes] = []
        self._headers: dict[Path, tuple[dict, bytes]] = {}  # safetensors file -> (header, raw header)
        self._legacy: dict[Path, dict[str, torch.Tensor]] = {}
        self._handles: dict[Path, object] = {}
        self._maps: dict[Path, tuple[mmap.mmap, int]] = {}  # safetensors file -> (its map, data section offset)
        twice: dict[str, Path] = {}  # a tensor stored in more than one file -> the first file holding it
        for f in files:
            if f.suffix == ".safetensors":
                header, raw = read_safetensors_header(f)
                self._raw_headers.append(raw)
                self._headers[f] = (header, raw)
                for name, info in header.items():
                    if name == "__metadata__":
                        continue
                    if name in self._meta:
                        twice.setdefault(name, self._meta[name].file)
                    dt = info["dtype"]
                    stored = _header.ST_STORED_AS.get(dt)
                    self._meta[name] = TensorMeta(name, f, _header.ST_DTYPES[dt], tuple(info["shape"]), stored)
            else:
                sd = _load_legacy(f)
                self._legacy[f] = sd
                self._raw_headers.append(
                    json.dumps({k: [str(v.dtype), list(v.shape)] for k, v in sd.items()}, sort_keys=True).encode()
                )
                for name, t in sd.items():
                    if name in self._meta:
                        twice.setdefault(name, self._meta[name].file)
                    self._meta[name] = TensorMeta(name, f, t.dtype, tuple(t.shape))
        if not self._meta:
            raise CheckpointError(f"{spec}: the checkpoint holds no tensors.")
        # MXFP4 experts (gpt-oss) are listed as the bf16 tensors they stand for, dequantised when read
        try:
            self._packed = _mxfp4.plan(self._meta, self.config)
        except CheckpointError as exc:
            raise CheckpointError(f"{spec}: {exc}") from None
        self._stored = self._meta  # every tensor as the files store it
        self._views: dict[str, tuple[TensorMeta, tuple]] = {}  # a name read as part of a stored tensor (unpack)
        self._meta = _mxfp4.metas_with(self._meta, self._packed)
        # compressed-tensors' packed int4 / int8 weights, bitsandbytes' and AWQ's 4-bit ones are listed as their codes
        # in the weight's shape (bitsandbytes' block scales as float32, AWQ's scales and zero points transposed),
        # computed when read
        try:
            read = lambda m: self._read(m, "cpu")  # noqa: E731
            self._codes = {
                **_ct_packed.plan(self._meta, self.config, read),
                **_bnb4.plan(self._meta, read),
                **_awq.plan(self._meta, self.config),
                **_nvfp4.plan(self._meta, self.config),
            }
        except CheckpointError as exc:
            raise CheckpointError(f"{spec}: {exc}") from None
        self._meta = _computed_metas(self._meta, self._codes)
        self._unmapped = set(self._packed) | set(self._codes)  # names read through a computation, not mapped
        self.notes: list[str] = list(notes or [])
        if twice:
            # the later file wins, as transformers loads shards (each file's tensors in turn into one state dict)
            ex = ", ".join(f"{n} ({twice[n].name}, {self._meta[n].file.name})" for n in list(twice)[:2])
            self.notes.append(
                f"{len(twice)} tensor(s) are stored in more than one file, e.g. {ex}"
                f"{' ...' if len(twice) > 2 else ''}; each is read from the last of its files in name order, "
                "the copy transformers loads."
            )
        for reader in (_bnb4, _awq, _nvfp4, _ct_packed):  # (each notes the codes it read)
            self.notes += reader.notes(self._codes)
        if self._packed:
            ex = ", ".join(list(self._packed)[:2]) + (" ..." if len(self._packed) > 2 else "")
            self.notes.append(
                f"MXFP4: {len(self._packed)} tensor(s) ({ex}) are stored as 4-bit codes with one power-of-two "
                "scale per 32; read dequantised as transformers loads them (w = FP4(code) · 2^(scale − 127), "
                "exact in bfloat16, experts × in × out) and compared as bfloat16."
            )
        # FP8 scales read as views of packed ones, where their rows per scale are not the config's block
        # (checkpoints.experts_layout.read_packed_scales: transformers 5's FP8 experts)
        self.scale_rows: dict[str, int] = {}

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
        return self.dtype_counts(self._meta)

    def dtype_counts(self, names) -> dict[str, int]:
        """Stored dtype -> number of entries in that dtype, over the tensors ``names`` (from the headers)."""
        out: dict[str, int] = {}
        for n in names:
            m = self._meta[n]
            key = m.stored or str(m.dtype).replace("torch.", "")
            out[key] = out.get(key, 0) + m.numel
        return out

    @cached_property
    def names_table(self) -> NameTable:
        return NameTable.from_config(self.config, self.names)

    @property
    def tied_embeddings(self) -> bool:
        """Whether the model ties its output head to its input embedding, as transformers 5 loads it: the config's
        ``tie_word_embeddings``, or its model type's default where the config leaves it out
        (:func:`~subnetviz.checkpoints.families.tie_word_embeddings`), unless the checkpoint stores the head with
        values of its own (:attr:`head_stored_apart`)."""
        return tie_word_embeddings(self.config) and self.head_stored_apart is None

    @cached_property
    def head_stored_apart(self) -> tuple[str, str] | None:
        """``(head, input embedding)``, as stored, where the config ties the output head to the input embedding
        but the checkpoint stores both with different values: transformers 5 then loads them untied ("both are
        present in the checkpoints with different values, so we will NOT tie them"), the head a parameter of its
        own (a PEFT ``modules_to_save=["lm_head"]`` merge of a tied model saves one). None where the config unties
        them, either is not stored, or both hold the same values (a ``.bin`` of a tied model stores both names):
        then the head is the embedding. Read only where the config ties the head and both are stored, each tensor
        once, compared bitwise (transformers' ``torch.equal`` differs only on NaN and signed zeros). A merged
        adapter (:class:`~subnetviz.checkpoints.adapters.MergedAdapter`) is its base's, as PEFT loads that base."""
        base = getattr(self, "base", None)  # (a merged adapter: the base transformers loads before the merge)
        if isinstance(base, Checkpoint) and base is not self:
            return base.head_stored_apart if tie_word_embeddings(self.config) else None
        if not tie_word_embeddings(self.config):
            return None
        heads = [n for n in self.names if strip_prefix(n) in TIED_HEADS]
        embed = self.input_embedding
        if not heads or embed is None:
            return None
        return None if _same_values(self.get(heads[0]), self.get(embed)) else (heads[0], embed)

    @property
    def input_embedding(self) -> str | None:
        """The stored input embedding an output head tied to it is (transformers' ``_tied_weights_keys``, e.g.
        ``lm_head.weight`` -> ``model.embed_tokens.weight``): the one tensor its naming table files as ``embed``, no
        head, less the tables no head is tied to (:data:`BESIDE_INPUT_EMBEDDING`: Gemma-3n's and Gemma-4's per-layer
        embedding ``embed_tokens_per_layer``, which may have the input embedding's very shape, and Gemma-3n's AltUp
        projections). None where that
        leaves none or several (BERT's word, position and token-type embeddings)."""
        table = self.names_table
        found = [n for n in self.names if strip_prefix(n) not in TIED_HEADS and table.describe(n).module == "embed"]
        found = [n for n in found if not BESIDE_INPUT_EMBEDDING.search(n)]
        return found[0] if len(found) == 1 else None

    @property
    def architecture(self) -> str:
        arch = self.config.get("architectures")  # (checked where config.json is read: a list of names, or none)
        named = arch[0] if isinstance(arch, list) and arch and isinstance(arch[0], str) else None
        return named or self.names_table.family or "unknown"

    @cached_property
    def fingerprint(self) -> str:
        """A cheap cache key: hash of every file's path, identity (inode, size, mtime, ctime) and header (no tensor
        data read), and of the parsed ``config.json``."""
        return _fingerprint(self.files, self._raw_headers, self._config_text)

    def unpack(self, views: dict[str, tuple[str, tuple, tuple[int, ...]]]) -> None:
        """Read stored tensors as parts of themselves from now on: ``views`` maps a new name to (stored name,
        index, shape), e.g. one expert's gate rows of a packed ``gate_up_proj``
        (:func:`~subnetviz.checkpoints.experts_layout.match_layouts`). The stored names viewed leave
        :attr:`names`; each view takes the place of the first of them, in the order given."""
        sources = {src for src, _, _ in views.values()}
        by_source: dict[str, list[str]] = {}
        for name, (src, _, _) in views.items():
            by_source.setdefault(src, []).append(name)
        meta: dict[str, TensorMeta] = {}
        for name, m in self._meta.items():
            if name not in sources:
                meta[name] = m
                continue
            for v in by_source[name]:
                src, index, shape = views[v]
                meta[v] = replace(m, name=v, shape=tuple(shape))
                self._views[v] = (m, index)
        self._meta = meta
        self.__dict__.pop("names_table", None)  # named anew from the names now read

    # --- reading ---------------------------------------------------------------------------------
    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor, in its stored dtype (MXFP4 experts dequantised to bfloat16), on ``device``."""
        if name in self._views:  # a part of a stored tensor: sliced where it is read, then moved
            m, index = self._views[name]
            part = self.get_stored(m)[index]
            return part if str(device) == "cpu" else part.to(device)
        if name in self._unmapped:  # dequantised or unpacked on the CPU, then moved
            return self.get_stored(self.meta(name)).to(device)
        return self._read(self.meta(name), device)

    def _read(self, m: TensorMeta, device: str | torch.device) -> torch.Tensor:
        name = m.name
        if m.file in self._legacy:
            return self._legacy[m.file][name].to(device)
        t = self._mapped(m)
        if t is not None:
            return t.to(device) if str(device) != "cpu" else t
        handle = self._handles.get(m.file)
        if handle is None:
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

    def get_stored(self, m: TensorMeta) -> torch.Tensor:
        """A tensor as its file stores it, on the CPU (a view of the file's map where it is mapped), by its meta:
        also one that :meth:`unpack` took out of :attr:`names`."""
        if m.name in self._packed:
            p = self._packed[m.name]
            blocks, scales = self._read(self._stored[p.blocks], "cpu"), self._read(self._stored[p.scales], "cpu")
            return _mxfp4.dequantize(blocks, scales, name=m.name)
        if m.name in self._codes:
            try:
                return self._codes[m.name].read(lambda n: self._read(self._stored[n], "cpu"), m.name)
            except CheckpointError as exc:  # named by the checkpoint (a file's own errors name the file)
                if str(exc).startswith((f"{self.spec}:", str(m.file))):
                    raise
                raise CheckpointError(f"{self.spec}: {exc}") from None
        return self._read(m, "cpu")

    def stored_as_read(self, name: str) -> bool:
        """Whether tensor ``name`` is its bytes in a safetensors file as they stand (so a reader may take
        them by address: the series pass), not read through ``torch.load`` or computed when read (MXFP4
        experts here, merged adapter weights in :class:`~subnetviz.checkpoints.adapters.MergedAdapter`)."""
        return name not in self._unmapped and name not in self._views and self.meta(name).file.suffix == ".safetensors"

    def array(self, name: str, view: np.dtype) -> np.ndarray | None:
        """Tensor ``name``'s bytes as a NumPy array of ``view`` (an integer type of the stored item size),
        its shape, over the file mapped copy-on-write (no torch tensor: the update pass compares hundreds of
        tensors per file this way); None where the tensor is not read from a map (see :meth:`_mapped`)."""
        if name in self._views:  # a part of a stored tensor: that part of its array
            m, index = self._views[name]
            whole = self._array_of(m, view)
            return None if whole is None else whole[index]
        return self._array_of(self.meta(name), view)

    def _array_of(self, m: TensorMeta, view: np.dtype) -> np.ndarray | None:
        span = self._span(m) if m.file not in self._legacy and m.name not in self._unmapped else None
        if span is None:
            return None
        mm, offset, nbytes = span
        return np.frombuffer(mm, view, nbytes // m.dtype.itemsize, offset).reshape(m.shape)

    def _mapped(self, m: TensorMeta) -> torch.Tensor | None:
        """Tensor ``m`` as a view of its file mapped copy-on-write (one map per file, made on first use):
        a NumPy view at the header's offset, seen as the stored dtype, ~4 µs against ~13 for safetensors'
        ``get_tensor`` (the update pass reads hundreds of tensors per file). None (safetensors reads it)
        where the data is not aligned to its item size."""
        import torch

        span = self._span(m)
        if span is None:
            return None
        mm, offset, nbytes = span
        return torch.from_numpy(np.frombuffer(mm, np.uint8, nbytes, offset)).view(m.dtype).reshape(m.shape)

    def _span(self, m: TensorMeta) -> tuple[mmap.mmap, int, int] | None:
        """(its file's map, offset, size in bytes) of tensor ``m``'s data; None where the data is not aligned
        to its item size. A file whose header or size no longer matches what was read when the checkpoint
        was opened is refused, not read."""
        header, raw = self._headers[m.file]
        begin, end = header[m.name]["data_offsets"]
        got = self._maps.get(m.file)
        if got is None:
            got = self._maps[m.file] = map_checked(m.file, raw)
        mm, start = got
        if (start + begin) % m.dtype.itemsize or begin < 0 or start + end > len(mm):
            return None
        return mm, start + begin, end - begin

    def populate(self, name: str) -> None:
        """Map the pages of tensor ``name``'s bytes now, so that the first pass over the tensor (in another
        thread) takes no page faults: one byte read per :data:`FAULT_AROUND` bytes, each read's fault
        mapping the pages around it that are in the page cache (what the pass's own faults would do).
        Only for a tensor read from a map (:meth:`get`) and larger than that (a smaller one costs the pass
        a fault or two); otherwise nothing happens."""
        if name in self._views:  # (a part of a stored tensor: the pass's own faults map it)
            return
        m = self.meta(name)
        got = self._maps.get(m.file)
        if got is None or name in self._unmapped:
            return
        mm, start = got
        begin, end = self._headers[m.file][0][name]["data_offsets"]
        if end - begin >= FAULT_AROUND:
            np.frombuffer(mm, np.uint8, end - begin, start + begin)[::FAULT_AROUND].max()

    def close(self) -> None:
        self._handles.clear()
        self._maps.clear()  # each map closes once no tensor uses it

    def __repr__(self) -> str:
        return f"Checkpoint({self.spec!r}, {len(self._meta)} tensors, {self.num_params:,} params)"


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same values: bitwise where their dtypes agree, else compared in the dtype both
    widen to exactly (bfloat16 and float32: float32); a dtype pair torch does not promote (FP8) differs."""
    import torch

    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype:
        ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
        return torch.equal(a.view(ints), b.view(ints)) if ints is not None else torch.equal(a, b)
    try:
        wide = torch.promote_types(a.dtype, b.dtype)
    except RuntimeError:
        return False
    return torch.equal(a.to(wide), b.to(wide))


def _computed_metas(metas: dict[str, TensorMeta], plan: dict) -> dict[str, TensorMeta]:
    """``metas`` with each planned tensor (name -> a plan entry of :mod:`~subnetviz.checkpoints.ct_packed` or
    :mod:`~subnetviz.checkpoints.bnb4`: ``source``, ``shape``, ``dtype``, ``stored``, ``drops``) in its source's
    place in the order, as the values it computes, and the stored tensors the entries consume left out."""
    if not plan:
        return metas
    by_source = {p.source: (name, p) for name, p in plan.items()}
    drop = {d for p in plan.values() for d in p.drops}
    out: dict[str, TensorMeta] = {}
    for name, m in metas.items():
        if name in by_source:
            logical, p = by_source[name]
            out[logical] = replace(m, name=logical, dtype=p.dtype, shape=p.shape, stored=p.stored)
        elif name not in drop:
            out[name] = m
    return out


# Bytes a read fault on a file map maps around the faulting page (Linux's fault_around_bytes default)
FAULT_AROUND = 1 << 16


def map_checked(path: Path, raw: bytes) -> tuple[mmap.mmap, int]:
    """(copy-on-write map of ``path``, offset of its data section) after checking that the file still
    begins with the header ``raw`` read when the checkpoint was opened."""
    try:
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot map ({exc}).") from exc
    start = 8 + len(raw)
    if len(mm) < start or mm[8:start] != raw:
        mm.close()
        raise CheckpointError(f"{path}: the file changed since its header was read; open the checkpoint again.")
    return mm, start


def _load_legacy(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` state dict (``pytorch_model*.bin``, ``.pt``): checked as an uploaded mask is before
    ``torch.load(weights_only=True)`` reads it (:func:`~subnetviz.pickles.check_torch_file`: its pickles walked
    first, compressed records refused), its tensors then checked."""
    import torch

    from subnetviz.errors import MaskError
    from subnetviz.pickles import check_torch_file

    _header.check_not_lfs_pointer(path)  # (its text read as a pickle was "opcode b'v' unknown")
    with utf8_name(path) as name:  # (torch's zip reader and its mmap take a name only as UTF-8 text)
        try:
            check_torch_file(name)
        except MaskError as exc:  # (the mask reader's errors; here the checkpoint's)
            raise CheckpointError(str(exc).replace(name, str(path))) from None
        try:
            try:
                obj = torch.load(name, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):  # pre-zipfile torch.save format: readable, just not mappable
                    raise
                from subnetviz.config import require_memory

                # read whole, into memory (a checkpoint held open until it is closed): refused where it would not fit
                require_memory(f"{path.name} (a pre-1.6 torch.save file, read whole)", path.stat().st_size)
                obj = torch.load(name, map_location="cpu", weights_only=True)
        except SubnetvizError:
            raise
        except pickle.UnpicklingError as exc:  # weights_only refused what the pickle asks for: said as the mask reader
            raise CheckpointError(f"{path}: {_refused_pickle(exc)}") from None
        except Exception as exc:  # RuntimeError for corrupt zips, a storage declared larger than stored
            raise CheckpointError(
                f"{path}: refused or unreadable legacy checkpoint ({type(exc).__name__}: "
                f"{str(exc).replace(name, str(path))[:200]}). "
                "Only plain tensor state dicts are read (torch.load weights_only=True)."
            ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "ds_version" in obj and isinstance(obj.get("module"), dict):
        obj = _deepspeed_module(path, obj["module"])
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors.")
    for name, t in obj.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: a tensor is named {str(name)[:60]!r}, not a string; expected a state dict.")
        _header.check_utf8(name, f"{path}: tensor name")
        if t.layout != torch.strided or not fits_its_storage(t):
            what = (
                f"a {t.layout} tensor" if t.layout != torch.strided else "a view larger than the bytes it is stored in"
            )
            raise CheckpointError(
                f"{path}: tensor {name!r} of shape {tuple(t.shape)} is {what}; a checkpoint stores each weight's "
                "entries. Refused before reading it."
            )
    return obj


def _refused_pickle(exc: Exception) -> str:
    """What torch's weights-only unpickler refused, in one line: the global the pickle asks for (torch names it as
    ``GLOBAL posix.system``). Its own text, cut at 200 characters, ended in "Re-running `torch.load` with
    `weights_only` set to `False`": advice to run the file, with what it asked for cut off."""
    asked = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f"asks for {asked.group(1)}, which is" if asked else "holds objects"
    return (
        f"its pickle {what} not part of a state dict of tensors. Refused; nothing in it was run (only plain tensor "
        "state dicts are read: torch.load weights_only=True)."
    )


def _deepspeed_module(path: Path, module: dict) -> dict:
    """The model's state dict a DeepSpeed ``*_model_states.pt`` keeps under ``"module"`` (ZeRO stages 0-2: the
    module's weights as trained). Under ZeRO-3 those are empty placeholders, the weights being partitioned across
    the ``*_optim_states.pt`` files: refused, with the command that writes them."""
    import torch

    empty = next((k for k, v in module.items() if isinstance(v, torch.Tensor) and v.numel() == 0), None)
    if empty is not None:
        raise CheckpointError(
            f"{path}: DeepSpeed ZeRO-3 state: its 'module' holds empty placeholders (e.g. {str(empty)[:60]!r}), "
            f"the weights are partitioned across the optimizer-state files; {_ZERO_TO_FP32}."
        )
    return module


def float32_bytes(spec) -> int:
    """Bytes the parameters of checkpoint ``spec`` take once loaded in float32 (as the behaviour, bigram and
    accuracy computations load a model), from its headers: nothing is read but them."""
    ck = open_checkpoint(spec)
    try:
        return 4 * ck.num_params
    finally:
        ck.close()


def fits_its_storage(t) -> bool:
    """Whether the dense tensor ``t`` has no more bytes than its storage: not a stride-0 (expanded) view that
    turns a few stored bytes into 10^12 entries, which any full-size temporary would then allocate."""
    return t.numel() * t.element_size() <= t.untyped_storage().nbytes()


# The weight files from_pretrained looks for in a local folder, in its order (transformers 5, no variant)
SAFE_NAMES = ("model.safetensors", "model.safetensors.index.json")
TORCH_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def transformers_choice(folder: Path, where: str | None = None) -> Path | None:
    """The weights file (or index) ``from_pretrained`` reads in ``folder``: the one ``config.json`` names under
    ``transformers_weights``, else the first of :data:`SAFE_NAMES` and :data:`TORCH_NAMES` there; None where there
    is none of them. CheckpointError, naming ``where`` (default the folder), for a ``transformers_weights`` entry
    that names no file of the folder."""
    cfg, where_cfg = folder / "config.json", f"config.json in {display_path(folder)}"
    check_config_link(cfg, where_cfg)
    # (a folder or pipe in its place is refused by the reader, in one line; it was read as no config, unsaid)
    config = read_json(cfg, CheckpointError, what=where_cfg) if cfg.exists() else {}
    named = config.get("transformers_weights")
    if named is not None:
        if not isinstance(named, str) or not _inside(folder, named) or not (folder / named).is_file():
            raise CheckpointError(
                f"{where or display_path(folder)}: config.json names transformers_weights {str(named)[:80]!r}, which "
                "is not a file of the folder."
            )
        return folder / named
    return next((folder / n for n in (*SAFE_NAMES, *TORCH_NAMES) if (folder / n).is_file()), None)


def check_config_link(cfg: Path, where: str) -> None:
    """CheckpointError, one line naming ``where`` (e.g. "config.json in zoo/base"), where ``cfg`` is a link to
    nothing: a hub snapshot whose ``config.json`` blob was deleted (by hand, a cleanup, a copy that lost it), a
    folder's link to a file since removed. ``Path.exists`` follows the link, so such a config was read as no
    config at all: a tied head counted untied, the quantization and model type unread, nothing said. A link that
    leads outside the roots while they are enforced is refused as such first (:func:`~subnetviz.config
    .check_readable`): nothing is said of what lies there."""
    if not (os.path.islink(cfg) and not os.path.exists(cfg)):
        return
    check_readable(cfg, what=where)
    gone = "its blob is gone from the Hugging Face cache" if cfg.parent.parent.name == "snapshots" else "it is gone"
    raise CheckpointError(
        f"{where}: a link to a missing file ({gone}), so the model's config cannot be read; download the model again "
        "(or restore the file it links to)."
    )


def _inside(folder: Path, name: str) -> bool:
    """Whether ``name`` is a plain path inside ``folder`` (not absolute, no ``..``)."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def _folder_files(folder: Path, notes: list[str] | None = None) -> list[Path]:
    """The weight files of a model folder, found as transformers finds them (:func:`transformers_choice`):
    ``config.json``'s ``transformers_weights``, else ``model.safetensors``, its shard index, ``pytorch_model.bin``,
    its index; any other ``*.safetensors`` (then ``*.pt``) only where there is none of these. A folder can hold
    more than one: save_pretrained into a folder saved sharded before leaves the old index behind (its shards
    deleted), a consolidation script writes the single file beside the shards, and the RL-subnetwork code keeps a
    0/1 mask as ``subnetwork_mask.safetensors`` beside a ``pytorch_model.bin`` (the mask was compared as the model:
    0.02 % sparsity for 36 %). What was read and what was left aside is appended to ``notes``."""
    picked = transformers_choice(folder)
    if picked is not None:
        files = _index_files(picked) if picked.name.endswith(".index.json") else [picked]
        if notes is not None:
            notes += _left_aside(folder, picked, files)
        return files
    # .pt files only where the folder holds no safetensors at all, and never a trainer's own state (an optimizer.pt
    # is read as no model, and is twice its size or more)
    found = (
        sorted(folder.glob("*.safetensors"))
        or sorted(folder.glob("pytorch_model*.bin"))
        or sorted(f for f in folder.glob("*.pt") if not training_state(f))
    )
    if found:
        _check_shards_whole(folder, found)
        return found
    raise CheckpointError(
        f"{folder}: no weights found (expected *.safetensors, model.safetensors.index.json or pytorch_model*.bin)"
        + _what_it_holds(folder)
    )


# a shard's name as save_pretrained writes it: model-00001-of-00002.safetensors (prefix, number, count)
_SHARD_NAME = re.compile(r"^(.*)-(\d{5,})-of-(\d{5,})\.(safetensors|bin)$")


def _check_shards_whole(folder: Path, files: list[Path]) -> None:
    """CheckpointError, in one line naming the missing shard(s), where ``files`` (a folder's weights found without
    an index) are shards named as save_pretrained names them (``…-00001-of-00002.safetensors``) but not numbered
    1 to their count: save_pretrained writes the shards first and the index last, so a run's checkpoint caught
    mid-save (or an incomplete copy) holds shard 1 of 2 and no index. Read as a whole model, its 11 tensors of 21
    cut the other 10 out of every checkpoint of the series, unsaid. The same refusal the index gives
    (:func:`_index_files`)."""
    groups: dict[tuple[str, str, int, int], set[int]] = {}
    for f in files:
        m = _SHARD_NAME.match(f.name)
        if m:
            groups.setdefault((m[1], m[4], len(m[3]), int(m[3])), set()).add(int(m[2]))
    named: list[str] = []  # the first few missing (a name's count may be any number: never listed whole)
    count = 0
    for (prefix, ext, width, total), have in sorted(groups.items()):
        count += total - sum(1 for i in have if 1 <= i <= total)
        for i in range(1, total + 1):
            if len(named) == 5:
                break
            if i not in have:
                named.append(f"{prefix}-{i:0{width}d}-of-{total:0{width}d}.{ext}")
    if count:
        why = _interrupted_download(folder) or ": a save still in progress or an incomplete copy."
        more = f" and {count - len(named)} more" if count > len(named) else ""
        raise CheckpointError(f"{display_path(folder)}: shard(s) missing and no index: {', '.join(named)}{more}{why}")


# What trainers save beside a model, never its weights: the HF Trainer's and accelerate's optimizer, scheduler and
# RNG state, fp16 grad scaler and arguments (and SageMaker MP's user content), DeepSpeed's partitioned optimizer
# state (global_step*/*optim_states.pt)
TRAINING_STATE = (
    "optimizer*.pt",
    "scheduler*.pt",
    "rng_state*.pth",
    "scaler*.pt",
    "user_content.pt",
    "*optim_states.pt",
    "training_args.bin",
)
# a training run's checkpoint folders (HF Trainer, this app, accelerate's automatic naming)
_CHECKPOINT_DIR = re.compile(r"^(?:checkpoint|step)[-_]?(\d+)$")
_ZERO_TO_FP32 = (
    "write the weights with DeepSpeed's zero_to_fp32.py (in the checkpoint folder: python zero_to_fp32.py . "
    "<output folder> --safe_serialization) and give the folder it writes"
)


def training_state(file: Path) -> bool:
    """Whether ``file`` is a trainer's own state (:data:`TRAINING_STATE`), not a model's weights."""
    return any(fnmatch.fnmatchcase(file.name, pattern) for pattern in TRAINING_STATE)


def _what_it_holds(folder: Path) -> str:
    """The end of the no-weights error of ``folder``: what it holds instead and what to give (``"."`` where it
    holds nothing known): a GGUF file, PEFT adapters saved under their names, FSDP's sharded state, DeepSpeed's ZeRO
    state, a model in a subfolder, a run's checkpoint folders, or only a trainer's state."""
    interrupted = _interrupted_download(folder)
    if interrupted:
        return interrupted
    gguf = sorted(folder.glob("*.gguf"))
    if gguf:
        return f"; {gguf[0].name} is {_GGUF}"
    # PEFT saves a model's adapters that are not named "default" in subfolders of the folder given (out/math)
    named = sorted(p.parent for p in folder.glob("*/adapter_config.json"))
    if named:
        return (
            f"; it holds {len(named)} PEFT adapter folder(s), saved under their adapter names: give one of them "
            f"({', '.join(str(p) for p in named[:3])}{' …' if len(named) > 3 else ''}) beside its base."
        )
    fsdp = sorted(p.name for p in folder.glob("pytorch_model_fsdp_*") if p.is_dir())
    if fsdp:
        return (
            f"; it holds FSDP sharded state ({fsdp[0]}/): consolidate it into one file (accelerate merge-weights "
            f"{folder / fsdp[0]} <output folder>) and give the folder it writes."
        )
    tags = sorted(p.name for p in folder.glob("global_step*") if p.is_dir())
    if tags or (folder / "zero_to_fp32.py").is_file():
        return f"; it holds DeepSpeed ZeRO state{f' ({tags[0]}/)' if tags else ''}: {_ZERO_TO_FP32}."
    # a model saved in a subfolder (a hub repository holding it in final/ or model/): a hub id names the repository's
    # top folder only, so the subfolder is given by its path
    models = sorted(
        p.parent
        for p in folder.glob("*/config.json")
        if not _CHECKPOINT_DIR.match(p.parent.name) and (holds_model_weights(p.parent) or _any_weights(p.parent))
    )
    if models:
        from subnetviz.config import hub_snapshot_of

        names = ", ".join(f"{p.name}/" for p in models[:3]) + (" …" if len(models) > 3 else "")
        hub = " (a hub id names only the repository's top folder)" if hub_snapshot_of(folder) else ""
        return (
            f"; the model is in {'a subfolder' if len(models) == 1 else f'{len(models)} subfolders'} ({names}): "
            f"give that folder's path{hub}, e.g. {models[0]}."
        )
    runs = [
        p for p in (*folder.iterdir(), *folder.glob("checkpoints/*")) if p.is_dir() and _CHECKPOINT_DIR.match(p.name)
    ]
    if runs:
        runs.sort(key=lambda p: int(_CHECKPOINT_DIR.match(p.name).group(1)))
        return (
            f"; it holds {len(runs)} training checkpoint folder(s) ({runs[0].name} … {runs[-1].name}): give one of "
            f"them, e.g. {runs[-1]}, or several beside the base for the Series page."
            if len(runs) > 1
            else f"; it holds a training checkpoint folder: give it, {runs[0]}."
        )
    state = sorted(f.name for f in folder.iterdir() if f.is_file() and training_state(f))
    if state:
        return (
            f"; it holds a trainer's state only ({', '.join(state[:4])}{' …' if len(state) > 4 else ''}), which is "
            "not the model: the model's weights were not saved in this folder."
        )
    return "."


def _interrupted_download(folder: Path) -> str:
    """Where ``folder`` is a hub cache snapshot and its repository's ``blobs/`` holds ``*.incomplete`` files (what an
    interrupted ``hf download`` leaves: the file is linked into the snapshot only once it is whole), the end of a
    missing-weights error saying so and the command that resumes it; else ``""``."""
    from subnetviz.config import hub_snapshot_of

    snap = hub_snapshot_of(folder)
    if snap is None or Path(folder).name != snap[1]:  # (the snapshot folder itself, not a subfolder of it)
        return ""
    repo_id, commit, _ = snap
    repo = Path(folder).parent.parent
    try:
        partial = sum(1 for _ in (repo / "blobs").glob("*.incomplete"))
    except OSError:
        return ""
    if not partial:
        return ""
    try:  # a snapshot refs/main does not name was fetched at a revision: resumed at that one
        main = _ref_commit(repo.parent, repo_id, "main")
    except SubnetvizError:
        main = None
    revision = "" if main == commit.lower() or not _COMMIT.fullmatch(commit) else f" --revision {commit}"
    return (
        f"; a download was interrupted ({partial} .incomplete blob(s) in its repository's blobs/ folder): run "
        f"`hf download {repo_id}{revision}` again to finish it."
    )


def _any_weights(folder: Path) -> bool:
    """Whether ``folder`` holds a ``*.safetensors`` file other than an adapter's (a model :func:`_folder_files`
    reads where no file transformers names is there)."""
    return any(not f.name.startswith("adapter_model") for f in folder.glob("*.safetensors"))


def _left_aside(folder: Path, picked: Path, files: list[Path]) -> list[str]:
    """The notes naming the other weight files of ``folder`` that were not read, where there are any: a stray
    ``*.safetensors``, and a ``pytorch_model*.bin`` (its shards, its index) or a ``*.pt`` other than a trainer's
    state. A base's folder copied and then trained into with ``torch.save`` (``safe_serialization=False``) holds the
    base's model.safetensors, which is read, and the trained pytorch_model.bin, which was left aside unsaid: the
    finetune read as 100 % sparse, nothing changed."""
    index = folder / "model.safetensors.index.json"
    notes, read = [], {picked.name, *(f.name for f in files)}
    if picked.name == "model.safetensors" and index.is_file():
        notes.append(
            f"the folder holds both model.safetensors and {index.name}: model.safetensors was read (as "
            "transformers loads such a folder) and the index, with the shards it lists, was ignored."
        )
        read |= {f.name for f in folder.glob("*.safetensors")}  # (the shards: said by that note)
    other = sorted(
        f.name
        for f in folder.glob("*.safetensors")
        if f.name not in read and not f.name.startswith("adapter_model")  # (an adapter: is_adapter decides)
    )
    legacy = (*folder.glob("pytorch_model*.bin"), *folder.glob("pytorch_model*.bin.index.json"), *folder.glob("*.pt"))
    other += sorted(f.name for f in legacy if f.name not in read and f.is_file() and not training_state(f))
    if not other:
        return notes
    return notes + [
        f"{picked.name} was read, as transformers loads the folder; {', '.join(other[:3])}"
        f"{' …' if len(other) > 3 else ''} beside it {'was' if len(other) == 1 else 'were'} not read (not compared)."
    ]


# GGUF (llama.cpp's format, mostly k-quants) is not read: its quantization is not the release's weights.
_GGUF = "GGUF (llama.cpp), which is not read: compare the safetensors release it was converted from."


def _index_files(index: Path) -> list[Path]:
    data = read_json(index, CheckpointError)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):  # (a list said "not a valid shard index (AttributeError: …)")
        found = (
            "has no weight_map"
            if "weight_map" not in data
            else f"weight_map is {'null' if weight_map is None else json_type(weight_map)}"
        )
        raise CheckpointError(f"{index}: {found}; expected an object of tensor name → shard file.")
    odd = [v for v in weight_map.values() if not isinstance(v, str)]
    if odd:  # (5, null, a list: Path() of it was a TypeError traceback)
        raise CheckpointError(f"{index}: a shard entry is {json.dumps(odd[0])[:40]}, not a file name.")
    entries = sorted(set(weight_map.values()))
    for i, entry in enumerate(entries):
        # A shard is a file name in the index's own folder (or a plain sub-path): never absolute, never "..".
        parts = Path(entry).parts if isinstance(entry, str) else ("..",)
        if not parts or Path(entry).is_absolute() or ".." in parts:
            kind = (
                "an absolute path"
                if isinstance(entry, str) and Path(entry).is_absolute()
                else "a path leaving its folder"
            )
            raise CheckpointError(
                f"{index}: shard entry #{i + 1} is {kind}; shards must be files beside the index. Refused."
            )
    # one file per path: "./shard" beside "shard" (or "a//b" beside "a/b") names one file, read once (it was opened
    # twice, and its tensors noted as "stored in more than one file" naming that file twice)
    shards: dict[Path, int] = {}
    for i, entry in enumerate(entries):
        shards.setdefault(index.parent / Path(entry), i)
    missing = [f.name for f, i in shards.items() if not _is_shard(index, i, entries[i], f)]
    if missing:
        why = _interrupted_download(index.parent) or "."
        raise CheckpointError(f"{index}: shard(s) listed but missing: {', '.join(missing[:5])}{why}")
    return sorted(shards, key=str)  # (in the name order of the entries, as before)


def _is_shard(index: Path, i: int, entry: str, file: Path) -> bool:
    """Whether shard entry ``entry`` (#``i``, 0-based) of ``index`` names a file; a one-line error naming the entry
    as the index gives it for a name the file system refuses to look up (a component over 255 bytes: ENAMETOOLONG,
    whose message held the server's absolute path)."""
    try:
        return file.is_file()
    except (OSError, ValueError) as exc:
        shown = repr(entry) if len(entry) <= 80 else f"{entry[:40]!r}…{entry[-20:]!r} ({len(entry):,} characters)"
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise CheckpointError(
            f"{display_path(index)}: shard entry #{i + 1} ({shown}) names no file the file system can look up "
            f"({why}). Refused."
        ) from None


def _looks_like_hub_id(spec: str) -> bool:
    """``org/name`` or ``org/name@revision`` (a branch, tag or commit) that the hub could hold (huggingface_hub's
    own rule: ``views/..`` or ``acme/x y`` is a path, never a hub id): a hub id, where no such path exists."""
    repo, at, rev = spec.partition("@")
    parts = repo.split("/")
    if not (len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")) and (not at or bool(rev))):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return True


def reads_as_hub_id(spec: str | os.PathLike) -> bool:
    """Whether checkpoint ``spec`` is read as a hub id: ``org/name[@revision]`` and no path of that name. While the
    roots are enforced (:func:`~subnetviz.config.enforce_roots`) a path counts only under them, and whether one
    exists is asked only there: ``org/name`` outside the roots is a hub id whether or not such a path exists, so
    what it is opened as, and the message that refuses it, tell nothing of the server's files (a model folder
    ``acme/tiny`` in the working folder read "model.safetensors in …: leads outside", ``acme/none`` "not in the
    local Hugging Face cache"). As :func:`subnetviz.selection.resolve_choice` decides for the app."""
    s = str(spec)
    if not _looks_like_hub_id(s):
        return False
    if not enforce_roots():
        return not os.path.exists(s)  # (os.path: False for a name no file can have, where Path.exists raises)
    try:
        under = check_allowed(s)
    except PathNotAllowedError:
        return True
    return not os.path.exists(under)


def check_hub_cache(spec: str) -> None:
    """Refuse hub id ``spec`` (PathNotAllowedError, one line the same for every id) while the roots are enforced
    and the Hugging Face cache lies outside them: before anything under the cache is listed or opened. Its listing
    named the ids and revisions it holds ("the cache holds acme/Tiny-Base", "but these: acme/Tiny-Base@main"), and
    a cached id's refs were read before its weights were refused, so the message told whether it was cached.
    First, a revision that is no branch, tag or commit name is refused (:func:`check_revision`), whatever the
    roots: the app's selection calls this before a hub id is let through."""
    check_revision(*split_revision(spec))  # (a name, whatever the cache holds: refused before it is looked at)
    if not enforce_roots():
        return
    try:
        check_allowed(hf_cache_dir())
    except PathNotAllowedError:
        raise PathNotAllowedError(
            f"{spec}: hub ids are read from the Hugging Face cache, which lies outside the folders this server may "
            "read (its owner adds it with SUBNETVIZ_ROOTS)."
        ) from None


# A full commit id: named as it is, no ref read
_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
# What git check-ref-format refuses anywhere in a ref name: control characters, space, DEL, ~ ^ : ? * [ and backslash
_REF_REFUSED = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_REF_MAX = 255  # (a longer name is no file name a cache holds: ENAMETOOLONG)
# A ref file holds a commit (40 hex digits, huggingface_hub writes no newline): more than this is no ref
_REF_BYTES = 64


def check_revision(repo_id: str, rev: str | None) -> None:
    """Refuse (CheckpointError, one line) a revision of hub id ``repo_id@rev`` that is no branch, tag or commit
    name by git's rules (``git check-ref-format``): ``..``, a leading or trailing ``/``, ``//``, a part that
    begins with ``.`` or ends with ``.lock``, control characters, space or ``~ ^ : ? * [ \\``. huggingface_hub
    opens ``refs/<rev>`` with the revision joined as a path, ``..`` kept: ``@../../../etc/x`` read a file outside
    the roots as a ref (its text then opened as the snapshot folder), ``@…/fifo`` hung the page for good and
    ``@…/dev/zero`` read until memory ran out."""
    if rev is None:
        return
    why = _revision_problem(rev)
    if why:
        shown = rev if rev.isprintable() else repr(rev)  # (one line, whatever the revision holds)
        shown = shown if len(shown) <= 80 else f"{shown[:40]}…{shown[-20:]} ({len(rev):,} characters)"
        raise CheckpointError(
            f"{repo_id}@{shown}: the revision is no branch, tag or commit name ({why}); give one, e.g. "
            f"{repo_id}@main or {repo_id}@<commit>. Refused."
        )


def _revision_problem(rev: str) -> str | None:
    """Why ``rev`` is no git ref name nor commit (:func:`check_revision`), None where it is one."""
    if len(rev) > _REF_MAX:
        return f"longer than {_REF_MAX} characters"
    bad = _REF_REFUSED.search(rev)
    if bad:
        c = bad.group(0)
        return f"it holds {'a control character' if c < ' ' or c == chr(127) else repr(c)}"
    if ".." in rev:
        return "it holds '..'"
    if rev.startswith("/") or rev.endswith("/") or "//" in rev:
        return "an empty part between '/'"
    if rev == "@" or "@{" in rev:
        return "it holds '@{' or is '@'"
    if rev.endswith("."):
        return "it ends with '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in rev.split("/")):
        return "a part begins with '.' or ends with '.lock'"
    return None


def _ref_commit(cache: Path, repo_id: str, rev: str) -> str | None:
    """The commit that ``rev`` (checked by :func:`check_revision`) names in ``repo_id``'s cache folder: ``rev``
    itself where it is a full commit; else the commit its ``refs/<rev>`` file holds, read here so that
    huggingface_hub reads no ref (it opens ``refs/<rev>`` as it finds it). None where ``refs/`` holds no such ref
    (no file, a folder of refs such as ``refs/pr``); a ref leading out of ``refs/``, outside the roots or to
    something other than a regular file, or holding no commit, is refused in one line."""
    if _COMMIT.fullmatch(rev):
        return rev.lower()
    refs = _repo_folder(cache, repo_id) / "refs"
    ref = refs / rev
    try:
        os.lstat(ref)
    except (OSError, ValueError):  # no such ref (or no such repository)
        return None
    if os.path.isdir(ref):
        return None
    what = f"refs/{rev} of {repo_id} in the Hugging Face cache"
    real, inside = os.path.realpath(ref), os.path.realpath(refs)
    if os.path.commonpath([real, inside]) != inside:
        raise PathNotAllowedError(f"{what}: a link leading out of the repository's refs/ folder; refused.")
    return read_ref(check_readable(ref, what=what), what)


def read_ref(path: Path, what: str) -> str | None:
    """The commit a ref file at ``path`` (a regular file: checked by the caller) holds: at most
    :data:`_REF_BYTES` bytes are read, opened without waiting (a file swapped for a named pipe since it was
    checked is refused, never waited on); None where the file is gone, CheckpointError where it holds no
    40-hex commit."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{what}: cannot read ({exc.strerror or exc}).") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathNotAllowedError(f"{what}: not a regular file; refused.")
        raw = os.read(fd, _REF_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"{what}: cannot read ({exc.strerror or exc}).") from None
    finally:
        os.close(fd)
    text = raw.decode("ascii", errors="replace").strip()
    if len(raw) > _REF_BYTES or not _COMMIT.fullmatch(text):
        raise CheckpointError(
            f"{what}: holds no commit (a ref file holds 40 hex digits); download the model again to rewrite it."
        )
    return text.lower()


def split_revision(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> ``("org/name", "rev")``; ``org/name`` -> ``("org/name", None)``."""
    repo, _, rev = str(spec).partition("@")
    return repo, rev or None


def resolve_hub_id(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of a cached hub model (``org/name``, or ``org/name@rev`` with ``rev`` a branch or
    tag in its ``refs/``, a full commit or the first characters of one). Never downloads.

    A snapshot that lacks files the hub listed (``hf download --include``/``--exclude``, an interrupted download)
    is returned as it is: huggingface_hub's ``IncompleteSnapshotError`` is a ``LocalEntryNotFoundError``, which
    made a model whose weights were all there "not cached". The weights the checkpoint needs are then checked as
    any folder's are (a shard its index lists but the snapshot lacks is named).

    While the roots are enforced and the cache lies outside them, every id is refused alike before the cache is
    looked at (:func:`check_hub_cache`)."""
    spec = repo_id if revision is None else f"{repo_id}@{revision}"
    check_hub_cache(spec)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        from huggingface_hub.errors import IncompleteSnapshotError
    except ImportError:  # (huggingface_hub before 1.x checked no tree listing)
        IncompleteSnapshotError = LocalEntryNotFoundError  # noqa: N806

    repo_id, rev = split_revision(repo_id) if revision is None else (repo_id, revision)
    cache = hf_cache_dir()
    # the commit, named or read from refs/ here: huggingface_hub, given a commit, opens no ref file
    commit = _ref_commit(cache, repo_id, rev or "main")
    cause: Exception | None = None
    try:
        if commit is not None:
            return Path(snapshot_download(repo_id, revision=commit, local_files_only=True, cache_dir=str(cache)))
    except IncompleteSnapshotError as exc:
        if getattr(exc, "snapshot_path", None) and Path(exc.snapshot_path).is_dir():
            return Path(exc.snapshot_path)
        cause = exc
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        cause = exc
    short = _short_commit(cache, repo_id, rev)
    if short is not None:
        return short
    fetch = f"hf download {repo_id}" + (f" --revision {rev}" if rev else "")
    # (read as a hub id because no file or folder of that name is there: a mistyped relative folder such as
    # ckpts/base read as a hub id only, and the message offered `hf download ckpts/base`)
    raise NotCachedError(
        f"{spec}: no folder of that name, and not in the local Hugging Face cache ({cache})"
        f"{_cached_nearby(cache, repo_id, rev)}. subnetviz never downloads; check the folder's path, or fetch the "
        f"model first, e.g. `{fetch}`."
    ) from cause


def _repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _short_commit(cache: Path, repo_id: str, rev: str | None) -> Path | None:
    """The snapshot of ``repo_id`` whose commit begins with ``rev`` (4 to 39 hex digits; the one such snapshot),
    None where none does. Several that do: a CheckpointError listing them (the message said the cache held no
    snapshot for ``rev``, and listed one of those that begin with it)."""
    if not rev or not (4 <= len(rev) < 40) or any(c not in "0123456789abcdef" for c in rev.lower()):
        return None
    try:
        found = sorted(
            p for p in (_repo_folder(cache, repo_id) / "snapshots").iterdir() if p.name.startswith(rev.lower())
        )
        found = [p for p in found if p.is_dir()]
    except OSError:
        return None
    if len(found) > 1:
        names = [p.name for p in found]
        n = next(n for n in range(max(7, len(rev) + 1), 41) if n == 40 or len({c[:n] for c in names}) == len(names))
        shown = ", ".join(f"{repo_id}@{c[:n]}" for c in names[:4]) + (
            f" and {len(names) - 4} more" if len(names) > 4 else ""
        )
        raise CheckpointError(
            f"{repo_id}@{rev} is ambiguous: {len(names)} snapshots in the local Hugging Face cache have commits that "
            f"begin with {rev} ({shown}); give more characters of the commit."
        )
    return found[0] if found else None


def _cached_nearby(cache: Path, repo_id: str, rev: str | None) -> str:
    """What the cache holds close to ``repo_id`` (at ``rev``): its other revisions (a download pinned to a commit
    writes no ``refs/main``), or a repository whose id differs only in case; ``""`` where there is none."""
    folder = _repo_folder(cache, repo_id)
    if not folder.is_dir():
        try:
            want = folder.name.lower()
            same = sorted(p.name for p in cache.iterdir() if p.name.lower() == want and p.is_dir())
        except OSError:
            same = []
        if not same:
            return ""
        other = same[0].removeprefix("models--").replace("--", "/")
        return f"; the cache holds {other} (hub ids are case-sensitive: give {other})"
    refs: dict[str, str] = {}
    try:
        for f in sorted((folder / "refs").rglob("*")):
            if f.is_file():  # (a commit several refs name is shown by the first in name order)
                name = f.relative_to(folder / "refs").as_posix()
                try:
                    commit = read_ref(check_readable(f), name)
                except SubnetvizError:  # (a ref that cannot be read names no revision here)
                    continue
                if commit:
                    refs.setdefault(commit, name)
        commits = sorted(p.name for p in (folder / "snapshots").iterdir() if p.is_dir())
    except OSError:
        commits = []
    if not commits:
        return f"; its folder there holds no snapshot{f' for {rev}' if rev else ''}"
    shown = [f"{repo_id}@{refs[c]}" if c in refs else f"{repo_id}@{c[:7]}" for c in commits[:4]]
    more = f" and {len(commits) - 4} more" if len(commits) > 4 else ""
    return f"; it holds no snapshot for {rev or 'main'}, but these: {', '.join(shown)}{more}"


def _adapter_without_config(folder: Path) -> str | None:
    """What to say of ``folder`` where its only weights are a PEFT adapter's (``adapter_model.safetensors``, or
    ``adapter_model.bin``) and it has no ``adapter_config.json`` (a partial download, ``hf download --include
    "*.safetensors"``, or the weights copied alone); None for any other folder. Read as a model, its LoRA factors
    matched none of the base's tensors ("no tensor names in common"), and the Workspace listed it as a model."""
    found = [f for f in ADAPTER_WEIGHTS if (folder / f).is_file()]
    if not found or holds_model_weights(folder):
        return None
    if any(f.name not in ADAPTER_WEIGHTS for f in folder.glob("*.safetensors")):
        return None  # (other weights beside it: read as they are)
    return f"{found[0]} holds a PEFT adapter's weights, and the folder has no adapter_config.json; " + _NEEDS_CONFIG


_NEEDS_CONFIG = (
    "the merge needs it (rank, scale, target modules): download or copy the adapter's adapter_config.json beside its "
    "weights, then give the folder as a finetuned model beside its base."
)


# a full model's weights, as transformers finds them in a folder (what makes an adapter's folder hold a model too)
_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def holds_model_weights(folder: Path) -> bool:
    """Whether ``folder`` holds a full model's weights (``model.safetensors``, a shard index, ``pytorch_model*.bin``)."""
    return any((folder / f).is_file() for f in _MODEL_FILES) or any(folder.glob("pytorch_model*.bin"))


def holds_adapter(folder: Path) -> bool:
    """Whether ``folder`` is a PEFT adapter, read as one beside a base: it has ``adapter_config.json``, and adapter
    weights or no full model's (a merged model saved with its adapter's config left beside it is that model)."""
    if not (folder / "adapter_config.json").is_file():
        return False
    return not holds_model_weights(folder) or any((folder / f).is_file() for f in ADAPTER_WEIGHTS)


def _refuse_lone_adapter(folder: Path, spec: str | None = None) -> list[str]:
    """A PEFT adapter folder on its own is no model: its weights are a low-rank update of a base. A folder that
    holds a full model beside ``adapter_config.json`` (a merged model saved where its adapter was, or uploaded
    with it) is read as that model: returns a note saying so. A folder whose only weights are an adapter's, without
    its ``adapter_config.json`` (:func:`_adapter_without_config`), is refused in one line saying so."""
    if not (folder / "adapter_config.json").is_file():
        lone = _adapter_without_config(folder)
        if lone is not None:
            raise CheckpointError(f"{spec or folder}: {lone}")
        return []
    if not holds_model_weights(folder):
        raise CheckpointError(
            f"{spec or folder}: a LoRA/PEFT adapter (adapter_config.json), not a model: an adapter needs its base. "
            "Given as a finetuned model beside the base it was trained on, the weight analyses merge it onto that "
            "base; a model is run (Behaviour, Bigram, training) only from a full model's folder: merge the adapter "
            "with peft (merge_and_unload, then save_pretrained) and give that folder."
        )
    adapter = [f for f in ADAPTER_WEIGHTS if (folder / f).is_file()]
    return [
        "the folder holds adapter_config.json beside a full model's weights: read as the model saved there"
        + (
            f", without the adapter ({adapter[0]}) applied; given as a finetune beside its base, the folder is read as "
            "that adapter merged onto the base."
            if adapter
            else " (a merged model; it holds no adapter weights)."
        )
    ]


def local_folder(spec: str | os.PathLike) -> Path | None:
    """The folder ``spec`` names: a local folder, or a cached hub id's snapshot (NotCachedError where it is not
    cached); None for anything else (a file, a name of nothing). Hub id or path as :func:`reads_as_hub_id` says."""
    s = str(spec)
    if reads_as_hub_id(s):
        return resolve_hub_id(s)
    path = os.path.expanduser(s)  # os.path: False for a name no file can have (Path.is_dir raises)
    return Path(path) if os.path.isdir(path) else None


def source_of(spec: str, folder: Path | None) -> str:
    """What checkpoint ``spec``, read from ``folder``, is recorded as: ``spec``, and for a hub id the commit of
    the snapshot read (``acme/tiny-base@<40 hex>``: ``refs/main`` moves when a newer revision is downloaded, and
    the record should name the weights read). A snapshot path names its commit already."""
    from subnetviz.config import hub_snapshot_of

    s = str(spec)
    if folder is None or not reads_as_hub_id(s):
        return s
    snap = hub_snapshot_of(folder)
    return s if snap is None else f"{split_revision(s)[0]}@{snap[1]}"


def record_path(ck) -> str:
    """Where checkpoint ``ck`` was read, as a result's provenance records it: a hub id with the commit of the
    snapshot read (``ck.source``), anything else as an absolute path. A label alone ("sft") names no model: a
    user's folder called ``sft`` is not the demo zoo's ``sft`` (the Training page matched them by label)."""
    spec = str(ck.spec)
    if reads_as_hub_id(spec):
        return str(getattr(ck, "source", spec))
    return os.path.abspath(os.path.expanduser(spec))


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# weights files named for what they are, not for the model: labelled by their folder
_GENERIC = ("model", "pytorch_model", "adapter_model", "consolidated")


def checkpoint_label(spec: str | os.PathLike) -> str:
    """The name a checkpoint is shown and saved under (metrics, charts, mask files, exports), the same in the
    library, the CLI and the app, as UTF-8 text (a byte of a folder's name that is not UTF-8 written as its escape,
    ``ft\\xff``: :func:`escaped`):

    - a hub id: the id as given, organisation and revision kept (``acme/tiny-sft`` beside ``other/tiny-sft``);
    - a hub cache snapshot folder: its repository's id, and ``@<7 hex>`` where it is not the commit ``refs/main``
      names (it was the 40-hex commit);
    - a weights file named for what it is (``model.safetensors``, ``pytorch_model.bin``, an index): its folder's
      label (``…/dpo/model.safetensors`` is ``dpo``); another file: its name before the first dot;
    - any other folder: its name."""
    return escaped(_label(str(spec)))


def _label(s: str) -> str:
    """:func:`checkpoint_label` of ``s``, before its escapes."""
    if reads_as_hub_id(s):  # (while the roots are enforced, no path outside them is asked about)
        return s
    path = Path(s.rstrip("/") or s).expanduser()
    if path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".index.json"):
        if not path.name.startswith(_GENERIC) or not path.parent.name:
            return path.name.split(".")[0] or s
        path = path.parent
    return _snapshot_label(path) or path.name or s


# where a process names its open files (Linux; macOS and the BSDs have /dev/fd)
_FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


@contextmanager
def utf8_name(path: str | os.PathLike) -> Iterator[str]:
    """A name of the file ``path`` that is UTF-8 text, for readers that take no other (safetensors' torch reader:
    "Path … is not valid UTF-8"; torch's zip reader and its mmap). ``path`` itself where it is such text; else,
    a byte of it not being UTF-8 (``ft\\xff``, a lone surrogate escape in Python), the file opened here and named
    by its descriptor (``/proc/self/fd/7``): the same file, for as long as the block runs. Check ``path`` against
    the roots first: the descriptor's name lies outside them."""
    text = os.fspath(path)
    if not _SURROGATE.search(text):
        yield text
        return
    fd = os.open(text, os.O_RDONLY)
    try:
        yield f"{_FD_DIR}/{fd}"
    finally:
        os.close(fd)


def _snapshot_label(folder: Path) -> str | None:
    """``org/name`` (``@<7 hex>`` where ``refs/main`` names another commit) of a hub cache snapshot folder.
    ``refs/main`` is read only where it may be (:func:`~subnetviz.config.check_readable`): a label is no reason to
    open a file outside the roots; there the label names the commit."""
    from subnetviz.config import hub_snapshot_of

    snap = hub_snapshot_of(folder)
    if snap is None or snap[2]:
        return None
    repo, commit, _ = snap
    try:
        main = read_ref(check_readable(folder.parent.parent / "refs" / "main"), "refs/main")
    except SubnetvizError:
        main = None
    return repo if main == commit else f"{repo}@{commit[:7]}"


def open_checkpoint(spec: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint lazily from a folder, a file, an index json or a cached hub id."""
    ck = Checkpoint(*_locate(spec))  # (spec, files, root, config, notes)
    ck.source = source_of(ck.spec, ck.root)
    return ck


def fingerprint(spec: str | os.PathLike) -> str:
    """:attr:`Checkpoint.fingerprint` of ``spec`` from its files' paths, identities and headers, without
    importing torch when every weights file is safetensors (a page that only needs a cache key, such as
    the Training comparison, opens in a fraction of torch's import time); legacy files are opened."""
    s, files, _root, config, _notes = _locate(spec)
    if all(f.suffix == ".safetensors" for f in files):
        return _fingerprint(files, [read_safetensors_header(f)[1] for f in files], _config_text(config or {}))
    return open_checkpoint(s).fingerprint


def checkpoint_files(spec: str | os.PathLike) -> tuple[list[Path], Path | None]:
    """The weights files ``spec`` reads (an index json's shards, a folder's chosen files) and its folder (where its
    config.json lies; None for none), each checked readable; only index files and config.json are read."""
    _s, files, root, _config, _notes = _locate(spec)
    return files, root


def weights_identity(spec: str | os.PathLike) -> str:
    """What two specs reading the same weights share and two reading different weights do not: the real paths of
    the files read and of the folder whose config.json is read (a folder, its ``model.safetensors``, its shard index,
    a link to it); for an adapter, its folder's real path (beside a base it is read as that adapter merged, not as
    any model file the folder also holds). Only index files and config.json are read; CheckpointError (or
    NotCachedError) where the checkpoint cannot be located. A folder and its weights file were compared twice."""
    folder = local_folder(spec)
    if folder is not None and holds_adapter(folder):
        return f"adapter\0{folder.resolve()}"
    files, root = checkpoint_files(spec)
    return "\0".join([str(root.resolve()) if root else "", *sorted(str(f.resolve()) for f in files)])


# Bumped when what a fingerprint covers changes, so no cached result keyed by an older one is served again
FINGERPRINT_VERSION = 2  # 2: the parsed config.json too


def _config_text(config: dict) -> str:
    """The parsed config as one text, keys sorted: a rewrite that changes no value (another indent, a ``touch``)
    keeps the fingerprint; any changed value moves it."""
    return json.dumps(config, sort_keys=True, default=str)


def _fingerprint(files: list[Path], raw_headers: list[bytes], config_text: str) -> str:
    """Each file's resolved path, inode, size, mtime and ctime, and its header; and the parsed ``config.json``.
    Name, size, mtime and header alone matched for two finetunes of one architecture whose files kept a copied
    mtime (``cp -p``, ``rsync -a``, an archive's whole seconds): the cache served one the other's results. The
    ctime cannot be set by hand: a file rewritten in place under its old mtime gets a new one. The config decides
    what the numbers are (``tie_word_embeddings``: whether a stored head is counted; ``quantization_config``: how
    codes are dequantised; ``model_type``: the naming): an edited config gave the analysis from before the edit."""
    h = hashlib.sha256(f"fingerprint v{FINGERPRINT_VERSION}\0{config_text}\0".encode())
    for f, raw in zip(files, raw_headers, strict=True):
        h.update(path_identity(f))
        h.update(raw)
    return h.hexdigest()[:16]


def path_identity(f: Path) -> bytes:
    """``f``'s resolved path as the file system's bytes (``os.fsencode``: a folder named with a byte that is not
    UTF-8, ``ft\\xff``, reaches Python as a lone surrogate escape, which ``str.encode`` refused: a traceback for
    every analysis of it), then its inode, size, mtime and ctime. The same bytes as before for a UTF-8 path."""
    return os.fsencode(f.resolve()) + f":{stat_identity(f.stat())}".encode()


def _locate(spec: str | os.PathLike) -> tuple[str, list[Path], Path | None, dict | None, list[str]]:
    """``(spec, weight files, root folder, config, notes)`` of a checkpoint spec; every file checked readable.
    The notes say which files were read where the folder offered more than one choice."""
    s = str(spec)
    if not s.strip():  # Path("") is "." : an unset variable read the working folder as a checkpoint
        raise CheckpointError(f"{s!r}: an empty checkpoint path (an unset variable?); give a folder, file or hub id.")
    path = Path(s).expanduser()
    root: Path | None
    notes: list[str] = []
    hub = reads_as_hub_id(s)
    if not hub and enforce_roots():
        # the roots before existence: a path outside them is refused in the same words whether it names a file or
        # not (a file there read "leads outside" or "not a checkpoint file", a missing one "no such file")
        check_allowed(path)
    if hub:
        root = resolve_hub_id(s)
        notes += _refuse_lone_adapter(root, s)  # (as its snapshot folder is: an adapter's tensors are no model)
        files = _folder_files(root, notes)
        notes.append(f"read from the local Hugging Face cache at commit {root.name}.")
    elif path.is_dir():
        notes += _refuse_lone_adapter(path)
        root, files = path, _folder_files(path, notes)
    elif path.is_file():
        root = path.parent
        if path.name.endswith(".index.json"):
            files = _index_files(path)
        elif path.name in ADAPTER_WEIGHTS and (root / "adapter_config.json").is_file():
            raise CheckpointError(
                f"{path}: a PEFT adapter's weight file (adapter_config.json beside it), not a model: give its folder "
                f"{root} as a finetuned model beside the base it was trained on, where it is merged onto that base."
            )
        elif path.name in ADAPTER_WEIGHTS:
            raise CheckpointError(
                f"{path}: a PEFT adapter's weights, and its folder has no adapter_config.json; " + _NEEDS_CONFIG
            )
        elif training_state(path):
            raise CheckpointError(
                f"{path}: a trainer's own state ({path.name}), not a model's weights: give the model's file or folder."
            )
        elif path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            files = [path]
        elif path.suffix == ".gguf":
            raise CheckpointError(f"{path}: {_GGUF}")
        else:
            raise CheckpointError(f"{path}: not a checkpoint file (expected .safetensors, .bin, .pt or an index json).")
    else:
        raise CheckpointError(f"{s}: no such file or folder (and not a hub id of the form org/name).")
    # Every file actually opened, after resolving symlinks: inside the roots when they are enforced.
    # (the names stay as given: an HF cache snapshot's files are symlinks to suffix-less blobs).
    for f in files:
        check_readable(f, what=f"{f.name} in {display_path(root) if root else s}")
    config = None
    cfg_path = root / "config.json" if root else None
    if cfg_path:  # (a link to nothing is said: Path.exists read it as no config, counting a tied head untied)
        check_config_link(cfg_path, f"config.json in {display_path(root)}")
    if cfg_path and cfg_path.exists():  # what it says decides how tensors are read (quantization, tying)
        where = f"config.json in {display_path(root)}"
        config = read_json(cfg_path, CheckpointError, what=where)
        check_config(config, where)  # (the naming table checked it later, naming no folder)
        check_architectures(config, where)
    return s, files, root, config, notes


def check_architectures(config: dict, where: str) -> None:
    """CheckpointError, one line naming ``where`` ("config.json in FOLDER"), for a config.json whose
    ``architectures`` is given but is not a list of class names (strings), as transformers writes it: the
    Workspace page showed ``{'a': 1}`` or, of the string "LlamaForCausalLM", its first letter "L" as the model's
    architecture, and its table's Parquet export failed without a word. Absent, null or an empty list is no
    architecture named (the naming family stands in)."""
    arch = config.get("architectures")
    if arch is None:
        return
    if not isinstance(arch, list):
        raise CheckpointError(
            f"{where}: architectures is {json.dumps(arch, default=str)[:40]} ({json_type(arch)}); expected a list of "
            'class names such as ["LlamaForCausalLM"].'
        )
    for i, name in enumerate(arch):
        if not isinstance(name, str):
            kind = "" if name is None else f" ({json_type(name)})"
            raise CheckpointError(
                f"{where}: architectures[{i}] is {json.dumps(name, default=str)[:40]}{kind}; expected a class name "
                '(a string) such as "LlamaForCausalLM".'
            )
