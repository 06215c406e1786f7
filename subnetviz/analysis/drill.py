"""One matrix up close: its update Δ and which entries changed under a chosen criterion.

The page's *One matrix* view follows the sparsity criterion (exact, an absolute tolerance or
relative η), which the saved update mask (exact only) cannot. Reads the two tensors only, a band of rows at
a time, and keeps only what the views draw (block sums, row and column counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError
from subnetviz.figures.matrix import MatrixBlocks

BAND_ENTRIES = 1 << 22
"""Entries compared at a time (a band of whole rows): memory stays a few dozen MB whatever the matrix."""


@dataclass(frozen=True)
class MatrixUpdate:
    """One matrix's update under ``criterion``, reduced to what its views draw: ``changed`` and ``delta`` (Δ =
    W_ft − W_base in float32) as sums over the blocks of :class:`~subnetviz.figures.matrix.MatrixBlocks`, the
    changed count of each row and column, and the total. Nothing of the matrix's size is kept."""

    name: str
    criterion: str
    shape: tuple[int, int]
    n_changed: int
    rows_changed: np.ndarray  # int64 (rows,)
    cols_changed: np.ndarray  # int64 (cols,)
    changed: MatrixBlocks
    delta: MatrixBlocks

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
) -> MatrixUpdate:
    """The update of tensor ``name`` (same name in both checkpoints), a band of rows at a time.

    criterion: ``"exact"`` (bit patterns differ, at the finetune's stored dtype), ``"relative"``
    (|Δ| > η·max(|w|, |w'|)) or an absolute tolerance as text (``"1e-05"``: |Δ| > tol), as
    :class:`~subnetviz.analysis.sparsity.SparsityReport` counts them. ``max_side``: the images' cells a side.
    Memory: about 20 bytes per entry of a band of ``band_entries`` (an embedding of 10^9 entries included).
    """
    ck_b, ck_f = open_checkpoint(base), open_checkpoint(finetuned)
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
    read_b, read_f, lcm = _readers(ck_b, name), _readers(ck_f, name), 1
    for blk in (read_b.block, read_f.block):
        lcm = lcm * blk // np.gcd(lcm, blk)
    step = max(1, band_entries // max(1, cols)) // changed.f * changed.f or changed.f  # whole block rows
    step = max(lcm, step // lcm * lcm) if lcm > 1 else step  # ... and whole scale blocks of FP8 codes
    per_row, per_col = np.zeros(rows, np.int64), np.zeros(cols, np.int64)
    for r0 in range(0, rows, step):
        xb, xf = read_b(b, r0, step), read_f(f, r0, step)
        if read_b.quantized != read_f.quantized:  # a float side against dequantised codes: at the float side's dtype
            target = f.dtype if read_b.quantized else b.dtype
            xb, xf = xb.to(target), xf.to(target)
        c, d = _band(xb, xf, criterion, eta)
        changed.add(r0, c)
        delta.add(r0, d)
        per_row[r0 : r0 + len(c)] = c.sum(axis=1)
        per_col += c.sum(axis=0)
    return MatrixUpdate(name, criterion, (rows, cols), int(per_row.sum()), per_row, per_col, changed, delta)


class _readers:
    """Rows ``r0 : r0 + n`` of a checkpoint's tensor as the update analysis reads it: as stored, or FP8 / int8
    codes dequantised with their scales (float32; the codes alone are no weights: the page counted changed codes
    and drew their difference as Δ, where the table counts the weights the model computes with)."""

    def __init__(self, ck, name: str):
        from subnetviz.analysis.quant import block_size, scale_values, tensor_forms

        self.form = tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config)[name]
        self.quantized = self.form.kind in ("fp8", "int8")
        self.block = 1
        if self.quantized:
            self.size = block_size(ck.config) if self.form.kind == "fp8" else (1, 1)
            self.scale = scale_values(ck, self.form.scale, "cpu")
            self.block = self.size[0]
            self.name = name

    def __call__(self, x: torch.Tensor, r0: int, n: int) -> torch.Tensor:
        part = x[r0 : r0 + n]
        if not self.quantized:
            return part
        from subnetviz.analysis.quant import check_scale, dequantize

        how = check_scale(self.name, tuple(x.shape), self.form.scale, tuple(self.scale.shape), self.size)
        return dequantize(part, self.scale, how, self.size, r0, self.form.divisor)


def _band(b: torch.Tensor, f: torch.Tensor, criterion: str, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """(changed bool, Δ float32) of one band of rows, compared as the analysis compares."""
    if b.dtype != f.dtype:
        b = b.to(f.dtype)  # compared at the finetune's stored dtype, as the analysis does
    x, y = b.float(), f.float()
    d = y - x
    if criterion == "exact":
        nbytes = b.element_size()  # bit patterns, byte by byte: -0 vs +0 and NaN payloads count as changed
        changed = (
            b.contiguous().view(torch.uint8).reshape(*b.shape, nbytes)
            != f.contiguous().view(torch.uint8).reshape(*f.shape, nbytes)
        ).any(-1)
    elif criterion == "relative":
        changed = d.abs() > eta * torch.maximum(x.abs(), y.abs())
    else:
        changed = d.abs() > float(criterion)
    return changed.numpy(), d.numpy()
