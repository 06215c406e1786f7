"""Overlap of N subnetwork masks over the same parameters: Venn, UpSet, pairwise, consensus.

This module owns the set arithmetic of masks. It works tensor by tensor, never on one giant
flat mask: each parameter gets a membership code ``Σ_k mask_k << k`` and counting the codes per
tensor gives the exclusive count of every region (the UpSet bars, the 3 Venn regions for N = 2
and the 7 for N = 3); :mod:`~subnetviz.analysis.overlap_counts` counts them on the packed bits,
several parameters per histogram entry below 8 masks. Everything else (sizes, pairwise intersections,
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
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis.overlap_counts import GroupRegions, _packed, _shape, _source
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
def _reducers(n_masks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 (2**N, ·) 0/1 matrices that turn region counts into, by one product: each mask's
    size (N columns), each pair's intersection (pairs a < b in label order) and the number of
    parameters in exactly k masks (N + 1 columns). Cached, read-only."""
    bits = _membership(n_masks).astype(np.float64)
    ia, ib = np.triu_indices(n_masks, 1)
    pairs = bits[:, ia] * bits[:, ib]
    degree = np.zeros((2**n_masks, n_masks + 1))
    degree[np.arange(2**n_masks), _membership(n_masks).sum(1)] = 1.0
    for m in (bits, pairs, degree):
        m.flags.writeable = False
    return bits, pairs, degree


def _reduce(
    region: np.ndarray | GroupRegions, n_masks: int, numel: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sizes (G, N), pair intersections (G, pairs), exactly-k counts (G, N + 1)) of region counts
    (G, 2**N) (an array, or the groups' :class:`GroupRegions`), exact int64 by BLAS products:
    float32 for a chunk of groups of fewer than 2**24 parameters each (``numel``, else summed here),
    float64 below 2**53: every partial sum is then an integer the type holds. Integer products beyond
    (NumPy's int64 matmul has no BLAS: ~0.4 s per group at N = 16). Above 8 masks the codes are split
    into their low 8 and high N - 8 bits (:func:`_reduce_split`). Groups go through one reused buffer
    of 2**20 counts at a time (at N = 16 a float copy of every group at once is 0.5 MB per group)."""
    if isinstance(region, GroupRegions):
        fill, n_groups = region.fill_rows, len(region)
    else:
        n_groups, numel = region.shape[0], region.sum(1) if numel is None else numel

        def fill(g0: int, out: np.ndarray) -> None:
            np.copyto(out, region[g0 : g0 + out.shape[0]], casting="unsafe")

    rows = max(1, (1 << 20) // 2**n_masks)
    bufs: dict[type, np.ndarray] = {}
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for g0 in range(0, n_groups, rows):
        peak = int(numel[g0 : g0 + rows].max())
        dtype = np.float32 if peak < 2**24 else np.float64 if peak < 2**53 else np.int64
        if dtype not in bufs:
            bufs[dtype] = np.empty((min(rows, n_groups), 2**n_masks), dtype)
        r = bufs[dtype][: min(rows, n_groups - g0)]
        fill(g0, r)
        if dtype is np.int64:
            parts.append(tuple(r @ m.astype(np.int64) for m in _reducers(n_masks)))
        elif n_masks > 8:
            parts.append(_reduce_split(r, n_masks))
        else:
            parts.append(tuple(np.rint(r @ m.astype(dtype)).astype(np.int64) for m in _reducers(n_masks)))
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


@functools.lru_cache(maxsize=2)
def _low_columns(low: int) -> np.ndarray:
    """float64 (2**low, 2·low + 2): each low code's bits, its degree (one-hot) and a 1 (cached, read-only)."""
    bits, _, degree = _reducers(low)
    cols = np.concatenate([bits, degree, np.ones((2**low, 1))], axis=1)
    cols.flags.writeable = False
    return cols


def _reduce_split(r: np.ndarray, n_masks: int, low: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_reduce` of float32 / float64 region counts with codes split as ``lo + (hi << low)``: one product
    over the 2**low low codes (:func:`_low_columns`) gives, per group and high code, the parameters
    with each low bit, of each low degree and in all; the rest runs over 2**(N - low) high codes."""
    high = n_masks - low
    g = r.shape[0]
    bits_lo, pairs_lo, _ = _reducers(low)
    bits_hi, pairs_hi, deg_hi = _reducers(high)
    y = (r.reshape(g * 2**high, 2**low) @ _low_columns(low).astype(r.dtype)).reshape(g, 2**high, 2 * low + 2)
    by_bit, by_deg, m_hi = y[..., :low], y[..., low : 2 * low + 1], y[..., -1]  # (G, 2**high, ·)
    m_lo = r.reshape(g, 2**high, 2**low).sum(1)  # (G, 2**low)
    sizes = np.concatenate([by_bit.sum(1), m_hi @ bits_hi], axis=1)
    inter = np.zeros((g, n_masks, n_masks))
    la, lb = np.triu_indices(low, 1)
    ha, hb = np.triu_indices(high, 1)
    inter[:, la, lb] = m_lo @ pairs_lo
    inter[:, low + ha, low + hb] = m_hi @ pairs_hi
    inter[:, :low, low:] = by_bit.transpose(0, 2, 1) @ bits_hi  # lo mask l with hi mask k
    ia, ib = np.triu_indices(n_masks, 1)
    by_deg = deg_hi.T @ by_deg  # (G, high + 1, low + 1): hi and lo degrees
    degree = np.zeros((g, n_masks + 1))
    for e in range(high + 1):
        degree[:, e : e + low + 1] += by_deg[:, e, :]
    return tuple(np.rint(x).astype(np.int64) for x in (sizes, inter[:, ia, ib], degree))


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _pairwise(
    region: np.ndarray, labels: Sequence[str], reduced: tuple | None = None, numel: np.ndarray | None = None
) -> pd.DataFrame:
    """Pairwise rows (a < b, label order) of region counts (2**N,) or, per group, (G, 2**N): G blocks.
    ``reduced``, ``numel``: the groups' :func:`_reduce` and parameters when the caller has them
    (``region`` is then not read)."""
    n_masks = len(labels)
    if reduced is None:
        region = np.atleast_2d(region)
        reduced, numel = _reduce(region, n_masks), region.sum(1) if numel is None else numel
    sizes, inter, _ = reduced
    ia, ib = np.triu_indices(n_masks, 1)
    groups, n_pairs = sizes.shape[0], len(ia)
    lab = np.asarray(labels, dtype=object)
    frame = pd.DataFrame(
        {
            "a": np.tile(lab[ia], groups).tolist(),
            "b": np.tile(lab[ib], groups).tolist(),
            "count_a": sizes[:, ia].reshape(-1),
            "count_b": sizes[:, ib].reshape(-1),
            "numel": np.repeat(numel, n_pairs),
            "intersection": inter.reshape(-1),
        },
        columns=_PAIR_COLUMNS[:6],
    )
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
        if isinstance(self.region_counts, GroupRegions):
            return self.region_counts.totals.copy()
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

    if not names:
        raise MaskError("the mask sets hold no tensors; nothing to compare.")
    group_index: dict[Hashable, int] = {}
    rows = [group_index.setdefault(group_of(name), len(group_index)) for name in names]
    groups = list(group_index)
    # the groups' region counts, compact above 8 masks (at N = 16 a dense int64 row is 0.5 MB per group)
    per_group = GroupRegions(groups, n_masks)
    group_numel = np.zeros(len(groups), dtype=np.int64)  # no second pass over (G, 2**N) for it
    for name, row in zip(names, rows, strict=True):
        numel = math.prod(_shape(sets[0], name))
        group_numel[row] += numel
        per_group.add([_source(s, name) for s in sets], numel, row)
    totals = per_group.close().totals
    bits = _membership(n_masks)
    numel = int(totals.sum())

    size_counts = bits.T @ totals
    sizes = pd.DataFrame({"label": list(labels), "count": size_counts, "numel": numel})
    sizes["density"] = _div(size_counts, numel)

    members: list[tuple[str, ...]] = [()]  # members of code c: bit k set -> label k, in label order
    for lbl in labels:
        members += [m + (lbl,) for m in members]
    regions = pd.DataFrame(
        {"members": members[1:], "code": np.arange(1, 2**n_masks), "degree": bits[1:].sum(axis=1), "count": totals[1:]}
    )

    reduced = _reduce(per_group, n_masks, group_numel)  # one product per statistic for every group at once
    consensus = pd.DataFrame(
        {
            "group": [g for g in groups for _ in range(n_masks + 1)],
            "k": np.tile(np.arange(n_masks + 1), len(groups)),
            "count": reduced[2].reshape(-1),
        },
        columns=["group", "k", "count"],
    )
    by_group = _pairwise(None, labels, reduced, group_numel)
    by_group.insert(0, "group", [g for g in groups for _ in range(n_masks * (n_masks - 1) // 2)])

    return OverlapReport(
        labels=labels,
        region_counts=per_group,
        sizes=sizes,
        pairwise=_pairwise(totals, labels),
        regions=regions,
        consensus=consensus,
        by_group=by_group,
    )
