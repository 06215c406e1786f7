"""Singular-value spectra and rank of update matrices (Δ = W_finetuned − W_base).

This module owns the spectral maths of one matrix at a time: singular values, the rank at the
paper's tolerance, the 99 %-energy effective rank, the stable rank, a random-sparse baseline of
the same density, and the normalised spectral shift between two weight matrices. It reads no
files; callers stream tensors in and collect :class:`SpectrumResult` rows into a
:class:`SpectrumTable`.

Numerics (why the fast path is trusted):

- ``method="gram"`` forms the Gram matrix of the smaller side (ΔᵀΔ when n <= m, else ΔΔᵀ) in
  float64 and takes ``eigvalsh``; σ = sqrt(max(λ, 0)). Only the lower block triangle is
  computed, because ``eigvalsh`` reads only the lower triangle (a third less matmul), and the
  long side is cast to float64 chunk by chunk, so an embedding-sized matrix never exists in
  float64 at once. The eigenvalues carry an absolute error of order ``k·eps64·σ1²``
  (k = min(m, n)), so σ_i is off by about ``k·eps64·σ1²/(2σ_i)``: ~1e-13·σ1 in the norm sense,
  a relative ``k·eps64·(σ1/σ_i)²/2`` at worst (measured: <= 1e-11 for σ_i >= 1e-3·σ1 on
  Qwen-0.5B-shaped sparse updates, see ``benches/bench_spectra.py``), and values below
  ``resolution = sqrt(k·eps64)·σ1`` are noise.
- ``method="svd"`` is the reference: ``torch.linalg.svdvals`` in float64.
- ``method="auto"`` uses the Gram values, except when the rank decision is in doubt: if any
  λ_i lies within ``64·k·eps64·σ1²`` (a 64× margin on the error above) of tol², the values are
  recomputed with float64 ``svdvals`` so the rank is exact. With the default tolerance that
  band is at most a relative 0.5/k around tol, so random-like spectra rarely hit it. A
  multiplicative window (say 100× around tol) would instead send most square matrices to the
  slow path: their smallest σ lie near tol (a 30 %-dense 896×896 update has σ_min ≈ 0.03·tol).
- Where Gram and float32 ``matrix_rank`` could disagree at all is a σ within float32 rounding
  (~eps32·σ1) of tol; there float64 is the more exact of the two.

Rank follows the paper's script, ``torch.linalg.matrix_rank(delta.float())``: σ_i counts when
σ_i > tol = σ1 · max(m, n) · eps(float32) (atol = 0), whatever the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from subnetviz.errors import AlignmentError, ConfigError, NonFiniteError

EPS32 = float(torch.finfo(torch.float32).eps)  # the eps matrix_rank uses on delta.float()
EPS64 = float(torch.finfo(torch.float64).eps)
_GRAM_SAFETY = 64.0  # margin on the Gram eigenvalue error k·eps64·σ1² for the rank band
_GRAM_BLOCKS = 4  # lower-triangular blocks: 10 of 16 block products, measured 35 % faster on CPU
_CHUNK_ELEMENTS = 1 << 24  # float64 chunk of the long side: 128 MB
METHODS = ("auto", "gram", "svd")


@dataclass(frozen=True, eq=False)
class SingularValues:
    """Singular values of one (m, n) matrix and the rank statistics derived from them.

    ``values``: (min(m, n),) float64, descending. ``method``: what was actually run
    (``"gram"``, ``"svd"`` or ``"gram+svd"`` when auto fell back). ``resolution``: absolute
    accuracy of the values (values below it are numerical noise).
    """

    values: np.ndarray
    shape: tuple[int, int]
    method: str
    rtol: float
    resolution: float

    @property
    def sigma1(self) -> float:
        return float(self.values[0]) if self.values.size else 0.0

    @property
    def tol(self) -> float:
        return self.sigma1 * self.rtol

    @property
    def rank(self) -> int:
        return int(np.count_nonzero(self.values > self.tol))

    @property
    def rank_frac(self) -> float:
        k = min(self.shape)
        return self.rank / k if k else 0.0

    def effective_rank(self, energy: float = 0.99) -> int:
        """Smallest k with Σ_{i<=k} σ_i² >= energy · Σ σ_i² (0 for the zero matrix)."""
        sq = self.values**2
        total = float(sq.sum())
        if total == 0.0:
            return 0
        k = int(np.searchsorted(np.cumsum(sq), energy * total, side="left")) + 1
        return min(k, sq.size)  # cumsum's last term may round below the pairwise total

    @property
    def stable_rank(self) -> float:
        """‖Δ‖F² / ‖Δ‖₂² = Σσ² / σ1² (0 for the zero matrix)."""
        s1 = self.sigma1
        return float((self.values**2).sum() / s1**2) if s1 > 0 else 0.0


def default_rtol(shape: tuple[int, int]) -> float:
    """torch's default ``matrix_rank`` rtol for a float32 matrix: max(m, n) · eps32."""
    return max(shape) * EPS32


def _gram_lower(delta: torch.Tensor) -> torch.Tensor:
    """Lower block triangle of the smaller Gram of ``delta`` (m, n), float64, (k, k) with k = min(m, n).

    ΔᵀΔ when n <= m, else ΔΔᵀ; the upper triangle is left zero (``eigvalsh`` reads the lower).
    The long side is streamed in chunks of ``_CHUNK_ELEMENTS`` cast to float64 one at a time, so
    memory stays at one chunk plus k² even for embedding-sized matrices.
    """
    m, n = delta.shape
    tall = n <= m
    k, length = (n, m) if tall else (m, n)
    gram = torch.zeros(k, k, dtype=torch.float64, device=delta.device)
    blocks = min(_GRAM_BLOCKS, k)
    edges = [round(i * k / blocks) for i in range(blocks + 1)]
    step = max(1, _CHUNK_ELEMENTS // k)
    for start in range(0, length, step):
        part = delta[start : start + step] if tall else delta[:, start : start + step]
        x = part.contiguous().to(torch.float64)
        x = x.T if tall else x  # (k, chunk): the Gram is Σ x xᵀ over chunks
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            gram[lo:hi, :hi] += x[lo:hi] @ x[:hi].T
    return gram


def _check_matrix(delta: torch.Tensor, name: str) -> None:
    if not isinstance(delta, torch.Tensor):
        raise ConfigError(f"{name}: expected a torch.Tensor, got {type(delta).__name__}.")
    if delta.ndim != 2:
        raise ConfigError(
            f"{name}: spectra need a 2-D matrix, got shape {tuple(delta.shape)}; skip 1-D tensors "
            "(norms, biases) or reshape them first."
        )
    if not delta.is_floating_point():
        raise ConfigError(f"{name}: dtype {delta.dtype} is not a real floating-point matrix.")


def _nonfinite(name: str) -> NonFiniteError:
    return NonFiniteError(f"{name}: the matrix holds NaN or Inf; spectra need finite values. Check the checkpoint.")


def singular_values(
    delta: torch.Tensor,
    *,
    method: str = "auto",
    device: str | None = None,
    rtol: float | None = None,
    name: str = "delta",
) -> SingularValues:
    """Singular values of ``delta`` (m, n), any float dtype, computed in float64 on ``device``.

    ``rtol``: relative rank tolerance (default: torch's for float32, see :func:`default_rtol`);
    it decides where ``method="auto"`` checks the rank band. ``name`` only labels errors.
    """
    from subnetviz.config import resolve_device

    if method not in METHODS:
        raise ConfigError(f"{name}: unknown spectrum method {method!r}; expected one of {METHODS}.")
    _check_matrix(delta, name)
    m, n = (int(s) for s in delta.shape)
    shape = (m, n)
    rtol = default_rtol(shape) if rtol is None else float(rtol)
    k = min(m, n)
    if k == 0:
        return SingularValues(np.zeros(0), shape, "svd" if method == "svd" else "gram", rtol, 0.0)
    delta = delta.detach().to(device=resolve_device(device))

    if method == "svd":
        return _svd(delta, shape, rtol, name, method="svd")

    gram = _gram_lower(delta)
    if not bool(torch.isfinite(gram).all()):
        raise _nonfinite(name)
    lam = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)
    lam1 = float(lam[0])
    err = k * EPS64 * lam1  # eigenvalue error scale of the Gram path
    if method == "auto":
        tol2 = rtol**2 * lam1
        if lam1 > 0 and bool(((lam - tol2).abs() <= _GRAM_SAFETY * err).any()):
            return _svd(delta, shape, rtol, name, method="gram+svd")
    sigma = lam.sqrt().cpu().numpy()
    return SingularValues(sigma, shape, "gram", rtol, float(err**0.5))


def _svd(delta: torch.Tensor, shape: tuple[int, int], rtol: float, name: str, method: str) -> SingularValues:
    x = delta.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise _nonfinite(name)
    sigma = torch.linalg.svdvals(x).cpu().numpy()
    resolution = min(shape) * EPS64 * (float(sigma[0]) if sigma.size else 0.0)
    return SingularValues(sigma, shape, method, rtol, resolution)


def random_sparse_like(delta: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """The nonzero entries of ``delta`` scattered uniformly at random over its shape.

    Same shape, dtype, density and exact multiset of entries; the positions come from a
    CPU generator seeded with ``seed``, so the baseline is the same on every device.
    """
    flat = delta.detach().reshape(-1)
    values = flat[flat != 0]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    positions = torch.randperm(flat.numel(), generator=gen)[: values.numel()].to(flat.device)
    out = torch.zeros_like(flat)
    out[positions] = values
    return out.reshape(delta.shape)


@dataclass(frozen=True, eq=False)
class SpectrumResult:
    """Spectrum of one update matrix and of its random-sparse baseline.

    Rank fields are ``None`` when the matrix was skipped (``skipped`` with the reason in ``note``)
    or, for the ``baseline_*`` fields, when no baseline was asked for.
    """

    name: str
    shape: tuple[int, ...]
    density: float
    sigma: np.ndarray
    rank: int | None
    rank_frac: float | None
    effective_rank_99: int | None
    stable_rank: float | None
    baseline_sigma: np.ndarray
    baseline_rank: int | None
    baseline_rank_frac: float | None
    method: str
    skipped: bool = False
    note: str = ""

    def to_row(self) -> dict:
        rows, cols = self.shape if len(self.shape) == 2 else (None, None)
        return {
            "name": self.name,
            "rows": rows,
            "cols": cols,
            "density": self.density,
            "rank": self.rank,
            "rank_frac": self.rank_frac,
            "effective_rank_99": self.effective_rank_99,
            "stable_rank": self.stable_rank,
            "baseline_rank": self.baseline_rank,
            "baseline_rank_frac": self.baseline_rank_frac,
            "method": self.method,
            "skipped": self.skipped,
            "note": self.note,
        }


# A state-space layer's parameters (Mamba, Mamba-2, Jamba, Falcon-H1, Bamba, Qwen3-Next's linear attention): A_log
# holds log decay rates (A = -exp(A_log), applied entry by entry in the selective scan), D a skip gain per channel,
# dt_bias the step's bias. None is a linear map, whatever its shape (Mamba-1's A_log is (d_inner, d_state)), so their
# spectra say nothing of a low-rank update: the matrices spectra decompose leave them out, as they leave out norms.
STATE_SPACE_PARAMS = frozenset({"A_log", "D", "dt_bias"})


def skip_reason(shape: tuple[int, ...], max_dim: int | None) -> str:
    """Why a Δ of ``shape`` gets no spectrum (not a matrix, or a side over ``max_dim``: embeddings), or ""."""
    if len(shape) != 2:
        return f"skipped, not a matrix (shape {shape})"
    if max_dim is not None and max(shape) > max_dim:
        return f"skipped, embedding-sized (max dim {max(shape)} > max_dim {max_dim})"
    return ""


def skipped_spectrum(name: str, shape: tuple[int, ...], reason: str, density: float = math.nan) -> SpectrumResult:
    """The result of a Δ that gets no spectrum (``reason``: :func:`skip_reason`). ``density``: NaN where the
    Δ was never formed (the update pass skips embedding-sized matrices before forming their float64 Δ)."""
    empty = np.zeros(0)
    return SpectrumResult(name, shape, density, empty, None, None, None, None, empty, None, None, "none", True, reason)


def skipped_summary(frame: pd.DataFrame, limit: int = 6) -> str | None:
    """One line saying which matrices of a spectra table ``frame`` (columns ``name``, ``skipped``, ``note``, and
    ``model`` where several models share it) got no spectrum and why, grouped by reason, or None when none did.
    The experts of one packed tensor (``key[e]``) are named once, with their count; at most ``limit`` names per
    reason. (The pages drew only the decomposed rows: an embedding or a matrix skipped for lack of memory was
    simply absent, with no word.)"""
    if not len(frame) or "skipped" not in frame.columns:
        return None
    skipped = frame[frame["skipped"].eq(True)]
    if not len(skipped):
        return None
    groups: dict[str, dict[str, set]] = {}  # reason -> name (a packed tensor's key) -> its experts skipped
    for name, note in zip(skipped["name"].astype(str), skipped["note"].fillna("").astype(str), strict=True):
        key, sep, e = name[:-1].rpartition("[") if name.endswith("]") else ("", "", "")
        if not (sep and e.isdigit()):
            key, e = name, None
        groups.setdefault(_skip_kind(note), {}).setdefault(key, set()).add(e)
    parts = []
    for kind, names in groups.items():
        shown = [k if None in es else f"{k} ({len(es):,} experts)" for k, es in names.items()]
        listed = ", ".join(shown[:limit]) + (f" and {len(shown) - limit:,} more" if len(shown) > limit else "")
        parts.append(f"{kind}: {listed}")
    models = skipped["model"].nunique() if "model" in skipped.columns else 1
    return (
        f"{len(skipped):,} matri{'x' if len(skipped) == 1 else 'ces'} got no spectrum"
        + (f" (over {models} models)" if models > 1 else "")
        + f", so no chart or table of them is drawn (spectra.csv lists {'it' if len(skipped) == 1 else 'them'} as "
        f"skipped): {'; '.join(parts)}."
    )


def _skip_kind(note: str) -> str:
    """A skip's reason (:func:`skip_reason`, the update pass' memory and stored-form skips) in a few words."""
    why = note.removeprefix("skipped, ")
    if why.startswith("embedding-sized"):
        side = why.rpartition("max_dim ")[2].rstrip(")")
        return f"embedding-sized (a side over {int(side):,})" if side.isdigit() else "embedding-sized"
    if why.startswith("needs about"):
        return "not enough memory"
    if why.startswith("packed experts stored quantized"):
        return "packed experts stored quantized on a side (decomposed only as float weights)"
    return why.split(":")[0] or "skipped"


def update_spectrum(
    name: str,
    delta: torch.Tensor,
    *,
    baseline: bool = True,
    seed: int = 0,
    method: str = "auto",
    max_dim: int | None = None,
    device: str | None = None,
) -> SpectrumResult:
    """Spectrum, rank statistics and (optionally) the random-sparse baseline of one Δ (m, n).

    A tensor that is not 2-D, or whose larger side exceeds ``max_dim`` (embeddings, lm_head),
    comes back ``skipped`` with the reason in ``note`` instead of raising, so a whole model can
    be swept; NaN/Inf still raise :class:`NonFiniteError`.
    """
    shape = tuple(int(s) for s in delta.shape)
    numel = delta.numel()
    density = float(torch.count_nonzero(delta)) / numel if numel else 0.0
    empty = np.zeros(0)
    reason = skip_reason(shape, max_dim)
    if reason:
        return skipped_spectrum(name, shape, reason, density)
    sv = singular_values(delta, method=method, device=device, name=name)
    b_sigma, b_rank, b_frac = empty, None, None
    if baseline:
        bsv = singular_values(random_sparse_like(delta, seed=seed), method=method, device=device, name=name)
        b_sigma, b_rank, b_frac = bsv.values, bsv.rank, bsv.rank_frac
    return SpectrumResult(
        name=name,
        shape=shape,
        density=density,
        sigma=sv.values,
        rank=sv.rank,
        rank_frac=sv.rank_frac,
        effective_rank_99=sv.effective_rank(0.99),
        stable_rank=sv.stable_rank,
        baseline_sigma=b_sigma,
        baseline_rank=b_rank,
        baseline_rank_frac=b_frac,
        method=sv.method,
    )


_COLUMNS = [
    "name",
    "rows",
    "cols",
    "density",
    "rank",
    "rank_frac",
    "effective_rank_99",
    "stable_rank",
    "baseline_rank",
    "baseline_rank_frac",
    "method",
    "skipped",
    "note",
]


@dataclass(frozen=True, eq=False)
class SpectrumTable:
    """The spectra of many update matrices, in the order they were computed."""

    results: tuple[SpectrumResult, ...] = field(default_factory=tuple)

    def to_frame(self) -> pd.DataFrame:
        """One row per matrix: the columns of :meth:`SpectrumResult.to_row` (nullable ints)."""
        frame = pd.DataFrame([r.to_row() for r in self.results], columns=_COLUMNS)
        for col in ("rows", "cols", "rank", "effective_rank_99", "baseline_rank"):
            frame[col] = frame[col].astype("Int64")
        return frame

    def sigma_frame(self) -> pd.DataFrame:
        """Long format for plotting: name, index (1-based), sigma, kind in {"update", "random"}."""
        parts = []
        for r in self.results:
            for kind, values in (("update", r.sigma), ("random", r.baseline_sigma)):
                if values.size:
                    parts.append(
                        pd.DataFrame(
                            {"name": r.name, "index": np.arange(1, values.size + 1), "sigma": values, "kind": kind}
                        )
                    )
        if not parts:
            return pd.DataFrame({"name": [], "index": [], "sigma": [], "kind": []})
        return pd.concat(parts, ignore_index=True)


def update_spectra(deltas: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], **options) -> SpectrumTable:
    """:func:`update_spectrum` over ``name -> Δ`` pairs (a mapping or a lazy iterable of pairs)."""
    items = deltas.items() if isinstance(deltas, Mapping) else deltas
    return SpectrumTable(tuple(update_spectrum(name, delta, **options) for name, delta in items))


def normalized_spectral_shift(
    w0: torch.Tensor, w1: torch.Tensor, *, method: str = "auto", device: str | None = None, name: str = "weight"
) -> float:
    """NSS = ‖σ(W1) − σ(W0)‖₂ / ‖σ(W0)‖₂ for two (m, n) weight matrices (NaN when W0 = 0)."""
    if tuple(w0.shape) != tuple(w1.shape):
        raise AlignmentError(
            f"{name}: W0 has shape {tuple(w0.shape)} but W1 has {tuple(w1.shape)}; NSS needs matching shapes."
        )
    s0 = singular_values(w0, method=method, device=device, name=name).values
    s1 = singular_values(w1, method=method, device=device, name=name).values
    denom = float(np.linalg.norm(s0))
    return float(np.linalg.norm(s1 - s0)) / denom if denom > 0 else float("nan")
