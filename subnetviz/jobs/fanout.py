"""Multi-checkpoint work fanned out per checkpoint pair over Ray tasks, merged to the local result.

- :func:`updates_fanout`: the N-model update analysis and the overlap of the N update masks. Each
  (base, finetune) pair is one Ray task (:func:`pair_report`: the same streaming comparison as the
  local :func:`~subnetviz.analysis.updates.analyze_updates`, one finetune); the driver merges the
  N reports' bit-packed masks with :func:`~subnetviz.analysis.overlap.mask_overlap`, grouped by
  (layer, module) as the local analysis groups them (:func:`merge_overlap`). Per-pair update masks
  do not depend on the other finetunes, and the overlap is integer arithmetic over them, so the
  merged :class:`~subnetviz.analysis.overlap.OverlapReport` equals the local one bit for bit.
- :func:`ray_map`: ``fn(*args)`` for each argument tuple as one Ray task, results in order; the
  drivers grid (:func:`subnetviz.experiments.drivers.run_drivers` with ``address=``) trains and
  measures each of its runs (a base/finetune pair) this way.

A task's torch thread count is set to the driver's (``threads``): CPU kernels (matmul
reductions, Adam) give the same bits for the same thread count, so a run trained on a worker
equals the one trained in the driver's process.

- :func:`series_fanout`: the series of one run's checkpoints fans out by groups of tensors instead
  (its cumulative counts need every checkpoint of a tensor together); :func:`merge_series` adds
  the groups' integer counts into the result of :func:`~subnetviz.analysis.series.checkpoint_series`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from subnetviz.errors import ConfigError, JobError, SubnetvizError


def _with_threads(fn: Callable, threads: int | None, args: tuple, env: dict | None = None):
    """On the worker: ``fn(*args)`` with torch set to ``threads`` threads (None: as the worker is) and
    the driver's ``SUBNETVIZ_*`` settings (``env``; the read roots above all) in force for the call
    only: a worker process serves other tasks after this one."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    env = env or {}
    saved = {k: os.environ.get(k) for k in os.environ if k.startswith("SUBNETVIZ_")} | {
        k: os.environ.get(k) for k in env
    }
    os.environ.update(env)
    for k in [k for k in os.environ if k.startswith("SUBNETVIZ_") and k not in env]:
        del os.environ[k]
    try:
        return fn(*args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_map(
    fn: Callable,
    arg_tuples: Sequence[tuple],
    *,
    address: str | None = None,
    num_cpus: float = 1,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float | None = None,
) -> list:
    """``[fn(*a) for a in arg_tuples]`` with each call a Ray task declaring ``num_cpus``; results in order.

    ``fn`` must be importable by the workers (a module-level function of subnetviz). The cluster
    runs as many at once as its CPUs allow. ``address``: default ``SUBNETVIZ_RAY_ADDRESS``. Each
    call sees this process's ``SUBNETVIZ_*`` variables (e.g. ``SUBNETVIZ_ENFORCE_ROOTS``: a job's
    read roots hold on the workers too) and no others of that prefix.

    ``progress(done, total)``: as tasks finish. ``timeout``: seconds for all of them (a
    :class:`JobError` after it). A task's subnetviz error (a bad checkpoint) is raised as itself,
    without the worker's traceback; the first failure cancels the other tasks.
    """
    from subnetviz.config import worker_env
    from subnetviz.jobs import fanout
    from subnetviz.jobs.ray_backend import RAY_ADDRESS_ENV, connect, ray_address

    address = address or ray_address()
    if not address:
        raise ConfigError(f"a Ray fan-out needs a cluster: pass address= or set {RAY_ADDRESS_ENV}.")
    ray = connect(address)
    task = ray.remote(fanout._with_threads).options(num_cpus=num_cpus, max_retries=0)
    env = worker_env()  # (the read roots as this process resolves them, not as each worker would)
    refs = [task.remote(fn, threads, tuple(a), env) for a in arg_tuples]
    try:
        return _collect(ray, refs, progress, timeout, address)
    except BaseException as exc:
        for ref in refs:  # one failed (or the driver was interrupted): the others stop too
            ray.cancel(ref, force=True)
        cause = getattr(exc, "cause", None)  # RayTaskError: the worker's exception
        if isinstance(cause, SubnetvizError):
            raise cause from None
        raise


def _collect(ray, refs: list, progress, timeout: float | None, address: str) -> list:
    """The tasks' results in order, failing at the first failed task, ``progress`` as they finish."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending, done = list(refs), 0
    if progress:
        progress(0, len(refs))
    while pending:
        left = 1.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise JobError(
                f"the Ray cluster at {address} did not finish {len(pending)} of {len(refs)} tasks in {timeout:g} s."
            )
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=min(left, 1.0), fetch_local=False)
        if ready:
            ray.get(ready)  # a failed task raises here, before the others finish
            done += len(ready)
            if progress:
                progress(done, len(refs))
    return ray.get(refs)


# --- a checkpoint series, by groups of tensors ------------------------------------------------
def _groups(keys_numel: list[tuple[str, int]], n: int) -> list[list[str]]:
    """Split tensors into ``n`` groups of about equal size (largest first onto the lightest group)."""
    groups: list[list[str]] = [[] for _ in range(n)]
    sizes = [0] * n
    for key, numel in sorted(keys_numel, key=lambda kv: -kv[1]):
        i = sizes.index(min(sizes))
        groups[i].append(key)
        sizes[i] += numel
    return [g for g in groups if g]


def merge_series(parts: Sequence, steps: Sequence[int]):
    """Merge :class:`SeriesResult` parts computed on disjoint tensor groups into the whole one.

    Counts add; the shares are recomputed from the summed counts by the same formulas as
    :func:`checkpoint_series`, so the merged frames equal the one-pass result bit for bit. The
    ever-updated count of a part is recovered exactly from its share (``round(share * numel)``:
    exact for counts below 2**52).
    """
    import pandas as pd

    from subnetviz.analysis.series import SeriesResult

    numel = sum(p.numel for p in parts)
    if numel == 0:  # every part held only buffers or scales: as the local series says it
        from subnetviz.errors import ConfigError

        raise ConfigError("no parameters to compare along the series (only buffers or scales).")
    vs_first = [sum(int(p.steps["changed_vs_first"].iloc[i]) for p in parts) for i in range(len(steps) - 1)]
    vs_prev = [sum(int(p.steps["changed_vs_previous"].iloc[i]) for p in parts) for i in range(len(steps) - 1)]
    ever_back = [
        sum(round(float(p.steps["back_to_start"].iloc[i]) * p.numel) for p in parts) for i in range(len(steps) - 1)
    ]
    rows = pd.DataFrame(
        {
            "step": list(steps)[1:],
            "changed_vs_first": vs_first,
            "changed_vs_previous": vs_prev,
            "vs_first": [1 - c / numel for c in vs_first],
            "vs_previous": [1 - c / numel for c in vs_prev],
            "back_to_start": [c / numel for c in ever_back],
        }
    )
    counts = [sum(int(p.split["count"].iloc[j]) for p in parts) for j in range(3)]
    split = pd.DataFrame({"part": list(parts[0].split["part"]), "count": counts})
    split["share"] = split["count"] / numel
    forms: dict[str, list[str]] = {}
    for p in parts:  # disjoint tensor groups: each key read one way, listed once
        for kind, keys in getattr(p, "forms", {}).items():
            forms.setdefault(kind, []).extend(keys)
    # per module kind: disjoint tensor groups, so the counts of a (step, module) add (None where a part has none:
    # a fused tensor the per-module chart takes from the update analysis)
    tables = [getattr(p, "modules", None) for p in parts]
    modules = None
    if all(t is not None for t in tables):
        both = pd.concat(tables, ignore_index=True)
        modules = both.groupby(["step", "module"], as_index=False, sort=False)[["changed", "numel"]].sum()
    # how the checkpoints were paired and read (only-in tensors, resized vocabularies, adapters): every part's same
    reading = list(getattr(parts[0], "reading", []))
    return SeriesResult(rows, split, numel, forms, reading, first_step=list(steps)[0], modules=modules)


def _series_part(paths: list[str], steps: list[int], keys: list[str]):
    from subnetviz.analysis.series import checkpoint_series

    return checkpoint_series(paths, steps, tensors=set(keys))


def series_fanout(
    paths: Sequence[str],
    steps: Sequence[int] | None = None,
    *,
    workers: int = 2,
    address=None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float | None = None,
):
    """:func:`~subnetviz.analysis.series.checkpoint_series` fanned out over ``workers`` Ray tasks.

    The series' cumulative counts (ever updated, cancelled out) need every checkpoint of a tensor
    together, so the work splits by groups of tensors (balanced by size), each task streaming its
    tensors through all N checkpoints; the integer counts merge exactly (:func:`merge_series`).
    ``address``: the cluster (default ``SUBNETVIZ_RAY_ADDRESS``); ``threads``, ``progress``,
    ``timeout``: as :func:`ray_map`'s.
    """
    from subnetviz.checkpoints import align, open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    paths = [str(p) for p in paths]
    steps = list(steps) if steps is not None else list(range(len(paths)))
    cks = [open_checkpoint(paths[0])]
    try:
        cks += [
            open_finetune(p, cks[0]) for p in paths[1:]
        ]  # (a PEFT adapter merged onto the first, as a part reads it)
        al = align(cks)
        sizes = [(t.key, cks[0].meta(t.names[0]).numel) for t in al.tensors]
    finally:
        for ck in cks:
            ck.close()
    from subnetviz.jobs import fanout

    groups = _groups(sizes, max(1, int(workers)))
    jobs = [(paths, steps, g) for g in groups]
    parts = ray_map(fanout._series_part, jobs, address=address, threads=threads, progress=progress, timeout=timeout)
    return merge_series(parts, steps)


# --- N-model update analysis and overlap ----------------------------------------------------------
def pair_report(base: str, finetuned: str, label: str, options):
    """On a worker: the :class:`SparsityReport` of one (base, finetune) pair, update masks bit-packed."""
    from subnetviz.analysis.updates import analyze_updates

    return analyze_updates(base, [finetuned], labels=[label], options=options, spectra=None, device="cpu").reports[0]


def merge_overlap(base: str, reports: Sequence):
    """The overlap of the reports' update masks over the tensors all of them cover, grouped by
    (layer, module) of the base's naming table, in the base's tensor order: as the local N-model
    analysis computes it (None for fewer than two reports, or where the local analysis has none)."""
    return overlap_with_notes(base, reports)[0]


def overlap_with_notes(base: str, reports: Sequence) -> tuple:
    """:func:`merge_overlap` and the notes the local analysis gives with it
    (:func:`~subnetviz.analysis.update_pass.overlap_of`: shared rows of a resized vocabulary, too many models)."""
    from subnetviz.analysis.update_pass import overlap_of
    from subnetviz.checkpoints import open_checkpoint

    if len(reports) < 2:
        return None, []
    ck = open_checkpoint(base)
    try:
        table = ck.names_table
    finally:
        ck.close()
    return overlap_of([r.masks for r in reports], [r.model for r in reports], table)  # (packed bits: .masks)


def updates_fanout(
    base: str,
    finetuned: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    options=None,
    address: str | None = None,
):
    """:func:`~subnetviz.analysis.updates.analyze_updates` of ``base`` against N finetunes, one Ray
    task per (base, finetune) pair; returns ``(reports, overlap)`` equal to the local analysis's
    ``.reports`` and ``.overlap``. ``options``: :class:`SparsityOptions` (default: the analysis's)."""
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import _label_for

    options = options or SparsityOptions()
    finetuned = [str(f) for f in finetuned]
    used: set[str] = set()
    labels = list(labels) if labels else [_label_for(f, used) for f in finetuned]
    if len(labels) != len(finetuned):
        raise ConfigError(f"got {len(finetuned)} finetuned checkpoints but {len(labels)} labels.")
    from subnetviz.jobs import fanout

    reports = ray_map(
        fanout.pair_report,
        [(str(base), f, lab, options) for f, lab in zip(finetuned, labels, strict=True)],
        address=address,
    )
    overlap = merge_overlap(str(base), reports) if options.keep_masks else None
    return reports, overlap


# --- the pages' update analysis (sparsity, spectra, overlap), per pair ----------------------------
def pair_analysis(base: str, finetuned: str, label: str, options, spectra, device: str):
    """On a worker: the whole update analysis of one (base, finetune) pair, spectra included."""
    from subnetviz.analysis.updates import analyze_updates

    return analyze_updates(base, [finetuned], labels=[label], options=options, spectra=spectra, device=device)


def whole_analysis(base: str, finetuned: list[str], labels: list[str], options, spectra, device: str):
    """On a worker: the N-model analysis in one task (where the pairs would not merge to it)."""
    from subnetviz.analysis.updates import analyze_updates

    return analyze_updates(base, finetuned, labels=labels, options=options, spectra=spectra, device=device)


def pairs_merge_exactly(ck_base, cks: Sequence) -> bool:
    """Whether every pair's pass meets its tensors in the order the N-model pass does: the base's
    tensors that the first finetune aligns, then the others' extra ones; a pair meets its own in
    the base's order. Equal for checkpoints of one architecture; a finetune that aligns a tensor the
    first does not, ahead of a shared one, would list its rows in another order."""
    from subnetviz.checkpoints import align

    keyed = [[t.key for t in align([ck_base, c]).tensors] for c in cks]
    order = list(dict.fromkeys(k for ks in keyed for k in ks))  # the N-model pass' keys
    return all([k for k in order if k in set(ks)] == ks for ks in keyed)


def _split_notes(analysis) -> tuple[list[str], list[str]]:
    """A one-pair analysis' notes as (the base's, the model's labelled ones). The pass writes the
    base's notes, then the model's own labelled ``"label: note"``; its report lists the same base
    notes, then the model's own unlabelled: the first place where the two lists differ splits them."""
    notes, own = analysis.notes, analysis.reports[0].notes
    cut = next((j for j, (a, b) in enumerate(zip(notes, own, strict=False)) if a != b), len(notes))
    return notes[:cut], notes[cut:]


def merge_analyses(base: str, parts: Sequence, options):
    """One :class:`UpdateAnalysis` from one-pair analyses (one per finetune, in order), as the N-model
    pass makes it: the reports and spectra side by side, the base's notes once then each model's,
    and the overlap of the update masks (:func:`merge_overlap`)."""
    from subnetviz.analysis.updates import UpdateAnalysis

    labels = [a.labels[0] for a in parts]
    reports = [a.reports[0] for a in parts]
    split = [_split_notes(a) for a in parts]
    notes = [*split[0][0], *(n for _, own in split for n in own)]
    spectra = None if parts[0].spectra is None else {lab: a.spectra[lab] for lab, a in zip(labels, parts, strict=True)}
    overlap, said = overlap_with_notes(base, reports) if options.keep_masks else (None, [])
    notes += [f"Overlap of the update masks: {n}" for n in said]  # (as the local pass says them)
    paths = {k: v for p in parts for k, v in p.paths.items()}  # where each was read (the masks' provenance)
    return UpdateAnalysis(parts[0].base, labels, reports, spectra, None, None, overlap, notes, 0.0, paths=paths)


def analysis_fanout(
    base: str, finetuned: Sequence[str], labels: Sequence[str], options, spectra, device: str, **ray_kw
):
    """:func:`~subnetviz.analysis.updates.analyze_updates` of ``base`` against N finetunes on Ray:
    one task per (base, finetune) pair merged by :func:`merge_analyses` (equal to the local pass:
    per-pair results do not depend on the other finetunes), or one task for the whole analysis where
    :func:`pairs_merge_exactly` says the rows would come in another order. ``ray_kw``: for
    :func:`ray_map` (address, threads, progress, timeout)."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from subnetviz.jobs import fanout

    base, finetuned, labels = str(base), [str(f) for f in finetuned], list(labels)
    ck_base = open_checkpoint(base)
    try:
        per_pair = len(finetuned) == 1 or pairs_merge_exactly(ck_base, [open_finetune(f, ck_base) for f in finetuned])
    finally:
        ck_base.close()
    if not per_pair:
        return ray_map(fanout.whole_analysis, [(base, finetuned, labels, options, spectra, device)], **ray_kw)[0]
    jobs = [(base, f, lab, options, spectra, device) for f, lab in zip(finetuned, labels, strict=True)]
    return merge_analyses(base, ray_map(fanout.pair_analysis, jobs, **ray_kw), options)
