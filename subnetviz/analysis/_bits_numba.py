"""The numba definitions behind :mod:`subnetviz.analysis.bits_jit` (imported only through it: this
module needs numba at import time). Bit casts are LLVM intrinsics; the value decoding and the ULP
distance are overloads chosen by the integer type of the view (int16: bf16, uint16: fp16, int32:
fp32, int64: fp64), so one kernel source compiles to one specialised loop per dtype.
"""

from __future__ import annotations

import warnings

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


def jit(fn):
    """``njit(cache=True, nogil=True)``; where no cache location is writable, compiled in memory."""
    try:
        return njit(cache=True, nogil=True)(fn)
    except Exception as exc:  # noqa: BLE001 (a read-only package and cache dir must not stop the analysis)
        warnings.warn(f"numba cache unavailable ({exc}); compiling in memory.", RuntimeWarning, stacklevel=2)
        return njit(nogil=True)(fn)


@intrinsic
def bf16_value(typingctx, v):  # int16 bit pattern -> float32 (the top half of its pattern)
    def codegen(context, builder, sig, args):
        w = builder.shl(builder.sext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(w, ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def f32_value(typingctx, v):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def f64_value(typingctx, v):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def float_bits(typingctx, v):  # float32 -> int32, float64 -> int64 (same bits)
    width = v.bitwidth

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(width))

    return getattr(types, f"int{width}")(v), codegen


@intrinsic
def bits_value(typingctx, i, like):  # integer bits (any width) -> a float of like's type
    width = like.bitwidth
    fty = ir.FloatType() if width == 32 else ir.DoubleType()

    def codegen(context, builder, sig, args):
        v = args[0]
        if i.bitwidth > width:
            v = builder.trunc(v, ir.IntType(width))
        elif i.bitwidth < width:
            v = builder.zext(v, ir.IntType(width))
        return builder.bitcast(v, fty)

    return like(i, like), codegen


def decode(v, lut):  # stub: the compute-dtype value of a bit pattern
    raise NotImplementedError


@overload(decode, inline="always")
def _decode(v, lut):
    if v == types.int16:  # bf16
        return lambda v, lut: bf16_value(v)
    if v == types.uint16:  # fp16 (passed as uint16 so that the type says which)
        return lambda v, lut: lut[v]
    if v == types.int32:
        return lambda v, lut: np.float64(f32_value(v))
    if v == types.int64:
        return lambda v, lut: f64_value(v)
    return None


@intrinsic
def ulp(typingctx, x, y):
    """ULP distance of two float bit patterns (any integer view: int8/uint8 FP8 codes, int16/uint16,
    int32, int64), in explicit-width LLVM integer ops (numba would widen every step to 64 bits).

    The monotone key of a sign-magnitude pattern is m for a positive sign and -m for a negative one,
    (m ^ s) - s with s the sign mask, so |k_y - k_x| counts the steps, across zero too, and +0 / -0
    share the key 0. 8- and 16-bit patterns work in int32 (no overflow; result int32); 32- and 64-bit
    ones in their own width, the difference negated where it is negative, exact as an unsigned
    number (result uint32 / uint64)."""
    bits = x.bitwidth
    width = 32 if bits <= 16 else bits
    rtype = types.int32 if bits <= 16 else getattr(types, f"uint{bits}")

    def codegen(context, builder, sig, args):
        ity = ir.IntType(width)

        def key(v):
            w = builder.sext(v, ity) if bits < width else v
            sign = builder.ashr(w, ir.Constant(ity, width - 1))
            mag = builder.and_(w, ir.Constant(ity, (1 << (bits - 1)) - 1))
            return builder.sub(builder.xor(mag, sign), sign)

        kx, ky = key(args[0]), key(args[1])
        diff = builder.sub(ky, kx)
        return builder.select(builder.icmp_signed("<", ky, kx), builder.sub(ir.Constant(ity, 0), diff), diff)

    return rtype(x, y), codegen


@intrinsic
def flag32(typingctx, cond):  # a boolean as int32 0 / 1 (numba's own casts go through int64)
    def codegen(context, builder, sig, args):
        return builder.zext(args[0], ir.IntType(32))

    return types.int32(cond), codegen


@intrinsic
def add32(typingctx, acc, v):  # int32 + int32 -> int32 (wrapping; the counts here stay below 2^31)
    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return types.int32(types.int32, types.int32), codegen


@intrinsic
def type_max(typingctx, v):  # the largest value of v's integer type (a min's neutral start)
    width = v.bitwidth
    top = (1 << (width - 1)) - 1 if v.signed else (1 << width) - 1

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(width), top)

    return v(v), codegen


@intrinsic
def xor_or(typingctx, acc, x, y):  # acc | (x ^ y) in their own width (numba would widen to 64 bits)
    def codegen(context, builder, sig, args):
        return builder.or_(args[0], builder.xor(args[1], args[2]))

    return acc(acc, x, y), codegen


@jit
def count_above(buf, n, edge):
    c = np.int32(0)
    for k in range(np.uint64(n)):
        c = add32(c, flag32(buf[k] > edge))
    return c


@jit
def changes(xr, yr, mask_mode, mr, do_rc, cr):
    """The first pass over a segment of integer views ``xr`` -> ``yr``: returns how many entries' bits differ,
    writes them into the mask ``mr`` (mask_mode 1) and adds them to the column counts ``cr`` (``do_rc``)."""
    n = xr.size
    changed = np.int32(0)  # int32 counters and 0/1 values: the compares stay 16 lanes wide or more
    if mask_mode == 1 and do_rc:
        for k in range(np.uint64(n)):
            ne = flag32(xr[k] != yr[k])
            mr[k] = np.uint8(ne)
            cr[k] = add32(cr[k], ne)
            changed = add32(changed, ne)
    elif mask_mode == 1:
        for k in range(np.uint64(n)):
            ne = flag32(xr[k] != yr[k])
            mr[k] = np.uint8(ne)
            changed = add32(changed, ne)
    elif do_rc:
        for k in range(np.uint64(n)):
            ne = flag32(xr[k] != yr[k])
            cr[k] = add32(cr[k], ne)
            changed = add32(changed, ne)
    else:
        for k in range(np.uint64(n)):
            changed = add32(changed, flag32(xr[k] != yr[k]))
    return changed


@jit
def segment_stats(xr, yr, changed, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mr, edges, out, dbuf, ubuf):
    """The statistics of a segment of integer views ``xr`` -> ``yr`` (1-D, at most ``dbuf.size`` entries) with
    ``changed`` > 0 entries whose bits differ (:func:`changes`), added into ``out`` = [changed, rel,
    #(ULP > edge)..., #(|Δ| > tol)..., largest |Δ| as bits]; with mask_mode 2 writes |Δ| > mask_tol into ``mr``.
    ``dbuf`` / ``ubuf``: buffers of the compute dtype / the ULP type.

    One pass writes |Δ| and the ULP distance of every entry and keeps their largest values and their
    smallest over the changed entries (unchanged ones are 0 apart, so no count above a tolerance or an
    edge ever includes them): a count above a value under the smallest is ``changed`` and one above the
    largest is 0; only the thresholds in between take a counting pass over a buffer."""
    n = xr.size
    n_tol, n_edge = tols.size, edges.size
    top = float_bits(eta - eta)  # typed zeros: the bits of +0.0, a distance of 0
    low = type_max(top)
    far = ulp(xr[0], xr[0])
    near = type_max(far)
    rel = np.int32(0)
    if rel_nonzero:  # η below half an ULP: the rule is Δ != 0, i.e. a nonzero ULP distance
        for k in range(np.uint64(n)):
            xv = xr[k]
            yv = yr[k]
            d = abs(decode(yv, lut) - decode(xv, lut))
            dbuf[k] = d
            db = float_bits(d)
            top = max(db, top)  # |Δ| >= 0: its bits order like the values, NaN above Inf
            u = ulp(xv, yv)
            ubuf[k] = u
            far = max(u, far)
            ne = xv != yv
            low = min(db if ne else type_max(db), low)
            near = min(u if ne else type_max(u), near)
            rel = add32(rel, flag32(u != 0))
    else:
        for k in range(np.uint64(n)):
            xv = xr[k]
            yv = yr[k]
            xf = decode(xv, lut)
            yf = decode(yv, lut)
            d = abs(yf - xf)
            dbuf[k] = d
            db = float_bits(d)
            top = max(db, top)
            u = ulp(xv, yv)
            ubuf[k] = u
            far = max(u, far)
            ne = xv != yv
            low = min(db if ne else type_max(db), low)
            near = min(u if ne else type_max(u), near)
            rel = add32(rel, flag32(d > eta * max(abs(xf), abs(yf))))
    if mask_mode == 2:
        for k in range(np.uint64(n)):
            mr[k] = np.uint8(dbuf[k] > mask_tol)
    out[0] += changed
    out[1] += rel
    largest = bits_value(top, eta)
    smallest = bits_value(low, eta)  # (a NaN |Δ| makes largest NaN: then every count takes its pass)
    for j in range(n_tol):  # ascending: the first tolerance the largest |Δ| does not pass ends it
        if not largest > tols[j]:
            break
        if smallest > tols[j] and largest == largest:
            out[2 + n_edge + j] += changed
        else:
            out[2 + n_edge + j] += count_above(dbuf, n, tols[j])
    for j in range(n_edge):
        if not far > edges[j]:
            break
        out[2 + j] += changed if near > edges[j] else count_above(ubuf, n, edges[j])
    last = 2 + n_edge + n_tol
    out[last] = max(out[last], np.int64(top))


@jit
def pair(x2, y2, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mask, do_rc, rows, cols, edges, out, dbuf, ubuf):
    """:func:`changes` and, where any, :func:`segment_stats` over every row of integer views ``x2`` -> ``y2``
    (R × C) in segments of ``dbuf.size`` entries (the caller's choice: bits_jit.SEG); mask_mode 1: the
    bits differ, 2: |Δ| > mask_tol, 0: none. ``mask`` (R × C; 1 × 1 when mask_mode is 0), ``rows`` (int64)
    and ``cols`` (int32: added to) are filled when ``do_rc``."""
    n_rows, n_cols = x2.shape
    for r in range(n_rows):
        row_changed = 0
        for c0 in range(0, n_cols, dbuf.size):
            c1 = min(n_cols, c0 + dbuf.size)
            xr = x2[r, c0:c1]
            yr = y2[r, c0:c1]
            mr = mask[r, c0:c1] if mask_mode else mask[0, 0:0]
            cr = cols[c0:c1] if do_rc else cols[0:0]
            changed = changes(xr, yr, mask_mode, mr, do_rc, cr)
            if changed:  # (with mask_mode 2 the caller hands a mask of zeros)
                segment_stats(
                    xr, yr, changed, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mr, edges, out, dbuf, ubuf
                )
            row_changed += changed
        if do_rc:
            rows[r] = row_changed
