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

Those are the paper's chance values (App. E): *global*, one density per mask over every compared
parameter. Where densities differ from tensor to tensor (RL updates: embeddings barely touched, MLPs
mostly), independent masks meet far more often than n·p·q says, inside the dense tensors, and the
global "× chance" reads above 1 for masks drawn independently within each tensor. So every pair also
gets the *per-tensor* (stratified) chance, independence within each tensor t of n_t parameters, where
the masks hold c_a,t and c_b,t entries: expected intersection ``E = Σ_t c_a,t·c_b,t / n_t`` (float64),
``expected_intersection_per_tensor = E``, ``o1_chance_per_tensor = E / |I_a|``, ``o2_chance_per_tensor =
E / |I_b|``, ``jaccard_chance_per_tensor = E / (|I_a| + |I_b| − E)`` and ``ratio_over_chance_per_tensor
= |I_a ∩ I_b| / E``; ``expected_intersection = n·p·q`` is the global expectation. Per group (``by_group``)
the same sums run over the group's tensors. The consensus chance (:meth:`OverlapReport.consensus_chance`)
is the Poisson-binomial count per tensor, summed, beside the global one.

Tensors whose shape differs between the masks only in the first dimension (a resized vocabulary) are
compared over their shared leading rows; other shape differences raise, or with ``other_shapes="skip"``
leave the tensor out. Either way ``OverlapReport.notes`` says which tensors and how many entries.

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

from subnetviz.analysis.overlap_counts import GroupRegions, _count_set, _packed, _shape, _source
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
    "expected_intersection",
    "expected_intersection_per_tensor",
    "o1_chance_per_tensor",
    "o2_chance_per_tensor",
    "jaccard_chance_per_tensor",
    "ratio_over_chance_per_tensor",
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
    region: np.ndarray | None,
    labels: Sequence[str],
    reduced: tuple | None = None,
    numel: np.ndarray | None = None,
    expected: np.ndarray | None = None,
) -> pd.DataFrame:
    """Pairwise rows (a < b, label order) of region counts (2**N,) or, per group, (G, 2**N): G blocks.
    ``reduced``, ``numel``: the groups' :func:`_reduce` and parameters when the caller has them
    (``region`` is then not read). ``expected``: (G, pairs) float64, the per-tensor chance intersection
    ``Σ_t c_a,t·c_b,t / n_t`` of each block's tensors (NaN columns without it)."""
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
    frame["expected_intersection"] = _div(ca * cb, n)
    e = np.full(len(frame), np.nan) if expected is None else np.asarray(expected, np.float64).reshape(-1)
    frame["expected_intersection_per_tensor"] = e
    frame["o1_chance_per_tensor"] = _div(e, ca)
    frame["o2_chance_per_tensor"] = _div(e, cb)
    frame["jaccard_chance_per_tensor"] = _div(e, ca + cb - e)
    frame["ratio_over_chance_per_tensor"] = _div(ab, e)
    return frame


def _poisson_binomial(p: np.ndarray) -> np.ndarray:
    """(T, N + 1) float64: row t's probability that exactly k of N independent events of probabilities
    ``p[t]`` (T, N) occur, by dynamic programming (P_k after event i is P_k·(1 − p_i) + P_{k−1}·p_i)."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    prob = np.zeros((p.shape[0], p.shape[1] + 1))
    prob[:, 0] = 1.0
    for i in range(p.shape[1]):
        pi = p[:, i : i + 1]
        prob[:, 1:] = prob[:, 1:] * (1 - pi) + prob[:, :-1] * pi
        prob[:, :1] *= 1 - pi
    return prob


@dataclass(frozen=True, eq=False)
class OverlapReport:
    """Overlap of N masks. ``region_counts[group]``: (2**N,) int64 exclusive counts per code.

    Frames: ``sizes`` (label, count, numel, density); ``pairwise`` (one row per pair a < b, see
    the module docstring); ``regions`` (members, code, degree, count) for the 2**N − 1 non-empty
    regions; ``consensus`` (group, k, count): parameters contained in exactly k masks, per group;
    ``by_group``: the pairwise columns per group. ``notes``: tensors compared over their shared leading
    rows or left out (shapes that differ between the masks). ``tensor_names``, ``tensor_counts`` (T, N)
    and ``tensor_numel`` (T,): each compared tensor's mask sizes, behind the per-tensor chance.
    """

    labels: tuple[str, ...]
    region_counts: Mapping[Hashable, np.ndarray]
    sizes: pd.DataFrame
    pairwise: pd.DataFrame
    regions: pd.DataFrame
    consensus: pd.DataFrame
    by_group: pd.DataFrame
    notes: tuple[str, ...] = ()
    tensor_names: tuple[str, ...] = ()
    tensor_counts: np.ndarray | None = None
    tensor_numel: np.ndarray | None = None

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

    def consensus_chance(self) -> pd.DataFrame:
        """k (0..N), expected_per_tensor, expected_global: the expected number of parameters in exactly k masks
        for masks drawn independently, per tensor at each tensor's own densities (the Poisson-binomial
        count of each tensor, summed), and over the model at each mask's overall density (one Poisson
        binomial of the :attr:`sizes` densities)."""
        n_masks = len(self.labels)
        dens = self.sizes["density"].to_numpy(np.float64)
        glob = self.numel * _poisson_binomial(np.nan_to_num(dens)[None, :])[0]
        if self.tensor_counts is None:
            per = np.full(n_masks + 1, np.nan)
        else:
            n_t = np.asarray(self.tensor_numel, np.float64)
            p = np.asarray(self.tensor_counts, np.float64) / np.where(n_t > 0, n_t, 1.0)[:, None]
            per = (n_t[:, None] * _poisson_binomial(p)).sum(0)
        return pd.DataFrame({"k": np.arange(n_masks + 1), "expected_per_tensor": per, "expected_global": glob})

    def sizes_by_tensor(self) -> pd.DataFrame:
        """name, label, count, numel, density: each mask's size in each compared tensor (shared rows only where
        the shapes differed)."""
        if self.tensor_counts is None:
            return pd.DataFrame(columns=["name", "label", "count", "numel", "density"])
        n_masks = len(self.labels)
        counts = np.asarray(self.tensor_counts).reshape(-1)
        numel = np.repeat(np.asarray(self.tensor_numel), n_masks)
        return pd.DataFrame(
            {
                "name": np.repeat(np.asarray(self.tensor_names, dtype=object), n_masks).tolist(),
                "label": list(self.labels) * len(self.tensor_names),
                "count": counts,
                "numel": numel,
                "density": _div(counts, numel),
            }
        )

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


def _check_names(sets: list[Mapping[str, torch.Tensor]], labels: tuple[str, ...]) -> list[str]:
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
    return names


def _mask_shape(masks: Mapping, label: str, name: str) -> tuple[int, ...]:
    """A mask tensor's shape, checked to be a bool tensor (bit-packed masks: the shape, no unpacking)."""
    if _packed(masks) is not None:
        return _shape(masks, name)
    t = masks[name]
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
        found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise MaskError(f"mask {label!r}, tensor {name!r}: expected a torch.bool tensor, got {found}.")
    return tuple(t.shape)


OTHER_SHAPES = ("raise", "skip")
_LISTED = 8  # tensors named in a note; the rest counted


def _listed(items: list[str]) -> str:
    more = len(items) - _LISTED
    return "; ".join(items[:_LISTED]) + (f"; and {more:,} more" if more > 0 else "")


def _validate(
    sets: list[Mapping[str, torch.Tensor]], labels: tuple[str, ...], other_shapes: str = "raise"
) -> tuple[list[str], dict[str, int], list[str]]:
    """(the tensors compared, the entries compared of each, notes). A tensor whose shape differs between the
    masks only in the first dimension (a resized vocabulary) is compared over its shared leading rows (a
    prefix of its row-major entries); any other difference raises, or (``other_shapes="skip"``) leaves the
    tensor out. The notes name those tensors and the entries not compared."""
    if other_shapes not in OTHER_SHAPES:
        raise ConfigError(f"other_shapes must be one of {OTHER_SHAPES}; got {other_shapes!r}.")
    names = _check_names(sets, labels)
    kept: list[str] = []
    numel: dict[str, int] = {}
    rows_cut: list[str] = []
    cut_entries = np.zeros(len(sets), np.int64)  # per mask: entries past the shared rows
    skipped: list[str] = []
    skip_entries = np.zeros(len(sets), np.int64)
    for name in names:
        shapes = [_mask_shape(masks, label, name) for label, masks in zip(labels, sets, strict=True)]
        sizes = np.array([math.prod(s) for s in shapes], np.int64)
        described = ", ".join(f"{label}: {s}" for label, s in zip(labels, shapes, strict=True))
        if all(s == shapes[0] for s in shapes):
            kept.append(name)
            numel[name] = int(sizes[0])
        elif all(len(s) == len(shapes[0]) >= 1 and s[1:] == shapes[0][1:] for s in shapes):
            rows = min(s[0] for s in shapes)
            kept.append(name)
            numel[name] = rows * math.prod(shapes[0][1:])
            cut_entries += sizes - numel[name]
            rows_cut.append(f"{name} ({described}: the first {rows:,} rows, {numel[name]:,} entries)")
        elif other_shapes == "raise":
            other = next(k for k, s in enumerate(shapes) if s != shapes[0])
            raise MaskError(
                f"tensor {name!r}: mask {labels[other]!r} has shape {shapes[other]} but mask {labels[0]!r} has "
                f"{shapes[0]}."
            )
        else:
            skipped.append(f"{name} ({described})")
            skip_entries += sizes
    notes = []
    if rows_cut:
        past = ", ".join(f"{label}: {int(n):,}" for label, n in zip(labels, cut_entries, strict=True) if n)
        notes.append(
            f"Compared over their shared leading rows only (the first dimension differs between the masks, as a "
            f"resized vocabulary's does): {len(rows_cut):,} tensor(s): {_listed(rows_cut)}. Entries past those "
            f"rows, not compared: {past}."
        )
    if skipped:
        left = ", ".join(f"{label}: {int(n):,}" for label, n in zip(labels, skip_entries, strict=True))
        notes.append(
            f"Left out of the overlap (shapes differ beyond the first dimension): {len(skipped):,} tensor(s): "
            f"{_listed(skipped)}. Entries not compared: {left}."
        )
    if names and not kept:
        raise MaskError(f"no tensor left to compare: every tensor's shape differs between the masks. {notes[-1]}")
    return kept, numel, notes


def mask_overlap(
    mask_sets: Sequence,
    labels: Sequence[str] | None = None,
    *,
    group_of: Callable[[str], Hashable] | None = None,
    other_shapes: str = "raise",
) -> OverlapReport:
    """Overlap of N mask sets (each a MaskSet or a mapping name -> bool tensor) over the same tensors.

    ``labels`` default to ``m0, m1, ...``. ``group_of(name)`` maps a tensor name to its group
    (e.g. ``(layer, module)``); by default each tensor is its own group. A tensor whose shape differs
    between the sets only in its first dimension (a resized vocabulary) is compared over the shared leading
    rows; ``other_shapes`` says what other shape differences do: ``"raise"`` (default) or ``"skip"`` (the
    tensor is left out). Either is said in ``notes``. Raises :class:`MaskError` when names or dtypes differ
    between the sets, and :class:`ConfigError` for more than :data:`MAX_MASKS` sets.
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
    names, entries, notes = _validate(sets, labels, other_shapes)
    group_of = group_of or (lambda name: name)

    if not names:
        raise MaskError("the mask sets hold no tensors; nothing to compare.")
    group_index: dict[Hashable, int] = {}
    rows = [group_index.setdefault(group_of(name), len(group_index)) for name in names]
    groups = list(group_index)
    # the groups' region counts, compact above 8 masks (at N = 16 a dense int64 row is 0.5 MB per group)
    per_group = GroupRegions(groups, n_masks)
    group_numel = np.zeros(len(groups), dtype=np.int64)  # no second pass over (G, 2**N) for it
    tensor_counts = np.zeros((len(names), n_masks), dtype=np.int64)  # each mask's size per tensor
    tensor_numel = np.array([entries[name] for name in names], dtype=np.int64)
    for t, (name, row) in enumerate(zip(names, rows, strict=True)):
        numel = entries[name]  # the shared leading rows' entries where the first dimension differs
        group_numel[row] += numel
        sources = [_source(s, name) for s in sets]
        tensor_counts[t] = [_count_set(src, numel) for src in sources]
        per_group.add(sources, numel, row)
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
    # per-tensor chance intersections Σ_t c_a,t·c_b,t / n_t (float64), per group and overall
    ia, ib = np.triu_indices(n_masks, 1)
    counts64 = tensor_counts.astype(np.float64)
    per_tensor = _div(counts64[:, ia] * counts64[:, ib], tensor_numel[:, None])
    per_tensor = np.nan_to_num(per_tensor, nan=0.0)  # an empty tensor expects no overlap
    expected = np.zeros((len(groups), len(ia)))
    np.add.at(expected, np.asarray(rows, dtype=np.int64), per_tensor)
    by_group = _pairwise(None, labels, reduced, group_numel, expected)
    by_group.insert(0, "group", [g for g in groups for _ in range(n_masks * (n_masks - 1) // 2)])

    return OverlapReport(
        labels=labels,
        region_counts=per_group,
        sizes=sizes,
        pairwise=_pairwise(totals, labels, expected=per_tensor.sum(0, keepdims=True)),
        regions=regions,
        consensus=consensus,
        by_group=by_group,
        notes=tuple(notes),
        tensor_names=tuple(names),
        tensor_counts=tensor_counts,
        tensor_numel=tensor_numel,
    )
