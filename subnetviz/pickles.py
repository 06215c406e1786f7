"""Pickles from someone else, walked before anything loads them.

``weights_only`` and a restricted unpickler run no code, yet an unpickler still builds what a pickle describes:
a tuple 150,000 deep used as a dict key crashed the process as it was hashed, and 2 MB of empty-set opcodes built
490 MB of sets. :func:`scan_pickle` walks a pickle's opcodes (no object built) and refuses such nesting and
such memory before loading; :func:`check_torch_file` does it for every pickle ``torch.load`` will read of a file
(an uploaded ``.pt`` mask, a legacy ``pytorch_model*.bin`` checkpoint), as torch's own reader finds them. The mask
importers (:mod:`subnetviz.masks`) and the checkpoint reader (:mod:`subnetviz.checkpoints.sources`) share it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from subnetviz.errors import MaskError, UnsafePickleError

PICKLE_CAP_BYTES = 16 << 30
"""Upper bound on what one released pickle may allocate, whatever its size (GPT-2 XL masks: ~1.6 GB)."""


def pickle_budget(file_size: int) -> int:
    """Bytes a pickle of ``file_size`` bytes may allocate: its arrays' bytes are in the file (bool masks
    take one byte per entry there), so 2× the file plus 1 MiB of slack, never more than the cap."""
    return min(PICKLE_CAP_BYTES, 2 * file_size + (1 << 20))


MAX_PICKLE_DEPTH = 100  # containers within containers a mask file may nest (a mask needs 2 or 3)
# what each object an opcode builds costs in memory (CPython, 64-bit): an empty set 216 bytes, a dict 64, a list 56,
# a tuple 40 + 8 per item, a scalar or string object about 50; the pickle's own bytes are charged by the caller
_BUILT = {"EMPTY_SET": 216, "FROZENSET": 216, "EMPTY_DICT": 64, "DICT": 64, "EMPTY_LIST": 56, "LIST": 56}


def scan_pickle(stream, budget: int, where: str, *, strict: bool = False) -> None:
    """Walk a pickle's opcodes (``pickletools.genops``: no object is built) before it is loaded, and refuse
    one whose objects would nest deeper than :data:`MAX_PICKLE_DEPTH` (a 150 KB pickle of a tuple 150,000
    deep used as a dict key crashed the process: hashing it recursed in C past the stack) or whose
    containers alone would take more than ``budget`` bytes (2 MB of empty-set opcodes built 490 MB of sets).
    The depths are followed on a stack of numbers as the unpickler would push and pop the objects; anything
    malformed is left to the loader, which refuses it — or, with ``strict`` (a pickle that torch's own
    unpickler reads, :func:`check_torch_file`), refused here: nothing the walk could not follow is loaded."""
    import pickletools

    scan = _PickleScan(budget, where)
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name == "STOP":
                return
            scan.step(op.name, arg)
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed: the loader says what is wrong
        if strict:
            raise MaskError(
                f"{where}: not a readable pickle ({type(exc).__name__}: {exc}). Refused before loading."
            ) from None
        return


class _PickleScan:
    """The stack of :func:`scan_pickle`: each pushed object's nesting depth (-1 marks a MARK), the memo's."""

    POPS = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "BUILD": 2, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}

    def __init__(self, budget: int, where: str):
        self.stack: list[int] = []
        self.memo: dict = {}
        self.spent, self.budget, self.where = 0, budget, where

    def push(self, depth: int, cost: int = 50) -> None:
        if depth > MAX_PICKLE_DEPTH:
            raise UnsafePickleError(
                f"{self.where}: the pickle nests objects more than {MAX_PICKLE_DEPTH} deep; a mask or a state dict "
                "needs a few levels. Refused before loading."
            )
        self.spent += cost
        if self.spent > self.budget:
            raise UnsafePickleError(
                f"{self.where}: the pickle builds objects of more than the {self.budget:,} bytes its size allows. "
                "Refused before loading."
            )
        self.stack.append(depth)

    def pop(self, n: int) -> list[int]:
        out = []
        while len(out) < n and self.stack and self.stack[-1] != -1:
            out.append(self.stack.pop())
        return out

    def pop_mark(self) -> list[int]:
        items = self.pop(len(self.stack))
        if self.stack:
            self.stack.pop()  # the MARK
        return items

    def into_top(self, items: list[int], cost: int) -> None:
        """Items added to the container on top (APPEND, SETITEM, APPENDS, ...)."""
        if self.stack and self.stack[-1] != -1:
            self.push(max(self.stack.pop(), 1 + max(items, default=0)), cost)

    def step(self, name: str, arg) -> None:
        if name == "MARK":
            self.stack.append(-1)
        elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE"):
            self.push(1, _BUILT.get(name, 40))
        elif name in self.POPS:  # a tuple of the items, or a call's result: it may hold its arguments
            items = self.pop(self.POPS[name])
            self.push(1 + max(items, default=0), 40 + 8 * len(items))
        elif name in ("TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"):
            items = self.pop_mark()
            self.push(1 + max(items, default=0), _BUILT.get(name, 40) + 8 * len(items))
        elif name in ("APPEND", "SETITEM"):
            self.into_top(self.pop(1 if name == "APPEND" else 2), 32)
        elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            items = self.pop_mark()
            self.into_top(items, 16 * len(items))
        elif name in ("BINPERSID", "STACK_GLOBAL", "POP"):
            self.pop(1 if name != "STACK_GLOBAL" else 2)
            if name != "POP":
                self.push(0)
        elif name == "POP_MARK":
            self.pop_mark()
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.memo[arg if name != "MEMOIZE" else len(self.memo)] = self.stack[-1] if self.stack else 0
        elif name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
            self.push(self.memo.get(arg, 0) if name != "DUP" else (self.stack[-1] if self.stack else 0), 0)
        elif name not in ("PROTO", "FRAME"):  # a number, a string, None, a global, ...: an object of no depth
            self.push(0)


_ZIP_MAGIC = b"PK\x03\x04"  # how torch.load tells its zip format from the pre-1.6 one (serialization._is_zipfile)
_LEGACY_PICKLES = 5  # a pre-1.6 torch.save file: magic number, protocol, sys info, the object, its storage keys


class _Digesting:
    """A binary stream read through (``read``, ``readline``: what :func:`scan_pickle` calls), its bytes' SHA-256
    kept as they pass."""

    def __init__(self, stream):
        self._stream, self._hash = stream, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._hash.update(data)
        return data

    def readline(self) -> bytes:
        data = self._stream.readline()
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def check_torch_file(path: str | os.PathLike) -> None:
    """The one check before ``torch.load`` reads a file someone else wrote (an uploaded ``.pt`` mask, a legacy
    ``pytorch_model*.bin`` / ``.pt`` checkpoint): ``weights_only`` runs nothing, yet its unpickler builds what
    the pickle describes, and a tuple 150,000 deep used as a dict key crashed the process (SIGSEGV) as it was
    hashed. So every pickle torch will unpickle is walked first (:func:`scan_pickle`, strict), as torch finds it:

    - a file that does not begin as a zip archive (torch tells them apart by those 4 bytes alone) is read by
      torch as the pre-1.6 format, a run of :data:`_LEGACY_PICKLES` pickles from its start: each is walked;
    - in a zip archive, every record must be stored uncompressed, as ``torch.save`` writes them, and lie inside
      the file (so what it holds is bounded by the file's size; a compressed record could expand without bound),
      and exactly one record be named ``data.pkl`` (in any case: torch's reader matches names without regard to
      case). Every ``.pkl`` record is walked, and the bytes torch's own reader returns for ``data.pkl`` (the
      first record's folder, then ``/data.pkl``) must be the record walked: two records of that name, or a
      directory the two readers read differently, are refused.

    Raises :class:`UnsafePickleError` for what is refused, :class:`MaskError` for what cannot be read (the
    checkpoint reader turns either into its own error, with the same message)."""
    import zipfile

    path = Path(path)
    size = path.stat().st_size
    budget = pickle_budget(size)
    with open(path, "rb") as fh:
        if fh.read(4) != _ZIP_MAGIC:
            fh.seek(0)
            for _ in range(_LEGACY_PICKLES):
                scan_pickle(fh, budget, f"{path} (read as a pre-1.6 torch.save file)", strict=True)
            return
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                    raise UnsafePickleError(
                        f"{path}: record {info.filename!r} is compressed; torch.save stores its records as they are. "
                        "Refused before reading."
                    )
                if info.header_offset + info.compress_size > size:
                    raise MaskError(f"{path}: record {info.filename!r} runs past the end of the file (truncated?).")
            named = [i for i in infos if i.filename.lower().rpartition("/")[2] == "data.pkl"]
            if len(named) != 1:
                raise UnsafePickleError(
                    f"{path}: {len(named)} records named data.pkl; torch.save writes one. Refused before reading."
                )
            walked = ""
            for info in infos:
                if info.filename.lower().endswith(".pkl"):
                    with zf.open(info) as rec:
                        tee = _Digesting(rec)
                        scan_pickle(tee, budget, f"{path}: {info.filename}", strict=True)
                        while tee.read(1 << 20):  # the rest of the record, into the digest
                            pass
                    walked = tee.hexdigest() if info is named[0] else walked
    except MaskError:
        raise
    except Exception as exc:  # BadZipFile, a bad CRC, an encrypted record, a name the directory spells twice
        raise MaskError(f"{path}: not a readable torch.save file ({type(exc).__name__}: {exc}).") from None
    try:  # what torch.load will unpickle, as its own reader finds it
        loaded = hashlib.sha256(torch._C.PyTorchFileReader(str(path)).get_record("data.pkl")).hexdigest()
    except Exception as exc:
        raise MaskError(f"{path}: not a readable torch.save file ({type(exc).__name__}: {exc}).") from None
    if loaded != walked:
        raise UnsafePickleError(
            f"{path}: torch's reader finds another data.pkl than the archive's directory lists "
            f"({named[0].filename!r}). Refused before reading."
        )
