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
from collections.abc import Callable, Sequence

from subnetviz.errors import ConfigError


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
) -> list:
    """``[fn(*a) for a in arg_tuples]`` with each call a Ray task declaring ``num_cpus``; results in order.

    ``fn`` must be importable by the workers (a module-level function of subnetviz). The cluster
    runs as many at once as its CPUs allow. ``address``: default ``SUBNETVIZ_RAY_ADDRESS``. Each
    call sees this process's ``SUBNETVIZ_*`` variables (e.g. ``SUBNETVIZ_ENFORCE_ROOTS``: a job's
    read roots hold on the workers too) and no others of that prefix.
    """
    from subnetviz.jobs import fanout
    from subnetviz.jobs.ray_backend import RAY_ADDRESS_ENV, connect, ray_address

    address = address or ray_address()
    if not address:
        raise ConfigError(f"a Ray fan-out needs a cluster: pass address= or set {RAY_ADDRESS_ENV}.")
    ray = connect(address)
    task = ray.remote(fanout._with_threads).options(num_cpus=num_cpus, max_retries=0)
    env = {k: v for k, v in os.environ.items() if k.startswith("SUBNETVIZ_")}
    refs = [task.remote(fn, threads, tuple(a), env) for a in arg_tuples]
    try:
        return ray.get(refs)
    except BaseException:
        for ref in refs:  # one failed (or the driver was interrupted): the others stop too
            ray.cancel(ref, force=True)
        raise


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
    vs_first = [sum(int(p.steps["changed_vs_first"].iloc[i]) for p in parts) for i in range(len(steps) - 1)]
    vs_prev = [sum(int(p.steps["changed_vs_previous"].iloc[i]) for p in parts) for i in range(len(steps) - 1)]
    ever_back = [
        sum(round(float(p.steps["ever_updated"].iloc[i]) * p.numel) for p in parts) for i in range(len(steps) - 1)
    ]
    rows = pd.DataFrame(
        {
            "step": list(steps)[1:],
            "changed_vs_first": vs_first,
            "changed_vs_previous": vs_prev,
            "vs_first": [1 - c / numel for c in vs_first],
            "vs_previous": [1 - c / numel for c in vs_prev],
            "ever_updated": [c / numel for c in ever_back],
        }
    )
    counts = [sum(int(p.split["count"].iloc[j]) for p in parts) for j in range(3)]
    split = pd.DataFrame({"part": list(parts[0].split["part"]), "count": counts})
    split["share"] = split["count"] / numel
    return SeriesResult(rows, split, numel)


def _series_part(paths: list[str], steps: list[int], keys: list[str]):
    from subnetviz.analysis.series import checkpoint_series

    return checkpoint_series(paths, steps, tensors=set(keys))


def series_fanout(paths: Sequence[str], steps: Sequence[int] | None = None, *, workers: int = 2, address=None):
    """:func:`~subnetviz.analysis.series.checkpoint_series` fanned out over ``workers`` Ray tasks.

    The series' cumulative counts (ever updated, cancelled out) need every checkpoint of a tensor
    together, so the work splits by groups of tensors (balanced by size), each task streaming its
    tensors through all N checkpoints; the integer counts merge exactly (:func:`merge_series`).
    ``address``: the cluster (default ``SUBNETVIZ_RAY_ADDRESS``).
    """
    from subnetviz.checkpoints import align, open_checkpoint

    paths = [str(p) for p in paths]
    steps = list(steps) if steps is not None else list(range(len(paths)))
    cks = [open_checkpoint(p) for p in paths]
    try:
        al = align(cks)
        sizes = [(t.key, cks[0].meta(t.names[0]).numel) for t in al.tensors]
    finally:
        for ck in cks:
            ck.close()
    from subnetviz.jobs import fanout

    groups = _groups(sizes, max(1, int(workers)))
    return merge_series(ray_map(fanout._series_part, [(paths, steps, g) for g in groups], address=address), steps)


# --- N-model update analysis and overlap ----------------------------------------------------------
def pair_report(base: str, finetuned: str, label: str, options):
    """On a worker: the :class:`SparsityReport` of one (base, finetune) pair, update masks bit-packed."""
    from subnetviz.analysis.updates import analyze_updates

    return analyze_updates(base, [finetuned], labels=[label], options=options, spectra=None, device="cpu").reports[0]


def merge_overlap(base: str, reports: Sequence):
    """The overlap of the reports' update masks over the tensors all of them cover, grouped by
    (layer, module) of the base's naming table, in the base's tensor order: as the local N-model
    analysis computes it (None for fewer than two reports)."""
    from subnetviz.analysis.overlap import mask_overlap
    from subnetviz.analysis.update_pass import MaskSubset
    from subnetviz.checkpoints import open_checkpoint

    if len(reports) < 2:
        return None
    ck = open_checkpoint(base)
    try:
        table = ck.names_table
    finally:
        ck.close()
    common = set.intersection(*(set(r.masks) for r in reports))
    return mask_overlap(
        [MaskSubset(r.masks, common) for r in reports],  # packed bits reach the pass through .masks
        [r.model for r in reports],
        group_of=lambda n: (table.describe(n).layer, table.describe(n).module),
    )


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
