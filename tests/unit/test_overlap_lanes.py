"""Region counts of N = 1..16 bit-packed masks, per tensor and per group, against a count of each
parameter's membership code one by one: the compiled path that counts 16-bit lanes as region codes
straight into the group's row (N > 8, int32 bins added per tensor and whenever they could overflow),
the compiled byte histograms (N <= 8) and torch.bincount (SUBNETVIZ_JIT=0)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

import subnetviz.analysis.overlap_counts as overlap_counts
from subnetviz.analysis.overlap import mask_overlap
from subnetviz.masks import PackedMasks

SHAPES = {"a": (13, 11), "b": (5,), "c": (3, 4, 5), "d": (40, 26), "e": (70,)}  # ragged tails, whole words


def _masks(n_masks: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {name: torch.rand(shape, generator=g) < p for name, shape in SHAPES.items()}
        for p in np.linspace(0.05, 0.95, n_masks)
    ]


def _packed(sets: list[dict]) -> list[PackedMasks]:
    out = []
    for masks in sets:
        pm = PackedMasks()
        for name, t in masks.items():
            pm.add(name, t)
        out.append(pm)
    return out


def _codes(sets: list[dict], names: list[str]) -> collections.Counter:
    """Membership code of every parameter of ``names``, one parameter at a time."""
    flat = np.stack([np.concatenate([s[n].numpy().reshape(-1) for n in names]) for s in sets])
    return collections.Counter(sum(int(v) << k for k, v in enumerate(col)) for col in flat.T)


def _as_dict(region: np.ndarray) -> dict[int, int]:
    return {c: int(n) for c, n in enumerate(region) if n}


def _group_stats(codes: collections.Counter, n_masks: int) -> tuple[list, list, list]:
    """(sizes, pair intersections a < b, parameters in exactly k masks) of one group's codes."""
    bit = lambda c, k: (c >> k) & 1  # noqa: E731
    sizes = [sum(n for c, n in codes.items() if bit(c, k)) for k in range(n_masks)]
    ia, ib = np.triu_indices(n_masks, 1)
    inter = [sum(n for c, n in codes.items() if bit(c, a) and bit(c, b)) for a, b in zip(ia, ib, strict=True)]
    degree = [sum(n for c, n in codes.items() if bin(c).count("1") == k) for k in range(n_masks + 1)]
    return sizes, inter, degree


# groups met again after another's tensors (their counts merged), and runs of one group's tensors
GROUPINGS = {"interleaved": {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}, "runs": {"a": 0, "b": 0, "c": 1, "d": 1, "e": 0}}


@pytest.mark.parametrize("jit", ["1", "0"])
@pytest.mark.parametrize("n_masks", range(1, 17))
def test_regions_per_tensor_and_group_match_one_by_one_codes(n_masks, jit, monkeypatch):
    """Each group's region counts (kept compact above 8 masks), and the sizes, pair intersections
    and exactly-k counts reduced from them, equal those of every parameter's code counted one by one."""
    monkeypatch.setenv("SUBNETVIZ_JIT", jit)
    sets = _masks(n_masks, seed=7 * n_masks)
    packed = _packed(sets)
    per_tensor = mask_overlap(packed)
    for name in SHAPES:
        assert _as_dict(per_tensor.region_counts[name]) == dict(_codes(sets, [name])), name
    for groups in GROUPINGS.values():
        grouped = mask_overlap(packed, group_of=groups.__getitem__)
        assert list(grouped.region_counts) == [0, 1] and 0 in grouped.region_counts and 2 not in grouped.region_counts
        for g in (0, 1):
            codes = _codes(sets, [n for n in SHAPES if groups[n] == g])
            region = grouped.region_counts[g]
            assert region.dtype == np.int64 and region.shape == (2**n_masks,)
            assert _as_dict(region) == dict(codes)
            sizes, inter, degree = _group_stats(codes, n_masks)
            pairs = grouped.by_group[grouped.by_group["group"] == g]
            assert pairs["intersection"].tolist() == inter
            ia, ib = np.triu_indices(n_masks, 1)
            assert pairs["count_a"].tolist() == [sizes[a] for a in ia]
            assert pairs["count_b"].tolist() == [sizes[b] for b in ib]
            assert grouped.consensus[grouped.consensus["group"] == g]["count"].tolist() == degree
        assert grouped.numel == sum(int(np.prod(s)) for s in SHAPES.values())
        assert grouped.totals.tolist() == np.sum([grouped.region_counts[g] for g in (0, 1)], axis=0).tolist()


@pytest.mark.parametrize("n_masks", [9, 16])
def test_int32_bins_added_before_they_could_overflow(n_masks, monkeypatch):
    """With the overflow bound lowered to one block of 64 parameters, the int32 bins are added into
    the group's row after every block: the counts are unchanged."""
    monkeypatch.setenv("SUBNETVIZ_JIT", "1")
    monkeypatch.setattr(overlap_counts, "CHUNK", 16)  # M = 16: blocks of 64 parameters
    monkeypatch.setattr(overlap_counts, "INT32_MAX", 64)
    sets = _masks(n_masks, seed=3)
    rep = mask_overlap(_packed(sets))
    for name in SHAPES:
        assert _as_dict(rep.region_counts[name]) == dict(_codes(sets, [name])), name
    whole = mask_overlap(_packed(sets), group_of=lambda name: "all")  # the bins kept across tensors
    assert _as_dict(whole.region_counts["all"]) == dict(_codes(sets, list(SHAPES)))
    assert whole.totals.tolist() == whole.region_counts["all"].tolist()


@pytest.mark.parametrize("n_masks", [9, 16])
def test_a_block_mostly_in_one_code_counts_it_round_spare_bins(n_masks, monkeypatch):
    """Sparse masks (most parameters in no mask) and dense ones (most in every mask): after a block
    that is mostly code 0 or 2**N - 1, the next one counts that code round 8 spare bins (no run of
    increments on one bin) and adds them back: the counts are those of the codes one by one."""
    monkeypatch.setenv("SUBNETVIZ_JIT", "1")
    monkeypatch.setattr(overlap_counts, "CHUNK", 16)  # blocks of 64 parameters: the choice changes often
    jit = overlap_counts._jit()
    calls = collections.Counter()
    hot = jit.hist16_hot
    monkeypatch.setattr(jit, "hist16_hot", lambda lo, hi, out, code: calls.update([code]) or hot(lo, hi, out, code))
    g = torch.Generator().manual_seed(n_masks)
    for p in (0.01, 0.99, 0.3):
        sets = [{name: torch.rand(shape, generator=g) < p for name, shape in SHAPES.items()} for _ in range(n_masks)]
        rep = mask_overlap(_packed(sets), group_of=lambda name: name in "ab")
        for grp in (True, False):
            assert _as_dict(rep.region_counts[grp]) == dict(_codes(sets, [n for n in SHAPES if (n in "ab") == grp]))
    assert calls[0] > 0 and calls[2**n_masks - 1] > 0 and set(calls) == {0, 2**n_masks - 1}


@pytest.mark.parametrize("jit", ["1", "0"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_compact_counts_keep_every_count_in_the_smallest_type(dtype, jit, monkeypatch):
    """A group's bins become the codes that occur and their counts (or every count, where that is
    smaller) in uint8 / uint16 / uint32 / int64 by the largest count: the same numbers, bins zeroed,
    totals added."""
    monkeypatch.setenv("SUBNETVIZ_JIT", jit)
    rng = np.random.default_rng(0)
    for top, want in ((255, np.uint8), (256, np.uint16), (65535, np.uint16), (65536, np.uint32), (2**32, np.int64)):
        if top > np.iinfo(dtype).max:
            continue
        for occupied in (3, 2**12, 2**16):  # few codes: sparse; most or all of them: every count
            bins = np.zeros(2**16, dtype)
            at = rng.choice(2**16, occupied, replace=False)
            bins[at] = rng.integers(1, top, occupied, endpoint=True)
            bins[at[0]] = top
            want_bins, totals = bins.astype(np.int64), np.ones(2**16, np.int64)
            codes, counts = overlap_counts._compact(bins, totals)
            assert counts.dtype == want and not bins.any()
            assert (codes is None) == (occupied * (2 + counts.itemsize) >= 2**16 * counts.itemsize)
            row = np.zeros(2**16, np.int64)
            row[slice(None) if codes is None else codes] = counts
            assert row.tolist() == want_bins.tolist() and totals.tolist() == (want_bins + 1).tolist()


def test_each_mask_lands_on_its_own_lane_bit():
    """The row chosen for mask k puts mask k's bit at bit k of the parameter's 16-bit lane."""
    rows = overlap_counts._lane_rows()
    assert sorted(rows) == list(range(16))
    for k, row in enumerate(rows):
        x = np.zeros((16, 1), np.uint64)
        x[row, 0] = np.uint64(2**64 - 1)  # mask k holds all 64 parameters of the word
        overlap_counts._transpose(x, np.empty((8, 1), np.uint64), last=False)
        b = x.view(np.uint8)  # rows 0-7: the low byte of each lane, rows 8-15: the high byte
        lanes = b[:8].reshape(-1).astype(np.int64) | b[8:].reshape(-1).astype(np.int64) << 8
        assert set(lanes.tolist()) == {1 << k}, (k, row)
