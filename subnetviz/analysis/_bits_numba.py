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
def fp8_value(typingctx, code, man_bits, bias, special, sub_scale):
    """float32 value of an FP8 code (uint8) by its fields, in vector-friendly integer ops (no table
    gather): sign s, exponent e, mantissa m (``man_bits`` wide). Normal: the float32 with exponent
    e - bias + 127 and m at the top of its mantissa; e = 0: m × ``sub_scale`` (2^(1 - bias - man_bits),
    exact); codes whose magnitude is at least ``special`` (e4m3fn: 0x7F, e5m2: 0x7C): Inf / NaN with
    the quiet bit set where m != 0, as torch's conversion gives them (checked against it in the tests)."""

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        c = lambda v: ir.Constant(i32, v)  # noqa: E731
        b = builder.zext(args[0], i32)
        mb = builder.trunc(args[1], i32) if args[1].type.width > 32 else args[1]
        bias_ = builder.trunc(args[2], i32) if args[2].type.width > 32 else args[2]
        spec = builder.trunc(args[3], i32) if args[3].type.width > 32 else args[3]
        sign = builder.shl(builder.lshr(b, c(7)), c(31))
        mag = builder.and_(b, c(0x7F))
        e = builder.lshr(mag, mb)
        m = builder.and_(mag, builder.sub(builder.shl(c(1), mb), c(1)))
        m_top = builder.shl(m, builder.sub(c(23), mb))
        normal = builder.or_(builder.shl(builder.add(builder.sub(e, bias_), c(127)), c(23)), m_top)
        sub = builder.bitcast(builder.fmul(builder.sitofp(m, ir.FloatType()), args[4]), i32)
        quiet = builder.shl(builder.zext(builder.icmp_unsigned("!=", m, c(0)), i32), c(22))
        special_bits = builder.or_(builder.or_(c(0x7F800000), m_top), quiet)
        v = builder.select(builder.icmp_unsigned("==", e, c(0)), sub, normal)
        v = builder.select(builder.icmp_unsigned(">=", mag, spec), special_bits, v)
        return builder.bitcast(builder.or_(v, sign), ir.FloatType())

    return types.float32(code, man_bits, bias, special, types.float32), codegen


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


@jit
def count_above(buf, n, edge):
    c = np.int32(0)
    for k in range(np.uint64(n)):
        c = add32(c, flag32(buf[k] > edge))
    return c


@jit
def segment(xr, yr, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mr, do_rc, cr, edges, out, dbuf, ubuf):
    """Every statistic of one segment of integer views ``xr`` -> ``yr`` (1-D, at most ``dbuf.size`` entries), added
    into ``out`` = [changed, rel, #(ULP > edge)..., #(|Δ| > tol)..., largest |Δ| as bits]; writes the
    segment's mask into ``mr`` (mask_mode 1: the bits differ, 2: |Δ| > mask_tol, 0: none) and adds its
    changed entries to the column counts ``cr`` (when ``do_rc``). Returns the segment's changed count.
    ``dbuf`` / ``ubuf``: buffers of the compute dtype / the ULP type."""
    n = xr.size
    n_tol, n_edge = tols.size, edges.size
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
    if changed == 0:  # (with mask_mode 2 the caller hands a mask of zeros)
        return 0
    top = float_bits(eta - eta)  # typed zeros: the bits of +0.0, a distance of 0
    far = ulp(xr[0], xr[0])
    rel = np.int32(0)
    if rel_nonzero:  # η below half an ULP: the rule is Δ != 0, i.e. a nonzero ULP distance
        for k in range(np.uint64(n)):
            xv = xr[k]
            yv = yr[k]
            d = abs(decode(yv, lut) - decode(xv, lut))
            dbuf[k] = d
            top = max(float_bits(d), top)  # |Δ| >= 0: its bits order like the values, NaN above Inf
            u = ulp(xv, yv)
            ubuf[k] = u
            far = max(u, far)
            rel = add32(rel, flag32(u != 0))
    else:
        for k in range(np.uint64(n)):
            xv = xr[k]
            yv = yr[k]
            xf = decode(xv, lut)
            yf = decode(yv, lut)
            d = abs(yf - xf)
            dbuf[k] = d
            top = max(float_bits(d), top)
            u = ulp(xv, yv)
            ubuf[k] = u
            far = max(u, far)
            rel = add32(rel, flag32(d > eta * max(abs(xf), abs(yf))))
    if mask_mode == 2:
        for k in range(np.uint64(n)):
            mr[k] = np.uint8(dbuf[k] > mask_tol)
    out[0] += changed
    out[1] += rel
    largest = bits_value(top, eta)
    for j in range(n_tol):  # ascending: the first tolerance the largest |Δ| does not pass ends it
        if not largest > tols[j]:
            break
        out[2 + n_edge + j] += count_above(dbuf, n, tols[j])
    for j in range(n_edge):
        if not far > edges[j]:
            break
        out[2 + j] += count_above(ubuf, n, edges[j])
    last = 2 + n_edge + n_tol
    out[last] = max(out[last], np.int64(top))
    return changed


@jit
def pair(x2, y2, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mask, do_rc, rows, cols, edges, out, dbuf, ubuf):
    """:func:`segment` over every row of integer views ``x2`` -> ``y2`` (R × C) in segments of ``dbuf.size`` entries
    (the caller's choice: bits_jit.SEG);
    ``mask`` (R × C; 1 × 1 when mask_mode is 0), ``rows`` (int64) and ``cols`` (int32: added to) are filled
    when ``do_rc``."""
    n_rows, n_cols = x2.shape
    for r in range(n_rows):
        row_changed = 0
        for c0 in range(0, n_cols, dbuf.size):
            c1 = min(n_cols, c0 + dbuf.size)
            mr = mask[r, c0:c1] if mask_mode else mask[0, 0:0]
            cr = cols[c0:c1] if do_rc else cols[0:0]
            row_changed += segment(
                x2[r, c0:c1],
                y2[r, c0:c1],
                lut,
                tols,
                eta,
                rel_nonzero,
                mask_mode,
                mask_tol,
                mr,
                do_rc,
                cr,
                edges,
                out,
                dbuf,
                ubuf,
            )
        if do_rc:
            rows[r] = row_changed


@jit
def fp8_values(codes, man_bits, bias, special, sub_scale, out):
    """:func:`fp8_value` of every code (1-D uint8) into ``out`` (float32): what the tests check against torch."""
    for k in range(codes.size):
        out[k] = fp8_value(codes[k], man_bits, bias, special, sub_scale)


@jit
def fp8_blocks(
    x2,
    y2,
    lut8,
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
    scale) (float32, as the dense dequantisation forms them) compared by :func:`segment` into ``out``,
    ``mask``, ``rows``, ``cols`` exactly as :func:`pair` compares two float32 tensors."""
    n_rows, n_cols = x2.shape
    n_edge = edges.size
    dummy = lut8[0:0]
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
            steps = np.int32(0)
            changed = np.int32(0)
            for k in range(np.uint64(n)):
                u = ulp(xr[k], yr[k])  # code steps (sign-magnitude bytes)
                ubuf[k] = u
                steps = max(steps, u)
                changed = add32(changed, flag32(xr[k] != yr[k]))
                ea[k] = float_bits(fp8_value(xr[k], man_bits, bias, special, sub_scale) * sar[k])
                eb[k] = float_bits(fp8_value(yr[k], man_bits, bias, special, sub_scale) * sbr[k])
            code_out[0] += changed
            for j in range(n_edge):
                if not steps > edges[j]:
                    break
                code_out[1 + j] += count_above(ubuf, n, edges[j])
            mr = mask[r, c0:c1] if mask_mode else mask[0, 0:0]
            cr = cols[c0:c1] if do_rc else cols[0:0]
            row_changed += segment(
                ea[:n], eb[:n], dummy, tols, eta, rel_nonzero, mask_mode, eta, mr, do_rc, cr, edges, out, dbuf, ubuf
            )
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
