"""One matrix up close: its update Δ and which entries changed under a chosen criterion.

The page's *One matrix* view follows the sparsity criterion (exact, an absolute tolerance or
relative η), which the saved update mask (exact only) cannot. Reads the two tensors only, a band of rows at
a time, and keeps only what the views draw (block sums, row and column counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from subnetviz.analysis.quant import checkpoint_forms, row_block, weight_rows
from subnetviz.analysis.sparsity import PRECISIONS, _rel_is_nonzero
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.adapters import _CONV1D, open_finetune
from subnetviz.errors import CheckpointError
from subnetviz.figures.matrix import MatrixBlocks

BAND_ENTRIES = 1 << 22
"""Entries compared at a time (a band of whole rows): memory stays a few dozen MB whatever the matrix."""


@dataclass(frozen=True)
class MatrixUpdate:
    """One matrix's update under ``criterion``, reduced to what its views draw: ``changed`` and ``delta`` (Δ =
    W_ft − W_base as compared: float32 for 16-bit types, float64 for wider ones) as sums over the blocks of
    :class:`~subnetviz.figures.matrix.MatrixBlocks`, the changed count of each row and column, and the total.
    Nothing of the matrix's size is kept. ``orientation``: what its rows and columns are, as
    :data:`~subnetviz.figures.matrix.AXIS_TITLES` names them ("out_in": an nn.Linear's [out, in]; "in_out":
    transformers' Conv1D, GPT-2's attention and MLP weights, stored [in, out]; "": not known)."""

    name: str
    criterion: str
    shape: tuple[int, int]
    n_changed: int
    rows_changed: np.ndarray  # int64 (rows,)
    cols_changed: np.ndarray  # int64 (cols,)
    changed: MatrixBlocks
    delta: MatrixBlocks
    orientation: str = "out_in"

    @property
    def row_share(self) -> np.ndarray:
        return self.rows_changed / max(1, self.shape[1])

    @property
    def col_share(self) -> np.ndarray:
        return self.cols_changed / max(1, self.shape[0])


def matrix_update(
    base: str,
    finetuned: str,
    name: str,
    criterion: str = "exact",
    eta: float = 1e-3,
    max_side: int = 128,
    band_entries: int = BAND_ENTRIES,
    precision: str | None = None,
) -> MatrixUpdate:
    """The update of tensor ``name`` (same name in both checkpoints), a band of rows at a time.

    criterion: ``"exact"`` (bit patterns differ), ``"relative"`` (|Δ| > η·max(|w|, |w'|)) or an absolute
    tolerance as text (``"1e-05"``: |Δ| > tol), counted as :class:`~subnetviz.analysis.sparsity.SparsityReport`
    counts them: both sides at ``precision`` ("bf16", "fp16", "fp32": the sidebar's comparison precision) where
    one is given, else at the finetune's stored dtype. ``max_side``: the images' cells a side.
    Memory: about 40 bytes per entry of a band of ``band_entries`` (an embedding of 10^9 entries included).
    """
    ck_b = open_checkpoint(base)
    ck_f = open_finetune(finetuned, ck_b)  # a LoRA/PEFT adapter: merged onto the base, as the analysis reads it
    if name not in ck_b.names:
        raise CheckpointError(f"{base}: no tensor {name!r} (it is in {finetuned}).")
    b, f = ck_b.get(name), ck_f.get(name)
    if b.shape != f.shape or b.ndim != 2:
        raise CheckpointError(
            f"{name}: expected two 2-D tensors of one shape; got {tuple(b.shape)} and {tuple(f.shape)}."
        )
    rows, cols = (int(x) for x in b.shape)
    changed = MatrixBlocks.empty((rows, cols), max_side, binary=True)
    delta = MatrixBlocks.empty((rows, cols), max_side)
    # FP8 / int8 codes read as the weights they stand for (their difference is no Δ), in bands of whole scale blocks
    form_b, form_f = checkpoint_forms(ck_b)[name], checkpoint_forms(ck_f)[name]
    quant_b, quant_f = (fm.kind in ("fp8", "int8") for fm in (form_b, form_f))
    lcm = math.lcm(row_block(ck_b, form_b), row_block(ck_f, form_f))
    step = max(1, band_entries // max(1, cols)) // changed.f * changed.f or changed.f  # whole block rows
    step = max(lcm, step // lcm * lcm) if lcm > 1 else step  # ... and whole scale blocks of FP8 codes
    per_row, per_col = np.zeros(rows, np.int64), np.zeros(cols, np.int64)
    for r0 in range(0, rows, step):
        xb = weight_rows(ck_b, name, form_b, b, r0, r0 + step)
        xf = weight_rows(ck_f, name, form_f, f, r0, r0 + step)
        if precision is not None:  # the chosen comparison precision, both sides (as compare_pair casts them)
            xb, xf = xb.to(PRECISIONS[precision]), xf.to(PRECISIONS[precision])
        elif quant_b != quant_f:  # a float side against dequantised codes: at the float side's dtype
            target = f.dtype if quant_b else b.dtype
            xb, xf = xb.to(target), xf.to(target)
        c, d = _band(xb, xf, criterion, eta)
        changed.add(r0, c)
        delta.add(r0, d)
        per_row[r0 : r0 + len(c)] = c.sum(axis=1)
        per_col += c.sum(axis=0)
    orientation = _orientation(ck_f.names_table, name, (rows, cols))
    return MatrixUpdate(
        name, criterion, (rows, cols), int(per_row.sum()), per_row, per_col, changed, delta, orientation
    )


def _orientation(table, name: str, shape: tuple[int, int]) -> str:
    """What the rows and columns of weight ``name`` are (see :class:`MatrixUpdate`): GPT-2's Conv1D weights are
    stored [in, out]. Where no config.json says gpt2 (the table was chosen by the names) GPT-BigCode's nn.Linear
    has the same names, so only a c_attn shaped (H, 3H), which no GPT-BigCode c_attn is, is known to be one;
    the others are left unnamed. An embedding's rows are tokens (positions), whatever the family. Every other
    weight is taken as an nn.Linear's [out, in]."""
    module = table.describe(name).module
    if module in ("embed", "pos_embed"):
        return "token_dim" if module == "embed" else "position_dim"
    if table.family != "gpt2" or not _CONV1D.search(name):
        return "out_in"
    if not table.guessed or (name.endswith("c_attn.weight") and shape[1] == 3 * shape[0]):
        return "in_out"
    return ""


def _band(b: torch.Tensor, f: torch.Tensor, criterion: str, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """(changed bool, Δ) of one band of rows, compared as the analysis compares (its
    :func:`~subnetviz.analysis.bits.changed_stats_numpy` and compiled pass): Δ, the tolerance and η·max(|w|,|w'|)
    in float32 for 16-bit types and in float64 for wider ones (float32 rounded 1e-7 up to 1.0000000117e-07 and
    an fp32 change of exactly that size read as unchanged), and η below half the dtype's relative step as "Δ ≠ 0"."""
    if b.dtype != f.dtype:
        b = b.to(f.dtype)  # compared at the finetune's stored dtype, as the analysis does
    ctype = torch.float32 if f.element_size() <= 2 else torch.float64
    x, y = b.to(ctype), f.to(ctype)
    d = y - x
    if criterion == "exact":
        nbytes = b.element_size()  # bit patterns, byte by byte: -0 vs +0 and NaN payloads count as changed
        changed = (
            b.contiguous().view(torch.uint8).reshape(*b.shape, nbytes)
            != f.contiguous().view(torch.uint8).reshape(*f.shape, nbytes)
        ).any(-1)
    elif criterion == "relative" and _rel_is_nonzero(f.dtype, eta):  # two different values differ by more
        changed = d != 0
    elif criterion == "relative":
        changed = d.abs() > torch.tensor(eta, dtype=ctype) * torch.maximum(x.abs(), y.abs())
    else:
        changed = d.abs() > torch.tensor(float(criterion), dtype=ctype)
    return changed.numpy(), d.numpy()
