"""Checkpoint series: update sparsity over a training run (Mukherjee et al. 2025, §6 and App. D).

Given ordered checkpoints θ_0 … θ_K, one streaming pass (each tensor's K+1 versions at a time)
gives, for every step i: sparsity against the first checkpoint, sparsity against the previous
one (consecutive-step sparsity, PULSE's S_1), and the share of parameters that were updated at
some step ≤ i but are back to (bitwise) their initial value at step i — "gradients cancelling
out". At the end it splits all parameters into never updated / updated but unchanged at the
end / the final subnetwork. Comparisons are bitwise on each tensor's stored dtype.

Each checkpoint is read once: a tensor's versions come in order, and each version is compared
against the first and the previous one in the same pass; with numba installed the counts and the
finite check (the first version's too) are one compiled loop over a window of versions
(:mod:`~subnetviz.analysis.series_jit`), otherwise NumPy blocks, one read ahead in a thread, and a
finite check per version.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis import series_jit
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
    tensors: Collection[str] | None = None,
    read_ahead: bool | None = None,
) -> SeriesResult:
    """Sparsity along ordered checkpoints; ``steps`` label them (default 0, 1, 2, ...).

    ``tensors``: only these aligned tensor keys (``AlignedTensor.key``), for a fan-out over workers
    whose integer counts add up to the whole (:func:`subnetviz.jobs.fanout.series_fanout`).
    ``read_ahead``: read (and map) the next versions in a background thread while comparing. Default:
    only without the compiled loop. The compiled loop maps the pages itself without the GIL; a
    second thread then hides the mapping only on an idle core and costs ~25 % more CPU (16 x 0.1B
    in the page cache: ~1.15 s CPU with it, ~0.9 s without, on a busy 2-core machine).
    """
    if len(checkpoints) < 2:
        raise ConfigError(f"a checkpoint series needs at least two checkpoints, got {len(checkpoints)}.")
    steps = list(steps) if steps is not None else list(range(len(checkpoints)))
    if len(steps) != len(checkpoints):
        raise ConfigError(f"{len(steps)} step labels for {len(checkpoints)} checkpoints.")
    cks = [c if isinstance(c, Checkpoint) else open_checkpoint(c) for c in checkpoints]
    al = align(cks)
    todo = [t for t in al.tensors if tensors is None or t.key in tensors]
    k = len(cks) - 1
    vs_first = [0] * k
    vs_prev = [0] * k
    ever_back = [0] * k
    numel = 0
    never = cancelled = final = 0
    jit = series_jit.available()
    ahead = (not jit) if read_ahead is None else read_ahead
    # Each checkpoint is read once, tensor by tensor, optionally one read ahead of the comparison
    # (bounded: the first and previous versions, the current one and the one being read).
    from subnetviz.analysis.update_pass import prefetched  # the one read-ahead; late: it imports a lot

    def load(group: tuple) -> list[torch.Tensor]:
        t, versions, in_loop = group
        out = []
        for i in versions:
            v = read_aligned(cks[i], t, i)
            if not in_loop:
                check_finite(v, where(t, i))
            elif ahead:  # checked in the compiled loop: map its pages here (one byte each), off the comparing thread
                series_jit.touch(v)
            out.append(v)
        return out

    def where(t, i: int) -> str:
        return f"{cks[i].spec} :: {t.names[i]}"

    fused = {}  # tensor key -> versions after the first checked inside the compiled loop
    for t in todo:
        dtypes = {ck.meta(n).dtype for ck, n in zip(cks, t.names, strict=True)}
        cast = len(dtypes) > 1 or next(iter(dtypes)) not in INT_VIEW  # compare in float32, as before
        fused[t.key] = (cast, jit and not cast and next(iter(dtypes)) in series_jit.IEEE)
    # read ahead by groups of up to a window's bytes of consecutive versions (one thread handoff per
    # group, not per version; at most the current and the next group mapped besides the first version)
    groups = []
    for t in todo:
        per = max(1, WINDOW_BYTES // max(1, math.prod(t.shape) * cks[0].meta(t.names[0]).dtype.itemsize))
        groups += [(t, range(g, min(g + per, len(cks))), fused[t.key][1]) for g in range(0, len(cks), per)]
    stream = itertools.chain.from_iterable(prefetched(groups, load) if ahead else map(load, groups))
    for t_i, t in enumerate(todo):
        if progress:
            progress(t_i, len(todo), t.key)
        cast, in_loop = fused[t.key]
        checked = (lambda j, v, t=t: check_finite(v, where(t, j))) if in_loop else None
        c = _tensor_series((next(stream) for _ in cks), k, cast, t.key, checked)
        numel += c.numel
        for i in range(k):
            vs_prev[i] += c.vs_prev[i]
            vs_first[i] += c.vs_first[i]
            ever_back[i] += c.ever_back[i]
        final += c.vs_first[-1]
        cancelled += c.ever - c.vs_first[-1]
        never += c.numel - c.ever
    if progress:
        progress(len(todo), len(todo), "done")
    rows = pd.DataFrame(
        {
            "step": steps[1:],
            "changed_vs_first": vs_first,
            "changed_vs_previous": vs_prev,
            "vs_first": [1 - c / numel for c in vs_first],
            "vs_previous": [1 - c / numel for c in vs_prev],
            "ever_updated": [c / numel for c in ever_back],
        }
    )
    split = pd.DataFrame(
        {
            "part": ["never updated", "updated, unchanged at the end", "final subnetwork"],
            "count": [never, cancelled, final],
        }
    )
    split["share"] = split["count"] / numel
    return SeriesResult(rows, split, numel)


# Entries per block of the NumPy blocks: each version's block is compared while the first and previous
# versions' blocks and the "ever updated" flags stay in L2 (~1 MB together), so only the new version
# streams in (the compiled loop has its own blocks: _series_numba.BLOCK_WORDS).
CHUNK_ELEMENTS = 1 << 17
# Versions of one tensor held at a time (a window; the safetensors reader's tensors are views of the
# memory-mapped file, so this is address space, not copies, unless a cast to float32 is needed).
WINDOW_BYTES = 1 << 30


@dataclass(frozen=True)
class _TensorCounts:
    """One tensor's series counts: per step i = 1..K changed vs the previous / the first version,
    ``ever_back`` (updated at some step <= i, equal to the first at i), and entries ever updated."""

    numel: int
    vs_prev: list[int]
    vs_first: list[int]
    ever_back: list[int]
    ever: int


def _tensor_series(
    versions: Iterator[torch.Tensor], k: int, cast: bool, key: str, check: Callable | None = None
) -> _TensorCounts:
    """Counts of one tensor's K+1 versions, consumed in order. Bitwise on the integer views;
    ``cast``: float32 first. ``check``: the compiled loop (:mod:`~subnetviz.analysis.series_jit`),
    which flags versions holding Inf/NaN patterns; ``check(i, version)`` is called for each flagged
    version i (>= 0) in order and raises. Without it, the NumPy blocks (:func:`_window_counts`).

    One comparison against the previous and one against the first per version; "updated before,
    back to the first now" is ``#ever - #(≠ first)`` because an entry that differs from the first
    version changed at some step (no third comparison). Versions are taken in windows of up to
    :data:`WINDOW_BYTES`, and inside a window the loop runs block by block over all its versions:
    the first and previous blocks and the flags are read from cache, so each version's bytes are
    read from memory once (version by version, the first and previous versions and the flags would
    stream in again for every step: ~4x the bytes).
    """
    v0 = next(versions)

    def same_type(v: torch.Tensor) -> torch.Tensor:
        if not cast and v.dtype != v0.dtype:
            raise ConfigError(f"{key}: stored as {v.dtype} in one checkpoint but {v0.dtype} in the header.")
        return v

    def bits(v: torch.Tensor) -> np.ndarray:
        v = same_type(v).to(torch.float32) if cast else same_type(v)
        return int_view(v.contiguous()).reshape(-1).numpy()

    if check is not None:
        return _jit_series(versions, v0, k, same_type, check)
    first = prev = bits(v0)
    ever = np.zeros(first.shape, dtype=bool)
    window = max(1, WINDOW_BYTES // max(first.nbytes, 1))
    vs_prev, vs_first, ever_back = [], [], []
    n_ever = 0
    while len(vs_prev) < k:
        batch = [bits(next(versions)) for _ in range(min(window, k - len(vs_prev)))]
        for n_prev, n_first, n_ever in _window_counts(first, prev, batch, ever):
            vs_prev.append(n_prev)
            vs_first.append(n_first)
            ever_back.append(n_ever - n_first)
        prev = batch[-1]
    return _TensorCounts(int(first.size), vs_prev, vs_first, ever_back, n_ever)


def _jit_series(
    versions: Iterator[torch.Tensor], v0: torch.Tensor, k: int, same_type: Callable, check: Callable
) -> _TensorCounts:
    """:func:`_tensor_series` through the compiled loop, on the tensors themselves (by address: no
    NumPy view per version). The first window also runs the first version (0 counts) for its
    finite check, which the loop fuses."""
    v0 = v0.contiguous()
    ever = series_jit.new_flags(v0.numel())
    special = series_jit.special_bits(v0.dtype)
    window = max(1, WINDOW_BYTES // max(v0.numel() * v0.element_size(), 1))
    vs_prev, vs_first, ever_back = [], [], []
    n_ever = 0
    prev, lead = v0, [v0]
    while len(vs_prev) < k:
        tensors = lead + [same_type(next(versions)).contiguous() for _ in range(min(window, k - len(vs_prev)))]
        counts, flagged = series_jit.window_counts(v0, prev, tensors, ever, special)
        for j in flagged:
            check(len(vs_prev) + j + 1 - len(lead), tensors[j])
        for n_prev, n_first, n_ever in counts[len(lead) :]:
            vs_prev.append(n_prev)
            vs_first.append(n_first)
            ever_back.append(n_ever - n_first)
        prev, lead = tensors[-1], []
    return _TensorCounts(v0.numel(), vs_prev, vs_first, ever_back, n_ever)


def _window_counts(first: np.ndarray, prev: np.ndarray, batch: list[np.ndarray], ever: np.ndarray) -> list:
    """``[(#≠ previous, #≠ first, #ever updated)]`` for each version of ``batch`` (after ``prev``),
    block by block; ``ever`` (the flags so far) is updated in place."""
    step = CHUNK_ELEMENTS
    size = first.size
    step_ne, from_first = np.empty(min(step, size), bool), np.empty(min(step, size), bool)
    counts = np.zeros((len(batch), 3), dtype=np.int64)
    for s in range(0, size, step):
        f, p, e = first[s : s + step], prev[s : s + step], ever[s : s + step]
        sn, ff = step_ne[: f.size], from_first[: f.size]
        for j, cur in enumerate(batch):
            c = cur[s : s + step]
            np.not_equal(c, p, out=sn)
            np.not_equal(c, f, out=ff)
            np.logical_or(e, sn, out=e)
            counts[j, 0] += np.count_nonzero(sn)
            counts[j, 1] += np.count_nonzero(ff)
            counts[j, 2] += np.count_nonzero(e)
            p = c
    return counts.tolist()
