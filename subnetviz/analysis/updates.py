"""The update analysis of one base against N finetuned checkpoints, streamed, cached, written.

:func:`analyze_updates` walks the aligned tensors once: each base tensor is read once, then each
finetuned tensor in turn is compared with it (:func:`~subnetviz.analysis.sparsity.compare_pair`)
and, for 2-D tensors when spectra are on, Δ's spectrum is taken. Only one tensor pair (plus the
small per-tensor results and the update masks) is in memory at a time.

Results are written by :func:`write_analysis` (CSV/JSON/safetensors, published atomically with
:func:`subnetviz.cache.atomic_folder`) and cached on disk by :func:`cached_analysis` in the one
versioned cache (:mod:`subnetviz.cache`), keyed by the checkpoints' fingerprints, every analysis
parameter and :data:`UPDATES_VERSION`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subnetviz import cache as _cache
from subnetviz.analysis.overlap import OverlapReport, mask_overlap
from subnetviz.analysis.quant import (
    SIDE_COLUMNS,
    FormLog,
    check_finite_stored,
    compare_aligned,
    side_row,
    tensor_forms,
)
from subnetviz.analysis.sparsity import (
    ULP_LABELS,
    SparsityOptions,
    SparsityReport,
    fused_part_rows,
    stats_row,
    summarize,
)
from subnetviz.analysis.spectra import SpectrumTable, update_spectrum
from subnetviz.cache import atomic_folder
from subnetviz.checkpoints import Checkpoint, align, open_checkpoint, read_aligned
from subnetviz.checkpoints.adapters import open_finetune
from subnetviz.config import resolve_device
from subnetviz.errors import CheckpointError, NonFiniteError
from subnetviz.masks import MaskSet, PackedMasks, save_mask_set
from subnetviz.version import version_info

ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SpectraOptions:
    """Spectra of each 2-D update. ``max_dim``: larger sides (embeddings) are skipped with a notice."""

    enabled: bool = True
    baseline: bool = True
    max_dim: int | None = 8192
    method: str = "auto"
    seed: int = 0


@dataclass
class UpdateAnalysis:
    """The update analysis of a base against finetuned checkpoints: one :class:`SparsityReport` per model
    (``reports``, in ``labels`` order), optional spectra, the overlap of the models' update masks, and the
    notes on everything not compared one-to-one. Read back from disk, ``source_dir`` names the folder
    (``tensors.csv``, ``summary.json``, ``masks/``) and ``cached`` says whether it was served from the cache.
    """

    base: str
    labels: list[str]
    reports: list[SparsityReport]
    spectra: dict[str, SpectrumTable] | None = None
    spectra_frame: pd.DataFrame | None = None  # loaded from disk: one row per (model, matrix)
    sigma_frame: pd.DataFrame | None = None
    overlap: OverlapReport | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    source_dir: Path | None = None  # set when read back from disk
    cached: bool = False  # served from the on-disk cache

    def summary(self) -> pd.DataFrame:
        return summarize(self.reports)

    def report(self, label: str) -> SparsityReport:
        return self.reports[self.labels.index(label)]

    def spectra_table(self) -> pd.DataFrame:
        if self.spectra_frame is not None:
            return self.spectra_frame
        if not self.spectra:
            return pd.DataFrame()
        return pd.concat([t.to_frame().assign(model=m) for m, t in self.spectra.items()], ignore_index=True)

    def sigmas(self) -> pd.DataFrame:
        if self.sigma_frame is not None:
            return self.sigma_frame
        if not self.spectra:
            return pd.DataFrame(columns=["model", "name", "index", "sigma", "kind"])
        return pd.concat([t.sigma_frame().assign(model=m) for m, t in self.spectra.items()], ignore_index=True)


def _label_for(spec: str, used: set[str]) -> str:
    base = Path(str(spec).rstrip("/")).name or str(spec)
    label, i = base, 2
    while label in used:
        label, i = f"{base}-{i}", i + 1
    used.add(label)
    return label


def analyze_updates(
    base: str | Checkpoint,
    finetuned: Sequence[str | Checkpoint],
    *,
    labels: Sequence[str] | None = None,
    options: SparsityOptions = SparsityOptions(),
    spectra: SpectraOptions | None = SpectraOptions(enabled=False),
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> UpdateAnalysis:
    """Compare ``base`` with every checkpoint in ``finetuned`` in one streaming pass."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    ck_base = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]  # a PEFT adapter folder is merged onto the base
    used: set[str] = set()
    labels = list(labels) if labels else [_label_for(c.spec, used) for c in cks]
    # Stored forms first: a malformed quantized checkpoint is named before any alignment message.
    forms_base, *forms = [_forms(c) for c in (ck_base, *cks)]
    alignments = [align([ck_base, c]) for c in cks]
    table = ck_base.names_table
    notes = [n for n in [table.notice] if n]
    rows: list[list[dict]] = [[] for _ in cks]
    parts: list[list[dict]] = [[] for _ in cks]
    masks: list[PackedMasks] = [PackedMasks() for _ in cks]  # 1 bit per parameter in memory
    row_col: list[dict] = [{} for _ in cks]
    spec_results: list[list] = [[] for _ in cks]
    # Walk the base's tensors in order; each finetuned model contributes where it aligns.
    per_key = [{t.key: t for t in al.tensors} for al in alignments]
    keys = [t.key for t in alignments[0].tensors] + [k for pk in per_key[1:] for k in pk if k not in per_key[0]]
    keys = list(dict.fromkeys(keys))
    unknown = [n for n in table.unmatched(ck_base.names) if forms_base[n].kind not in ("buffer", "scale")]
    if unknown:
        notes.append(
            f"{len(unknown)} tensor(s) match no {table.family or 'known'} naming table and are labelled 'other' "
            f"(e.g. {', '.join(unknown[:5])}); per-module views leave them out of every module."
        )
    side: list[list[dict]] = [[] for _ in cks]
    log = FormLog()

    def is_side(at, i: int) -> bool:  # buffers and scales: listed apart, read by side_row
        fa, fb = forms_base[at.names[0]], forms[i][at.names[1]]
        return "buffer" in (fa.kind, fb.kind) or "scale" in (fa.kind, fb.kind)

    def load(key: str) -> dict:  # the weight tensors one step compares, read (and checked) ahead
        out = {}
        for i, (ck, pk) in enumerate(zip(cks, per_key, strict=True)):
            at = pk.get(key)
            if at is None or is_side(at, i):
                continue
            if ("a", at.rows) not in out:
                out["a", at.rows] = _read_checked(ck_base, at, 0, dev)
            out["b", i] = _read_checked(ck, at, 1, dev)
        return out

    for step, (key, loaded) in enumerate(zip(keys, prefetched(keys, load), strict=True)):
        if progress:
            progress(step, len(keys), key)
        for i, (ck, pk) in enumerate(zip(cks, per_key, strict=True)):
            at = pk.get(key)
            if at is None:
                continue
            fa, fb = forms_base[at.names[0]], forms[i][at.names[1]]
            info = table.describe(at.names[0])
            if is_side(at, i):
                side[i].append(side_row(labels[i], key, at, info, ck_base, ck, fa, fb, dev, log, i))
                continue
            a, b = loaded["a", at.rows], loaded.pop(("b", i))
            try:
                st, changed_eff, delta_fn = compare_aligned(a, b, fa, fb, at, ck_base, ck, options, dev, log, i)
            except NonFiniteError as exc:
                raise NonFiniteError(f"{ck.spec}: {exc}") from None
            rows[i].append(stats_row(labels[i], key, at.names[0], info, at.shape, st, options))
            rows[i][-1]["rows_compared"] = at.rows  # set when the vocabulary was resized (shared rows only)
            rows[i][-1]["stored_as"] = fb.label if fa.kind == fb.kind else f"{fa.label} -> {fb.label}"
            rows[i][-1]["changed_effective"] = changed_eff
            rows[i][-1]["expert"] = None if info.expert is None else str(info.expert)
            split = fused_part_rows(table, at.names[0], key, at.shape, st) or [
                {"key": key, "module": m, "numel": n, "changed": c}
                for m, n, c in table.part_counts(at.names[0], at.shape, st.row_counts, st.col_counts)
            ]
            parts[i].extend(split)
            if st.mask is not None:
                masks[i].add(at.names[0], st.mask)
            if st.row_counts is not None and len(at.shape) >= 2:
                row_col[i][key] = (st.row_counts, st.col_counts)
            if spectra is not None and spectra.enabled and a.dim() == 2 and delta_fn is not None:
                delta = delta_fn()
                spec_results[i].append(
                    update_spectrum(
                        key,
                        delta,
                        baseline=spectra.baseline,
                        seed=spectra.seed,
                        method=spectra.method,
                        max_dim=spectra.max_dim,
                        device=dev,
                    )
                )
                del delta
            del b
        loaded.clear()  # freed before the next step's tensors arrive: at most two steps in memory
    if progress:
        progress(len(keys), len(keys), "done")
    reports = []
    for i in range(len(cks)):
        df = pd.DataFrame(rows[i])
        rep = SparsityReport(
            labels[i],
            ck_base.spec,
            options,
            df,
            masks[i],
            row_col[i],
            pd.DataFrame(parts[i], columns=["key", "module", "numel", "changed"]),
            notes + getattr(cks[i], "notes", []) + log.notes(i) + alignments[i].report(),
            pd.DataFrame(side[i], columns=SIDE_COLUMNS),
        )
        reports.append(rep)
    spec = (
        {labels[i]: SpectrumTable(tuple(spec_results[i])) for i in range(len(cks))}
        if (spectra is not None and spectra.enabled)
        else None
    )
    overlap = None
    if len(cks) >= 2 and options.keep_masks:
        common = set.intersection(*(set(m) for m in masks))
        sets = [_Subset(m, common) for m in masks]  # unpacked one tensor at a time by the overlap pass
        overlap = mask_overlap(sets, labels, group_of=lambda n: (table.describe(n).layer, table.describe(n).module))
    # Per-model notes on stored forms (buffers, mixed precision, FP8 / int8 / codes, adapters) also at the
    # analysis level, labelled, where the pages list notes.
    notes = notes + [f"{labels[i]}: {n}" for i in range(len(cks)) for n in getattr(cks[i], "notes", []) + log.notes(i)]
    return UpdateAnalysis(ck_base.spec, labels, reports, spec, None, None, overlap, notes, time.perf_counter() - t0)


def prefetched(items: Sequence, load: Callable) -> Iterator:
    """``load(item)`` for each item in order, the next one read in a background thread while the
    caller works on the current one (a bounded prefetch: one item ahead, so at most two loaded
    items exist when the caller drops each one before asking for the next). Reading releases the
    GIL (safetensors, torch copies), so reading and comparing overlap. Errors surface in order.
    """
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="subnetviz-read") as pool:
        ahead = pool.submit(load, items[0])
        for k in range(len(items)):
            current = ahead.result()
            ahead = pool.submit(load, items[k + 1]) if k + 1 < len(items) else None
            yield current
            del current


def _read_checked(ck: Checkpoint, at, i: int, device: str) -> torch.Tensor:
    """Tensor ``i`` of an aligned pair, refused if not finite, on ``dev``: read and checked on the
    CPU, then sent to a GPU from pinned memory on a side stream (the caller's stream may use it
    at once: the copy is complete and the block is recorded on the caller's stream)."""
    x = read_aligned(ck, at, i, "cpu")
    check_finite_stored(x, f"{ck.spec} :: {at.names[i]}")  # FP8 codes checked on their bit patterns
    dev = torch.device(device)
    if dev.type != "cuda":
        return x if dev.type == "cpu" else x.to(dev)
    stream = torch.cuda.Stream(dev)
    with torch.cuda.stream(stream):
        y = x.pin_memory().to(dev, non_blocking=True)
    stream.synchronize()
    y.record_stream(torch.cuda.default_stream(dev))
    return y


def _forms(ck: Checkpoint) -> dict:
    try:
        return tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config)
    except CheckpointError as exc:
        raise CheckpointError(f"{ck.spec}: {exc}") from None


class _Subset(Mapping):
    """The entries of a mask mapping whose names are in ``keep`` (lazy: nothing is copied)."""

    def __init__(self, masks: Mapping, keep: set[str]):
        self.masks, self.names = masks, [n for n in masks if n in keep]

    def __getitem__(self, name: str):
        return self.masks[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


# --- on disk ---------------------------------------------------------------------------------------
def write_analysis(analysis: UpdateAnalysis, out_dir: str | os.PathLike, *, params: dict | None = None) -> Path:
    """Write every table, the update masks and a summary; ``out_dir`` appears only when complete."""
    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        _write_files(analysis, tmp, params)
    return out


def _write_files(analysis: UpdateAnalysis, folder: Path, params: dict | None) -> None:
    frames = []
    for rep in analysis.reports:
        df = rep.tensors.copy()
        ulp = np.array(df["ulp_hist"].tolist()) if len(df) else np.zeros((0, len(ULP_LABELS)), dtype=int)
        for j, lab in enumerate(ULP_LABELS):
            df[f"ulp_{lab}"] = ulp[:, j] if len(df) else []
        frames.append(df.drop(columns=["ulp_hist"]))
    tensors = pd.concat(frames, ignore_index=True)
    spec = analysis.spectra_table()
    if len(spec):
        ranks = spec[
            [
                "model",
                "name",
                "rank",
                "rank_frac",
                "effective_rank_99",
                "stable_rank",
                "baseline_rank",
                "baseline_rank_frac",
            ]
        ].rename(columns={"name": "key"})
        tensors = tensors.merge(ranks, on=["model", "key"], how="left")
        spec.to_csv(folder / "spectra.csv", index=False)
        analysis.sigmas().to_parquet(folder / "sigma.parquet", index=False)
    else:
        tensors["rank"] = pd.array([pd.NA] * len(tensors), dtype="Int64")
    tensors.to_csv(folder / "tensors.csv", index=False)
    pd.concat(
        [r.parts.assign(model=r.model) for r in analysis.reports if r.parts is not None], ignore_index=True
    ).to_csv(folder / "parts.csv", index=False)
    side = [r.buffers.assign(model=r.model) for r in analysis.reports if r.buffers is not None and len(r.buffers)]
    (pd.concat(side, ignore_index=True) if side else pd.DataFrame(columns=SIDE_COLUMNS)).to_csv(
        folder / "buffers.csv", index=False
    )
    rc = {}
    for r in analysis.reports:
        for key, (rows_, cols_) in r.row_col.items():
            rc[f"{r.model}::{key}::rows"] = rows_.astype(np.int32)
            rc[f"{r.model}::{key}::cols"] = cols_.astype(np.int32)
    np.savez_compressed(folder / "row_col.npz", **rc)
    (folder / "masks").mkdir()
    mask_files = {}
    for r in analysis.reports:
        if r.masks:
            meta = {
                "method": "update mask",
                "base": r.base,
                "model": r.model,
                "tolerance": r.options.mask_tolerance if r.options.mask_tolerance is not None else "exact",
                "precision": r.options.precision or "stored",
            }
            if "rows_compared" in r.tensors:  # resized vocabularies: the mask covers the shared rows only
                shared = r.tensors.dropna(subset=["rows_compared"])
                if len(shared):
                    meta["shared_rows_only"] = {
                        n: int(k) for n, k in zip(shared["name"], shared["rows_compared"], strict=True)
                    }
            fname = f"{_safe(r.model)}.safetensors"
            save_mask_set(folder / "masks" / fname, MaskSet(r.masks, meta))
            mask_files[r.model] = f"masks/{fname}"
    if analysis.overlap is not None:
        ov = analysis.overlap
        ov.sizes.to_csv(folder / "overlap_sizes.csv", index=False)
        ov.pairwise.to_csv(folder / "overlap_pairwise.csv", index=False)
        reg = ov.regions.copy()
        reg["members"] = reg["members"].map(lambda m: "&".join(m))
        reg.to_csv(folder / "overlap_regions.csv", index=False)
        ov.consensus.to_csv(folder / "overlap_consensus.csv", index=False)
    summary = {
        **version_info(),
        "base": analysis.base,
        "labels": analysis.labels,
        "models": {r.model: r.summary() for r in analysis.reports},
        "sparsity": {r.model: r.sparsity for r in analysis.reports},
        "options": asdict(analysis.reports[0].options) if analysis.reports else {},
        "mask_files": mask_files,
        "notes": analysis.notes,
        "seconds": analysis.seconds,
        "params": params or {},
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in label)


def read_analysis(out_dir: str | os.PathLike) -> UpdateAnalysis:
    """Read back what :func:`write_analysis` wrote (masks stay on disk: see ``mask_path``)."""
    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text())
    tensors = pd.read_csv(out / "tensors.csv", dtype={"expert": "string"})  # "3", "shared", "all": never 3.0
    parts = pd.read_csv(out / "parts.csv") if (out / "parts.csv").exists() else pd.DataFrame()
    side = pd.read_csv(out / "buffers.csv") if (out / "buffers.csv").exists() else pd.DataFrame(columns=SIDE_COLUMNS)
    opts = summary.get("options") or {}
    options = SparsityOptions(
        tolerances=tuple(opts.get("tolerances", ())),
        eta=opts.get("eta", 1e-3),
        precision=opts.get("precision"),
        mask_tolerance=opts.get("mask_tolerance"),
    )
    rc = np.load(out / "row_col.npz")
    reports = []
    for label in summary["labels"]:
        df = tensors[tensors["model"] == label].reset_index(drop=True)
        df["ulp_hist"] = [tuple(int(x) for x in v) for v in df[[f"ulp_{b}" for b in ULP_LABELS]].to_numpy()]
        df["layer"] = df["layer"].astype("Int64")
        rowcol = {}
        prefix = f"{label}::"
        for k in rc.files:
            if k.startswith(prefix) and k.endswith("::rows"):
                key = k[len(prefix) : -len("::rows")]
                rowcol[key] = (rc[k], rc[f"{prefix}{key}::cols"])
        p = parts[parts["model"] == label].drop(columns=["model"]) if len(parts) else None
        buf = side[side["model"] == label].reset_index(drop=True)
        reports.append(
            SparsityReport(
                label, summary["base"], options, df, {}, rowcol, p, summary["models"][label].get("notes", []), buf
            )
        )
    spectra_frame = pd.read_csv(out / "spectra.csv") if (out / "spectra.csv").exists() else None
    sigma = pd.read_parquet(out / "sigma.parquet") if (out / "sigma.parquet").exists() else None
    return UpdateAnalysis(
        summary["base"],
        summary["labels"],
        reports,
        None,
        spectra_frame,
        sigma,
        None,
        summary.get("notes", []),
        summary.get("seconds", 0.0),
        out,
    )


def mask_path(analysis_dir: str | os.PathLike, label: str) -> Path:
    summary = json.loads((Path(analysis_dir) / "summary.json").read_text())
    return Path(analysis_dir) / summary["mask_files"][label]


UPDATES_VERSION = 2  # bump when the analysis would write different numbers or files for the same inputs


def cache_key(
    base: Checkpoint,
    finetuned: Sequence[Checkpoint],
    labels: Sequence[str],
    options: SparsityOptions,
    spectra: SpectraOptions | None,
) -> str:
    """The cache key of an update analysis: every checkpoint's fingerprint, the labels and every option.

    The ULP bin edges are part of the key too: the tables hold one column per bin.
    """
    return _cache.cache_key(
        "updates",
        UPDATES_VERSION,
        base=base.fingerprint,
        finetuned=[c.fingerprint for c in finetuned],
        labels=list(labels),
        options=options,
        spectra=spectra,
        ulp_bins=list(ULP_LABELS),
    )


def cached_analysis(
    base: str,
    finetuned: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    options: SparsityOptions = SparsityOptions(),
    spectra: SpectraOptions | None = SpectraOptions(enabled=False),
    device: str = "auto",
    progress: ProgressFn | None = None,
    cache_root: str | os.PathLike | None = None,
) -> UpdateAnalysis:
    """:func:`analyze_updates` through the on-disk cache (``cache_dir()/updates/<key>``, or
    ``cache_root/<key>``); returns the analysis as read from disk."""
    ck_base = open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]
    used: set[str] = set()
    labels = list(labels) if labels else [_label_for(c.spec, used) for c in cks]
    ent = _cache.entry("updates", cache_key(ck_base, cks, labels, options, spectra), root=cache_root)
    hit, notice = ent.status()  # a damaged entry is removed here and computed again
    if not hit:
        analysis = analyze_updates(
            ck_base, cks, labels=labels, options=options, spectra=spectra, device=device, progress=progress
        )
        with ent.publish() as folder:
            _write_files(analysis, folder, {"base": base, "finetuned": list(finetuned)})
    result = read_analysis(ent.folder)
    result.cached = hit
    if notice:
        result.notes = [notice, *result.notes]
    return result
