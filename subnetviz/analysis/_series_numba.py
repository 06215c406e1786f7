"""The numba loop behind :mod:`subnetviz.analysis.series_jit` (imported only through it: this module
needs numba at import time): every count of a window of versions in one pass over their bytes.

The comparisons are LLVM vector compares of 64 entries at a time whose ``<64 x i1>`` results are
used as 64-bit masks (``vpcmpneqw`` into a mask register and ``popcnt`` on AVX-512; compare, pack
and ``pmovmskb`` elsewhere), so the "ever updated" flags are packed bits (one uint64 per 64
entries) and each count is one ``popcnt`` per 64 entries.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from subnetviz.analysis._bits_numba import jit

LANES = 64  # entries per packed word of flags


def _masks_intrinsic(lanes: int):
    @intrinsic
    def masks(typingctx, cur, prev, first, special):
        """``lanes`` entries at three addresses (int64; the entry type is ``special``'s) ->
        (≠ prev, ≠ first, every bit of ``special`` set) as uint64 bit masks (bit i: entry i)."""
        width = special.bitwidth
        sig = types.UniTuple(types.uint64, 3)(types.int64, types.int64, types.int64, special)

        def codegen(context, builder, signature, args):
            vty = ir.VectorType(ir.IntType(width), lanes)
            i64 = ir.IntType(64)

            def load(address):
                return builder.load(builder.inttoptr(address, vty.as_pointer()), align=1)

            def bits(v):  # <lanes x i1> -> i64
                b = builder.bitcast(v, ir.IntType(lanes))
                return b if lanes == 64 else builder.zext(b, i64)

            c, p, f = load(args[0]), load(args[1]), load(args[2])
            sp = builder.insert_element(ir.Constant(vty, ir.Undefined), args[3], ir.Constant(ir.IntType(32), 0))
            sp = builder.shuffle_vector(
                sp, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            )
            out = [
                bits(builder.icmp_unsigned("!=", c, p)),
                bits(builder.icmp_unsigned("!=", c, f)),
                bits(builder.icmp_unsigned("==", builder.and_(c, sp), sp)),
            ]
            return context.make_tuple(builder, signature.return_type, out)

        return sig, codegen

    return masks


_masks64 = _masks_intrinsic(LANES)
_masks1 = _masks_intrinsic(1)


@intrinsic
def _popcount(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


# Words (of 64 entries) per block, and versions run side by side: the first and previous versions'
# blocks are read from cache, and GROUP versions stream from memory together, 64 entries of each in
# turn. The versions' tensors sit at the same offset of page-aligned files, so their streams share
# L1 sets: GROUP + 2 streams stay within its 8 ways (all 15 versions side by side thrash them).
# Measured on 16 mapped 0.1B checkpoints' embedding, ns per entry and version: one version at a time
# 0.32, GROUP 2: 0.21, 3: 0.14, 4: 0.13, 5: 0.12, 8: 0.18, 15: 0.33; NumPy count_nonzero 0.07.
BLOCK_WORDS = 2048
GROUP = 4


@jit
def window(first, prev, addresses, ever, special, n, itemsize):  # pragma: no cover (compiled)
    """Counts of a window of one tensor's versions: ``first``, ``prev`` and ``addresses`` (one per
    version, in order) are data addresses of ``n`` entries of ``itemsize`` bytes, kept alive by the
    caller; ``special`` (its type is the entries' integer type) the pattern whose bits all set flag
    an entry. ``ever``: the packed flags (uint64 per 64 entries, bit i of word w: entry 64 w + i),
    updated in place. Returns (k, 4) uint64: #≠ previous, #≠ first, #ever updated, any flagged entry
    (nonzero)."""
    acc = np.zeros((addresses.size, 4), np.uint64)
    _window_into(first, prev, addresses, ever, special, n, itemsize, acc)
    return acc


@jit
def tensors(addresses, sizes, ever, special, itemsize):  # pragma: no cover (compiled)
    """:func:`window` of several tensors in one call: row t of ``addresses`` (T, K+1) holds the data
    addresses of tensor t's versions in order, the first included (compared with itself: its counts
    are 0 and its finite check rides along), ``sizes[t]`` its entries; ``ever`` (zeros) holds every
    tensor's packed flags one after another (ceil(size / 64) words each). Returns (T, K+1, 4)."""
    count, k1 = addresses.shape
    acc = np.zeros((count, k1, 4), np.uint64)
    w0 = 0
    for t in range(count):
        n = sizes[t]
        words = (n + LANES - 1) // LANES
        row = addresses[t]
        _window_into(row[0], row[0], row, ever[w0 : w0 + words], special, n, itemsize, acc[t])
        w0 += words
    return acc


@jit
def _window_into(first, prev, addresses, ever, special, n, itemsize, acc):  # pragma: no cover (compiled)
    """:func:`window`'s counts added into ``acc`` (k, 4). Block by block; in a block, :data:`GROUP`
    versions at a time, 64 entries of each in turn (the flags of those 64 entries and the previous
    version's entries stay in registers/L1)."""
    k = addresses.size
    full = n // LANES
    step = LANES * itemsize
    for s in range(0, full, BLOCK_WORDS):
        e = min(full, s + BLOCK_WORDS)
        p = prev
        for j0 in range(0, k, GROUP):
            j1 = min(k, j0 + GROUP)
            for w in range(s, e):
                off = w * step
                ev = ever[w]
                q = p
                for j in range(j0, j1):
                    c = addresses[j]
                    mp, mf, ms = _masks64(c + off, q + off, first + off, special)
                    ev |= mp
                    acc[j, 0] += _popcount(mp)
                    acc[j, 1] += _popcount(mf)
                    acc[j, 2] += _popcount(ev)
                    acc[j, 3] |= ms
                    q = c
                ever[w] = ev
            p = addresses[j1 - 1]
    if full * LANES < n:  # the last n % 64 entries, one at a time, in the last word's low bits
        base = full * LANES
        ev = ever[full]
        p = prev
        for j in range(k):
            c = addresses[j]
            for i in range(base, n):
                off = i * itemsize
                mp, mf, ms = _masks1(c + off, p + off, first + off, special)
                ev |= mp << np.uint64(i - base)
                acc[j, 0] += mp
                acc[j, 1] += mf
                acc[j, 3] |= ms
            acc[j, 2] += _popcount(ev)
            p = c
        ever[full] = ev
