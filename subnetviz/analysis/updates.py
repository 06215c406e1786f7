"""The update analysis of one base against N finetuned checkpoints: the pass, its files, its cache.

The streaming pass (:func:`analyze_updates`, :class:`UpdateAnalysis`, :class:`SpectraOptions`) is
:mod:`~subnetviz.analysis.update_pass`, re-exported here. This module owns the results on disk:
:func:`write_analysis` (CSV/JSON/safetensors, published atomically with
:func:`subnetviz.cache.atomic_folder`), :func:`read_analysis`, and :func:`cached_analysis` in the
one versioned cache (:mod:`subnetviz.cache`), keyed by the checkpoints' fingerprints, every
analysis parameter, :data:`UPDATES_VERSION` (the files' layout) and the analysis code's fingerprint.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from subnetviz import cache as _cache
from subnetviz.analysis.quant import SIDE_COLUMNS
from subnetviz.analysis.sparsity import ULP_LABELS, SparsityOptions, SparsityReport
from subnetviz.analysis.update_pass import (  # re-exported: the pass' home before the split
    ProgressFn,
    SpectraOptions,
    UpdateAnalysis,
    _label_for,
    analyze_updates,
    prefetched,
)
from subnetviz.cache import atomic_folder, read_frame, write_manifest
from subnetviz.checkpoints import Checkpoint, open_checkpoint
from subnetviz.checkpoints.adapters import open_finetune
from subnetviz.errors import ConfigError, SubnetvizError
from subnetviz.masks import MaskSet, save_mask_set
from subnetviz.version import version_info

__all__ = [
    "UPDATES_VERSION",
    "ProgressFn",
    "SpectraOptions",
    "UpdateAnalysis",
    "_label_for",
    "analyze_updates",
    "cache_key",
    "cached_analysis",
    "mask_path",
    "prefetched",
    "read_analysis",
    "write_analysis",
]


# --- on disk ---------------------------------------------------------------------------------------
def write_analysis(analysis: UpdateAnalysis, out_dir: str | os.PathLike, *, params: dict | None = None) -> Path:
    """Write every table, the update masks and a summary, and last their manifest (as a cache entry has one:
    :func:`read_analysis` then tells a cut or edited copy); ``out_dir`` appears only when complete."""
    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        _write_files(analysis, tmp, params)
        write_manifest(tmp)
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
        write_parquet(analysis.sigmas(), folder / "sigma.parquet")
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
    mask_files, taken = {}, set()
    for r in analysis.reports:
        if r.masks:
            meta = {
                "method": "update mask",
                "base": r.base,
                "model": r.model,
                "tolerance": r.options.mask_tolerance if r.options.mask_tolerance is not None else "exact",
                "precision": r.options.precision or "stored",
                # where the two were read, and by which code: the label alone matched a user's folder `sft`
                # to the demo zoo's `sft` (the Training page then quoted the zoo run's hyperparameters)
                **({"base_path": analysis.paths[""]} if "" in analysis.paths else {}),
                **({"model_path": analysis.paths[r.model]} if r.model in analysis.paths else {}),
                **version_info(),
            }
            if "rows_compared" in r.tensors:  # resized vocabularies: the mask covers the shared rows only
                shared = r.tensors.dropna(subset=["rows_compared"])
                if len(shared):
                    meta["shared_rows_only"] = {
                        n: int(k) for n, k in zip(shared["name"], shared["rows_compared"], strict=True)
                    }
            fname = _unique(_safe(r.model) or "model", taken) + ".safetensors"
            save_mask_set(folder / "masks" / fname, MaskSet(r.masks, meta))
            mask_files[r.model] = f"masks/{fname}"
    if analysis.overlap is not None:
        ov = analysis.overlap
        ov.sizes.to_csv(folder / "overlap_sizes.csv", index=False)
        ov.pairwise.to_csv(folder / "overlap_pairwise.csv", index=False)
        reg = ov.regions.copy()
        reg["members"] = reg["members"].map(lambda m: "&".join(m))
        reg.to_csv(folder / "overlap_regions.csv", index=False)
        _consensus_table(ov.consensus).to_csv(folder / "overlap_consensus.csv", index=False)
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
        "params": _escaped_strings(params or {}),  # (the paths as given: a folder's name may not be UTF-8)
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def _escaped_strings(value):
    """``value`` (JSON-like: dicts, lists, strings, numbers) with each string and key as UTF-8 text
    (:func:`~subnetviz.checkpoints.sources.escaped`): a path given as it was typed may hold a byte that is not
    UTF-8, which JSON would keep as ``"\\udcff"``, a lone surrogate every JSON reader here refuses."""
    from subnetviz.checkpoints.sources import escaped

    if isinstance(value, str):
        return escaped(value)
    if isinstance(value, dict):
        return {escaped(k) if isinstance(k, str) else k: _escaped_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped_strings(v) for v in value]
    return value


def _consensus_table(consensus: pd.DataFrame) -> pd.DataFrame:
    """The consensus counts as written: a ``(layer, module)`` group as columns ``layer`` (empty for the embeddings
    and head) and ``module``; the file held Python's text of the tuple (``"(None, 'lm_head')"``), which a script had
    to evaluate. Any other group is written as its text."""
    groups = list(consensus["group"])
    if not all(isinstance(g, tuple) and len(g) == 2 for g in groups):
        return consensus.assign(group=[str(g) for g in groups])
    layers = pd.array([g[0] for g in groups], dtype="Int64")
    return pd.DataFrame(
        {"layer": layers, "module": [g[1] for g in groups], "k": consensus["k"], "count": consensus["count"]}
    )


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in label)


def _unique(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ... when another model's mask took it (labels 'a/b' and 'a_b' both
    read ``a_b``: the second mask replaced the first, and both names pointed at it). Compared without case, as
    a case-insensitive file system would."""
    name, n = stem, 1
    while name.lower() in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name.lower())
    return name


def read_analysis(out_dir: str | os.PathLike) -> UpdateAnalysis:
    """Read back what :func:`write_analysis` wrote (masks stay on disk: see ``mask_path``). A folder someone
    edited by hand, or that is no analysis at all, is one line naming it (not a KeyError, a JSON or a CSV
    parser's traceback from somewhere inside)."""
    out = Path(out_dir)
    try:
        return _read_analysis(out)
    except SubnetvizError:
        raise
    except OSError as exc:
        raise ConfigError(f"{out}: cannot read the analysis ({exc.strerror or exc}: {exc.filename}).") from None
    except Exception as exc:  # noqa: BLE001 - anything a hand-edited file raises: JSON, CSV, Parquet, keys, types
        raise ConfigError(
            f"{out}: not an analysis folder as `analyze` writes it ({type(exc).__name__}: {str(exc)[:160]})."
        ) from None


# The files read_analysis and the report (its overlap and subspaces sections) open: checked against the folder's
# manifest, those it lists.
READ_FILES = (
    "summary.json",
    "tensors.csv",
    "parts.csv",
    "buffers.csv",
    "row_col.npz",
    "spectra.csv",
    "sigma.parquet",
    "overlap_pairwise.csv",
    "overlap_regions.csv",
    "overlap_consensus.csv",
    "overlap_sizes.csv",
    "subspaces.csv",
)


# The most one table of an analysis folder (a CSV of READ_FILES) holds, refused past it before it is read: a row is
# about 250 bytes, so this is 17 million rows (a 671B model's ~92 000 tensors for 180 finetunes). pandas holds
# about 6 times a CSV's bytes once read (its text columns as Python strings): :data:`_CSV_HELD` times what the
# folder's tables hold together is compared with the memory available as well.
TABLE_FILE_LIMIT = 4 * 2**30
_CSV_HELD = 8


def _check_files(out: Path) -> None:
    """Refuse, before any of them is opened, a file of ``out`` that :func:`_read_analysis` or the report reads
    (:data:`READ_FILES`, the manifest) but that is not a regular file (links followed): a named pipe blocked the
    reader for good, ``/dev/zero`` grew the CSV parser until memory ran out. Their sizes too: a JSON file within
    :data:`~subnetviz.config.JSON_FILE_LIMIT`, a table within :data:`TABLE_FILE_LIMIT`, the tables together within
    the memory available. A folder without a manifest (a copy whose manifest was deleted, as a refusal advises) is
    read as it is: these are its only checks. ConfigError, one line naming the file."""
    from subnetviz.cache import MANIFEST
    from subnetviz.config import JSON_FILE_LIMIT, not_a_file, require_memory

    tables = 0
    for name in (MANIFEST, *READ_FILES):
        path = out / name
        kind = not_a_file(path)
        if kind:
            raise ConfigError(f"{path}: {kind}, not a regular file as `analyze` writes it; refused before reading.")
        try:
            size = path.stat().st_size
        except OSError:  # (nothing there: its reader says so, or goes without it)
            continue
        limit = JSON_FILE_LIMIT if name.endswith(".json") else TABLE_FILE_LIMIT if name.endswith(".csv") else None
        if limit is not None and size > limit:
            raise ConfigError(
                f"{path}: {size:,} bytes, more than `analyze` writes there ({limit:,}); refused before reading."
            )
        tables += size if name.endswith(".csv") else 0
    require_memory(f"Reading the tables of {out}", _CSV_HELD * tables)


def _read_analysis(out: Path) -> UpdateAnalysis:
    from subnetviz.cache import MANIFEST, verify_manifest

    _check_files(out)  # (the manifest's check reads them too: a named pipe there blocked it)
    if (out / MANIFEST).exists() and (problem := verify_manifest(out, READ_FILES)):  # a truncated or edited copy
        raise ConfigError(
            f"{out}: {problem}; the folder changed after `analyze` wrote it (a cut copy?). Run `analyze` again, or "
            f"delete {MANIFEST} there to read the files as they are."
        )
    summary = json.loads((out / "summary.json").read_text())
    if not isinstance(summary, dict):
        raise ConfigError(f"{out / 'summary.json'}: a JSON {type(summary).__name__}, not the object analyze writes.")
    tensors = read_frame(out / "tensors.csv", dtype={"expert": "string"})  # "3", "shared", "all": never 3.0
    parts = read_frame(out / "parts.csv") if (out / "parts.csv").exists() else pd.DataFrame()
    side = read_frame(out / "buffers.csv") if (out / "buffers.csv").exists() else pd.DataFrame(columns=SIDE_COLUMNS)
    opts = summary.get("options") or {}
    options = SparsityOptions(
        tolerances=tuple(opts.get("tolerances", ())),
        eta=opts.get("eta", 1e-3),
        precision=opts.get("precision"),
        mask_tolerance=opts.get("mask_tolerance"),
    )
    for label in summary["labels"]:  # rows lost (or added) since it was written: said before the files they size
        numel = int(tensors.loc[tensors["model"] == label, "numel"].sum())
        want = (summary.get("models") or {}).get(label, {}).get("numel")
        if want is not None and numel != int(want):
            raise ConfigError(
                f"{out / 'tensors.csv'}: {label!r} has {numel:,} parameters in its rows, "
                f"summary.json says {int(want):,}; the folder is not as `analyze` wrote it."
            )
    _check_counts(out / "tensors.csv", tensors)
    rc = _row_col_arrays(out / "row_col.npz", tensors)
    reports = []
    for label in summary["labels"]:
        df = tensors[tensors["model"] == label].reset_index(drop=True)
        df["ulp_hist"] = [tuple(int(x) for x in v) for v in df[[f"ulp_{b}" for b in ULP_LABELS]].to_numpy()]
        df["layer"] = df["layer"].astype("Int64")
        rowcol = {}
        prefix = f"{label}::"
        for k in rc:
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
    spectra_frame = read_frame(out / "spectra.csv") if (out / "spectra.csv").exists() else None
    sigma = _sigma_frame(out / "sigma.parquet", tensors) if (out / "sigma.parquet").exists() else None
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


def _check_counts(path: Path, tensors: pd.DataFrame) -> None:
    """ConfigError naming ``path`` and the first row whose count of changed entries (``changed``, or one of the
    tolerance sweep's ``changed@tol``) lies outside ``[0, numel]``: a hand-edited file. Read on, it reached the
    report as a sparsity outside [0, 1] (-62499), refused by a figure in words meant for its API's callers, with no
    file named. Values that are not numbers are left to the checks that name them."""
    numel = pd.to_numeric(tensors["numel"], errors="coerce")
    for col in [c for c in tensors.columns if c == "changed" or str(c).startswith("changed@")]:
        count = pd.to_numeric(tensors[col], errors="coerce")
        bad = (count < 0) | (count > numel)
        if bad.any():
            i = bad.to_numpy().nonzero()[0][0]
            raise ConfigError(
                f"{path}: {col} = {_count(count.iloc[i])} for {tensors['key'].iloc[i]!r} of "
                f"{tensors['model'].iloc[i]!r}, which has {_count(numel.iloc[i])} parameters; a count of changed "
                "entries lies between 0 and that. The folder is not as `analyze` wrote it."
            )


def _count(x: float) -> str:
    """A count read from a CSV as a person writes it: ``1,000,000``, a fraction as it is."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def _dims(shape) -> list[int] | None:
    """A tensors.csv shape ("64x16") as its dimensions; None for one of fewer than two, or not written so."""
    dims = str(shape).split("x")
    return [int(d) for d in dims] if len(dims) >= 2 and all(d.isdigit() for d in dims) else None


def _row_counts(tensors: pd.DataFrame) -> dict[str, int]:
    """The length of each array row_col.npz may hold, by its member name: ``MODEL::KEY::rows`` the first
    dimension of a tensor of two or more dimensions in tensors.csv, ``MODEL::KEY::cols`` the product of the
    others (what :func:`write_analysis` writes for it)."""
    out: dict[str, int] = {}
    for model, key, shape in zip(tensors["model"], tensors["key"], tensors["shape"], strict=True):
        if dims := _dims(shape):
            out[f"{model}::{key}::rows"], out[f"{model}::{key}::cols"] = dims[0], math.prod(dims[1:])
    return out


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _row_col_arrays(path: Path, tensors: pd.DataFrame) -> dict[str, np.ndarray]:
    """row_col.npz's arrays, each member's header checked before it is read: a one-dimensional array of whole
    numbers whose length is what tensors.csv says of its tensor (:func:`_row_counts`), and all of them together
    within the memory available. A stranger's folder need not carry a manifest: a member of a few megabytes,
    deflated, declaring 1.5e9 entries made np.load take gigabytes (a larger one, the process) for a tensor of
    64 rows. ConfigError naming the file and the member."""
    from subnetviz.config import require_memory

    want, total = _row_counts(tensors), 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():  # (every entry: a name stored twice is checked twice)
                key, where = info.filename.removesuffix(".npy"), f"{path}: member {info.filename[:80]!r}"
                if key not in want:
                    raise ConfigError(f"{where} names no tensor of two or more dimensions in tensors.csv.")
                with z.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version not in _NPY_HEADERS:
                        raise ConfigError(f"{where}: .npy format {version}, not one NumPy writes for row counts.")
                    shape, _, dtype = _NPY_HEADERS[version](fh)
                if dtype.kind not in "iu" or dtype.itemsize > 8 or shape != (want[key],):
                    raise ConfigError(
                        f"{where} declares {dtype} of shape {shape}; its tensor's row or column counts in "
                        f"tensors.csv are ({want[key]},) whole numbers. Refused before reading."
                    )
                total += want[key] * dtype.itemsize
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ConfigError(f"{path}: not the row and column counts `analyze` writes ({str(exc)[:120]}).") from None
    require_memory(f"Reading {path}", total)
    with np.load(path) as rc:
        return {k: rc[k] for k in rc.files}


def _sigma_frame(path: Path, tensors: pd.DataFrame) -> pd.DataFrame:
    """sigma.parquet, its size checked from its footer before it is read: at most two spectra (the update's and
    a random baseline's) of min(rows, cols) values per matrix of tensors.csv (per expert of a packed tensor), and
    what its columns declare unpacked within the memory available. ConfigError naming the file."""
    import pyarrow.parquet as pq

    from subnetviz.config import require_memory

    bound = 0
    for shape in tensors["shape"]:
        if dims := _dims(shape):
            whole = min(dims[0], math.prod(dims[1:]))
            each = dims[0] * min(dims[1], math.prod(dims[2:])) if len(dims) > 2 else 0
            bound += 2 * max(whole, each)
    try:
        with open(path, "rb") as fh:  # (a file object: see :func:`write_parquet`)
            meta = pq.ParquetFile(fh).metadata
        groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
        declared = sum(
            max(g.total_byte_size, sum(g.column(c).total_uncompressed_size for c in range(g.num_columns)))
            for g in groups
        )
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a file that is no Parquet
        raise ConfigError(f"{path}: not a Parquet file as `analyze` writes it ({str(exc)[:120]}).") from None
    if meta.num_rows > bound:
        raise ConfigError(
            f"{path}: {meta.num_rows:,} singular values; the tensors of tensors.csv have at most {bound:,} (two "
            "spectra of min(rows, cols) each). Refused before reading: the folder is not as `analyze` wrote it."
        )
    require_memory(f"Reading {path}", 2 * declared)  # (the Arrow table, and the DataFrame made from it)
    with open(path, "rb") as fh:
        return pd.read_parquet(fh)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as the Parquet file ``path``, written through a file Python opens: pyarrow encodes a path it is
    given as strict UTF-8, and a folder named with a byte that is not UTF-8 (``out\\xff``, a lone surrogate escape
    in Python) ended ``analyze --out`` there in a UnicodeEncodeError traceback."""
    with open(path, "wb") as fh:
        frame.to_parquet(fh, index=False)


def mask_path(analysis_dir: str | os.PathLike, label: str) -> Path:
    summary = json.loads((Path(analysis_dir) / "summary.json").read_text())
    return Path(analysis_dir) / summary["mask_files"][label]


UPDATES_VERSION = 2  # bump when the files change layout (changed numbers: the code fingerprint in the key)


def cache_key(
    base: Checkpoint,
    finetuned: Sequence[Checkpoint],
    labels: Sequence[str],
    options: SparsityOptions,
    spectra: SpectraOptions | None,
) -> str:
    """The cache key of an update analysis: every checkpoint's fingerprint, the labels, every option and the
    code that computes it (:func:`~subnetviz.version.code_fingerprint`).

    The ULP bin edges are part of the key too: the tables hold one column per bin.
    """
    from subnetviz.version import code_fingerprint

    return _cache.cache_key(
        "updates",
        UPDATES_VERSION,
        code=code_fingerprint(),
        base=base.fingerprint,
        finetuned=[c.fingerprint for c in finetuned],
        labels=list(labels),
        options=options,
        spectra=spectra,
        ulp_bins=list(ULP_LABELS),
    )


def _memory_now_allows(folder: Path, spectra: SpectraOptions, device: str) -> str | None:
    """Whether a cached analysis skipped a spectrum for lack of memory that this machine has now: what to say
    when it is computed again, or None. (A skip for memory is a state of the machine when it ran, not of the
    checkpoints: served for good, a matrix would stay without its spectrum once memory was free.)"""
    from subnetviz.analysis.update_pass import _memory_reason
    from subnetviz.config import resolve_device

    path = Path(folder) / "spectra.csv"
    try:
        if MEMORY_SKIP.encode() not in path.read_bytes():  # (the common case: no table to parse, each visit)
            return None
    except OSError:
        return None
    frame = read_frame(path)
    if frame.empty or "note" not in frame:
        return None
    short = frame[frame["note"].astype(str).str.startswith(MEMORY_SKIP) & frame["rows"].notna()]
    if short.empty:
        return None
    dev = resolve_device(device)
    fits = [(int(r), int(c)) for r, c in zip(short["rows"], short["cols"], strict=True)]
    fits = [s for s in fits if not _memory_reason(s, spectra.baseline, dev)]
    if not fits:
        return None
    return (
        f"the cached analysis had skipped {len(short)} spectrum(s) for lack of memory; {len(fits)} fit now: "
        "computed again"
    )


MEMORY_SKIP = "skipped, needs about"  # how a spectrum skipped for lack of memory starts its note


def is_cached(
    base: str,
    finetuned: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    options: SparsityOptions = SparsityOptions(),
    spectra: SpectraOptions | None = SpectraOptions(enabled=False),
    device: str = "auto",
    cache_root: str | os.PathLike | None = None,
) -> bool:
    """Whether :func:`cached_analysis` with these arguments would read its result from the cache (headers only;
    not an entry that it computes again because memory now allows a spectrum it skipped)."""
    ck_base = open_checkpoint(base)
    cks = [open_finetune(f, ck_base) for f in finetuned]
    used: set[str] = set()
    labels = list(labels) if labels else [_label_for(c.spec, used) for c in cks]
    ent = _cache.entry("updates", cache_key(ck_base, cks, labels, options, spectra), root=cache_root)
    if not ent.ready:
        return False
    return not (spectra is not None and spectra.enabled and _memory_now_allows(ent.folder, spectra, device))


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
    stale = hit and spectra is not None and spectra.enabled and _memory_now_allows(ent.folder, spectra, device)
    if stale:
        hit, notice = False, stale
    if not hit:
        analysis = analyze_updates(
            ck_base, cks, labels=labels, options=options, spectra=spectra, device=device, progress=progress
        )
        with ent.publish(replace=bool(stale)) as folder:
            _write_files(analysis, folder, {"base": base, "finetuned": list(finetuned)})
    result = read_analysis(ent.folder)
    result.cached = hit
    if notice:
        result.notes = [notice, *result.notes]
    return result
