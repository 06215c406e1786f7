"""The linear algebra of :mod:`subnetviz.analysis.subspaces`, one matrix at a time: the top-K singular
structure (float64 Gram + ``eigh``, randomized ``svd_lowrank``, or full float64 ``svd``), principal
angles between subspaces, and the principal-weight mask. Pure functions of tensors; the numerics are
described in :mod:`subnetviz.analysis.subspaces`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from subnetviz.analysis.bits import int_view
from subnetviz.errors import ConfigError

_CHUNK_ELEMENTS = 1 << 24  # float64 chunk of the long side: 128 MB
FLOAT64_MAX_ITERS = 16  # subspace iterations in float64 after svd_lowrank's float32 ones, at most ...
FLOAT64_TOL = 1e-8  # ... until the top-k left Ritz vectors move less than this (degrees) in one


@dataclass(frozen=True, eq=False)
class TopK:
    """Top-K singular structure of one (m, n) matrix: orthonormal bases ``left`` (m, K) and ``right``
    (n, K), singular values ``sigma`` (K,) descending, float64; ``next_sigma`` = σ_{K+1} (0 if none)."""

    left: torch.Tensor
    right: torch.Tensor
    sigma: np.ndarray
    next_sigma: float
    method: str


def _gram(w: torch.Tensor) -> torch.Tensor:
    """WᵀW (n, n) in float64 for ``w`` (m, n), the rows cast to float64 a chunk at a time."""
    m, n = w.shape
    g = torch.zeros(n, n, dtype=torch.float64, device=w.device)
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for s in range(0, m, step):
        c = w[s : s + step].to(torch.float64)
        g.addmm_(c.T, c)
    return g


def _orth(x: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (float64) of the span of the columns of ``x`` (m, K)."""
    return torch.linalg.qr(x.to(torch.float64), mode="reduced").Q


def _mul64(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``w`` (m, n) @ ``v`` (n, K) in float64, ``w`` cast a chunk of rows at a time."""
    m, n = w.shape
    out = torch.empty(m, v.shape[1], dtype=torch.float64, device=w.device)
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for s in range(0, m, step):
        out[s : s + step] = w[s : s + step].to(torch.float64) @ v
    return out


def _tmul64(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``w``ᵀ (n, m) @ ``u`` (m, K) in float64, ``w`` cast a chunk of rows at a time."""
    m, n = w.shape
    out = torch.zeros(n, u.shape[1], dtype=torch.float64, device=w.device)
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for s in range(0, m, step):
        out.addmm_(w[s : s + step].to(torch.float64).T, u[s : s + step])
    return out


def top_k(
    w: torch.Tensor, k: int, *, method: str = "gram", oversample: int = 16, power_iters: int = 4, seed: int = 0
) -> TopK:
    """Top-``k`` singular subspaces and values of ``w`` (m, n) by ``method`` (gram, randomized, svd)."""
    m, n = w.shape
    if m < n:  # work on the tall orientation; swap sides back at the end
        t = top_k(w.T, k, method=method, oversample=oversample, power_iters=power_iters, seed=seed)
        return TopK(t.right, t.left, t.sigma, t.next_sigma, t.method)
    if method == "svd":
        u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
        sig = s.cpu().numpy()
        return TopK(u[:, :k], vh[:k].T, sig[:k], float(sig[k]) if k < sig.size else 0.0, "svd")
    if method == "gram":
        lam, vec = _top_eigh(_gram(w), k + 1)  # descending; one more for σ_{K+1}
        sig = lam.clamp_min(0).sqrt().cpu().numpy()
        right = vec[:, :k].contiguous()
        return TopK(_orth(_mul64(w, right)), right, sig[:k], float(sig[k]) if k < sig.size else 0.0, "gram")
    if method == "randomized":
        q = min(k + oversample, n)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # svd_lowrank draws its test matrix from the global generator
        try:
            u, _, _ = torch.svd_lowrank(w.to(torch.float32), q=q, niter=power_iters)
        finally:
            torch.random.set_rng_state(gen_state)
        # float32 found the subspace; subspace iterations in float64 refine it, each followed by the Rayleigh-Ritz
        # step (the SVD of Qᵀ W, (q, n)), until the top-k left Ritz vectors move less than FLOAT64_TOL degrees (at
        # most FLOAT64_MAX_ITERS): the singular values and vectors are then float64's within it (from float32's σ
        # alone, a σ ratio's deviation of 1e-6 was float32 noise, angles off by 1e-4°)
        left, prev = _orth(u), None
        for _ in range(FLOAT64_MAX_ITERS):
            ub, s, vh = torch.linalg.svd(_tmul64(w, left).T, full_matrices=False)
            top = left @ ub[:, :k]
            if prev is not None and principal_angles(prev, top).max() < FLOAT64_TOL:
                break
            prev, left = top, _orth(_mul64(w, vh.T))
        sig = s.cpu().numpy()
        return TopK(top, vh[:k].T.contiguous(), sig[:k], float(sig[k]) if k < sig.size else 0.0, "randomized")
    raise ConfigError(f"top_k method {method!r} is unknown; expected gram, randomized or svd.")


def _top_eigh(g: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest eigenpairs of symmetric ``g`` (n, n), descending.

    On CPU LAPACK's ``syevr`` computes only those (measured 6× faster than the full ``eigh`` at
    n = 896); on a GPU the full ``eigh`` is cheap enough.
    """
    n = g.shape[0]
    count = min(count, n)
    if g.device.type == "cpu":
        from scipy.linalg import eigh

        lam, vec = eigh(g.numpy(), subset_by_index=[n - count, n - 1], driver="evr")
        return torch.from_numpy(lam[::-1].copy()), torch.from_numpy(vec[:, ::-1].copy())
    lam, vec = torch.linalg.eigh(g)
    return lam.flip(0)[:count], vec.flip(1)[:, :count]


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Principal angles in degrees, ascending, between the spans of orthonormal ``a`` (m, K) and ``b`` (m, K).

    cos θ_i = σ_i(aᵀb); for cos² ≥ ½ the angle is taken from sin θ = σ(b − a aᵀb) instead, which
    keeps small angles accurate (arccos near 1 loses half the digits).
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    c = a.T @ b
    cos = torch.linalg.svdvals(c).clamp(0, 1).cpu().numpy()  # descending -> angles ascending
    sin = torch.linalg.svdvals(b - a @ c).clamp(0, 1).cpu().numpy()[::-1]  # ascending, paired with cos
    theta = np.where(cos**2 >= 0.5, np.arcsin(sin[: cos.size]), np.arccos(cos))
    return np.degrees(np.sort(theta))


def _magnitudes(w: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """|W V Vᵀ| (rank-K reconstruction of ``w`` (m, n), ``right`` (n, K) orthonormal), flat, float32, a chunk of
    rows at a time: 4 bytes per entry, not the float64 product and its absolute value at once (8 + 8 bytes per
    entry: 2 GB for Qwen2.5-0.5B's embedding, 9 GB for a 7B's)."""
    m, n = w.shape
    wv, vt = _mul64(w, right), right.T.to(torch.float64)
    mag = torch.empty(m * n, dtype=torch.float32, device=w.device)
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for s in range(0, m, step):
        e = min(s + step, m)
        mag[s * n : e * n] = (wv[s:e] @ vt).abs_().flatten()
    return mag


_SELECT_CHUNK = 1 << 22  # entries per step of the selection's histograms (16 MB of int32 temporaries)


def _histogram(v: torch.Tensor, shift: int, bins: int, keep: int | None = None) -> torch.Tensor:
    """Counts of ``(v >> shift) & (bins - 1)`` over the int32 ``v`` (flat), or only over the entries whose
    ``v >> 16`` is ``keep``; a chunk at a time (int64 counts)."""
    hist = torch.zeros(bins, dtype=torch.int64, device=v.device)
    for s in range(0, v.numel(), _SELECT_CHUNK):
        c = v[s : s + _SELECT_CHUNK]
        if keep is not None:
            c = c[(c >> 16) == keep]
        hist += torch.bincount((c >> shift) & (bins - 1), minlength=bins)
    return hist


def _select_bin(hist: torch.Tensor, count: int) -> tuple[int, int]:
    """The bin holding the ``count``-th largest entry (1-based) of a histogram, and how many entries lie in
    the bins above it."""
    above = torch.flip(torch.cumsum(torch.flip(hist, (0,)), 0), (0,)) - hist  # entries in higher bins
    b = int(torch.nonzero((above < count) & (above + hist >= count))[0, 0])
    return b, int(above[b])


def principal_threshold(mag: torch.Tensor, count: int) -> tuple[float, int, int]:
    """(t, above, tied) for the non-negative float32 ``mag`` (flat, finite): t = its ``count``-th largest
    value, ``above`` = entries > t, ``tied`` = entries == t (so above < count <= above + tied).

    A radix selection on the int32 view (for non-negative floats its order is the values'): a histogram of
    the high 16 bits, then one of the low 16 bits of the entries in the chosen bin; chunked, so no more than
    ``mag`` itself (``torch.kthvalue`` copied it and took int64 indices: 12 more bytes per entry).
    """
    n = mag.numel()
    if not 1 <= count <= n:
        raise ConfigError(f"principal_threshold: count {count} is outside 1..{n}.")
    v = int_view(mag)  # (float32 -> int32)
    hi, above_hi = _select_bin(_histogram(v, 16, 1 << 15), count)
    lo_hist = _histogram(v, 0, 1 << 16, keep=hi)
    lo, above_lo = _select_bin(lo_hist, count - above_hi)
    t = np.array([(hi << 16) | lo], dtype=np.int32).view(np.float32)[0]  # the bits back as the value
    return float(t), above_hi + above_lo, int(lo_hist[lo])


def principal_overlap(w: torch.Tensor, right: torch.Tensor, changed: torch.Tensor) -> float:
    """The share of the ``changed`` entries (bool, ``w``'s shape) inside the principal mask: the ``count =
    changed.sum()`` entries of largest |W V Vᵀ| (rank-K reconstruction of ``w``, :func:`principal_mask`).

    Entries tied at the threshold count fractionally, as the expected overlap under a random choice among
    them: a changed entry above the threshold counts 1, one tied with it (slots left) / (entries tied), so the
    number does not depend on where in the matrix the changes lie (a zero base, all tied, read 1.0 or 0.0 by
    the flat index of its changes). NaN when nothing changed.
    """
    count = int(changed.sum())
    if count <= 0:
        return float("nan")
    mag = _magnitudes(w, right)
    if mag.device.type == "mps":  # (bincount's int64 counts)
        mag = mag.cpu()
    t, above, tied = principal_threshold(mag, count)
    ch = changed.reshape(-1).to(mag.device)
    inside = at = 0
    for s in range(0, mag.numel(), _SELECT_CHUNK):
        c, k = mag[s : s + _SELECT_CHUNK], ch[s : s + _SELECT_CHUNK]
        inside += int(((c > t) & k).sum())
        at += int(((c == t) & k).sum())
    return (inside + at * (count - above) / tied) / count


def principal_mask(w: torch.Tensor, right: torch.Tensor, count: int) -> torch.Tensor:
    """Bool (m, n): the ``count`` entries of largest |W V Vᵀ| (rank-K reconstruction of ``w``).

    ``right`` (n, K) orthonormal spans W's top-K right singular subspace, so W V Vᵀ = U_K Σ_K V_Kᵀ.
    Ties at the threshold are broken by flat index order, so the mask holds exactly ``count``
    (:func:`principal_overlap` counts them fractionally instead).
    """
    m, n = w.shape
    if count <= 0:
        return torch.zeros(m, n, dtype=torch.bool, device=w.device)
    if count >= m * n:
        return torch.ones(m, n, dtype=torch.bool, device=w.device)
    mag = _magnitudes(w, right)
    if mag.device.type == "mps":
        mag = mag.cpu()
    t, above, _ = principal_threshold(mag, count)
    mask = mag > t
    ties = torch.nonzero(mag == t).flatten()
    mask[ties[: count - above]] = True
    return mask.view(m, n).to(w.device)
