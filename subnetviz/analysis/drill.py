"""One matrix up close: its update Δ and which entries changed under a chosen criterion.

The page's *One matrix* view follows the sparsity criterion (exact, an absolute tolerance or
relative η), which the saved update mask (exact only) cannot. Reads the two tensors only, a band of rows at
a time, and keeps only what the views draw (block sums, row and column counts).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np
import torch

from subnetviz.analysis.quant import checkpoint_forms, row_block, stored_codes, weight_rows
from subnetviz.analysis.sparsity import PRECISIONS, _rel_is_nonzero
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.adapters import _CONV1D, open_finetune
from subnetviz.checkpoints.align import AlignedTensor, Alignment, align
from subnetviz.checkpoints.naming import strip_prefix
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
    transformers' Conv1D, GPT-2's attention and MLP weights, stored [in, out], and GPTQ's ``qweight`` unpacked into its
    codes; "": not known)."""

    name: str
    criterion: str
    shape: tuple[int, int]
    n_changed: int
    rows_changed: np.ndarray  # int64 (rows,)
    cols_changed: np.ndarray  # int64 (cols,)
    changed: MatrixBlocks
    delta: MatrixBlocks
    orientation: str = "out_in"
    names: tuple[str, str] = ("", "")  # its name in the base and in the finetune (they differ: see matrix_update)
    rows_compared: int | None = None  # set when the vocabulary was resized: the shared rows only
    note: str = ""  # the alignment's line on a resized vocabulary, else ""

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
    """The update of the tensor pair ``name`` (its alignment key, as the tensors table's ``key`` column and the
    picker name it, or its name in either checkpoint), a band of rows at a time.

    The pair is the one the update analysis compares (:func:`~subnetviz.checkpoints.align`): each side read under
    its own name (a finetune saved without the ``model.`` prefix, a head one side ties to its input embedding), and
    only the shared rows of a resized vocabulary.

    criterion: ``"exact"`` (bit patterns differ), ``"relative"`` (|Δ| > η·max(|w|, |w'|)) or an absolute
    tolerance as text (``"1e-05"``: |Δ| > tol), counted as :class:`~subnetviz.analysis.sparsity.SparsityReport`
    counts them: both sides at ``precision`` ("bf16", "fp16", "fp32": the sidebar's comparison precision) where
    one is given, else at the finetune's stored dtype. ``max_side``: the images' cells a side.
    Memory: about 40 bytes per entry of a band of ``band_entries`` (an embedding of 10^9 entries included).
    """
    ck_b = open_checkpoint(base)
    ck_f = open_finetune(finetuned, ck_b)  # a LoRA/PEFT adapter: merged onto the base, as the analysis reads it
    al = align([ck_b, ck_f])
    at = aligned_pair(al, name, base, finetuned)
    name_b, name_f = at.names
    b, f = ck_b.get(name_b), ck_f.get(name_f)
    if len(at.shape) != 2:
        raise CheckpointError(f"{at.key}: expected a 2-D tensor; got shape {tuple(at.shape)}.")
    words, cols = (int(x) for x in at.shape)  # the shared rows only, where the vocabulary was resized
    form_b, form_f = checkpoint_forms(ck_b)[name_b], checkpoint_forms(ck_f)[name_f]
    # GPTQ's packed words as their codes, k to a word, as the update analysis compares them (stored_codes): the
    # caption's count was of words under the codes' total and shape
    k = b.dtype.itemsize * 8 // form_b.unpack if form_b.kind == "codes" and form_b.unpack else 1
    rows = words * k
    changed = MatrixBlocks.empty((rows, cols), max_side, binary=True)
    delta = MatrixBlocks.empty((rows, cols), max_side)
    # FP8 / int8 codes read as the weights they stand for (their difference is no Δ), in bands of whole scale blocks
    quant_b, quant_f = (fm.kind in ("fp8", "int8") for fm in (form_b, form_f))
    lcm = math.lcm(row_block(ck_b, form_b), row_block(ck_f, form_f), k)
    step = max(1, band_entries // max(1, cols)) // changed.f * changed.f or changed.f  # whole block rows
    step = max(lcm, step // lcm * lcm) if lcm > 1 else step  # ... and whole FP8 scale blocks, whole words
    per_row, per_col = np.zeros(rows, np.int64), np.zeros(cols, np.int64)
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        xb = stored_codes(weight_rows(ck_b, name_b, form_b, b, r0 // k, -(-r1 // k)), form_b)
        xf = stored_codes(weight_rows(ck_f, name_f, form_f, f, r0 // k, -(-r1 // k)), form_f)
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
    # GPTQ's qweight unpacked is (in, out): code i of word r is input row k·r + i (an nn.Linear's [out, in] read as
    # its transpose), not the model's weight as AWQ's reader lists it
    orientation = (
        "in_out" if form_b.kind == "codes" and form_b.unpack else _orientation(ck_f.names_table, at.name, (rows, cols))
    )
    # the analysis' own line on a resized vocabulary (Alignment.report of this pair alone), else nothing
    note = " ".join(Alignment(al.checkpoints, [at]).report())
    return MatrixUpdate(
        at.key,
        criterion,
        (rows, cols),
        int(per_row.sum()),
        per_row,
        per_col,
        changed,
        delta,
        orientation,
        (name_b, name_f),
        at.rows,
        note,
    )


def aligned_pair(al: Alignment, name: str, base: str, finetuned: str) -> AlignedTensor:
    """The pair of alignment ``al`` that ``name`` names: its key, or its name in either checkpoint (a full name
    strips to its key). One line naming the checkpoints and close keys where none does."""
    by_key = {t.key: t for t in al.tensors}
    found = by_key.get(name) or by_key.get(strip_prefix(name))
    found = found or next((t for t in al.tensors if name in t.names), None)
    if found is not None:
        return found
    close = difflib.get_close_matches(strip_prefix(name), list(by_key), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise CheckpointError(f"no tensor {name!r} is in both {base} and {finetuned}.{hint}")


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
    delta = d.numpy()
    if ctype == torch.float32 and not np.isfinite(delta).all():
        # the image's Δ of finite 16-bit weights past float32's range (3e38 to -3e38) in float64, as the analysis'
        # largest |Δ| takes it: it drew -inf (the comparison above is the analysis' own, in float32)
        wide = (y.double() - x.double()).numpy()
        delta = np.where(np.isinf(delta) & np.isfinite(wide), wide, delta)
    return changed.numpy(), delta
