"""A process-wide memo of immutable results, shared by every session of the app (no Streamlit here).

:mod:`subnetviz.ui` holds one :class:`Memo` (through ``st.cache_resource``) and puts in it what a page
rerun would otherwise redo: update analyses, checkpoint headers, mask files, and everything derived from
them (grouped tables, overlap reports, Plotly figures). A result is computed once per key, by the first
session that asks (the others wait for it instead of computing it again), and handed to every later
rerun of every session as the same object, never copied: nothing may mutate what it gets from here.

Keys are content keys. Files are keyed by their :func:`~subnetviz.cache.file_stamp` (size and mtime_ns
of every file), so a rewritten file is a new key; derived results by the function and a :func:`token`
of its arguments, where an argument that came out of the memo is named by its own key (O(1)), and any
other value by its content (a digest of a frame's or an array's values).
"""

from __future__ import annotations

import hashlib
import pickle
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

_PRIMITIVE = (str, bytes, bool, int, float, complex, type(None))
_ANY = object()  # (Memo._drop: whatever value is stored)


class Memo:
    """An LRU per kind (``analysis``, ``mask``: few and large; ``info``, ``derived``: many, small), thread-safe.

    Every object stored (and the items of a stored tuple, list or dict, two levels deep) is tagged with
    its key while it is in the memo, so :func:`token` names it by that key instead of hashing it.
    """

    def __init__(self, sizes: dict[str, int] | None = None):
        self.sizes = {"analysis": 16, "info": 256, "derived": 256, **(sizes or {})}
        self.items: dict[str, OrderedDict] = {kind: OrderedDict() for kind in self.sizes}
        self.tags: dict[int, tuple[object, Hashable]] = {}
        self.flights: dict[Hashable, threading.Event] = {}
        self.checks: dict[tuple[str, Hashable], Callable[[], bool]] = {}  # a provisional value's: does it stand?
        self.renewed: dict[Hashable, int] = {}  # how often a key's value was dropped (its new value's tag says it)
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(
        self,
        key: Hashable,
        compute: Callable[[], Any],
        kind: str = "derived",
        recheck: Callable[[Any], Callable[[], bool] | None] | None = None,
    ) -> Any:
        """The value stored under ``key``, else ``compute()``'s (stored). Concurrent callers of one key
        wait for the first one's result; when it fails (or its session stops), the next one computes.

        ``recheck(value)`` is asked once of a computed value: None when the value is final, else a check, run at
        each later hit, of whether it still stands. A result that skipped work for lack of memory is a state of the
        machine, not of its inputs: kept as final, it was served for the server's life once memory was free. A
        value whose check says no is dropped and computed again (:meth:`forget`)."""
        items = self.items[kind]
        while True:
            with self.lock:
                stands = None
                if key in items:
                    value, stands = items[key], self.checks.get((kind, key))
                    if stands is None:
                        items.move_to_end(key)
                        self.hits += 1
                        return value
                else:
                    flight = self.flights.get(key)
                    mine = flight is None
                    if mine:
                        flight = self.flights[key] = threading.Event()
            if stands is not None:  # a provisional value: checked outside the lock (the check may read files)
                if stands():
                    with self.lock:
                        self.hits += 1
                    return value
                self._drop(key, kind, value)
                continue
            if mine:
                break
            flight.wait()
        try:
            value = compute()  # outside the lock: other keys and sessions keep going
            check = recheck(value) if recheck is not None else None
        except BaseException:
            with self.lock:
                del self.flights[key]
                flight.set()  # the next waiter computes
            raise
        with self.lock:  # stored before the waiters wake (woken first, one found neither value nor flight: computed)
            self.misses += 1
            items[key] = value
            if check is not None:
                self.checks[(kind, key)] = check
            self._tag(value, self._name(key), 2)
            while len(items) > self.sizes[kind]:
                old_key, old = items.popitem(last=False)
                self.checks.pop((kind, old_key), None)
                self._untag(old, 2)
            del self.flights[key]
            flight.set()
        return value

    def forget(self, key: Hashable, kind: str = "derived") -> None:
        """Drop ``key``'s stored value (its files are gone: the next caller computes it again)."""
        self._drop(key, kind)

    def _drop(self, key: Hashable, kind: str, value: object = _ANY) -> None:
        """Drop ``key``'s stored value (only ``value``, when given: another caller may have stored a new one). The
        next value of ``key`` is tagged under a new name (:meth:`_name`): what was derived from the old value (a
        table, a figure, keyed by its tag) is not served for the new one, which may differ (more spectra)."""
        with self.lock:
            items = self.items[kind]
            if key not in items or (value is not _ANY and items[key] is not value):
                return
            old = items.pop(key)
            self.checks.pop((kind, key), None)
            self.renewed[key] = self.renewed.get(key, 0) + 1
            self._untag(old, 2)

    def _name(self, key: Hashable) -> Hashable:
        """What a value stored under ``key`` is tagged as: the key itself, or after a drop the key and how often
        its value was dropped."""
        n = self.renewed.get(key, 0)
        return key if not n else ("renewed", n, key)

    def known(self, key: Hashable, kind: str = "derived") -> bool:
        """Whether ``key``'s value is stored, or being computed by some session (a caller would wait for it)."""
        with self.lock:
            return key in self.items[kind] or key in self.flights

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)``, computed once per content of the arguments (see :func:`token`)."""
        key = (function_name(fn), token(args, self), token(kwargs, self))
        return self.get_or_compute(key, lambda: fn(*args, **kwargs))

    def key_of(self, obj: object) -> Hashable | None:
        tag = self.tags.get(id(obj))
        return tag[1] if tag is not None and tag[0] is obj else None

    def _tag(self, value: object, key: Hashable, depth: int) -> None:
        if isinstance(value, _PRIMITIVE):
            return
        self.tags[id(value)] = (value, key)
        if depth > 0:
            for k, item in _children(value):
                self._tag(item, (key, k), depth - 1)

    def _untag(self, value: object, depth: int) -> None:
        tag = self.tags.get(id(value))
        if tag is not None and tag[0] is value:
            del self.tags[id(value)]
        if depth > 0:
            for _, item in _children(value):
                self._untag(item, depth - 1)


def _children(value: object):
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, tuple | list):
        return list(enumerate(value))
    return []


def function_name(fn: Callable) -> str:
    """A module-level function's full name; closures and lambdas carry state no key can see."""
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
    if "<" in name or not callable(fn):  # <lambda>, <locals>: refuse rather than answer stale
        raise TypeError(f"memo: {name} is not a module-level function")
    return name


def token(obj: object, memo: Memo | None = None) -> Hashable:
    """A hashable key for ``obj``'s content: primitives as themselves (floats by repr, so NaN is equal
    to NaN), memo results by their key, containers item by item, arrays and frames by a digest of their
    values, anything else by a digest of its pickle."""
    if isinstance(obj, float | bool):  # True == 1 and hash(True) == hash(1): a bool is no int here
        return (type(obj).__name__, repr(obj))
    if isinstance(obj, _PRIMITIVE):
        return obj
    if memo is not None and (key := memo.key_of(obj)) is not None:
        return ("memo", key)
    if isinstance(obj, tuple | list):
        return (type(obj).__name__, *(token(x, memo) for x in obj))
    if isinstance(obj, dict):
        return ("dict", *((token(k, memo), token(v, memo)) for k, v in obj.items()))
    if isinstance(obj, set | frozenset):
        return ("set", *sorted((token(x, memo) for x in obj), key=repr))
    if isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
        return ("fn", function_name(obj))
    return (type(obj).__qualname__, _digest(obj))


def _digest(obj: object) -> str:
    """A digest of ``obj``'s bytes: an array's buffer, else its pickle (a frame pickles ~10× faster than
    ``hash_pandas_object`` hashes it). Equal digests mean equal content; a frame laid out differently
    only digests differently (a second computation, never a stale answer)."""
    import numpy as np

    h = hashlib.blake2b(digest_size=16)
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        h.update(f"{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).view(np.uint8).data)
    else:
        try:
            h.update(pickle.dumps(obj, protocol=5))
        except Exception as exc:  # a lock, a closure: no content key to make
            raise TypeError(f"memo: cannot key a {type(obj).__qualname__} argument ({exc})") from exc
    return h.hexdigest()
