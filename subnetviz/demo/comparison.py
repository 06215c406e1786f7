"""The Training page's "subnetwork vs full" comparison through the on-disk analysis cache.

:func:`cached_compare_runs` is :func:`subnetviz.analysis.runs.compare_runs` kept in the one
versioned cache (:mod:`subnetviz.cache`, kind ``runs``), keyed by :func:`comparison_key`: each
checkpoint's fingerprint (file paths, identities and headers), the eval file's stamp, the
tolerances and :data:`COMPARISON_VERSION`. The demo build fills it for grpo-s0 vs grpo-sub, so the
page's first open reads tables instead of streaming three models. Tables are Parquet, the rest JSON
(no pickle); a result appears only when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from subnetviz.cache import cache_key, entry, file_stamp

COMPARISON_VERSION = (
    2  # 2: buffers and scales left out. Bump when compare_runs would write different numbers for the same inputs
)
KIND = "runs"
_TABLES = ("per_tensor", "ulp_histogram", "vs_base", "accuracy")


def comparison_key(full, sub, base=None, eval_data=None, tolerances=None) -> str:
    from subnetviz.analysis.thresholds import DEFAULT_TOLERANCES
    from subnetviz.checkpoints.sources import fingerprint  # headers only: no torch for a cache hit

    def fp(path):
        return None if path is None else fingerprint(path)

    return cache_key(
        KIND,
        COMPARISON_VERSION,
        full=fp(full),
        sub=fp(sub),
        base=fp(base),
        eval_data=file_stamp(eval_data),
        tolerances=list(tolerances or DEFAULT_TOLERANCES),
    )


def is_cached(full, sub, base=None, eval_data=None, cache_root: str | os.PathLike | None = None) -> bool:
    """Whether :func:`cached_compare_runs` of these has its disk cache entry (headers only)."""
    return entry(KIND, comparison_key(full, sub, base, eval_data), root=cache_root).ready


def cached_compare_runs(
    full: str | os.PathLike,
    sub: str | os.PathLike,
    base: str | os.PathLike | None = None,
    *,
    eval_data: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
):
    """:func:`~subnetviz.analysis.runs.compare_runs` ``(full, sub, base, eval_data=...)`` through the disk
    cache (``cache_dir()/runs/<key>``, or ``cache_root/<key>``): a :class:`RunComparison`. A hit
    imports no torch (the key reads headers; the tables are Parquet)."""
    ent = entry(KIND, comparison_key(full, sub, base, eval_data), root=cache_root)
    if ent.ready:
        return load_comparison(ent.folder)
    from subnetviz.analysis.runs import compare_runs

    result = compare_runs(full, sub, base, eval_data=eval_data)
    with ent.publish() as folder:
        _write(folder, result)
    return result


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
