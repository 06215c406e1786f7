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
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any], kind: str = "derived") -> Any:
        """The value stored under ``key``, else ``compute()``'s (stored). Concurrent callers of one key
        wait for the first one's result; when it fails (or its session stops), the next one computes."""
        items = self.items[kind]
        while True:
            with self.lock:
                if key in items:
                    items.move_to_end(key)
                    self.hits += 1
                    return items[key]
                flight = self.flights.get(key)
                mine = flight is None
                if mine:
                    flight = self.flights[key] = threading.Event()
            if mine:
                break
            flight.wait()
        try:
            value = compute()  # outside the lock: other keys and sessions keep going
        finally:
            with self.lock:
                del self.flights[key]
                flight.set()
        with self.lock:
            self.misses += 1
            items[key] = value
            self._tag(value, key, 2)
            while len(items) > self.sizes[kind]:
                _, old = items.popitem(last=False)
                self._untag(old, 2)
        return value

    def forget(self, key: Hashable, kind: str = "derived") -> None:
        """Drop ``key``'s stored value (its files are gone: the next caller computes it again)."""
        with self.lock:
            value = self.items[kind].pop(key, None)
            if value is not None:
                self._untag(value, 2)

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
