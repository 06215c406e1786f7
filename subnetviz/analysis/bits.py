"""When do two weights differ? The one bitwise / ULP / tolerance comparison of float tensors.

This module owns:

- :data:`INT_VIEW`: the same-width signed integer view of each float dtype (bf16/fp16 -> int16,
  fp32 -> int32, fp64 -> int64, fp8 e4m3fn/e5m2 -> int8). Exact equality is equality of these
  views: -0.0 and +0.0 differ, a NaN equals itself only with the same payload.
- :func:`int_view` and :func:`bits_differ`, the bitwise-changed mask.
- ULP distances (:func:`ulp_distance_bits` on integer views, NumPy or torch; :func:`ulp_distance`
  on float tensors) and the one set of ULP bins, :data:`ULP_EDGES` / :data:`ULP_LABELS`, with the
  counting helpers :func:`counts_above` and :func:`ulp_bins`.
- The comparison defaults: :data:`DEFAULT_TOLERANCES`, :data:`PAPER_TOLERANCE`, :data:`DEFAULT_ETA`.
- :func:`check_finite`: refuse NaN / Inf weights before comparing them.
- :func:`changed_stats_numpy`: every statistic of a set of changed entries (largest |Δ|, the
  tolerance sweep, the η rule, the ULP counts) in preallocated NumPy buffers (:class:`Scratch`):
  the CPU kernel of the per-tensor pass where numba is not installed. With numba the pass is one
  compiled loop with the same definitions and numbers (:mod:`~subnetviz.analysis.bits_jit`).

ULP distance. IEEE floats are sign-magnitude: with ``m`` the bits below the sign bit, the monotone
integer key of a pattern is ``k = m`` for a positive sign and ``k = -m`` for a negative one, so
adjacent floats differ by 1 in ``k`` everywhere, across zero too, and +0 and -0 share the key 0
(they are 0 ULP apart although their bits differ). The distance is ``|k_a - k_b|``: for the same
sign that is ``|m_a - m_b|`` (the raw patterns' difference), across a sign change it is
``m_a + m_b``, the steps from ``a`` down to zero plus those from zero up to ``b``. Sign crossings
are computed in a wider integer (int32 for 8- and 16-bit types, int64 otherwise); for float64 the
sum can overflow int64 and is clamped to the int64 maximum, far beyond the last bin.

ULP bins (one set, used by every page and saved analysis): a histogram over *changed* entries
(update sparsity: base vs finetuned) uses :data:`ULP_LABELS`, and its first bin "1" also holds
the bit changes at distance 0 (-0 vs +0), so every changed entry is binned exactly once. A
histogram over *every* entry (two runs compared) prepends "0" for the bitwise-identical entries:
:data:`ULP_LABELS_WITH_ZERO`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from subnetviz.analysis import bits_jit
from subnetviz.analysis.thresholds import (  # noqa: F401 (the numbers, re-exported beside their comparison)
    DEFAULT_ETA,
    DEFAULT_TOLERANCES,
    PAPER_TOLERANCE,
    ULP_EDGES,
    ULP_LABELS,
    ULP_LABELS_WITH_ZERO,
)
from subnetviz.errors import ConfigError, NonFiniteError

INT_VIEW = {
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float8_e4m3fn: torch.int8,
    torch.float8_e5m2: torch.int8,
}


def int_view(t: torch.Tensor) -> torch.Tensor:
    """The float tensor ``t`` reinterpreted as same-width signed integers (a view: no copy, same shape)."""
    iv = INT_VIEW.get(t.dtype)
    if iv is None:
        raise ConfigError(
            f"bit patterns are defined for float tensors ({', '.join(map(str, INT_VIEW))}); got {t.dtype}."
        )
    return t.view(iv)


def bits_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bool mask (``a``'s shape): True where the stored bits differ. Same dtype and shape required.

    Floats are compared on :func:`int_view` (no float comparison, so -0.0 != 0.0 and NaN == NaN
    with the same payload); integer and bool tensors with ``!=``.
    """
    if a.dtype != b.dtype:
        raise ConfigError(f"bitwise comparison needs one dtype, got {a.dtype} and {b.dtype}.")
    if a.dtype in INT_VIEW:
        return a.view(INT_VIEW[a.dtype]) != b.view(INT_VIEW[a.dtype])
    return a != b


def ulp_distance_bits(xi, yi, xp):
    """Representable steps between float bit patterns ``xi`` and ``yi`` (1-D integer views).

    ``xp`` is ``numpy`` or ``torch`` (the arrays' library). Same sign -> |m_y - m_x|; opposite
    signs -> m_x + m_y (-0 and +0 are one point), see the module docstring. When no pair changes
    sign (the usual case) the raw patterns' difference is the answer and cannot overflow, so it is
    taken in the stored width; otherwise 8- and 16-bit types work in int32 and wider ones in int64
    (a float64 sum that overflows is clamped: it is past the last histogram edge anyway).
    """
    if not bool(((xi ^ yi) < 0).any()):
        return xp.abs(yi - xi)
    width = 8 * (xi.itemsize if xp is np else xi.element_size())
    if xp is np:
        x, y = (v.astype(np.int32 if width <= 16 else np.int64) for v in (xi, yi))
    else:
        x, y = (v.to(torch.int32 if width <= 16 else torch.int64) for v in (xi, yi))
    magnitude = (1 << (width - 1)) - 1
    mx, my = x & magnitude, y & magnitude
    dist = xp.where((x ^ y) >= 0, xp.abs(my - mx), mx + my)
    return xp.where(dist < 0, np.iinfo(np.int64).max, dist) if width == 64 else dist


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ULP distance between two float tensors of one dtype and shape, elementwise (int64, ``a``'s shape)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ConfigError(
            f"ULP distance needs one dtype and shape, got {a.dtype}{tuple(a.shape)} and {b.dtype}{tuple(b.shape)}."
        )
    xi, yi = int_view(a.contiguous()).reshape(-1), int_view(b.contiguous()).reshape(-1)
    return ulp_distance_bits(xi, yi, torch).to(torch.int64).reshape(a.shape)


def counts_above(values, edges, xp) -> list[int]:
    """``[#(values > e) for e in edges]`` for ascending edges, stopping at the first zero.

    ``values`` is a NumPy array or a torch tensor (``xp`` its library). Used for both the
    tolerance sweep (``|Δ| > tol``) and the ULP bins (distance > edge).
    """
    out = []
    for e in edges:
        out.append(int(xp.count_nonzero(values > e)))
        if out[-1] == 0:
            return out + [0] * (len(edges) - len(out))
    return out


def ulp_bins(total: int, above: list[int]) -> list[int]:
    """Histogram over :data:`ULP_LABELS` of ``total`` entries with ``above[j] = #(distance > ULP_EDGES[j])``.

    The first bin takes everything not above the first edge (distance 0 or 1 for changed entries).
    """
    return [total - above[0]] + [above[j] - above[j + 1] for j in range(len(above) - 1)] + [above[-1]]


# The exponent bits of each IEEE type in its integer view: a pattern with all of them set is Inf or NaN.
EXPONENT_BITS = {
    torch.bfloat16: np.int16(0x7F80),
    torch.float16: np.int16(0x7C00),
    torch.float32: np.int32(0x7F800000),
    torch.float64: np.int64(0x7FF0000000000000),
}


def check_finite(x: torch.Tensor, where: str) -> None:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or Inf.

    A contiguous CPU tensor of an IEEE type, with numba: one compiled pass over its integer view for a
    pattern whose exponent bits are all set (:data:`EXPONENT_BITS`; ~0.07 ns per bf16 entry from memory,
    against ~0.11 for ``aminmax``, and ~1 µs per call against ~3). Otherwise one min/max reduction in the
    stored dtype (NaN propagates through both, ±Inf lands in one); ~20x cheaper than an fp32-accumulated
    sum. The exact count is taken only when it fails.
    """
    if not x.dtype.is_floating_point or x.numel() == 0:
        return
    pattern = EXPONENT_BITS.get(x.dtype)
    k = bits_jit.kernels() if pattern is not None and x.device.type == "cpu" and x.is_contiguous() else None
    if k is not None:
        ok = not k.any_marked(x.view(INT_VIEW[x.dtype]).reshape(-1).numpy(), pattern)
    elif x.dtype in INT_VIEW and x.dtype.itemsize > 1:
        lo, hi = torch.aminmax(x)
        ok = math.isfinite(float(lo)) and math.isfinite(float(hi))
    else:  # float8 and other exotic types: no aminmax / isfinite kernels everywhere
        x = x.float()
        ok = math.isfinite(float(x.sum()))
    if not ok:
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise NonFiniteError(f"{where}: {bad} NaN/Inf value(s). Analyses need finite weights.")


# --- the CPU kernel of the per-tensor pass ------------------------------------------------------------
class Scratch:
    """Reusable NumPy work buffers, one per role, grown on demand (views of the first ``n`` entries).

    The per-tensor pass runs a dozen elementwise steps per chunk; writing each into a buffer that
    stays warm in cache, instead of a fresh allocation, is what keeps a step near the memory speed.
    """

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, role: str, dtype, n: int) -> np.ndarray:
        buf = self._bufs.get(role)
        if buf is None or buf.dtype != dtype or buf.size < n:
            buf = self._bufs[role] = np.empty(n, dtype)
        return buf[:n]


def _values(v: np.ndarray, dtype: torch.dtype, out: np.ndarray) -> np.ndarray:
    """The exact values of float bit patterns ``v`` (1-D integer view of ``dtype``) written into ``out``
    (float32 for 16-bit types, float64 otherwise): bf16 is the top half of a float32 pattern."""
    if dtype == torch.bfloat16:
        w = out.view(np.int32)
        np.copyto(w, v)  # sign-extended; the shift moves the 16 stored bits to the top
        np.left_shift(w, 16, out=w)
    elif dtype == torch.float16:  # torch's conversion is ~10x NumPy's on one thread
        torch.from_numpy(out).copy_(torch.from_numpy(v).view(torch.float16))
    else:
        np.copyto(out, v.view(np.float32 if v.itemsize == 4 else np.float64))
    return out


def counts_above_into(values: np.ndarray, edges: Sequence, flags: np.ndarray) -> list[int]:
    """:func:`counts_above` (NumPy) with the comparison written into ``flags`` (a bool buffer of
    ``values``' size): one compare and one count per edge, no allocation."""
    out = []
    for e in edges:
        out.append(int(np.count_nonzero(np.greater(values, e, out=flags))))
        if out[-1] == 0:
            return out + [0] * (len(edges) - len(out))
    return out


def ulp_counts_numpy(xi: np.ndarray, yi: np.ndarray, scratch: Scratch) -> tuple[list[int], int]:
    """``([#(ULP distance > e) for e in ULP_EDGES], #(bits differ at distance 0))`` of 1-D integer views.

    Same-sign pairs (nearly all) are ``|y - x|`` in the stored width, which cannot overflow; the few
    pairs whose signs differ are set to 0 there and counted apart, exactly (:func:`ulp_distance_bits`).
    The second number counts the -0 / +0 pairs: every other pair whose bits differ is ≥ 1 ULP apart.
    """
    w = scratch.get("ulp", xi.dtype, xi.size)
    flags = scratch.get("flags", np.bool_, xi.size)
    np.bitwise_xor(xi, yi, out=w)
    crossing = None
    if xi.size and int(np.minimum.reduce(w)) < 0:  # sign bits differ somewhere
        crossing = np.flatnonzero(np.less(w, 0, out=flags))
    np.subtract(yi, xi, out=w)
    np.abs(w, out=w)
    extra, zero = [0] * len(ULP_EDGES), 0
    if crossing is not None:
        dist = ulp_distance_bits(xi[crossing], yi[crossing], np)
        w[crossing] = 0
        extra = counts_above(dist, ULP_EDGES, np)
        zero = int(dist.size - np.count_nonzero(dist))
    above = counts_above_into(w, ULP_EDGES, flags)
    return [a + b for a, b in zip(above, extra, strict=True)], zero


def changed_stats_numpy(
    xi: np.ndarray,
    yi: np.ndarray,
    changed: int,
    dtype: torch.dtype,
    tolerances: Sequence[float],
    eta: float,
    rel_is_nonzero: bool,
    scratch: Scratch,
) -> tuple[float, list[int], int, list[int], np.ndarray]:
    """Statistics of 1-D integer views ``xi`` -> ``yi`` of float ``dtype`` holding ``changed`` pairs
    whose bits differ (the changed entries gathered, or a whole chunk: an unchanged pair has Δ = 0
    and ULP distance 0, which no count includes).

    Returns (largest |Δ|, ``[#(|Δ| > tol)]``, η-rule count, ``[#(ULP > edge)]``, |Δ| (a scratch
    view, valid until the next call)). Δ is taken in float32 for 16-bit types and float64 for
    wider ones, every step writes into a :class:`Scratch` buffer, and with ``rel_is_nonzero`` (η
    below half an ULP: the rule is "Δ != 0") the η count is ``changed`` minus the -0 / +0 pairs,
    which the ULP pass finds among the sign changes, so it costs nothing.
    """
    ctype = np.float32 if xi.itemsize <= 2 else np.float64
    n = xi.size
    xs = _values(xi, dtype, scratch.get("x", ctype, n))
    ys = _values(yi, dtype, scratch.get("y", ctype, n))
    with np.errstate(over="ignore"):  # bf16 Δ past float32's range: Inf here, taken in float64 by the caller
        d = np.subtract(ys, xs, out=xs if rel_is_nonzero else scratch.get("d", ctype, n))  # values: not needed after
    np.abs(d, out=d)
    flags = scratch.get("flags", np.bool_, n)
    largest = float(np.maximum.reduce(d)) if n else 0.0
    # |Δ| <= tol counts as unchanged; d is 0 for -0 vs +0, which no tolerance counts.
    tol = counts_above_into(d, tolerances, flags)
    if not rel_is_nonzero:  # η·max(|a|, |b|), in place over the values (not needed after this)
        np.abs(xs, out=xs)
        np.abs(ys, out=ys)
        np.maximum(xs, ys, out=xs)
        np.multiply(xs, eta, out=xs)
        rel = int(np.count_nonzero(np.greater(d, xs, out=flags)))
    above, zero = ulp_counts_numpy(xi, yi, scratch)
    if rel_is_nonzero:  # |Δ| != 0 <=> ULP distance != 0 for finite values
        rel = changed - zero
    return largest, tol, rel, above, d
