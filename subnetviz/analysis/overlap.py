"""Overlap of N subnetwork masks over the same parameters: Venn, UpSet, pairwise, consensus.

This module owns the set arithmetic of masks. It works tensor by tensor, never on one giant
flat mask: each parameter gets a membership code ``Σ_k mask_k << k`` and one ``bincount``
with ``2**N`` bins per tensor gives the exclusive count of every region (the UpSet bars, the
3 Venn regions for N = 2 and the 7 for N = 3). Everything else (sizes, pairwise intersections,
union, consensus histogram) is an exact integer sum over those region counts, per group and
overall, so per-group numbers always add up to the totals.

Pairwise metrics for masks a, b over n parameters with |I_a| = n·p, |I_b| = n·q
(Mukherjee et al. 2025, §5 and App. E; Zhu et al. 2025 for Jaccard):

- ``o1 = |I_a ∩ I_b| / |I_a|``, ``o2 = |I_a ∩ I_b| / |I_b|``; chance: ``o1_chance = q``,
  ``o2_chance = p`` (each mask's chance overlap is the *other* mask's density);
- ``jaccard = |I_a ∩ I_b| / |I_a ∪ I_b|``, chance ``pq / (p + q − pq)``;
- ``ratio_over_chance = |I_a ∩ I_b| / (n·p·q)`` = o1/o1_chance = o2/o2_chance.

Ratios with a zero denominator are NaN.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from subnetviz.errors import ConfigError, MaskError, suggest

MAX_MASKS = 16  # 2**16 regions; beyond that an UpSet plot is unreadable anyway

_PAIR_COLUMNS = [
    "a",
    "b",
    "count_a",
    "count_b",
    "numel",
    "intersection",
    "union",
    "o1",
    "o2",
    "o1_chance",
    "o2_chance",
    "jaccard",
    "jaccard_chance",
    "ratio_over_chance",
]


@functools.lru_cache(maxsize=4)
def _membership(n_masks: int) -> np.ndarray:
    """(2**N, N) int64: bit k of each region code (cached: read-only)."""
    codes = np.arange(2**n_masks, dtype=np.int64)
    bits = (codes[:, None] >> np.arange(n_masks, dtype=np.int64)) & 1
    bits.flags.writeable = False
    return bits


@functools.lru_cache(maxsize=4)
def _membership_f64(n_masks: int) -> np.ndarray:
    bits = _membership(n_masks).astype(np.float64)
    bits.flags.writeable = False
    return bits


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _pairwise(counts: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Pairwise rows (a < b) from one region-count vector of length 2**N."""
    bits = _membership(len(labels))
    numel = int(counts.sum())
    # sizes (N,) and intersections (N, N) as float64 BLAS products, exact while the total is below
    # 2**53 (NumPy's int64 matmul has no BLAS: ~0.4 s per group at N = 16)
    if numel < 2**53:
        fbits = _membership_f64(len(labels))
        weighted = fbits.T * counts.astype(np.float64)
        sizes = np.rint(weighted.sum(1)).astype(np.int64)
        inter = np.rint(weighted @ fbits).astype(np.int64)
    else:
        sizes, inter = bits.T @ counts, (bits * counts[:, None]).T @ bits
    rows = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            rows.append((labels[i], labels[j], int(sizes[i]), int(sizes[j]), numel, int(inter[i, j])))
    frame = pd.DataFrame(rows, columns=_PAIR_COLUMNS[:6])
    ca, cb, n, ab = (frame[c].to_numpy(np.float64) for c in ("count_a", "count_b", "numel", "intersection"))
    frame["union"] = (frame["count_a"] + frame["count_b"] - frame["intersection"]).astype(np.int64)
    p, q = _div(ca, n), _div(cb, n)
    frame["o1"] = _div(ab, ca)
    frame["o2"] = _div(ab, cb)
    frame["o1_chance"] = q
    frame["o2_chance"] = p
    frame["jaccard"] = _div(ab, ca + cb - ab)
    frame["jaccard_chance"] = _div(p * q, p + q - p * q)
    frame["ratio_over_chance"] = _div(ab * n, ca * cb)
    return frame


@dataclass(frozen=True, eq=False)
class OverlapReport:
    """Overlap of N masks. ``region_counts[group]``: (2**N,) int64 exclusive counts per code.

    Frames: ``sizes`` (label, count, numel, density); ``pairwise`` (one row per pair a < b, see
    the module docstring); ``regions`` (members, code, degree, count) for the 2**N − 1 non-empty
    regions; ``consensus`` (group, k, count): parameters contained in exactly k masks, per group;
    ``by_group``: the pairwise columns per group.
    """

    labels: tuple[str, ...]
    region_counts: Mapping[Hashable, np.ndarray]
    sizes: pd.DataFrame
    pairwise: pd.DataFrame
    regions: pd.DataFrame
    consensus: pd.DataFrame
    by_group: pd.DataFrame

    @property
    def totals(self) -> np.ndarray:
        """(2**N,) int64 region counts over all tensors (code 0 = in no mask)."""
        return np.sum(list(self.region_counts.values()), axis=0)

    @property
    def numel(self) -> int:
        return int(self.totals.sum())

    @property
    def union(self) -> int:
        return int(self.totals[1:].sum())

    def consensus_overall(self) -> pd.DataFrame:
        """k (0..N), count, fraction of all parameters contained in exactly k masks."""
        frame = self.consensus.groupby("k", as_index=False)["count"].sum()
        frame["fraction"] = _div(frame["count"].to_numpy(), self.numel)
        return frame

    def sizes_by_group(self) -> pd.DataFrame:
        """group, label, count, numel, density: each mask's size inside each group (heatmaps)."""
        bits = _membership(len(self.labels))
        rows = []
        for group, region in self.region_counts.items():
            numel = int(region.sum())
            for label, count in zip(self.labels, bits.T @ region, strict=True):
                rows.append((group, label, int(count), numel, count / numel if numel else float("nan")))
        return pd.DataFrame(rows, columns=["group", "label", "count", "numel", "density"])

    def venn_regions(self) -> pd.DataFrame:
        """Regions in canonical Venn order: (10, 01, 11) for N = 2, (100, 010, 110, 001, 101, 011, 111) for N = 3.

        ``region`` is the membership string, one character per label in label order.
        """
        n_masks = len(self.labels)
        if n_masks not in (2, 3):
            raise ConfigError(f"Venn regions exist for 2 or 3 masks; this report has {n_masks}. Use .regions (UpSet).")
        frame = self.regions.sort_values("code").reset_index(drop=True)
        frame.insert(0, "region", ["".join(str((c >> k) & 1) for k in range(n_masks)) for c in frame["code"]])
        return frame

    def to_frame(self) -> pd.DataFrame:
        return self.pairwise


def _as_dict(mask_set, index: int) -> Mapping[str, torch.Tensor]:
    # a MaskSet holds its mapping in .masks; a Mapping is used as it is (a filtered view may hold
    # the unfiltered mapping in a .masks attribute of its own)
    masks = mask_set if isinstance(mask_set, Mapping) else getattr(mask_set, "masks", mask_set)
    if not isinstance(masks, Mapping):
        raise MaskError(
            f"mask set #{index}: expected a MaskSet or a mapping name -> bool tensor, got {type(mask_set).__name__}."
        )
    return masks


def _validate(sets: list[Mapping[str, torch.Tensor]], labels: tuple[str, ...]) -> list[str]:
    names = list(sets[0])
    reference = set(names)
    for label, masks in zip(labels[1:], sets[1:], strict=True):
        present = set(masks)  # a Mapping's own `in` may fetch (unpack) the tensor
        for name in present:
            if name not in reference:
                raise MaskError(
                    f"mask {label!r} has tensor {name!r} that mask {labels[0]!r} lacks; all masks must cover the "
                    f"same tensors.{suggest(name, reference)}"
                )
        for name in names:
            if name not in present:
                raise MaskError(
                    f"mask {label!r} lacks tensor {name!r} that mask {labels[0]!r} has; all masks must cover the "
                    f"same tensors.{suggest(name, masks)}"
                )
    for name in names:
        shape = _shape(sets[0], name)
        for label, masks in zip(labels, sets, strict=True):
            if _packed(masks) is not None:  # bit-packed bool masks (PackedMasks): the shape, no unpacking
                if _shape(masks, name) != shape:
                    raise MaskError(
                        f"tensor {name!r}: mask {label!r} has shape {_shape(masks, name)} but mask "
                        f"{labels[0]!r} has {shape}."
                    )
                continue
            t = masks[name]
            if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
                found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise MaskError(f"mask {label!r}, tensor {name!r}: expected a torch.bool tensor, got {found}.")
            if tuple(t.shape) != shape:
                raise MaskError(
                    f"tensor {name!r}: mask {label!r} has shape {tuple(t.shape)} but mask {labels[0]!r} has {shape}."
                )
    return names


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


def _member_bits(masks: Mapping, name: str) -> np.ndarray:
    """(numel,) uint8 0/1 of one mask tensor: unpacked straight from bit-packed masks, a view of
    a CPU bool tensor otherwise (no conversion copy)."""
    packed = _packed(masks)
    if packed is not None:
        bits, shape = packed(name)
        return np.unpackbits(bits, count=math.prod(shape))
    return masks[name].detach().reshape(-1).cpu().numpy().view(np.uint8)


def _region_counts(bits: Iterable[np.ndarray], n_masks: int) -> np.ndarray:
    """(2**N,) int64 exclusive counts of one tensor's membership codes ``Σ_k bits_k << k``.

    ``bits``: N arrays (numel,) uint8 0/1, consumed one at a time (a generator unpacks each
    mask only when its turn comes, so one unpacked mask is alive, not N). Two in-place uint8 NumPy passes per mask (shift into
    a scratch array, or into the code of its group of 8 masks), for N > 8 one int32 merge of the
    two codes, and one ``torch.bincount`` per tensor (~3x NumPy's on one thread): cost ∝ numel × N.
    """
    codes: list[np.ndarray] = []  # one uint8 code per 8 masks (uint8 shifts are the fast NumPy loops)
    scratch = None
    for k, b in enumerate(bits):
        if k % 8 == 0:
            codes.append(b.copy())
            scratch = np.empty_like(b) if scratch is None else scratch
        else:
            np.left_shift(b, k % 8, out=scratch)
            np.bitwise_or(codes[-1], scratch, out=codes[-1])
        del b
    codes = [torch.from_numpy(c) for c in codes]
    code = codes[0] if n_masks <= 8 else codes[0].to(torch.int32) | (codes[1].to(torch.int32) << 8)
    return torch.bincount(code, minlength=2**n_masks).numpy().astype(np.int64)


def mask_overlap(
    mask_sets: Sequence,
    labels: Sequence[str] | None = None,
    *,
    group_of: Callable[[str], Hashable] | None = None,
) -> OverlapReport:
    """Overlap of N mask sets (each a MaskSet or a mapping name -> bool tensor) over the same tensors.

    ``labels`` default to ``m0, m1, ...``. ``group_of(name)`` maps a tensor name to its group
    (e.g. ``(layer, module)``); by default each tensor is its own group. Raises
    :class:`MaskError` when names, shapes or dtypes differ between the sets.
    """
    sets = [_as_dict(s, i) for i, s in enumerate(mask_sets)]
    n_masks = len(sets)
    if not 1 <= n_masks <= MAX_MASKS:
        raise ConfigError(f"mask overlap needs between 1 and {MAX_MASKS} mask sets, got {n_masks}.")
    labels = tuple(str(lbl) for lbl in labels) if labels is not None else tuple(f"m{i}" for i in range(n_masks))
    if len(labels) != n_masks:
        raise ConfigError(f"got {n_masks} mask sets but {len(labels)} labels; give one label per mask set.")
    if len(set(labels)) != n_masks:
        raise ConfigError(f"mask labels must be unique, got {list(labels)}.")
    names = _validate(sets, labels)
    group_of = group_of or (lambda name: name)

    counts: dict[Hashable, np.ndarray] = {}
    for name in names:
        group = group_of(name)
        region = _region_counts((_member_bits(s, name) for s in sets), n_masks)
        counts[group] = counts[group] + region if group in counts else region
    if not counts:
        raise MaskError("the mask sets hold no tensors; nothing to compare.")
    totals = np.sum(list(counts.values()), axis=0)
    bits = _membership(n_masks)
    numel = int(totals.sum())

    size_counts = bits.T @ totals
    sizes = pd.DataFrame({"label": list(labels), "count": size_counts, "numel": numel})
    sizes["density"] = _div(size_counts, numel)

    codes = np.arange(1, 2**n_masks)
    regions = pd.DataFrame(
        {
            "members": [tuple(lbl for k, lbl in enumerate(labels) if (c >> k) & 1) for c in codes],
            "code": codes,
            "degree": bits[1:].sum(axis=1),
            "count": totals[1:],
        }
    )

    degree = bits.sum(axis=1)
    consensus_rows, group_frames = [], []
    for group, region in counts.items():
        hist = np.zeros(n_masks + 1, dtype=np.int64)
        np.add.at(hist, degree, region)  # exact int64 (bincount weights would go through float64)
        consensus_rows += [(group, k, int(hist[k])) for k in range(n_masks + 1)]
        frame = _pairwise(region, labels)
        frame.insert(0, "group", [group] * len(frame))
        group_frames.append(frame)
    consensus = pd.DataFrame(consensus_rows, columns=["group", "k", "count"])
    by_group = pd.concat(group_frames, ignore_index=True)

    return OverlapReport(
        labels=labels,
        region_counts=counts,
        sizes=sizes,
        pairwise=_pairwise(totals, labels),
        regions=regions,
        consensus=consensus,
        by_group=by_group,
    )
