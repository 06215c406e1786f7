"""The residual stream's turn from current-token to next-token representations (paper §5).

Owns the activations ``X_0 .. X_L`` (``(n_tokens, d)`` each), the rotation metric and the
covariance-similarity matrix, for a model with or without a mask applied.

- ``X_ℓ`` for ``ℓ < L`` are HF ``output_hidden_states``; HF applies the final norm to the last
  entry, so ``X_L`` is instead captured by a forward hook as the *input* of the final norm
  (``ln_f`` / ``final_layer_norm`` / ``norm``): the last layer before the final norm, as the
  paper's ``model_overrides.py`` does. ``X_in`` is the raw token embeddings (no positions).
- Rotation: ridge maps (alpha 1, with intercept, closed form; sklearn's ``Ridge`` ``coef_``,
  ``(d, d)``) from ``X_ℓ`` to ``X_in`` and to ``X_out = X_L``; the metric is the median over the
  ``d`` eigenvalues of ``|arg λ|`` in degrees (numerically-zero eigenvalues of a rank-deficient
  map are left out, see :func:`rotation_angles_deg`).
- Covariance similarity (Belrose et al. 2023): mean-centre ``X_ℓ``, drop its top singular
  direction, ``C_ℓ = sum_{k>=2} s_k² v_k v_kᵀ``; cell ``(i, j)`` = Frobenius cosine of ``C_i, C_j``.

Everything needs only per-layer sums and ``d × d`` cross products (float64), so activations are
streamed batch by batch into :class:`ResidualStats` and never held for all tokens at once.

NaN or Inf activations (finite weights can overflow float32) are refused with one
:class:`~subnetviz.errors.NonFiniteError` saying from which layer on (:func:`check_stats`); numpy's eigensolvers
raised ``LinAlgError`` on them and the ridge solve returned NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from subnetviz.bigram.maskable import FINAL_NORM, family_of, masked_parameters
from subnetviz.bigram.stats import TokenCorpus
from subnetviz.errors import NonFiniteError
from subnetviz.masks import MaskSet


@dataclass(frozen=True)
class ResidualStats:
    """Sufficient statistics of ``n`` tokens' activations (``L + 1`` layers, width ``d``).

    ``sums``: ``(L+1, d)``; ``gram``: ``(L+1, d, d)`` = X_ℓᵀX_ℓ; ``cross_in``: ``(L+1, d, d)`` =
    X_ℓᵀX_in; ``cross_out``: ``(L+1, d, d)`` = X_ℓᵀX_L; ``sum_in``: ``(d,)``."""

    n: int
    sums: np.ndarray
    gram: np.ndarray
    cross_in: np.ndarray
    cross_out: np.ndarray
    sum_in: np.ndarray

    @classmethod
    def from_arrays(cls, x_in: np.ndarray, layers: Sequence[np.ndarray]) -> ResidualStats:
        """From explicit activations: ``x_in`` ``(n, d)``, ``layers`` ``L+1`` arrays ``(n, d)``."""
        xs = np.stack([np.asarray(x, np.float64) for x in layers])  # (L+1, n, d)
        x_in = np.asarray(x_in, np.float64)
        return cls(
            x_in.shape[0],
            xs.sum(1),
            np.einsum("lni,lnj->lij", xs, xs),
            np.einsum("lni,nj->lij", xs, x_in),
            np.einsum("lni,nj->lij", xs, xs[-1]),
            x_in.sum(0),
        )


def check_stats(stats: ResidualStats, what: str = "the residual stream") -> None:
    """Raise :class:`~subnetviz.errors.NonFiniteError` where ``stats`` hold NaN or Inf, naming the first layer
    (0 = the embeddings) whose own sums are not finite: ``what`` says whose stream it is."""
    own = [np.isfinite(stats.sums[k]).all() and np.isfinite(stats.gram[k]).all() for k in range(len(stats.sums))]
    rest = (stats.cross_in, stats.cross_out, stats.sum_in)
    if all(own) and all(np.isfinite(a).all() for a in rest):
        return
    if not np.isfinite(stats.sum_in).all():
        at = "in the input embeddings"
    elif all(own):
        at = "in its cross products with the input embeddings or the last layer"
    else:
        at = f"from layer {own.index(False)} of {len(own) - 1} on (0 = the embeddings)"
    raise NonFiniteError(
        f"{what}: NaN or Inf activations {at} (a value overflowed float32); its rotation and covariance "
        "similarity cannot be computed."
    )


def _require_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise NonFiniteError(f"{what} holds NaN or Inf (activations that overflowed); it has no eigenvalues.")


def _final_norm(model) -> torch.nn.Module:
    return model.get_submodule(f"{model.base_model_prefix}.{FINAL_NORM[family_of(model)]}")


@torch.no_grad()
def hidden_states(model, ids: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """``L + 1`` tensors ``(B, T, d)``: embedding output, then every layer, the last one taken
    before the final norm."""
    captured: list[torch.Tensor] = []
    handle = _final_norm(model).register_forward_hook(lambda mod, args, out: captured.append(args[0].detach()))
    try:
        out = functional_call(model, dict(params or {}), (ids,), {"output_hidden_states": True})
    finally:
        handle.remove()
    hs = list(out.hidden_states)
    hs[-1] = captured[-1]
    return hs


@torch.no_grad()
def collect_stats(
    model,
    corpus: TokenCorpus,
    params: Mapping[str, torch.Tensor] | None = None,
    max_tokens: int = 128_000,
    batch_size: int = 16,
) -> ResidualStats:
    """Stream ``corpus`` (at most ``max_tokens`` tokens, whole sequences) through ``model``."""
    model.eval()
    dev = next(model.parameters()).device
    emb = model.get_input_embeddings().weight
    acc = None
    n_seq = max(1, min(len(corpus.ids), max_tokens // max(corpus.ids.shape[1], 1)))
    for i in range(0, n_seq, batch_size):
        ids = corpus.ids[i : min(i + batch_size, n_seq)].to(dev)
        hs = hidden_states(model, ids, params)
        xs = torch.stack([h.reshape(-1, h.shape[-1]) for h in hs]).double()  # (L+1, n, d)
        x_in = emb[ids.reshape(-1)].double()
        part = (
            xs.shape[1],
            xs.sum(1),
            torch.einsum("lni,lnj->lij", xs, xs),
            torch.einsum("lni,nj->lij", xs, x_in),
            torch.einsum("lni,nj->lij", xs, xs[-1]),
            x_in.sum(0),
        )
        acc = part if acc is None else tuple(a + b for a, b in zip(acc, part, strict=True))
    n, *rest = acc
    return ResidualStats(int(n), *(t.cpu().numpy() for t in rest))


def ridge_coef(xtx, xty, mean_x, mean_y, n: int, alpha: float = 1.0) -> np.ndarray:
    """Closed-form ridge with intercept from sufficient statistics; returns sklearn's ``coef_``
    ``(d_y, d_x)``: ``((XcᵀXc + αI)⁻¹ XcᵀYc)ᵀ`` with ``Xc, Yc`` mean-centred. NaN or Inf statistics are a
    :class:`~subnetviz.errors.NonFiniteError` (the solve returned NaN)."""
    for x in (xtx, xty, mean_x, mean_y):
        _require_finite(np.asarray(x), "the ridge map's statistics")
    sxx = xtx - n * np.outer(mean_x, mean_x)
    sxy = xty - n * np.outer(mean_x, mean_y)
    return np.linalg.solve(sxx + alpha * np.eye(sxx.shape[0]), sxy).T


def ridge_map(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """``coef_`` ``(d_y, d_x)`` of the ridge map ``x (n, d_x) -> y (n, d_y)`` (alpha, intercept)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return ridge_coef(x.T @ x, x.T @ y, x.mean(0), y.mean(0), x.shape[0], alpha)


def rotation_angles_deg(coef: np.ndarray, rel_tol: float = 1e-6) -> np.ndarray:
    """``|arg λ|`` in degrees (in [0, 180]) of the eigenvalues λ of a square map, leaving out those
    with ``|λ| <= rel_tol * max|λ|``: a rank-deficient map (fewer distinct tokens than ``d``, as in
    the demo zoo's 14-letter chain) has numerically-zero eigenvalues whose argument is rounding
    noise. With a full-rank map (the paper's setting) every eigenvalue is kept. A map with NaN or Inf is a
    :class:`~subnetviz.errors.NonFiniteError` (numpy raised ``LinAlgError``)."""
    _require_finite(coef, "the ridge map")
    lam = np.linalg.eigvals(coef)
    mag = np.abs(lam)
    keep = mag > rel_tol * mag.max() if mag.size and mag.max() > 0 else np.zeros(mag.shape, bool)
    return np.degrees(np.abs(np.angle(lam[keep])))


def median_rotation_deg(coef: np.ndarray, rel_tol: float = 1e-6) -> float:
    """Median of :func:`rotation_angles_deg` (NaN for a zero map)."""
    angles = rotation_angles_deg(coef, rel_tol)
    return float(np.median(angles)) if angles.size else float("nan")


def rotation_profile(stats: ResidualStats, alpha: float = 1.0, rel_tol: float = 1e-6) -> pd.DataFrame:
    """Tidy: layer, target ("input" | "output"), angle_deg, n_eigenvalues (how many were not ~0). NaN or Inf
    statistics: :func:`check_stats`."""
    check_stats(stats)
    mean_in = stats.sum_in / stats.n
    mean_out = stats.sums[-1] / stats.n
    rows = []
    for layer in range(stats.sums.shape[0]):
        mx = stats.sums[layer] / stats.n
        for target, cross, my in (("input", stats.cross_in, mean_in), ("output", stats.cross_out, mean_out)):
            coef = ridge_coef(stats.gram[layer], cross[layer], mx, my, stats.n, alpha)
            angles = rotation_angles_deg(coef, rel_tol)
            rows.append(
                {
                    "layer": layer,
                    "target": target,
                    "angle_deg": float(np.median(angles)) if angles.size else float("nan"),
                    "n_eigenvalues": int(angles.size),
                }
            )
    return pd.DataFrame(rows)


def covariance_matrices(stats: ResidualStats) -> np.ndarray:
    """``(L+1, d, d)``: centred covariance with the top singular direction removed (unnormalised). NaN or Inf
    statistics: :func:`check_stats` (numpy's ``eigh`` raised ``LinAlgError``)."""
    check_stats(stats)
    out = []
    for layer in range(stats.sums.shape[0]):
        mean = stats.sums[layer] / stats.n
        c = stats.gram[layer] - stats.n * np.outer(mean, mean)  # = XcᵀXc = sum_k s_k² v_k v_kᵀ
        w, v = np.linalg.eigh((c + c.T) / 2)
        out.append(c - w[-1] * np.outer(v[:, -1], v[:, -1]))
    return np.stack(out)


def covariance_similarity(stats: ResidualStats) -> pd.DataFrame:
    """Tidy: layer_i, layer_j, similarity (Frobenius cosine of the two covariances)."""
    cs = covariance_matrices(stats)
    flat = cs.reshape(cs.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1)
    sim = (flat @ flat.T) / np.outer(norms, norms).clip(min=1e-300)
    li, lj = np.meshgrid(np.arange(len(cs)), np.arange(len(cs)), indexing="ij")
    return pd.DataFrame({"layer_i": li.ravel(), "layer_j": lj.ravel(), "similarity": sim.ravel()})


@dataclass(frozen=True)
class ResidualReport:
    """Side-by-side residual-stream analyses; each frame has a ``model`` column."""

    rotation: pd.DataFrame  # model, layer, target, angle_deg
    covariance: pd.DataFrame  # model, layer_i, layer_j, similarity

    def to_frame(self) -> pd.DataFrame:
        return self.rotation

    def covariance_matrix(self, model: str) -> pd.DataFrame:
        """The ``(L+1) × (L+1)`` similarity matrix of one model (rows layer_i, columns layer_j)."""
        one = self.covariance[self.covariance["model"] == model]
        return one.pivot(index="layer_i", columns="layer_j", values="similarity")


def analyse_residual_stream(
    model,
    corpus: TokenCorpus,
    subnetworks: Mapping[str, MaskSet | None],
    max_tokens: int = 128_000,
    batch_size: int = 16,
    alpha: float = 1.0,
    where: str | None = None,
) -> ResidualReport:
    """Rotation and covariance similarity for each ``label -> mask`` (``None`` = full model; a mask
    is applied keep-only, i.e. the subnetwork alone), e.g. full / bigram / random. A stream with NaN or Inf
    activations is refused (:func:`check_stats`) naming ``where`` (the checkpoint) and the label."""
    rot, cov = [], []
    where = where or str(getattr(model, "name_or_path", "") or "the model")
    for label, ms in subnetworks.items():
        params = None if ms is None else masked_parameters(model, ms, "keep")
        stats = collect_stats(model, corpus, params, max_tokens, batch_size)
        check_stats(stats, f"{where}, the residual stream of the {label}" + (" model" if ms is None else ""))
        rot.append(rotation_profile(stats, alpha).assign(model=label))
        cov.append(covariance_similarity(stats).assign(model=label))
    return ResidualReport(pd.concat(rot, ignore_index=True), pd.concat(cov, ignore_index=True))
