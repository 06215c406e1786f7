"""Pickles from someone else, walked before anything loads them.

``weights_only`` and a restricted unpickler run no code, yet an unpickler still builds what a pickle describes:
a tuple 150,000 deep used as a dict key crashed the process as it was hashed, 2 MB of empty-set opcodes built
490 MB of sets, and a 944-byte file calling ``bytearray(400 MiB)`` (which torch's unpickler admits) built it.
:func:`scan_pickle` walks a pickle's opcodes (no object built) and refuses such nesting and such memory, each
call charged what its arguments let it build, before loading; :func:`check_torch_file` does it for every pickle ``torch.load`` will read of a file
(an uploaded ``.pt`` mask, a legacy ``pytorch_model*.bin`` checkpoint), as torch's own reader finds them. The mask
importers (:mod:`subnetviz.masks`) and the checkpoint reader (:mod:`subnetviz.checkpoints.sources`) share it.
"""

from __future__ import annotations

import functools
import hashlib
import math
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


def encoded_bound(units: int, codec: object, *, text: bool) -> int:
    """The most bytes encoding ``units`` characters (``text``) or bytes with ``codec`` can make, as
    ``_codecs.encode`` (and ``bytes(str, codec)``) would: one per unit in Latin-1 (the one codec a pickle of
    protocol 2 uses, for bytes), two per byte in hex, at most four per character in UTF-8, -16 or -32 and ten in
    any other (``unicode_escape`` writes ``\\U0001f600`` for one character), plus a few bytes of BOM or padding.
    A codec that is not a name is charged as any other."""
    name = codec.lower().replace("-", "_") if isinstance(codec, str) else ""
    if name in ("latin1", "latin_1", "iso8859_1", "iso_8859_1", "l1", "ascii", "us_ascii"):
        per = 1
    elif name in ("hex", "hex_codec"):
        per = 2
    elif text and name in ("utf8", "utf_8", "utf16", "utf_16", "utf32", "utf_32"):
        per = 4
    else:  # text: unicode_escape and the like; bytes to bytes: base64, quopri, uu... at most 3 per byte and line breaks
        per = 10 if text else 4
    return per * units + 64


_BYTES_CALLS = {"builtins.bytes", "builtins.bytearray"}
_ENCODE_CALLS = {"_codecs.encode", "codecs.encode"}
# calls that build a container of their argument's items: bytes per item (a set or dict entry, a tuple's pointer)
_CONTAINER_CALLS = {
    "builtins.set": 64,
    "builtins.frozenset": 64,
    "builtins.dict": 64,
    "collections.OrderedDict": 64,
    "collections.Counter": 64,
    "builtins.list": 8,
    "builtins.tuple": 8,
    "torch.Size": 8,
}
# torch's weights-only unpickler admits these, and a plain CPU tensor is never saved through them: the copy to a device
# is made from a tensor the scan cannot size (and as often as the pickle calls it)
_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"  # (func, type, args, state): torch calls func(*args) in it
_DEVICE_REBUILDS = {
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._utils._rebuild_device_tensor_from_numpy",
}


class _Val:
    """What the scan knows of one object the pickle would build (none is built): how deep it nests, and what a call
    taking it could build from it: an int's value (``n``), a string's characters or a bytes' length (``n``; a short
    string's ``text``: a global's name, a codec's), a tuple's ``items``, a container's entries (``n``)."""

    __slots__ = ("depth", "kind", "n", "text", "items")

    def __init__(self, depth: int = 0, kind: str = "", n: int = 0, text: str | None = None, items=None):
        self.depth, self.kind, self.n, self.text, self.items = depth, kind, n, text, items


_LEAF = _Val()  # None, a bool, a float: nothing a call sizes by (shared, never changed)
_MARK = None  # a MARK on the stack


def _global_name(module: str, name: str) -> str:
    """``module.name`` as an unpickler resolves it: protocol 2 writes Python 2's names (``__builtin__ set``)."""
    import _compat_pickle

    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


@functools.cache
def _allocating_classes() -> frozenset[str]:
    """torch's tensor and storage classes, which torch's weights-only unpickler admits, by the name a pickle gives
    them: called with arguments (``torch.FloatTensor(10**10)``, ``UntypedStorage(n)``) they allocate what the
    numbers ask, and ``torch.save`` never calls them so."""
    classes = (*torch._tensor_classes, *torch._storage_classes, torch.Tensor)
    return frozenset(f"{cls.__module__}.{cls.__name__}" for cls in classes)


def scan_pickle(stream, budget: int, where: str, *, strict: bool = False) -> None:
    """Walk a pickle's opcodes (``pickletools.genops``: no object is built) before it is loaded, and refuse
    one whose objects would nest deeper than :data:`MAX_PICKLE_DEPTH` (a 150 KB pickle of a tuple 150,000
    deep used as a dict key crashed the process: hashing it recursed in C past the stack) or would take more
    than ``budget`` bytes: its containers (2 MB of empty-set opcodes built 490 MB of sets), and what each call it
    makes builds, sized from the arguments the pickle gives it (a 944-byte file calling ``bytearray(400 MiB)``,
    or ``_codecs.encode`` on one memoised string 300 times, built hundreds of MiB).
    The depths are followed on a stack as the unpickler would push and pop the objects; anything
    malformed is left to the loader, which refuses it — or, with ``strict`` (a pickle that torch's own
    unpickler reads, :func:`check_torch_file`), refused here: nothing the walk could not follow is loaded, and a
    call whose output cannot be sized before it runs is refused (the restricted unpickler of the mask pickles
    charges such a call as it is made)."""
    import pickletools

    scan = _PickleScan(budget, where, strict)
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
    """The stack of :func:`scan_pickle` (:class:`_Val` each, :data:`_MARK` for a MARK) and the memo's."""

    INTS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
    STRS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
    BYTES = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
    TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
    CALLS = {"GLOBAL", "INST", "STACK_GLOBAL", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "BUILD", "BINPERSID"}

    def __init__(self, budget: int, where: str, strict: bool = False):
        self.stack: list[_Val | None] = []
        self.memo: dict = {}
        self.spent, self.budget, self.where, self.strict = 0, budget, where, strict

    def push(self, val: _Val, cost: int = 50) -> None:
        if val.depth > MAX_PICKLE_DEPTH:
            raise UnsafePickleError(
                f"{self.where}: the pickle nests objects more than {MAX_PICKLE_DEPTH} deep; a mask or a state dict "
                "needs a few levels. Refused before loading."
            )
        self.charge(cost)
        self.stack.append(val)

    def charge(self, cost: int) -> None:
        self.spent += cost
        if self.spent > self.budget:
            raise UnsafePickleError(
                f"{self.where}: the pickle builds objects of more than the {self.budget:,} bytes its size allows. "
                "Refused before loading."
            )

    def pop(self, n: int) -> list[_Val]:
        """The top ``n`` objects (fewer at a MARK), deepest first."""
        out = []
        while len(out) < n and self.stack and self.stack[-1] is not _MARK:
            out.append(self.stack.pop())
        return out[::-1]

    def pop_mark(self) -> list[_Val]:
        items = self.pop(len(self.stack))
        if self.stack:
            self.stack.pop()  # the MARK
        return items

    def top(self) -> _Val:
        return self.stack[-1] if self.stack and self.stack[-1] is not _MARK else _LEAF

    def into_top(self, items: list[_Val], entries: int, cost: int) -> None:
        """``entries`` items added to the container on top (APPEND, SETITEM, APPENDS, ...): the same object, grown,
        wherever the memo also holds it."""
        if not self.stack or self.stack[-1] is _MARK:
            return
        box = self.stack.pop()
        if box is _LEAF:
            box = _Val()
        box.depth = max(box.depth, 1 + max((v.depth for v in items), default=0))
        box.n += entries
        self.push(box, cost)

    def refuse(self, what: str) -> None:
        raise UnsafePickleError(f"{self.where}: the pickle calls {what}. Refused before loading.")

    def call(self, func: _Val, args: list[_Val] | None, cost: int) -> None:
        """Push what calling ``func`` with ``args`` (None: arguments the scan cannot follow) builds, charged."""
        name = func.text if func.kind == "global" else None
        built, result = self.builds(name, args)
        if name == _FROM_TYPE and args and args[0].kind == "global":  # named by what it calls
            name = f"{args[0].text} (through {name})"
        if built is None:
            if self.strict:
                self.refuse(
                    f"{name or 'an object it built'} on arguments whose size cannot be told before loading "
                    "(torch.save of a dict of tensors writes no such call)"
                )
            built = 0
        if built and self.spent + cost + built > self.budget:
            raise UnsafePickleError(
                f"{self.where}: the pickle asks to allocate {built:,} bytes for a call of {name}, more than its size "
                f"allows ({max(self.budget - self.spent, 0):,} bytes left of {self.budget:,}). Refused before "
                "allocating."
            )
        depth = 1 + max((v.depth for v in [func, *(args or [])]), default=0)
        self.push(_Val(depth, *result), cost + built)

    def builds(self, name: str | None, args: list[_Val] | None) -> tuple[int | None, tuple]:
        """Bytes calling ``name`` on ``args`` can build (None: not known before the call), and what the result is
        as :class:`_Val` fields (kind, n)."""
        if args is None:
            return (0, ()) if name not in _SIZED and name not in _allocating_classes() else (None, ())
        first = args[0] if args else None
        if name in _BYTES_CALLS or name in _ENCODE_CALLS:
            if first is None:
                return 0, ("bytes", 0)
            codec = args[1].text if len(args) > 1 else ("utf-8" if name in _ENCODE_CALLS else None)
            if first.kind == "str" and (codec is not None or len(args) > 1):
                n = encoded_bound(first.n, codec, text=True)
            elif first.kind == "bytes" and name in _ENCODE_CALLS:
                n = encoded_bound(first.n, codec, text=False)
            elif first.kind in ("int", "bytes", "tuple", "list") and name in _BYTES_CALLS:
                n = first.n  # bytearray(N) zero-fills N bytes; bytes(b) copies b; bytes([...]) a byte per item
            else:
                return None, ()
            return max(n, 0), ("bytes", max(n, 0))
        if name in _CONTAINER_CALLS:
            if first is None:
                return 0, ("list", 0)
            if first.kind not in ("tuple", "list", "str", "bytes"):
                return None, ()
            return _CONTAINER_CALLS[name] * first.n, ("list", first.n)
        if name in _allocating_classes():  # torch.FloatTensor(n), UntypedStorage(n): never written by torch.save
            return (0, ()) if not args else (None, ())
        if name == "torch._utils._rebuild_qtensor":  # allocates a quantized tensor of its shape, then fills it
            shape = args[2] if len(args) > 2 else None
            if shape is None or shape.kind != "tuple" or any(v.kind != "int" for v in shape.items):
                return None, ()
            return 16 * math.prod(max(v.n, 0) for v in shape.items), ()
        if name == _FROM_TYPE:  # (func, type, args, state): calls func(*args)
            if len(args) < 3 or args[2].kind != "tuple" or args[0].kind != "global":
                return None, ()
            return self.builds(args[0].text, args[2].items)
        if name in _DEVICE_REBUILDS:
            return None, ()
        return 0, ()

    def padded(self, n: int) -> list[_Val]:
        """The top ``n`` objects, deepest first, a malformed pickle's missing ones as :data:`_LEAF`."""
        return ([_LEAF] * n + self.pop(n))[-n:]

    def step_call(self, name: str, arg) -> None:
        """The opcodes that name a global, call it, or load a persistent id."""
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            func = _Val(0, "global", text=_global_name(module, attr))
            if name == "GLOBAL":
                self.push(func)
            else:  # INST: the class called with the items since the MARK
                self.call(func, self.pop_mark(), 40)
        elif name == "STACK_GLOBAL":
            module, attr = self.padded(2)
            known = module.kind == attr.kind == "str" and module.text is not None and attr.text is not None
            self.push(_Val(0, "global", text=_global_name(module.text, attr.text)) if known else _Val())
        elif name == "REDUCE" or name == "NEWOBJ":
            func, args = self.padded(2)
            self.call(func, args.items if args.kind == "tuple" else None, 56)
        elif name == "NEWOBJ_EX":
            func, args, _ = self.padded(3)
            self.call(func, args.items if args.kind == "tuple" else None, 64)
        elif name == "OBJ":
            items = self.pop_mark()
            self.call(items[0] if items else _LEAF, items[1:], 40 + 8 * len(items))
        elif name == "BUILD":  # the state set on the object: it may hold it
            items = self.pop(2)
            self.push(_Val(1 + max((v.depth for v in items), default=0)), 40 + 8 * len(items))
        elif name == "BINPERSID":
            self.padded(1)  # a storage torch reads from the file (the pre-1.6 format allocates it untouched first)
            self.push(_Val())

    def step(self, name: str, arg) -> None:
        if name == "MARK":
            self.stack.append(_MARK)
        elif name in self.INTS:
            self.push(_Val(0, "int", arg) if isinstance(arg, int) else _LEAF)
        elif name in self.STRS:
            self.push(_Val(0, "str", len(arg), arg if len(arg) <= 256 else None))
        elif name in self.BYTES:
            self.push(_Val(0, "bytes", len(arg)))
        elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET"):
            self.push(_Val(1, "list"), _BUILT[name])
        elif name == "EMPTY_TUPLE":
            self.push(_Val(1, "tuple", 0, items=[]), 40)
        elif name in self.TUPLES or name == "TUPLE":
            items = self.pop(self.TUPLES[name]) if name != "TUPLE" else self.pop_mark()
            depth = 1 + max((v.depth for v in items), default=0)
            self.push(_Val(depth, "tuple", len(items), items=items), 40 + 8 * len(items))
        elif name in ("LIST", "DICT", "FROZENSET"):
            items = self.pop_mark()
            depth = 1 + max((v.depth for v in items), default=0)
            entries = len(items) // 2 if name == "DICT" else len(items)
            self.push(_Val(depth, "list", entries), _BUILT[name] + 8 * len(items))
        elif name in ("APPEND", "SETITEM"):
            self.into_top(self.pop(1 if name == "APPEND" else 2), 1, 32)
        elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            items = self.pop_mark()
            self.into_top(items, len(items) // 2 if name == "SETITEMS" else len(items), 16 * len(items))
        elif name in self.CALLS:
            self.step_call(name, arg)
        elif name == "POP":
            self.pop(1)
        elif name == "POP_MARK":
            self.pop_mark()
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.memo[arg if name != "MEMOIZE" else len(self.memo)] = self.top()
        elif name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
            self.push(self.memo.get(arg, _LEAF) if name != "DUP" else self.top(), 0)
        elif name not in ("PROTO", "FRAME"):  # None, a bool, a float, a persistent id by text, ...: no depth
            self.push(_LEAF)


_SIZED = (
    _BYTES_CALLS
    | _ENCODE_CALLS
    | set(_CONTAINER_CALLS)
    | _DEVICE_REBUILDS
    | {"torch._utils._rebuild_qtensor", _FROM_TYPE}
)
"""Calls whose output the scan sizes from their arguments (refused, in ``strict``, where it cannot)."""


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
    if size == 0:  # (read as an old-format pickle it said "pickle exhausted before seeing STOP")
        raise MaskError(f"{path}: an empty file (0 bytes), not a torch.save file; re-download or save it again.")
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
