"""The Training page's "subnetwork vs full" comparison through the on-disk analysis cache.

:func:`cached_compare_runs` is :func:`subnetviz.analysis.runs.compare_runs` kept in the one
versioned cache (:mod:`subnetviz.cache`, kind ``runs``), keyed by :func:`comparison_key`: each
checkpoint's fingerprint (file paths, identities and headers), with an eval file its stamp and each
model folder's files (config, tokenizer), the tolerances, the code that computes it and
:data:`COMPARISON_VERSION`. The demo build fills it for grpo-s0 vs grpo-sub, so the
page's first open reads tables instead of streaming three models. Tables are Parquet, the rest JSON
(no pickle); a result appears only when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from subnetviz.cache import cache_key, entry, file_stamp, touch, verify_manifest

# Bump when the files change layout. Changed numbers need no bump (2 left buffers and scales out): the key holds
# the fingerprint of the code in :data:`COMPARISON_CODE`.
COMPARISON_VERSION = 2
# The package's code that computes the comparison (:func:`~subnetviz.version.code_fingerprint` of it is in the key):
# the bitwise comparison and the readers it goes through, the held-out accuracy, and this module's tables.
COMPARISON_CODE = (
    "analysis",
    "checkpoints",
    "masks.py",
    "training/evaluate.py",
    "training/data.py",
    "demo/comparison.py",
)
KIND = "runs"
_TABLES = ("per_tensor", "ulp_histogram", "vs_base", "accuracy")


def comparison_key(full, sub, base=None, eval_data=None, tolerances=None) -> str:
    """The cache key of :func:`cached_compare_runs`: each checkpoint's fingerprint; with ``eval_data``, its stamp
    and :func:`model_files` of each model (the accuracy generates with each model's config and tokenizer); the
    tolerances, the code's fingerprint and :data:`COMPARISON_VERSION`."""
    from subnetviz.analysis.thresholds import DEFAULT_TOLERANCES
    from subnetviz.checkpoints.sources import fingerprint  # headers only: no torch for a cache hit
    from subnetviz.version import code_fingerprint

    def fp(path):
        return None if path is None else fingerprint(path)

    return cache_key(
        KIND,
        COMPARISON_VERSION,
        code=code_fingerprint(COMPARISON_CODE),
        full=fp(full),
        sub=fp(sub),
        base=fp(base),
        eval_data=file_stamp(eval_data),
        model_files=model_files(full, sub, base) if eval_data is not None else None,
        tolerances=list(tolerances or DEFAULT_TOLERANCES),
    )


def model_files(*models) -> list[str | None]:
    """:func:`~subnetviz.cache.file_stamp` of each model's folder (None for None): its config.json, which builds the
    model the accuracy generates with, and its tokenizer files, which encode the prompts and decode the answers.
    A spec that is no model folder is stamped as given (the accuracy refuses it)."""
    from subnetviz.checkpoints.models import model_folder
    from subnetviz.errors import SubnetvizError

    def stamp(path):
        try:
            return file_stamp(model_folder(path))
        except SubnetvizError:
            return file_stamp(path)

    return [None if p is None else stamp(p) for p in models]


def is_cached(full, sub, base=None, eval_data=None, cache_root: str | os.PathLike | None = None) -> bool:
    """Whether :func:`cached_compare_runs` of these has its disk cache entry (headers only). Looked at only: a
    damaged entry is left for :func:`cached_compare_runs` to remove and say (removed here, it said nothing)."""
    return _sound(entry(KIND, comparison_key(full, sub, base, eval_data), root=cache_root))


def _sound(ent) -> bool:
    """Whether the cache entry ``ent`` is here and verifies, without removing a damaged one."""
    if not ent.folder.is_dir():
        return False
    touch(ent.folder)  # (as CacheEntry.status: kept by another process's eviction while it is read)
    return verify_manifest(ent.folder) is None


def _found(ent) -> tuple[bool, str | None]:
    """``(ready, notice)`` of ``ent`` (:meth:`~subnetviz.cache.CacheEntry.status`), the notice only where this call
    found the entry damaged and removed it. One kept from an earlier removal is not repeated: the page that removed
    it has said it (``ui.damage_note``, before it computes), and said here too it was shown twice."""
    there = ent.folder.is_dir()
    ready, notice = ent.status()
    return ready, notice if there and not ready else None


def cached_compare_runs(
    full: str | os.PathLike,
    sub: str | os.PathLike,
    base: str | os.PathLike | None = None,
    *,
    eval_data: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    with_notes: bool = False,
):
    """:func:`~subnetviz.analysis.runs.compare_runs` ``(full, sub, base, eval_data=...)`` through the disk
    cache (``cache_dir()/runs/<key>``, or ``cache_root/<key>``): a :class:`RunComparison`. A hit
    imports no torch (the key reads headers; the tables are Parquet).

    ``with_notes``: ``(comparison, notes)``, the notes saying a damaged entry this call found, removed and computed
    again (a comparison has no notes of its own to hold it; dropped, the recomputation was said nowhere)."""
    ent = entry(KIND, comparison_key(full, sub, base, eval_data), root=cache_root)
    ready, damaged = _found(ent)
    if ready:
        result = load_comparison(ent.folder)
    else:
        from subnetviz.analysis.runs import compare_runs

        result = compare_runs(full, sub, base, eval_data=eval_data)
        with ent.publish() as folder:
            _write(folder, result)
    return (result, [damaged] if damaged else []) if with_notes else result


def _write(folder: Path, result) -> None:
    for name in _TABLES:
        frame = getattr(result, name)
        if frame is not None:
            frame.to_parquet(folder / f"{name}.parquet", index=False)
    meta = {
        "full_dir": result.full_dir,
        "sub_dir": result.sub_dir,
        "base_dir": result.base_dir,
        "unmatched": list(result.unmatched),
        "base_unmatched": list(result.base_unmatched),
        "buffers": list(result.buffers),
    }
    (folder / "comparison.json").write_text(json.dumps(meta))


def load_comparison(folder: str | os.PathLike):
    """Read what :func:`cached_compare_runs` wrote, as a :class:`~subnetviz.analysis.runs.RunComparison`."""
    from subnetviz.analysis.run_result import RunComparison

    f = Path(folder)
    meta = json.loads((f / "comparison.json").read_text())
    tables = {n: pd.read_parquet(f / f"{n}.parquet") if (f / f"{n}.parquet").is_file() else None for n in _TABLES}
    return RunComparison(
        meta["full_dir"],
        meta["sub_dir"],
        meta["base_dir"],
        tables["per_tensor"],
        tables["ulp_histogram"],
        tables["vs_base"],
        tables["accuracy"],
        tuple(meta["unmatched"]),
        tuple(meta["base_unmatched"]),
        tuple(meta.get("buffers", ())),
    )
