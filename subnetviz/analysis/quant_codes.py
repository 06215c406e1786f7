"""Stored codes: buffers, FP8 and integer codes compared as stored, and the FP8 block-scale pass.

Split from :mod:`subnetviz.analysis.quant` (which re-exports what the per-tensor dispatch uses):

- :func:`compare_buffer`, :func:`compare_codes`, :func:`check_finite_stored`: bitwise comparisons and
  the NaN/Inf check on codes' bit patterns;
- :func:`compare_blocks`: the effective comparison of FP8 codes with ``weight_scale_inv`` blocks in
  one pass over the codes. In a block whose scale is bitwise the same on both sides (finite, far from
  float32's range ends) w = fl(code × s) is injective in the code (FP8 values differ by ≥ 1/8
  relatively), so the effective weight changed exactly where the code did: the codes' comparison is
  the effective mask there, and only the changed entries are dequantised (gathered once) for the
  float statistics. Blocks whose scale changed are dequantised whole. The numbers are those of the
  dense pass (dequantise everything, then :func:`~subnetviz.analysis.sparsity.compare_pair`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from subnetviz.analysis import bits_jit
from subnetviz.analysis.bits import ULP_EDGES, check_finite, counts_above, ulp_bins, ulp_distance_bits
from subnetviz.analysis.sparsity import PairStats, SparsityOptions, compare_pair
from subnetviz.errors import CheckpointError, NonFiniteError

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
# compare_blocks runs when a block row holds at least this many entries (narrower tensors: the dense
# pass, whose per-band overhead is smaller) and on CPU.
FAST_MIN_BAND = 1 << 15
# |scale| in [2^-100, 2^100]: every FP8 value times it is a normal float32 (e5m2 spans 2^-16..57344).
_SAFE_SCALE = (2.0**-100, 2.0**100)
_BATCH = 1 << 20  # gathered entries compared per call of the float pass


def compare_buffer(a: torch.Tensor, b: torch.Tensor) -> int:
    """Entries of two buffers whose stored values differ (bitwise for floats). A dtype change is
    compared after casting ``a`` to ``b``'s dtype (the caller notes it)."""
    if a.dtype != b.dtype:
        a = a.to(b.dtype)
    if a.dtype.is_floating_point and a.dtype.itemsize in (2, 4, 8):
        ai, bi = a.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[a.dtype.itemsize]), b.contiguous()
        return int(torch.count_nonzero(ai != bi.view(ai.dtype)))
    return int(torch.count_nonzero(a != b))


def _code_steps(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Distance in code steps of changed 1-D code views: FP8 bit patterns are sign-magnitude
    (bits.ulp_distance_bits), integer codes two's complement (plain difference)."""
    if xa.dtype in FP8:
        return ulp_distance_bits(xa.view(torch.int8), xb.view(torch.int8), torch).to(torch.int64)
    return (xb.to(torch.int64) - xa.to(torch.int64)).abs()


def _code_counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, list[int]]:
    """(changed codes, #(steps > edge) per ULP edge) of two code tensors of one shape.

    On CPU in NumPy (flatnonzero is ~30x torch.nonzero on one thread), on a GPU in torch."""
    iv = torch.int8 if a.dtype in FP8 else a.dtype
    av, bv = a.reshape(-1).view(iv), b.reshape(-1).view(iv)
    if av.device.type == "cpu":
        x, y = av.numpy(), bv.numpy()
        if x.itemsize == 1 and bits_jit.kernels() is not None:  # one compiled pass, no index arrays
            return bits_jit.code_counts(x, y, a.dtype in FP8)
        idx = np.flatnonzero(x != y)
        if idx.size == 0:
            return 0, [0] * len(ULP_EDGES)
        xi, yi = x[idx], y[idx]
        if a.dtype in FP8:
            steps = ulp_distance_bits(xi, yi, np)
        else:
            steps = np.abs(yi.astype(np.int64) - xi.astype(np.int64))
        return int(idx.size), counts_above(steps, ULP_EDGES, np)
    idx = (av != bv).nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0, [0] * len(ULP_EDGES)
    steps = _code_steps(a.reshape(-1)[idx], b.reshape(-1)[idx])
    return int(idx.numel()), counts_above(steps, ULP_EDGES, torch)


_FP8_LUT: dict[torch.dtype, np.ndarray] = {}


def fp8_table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of each of the 256 codes of an FP8 dtype."""
    lut = _FP8_LUT.get(dtype)
    if lut is None:
        lut = _FP8_LUT[dtype] = torch.arange(256, dtype=torch.uint8).view(dtype).float().numpy()
    return lut


def _codes_to_float(code: torch.Tensor, table: np.ndarray | None = None) -> torch.Tensor:
    """float32 values of FP8 codes. On CPU through a 256-entry table (np.take: ~0.8 ns per entry on
    one thread, torch's elementwise FP8 conversion ~3); int8 codes convert directly; codes that index a data
    type's values (``table``: bitsandbytes' NF4 / FP4) are looked up."""
    if table is not None:
        lut = torch.from_numpy(table).to(code.device)
        return lut[code.long()]
    if code.dtype not in FP8 or code.device.type != "cpu":
        return code.to(torch.float32)
    # np.take with intp indices: ~1 ns per entry on one thread; with the uint8 codes as indices ~4
    idx = code.contiguous().view(torch.uint8).numpy().astype(np.intp)
    return torch.from_numpy(np.take(fp8_table(code.dtype), idx))


def compare_codes(a: torch.Tensor, b: torch.Tensor, options: SparsityOptions, *, name: str) -> PairStats:
    """Integer codes compared exactly. Codes carry no tolerance: every changed code counts under
    every tolerance and the relative rule; ``max_abs_delta`` is the largest code step."""
    if a.dtype != b.dtype:
        raise CheckpointError(f"{name}: quantized codes stored as {a.dtype} and {b.dtype}; expected one code type.")
    a, b = a.contiguous(), b.contiguous()
    changed, above = _code_counts(a, b)
    ne = a != b
    a2 = ne.reshape(ne.shape[0], math.prod(ne.shape[1:])) if ne.dim() >= 2 else ne.reshape(-1, 1)  # ([0, N]: no -1)
    steps = float((b.to(torch.int64) - a.to(torch.int64)).abs().max()) if changed else 0.0
    return PairStats(
        numel=a.numel(),
        dtype=str(a.dtype).replace("torch.", ""),
        changed=changed,
        changed_tol=(changed,) * len(options.tolerances),
        changed_rel=changed,
        ulp_hist=tuple(ulp_bins(changed, above)),
        max_abs_delta=steps,
        row_counts=a2.sum(1, dtype=torch.int32).cpu().numpy() if options.row_col else None,  # (codes on a GPU too)
        col_counts=a2.sum(0, dtype=torch.int32).cpu().numpy() if options.row_col else None,
        mask=ne if options.keep_masks else None,
    )


def check_finite_stored(x: torch.Tensor, where: str) -> None:
    """:func:`~subnetviz.analysis.bits.check_finite` for any stored form: FP8 codes are checked on their
    bit patterns (e4m3fn: NaN is S.1111.111; e5m2: Inf/NaN have exponent 11111) in one compiled pass
    (without numba: eight to a 64-bit word in NumPy), instead of an elementwise FP8 conversion and a
    sum; integer codes and buffers are finite."""
    if x.dtype not in FP8 or x.device.type != "cpu":
        check_finite(x, where)
        return
    u = x.contiguous().view(torch.uint8).numpy().reshape(-1)
    pattern = 0x7F if x.dtype == torch.float8_e4m3fn else 0x7C
    k = bits_jit.kernels()
    if k is not None:  # compiled: one pass, no temporaries (~0.02 ns per code on one thread; NumPy's ~0.6)
        if not k.any_marked(u, np.uint8(pattern)):
            return
        _raise_non_finite(u, pattern, where)
    # Eight codes per 64-bit word (~0.15 ns per code): with the sign masked off (and e5m2's mantissa),
    # a code is NaN/Inf iff it equals `pattern`, the largest value the masked byte can take, so adding
    # (0x80 - pattern) to every byte sets its top bit exactly there and never carries into the next.
    whole = u.size - u.size % 8
    words = u[:whole].view(np.uint64) & np.uint64(pattern * 0x0101010101010101)
    words += np.uint64((0x80 - pattern) * 0x0101010101010101)
    if not (words & np.uint64(0x8080808080808080)).any() and not ((u[whole:] & pattern) == pattern).any():
        return
    _raise_non_finite(u, pattern, where)


def _raise_non_finite(u: np.ndarray, pattern: int, where: str) -> None:
    bad = int(np.count_nonzero((u & pattern) == pattern))
    raise NonFiniteError(f"{where}: {bad} NaN/Inf value(s). Analyses need finite weights.")


# --- dequantisation in row bands ----------------------------------------------------------------
def dequantize(
    code: torch.Tensor,
    scale: torch.Tensor,
    how: str,
    block: tuple[int, int],
    r0: int = 0,
    divisor: float = 1.0,
    zero: torch.Tensor | None = None,
    table: np.ndarray | None = None,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 effective weights of the code rows ``code`` (which start at row ``r0`` of the tensor).

    ``how``: ``tensor`` (one scale), ``channel`` (one per row), ``block`` (``scale[i // bs0, j // bs1]``; a group of
    ``bs1`` columns of a row where ``bs0`` is 1), ``expert`` (packed experts (E, ·, N), whole, with a scale per expert
    and output feature, (E, 1, N) or (E, N, 1): ``scale[e, j]``, fbgemm's FP8 Llama 4 experts). w = (code − zero) × scale, then × float32(1 / divisor) where there
    is one (bnb int8, 127), in float32 and in that order, as bitsandbytes' ``int8_vectorwise_dequant`` computes it
    (dividing the scale first differed in the last bit of a quarter of the weights). ``zero`` (zero points, laid
    out as the scales): code − zero is a small integer, exact; compressed-tensors forms the same difference before
    its product with the scale. ``table``: the values the codes index (bitsandbytes' NF4 / FP4), looked up first.
    ``g_idx`` (compressed-tensors' act order, ``weight_g_idx``: each column's group, int64 (cols,)): the ``block``
    scales of groups along a row (bs0 = 1) are read ``scale[i, g_idx[j]]``, the zero points likewise, as
    compressed-tensors dequantises act-order weights.
    """
    w = _codes_to_float(code, table)
    if zero is not None:
        w = _scaled(w, zero.to(torch.float32), how, block, r0, "sub_", g_idx)
    w = _scaled(w, scale.to(torch.float32), how, block, r0, "mul_", g_idx)
    return w.mul_(1.0 / divisor) if divisor != 1.0 else w


def _scaled(
    w: torch.Tensor,
    s: torch.Tensor,
    how: str,
    block: tuple[int, int],
    r0: int,
    op: str = "mul_",
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w`` (float32 codes, rows from ``r0``) times (``op`` ``mul_``) or less (``sub_``) its scales or zero
    points ``s``, in place; ``block`` scales of column groups gathered by ``g_idx`` where given (act order)."""
    if how == "tensor":
        return getattr(w, op)(s.reshape(()))
    if how == "expert":  # (E, ·, N) by (E, 1, N): each expert's column j by its scale j
        return getattr(w, op)(s.reshape(w.shape[0], 1, w.shape[2]))
    if how == "channel":
        return getattr(w, op)(s.reshape(-1)[r0 : r0 + w.shape[0]].unsqueeze(1))
    b0, b1 = block
    rows, cols = w.shape
    sr = s[r0 // b0 : (r0 + rows - 1) // b0 + 1]
    if g_idx is not None:  # column j's scale is its group's, g_idx[j] (act order: a group is no run of columns)
        if b0 != 1 or g_idx.numel() != cols:
            raise ValueError(f"act-order groups of {g_idx.numel()} columns for {block} blocks of {cols} columns")
        sr = sr.index_select(1, g_idx.to(sr.device))  # (rows, cols)
    else:
        sr = sr.repeat_interleave(b1, dim=1)[:, :cols]  # (row blocks, cols)
    if r0 % b0 == 0 and rows % b0 == 0:
        getattr(w.view(-1, b0, cols), op)(sr.unsqueeze(1))
        return w
    idx = (torch.arange(r0, r0 + rows, device=w.device) // b0) - r0 // b0
    return getattr(w, op)(sr.index_select(0, idx))


def merge_bands(parts: list[PairStats], options: SparsityOptions, shape: tuple[int, ...]) -> PairStats:
    """One tensor's statistics from those of its row bands (in order)."""
    first = parts[0]
    return replace(
        first,
        numel=sum(p.numel for p in parts),
        changed=sum(p.changed for p in parts),
        changed_tol=tuple(sum(c) for c in zip(*(p.changed_tol for p in parts), strict=True)),
        changed_rel=sum(p.changed_rel for p in parts),
        ulp_hist=tuple(sum(c) for c in zip(*(p.ulp_hist for p in parts), strict=True)),
        max_abs_delta=max(p.max_abs_delta for p in parts),
        row_counts=np.concatenate([p.row_counts for p in parts]) if options.row_col else None,
        col_counts=np.sum([p.col_counts for p in parts], axis=0) if options.row_col else None,
        mask=torch.cat([p.mask.reshape(-1, *shape[1:]) for p in parts]) if options.keep_masks else None,
    )


# --- FP8 with block scales: the effective comparison in one pass over the codes ------------------
def compare_blocks(
    a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor, options: SparsityOptions, *, name: str, block
) -> tuple[PairStats, int, list[int]] | None:
    """(effective statistics, changed codes, #(code steps > edge)) of FP8 codes ``a``/``b`` (m × n)
    with block scales ``sa``/``sb`` (⌈m/bs0⌉ × ⌈n/bs1⌉), block row by block row; None where this pass
    does not apply (GPU, a cast precision, a mask at a tolerance, narrow tensors): the caller then
    dequantises in dense bands. Same numbers as the dense pass, tested against it."""
    b0, b1 = block
    rows, cols = a.shape
    if (
        a.device.type != "cpu"
        or a.dtype not in FP8
        or b.dtype != a.dtype
        or options.precision is not None
        or (options.keep_masks and options.mask_tolerance is not None)
        or b0 * cols < FAST_MIN_BAND
        or sa.shape != sb.shape
    ):
        return None
    if bits_jit.kernels() is not None:
        return _compiled_blocks(a, sa, b, sb, options, name=name, block=block)
    x_all, y_all = a.contiguous().view(torch.uint8).numpy(), b.contiguous().view(torch.uint8).numpy()
    s_a, s_b = sa.to(torch.float32).contiguous().numpy(), sb.to(torch.float32).contiguous().numpy()
    mag = np.abs(s_a)
    plain = (s_a.view(np.uint32) == s_b.view(np.uint32)) & (mag >= _SAFE_SCALE[0]) & (mag <= _SAFE_SCALE[1])
    lut = fp8_table(a.dtype)
    mask = np.empty((rows, cols), dtype=np.bool_) if options.keep_masks else None
    row_counts = np.zeros(rows, dtype=np.int64) if options.row_col else None
    col_counts = np.zeros(cols, dtype=np.int64) if options.row_col else None
    sub = replace(options, row_col=False, keep_masks=False)
    parts: list[PairStats] = []
    code_changed, code_above = 0, [0] * len(ULP_EDGES)
    pending: list[tuple] = []  # gathered pieces not yet compared (compared in batches of ~1M)
    img = np.empty((b0, cols), dtype=np.float32)  # the scale of every entry of a block row
    for br in range(s_a.shape[0]):
        r0, r1 = br * b0, min(rows, (br + 1) * b0)
        x, y = x_all[r0:r1], y_all[r0:r1]
        band = _Band(x, y, s_a[br], s_b[br], np.flatnonzero(~plain[br]), b1, lut, img[: r1 - r0])
        if mask is not None:
            mask[r0:r1] = band.ne
        if row_counts is not None:
            _add_row_col(band.ne, row_counts, col_counts, r0)
        pending += band.gathered
        if sum(g[0].size for g in pending) >= _BATCH or br == s_a.shape[0] - 1:
            code_changed += _flush(pending, parts, code_above, sub, name)
    eff = PairStats(
        numel=a.numel(),
        dtype="float32",
        changed=sum(p.changed for p in parts),
        changed_tol=tuple(sum(p.changed_tol[i] for p in parts) for i in range(len(options.tolerances))),
        changed_rel=sum(p.changed_rel for p in parts),
        ulp_hist=tuple(sum(c) for c in zip(*(p.ulp_hist for p in parts), strict=True))
        if parts
        else tuple(ulp_bins(0, [0] * len(ULP_EDGES))),
        max_abs_delta=max((p.max_abs_delta for p in parts), default=0.0),
        row_counts=row_counts,
        col_counts=col_counts,
        mask=torch.from_numpy(mask) if mask is not None else None,
    )
    return eff, code_changed, code_above


def _compiled_blocks(a, sa, b, sb, options: SparsityOptions, *, name: str, block) -> tuple[PairStats, int, list[int]]:
    """:func:`compare_blocks` as one compiled pass over the codes (:func:`bits_jit.fp8_blocks_pass`): every
    entry dequantised in registers as the dense pass forms it, no gather, no float32 copy of the tensor."""
    rows, cols = a.shape
    mask = np.empty((rows, cols), dtype=np.bool_) if options.keep_masks else None
    row_counts = np.zeros(rows, dtype=np.int64) if options.row_col else None
    col_counts = np.zeros(cols, dtype=np.int64) if options.row_col else None
    eff, code_changed, code_above = bits_jit.fp8_blocks_pass(
        a.contiguous().view(torch.uint8).numpy(),
        b.contiguous().view(torch.uint8).numpy(),
        str(a.dtype)[6:],
        sa.to(torch.float32).numpy(),
        sb.to(torch.float32).numpy(),
        block,
        options,
        mask,
        row_counts,
        col_counts,
    )
    if eff.changed and not math.isfinite(eff.largest):  # as compare_pair refuses it
        raise NonFiniteError(f"{name}: NaN or Inf in the weights (largest |Δ| is {eff.largest}).")
    stats = PairStats(
        numel=a.numel(),
        dtype="float32",
        changed=eff.changed,
        changed_tol=tuple(eff.tol),
        changed_rel=eff.rel,
        ulp_hist=tuple(ulp_bins(eff.changed, eff.above)),
        max_abs_delta=eff.largest if eff.changed else 0.0,
        row_counts=row_counts,
        col_counts=col_counts,
        mask=torch.from_numpy(mask) if mask is not None else None,
    )
    return stats, code_changed, code_above


def _flush(pending: list, parts: list, code_above: list[int], options: SparsityOptions, name: str) -> int:
    """Compare the gathered pieces in ``pending`` as one batch (one float pass, one code-step pass:
    fewer, larger calls), append the effective statistics to ``parts``, add the code-step counts to
    ``code_above`` in place and return the number of changed codes; empties ``pending``."""
    pieces = [p for p in pending if p[0].size]
    pending.clear()
    if not pieces:
        return 0
    xg, yg, ea, eb = (np.concatenate([p[i] for p in pieces]) if len(pieces) > 1 else pieces[0][i] for i in range(4))
    # Code steps of every gathered pair: unchanged codes are 0 steps, which no edge counts.
    steps = ulp_distance_bits(xg.view(np.int8), yg.view(np.int8), np)
    for j, c in enumerate(counts_above(steps, ULP_EDGES, np)):
        code_above[j] += c
    parts.append(compare_pair(torch.from_numpy(ea), torch.from_numpy(eb), options, name=name))
    return int(np.count_nonzero(np.not_equal(xg, yg)))  # +0 vs -0 is a changed code at 0 steps


def _add_row_col(ne: np.ndarray, row_counts: np.ndarray, col_counts: np.ndarray, r0: int) -> None:
    """Changed entries per row (popcounts of 8-byte words) and per column (uint8 sums: a block row
    is at most 255 rows here, else int64) of one block row's mask."""
    r, c = ne.shape
    u8 = ne.view(np.uint8)
    if c % 8 == 0:
        row_counts[r0 : r0 + r] = np.bitwise_count(ne.view(np.uint64)).sum(1, dtype=np.int64)
    else:
        row_counts[r0 : r0 + r] = u8.sum(1, dtype=np.int64)
    col_counts += u8.sum(0, dtype=np.uint8 if r <= 255 else np.int64)


class _Band:
    """One block row of codes ``x``/``y``: ``ne`` its effective mask, and the entries to compare
    gathered (``gathered``: a list of (codes x, codes y, float32 effective a, b): the products the
    dense pass forms) for every changed code and every changed effective weight.

    In plain blocks (same scale both sides) those are the changed codes, dequantised with one scale
    image; the blocks whose scale changed (or is not plain; ``dense``: block indices) are
    dequantised whole, column slice by column slice, and their effective mask replaces the codes'."""

    def __init__(self, x, y, sa_row, sb_row, dense, b1: int, lut: np.ndarray, img: np.ndarray):
        cols = x.shape[1]
        self.ne = ne = np.not_equal(x, y)
        slices = []
        if dense.size:  # runs of adjacent changed-scale blocks as column slices
            starts = dense[np.r_[True, np.diff(dense) > 1]] * b1
            ends = np.minimum((dense[np.r_[np.diff(dense) > 1, True]] + 1) * b1, cols)
            slices = list(zip(starts.tolist(), ends.tolist(), strict=True))
        pieces = []
        for c0, c1 in slices:  # dequantised whole; gathered: changed codes or changed weights
            xd, yd = np.ascontiguousarray(x[:, c0:c1]), np.ascontiguousarray(y[:, c0:c1])
            sa_cols = np.repeat(sa_row[c0 // b1 : (c1 - 1) // b1 + 1], b1)[: c1 - c0]
            sb_cols = np.repeat(sb_row[c0 // b1 : (c1 - 1) // b1 + 1], b1)[: c1 - c0]
            ea = np.take(lut, xd) * sa_cols
            eb = np.take(lut, yd) * sb_cols
            e_ne = np.not_equal(ea.view(np.uint32), eb.view(np.uint32))
            idx = np.flatnonzero(e_ne | ne[:, c0:c1])
            pieces.append([np.take(v.reshape(-1), idx) for v in (xd, yd, ea, eb)])
            ne[:, c0:c1] = False  # the plain region's gather below skips these columns
            slices[len(pieces) - 1] = (c0, c1, e_ne)
        idx = np.flatnonzero(ne)
        xg, yg = np.take(x.reshape(-1), idx), np.take(y.reshape(-1), idx)
        img[:] = np.repeat(sa_row, b1)[:cols]
        sg = np.take(img.reshape(-1), idx)
        ea = np.take(lut, xg)  # by the uint8 codes: ~1 ns per entry of CPU time on one thread
        ea *= sg
        eb = np.take(lut, yg)
        eb *= sg
        for c0, c1, e_ne in slices:
            ne[:, c0:c1] = e_ne
        self.gathered = [(xg, yg, ea, eb), *pieces]  # the plain region, then each changed-scale slice
