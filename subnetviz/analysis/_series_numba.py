"""The numba loop behind :mod:`subnetviz.analysis.series_jit` (imported only through it: this module
needs numba at import time): every count of one version's block in one vectorised pass.
"""

from __future__ import annotations

import numpy as np
from numba import carray, types
from numba.extending import intrinsic

from subnetviz.analysis._bits_numba import jit


@jit
def block(first, p, cur, ever, special):  # pragma: no cover (compiled)
    """(#≠ previous, #≠ first, #ever updated, any pattern with every bit of ``special`` set) of one
    version's block (slices of equal length); ``ever`` updated in place. A loop from 0 over views:
    with a start of unknown sign each index gets a wraparound check and the loop does not vectorise
    (~10x slower)."""
    n_prev = 0
    n_first = 0
    n_ever = 0
    hit = 0
    for i in range(first.size):
        x = cur[i]
        moved = x != p[i]
        was = ever[i] | moved
        ever[i] = was
        n_prev += moved
        n_first += x != first[i]
        n_ever += was
        hit |= (x & special) == special
    return n_prev, n_first, n_ever, hit


_LOW = np.uint64(0x7FFF7FFF7FFF7FFF)
_TOP = np.uint64(0x8000800080008000)
_FIFTEEN = np.uint64(15)
_LANE = np.uint64(0xFFFF)
_WORDS = 32768  # words per sub-block: a 16-bit lane counts at most this many entries (< 2**16)


@jit
def block16(first, p, cur, ever, special4):  # pragma: no cover (compiled)
    """:func:`block` for 16-bit entries, four to a 64-bit word (uint64 views): a lane is nonzero iff
    ``((d & 0x7FFF) + 0x7FFF | d) & 0x8000`` is set, so each count is a few word operations per four
    entries, summed in 16-bit lanes per sub-block of :data:`_WORDS` words (no widening of every
    comparison to a 64-bit count: ~2.5x faster). ``ever`` holds the flags in bit 15 of each lane;
    ``special4``: the pattern in all four lanes."""
    n = first.size
    n_prev = np.uint64(0)
    n_first = np.uint64(0)
    n_ever = np.uint64(0)
    hit = np.uint64(0)
    for s in range(0, n, _WORDS):
        m = min(n - s, _WORDS)
        f, q, c, e = first[s : s + m], p[s : s + m], cur[s : s + m], ever[s : s + m]
        a_prev = np.uint64(0)
        a_first = np.uint64(0)
        a_ever = np.uint64(0)
        for i in range(m):
            x = c[i]
            dp = x ^ q[i]
            df = x ^ f[i]
            moved = (((dp & _LOW) + _LOW) | dp) & _TOP
            was = e[i] | moved
            e[i] = was
            a_prev += moved >> _FIFTEEN
            a_first += ((((df & _LOW) + _LOW) | df) & _TOP) >> _FIFTEEN
            a_ever += was >> _FIFTEEN
            t = (x & special4) ^ special4  # a zero lane: every bit of the pattern set
            hit |= ~(((t & _LOW) + _LOW) | t) & _TOP
        for lane in range(4):
            shift = np.uint64(16 * lane)
            n_prev += (a_prev >> shift) & _LANE
            n_first += (a_first >> shift) & _LANE
            n_ever += (a_ever >> shift) & _LANE
    return n_prev, n_first, n_ever, hit != np.uint64(0)


@intrinsic
def _words_at(typingctx, address):  # an integer address -> a uint64 pointer (for carray)
    sig = types.CPointer(types.uint64)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint64)))

    return sig, codegen


@jit
def window16(first, prev, addresses, ever, special4, step):  # pragma: no cover (compiled)
    """:func:`block16` over all versions of a window, block by block (``step`` words): the first,
    previous and flags blocks stay in cache and each version's block is read once. ``addresses``:
    the data addresses of the versions' uint64 views (8-byte aligned, each ``first.size`` words,
    kept alive by the caller): one compiled function for any number of versions, where a tuple of
    arrays would compile (and load from the cache, ~0.5 s) once per length. Returns (k, 3) counts
    and (k,) Inf/NaN flags."""
    k = addresses.size
    n = first.size
    counts = np.zeros((k, 3), np.int64)
    hits = np.zeros(k, np.bool_)
    for s in range(0, n, step):
        e = min(n, s + step)
        p = prev[s:e]
        for j in range(k):
            c = carray(_words_at(addresses[j]), n)[s:e]
            n_prev, n_first, n_ever, hit = block16(first[s:e], p, c, ever[s:e], special4)
            counts[j, 0] += n_prev
            counts[j, 1] += n_first
            counts[j, 2] += n_ever
            hits[j] |= hit
            p = c
    return counts, hits
