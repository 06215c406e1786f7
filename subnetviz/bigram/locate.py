"""Where a subnetwork lives, and how much two subnetworks overlap beyond chance.

Owns the paper's §4.2 structure (shares per layer × {Q, K, V, O, MLP-in, MLP-out}, attention vs
MLP) and §6.2 overlap with the optimal subnetwork:

- ``overlap = sum_blocks |C0 & C1| / N`` (N = all mask entries);
- expected overlap under the uniform-within-block null, analytically
  ``sum_b k0_b * k1_b / n_b / N`` (the per-block overlap is hypergeometric, so null draws are exact
  hypergeometric samples), and under the paper code's row-shuffle null by sampling;
- ×chance = overlap / expected, a permutation p-value ``(1 + #{null >= observed}) / (1 + draws)``
  (never exactly 0), and the share of C0 inside C1 (``|C0 & C1| / |C0|``).

The row-shuffle null permutes the output units (rows of the (out, in) sub-matrix, :meth:`Block.units`: GPT-2's
(in, out) Conv1D blocks transposed first, as the paper's code does) of each block of C1. Its overlap
for a permutation π is ``sum_i G[i, π(i)]`` with ``G = C0_b @ C1_bᵀ`` (row-by-row overlap counts),
so every draw is a gather over one small matrix per block rather than a shuffle of the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from subnetviz.bigram.maskable import ATTENTION_LABELS, BLOCK_LABELS, Block
from subnetviz.errors import MaskError
from subnetviz.masks import MaskSet


def _check_same(a: MaskSet, b: MaskSet) -> None:
    if a.shapes() != b.shapes():
        only = sorted(set(a.shapes()) ^ set(b.shapes()))[:3]
        raise MaskError(
            f"the two masks cover different parameters or shapes (e.g. {only}); compare masks of the same model."
        )


def block_counts(mask_set: MaskSet, blocks: Sequence[Block]) -> pd.DataFrame:
    """One row per block: param, layer, block label, size n, kept k."""
    rows = []
    for b in blocks:
        if b.param not in mask_set.masks:
            continue
        sub = b.select(mask_set.masks[b.param])
        rows.append({"param": b.param, "layer": b.layer, "block": b.label, "n": sub.numel(), "kept": int(sub.sum())})
    if not rows:
        raise MaskError("the mask names none of the model's maskable matrices.")
    return pd.DataFrame(rows)


def subnetwork_shares(mask_set: MaskSet, blocks: Sequence[Block]) -> pd.DataFrame:
    """Tidy shares per layer × block: layer, block, kept, n, share (of the subnetwork), density
    (of the block). Every (layer, label) cell appears, so a heatmap has no holes."""
    c = block_counts(mask_set, blocks).groupby(["layer", "block"], as_index=False)[["kept", "n"]].sum()
    layers = sorted(c["layer"].unique())
    grid = pd.MultiIndex.from_product([layers, BLOCK_LABELS], names=["layer", "block"]).to_frame(index=False)
    c = grid.merge(c, on=["layer", "block"], how="left").fillna({"kept": 0, "n": 0})
    c[["kept", "n"]] = c[["kept", "n"]].astype(int)
    total = c["kept"].sum()
    c["share"] = c["kept"] / total if total else np.nan  # a share of nothing is undefined (0 / 0), not 0 %
    c["density"] = np.where(c["n"] > 0, c["kept"] / c["n"].where(c["n"] > 0, 1), np.nan)
    return c


def shares_heatmap_frame(shares: pd.DataFrame) -> pd.DataFrame:
    """:func:`subnetwork_shares` in the columns of :func:`subnetviz.figures.sparsity_heatmap`
    (layer, module, changed, numel, sparsity, density, share)."""
    out = shares.rename(columns={"block": "module", "kept": "changed", "n": "numel"})
    out["sparsity"] = 1 - out["density"]
    return out


def attention_mlp_split(shares: pd.DataFrame) -> pd.DataFrame:
    """From :func:`subnetwork_shares`: group (attention, mlp, Q+K, V+O), kept, share."""
    groups = {"attention": ATTENTION_LABELS, "mlp": ("MLP-in", "MLP-out"), "Q+K": ("Q", "K"), "V+O": ("V", "O")}
    total = shares["kept"].sum()
    rows = []
    for g, labels in groups.items():
        k = int(shares.loc[shares["block"].isin(labels), "kept"].sum())
        rows.append({"group": g, "kept": k, "share": k / total if total else float("nan")})  # (0 / 0: undefined)
    return pd.DataFrame(rows)


def overlap_by_block(mask0: MaskSet, mask1: MaskSet, blocks: Sequence[Block]) -> pd.DataFrame:
    """Per layer × block: shared, only0, only1 counts and n (the paper's overlap summary)."""
    _check_same(mask0, mask1)
    rows = []
    for b in blocks:
        if b.param not in mask0.masks:
            continue
        a, c = b.select(mask0.masks[b.param]), b.select(mask1.masks[b.param])
        rows.append(
            {
                "layer": b.layer,
                "block": b.label,
                "n": a.numel(),
                "shared": int((a & c).sum()),
                "only0": int((a & ~c).sum()),
                "only1": int((~a & c).sum()),
            }
        )
    return pd.DataFrame(rows).groupby(["layer", "block"], as_index=False, sort=False).sum()


def _ratio(observed: float, expected: float) -> float:
    if expected:
        return observed / expected
    return float("nan") if observed == 0 else float("inf")


@dataclass(frozen=True)
class OverlapReport:
    """Overlap of C0 (e.g. the bigram subnetwork) with C1 (e.g. the optimal one) against two nulls."""

    n_total: int
    kept0: int
    kept1: int
    shared: int
    overlap: float  # shared / n_total
    expected_uniform: float  # analytic
    expected_rows: float  # mean of the row-shuffle draws
    p_uniform: float
    p_rows: float
    share_of_0_in_1: float
    null_uniform: np.ndarray  # (draws,) overlap fractions
    null_rows: np.ndarray

    @property
    def ratio_uniform(self) -> float:
        return _ratio(self.overlap, self.expected_uniform)

    @property
    def ratio_rows(self) -> float:
        return _ratio(self.overlap, self.expected_rows)

    def why_undefined(self, names: tuple[str, str] = ("the bigram mask", "the optimal mask")) -> str | None:
        """Why this report's ×chance or share of C0 inside C1 is undefined (each a 0 / 0), or None where both are
        numbers. ``names``: how to call C0 and C1. An empty mask overlaps nothing and no overlap is expected of it;
        two masks with weights in no common block (or none a row-shuffle draw brings together) have neither an
        overlap nor an expected one."""
        if not any(map(np.isnan, (self.ratio_uniform, self.ratio_rows, self.share_of_0_in_1))):
            return None
        if not self.kept0 and not self.kept1:
            return "both masks are empty"
        if not self.kept0 or not self.kept1:
            return f"{names[0] if not self.kept0 else names[1]} is empty"
        return "no overlap found and none expected by chance"

    def explained_frame(self, names: tuple[str, str] = ("the bigram mask", "the optimal mask")) -> pd.DataFrame:
        """:meth:`to_frame` for people: a column that holds an undefined value (NaN) is text, that value written as
        the tables' dash with why (:meth:`why_undefined`: "— (the bigram mask is empty)") and the others as numbers
        read (×chance ``36.20×``, shares in percent), where a NaN read "nan", "None" or a bare dash."""
        out = self.to_frame()
        why = self.why_undefined(names)
        if why is None:
            return out
        shown = {"x_chance": lambda x: f"{x:.2f}×", "share_of_0_in_1": lambda x: f"{100 * x:.2f} %"}
        for col, text in shown.items():
            if out[col].isna().any():
                out[col] = [f"— ({why})" if np.isnan(x) else text(x) for x in out[col]]
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per null model."""
        base = {
            "n_total": self.n_total,
            "kept0": self.kept0,
            "kept1": self.kept1,
            "overlap": self.overlap,
            "share_of_0_in_1": self.share_of_0_in_1,
        }
        return pd.DataFrame(
            [
                {
                    **base,
                    "null": "uniform",
                    "expected_overlap": self.expected_uniform,
                    "x_chance": self.ratio_uniform,
                    "p_value": self.p_uniform,
                    "draws": len(self.null_uniform),
                },
                {
                    **base,
                    "null": "rows",
                    "expected_overlap": self.expected_rows,
                    "x_chance": self.ratio_rows,
                    "p_value": self.p_rows,
                    "draws": len(self.null_rows),
                },
            ]
        )

    def null_frame(self) -> pd.DataFrame:
        """Tidy null draws (null, overlap) for a histogram."""
        return pd.concat(
            [
                pd.DataFrame({"null": "uniform", "overlap": self.null_uniform}),
                pd.DataFrame({"null": "rows", "overlap": self.null_rows}),
            ],
            ignore_index=True,
        )


DENSE_ROWS_MAX = 4096  # up to this many rows, the row-overlap matrix is built dense


def _row_shuffle_draws(a: torch.Tensor, c: torch.Tensor, draws: int, gen: torch.Generator) -> np.ndarray:
    """(draws,) overlaps of ``a`` with row-permuted ``c`` (both ``(rows, cols)`` 0/1 float):
    ``sum_i g[i, π(i)]`` with ``g = a @ cᵀ``. Dense ``g`` for small blocks; for wide ones only its
    nonzero entries (sparse masks overlap in few row pairs), so an 8192-row block costs no 8192² matrix."""
    rows = a.shape[0]
    perms = torch.argsort(torch.rand(draws, rows, generator=gen), dim=1)  # (draws, rows) permutations
    if rows <= DENSE_ROWS_MAX:
        g = (a @ c.T).double()  # g[i, j] = |row i of C0 & row j of C1|
        return g[torch.arange(rows).unsqueeze(0), perms].sum(1).numpy()
    g = (sp.csr_matrix(a.numpy()) @ sp.csr_matrix(c.numpy()).T).tocoo()
    out = np.zeros(draws)
    perms_np = perms.numpy()
    step = max(1, 2**24 // max(g.nnz, 1))  # bound the (draws, nnz) comparison's memory
    for i in range(0, draws, step):
        out[i : i + step] = (perms_np[i : i + step][:, g.row] == g.col) @ g.data
    return out


def expected_overlap_uniform(mask0: MaskSet, mask1: MaskSet, blocks: Sequence[Block]) -> float:
    """sum_b k0_b k1_b / n_b / N: expected overlap fraction when C1 is redrawn uniformly per block."""
    c0, c1 = block_counts(mask0, blocks), block_counts(mask1, blocks)
    n = c0["n"].to_numpy(float)
    return float((c0["kept"].to_numpy(float) * c1["kept"].to_numpy(float) / n).sum() / n.sum())


def compare_subnetworks(
    mask0: MaskSet, mask1: MaskSet, blocks: Sequence[Block], draws: int = 1000, seed: int = 0
) -> OverlapReport:
    """Overlap of ``mask0`` with ``mask1`` and its two null distributions (``draws`` each, seeded)."""
    _check_same(mask0, mask1)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed))
    c0, c1 = block_counts(mask0, blocks), block_counts(mask1, blocks)
    n_total = int(c0["n"].sum())
    null_u = np.zeros(draws)
    null_r = np.zeros(draws)
    shared = 0
    for (_, r0), (_, r1), b in zip(
        c0.iterrows(), c1.iterrows(), [b for b in blocks if b.param in mask0.masks], strict=True
    ):
        a = b.units(mask0.masks[b.param]).float()  # (out, in): the row-shuffle null permutes output units
        c = b.units(mask1.masks[b.param]).float()
        a2, c2 = a.reshape(a.shape[0], -1), c.reshape(c.shape[0], -1)
        shared += int((a2 * c2).sum())
        if r0["kept"] and r1["kept"]:
            null_u += rng.hypergeometric(int(r1["kept"]), int(r0["n"] - r1["kept"]), int(r0["kept"]), size=draws)
            null_r += _row_shuffle_draws(a2, c2, draws, gen)
    k0, k1 = int(c0["kept"].sum()), int(c1["kept"].sum())
    return OverlapReport(
        n_total=n_total,
        kept0=k0,
        kept1=k1,
        shared=shared,
        overlap=shared / n_total,
        expected_uniform=expected_overlap_uniform(mask0, mask1, blocks),
        expected_rows=float(null_r.mean() / n_total),
        p_uniform=float((1 + (null_u >= shared).sum()) / (1 + draws)),
        p_rows=float((1 + (null_r >= shared).sum()) / (1 + draws)),
        share_of_0_in_1=shared / k0 if k0 else float("nan"),
        null_uniform=null_u / n_total,
        null_rows=null_r / n_total,
    )
