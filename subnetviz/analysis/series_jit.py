"""The checkpoint series' per-window counts as one compiled loop (numba), with the finite check fused.

:func:`window_counts` gives, for a window of one tensor's versions, the same counts as the NumPy
blocks of :func:`subnetviz.analysis.series._window_counts` (#≠ previous, #≠ first, #ever updated per
version, the flags updated in place) in one pass over the versions' bytes (vector compares of 64
entries turned into bit masks: the flags are packed bits and each count a ``popcnt``), and flags
each version holding an entry whose exponent bits are all set (Inf or NaN in the IEEE types: bf16,
fp16, fp32, fp64), so the series needs no separate finite-check pass over any version, the first
included; a flagged version is checked again by :func:`~subnetviz.analysis.bits.check_finite`,
which raises with the exact count, in the same order as before.

numba is optional: without it (or with ``SUBNETVIZ_JIT=0``) :func:`available` is False and the series
uses the NumPy blocks and a finite check per version.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from subnetviz.analysis.bits import int_view
from subnetviz.analysis.bits_jit import compiled

# the dtypes whose Inf/NaN are exactly the patterns with every exponent bit set
IEEE = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def _module():
    return compiled("_series_numba")


def available() -> bool:
    """Whether the compiled loop is used (numba importable and ``SUBNETVIZ_JIT`` not 0)."""
    return _module() is not None


@functools.cache
def special_bits(dtype: torch.dtype) -> np.generic:
    """The integer pattern of +Inf in ``dtype`` (every exponent bit set), as a NumPy scalar of the
    integer view's type."""
    return int_view(torch.tensor(float("inf"), dtype=dtype)).numpy()[()]


def touch(v: torch.Tensor) -> None:
    """Read one byte of every 4 KB page of a CPU tensor: a tensor over a memory-mapped file is mapped
    page by page on first touch, and doing it in the read-ahead thread leaves the comparing thread
    only the comparison."""
    if v.device.type == "cpu" and v.is_contiguous() and v.numel():
        np.add.reduce(v.reshape(-1).view(torch.uint8).numpy()[::4096], dtype=np.uint64)


def new_flags(numel: int) -> np.ndarray:
    """The "ever updated" flags of :func:`window_counts` for versions of ``numel`` entries: packed
    bits, one uint64 per 64 entries (``numel / 8`` bytes, read and written in registers by the loop)."""
    return np.zeros(-(-numel // 64), np.uint64)


def window_counts(
    first: torch.Tensor, prev: torch.Tensor, batch: list[torch.Tensor], ever: np.ndarray, special: np.generic
) -> tuple[list[list[int]], list[int]]:
    """(``[[#≠ previous, #≠ first, #ever updated]]`` per version of ``batch``, indices of the versions
    holding a pattern with every bit of ``special`` set); ``ever`` (:func:`new_flags`) is updated in
    place. Contiguous CPU tensors of one dtype and size (checked: the loop reads them by address),
    ``special`` of their integer view's type. One compiled pass over the window (``window``: a few
    versions side by side, 64 entries of each in turn)."""
    n, dtype = first.numel(), first.dtype
    for v in (first, prev, *batch):
        if v.numel() != n or v.dtype != dtype or v.device.type != "cpu" or not v.is_contiguous():
            raise ValueError("versions of one tensor must be contiguous CPU tensors of one size and type")
    if ever.dtype != np.uint64 or ever.shape != new_flags(n).shape or not ever.flags.c_contiguous:
        raise ValueError("flags must come from new_flags(numel)")
    if np.asarray(special).dtype.itemsize != first.element_size():
        raise ValueError(f"special pattern of {np.asarray(special).dtype} for {dtype}")
    addresses = np.array([v.data_ptr() for v in batch], dtype=np.int64)  # the tensors stay alive: the caller's
    acc = _module().window(first.data_ptr(), prev.data_ptr(), addresses, ever, special, n, first.element_size())
    return acc[:, :3].astype(np.int64).tolist(), np.flatnonzero(acc[:, 3]).tolist()


class FileMaps:
    """Read-only memory maps of safetensors files, one per file, made on first use: the data address
    of a stored tensor without a tensor object per read (the series reads thousands of them).
    :meth:`close` unmaps them all (the addresses are invalid after it)."""

    def __init__(self):
        self._files: dict[Path, tuple] = {}  # path -> (mmap, data section address, its offset, header)

    def address(self, meta, numel: int) -> int:
        """The data address of the first ``numel`` entries of the tensor ``meta`` describes (valid until
        :meth:`close`). Its header entry must still say what the checkpoint read: its dtype, at least
        ``numel`` entries, inside the file."""
        from subnetviz.checkpoints.header import ST_DTYPE_INFO
        from subnetviz.errors import CheckpointError

        got = self._files.get(meta.file)
        if got is None:
            got = self._files[meta.file] = _map(meta.file)
        mm, data, offset, header = got
        info = header.get(meta.name)
        want = str(meta.dtype).removeprefix("torch.")
        if info is not None:
            begin, end = info["data_offsets"]
            stored, size = ST_DTYPE_INFO.get(info["dtype"], ("", 0))
        if info is None or stored != want or numel * size > end - begin or offset + end > mm.size():
            raise CheckpointError(f"{meta.file}: tensor {meta.name!r} changed since the header was read.")
        return data + begin

    def close(self) -> None:
        files, self._files = self._files, {}
        for mm, *_ in files.values():
            mm.close()


def _map(path: Path) -> tuple:
    """(map of the whole file, the address of its data section, that section's offset, parsed header):
    the header read and validated by the checkpoints' own reader, the file mapped once by theirs."""
    from subnetviz.checkpoints.header import read_safetensors_header
    from subnetviz.checkpoints.sources import map_checked

    header, raw = read_safetensors_header(path)
    mm, start = map_checked(path, raw)
    view = np.frombuffer(mm, np.uint8)  # only for the address: the map stays open until close()
    address = view.ctypes.data
    del view
    return mm, address + start, start, header


def tensor_counts(addresses: np.ndarray, sizes: np.ndarray, special: np.generic, itemsize: int) -> np.ndarray:
    """The counts of several tensors' versions in one compiled call: ``addresses`` (T, K+1) int64, row t
    the data addresses of tensor t's ``sizes[t]`` entries in each version (the first included), kept
    alive by the caller; ``special``: :func:`special_bits` of their dtype (entries of ``itemsize``
    bytes). Returns (T, K+1, 4) int64: per version #≠ previous, #≠ first, #ever updated (0 for the
    first), and whether it holds a pattern with every bit of ``special`` set (Inf/NaN)."""
    if np.asarray(special).dtype.itemsize != itemsize:
        raise ValueError(f"special pattern of {np.asarray(special).dtype} for entries of {itemsize} bytes")
    words = (sizes + 63) // 64
    ever = np.zeros(int(words.sum()), np.uint64)
    acc = _module().tensors(addresses, sizes, ever, special, itemsize)
    return acc.astype(np.int64)


def warm() -> float:
    """Load the compiled loops (the first one a process loads costs ~0.5 s: numba's code loader);
    returns the seconds it took. For servers and benchmarks, before the first series."""
    import time

    t0 = time.perf_counter()
    if available():
        x = torch.zeros(9, dtype=torch.bfloat16)
        window_counts(x, x, [x], new_flags(9), special_bits(torch.bfloat16))
        at = np.full((1, 2), x.data_ptr(), np.int64)
        tensor_counts(at, np.array([9], np.int64), special_bits(torch.bfloat16), 2)
    return time.perf_counter() - t0
