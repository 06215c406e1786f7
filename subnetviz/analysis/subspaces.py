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
from subnetviz.analysis.subspaces_linalg import TopK, principal_angles, principal_mask, top_k
from subnetviz.errors import ConfigError

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
    "top_k",
]

ProgressFn = Callable[[int, int, str], None]
METHODS = ("auto", "gram", "randomized", "svd")
SUBSPACES_VERSION = 1  # bump when the same inputs would give different numbers or files
COLUMNS = [
    "model",
    "name",
    "layer",
    "module",
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
    instead. ``max_dim``: ``auto`` takes the randomized path when a side is longer."""

    k: int = 16
    share: float | None = None
    method: str = "auto"
    max_dim: int = 32768
    oversample: int = 16
    power_iters: int = 4
    seed: int = 0

    def __post_init__(self):
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

    def row(self) -> dict:
        finite = self.sv_ratio[np.isfinite(self.sv_ratio)]
        mean = float(finite.mean()) if finite.size else float("nan")
        return {
            "name": self.name,
            "layer": self.layer,
            "module": self.module,
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
) -> SubspaceResult:
    """The subspace comparison of one (m, n) matrix pair (stored dtype; same shape).

    ``base_top``: the base's :class:`TopK` when already computed (one decomposition per base
    matrix, whatever the number of finetuned models).
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
    tb = base_top if base_top is not None else top_k(base, k, **kw)
    changed_mask = bits_differ(base, ft) if base.dtype == ft.dtype else base != ft
    changed = int(changed_mask.sum())
    numel = base.numel()
    if not changed:  # identical bits: the same subspaces exactly (no round-off angle of 1e-14°)
        zeros = np.zeros(tb.sigma.size)
        return SubspaceResult(
            name,
            shape,
            k,
            tb.method,
            zeros,
            zeros.copy(),
            np.where(tb.sigma > 0, 1.0, np.nan),
            float("nan"),
            0.0,
            0,
            _gap(tb),
            time.perf_counter() - t0,
        )
    tf = top_k(ft, k, **kw)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tb.sigma > 0, tf.sigma / tb.sigma, np.nan)
    pm = principal_mask(base, tb.right, changed)
    overlap = float((pm & changed_mask).sum()) / changed
    return SubspaceResult(
        name,
        shape,
        k,
        tb.method,
        principal_angles(tb.left, tf.left),
        principal_angles(tb.right, tf.right),
        ratio,
        overlap,
        changed / numel if numel else 0.0,
        changed,
        _gap(tb),
        time.perf_counter() - t0,
    )


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
    """Subspace metrics of every aligned 2-D weight, ``base`` against each of ``finetuned``.

    Streams one tensor at a time (the base matrix read and decomposed once per name); tensors that
    are not 2-D (norms, biases) are not matrices and are left out, as are non-float tensors.
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
    from subnetviz.analysis.quant import checkpoint_forms

    forms_base, forms = checkpoint_forms(ck_base), [checkpoint_forms(c) for c in cks]
    per_key, keys = _matrices(ck_base, cks, forms_base, forms)
    out = SubspaceTable({lab: [] for lab in labels})
    table = ck_base.names_table
    for step, key in enumerate(keys):
        if progress:
            progress(step, len(keys), key)
        base_top: dict = {}
        for lab, ck, pk, fm in zip(labels, cks, per_key, forms, strict=True):
            at = pk.get(key)
            if at is None:
                continue
            shape = (int(at.shape[0]), int(at.shape[1]))
            quantized = forms_base[at.names[0]].kind != "float" or fm[at.names[1]].kind != "float"
            short = _memory_short(ck_base, ck, at, shape, options, dev, quantized)
            if short:  # refused before reading: a row that says why, and the other matrices go on
                info = table.describe(at.names[0])
                empty = np.zeros(0)
                out.results[lab].append(
                    SubspaceResult(
                        at.names[0], shape, options.k_for(shape), f"skipped, {short}", empty, empty, empty,
                        math.nan, math.nan, 0, math.nan, 0.0, info.layer, info.module,
                    )
                )  # fmt: skip
                continue
            a = _weights(ck_base, at, 0, dev, forms_base[at.names[0]])
            b = _weights(ck, at, 1, dev, fm[at.names[1]])
            k = options.k_for(tuple(a.shape))
            if at.rows not in base_top:
                method = choose_method(tuple(a.shape), options)
                base_top[at.rows] = top_k(
                    a,
                    k,
                    method=method,
                    oversample=options.oversample,
                    power_iters=options.power_iters,
                    seed=options.seed,
                )
            res = compare_subspaces(at.names[0], a, b, options, base_top=base_top[at.rows])
            info = table.describe(at.names[0])
            out.results[lab].append(replace(res, layer=info.layer, module=info.module))
            del b
    if progress:
        progress(len(keys), len(keys), "done")
    methods = sorted({r.method for rs in out.results.values() for r in rs})
    skipped = sum(r.method.startswith("skipped") for rs in out.results.values() for r in rs)
    if skipped:
        out.notes.append(f"subspaces: {skipped} matrix comparison(s) skipped for lack of memory (method column).")
    if "randomized" in methods:
        out.notes.append(
            f"subspaces: matrices with a side over {options.max_dim} used randomized SVD "
            f"(q = K + {options.oversample}, {options.power_iters} power iterations, float32)."
        )
    out.seconds = time.perf_counter() - t0
    return out


def subspace_bytes(shape: tuple[int, int], itemsize: int, options: SubspaceOptions) -> int:
    """The memory one matrix pair's comparison holds at its peak: both matrices as stored, the update mask,
    the principal-weight mask's float32 magnitudes and their selection copy, the masks (11 bytes per entry),
    a float32 copy on the randomized path, or the two k × k float64 Grams on the exact one."""
    numel, k = shape[0] * shape[1], min(shape)
    randomized = choose_method(shape, options) == "randomized"
    return numel * (2 * itemsize + 11 + (4 if randomized else 0)) + (0 if randomized else 16 * k * k)


def _memory_short(
    ck_base, ck, at, shape: tuple[int, int], options: SubspaceOptions, dev: str, dequantised: bool = False
) -> str | None:
    """What is short for comparing the pair ``at`` (see :func:`subnetviz.config.memory_shortfall`), or None."""
    from subnetviz.config import memory_shortfall

    itemsize = max(ck_base.meta(at.names[0]).dtype.itemsize, ck.meta(at.names[1]).dtype.itemsize)
    if dequantised:
        itemsize = max(itemsize, 4)  # codes are read dequantised, in float32
    need = subspace_bytes(shape, itemsize, options)
    return memory_shortfall(need, dev, need)


def _matrices(ck_base, cks: Sequence, forms_base=None, forms=None) -> tuple[list[dict], list[str]]:
    """Each finetuned checkpoint's aligned weight matrices by key, and their keys: 2-D, stored as floats or as
    FP8 / int8 codes with scales (read dequantised, :func:`_weights`); a quantized form's scales (which are 2-D
    too), buffers and integer codes with no dequantisation here (GPTQ, AWQ, int4) are no weights to decompose."""
    from subnetviz.analysis.quant import checkpoint_forms
    from subnetviz.checkpoints import align

    forms_base = forms_base if forms_base is not None else checkpoint_forms(ck_base)  # (the caller's, when given)
    forms = forms if forms is not None else [checkpoint_forms(c) for c in cks]
    per_key = []
    for c, fm in zip(cks, forms, strict=True):
        per_key.append(
            {
                t.key: t
                for t in align([ck_base, c]).tensors
                if len(t.shape) == 2
                and forms_base[t.names[0]].kind in WEIGHT_FORMS
                and fm[t.names[1]].kind in WEIGHT_FORMS
                and (forms_base[t.names[0]].kind != "float" or ck_base.meta(t.names[0]).dtype.is_floating_point)
            }
        )
    return per_key, list(dict.fromkeys(k for pk in per_key for k in pk))


WEIGHT_FORMS = ("float", "fp8", "int8")  # stored forms read as weights (quant.TensorForm.kind)


def _weights(ck, at, side: int, dev: str, form) -> torch.Tensor:
    """The stored tensor ``at.names[side]`` as weights: as stored, or for FP8 / int8 codes dequantised with their
    scales (float32), as the update analysis reads them (the codes themselves are no weights: an FP8 pair whose
    block scales doubled read as unchanged, and a bf16 base against FP8 codes ended in a traceback)."""
    from subnetviz.analysis.quant import block_size, effective, scale_values
    from subnetviz.checkpoints import read_aligned

    x = read_aligned(ck, at, side, dev)
    if form.kind == "float":
        return x
    name = at.names[side]
    scale = scale_values(ck, form.scale, dev)
    return effective(x, scale, form, block_size(ck.config), name=name, scale_name=form.scale)


def subspace_keys(base, finetuned: Sequence) -> list[tuple[tuple[int, int], int]]:
    """Each matrix :func:`analyze_subspaces` decomposes, from the headers: its (m, n) and how many finetuned
    models it is compared in (what :mod:`subnetviz.analysis.cost` prices). Scales, buffers and integer codes
    are left out (:func:`_matrices`)."""
    from subnetviz.checkpoints import Checkpoint, open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    ck_base = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]  # a PEFT adapter folder is merged onto the base
    per_key, keys = _matrices(ck_base, cks)
    out = []
    for key in keys:
        held = [pk[key] for pk in per_key if key in pk]
        if held:
            out.append(((int(held[0].shape[0]), int(held[0].shape[1])), len(held)))
    return out


def write_subspaces(table: SubspaceTable, folder: str | os.PathLike) -> None:
    """``subspaces.csv`` (one row per matrix and model) and ``subspaces.parquet`` (full vectors) in ``folder``."""
    folder = Path(folder)
    table.to_frame().to_csv(folder / "subspaces.csv", index=False)
    table.vectors().to_parquet(folder / "subspaces.parquet", index=False)


def read_subspaces(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two frames :func:`write_subspaces` wrote: (per-matrix rows, long vectors)."""
    folder = Path(folder)
    return _cache.read_frame(folder / "subspaces.csv"), pd.read_parquet(folder / "subspaces.parquet")


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
    cache_root: str | os.PathLike | None = None,
) -> bool:
    """Whether :func:`cached_subspaces` with these arguments would read its result from the cache."""
    return _entry(base, finetuned, labels, options, cache_root)[2].ready


def cached_subspaces(
    base: str,
    finetuned: Sequence[str],
    *,
    labels: Sequence[str],
    options: SubspaceOptions = SubspaceOptions(),
    device: str = "auto",
    progress: ProgressFn | None = None,
    cache_root: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`analyze_subspaces` through the on-disk cache, keyed by fingerprints, labels and options."""
    ck_base, cks, ent = _entry(base, finetuned, labels, options, cache_root)
    if not ent.ready:
        table = analyze_subspaces(ck_base, cks, labels=labels, options=options, device=device, progress=progress)
        with ent.publish() as folder:
            write_subspaces(table, folder)
    return read_subspaces(ent.folder)
