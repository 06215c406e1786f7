"""The Bigram and Behaviour pages' analyses and the Overlap page's overlap of mask files, on a Ray cluster.

The same design as :mod:`subnetviz.jobs.cluster` (the update analysis and the series): with no
cluster (``address`` ``""``, or None and no ``SUBNETVIZ_RAY_ADDRESS``) each function is the local one,
in this process, and Ray is never imported. With one, this process only looks the result up and
waits; on a miss a driver child process (:func:`subnetviz.jobs.cluster.drive`) runs the work as a Ray
task (:func:`subnetviz.jobs.fanout.ray_map`: the server's torch thread count and ``SUBNETVIZ_*``
settings, the read roots above all) and publishes exactly the disk-cache entry the local path would:

- :func:`cached_mask_analysis`: the Bigram page's analysis of a mask (fidelity, ablations, residual
  stream, overlap with the optimal mask, generations), entry ``bigram/<analysis_key>``. One task: a
  model's forward passes over one corpus.
- :func:`cached_behavior`: the Behaviour page's teacher-forced KL and revert experiments, entry
  ``behavior/<key>``. One task: every model of the analysis shares the base's logits.
- :func:`files_overlap`: the Overlap page's overlap of the chosen mask files (the whole report by
  (layer, module) and, for mixture-of-experts masks, by layer x expert). It has no disk entry (the
  page keeps it in its memo by the files' stamps); on the cluster the worker reads the mask files and
  the server reads none of them.

Every file the workers read must lie at the same path on them (a shared file system), as for jobs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from subnetviz.jobs import cluster


# --- Bigram ---------------------------------------------------------------------------------------
def cached_mask_analysis(
    model: str,
    mask: str,
    corpus: str = "zoo",
    optimal: str | None = None,
    *,
    address: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cache_root: str | os.PathLike | None = None,
):
    """:func:`subnetviz.bigram.store.cached_mask_analysis`, computed on the cluster at ``address`` on a miss."""
    from subnetviz.bigram import store
    from subnetviz.cache import entry

    address = cluster.resolve_address(address)
    if not address:
        return store.cached_mask_analysis(model, mask, corpus=corpus, optimal=optimal, cache_root=cache_root)
    ent = entry("bigram", store.analysis_key(model, mask, corpus, optimal), root=cache_root)
    if not ent.ready:
        request = {"model": model, "mask": mask, "corpus": corpus, "optimal": optimal, "folder": str(ent.folder)}
        cluster.drive("bigram", request, address, progress, 1, __name__)
    return store.load_analysis(ent.folder)


def bigram_task(model: str, mask: str, corpus: str, optimal: str | None):
    """On a worker: the page's analysis of one mask, ``(SubnetworkAnalysis, generations)``."""
    from subnetviz.bigram.job import analyse_mask_file
    from subnetviz.bigram.store import PAGE_OPTIONS

    return analyse_mask_file(model, mask, corpus=corpus, optimal=optimal, **PAGE_OPTIONS)


# --- Behaviour ------------------------------------------------------------------------------------
def cached_behavior(
    config: dict,
    *,
    address: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cache_root: str | os.PathLike | None = None,
):
    """:func:`subnetviz.analysis.behavior.cached_behavior`, computed on the cluster at ``address`` on a miss."""
    from subnetviz.analysis import behavior

    address = cluster.resolve_address(address)
    if not address:
        return behavior.cached_behavior(config, progress, cache_root)
    ent, files = behavior.behavior_entry(config, cache_root)
    if not ent.ready:
        cluster.drive(
            "behavior",
            {"config": {**config, "prompts": files}, "folder": str(ent.folder)},
            address,
            progress,
            1,
            __name__,
        )
    return behavior.read_behavior(ent.folder)


def behavior_task(config: dict):
    """On a worker: the behaviour report of ``config`` (prompt files resolved by the server)."""
    from subnetviz.analysis.behavior import run_config

    return run_config(config)


# --- Overlap of mask files ------------------------------------------------------------------------
@dataclass(frozen=True)
class FilesOverlap:
    """What the Overlap page shows of N mask sets: the overlap over the tensors every set holds, by
    (layer, module); by (layer, expert) over the per-expert tensors (None: no expert tensor); how
    many tensors every set holds, and whether some set holds more. Tensors are matched by their name
    without a model prefix (``model.``, ``transformer.``, ... and PEFT's ``base_model.model.`` and
    ``.base_layer.``: :func:`~subnetviz.checkpoints.naming.mask_key`, the rule every page matches masks by) and
    named as a set that carries the prefix names them. Experts one set stores packed (``experts.gate_up_proj`` /
    ``down_proj``) and another one by one, and tensors one set names as the model holds them and another as a release
    stores them (Granite-MoE's ``experts.gate_up_proj`` / ``input_linear.weight``), are matched as checkpoints are
    (:func:`_same_layouts`). ``notes``: names
    matched across prefixes or expert layouts, tensors not in every set, tensors compared over shared rows or left
    out (shapes that differ), or why there is no overlap."""

    report: object  # subnetviz.analysis.overlap.OverlapReport
    experts: object | None
    common: int
    partial: bool
    mtp_layers: tuple = ()  # the layers that are a multi-token-prediction module's (labelled so)
    packed_experts: int = 0  # tensors holding every expert of a layer (not split per expert here: said so)
    notes: tuple = ()


def _matched(sets: Sequence) -> tuple[list[str], list[dict[str, str]], bool, int]:
    """(the tensors every set holds, named; per set: name -> the set's own name; whether some set holds more;
    how many were matched across different prefixes). Matched by :func:`~subnetviz.checkpoints.naming.mask_key`,
    the rule every page matches a mask's names by (a model prefix, PEFT's ``base_model.model.`` and
    ``.base_layer.`` lifted; the first of a set's names that key alike wins, as
    :func:`~subnetviz.checkpoints.align` keeps it), in the first set's order; each named as the first set that
    keeps a model prefix names it (as checkpoints and the other pages name tensors, PEFT's wrapping left out),
    else unprefixed."""
    from subnetviz.checkpoints.naming import mask_key, unwrapped_name

    keyed = []
    for s in sets:
        km: dict[str, str] = {}
        for n in s:
            km.setdefault(mask_key(n), n)
        keyed.append(km)
    if not keyed:
        return [], [], False, 0
    keys = [k for k in keyed[0] if all(k in km for km in keyed[1:])]
    partial = any(len(s) != len(keys) for s in sets)
    shown = {k: next((unwrapped_name(km[k]) for km in keyed if unwrapped_name(km[k]) != k), k) for k in keys}
    across = sum(1 for k in keys if len({km[k] for km in keyed}) > 1)
    own = [{shown[k]: km[k] for k in keys} for km in keyed]
    return [shown[k] for k in keys], own, partial, across


def _same_layouts(sets: Sequence, labels: Sequence[str]) -> tuple[list, list[str]]:
    """``sets`` with each set's expert tensors in the layout another set stores them in, where they differ (a
    packed ``experts.gate_up_proj`` / ``down_proj``, an update mask of state-dict saves, beside the same experts one
    by one, one of release saves): the packed ones split into the per-expert tensors, a router (or Granite-MoE's
    packed experts, which transformers only renames on load) taken under the name the other stores it by, as
    checkpoints are matched (:func:`~subnetviz.checkpoints.experts_layout.mask_layout`).
    Only the tensors some other set lacks are read so, into tensors of the others that this set lacks; the notes
    say which. Nothing is unpacked where every set holds the same tensors."""
    from subnetviz.checkpoints.experts_layout import mask_layout, relaid_masks
    from subnetviz.checkpoints.naming import mask_key
    from subnetviz.masks import mask_shape

    keys = [{mask_key(n) for n in s} for s in sets]
    out, notes = list(sets), []
    for i, s in enumerate(sets):
        others = [k for j, k in enumerate(keys) if j != i]
        lone = {n: mask_shape(s, n) for n in s if not all(mask_key(n) in k for k in others)}
        if not lone or not others:
            continue
        theirs: dict[str, tuple[int, ...]] = {}
        for j, t in enumerate(sets):  # the other sets' tensors this one lacks, by the first set that holds each
            if j != i:
                for n in t:
                    if mask_key(n) not in keys[i] and n not in theirs:
                        theirs[n] = mask_shape(t, n)
        layout = mask_layout(lone, theirs, pack=False)
        if layout.tensors:
            out[i] = relaid_masks(s, layout)
            notes.append(f"{labels[i]}: {layout.note('another mask')}")
    return out, notes


def _left_out(sets: Sequence, labels: Sequence[str], common: Sequence[str]) -> str | None:
    """One line naming the tensors not in every set (left out of the overlap), with the sets that hold them; None
    where every set holds the same ones."""
    from subnetviz.checkpoints.naming import mask_key

    shared = {mask_key(n) for n in common}
    held: dict[str, list[str]] = {}
    for s, label in zip(sets, labels, strict=True):
        for n in s:
            if mask_key(n) not in shared:
                held.setdefault(mask_key(n), []).append(str(label))
    if not held:
        return None
    listed = [f"{k} (in {', '.join(h)})" for k, h in list(held.items())[:6]]
    return (
        f"left out, not in every mask: {len(held):,} tensor(s), e.g. {'; '.join(listed)}"
        f"{' ...' if len(held) > 6 else ''}."
    )


def sets_overlap(mask_sets: Sequence, labels: Sequence[str]) -> FilesOverlap:
    """The :class:`FilesOverlap` of loaded mask sets (:class:`~subnetviz.masks.MaskSet`), in this process."""
    from subnetviz.analysis.overlap import mask_overlap, overlap_by_layer_module
    from subnetviz.checkpoints.naming import NameTable, unwrapped_name
    from subnetviz.errors import MaskError
    from subnetviz.masks import PackedMasks

    sets, notes = _same_layouts([m.masks for m in mask_sets], [str(x) for x in labels])
    common, own, partial, across = _matched(sets)
    if not common:
        return FilesOverlap(None, None, 0, partial)
    notes += [n for n in [_left_out(sets, labels, common)] if n]
    if across:
        notes.append(
            f"names matched across prefixes: {across:,} tensor(s) matched by name without the model prefix (e.g. "
            "model., transformer., PEFT's base_model.model. and .base_layer.), which differs between the masks; "
            "named here as the checkpoint names them."
        )

    def only(k, keep):  # bit-packed masks stay packed (indexing one unpacks it, a byte per parameter)
        s, names = sets[k], own[k]
        if isinstance(s, PackedMasks):
            out = PackedMasks()
            for n in keep:
                bits, shape = s.packed(names[n])
                out.add_bits(n, bits, shape)
            return out
        return {n: s[names[n]] for n in keep}

    def overlap(keep, group_of):  # tensors whose shapes differ: shared leading rows, or left out (said so)
        return mask_overlap(
            [only(k, keep) for k in range(len(sets))], list(labels), group_of=group_of, other_shapes="skip"
        )

    # no config.json beside mask files: the family, an MTP module's layer and sandwich norms from the names of
    # every chosen mask, not only the shared ones (a mask of the MLP alone beside a full one: the full one's
    # attention names tell the family; the shared MLP names alone may tell none, every module then 'other')
    table = NameTable.from_config({}, sorted({unwrapped_name(n) for s in sets for n in s}))
    try:
        # fused QKV split into q, k and v as the Update sparsity page's grid splits it (the table's own split)
        report = overlap_by_layer_module(
            [only(k, common) for k in range(len(sets))], list(labels), table, other_shapes="skip"
        )
    except MaskError as exc:  # no tensor left to compare (every shape differs): said, not a failed page
        return FilesOverlap(None, None, len(common), partial, notes=(*notes, str(exc)))
    notes += report.notes
    # one expert's own tensors (routers are no expert's: the shared expert's cell took its gate in, as the
    # Sparsity page's by_expert does not); a packed tensor holds every expert of a layer and is counted apart
    infos = {n: table.describe(n) for n in common}
    names = [n for n, i in infos.items() if i.expert not in (None, "all") and i.module != "router"]
    packed = sum(1 for i in infos.values() if i.expert == "all" and i.module != "router")
    experts = None
    if names:
        try:
            experts = overlap(names, lambda n: (infos[n].layer, expert_label(infos[n].expert)))
        except MaskError:  # every expert tensor left out: the main report's notes say which
            experts = None
    mtp = {info.layer for info in infos.values() if info.block == "mtp" and info.layer is not None}
    return FilesOverlap(report, experts, len(common), partial, tuple(sorted(mtp)), packed, tuple(notes))


def expert_label(expert) -> str:
    """An expert as the Sparsity page's heatmap names it: E0, E1, ..., and ``shared``."""
    return "shared" if str(expert) == "shared" else f"E{expert}"


def files_overlap_task(paths: Sequence[str], labels: Sequence[str]) -> FilesOverlap:
    """On a worker (or here): read the mask files and overlap them (:func:`sets_overlap`)."""
    from subnetviz.analysis.overlap_counts import split_bytes
    from subnetviz.config import require_memory
    from subnetviz.masks import load_mask_set, packed_bytes

    # the masks held together, bit-packed, and the reads of a fused tensor's parts (q, k, v: a block of bits at a
    # time, whatever the tensor): checked before the first is read (each load checks itself alone)
    held = sum(packed_bytes(p) for p in paths) + split_bytes(len(paths))
    require_memory(f"The overlap of {len(paths)} masks", held)
    return sets_overlap([load_mask_set(p, packed=True) for p in paths], labels)  # each file through the read gate


def files_overlap(
    paths: Sequence[str],
    labels: Sequence[str],
    *,
    address: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> FilesOverlap:
    """The :class:`FilesOverlap` of the mask files ``paths`` (named ``labels``): on the cluster at
    ``address``, the files read there; with none, here."""
    paths, labels = [str(Path(p)) for p in paths], list(labels)
    address = cluster.resolve_address(address)
    if not address:
        return files_overlap_task(paths, labels)
    return cluster.drive("overlap", {"paths": paths, "labels": labels}, address, progress, 1, __name__)


# --- in the driver process ------------------------------------------------------------------------
KINDS = ("bigram", "behavior", "overlap")


def run_kind(request: dict, ray_kw: dict):
    """In the driver (:func:`subnetviz.jobs.cluster.main`): ``request``'s work as one Ray task; a disk
    entry published as the local path publishes it, or the result itself (the overlap)."""
    from subnetviz.cache import CacheEntry
    from subnetviz.jobs import cluster_pages
    from subnetviz.jobs.fanout import ray_map

    kind = request["kind"]
    if kind == "overlap":
        return ray_map(cluster_pages.files_overlap_task, [(request["paths"], request["labels"])], **ray_kw)[0]
    folder = Path(request["folder"])
    if kind == "bigram":
        from subnetviz.bigram.store import _write_files

        args = (request["model"], request["mask"], request["corpus"], request["optimal"])
        result, gens = ray_map(cluster_pages.bigram_task, [args], **ray_kw)[0]
        with CacheEntry("bigram", folder.name, folder).publish() as out:
            _write_files(out, result, gens)
        return None
    from subnetviz.analysis.behavior import write_behavior

    report = ray_map(cluster_pages.behavior_task, [(request["config"],)], **ray_kw)[0]
    with CacheEntry("behavior", folder.name, folder).publish() as out:
        write_behavior(report, out)
    return None
