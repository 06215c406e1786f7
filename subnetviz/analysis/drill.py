"""One matrix up close: its update Δ and which entries changed under a chosen criterion.

The page's *One matrix* view follows the sparsity criterion (exact, an absolute tolerance or
relative η), which the saved update mask (exact only) cannot. Reads the two tensors only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError


@dataclass(frozen=True)
class MatrixUpdate:
    """delta: (rows, cols) float32, W_ft − W_base; changed: (rows, cols) bool under ``criterion``."""

    name: str
    criterion: str
    delta: np.ndarray
    changed: np.ndarray

    @property
    def n_changed(self) -> int:
        return int(self.changed.sum())


def matrix_update(base: str, finetuned: str, name: str, criterion: str = "exact", eta: float = 1e-3) -> MatrixUpdate:
    """Δ and the changed mask of tensor ``name`` (same name in both checkpoints).

    criterion: ``"exact"`` (bit patterns differ, at the finetune's stored dtype), ``"relative"``
    (|Δ| > η·max(|w|, |w'|)) or an absolute tolerance as text (``"1e-05"``: |Δ| > tol), as
    :class:`~subnetviz.analysis.sparsity.SparsityReport` counts them.
    """
    ck_b, ck_f = open_checkpoint(base), open_checkpoint(finetuned)
    if name not in ck_b.names:
        raise CheckpointError(f"{base}: no tensor {name!r} (it is in {finetuned}).")
    b, f = ck_b.get(name), ck_f.get(name)
    if b.shape != f.shape or b.ndim != 2:
        raise CheckpointError(
            f"{name}: expected two 2-D tensors of one shape; got {tuple(b.shape)} and {tuple(f.shape)}."
        )
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
    return MatrixUpdate(name, criterion, d.numpy(), changed.numpy())
