"""Geometry of W_base vs W_ft (not of Δ): principal angles, singular-value ratios, principal weights.

This module owns, per 2-D weight, the comparison of the top-K singular structure of the base and
the finetuned matrix:

- ``angles_left`` / ``angles_right``: principal angles (degrees, ascending) between the top-K left
  (right) singular subspaces, θ_i = arccos σ_i(U_baseᵀ U_ft) (arXiv 2508.16546: RL barely moves
  singular values but rotates singular vectors);
- ``sv_ratio``: σ_i(W_ft)/σ_i(W_base), i ≤ K; ``sv_ratio_mean`` and ``sv_ratio_maxdev`` =
  max_i |ratio_i − mean| (arXiv 2509.17866: the ratios are near uniform, a pure scaling);
- ``principal_overlap``: the share of the update mask (stored bits differ) inside the principal
  mask (the same number of entries with the largest |rank-K reconstruction of W_base|), against
  ``principal_overlap_chance`` = the update density (arXiv 2511.08567: RL avoids principal weights).
  Entries tied at the mask's threshold count fractionally (the expected overlap under a random choice among
  them), so the number does not depend on where the changes lie.

A pair whose entries differ only in the sign of zero (+0 against −0: other bits, equal values) keeps its changed
entries in ``changed`` (the update pass counts them so) but is the same matrix: its angles are exactly 0, its σ ratios
1 and its principal-weight overlap NaN, as an unchanged pair's, and a note names it (``zero_signs_only``).

The update mask follows the update pass (:func:`subnetviz.analysis.quant.compare_aligned`): with a comparison
precision chosen (``SubspaceOptions.precision``, ``analyze --precision``, the sidebar's), every pair at it (both
sides cast to it); with none, a float pair at the finetune's stored dtype (the base rounded to it), a float side
against a quantized one at the float side's stored dtype (both cast to it), a quantized pair as dequantised
float32; so ``changed`` is the update pass's. The angles, σ ratios and principal weights are taken of the
matrices at that same dtype: an fp32 base against its bf16 release read the base's bf16 rounding as rotation
(0.33° where one entry changed by one step moved the subspace 0.02°); a note says which pairs were cast, or the
precision every pair was compared at. A base (or finetune) whose σ₁ is 0 has no top-K subspace: its angles (and,
for the base, the principal overlap) are NaN. Biases are no matrices (gpt-oss's packed (E, out) ones included); a
packed 3-D expert tensor (E, m, n) of float weights is compared expert by expert, its rows named ``name[e]`` as
the spectra name them (``expert`` says which); one stored quantized on a side is left out, with a note. An output
head the base ties to its embedding while the finetune stores it is compared with the base's embedding and named
as the head (``lm_head.weight``), as the update pass names it.

Numerics:

- ``method="gram"`` (default up to ``max_dim``): the smaller Gram (WᵀW or WWᵀ) in float64, formed
  chunk by chunk, and ``eigh``; the other side's basis is ``qr(W V_K)``. The subspace error is of
  order eps64·σ1²/(σ_K² − σ_{K+1}²): tiny unless the K-th gap is. ``gap`` reports
  (σ_K − σ_{K+1})/σ_1 of the base: when it is ~0 the top-K subspace itself is ill-defined and
  its angles mean little, whatever the method.
- ``method="randomized"`` (``auto`` for a side over ``max_dim`` and the other over ``GRAM_SIDE``:
  the embeddings of 14B-and-larger models): ``torch.svd_lowrank`` in float32 with ``oversample`` extra
  columns and ``power_iters`` power iterations (Halko et al.), then subspace iterations with the
  Rayleigh-Ritz step in float64 until the top-K vectors stop moving (1e-8°, at most 16), so the singular
  values and vectors are float64's. Its error against the exact path is measured by ``benches/bench_subspaces.py``
  (``--embed-shape``) and depends on the spectrum's decay past K; the method used is recorded per row.
- ``method="svd"``: the reference, float64 ``torch.linalg.svd`` of the whole matrix.
- Angles use arccos for cos² < ½ and arcsin of the orthogonal residual otherwise (as
  ``scipy.linalg.subspace_angles``), so small angles keep full relative accuracy.

Nothing here reads files except :func:`analyze_subspaces`, which streams aligned tensors one pair
at a time (each base matrix decomposed once, for every finetuned model).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subnetviz import cache as _cache
from subnetviz.analysis.bits import bits_differ
from subnetviz.analysis.sparsity_report import PRECISIONS
from subnetviz.analysis.subspaces_linalg import (
    _CHUNK_ELEMENTS,
    TopK,
    principal_angles,
    principal_mask,
    principal_overlap,
    top_k,
)
from subnetviz.errors import CastRangeError, ConfigError, NonFiniteError

__all__ = [
    "SubspaceOptions",
    "SubspaceResult",
    "SubspaceTable",
    "TopK",
    "analyze_subspaces",
    "cached_subspaces",
    "compare_subspaces",
    "principal_angles",
    "principal_mask",
    "principal_overlap",
    "top_k",
]

ProgressFn = Callable[[int, int, str], None]
METHODS = ("auto", "gram", "randomized", "svd")
SUBSPACES_VERSION = 6  # bump when the same inputs would give different numbers or files
COLUMNS = [
    "model",
    "name",
    "layer",
    "block",
    "module",
    "expert",
    "rows",
    "cols",
    "k",
    "method",
    "angle_left_max",
    "angle_right_max",
    "angle_left_mean",
    "angle_right_mean",
    "sv_ratio_mean",
    "sv_ratio_maxdev",
    "principal_overlap",
    "principal_overlap_chance",
    "changed",
    "gap",
    "seconds",
]


@dataclass(frozen=True)
class SubspaceOptions:
    """``k``: subspace size (capped at min(m, n)); ``share``: when set, K = ceil(share · min(m, n))
    instead. ``max_dim``: ``auto`` takes the randomized path when a side is longer. ``precision``: the comparison
    precision ('bf16', 'fp16', 'fp32'; None: the update pass's rule for the stored dtypes), as the update
    analysis' ``SparsityOptions.precision``: both sides of every pair are cast to it before the update mask and
    the decompositions (part of the cache key, as every option is)."""

    k: int = 16
    share: float | None = None
    method: str = "auto"
    max_dim: int = 32768
    oversample: int = 16
    power_iters: int = 4
    seed: int = 0
    precision: str | None = None

    def __post_init__(self):
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)} or None, got {self.precision!r}.")
        if self.method not in METHODS:
            raise ConfigError(f"subspace method {self.method!r} is unknown; expected one of {METHODS}.")
        if self.k < 1 and self.share is None:
            raise ConfigError(f"subspace K must be >= 1, got {self.k}.")
        if self.share is not None and not 0 < self.share <= 1:
            raise ConfigError(f"subspace share must be in (0, 1], got {self.share}.")

    def k_for(self, shape: tuple[int, int]) -> int:
        small = min(shape)
        k = math.ceil(self.share * small) if self.share is not None else self.k
        return max(1, min(k, small))


def _stat(values: np.ndarray, fn) -> float:
    """``fn`` of ``values``, NaN for none (a matrix skipped for lack of memory)."""
    return float(fn(values)) if values.size else float("nan")


@dataclass(frozen=True, eq=False)
class SubspaceResult:
    """One matrix of one finetuned model. Angles in degrees, ascending; ratios (K,)."""

    name: str
    shape: tuple[int, int]
    k: int
    method: str
    angles_left: np.ndarray
    angles_right: np.ndarray
    sv_ratio: np.ndarray
    principal_overlap: float
    principal_overlap_chance: float
    changed: int
    gap: float
    seconds: float
    layer: int | None = None
    module: str | None = None
    expert: str | None = None  # a MoE expert's index (or "shared"); of a packed 3-D tensor, the slice ``e``
    block: str | None = None  # the naming's block ("attn", "mlp", ..., "mtp": a multi-token-prediction module's)
    zero_signs_only: bool = False  # changed entries, each +0 against −0 only: equal values (said in a note)

    def row(self) -> dict:
        finite = self.sv_ratio[np.isfinite(self.sv_ratio)]
        mean = float(finite.mean()) if finite.size else float("nan")
        return {
            "name": self.name,
            "layer": self.layer,
            "block": self.block,
            "module": self.module,
            "expert": self.expert,
            "rows": self.shape[0],
            "cols": self.shape[1],
            "k": self.k,
            "method": self.method,
            "angle_left_max": _stat(self.angles_left, np.max),
            "angle_right_max": _stat(self.angles_right, np.max),
            "angle_left_mean": _stat(self.angles_left, np.mean),
            "angle_right_mean": _stat(self.angles_right, np.mean),
            "sv_ratio_mean": mean,
            "sv_ratio_maxdev": float(np.abs(finite - mean).max()) if finite.size else float("nan"),
            "principal_overlap": self.principal_overlap,
            "principal_overlap_chance": self.principal_overlap_chance,
            "changed": self.changed,
            "gap": self.gap,
            "seconds": self.seconds,
        }


@dataclass
class SubspaceTable:
    """Every matrix of every finetuned model: :meth:`to_frame` (one row per matrix and model, the CSV)
    and :meth:`vectors` (the full angle and ratio vectors, long form, the Parquet twin)."""

    results: dict[str, list[SubspaceResult]] = field(default_factory=dict)  # model -> rows
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_frame(self) -> pd.DataFrame:
        rows = [{"model": m, **r.row()} for m, rs in self.results.items() for r in rs]
        return pd.DataFrame(rows, columns=COLUMNS)

    def vectors(self) -> pd.DataFrame:
        parts = []
        for m, rs in self.results.items():
            for r in rs:
                parts.append(
                    pd.DataFrame(
                        {
                            "model": m,
                            "name": r.name,
                            "index": np.arange(r.angles_left.size),  # none for a matrix skipped for lack of memory
                            "angle_left": r.angles_left,
                            "angle_right": r.angles_right,
                            "sv_ratio": r.sv_ratio,
                        }
                    )
                )
        if not parts:
            return pd.DataFrame(columns=["model", "name", "index", "angle_left", "angle_right", "sv_ratio"])
        return pd.concat(parts, ignore_index=True)


# --- one matrix ------------------------------------------------------------------------------------
def compare_subspaces(
    name: str,
    base: torch.Tensor,
    ft: torch.Tensor,
    options: SubspaceOptions = SubspaceOptions(),
    *,
    base_top: TopK | None = None,
    compare_dtype: torch.dtype | None = None,
) -> SubspaceResult:
    """The subspace comparison of one (m, n) matrix pair (stored dtype; same shape).

    ``compare_dtype``: the dtype at which the pair is compared, by default the finetune's, as the update pass
    compares a float pair (:func:`analyze_subspaces` passes the update pass's rule for every stored form). Both
    matrices are cast to it first (round-to-nearest-even, as saving in it would): an entry counts as changed where
    its bits differ there, and the subspaces, σ ratios and principal weights are those of the cast matrices, so a
    base's rounding to the finetune's dtype reads as no rotation. ``base_top``: the base's :class:`TopK` at that
    dtype when already computed (one decomposition per base matrix, whatever the number of finetuned models).
    """
    if base.shape != ft.shape or base.dim() != 2:
        raise ConfigError(
            f"{name}: subspaces need two 2-D matrices of one shape, got {tuple(base.shape)} and {tuple(ft.shape)}."
        )
    t0 = time.perf_counter()
    shape = (int(base.shape[0]), int(base.shape[1]))
    k = options.k_for(shape)
    method = choose_method(shape, options)
    kw = dict(method=method, oversample=options.oversample, power_iters=options.power_iters, seed=options.seed)
    dtype = compare_dtype or ft.dtype
    base, ft = base.to(dtype), ft.to(dtype)  # (no copy where stored so)
    tb = base_top if base_top is not None else top_k(base, k, **kw)
    changed_mask = changed_entries(base, ft, dtype)
    changed = int(changed_mask.sum())
    numel = base.numel()
    base_defined = _sigma1(tb) > 0  # a zero base has no top-K subspace: what its angles would measure is arbitrary
    zero_signs = bool(changed) and equal_values(base, ft)  # bits differ only where +0 meets −0
    if not changed or zero_signs:  # the same matrix: the same subspaces exactly (no round-off angle of 1e-14°)
        angles = np.zeros(tb.sigma.size) if base_defined else np.full(tb.sigma.size, np.nan)
        return SubspaceResult(
            name,
            shape,
            k,
            tb.method,
            angles,
            angles.copy(),
            np.where(tb.sigma > 0, 1.0, np.nan),
            float("nan"),  # no value moved: no update to lie inside or outside the principal weights
            changed / numel if numel else 0.0,  # (the density of ``changed``, counted as the update pass counts it)
            changed,
            _gap(tb),
            time.perf_counter() - t0,
            zero_signs_only=zero_signs,
        )
    tf = top_k(ft, k, **kw)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tb.sigma > 0, tf.sigma / tb.sigma, np.nan)
    if base_defined and _sigma1(tf) > 0:
        left, right = principal_angles(tb.left, tf.left), principal_angles(tb.right, tf.right)
    else:
        left, right = np.full(tb.sigma.size, np.nan), np.full(tb.sigma.size, np.nan)
    overlap = principal_overlap(base, tb.right, changed_mask) if base_defined else float("nan")
    return SubspaceResult(
        name,
        shape,
        k,
        tb.method,
        left,
        right,
        ratio,
        overlap,
        changed / numel if numel else 0.0,
        changed,
        _gap(tb),
        time.perf_counter() - t0,
    )


def changed_entries(base: torch.Tensor, ft: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool (``base``'s shape): where the bits of ``base`` and ``ft``, both cast to ``dtype``
    (round-to-nearest-even, as saving in it would), differ; a band of rows at a time, so no whole cast copy."""
    out = torch.empty(base.shape, dtype=torch.bool, device=base.device)
    step = max(1, _CHUNK_ELEMENTS // max(int(base.shape[1]), 1))
    for s in range(0, base.shape[0], step):
        out[s : s + step] = bits_differ(base[s : s + step].to(dtype), ft[s : s + step].to(dtype))
    return out


def equal_values(base: torch.Tensor, ft: torch.Tensor) -> bool:
    """Whether ``base`` and ``ft`` (one shape and dtype, finite) are equal as values, +0 and −0 alike: a band of rows
    at a time (no whole comparison mask beside the update mask), stopping at the first band that differs."""
    step = max(1, _CHUNK_ELEMENTS // max(int(base.shape[1]), 1))
    return all(torch.equal(base[s : s + step], ft[s : s + step]) for s in range(0, base.shape[0], step))


def _sigma1(t: TopK) -> float:
    return float(t.sigma[0]) if t.sigma.size else 0.0


def _gap(t: TopK) -> float:
    """(σ_K − σ_{K+1}) / σ_1: how well the top-K subspace is defined (0: not at all)."""
    s1 = float(t.sigma[0]) if t.sigma.size else 0.0
    return (float(t.sigma[-1]) - t.next_sigma) / s1 if s1 > 0 else 0.0


GRAM_SIDE = 4096  # ``auto`` keeps the exact Gram path for a short side up to this, however long the other


def choose_method(shape: tuple[int, int], options: SubspaceOptions) -> str:
    """``auto``: the exact float64 Gram path unless both a side is over ``max_dim`` and the short side over
    :data:`GRAM_SIDE` (then the Gram, short side², costs more than the randomized path's products: a 14B-and-larger
    embedding, 152k × 5120)."""
    if options.method != "auto":
        return options.method
    return "randomized" if max(shape) > options.max_dim and min(shape) > GRAM_SIDE else "gram"


# --- checkpoints -----------------------------------------------------------------------------------
def analyze_subspaces(
    base,
    finetuned: Sequence,
    *,
    labels: Sequence[str] | None = None,
    options: SubspaceOptions = SubspaceOptions(),
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> SubspaceTable:
    """Subspace metrics of every aligned weight matrix, ``base`` against each of ``finetuned``.

    Streams one tensor at a time (the base matrix read and decomposed once per name); tensors that are no
    matrices (norms, biases, convolution kernels) are left out, as are non-float tensors; a packed 3-D expert
    tensor is compared expert by expert (:func:`_matrices`). A weight holding NaN or Inf is refused in one
    line naming its file and tensor, as the update pass refuses it.
    """
    from subnetviz.checkpoints import Checkpoint, open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from subnetviz.config import resolve_device

    t0 = time.perf_counter()
    dev = resolve_device(device)
    ck_base = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]  # a PEFT adapter folder is merged onto the base
    labels = list(labels) if labels else [Path(str(c.spec).rstrip("/")).name for c in cks]
    if len(labels) != len(cks):
        raise ConfigError(f"{len(labels)} labels for {len(cks)} finetuned checkpoints.")
    from subnetviz.analysis.quant import checkpoint_forms, comparison_dtype
    from subnetviz.checkpoints.experts_layout import match_layouts

    chosen = PRECISIONS[options.precision] if options.precision else None  # every pair at it, as the update pass

    match_layouts([ck_base, *cks])  # (as align reads them: the forms are those of the names compared)
    forms_base, forms = checkpoint_forms(ck_base), [checkpoint_forms(c) for c in cks]
    per_key, keys, left_out = _matrices(ck_base, cks, forms_base, forms)
    out = SubspaceTable({lab: [] for lab in labels})
    table = ck_base.names_table
    cast: dict[tuple[str, str, str], int] = {}  # (base as read, finetune as read, compared at) -> matrices
    for step, key in enumerate(keys):
        if progress:
            progress(step, len(keys), key)
        base_top: dict = {}
        for lab, ck, pk, fm in zip(labels, cks, per_key, forms, strict=True):
            at = pk.get(key)
            if at is None:
                continue
            fa, fb = forms_base[at.names[0]], fm[at.names[1]]
            info = table.describe(at.name)  # (an untied head against a tied base: the head, as the update pass)
            shape = (int(at.shape[-2]), int(at.shape[-1]))
            quantized = fa.kind != "float" or fb.kind != "float"
            short = _memory_short(ck_base, ck, at, shape, options, dev, quantized)
            if short:  # refused before reading: a row that says why, and the other matrices go on
                empty = np.zeros(0)
                for name, e in _parts(at):
                    out.results[lab].append(
                        SubspaceResult(
                            name, shape, options.k_for(shape), f"skipped, {short}", empty, empty, empty,
                            math.nan, math.nan, 0, math.nan, 0.0, info.layer, info.module, _expert(info, e), info.block,
                        )
                    )  # fmt: skip
                continue
            packed = len(at.shape) == 3  # read whole on the CPU (a view of the file's map), one expert moved at a time
            a_all = _weights(ck_base, at, 0, "cpu" if packed else dev, fa)
            b_all = _weights(ck, at, 1, "cpu" if packed else dev, fb)
            dtype = chosen or comparison_dtype(fa, fb, ck_base.meta(at.names[0]).dtype, ck.meta(at.names[1]).dtype)
            if chosen is None and (a_all.dtype != dtype or b_all.dtype != dtype):  # decomposed as compared: a note
                what = (_read_as(a_all, fa), _read_as(b_all, fb), _dtype_name(dtype))
                cast[what] = cast.get(what, 0) + len(_parts(at))
            if not packed:  # the pair as compared (the stored tensors dropped where cast)
                a_all = _cast(a_all, dtype, ck_base, at.names[0], chosen is not None, ck)
                b_all = _cast(b_all, dtype, ck, at.names[1], chosen is not None, ck)
            for name, e in _parts(at):
                a, b = (
                    (a_all, b_all)
                    if e is None
                    else (
                        _cast(a_all[e].to(dev), dtype, ck_base, name, chosen is not None, ck),
                        _cast(b_all[e].to(dev), dtype, ck, name, chosen is not None, ck),
                    )
                )
                if (at.rows, e, dtype) not in base_top:  # (finetunes of other dtypes compare other base roundings)
                    base_top[at.rows, e, dtype] = top_k(
                        a,
                        options.k_for(shape),
                        method=choose_method(shape, options),
                        oversample=options.oversample,
                        power_iters=options.power_iters,
                        seed=options.seed,
                    )
                res = compare_subspaces(name, a, b, options, base_top=base_top[at.rows, e, dtype], compare_dtype=dtype)
                out.results[lab].append(
                    replace(res, layer=info.layer, module=info.module, expert=_expert(info, e), block=info.block)
                )
                del a, b
            del a_all, b_all
    if progress:
        progress(len(keys), len(keys), "done")
    signs = [f"{m} · {r.name}" for m, rs in out.results.items() for r in rs if r.zero_signs_only]
    if signs:
        ex = ", ".join(signs[:3]) + (" ..." if len(signs) > 3 else "")
        out.notes.append(
            f"subspaces: {len(signs)} matrix pair(s) whose changed entries differ only in the sign of zero (+0 against "
            f"−0: other bits, equal values; {ex}): counted as changed, as the update analysis counts them, but the same "
            "matrices, so their principal angles are 0, their σ ratios 1 and their principal-weight overlap undefined."
        )
    methods = sorted({r.method for rs in out.results.values() for r in rs})
    skipped = sum(r.method.startswith("skipped") for rs in out.results.values() for r in rs)
    if skipped:
        out.notes.append(f"subspaces: {skipped} matrix comparison(s) skipped for lack of memory (method column).")
    if "randomized" in methods:
        out.notes.append(
            f"subspaces: matrices with a side over {options.max_dim} and the other over {GRAM_SIDE} used randomized "
            f"SVD (q = K + {options.oversample}, {options.power_iters} power iterations, float32, refined in float64)."
        )
    if chosen is not None:
        out.notes.append(
            f"subspaces: every matrix pair compared at {options.precision}, the comparison precision chosen: both "
            "sides cast to it (round-to-nearest-even) before the update mask, the decompositions and the principal "
            "weights, as the update analysis compares them."
        )
    if cast:
        said = "; ".join(
            f"{n:,} with the base read as {da} and the finetune as {db}, compared at {dt}"
            for (da, db, dt), n in sorted(cast.items())
        )
        out.notes.append(
            f"subspaces: matrices whose two sides are read in different dtypes were both rounded to the dtype the "
            f"update mask compares them at before being decomposed ({said}), so the rounding alone reads as no "
            "rotation and no change of σ; every other pair was decomposed as read."
        )
    if left_out:
        ex = ", ".join(left_out[:3]) + (" ..." if len(left_out) > 3 else "")
        out.notes.append(
            f"subspaces: {len(left_out)} packed expert tensor(s) stored quantized on a side ({ex}) left out: their "
            "experts are compared one by one only as float weights."
        )
    out.seconds = time.perf_counter() - t0
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _read_as(x: torch.Tensor, form) -> str:
    """How a side was read, for the notes: its dtype, and "dequantised" for a quantized form's weights."""
    return _dtype_name(x.dtype) + ("" if form.kind == "float" else " (dequantised)")


def _cast(x: torch.Tensor, dtype: torch.dtype, ck, name: str, chosen: bool = False, finetune=None) -> torch.Tensor:
    """``x`` (finite weights of ``name`` in ``ck``) at the compared ``dtype``; refused in one line where the cast
    overflows (an fp32 or bf16 weight beyond float16's ±65504 against an fp16 finetune, or with fp16 ``chosen`` as
    the comparison precision). At the pair's own dtype (not ``chosen``) the refusal is the pair's: a
    :class:`~subnetviz.errors.CastRangeError` carrying the finetune's spec (``finetune``, the pair's checkpoint),
    which the app leaves out at this precision, the others compared (as the update analysis' refusal)."""
    y = x.to(dtype)
    if y.dtype != x.dtype and not bool(torch.isfinite(y).all()):
        what = "the comparison precision chosen" if chosen else "the dtype the pair is compared at"
        fix = "compare at bf16 or fp32 (--precision)" if chosen else "compare at fp32 or bf16 (--precision)"
        line = f"{ck.spec} :: {name}: weights beyond {_dtype_name(dtype)}'s range once cast to it ({what}); {fix}."
        if chosen:
            raise ConfigError(line)
        raise CastRangeError(line, checkpoint=finetune.spec)
    return y


def _parts(at) -> list[tuple[str, int | None]]:
    """The matrices of aligned weight ``at`` (one of :func:`_matrices`) as (row name, expert): a 2-D weight
    itself, a packed 3-D expert tensor each of its experts, named ``name[e]`` (as the spectra name them). The name
    is ``at.name``, the update pass's: an untied head against a base that ties it to its embedding is the head
    (under the base's embedding name it was a second ``embed_tokens`` row, and one curve of the chart)."""
    if len(at.shape) == 2:
        return [(at.name, None)]
    return [(f"{at.name}[{e}]", e) for e in range(int(at.shape[0]))]


def _expert(info, e: int | None) -> str | None:
    """The ``expert`` column of a row: the slice of a packed tensor, else the tensor's own expert (if any)."""
    if e is not None:
        return str(e)
    return None if info.expert is None else str(info.expert)


def subspace_bytes(shape: tuple[int, int], itemsize: int, options: SubspaceOptions) -> int:
    """The memory one matrix pair's comparison holds at its peak: both matrices as stored (``itemsize`` each), the
    update mask (1 byte per entry) and either the principal weights' float32 magnitudes (4; their selection is a
    chunked radix one, no copy) or, on the randomized path, the float32 copy of a matrix (4); float64 bands of
    rows (two of up to 2^24 entries); the bases and their products (float64, about four (m + n) × K ones,
    K + oversample columns on the randomized path) and, on the exact path, the Gram and its copy (16 · min²).
    Measured peak RSS of :func:`compare_subspaces` (bf16 and fp32, 200000 × 100 to 100000 × 1000, both paths):
    0.5 to 0.92 of it; the whole :func:`analyze_subspaces` of a 200000 × 100 bf16 pair: 0.83."""
    m, n = shape
    numel = m * n
    randomized = choose_method(shape, options) == "randomized"
    cols = options.k_for(shape) + (options.oversample if randomized else 0)
    per_entry = 2 * itemsize + 1 + 4
    bands = 16 * min(numel, _CHUNK_ELEMENTS)
    return numel * per_entry + bands + 32 * cols * (m + n) + (0 if randomized else 16 * min(shape) ** 2)


def _memory_short(
    ck_base, ck, at, shape: tuple[int, int], options: SubspaceOptions, dev: str, dequantised: bool = False
) -> str | None:
    """What is short for comparing the pair ``at`` (see :func:`subnetviz.config.memory_shortfall`), or None. A
    packed 3-D expert tensor is read whole on the CPU: a view of its file's map, else (MXFP4 experts dequantised,
    an adapter's merge) its whole bytes on each side, held beside one expert's comparison."""
    from subnetviz.config import memory_shortfall

    itemsize = max(ck_base.meta(at.names[0]).dtype.itemsize, ck.meta(at.names[1]).dtype.itemsize)
    if dequantised:
        itemsize = max(itemsize, 4)  # codes are read dequantised, in float32
    if options.precision is not None:  # (held cast to the precision chosen: fp32 of an fp16 pair is wider)
        itemsize = max(itemsize, PRECISIONS[options.precision].itemsize)
    need = subspace_bytes(shape, itemsize, options)
    whole = 0
    if len(at.shape) == 3:
        for c, name in ((ck_base, at.names[0]), (ck, at.names[1])):
            if not c.stored_as_read(name):
                whole += math.prod(int(s) for s in at.shape) * c.meta(name).dtype.itemsize
    return memory_shortfall(need + whole, dev, need)


def _matrices(ck_base, cks: Sequence, forms_base=None, forms=None) -> tuple[list[dict], list[str], list[str]]:
    """Each finetuned checkpoint's aligned weight matrices by key, their keys, and the keys left out with a note.

    A matrix: a weight (not a bias: gpt-oss's packed biases are (E, out), one row per expert) stored as floats or
    as FP8 / int8 codes with scales (read dequantised, :func:`_weights`), either 2-D or a packed 3-D expert tensor
    (E, m, n) of floats on both sides (compared expert by expert, :func:`_parts`); a packed one stored quantized
    on a side is left out (the third list). A quantized form's scales (which are 2-D too), buffers and integer
    codes with no dequantisation here (GPTQ, AWQ, int4) are no weights to decompose; nor is a tensor of any
    other rank (a convolution's kernel), nor a norm's weight, which is scales however it is shaped (Cohere's
    per-head q_norm is (heads, head_dim)): the naming table's module kind says which are norms, as tensors.csv
    labels them; nor a state-space layer's A_log, D and dt_bias, applied entry by entry whatever their shape
    (:data:`~subnetviz.analysis.spectra.STATE_SPACE_PARAMS`, as the spectra leave them out: Mamba-1's A_log is
    (d_inner, d_state))."""
    from subnetviz.analysis.quant import checkpoint_forms
    from subnetviz.analysis.spectra import STATE_SPACE_PARAMS
    from subnetviz.checkpoints import align
    from subnetviz.checkpoints.experts_layout import match_layouts
    from subnetviz.checkpoints.naming import NORM_MODULES

    match_layouts([ck_base, *cks])  # (idempotent; as align reads them)
    forms_base = forms_base if forms_base is not None else checkpoint_forms(ck_base)  # (the caller's, when given)
    forms = forms if forms is not None else [checkpoint_forms(c) for c in cks]
    table = ck_base.names_table
    per_key, left_out = [], []
    for c, fm in zip(cks, forms, strict=True):
        keep = {}
        for t in align([ck_base, c]).tensors:
            fa, fb = forms_base[t.names[0]], fm[t.names[1]]
            if not (
                len(t.shape) in (2, 3)
                and fa.kind in WEIGHT_FORMS
                and fb.kind in WEIGHT_FORMS
                and (fa.kind != "float" or ck_base.meta(t.names[0]).dtype.is_floating_point)
            ):
                continue
            info = table.describe(t.names[0])
            if info.param == "bias" or info.module in NORM_MODULES or info.param in STATE_SPACE_PARAMS:
                continue
            if len(t.shape) == 3:
                if info.expert != "all":
                    continue  # a 3-D tensor that is no stack of expert matrices
                if fa.kind != "float" or fb.kind != "float":
                    left_out.append(t.key)
                    continue
            keep[t.key] = t
        per_key.append(keep)
    return per_key, list(dict.fromkeys(k for pk in per_key for k in pk)), list(dict.fromkeys(left_out))


WEIGHT_FORMS = ("float", "fp8", "int8")  # stored forms read as weights (quant.TensorForm.kind)


def _weights(ck, at, side: int, dev: str, form) -> torch.Tensor:
    """The stored tensor ``at.names[side]`` as weights: as stored, or for FP8 / int8 codes dequantised with their
    scales (float32), as the update analysis reads them (the codes themselves are no weights: an FP8 pair whose
    block scales doubled read as unchanged, and a bf16 base against FP8 codes ended in a traceback). Refused if
    not finite, in the update pass's one line naming the file and the tensor (SciPy's eigh raised a bare
    "array must not contain infs or NaNs")."""
    from subnetviz.analysis.quant import check_finite_stored, effective, scale_values, zero_values
    from subnetviz.checkpoints import read_aligned

    x = read_aligned(ck, at, side, dev)
    name = at.names[side]
    if form.kind != "float":
        scale, zero = scale_values(ck, form.scale, dev), zero_values(ck, form, dev)
        x = effective(x, scale, form, form.block(ck.config), name=name, scale_name=form.scale, zero=zero)
    try:
        check_finite_stored(x, f"{ck.spec} :: {name}")
    except NonFiniteError as exc:  # (carrying the checkpoint, as the update pass's: the app leaves that one out)
        raise NonFiniteError(str(exc), checkpoint=ck.spec) from None
    return x


def subspace_keys(base, finetuned: Sequence) -> list[tuple[tuple[int, int], int]]:
    """Each matrix :func:`analyze_subspaces` decomposes, from the headers: its (m, n) and how many finetuned
    models it is compared in (what :mod:`subnetviz.analysis.cost` prices); each expert of a packed 3-D tensor is
    one. Biases, scales, buffers and integer codes are left out (:func:`_matrices`)."""
    from subnetviz.checkpoints import Checkpoint, open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    ck_base = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]  # a PEFT adapter folder is merged onto the base
    per_key, keys, _ = _matrices(ck_base, cks)
    out = []
    for key in keys:
        held = [pk[key] for pk in per_key if key in pk]
        if held:
            out += [((int(held[0].shape[-2]), int(held[0].shape[-1])), len(held))] * len(_parts(held[0]))
    return out


def write_subspaces(table: SubspaceTable, folder: str | os.PathLike) -> None:
    """``subspaces.csv`` (one row per matrix and model), ``subspaces.parquet`` (full vectors) and ``notes.json``
    (the table's notes: what was skipped, left out or taken by the randomized path) in ``folder``."""
    folder = Path(folder)
    table.to_frame().to_csv(folder / "subspaces.csv", index=False)
    with open(folder / "subspaces.parquet", "wb") as fh:  # (a file Python opens: pyarrow takes UTF-8 paths only)
        table.vectors().to_parquet(fh, index=False)
    (folder / NOTES_FILE).write_text(json.dumps(list(table.notes)))


NOTES_FILE = "notes.json"


def read_subspaces(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two frames :func:`write_subspaces` wrote: (per-matrix rows, long vectors)."""
    folder = Path(folder)
    with open(folder / "subspaces.parquet", "rb") as fh:  # (as written: a folder named with a byte not UTF-8)
        vectors = pd.read_parquet(fh)
    return _cache.read_frame(folder / "subspaces.csv"), vectors


def read_subspace_notes(folder: str | os.PathLike) -> list[str]:
    """The notes :func:`write_subspaces` wrote in ``folder`` (none for a folder without them)."""
    path = Path(folder) / NOTES_FILE
    return [str(n) for n in json.loads(path.read_text())] if path.is_file() else []


def _skips_fit_now(ck_base, cks: Sequence, labels: Sequence[str], folder, options: SubspaceOptions, device) -> bool:
    """Whether the cached rows in ``folder`` hold a comparison skipped for lack of memory that this machine has the
    memory for now (the same check :func:`analyze_subspaces` makes before reading a pair)."""
    from subnetviz.analysis.quant import checkpoint_forms
    from subnetviz.config import resolve_device

    path = Path(folder) / "subspaces.csv"
    try:
        if b"skipped" not in path.read_bytes():  # (the common case: no table to parse, each visit)
            return False
    except OSError:
        return False
    rows = _cache.read_frame(path)
    skipped = rows[rows["method"].astype(str).str.startswith("skipped")]
    if skipped.empty:
        return False
    per_key, _, _ = _matrices(ck_base, cks)
    forms_base, dev = checkpoint_forms(ck_base), resolve_device(device)
    where = {lab: i for i, lab in enumerate(labels)}
    for model, name in zip(skipped["model"], skipped["name"], strict=True):
        i = where.get(str(model))
        if i is None:
            continue
        at = next((t for t in per_key[i].values() if any(n == name for n, _ in _parts(t))), None)
        if at is None:
            continue
        fb = checkpoint_forms(cks[i])[at.names[1]]
        quantized = forms_base[at.names[0]].kind != "float" or fb.kind != "float"
        shape = (int(at.shape[-2]), int(at.shape[-1]))
        if not _memory_short(ck_base, cks[i], at, shape, options, dev, quantized):
            return True
    return False


def _entry(base, finetuned: Sequence, labels: Sequence[str], options: SubspaceOptions, cache_root):
    """The checkpoints and the cache entry of :func:`cached_subspaces` (headers only)."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from subnetviz.version import code_fingerprint

    ck_base = open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]
    key = _cache.cache_key(
        "subspaces",
        SUBSPACES_VERSION,
        code=code_fingerprint(),
        base=ck_base.fingerprint,
        finetuned=[c.fingerprint for c in cks],
        labels=list(labels),
        options=options,
    )
    return ck_base, cks, _cache.entry("subspaces", key, root=cache_root)


def is_cached(
    base: str,
    finetuned: Sequence[str],
    *,
    labels: Sequence[str],
    options: SubspaceOptions = SubspaceOptions(),
    device: str = "auto",
    cache_root: str | os.PathLike | None = None,
) -> bool:
    """Whether :func:`cached_subspaces` with these arguments would read its result from the cache (not an entry
    it computes again because memory now allows a comparison it skipped; see :func:`_skips_fit_now`). A damaged
    entry is left in place (:func:`_sound`), for :func:`cached_subspaces` to remove and say."""
    ck_base, cks, ent = _entry(base, finetuned, labels, options, cache_root)
    return _sound(ent) and not _skips_fit_now(ck_base, cks, labels, ent.folder, options, device)


def _sound(ent: _cache.CacheEntry) -> bool:
    """Whether the cache entry ``ent`` is here and verifies, looked at only: a damaged entry is left for the call
    that computes it again, which removes it and says so (removed by this check, the computation after it found
    a plain miss and said nothing)."""
    if not ent.folder.is_dir():
        return False
    _cache.touch(ent.folder)  # (as CacheEntry.status: kept by another process's eviction while it is read)
    return _cache.verify_manifest(ent.folder) is None


def _found(ent: _cache.CacheEntry) -> tuple[bool, str | None]:
    """``(ready, notice)`` of ``ent`` (:meth:`~subnetviz.cache.CacheEntry.status`), the notice only where this call
    found the entry damaged and removed it. A notice kept from an earlier removal is not repeated: the page that
    removed it (``ui.damage_note`` before it computes) has said it, and said here too it was shown twice."""
    there = ent.folder.is_dir()
    ready, notice = ent.status()
    return ready, notice if there and not ready else None


def cached_subspaces(
    base: str,
    finetuned: Sequence[str],
    *,
    labels: Sequence[str],
    options: SubspaceOptions = SubspaceOptions(),
    device: str = "auto",
    progress: ProgressFn | None = None,
    cache_root: str | os.PathLike | None = None,
    with_notes: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame] | tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """:func:`analyze_subspaces` through the on-disk cache, keyed by fingerprints, labels and options: the (rows,
    vectors) frames, and with ``with_notes`` the table's notes too (served from the cache as computed).

    A comparison skipped for lack of memory is a state of the machine when it ran, not of the inputs: an entry
    holding one is computed again (and replaced) once this machine has the memory for it (:func:`_skips_fit_now`),
    and served as it is while it has not (a cached skip was served for ever, however much memory was free later;
    never caching it computed every matrix again on each visit of a machine that can never fit one).

    A damaged entry it finds is removed and computed again, said first in the notes (not stored: the new copy is
    sound); the CLI's ``analyze --subspaces`` printed no word of it."""
    ck_base, cks, ent = _entry(base, finetuned, labels, options, cache_root)
    ready, damaged = _found(ent)  # (a damaged entry is removed: computed again, and said in the notes)
    stale = ready and _skips_fit_now(ck_base, cks, labels, ent.folder, options, device)
    if not ready or stale:
        table = analyze_subspaces(ck_base, cks, labels=labels, options=options, device=device, progress=progress)
        if stale:
            table.notes.insert(
                0, "subspaces: memory now allows a comparison the cached result had skipped: computed again."
            )
        with ent.publish(replace=stale) as folder:
            write_subspaces(table, folder)
    frames = read_subspaces(ent.folder)
    if not with_notes:
        return frames
    return (*frames, [damaged, *read_subspace_notes(ent.folder)] if damaged else read_subspace_notes(ent.folder))
