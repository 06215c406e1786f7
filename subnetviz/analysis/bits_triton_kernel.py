"""The Triton kernel of :mod:`subnetviz.analysis.bits_triton` (imported only when a GPU pass runs, so
importing the analysis never loads Triton)."""

import triton
import triton.language as tl


@triton.jit
def _pair_kernel(
    x_ptr,
    y_ptr,
    R,
    C,
    tol_ptr,
    edge_ptr,
    part_ptr,
    rows_ptr,
    cols_ptr,
    bits_ptr,
    NT: tl.constexpr,
    NE: tl.constexpr,
    K: tl.constexpr,
    FLOAT: tl.constexpr,
    WIDE: tl.constexpr,
    CTYPE: tl.constexpr,
    BITS: tl.constexpr,
    MAGNITUDE: tl.constexpr,
    REL_NONZERO: tl.constexpr,
    KEEP: tl.constexpr,
    ROW_COL: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
):
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    r = pr * BR + tl.arange(0, BR)
    c = pc * BC + tl.arange(0, BC)
    inside = (r[:, None] < R) & (c[None, :] < C)
    off = r[:, None].to(tl.int64) * C + c[None, :]
    xi = tl.load(x_ptr + off, mask=inside, other=0)
    yi = tl.load(y_ptr + off, mask=inside, other=0)
    ne = xi != yi  # outside the tensor both are 0: equal, and Δ = 0, distance 0
    xs = xi.to(FLOAT, bitcast=True).to(CTYPE)
    ys = yi.to(FLOAT, bitcast=True).to(CTYPE)
    d = tl.abs(ys - xs)
    x = xi.to(WIDE)
    y = yi.to(WIDE)
    mx = x & MAGNITUDE
    my = y & MAGNITUDE
    dist = tl.where((x ^ y) >= 0, tl.abs(my - mx), mx + my)
    slot = part_ptr + (pr * tl.num_programs(1) + pc).to(tl.int64) * K
    nei = ne.to(tl.int32)
    tl.store(slot, tl.sum(tl.sum(nei, axis=1), axis=0).to(tl.int64))
    for k in tl.static_range(NT):
        t = tl.load(tol_ptr + k)
        tl.store(slot + 1 + k, tl.sum(tl.sum((d > t).to(tl.int32), axis=1), axis=0).to(tl.int64))
    if REL_NONZERO:
        rel = dist > 0
    else:
        eta = tl.load(tol_ptr + NT)
        rel = d > eta * tl.maximum(tl.abs(xs), tl.abs(ys))
    tl.store(slot + 1 + NT, tl.sum(tl.sum(rel.to(tl.int32), axis=1), axis=0).to(tl.int64))
    for j in tl.static_range(NE):
        e = tl.load(edge_ptr + j)
        tl.store(slot + 2 + NT + j, tl.sum(tl.sum((dist > e).to(tl.int32), axis=1), axis=0).to(tl.int64))
    dbits = d.to(BITS, bitcast=True)
    tl.store(slot + 2 + NT + NE, tl.max(tl.max(dbits, axis=1), axis=0).to(tl.int64))
    if ROW_COL:
        tl.atomic_add(rows_ptr + r, tl.sum(nei, axis=1), mask=r < R)
        tl.atomic_add(cols_ptr + c, tl.sum(nei, axis=0), mask=c < C)
    if KEEP > 0:
        if KEEP == 1:
            keep = nei
        else:
            keep = (d > tl.load(tol_ptr + NT + 1)).to(tl.int32)
        weights = 1 << (7 - tl.arange(0, 8))
        byte = tl.sum(tl.reshape(keep, (BR, BC // 8, 8)) * weights[None, None, :], axis=2)
        bc = pc * (BC // 8) + tl.arange(0, BC // 8)
        boff = r[:, None].to(tl.int64) * (C // 8) + bc[None, :]
        tl.store(bits_ptr + boff, byte.to(tl.uint8), mask=(r[:, None] < R) & (bc[None, :] < C // 8))
