"""The streaming pass of the update analysis: one base against N finetuned checkpoints.

:func:`analyze_updates` walks the aligned tensors once: each base tensor is read once, then each
finetuned tensor in turn is compared with it (:func:`~subnetviz.analysis.sparsity.compare_pair`)
and, for 2-D tensors when spectra are on, Δ's spectrum is taken. Only one tensor pair (plus the
small per-tensor results and the bit-packed update masks) is in memory at a time, and the next
step's tensors are read in a background thread while the current ones are compared
(:func:`prefetched`). Import these names from :mod:`subnetviz.analysis.updates`, which re-exports
them beside the on-disk format and the cache.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis import bits_jit
from subnetviz.analysis.bits import INT_VIEW
from subnetviz.analysis.overlap import MAX_MASKS, OverlapReport, VocabularyRows, held_by_every, mask_overlap
from subnetviz.analysis.quant import (
    SIDE_COLUMNS,
    FormLog,
    check_finite_stored,
    checkpoint_forms,
    compare_aligned,
    side_row,
)
from subnetviz.analysis.sparsity import (
    SparsityOptions,
    SparsityReport,
    compare_views,
    fused_part_criteria,
    fused_part_rows,
    stats_row,
    stored_kernels,
    summarize,
)
from subnetviz.analysis.spectra import (
    STATE_SPACE_PARAMS,
    SpectrumTable,
    skip_reason,
    skipped_spectrum,
    update_spectrum,
)
from subnetviz.checkpoints import Checkpoint, align, open_checkpoint, read_aligned
from subnetviz.checkpoints.adapters import open_finetune
from subnetviz.checkpoints.experts_layout import match_layouts
from subnetviz.checkpoints.naming import NORM_MODULES
from subnetviz.checkpoints.sources import checkpoint_label, escaped, record_path
from subnetviz.config import resolve_device
from subnetviz.errors import CheckpointError, MaskError, NonFiniteError
from subnetviz.masks import PackedMasks

ProgressFn = Callable[[int, int, str], None]
GROUP_ENTRIES = 1 << 23  # entries read ahead per group of small tensors (16 MB of bf16)
_SIDE = ("buffer", "scale")  # stored forms listed apart from the weights (read by side_row)
_NP_VIEW = {t: np.dtype(str(v)[6:]) for t, v in INT_VIEW.items()}  # torch.bfloat16 -> int16, ...


@dataclass(frozen=True)
class SpectraOptions:
    """Spectra of each 2-D update. ``max_dim``: matrices with a longer side (vocabulary-sized embeddings and
    output heads: 128k to 262k rows in current releases) are skipped with a note; every other weight matrix,
    up to the 53,248-wide MLPs of the largest dense models, is decomposed (the paper's Table 2 averages over
    all of them). A matrix whose decomposition would not fit in the memory available is skipped with a note."""

    enabled: bool = True
    baseline: bool = True
    max_dim: int | None = 65536
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
    # label -> where that checkpoint was read (an absolute path, or a hub id with its commit), the base under ""
    paths: dict[str, str] = field(default_factory=dict)

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

    def spectra_located(self) -> pd.DataFrame:
        """:meth:`spectra_table` with each matrix's layer, module, expert and ``mtp`` (a multi-token-prediction
        module's) from the tensors table: an expert of a packed 3-D tensor, named ``key[e]``, takes its tensor's
        layer and module and ``e`` as its expert. Each model's rows from its own tensors table (a finetune that
        unties and stores ``lm_head`` had no module where the first model ties it), else the first model's."""
        spec = self.spectra_table()
        if not len(spec):
            return spec

        def located(t: pd.DataFrame) -> pd.DataFrame:
            m = t[[c for c in ("key", "layer", "module", "expert") if c in t.columns]].drop_duplicates("key")
            return m.assign(mtp=t.loc[m.index, "block"].eq("mtp") if "block" in t.columns else False)

        meta = located(self.reports[0].tensors)
        own = pd.concat([located(r.tensors).assign(model=m) for m, r in zip(self.labels, self.reports, strict=True)])
        names = spec["name"].astype(str)
        part = names.str.extract(r"^(?P<key>.*?)(?:\[(?P<slice>\d{1,9})\])?$")
        whole = names.isin(meta["key"])  # a tensor whose own name ends in "[3]" is that tensor, not a slice
        key, piece = part["key"].where(~whole, names), part["slice"].where(~whole)
        out = spec.assign(key=key, slice=piece).merge(meta, on="key", how="left")
        mine = out[["model", "key"]].merge(own, on=["model", "key"], how="left", indicator=True)  # (same rows)
        found = (mine.pop("_merge") == "both").to_numpy()
        for c in meta.columns.drop("key"):
            out[c] = out[c].where(~found, mine[c].to_numpy())
        if "expert" in out.columns:
            out["expert"] = out["slice"].where(out["slice"].notna(), out["expert"])
        else:
            out["expert"] = out["slice"]
        return out.drop(columns=["key", "slice"])

    def sigmas(self) -> pd.DataFrame:
        if self.sigma_frame is not None:
            return self.sigma_frame
        if not self.spectra:
            return pd.DataFrame(columns=["model", "name", "index", "sigma", "kind"])
        return pd.concat([t.sigma_frame().assign(model=m) for m, t in self.spectra.items()], ignore_index=True)


def _label_for(spec: str, used: set[str]) -> str:
    """A model's label (:func:`~subnetviz.checkpoints.sources.checkpoint_label`: a hub id as given, a snapshot
    folder by its repository, ``…/dpo/model.safetensors`` as ``dpo``, not ``model.safetensors``, whose mask would
    be ``model.safetensors.safetensors``), made unique with -2, -3, …"""
    base = checkpoint_label(spec)
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
    walk = _Walk(base, finetuned, labels, options, spectra, resolve_device(device))
    keys = walk.keys()
    # consecutive small tensors are read ahead together (one thread handoff per group, not per tensor); the
    # first group's pages are mapped while it is compared, not before (it is often the embedding alone)
    stream = itertools.chain.from_iterable(prefetched(walk.groups(keys), walk.load_group, first=walk.load_first))
    for step, (key, loaded) in enumerate(zip(keys, stream, strict=True)):
        if progress:
            progress(step, len(keys), key)
        if isinstance(loaded, BaseException):  # raised at its own step, in order
            raise loaded
        for i in range(len(walk.cks)):
            walk.step(i, key, loaded)
        loaded.clear()  # freed before the next group's tensors arrive: at most two groups in memory
    if progress:
        progress(len(keys), len(keys), "done")
    return walk.result(time.perf_counter() - t0)


# integer forms never dequantised (compressed-tensors' weight_packed only where ct_packed does not unpack it)
_INT_CODE_SUFFIXES = ("qweight", "qzeros", "g_idx", "weight_packed", "weight_shape")


class _Walk:
    """The state of one :func:`analyze_updates` pass: the checkpoints, their stored forms and
    alignments, and per finetuned model the rows, parts, packed masks, row/column counts,
    spectra and side rows collected so far."""

    def __init__(self, base, finetuned, labels, options: SparsityOptions, spectra: SpectraOptions | None, dev: str):
        self.ck_base = base if isinstance(base, Checkpoint) else open_checkpoint(base)
        self.cks = [open_finetune(f, self.ck_base) for f in finetuned]  # a PEFT adapter folder is merged onto the base
        used: set[str] = set()
        # as UTF-8 text (a name given with a byte that is not UTF-8 too): every table and file written takes them
        self.labels = [escaped(x) for x in labels] if labels else [_label_for(c.spec, used) for c in self.cks]
        match_layouts([self.ck_base, *self.cks])  # packed experts read as another's per-expert tensors
        # Stored forms first: a malformed quantized checkpoint is named before any alignment message.
        self.forms_base, *self.forms = [checkpoint_forms(c) for c in (self.ck_base, *self.cks)]
        self.alignments = [align([self.ck_base, c]) for c in self.cks]
        self.per_key = [{t.key: t for t in al.tensors} for al in self.alignments]
        for i, pk in enumerate(self.per_key):  # before any tensor is read
            for at in pk.values():
                self._check_forms(at, i)
        self.table = self.ck_base.names_table
        self.options, self.spectra, self.dev = options, spectra, dev
        self.log = FormLog()
        n = len(self.cks)
        self.rows: list[list[dict]] = [[] for _ in range(n)]
        self.parts: list[list[dict]] = [[] for _ in range(n)]
        self.masks: list[PackedMasks] = [PackedMasks() for _ in range(n)]  # 1 bit per parameter in memory
        self.row_col: list[dict] = [{} for _ in range(n)]
        self.spec_results: list[list] = [[] for _ in range(n)]
        self.side: list[list[dict]] = [[] for _ in range(n)]
        self.notes = [x for x in [self.table.notice] if x] + [f"base: {escaped(n)}" for n in self.ck_base.notes]
        unknown = [
            x for x in self.table.unmatched(self.ck_base.names) if self.forms_base[x].kind not in ("buffer", "scale")
        ]
        if unknown:
            self.notes.append(
                f"{len(unknown)} tensor(s) match no {self.table.family or 'known'} naming table and are labelled "
                f"'other' (e.g. {', '.join(unknown[:5])}); per-module views leave them out of every module."
            )

    def keys(self) -> list[str]:
        """The base's tensors in order, then those only some finetuned model aligns."""
        keys = [t.key for t in self.alignments[0].tensors]
        keys += [k for pk in self.per_key[1:] for k in pk if k not in self.per_key[0]]
        return list(dict.fromkeys(keys))

    def _check_forms(self, at, i: int) -> None:
        """A weight on one side stored as integers on the other is no buffer: one line naming it. (Any non-float
        tensor is a buffer, and either side being one made the pair one: a norm saved as int32 in the finetune
        left the weight sparsity with no word but a buffers note.) Buffers by name are buffers on both sides."""
        fa, fb = self.forms_base[at.names[0]], self.forms[i][at.names[1]]
        if (fa.kind == "buffer") == (fb.kind == "buffer") or "scale" in (fa.kind, fb.kind):
            return
        if at.names[0].rpartition(".")[2] not in ("weight", "bias"):  # a buffer by its name's look: kept as one
            return
        da, db = (
            str(ck.meta(n).dtype).replace("torch.", "")
            for ck, n in ((self.ck_base, at.names[0]), (self.cks[i], at.names[1]))
        )
        raise CheckpointError(
            f"{self.cks[i].spec}: {at.names[1]!r} is stored as {db} there and as {da} in the base "
            f"({self.ck_base.spec}); a weight and an integer or bool tensor cannot be compared."
        )

    def is_side(self, at, i: int) -> bool:  # buffers and scales: listed apart, read by side_row
        return self.forms_base[at.names[0]].kind in _SIDE or self.forms[i][at.names[1]].kind in _SIDE

    def groups(self, keys: list[str]) -> list[list[str]]:
        """``keys`` cut into runs of consecutive keys of at most :data:`GROUP_ENTRIES` entries read in
        all (the base's and every finetuned model's tensor; a larger tensor is a group of its own)."""
        out: list[list[str]] = []
        total = 0
        for key in keys:
            sizes = [math.prod(pk[key].shape) for pk in self.per_key if key in pk]
            n = sizes[0] + sum(sizes)  # the base's tensor once, each finetuned model's
            if out and total + n <= GROUP_ENTRIES:
                out[-1].append(key)
                total += n
            else:
                out.append([key])
                total = n
        return out

    def load_group(self, keys: list[str], pages: list | None = None) -> list:
        """:meth:`load` of each key; a key whose read fails gets its exception, raised at its step. The
        pages of the tensors the comparison reads itself are mapped here, or, when ``pages`` is given,
        listed in it as (checkpoint, name) to be mapped later (:func:`_map_pages`)."""
        todo: list = [] if pages is None else pages
        out: list = []
        for key in keys:
            try:
                out.append(self.load(key, todo))
            except Exception as exc:  # noqa: BLE001 (re-raised by analyze_updates at this key's step)
                out.append(exc)
        if pages is None:
            _map_pages(todo)
        return out

    def load_first(self, keys: list[str]) -> tuple[list, Callable[[], None]]:
        """:meth:`load_group` of the first group in the caller's thread, and the mapping of its pages to run
        in the background while the caller compares it (then the comparison's faults and the mapping
        share the work, and nothing waits for all of it before the first step)."""
        pages: list = []
        return self.load_group(keys, pages), lambda: _map_pages(pages)

    def load(self, key: str, pages: list) -> dict:
        """What one step compares, read ahead. A float pair that the compiled pass compares as stored
        (:func:`~subnetviz.analysis.sparsity.stored_kernels`) is handed over as the integer views of the
        mapped files (``("x", rows)``, and ``("y", i)``: the view, the kernels and the dtype), not read here:
        that pass checks them finite as it compares them, so each tensor's bytes are read once; they are
        added to ``pages`` as (checkpoint, name), whose pages the caller maps ahead
        (:meth:`~subnetviz.checkpoints.sources.Checkpoint.populate`). Every other pair is read here as
        tensors (``("a", rows)``, ``("b", i)``) and checked finite.
        Few Python steps per tensor: a model has hundreds, most of them small."""
        out, cpu = {}, self.dev == "cpu"
        for i, ck in enumerate(self.cks):
            at = self.per_key[i].get(key)
            if at is None:
                continue
            fa, fb = self.forms_base[at.names[0]], self.forms[i][at.names[1]]
            if fa.kind in _SIDE or fb.kind in _SIDE:
                continue
            k = self.kernels(at, i) if fa.kind == fb.kind == "float" else None
            if k is not None:
                kx = ("x", at.rows)
                if kx not in out:
                    out[kx] = _int_view(self.ck_base, at, 0)
                    pages.append((self.ck_base, at.names[0]))
                out["y", i] = (_int_view(ck, at, 1), k, ck.meta(at.names[1]).dtype)
                pages.append((ck, at.names[1]))
                continue
            ka = ("a", at.rows)
            if ka not in out:
                out[ka] = read_aligned(self.ck_base, at, 0, "cpu")
                _check_read(self.ck_base, at, 0, out[ka])
            b = out["b", i] = read_aligned(ck, at, 1, "cpu")
            _check_read(ck, at, 1, b)
        return out if cpu else {k: _to_device(x, self.dev) for k, x in out.items()}

    def kernels(self, at, i: int):
        """The compiled kernels when finetuned model ``i``'s float pair ``at`` is compared as stored by them
        (:func:`~subnetviz.analysis.sparsity.stored_kernels`), else None."""
        ma, mb = self.ck_base.meta(at.names[0]), self.cks[i].meta(at.names[1])
        return stored_kernels(ma.dtype, mb.dtype, math.prod(at.shape), self.options, self.dev)

    def step(self, i: int, key: str, loaded: dict) -> None:
        """Finetuned model ``i``'s tensor ``key``: a side row, or the weight pair compared."""
        at = self.per_key[i].get(key)
        if at is None:
            return
        ck, fa, fb = self.cks[i], self.forms_base[at.names[0]], self.forms[i][at.names[1]]
        name = at.name  # (a head one side ties to its embedding: the head's own name, not the embedding's)
        info = self.table.describe(name)
        if self.is_side(at, i):
            row = side_row(self.labels[i], key, at, info, self.ck_base, ck, fa, fb, self.dev, self.log, i)
            self.side[i].append(row)
            return
        try:
            views = loaded.pop(("y", i), None)
            if views is not None:  # integer views of a float pair compared as stored, and its kernels (see load)
                x, (y, k, dtype) = loaded["x", at.rows], views
                st = compare_views(k, x, y, dtype, self.options, name=at.names[0], packed=True)
                changed_codes, delta_fn = st.changed, _delta_of_views(x, y, dtype)
                pair = lambda: (torch.from_numpy(x).view(dtype), torch.from_numpy(y).view(dtype))  # noqa: E731
            else:
                a, b = loaded["a", at.rows], loaded.pop(("b", i))
                st, changed_codes, delta_fn = compare_aligned(
                    a, b, fa, fb, at, self.ck_base, ck, self.options, self.dev, self.log, i, packed=True
                )
                pair = _float_pair(a, b, fa, fb, self.options)
        except NonFiniteError as exc:  # named by file and tensor where the pass checked them (see load)
            _check_read(self.ck_base, at, 0, read_aligned(self.ck_base, at, 0, "cpu"))
            _check_read(ck, at, 1, read_aligned(ck, at, 1, "cpu"))
            raise NonFiniteError(f"{ck.spec}: {exc}") from None
        # (GPTQ's words compared as their codes: the shape of the codes, k to a word, as the mask is saved)
        shown = (st.numel // at.shape[-1], at.shape[-1]) if fb.kind == "codes" and fb.unpack else at.shape
        row = stats_row(self.labels[i], key, name, info, shown, st, self.options)
        row["rows_compared"] = at.rows  # set when the vocabulary was resized (shared rows only)
        row["stored_as"] = fb.label if fa.label == fb.label else f"{fa.label} -> {fb.label}"
        row["changed_codes"] = changed_codes
        row["expert"] = None if info.expert is None else str(info.expert)
        self.rows[i].append(row)
        parts = fused_part_rows(self.table, name, key, at.shape, st) or [
            {"key": key, "module": m, "numel": n, "changed": c}
            for m, n, c in self.table.part_counts(name, at.shape, st.row_counts, st.col_counts)
        ]
        if parts and pair is not None and info.expert != "all":  # (packed experts: split by counts, exact only)
            _add_part_criteria(parts, fused_part_criteria(self.table, name, *pair(), self.options))
        self.parts[i].extend(parts)
        if st.mask_bits is not None:
            self.masks[i].add_bits(name, st.mask_bits, tuple(at.shape))
        elif st.mask is not None:
            self.masks[i].add(name, st.mask)
        if st.row_counts is not None and len(at.shape) >= 2:
            self.row_col[i][key] = (st.row_counts, st.col_counts)
        sp = self.spectra
        if sp is None or not sp.enabled or info.param == "bias":
            return  # (gpt-oss's packed biases are 2-D, one row per expert: no matrix to decompose)
        float_pair = views is not None or fa.kind == fb.kind == "float"
        if not float_pair and packed_experts(at.shape, info):  # said per expert, as its float experts are listed
            reason = (
                f"skipped, packed experts stored quantized on a side ({row['stored_as']}): a packed tensor's "
                "experts are decomposed one by one only as float weights"
            )
            shape = tuple(int(s) for s in at.shape[1:])
            self.spec_results[i] += [skipped_spectrum(f"{key}[{e}]", shape, reason) for e in range(int(at.shape[0]))]
            return
        if delta_fn is None:
            return
        for name, e in spectrum_parts(key, at.shape, info, float_pair):
            shape = tuple(int(s) for s in (at.shape if e is None else at.shape[1:]))
            reason = skip_reason(shape, sp.max_dim) or _memory_reason(shape, sp.baseline, self.dev)
            if reason:  # no float64 Δ of an embedding (1 GB for Qwen2.5-0.5B's, 13 GB for a 7B's)
                self.spec_results[i].append(skipped_spectrum(name, shape, reason))
                continue
            d = delta_fn() if e is None else delta_fn(e)
            self.spec_results[i].append(
                update_spectrum(
                    name, d, baseline=sp.baseline, seed=sp.seed, method=sp.method, max_dim=sp.max_dim, device=self.dev
                )
            )

    def left_out(self, i: int) -> list[str]:
        """The alignment's report (tensors in only one of the pair, resized vocabularies), headed by what share of
        the stored entries was not compared, and why when it is integer codes of a quantized form."""
        al = self.alignments[i]
        forms = {0: self.forms_base, 1: self.forms[i]}

        def buffer(j: int, n: str) -> bool:  # (a quantized form's integer companions, g_idx..., are no buffers)
            return forms[j][n].kind == "buffer" and n.rsplit(".", 1)[-1] not in _INT_CODE_SUFFIXES

        # Buffers on one side only (the causal masks and rotary frequencies older saves kept, transformers 5 does
        # not) are no parameters: listed apart and out of the share below (GPT-2's release read 20 % not compared).
        buffers = {j: {n for n in names if buffer(j, n)} for j, names in al.only_in.items()}
        lines = al.report(buffers)
        # (a quantized side's scales and zero points were applied to its weights, not left out: against a float base
        # they stand on one side only, and NVFP4's read as 6 % of the model not compared)
        left = {
            j: [n for n in names if forms[j][n].kind != "scale" and n not in buffers[j]]
            for j, names in al.only_in.items()
        }
        left = {j: names for j, names in left.items() if names}
        if not left:
            return lines
        sizes = {j: sum(math.prod(al.checkpoints[j].meta(n).shape) for n in names) for j, names in left.items()}
        held = {j: [n for n in ck.names if not buffer(j, n)] for j, ck in enumerate(al.checkpoints)}
        stored = {j: sum(math.prod(ck.meta(n).shape) for n in held[j]) for j, ck in enumerate(al.checkpoints)}
        aside = {j: len(held[j]) < len(ck.names) for j, ck in enumerate(al.checkpoints)}
        head = "; ".join(
            f"{len(left[j]):,} tensor(s) of {al.checkpoints[j].spec}, {sizes[j]:,} of its {stored[j]:,} stored entries "
            f"{'(buffers aside) ' if aside[j] else ''}({sizes[j] / max(stored[j], 1):.1%})"
            for j in sorted(left)
        )
        codes = sorted({n.rsplit(".", 1)[-1] for names in left.values() for n in names} & set(_INT_CODE_SUFFIXES))
        why = (
            f" They include quantized integer codes ({', '.join(codes)}: GPTQ, AWQ, or compressed-tensors' packed "
            "words of a width not unpacked here: 3, 5, 6 or 7 bits) "
            "where the other side stores float weights; such codes are not dequantised here, so those layers are "
            "not compared. Compare checkpoints stored in the same form."
            if codes
            else ""
        )
        return [f"Not compared (in only one of the pair): {head}. Sparsity and density are over the rest.{why}", *lines]

    @property
    def part_columns(self) -> list[str]:
        """The parts table's columns: a fused tensor's part, its entries and changed counts under every criterion
        (NaN under the tolerances and η where only the exact split is known: see :func:`_add_part_criteria`)."""
        tols = [f"changed@{t:g}" for t in self.options.tolerances]
        return ["key", "module", "numel", "changed", *tols, "changed_rel"]

    def model_notes(self, i: int) -> list[str]:
        return [escaped(n) for n in getattr(self.cks[i], "notes", [])] + self.log.notes(i)

    def result(self, seconds: float) -> UpdateAnalysis:
        reports = [
            SparsityReport(
                self.labels[i],
                self.recorded_base,
                self.options,
                pd.DataFrame(self.rows[i]),
                self.masks[i],
                self.row_col[i],
                pd.DataFrame(self.parts[i], columns=self.part_columns),
                self.notes + self.model_notes(i) + self.left_out(i),
                pd.DataFrame(self.side[i], columns=SIDE_COLUMNS),
            )
            for i in range(len(self.cks))
        ]
        spec = None
        if self.spectra is not None and self.spectra.enabled:
            spec = {self.labels[i]: SpectrumTable(tuple(self.spec_results[i])) for i in range(len(self.cks))}
        # Per-model notes on stored forms (buffers, mixed precision, FP8 / int8 / codes, adapters) also at the
        # analysis level, labelled, where the pages list notes.
        # What was not compared too: GPTQ layers against a float base were left out with no word outside a
        # report's own notes, which no page, CLI line or summary showed.
        notes = self.notes + [
            f"{self.labels[i]}: {n}" for i in range(len(self.cks)) for n in self.model_notes(i) + self.left_out(i)
        ]
        overlap, overlap_notes = self.overlap()
        notes += [OVERLAP_NOTE + n for n in overlap_notes]
        # (as UTF-8 text, a byte of a folder's name that is not UTF-8 escaped: summary.json and the masks' headers
        # hold them, and a JSON reader refuses a lone surrogate)
        paths = {
            "": escaped(record_path(self.ck_base)),
            **{lab: escaped(record_path(c)) for lab, c in zip(self.labels, self.cks, strict=True)},
        }
        return UpdateAnalysis(
            self.recorded_base, self.labels, reports, spec, None, None, overlap, notes, seconds, paths=paths
        )

    @property
    def recorded_base(self) -> str:
        """The base as the results name it (summary.json, the masks' provenance): a hub id with the commit of the
        snapshot read (``acme/tiny-base@<40 hex>``), which ``refs/main`` no longer names once a newer revision is
        downloaded; any other checkpoint by its spec (a byte of it that is not UTF-8 escaped: :func:`escaped`)."""
        return escaped(str(getattr(self.ck_base, "source", self.ck_base.spec)))

    def overlap(self) -> tuple[OverlapReport | None, list[str]]:
        """The overlap of the models' update masks and its notes (tensors compared over shared rows only, or
        why there is none: more models than the N-way counting takes, or no tensor to compare). It never
        fails the analysis: the reports stand without it."""
        if len(self.cks) < 2 or not self.options.keep_masks:
            return None, []
        return overlap_of(self.masks, self.labels, self.table)


OVERLAP_NOTE = "Overlap of the update masks: "  # the analysis notes' prefix for the overlap's (the report's section)


def overlap_of(masks: Sequence, labels: Sequence[str], table) -> tuple[OverlapReport | None, list[str]]:
    """The overlap of N models' update masks (``masks``: name -> mask each, bool or bit-packed) over the tensors
    all of them hold, grouped by (layer, module) of the naming ``table``, and its notes (tensors some models lack,
    left out; tensors compared over a resized vocabulary's shared rows only, the table's vocabulary alone; or why
    there is none: more models than the N-way counting takes, or no tensor to compare). It never fails: the
    reports stand without it. The local pass and a cluster's merge both use it."""
    if len(masks) > MAX_MASKS:  # 2**N regions: the N-way counting stops at MAX_MASKS masks
        return None, [
            f"not computed for {len(masks)} models; the N-way overlap (Venn, UpSet, pairwise, consensus) "
            f"takes at most {MAX_MASKS} masks. Each model's mask is kept (in its report, and saved with the "
            "analysis): the Overlap page compares up to 8 of them at a time."
        ]
    # a tensor some finetunes lack (not saved, not aligned) is left out, said with each model's entries in it
    common, missing = held_by_every(masks, labels)
    sets = [MaskSubset(m, common) for m in masks]  # unpacked one tensor at a time by the overlap pass
    describe = table.describe
    try:  # a vocabulary resized in some finetunes only: the shared leading rows (said in the notes)
        report = mask_overlap(
            sets,
            list(labels),
            group_of=lambda n: (describe(n).layer, describe(n).module),
            other_shapes="skip",
            shares_rows=VocabularyRows(table),
        )
    except MaskError as exc:  # e.g. no tensor left to compare: the reports stand, the overlap is said missing
        return None, [*missing, f"not computed: {exc}"]
    return report, [*missing, *report.notes]


def warm() -> float:
    """Load, ahead of a process's first analysis, what that analysis would otherwise load inside it:
    the compiled kernels (:func:`~subnetviz.analysis.bits_jit.warm`) and pandas' string arrays (the
    first frame with a string column sets up pyarrow's conversions, ~15 ms, once per process).
    Returns the seconds taken."""
    t = time.perf_counter()
    bits_jit.warm()
    pd.DataFrame([{"key": "w", "numel": 1}])
    return time.perf_counter() - t


def prefetched(items: Sequence, load: Callable, first: Callable | None = None) -> Iterator:
    """``load(item)`` for each item in order, the next one read in a background thread while the
    caller works on the current one (a bounded prefetch: one item ahead, so at most two loaded
    items exist when the caller drops each one before asking for the next). Reading releases the
    GIL (safetensors, torch copies), so reading and comparing overlap. Errors surface in order.

    ``first``, when given, loads the first item instead, in the caller's thread: it returns the item's
    value and the rest of its loading, which runs in the background thread (before the next item's
    read) while the caller works on the value.
    """
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="subnetviz-read") as pool:
        start, ahead = 0, None
        if first is not None:
            current, rest = first(items[0])
            pool.submit(rest)
            ahead = pool.submit(load, items[1]) if len(items) > 1 else None
            start = 1
            yield current
            del current
        else:
            ahead = pool.submit(load, items[0])
        for k in range(start, len(items)):
            current = ahead.result()
            ahead = pool.submit(load, items[k + 1]) if k + 1 < len(items) else None
            yield current
            del current


def _float_pair(a: torch.Tensor, b: torch.Tensor, fa, fb, options: SparsityOptions) -> Callable | None:
    """A float pair as :func:`~subnetviz.analysis.quant.compare_aligned` compares it (the base cast to the
    finetune's dtype where they differ and no precision is chosen; a chosen precision is cast by
    :func:`~subnetviz.analysis.sparsity.compare_pair`), for the fused parts' counts; None for a quantized form."""
    if not fa.kind == fb.kind == "float":
        return None
    if options.precision is None and a.dtype != b.dtype:
        return lambda: (a.to(b.dtype), b)
    return lambda: (a, b)


def _add_part_criteria(parts: list[dict], counts: dict[str, dict[str, int]] | None) -> None:
    """The tolerance and η counts of each part of a fused tensor (``counts``: from
    :func:`~subnetviz.analysis.sparsity.fused_part_criteria`) added to its exact rows, where both split it into the
    same parts of the same sizes; otherwise none are added and the tensor is split under the exact criterion
    only (by_layer_module shows it whole under the others)."""
    if counts is None or [p["module"] for p in parts] != list(counts):
        return
    if any(p["numel"] != counts[p["module"]]["numel"] or p["changed"] != counts[p["module"]]["changed"] for p in parts):
        return
    for p in parts:
        p.update({k: v for k, v in counts[p["module"]].items() if k not in ("numel", "changed")})


def _int_view(ck: Checkpoint, at, i: int) -> np.ndarray:
    """Tensor ``i`` of an aligned float pair as its integer view (shared rows only): over the file's map
    where it is mapped (:meth:`~subnetviz.checkpoints.sources.Checkpoint.array`), else read and viewed."""
    dtype = ck.meta(at.names[i]).dtype
    x = ck.array(at.names[i], _NP_VIEW[dtype])
    if x is None:  # not mapped (a merged adapter's tensor, legacy or unaligned data): read, shared rows only
        return read_aligned(ck, at, i, "cpu").contiguous().view(INT_VIEW[dtype]).numpy()
    return x[: at.rows] if at.rows is not None else x


def _delta_of_views(x: np.ndarray, y: np.ndarray, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """The float64 Δ (for spectra) of a float pair given as integer views of ``dtype``; ``e``: of slice ``e``
    alone (one expert of a packed 3-D tensor). Such a pair is compared as stored (one dtype, no precision chosen:
    :func:`~subnetviz.analysis.sparsity.stored_kernels`), so its Δ needs no cast to be the one the mask sees."""

    def delta(e: int | None = None) -> torch.Tensor:
        xe, ye = (x, y) if e is None else (x[e], y[e])
        d = torch.from_numpy(ye).view(dtype).to(torch.float64)
        return d.sub_(torch.from_numpy(xe).view(dtype).to(torch.float64))  # 16 bytes per entry at the peak, not 24

    return delta


def _check_read(ck: Checkpoint, at, i: int, x: torch.Tensor) -> None:
    """Tensor ``i`` of an aligned pair, as read from ``ck``, refused if not finite, named by file and tensor; the
    error carries ``ck.spec`` (the app leaves that finetune out and compares the others)."""
    try:
        check_finite_stored(x, f"{ck.spec} :: {at.names[i]}")
    except NonFiniteError as exc:
        raise NonFiniteError(str(exc), checkpoint=ck.spec) from None


def _map_pages(pages: list) -> None:
    """:meth:`~subnetviz.checkpoints.sources.Checkpoint.populate` of each (checkpoint, name)."""
    for ck, name in pages:
        ck.populate(name)


# Host->GPU copies go through two reused pinned buffers per reading thread (pinning a fresh buffer per
# tensor, as ``x.pin_memory()`` does, costs more than the copy itself): one piece is copied into a
# buffer while the other's transfer runs.
_STAGE_BYTES = 64 << 20
_staging = threading.local()


def _stage(dev: torch.device, nbytes: int):
    """This thread's copy stream, its two pinned buffers (at least ``nbytes`` each, up to
    ``_STAGE_BYTES``) and the events that say when each buffer's last transfer finished."""
    st = getattr(_staging, "by_device", None)
    if st is None:
        st = _staging.by_device = {}
    size = min(_STAGE_BYTES, max(nbytes, 1 << 20))
    cur = st.get(dev)
    if cur is None or cur[1][0].numel() < size:
        if cur is not None:
            cur[0].synchronize()  # the old buffers' transfers are done before they are freed
        stream = cur[0] if cur is not None else torch.cuda.Stream(dev)
        bufs = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        cur = st[dev] = (stream, bufs, [torch.cuda.Event(), torch.cuda.Event()])
    return cur


def _to_device(x: torch.Tensor, device: str) -> torch.Tensor:
    """``x`` (read on the CPU) on ``device``: to a GPU through this thread's pinned staging buffers on a
    side stream, in pieces of at most ``_STAGE_BYTES`` (the caller's stream may use the result at once:
    the copy is complete and the block is recorded on the caller's stream)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return x if dev.type == "cpu" else x.to(dev)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    src = x.contiguous().reshape(-1).view(torch.uint8)
    n = src.numel()
    stream, bufs, done = _stage(dev, n)
    size = bufs[0].numel()
    with torch.cuda.stream(stream):
        y = torch.empty(x.shape, dtype=x.dtype, device=dev)
        dst = y.reshape(-1).view(torch.uint8)
        for k, i0 in enumerate(range(0, n, size)):
            j, m = k % 2, min(size, n - i0)
            done[j].synchronize()  # this buffer's previous transfer has finished
            bufs[j][:m].copy_(src[i0 : i0 + m])
            dst[i0 : i0 + m].copy_(bufs[j][:m], non_blocking=True)
            done[j].record(stream)
    stream.synchronize()
    y.record_stream(torch.cuda.default_stream(dev))
    return y


def spectrum_bytes(shape: tuple[int, ...], baseline: bool) -> int:
    """The memory one Δ's spectrum holds at its peak: the float64 Δ as it is formed (16 bytes per entry), or,
    with the random baseline, Δ and the baseline's permutation and scattered copy (33), and the k × k Gram."""
    numel, k = math.prod(shape), min(shape)
    return (33 if baseline else 16) * numel + 8 * k * k


def _memory_reason(shape: tuple[int, ...], baseline: bool, dev: str) -> str:
    """Why a Δ of ``shape`` is skipped for lack of memory (on the host, and on a CUDA device), or ""."""
    from subnetviz.config import memory_shortfall

    need = spectrum_bytes(shape, baseline)
    short = memory_shortfall(need, dev, need - 8 * math.prod(shape))  # the GPU holds no Δ as it is formed
    return f"skipped, {short}" if short else ""


def spectrum_parts(key: str, shape: Sequence[int], info, float_pair: bool) -> list[tuple[str, int | None]]:
    """The matrices whose spectra the pass takes of one compared weight pair (not a bias), as (name, expert):
    a 2-D matrix itself, or each expert of a packed 3-D tensor (gpt-oss, Llama-4, Granite; ``info`` names the
    tensor), named ``key[e]``, when both sides are float (a quantized pair's Δ comes whole); else none (a
    convolution's 3-D kernel is no stack of matrices, and a norm's weight is scales, however shaped: Cohere's
    per-head q_norm is (heads, head_dim); ``info.module`` says which are norms, as tensors.csv labels them; nor
    are a state-space layer's A_log, D and dt_bias, applied entry by entry whatever their shape:
    :data:`~subnetviz.analysis.spectra.STATE_SPACE_PARAMS`)."""
    if info.module in NORM_MODULES or info.param in STATE_SPACE_PARAMS:
        return []
    if len(shape) == 2:
        return [(key, None)]
    if packed_experts(shape, info) and float_pair:
        return [(f"{key}[{e}]", e) for e in range(int(shape[0]))]
    return []


def packed_experts(shape: Sequence[int], info) -> bool:
    """Whether a weight of ``shape`` (``info``: its naming) is a packed 3-D stack of expert matrices (E, m, n)."""
    return len(shape) == 3 and info.expert == "all" and info.module not in NORM_MODULES


def planned_spectra(base, finetuned: Sequence, spectra: SpectraOptions | None) -> list[tuple[int, int]]:
    """The (m, n) of every matrix whose spectrum :func:`analyze_updates` takes with ``spectra``, for every
    finetuned model, from the checkpoints' headers (what :mod:`subnetviz.analysis.cost` prices). Embedding-sized
    matrices (a side over ``max_dim``), which the pass skips, are left out."""
    if spectra is None or not spectra.enabled:
        return []
    ck_base = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]
    match_layouts([ck_base, *cks])  # as the pass reads them
    table, forms_base = ck_base.names_table, checkpoint_forms(ck_base)
    out: list[tuple[int, int]] = []
    for ck in cks:
        forms = checkpoint_forms(ck)
        for at in align([ck_base, ck]).tensors:
            fa, fb = forms_base[at.names[0]], forms[at.names[1]]
            info = table.describe(at.name)
            if fa.kind in _SIDE or fb.kind in _SIDE or info.param == "bias":
                continue
            parts = spectrum_parts(at.key, at.shape, info, fa.kind == fb.kind == "float")
            shape = tuple(int(s) for s in at.shape[-2:])
            if parts and not skip_reason(shape, spectra.max_dim):  # as the pass skips them (before memory)
                out += [shape] * len(parts)
    return out


class MaskSubset(Mapping):
    """The entries of a mask mapping whose names are in ``keep`` (lazy: nothing is copied)."""

    def __init__(self, masks: Mapping, keep: set[str]):
        self.masks, self.names = masks, [n for n in masks if n in keep]

    def __getitem__(self, name: str):
        return self.masks[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
