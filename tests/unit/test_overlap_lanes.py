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


@pytest.mark.parametrize("jit", ["1", "0"])
@pytest.mark.parametrize("n_masks", range(1, 17))
def test_regions_per_tensor_and_group_match_one_by_one_codes(n_masks, jit, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_JIT", jit)
    sets = _masks(n_masks, seed=7 * n_masks)
    packed = _packed(sets)
    per_tensor = mask_overlap(packed)
    for name in SHAPES:
        assert _as_dict(per_tensor.region_counts[name]) == dict(_codes(sets, [name])), name
    groups = {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}  # groups spanning several tensors add up
    grouped = mask_overlap(packed, group_of=groups.__getitem__)
    for g in (0, 1):
        names = [n for n in SHAPES if groups[n] == g]
        assert _as_dict(grouped.region_counts[g]) == dict(_codes(sets, names))
    assert grouped.numel == sum(int(np.prod(s)) for s in SHAPES.values())


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
