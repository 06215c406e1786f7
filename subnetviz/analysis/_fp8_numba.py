"""The numba definitions of the FP8 and 1-byte code passes behind :mod:`subnetviz.analysis.bits_jit`
(imported only through it: this module needs numba at import time). The effective comparison reuses
the float pass' pieces of :mod:`~subnetviz.analysis._bits_numba` (:func:`segment_stats`), so FP8
effective weights get exactly the statistics two float32 tensors get.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from subnetviz.analysis._bits_numba import add32, count_above, flag32, float_bits, jit, segment_stats, ulp, xor_or


@intrinsic
def fp8_value(typingctx, code, man_bits, bias, special, sub_scale):
    """float32 value of an FP8 code (uint8) by its fields, in vector-friendly integer ops (no table
    gather): sign s, magnitude bits g (exponent e, mantissa m ``man_bits`` wide). Normal (e > 0): g
    shifted to the top of a float32's exponent and mantissa, plus (127 - bias) in the exponent; e = 0:
    g × ``sub_scale`` (2^(1 - bias - man_bits), exact, computed on normal floats: no denormal input);
    magnitudes of at least ``special`` (e4m3fn: 0x7F, e5m2: 0x7C): Inf / NaN with the quiet bit set
    where m != 0, as torch's conversion gives them (every code checked against it in the tests)."""

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        c = lambda v: ir.Constant(i32, v)  # noqa: E731
        mb, bias_, spec = (builder.trunc(a, i32) if a.type.width > 32 else a for a in args[1:4])
        b = builder.zext(args[0], i32)
        sign = builder.shl(builder.lshr(b, c(7)), c(31))
        mag = builder.and_(b, c(0x7F))
        top = builder.shl(mag, builder.sub(c(23), mb))  # e and m in a float32's exponent and mantissa
        normal = builder.add(top, builder.shl(builder.sub(c(127), bias_), c(23)))
        sub = builder.bitcast(builder.fmul(builder.sitofp(mag, ir.FloatType()), args[4]), i32)
        m = builder.and_(mag, builder.sub(builder.shl(c(1), mb), c(1)))
        quiet = builder.shl(builder.zext(builder.icmp_unsigned("!=", m, c(0)), i32), c(22))
        special_bits = builder.or_(builder.or_(c(0x7F800000), top), quiet)
        v = builder.select(builder.icmp_unsigned("<", mag, builder.shl(c(1), mb)), sub, normal)
        v = builder.select(builder.icmp_unsigned(">=", mag, spec), special_bits, v)
        return builder.bitcast(builder.or_(v, sign), ir.FloatType())

    return types.float32(code, man_bits, bias, special, types.float32), codegen


@intrinsic
def or_marked(typingctx, acc, code, pattern):  # acc | ((code & pattern) == pattern), all uint8
    def codegen(context, builder, sig, args):
        i8 = ir.IntType(8)
        hit = builder.icmp_unsigned("==", builder.and_(args[1], args[2]), args[2])
        return builder.or_(args[0], builder.zext(hit, i8))

    return types.uint8(types.uint8, types.uint8, types.uint8), codegen


@jit
def any_marked(codes, pattern):
    """Whether any code (1-D uint8) has all the bits of ``pattern`` set: with the sign masked off, an FP8
    code is NaN / Inf exactly when it has all of them (e4m3fn: 0x7F, e5m2: 0x7C). One pass, 64 codes a
    vector and no temporaries."""
    acc = np.uint8(0)
    for k in range(np.uint64(codes.size)):
        acc = or_marked(acc, codes[k], pattern)
    return acc != 0


@jit
def fp8_values(codes, man_bits, bias, special, sub_scale, out):
    """:func:`fp8_value` of every code (1-D uint8) into ``out`` (float32): what the tests check against torch."""
    for k in range(codes.size):
        out[k] = fp8_value(codes[k], man_bits, bias, special, sub_scale)


@jit
def unchanged(xr, yr, sar, sbr):
    """True where a segment's codes and the scales of its columns are bitwise the same on both sides:
    then its effective weights are too (the same product of the same operands)."""
    acc = np.uint8(0)
    for k in range(np.uint64(xr.size)):
        acc = xor_or(acc, xr[k], yr[k])
    if acc != 0:
        return False
    scale = np.int32(0)
    for k in range(np.uint64(sar.size)):
        scale = xor_or(scale, float_bits(sar[k]), float_bits(sbr[k]))
    return scale == 0


@jit
def fp8_blocks(
    x2,
    y2,
    man_bits,
    bias,
    special,
    sub_scale,
    sa,
    sb,
    b0,
    b1,
    tols,
    eta,
    rel_nonzero,
    mask_mode,
    mask,
    do_rc,
    rows,
    cols,
    edges,
    out,
    code_out,
    dbuf,
    ubuf,
    ea,
    eb,
    sa_row,
    sb_row,
):
    """FP8 codes ``x2`` -> ``y2`` (uint8, R × C) with block scales ``sa`` / ``sb`` (float32, ⌈R/b0⌉ × ⌈C/b1⌉):
    ``code_out`` = [changed codes, #(code steps > edge)...]; the effective weights w = fl(value(code) ×
    scale) (float32, as the dense dequantisation forms them) into ``out``, ``mask`` (mask_mode 1: the
    effective bits differ; 0: none), ``rows``, ``cols`` exactly as :func:`~subnetviz.analysis._bits_numba.pair`
    compares two float32 tensors. Where the caller wants no mask (no counts), ``mask`` is 1 × ``dbuf.size``
    (``cols`` ``dbuf.size`` long): scratch the loop writes into.

    Per segment, one loop takes the code steps and the changed codes, dequantises both sides in
    registers, writes the effective weights' bits (``ea`` / ``eb``) and their changed flags (mask,
    column counts); :func:`segment_stats` then takes the float statistics where any weight changed.
    A segment whose codes and scales are all the same on both sides is skipped: nothing changed."""
    n_rows, n_cols = x2.shape
    n_edge = edges.size
    no_lut = sa_row[0:0]
    zero = eta - eta  # no mask at a tolerance here (mask_mode 0 in segment_stats): the mask is written above
    for r in range(n_rows):
        if r % b0 == 0:  # the scale of every column of this block row
            for c in range(n_cols):
                sa_row[c] = sa[r // b0, c // b1]
                sb_row[c] = sb[r // b0, c // b1]
        row_changed = 0
        for c0 in range(0, n_cols, dbuf.size):
            c1 = min(n_cols, c0 + dbuf.size)
            n = c1 - c0
            xr = x2[r, c0:c1]
            yr = y2[r, c0:c1]
            sar = sa_row[c0:c1]
            sbr = sb_row[c0:c1]
            mr = mask[r, c0:c1] if mask_mode else mask[0, 0:n]
            cr = cols[c0:c1] if do_rc else cols[0:n]
            if unchanged(xr, yr, sar, sbr):
                if mask_mode:
                    mr[:] = 0
                continue
            steps = np.int32(0)
            changed = np.int32(0)
            eff = np.int32(0)
            for k in range(np.uint64(n)):
                xv = xr[k]
                yv = yr[k]
                u = ulp(xv, yv)  # code steps (sign-magnitude bytes)
                ubuf[k] = u
                steps = max(steps, u)
                changed = add32(changed, flag32(xv != yv))
                a = float_bits(fp8_value(xv, man_bits, bias, special, sub_scale) * sar[k])
                b = float_bits(fp8_value(yv, man_bits, bias, special, sub_scale) * sbr[k])
                ea[k] = a
                eb[k] = b
                ne = flag32(a != b)
                mr[k] = np.uint8(ne)
                cr[k] = add32(cr[k], ne)
                eff = add32(eff, ne)
            code_out[0] += changed
            for j in range(n_edge):
                if not steps > edges[j]:
                    break
                code_out[1 + j] += count_above(ubuf, n, edges[j])
            if eff:
                segment_stats(ea[:n], eb[:n], eff, no_lut, tols, eta, rel_nonzero, 0, zero, mr, edges, out, dbuf, ubuf)
            row_changed += eff
        if do_rc:
            rows[r] = row_changed


@jit
def code_counts(x, y, sign_magnitude, edges, out, ubuf):
    """Stored 1-byte codes ``x`` -> ``y`` (1-D): ``out`` = [changed codes, #(steps > edge)...]; steps are
    code steps of sign-magnitude FP8 bytes (``sign_magnitude``) or the difference of integer codes."""
    n = x.size
    for c0 in range(0, n, ubuf.size):
        c1 = min(n, c0 + ubuf.size)
        xr = x[c0:c1]
        yr = y[c0:c1]
        m = c1 - c0
        changed = np.int32(0)
        far = np.int32(0)
        if sign_magnitude:
            for k in range(np.uint64(m)):
                u = ulp(xr[k], yr[k])
                ubuf[k] = u
                far = max(far, u)
                changed = add32(changed, flag32(xr[k] != yr[k]))
        else:
            for k in range(np.uint64(m)):
                u = np.int32(abs(np.int32(yr[k]) - np.int32(xr[k])))
                ubuf[k] = u
                far = max(far, u)
                changed = add32(changed, flag32(xr[k] != yr[k]))
        out[0] += changed
        for j in range(edges.size):
            if not far > edges[j]:
                break
            out[1 + j] += count_above(ubuf, m, edges[j])
