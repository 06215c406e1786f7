"""The numba kernels behind :mod:`subnetviz.analysis.overlap_counts` (imported only through it:
this module needs numba at import time): the delta swaps of the bit transpose, the histograms of
composite codes (no histogram allocated per block), and the scan and take that turn a group's bins
into its compact codes and counts.
"""

from __future__ import annotations

import numpy as np

from subnetviz.analysis._bits_numba import jit


@jit
def hist8(codes, out):  # pragma: no cover (compiled)
    """``out[k % 4, codes[k]] += 1`` (out: (4, 256) int64): four sub-histograms, so runs of one code
    (sparse masks: mostly code 0) do not wait on the previous increment of the same bin."""
    n = codes.size
    m = n - n % 4
    for i in range(0, m, 4):
        out[0, codes[i]] += 1
        out[1, codes[i + 1]] += 1
        out[2, codes[i + 2]] += 1
        out[3, codes[i + 3]] += 1
    for i in range(m, n):
        out[0, codes[i]] += 1


@jit
def hist16(lo, hi, out):  # pragma: no cover (compiled)
    """``out[lo[k] | hi[k] << 8] += 1`` (out: (65536,) int64): the 16-bit code of each parameter from
    its two byte planes (masks 0-7 and 8-15), without interleaving them first."""
    for i in range(lo.size):
        out[np.int64(lo[i]) | (np.int64(hi[i]) << 8)] += 1


@jit
def hist16_hot(lo, hi, out, hot):  # pragma: no cover (compiled)
    """:func:`hist16` for blocks where one code ``hot`` is most parameters (sparse masks: code 0; dense
    ones: every mask): its increments go round the 8 spare bins past the 2**N (``out``: 2**N + 8), so
    a run of it does not queue on one bin (1 % density: ~3x faster; random masks: ~1.5x slower)."""
    n = out.size - 8
    m = lo.size - lo.size % 8
    for i in range(0, m, 8):
        for j in range(8):
            v = np.int64(lo[i + j]) | (np.int64(hi[i + j]) << 8)
            out[v if v != hot else n + j] += 1
    for i in range(m, lo.size):
        v = np.int64(lo[i]) | (np.int64(hi[i]) << 8)
        out[v if v != hot else n] += 1


@jit
def _swap_rows(a, b, width, low):  # pragma: no cover (compiled)
    """One delta swap of two rows (1-d uint64): a's high ``width``-bit fields traded for b's low ones."""
    for w in range(a.size):
        u = ((a[w] >> width) ^ b[w]) & low
        b[w] ^= u
        a[w] ^= u << width


@jit
def transpose(x, dist, width, low):  # pragma: no cover (compiled)
    """:func:`subnetviz.analysis.overlap_counts._transpose` of the (M, words) uint64 rows ``x``, in
    place: at stage s, rows a and a + dist[s] (that bit of a clear) swap fields of ``width[s]`` bits
    (``low[s]``: the low field of each pair). One vectorised pass per pair of rows and stage, where
    NumPy makes six (~4x slower)."""
    for s in range(dist.size):
        d = dist[s]
        for a in range(x.shape[0]):
            if a & d == 0:
                _swap_rows(x[a], x[a + d], width[s], low[s])


@jit
def scan(bins, totals):  # pragma: no cover (compiled)
    """(bins that are not zero, the largest bin) of ``bins`` (int32 or int64), and ``totals += bins``
    (int64, same size; a zero-size ``totals``: nothing added)."""
    nonzero = 0
    top = 0
    add = totals.size == bins.size
    for c in range(bins.size):
        v = np.int64(bins[c])
        if add:
            totals[c] += v
        if v != 0:
            nonzero += 1
            top = max(top, v)
    return nonzero, top


@jit
def take(bins, codes, counts):  # pragma: no cover (compiled)
    """The codes and counts of the bins that are not zero, in code order, into ``codes`` and ``counts``
    (sized by :func:`scan`); those bins zeroed."""
    j = 0
    for c in range(bins.size):
        v = bins[c]
        if v != 0:
            codes[j] = c
            counts[j] = v
            bins[c] = 0
            j += 1


@jit
def gather_bits(packed, starts, lengths, out):  # pragma: no cover (compiled)
    """The bits ``starts[k] : starts[k] + lengths[k]`` of ``packed`` (bit-packed, big bit order), for each k in
    turn, packed one after another into ``out`` (``ceil(Σ lengths / 8)`` bytes; the unused low bits of its last
    byte zero): a part of a tensor whose runs do not start on whole bytes. Whole bytes move a byte at a time
    through a bit accumulator, the few bits before and after them one at a time."""
    acc = np.uint64(0)
    held = 0  # bits in acc, fewer than 8 between steps
    j = 0
    for k in range(starts.size):
        i = starts[k]
        end = i + lengths[k]
        while i < end:
            if i & 7 == 0 and i + 8 <= end:
                acc = (acc << np.uint64(8)) | np.uint64(packed[i >> 3])
                i += 8
                out[j] = np.uint8((acc >> np.uint64(held)) & np.uint64(0xFF))
                j += 1
                acc &= np.uint64((1 << held) - 1)
                continue
            acc = (acc << np.uint64(1)) | np.uint64((packed[i >> 3] >> (7 - (i & 7))) & 1)
            i += 1
            held += 1
            if held == 8:
                out[j] = np.uint8(acc & np.uint64(0xFF))
                j += 1
                acc = np.uint64(0)
                held = 0
    if held:
        out[j] = np.uint8((acc << np.uint64(8 - held)) & np.uint64(0xFF))
