"""Counting one tensor's N masks into exclusive region counts, and keeping them per group: the inner
pass of :func:`subnetviz.analysis.overlap.mask_overlap`, block by block over bit-packed masks.

The membership codes are built on the packed bits themselves: the N masks' packed words are the
rows of a (M, words) uint64 matrix (M = N rounded up to a power of two, the extra rows zero) and
log2(M) in-place delta swaps (widths 4, 2, 1 bits, then 8 for M = 16) transpose each byte column,
the way a bit-matrix transpose does (compiled: one vectorised pass per pair of rows and stage).
Afterwards every byte (M <= 8) or 16-bit lane (M = 16) holds the M bits of 8 / M parameters: a
histogram over those units counts composite codes, and one small table (:func:`_slots`) turns them
into the 2**N region counts. Compiled at N > 8, each mask goes into the row whose lane bit is its
own bit k (:func:`_lane_rows`), so a lane *is* the region code, counted into int32 bins that stay
in cache. :class:`GroupRegions` keeps each group's counts: above 8 masks only the codes that occur,
in the smallest type that holds them (a dense int64 row is 0.5 MB per group at N = 16).

A tensor split into parts (a fused QKV's q, k and v: ``parts_of``) is counted part by part, each mask's part
read from the tensor's own bits a block at a time (:class:`PartSource`: whole bytes sliced where the part's
runs lie on them, as GPT-2's thirds and rows of heads do, else only the block's bits gathered): never a byte
per entry of the tensor, whatever its size (:func:`split_bytes`).

Cost per mask per parameter: the copy, the histogram (M / 8 bytes per parameter, M / 16 lanes at
M = 16) and each of the log2(M) stages see M / 8 bytes per parameter, so only the stages grow with
N, and they are the cheap part.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

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


# parts_of(name, mask) -> {group: view} or None: how mask_overlap splits a tensor (a fused QKV) into groups
PartsOf = Callable[[str, torch.Tensor], Mapping[Hashable, torch.Tensor] | None]


@dataclass(frozen=True)
class PartLayout:
    """Where a part of a tensor (a view that ``parts_of`` gives) lies among the tensor's row-major entries: runs
    of ``length`` consecutive entries, one per index of the grid ``outer`` (taken row-major), the run at index
    ``i`` starting at entry ``offset + Σ_d i_d · strides[d]``. GPT-2's q (columns ``0:d`` of a (d, 3d) c_attn) is
    d runs of d entries, 3d apart; a block of rows (Phi-3, Falcon) is one run, or one per head group."""

    offset: int
    outer: tuple[int, ...]
    strides: tuple[int, ...]
    length: int

    @property
    def numel(self) -> int:
        return self.length * math.prod(self.outer)

    @classmethod
    def of(cls, view: torch.Tensor) -> PartLayout:
        """The layout of ``view``, a view of a contiguous tensor (read off a meta-device view: no bits)."""
        dims = [(int(n), int(s)) for n, s in zip(view.shape, view.stride(), strict=True) if n != 1]
        length = 1
        while dims and dims[-1][1] == length:  # trailing dimensions that are contiguous make one run
            length *= dims.pop()[0]
        return cls(int(view.storage_offset()), tuple(n for n, _ in dims), tuple(s for _, s in dims), length)

    def segments(self, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """(first tensor entry, entries) int64 of each stretch of consecutive tensor entries that part entries
        ``c0:c1`` (``c0 < c1``) cover, in order: whole runs, the first and last cut at ``c0`` and ``c1``."""
        n = self.length
        runs = np.arange(c0 // n, (c1 - 1) // n + 1, dtype=np.int64)
        starts = np.full(runs.size, self.offset, np.int64)
        for i, stride in zip(np.unravel_index(runs, self.outer) if self.outer else (), self.strides, strict=True):
            starts += i * stride
        lo = np.maximum(c0 - runs * n, 0)
        return starts + lo, np.minimum(c1 - runs * n, n) - lo


def split_parts(parts_of: PartsOf, name: str, shape: tuple[int, ...]) -> list[tuple[Hashable, PartLayout]] | None:
    """The groups ``parts_of`` splits a mask of ``shape`` into, in its order, each with where its part lies
    (:class:`PartLayout`), or None where it leaves the tensor whole. Asked of an empty meta-device tensor: no bits
    read. Parts that are not views of the tensor, lie outside it, or whose sizes do not add up to the tensor's
    are not taken (counted whole), so a split never changes how many entries are counted."""
    probe = torch.empty(shape, dtype=torch.bool, device="meta")
    parts = parts_of(name, probe)
    if not parts or sum(int(p.numel()) for p in parts.values()) != probe.numel():
        return None
    out = []
    for group, view in parts.items():
        if view is not probe and view._base is not probe:  # a copy (torch.cat, ...): its entries are not known
            return None
        layout = PartLayout.of(view)
        last = layout.offset + sum((n - 1) * s for n, s in zip(layout.outer, layout.strides, strict=True))
        if layout.numel and last + layout.length > probe.numel():
            return None
        out.append((group, layout))
    return out


# Part entries a read of a part gathers at a time (its index arithmetic: up to ~24 bytes each, split_bytes)
PART_STEP = 1 << 18
COUNT_STEP = 1 << 22  # part entries :func:`_count_part` reads at a time (a multiple of 8)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64: ``arange(s, s + n)`` of each (s, n) of ``starts``, ``lengths``, one after the other."""
    if starts.size == 1:
        return np.arange(starts[0], starts[0] + lengths[0], dtype=np.int64)
    ends = np.cumsum(lengths)
    out = np.arange(ends[-1], dtype=np.int64)
    out += np.repeat(starts - (ends - lengths), lengths)
    return out


@dataclass(frozen=True)
class PartSource:
    """One mask's entries of one part (:class:`PartLayout`) of a tensor, row-major in the part's own shape, read
    from the tensor's :func:`_source` a block at a time (:meth:`block`): neither the part nor the tensor is ever
    copied or unpacked whole. Bit-packed bytes are sliced as they are where the part's runs start and (but the
    last) end on whole bytes (GPT-2's thirds, rows of heads); otherwise only the block's own bits are read."""

    base: tuple
    layout: PartLayout

    def block(self, c0: int, c1: int) -> np.ndarray:
        """Packed bytes (big bit order) of part entries ``c0:c1``, ``c0`` a multiple of 8; bits past ``c1`` in the
        last byte may be set (a read-only view of the mask's own bytes where one slice holds them)."""
        out = [self._bytes(*self.layout.segments(s0, min(c1, s0 + PART_STEP))) for s0 in range(c0, c1, PART_STEP)]
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _bytes(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        packed, plain = self.base
        if packed is None:
            return np.packbits(plain[_ranges(starts, lengths)])
        if not (starts % 8).any() and not (lengths[:-1] % 8).any():  # whole bytes: sliced, nothing unpacked
            if starts.size == 1:
                return packed[starts[0] // 8 : (starts[0] + lengths[0] + 7) // 8]
            return packed[_ranges(starts // 8, (lengths + 7) // 8)]
        jit = _jit()
        if jit is not None:
            out = np.empty((int(lengths.sum()) + 7) // 8, np.uint8)
            jit.gather_bits(packed, starts, lengths, out)
            return out
        # not compiled: the whole bytes each run lies in, unpacked, and the run's own bits kept (a 0/1 step mask)
        first = starts // 8
        spans = (starts + lengths + 7) // 8 - first
        bits = np.unpackbits(packed[_ranges(first, spans)])
        lo = 8 * (np.cumsum(spans) - spans) + starts % 8
        step = np.zeros(bits.size + 1, np.int8)
        np.add.at(step, lo, 1)
        np.add.at(step, lo + lengths, -1)
        return np.packbits(bits[np.cumsum(step[:-1], dtype=np.int8).view(np.bool_)])


def split_bytes(n_masks: int) -> int:
    """The most a split's reads (:class:`PartSource`) hold at once, whatever the tensor's size: one gather of
    :data:`PART_STEP` part entries (at most ~24 bytes each, a plain mask's int64 index; bit-packed bits far less)
    and a block's packed bytes twice (its gathers and their concatenation), the largest block being what
    :func:`_region_counts` reads at ``n_masks`` masks or :func:`_count_part`'s."""
    m = 1 << max(0, n_masks - 1).bit_length()
    block = max(CHUNK * 16 // m, COUNT_STEP)
    return 24 * PART_STEP + 2 * (block // 8)


def _count_set(source, numel: int) -> int:
    """Set entries among the first ``numel`` of a :func:`_source` (the shared leading rows of a tensor whose
    first dimension differs between masks are a prefix of its row-major entries), counted a block at a time:
    the per-tensor sizes behind the per-tensor chance (:func:`subnetviz.analysis.overlap.mask_overlap`)."""
    if isinstance(source, PartSource):
        return _count_part(source, numel)
    packed, plain = source
    total, step = 0, 1 << 24
    if packed is None:
        for i in range(0, numel, step):
            total += int(np.count_nonzero(plain[i : min(numel, i + step)]))
        return total
    whole = numel // 8
    words = whole // 8 if packed.flags.c_contiguous else 0  # whole 64-bit words: 8x fewer counts than bytes
    bulk = packed[: words * 8].view(np.uint64)
    for i in range(0, words, step):
        total += int(np.bitwise_count(bulk[i : i + step]).sum(dtype=np.int64))
    for i in range(words * 8, whole, step):
        total += int(np.bitwise_count(packed[i : min(whole, i + step)]).sum(dtype=np.int64))
    if numel % 8:  # big bit order: the first numel % 8 bits of the last byte are the high ones
        total += int(np.bitwise_count(packed[whole] & np.uint8((0xFF << (8 - numel % 8)) & 0xFF)))
    return total


def _count_part(source: PartSource, numel: int) -> int:
    """:func:`_count_set` of a part, a block of its packed bits at a time."""
    total = 0
    for c0 in range(0, numel, COUNT_STEP):
        c1 = min(numel, c0 + COUNT_STEP)
        got, whole = source.block(c0, c1), (c1 - c0) // 8
        total += int(np.bitwise_count(got[:whole]).sum(dtype=np.int64))
        if (c1 - c0) % 8:  # big bit order: the first (c1 - c0) % 8 bits of the last byte are the high ones
            total += int(np.bitwise_count(got[whole] & np.uint8((0xFF << (8 - (c1 - c0) % 8)) & 0xFF)))
    return total


def _block_bytes(source, c0: int, c1: int) -> np.ndarray:
    """Packed bytes (big bit order) of entries ``c0:c1`` of a :func:`_source` or a :class:`PartSource`; ``c0`` is
    a multiple of 8, so a packed block is a slice of whole bytes. Bits past ``c1`` in the last byte may be set
    (the caller clears them)."""
    if isinstance(source, PartSource):
        return source.block(c0, c1)
    packed, plain = source
    if packed is not None:
        return packed[c0 // 8 : (c1 + 7) // 8]
    return np.packbits(plain[c0:c1])


def _stages(m: int) -> list[tuple[int, int, int]]:
    """(row distance d, bit width w, mask of the low w bits in each 2w-bit field) of each delta swap."""
    widths = [4, 2, 1, 8][: m.bit_length() - 1]
    lows = {4: 0x0F0F0F0F0F0F0F0F, 2: 0x3333333333333333, 1: 0x5555555555555555, 8: 0x00FF00FF00FF00FF}
    return [(1 << i, w, lows[w]) for i, w in enumerate(widths)]


@functools.lru_cache(maxsize=16)
def _stage_arrays(m: int, last: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_stages` (``last=False``: without M = 16's byte interleave) as the arrays of the compiled
    :func:`subnetviz.analysis._overlap_numba.transpose`: distances, widths and low masks."""
    stages = _stages(m)[: None if last or m < 16 else -1]
    return (
        np.array([d for d, _, _ in stages], np.int64),
        np.array([w for _, w, _ in stages], np.uint64),
        np.array([low for _, _, low in stages], np.uint64),
    )


def _transpose(x: np.ndarray, scratch: np.ndarray, last: bool = True) -> None:
    """The delta swaps of :func:`_stages` on the rows of ``x`` (M, words) uint64, in place: at each
    stage rows a and a + d (bit i of a clear) trade a's high w-bit fields for b's low ones.
    ``last=False`` (M = 16): without the byte interleave, rows 0-7 then hold the low and rows 8-15
    the high byte of the codes of the same parameters. Compiled when numba is there (``scratch`` is
    then not used)."""
    m, words = x.shape
    jit = _jit()
    if jit is not None:
        jit.transpose(x, *_stage_arrays(m, last))
        return
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
    sources: list,
    n_masks: int,
    numel: int,
    work: dict | None = None,
    out: np.ndarray | None = None,
    sink: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray | None:
    """(2**N,) int64 exclusive counts of one tensor's membership codes ``Σ_k bits_k << k``, added into
    ``out`` when given (a contiguous int64 row of 2**N, e.g. the tensor's group) and returned.
    ``sink`` (compiled, N > 8 only): the counts stay in the int32 bins
    ``work["bins32"]``, added to from tensor to tensor, and ``sink(bins)`` takes them (and zeroes
    them) only when they could overflow; the caller drains the rest (:func:`_drain`). Returns None.

    ``sources``: the N masks (:func:`_source`), read block by block: each block's packed words go
    into the rows of the (M, words) matrix, :func:`_transpose` turns its bytes into composite codes,
    and a histogram per block counts them (``torch.bincount``, or compiled); the composite histogram
    is turned into region counts once per tensor (:func:`_slots`), or, compiled at N > 8, the lanes
    are the codes, counted into int32 bins (added into ``out``, or taken by ``sink``). Padding (bits
    past ``numel``, rows past N) counts as code 0 and is taken off at the end. ``work``: a dict kept
    by the caller across tensors (the block buffers, :func:`_workspace`).
    """
    m, unit, h_idx, c_idx = _slots(n_masks)
    step = max(64, (CHUNK * 16 // m) // 64 * 64)  # parameters per block, whole words
    work = {} if work is None else work
    if work.get("key") != (m, step):
        work.clear()
        work.update(_workspace(m, unit, step // 64), key=(m, step))
    jit = _jit()
    direct = jit is not None and unit == 16  # the lanes are the region codes: counted into int32 bins
    out = np.zeros(2**n_masks, dtype=np.int64) if out is None and sink is None else out
    place = _lane_rows()[:n_masks] if direct else tuple(range(len(sources)))  # the row of each mask
    spare = [r for r in range(m) if r not in place]
    if jit is not None and not direct:  # int64 bins counted in place: 4 sub-histograms of bytes
        bins = np.zeros((4, 256), dtype=np.int64)
    elif direct:  # int32 bins, hot in cache from tensor to tensor, added into `out` per tensor
        if work.get("bins32") is None or work["bins32"].size != 2**n_masks + 8:  # 8 spare: _count_lanes
            work["bins32"] = np.zeros(2**n_masks + 8, dtype=np.int32)
            work["bins"] = work["bins32"][: 2**n_masks]
            work["fresh"], work["hot"] = 0, -1  # slots counted into bins since they were last taken
        bins, fresh = work["bins"], work["fresh"]
        sink, keep = (sink, True) if sink is not None else (functools.partial(_flush, out=out), False)
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
            if nb < words * 8:
                rows[r, nb:] = 0
        for r in spare:
            rows[r] = 0
        if jit is not None:  # compiled at M = 16 without the byte interleave: hist16 reads the two bytes
            jit.transpose(buf, *_stage_arrays(m, False))
        else:
            _transpose(buf, work["scratch"][: m // 2 * words].reshape(m // 2, words))
        slots += words * 64
        if jit is not None:
            if direct:  # lane lo | hi << 8 < 2**N: the spare rows are the code's zero high bits
                if fresh + words * 64 > INT32_MAX:
                    sink(bins)
                    fresh = 0
                work["hot"] = _count_lanes(jit, rows, work["bins32"], work["hot"], words * 64)
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
    if direct:  # the padding was counted into the bins since they were last taken
        bins[0] -= slots - numel
        work["fresh"] = fresh
        if keep:
            return None
        _drain(work, sink)
        return out
    counted = hist.numpy() if jit is None else bins.sum(0)
    if unit == 16:  # one parameter per unit: each region code once
        out[c_idx] += counted[h_idx]
    else:
        region = np.zeros(2**n_masks, dtype=np.int64)
        np.add.at(region, c_idx, counted[h_idx])
        out += region
    out[0] -= slots - numel
    return out


def _count_lanes(jit, rows: np.ndarray, bins: np.ndarray, hot: int, slots: int) -> int:
    """A block's 16-bit lanes (``rows``: (16, ·) bytes, :func:`_transpose` at M = 16 without the byte
    interleave) counted into ``bins`` (int32, 2**N + 8): by ``hist16``, or by ``hist16_hot`` when the
    last block had more than a quarter of its ``slots`` in code ``hot`` (0, or 2**N - 1), whose
    increments then go round the 8 spare bins (added back here). Returns that choice for the next block."""
    n, lo, hi = bins.size - 8, rows[:8].reshape(-1), rows[8:].reshape(-1)
    before = int(bins[0]), int(bins[n - 1])
    if hot < 0:
        jit.hist16(lo, hi, bins)
    else:
        jit.hist16_hot(lo, hi, bins, hot)
        bins[hot] += bins[n:].sum()
        bins[n:] = 0
    return 0 if (bins[0] - before[0]) * 4 > slots else n - 1 if (bins[n - 1] - before[1]) * 4 > slots else -1


def _drain(work: dict, sink: Callable[[np.ndarray], None]) -> None:
    """``sink(bins)`` of the counts left in the int32 bins by :func:`_region_counts` (``sink=``)."""
    if "bins" in work:
        sink(work["bins"])
        work["fresh"] = 0


def _compact(bins: np.ndarray, totals: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(codes, counts) of a (2**N,) row of region counts (int32 or int64; zeroed here, and added into
    ``totals`` unless that is empty), in the smallest unsigned type that holds the largest count:
    the codes that occur (uint16) and their counts, or (None, every count) where that is smaller."""
    jit = _jit()
    if jit is not None:
        nonzero, top = jit.scan(bins, totals)
    else:
        if totals.size:
            np.add(totals, bins, out=totals)
        nonzero, top = int(np.count_nonzero(bins)), int(bins.max(initial=0))
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32, np.int64) if top <= np.iinfo(t).max)
    if nonzero * (2 + dtype().itemsize) >= bins.size * dtype().itemsize:
        counts = bins.astype(dtype)
        bins.fill(0)
        return None, counts
    codes, counts = np.empty(nonzero, np.uint16), np.empty(nonzero, dtype)
    if jit is not None:
        jit.take(bins, codes, counts)
    else:
        at = np.flatnonzero(bins)
        codes[:], counts[:] = at, bins[at]
        bins[at] = 0
    return codes, counts


class GroupRegions(Mapping):
    """group -> (2**N,) int64 region counts of its tensors (:meth:`add`; a new array per ``[group]``).

    Up to 8 masks, the rows of one (G, 2**N) int64 array. Above, each group keeps :func:`_compact`
    codes and counts, taken from :func:`_region_counts`' int32 bins (hot in cache) when the next
    tensor is another group's: at N = 16 a dense int64 row per group is 0.5 MB of fresh pages, added
    into and read again; random masks' groups keep 64 KB. ``totals``: (2**N,) int64, after :meth:`close`.
    """

    def __init__(self, groups: list, n_masks: int):
        self.groups, self.n_masks = list(groups), n_masks
        self._index = {g: i for i, g in enumerate(self.groups)}
        self.dense = np.zeros((len(self.groups), 2**n_masks), np.int64) if n_masks <= 8 else None
        self.totals = np.zeros(2**n_masks, np.int64)
        self._kept: list[tuple[np.ndarray | None, np.ndarray] | None] = [None] * len(self.groups)
        self._work: dict = {}  # block buffers (and the int32 bins), reused from tensor to tensor
        self._pending = -1  # the group whose counts are still in the bins (or in self._acc)
        self._acc: np.ndarray | None = None  # not compiled: the pending group's int64 row

    def add(self, sources: list, numel: int, row: int) -> None:
        """Count one tensor (its N masks' :func:`_source`, ``numel`` parameters) into group ``row``."""
        if self.dense is not None:
            _region_counts(sources, self.n_masks, numel, self._work, out=self.dense[row])
            return
        if row != self._pending:
            self._settle()
            self._pending = row
        if _jit() is not None:  # N > 8 compiled: the lanes are the codes, counted into int32 bins
            _region_counts(sources, self.n_masks, numel, self._work, sink=self._take)
            return
        self._acc = np.zeros(2**self.n_masks, np.int64) if self._acc is None else self._acc
        _region_counts(sources, self.n_masks, numel, self._work, out=self._acc)

    def close(self) -> GroupRegions:
        """The pending counts taken, the totals summed and the buffers let go; returns self."""
        if self.dense is not None:
            self.totals = self.dense.sum(0)
        self._settle()
        self._pending, self._work, self._acc = -1, {}, None
        return self

    def _settle(self) -> None:
        if self._pending >= 0 and self._acc is not None:
            self._take(self._acc)
        if self._pending >= 0:
            _drain(self._work, self._take)

    def _take(self, bins: np.ndarray) -> None:
        """The pending group's counts in ``bins`` (zeroed here) added to what it keeps."""
        if self._kept[self._pending] is None:
            self._kept[self._pending] = _compact(bins, self.totals)
            return
        np.add(self.totals, bins, out=self.totals)  # a group met again, or its bins could overflow
        merged = self._fill(self._pending, np.zeros(bins.size, np.int64))
        merged += bins
        bins.fill(0)
        self._kept[self._pending] = _compact(merged, np.zeros(0, np.int64))

    def _fill(self, i: int, row: np.ndarray) -> np.ndarray:
        """Group ``i``'s kept counts written into ``row`` (zeros, any numeric dtype); returns ``row``."""
        if self._kept[i] is not None:
            codes, counts = self._kept[i]
            if codes is None:
                row[:] = counts
            else:
                row[codes] = counts
        return row

    def fill_rows(self, g0: int, out: np.ndarray) -> None:
        """Rows ``g0 : g0 + len(out)`` of the (G, 2**N) region counts into ``out`` (any numeric dtype)."""
        if self.dense is not None:
            np.copyto(out, self.dense[g0 : g0 + out.shape[0]], casting="unsafe")
            return
        out.fill(0)
        for k in range(out.shape[0]):
            self._fill(g0 + k, out[k])

    def __getitem__(self, group) -> np.ndarray:
        i = self._index[group]
        return self.dense[i] if self.dense is not None else self._fill(i, np.zeros(2**self.n_masks, np.int64))

    def __contains__(self, group) -> bool:
        return group in self._index

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)
