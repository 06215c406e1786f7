"""Counting one tensor's N masks into exclusive region counts: the inner pass of
:func:`subnetviz.analysis.overlap.mask_overlap`, block by block over bit-packed masks.

The membership codes are built on the packed bits themselves, never unpacked one byte per mask:
the N masks' packed words are the rows of a (M, words) uint64 matrix (M = N rounded up to a power
of two, the extra rows zero) and log2(M) in-place delta swaps (widths 4, 2, 1 bits, then 8 for
M = 16) transpose each byte column, the way a bit-matrix transpose does. Afterwards every byte
(M <= 8) or 16-bit lane (M = 16) holds the M bits of 8 / M parameters (of one parameter for
M >= 8): one ``torch.bincount`` over those units (256 or 65536 bins) counts composite codes, and
one small table (:func:`_slots`) turns them into the 2**N region counts of single parameters.
Compiled (numba) at N > 8, each mask goes into the row whose lane bit is its own bit k
(:func:`_lane_rows`), so a 16-bit lane *is* the region code (< 2**N): the codes are counted straight
into the caller's int64 row of 2**N regions (the group's), with no histogram zeroed, remapped and
added per tensor (at N = 16 that was three passes over 65,536 bins per tensor).

Cost per parameter: each stage is 6 word operations on M / 8 bytes per parameter (log2(M) stages),
and the histogram sees M / 8 bytes per parameter (M / 16 lanes for M = 16): both grow with N, so
the time per mask per parameter stays about constant, where one code byte per parameter and mask
plus one histogram per parameter cost small N ~2x more per mask than large N.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch


def _packed(masks: Mapping):
    """The ``packed(name)`` accessor of bit-packed masks (PackedMasks, or a filtered view of one
    exposing it as ``.masks``), else None."""
    if hasattr(masks, "packed"):
        return masks.packed
    inner = getattr(masks, "masks", None)
    return inner.packed if hasattr(inner, "packed") else None


def _shape(masks: Mapping, name: str) -> tuple[int, ...]:
    packed = _packed(masks)
    return tuple(packed(name)[1]) if packed is not None else tuple(masks[name].shape)


# Parameters per block (a multiple of 64, one uint64 word of packed bits) for M = 16 masks; fewer
# masks take proportionally more parameters, so one block of the (M, words) matrix is ~1 MB and stays
# in cache with its scratch through the stages and the histogram.
CHUNK = 1 << 19


def _source(masks: Mapping, name: str):
    """One mask tensor as ``(packed bytes, None)`` (bit-packed masks) or ``(None, 0/1 uint8 view)``
    (a CPU bool tensor, viewed: no copy)."""
    packed = _packed(masks)
    if packed is not None:
        return packed(name)[0], None
    return None, masks[name].detach().reshape(-1).cpu().numpy().view(np.uint8)


def _block_bytes(source, c0: int, c1: int) -> np.ndarray:
    """Packed bytes (big bit order) of entries ``c0:c1`` of a :func:`_source`; ``c0`` is a multiple
    of 8, so a packed block is a slice of whole bytes. Bits past ``c1`` in the last byte may be set
    (the caller clears them)."""
    packed, plain = source
    if packed is not None:
        return packed[c0 // 8 : (c1 + 7) // 8]
    return np.packbits(plain[c0:c1])


def _stages(m: int) -> list[tuple[int, int, int]]:
    """(row distance d, bit width w, mask of the low w bits in each 2w-bit field) of each delta swap."""
    widths = [4, 2, 1, 8][: m.bit_length() - 1]
    lows = {4: 0x0F0F0F0F0F0F0F0F, 2: 0x3333333333333333, 1: 0x5555555555555555, 8: 0x00FF00FF00FF00FF}
    return [(1 << i, w, lows[w]) for i, w in enumerate(widths)]


def _transpose(x: np.ndarray, scratch: np.ndarray, last: bool = True) -> None:
    """The delta swaps of :func:`_stages` on the rows of ``x`` (M, words) uint64, in place: at each
    stage rows a and a + d (bit i of a clear) trade a's high w-bit fields for b's low ones.
    ``last=False`` (M = 16): without the byte interleave, rows 0-7 then hold the low and rows 8-15
    the high byte of the codes of the same parameters."""
    m, words = x.shape
    for d, w, low in _stages(m)[: None if last or m < 16 else -1]:
        pairs = x.reshape(m // (2 * d), 2, d, words)
        a, b = pairs[:, 0], pairs[:, 1]
        t = scratch[: m // 2].reshape(a.shape)
        np.right_shift(a, np.uint64(w), out=t)
        np.bitwise_xor(t, b, out=t)
        np.bitwise_and(t, np.uint64(low), out=t)
        np.bitwise_xor(b, t, out=b)
        np.left_shift(t, np.uint64(w), out=t)
        np.bitwise_xor(a, t, out=a)


@functools.lru_cache(maxsize=8)
def _slots(n_masks: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(M, unit bits U, unit values h, region codes c) for N masks: a composite unit (byte, or 16-bit
    lane for M = 16) of value ``h[i]`` holds one parameter of membership code ``c[i]`` (pairs listed
    once per parameter slot of the unit; units holding a bit of a padding row never occur).

    Found by probing :func:`_transpose` with one set bit per (mask, packed bit) of one word, so the
    table follows the stages whatever their order."""
    m = 1 << (n_masks - 1).bit_length()
    unit = 16 if m == 16 else 8
    # column k * 64 + p of the probe: bit p of mask k's word, alone
    probe = np.zeros((m, m * 64), np.uint64)
    k_of, p_of = np.divmod(np.arange(m * 64), 64)
    probe[k_of, np.arange(m * 64)] = np.left_shift(np.uint64(1), p_of.astype(np.uint64))
    _transpose(probe, np.empty((m // 2, m * 64), np.uint64))
    nz = probe.view(np.uint8).reshape(m, m * 64, 8)
    row, col, byte = np.nonzero(nz)
    assert np.array_equal(np.sort(col), np.arange(m * 64)), n_masks  # each probe bit lands once
    q = byte * 8 + np.log2(nz[row, col, byte]).astype(np.int64)  # bit index in the row's 64 bits
    where: dict[int, dict[int, tuple[int, int]]] = {}  # packed bit p -> {mask k: (unit index, bit)}
    for r, c, b in zip(row.tolist(), col.tolist(), q.tolist(), strict=True):
        where.setdefault(c % 64, {})[c // 64] = (r * (64 // unit) + b // unit, b % unit)
    patterns = set()
    for p, places in where.items():
        assert len({u for u, _ in places.values()}) == 1, (n_masks, p)  # one parameter, one unit
        patterns.add(tuple(places[k][1] for k in range(m)))
    assert len(patterns) * m == unit, (n_masks, patterns)
    h = np.arange(2**unit, dtype=np.int64)
    hs, cs = [], []
    for pattern in sorted(patterns):
        code = sum(((h >> r) & 1) << k for k, r in enumerate(pattern))
        keep = code < 2**n_masks
        hs.append(h[keep])
        cs.append(code[keep])
    h_all, c_all = np.concatenate(hs), np.concatenate(cs)
    for arr in (h_all, c_all):
        arr.flags.writeable = False
    return m, unit, h_all, c_all


def _jit():
    """The compiled histograms (:mod:`subnetviz.analysis._overlap_numba`), or None without numba or
    with ``SUBNETVIZ_JIT=0`` (then ``torch.bincount`` per block)."""
    from subnetviz.analysis.bits_jit import compiled

    return compiled("_overlap_numba")


def _workspace(m: int, unit: int, words: int) -> dict[str, np.ndarray]:
    """Flat buffers for blocks of up to ``words`` words: reused from tensor to tensor (a fresh MB-sized
    array is page-faulted and zeroed by the kernel on first touch), cut to each block's size."""
    return {
        "buf": np.empty(m * words, np.uint64),
        "scratch": np.empty(m // 2 * words, np.uint64),
        "lanes": np.empty(m * words * 4 if unit == 16 else 0, np.int32),
    }


INT32_MAX = 2**31 - 1


def _flush(bins: np.ndarray, out: np.ndarray) -> None:
    """``out += bins`` (int32 counts into the int64 row), then ``bins`` zeroed for the next tensor."""
    np.add(out, bins, out=out)
    bins.fill(0)


@functools.lru_cache(maxsize=1)
def _lane_rows() -> tuple[int, ...]:
    """Row of the (16, words) matrix for each mask k such that, after :func:`_transpose` (M = 16), mask
    k's bit is bit k of its parameter's 16-bit lane: read off :func:`_slots` (16), the lane value of
    the code with only bit k set."""
    _, _, h, c = _slots(16)
    lane_bit = {
        int(cc).bit_length() - 1: int(hh).bit_length() - 1
        for hh, cc in zip(h, c, strict=True)
        if cc & (cc - 1) == 0 and cc
    }
    return tuple(sorted(range(16), key=lambda row: lane_bit[row]))  # row r holds the mask of lane bit r


def _region_counts(
    sources: list, n_masks: int, numel: int, work: dict | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """(2**N,) int64 exclusive counts of one tensor's membership codes ``Σ_k bits_k << k``, added into
    ``out`` when given (a contiguous int64 row of 2**N, e.g. the tensor's group) and returned.

    ``sources``: the N masks (:func:`_source`), read block by block: each block's packed words go
    into the rows of the (M, words) matrix, :func:`_transpose` turns its bytes into composite codes,
    and one ``torch.bincount`` per block counts them; the composite histogram is turned into region
    counts once per tensor (:func:`_slots`), or, compiled at N > 8, the lanes are the codes and
    are counted into ``out`` directly. Padding (bits past ``numel``, rows past N) counts as
    code 0 and is taken off at the end. ``work``: a dict kept by the caller across tensors (the
    block buffers, :func:`_workspace`).
    """
    m, unit, h_idx, c_idx = _slots(n_masks)
    step = max(64, (CHUNK * 16 // m) // 64 * 64)  # parameters per block, whole words
    work = {} if work is None else work
    if work.get("key") != (m, step):
        work.clear()
        work.update(_workspace(m, unit, step // 64), key=(m, step))
    jit = _jit()
    direct = jit is not None and unit == 16  # the lanes are the region codes: counted into `out` itself
    out = np.zeros(2**n_masks, dtype=np.int64) if out is None else out
    place = _lane_rows()[:n_masks] if direct else tuple(range(len(sources)))  # the row of each mask
    spare = [r for r in range(m) if r not in place]
    if jit is not None and not direct:  # int64 bins counted in place: 4 sub-histograms of bytes
        bins = np.zeros((4, 256), dtype=np.int64)
    elif direct:  # int32 bins, hot in cache from tensor to tensor, added into `out` per tensor
        bins = work.get("bins32")
        if bins is None or bins.size != 2**n_masks:
            bins = work["bins32"] = np.zeros(2**n_masks, dtype=np.int32)
        fresh = 0  # slots counted into bins since they were last added to out
    elif jit is None:
        hist = torch.zeros(2**unit, dtype=torch.int64)
    slots = 0
    for c0 in range(0, numel, step):
        c1 = min(numel, c0 + step)
        words = (c1 - c0 + 63) // 64
        buf = work["buf"][: m * words].reshape(m, words)
        rows = buf.view(np.uint8)
        nb = (c1 - c0 + 7) // 8
        for r, source in zip(place, sources, strict=True):
            rows[r, :nb] = _block_bytes(source, c0, c1)
            if (c1 - c0) % 8:  # clear the bits past c1 (big bit order: the low ones)
                rows[r, nb - 1] &= np.uint8((0xFF << (8 - (c1 - c0) % 8)) & 0xFF)
            rows[r, nb:] = 0
        for r in spare:
            rows[r] = 0
        _transpose(buf, work["scratch"][: m // 2 * words].reshape(m // 2, words), last=jit is None)
        slots += words * 64
        if jit is not None:
            if direct:  # lane lo | hi << 8 < 2**N: the spare rows are the code's zero high bits
                if fresh + words * 64 > INT32_MAX:
                    _flush(bins, out)
                    fresh = 0
                jit.hist16(rows[:8].reshape(-1), rows[8:].reshape(-1), bins)
                fresh += words * 64
            else:
                jit.hist8(rows.reshape(-1), bins)
            continue
        if unit == 8:
            codes = torch.from_numpy(rows.reshape(-1))
        else:
            lanes = work["lanes"][: m * words * 4]
            np.copyto(lanes, buf.view(np.uint16).reshape(-1), casting="unsafe")
            codes = torch.from_numpy(lanes)
        hist += torch.bincount(codes, minlength=2**unit)
    if direct:
        _flush(bins, out)
    else:
        counted = hist.numpy() if jit is None else bins.sum(0)
        if unit == 16:  # one parameter per unit: each region code once
            out[c_idx] += counted[h_idx]
        else:
            region = np.zeros(2**n_masks, dtype=np.int64)
            np.add.at(region, c_idx, counted[h_idx])
            out += region
    out[0] -= slots - numel
    return out
