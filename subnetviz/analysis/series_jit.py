"""The checkpoint series' per-window counts as one compiled loop (numba), with the finite check fused.

:func:`window_counts` gives, for a window of one tensor's versions, the same counts as the NumPy
blocks of :func:`subnetviz.analysis.series._window_counts` (#≠ previous, #≠ first, #ever updated per
version, the flags updated in place), in one pass per version block instead of six NumPy steps, and
flags each version holding an entry whose exponent bits are all set (Inf or NaN in the IEEE types:
bf16, fp16, fp32, fp64), so the series needs no separate finite-check pass over every version; a
flagged version is checked again by :func:`~subnetviz.analysis.bits.check_finite`, which raises
with the exact count, in the same order as before.

numba is optional: without it (or with ``SUBNETVIZ_JIT=0``) :func:`available` is False and the series
uses the NumPy blocks and a finite check per version.
"""

from __future__ import annotations

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


def new_flags(first: np.ndarray) -> np.ndarray:
    """The "ever updated" flags of :func:`window_counts` for versions like ``first``: one uint16 per
    entry for 16-bit types (bit 15 of each lane, see ``block16``), else one byte."""
    return np.zeros(first.size, np.uint16 if first.itemsize == 2 else np.uint8)


def window_counts(
    first: np.ndarray, prev: np.ndarray, batch: list[np.ndarray], ever: np.ndarray, special: np.generic, step: int
) -> tuple[list[list[int]], list[int]]:
    """(``[[#≠ previous, #≠ first, #ever updated]]`` per version of ``batch``, indices of the versions
    holding a pattern with every bit of ``special`` set); ``ever`` (:func:`new_flags`) is updated in
    place. Block by block (``step`` entries) over all versions, as the NumPy blocks go; 16-bit
    entries four to a word in one compiled call (``window16``), the last ``size % 4`` and other
    widths through ``block`` per block."""
    m = _module()
    like = [(a.size, a.dtype) for a in (prev, *batch)]
    if like.count((first.size, first.dtype)) != len(like) or (ever.size, ever.dtype) != (
        first.size,
        new_flags(first[:0]).dtype,
    ):
        raise ValueError("versions and flags of one tensor must have the same size and type")  # unchecked loops
    counts = np.zeros((len(batch), 3), dtype=np.int64)
    hits = np.zeros(len(batch), dtype=bool)
    cut = first.size // 4 * 4 if first.itemsize == 2 else 0  # four to a word: entries :cut
    if cut:
        special4 = np.uint64(int(special) & 0xFFFF) * np.uint64(0x0001000100010001)
        words = [_words(a, cut) for a in (first, prev, ever)]
        # the versions by address, 8-byte aligned (a version stored at an odd 2-byte offset is copied;
        # LLM tensors' sizes keep their offsets 8-byte aligned)
        versions = [w if w.ctypes.data % 8 == 0 else w.copy() for w in (_words(a, cut) for a in batch)]
        addresses = np.array([w.ctypes.data for w in versions], dtype=np.int64)
        c, h = m.window16(words[0], words[1], addresses, words[2], special4, max(1, step // 4))
        del versions  # alive until here: the compiled loop reads them by address
        counts += c
        hits |= h
    for s in range(cut, first.size, step):  # other widths, and the last size % 4 16-bit entries
        p = prev[s : s + step]
        for j, cur in enumerate(batch):
            c = cur[s : s + step]
            n_prev, n_first, n_ever, hit = m.block(first[s : s + step], p, c, ever[s : s + step], special)
            counts[j] += (int(n_prev), int(n_first), int(n_ever))
            hits[j] |= bool(hit)
            p = c
    return counts.tolist(), np.flatnonzero(hits).tolist()


def _words(a: np.ndarray, cut: int) -> np.ndarray:
    return a[:cut].view(np.uint64)


def warm() -> float:
    """Load the compiled loops (the first one a process loads costs ~0.5 s: numba's code loader);
    returns the seconds it took. For servers and benchmarks, before the first series."""
    import time

    t0 = time.perf_counter()
    if available():
        x = np.zeros(9, np.int16)
        window_counts(x, x, [x], new_flags(x), special_bits(torch.bfloat16), 8)
    return time.perf_counter() - t0
