"""The numba definitions behind :mod:`subnetviz.analysis.bits_jit` (imported only through it: this
module needs numba at import time). Bit casts are LLVM intrinsics; the value decoding and the ULP
distance are overloads chosen by the integer type of the view (int16: bf16, uint16: fp16, int32:
fp32, int64: fp64), so one kernel source compiles to one specialised loop per dtype. The FP8 pass
reuses the float pass' :func:`segment_stats`, so FP8 effective weights get exactly the statistics two
float32 tensors get.

The kernels that call one another stay in this one file: numba's on-disk cache notices a change of
the file a kernel is defined in, not of another file whose kernels or intrinsics it calls.
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


# The exponent bits of the float whose bit pattern an integer view holds (bf16: int16, fp16: uint16 in
# pair_pass, fp32: int32, fp64: int64): a pattern with all of them set is NaN or Inf.
EXPONENT_BITS = {(16, True): 0x7F80, (16, False): 0x7C00, (32, True): 0x7F800000, (64, True): 0x7FF0000000000000}


@intrinsic
def exponent_bits(typingctx, v):  # EXPONENT_BITS of v's integer type
    key = (v.bitwidth, v.signed)
    if key not in EXPONENT_BITS:
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(key[0]), EXPONENT_BITS[key])

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
def pack_bits(m, n, bits, off):
    """Write the 0/1 bytes ``m[:n]`` into the bit array ``bits`` (uint8, np.packbits order: the first entry
    of a byte is its top bit) from bit ``off`` on. Segments are written in order, each right after the
    one before: a byte is assigned by the segment that holds its first bit (its later bits are 0 until
    written) and OR-ed into by the next, so ``bits`` needs no zeroing (:func:`clear_bits` for a segment
    with no change)."""
    k = 0
    while k < n and (off + k) & 7:  # up to the next byte boundary
        p = off + k
        bits[p >> 3] |= np.uint8(m[k] << (7 - (p & 7)))
        k += 1
    whole = (n - k) >> 3
    at = (off + k) >> 3
    for j in range(whole):
        q = k + 8 * j
        bits[at + j] = np.uint8(
            (m[q] << 7)
            | (m[q + 1] << 6)
            | (m[q + 2] << 5)
            | (m[q + 3] << 4)
            | (m[q + 4] << 3)
            | (m[q + 5] << 2)
            | (m[q + 6] << 1)
            | m[q + 7]
        )
    k += 8 * whole
    if k < n:  # a byte begins here: assigned
        bits[(off + k) >> 3] = np.uint8(m[k] << 7)
        k += 1
    while k < n:
        p = off + k
        bits[p >> 3] |= np.uint8(m[k] << (7 - (p & 7)))
        k += 1


@jit
def clear_bits(n, bits, off):
    """:func:`pack_bits` of ``n`` zeros from bit ``off`` on: the bytes that begin inside the range are set
    to 0 (a byte begun by the segment before keeps its bits; these are 0 in it already)."""
    for j in range((off + 7) >> 3, (off + n + 7) >> 3):
        bits[j] = 0


@jit
def pair(
    x2, y2, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mask, bits, do_rc, rows, cols, edges, out, dbuf, ubuf
):
    """:func:`changes` and, where any, :func:`segment_stats` over every row of integer views ``x2`` -> ``y2``
    (R × C, C-contiguous) in segments of at most ``dbuf.size`` entries (the caller's choice: bits_jit.SEG);
    mask_mode 1: the bits differ, 2: |Δ| > mask_tol, 0: none. The mask goes to ``mask`` (uint8, R × C,
    zeroed for mode 2), or, when ``bits`` is not empty, bit-packed into ``bits`` (R·C bits in np.packbits
    order, every byte written; ``mask`` then holds one segment: 1 × SEG), with no full-size mask written.
    ``rows`` (int64) and ``cols`` (int32: added to) are filled when ``do_rc``. Rows shorter than a
    segment are taken several at a time (:func:`_short_rows`): one statistics call per block of rows.

    The finite check of both tensors costs no pass of its own: :func:`segment_stats` takes |Δ| of every
    entry of a segment with a change, and a NaN / Inf on either side makes that |Δ| NaN / Inf (the same
    Inf on both sides too: Inf - Inf is NaN), which it keeps as the largest; a segment with no change
    (the same bits on both sides) has its ``x2`` entries checked for all their exponent bits
    (:func:`any_marked`, over bytes still in L1), and ``out``'s last entry is set to 1 if one has them."""
    if x2.shape[1] * 2 <= dbuf.size and x2.shape[0] > 1:
        _short_rows(
            x2,
            y2,
            lut,
            tols,
            eta,
            rel_nonzero,
            mask_mode,
            mask_tol,
            mask,
            bits,
            do_rc,
            rows,
            cols,
            edges,
            out,
            dbuf,
            ubuf,
        )
        return
    n_rows, n_cols = x2.shape
    packed = bits.size > 0
    marked = False
    for r in range(n_rows):
        row_changed = 0
        for c0 in range(0, n_cols, dbuf.size):
            c1 = min(n_cols, c0 + dbuf.size)
            xr = x2[r, c0:c1]
            yr = y2[r, c0:c1]
            if packed:  # every entry of the segment is written (mode 2: by segment_stats, when any changed)
                mr = mask[0, 0 : c1 - c0]
            else:
                mr = mask[r, c0:c1] if mask_mode else mask[0, 0:0]
            cr = cols[c0:c1] if do_rc else cols[0:0]
            changed = changes(xr, yr, mask_mode, mr, do_rc, cr)
            if changed:  # (with mask_mode 2 the mask starts zeroed)
                segment_stats(
                    xr, yr, changed, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mr, edges, out, dbuf, ubuf
                )
                if packed:
                    pack_bits(mr, c1 - c0, bits, r * n_cols + c0)
            else:
                marked = marked or any_marked(xr, exponent_bits(xr[0]))
                if packed:
                    clear_bits(c1 - c0, bits, r * n_cols + c0)
            row_changed += changed
        if do_rc:
            rows[r] = row_changed
    out[out.size - 1] = marked


@jit
def _short_rows(
    x2, y2, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mask, bits, do_rc, rows, cols, edges, out, dbuf, ubuf
):
    """:func:`pair` for rows of at most half a segment: blocks of whole rows (contiguous in a C-contiguous
    view) fill a segment; :func:`changes` runs per row (its row and column counts), :func:`segment_stats`
    and the packing once per block."""
    n_rows, n_cols = x2.shape
    packed = bits.size > 0
    per = dbuf.size // n_cols
    xf = x2.reshape(-1)
    yf = y2.reshape(-1)
    mf = mask.reshape(-1)
    marked = False
    for r0 in range(0, n_rows, per):
        r1 = min(n_rows, r0 + per)
        lo = r0 * n_cols
        hi = r1 * n_cols
        if packed:
            mr = mf[0 : hi - lo]
        else:
            mr = mf[lo:hi] if mask_mode else mf[0:0]
        changed = 0
        for r in range(r0, r1):
            o = (r - r0) * n_cols
            mrow = mr[o : o + n_cols] if mask_mode else mr
            c = changes(xf[lo + o : lo + o + n_cols], yf[lo + o : lo + o + n_cols], mask_mode, mrow, do_rc, cols)
            if do_rc:
                rows[r] = c
            changed += c
        if changed:
            xs, ys = xf[lo:hi], yf[lo:hi]
            segment_stats(xs, ys, changed, lut, tols, eta, rel_nonzero, mask_mode, mask_tol, mr, edges, out, dbuf, ubuf)
            if packed:
                pack_bits(mr, hi - lo, bits, lo)
        else:
            marked = marked or any_marked(xf[lo:hi], exponent_bits(xf[0]))
            if packed:
                clear_bits(hi - lo, bits, lo)
    out[out.size - 1] = marked


# --- FP8 codes: decoding, the effective comparison with block scales, code steps ---------------------
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
def or_marked(
    typingctx, acc, code, pattern
):  # acc | ((code & pattern) == pattern): acc uint8, code and pattern one integer type
    if not isinstance(code, types.Integer) or code != pattern:
        return None

    def codegen(context, builder, sig, args):
        i8 = ir.IntType(8)
        hit = builder.icmp_unsigned("==", builder.and_(args[1], args[2]), args[2])
        return builder.or_(args[0], builder.zext(hit, i8))

    return types.uint8(types.uint8, code, pattern), codegen


@jit
def any_marked(codes, pattern):
    """Whether any code (1-D integers of ``pattern``'s type) has all the bits of ``pattern`` set: with the
    sign masked off, an FP8 code is NaN / Inf exactly when it has all of them (e4m3fn: 0x7F, e5m2: 0x7C),
    and an IEEE float's bit pattern when its exponent bits are all set (bf16: 0x7F80 in its int16 view,
    fp16 0x7C00, fp32 0x7F800000, fp64 0x7FF0000000000000). One pass, a vector of codes at a time and no
    temporaries."""
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
    x2, y2, fmt, sa, sb, b0, b1, tols, eta, rel_nonzero, mask_mode, mask, do_rc, rows, cols, edges, out, code_out, bufs
):
    """FP8 codes ``x2`` -> ``y2`` (uint8, R × C) with block scales ``sa`` / ``sb`` (float32, ⌈R/b0⌉ × ⌈C/b1⌉):
    ``code_out`` = [changed codes, #(code steps > edge)...]; the effective weights w = fl(value(code) ×
    scale) (float32, as the dense dequantisation forms them) into ``out``, ``mask`` (mask_mode 1: the
    effective bits differ; 0: none), ``rows``, ``cols`` exactly as :func:`pair` compares two float32
    tensors. ``fmt``: (man_bits, bias, special, sub_scale) of :func:`fp8_value`; ``bufs``: (dbuf, ubuf,
    ea, eb, sa_row, sb_row). Without a mask (counts), ``mask`` is 1 × SEG (``cols`` SEG long): scratch.

    Per segment, one loop takes the code steps and the changed codes, dequantises both sides in
    registers, writes the effective weights' bits (``ea`` / ``eb``) and their changed flags (mask,
    column counts); :func:`segment_stats` then takes the float statistics where any weight changed.
    A segment whose codes and scales are all the same on both sides is skipped: nothing changed."""
    man_bits, bias, special, sub_scale = fmt
    dbuf, ubuf, ea, eb, sa_row, sb_row = bufs
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
