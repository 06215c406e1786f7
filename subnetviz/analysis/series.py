"""Checkpoint series: update sparsity over a training run (Mukherjee et al. 2025, §6 and App. D).

Given ordered checkpoints θ_0 … θ_K, one streaming pass (each tensor's K+1 versions at a time)
gives, for every step i: sparsity against the first checkpoint, sparsity against the previous
one (consecutive-step sparsity, PULSE's S_1), and the share of parameters that were updated at
some step ≤ i but are back to (bitwise) their initial value at step i — "gradients cancelling
out". At the end it splits all parameters into never updated / updated but unchanged at the
end / the final subnetwork. Comparisons are bitwise on each tensor's stored dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from subnetviz.analysis.bits import INT_VIEW, check_finite, int_view
from subnetviz.checkpoints import Checkpoint, align, open_checkpoint, read_aligned
from subnetviz.errors import ConfigError


@dataclass(frozen=True)
class SeriesResult:
    """``steps``: one row per checkpoint after the first (step, vs_first, vs_previous, ever_updated,
    changed_vs_first, changed_vs_previous); ``split``: never updated / cancelled out / subnetwork."""

    steps: pd.DataFrame
    split: pd.DataFrame
    numel: int

    def to_frame(self) -> pd.DataFrame:
        return self.steps


def checkpoint_series(
    checkpoints: Sequence[str | Checkpoint],
    steps: Sequence[int] | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
) -> SeriesResult:
    """Sparsity along ordered checkpoints; ``steps`` label them (default 0, 1, 2, ...)."""
    if len(checkpoints) < 2:
        raise ConfigError(f"a checkpoint series needs at least two checkpoints, got {len(checkpoints)}.")
    steps = list(steps) if steps is not None else list(range(len(checkpoints)))
    if len(steps) != len(checkpoints):
        raise ConfigError(f"{len(steps)} step labels for {len(checkpoints)} checkpoints.")
    cks = [c if isinstance(c, Checkpoint) else open_checkpoint(c) for c in checkpoints]
    al = align(cks)
    k = len(cks) - 1
    vs_first = [0] * k
    vs_prev = [0] * k
    ever_back = [0] * k
    numel = 0
    never = cancelled = final = 0
    for t_i, t in enumerate(al.tensors):
        if progress:
            progress(t_i, len(al.tensors), t.key)
        versions = [read_aligned(ck, t, i) for i, ck in enumerate(cks)]
        for ck, v, n in zip(cks, versions, t.names, strict=True):
            check_finite(v, f"{ck.spec} :: {n}")
        dtypes = {v.dtype for v in versions}
        if len(dtypes) > 1 or versions[0].dtype not in INT_VIEW:
            versions = [v.to(torch.float32) for v in versions]
        bits = [int_view(v) for v in versions]
        numel += versions[0].numel()
        ever = torch.zeros(versions[0].shape, dtype=torch.bool)
        for i in range(1, k + 1):
            step_ne = bits[i] != bits[i - 1]
            from_first = bits[i] != bits[0]
            ever |= step_ne
            vs_prev[i - 1] += int(step_ne.sum())
            vs_first[i - 1] += int(from_first.sum())
            ever_back[i - 1] += int((ever & ~from_first).sum())
        final_mask = bits[k] != bits[0]
        final += int(final_mask.sum())
        cancelled += int((ever & ~final_mask).sum())
        never += int((~ever).sum())
    if progress:
        progress(len(al.tensors), len(al.tensors), "done")
    rows = pd.DataFrame({
        "step": steps[1:], "changed_vs_first": vs_first, "changed_vs_previous": vs_prev,
        "vs_first": [1 - c / numel for c in vs_first], "vs_previous": [1 - c / numel for c in vs_prev],
        "ever_updated": [c / numel for c in ever_back],
    })  # fmt: skip
    split = pd.DataFrame({
        "part": ["never updated", "updated, unchanged at the end", "final subnetwork"],
        "count": [never, cancelled, final],
    })  # fmt: skip
    split["share"] = split["count"] / numel
    return SeriesResult(rows, split, numel)
