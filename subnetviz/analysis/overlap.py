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

A tensor can also be split into parts counted in groups of their own (``parts_of``): the per-layer grid
(:func:`overlap_by_layer_module`) splits a fused QKV into q, k and v as the Update sparsity page does, calling
the naming table's own split (:meth:`~subnetviz.checkpoints.naming.NameTable.fused_parts`).

A vocabulary tensor (the embedding, the LM head: the rule :func:`~subnetviz.checkpoints.align.align` aligns
checkpoints by) whose shape differs between the masks only in the first dimension (a resized vocabulary) is
compared over its shared leading rows; any other shape difference (a norm or an MLP of another width: masks of
another model) raises, or with ``other_shapes="skip"`` leaves the tensor out, and where no tensor is left but
vocabulary rows the masks are said to be of different models. Either way ``OverlapReport.notes`` says which
tensors and how many entries. :func:`held_by_every` says which tensors not every mask holds.

Ratios with a zero denominator are NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis.overlap_counts import (
    GroupRegions,
    PartsOf,
    PartSource,
    _count_set,
    _packed,
    _shape,
    _source,
    split_parts,
)
from subnetviz.checkpoints.align import _is_vocab_tensor
from subnetviz.checkpoints.naming import NameTable, looks_like_vocabulary
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


@dataclass(frozen=True)
class VocabularyRows:
    """Which tensors may differ in their first dimension between masks of one model (``mask_overlap``'s
    ``shares_rows``): a resized vocabulary's, the embedding and the LM head under the naming ``table``, by the rule
    the update analysis aligns checkpoints by (:func:`~subnetviz.checkpoints.align.align`'s own). A table of no
    family (``blind``: names no architecture's table is chosen for, ``emb``, ``w``, or too few to tell one) takes
    the tensors named as an embedding or an LM head by any table, or by their module's own name
    (:func:`~subnetviz.checkpoints.naming.looks_like_vocabulary`: ``emb``, ``tok_embeddings``, ...), and no
    other: an MLP of another width (``gate_proj`` 16 rows against 20) is left out, not compared over its leading
    rows as two models' different neurons; the notes say which rule named them."""

    table: NameTable

    @property
    def blind(self) -> bool:
        return self.table.family is None

    def __call__(self, name: str) -> bool:
        return looks_like_vocabulary(name) if self.blind else _is_vocab_tensor(self.table, name)


def _validate(
    sets: list[Mapping[str, torch.Tensor]],
    labels: tuple[str, ...],
    other_shapes: str = "raise",
    shares_rows: Callable[[str], bool] | None = None,
) -> tuple[list[str], dict[str, int], list[str]]:
    """(the tensors compared, the entries compared of each, notes). A tensor that may share rows
    (``shares_rows(name)``: a vocabulary's, by default :class:`VocabularyRows` of the names' own table) whose shape
    differs between the masks only in the first dimension (a resized vocabulary) is compared over its shared
    leading rows (a prefix of its row-major entries); any other difference raises, or (``other_shapes="skip"``)
    leaves the tensor out. The notes name those tensors and the entries not compared. Where nothing is left to
    compare but a vocabulary's shared rows (or nothing at all) the masks are of different models: one line saying
    so is raised."""
    if other_shapes not in OTHER_SHAPES:
        raise ConfigError(f"other_shapes must be one of {OTHER_SHAPES}; got {other_shapes!r}.")
    names = _check_names(sets, labels)
    # by default the table the names give (as the Overlap page builds it: no config.json beside mask files)
    shares_rows = shares_rows or VocabularyRows(NameTable.from_config({}, names))
    kept: list[str] = []
    numel: dict[str, int] = {}
    rows_cut: list[str] = []
    cut_entries = np.zeros(len(sets), np.int64)  # per mask: entries past the shared rows
    skipped: list[str] = []
    skip_entries = np.zeros(len(sets), np.int64)
    # No family's table: also a tensor shaped, in every mask, as a tensor named a vocabulary's there (an LM head
    # beside its embedding: Meta's Llama releases' output.weight, ChatGLM's output_layer, OLMo's ff_out)
    vocab_shapes = (
        [
            {_mask_shape(masks, label, n) for n in names if shares_rows(n)}
            for label, masks in zip(labels, sets, strict=True)
        ]
        if getattr(shares_rows, "blind", False)
        else None
    )
    for name in names:
        shapes = [_mask_shape(masks, label, name) for label, masks in zip(labels, sets, strict=True)]
        like_vocab = vocab_shapes is not None and all(s in v for s, v in zip(shapes, vocab_shapes, strict=True))
        sizes = np.array([math.prod(s) for s in shapes], np.int64)
        described = ", ".join(f"{label}: {s}" for label, s in zip(labels, shapes, strict=True))
        if all(s == shapes[0] for s in shapes):
            kept.append(name)
            numel[name] = int(sizes[0])
        elif all(len(s) == len(shapes[0]) >= 1 and s[1:] == shapes[0][1:] for s in shapes) and (
            shares_rows(name) or like_vocab
        ):
            rows = min(s[0] for s in shapes)
            kept.append(name)
            numel[name] = rows * math.prod(shapes[0][1:])
            cut_entries += sizes - numel[name]
            rows_cut.append(f"{name} ({described}: the first {rows:,} rows, {numel[name]:,} entries)")
        elif other_shapes == "raise":
            other = next(k for k, s in enumerate(shapes) if s != shapes[0])
            raise MaskError(
                f"tensor {name!r}: mask {labels[other]!r} has shape {shapes[other]} but mask {labels[0]!r} has "
                f"{shapes[0]}; only a vocabulary's rows (the embedding's, the LM head's) may differ. Are these "
                "masks of the same model?"
            )
        else:
            skipped.append(f"{name} ({described})")
            skip_entries += sizes
    if skipped and len(rows_cut) == len(kept):  # nothing compared whole: masks of another model's shapes
        what = "only a vocabulary's shared rows would be compared" if kept else "nothing would be compared"
        raise MaskError(
            f"no tensor left to compare: the masks are of different models ({what}; the shapes of "
            f"{len(skipped):,} of their {len(names):,} tensors differ between them, e.g. {skipped[0]})."
        )
    notes = []
    # (no family's table chosen: which tensors were taken as a vocabulary's, said once, on the first note)
    blind = (
        " No naming table is chosen for these names: a tensor is taken as a vocabulary's where it is named as an "
        "embedding or an LM head (embed_tokens, wte, lm_head, emb, output, ...) or shaped as one in every mask."
        if getattr(shares_rows, "blind", False)
        else ""
    )
    if rows_cut:
        past = ", ".join(f"{label}: {int(n):,}" for label, n in zip(labels, cut_entries, strict=True) if n)
        notes.append(
            f"Compared over their shared leading rows only (a resized vocabulary: the first dimension differs "
            f"between the masks): {len(rows_cut):,} tensor(s): {_listed(rows_cut)}. Entries past those rows, not "
            f"compared: {past}.{blind}"
        )
    if skipped:
        left = ", ".join(f"{label}: {int(n):,}" for label, n in zip(labels, skip_entries, strict=True))
        notes.append(
            f"Left out of the overlap (shapes differ between the masks, and only a vocabulary's rows may differ "
            f"between masks of one model): {len(skipped):,} tensor(s): {_listed(skipped)}. Entries not compared: "
            f"{left}.{'' if rows_cut else blind}"
        )
    return kept, numel, notes


def mask_overlap(
    mask_sets: Sequence,
    labels: Sequence[str] | None = None,
    *,
    group_of: Callable[[str], Hashable] | None = None,
    parts_of: PartsOf | None = None,
    other_shapes: str = "raise",
    shares_rows: Callable[[str], bool] | None = None,
) -> OverlapReport:
    """Overlap of N mask sets (each a MaskSet or a mapping name -> bool tensor) over the same tensors.

    ``labels`` default to ``m0, m1, ...``. ``group_of(name)`` maps a tensor name to its group
    (e.g. ``(layer, module)``); by default each tensor is its own group. ``parts_of(name, mask)`` (optional)
    splits a tensor into parts counted in groups of their own: given an empty bool tensor of the tensor's shape
    (on the meta device: no bits), the parts as views of it ``{group: view}`` (a fused QKV's q, k and v:
    :func:`overlap_by_layer_module`), or None to keep it whole in ``group_of(name)`` (as is a part that is no
    view of it). Each mask's parts are then read from its bits a block at a time, never unpacked whole. In a
    part's group the per-tensor chance takes the part as its own tensor (its own densities); the overall
    per-tensor chance, the consensus chance and ``tensor_*`` stay per tensor. A tensor that ``shares_rows(name)``
    (a vocabulary's: :class:`VocabularyRows` of a naming table, by default of the table the names give) whose
    shape differs between the sets only in its first dimension (a resized vocabulary) is compared over the
    shared leading rows (and not split); ``other_shapes`` says what other shape differences do: ``"raise"``
    (default) or ``"skip"`` (the tensor is left out; where nothing but a vocabulary's rows is left, the masks are
    of different models and :class:`MaskError` says so). Either is said in ``notes``. Raises :class:`MaskError`
    when names or dtypes differ between the sets, and :class:`ConfigError` for more than :data:`MAX_MASKS` sets.
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
    names, entries, notes = _validate(sets, labels, other_shapes, shares_rows)
    group_of = group_of or (lambda name: name)

    if not names:
        raise MaskError("the mask sets hold no tensors; nothing to compare.")
    # each tensor's groups: its own (group_of), or its parts' (parts_of; a whole tensor only, not shared rows)
    shapes = {name: _mask_shape(sets[0], labels[0], name) for name in names}
    split = {
        name: split_parts(parts_of, name, shapes[name])
        if parts_of is not None and entries[name] == math.prod(shapes[name])
        else None
        for name in names
    }
    whole = {name: group_of(name) for name in names if split[name] is None}
    group_index: dict[Hashable, int] = {}
    for name in names:
        for group in [g for g, _ in split[name]] if split[name] else [whole[name]]:
            group_index.setdefault(group, len(group_index))
    groups = list(group_index)
    # the groups' region counts, compact above 8 masks (at N = 16 a dense int64 row is 0.5 MB per group)
    per_group = GroupRegions(groups, n_masks)
    group_numel = np.zeros(len(groups), dtype=np.int64)  # no second pass over (G, 2**N) for it
    tensor_counts = np.zeros((len(names), n_masks), dtype=np.int64)  # each mask's size per tensor
    tensor_numel = np.array([entries[name] for name in names], dtype=np.int64)
    strata: list[tuple[int, list[int], int]] = []  # (group row, each mask's size, entries) of each tensor or part
    for t, name in enumerate(names):
        numel = entries[name]  # the shared leading rows' entries where the first dimension differs
        sources = [_source(s, name) for s in sets]
        if split[name] is None:
            cut = [(whole[name], sources, numel)]
        else:  # per part: every mask's part, read from its bits a block at a time (nothing unpacked whole)
            cut = [(g, [PartSource(src, layout) for src in sources], layout.numel) for g, layout in split[name]]
        for group, srcs, n in cut:
            row = group_index[group]
            group_numel[row] += n
            counts = [_count_set(src, n) for src in srcs]
            tensor_counts[t] += counts
            strata.append((row, counts, n))
            per_group.add(srcs, n, row)
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
    # per-tensor chance intersections Σ_t c_a,t·c_b,t / n_t (float64), overall per tensor, per group over its
    # tensors and parts (a split tensor's part is its own stratum in its own group)
    ia, ib = np.triu_indices(n_masks, 1)

    def chance(counts: np.ndarray, n: np.ndarray) -> np.ndarray:
        c = counts.astype(np.float64)
        return np.nan_to_num(_div(c[:, ia] * c[:, ib], n[:, None]), nan=0.0)  # an empty tensor expects none

    per_tensor = chance(tensor_counts, tensor_numel)
    expected = np.zeros((len(groups), len(ia)))
    s_rows = np.array([r for r, _, _ in strata], dtype=np.int64)
    s_counts = np.array([c for _, c, _ in strata], dtype=np.int64).reshape(len(strata), n_masks)
    np.add.at(expected, s_rows, chance(s_counts, np.array([n for _, _, n in strata], dtype=np.int64)))
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


def held_by_every(mask_sets: Sequence, labels: Sequence[str]) -> tuple[set[str], list[str]]:
    """(the tensors every mask set holds, the notes) of N mask sets (each a MaskSet or a mapping name -> bool
    tensor, bit-packed or not) that need not hold the same tensors: :func:`mask_overlap` compares the common ones,
    and where some set holds others, one note names them, how many, and each set's entries in them (set, of all:
    counted on the bits, nothing unpacked whole), which the overlap's counts, o1 denominators and densities
    leave out."""
    sets = [_as_dict(s, i) for i, s in enumerate(mask_sets)]
    labels = [str(lbl) for lbl in labels]
    held = [set(m) for m in sets]  # (a Mapping's own `in` may fetch the tensor)
    common = set.intersection(*held) if held else set()
    others = list(dict.fromkeys(n for m in sets for n in m if n not in common))
    if not others:
        return common, []
    listed = [f"{n} (in {', '.join(lbl for lbl, h in zip(labels, held, strict=True) if n in h)})" for n in others]
    entries = []
    for label, masks, h in zip(labels, sets, held, strict=True):
        size = {n: math.prod(_mask_shape(masks, label, n)) for n in others if n in h}
        count = sum(_count_set(_source(masks, n), k) for n, k in size.items())
        entries.append(f"{label}: {count:,} of {sum(size.values()):,}" if size else f"{label}: none")
    return common, [
        f"Compared over the {len(common):,} tensors every mask holds; left out, not in every mask: "
        f"{len(others):,} tensor(s): {_listed(listed)}. Their entries (in the mask, of all), not compared: "
        f"{', '.join(entries)}; each mask's counts, o1 denominators and densities here leave them out."
    ]


@dataclass(frozen=True)
class LayerModuleGroups:
    """The per-layer grid's groups under a naming table (:class:`~subnetviz.checkpoints.naming.NameTable`), as
    the Update sparsity page's grid has them: each tensor in (layer, module), and a fused tensor that the table
    splits (:meth:`~subnetviz.checkpoints.naming.NameTable.fused_parts`: GPT-2's ``c_attn``, GPT-NeoX's, Falcon's
    and GPT-BigCode's fused QKV, Phi-3's ``qkv_proj`` and ``gate_up_proj``, where their layout is known) in
    (layer, part) for each part: q, k and v. Packed experts (every expert of a layer in one 3-D tensor) stay
    whole: their gate and up lie along another dimension than ``fused_parts`` cuts."""

    table: object  # NameTable

    def group(self, name: str) -> tuple:
        info = self.table.describe(name)
        return (info.layer, info.module)

    def parts(self, name: str, mask: torch.Tensor) -> dict[tuple, torch.Tensor] | None:
        info = self.table.describe(name)
        if info.expert == "all":
            return None
        parts = self.table.fused_parts(name, mask)
        return None if parts is None else {(info.layer, part): view for part, view in parts.items()}


def overlap_by_layer_module(
    mask_sets: Sequence, labels: Sequence[str] | None, table, *, other_shapes: str = "raise"
) -> OverlapReport:
    """:func:`mask_overlap` grouped by (layer, module) of the naming ``table``, fused tensors split into their
    parts as the Update sparsity page splits them (:class:`LayerModuleGroups`); only the table's vocabulary
    tensors may be compared over shared rows (:class:`VocabularyRows`). Where a fused QKV is still
    counted whole as ``qkv`` (its layout unknown: no config.json beside mask files), the notes say so, in the
    table's own words (its ``notice``, as the Update sparsity page gives it) where it has them; so too where the
    table has no family (every module kind ``other``: one column per layer, gate, up and down in it)."""
    grid = LayerModuleGroups(table)
    report = mask_overlap(
        mask_sets,
        labels,
        group_of=grid.group,
        parts_of=grid.parts,
        other_shapes=other_shapes,
        shares_rows=VocabularyRows(table),
    )
    if table.family is None and table.notice:  # (no table: no qkv either, every tensor is 'other')
        return dataclasses.replace(report, notes=(*report.notes, table.notice))
    whole = [g for g in report.region_counts if isinstance(g, tuple) and g[1:] == ("qkv",)]
    if not whole:
        return report
    said = table.notice or (
        f"Fused QKV counted whole as qkv in {len(whole):,} layer(s): the naming table does not split it into q, k "
        "and v without config.json's head counts (mask files carry none), so it is one qkv column per layer."
    )
    return dataclasses.replace(report, notes=(*report.notes, said))
