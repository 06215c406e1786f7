"""Checkpoint series: update sparsity over a training run (Mukherjee et al. 2025, §6 and App. D).

Given ordered checkpoints θ_0 … θ_K, one streaming pass (each tensor's K+1 versions at a time)
gives, for every step i: sparsity against the first checkpoint, sparsity against the previous
one (consecutive-step sparsity, PULSE's S_1), and the share of parameters that were updated at
some step ≤ i but are back to (bitwise) their initial value at step i — "gradients cancelling
out". At the end it splits all parameters into never updated / updated but unchanged at the
end / the final subnetwork. Comparisons are bitwise on each tensor's stored dtype; a tensor stored in
different dtypes along the series (a float32 base, bf16 checkpoints) is compared at each checkpoint's own,
the first and the previous version rounded to it, as the update analysis compares a finetune with its base.
Every checkpoint after the first is opened as the update analysis opens a finetune (a PEFT adapter folder
is merged onto the first); tensors not in every checkpoint and a resized vocabulary's extra rows are left
out and said in :attr:`SeriesResult.notes` (the alignment's report).

Stored forms are read as the update analysis reads them (:func:`~subnetviz.analysis.quant.tensor_forms`):
buffers (``position_ids``, GPT-2's float causal mask ``attn.bias``, ...) and quantization scales are not
parameters and are not counted; FP8 and int8 weights are compared as the model computes with them,
dequantised with their scales (float32), so a changed block scale changes its block; other integer codes
(GPTQ, AWQ, int4) are compared as codes, on their integer bits. :attr:`SeriesResult.notes` says what was
read how.

Each checkpoint is read once: a tensor's versions come in order, and each version is compared
against the first and the previous one in the same pass. With numba installed the counts and the
finite check (the first version's too) are one compiled loop (:mod:`~subnetviz.analysis.series_jit`);
tensors stored in safetensors files are read there by address from one memory map per file, runs of
consecutive tensors in one call (no tensor object, no Python step per version: a 0.1B model is
~360 tensors x 16 versions), others tensor by tensor over windows of versions. Without numba:
NumPy blocks, one read ahead in a thread, and a finite check per version.

:func:`training_run` says whether checkpoints are one training run's and at which steps (from the HF Trainer's
``trainer_state.json``, this app's ``step.json`` or ``checkpoint-<N>`` folder names): the Series page orders the
sidebar's finetunes by them and reads them as a run (cancelled updates), not as independent finetunes.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis import series_jit
from subnetviz.analysis.bits import INT_VIEW, check_finite, int_view
from subnetviz.checkpoints import Checkpoint, align, open_checkpoint, read_aligned
from subnetviz.checkpoints.adapters import open_finetune
from subnetviz.checkpoints.sources import local_folder, reads_as_hub_id
from subnetviz.errors import CheckpointError, ConfigError, NonFiniteError, SubnetvizError


@dataclass(frozen=True)
class SeriesResult:
    """``steps``: one row per checkpoint after the first (step, vs_first, vs_previous, back_to_start: the share
    of parameters updated at some step and equal to their start again at this one, changed_vs_first,
    changed_vs_previous); ``split``: never updated / cancelled out / subnetwork. ``first_step``: the first
    checkpoint's own step label, where the chart's start point goes (``series_lines(..., start=first_step)``)."""

    steps: pd.DataFrame
    split: pd.DataFrame
    numel: int
    # aligned tensor keys not read as plain float weights of one dtype, by how: buffer, scale (not counted),
    # fp8 / int8 (dequantised), codes (integer codes compared as stored), "mixed:<dtypes>" (float weights stored
    # in different dtypes along the series, each checkpoint compared at its own: see _mixed_note)
    forms: dict[str, list[str]] = field(default_factory=dict)
    # how the checkpoints were paired and read, the same for every group of a fan-out: the alignment's report
    # (tensors not in every checkpoint, left out; resized vocabularies, their shared rows compared; tied heads)
    # and the checkpoints' own notes (a merged adapter, packed experts)
    reading: list[str] = field(default_factory=list)
    first_step: int = 0
    # changed entries against the first checkpoint per module kind at each step (step, module, changed, numel), for
    # the per-module chart without reading the checkpoints again; None where a fused tensor needs the update
    # analysis's split (:func:`module_counts`), or in a result of an older version
    modules: pd.DataFrame | None = None

    def to_frame(self) -> pd.DataFrame:
        return self.steps

    @property
    def notes(self) -> list[str]:
        """What was left out or read other than as stored float weights of one dtype: the alignment's report and
        the checkpoints' notes (:attr:`reading`), then one line per way a tensor was read (:attr:`forms`)."""
        out = list(self.reading)
        for kind, keys in self.forms.items():
            if not keys:
                continue
            n, ex = len(keys), ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
            if kind.startswith("mixed:"):
                out.append(_mixed_note(kind.removeprefix("mixed:"), n, ex))
                continue
            out.append(f"{n} {_scale_note(self.forms) if kind == 'scale' else _FORM_NOTES[kind]} ({ex}).")
        return out


_FORM_NOTES = {
    "buffer": "buffer tensor(s), not parameters, are not counted",
    "scale": "quantization scale tensor(s) are not counted; their weights are compared with the scales applied",
    "fp8": "FP8 weight tensor(s) compared dequantised (code × scale, float32): a changed block scale changes its block",
    "int8": "integer-code weight tensor(s) compared dequantised ((code − zero point) × scale, float32)",
    "codes": "tensor(s) of packed integer codes (GPTQ, AWQ, int4, ...) compared as stored codes, not dequantised",
}


def _scale_note(forms: dict[str, list[str]]) -> str:
    """The scales' note, by the forms of the weights beside them, as the update analysis says it: integer codes
    (GPTQ, AWQ's GEMV, int4) are compared as codes only, so their scales and zero points count for nothing (the
    fixed "compared with the scales applied" said so of a GPTQ series whose every scale had changed); FP8 and int8
    codes are dequantised with their scales."""
    codes, applied = bool(forms.get("codes")), bool(forms.get("fp8") or forms.get("int8"))
    if not codes:
        return _FORM_NOTES["scale"]
    said = "quantization scale and zero-point tensor(s) are not counted"
    only = (
        "the weights stored as integer codes (GPTQ, AWQ, int4, ...) are compared as their codes only, so a weight "
        "whose scale or zero point changed while its code did not is not counted as changed"
    )
    if applied:
        return f"{said}; FP8 / int8 weights are compared with their scales applied, and {only}"
    return f"{said}, nor compared: {only}"


def _mixed_note(dtypes: str, n: int, ex: str) -> str:
    """The note of ``n`` tensors (examples ``ex``) stored in ``dtypes`` along the series (:func:`_dtype_runs`)."""
    return (
        f"Mixed precision: {n} tensor(s) stored as {dtypes} along the series ({ex}): each checkpoint compared at "
        "its own stored dtype, the first and the previous checkpoint cast to it with round-to-nearest-even as "
        "saving would (as the update analysis compares a finetune with its base)."
    )


def _dtype_runs(dtypes: Sequence[torch.dtype]) -> str:
    """The stored dtypes of one tensor along the series, runs of one dtype counted: ``float32 → bfloat16 ×15``."""
    runs = [(str(d).removeprefix("torch."), len(list(g))) for d, g in itertools.groupby(dtypes)]
    return " → ".join(d + (f" ×{n}" if n > 1 else "") for d, n in runs)


def checkpoint_series(
    checkpoints: Sequence[str | Checkpoint],
    steps: Sequence[int] | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    tensors: Collection[str] | None = None,
    read_ahead: bool | None = None,
) -> SeriesResult:
    """Sparsity along ordered checkpoints; ``steps`` label them (default 0, 1, 2, ...) and must increase strictly:
    "vs previous" is each checkpoint against the one before it in ``checkpoints``, which a chart drawn by step
    shows as the point before it.

    ``tensors``: only these aligned tensor keys (``AlignedTensor.key``), for a fan-out over workers
    whose integer counts add up to the whole (:func:`subnetviz.jobs.fanout.series_fanout`).
    ``read_ahead``: read (and map) the next versions in a background thread while comparing, tensor
    by tensor. Default: only without the compiled loop. The compiled loop maps the pages itself
    without the GIL; a second thread then hides the mapping only on an idle core and costs ~25 %
    more CPU (16 x 0.1B in the page cache: ~1.15 s CPU with it, ~0.9 s without, on a busy 2-core
    machine), and it forgoes the reads by address (16 x 0.1B: ~0.45 s CPU).
    """
    if len(checkpoints) < 2:
        raise ConfigError(f"a checkpoint series needs at least two checkpoints, got {len(checkpoints)}.")
    steps = list(steps) if steps is not None else list(range(len(checkpoints)))
    if len(steps) != len(checkpoints):
        raise ConfigError(f"{len(steps)} step labels for {len(checkpoints)} checkpoints.")
    bad = next((i for i in range(1, len(steps)) if not steps[i] > steps[i - 1]), None)
    if bad is not None:
        raise ConfigError(
            "step labels must increase strictly along the checkpoints (one per checkpoint, in their order); "
            f"got {steps[bad - 1]} then {steps[bad]} at checkpoints {bad} and {bad + 1} of {len(steps)}."
        )
    first = checkpoints[0] if isinstance(checkpoints[0], Checkpoint) else open_checkpoint(checkpoints[0])
    # every later version as the update analysis opens a finetune: a PEFT adapter folder is merged onto the first
    cks = [first, *(open_finetune(c, first) for c in checkpoints[1:])]
    al = align(cks)
    todo = [t for t in al.tensors if tensors is None or t.key in tensors]
    kinds, per_forms = _kinds(cks, todo)
    forms = {kind: [t.key for t in todo if kinds[t.key] == kind] for kind in _FORM_NOTES}
    todo = [t for t in todo if kinds[t.key] not in ("buffer", "scale")]
    k = len(cks) - 1
    jit = series_jit.available()
    ahead = (not jit) if read_ahead is None else read_ahead

    def where(t, i: int) -> str:
        return f"{cks[i].spec} :: {t.names[i]}"

    way = {t.key: _way(cks, t, jit, ahead) if kinds[t.key] == "float" else _NOT_FLOAT for t in todo}
    for t in todo:  # float weights stored in different dtypes: compared at each checkpoint's own (_mixed_series)
        if way[t.key][3] is not None:
            forms.setdefault(f"mixed:{_dtype_runs(way[t.key][3])}", []).append(t.key)
    stream = _versions(cks, [t for t in todo if way[t.key][2] is None and kinds[t.key] == "float"], way, ahead, where)
    totals = _Totals(k)
    maps = series_jit.FileMaps()
    try:
        for run in _runs(todo, way):
            for t in run:
                if progress:
                    progress(totals.done, len(todo), t.key)
                totals.done += 1
            cast, in_loop, dtype, dtypes = way[run[0].key]
            if dtype is not None:  # by address, a run of tensors in one compiled call
                totals.add_run(*_mapped_counts(cks, run, dtype, maps, where), [t.key for t in run])
                continue
            t = run[0]
            if kinds[t.key] != "float":  # dequantised or integer codes, version by version
                totals.add(_stored_series(cks, t, kinds[t.key], per_forms, where, k), t.key)
                continue
            checked = (lambda j, v, t=t: check_finite(v, where(t, j))) if in_loop else None
            named = functools.partial(where, t)
            totals.add(_tensor_series((next(stream) for _ in cks), k, cast, t.key, checked, dtypes, named), t.key)
    finally:
        maps.close()
    vs_first, vs_prev, ever_back = totals.vs_first.tolist(), totals.vs_prev.tolist(), totals.ever_back.tolist()
    numel, never, cancelled, final = totals.numel, totals.never, totals.cancelled, totals.final
    if numel == 0 and tensors is None:  # (a group of a fan-out may hold only buffers: its counts are zeros)
        raise ConfigError(f"{cks[0].spec}: no parameters to compare along the series (only buffers or scales).")
    numel_or_1 = numel or 1  # a fan-out group of buffers only: shares 0, and its counts add nothing
    if progress:
        progress(len(todo), len(todo), "done")
    rows = pd.DataFrame(
        {
            "step": steps[1:],
            "changed_vs_first": vs_first,
            "changed_vs_previous": vs_prev,
            "vs_first": [1 - c / numel_or_1 for c in vs_first],
            "vs_previous": [1 - c / numel_or_1 for c in vs_prev],
            "back_to_start": [c / numel_or_1 for c in ever_back],
        }
    )
    split = pd.DataFrame(
        {
            "part": ["never updated", "updated, unchanged at the end", "final subnetwork"],
            "count": [never, cancelled, final],
        }
    )
    split["share"] = split["count"] / numel_or_1
    forms = {kind: keys for kind, keys in forms.items() if keys}
    modules = module_counts(cks[0].names_table, todo, totals.per_key, steps[1:])
    return SeriesResult(rows, split, numel, forms, _reading(al), first_step=steps[0], modules=modules)


def module_counts(table, todo: Sequence, per_key: dict[str, tuple[int, list[int]]], steps: Sequence[int]):
    """:attr:`SeriesResult.modules` (step, module, changed, numel) from each tensor's counts against the first
    checkpoint, grouped by the module kind the first checkpoint's naming table gives it. None where a tensor is one
    the update analysis splits into parts by its rows or columns (a fused QKV or gate/up, a gated query): those
    counts are not the series pass's, and the per-module chart is left to the update analysis."""
    by_module: dict[str, list] = {}
    for t in todo:
        info = table.describe(t.name)
        if table.is_fused(info):
            return None
        numel, vs_first = per_key[t.key]
        acc = by_module.setdefault(info.module, [0, np.zeros(len(steps), np.int64)])
        acc[0] += numel
        acc[1] += np.asarray(vs_first, np.int64)
    return pd.DataFrame(
        [
            {"step": s, "module": m, "changed": int(changed[i]), "numel": numel}
            for m, (numel, changed) in by_module.items()
            for i, s in enumerate(steps)
        ],
        columns=["step", "module", "changed", "numel"],
    )


def _reading(al) -> list[str]:
    """:attr:`SeriesResult.reading`: the alignment's report (headed by what leaving out a tensor not in every
    checkpoint means for the shares) and each checkpoint's own notes, named by the checkpoint."""
    lines = al.report()
    if any(al.only_in.values()):
        lines.insert(
            0,
            "Not in every checkpoint, left out of the series: the counts and shares are over the tensors every "
            "checkpoint holds.",
        )
    for ck in al.checkpoints:
        for note in getattr(ck, "notes", []):
            line = f"{ck.spec}: {note}"
            if line not in lines:
                lines.append(line)
    return lines


_NOT_FLOAT = (False, False, None, None)  # a stored form other than float weights: read by _stored_versions


def _kinds(cks: list[Checkpoint], todo: list) -> tuple[dict[str, str], list[dict]]:
    """(aligned key -> how its versions are read, each checkpoint's stored forms): how is ``float``, ``buffer`` /
    ``scale`` (not counted), ``fp8`` / ``int8`` (dequantised), ``codes``. A tensor stored as integer codes in one
    checkpoint and in another form elsewhere cannot be compared: a one-line error naming it."""
    from subnetviz.analysis.quant import checkpoint_forms  # late: the float-only series need none of it

    per = [checkpoint_forms(ck) for ck in cks]
    out = {}
    for t in todo:
        got = [per[j][n].kind for j, n in enumerate(t.names)]
        if any(g in ("buffer", "scale") for g in got):
            out[t.key] = "buffer" if "buffer" in got else "scale"
        elif len(set(got)) == 1:
            out[t.key] = got[0]
        elif "codes" in got:
            labels = sorted({per[j][n].label for j, n in enumerate(t.names)})
            raise CheckpointError(
                f"{t.key}: stored as {' and '.join(labels)} along the series; integer codes without an "
                "effective form cannot be compared with another form."
            )
        else:  # float in some checkpoints, FP8 / int8 in others: all read as float32 weights
            out[t.key] = next(g for g in got if g != "float")
    return out, per


# Entries of one band of a dequantised matrix (float32: 16 MB): a 7168 x 18432 FP8 expert, dequantised whole,
# held first, previous and current versions at 528 MB each (26 times the codes read).
BAND_ENTRIES = 1 << 22


def _stored_series(cks: list[Checkpoint], t, kind: str, forms: list[dict], where: Callable, k: int) -> _TensorCounts:
    """:func:`_tensor_series` of a tensor read through its stored forms, a matrix in bands of whole scale-block
    rows (each band's versions dequantised on their own: the counts add up, entry by entry)."""
    from subnetviz.analysis.quant import row_block

    if kind == "codes" or len(t.shape) != 2:
        return _tensor_series(_stored_versions(cks, t, kind, forms, where), k, False, t.key)
    rows, cols = t.shape
    b0 = math.lcm(*(row_block(ck, forms[j][t.names[j]]) for j, ck in enumerate(cks)))
    band = max(b0, BAND_ENTRIES // max(cols, 1) // b0 * b0)
    parts = [
        _tensor_series(_stored_versions(cks, t, kind, forms, where, (r0, min(rows, r0 + band))), k, False, t.key)
        for r0 in range(0, rows, band)
    ]
    return _TensorCounts(
        sum(c.numel for c in parts),
        [sum(c.vs_prev[i] for c in parts) for i in range(k)],
        [sum(c.vs_first[i] for c in parts) for i in range(k)],
        [sum(c.ever_back[i] for c in parts) for i in range(k)],
        sum(c.ever for c in parts),
    )


def _stored_versions(
    cks: list[Checkpoint], t, kind: str, forms: list[dict], where: Callable, rows: tuple[int, int] | None = None
) -> Iterator[torch.Tensor]:
    """Tensor ``t``'s versions (its rows ``rows[0]:rows[1]`` when given), one at a time: FP8 / int8 weights
    dequantised with their scales, integer codes as stored (the same signed width, compared bitwise). Weights are
    compared in float32 where every version is quantized, and at the first float version's dtype where one is not,
    as the update analysis compares a float side with a quantized one (in float32 a bf16 model against its W4A16
    copy counted 72,946 changed entries, the analysis and compressed-tensors' own decompression 72,248)."""
    from subnetviz.analysis.quant import stored_codes, weight_rows

    r0, r1 = rows if rows is not None else (0, None)
    floats = [ck.meta(t.names[j]).dtype for j, ck in enumerate(cks) if forms[j][t.names[j]].kind == "float"]
    target = floats[0] if floats and kind != "codes" else torch.float32
    for j, ck in enumerate(cks):
        v = read_aligned(ck, t, j)
        if kind == "codes":  # (GPTQ's words as their codes, as the update analysis compares them)
            v = stored_codes(v, forms[j][t.names[j]])
            yield v.view(_SIGNED[v.dtype]) if v.dtype in _SIGNED else v
            continue
        w = weight_rows(ck, t.names[j], forms[j][t.names[j]], v, r0, r1).to(target)
        check_finite(w, where(t, j))
        yield w


_SIGNED = {torch.uint8: torch.int8}  # codes as same-width signed integers (int_view's contract for _window_counts)


def _way(
    cks: list[Checkpoint], t, jit: bool, ahead: bool
) -> tuple[bool, bool, torch.dtype | None, tuple[torch.dtype, ...] | None]:
    """How tensor ``t`` is compared: (cast to float32 first, finite check inside the compiled loop, its
    dtype where it is read by address in a run of tensors, else None; its stored dtypes along the series
    where they differ, else None). By address: every version a safetensors tensor of one IEEE dtype, the
    compiled loop on and no read-ahead thread asked for.

    Stored in different IEEE dtypes (a float32 base, bf16 checkpoints): each version compared at its own
    stored dtype, the first and the previous version cast to it (round-to-nearest-even), as the update analysis
    compares a finetune with its base (:func:`~subnetviz.analysis.quant.compare_aligned`); a bitwise compare in
    float32 would count every entry the narrower dtype rounded. When only the first version's dtype differs
    (the common case) it is cast once and the rest is the one-dtype series, compiled loop included
    (:func:`_tensor_series`); otherwise the NumPy blocks, step by step (:func:`_mixed_series`)."""
    metas = [ck.meta(n) for ck, n in zip(cks, t.names, strict=True)]
    dtypes = tuple(m.dtype for m in metas)
    if any(d not in INT_VIEW for d in dtypes):  # no integer view: compared in float32, as before
        return True, False, None, None
    if len(set(dtypes)) > 1:
        one_after_first = len(set(dtypes[1:])) == 1
        return False, jit and one_after_first and dtypes[1] in series_jit.IEEE, None, dtypes
    dtype = dtypes[0]
    in_loop = jit and dtype in series_jit.IEEE
    mapped = in_loop and not ahead and all(ck.stored_as_read(n) for ck, n in zip(cks, t.names, strict=True))
    return False, in_loop, dtype if mapped else None, None


def _versions(cks: list[Checkpoint], todo: list, way: dict, ahead: bool, where: Callable) -> Iterator[torch.Tensor]:
    """The versions of the tensors ``todo`` (those not read by address), tensor by tensor, each in
    checkpoint order, optionally read one group ahead in a thread (bounded: the first and previous
    versions, the current group and the one being read). A version whose finite check the compiled
    loop does not fuse is checked as it is read."""

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

    # groups of up to a window's bytes of consecutive versions (one thread handoff per group, not per
    # version; at most the current and the next group mapped besides the first version)
    groups = []
    for t in todo:
        per = max(1, WINDOW_BYTES // max(1, math.prod(t.shape) * cks[0].meta(t.names[0]).dtype.itemsize))
        groups += [(t, range(g, min(g + per, len(cks))), way[t.key][1]) for g in range(0, len(cks), per)]
    if ahead and groups:
        from subnetviz.analysis.update_pass import prefetched  # the one read-ahead; late: it imports a lot

        return itertools.chain.from_iterable(prefetched(groups, load))
    return itertools.chain.from_iterable(map(load, groups))


def _runs(todo: list, way: dict) -> Iterator[list]:
    """``todo`` in order, cut into runs: consecutive tensors read by address in one dtype, up to
    :data:`RUN_ENTRIES` entries per version (a larger tensor is a run of its own); any other tensor
    is a run of one."""
    run: list = []
    size = 0
    for t in todo:
        dtype, n = way[t.key][2], math.prod(t.shape)
        if run and (dtype is None or way[run[0].key][2] != dtype or size + n > RUN_ENTRIES):
            yield run
            run, size = [], 0
        run.append(t)
        size += n
    if run:
        yield run


def _mapped_counts(cks: list[Checkpoint], run: list, dtype: torch.dtype, maps, where: Callable) -> tuple:
    """(counts (T, K+1, 4) of :func:`~subnetviz.analysis.series_jit.tensor_counts`, entries per tensor)
    of a run of tensors read by address from ``maps``. A version the loop flags as holding Inf/NaN is
    read and checked again (:func:`check_finite` raises with the exact count), in tensor order, then
    checkpoint order, as the tensor-by-tensor loop would have met them."""
    sizes = [math.prod(t.shape) for t in run]
    addresses = np.array(
        [
            [maps.address(ck.meta(name), n) for ck, name in zip(cks, t.names, strict=True)]
            for t, n in zip(run, sizes, strict=True)
        ],
        np.int64,
    )
    sizes = np.array(sizes, np.int64)
    counts = series_jit.tensor_counts(addresses, sizes, series_jit.special_bits(dtype), dtype.itemsize)
    for r, j in zip(*np.nonzero(counts[:, :, 3]), strict=True):
        check_finite(read_aligned(cks[j], run[r], j), where(run[r], j))
    return counts, sizes


class _Totals:
    """The counts of the series summed over its tensors: per step i = 1..K (int64 arrays) and the split."""

    def __init__(self, k: int):
        self.vs_prev, self.vs_first, self.ever_back = (np.zeros(k, np.int64) for _ in range(3))
        self.numel = self.never = self.cancelled = self.final = self.done = 0
        self.per_key: dict[str, tuple[int, list[int]]] = {}  # each tensor's entries and changed vs first, per step

    def add(self, c: _TensorCounts, key: str) -> None:
        self.per_key[key] = (c.numel, list(c.vs_first))
        self.numel += c.numel
        self.vs_prev += c.vs_prev
        self.vs_first += c.vs_first
        self.ever_back += c.ever_back
        self.final += c.vs_first[-1]
        self.cancelled += c.ever - c.vs_first[-1]
        self.never += c.numel - c.ever

    def add_run(self, counts: np.ndarray, sizes: np.ndarray, keys: list[str]) -> None:
        """Counts of several tensors (:func:`_mapped_counts`; column 0 is each tensor's first version)."""
        steps, last = counts[:, 1:], counts[:, -1]
        for key, size, row in zip(keys, sizes.tolist(), steps[..., 1].tolist(), strict=True):
            self.per_key[key] = (size, row)
        self.vs_prev += steps[..., 0].sum(0)
        self.vs_first += steps[..., 1].sum(0)
        self.ever_back += (steps[..., 2] - steps[..., 1]).sum(0)
        self.numel += int(sizes.sum())
        self.final += int(last[:, 1].sum())
        self.cancelled += int((last[:, 2] - last[:, 1]).sum())
        self.never += int((sizes - last[:, 2]).sum())


# Entries per version of one compiled call over a run of tensors read by address (a larger tensor is a
# call of its own): the packed "ever updated" flags of a call take RUN_ENTRIES / 8 bytes.
RUN_ENTRIES = 1 << 26
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
    versions: Iterator[torch.Tensor],
    k: int,
    cast: bool,
    key: str,
    check: Callable | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    named: Callable[[int], str] | None = None,
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

    ``dtypes``: the versions' stored dtypes where they differ (:func:`_way`): each version is compared at its
    own dtype, the first and the previous cast to it. When the versions after the first share one dtype, the
    first is cast to it once (round-to-nearest-even) and the loops run as for one dtype: the compiled loop
    gets that cast first version as its first; otherwise :func:`_mixed_series`. ``named(i)``: version i's
    checkpoint and tensor, for a cast that overflows (:func:`_rounded`).
    """
    v0 = next(versions)
    checked_first = False
    if dtypes is not None:
        named = named or (lambda j: key)
        _stored_type(v0, dtypes[0], key)
        if len(set(dtypes[1:])) > 1:
            return _mixed_series(v0, versions, k, key, dtypes, named)
        if check is not None:  # the stored first version (the loop would check its cast: a NaN said as stored)
            check(0, v0)
            checked_first = True
        v0 = _rounded(v0, dtypes[1], named(0))  # as the later versions store it: the rest is a one-dtype series

    def same_type(v: torch.Tensor) -> torch.Tensor:
        if not cast:
            _stored_type(v, v0.dtype, key)
        return v

    def bits(v: torch.Tensor) -> np.ndarray:
        v = same_type(v).to(torch.float32) if cast else same_type(v)
        v = v.contiguous()
        return (int_view(v) if v.dtype.is_floating_point else v).reshape(-1).numpy()  # integer codes: as stored

    if check is not None:
        return _jit_series(versions, v0, k, same_type, check, checked_first)
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


def _stored_type(v: torch.Tensor, dtype: torch.dtype, key: str) -> None:
    if v.dtype != dtype:
        raise ConfigError(f"{key}: stored as {v.dtype} in one checkpoint but {dtype} in the header.")


def _rounded(v: torch.Tensor, dtype: torch.dtype, where: str) -> torch.Tensor:
    """Finite version ``v`` cast to ``dtype`` (round-to-nearest-even), refused where the cast overflows to Inf (a
    float32 value past float16's range), as the update analysis refuses the base cast to a finetune's dtype."""
    out = v.to(dtype)
    if out.dtype != v.dtype and (bad := int(out.numel() - torch.isfinite(out).sum())):
        raise NonFiniteError(
            f"{where}: {bad} value(s) beyond the range of {str(dtype).removeprefix('torch.')}, the dtype it is "
            "compared in (a later checkpoint's): cast to it they are Inf. Analyses need finite weights."
        )
    return out


def _mixed_series(
    v0: torch.Tensor,
    versions: Iterator[torch.Tensor],
    k: int,
    key: str,
    dtypes: tuple[torch.dtype, ...],
    named: Callable[[int], str],
) -> _TensorCounts:
    """:func:`_tensor_series` of versions stored in several dtypes after the first (bf16 and float32 checkpoints
    in turn), version by version in the NumPy blocks: version i is compared at its stored dtype, the first and
    the previous version cast to it (round-to-nearest-even; exact where the cast widens). An entry that
    differs from the (cast) first version counts as updated even when no step changed it (a float32 first,
    a bf16 step equal to it once rounded, a float32 step holding that rounded value): "updated, back to the
    start" stays the ever-updated entries equal to the start."""

    def bits(v: torch.Tensor) -> np.ndarray:
        return int_view(v.contiguous()).reshape(-1).numpy()

    firsts: dict[torch.dtype, np.ndarray] = {}  # the first version cast to each dtype met
    ever = np.zeros(v0.numel(), dtype=bool)
    vs_prev, vs_first, ever_back = [], [], []
    n_ever, prev = 0, v0
    for i in range(1, k + 1):
        v = next(versions)
        _stored_type(v, dtypes[i], key)
        if v.dtype not in firsts:
            firsts[v.dtype] = bits(_rounded(v0, v.dtype, named(0)))
        p = bits(_rounded(prev, v.dtype, named(i - 1)))
        ((n_prev, n_first, n_ever),) = _window_counts(firsts[v.dtype], p, [bits(v)], ever, also_first=True)
        vs_prev.append(n_prev)
        vs_first.append(n_first)
        ever_back.append(n_ever - n_first)
        prev = v
    return _TensorCounts(v0.numel(), vs_prev, vs_first, ever_back, n_ever)


def _jit_series(
    versions: Iterator[torch.Tensor],
    v0: torch.Tensor,
    k: int,
    same_type: Callable,
    check: Callable,
    checked_first: bool = False,
) -> _TensorCounts:
    """:func:`_tensor_series` through the compiled loop, on the tensors themselves (by address: no
    NumPy view per version). The first window also runs the first version (0 counts) for its
    finite check, which the loop fuses, unless ``checked_first`` (checked as stored, before a cast)."""
    v0 = v0.contiguous()
    ever = series_jit.new_flags(v0.numel())
    special = series_jit.special_bits(v0.dtype)
    window = max(1, WINDOW_BYTES // max(v0.numel() * v0.element_size(), 1))
    vs_prev, vs_first, ever_back = [], [], []
    n_ever = 0
    prev, lead = v0, [] if checked_first else [v0]
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


def _window_counts(
    first: np.ndarray, prev: np.ndarray, batch: list[np.ndarray], ever: np.ndarray, *, also_first: bool = False
) -> list:
    """``[(#≠ previous, #≠ first, #ever updated)]`` for each version of ``batch`` (after ``prev``),
    block by block; ``ever`` (the flags so far) is updated in place, with the entries ≠ previous (and
    ``also_first``: ≠ first, which one dtype implies)."""
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
            if also_first:
                np.logical_or(e, ff, out=e)
            counts[j, 0] += np.count_nonzero(sn)
            counts[j, 1] += np.count_nonzero(ff)
            counts[j, 2] += np.count_nonzero(e)
            p = c
    return counts.tolist()


# --- one training run's checkpoints -------------------------------------------------------------------------------
# A run's checkpoint folder, named for its step: the HF Trainer's checkpoint-<N>, this app's step-<N> (and
# accelerate's checkpoint_<N>), DeepSpeed's global_step<N>.
STEP_FOLDER = re.compile(r"^(?:checkpoint|step|global_step)[-_]?(\d+)$")
# A hub repository's training checkpoints pushed as branches: Pythia's step1000 (main is step143000), OLMo's
# stage1-step1000-tokens5B, and a run's checkpoint-<N> pushed as a branch.
HUB_STEP = re.compile(r"^(?:(?:stage\d+-)?step(\d+)(?:-tokens\d+[KMBT]?)?|(?:checkpoint|global_step)[-_]?(\d+))$")
# where a checkpoint's step is read, first found first: the HF Trainer's state, this app's step.json, the name; a
# cached hub id's revision (Pythia's @step1000)
STEP_SOURCES = ("trainer_state.json", "step.json", "train_summary.json", "folder name", "hub revision")


@dataclass(frozen=True)
class TrainingRun:
    """Checkpoints read as one training run's, or not (:func:`training_run`).

    ``steps``: each checkpoint's training step, in the order given (None where it has none); ``read_from``: where
    each step was read (one of :data:`STEP_SOURCES`, "" where none); ``folder``: the run's folder (the checkpoint
    folders' parent); ``why_not``: one line saying why they are not taken as one run ("" when they are);
    ``start``: the base's step (0, the run's start, unless the base is one of the run's checkpoints itself)."""

    steps: tuple[int | None, ...]
    read_from: tuple[str, ...]
    folder: str
    why_not: str
    start: int = 0

    @property
    def order(self) -> list[int]:
        """The checkpoints' indices in training order (by step)."""
        return sorted(range(len(self.steps)), key=lambda i: self.steps[i] if self.steps[i] is not None else -1)

    @property
    def reordered(self) -> bool:
        """Whether the training order differs from the order given."""
        return self.order != list(range(len(self.steps)))


def training_run(paths: Sequence[str], labels: Sequence[str] | None = None, base: str | None = None) -> TrainingRun:
    """Whether the checkpoints ``paths`` (folders, or weight files in them) are one training run's, each at its own
    step after the ``base``'s: each holds its step (:func:`checkpoint_step`), the checkpoint folders share one
    parent (the run's final model may be that parent itself) and no two are at one step. The base is the run's
    start (step 0), or, where it is a checkpoint of the same run, at its own step. ``labels`` name the checkpoints
    in ``why_not`` (default: the paths)."""
    labels = list(labels) if labels is not None else [str(p) for p in paths]
    if paths and all(hub_step(p) for p in paths):  # a hub repository's branches: Pythia's @step1000, …
        return _hub_run(paths, labels, base)
    folders = [_folder_of(p) for p in paths]
    parents = {f.parent for f in folders if f is not None}
    found = [_step_in_run(f, parents) if f is not None else (None, "") for f in folders]
    steps, read_from = tuple(s for s, _ in found), tuple(w for _, w in found)

    def refused(why: str, folder: str = "") -> TrainingRun:
        return TrainingRun(steps, read_from, folder, why)

    if not paths:
        return refused("no checkpoints.")
    if hubs := [lab for lab, p in zip(labels, paths, strict=True) if hub_step(p)]:
        return refused(f"{hubs[0]} is a hub repository's branch and others are not: not one run's checkpoints.")
    missing = [lab for lab, s in zip(labels, steps, strict=True) if s is None]
    if missing:
        return refused(
            f"{missing[0]}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} carries no training step "
            "(no checkpoint-<N>, step-<N> or global_step<N> folder name, trainer_state.json or step.json)"
            + ("; leave it out of the sidebar to read the others as one run." if len(missing) < len(paths) else ".")
        )
    # the run's folder: a checkpoint folder's parent, or the folder itself where it holds another one (the final
    # model saved at the top of a run's output_dir)
    roots = {_run_folder(f, parents) for f in folders}
    if len(roots) > 1:
        shown = sorted(str(r) for r in roots)
        return refused(f"they are in {len(roots)} different folders ({', '.join(shown[:2])}{' …' * (len(shown) > 2)}).")
    (root,) = roots
    # a step read from trainer_state.json is where *a* run ended: two independent finetunes saved side by side
    # (each with the state Trainer.save_state() writes at its top) read as one run's checkpoints. Only folders
    # named as checkpoints, and the run's own folder that holds them, are taken as one run's.
    # this app's runs: the final model (its train_summary.json) holds them in checkpoints/; not a folder above an
    # HF Trainer output_dir that happens to be named checkpoints
    top = root.parent if root.name == "checkpoints" and (root.parent / "train_summary.json").is_file() else root
    loose = [
        lab for lab, f in zip(labels, folders, strict=True) if f not in (root, top) and not STEP_FOLDER.match(f.name)
    ]
    if loose:
        return refused(
            f"{loose[0]} is no checkpoint-<N>, step-<N> or global_step<N> folder of a run (its step says where its "
            "own training ended), so they are not taken as one run's checkpoints.",
            str(root),
        )
    at = _folder_of(base) if base is not None else None
    start = checkpoint_step(at)[0] if at is not None and at.parent == root else None
    if at is not None and at in (root, top):  # the run's own folder: its final model, not its start
        start = _step_in_run(at, {root})[0]
        if start is None:
            return refused(
                f"the base {base} is the run's own folder, its final model, not its start: choose the model the run "
                "started from as the base.",
                str(root),
            )
    return _in_order(steps, read_from, labels, str(root), start or 0)


def _step_in_run(folder: Path, parents: set[Path]) -> tuple[int | None, str]:
    """:func:`checkpoint_step` of ``folder``, and where it says none and holds the ``checkpoints/`` among the
    checkpoints' ``parents`` (this app's runs: the final model above ``checkpoints/step-N``), the ``steps_done`` of
    its ``train_summary.json``. (Not read elsewhere: every finetune this app trained has one, and independent
    finetunes side by side would read as a run's checkpoints.)"""
    step, where = checkpoint_step(folder)
    if step is None and folder / "checkpoints" in parents:
        from subnetviz.cache import file_stamp

        summary = folder / "train_summary.json"
        if summary.is_file() and (step := _json_step(str(summary), "steps_done", file_stamp(summary))) is not None:
            return step, "train_summary.json"
    return step, where


def _run_folder(folder: Path, parents: set[Path]) -> Path:
    """The run folder a checkpoint ``folder`` belongs to, among the checkpoints' ``parents``: the folder itself where
    it holds checkpoints (the final model at the top of a Trainer's output_dir), its ``checkpoints/`` where that
    holds them (this app's runs: ``<out>/checkpoints/step-N``), else its parent."""
    if folder in parents:
        return folder
    return folder / "checkpoints" if folder / "checkpoints" in parents else folder.parent


def _in_order(steps: tuple, read_from: tuple, labels: list[str], root: str, start: int) -> TrainingRun:
    """The run of checkpoints at ``steps`` after the base's ``start``, or why not: two at one step, one not after
    the base."""
    seen: dict[int, str] = {}
    for lab, s in zip(labels, steps, strict=True):
        if s in seen:
            return TrainingRun(steps, read_from, root, f"{seen[s]} and {lab} are both at step {s}.")
        if s <= start:
            return TrainingRun(steps, read_from, root, f"{lab} is at step {s}, not after the base (step {start}).")
        seen[s] = lab
    return TrainingRun(steps, read_from, root, "", start)


def hub_step(spec: str | os.PathLike | None) -> tuple[str, int] | None:
    """(repository, step) of a hub id whose revision names a training step (:data:`HUB_STEP`: Pythia's
    ``EleutherAI/pythia-70m@step1000``), None for anything else (a path, a hub id at main or at a commit)."""
    s = str(spec) if spec is not None else ""
    if "@" not in s or not reads_as_hub_id(s):
        return None
    repo, _, rev = s.partition("@")
    m = HUB_STEP.match(rev)
    return (repo, int(m.group(1) or m.group(2))) if m else None


def _hub_run(paths: Sequence[str], labels: list[str], base: str | None) -> TrainingRun:
    """Cached hub ids at step branches of one repository as one run (Pythia's ``@step1000``, ``@step2000``): each at
    the step its revision names; the base is the run's start (step 0) unless it is a step branch of the same
    repository. A base in that repository at another revision (main: Pythia's step143000, the run's end) says no
    step: refused, as its place in the run is not known."""
    found = [hub_step(p) for p in paths]
    steps, read_from = tuple(s for _, s in found), ("hub revision",) * len(found)
    repos = list(dict.fromkeys(r for r, _ in found))
    if len(repos) > 1:
        why = f"they are branches of {len(repos)} hub repositories ({', '.join(repos[:2])}{' …' * (len(repos) > 2)})."
        return TrainingRun(steps, read_from, "", why)
    (repo,) = repos
    at = hub_step(base)
    if at is None and base is not None and str(base).partition("@")[0] == repo and reads_as_hub_id(str(base)):
        why = (
            f"the base {base} is in the same repository at a revision that names no step (main may be the run's "
            f"end); choose its step branch (e.g. {repo}@step0) as the base to read them as one run."
        )
        return TrainingRun(steps, read_from, repo, why)
    start = at[1] if at is not None and at[0] == repo else 0
    return _in_order(steps, read_from, labels, repo, start)


def _folder_of(path: str) -> Path | None:
    """The folder of checkpoint ``path``, resolved: itself, a weight file's folder, or a cached hub id's snapshot
    folder; None for anything else (a name of nothing, a hub id that is not cached or is refused: reading it says
    why). A weight file's folder is the one that holds the file as given, not the one its link leads to: every file
    of a hub snapshot (and of git-annex or DVC stores) is a link into a store of blobs, where no step is found, and
    a run's checkpoint-<N>/model.safetensors files read as independent finetunes. Where that folder says no step
    and the file is a link, the folder of the file it leads to."""
    if reads_as_hub_id(path):
        try:
            return local_folder(path).resolve()
        except SubnetvizError:
            return None
    p = os.path.expanduser(str(path))  # (os.path: False for a name no file can have, where Path.is_dir raises)
    if os.path.isdir(p):
        return Path(p).resolve()
    if not os.path.isfile(p):
        return None
    given = Path(p).absolute().parent.resolve()
    if checkpoint_step(given)[0] is not None or not os.path.islink(p):
        return given
    # a link of the user's own (links/early.safetensors -> out/checkpoint-500/model.safetensors): where the folder
    # holding it says no step, the folder of the file it leads to (read as the run's before links were kept)
    target = Path(p).resolve().parent
    return target if checkpoint_step(target)[0] is not None else given


def checkpoint_step(folder: Path) -> tuple[int | None, str]:
    """(training step, where it was read: one of :data:`STEP_SOURCES`) of a checkpoint folder: the HF Trainer's
    ``trainer_state.json`` ``global_step``, this app's ``step.json`` ``step``, else the number in its name
    (:data:`STEP_FOLDER`); ``(None, "")`` where none says one. A file that cannot be read or holds no whole
    number is passed over."""
    from subnetviz.cache import file_stamp

    for name, key in (("trainer_state.json", "global_step"), ("step.json", "step")):
        step = _json_step(str(folder / name), key, file_stamp(folder / name)) if (folder / name).is_file() else None
        if step is not None:
            return step, name
    m = STEP_FOLDER.match(folder.name)
    return (int(m.group(1)), "folder name") if m else (None, "")


@functools.lru_cache(maxsize=256)
def _json_step(path: str, key: str, stamp: str) -> int | None:
    """The whole number ``key`` of JSON file ``path`` (at ``stamp``: a page's rerun parses a long run's
    trainer_state.json, its log history, once), None where it holds none or cannot be read."""
    from subnetviz.config import read_json
    from subnetviz.errors import SubnetvizError

    try:
        step = read_json(path, ConfigError).get(key)
    except SubnetvizError:
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def in_every_step(reports: list) -> list:
    """The update analysis's reports (each checkpoint against the first, one pair at a time) cut to the tensors
    every pair compared: those every checkpoint holds, as the series compares them and its note says. A pair
    compares what its two checkpoints share, so a tensor one checkpoint lacks was counted at the other steps only,
    and a module's line changed its denominator from step to step."""
    keys = set.intersection(*(set(r.tensors["key"]) for r in reports)) if reports else set()
    out = []
    for r in reports:
        kept = r.tensors["key"].isin(keys)
        if kept.all():  # (nothing left out at this step: the report as it is)
            out.append(r)
            continue
        parts = None if r.parts is None else r.parts[r.parts["key"].isin(keys)]
        out.append(replace(r, tensors=r.tensors[kept], parts=parts))
    return out
