"""The Triton kernel of :mod:`subnetviz.analysis.bits_triton` (imported only when a GPU pass runs, so
importing the analysis never loads Triton)."""

import triton
import triton.language as tl


@triton.jit
def _tile(
    x_ptr, y_ptr, off, inside, FLOAT: tl.constexpr, WIDE: tl.constexpr, CTYPE: tl.constexpr, MAGNITUDE: tl.constexpr
):
    """One tile of both integer views: (changed, a, b in the compared type, |Δ|, ULP distance). ULP
    distances are taken in a wider integer, so no sign-crossing branch is needed."""
    xi = tl.load(x_ptr + off, mask=inside, other=0)
    yi = tl.load(y_ptr + off, mask=inside, other=0)
    xs = xi.to(FLOAT, bitcast=True).to(CTYPE)
    ys = yi.to(FLOAT, bitcast=True).to(CTYPE)
    x = xi.to(WIDE)
    y = yi.to(WIDE)
    mx = x & MAGNITUDE
    my = y & MAGNITUDE
    return xi != yi, xs, ys, tl.abs(ys - xs), tl.where((x ^ y) >= 0, tl.abs(my - mx), mx + my)


@triton.jit
def _store_bits(bits_ptr, keep, r, pc, R, C, BR: tl.constexpr, BC: tl.constexpr):
    """A tile's 0/1 ``keep`` as bytes in ``np.packbits`` order (8 columns a byte; ``C`` a multiple of 8)."""
    weights = 1 << (7 - tl.arange(0, 8))
    byte = tl.sum(tl.reshape(keep, (BR, BC // 8, 8)) * weights[None, None, :], axis=2)
    bc = pc * (BC // 8) + tl.arange(0, BC // 8)
    boff = r[:, None].to(tl.int64) * (C // 8) + bc[None, :]
    tl.store(bits_ptr + boff, byte.to(tl.uint8), mask=(r[:, None] < R) & (bc[None, :] < C // 8))


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
    ne, xs, ys, d, dist = _tile(x_ptr, y_ptr, off, inside, FLOAT, WIDE, CTYPE, MAGNITUDE)
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
        _store_bits(bits_ptr, nei if KEEP == 1 else (d > tl.load(tol_ptr + NT + 1)).to(tl.int32), r, pc, R, C, BR, BC)


@triton.jit
def _pair_kernel_rows(
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
    ITER: tl.constexpr,
):
    """:func:`_pair_kernel` over ``ITER`` row tiles per program, reducing once at the end: per entry of the
    tile, counts live in 8-bit fields of two int64 accumulators (at most one increment per field and
    tile, so ``ITER`` <= 255). ``hist_t``: field m counts entries above exactly m of the (ascending)
    tolerances, field NT + 1 the η rule; ``hist_e``: field m counts ULP distances above exactly m of
    (0, *edges). A count "above tolerance k" is then the sum of the fields above k."""
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    c = pc * BC + tl.arange(0, BC)
    cin = c < C
    hist_t = tl.zeros((BR, BC), dtype=tl.int64)
    hist_e = tl.zeros((BR, BC), dtype=tl.int64)
    ncol = tl.zeros((BR, BC), dtype=tl.int32)
    top = tl.zeros((BR, BC), dtype=BITS)
    one = tl.full((BR, BC), 1, dtype=tl.int64)
    for it in range(ITER):
        r = (pr * ITER + it) * BR + tl.arange(0, BR)
        inside = (r[:, None] < R) & cin[None, :]
        off = r[:, None].to(tl.int64) * C + c[None, :]
        # outside the tensor both are 0: equal, Δ = 0, distance 0 (only field 0 counts them)
        ne, xs, ys, d, dist = _tile(x_ptr, y_ptr, off, inside, FLOAT, WIDE, CTYPE, MAGNITUDE)
        nei = ne.to(tl.int32)
        ncol += nei
        mt = tl.zeros((BR, BC), dtype=tl.int32)
        for k in tl.static_range(NT):
            mt += (d > tl.load(tol_ptr + k)).to(tl.int32)
        hist_t += one << (8 * mt).to(tl.int64)
        if not REL_NONZERO:
            eta = tl.load(tol_ptr + NT)
            hist_t += (d > eta * tl.maximum(tl.abs(xs), tl.abs(ys))).to(tl.int64) << (8 * (NT + 1))
        me = (dist > 0).to(tl.int32)
        for j in tl.static_range(NE):
            me += (dist > tl.load(edge_ptr + j)).to(tl.int32)
        hist_e += one << (8 * me).to(tl.int64)
        top = tl.maximum(top, d.to(BITS, bitcast=True))
        if ROW_COL:
            tl.atomic_add(rows_ptr + r, tl.sum(nei, axis=1), mask=r < R)
        if KEEP > 0:
            keep = nei if KEEP == 1 else (d > tl.load(tol_ptr + NT + 1)).to(tl.int32)
            _store_bits(bits_ptr, keep, r, pc, R, C, BR, BC)
    slot = part_ptr + (pr * tl.num_programs(1) + pc).to(tl.int64) * K
    tl.store(slot, tl.sum(tl.sum(ncol, axis=1), axis=0).to(tl.int64))
    above = tl.zeros((), dtype=tl.int64)
    for i in tl.static_range(NT):  # fields NT .. 1: tolerance NT-1 .. 0
        m = NT - i
        above += tl.sum(tl.sum(((hist_t >> (8 * m)) & 255).to(tl.int32), axis=1), axis=0).to(tl.int64)
        tl.store(slot + m, above)
    edges_above = tl.zeros((), dtype=tl.int64)
    for i in tl.static_range(NE):  # fields NE+1 .. 2: edge NE-1 .. 0
        m = NE + 1 - i
        edges_above += tl.sum(tl.sum(((hist_e >> (8 * m)) & 255).to(tl.int32), axis=1), axis=0).to(tl.int64)
        tl.store(slot + 2 + NT + (m - 2), edges_above)
    if REL_NONZERO:  # distance > 0: fields 1 and up
        rel = edges_above + tl.sum(tl.sum(((hist_e >> 8) & 255).to(tl.int32), axis=1), axis=0).to(tl.int64)
    else:
        rel = tl.sum(tl.sum(((hist_t >> (8 * (NT + 1))) & 255).to(tl.int32), axis=1), axis=0).to(tl.int64)
    tl.store(slot + 1 + NT, rel)
    tl.store(slot + 2 + NT + NE, tl.max(tl.max(top, axis=1), axis=0).to(tl.int64))
    if ROW_COL:
        tl.atomic_add(cols_ptr + c, tl.sum(ncol, axis=0), mask=cin)
